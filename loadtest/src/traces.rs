//! `--traces`: the gateway measured again with OpenTelemetry traces on, every request's
//! spans exported over OTLP/HTTP (protobuf) by the same exporter a deployment uses, to a
//! local sink that decodes and counts them (or to `--otlp-endpoint`).
//!
//! The trace layer is installed once, behind a switch: off, no span is even created
//! (the same as a gateway without `OTEL_*` variables, bar one atomic load per span);
//! on, every span is made, queued and exported in the background.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use prost::Message as _;
use sg_telemetry::trace::TraceGuard;
use tokio::runtime::Runtime;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// What the sink received.
#[derive(Debug, Default)]
pub struct SinkCounts {
    pub requests: AtomicU64,
    pub spans: AtomicU64,
    pub bytes: AtomicU64,
    /// Bodies that did not decode as an `ExportTraceServiceRequest`.
    pub malformed: AtomicU64,
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces`, decoded and counted, answered 200.
pub struct Sink {
    pub url: String,
    pub counts: Arc<SinkCounts>,
}

async fn receive(State(counts): State<Arc<SinkCounts>>, body: Bytes) -> StatusCode {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let spans: usize = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            counts.spans.fetch_add(spans as u64, Ordering::Relaxed);
            StatusCode::OK
        }
        Err(_) => {
            counts.malformed.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
    }
}

impl Sink {
    /// Serves the sink on a loopback port, on `runtime`.
    pub fn start(runtime: &Runtime) -> anyhow::Result<Sink> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("binding the OTLP sink")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(SinkCounts::default());
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(counts.clone());
        let _enter = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("warning: the OTLP sink stopped: {e}");
            }
        });
        Ok(Sink {
            url: format!("http://{addr}/v1/traces"),
            counts,
        })
    }
}

/// The process's subscriber with a trace layer that can be switched on and off.
pub struct Switch {
    on: Arc<AtomicBool>,
    pub guard: TraceGuard,
    pub url: String,
}

impl Switch {
    /// Installs the global subscriber: logs as usual (`RUST_LOG`, default `warn`), and
    /// spans exported to `url` while switched on. The exporter's calls run on `runtime`.
    pub fn install(url: &str, runtime: &Runtime) -> anyhow::Result<Switch> {
        let on = Arc::new(AtomicBool::new(false));
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter);
        let (otel, guard) =
            sg_telemetry::trace::layer_to(url, "sg-loadtest-gateway", runtime.handle().clone())
                .map_err(|e| anyhow::anyhow!(e))?;
        let switch = on.clone();
        // Dynamic: asked at every span (a plain filter_fn's answer is cached per callsite).
        let otel = otel.with_filter(tracing_subscriber::filter::dynamic_filter_fn(
            move |meta, _| switch.load(Ordering::Relaxed) && *meta.level() <= tracing::Level::INFO,
        ));
        tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init()
            .context("installing the tracing subscriber")?;
        Ok(Switch {
            on,
            guard,
            url: url.to_owned(),
        })
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

/// The gateway without and with traces, side by side: runs alternate (off, on, off,
/// on) so that drift falls on both alike; the difference is of the averages.
pub fn render(
    off: [&crate::report::TargetReport; 2],
    on: [&crate::report::TargetReport; 2],
    url: &str,
    sink: Option<&SinkCounts>,
) -> String {
    use crate::report::ms;
    let row = |name: &str, r: &crate::report::TargetReport| {
        format!(
            "  {name:<16} {:>10.0}/s {:>10.2} ms {:>10.2} ms {:>10.2} ms {:>8}\n",
            r.throughput,
            ms(r.intended.p50),
            ms(r.intended.p99),
            ms(r.intended.p999),
            r.errors
        )
    };
    let mut out = format!(
        "\nOpenTelemetry traces (OTLP/HTTP protobuf to {url}):\n  {:<16} {:>12} {:>13} {:>13} {:>13} {:>8}\n",
        "", "throughput", "p50", "p99", "p99.9", "errors"
    );
    out += &row("traces off #1", off[0]);
    out += &row("traces on #1", on[0]);
    out += &row("traces off #2", off[1]);
    out += &row("traces on #2", on[1]);
    let avg = |rs: [&crate::report::TargetReport; 2],
               f: &dyn Fn(&crate::report::TargetReport) -> f64| {
        (f(rs[0]) + f(rs[1])) / 2.0
    };
    let (t_off, t_on) = (avg(off, &|r| r.throughput), avg(on, &|r| r.throughput));
    let change = if t_off > 0.0 {
        format!("{:+.1} %", (t_on / t_off - 1.0) * 100.0)
    } else {
        "n/a".into()
    };
    let d = |f: &dyn Fn(&crate::report::TargetReport) -> f64| avg(on, f) - avg(off, f);
    out += &format!(
        "  {:<16} {change:>12} {:>+10.2} ms {:>+10.2} ms {:>+10.2} ms\n",
        "on − off (avg)",
        d(&|r| ms(r.intended.p50)),
        d(&|r| ms(r.intended.p99)),
        d(&|r| ms(r.intended.p999)),
    );
    out += &format!(
        "  run-to-run noise (off #2 − off #1): {:+.1} % throughput, {:+.2} ms p99\n",
        if off[0].throughput > 0.0 {
            (off[1].throughput / off[0].throughput - 1.0) * 100.0
        } else {
            0.0
        },
        ms(off[1].intended.p99) - ms(off[0].intended.p99),
    );
    if let Some(sink) = sink {
        let spans = sink.spans.load(Ordering::Relaxed);
        // Warm-up requests are traced too.
        let traced = on[0].sent + on[1].sent;
        out += &format!(
            "  sink: {} export requests, {} spans, {:.1} MB, {} malformed; {} requests measured with traces on (warm-ups traced too): {:.1} spans each at most\n",
            sink.requests.load(Ordering::Relaxed),
            spans,
            sink.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            sink.malformed.load(Ordering::Relaxed),
            traced,
            spans as f64 / traced.max(1) as f64,
        );
    }
    out
}
