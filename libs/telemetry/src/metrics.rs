//! Prometheus metrics: one [`Metrics`] registry per process, served as the Prometheus
//! text format on `/metrics`.
//!
//! Conventions (see ARCHITECTURE.md): names start `securegate_`, counters end `_total`,
//! durations are `_seconds` and sizes `_bytes`. Labels take values from small fixed sets
//! (route templates, status codes, error codes, stream names): never a key, a tenant, a
//! project, a model or a client address. Label sets are `&'static str`s, so counting a
//! request allocates nothing for its labels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// Buckets of latency histograms, in seconds: 1 ms to 2 min.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A family of latency histograms.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new family of latency histograms.
pub fn latency_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// A process's metrics registry, shared by the services it runs.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    http: Arc<OnceLock<HttpMetrics>>,
    info: Arc<OnceLock<Family<InfoLabels, Gauge>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    service: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers metrics with the registry.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut registry);
    }

    /// The process's HTTP metrics, registered on first use.
    pub fn http(&self) -> HttpMetrics {
        self.http.get_or_init(|| HttpMetrics::new(self)).clone()
    }

    /// A gauge read when scraped.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.scraped(name, help, MetricType::Gauge, Box::new(read));
    }

    /// A counter kept elsewhere (a monotonic `u64`), read when scraped. `name` without
    /// the `_total` suffix, which the encoder adds.
    pub fn counter_fn(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.scraped(name, help, MetricType::Counter, Box::new(read));
    }

    fn scraped(
        &self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        read: Box<dyn Fn() -> f64 + Send + Sync>,
    ) {
        self.register(|r| {
            r.register_collector(Box::new(Scraped {
                name,
                help,
                kind,
                read,
            }))
        });
    }

    /// Everything registered, in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// `GET /metrics`.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static(
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            ),
                        )],
                        text,
                    )
                        .into_response()
                }
            }),
        )
    }

    /// `securegate_build_info{version, service} 1`.
    pub fn build_info(&self, service: &'static str) {
        let family = self.info.get_or_init(|| {
            let family: Family<InfoLabels, Gauge> = Family::default();
            self.register(|r| {
                r.register(
                    "securegate_build_info",
                    "The running version, one series per service in this process",
                    family.clone(),
                )
            });
            family
        });
        family
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                service,
            })
            .set(1);
    }
}

/// A value read when scraped.
struct Scraped {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").field("name", &self.name).finish()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.read)();
        let metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        match self.kind {
            MetricType::Counter => ConstCounter::new(value).encode(metric),
            _ => ConstGauge::new(value).encode(metric),
        }
    }
}

/// The label of a route: a template such as `/v1/chat/completions` or
/// `/admin/v1/projects/{id}`, never a raw path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub service: &'static str,
    pub route: &'static str,
}

/// One answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: &'static str,
    pub route: &'static str,
    pub status: u16,
    /// The error code of an error answer (`invalid_api_key`, …); empty otherwise.
    pub code: &'static str,
}

/// An error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

/// The error code an answer carries, as a response extension (set by the error type).
pub use sg_api_error::ErrorCode;

/// HTTP server metrics, shared by the listeners of a process (told apart by `service`).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RouteLabels>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    in_flight: Family<RouteLabels, Gauge>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

impl HttpMetrics {
    /// New families, registered with `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: latency_family(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            in_flight: Family::default(),
        };
        metrics.register(|r| {
            r.register(
                "securegate_http_requests",
                "HTTP requests answered, by service, route, status and error code",
                m.requests.clone(),
            );
            r.register(
                "securegate_http_request_duration_seconds",
                "Time from a request's arrival to the end of its answer's body",
                m.duration.clone(),
            );
            r.register(
                "securegate_http_request_body_bytes",
                "Request body bytes received",
                m.request_bytes.clone(),
            );
            r.register(
                "securegate_http_response_body_bytes",
                "Response body bytes sent",
                m.response_bytes.clone(),
            );
            r.register(
                "securegate_http_requests_in_flight",
                "Requests being answered now",
                m.in_flight.clone(),
            );
        });
        m
    }

    /// Wraps `router` so that each request is counted under `service` and the route
    /// `route_of` names; `on_error` sees each error code (e.g. to count lock refusals).
    pub fn layer(
        &self,
        router: Router,
        service: &'static str,
        route_of: fn(&Request) -> &'static str,
        on_error: Option<Arc<dyn Fn(&'static str) + Send + Sync>>,
    ) -> Router {
        let tracker = Tracker {
            metrics: self.clone(),
            service,
            route_of,
            on_error,
        };
        router.layer(axum::middleware::from_fn_with_state(tracker, track))
    }
}

#[derive(Clone)]
struct Tracker {
    metrics: HttpMetrics,
    service: &'static str,
    route_of: fn(&Request) -> &'static str,
    on_error: Option<Arc<dyn Fn(&'static str) + Send + Sync>>,
}

async fn track(State(t): State<Tracker>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = RouteLabels {
        service: t.service,
        route: (t.route_of)(&request),
    };
    let m = &t.metrics;
    let received = m.request_bytes.get_or_create(&route).clone();
    let in_flight = m.in_flight.get_or_create(&route).clone();
    in_flight.inc();
    let request = request.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: received,
            done: None,
        })
    });
    let response = next.run(request).await;
    let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    if !code.is_empty()
        && let Some(on_error) = &t.on_error
    {
        on_error(code);
    }
    m.requests
        .get_or_create(&RequestLabels {
            service: route.service,
            route: route.route,
            status: response.status().as_u16(),
            code,
        })
        .inc();
    let sent = m.response_bytes.get_or_create(&route).clone();
    let duration = m.duration.get_or_create(&route).clone();
    response.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: sent,
            done: Some(Done {
                started,
                duration,
                in_flight,
            }),
        })
    })
}

/// What is recorded when an answer's body ends (or is dropped by a client that left).
struct Done {
    started: Instant,
    duration: Histogram,
    in_flight: Gauge,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
        self.in_flight.dec();
    }
}

/// A body that counts its bytes.
struct Counted {
    inner: Body,
    bytes: Counter,
    done: Option<Done>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                self.done.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The route template axum matched (`/admin/v1/projects/{id}`), or `other`.
pub fn matched_route(request: &Request) -> &'static str {
    match request.extensions().get::<MatchedPath>() {
        Some(path) => intern(path.as_str()),
        None => "other",
    }
}

/// A `&'static str` for a route template. Templates come from the router, a fixed set,
/// so what is kept is bounded.
fn intern(template: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashMap<String, &'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(found) = routes
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(template)
    {
        return found;
    }
    let mut write = routes
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if write.len() >= 1024 {
        return "other";
    }
    let interned: &'static str = write
        .entry(template.to_owned())
        .or_insert_with(|| Box::leak(template.to_owned().into_boxed_str()));
    interned
}

/// A stream of the event log.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: &'static str,
}

/// Sequences of the event log's streams a service follows: what it has applied, the
/// head it last saw, and the difference.
#[derive(Clone, Default)]
pub struct StreamProgress {
    applied: Family<StreamLabels, Gauge>,
    head: Family<StreamLabels, Gauge>,
    lag: Family<StreamLabels, Gauge>,
}

impl std::fmt::Debug for StreamProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamProgress")
    }
}

impl StreamProgress {
    /// Registers `<prefix>_applied_sequence`, `<prefix>_head_sequence` and
    /// `<prefix>_lag_events`, by stream.
    pub fn new(metrics: &Metrics, prefix: &'static str, who: &'static str) -> Self {
        let p = StreamProgress::default();
        metrics.register(|r| {
            r.register(
                format!("{prefix}_applied_sequence"),
                format!("The last sequence of each stream the {who} has applied"),
                p.applied.clone(),
            );
            r.register(
                format!("{prefix}_head_sequence"),
                format!("The last sequence of each stream as the {who} last read it"),
                p.head.clone(),
            );
            r.register(
                format!("{prefix}_lag_events"),
                format!("Events of each stream the {who} has yet to apply"),
                p.lag.clone(),
            );
        });
        p
    }

    pub fn set_applied(&self, stream: &'static str, seq: u64) {
        let labels = StreamLabels { stream };
        self.applied.get_or_create(&labels).set(as_i64(seq));
        self.update_lag(&labels);
    }

    pub fn set_head(&self, stream: &'static str, seq: u64) {
        let labels = StreamLabels { stream };
        self.head.get_or_create(&labels).set(as_i64(seq));
        self.update_lag(&labels);
    }

    fn update_lag(&self, labels: &StreamLabels) {
        let head = self.head.get_or_create(labels).get();
        let applied = self.applied.get_or_create(labels).get();
        self.lag
            .get_or_create(labels)
            .set(head.saturating_sub(applied).max(0));
    }
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_counters_with_total_and_scraped_values() {
        let metrics = Metrics::new();
        metrics.build_info("test");
        let http = HttpMetrics::new(&metrics);
        http.requests
            .get_or_create(&RequestLabels {
                service: "gateway",
                route: "/v1/chat/completions",
                status: 403,
                code: "ip_not_allowed",
            })
            .inc();
        metrics.gauge_fn("securegate_test_entries", "Entries", || 7.0);
        metrics.counter_fn("securegate_test_calls", "Calls", || 3.0);
        let text = metrics.encode();
        assert!(text.contains("securegate_http_requests_total{service=\"gateway\",route=\"/v1/chat/completions\",status=\"403\",code=\"ip_not_allowed\"} 1"), "{text}");
        assert!(text.contains("securegate_test_entries 7"), "{text}");
        assert!(text.contains("securegate_test_calls_total 3"), "{text}");
        assert!(text.contains("securegate_build_info{version=\""), "{text}");
    }

    #[test]
    fn stream_lag_is_head_minus_applied() {
        let metrics = Metrics::new();
        let p = StreamProgress::new(&metrics, "securegate_test", "test");
        p.set_head("control", 10);
        p.set_applied("control", 7);
        let text = metrics.encode();
        assert!(
            text.contains("securegate_test_lag_events{stream=\"control\"} 3"),
            "{text}"
        );
        p.set_applied("control", 10);
        assert!(
            metrics
                .encode()
                .contains("securegate_test_lag_events{stream=\"control\"} 0")
        );
    }

    #[test]
    fn interned_routes_are_reused() {
        let a = intern("/admin/v1/projects/{id}");
        let b = intern("/admin/v1/projects/{id}");
        assert!(std::ptr::eq(a, b));
    }
}
