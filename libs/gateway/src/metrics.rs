//! The gateway's own metrics: upstream latency, lock refusals, usage publishing, and
//! what the node knows of the control stream. HTTP request metrics are counted around
//! the router (`sg_telemetry::metrics::HttpMetrics`), with [`route_label`] naming routes.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use sg_telemetry::metrics::{
    CodeLabels, HistogramFamily, Metrics, latency_family, latency_histogram,
};

use crate::Gateway;

/// Where a request went: `egress` (from an edge) or the provider's id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: &'static str,
    pub route: &'static str,
}

/// Metrics the request path and the usage publisher update.
#[derive(Clone)]
pub(crate) struct GatewayMetrics {
    /// Time from sending a request upstream to its answer's headers.
    pub(crate) upstream: HistogramFamily<UpstreamLabels>,
    pub(crate) lock_refusals: Family<CodeLabels, Counter>,
    /// Age of usage events when the log acknowledged them.
    pub(crate) publish_lag: Histogram,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics {
            upstream: latency_family(),
            lock_refusals: Family::default(),
            publish_lag: latency_histogram(),
        }
    }
}

impl GatewayMetrics {
    pub(crate) fn upstream_time(&self, upstream: &'static str, path: &str, seconds: f64) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                upstream,
                route: route_label(path),
            })
            .observe(seconds);
    }
}

/// The routes the gateway serves, as metric labels: OpenAI-style endpoints, their
/// egress counterparts (under the same name), the probes, and `other`.
pub fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 24] = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/models",
        "/v1/moderations",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/speech",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/files",
        "/v1/batches",
        "/v1/uploads",
        "/v1/fine_tuning/jobs",
        "/v1/vector_stores",
        "/v1/assistants",
        "/v1/threads",
        "/v1/realtime",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    let path = path.strip_prefix("/egress").unwrap_or(path);
    let path = path.split('?').next().unwrap_or(path);
    for route in ROUTES {
        // The route itself, or one of its resources (`/v1/files/{id}`, `/v1/models/{id}`).
        if let Some(rest) = path.strip_prefix(route)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return route;
        }
    }
    "other"
}

/// [`route_label`] of a request.
pub fn request_route(request: &axum::extract::Request) -> &'static str {
    route_label(request.uri().path())
}

/// Whether an error code is a lock's refusal.
pub fn is_lock_refusal(code: &str) -> bool {
    sg_policy::DenyCode::ALL.iter().any(|d| d.as_str() == code) || code == "signature_replayed"
}

impl Gateway {
    /// Registers this node's metrics with `metrics`, and returns what counts lock
    /// refusals among error codes (for the HTTP metrics layer).
    pub fn register_metrics(
        self: &Arc<Self>,
        metrics: &Metrics,
    ) -> Arc<dyn Fn(&'static str) + Send + Sync> {
        let m = self.metrics.clone();
        metrics.register(|r| {
            r.register(
                "securegate_upstream_duration_seconds",
                "Time from sending a request upstream (the egress, or the provider) to its answer's headers",
                m.upstream.clone(),
            );
            r.register(
                "securegate_lock_refusals",
                "Requests a key's lock refused, by code",
                m.lock_refusals.clone(),
            );
            r.register(
                "securegate_usage_publish_lag_seconds",
                "Age of usage events when the event log acknowledged them",
                m.publish_lag.clone(),
            );
        });
        let gw = Arc::downgrade(self);
        let read = move |f: fn(&Gateway) -> f64| {
            let gw = gw.clone();
            move || gw.upgrade().map_or(0.0, |g| f(&g))
        };
        metrics.gauge_fn(
            "securegate_usage_queue_depth",
            "Usage events recorded but not yet acknowledged by the event log",
            read(|g| g.usage.pending() as f64),
        );
        metrics.gauge_fn(
            "securegate_usage_spool_bytes",
            "Bytes of unacknowledged usage events in the spool on disk",
            read(|g| g.usage.pending_bytes() as f64),
        );
        metrics.gauge_fn(
            "securegate_usage_spool_full",
            "1 while the spool is full and new requests are refused",
            read(|g| f64::from(u8::from(g.usage.is_full()))),
        );
        metrics.gauge_fn(
            "securegate_control_applied_sequence",
            "The last control-stream sequence this node has applied",
            read(|g| g.replica.applied_seq() as f64),
        );
        metrics.gauge_fn(
            "securegate_control_head_sequence",
            "The control stream's last sequence as this node last read it",
            read(|g| g.freshness.head_seq() as f64),
        );
        metrics.gauge_fn(
            "securegate_control_lag_events",
            "Control events this node has yet to apply",
            read(|g| {
                g.freshness
                    .head_seq()
                    .saturating_sub(g.replica.applied_seq()) as f64
            }),
        );
        metrics.gauge_fn(
            "securegate_control_staleness_seconds",
            "How long ago this node last knew it had every control event",
            read(|g| g.freshness.staleness().as_secs_f64()),
        );
        metrics.gauge_fn(
            "securegate_key_cache_entries",
            "Keys in this node's in-memory key cache",
            read(|g| g.keys.len() as f64),
        );
        let refusals = m.lock_refusals.clone();
        Arc::new(move |code: &'static str| {
            if is_lock_refusal(code) {
                refusals.get_or_create(&CodeLabels { code }).inc();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_a_fixed_set() {
        assert_eq!(route_label("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(
            route_label("/egress/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(route_label("/v1/files/file-abc/content"), "/v1/files");
        assert_eq!(route_label("/v1/models/gpt-4o"), "/v1/models");
        assert_eq!(route_label("/v1/chat/completionsX"), "other");
        assert_eq!(route_label("/v1/anything-a-client-invents"), "other");
        assert_eq!(route_label("/readyz"), "/readyz");
    }

    #[test]
    fn lock_codes() {
        assert!(is_lock_refusal("ip_not_allowed"));
        assert!(is_lock_refusal("signature_replayed"));
        assert!(!is_lock_refusal("invalid_api_key"));
    }
}
