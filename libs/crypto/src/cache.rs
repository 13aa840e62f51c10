//! A cache of decrypted data keys in front of a [`Kms`].
//!
//! Opening a secret needs its data key; asking the KMS for it on every request costs a
//! network round trip, money and rate limit. [`DataKeyCache`] keeps decrypted data keys
//! for a bounded time and a bounded number of uses, so that a hot secret costs one KMS
//! call per [`DataKeyCacheConfig::ttl`] or per [`DataKeyCacheConfig::max_uses`] opens,
//! whichever comes first.
//!
//! Properties:
//! - An entry is keyed by the key-encryption key's id, the SHA-256 of the wrapped data
//!   key and the canonical bytes of the [`EncryptionContext`]: the same wrapped key under
//!   another context is another entry, and it goes to the KMS, which checks the context.
//! - Concurrent opens of the same uncached key make one KMS call between them; the
//!   others wait for its answer (and share its error, if it fails). Errors are not
//!   cached.
//! - While the KMS is down or throttling, keys already cached and still fresh keep
//!   being served; only uncached or expired ones fail.
//! - A key revoked in the KMS (disabled key, changed policy) stays usable from the
//!   cache until its entry expires: at most [`DataKeyCacheConfig::ttl`].
//! - Cached plaintext lives in an `Arc<Zeroizing<[u8; 32]>>`. The cache drops its `Arc`
//!   when an entry is evicted (capacity), expires, is used up or is invalidated; the
//!   bytes are zeroized when the last holder drops theirs. Expired entries are dropped
//!   by the cache's housekeeping, which runs as the cache is used, so an idle cache may
//!   hold an expired key in memory (never serve it) until its next use or
//!   [`DataKeyCache::run_pending_tasks`].
//! - [`Kms::generate_data_key`] is passed through, uncached: each secret gets its own
//!   data key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::Op;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{CryptoError, DataKey, EncryptionContext, Kms};

/// Bounds of a [`DataKeyCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataKeyCacheConfig {
    /// How long a decrypted data key is served after the KMS returned it.
    pub ttl: Duration,
    /// How many opens one decrypted data key serves before it is asked from the KMS
    /// again (at least 1).
    pub max_uses: u64,
    /// How many data keys are cached at most; least useful ones are evicted first.
    pub capacity: u64,
}

impl Default for DataKeyCacheConfig {
    /// 5 minutes, 10 000 uses, 10 000 keys.
    fn default() -> Self {
        DataKeyCacheConfig {
            ttl: Duration::from_secs(300),
            max_uses: 10_000,
            capacity: 10_000,
        }
    }
}

/// Counters of a [`DataKeyCache`], since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataKeyCacheStats {
    /// Opens served from the cache, including those that waited for a concurrent load.
    pub hits: u64,
    /// Opens that loaded the key from the KMS (successfully or not).
    pub misses: u64,
    /// `decrypt_data_key` calls made to the wrapped KMS.
    pub kms_calls: u64,
    /// Of those, the ones that failed.
    pub kms_errors: u64,
    /// Entries dropped because they had served `max_uses` opens.
    pub used_up: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    kek_id: String,
    wrapped_sha256: [u8; 32],
    context: Vec<u8>,
}

impl CacheKey {
    fn new(kek_id: &str, wrapped: &[u8], context: &EncryptionContext) -> Self {
        CacheKey {
            kek_id: kek_id.to_owned(),
            wrapped_sha256: Sha256::digest(wrapped).into(),
            context: context.canonical_bytes(),
        }
    }
}

struct CachedKey {
    key: Arc<Zeroizing<[u8; 32]>>,
    uses: AtomicU64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    kms_calls: AtomicU64,
    kms_errors: AtomicU64,
    used_up: AtomicU64,
}

/// A [`Kms`] that caches the data keys another [`Kms`] decrypts (see the module docs).
pub struct DataKeyCache {
    inner: Arc<dyn Kms>,
    config: DataKeyCacheConfig,
    cache: Cache<CacheKey, Arc<CachedKey>>,
    counters: Counters,
}

impl std::fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("kms", &self.inner.kind())
            .field("config", &self.config)
            .field("entries", &self.cache.entry_count())
            .field("stats", &self.stats())
            .finish()
    }
}

impl DataKeyCache {
    /// Caches what `inner` decrypts, within `config`'s bounds.
    pub fn new(inner: Arc<dyn Kms>, config: DataKeyCacheConfig) -> Self {
        let config = DataKeyCacheConfig {
            max_uses: config.max_uses.max(1),
            ..config
        };
        let cache = Cache::builder()
            .max_capacity(config.capacity)
            .time_to_live(config.ttl)
            .build();
        DataKeyCache {
            inner,
            config,
            cache,
            counters: Counters::default(),
        }
    }

    /// The cache's bounds.
    pub fn config(&self) -> DataKeyCacheConfig {
        self.config
    }

    /// The wrapped KMS.
    pub fn inner(&self) -> &Arc<dyn Kms> {
        &self.inner
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DataKeyCacheStats {
        let c = &self.counters;
        DataKeyCacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            kms_calls: c.kms_calls.load(Ordering::Relaxed),
            kms_errors: c.kms_errors.load(Ordering::Relaxed),
            used_up: c.used_up.load(Ordering::Relaxed),
        }
    }

    /// Approximate number of cached keys (updated by housekeeping).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Drops every cached key (for example after a key was revoked in the KMS).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Runs the cache's pending housekeeping now: drops expired and invalidated
    /// entries (and so their plaintext, unless held elsewhere).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Like [`Kms::decrypt_data_key`], but shares the cached key instead of copying it.
    pub async fn decrypt_shared(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Arc<Zeroizing<[u8; 32]>>, CryptoError> {
        let cache_key = CacheKey::new(kek_id, wrapped, context);
        // A second round follows the removal of a used-up entry.
        for _ in 0..2 {
            let entry = self
                .cache
                .entry(cache_key.clone())
                .or_try_insert_with(self.load(kek_id, wrapped, context))
                .await
                .map_err(|e| duplicate(&e))?;
            let fresh = entry.is_fresh();
            let cached = entry.into_value();
            let uses = cached.uses.fetch_add(1, Ordering::Relaxed) + 1;
            if uses <= self.config.max_uses {
                let counter = if fresh {
                    &self.counters.misses
                } else {
                    &self.counters.hits
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::clone(&cached.key));
            }
            // Used up: drop this entry, unless a concurrent open already replaced it.
            self.cache
                .entry(cache_key.clone())
                .and_compute_with(|current| {
                    let op = match current {
                        Some(current) if Arc::ptr_eq(current.value(), &cached) => Op::Remove,
                        _ => Op::Nop,
                    };
                    std::future::ready(op)
                })
                .await;
            self.counters.used_up.fetch_add(1, Ordering::Relaxed);
        }
        // Concurrent opens used up even the fresh entry: serve this one uncached.
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let key = self.load(kek_id, wrapped, context).await?;
        Ok(Arc::clone(&key.key))
    }

    async fn load(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Arc<CachedKey>, CryptoError> {
        self.counters.kms_calls.fetch_add(1, Ordering::Relaxed);
        match self.inner.decrypt_data_key(kek_id, wrapped, context).await {
            Ok(key) => Ok(Arc::new(CachedKey {
                key: Arc::new(key),
                uses: AtomicU64::new(0),
            })),
            Err(e) => {
                self.counters.kms_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// A copy of an error shared between the opens that waited for the same KMS call.
fn duplicate(err: &CryptoError) -> CryptoError {
    match err {
        CryptoError::Integrity => CryptoError::Integrity,
        CryptoError::Malformed(m) => CryptoError::Malformed(m.clone()),
        CryptoError::KmsRefused(m) => CryptoError::KmsRefused(m.clone()),
        CryptoError::KmsUnavailable(m) => CryptoError::KmsUnavailable(m.clone()),
        CryptoError::Config(m) => CryptoError::Config(m.clone()),
    }
}

#[async_trait]
impl Kms for DataKeyCache {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn rewrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        new_kek_id: &str,
    ) -> Result<(Vec<u8>, String), CryptoError> {
        self.inner
            .rewrap(kek_id, wrapped, context, new_kek_id)
            .await
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError> {
        self.inner.generate_data_key(context).await
    }

    async fn decrypt_data_key(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let key = self.decrypt_shared(kek_id, wrapped, context).await?;
        Ok(Zeroizing::new(**key))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::{LocalKms, SecretString, open, seal};

    /// A [`LocalKms`] that counts its decrypt calls and can be switched off.
    struct CountingKms {
        inner: LocalKms,
        decrypts: AtomicU64,
        down: AtomicBool,
    }

    impl CountingKms {
        fn new() -> Arc<Self> {
            Arc::new(CountingKms {
                inner: LocalKms::from_bytes(Zeroizing::new([42u8; 32])),
                decrypts: AtomicU64::new(0),
                down: AtomicBool::new(false),
            })
        }

        fn decrypts(&self) -> u64 {
            self.decrypts.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Kms for CountingKms {
        fn kind(&self) -> &'static str {
            self.inner.kind()
        }

        async fn generate_data_key(
            &self,
            context: &EncryptionContext,
        ) -> Result<DataKey, CryptoError> {
            self.inner.generate_data_key(context).await
        }

        async fn decrypt_data_key(
            &self,
            kek_id: &str,
            wrapped: &[u8],
            context: &EncryptionContext,
        ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
            self.decrypts.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(CryptoError::KmsUnavailable("switched off".into()));
            }
            // Widen the window in which concurrent opens overlap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.inner.decrypt_data_key(kek_id, wrapped, context).await
        }
    }

    fn ctx(connection: &str) -> EncryptionContext {
        EncryptionContext::new()
            .with("tenant", "t1")
            .with("connection", connection)
    }

    fn cache_over(kms: &Arc<CountingKms>, config: DataKeyCacheConfig) -> DataKeyCache {
        DataKeyCache::new(Arc::clone(kms) as Arc<dyn Kms>, config)
    }

    async fn open_ok(
        cache: &DataKeyCache,
        context: &EncryptionContext,
        sealed: &crate::SealedSecret,
    ) {
        let secret = open(cache, context, sealed).await.unwrap();
        assert_eq!(secret.expose(), "sk-test-123");
    }

    #[tokio::test]
    async fn hits_do_not_call_the_kms() {
        let kms = CountingKms::new();
        let cache = cache_over(&kms, DataKeyCacheConfig::default());
        let context = ctx("c1");
        let sealed = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        assert_eq!(kms.decrypts(), 0, "sealing does not decrypt");
        for _ in 0..5 {
            open_ok(&cache, &context, &sealed).await;
        }
        assert_eq!(kms.decrypts(), 1);
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.hits, stats.kms_calls), (1, 4, 1));
    }

    #[tokio::test]
    async fn concurrent_opens_share_one_kms_call() {
        let kms = CountingKms::new();
        let cache = Arc::new(cache_over(&kms, DataKeyCacheConfig::default()));
        let context = ctx("c1");
        let sealed = seal(&*cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let cache = Arc::clone(&cache);
            let context = context.clone();
            let sealed = sealed.clone();
            tasks.push(tokio::spawn(async move {
                open_ok(&cache, &context, &sealed).await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(kms.decrypts(), 1);
        assert_eq!(cache.stats().hits + cache.stats().misses, 16);
    }

    #[tokio::test]
    async fn max_uses_forces_a_refresh() {
        let kms = CountingKms::new();
        let config = DataKeyCacheConfig {
            max_uses: 3,
            ..DataKeyCacheConfig::default()
        };
        let cache = cache_over(&kms, config);
        let context = ctx("c1");
        let sealed = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        for _ in 0..3 {
            open_ok(&cache, &context, &sealed).await;
        }
        assert_eq!(kms.decrypts(), 1);
        open_ok(&cache, &context, &sealed).await;
        assert_eq!(
            kms.decrypts(),
            2,
            "the 4th open refreshes the used-up entry"
        );
        for _ in 0..2 {
            open_ok(&cache, &context, &sealed).await;
        }
        assert_eq!(kms.decrypts(), 2, "the refreshed entry serves 3 opens");
        open_ok(&cache, &context, &sealed).await;
        assert_eq!(kms.decrypts(), 3);
        assert_eq!(cache.stats().used_up, 2);
    }

    #[tokio::test]
    async fn ttl_expiry_forces_a_refresh() {
        let kms = CountingKms::new();
        let config = DataKeyCacheConfig {
            ttl: Duration::from_millis(200),
            ..DataKeyCacheConfig::default()
        };
        let cache = cache_over(&kms, config);
        let context = ctx("c1");
        let sealed = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        open_ok(&cache, &context, &sealed).await;
        open_ok(&cache, &context, &sealed).await;
        assert_eq!(kms.decrypts(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        open_ok(&cache, &context, &sealed).await;
        assert_eq!(kms.decrypts(), 2, "an expired entry is loaded again");
        open_ok(&cache, &context, &sealed).await;
        assert_eq!(kms.decrypts(), 2);
    }

    #[tokio::test]
    async fn a_failing_kms_still_serves_cached_keys() {
        let kms = CountingKms::new();
        let cache = cache_over(&kms, DataKeyCacheConfig::default());
        let context = ctx("c1");
        let cached = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        let uncached = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        open_ok(&cache, &context, &cached).await;
        kms.down.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            open_ok(&cache, &context, &cached).await;
        }
        let err = open(&cache, &context, &uncached).await.unwrap_err();
        assert!(matches!(err, CryptoError::KmsUnavailable(_)), "{err:?}");
        // Errors are not cached: once the KMS is back, the key loads.
        kms.down.store(false, Ordering::SeqCst);
        open_ok(&cache, &context, &uncached).await;
        let stats = cache.stats();
        assert_eq!((stats.kms_calls, stats.kms_errors), (3, 1));
    }

    #[tokio::test]
    async fn another_context_is_another_entry() {
        let kms = CountingKms::new();
        let cache = cache_over(&kms, DataKeyCacheConfig::default());
        let context = ctx("c1");
        let sealed = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        open_ok(&cache, &context, &sealed).await;
        let err = open(&cache, &ctx("c2"), &sealed).await.unwrap_err();
        assert!(matches!(err, CryptoError::Integrity), "{err:?}");
        assert_eq!(kms.decrypts(), 2, "the other context went to the KMS");
        // The wrapped key is the same; the cache key differs by context.
        let wrapped = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &sealed.wrapped_key,
        )
        .unwrap();
        let a = CacheKey::new(&sealed.kek_id, &wrapped, &ctx("c1"));
        let b = CacheKey::new(&sealed.kek_id, &wrapped, &ctx("c2"));
        assert!(a != b);
        open_ok(&cache, &context, &sealed).await;
        assert_eq!(kms.decrypts(), 2);
    }

    #[tokio::test]
    async fn capacity_bounds_the_entries() {
        let kms = CountingKms::new();
        let config = DataKeyCacheConfig {
            capacity: 2,
            ..DataKeyCacheConfig::default()
        };
        let cache = cache_over(&kms, config);
        let context = ctx("c1");
        for _ in 0..6 {
            let sealed = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
                .await
                .unwrap();
            open_ok(&cache, &context, &sealed).await;
        }
        cache.run_pending_tasks().await;
        assert!(cache.entry_count() <= 2, "{}", cache.entry_count());
    }

    #[tokio::test]
    async fn debug_shows_no_key_material() {
        let kms = CountingKms::new();
        let cache = cache_over(&kms, DataKeyCacheConfig::default());
        let context = ctx("c1");
        let sealed = seal(&cache, &context, &SecretString::new("sk-test-123".into()))
            .await
            .unwrap();
        let key = cache
            .decrypt_shared(
                &sealed.kek_id,
                &base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    &sealed.wrapped_key,
                )
                .unwrap(),
                &context,
            )
            .await
            .unwrap();
        let shown = format!("{cache:?}");
        assert!(shown.contains("DataKeyCache"));
        assert!(!shown.contains(&hex::encode(key.as_slice())));
        assert!(!shown.contains(&format!("{:?}", key.as_slice())));
    }
}
