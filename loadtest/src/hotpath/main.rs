//! `sg-hotpath`: SecureGate's hot path next to a bare proxy hop, per core.
//!
//! Three targets get the same load, one after the other: the fixed-answer upstream
//! directly, a bare hyper hop in front of it, and SecureGate (embedded, usage
//! accounting on) in front of it. Each server runs in a child process of its own (this
//! binary again, with a hidden subcommand) pinned to a core with `taskset`: the hop and
//! the gateway to the server core, the upstream and this process (the load generator)
//! to the client core. Three scenarios: closed-loop throughput, latency at concurrency
//! 1, and streamed answers with spaced chunks. The ratios are printed next to the goals.
#![forbid(unsafe_code)]

mod client;
mod cpu;
mod profile;
mod report;
mod serve;
mod upstream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;
use sg_loadtest::admin::AdminApi;
use sg_loadtest::child::{ChildProcess, taskset};

use crate::client::{LoopRun, StreamRun, Target, Window};
use crate::cpu::{Meter, Snapshot, Usage};
use crate::report::{Goal, Throughput};
use crate::serve::UPSTREAM_KEY;
use crate::upstream::StreamShape;

/// SecureGate's hot path next to a bare proxy hop: direct, bare hyper hop and gateway
/// under the same load, each server in its own process pinned to a core; prints
/// throughput per core, added latency at concurrency 1, streaming timings and their
/// ratios against the goals.
#[derive(Debug, Parser)]
#[command(name = "sg-hotpath", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Role>,
    /// Core of the server under test (the hop, then the gateway).
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core of the load generator (this process).
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Core of the fixed-answer upstream (default: the client core).
    #[arg(long)]
    upstream_core: Option<usize>,
    /// Throughput phase: concurrent connections (one worker each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Seconds measured per target, in the throughput and concurrency-1 phases.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Seconds of the same load before measuring, per target and phase.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup: u64,
    /// Streaming phase: content chunks per answer.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=1000))]
    stream_chunks: u32,
    /// Streaming phase: milliseconds between two content chunks.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    stream_gap_ms: u64,
    /// Streaming phase: measured answers per target.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    stream_requests: u32,
    /// Streaming phase: answers before measuring, per target.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    stream_warmup: u32,
    /// Record the gateway with `perf record -F 999 -g` for this many seconds at the start
    /// of its throughput phase's measured window, and print the top of `perf report`.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    profile_gateway: Option<u64>,
    /// Longest wait for the usage view to count every request the gateway answered.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=3600))]
    accounting_wait: u64,
}

/// The children's roles (internal: the benchmark runs itself with these).
#[derive(Debug, Subcommand)]
enum Role {
    /// Serve the fixed-answer upstream.
    #[command(name = "serve-upstream", hide = true)]
    Upstream {
        #[arg(long, default_value_t = 8)]
        chunks: u32,
        #[arg(long, default_value_t = 0)]
        gap_ms: u64,
    },
    /// Serve a bare pass-through hop to the upstream's origin.
    #[command(name = "serve-passthrough", hide = true)]
    Passthrough {
        #[arg(long)]
        upstream: String,
    },
    /// Serve SecureGate embedded, with a connection to the upstream's OpenAI base URL.
    #[command(name = "serve-gateway", hide = true)]
    Gateway {
        #[arg(long)]
        upstream: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(serve) = &cli.serve {
        // Pinned by `taskset`: one runtime thread per core we may run on.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let result = runtime.block_on(async {
            match serve {
                Role::Upstream { chunks, gap_ms } => {
                    serve::serve_upstream(StreamShape {
                        chunks: *chunks,
                        gap: Duration::from_millis(*gap_ms),
                    })
                    .await
                }
                Role::Passthrough { upstream } => {
                    sg_loadtest::child::serve_passthrough(upstream).await
                }
                Role::Gateway { upstream } => serve::serve_gateway(upstream).await,
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
        return result;
    }
    let online = online_cores().context("reading /sys/devices/system/cpu/online")?;
    let upstream_core = cli.upstream_core.unwrap_or(cli.client_core);
    for core in [cli.server_core, cli.client_core, upstream_core] {
        if !online.contains(&core) {
            bail!("core {core} is not online (online: {online:?})");
        }
    }
    if cli.server_core == cli.client_core || cli.server_core == upstream_core {
        bail!("the server core must differ from the client and upstream cores");
    }
    pin_self(cli.client_core)?;
    // The load generator: one thread, on the client core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(run(&cli, upstream_core, online.len()));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Online core numbers, from `/sys/devices/system/cpu/online` (`0-3,6`).
fn online_cores() -> anyhow::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(&text).context("unreadable CPU list")
}

fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for range in text.trim().split(',') {
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                cores.extend(a..=b);
            }
            None => cores.push(range.parse().ok()?),
        }
    }
    Some(cores)
}

/// Pins this process (all its threads: only the main one exists yet) to `core`.
fn pin_self(core: usize) -> anyhow::Result<()> {
    let taskset = taskset()?;
    let output = std::process::Command::new(&taskset)
        .args(["-a", "-p", "-c"])
        .arg(core.to_string())
        .arg(std::process::id().to_string())
        .output()
        .with_context(|| format!("running {}", taskset.display()))?;
    if !output.status.success() {
        bail!(
            "taskset could not pin the load generator to core {core}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Reads the cores and the processes at the edges of the measured window, and runs the
/// profiler during it if asked.
struct CpuWindow<'a> {
    meter: &'a Meter,
    start: Option<Snapshot>,
    usage: Option<Usage>,
    profile: Option<(u32, u64, PathBuf)>,
    recording: Option<Result<profile::Recording, String>>,
}

impl<'a> CpuWindow<'a> {
    fn new(meter: &'a Meter) -> Self {
        Self {
            meter,
            start: None,
            usage: None,
            profile: None,
            recording: None,
        }
    }
}

impl Window for CpuWindow<'_> {
    fn opened(&mut self) {
        if let Some((pid, seconds, file)) = &self.profile {
            self.recording = Some(profile::start(*pid, *seconds, file));
        }
        self.start = self.meter.read().ok();
    }

    fn closed(&mut self) {
        if let (Some(a), Ok(b)) = (&self.start, self.meter.read()) {
            self.usage = Some(self.meter.between(a, &b));
        }
    }
}

/// Where to read the gateway's usage view.
struct Accounting {
    admin: AdminApi,
    project_id: String,
    /// Requests the gateway answered 2xx before the runs.
    probes: u64,
}

/// What the usage view said.
struct Counted {
    counted: u64,
    expected: u64,
    waited: Duration,
}

impl Accounting {
    fn from_child(child: &ChildProcess) -> anyhow::Result<Self> {
        let admin = child
            .field("admin")
            .context("the gateway announced no admin URL")?;
        let token = child
            .field("admin_token")
            .context("the gateway announced no admin token")?;
        let project_id = child
            .field("project_id")
            .context("the gateway announced no project")?
            .to_owned();
        let probes = child
            .announced
            .get("probes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(Self {
            admin: AdminApi::new(admin.to_owned(), token.to_owned())?,
            project_id,
            probes,
        })
    }

    /// Polls the project's usage view until it counts `answered` (+ the probes)
    /// requests, or `limit` has passed.
    async fn wait(&self, answered: u64, limit: Duration) -> anyhow::Result<Counted> {
        let expected = answered + self.probes;
        let started = Instant::now();
        let path = format!("/projects/{}/usage", self.project_id);
        loop {
            let usage = self.admin.get(&path).await?;
            let counted = usage
                .get("totals")
                .and_then(|t| t.get("requests"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if counted >= expected || started.elapsed() >= limit {
                return Ok(Counted {
                    counted,
                    expected,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Children {
    upstream: ChildProcess,
    hop: ChildProcess,
    gateway: ChildProcess,
}

impl Children {
    async fn stop(self) {
        self.gateway.stop().await;
        self.hop.stop().await;
        self.upstream.stop().await;
    }
}

async fn start_children(cli: &Cli, upstream_core: usize) -> anyhow::Result<Children> {
    eprintln!("starting the upstream, the hop and the gateway…");
    let upstream = ChildProcess::spawn(
        "serve-upstream",
        &[
            "--chunks".into(),
            cli.stream_chunks.to_string(),
            "--gap-ms".into(),
            cli.stream_gap_ms.to_string(),
        ],
        Some(upstream_core),
    )
    .await
    .context("starting the upstream")?;
    let origin = upstream.url()?;
    let hop = ChildProcess::spawn(
        "serve-passthrough",
        &["--upstream".into(), origin.clone()],
        Some(cli.server_core),
    )
    .await
    .context("starting the hop")?;
    let gateway = ChildProcess::spawn(
        "serve-gateway",
        &["--upstream".into(), format!("{origin}/v1")],
        Some(cli.server_core),
    )
    .await
    .context("starting the gateway")?;
    Ok(Children {
        upstream,
        hop,
        gateway,
    })
}

async fn run(cli: &Cli, upstream_core: usize, online: usize) -> anyhow::Result<()> {
    let children = start_children(cli, upstream_core).await?;
    let outcome = measure(cli, upstream_core, online, &children).await;
    eprintln!("stopping…");
    children.stop().await;
    outcome
}

/// The three phases' figures of one target.
struct Figures {
    throughput: LoopRun,
    usage: Usage,
    latency: LoopRun,
    stream: StreamRun,
}

async fn measure(
    cli: &Cli,
    upstream_core: usize,
    online: usize,
    children: &Children,
) -> anyhow::Result<()> {
    let upstream_url = children.upstream.url()?;
    let hop_url = children.hop.url()?;
    let gateway_url = children.gateway.url()?;
    let key = children
        .gateway
        .field("key")
        .context("the gateway announced no proxy key")?;
    let accounting = Accounting::from_child(&children.gateway)?;
    let targets = [
        Target::new("direct", &upstream_url, UPSTREAM_KEY)?,
        Target::new("hop", &hop_url, UPSTREAM_KEY)?,
        Target::new("gateway", &gateway_url, key)?,
    ];
    let own_pid = std::process::id();
    let profile = if cfg!(debug_assertions) {
        "debug (figures mean little: measure a --release build)"
    } else {
        "release"
    };
    println!(
        "sg-hotpath: direct → upstream; hop → bare hyper hop → upstream; gateway → SecureGate (embedded, usage accounting on) → upstream"
    );
    println!(
        "machine:   {online} cores online ({}), build {profile}",
        sg_loadtest::cpu_model()
    );
    println!(
        "pinning:   server under test on core {}; load generator on core {}; upstream on core {upstream_core} (taskset)",
        cli.server_core, cli.client_core
    );
    println!(
        "processes: load generator pid {own_pid}; upstream pid {} {upstream_url}; hop pid {} {hop_url}; gateway pid {} {gateway_url}",
        children.upstream.pid, children.hop.pid, children.gateway.pid
    );
    println!(
        "           profile one with: perf record -F 999 -g -p {} -o gateway.perf.data -- sleep 5",
        children.gateway.pid
    );
    println!(
        "requests:  POST {}, HTTP/1.1 over kept-alive connections (one per worker, TCP_NODELAY)",
        upstream::PATH
    );
    println!();

    let meter = Meter::new(vec![
        children.upstream.pid,
        children.hop.pid,
        children.gateway.pid,
        own_pid,
    ]);
    let warmup = Duration::from_secs(cli.warmup);
    let duration = Duration::from_secs(cli.duration);
    let accounting_limit = Duration::from_secs(cli.accounting_wait);
    let mut gateway_answered = 0u64;
    let mut settle = Vec::new();
    let mut profile_top: Option<(PathBuf, Result<String, String>)> = None;

    // (a) throughput
    let mut throughput = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        eprintln!(
            "(a) throughput: {} with {} connections, {} s warm-up + {} s…",
            target.name, cli.concurrency, cli.warmup, cli.duration
        );
        let mut window = CpuWindow::new(&meter);
        if i == 2
            && let Some(seconds) = cli.profile_gateway
        {
            let file = std::env::temp_dir().join(format!(
                "sg-hotpath-gateway-{}.perf.data",
                children.gateway.pid
            ));
            window.profile = Some((children.gateway.pid, seconds.min(cli.duration), file));
        }
        let run = client::closed_loop(
            target,
            false,
            cli.concurrency as usize,
            warmup,
            duration,
            &mut window,
        )
        .await?;
        if let Some(recording) = window.recording.take() {
            let file = window
                .profile
                .as_ref()
                .map(|(_, _, f)| f.clone())
                .unwrap_or_default();
            let top = match recording {
                Ok(r) => r.finish().await,
                Err(e) => Err(e),
            };
            profile_top = Some((file, top));
        }
        if i == 2 {
            gateway_answered += run.success_total;
            eprintln!("    waiting for the usage view to count the gateway's requests…");
            settle.push((
                "throughput",
                accounting.wait(gateway_answered, accounting_limit).await?,
            ));
        }
        throughput.push((run, window.usage.unwrap_or_default()));
    }

    // (b) latency at concurrency 1
    let mut latency = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        eprintln!(
            "(b) latency: {} at concurrency 1, {} s warm-up + {} s…",
            target.name, cli.warmup, cli.duration
        );
        let mut window = CpuWindow::new(&meter);
        let run = client::closed_loop(target, false, 1, warmup, duration, &mut window).await?;
        if i == 2 {
            gateway_answered += run.success_total;
            eprintln!("    waiting for the usage view to count the gateway's requests…");
            settle.push((
                "latency",
                accounting.wait(gateway_answered, accounting_limit).await?,
            ));
        }
        latency.push(run);
    }

    // (c) streaming
    let mut streams = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        eprintln!(
            "(c) streaming: {} with {} answers of {} chunks {} ms apart (+{} warm-up)…",
            target.name,
            cli.stream_requests,
            cli.stream_chunks,
            cli.stream_gap_ms,
            cli.stream_warmup
        );
        let run = client::streamed(
            target,
            cli.stream_chunks,
            cli.stream_warmup,
            cli.stream_requests,
        )
        .await?;
        if i == 2 {
            gateway_answered += run.success_total;
            eprintln!("    waiting for the usage view to count the gateway's requests…");
            settle.push((
                "streaming",
                accounting.wait(gateway_answered, accounting_limit).await?,
            ));
        }
        streams.push(run);
    }

    let mut figures: Vec<Figures> = Vec::new();
    for ((t, l), s) in throughput.into_iter().zip(latency).zip(streams) {
        figures.push(Figures {
            throughput: t.0,
            usage: t.1,
            latency: l,
            stream: s,
        });
    }
    let [direct, hop, gateway] =
        <[Figures; 3]>::try_from(figures).map_err(|_| anyhow::anyhow!("three targets expected"))?;
    print_results(
        cli,
        upstream_core,
        [&direct, &hop, &gateway],
        &settle,
        profile_top,
    );
    Ok(())
}

fn print_results(
    cli: &Cli,
    upstream_core: usize,
    [direct, hop, gateway]: [&Figures; 3],
    settle: &[(&str, Counted)],
    profile_top: Option<(PathBuf, Result<String, String>)>,
) {
    // Watched processes: upstream, hop, gateway, load generator.
    let proc_cpu = |u: &Usage, i: usize| u.processes.get(i).copied().flatten();
    let t = [
        Throughput {
            run: &direct.throughput,
            usage: &direct.usage,
            server_cpu: None,
            upstream_cpu: proc_cpu(&direct.usage, 0),
            client_cpu: proc_cpu(&direct.usage, 3),
        },
        Throughput {
            run: &hop.throughput,
            usage: &hop.usage,
            server_cpu: proc_cpu(&hop.usage, 1),
            upstream_cpu: proc_cpu(&hop.usage, 0),
            client_cpu: proc_cpu(&hop.usage, 3),
        },
        Throughput {
            run: &gateway.throughput,
            usage: &gateway.usage,
            server_cpu: proc_cpu(&gateway.usage, 2),
            upstream_cpu: proc_cpu(&gateway.usage, 0),
            client_cpu: proc_cpu(&gateway.usage, 3),
        },
    ];
    println!(
        "(a) max throughput: closed loop, {} connections, {} s warm-up + {} s measured per target",
        cli.concurrency, cli.warmup, cli.duration
    );
    print!(
        "{}",
        report::render_throughput(
            [&t[0], &t[1], &t[2]],
            cli.server_core,
            cli.client_core,
            upstream_core
        )
    );
    for (name, f) in [("direct", direct), ("hop", hop), ("gateway", gateway)] {
        if let Some(e) = &f.throughput.first_error {
            println!("  first error ({name}): {e}");
        }
    }
    println!();
    println!(
        "(b) latency at concurrency 1: one connection, {} s warm-up + {} s measured per target",
        cli.warmup, cli.duration
    );
    print!(
        "{}",
        report::render_latency([&direct.latency, &hop.latency, &gateway.latency])
    );
    for (name, f) in [("direct", direct), ("hop", hop), ("gateway", gateway)] {
        if let Some(e) = &f.latency.first_error {
            println!("  first error ({name}): {e}");
        }
    }
    println!();
    println!(
        "(c) streaming at concurrency 1: {} content chunks {} ms apart, then usage + [DONE]; {} answers (+{} warm-up) per target",
        cli.stream_chunks, cli.stream_gap_ms, cli.stream_requests, cli.stream_warmup
    );
    print!(
        "{}",
        report::render_stream([&direct.stream, &hop.stream, &gateway.stream])
    );
    for (name, f) in [("direct", direct), ("hop", hop), ("gateway", gateway)] {
        if let Some(e) = &f.stream.first_error {
            println!("  first error ({name}): {e}");
        }
    }
    println!();
    println!(
        "usage accounting (gateway): 2xx answers vs requests counted by the projected usage view"
    );
    for (phase, c) in settle {
        println!(
            "  after the {phase} phase: {} counted of {} expected ({} after {:.1} s)",
            c.counted,
            c.expected,
            if c.counted == c.expected {
                "equal"
            } else {
                "NOT equal"
            },
            c.waited.as_secs_f64()
        );
    }
    println!();

    let mut goals = Vec::new();
    let (hop_pc, gw_pc) = (t[1].per_core(), t[2].per_core());
    goals.push(match (hop_pc, gw_pc) {
        (Some(h), Some(g)) if h > 0.0 => Goal {
            name: "throughput per core: gateway / hop (req per CPU-s)".into(),
            figure: format!("{g:.0} / {h:.0} = {:.2}", g / h),
            goal: format!("≥ {:.1}", report::GOAL_THROUGHPUT_RATIO),
            met: Some(g / h >= report::GOAL_THROUGHPUT_RATIO),
        },
        _ => Goal {
            name: "throughput per core: gateway / hop (req per CPU-s)".into(),
            figure: "CPU time unreadable".into(),
            goal: format!("≥ {:.1}", report::GOAL_THROUGHPUT_RATIO),
            met: None,
        },
    });
    let (h, g) = (hop.throughput.throughput(), gateway.throughput.throughput());
    if h > 0.0 {
        goals.push(Goal {
            name: "  (throughput: gateway / hop, req/s)".into(),
            figure: format!("{g:.0} / {h:.0} = {:.2}", g / h),
            goal: format!("≥ {:.1}", report::GOAL_THROUGHPUT_RATIO),
            met: Some(g / h >= report::GOAL_THROUGHPUT_RATIO),
        });
    }
    goals.push(report::added_ratio(
        &direct.latency,
        &hop.latency,
        &gateway.latency,
        0.5,
    ));
    goals.push(report::added_ratio(
        &direct.latency,
        &hop.latency,
        &gateway.latency,
        0.99,
    ));
    let (ds, gs) = (&direct.stream, &gateway.stream);
    goals.push(report::stream_goal(
        "first byte p50",
        report::quantile_ms(&ds.first_byte, 0.5),
        report::quantile_ms(&gs.first_byte, 0.5),
    ));
    goals.push(report::stream_goal(
        "first byte p99",
        report::quantile_ms(&ds.first_byte, 0.99),
        report::quantile_ms(&gs.first_byte, 0.99),
    ));
    goals.push(report::stream_goal(
        "chunk gap mean",
        report::mean_ms(&ds.gaps),
        report::mean_ms(&gs.gaps),
    ));
    goals.push(report::stream_goal(
        "chunk gap p99",
        report::quantile_ms(&ds.gaps, 0.99),
        report::quantile_ms(&gs.gaps, 0.99),
    ));
    goals.push(report::stream_goal(
        "chunk gap max",
        report::quantile_ms(&ds.gaps, 1.0),
        report::quantile_ms(&gs.gaps, 1.0),
    ));
    if let Some((_, last)) = settle.last() {
        goals.push(Goal {
            name: "every 2xx accounted (usage view count)".into(),
            figure: format!("{} of {}", last.counted, last.expected),
            goal: "equal".into(),
            met: Some(last.counted == last.expected),
        });
    }
    let errors = [direct, hop, gateway]
        .iter()
        .map(|f| f.throughput.errors + f.latency.errors + f.stream.errors)
        .sum::<u64>();
    goals.push(Goal {
        name: "errors, all targets and phases".into(),
        figure: errors.to_string(),
        goal: "0".into(),
        met: Some(errors == 0),
    });
    println!("goals");
    print!("{}", report::render_goals(&goals));

    if let Some((file, top)) = profile_top {
        println!();
        match top {
            Ok(text) => {
                println!(
                    "gateway profile (perf record -F 999 -g during its throughput phase), {}:",
                    file.display()
                );
                println!("{text}");
            }
            Err(why) => println!("gateway profile: not available: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["sg-hotpath"]).unwrap();
        assert_eq!(
            (cli.server_core, cli.client_core, cli.upstream_core),
            (0, 1, None)
        );
        assert_eq!((cli.concurrency, cli.duration, cli.warmup), (32, 5, 1));
        assert_eq!((cli.stream_chunks, cli.stream_gap_ms), (8, 5));
        assert!(cli.serve.is_none() && cli.profile_gateway.is_none());
        let cli = Cli::try_parse_from(["sg-hotpath", "serve-upstream", "--gap-ms", "3"]).unwrap();
        assert!(matches!(
            cli.serve,
            Some(Role::Upstream {
                chunks: 8,
                gap_ms: 3
            })
        ));
        assert!(Cli::try_parse_from(["sg-hotpath", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,6"), Some(vec![0, 1, 2, 6]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
