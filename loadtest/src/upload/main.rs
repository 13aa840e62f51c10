//! `sg-upload-bench`: the memory a large multipart upload costs while it passes
//! through SecureGate, side by side with a bare HTTP pass-through hop.
//!
//! The parent process holds the media stand-in (the upstream) and the client. Each
//! target runs in a child process of its own (this binary again, with a hidden
//! subcommand), so that its resident set size is its own: first the pass-through, then
//! the gateway. Each gets a warm-up upload, a reset of its peak RSS, then the same
//! uploads; every answer is checked byte for byte.
#![forbid(unsafe_code)]

mod child;
mod memory;
mod report;
mod send;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use sg_testkit::MediaUpstream;

use crate::child::{ChildTarget, Kind, UPSTREAM_KEY};
use crate::report::{SetupInfo, TargetFigures};
use crate::send::{Target, Upload};

const MIB: u64 = 1024 * 1024;
/// The warm-up upload's size, MiB.
const WARMUP_MIB: u64 = 1;
/// Pause between the warm-up and the measurement, for the child to settle.
const SETTLE: Duration = Duration::from_millis(500);
/// How often the child's RSS is sampled during the uploads.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Most MiB sent per target (uploads × size).
const MAX_TOTAL_MIB: u64 = 64 * 1024;

/// Measures the memory a large multipart upload costs while passing through SecureGate,
/// next to a bare HTTP pass-through hop. Each target runs in its own child process;
/// its peak RSS during the uploads is compared with its RSS before them. Prints a
/// side-by-side table: pass-through, gateway, difference.
#[derive(Debug, Parser)]
#[command(
    name = "sg-upload-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Size of each upload's file, MiB (the gateway's upload limit is 512 MiB).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=500))]
    upload_mb: u64,
    /// Uploads sent to each target.
    #[arg(long, value_name = "U", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    uploads: u32,
    /// Most uploads in flight at once.
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Size of the pieces the client sends each body in, KiB.
    #[arg(long, value_name = "K", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16384))]
    piece_kb: u32,
    /// Seconds one upload may take (send and answer) before the run fails.
    #[arg(long, value_name = "S", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// The children's roles (internal: the benchmark runs itself with these).
#[derive(Debug, Subcommand)]
enum Serve {
    /// Serve SecureGate embedded, provisioned with a connection to the upstream.
    #[command(hide = true)]
    ServeGateway {
        /// The upstream's OpenAI base URL (`http://127.0.0.1:PORT/v1`).
        #[arg(long)]
        upstream: String,
    },
    /// Serve a bare pass-through hop to the upstream.
    #[command(hide = true)]
    ServePassthrough {
        /// The upstream's origin (`http://127.0.0.1:PORT`).
        #[arg(long)]
        upstream: String,
    },
}

/// Cores the machine has online, from `/sys/devices/system/cpu/online` (`0-3,6`).
fn online_cores() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    parse_cpu_list(&text)
}

/// The number of CPUs in a kernel CPU list such as `0-3,6`.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut count = 0;
    for range in text.trim().split(',') {
        count += match range.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                range.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(count)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.serve.is_none() && u64::from(cli.uploads) * cli.upload_mb > MAX_TOTAL_MIB {
        bail!("--uploads × --upload-mb must stay under {MAX_TOTAL_MIB} MiB");
    }
    sg_loadtest::init_logging("warn");
    let cores = sg_loadtest::cores();
    let runtime = sg_loadtest::runtime()?;
    let result = runtime.block_on(async {
        match &cli.serve {
            Some(Serve::ServeGateway { upstream }) => child::serve_gateway(upstream).await,
            Some(Serve::ServePassthrough { upstream }) => {
                sg_loadtest::child::serve_passthrough(upstream).await
            }
            None => run(&cli, cores).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(cli: &Cli, cores: usize) -> anyhow::Result<()> {
    let info = SetupInfo {
        upload_mib: cli.upload_mb,
        uploads: cli.uploads as usize,
        concurrency: cli.concurrency as usize,
        piece_kib: cli.piece_kb as usize,
        timeout_secs: cli.timeout,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores,
        online_cores: online_cores(),
        cpu: sg_loadtest::cpu_model(),
    };
    print!("{}", report::render_setup(&info));
    println!();

    let piece = cli.piece_kb as usize * 1024;
    eprintln!(
        "computing what the upstream must receive for {} uploads of {} MiB…",
        cli.uploads, cli.upload_mb
    );
    let file_bytes = cli.upload_mb * MIB;
    let prepared: Vec<_> = (1..=u64::from(cli.uploads))
        .map(|seed| tokio::task::spawn_blocking(move || Upload::prepare(seed, file_bytes, piece)))
        .collect();
    let mut uploads = Vec::with_capacity(prepared.len());
    for task in prepared {
        uploads.push(task.await.context("preparing an upload")?);
    }
    let warmup = Upload::prepare(0, WARMUP_MIB * MIB, piece);

    let upstream = MediaUpstream::start(UPSTREAM_KEY)
        .await
        .context("starting the media stand-in")?;
    let origin = format!("http://127.0.0.1:{}", upstream.port());
    let timeout = Duration::from_secs(cli.timeout);

    let passthrough = measure(
        Kind::Passthrough,
        &origin,
        &warmup,
        &uploads,
        cli.concurrency as usize,
        timeout,
    )
    .await
    .context("measuring the pass-through")?;
    let gateway = measure(
        Kind::Gateway,
        &upstream.base_url(),
        &warmup,
        &uploads,
        cli.concurrency as usize,
        timeout,
    )
    .await
    .context("measuring the gateway")?;
    drop(upstream);

    println!();
    print!("{}", report::render_table(&passthrough, &gateway));
    println!();
    print!("{}", report::render_verdict(&info, &passthrough, &gateway));
    if let Some(path) = &cli.json {
        let value = report::to_json(&info, &passthrough, &gateway);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Starts `kind`'s child, warms it up, resets its peak RSS, sends the uploads, and reads
/// its memory figures; the child is stopped (or killed, on errors) at the end.
async fn measure(
    kind: Kind,
    upstream: &str,
    warmup: &Upload,
    uploads: &[Upload],
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<TargetFigures> {
    let name = match kind {
        Kind::Passthrough => "pass-through",
        Kind::Gateway => "gateway",
    };
    eprintln!("{name}: starting its child process…");
    let child = ChildTarget::spawn(kind, upstream).await?;
    let target = Target {
        name,
        base: child.url.clone(),
        authorization: match &child.key {
            Some(key) => format!("Bearer {key}"),
            None => format!("Bearer {UPSTREAM_KEY}"),
        },
    };
    println!(
        "{name:<14}pid {}, POST {}{}",
        child.pid,
        child.url,
        send::ENDPOINT
    );
    let client = send::client(concurrency, timeout)?;
    eprintln!("{name}: warm-up upload of {WARMUP_MIB} MiB…");
    send::send_one(&client, &target, warmup)
        .await
        .with_context(|| format!("{name}: the warm-up upload"))?;
    tokio::time::sleep(SETTLE).await;

    let pid = child.pid;
    let reset_error = match memory::reset_peak(pid) {
        Ok(()) => None,
        Err(e) => {
            eprintln!(
                "{name}: warning: cannot reset the peak RSS ({e:#}); the peak will be the lifetime peak"
            );
            Some(format!("{e:#}"))
        }
    };
    let before = memory::read_status(pid)?;
    let peak_reset = reset_error.is_none() && memory::peak_was_reset(before);
    if reset_error.is_none() && !peak_reset {
        eprintln!("{name}: warning: the peak RSS did not come down after the reset");
    }
    eprintln!(
        "{name}: {} uploads of {} MiB, at most {concurrency} in flight…",
        uploads.len(),
        uploads.first().map_or(0, |u| u.file_bytes / MIB)
    );
    let sampler = memory::Sampler::start(pid, SAMPLE_EVERY);
    let started = Instant::now();
    let sent = send::send_all(&client, &target, uploads, concurrency).await;
    let elapsed = started.elapsed();
    let after = memory::read_status(pid);
    let sampled_max_kb = sampler.finish().await;
    let durations = sent?;
    let after = after?;
    let sampled_max_kb = sampled_max_kb?;
    child.stop().await;
    Ok(TargetFigures {
        name: name.into(),
        rss_before_kb: before.rss_kb,
        peak_kb: after.hwm_kb,
        peak_reset,
        reset_error: match (&reset_error, peak_reset) {
            (Some(e), _) => Some(e.clone()),
            (None, false) => Some("VmHWM stayed above VmRSS after writing clear_refs".into()),
            (None, true) => None,
        },
        sampled_max_kb: sampled_max_kb.max(after.rss_kb),
        rss_after_kb: after.rss_kb,
        uploaded_bytes: uploads.iter().map(|u| u.digest.body_bytes).sum(),
        elapsed_secs: elapsed.as_secs_f64(),
        per_upload_secs: durations.iter().map(Duration::as_secs_f64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults_and_ranges() {
        let cli = Cli::try_parse_from(["sg-upload-bench"]).unwrap();
        assert_eq!(
            (
                cli.upload_mb,
                cli.uploads,
                cli.concurrency,
                cli.piece_kb,
                cli.timeout
            ),
            (50, 8, 4, 64, 120)
        );
        assert!(cli.serve.is_none() && cli.json.is_none());
        for bad in [
            ["--upload-mb", "0"],
            ["--upload-mb", "513"],
            ["--uploads", "0"],
            ["--concurrency", "0"],
            ["--concurrency", "65"],
            ["--piece-kb", "0"],
            ["--timeout", "0"],
        ] {
            let args = ["sg-upload-bench", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let cli = Cli::try_parse_from([
            "sg-upload-bench",
            "--upload-mb",
            "200",
            "--uploads",
            "4",
            "--concurrency",
            "2",
            "--json",
            "/tmp/x.json",
        ])
        .unwrap();
        assert_eq!((cli.upload_mb, cli.uploads, cli.concurrency), (200, 4, 2));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn children_are_called_by_subcommand() {
        let cli = Cli::try_parse_from([
            "sg-upload-bench",
            Kind::Gateway.subcommand(),
            "--upstream",
            "http://127.0.0.1:9/v1",
        ])
        .unwrap();
        assert!(
            matches!(cli.serve, Some(Serve::ServeGateway { upstream }) if upstream == "http://127.0.0.1:9/v1")
        );
        let cli = Cli::try_parse_from([
            "sg-upload-bench",
            Kind::Passthrough.subcommand(),
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        assert!(matches!(cli.serve, Some(Serve::ServePassthrough { .. })));
        // The hidden subcommands stay out of the help.
        let mut help = Vec::new();
        <Cli as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(!help.contains("serve-gateway"), "{help}");
        assert!(help.contains("--upload-mb"));
    }
}
