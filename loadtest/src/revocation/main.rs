//! `sg-revocation`: how long a revoked key goes on working, measured across three gateway
//! nodes in cluster mode.
//!
//! The parent starts a private NATS JetStream server and a private PostgreSQL
//! (`sg_testkit`), the mock upstream, and SecureGate as child processes of this binary
//! (hidden subcommands): an admin API with the projector, and three gateway nodes with
//! their own node ids. It provisions a tenant, project, `openai` connection to the mock
//! and one key per revocation through the admin API, and makes each key work on every
//! node. Then, one key at a time: a request with the key to every node (it must be
//! accepted), t0, the admin's revoke request, and from t0 on every node polled with the
//! key until it refuses it with 401 `key_revoked`. A revocation's figure is the slowest
//! node's first refusal; the admin's own answer is timed too.
#![forbid(unsafe_code)]

mod cluster;
mod probe;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use crate::cluster::Cluster;
use crate::probe::{Answer, Prober, poll_until_refused};
use crate::report::{Revocation, Run};

/// Pause between two revocations, for the nodes' usage publishing to settle.
const BETWEEN: Duration = Duration::from_millis(20);

/// Measures revocation propagation: the time from an admin's revoke request until every
/// one of three gateway nodes (cluster mode, NATS JetStream, PostgreSQL views) refuses
/// the key. Starts every part itself; prints p50/p90/p99/max and the goal's line.
#[derive(Debug, Parser)]
#[command(
    name = "sg-revocation",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Revocations to measure (one key each, revoked one after another).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    revocations: u32,
    /// Pause between two requests to one node while waiting for its refusal, µs (0: none;
    /// tokio's timer rounds a pause up to whole milliseconds).
    #[arg(long, value_name = "US", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    poll_interval_us: u64,
    /// How long a node may go on accepting a revoked key before the run counts it as a
    /// failure, ms.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    give_up_ms: u64,
    /// Gateway nodes.
    #[arg(long, value_name = "G", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    gateways: u32,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// The children's roles (internal: the benchmark runs itself with these).
#[derive(Debug, Subcommand)]
enum Serve {
    /// Serve the admin API and the projector.
    #[command(hide = true)]
    ServeAdmin(sg_loadtest::child::ControlArgs),
    /// Serve one gateway node.
    #[command(hide = true)]
    ServeGateway {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        master_key_file: PathBuf,
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        spool_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The children's local master key warning would be printed four times.
    let default_filter = if cli.serve.is_some() {
        "warn,sg_app=error"
    } else {
        "warn"
    };
    sg_loadtest::init_logging(default_filter);
    let cores = sg_loadtest::cores();
    let runtime = sg_loadtest::runtime()?;
    let result = runtime.block_on(async {
        match &cli.serve {
            Some(Serve::ServeAdmin(args)) => sg_loadtest::child::serve_control(args).await,
            Some(Serve::ServeGateway {
                nats_url,
                master_key_file,
                node_id,
                spool_dir,
            }) => {
                sg_loadtest::child::serve_cluster_gateway(
                    nats_url,
                    master_key_file,
                    node_id,
                    spool_dir,
                )
                .await
            }
            None => run(&cli, cores).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(cli: &Cli, cores: usize) -> anyhow::Result<()> {
    let cluster = Cluster::start(cli.gateways as usize).await?;
    let measured = measure(cli, cores, &cluster).await;
    eprintln!("stopping the cluster…");
    cluster.stop().await;
    let run = measured?;
    println!();
    print!("{}", run.render());
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&run.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

async fn measure(cli: &Cli, cores: usize, cluster: &Cluster) -> anyhow::Result<Run> {
    let count = cli.revocations as usize;
    let nodes = cluster.nodes.len();
    for node in &cluster.nodes {
        eprintln!("{}: pid {}, {}", node.id, node.pid(), node.url);
    }
    eprintln!("provisioning a tenant, a project, a connection and {count} keys…");
    let keys = cluster.provision(count).await?;
    let prober = Prober::new(cluster.nodes.iter().map(|n| n.url.clone()).collect())?;

    eprintln!("warm-up: every key on every node…");
    let mut warmup_accepted = 0;
    let mut warmup_unknown = 0;
    for (_, key) in &keys {
        let tries =
            futures::future::join_all((0..nodes).map(|node| prober.until_accepted(node, key)))
                .await;
        for t in tries {
            warmup_unknown += t?;
            warmup_accepted += 1;
        }
    }

    let admin = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let interval = Duration::from_micros(cli.poll_interval_us);
    let give_up = Duration::from_millis(cli.give_up_ms);
    let mut pre_accepted = 0;
    let mut pre_failures = Vec::new();
    let mut revocations = Vec::with_capacity(count);
    eprintln!(
        "measuring {count} revocations across {nodes} nodes (polling every {} µs)…",
        cli.poll_interval_us
    );
    for (i, (key_id, key)) in keys.iter().enumerate() {
        // The key must still work everywhere just before it is revoked.
        let before = futures::future::join_all((0..nodes).map(|node| prober.ask(node, key))).await;
        for (node, answer) in before.into_iter().enumerate() {
            match answer {
                Ok(Answer::Accepted) => pre_accepted += 1,
                Ok(other) => pre_failures.push(format!(
                    "revocation {}, {}: refused before its revocation: {other:?}",
                    i + 1,
                    cluster.nodes[node].id
                )),
                Err(e) => pre_failures.push(format!(
                    "revocation {}, {}: {e:#}",
                    i + 1,
                    cluster.nodes[node].id
                )),
            }
        }
        let shared_key: Arc<str> = Arc::from(key.as_str());
        let url = format!("{}/keys/{key_id}/revoke", cluster.admin_base);
        let request = admin
            .post(&url)
            .header(AUTHORIZATION, format!("Bearer {}", cluster.admin_token))
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"reason":"revocation benchmark"}"#);

        let t0 = Instant::now();
        let pollers: Vec<_> = (0..nodes)
            .map(|node| {
                tokio::spawn(poll_until_refused(
                    prober.clone(),
                    node,
                    shared_key.clone(),
                    t0,
                    interval,
                    give_up,
                ))
            })
            .collect();
        let answer = request.send().await;
        let ack = t0.elapsed();
        let ack_status = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            Err(e) => {
                eprintln!("revocation {}: the revoke request failed: {e:#}", i + 1);
                0
            }
        };
        let mut outcomes = Vec::with_capacity(nodes);
        for poller in pollers {
            outcomes.push(poller.await.context("a polling task failed")?);
        }
        revocations.push(Revocation {
            ack,
            ack_status,
            nodes: outcomes,
        });
        if (i + 1).is_multiple_of(10) {
            eprintln!("  {} of {count} revocations measured", i + 1);
        }
        tokio::time::sleep(BETWEEN).await;
    }

    eprintln!("final sweep: every revoked key on every node…");
    let mut sweep_refused = 0;
    let mut sweep_failures = Vec::new();
    for (i, (_, key)) in keys.iter().enumerate() {
        let answers = futures::future::join_all((0..nodes).map(|node| prober.ask(node, key))).await;
        for (node, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(Answer::Revoked) => sweep_refused += 1,
                Ok(other) => sweep_failures.push(format!(
                    "sweep, key {}, {}: {other:?}",
                    i + 1,
                    cluster.nodes[node].id
                )),
                Err(e) => sweep_failures.push(format!(
                    "sweep, key {}, {}: {e:#}",
                    i + 1,
                    cluster.nodes[node].id
                )),
            }
        }
    }

    Ok(Run {
        cpu: sg_loadtest::cpu_model(),
        cores,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        nats_version: cluster.nats_version.clone(),
        node_ids: cluster.nodes.iter().map(|n| n.id.clone()).collect(),
        poll_interval_us: cli.poll_interval_us,
        give_up_ms: cli.give_up_ms,
        keys: count,
        warmup_accepted,
        warmup_unknown,
        pre_accepted,
        pre_failures,
        revocations,
        sweep_refused,
        sweep_failures,
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults_and_ranges() {
        let cli = Cli::try_parse_from(["sg-revocation"]).unwrap();
        assert_eq!(
            (
                cli.revocations,
                cli.poll_interval_us,
                cli.give_up_ms,
                cli.gateways
            ),
            (100, 1000, 5000, 3)
        );
        assert!(cli.serve.is_none() && cli.json.is_none());
        for bad in [
            ["--revocations", "0"],
            ["--revocations", "1001"],
            ["--poll-interval-us", "100001"],
            ["--give-up-ms", "10"],
            ["--gateways", "0"],
        ] {
            let args = ["sg-revocation", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn children_are_called_by_hidden_subcommands() {
        let cli = Cli::try_parse_from([
            "sg-revocation",
            cluster::SERVE_GATEWAY,
            "--nats-url",
            "nats://127.0.0.1:4",
            "--master-key-file",
            "/tmp/k",
            "--node-id",
            "gw-2",
            "--spool-dir",
            "/tmp/s",
        ])
        .unwrap();
        assert!(
            matches!(cli.serve, Some(Serve::ServeGateway { node_id, .. }) if node_id == "gw-2")
        );
        let cli = Cli::try_parse_from([
            "sg-revocation",
            cluster::SERVE_ADMIN,
            "--nats-url",
            "nats://127.0.0.1:4",
            "--database-url",
            "postgres://x",
            "--master-key-file",
            "/tmp/k",
        ])
        .unwrap();
        assert!(matches!(cli.serve, Some(Serve::ServeAdmin { .. })));
        let mut help = Vec::new();
        <Cli as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(
            !help.contains("serve-gateway") && !help.contains("serve-admin"),
            "{help}"
        );
        assert!(help.contains("--poll-interval-us"));
    }
}
