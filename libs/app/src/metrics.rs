//! Metrics wiring: KMS calls, the data-key cache, and the progress of the services that
//! follow the event log. The registry itself and the HTTP layer are `sg_telemetry`'s.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sg_crypto::{CryptoError, DataKey, EncryptionContext, Kms};
use sg_eventlog::{EventLog, StreamName};
use sg_telemetry::metrics::{Metrics, StreamProgress, prometheus_client};
use zeroize::Zeroizing;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KmsCall {
    operation: &'static str,
    outcome: &'static str,
}

/// Counts the calls made to a KMS, by operation and outcome.
pub(crate) struct CountingKms {
    inner: Arc<dyn Kms>,
    calls: Family<KmsCall, Counter>,
}

impl CountingKms {
    pub(crate) fn wrap(inner: Arc<dyn Kms>, metrics: &Metrics) -> Arc<dyn Kms> {
        let calls: Family<KmsCall, Counter> = Family::default();
        metrics.register(|r| {
            r.register(
                "securegate_kms_calls",
                "Calls to the KMS (generate_data_key, decrypt_data_key, rewrap), by outcome",
                calls.clone(),
            )
        });
        Arc::new(CountingKms { inner, calls })
    }

    fn count<T>(&self, operation: &'static str, result: &Result<T, CryptoError>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.calls
            .get_or_create(&KmsCall { operation, outcome })
            .inc();
    }
}

#[async_trait]
impl Kms for CountingKms {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let result = self.inner.generate_data_key(context).await;
        self.count("generate_data_key", &result);
        result
    }

    async fn decrypt_data_key(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let result = self.inner.decrypt_data_key(kek_id, wrapped, context).await;
        self.count("decrypt_data_key", &result);
        result
    }

    async fn rewrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        new_kek_id: &str,
    ) -> Result<(Vec<u8>, String), CryptoError> {
        let result = self
            .inner
            .rewrap(kek_id, wrapped, context, new_kek_id)
            .await;
        self.count("rewrap", &result);
        result
    }
}

/// A data-key cache in front of `kms`, its hits and misses registered with `metrics`.
pub(crate) fn cached(kms: Arc<dyn Kms>, metrics: &Metrics) -> Arc<dyn Kms> {
    let cache = Arc::new(sg_crypto::DataKeyCache::new(
        kms,
        sg_crypto::DataKeyCacheConfig::default(),
    ));
    let hits = Arc::downgrade(&cache);
    metrics.counter_fn(
        "securegate_data_key_cache_hits",
        "Provider-key opens served by a data key already decrypted",
        move || hits.upgrade().map_or(0.0, |c| c.stats().hits as f64),
    );
    let misses = Arc::downgrade(&cache);
    metrics.counter_fn(
        "securegate_data_key_cache_misses",
        "Provider-key opens that asked the KMS for their data key",
        move || misses.upgrade().map_or(0.0, |c| c.stats().misses as f64),
    );
    cache
}

/// The streams the projector and the sentinel follow.
const ALL_STREAMS: [(StreamName, &str); 3] = [
    (StreamName::Control, "control"),
    (StreamName::Usage, "usage"),
    (StreamName::Signals, "signals"),
];

/// How often the streams' heads are read for the lag metrics.
const HEADS_EVERY: Duration = Duration::from_secs(2);

/// Registers `<prefix>_{applied,head}_sequence` and `<prefix>_lag_events` for the three
/// streams and keeps them current: what a service has applied from its `progress`
/// (`applied` gives the control, usage and signals sequences), the heads by reading the
/// log every two seconds. The two tasks run until aborted.
pub(crate) fn follow_streams<P: Send + Sync + 'static>(
    metrics: &Metrics,
    prefix: &'static str,
    who: &'static str,
    log: Arc<dyn EventLog>,
    mut progress: tokio::sync::watch::Receiver<P>,
    applied: fn(&P) -> [u64; 3],
) -> [tokio::task::JoinHandle<()>; 2] {
    let streams = StreamProgress::new(metrics, prefix, who);
    let heads = streams.clone();
    let read_heads = tokio::spawn(async move {
        loop {
            for (stream, name) in ALL_STREAMS {
                if let Ok(Ok(bounds)) = tokio::time::timeout(HEADS_EVERY, log.bounds(stream)).await
                {
                    heads.set_head(name, bounds.last_seq);
                }
            }
            tokio::time::sleep(HEADS_EVERY).await;
        }
    });
    let follow_applied = tokio::spawn(async move {
        loop {
            let seqs = applied(&progress.borrow_and_update());
            for ((_, name), seq) in ALL_STREAMS.iter().zip(seqs) {
                streams.set_applied(name, seq);
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
    });
    [read_heads, follow_applied]
}
