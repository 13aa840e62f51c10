//! The hot-path key cache: key hash → resolved [`KeyView`], kept current by the control
//! replica's change hook. The request path reads only this cache.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use moka::sync::Cache;
use sg_proxy_key::KeyHash;
use sg_replica::ChangeHook;
use sg_spend::Price;
use sg_state::{Changes, KeyView, State};

/// Key hash → view. Unbounded on purpose: it is the gateway's copy of the key
/// directory, not a cache in front of a store it could re-read.
#[derive(Clone)]
pub struct KeyCache {
    by_hash: Cache<KeyHash, Arc<KeyView>>,
    /// The operator's price overrides (the built-in prices apply to the rest).
    prices: Arc<RwLock<Arc<BTreeMap<String, Price>>>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyCache {
    pub fn new() -> Self {
        KeyCache {
            by_hash: Cache::builder().build(),
            prices: Arc::default(),
        }
    }

    /// Keys held. Settles the cache's pending bookkeeping first: for metrics, not for
    /// the request path.
    pub fn len(&self) -> u64 {
        self.by_hash.run_pending_tasks();
        self.by_hash.entry_count()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, hash: &KeyHash) -> Option<Arc<KeyView>> {
        self.by_hash.get(hash)
    }

    /// The price of `model`: the operator's override, else its built-in price.
    pub fn price(&self, model: &str) -> Option<Price> {
        let overrides = self
            .prices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        overrides
            .get(model)
            .copied()
            .or_else(|| sg_spend::default_price(model))
    }

    fn refresh(&self, state: &State, changes: &Changes) {
        if changes.prices {
            *self
                .prices
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Arc::new(state.price_overrides().clone());
        }
        for id in &changes.keys {
            let hash = state.key(id).and_then(|k| KeyHash::from_hex(&k.key_hash));
            if let (Some(hash), Some(view)) = (hash, state.key_view(id)) {
                self.by_hash.insert(hash, Arc::new(view));
            }
        }
    }

    /// The replica hook that keeps this cache current.
    pub fn hook(&self) -> ChangeHook {
        let cache = self.clone();
        Box::new(move |state, changes| cache.refresh(state, changes))
    }
}
