//! `sg-coldstart`: how long a gateway node joining a cluster whose control stream holds a
//! million keys takes to be ready, and how much memory it holds per key.
//!
//! A private nats-server (JetStream, on disk) gets the history of a realistic cluster —
//! tenant, project, a connection with a sealed provider key, then N `key.issued` events
//! published with pipelined PubAcks. A gateway node (role `all`, cluster mode) is then
//! started as a child process and timed from spawn to `/readyz` 200; its RSS is read from
//! `/proc` and compared with the same node started on a stream holding one key. A request
//! with one of the N keys checks the node really knows them.

mod breakdown;
mod fill;
mod nats;
mod node;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sg_eventlog::{EventLog, StreamName};

use crate::fill::History;
use crate::node::{Node, Program};

/// Cold start of a gateway node with a million keys in the control stream.
#[derive(Parser)]
#[command(name = "sg-coldstart")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// `key.issued` events in the control stream.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Keep the NATS store (and the master key) in this directory, and reuse it on the
    /// next run instead of filling again (one more key is issued per run, to have one
    /// whose secret is known). Default: a temporary directory, removed at the end.
    #[arg(long)]
    store: Option<PathBuf>,
    /// PubAcks in flight while filling.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Cold starts measured on the filled stream (each a fresh node).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Run the `securegate` binary at this path (`securegate server gateway`) instead of
    /// this binary's own copy of the same wiring.
    #[arg(long)]
    securegate: Option<PathBuf>,
    /// Seconds a node may take to be ready before the run fails.
    #[arg(long, default_value_t = 300)]
    ready_timeout: u64,
    /// Seconds waited after ready before the memory is read again.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// `perf record -g` the first measured node from spawn to ready, into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Where a cold start goes, in this process and without NATS: the same events
    /// decoded, folded into `sg_state::State` and into the gateway's key cache, timed
    /// per step, with the memory each part holds per key.
    Breakdown {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
    },
    /// The gateway node (a child of this program).
    #[command(hide = true)]
    ServeGateway {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        master_key_file: PathBuf,
        #[arg(long)]
        spool_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sg_loadtest::init_logging("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Some(Command::ServeGateway {
            listen,
            nats_url,
            master_key_file,
            spool_dir,
        }) => runtime.block_on(node::serve(listen, &nats_url, &master_key_file, &spool_dir)),
        Some(Command::Breakdown { keys }) => {
            drop(runtime);
            breakdown::run(keys)
        }
        None => runtime.block_on(run(cli.run)),
    }
}

/// One measured node start.
pub struct Measured {
    /// The 1-minute load average when the node was started (other work on the machine).
    pub load: f64,
    pub keys: u64,
    pub start: node::ColdStart,
    pub auth: Option<node::AuthCheck>,
}

async fn measure(
    program: &Program,
    nats_url: &str,
    master_key_file: &std::path::Path,
    args: &RunArgs,
    known: Option<&sg_proxy_key::ProxyKey>,
    perf: Option<&PathBuf>,
    keys: u64,
) -> anyhow::Result<Measured> {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let mut node = Node::spawn(program, nats_url, master_key_file)?;
    let profiler = match perf {
        Some(path) => Some(node::Perf::attach(node.pid, path)?),
        None => None,
    };
    let result = node
        .wait_ready(
            Duration::from_secs(args.ready_timeout),
            Duration::from_secs(args.settle),
        )
        .await;
    if let Some(p) = profiler {
        p.stop();
    }
    let start = match result {
        Ok(s) => s,
        Err(e) => {
            node.stop().await;
            return Err(e);
        }
    };
    let auth = match known {
        Some(key) => match node::check_auth(&node.url, key).await {
            Ok(a) => Some(a),
            Err(e) => {
                node.stop().await;
                return Err(e);
            }
        },
        None => None,
    };
    node.stop().await;
    Ok(Measured {
        load,
        keys,
        start,
        auth,
    })
}

async fn head(log: &dyn EventLog) -> anyhow::Result<u64> {
    Ok(log
        .bounds(StreamName::Control)
        .await
        .context("reading the control stream's bounds")?
        .last_seq)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(args.window >= 1, "--window must be at least 1");
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; build with --release for figures that mean anything"
        );
    }
    let program = match &args.securegate {
        Some(path) => {
            anyhow::ensure!(
                path.is_file(),
                "--securegate {} is not a file",
                path.display()
            );
            Program::Securegate(path.clone())
        }
        None => Program::ThisBinary,
    };
    // Fails with what to install if nats-server is missing.
    sg_testkit::nats::nats_server_binary()
        .await
        .context("sg-coldstart needs nats-server")?;
    let machine = report::Machine::detect();
    eprintln!("{}", machine.line());

    // ---- baseline: the same node on a stream holding one key ---------------------------
    eprintln!("baseline: a node on a control stream with 1 key …");
    let baseline = {
        let server = sg_testkit::NatsServer::start().await?;
        let dir = tempfile::Builder::new()
            .prefix("sg-coldstart-base-")
            .tempdir()?;
        let (master, kms) = fill::master_key(dir.path())?;
        let log = sg_app::connect_jetstream(&server.url(), 1).await?;
        let mut history = fill::create_parents(&*log, &*kms).await?;
        let key = fill::issue_one(&*log, &history, "baseline-probe").await?;
        history.keys = 1;
        let measured =
            measure(&program, &server.url(), &master, &args, Some(&key), None, 1).await?;
        drop(log);
        drop(server);
        measured
    };

    // ---- the filled stream ------------------------------------------------------------
    let temp_dir;
    let (dir, server) = match &args.store {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), nats::Nats::Kept(nats::start_kept(dir).await?))
        }
        None => {
            temp_dir = tempfile::Builder::new().prefix("sg-coldstart-").tempdir()?;
            (
                temp_dir.path().to_path_buf(),
                nats::Nats::Temporary(sg_testkit::NatsServer::start().await?),
            )
        }
    };
    let url = server.url();
    let (master, kms) = fill::master_key(&dir)?;
    let log: Arc<dyn EventLog> = sg_app::connect_jetstream(&url, 1).await?;
    let existing = match &args.store {
        Some(d) => fill::read_meta(d)?,
        None => None,
    };
    let (history, known, fill_stats): (History, sg_proxy_key::ProxyKey, Option<fill::FillStats>) =
        match existing {
            Some(mut history) if history.keys > 0 => {
                if history.keys < args.keys {
                    eprintln!(
                        "note: {} holds {} keys, fewer than --keys {}; reusing it as it is (use another --store to refill)",
                        dir.display(),
                        history.keys,
                        args.keys
                    );
                }
                eprintln!(
                    "reusing the filled control stream in {} ({} keys)",
                    dir.display(),
                    history.keys
                );
                let name = format!("coldstart-probe-{}", history.keys);
                let key = fill::issue_one(&*log, &history, &name).await?;
                history.keys += 1;
                fill::write_meta(&dir, &history)?;
                (history, key, None)
            }
            _ => {
                anyhow::ensure!(
                    head(&*log).await? == 0,
                    "the control stream in {} is not empty but has no description of what it holds; use an empty --store",
                    dir.display()
                );
                let mut history = fill::create_parents(&*log, &*kms).await?;
                eprintln!(
                    "filling the control stream with {} keys ({} in flight) …",
                    args.keys, args.window
                );
                let (known, stats) =
                    fill::publish_keys(&url, &history, args.keys, args.window).await?;
                history.keys = args.keys;
                if args.store.is_some() {
                    fill::write_meta(&dir, &history)?;
                }
                let known = known.context("the generator kept no key")?;
                (history, known, Some(stats))
            }
        };
    let stream_head = head(&*log).await?;
    let store_bytes = nats::du(&server.store_dir());
    if let Some(s) = &fill_stats {
        eprintln!(
            "filled: {} keys in {:.1} s ({:.0} keys/s); control stream head {stream_head}",
            s.published,
            s.elapsed.as_secs_f64(),
            s.rate()
        );
    }

    let mut runs = Vec::new();
    for i in 0..args.runs {
        eprintln!(
            "cold start {}/{}: a node on the control stream with {} keys …",
            i + 1,
            args.runs,
            history.keys
        );
        let perf = if i == 0 { args.perf.as_ref() } else { None };
        let known_key = if i == 0 { Some(&known) } else { None };
        let m = measure(
            &program,
            &url,
            &master,
            &args,
            known_key,
            perf,
            history.keys,
        )
        .await?;
        eprintln!(
            "  ready in {:.2} s, RSS {:.1} MiB",
            m.start.ready.as_secs_f64(),
            m.start.settled.rss as f64 / 1048576.0
        );
        runs.push(m);
    }
    drop(known);
    drop(log);
    server.stop().await;

    let summary = report::Summary {
        machine,
        program: match &program {
            Program::ThisBinary => {
                "sg-coldstart serve-gateway (sg_app::GatewayService, role all)".into()
            }
            Program::Securegate(p) => format!("{} server gateway --role all", p.display()),
        },
        fill: fill_stats,
        store_bytes,
        stream_head,
        baseline,
        runs,
        perf: args.perf.clone(),
    };
    summary.print();
    Ok(())
}
