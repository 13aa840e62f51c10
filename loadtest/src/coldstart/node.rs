//! The gateway node under test: a child process in cluster mode (JetStream), started
//! either as this binary's hidden `serve-gateway` subcommand (the same wiring as
//! `securegate server gateway --role all --kms local`) or as the real `securegate`
//! binary. The parent times it from spawn to `/readyz` 200 and reads its memory from
//! `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use sg_app::{GatewayRole, GatewayService, GatewaySettings};
use tokio::process::{Child, Command};

/// How often `/readyz` is asked while the node folds.
const POLL: Duration = Duration::from_millis(20);
/// How long a stopping node may take before it is killed.
const STOPPING: Duration = Duration::from_secs(20);

// ---- in the child ---------------------------------------------------------------------

/// `serve-gateway`: a gateway node (role `all`, local master key) on JetStream, serving
/// until its stdin closes or it gets SIGTERM.
pub async fn serve(
    listen: std::net::SocketAddr,
    nats_url: &str,
    master_key_file: &Path,
    spool_dir: &Path,
) -> anyhow::Result<()> {
    let metrics = sg_app::Metrics::new();
    let kms = sg_app::build_kms(
        sg_app::KmsKind::Local,
        None,
        Some(master_key_file),
        sg_app::KmsUse::Open,
        &metrics,
    )
    .await?;
    let log = sg_app::connect_jetstream(nats_url, 1).await?;
    let settings = GatewaySettings {
        node_id: "coldstart".into(),
        spool: sg_app::SpoolSettings {
            dir: spool_dir.to_path_buf(),
            ..Default::default()
        },
        ..GatewaySettings::default()
    };
    let service = GatewayService::start_with(
        listen,
        sg_app::ServerOptions::default(),
        None,
        settings,
        GatewayRole::All { kms },
        log,
        &metrics,
    )
    .await?;
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = sg_loadtest::child::wait_for_parent() => {}
        () = term => {}
    }
    service.stop().await;
    Ok(())
}

// ---- in the parent --------------------------------------------------------------------

/// Which program runs the node.
#[derive(Debug, Clone)]
pub enum Program {
    /// This binary's `serve-gateway`.
    ThisBinary,
    /// `securegate server gateway` from this path.
    Securegate(PathBuf),
}

/// Memory of a process, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub rss_anon: u64,
    pub hwm: u64,
}

impl Memory {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Ok(Memory {
            rss: field("VmRSS:"),
            rss_anon: field("RssAnon:"),
            hwm: field("VmHWM:"),
        })
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing `)`.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// What one cold start measured.
#[derive(Debug, Clone)]
pub struct ColdStart {
    /// Spawn → the HTTP listener answered.
    pub listening: Duration,
    /// Spawn → `/readyz` answered 200.
    pub ready: Duration,
    /// The control sequence `/readyz` reported when ready.
    pub control_seq: u64,
    /// CPU time the node used from spawn to ready (all its threads).
    pub cpu: Option<Duration>,
    /// Memory right after ready.
    pub at_ready: Memory,
    /// Memory after `settle` more (moka's pending work done, allocator settled).
    pub settled: Memory,
    /// (seconds since spawn, control_seq) samples while folding.
    pub progress: Vec<(f64, u64)>,
}

/// A running node.
pub struct Node {
    child: Child,
    pub pid: u32,
    pub url: String,
    _spool: tempfile::TempDir,
    started: Instant,
}

impl Node {
    /// Spawns the node on a free loopback port against `nats_url`.
    pub fn spawn(
        program: &Program,
        nats_url: &str,
        master_key_file: &Path,
    ) -> anyhow::Result<Self> {
        let port = sg_testkit::try_free_port().context("finding a free port for the gateway")?;
        let listen = format!("127.0.0.1:{port}");
        let spool = tempfile::Builder::new()
            .prefix("sg-coldstart-spool-")
            .tempdir()
            .context("creating the gateway's spool directory")?;
        let mut command = match program {
            Program::ThisBinary => {
                let exe = std::env::current_exe().context("finding this program's path")?;
                let mut c = Command::new(exe);
                c.arg("serve-gateway");
                c
            }
            Program::Securegate(path) => {
                let mut c = Command::new(path);
                c.args(["server", "gateway", "--role", "all", "--kms", "local"]);
                c.arg("--node-id").arg("coldstart");
                c
            }
        };
        command
            .arg("--listen")
            .arg(&listen)
            .arg("--nats-url")
            .arg(nats_url)
            .arg("--master-key-file")
            .arg(master_key_file)
            .arg("--spool-dir")
            .arg(spool.path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let started = Instant::now();
        let child = command.spawn().context("starting the gateway node")?;
        let pid = child.id().context("the gateway node exited at once")?;
        Ok(Node {
            child,
            pid,
            url: format!("http://{listen}"),
            _spool: spool,
            started,
        })
    }

    /// Polls `/readyz` until it answers 200 (within `timeout`), then reads the memory,
    /// waits `settle` and reads it again.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        settle: Duration,
    ) -> anyhow::Result<ColdStart> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("{}/readyz", self.url);
        let mut listening = None;
        let mut progress = Vec::new();
        let mut last_seq = u64::MAX;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the gateway node exited with {status} before it was ready; see its messages above"
                );
            }
            let elapsed = self.started.elapsed();
            if elapsed > timeout {
                bail!("the gateway node was not ready within {timeout:?}");
            }
            if let Ok(response) = http.get(&url).send().await {
                listening.get_or_insert(elapsed);
                let ok = response.status().is_success();
                let body = json_or_null(response).await;
                let seq = body.get("control_seq").and_then(Value::as_u64).unwrap_or(0);
                if seq != last_seq {
                    progress.push((elapsed.as_secs_f64(), seq));
                    last_seq = seq;
                }
                if ok {
                    let cpu = cpu_time(self.pid);
                    let at_ready = Memory::read(self.pid)?;
                    tokio::time::sleep(settle).await;
                    let settled = Memory::read(self.pid)?;
                    return Ok(ColdStart {
                        listening: listening.unwrap_or(elapsed),
                        ready: elapsed,
                        control_seq: seq,
                        cpu,
                        at_ready,
                        settled,
                        progress,
                    });
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the node: SIGTERM (and stdin closed), then a kill after [`STOPPING`].
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        match tokio::time::timeout(STOPPING, self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "warning: gateway node {} did not stop within {STOPPING:?}; killing it",
                    self.pid
                );
                let _ = self.child.kill().await;
            }
        }
    }
}

/// What the node answered for a known key and for an unknown one.
#[derive(Debug, Clone)]
pub struct AuthCheck {
    pub known_status: u16,
    /// The error code of a non-2xx answer for the known key.
    pub known_code: Option<String>,
    pub unknown_status: u16,
}

impl AuthCheck {
    pub fn passed(&self) -> bool {
        (200..300).contains(&self.known_status) && self.unknown_status == 401
    }
}

async fn chat(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<(u16, Option<String>)> {
    let response = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Say hello."}],
            })
            .to_string(),
        )
        .send()
        .await
        .context("sending a chat completion to the gateway")?;
    let status = response.status().as_u16();
    let body = json_or_null(response).await;
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((status, code))
}

/// Sends one chat completion with `known` (a key in the stream) and one with a
/// well-formed key that is in no stream.
pub async fn check_auth(url: &str, known: &sg_proxy_key::ProxyKey) -> anyhow::Result<AuthCheck> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let (known_status, known_code) = chat(&http, url, known.expose()).await?;
    let stranger = sg_proxy_key::ProxyKey::generate();
    let (unknown_status, _) = chat(&http, url, stranger.expose()).await?;
    Ok(AuthCheck {
        known_status,
        known_code: if (200..300).contains(&known_status) {
            None
        } else {
            known_code
        },
        unknown_status,
    })
}

/// `perf record -g` on a process until stopped.
pub struct Perf {
    child: std::process::Child,
}

impl Perf {
    pub fn attach(pid: u32, output: &Path) -> anyhow::Result<Self> {
        let child = std::process::Command::new("perf")
            .args(["record", "-g", "-F", "499", "-o"])
            .arg(output)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `perf record` (is linux-perf installed?)")?;
        Ok(Perf { child })
    }

    /// SIGINT (perf writes its file), then waits.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response's body as JSON; `null` when it is not JSON or cannot be read.
async fn json_or_null(response: reqwest::Response) -> Value {
    response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}
