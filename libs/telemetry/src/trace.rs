//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) in the background.
//!
//! Configured by the standard variables and off when they are unset:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the whole URL) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (a base URL; `/v1/traces` is appended), `OTEL_SERVICE_NAME` (else the caller's
//! default, e.g. `securegate-gateway-edge`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` (the batch queue), `OTEL_TRACES_SAMPLER`.
//! Only `http/protobuf` is spoken; a `grpc` or `http/json` protocol, or any value the
//! exporter cannot use, logs one warning and leaves tracing off.
//!
//! Spans are queued (bounded; dropped when full) and exported by a background thread:
//! a slow or unreachable collector never slows a request. The first failed export logs
//! one warning; later ones are silent.
//!
//! Spans made by SecureGate have the target [`TARGET`] (`sg_trace`), which the log
//! output leaves out unless `RUST_LOG` names it: logs stay as they were.
//!
//! W3C Trace Context (`traceparent`, `tracestate`) is read from requests ([`set_parent`])
//! and written on outgoing ones ([`inject`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::registry::LookupSpan;

/// The target of every span SecureGate makes (`info_span!(target: "sg_trace", …)`).
pub const TARGET: &str = "sg_trace";

/// The layer that turns `tracing` spans into OpenTelemetry spans.
pub type OtelLayer<S> = OpenTelemetryLayer<S, SdkTracer>;

/// Largest collector answer read (a partial-success message is a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Whole export request, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping waits for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a trace layer was built in this process (reading `traceparent` is skipped
/// otherwise).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Config {
    /// No endpoint variable set (or `OTEL_SDK_DISABLED=true`).
    Off,
    /// Tracing was asked for, but cannot run as asked: the warning to log.
    Invalid(String),
    /// Export to this URL (the whole traces URL, e.g. `http://collector:4318/v1/traces`).
    Export { url: String },
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl Config {
    /// Reads the `OTEL_*` variables.
    pub fn from_env() -> Config {
        Self::from_vars(var)
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Config {
        let traces = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let base = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        if traces.is_none() && base.is_none() {
            return Config::Off;
        }
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Config::Off;
        }
        let (protocol_var, protocol) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                var("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        if let Some(p) = protocol
            && p != "http/protobuf"
        {
            return Config::Invalid(format!(
                "{protocol_var}={p} is not supported (only http/protobuf is); traces are off"
            ));
        }
        let (name, url) = match (traces, base) {
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, None) => return Config::Off,
        };
        match check_url(&url) {
            Ok(()) => Config::Export { url },
            Err(why) => Config::Invalid(format!(
                "{name} is not a usable URL ({why}); traces are off"
            )),
        }
    }
}

/// An `http` or `https` URL with a host.
fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "it does not parse")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("its scheme must be http or https"),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("it names no host"),
    }
}

/// The URL without user information or query, fit for a log line.
fn shown(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or("");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{host}{port}{}",
                uri.scheme_str().unwrap_or("http"),
                uri.path()
            )
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// What was decided, logged by [`TraceGuard::announce`] once logging is set up.
#[derive(Debug)]
enum Notice {
    Quiet,
    On { url: String, service: String },
    Warn(String),
}

/// Keeps the exporter running; [`TraceGuard::shutdown`] (or drop) flushes what is
/// queued and stops it.
#[derive(Debug)]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
    notice: Notice,
}

impl TraceGuard {
    /// No tracing.
    pub fn off() -> TraceGuard {
        TraceGuard {
            provider: None,
            notice: Notice::Quiet,
        }
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.provider.is_some()
    }

    /// Logs where traces go, or (one warning) why they are off although asked for.
    /// Call once the subscriber is installed.
    pub fn announce(&mut self) {
        match std::mem::replace(&mut self.notice, Notice::Quiet) {
            Notice::Quiet => {}
            Notice::On { url, service } => {
                tracing::info!(endpoint = %shown(&url), service, "exporting OpenTelemetry traces over OTLP/HTTP");
            }
            Notice::Warn(why) => tracing::warn!("OpenTelemetry: {why}"),
        }
    }

    /// Exports what is queued now (blocking until it has left, or failed).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }

    /// Exports what is queued (waiting at most a few seconds) and stops the exporter.
    /// Blocks: in async code, call [`TraceGuard::shutdown_async`].
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }

    /// [`TraceGuard::shutdown`] on a blocking thread (the export itself runs on the
    /// runtime, which must keep going meanwhile).
    pub async fn shutdown_async(mut self) {
        if self.provider.is_none() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || self.shutdown()).await;
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A trace layer as the environment says ([`Config::from_env`]), for service
/// `default_service` unless `OTEL_SERVICE_NAME` names another. `None` when tracing is
/// off. Call within a Tokio runtime (the exporter's HTTP calls run on it); then install
/// the layer and call [`TraceGuard::announce`].
pub fn layer<S>(default_service: &str) -> (Option<OtelLayer<S>>, TraceGuard)
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    match Config::from_env() {
        Config::Off => (None, TraceGuard::off()),
        Config::Invalid(why) => (
            None,
            TraceGuard {
                provider: None,
                notice: Notice::Warn(why),
            },
        ),
        Config::Export { url } => {
            let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_owned());
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => match layer_to(&url, &service, runtime) {
                    Ok((layer, guard)) => (Some(layer), guard),
                    Err(why) => (
                        None,
                        TraceGuard {
                            provider: None,
                            notice: Notice::Warn(why),
                        },
                    ),
                },
                Err(_) => (
                    None,
                    TraceGuard {
                        provider: None,
                        notice: Notice::Warn(
                            "no async runtime to export traces on; traces are off".into(),
                        ),
                    },
                ),
            }
        }
    }
}

/// A trace layer exporting to `url` (the whole traces URL) as `service`, its HTTP calls
/// made on `runtime`. The other `OTEL_*` variables (headers, batch queue, sampler,
/// resource attributes) still apply.
pub fn layer_to<S>(
    url: &str,
    service: &str,
    runtime: tokio::runtime::Handle,
) -> Result<(OtelLayer<S>, TraceGuard), String>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    check_url(url).map_err(|why| format!("the traces endpoint is not a usable URL ({why})"))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
    let client = ExportClient {
        http,
        runtime,
        warned: Arc::new(AtomicBool::new(false)),
        shown: shown(url),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter ({e}); traces are off"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("securegate");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false);
    Ok((
        layer,
        TraceGuard {
            provider: Some(provider),
            notice: Notice::On {
                url: url.to_owned(),
                service: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned()),
            },
        },
    ))
}

/// The exporter's HTTP client: our reqwest client (no proxy, bounded time), its calls
/// made on the service's runtime (the batch processor's thread has none). The first
/// failure logs one warning.
#[derive(Debug, Clone)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    warned: Arc<AtomicBool>,
    shown: String,
}

impl ExportClient {
    fn warn_once(&self, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.shown,
                error = why,
                "cannot export traces to the OTLP collector; spans are dropped while it cannot be reached (logged once)"
            );
        }
    }
}

async fn send(
    http: reqwest::Client,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, HttpError> {
    let request = reqwest::Request::try_from(request).map_err(|e| e.without_url())?;
    let mut response = http.execute(request).await.map_err(|e| e.without_url())?;
    let mut answer = http::Response::builder().status(response.status());
    if let Some(headers) = answer.headers_mut() {
        *headers = std::mem::take(response.headers_mut());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url())? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("the collector's answer is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(answer.body(Bytes::from(body))?)
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let result = match self.runtime.spawn(send(self.http.clone(), request)).await {
            Ok(result) => result,
            Err(e) => Err(Box::new(e) as HttpError),
        };
        match &result {
            Err(e) => self.warn_once(&e.to_string()),
            Ok(r) if !r.status().is_success() => {
                self.warn_once(&format!("the collector answered {}", r.status()))
            }
            Ok(_) => {}
        }
        result
    }
}

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The trace context a request's `traceparent` (and `tracestate`) carries; empty
/// without one.
pub fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the trace a request's `traceparent` names, if it names one
/// and tracing is on.
pub fn set_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() || span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context as `traceparent` (and `tracestate`) on an outgoing
/// request, replacing what the client sent. Without tracing (or for a span that is not
/// exported) the headers are left as they are: the client's own `traceparent` travels
/// on unchanged.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Axum middleware: one span per request, named `METHOD /route/{id}` after the matched
/// route, child of the request's `traceparent`, with its method, route and status —
/// never the query, the headers or the body:
/// `router.layer(axum::middleware::from_fn(|r, n| trace::http_span("admin", r, n)))`.
pub async fn http_span(
    kind: &'static str,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    if !enabled() {
        // No span to name: nothing is formatted or cloned per request.
        return next.run(request).await;
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let name = format!("{method} {}", route.as_deref().unwrap_or("(unmatched)"));
    let span = tracing::info_span!(
        target: "sg_trace",
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        securegate.service = kind,
        http.request.method = %method,
        http.route = route.as_deref().unwrap_or(""),
        http.response.status_code = tracing::field::Empty,
    );
    set_parent(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert_eq!(config(&[]), Config::Off);
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "x")]), Config::Off);
        assert_eq!(
            config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            Config::Off
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            Config::Export {
                url: "http://c:4318/v1/traces".into()
            }
        );
        assert_eq!(
            config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t.example/x")
            ]),
            Config::Export {
                url: "https://t.example/x".into()
            }
        );
        for bad in ["c:4318", "not a url", "ftp://c/", "http://"] {
            assert!(
                matches!(
                    config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]),
                    Config::Invalid(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_http_protobuf() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for p in ["grpc", "http/json"] {
            assert!(matches!(
                config(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", p)]),
                Config::Invalid(_)
            ));
            assert!(matches!(
                config(&[base, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p)]),
                Config::Invalid(_)
            ));
        }
        // The traces variable wins over the general one.
        assert!(matches!(
            config(&[
                base,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            ]),
            Config::Export { .. }
        ));
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            shown("https://user:secret@c.example:4318/v1/traces?token=x"),
            "https://c.example:4318/v1/traces"
        );
    }

    #[test]
    fn propagation_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        // Without a layer, inject leaves the client's header alone.
        let span = tracing::Span::none();
        inject(&span, &mut headers);
        assert_eq!(
            headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}
