//! `sg-loadtest`: the latency and throughput SecureGate adds in front of an
//! OpenAI-compatible upstream, measured side by side with the upstream alone.
//!
//! One process holds a mock upstream, an embedded SecureGate pointed at it, and the
//! load generator (on its own runtime). Each target gets the same load: first the
//! mock directly (baseline), then the gateway.
#![forbid(unsafe_code)]

mod load;
mod report;
mod schedule;
mod setup;
mod traces;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;
use tokio::runtime::Runtime;

use crate::load::Target;
use crate::report::{Mode, SetupInfo, TargetReport};
use crate::schedule::{MAX_PLANNED, Schedule, planned_count};
use crate::setup::Bench;

/// Measures the latency and throughput SecureGate adds, against a mock upstream on
/// this machine. Prints a side-by-side table: baseline (mock directly) and gateway.
#[derive(Debug, Parser)]
#[command(name = "sg-loadtest", version)]
struct Cli {
    /// Open loop: requests per second sent to each target, on a fixed timeline.
    #[arg(long, default_value_t = 500.0, value_parser = rate)]
    rate: f64,
    /// Seconds measured per target.
    #[arg(long, default_value_t = 10.0, value_parser = duration)]
    duration: f64,
    /// Seconds of the same load before measuring, per target.
    #[arg(long, default_value_t = 2.0, value_parser = warmup)]
    warmup: f64,
    /// Milliseconds the mock upstream waits before answering.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    mock_latency_ms: u64,
    /// Ask for streamed answers (`"stream": true`) and read each SSE body whole.
    #[arg(long)]
    stream: bool,
    /// Open loop: requests allowed in flight per target; a request due while the cap
    /// is reached is not sent and counts as dropped.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_in_flight: u32,
    /// Closed loop instead: each target gets `--concurrency` clients sending back to
    /// back for the duration; reports the highest throughput reached.
    #[arg(long)]
    max_throughput: bool,
    /// Closed loop: concurrent clients per target.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Threads of the load generator's runtime (the servers have their own, one per core).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    client_threads: u32,
    /// Seconds one request may take before it counts as an error.
    #[arg(long, default_value_t = 30.0, value_parser = timeout)]
    timeout: f64,
    /// Also measure the cost of limits and budgets: after the baseline, the gateway runs
    /// four times, alternating a key without limits and one with every limit and a
    /// budget set far above what the run uses, and the difference is printed next to
    /// the run-to-run noise.
    #[arg(long)]
    limits: bool,
    /// Also measure the cost of OpenTelemetry traces: after the gateway's run, it runs
    /// again with every request traced and its spans exported over OTLP/HTTP (batched,
    /// in the background) to a sink in this process that decodes and counts them.
    #[arg(long)]
    traces: bool,
    /// With --traces: export to this OTLP/HTTP traces URL (e.g.
    /// `http://127.0.0.1:4318/v1/traces`) instead of the built-in sink.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// A number of seconds or a rate in `(low, high]` (or `[low, high]` when `zero_ok`).
fn bounded(s: &str, low: f64, high: f64, zero_ok: bool) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    let above = if zero_ok { v >= low } else { v > low };
    if v.is_finite() && above && v <= high {
        Ok(v)
    } else if zero_ok {
        Err(format!("must be between {low} and {high}"))
    } else {
        Err(format!("must be more than {low} and at most {high}"))
    }
}

fn rate(s: &str) -> Result<f64, String> {
    bounded(s, 0.0, 100_000.0, false)
}

fn duration(s: &str) -> Result<f64, String> {
    bounded(s, 0.0, 3600.0, false)
}

fn warmup(s: &str) -> Result<f64, String> {
    bounded(s, 0.0, 600.0, true)
}

fn timeout(s: &str) -> Result<f64, String> {
    bounded(s, 0.0, 600.0, false)
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a valid number of seconds"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.max_throughput && planned_count(cli.rate, cli.warmup + cli.duration) >= MAX_PLANNED {
        anyhow::bail!("--rate × (--warmup + --duration) must stay under {MAX_PLANNED} requests");
    }
    let cores = sg_loadtest::cores();
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("sg-servers")
        .enable_all()
        .build()
        .context("starting the servers' runtime")?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads as usize)
        .thread_name("sg-loadgen")
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let traces = if cli.traces || cli.otlp_endpoint.is_some() {
        let sink = match &cli.otlp_endpoint {
            Some(_) => None,
            None => Some(traces::Sink::start(&servers)?),
        };
        let url = match (&cli.otlp_endpoint, &sink) {
            (Some(url), _) => url.clone(),
            (None, Some(sink)) => sink.url.clone(),
            (None, None) => anyhow::bail!("no OTLP endpoint"),
        };
        Some((traces::Switch::install(&url, &servers)?, sink))
    } else {
        sg_loadtest::init_logging("warn");
        None
    };
    let result = servers.block_on(run(&cli, cores, &clients, traces));
    clients.shutdown_timeout(Duration::from_secs(5));
    servers.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(
    cli: &Cli,
    cores: usize,
    clients: &Runtime,
    traces: Option<(traces::Switch, Option<traces::Sink>)>,
) -> anyhow::Result<()> {
    let info = SetupInfo {
        mode: if cli.max_throughput {
            Mode::ClosedLoop
        } else {
            Mode::OpenLoop
        },
        rate: cli.rate,
        warmup_secs: cli.warmup,
        duration_secs: cli.duration,
        concurrency: cli.concurrency as usize,
        max_in_flight: cli.max_in_flight as usize,
        timeout_secs: cli.timeout,
        mock_latency_ms: cli.mock_latency_ms,
        stream: cli.stream,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores,
        cpu: sg_loadtest::cpu_model(),
        client_threads: cli.client_threads as usize,
        server_threads: cores,
    };
    print!("{}", report::render_setup(&info));

    let body = load::chat_body(cli.stream);
    eprintln!("starting the mock upstream and SecureGate (embedded mode)…");
    let bench = Bench::start(
        Duration::from_millis(cli.mock_latency_ms),
        &body,
        cli.limits,
    )
    .await?;
    let baseline_target = Target {
        name: "baseline",
        url: bench.baseline_url(),
        authorization: "Bearer sk-bench".into(),
        body: body.clone(),
        stream: cli.stream,
    };
    let gateway_target = Target {
        name: "gateway",
        url: bench.gateway_url(),
        authorization: format!("Bearer {}", bench.proxy_key()),
        body,
        stream: cli.stream,
    };
    println!("baseline:  POST {}", baseline_target.url);
    println!("gateway:   POST {}", gateway_target.url);
    println!();

    let limited_target = bench.limited_key().map(|key| Target {
        name: "gateway+limits",
        url: bench.gateway_url(),
        authorization: format!("Bearer {key}"),
        body: gateway_target.body.clone(),
        stream: cli.stream,
    });
    let outcome = measure(
        cli,
        clients,
        &bench,
        baseline_target,
        gateway_target,
        limited_target,
        traces.as_ref().map(|(switch, _)| switch),
    )
    .await;
    eprintln!("stopping…");
    bench.stop().await;
    let (baseline, gateway, limited, checks, traced) = outcome?;

    print!("{}", report::render_results(info.mode, &baseline, &gateway));
    if let Some([again, with1, with2]) = &limited {
        println!();
        print!(
            "{}",
            report::render_limits(info.mode, [&gateway, again], [with1, with2])
        );
    }
    if let (Some([on1, off2, on2]), Some((switch, sink))) = (&traced, traces) {
        let url = switch.url.clone();
        switch.guard.shutdown_async().await;
        println!();
        print!(
            "{}",
            traces::render(
                [&gateway, off2],
                [on1, on2],
                &url,
                sink.as_ref().map(|s| s.counts.as_ref())
            )
        );
    }
    print!("{}", checks.render());
    if let Some(path) = &cli.json {
        let value = report::to_json(&info, &baseline, &gateway, checks.to_json());
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Longest wait for the gateway's usage backlog to empty after its run.
const USAGE_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for the usage view to count every request once the log has them.
const VIEW_WAIT: Duration = Duration::from_secs(30);

/// What happened to the usage events of the gateway run.
#[derive(Debug, Clone, PartialEq)]
struct UsageChecks {
    /// Largest backlog sampled during the run.
    backlog_max: u64,
    /// Backlog when the last answer arrived.
    pending_at_end: u64,
    /// How long the wait for the backlog to empty lasted.
    waited: Duration,
    /// Backlog at the end of that wait (0: all acknowledged).
    pending_after_wait: u64,
    /// Calls the mock received from the gateway during the run.
    upstream_calls: u64,
    /// Requests the project's usage view counts.
    projected: u64,
    /// Requests it should count.
    expected: u64,
    /// How long the wait for the usage view lasted.
    projected_after: Duration,
}

impl UsageChecks {
    fn render(&self) -> String {
        let waited = self.waited.as_secs_f64();
        let acked = self.pending_at_end.saturating_sub(self.pending_after_wait);
        let flushed = if self.pending_after_wait == 0 {
            format!("all acknowledged {waited:.2} s after the last answer")
        } else {
            format!(
                "{acked} acknowledged in the {waited:.1} s after the last answer ({:.0}/s), {} still pending",
                schedule::per_second(acked, self.waited),
                self.pending_after_wait
            )
        };
        let view = if self.projected == self.expected {
            format!(
                "{} requests counted, as expected ({:.2} s after the flush)",
                self.projected,
                self.projected_after.as_secs_f64()
            )
        } else {
            format!(
                "{} requests counted of {} expected (after {:.1} s)",
                self.projected,
                self.expected,
                self.projected_after.as_secs_f64()
            )
        };
        format!(
            "\ngateway usage events: backlog up to {} during the run, {} pending at its end, {flushed}\n\
             usage view (projected): {view}; the mock received {} calls from the gateway\n",
            self.backlog_max, self.pending_at_end, self.upstream_calls
        )
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "usage_backlog_max": self.backlog_max,
            "usage_pending_at_end": self.pending_at_end,
            "usage_wait_s": self.waited.as_secs_f64(),
            "usage_pending_after_wait": self.pending_after_wait,
            "upstream_calls": self.upstream_calls,
            "usage_view_requests": self.projected,
            "usage_view_expected": self.expected,
        })
    }
}

async fn run_target(cli: &Cli, clients: &Runtime, target: Target) -> anyhow::Result<TargetReport> {
    eprintln!(
        "measuring {} ({} s warm-up + {} s)…",
        target.name, cli.warmup, cli.duration
    );
    let target = Arc::new(target);
    let timeout = secs(cli.timeout)?;
    let drain = timeout + Duration::from_secs(5);
    let task = if cli.max_throughput {
        let client = load::client(cli.concurrency as usize, timeout)?;
        clients.spawn(load::closed_loop(
            client,
            target,
            cli.concurrency as usize,
            secs(cli.warmup)?,
            secs(cli.duration)?,
            drain,
        ))
    } else {
        let client = load::client(cli.max_in_flight as usize, timeout)?;
        clients.spawn(load::open_loop(
            client,
            target,
            Schedule::new(cli.rate, cli.warmup, cli.duration),
            cli.max_in_flight as usize,
            drain,
        ))
    };
    task.await
        .context("the load generator stopped abnormally")?
}

/// The gateway's second run without limits and its two runs with them.
type LimitsRuns = Option<[TargetReport; 3]>;

/// What [`measure`] found: baseline, gateway, the limits runs, the usage checks and
/// the gateway's run with traces on.
type Measured = (
    TargetReport,
    TargetReport,
    LimitsRuns,
    UsageChecks,
    Option<[TargetReport; 3]>,
);

async fn measure(
    cli: &Cli,
    clients: &Runtime,
    bench: &Bench,
    baseline_target: Target,
    gateway_target: Target,
    limited_target: Option<Target>,
    traces: Option<&traces::Switch>,
) -> anyhow::Result<Measured> {
    let baseline = run_target(cli, clients, baseline_target).await?;

    bench.mock.reset_stats();
    let sampler = bench.sample_backlog(Duration::from_millis(100), 100_000);
    let gateway = run_target(cli, clients, gateway_target.clone()).await?;
    // Right after the run without traces, the same load with them.
    let traced = match traces {
        Some(switch) => {
            let target = Target {
                name: "gateway+traces",
                ..gateway_target.clone()
            };
            // Alternating, so that drift falls on both alike.
            switch.set(true);
            let on1 = run_target(cli, clients, target.clone()).await;
            switch.set(false);
            let on1 = on1?;
            let off2 = run_target(cli, clients, gateway_target.clone()).await?;
            switch.set(true);
            let on2 = run_target(cli, clients, target).await;
            switch.set(false);
            Some([on1, off2, on2?])
        }
        None => None,
    };
    let limited = match limited_target {
        Some(limited_target) => {
            // Alternating, so that drift (the log and views growing, the machine
            // warming up) falls on both keys alike.
            let with1 = run_target(cli, clients, limited_target.clone()).await?;
            let again = run_target(cli, clients, gateway_target).await?;
            let with2 = run_target(cli, clients, limited_target).await?;
            Some([again, with1, with2])
        }
        None => None,
    };
    let backlog_max = sampler.finish().await;
    let pending_at_end = bench.usage_pending();
    let waited = bench.wait_usage_flushed(USAGE_WAIT).await;
    let pending_after_wait = bench.usage_pending();
    let upstream_calls = bench.mock.request_count();
    let expected = upstream_calls + bench.probes;
    // The view can only catch up once the log has everything.
    let view_wait = if pending_after_wait == 0 {
        VIEW_WAIT
    } else {
        Duration::ZERO
    };
    let (projected, projected_after) = bench.wait_usage_projected(expected, view_wait).await?;
    let checks = UsageChecks {
        backlog_max: backlog_max.max(pending_at_end),
        pending_at_end,
        waited,
        pending_after_wait,
        upstream_calls,
        projected,
        expected,
        projected_after,
    };
    Ok((baseline, gateway, limited, checks, traced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(rate("500"), Ok(500.0));
        assert!(rate("0").is_err());
        assert!(rate("-3").is_err());
        assert!(rate("NaN").is_err());
        assert!(rate("inf").is_err());
        assert!(rate("1e9").is_err());
        assert!(rate("fast").is_err());
        assert_eq!(warmup("0"), Ok(0.0));
        assert!(duration("0").is_err());
        assert_eq!(duration("0.5"), Ok(0.5));
        assert!(timeout("601").is_err());
    }

    #[test]
    fn usage_checks() {
        let mut c = UsageChecks {
            backlog_max: 3,
            pending_at_end: 0,
            waited: Duration::from_millis(1),
            pending_after_wait: 0,
            upstream_calls: 6000,
            projected: 6001,
            expected: 6001,
            projected_after: Duration::ZERO,
        };
        let text = c.render();
        assert!(
            text.contains("backlog up to 3 during the run, 0 pending at its end, all acknowledged")
        );
        assert!(text.contains("6001 requests counted, as expected"));
        c.pending_at_end = 5000;
        c.pending_after_wait = 3000;
        c.waited = Duration::from_secs(20);
        c.projected = 12;
        let text = c.render();
        assert!(text.contains(
            "2000 acknowledged in the 20.0 s after the last answer (100/s), 3000 still pending"
        ));
        assert!(text.contains("12 requests counted of 6001 expected"));
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["sg-loadtest"]).unwrap();
        assert_eq!((cli.rate, cli.duration, cli.warmup), (500.0, 10.0, 2.0));
        assert_eq!(cli.mock_latency_ms, 0);
        assert!(!cli.max_throughput && !cli.stream);
        let cli =
            Cli::try_parse_from(["sg-loadtest", "--max-throughput", "--concurrency", "8"]).unwrap();
        assert!(cli.max_throughput);
        assert_eq!(cli.concurrency, 8);
        assert!(Cli::try_parse_from(["sg-loadtest", "--concurrency", "0"]).is_err());
    }
}
