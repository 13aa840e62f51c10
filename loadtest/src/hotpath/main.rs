//! `sg-hotpath`: SecureGate's hot path next to a bare proxy hop, per core.
//!
//! Up to four targets get the same load, one after the other: the fixed-answer upstream
//! directly, a bare hyper hop in front of it, SecureGate embedded (usage accounting on)
//! in front of it, and a SecureGate gateway node in cluster mode (usage events published
//! to NATS JetStream, projected into PostgreSQL) in front of it. Each server runs in a
//! child process of its own (this binary again, with a hidden subcommand) pinned to a
//! core with `taskset`: the hop and the gateways to the server core, the upstream, the
//! cluster's control plane and this process (the load generator) to the client core.
//! Three scenarios: closed-loop throughput, latency at concurrency 1, and streamed
//! answers with spaced chunks. The ratios are printed next to the goals.
#![forbid(unsafe_code)]

mod client;
mod cluster;
mod cpu;
mod profile;
mod report;
mod serve;
mod upstream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use sg_loadtest::admin::AdminApi;
use sg_loadtest::child::ChildProcess;

use crate::client::{LoopRun, StreamRun, Target, Window};
use crate::cluster::ClusterStack;
use crate::cpu::{Meter, Snapshot, Usage};
use crate::report::{Goal, Throughput};
use crate::serve::UPSTREAM_KEY;
use crate::upstream::StreamShape;

/// SecureGate's hot path next to a bare proxy hop: direct, bare hyper hop, gateway
/// embedded and gateway in cluster mode under the same load, each server in its own process pinned to a core; prints
/// throughput per core, added latency at concurrency 1, streaming timings and their
/// ratios against the goals.
#[derive(Debug, Parser)]
#[command(name = "sg-hotpath", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Role>,
    /// Targets besides direct (always run: the baseline), comma-separated:
    /// `hop`, `embedded`, `cluster`.
    #[arg(long, value_delimiter = ',', default_value = "hop,embedded,cluster")]
    targets: Vec<Kind>,
    /// Core of the server under test (the hop, then the gateways).
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core of the load generator (this process).
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Core of the fixed-answer upstream and of the cluster's control plane (NATS,
    /// PostgreSQL, admin API + projector); default: the client core.
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
    /// Record each gateway (embedded, cluster) with `perf record -F 999` for this many
    /// seconds at the start of its throughput phase's measured window, and print the top
    /// of `perf report`.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    profile_gateway: Option<u64>,
    /// With `--profile-gateway`: how perf records stacks, `fp` (frame pointers: cheap,
    /// shallow in this release build) or `dwarf` (deep stacks, costlier).
    #[arg(long, value_name = "MODE", default_value = "fp", value_parser = ["fp", "dwarf"])]
    profile_call_graph: String,
    /// Longest wait for the usage view to count every request a gateway answered.
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
    /// Serve cluster mode's control plane: the admin API and the projector.
    #[command(name = "serve-control", hide = true)]
    Control(sg_loadtest::child::ControlArgs),
    /// Serve a gateway node in cluster mode.
    #[command(name = "serve-gateway-cluster", hide = true)]
    GatewayCluster {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        master_key_file: PathBuf,
    },
}

/// The targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// The load generator → the upstream (always run).
    Direct,
    /// → a bare hyper hop → the upstream.
    Hop,
    /// → SecureGate embedded → the upstream.
    Embedded,
    /// → a SecureGate gateway node in cluster mode → the upstream.
    Cluster,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Hop => "hop",
            Kind::Embedded => "embedded",
            Kind::Cluster => "cluster",
        }
    }

    /// As in the goals' lines.
    fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Hop => "hop",
            Kind::Embedded => "embedded gateway",
            Kind::Cluster => "cluster gateway",
        }
    }

    fn is_gateway(self) -> bool {
        matches!(self, Kind::Embedded | Kind::Cluster)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sg_loadtest::init_logging("warn");
    if let Some(serve) = &cli.serve {
        // Pinned by `taskset`: one runtime thread per core we may run on.
        let runtime = sg_loadtest::runtime()?;
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
                Role::Control(args) => sg_loadtest::child::serve_control(args).await,
                Role::GatewayCluster {
                    nats_url,
                    master_key_file,
                } => serve::serve_gateway_cluster(nats_url, master_key_file).await,
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
    cluster::pin(std::process::id(), core).context("pinning the load generator")
}

/// Reads the cores and the processes at the edges of the measured window, and runs the
/// profiler during it if asked.
struct CpuWindow<'a> {
    meter: &'a Meter,
    start: Option<Snapshot>,
    usage: Option<Usage>,
    profile: Option<(u32, u64, PathBuf)>,
    call_graph: &'static str,
    recording: Option<Result<profile::Recording, String>>,
}

impl<'a> CpuWindow<'a> {
    fn new(meter: &'a Meter) -> Self {
        Self {
            meter,
            start: None,
            usage: None,
            profile: None,
            call_graph: "fp",
            recording: None,
        }
    }
}

impl Window for CpuWindow<'_> {
    fn opened(&mut self) {
        if let Some((pid, seconds, file)) = &self.profile {
            self.recording = Some(profile::start(*pid, *seconds, file, self.call_graph));
        }
        self.start = self.meter.read().ok();
    }

    fn closed(&mut self) {
        if let (Some(a), Ok(b)) = (&self.start, self.meter.read()) {
            self.usage = Some(self.meter.between(a, &b));
        }
    }
}

/// Where to read a gateway's usage view.
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
    /// From the embedded gateway child's announced line.
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

    /// From the cluster's control plane (the one request that checked the key worked
    /// is the probe).
    fn from_cluster(stack: &ClusterStack) -> anyhow::Result<Self> {
        Ok(Self {
            admin: cluster::admin_of(&stack.control)?,
            project_id: stack.project_id.clone(),
            probes: 1,
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
    hop: Option<ChildProcess>,
    embedded: Option<ChildProcess>,
    cluster: Option<ClusterStack>,
}

impl Children {
    async fn stop(self) {
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
        if let Some(embedded) = self.embedded {
            embedded.stop().await;
        }
        if let Some(hop) = self.hop {
            hop.stop().await;
        }
        self.upstream.stop().await;
    }
}

/// The targets to run, direct first, each once, in the order direct, hop, embedded,
/// cluster.
fn selected(cli: &Cli) -> Vec<Kind> {
    [Kind::Direct, Kind::Hop, Kind::Embedded, Kind::Cluster]
        .into_iter()
        .filter(|k| *k == Kind::Direct || cli.targets.contains(k))
        .collect()
}

async fn start_children(cli: &Cli, upstream_core: usize) -> anyhow::Result<Children> {
    let kinds = selected(cli);
    eprintln!(
        "starting the upstream and {}…",
        kinds[1..]
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
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
    let mut children = Children {
        upstream,
        hop: None,
        embedded: None,
        cluster: None,
    };
    let started = async {
        if kinds.contains(&Kind::Hop) {
            children.hop = Some(
                ChildProcess::spawn(
                    "serve-passthrough",
                    &["--upstream".into(), origin.clone()],
                    Some(cli.server_core),
                )
                .await
                .context("starting the hop")?,
            );
        }
        if kinds.contains(&Kind::Embedded) {
            children.embedded = Some(
                ChildProcess::spawn(
                    "serve-gateway",
                    &["--upstream".into(), format!("{origin}/v1")],
                    Some(cli.server_core),
                )
                .await
                .context("starting the embedded gateway")?,
            );
        }
        if kinds.contains(&Kind::Cluster) {
            eprintln!(
                "starting the cluster: private NATS JetStream and PostgreSQL, admin API + projector (core {upstream_core}), a gateway node (core {})…",
                cli.server_core
            );
            children.cluster = Some(
                ClusterStack::start(&format!("{origin}/v1"), cli.server_core, upstream_core)
                    .await?,
            );
        }
        anyhow::Ok(())
    }
    .await;
    match started {
        Ok(()) => Ok(children),
        Err(e) => {
            children.stop().await;
            Err(e)
        }
    }
}

async fn run(cli: &Cli, upstream_core: usize, online: usize) -> anyhow::Result<()> {
    let children = start_children(cli, upstream_core).await?;
    let outcome = measure(cli, upstream_core, online, &children).await;
    eprintln!("stopping…");
    children.stop().await;
    outcome
}

/// One target as measured.
struct Entry {
    kind: Kind,
    target: Target,
    /// The server under test's pid (none for direct).
    pid: Option<u32>,
    /// Gateways: where their requests are counted.
    accounting: Option<Accounting>,
}

/// The three phases' figures of one target.
struct Figures {
    kind: Kind,
    throughput: LoopRun,
    usage: Usage,
    latency: LoopRun,
    stream: StreamRun,
}

/// A gateway's usage view after each phase.
struct Settled {
    kind: Kind,
    phase: &'static str,
    counted: Counted,
}

/// The processes whose CPU time is read, by their place in the meter.
struct Watched {
    pids: Vec<u32>,
    /// How many of `pids` (at the end) are the cluster's control plane.
    control: usize,
}

impl Watched {
    fn cpu(&self, usage: &Usage, pid: u32) -> Option<f64> {
        let i = self.pids.iter().position(|p| *p == pid)?;
        usage.processes.get(i).copied().flatten()
    }

    /// The control plane's CPU seconds (none when a process was unreadable).
    fn control_cpu(&self, usage: &Usage) -> Option<f64> {
        if self.control == 0 {
            return None;
        }
        let from = self.pids.len() - self.control;
        usage
            .processes
            .get(from..)?
            .iter()
            .copied()
            .sum::<Option<f64>>()
    }
}

fn gateway_pids(children: &Children) -> Vec<(Kind, u32)> {
    let mut pids = Vec::new();
    if let Some(c) = &children.embedded {
        pids.push((Kind::Embedded, c.pid));
    }
    if let Some(c) = &children.cluster {
        pids.push((Kind::Cluster, c.gateway.pid));
    }
    pids
}

async fn measure(
    cli: &Cli,
    upstream_core: usize,
    online: usize,
    children: &Children,
) -> anyhow::Result<()> {
    let upstream_url = children.upstream.url()?;
    let mut entries = vec![Entry {
        kind: Kind::Direct,
        target: Target::new("direct", &upstream_url, UPSTREAM_KEY)?,
        pid: None,
        accounting: None,
    }];
    let mut processes = vec![format!(
        "upstream pid {} {upstream_url}",
        children.upstream.pid
    )];
    if let Some(hop) = &children.hop {
        let url = hop.url()?;
        processes.push(format!("hop pid {} {url}", hop.pid));
        entries.push(Entry {
            kind: Kind::Hop,
            target: Target::new("hop", &url, UPSTREAM_KEY)?,
            pid: Some(hop.pid),
            accounting: None,
        });
    }
    if let Some(gateway) = &children.embedded {
        let url = gateway.url()?;
        let key = gateway
            .field("key")
            .context("the embedded gateway announced no proxy key")?;
        processes.push(format!("embedded pid {} {url}", gateway.pid));
        entries.push(Entry {
            kind: Kind::Embedded,
            target: Target::new("embedded", &url, key)?,
            pid: Some(gateway.pid),
            accounting: Some(Accounting::from_child(gateway)?),
        });
    }
    if let Some(stack) = &children.cluster {
        let url = stack.gateway.url()?;
        processes.push(format!("cluster gateway pid {} {url}", stack.gateway.pid));
        processes.push(format!(
            "control plane pids: admin+projector {}, nats-server {}, postgres {:?}",
            stack.control.pid,
            stack
                .nats_pid
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            stack.postgres_pids
        ));
        entries.push(Entry {
            kind: Kind::Cluster,
            target: Target::new("cluster", &url, &stack.key)?,
            pid: Some(stack.gateway.pid),
            accounting: Some(Accounting::from_cluster(stack)?),
        });
    }
    let own_pid = std::process::id();
    let profile = if cfg!(debug_assertions) {
        "debug (figures mean little: measure a --release build)"
    } else {
        "release"
    };
    println!(
        "sg-hotpath: direct → upstream; hop → bare hyper hop → upstream; embedded → SecureGate embedded (SQLite log and views) → upstream; cluster → SecureGate gateway node (usage events to NATS JetStream, projected into PostgreSQL) → upstream"
    );
    println!(
        "machine:   {online} cores online ({}), build {profile}",
        sg_loadtest::cpu_model()
    );
    println!(
        "pinning:   server under test on core {}; load generator on core {}; upstream{} on core {upstream_core} (taskset)",
        cli.server_core,
        cli.client_core,
        if children.cluster.is_some() {
            " and the cluster's control plane (NATS, PostgreSQL, admin API + projector)"
        } else {
            ""
        }
    );
    println!("processes: load generator pid {own_pid}");
    for p in &processes {
        println!("           {p}");
    }
    for (kind, pid) in gateway_pids(children) {
        println!(
            "           profile the {} with: perf record -F 999 -g -p {pid} -o {}.perf.data -- sleep 5",
            kind.label(),
            kind.name()
        );
    }
    println!(
        "requests:  POST {}, HTTP/1.1 over kept-alive connections (one per worker, TCP_NODELAY)",
        upstream::PATH
    );
    println!();

    let mut pids = vec![own_pid, children.upstream.pid];
    pids.extend(entries.iter().filter_map(|e| e.pid));
    let control = children
        .cluster
        .as_ref()
        .map(ClusterStack::control_pids)
        .unwrap_or_default();
    let watched = Watched {
        control: control.len(),
        pids: pids.into_iter().chain(control).collect(),
    };
    let meter = Meter::new(watched.pids.clone());
    let warmup = Duration::from_secs(cli.warmup);
    let duration = Duration::from_secs(cli.duration);
    let accounting_limit = Duration::from_secs(cli.accounting_wait);
    let mut answered = vec![0u64; entries.len()];
    let mut settle: Vec<Settled> = Vec::new();
    let mut profiles: Vec<(Kind, PathBuf, Result<String, String>)> = Vec::new();

    // (a) throughput
    let mut throughput = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        eprintln!(
            "(a) throughput: {} with {} connections, {} s warm-up + {} s…",
            entry.target.name, cli.concurrency, cli.warmup, cli.duration
        );
        let mut window = CpuWindow::new(&meter);
        if entry.kind.is_gateway()
            && let (Some(seconds), Some(pid)) = (cli.profile_gateway, entry.pid)
        {
            let file = std::env::temp_dir()
                .join(format!("sg-hotpath-{}-{pid}.perf.data", entry.kind.name()));
            window.profile = Some((pid, seconds.min(cli.duration), file));
            window.call_graph = if cli.profile_call_graph == "dwarf" {
                "dwarf"
            } else {
                "fp"
            };
        }
        let run = client::closed_loop(
            &entry.target,
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
            profiles.push((entry.kind, file, top));
        }
        answered[i] += run.success_total;
        settle_phase(
            entry,
            answered[i],
            "throughput",
            accounting_limit,
            &mut settle,
        )
        .await?;
        throughput.push((run, window.usage.unwrap_or_default()));
    }

    // (b) latency at concurrency 1
    let mut latency = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        eprintln!(
            "(b) latency: {} at concurrency 1, {} s warm-up + {} s…",
            entry.target.name, cli.warmup, cli.duration
        );
        let mut window = CpuWindow::new(&meter);
        let run =
            client::closed_loop(&entry.target, false, 1, warmup, duration, &mut window).await?;
        answered[i] += run.success_total;
        settle_phase(entry, answered[i], "latency", accounting_limit, &mut settle).await?;
        latency.push(run);
    }

    // (c) streaming
    let mut streams = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        eprintln!(
            "(c) streaming: {} with {} answers of {} chunks {} ms apart (+{} warm-up)…",
            entry.target.name,
            cli.stream_requests,
            cli.stream_chunks,
            cli.stream_gap_ms,
            cli.stream_warmup
        );
        let run = client::streamed(
            &entry.target,
            cli.stream_chunks,
            cli.stream_warmup,
            cli.stream_requests,
        )
        .await?;
        answered[i] += run.success_total;
        settle_phase(
            entry,
            answered[i],
            "streaming",
            accounting_limit,
            &mut settle,
        )
        .await?;
        streams.push(run);
    }

    let figures: Vec<Figures> = entries
        .iter()
        .zip(throughput.into_iter().zip(latency).zip(streams))
        .map(|(e, ((t, l), s))| Figures {
            kind: e.kind,
            throughput: t.0,
            usage: t.1,
            latency: l,
            stream: s,
        })
        .collect();
    let cores = report::Cores {
        server: cli.server_core,
        client: cli.client_core,
        upstream: upstream_core,
        control_plane: children.cluster.is_some(),
    };
    print_results(cli, &cores, &entries, &figures, &watched, &settle, profiles);
    Ok(())
}

/// After a gateway's phase: waits until its usage view has counted every request it
/// answered so far, so the projector's catching up never falls on the next target.
async fn settle_phase(
    entry: &Entry,
    answered: u64,
    phase: &'static str,
    limit: Duration,
    settle: &mut Vec<Settled>,
) -> anyhow::Result<()> {
    let Some(accounting) = &entry.accounting else {
        return Ok(());
    };
    eprintln!(
        "    waiting for the usage view to count the {}'s requests…",
        entry.kind.label()
    );
    let counted = accounting.wait(answered, limit).await?;
    settle.push(Settled {
        kind: entry.kind,
        phase,
        counted,
    });
    Ok(())
}

fn print_results(
    cli: &Cli,
    cores: &report::Cores,
    entries: &[Entry],
    figures: &[Figures],
    watched: &Watched,
    settle: &[Settled],
    profiles: Vec<(Kind, PathBuf, Result<String, String>)>,
) {
    let names: Vec<&str> = figures.iter().map(|f| f.kind.name()).collect();
    let own_pid = watched.pids[0];
    let upstream_pid = watched.pids[1];
    let t: Vec<Throughput<'_>> = figures
        .iter()
        .zip(entries)
        .map(|(f, e)| Throughput {
            run: &f.throughput,
            usage: &f.usage,
            server_cpu: e.pid.and_then(|pid| watched.cpu(&f.usage, pid)),
            control_cpu: (f.kind == Kind::Cluster)
                .then(|| watched.control_cpu(&f.usage))
                .flatten(),
            upstream_cpu: watched.cpu(&f.usage, upstream_pid),
            client_cpu: watched.cpu(&f.usage, own_pid),
        })
        .collect();
    let by_kind = |kind: Kind| figures.iter().position(|f| f.kind == kind);
    println!(
        "(a) max throughput: closed loop, {} connections, {} s warm-up + {} s measured per target",
        cli.concurrency, cli.warmup, cli.duration
    );
    print!("{}", report::render_throughput(&names, &t, cores));
    for f in figures {
        if let Some(e) = &f.throughput.first_error {
            println!("  first error ({}): {e}", f.kind.name());
        }
    }
    println!();
    println!(
        "(b) latency at concurrency 1: one connection, {} s warm-up + {} s measured per target",
        cli.warmup, cli.duration
    );
    let runs: Vec<&LoopRun> = figures.iter().map(|f| &f.latency).collect();
    print!("{}", report::render_latency(&names, &runs));
    for f in figures {
        if let Some(e) = &f.latency.first_error {
            println!("  first error ({}): {e}", f.kind.name());
        }
    }
    println!();
    println!(
        "(c) streaming at concurrency 1: {} content chunks {} ms apart, then usage + [DONE]; {} answers (+{} warm-up) per target",
        cli.stream_chunks, cli.stream_gap_ms, cli.stream_requests, cli.stream_warmup
    );
    let streams: Vec<&StreamRun> = figures.iter().map(|f| &f.stream).collect();
    print!("{}", report::render_stream(&names, &streams));
    for f in figures {
        if let Some(e) = &f.stream.first_error {
            println!("  first error ({}): {e}", f.kind.name());
        }
    }
    println!();
    if !settle.is_empty() {
        println!("usage accounting: 2xx answers vs requests counted by the projected usage view");
        for s in settle {
            let c = &s.counted;
            println!(
                "  {}, after the {} phase: {} counted of {} expected ({} after {:.1} s)",
                s.kind.label(),
                s.phase,
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
    }

    let mut goals = Vec::new();
    let direct = &figures[0];
    let hop = by_kind(Kind::Hop);
    for kind in [Kind::Embedded, Kind::Cluster] {
        let Some(g) = by_kind(kind) else { continue };
        let label = kind.label();
        let gateway = &figures[g];
        let name = format!("throughput per core: {label} / hop (req per CPU-s)");
        let goal = format!("≥ {:.1}", report::GOAL_THROUGHPUT_RATIO);
        goals.push(match hop.map(|h| (t[h].per_core(), t[g].per_core())) {
            Some((Some(h), Some(g))) if h > 0.0 => Goal {
                name,
                figure: format!("{g:.0} / {h:.0} = {:.2}", g / h),
                goal,
                met: Some(g / h >= report::GOAL_THROUGHPUT_RATIO),
            },
            Some(_) => Goal {
                name,
                figure: "CPU time unreadable".into(),
                goal,
                met: None,
            },
            None => Goal {
                name,
                figure: "no hop (see --targets)".into(),
                goal,
                met: None,
            },
        });
        if let Some(hi) = hop {
            let (h, g) = (
                figures[hi].throughput.throughput(),
                gateway.throughput.throughput(),
            );
            if h > 0.0 {
                goals.push(Goal {
                    name: format!("  (throughput: {label} / hop, req/s)"),
                    figure: format!("{g:.0} / {h:.0} = {:.2}", g / h),
                    goal: format!("≥ {:.1}", report::GOAL_THROUGHPUT_RATIO),
                    met: Some(g / h >= report::GOAL_THROUGHPUT_RATIO),
                });
            }
            for quantile in [0.5, 0.99] {
                goals.push(report::added_ratio(
                    label,
                    &direct.latency,
                    &figures[hi].latency,
                    &gateway.latency,
                    quantile,
                ));
            }
        }
        let (ds, gs) = (&direct.stream, &gateway.stream);
        // (figure, direct's histogram, the gateway's, quantile; `None`: the mean)
        let stream_figures = [
            ("first byte p50", &ds.first_byte, &gs.first_byte, Some(0.5)),
            ("first byte p99", &ds.first_byte, &gs.first_byte, Some(0.99)),
            ("chunk gap mean", &ds.gaps, &gs.gaps, None),
            ("chunk gap p99", &ds.gaps, &gs.gaps, Some(0.99)),
            ("chunk gap max", &ds.gaps, &gs.gaps, Some(1.0)),
        ];
        let figure = |h, quantile: Option<f64>| match quantile {
            Some(q) => report::quantile_ms(h, q),
            None => report::mean_ms(h),
        };
        for (name, direct_h, gateway_h, quantile) in stream_figures {
            goals.push(report::stream_goal(
                label,
                name,
                figure(direct_h, quantile),
                figure(gateway_h, quantile),
            ));
        }
        if let Some(last) = settle.iter().rev().find(|s| s.kind == kind) {
            goals.push(Goal {
                name: format!("every 2xx accounted, {label} (usage view count)"),
                figure: format!("{} of {}", last.counted.counted, last.counted.expected),
                goal: "equal".into(),
                met: Some(last.counted.counted == last.counted.expected),
            });
        }
    }
    let errors = figures
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

    for (kind, file, top) in profiles {
        println!();
        match top {
            Ok(text) => {
                println!(
                    "{} profile (perf record -F 999 --call-graph {} during its throughput phase), {}:",
                    kind.label(),
                    cli.profile_call_graph,
                    file.display()
                );
                println!("{text}");
            }
            Err(why) => println!("{} profile: not available: {why}", kind.label()),
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
    fn targets() {
        let cli = Cli::try_parse_from(["sg-hotpath"]).unwrap();
        assert_eq!(
            selected(&cli),
            [Kind::Direct, Kind::Hop, Kind::Embedded, Kind::Cluster]
        );
        let cli = Cli::try_parse_from(["sg-hotpath", "--targets", "cluster,hop"]).unwrap();
        assert_eq!(selected(&cli), [Kind::Direct, Kind::Hop, Kind::Cluster]);
        assert!(Cli::try_parse_from(["sg-hotpath", "--targets", "gateway"]).is_err());
        let cli = Cli::try_parse_from([
            "sg-hotpath",
            "serve-gateway-cluster",
            "--nats-url",
            "nats://127.0.0.1:1",
            "--master-key-file",
            "/k",
        ])
        .unwrap();
        assert!(matches!(cli.serve, Some(Role::GatewayCluster { .. })));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,6"), Some(vec![0, 1, 2, 6]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
