//! The hot-path key cache: key hash → resolved [`KeyView`], built from the control
//! replica's state on a key's first use and dropped by the replica's change hook when
//! the key's events arrive. The request path reads only this cache and, on a miss, the
//! in-memory state.
//!
//! **Why it stays current:** a view is built and inserted while holding the state's read
//! lock, and the change hook runs under the write lock of the event it reflects, so an
//! insertion and an invalidation never interleave: a view inserted before an event is
//! dropped by that event's hook, and one built after it already reflects it. A
//! revocation or a lock change therefore takes effect on the very next request, as when
//! every view was rebuilt eagerly — without building a million views at cold start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use moka::sync::Cache;
use sg_proxy_key::KeyHash;
use sg_replica::{ChangeHook, Replica};
use sg_spend::Price;
use sg_state::{Changes, KeyView, State};

/// Key hash → view, for the keys in use. Unbounded on purpose: what it holds is
/// bounded by the keys in the state, and it is no cache in front of a store it could
/// re-read without the state's lock.
#[derive(Clone)]
pub struct KeyCache {
    by_hash: Cache<KeyHash, Arc<KeyView>, foldhash::fast::RandomState>,
    /// The operator's price overrides (the built-in prices apply to the rest).
    prices: Arc<RwLock<Arc<BTreeMap<String, Price>>>>,
    /// Where views are built from on a miss; set once the replica exists.
    replica: Arc<OnceLock<Replica>>,
    /// Whether any view was ever built on a miss: until then the hook has nothing to
    /// drop (a cold start folds a million keys without touching the cache). Set under
    /// the state's read lock and read under its write lock, which orders the two.
    built_any: Arc<AtomicBool>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyCache {
    pub fn new() -> Self {
        KeyCache {
            by_hash: Cache::builder().build_with_hasher(foldhash::fast::RandomState::default()),
            prices: Arc::default(),
            replica: Arc::default(),
            built_any: Arc::default(),
        }
    }

    /// Builds views on a miss from `replica`'s state. Set once; later calls are ignored.
    pub fn attach(&self, replica: Replica) {
        let _ = self.replica.set(replica);
    }

    /// Keys the gateway can serve: every key in the state (views are built on first
    /// use). Before a replica is attached, the views held. For metrics, not for the
    /// request path.
    pub fn len(&self) -> u64 {
        match self.replica.get() {
            Some(r) => r.state().key_count() as u64,
            None => {
                self.by_hash.run_pending_tasks();
                self.by_hash.entry_count()
            }
        }
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Views built and held now (settles the cache's pending bookkeeping first).
    pub fn views_held(&self) -> u64 {
        self.by_hash.run_pending_tasks();
        self.by_hash.entry_count()
    }

    /// The view of the key whose hash is `hash`: from the cache, else built from the
    /// replica's state (and kept).
    pub fn get(&self, hash: &KeyHash) -> Option<Arc<KeyView>> {
        if let Some(view) = self.by_hash.get(hash) {
            return Some(view);
        }
        let replica = self.replica.get()?;
        let state = replica.state();
        self.get_from(&state, hash)
    }

    /// The view of `hash`, built from `state` if the cache has none. The caller must
    /// hold `state` through a guard of the lock the change hook's writer takes (the
    /// replica's), or own it: see the module's note on why that keeps views current.
    pub fn get_from(&self, state: &State, hash: &KeyHash) -> Option<Arc<KeyView>> {
        if let Some(view) = self.by_hash.get(hash) {
            return Some(view);
        }
        let id = state.key_id_by_hash(&hash.to_hex())?;
        let view = Arc::new(state.key_view(id)?);
        self.built_any.store(true, Ordering::Relaxed);
        self.by_hash.insert(*hash, view.clone());
        Some(view)
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
        let built_any = self.built_any.load(Ordering::Relaxed);
        for id in &changes.keys {
            let Some(key) = state.key(id) else { continue };
            let canonical = key.key_hash.len() == 64
                && key
                    .key_hash
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
            if canonical && !built_any {
                continue;
            }
            let Some(hash) = KeyHash::from_hex(&key.key_hash) else {
                continue;
            };
            if canonical {
                // The next request builds the view afresh from the state.
                self.by_hash.invalidate(&hash);
            } else if let Some(view) = state.key_view(id) {
                // A hash not spelled as canonical lower-case hex is not found by a
                // lookup by bytes: keep its view current eagerly, as always.
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

#[cfg(test)]
mod tests {
    use super::*;
    use sg_events::{
        Actor, Envelope, Event, KeyId, KeyIssuedV1, KeyRevokedV1, ProjectCreatedV1, ProjectId,
        TenantCreatedV2, TenantId,
    };
    use sg_state::KeyStatus;

    fn apply(state: &mut State, seq: u64, tenant: &TenantId, event: Event) -> Changes {
        let env = Envelope::new(tenant.clone(), Actor::operator(), event);
        state.apply(seq, &env.subject(), &env).unwrap()
    }

    #[test]
    fn views_are_built_on_first_use_and_dropped_when_their_key_changes() {
        let cache = KeyCache::new();
        let mut hook = cache.hook();
        let mut state = State::new();
        let t = TenantId::generate();
        let p = ProjectId::generate();
        let k = KeyId::generate();
        let hash = KeyHash::from_hex(&"5a".repeat(32)).unwrap();
        apply(
            &mut state,
            1,
            &t,
            Event::TenantCreated(TenantCreatedV2 {
                plan: None,
                name: "t".into(),
            }),
        );
        apply(
            &mut state,
            2,
            &t,
            Event::ProjectCreated(ProjectCreatedV1 {
                project_id: p.clone(),
                name: "p".into(),
            }),
        );
        let changes = apply(
            &mut state,
            3,
            &t,
            Event::KeyIssued(
                KeyIssuedV1 {
                    key_id: k.clone(),
                    project_id: p.clone(),
                    name: "k".into(),
                    key_hash: hash.to_hex(),
                    hint: "SG_…abcd".into(),
                    connection_ids: vec![],
                    allowed_models: None,
                }
                .into(),
            ),
        );
        hook(&state, &changes);
        assert_eq!(cache.views_held(), 0, "nothing is built while folding");
        // No replica attached: only what is cached.
        assert!(cache.get(&hash).is_none());
        let view = cache.get_from(&state, &hash).unwrap();
        assert_eq!(view.status, KeyStatus::Active);
        assert_eq!(cache.get(&hash).unwrap().status, KeyStatus::Active);

        let changes = apply(
            &mut state,
            4,
            &t,
            Event::KeyRevoked(KeyRevokedV1 {
                key_id: k.clone(),
                project_id: p.clone(),
                reason: None,
            }),
        );
        hook(&state, &changes);
        assert!(
            cache.get(&hash).is_none(),
            "the revoked key's view is dropped"
        );
        assert_eq!(
            cache.get_from(&state, &hash).unwrap().status,
            KeyStatus::Revoked
        );
        let unknown = KeyHash::from_hex(&"00".repeat(32)).unwrap();
        assert!(cache.get_from(&state, &unknown).is_none());
    }
}
