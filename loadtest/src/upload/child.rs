//! The targets' child processes: this binary run again with a hidden subcommand, so
//! that each target's memory is its own process's.
//!
//! A child starts its target, writes one JSON line on stdout (`{"url": …}`, plus `"key"`
//! for the gateway: the proxy key travels only through this pipe), and serves until its
//! stdin closes. The parent holds the child's stdin, and kills the child when its
//! handle is dropped (on errors too).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::{Value, json};
use sg_app::{Embedded, EmbeddedOptions, GatewaySettings};
use sg_loadtest::admin::{AdminApi, field};
use sg_loadtest::passthrough::Passthrough;
use sg_testkit::media_upstream::GeneratedForm;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};

use crate::send::{ENDPOINT, MODEL};

/// The upstream's API key, known to the parent's media stand-in and to the gateway's
/// connection. A stand-in's key, not a secret.
pub const UPSTREAM_KEY: &str = "sk-bench";
/// How long a child may take to start and announce itself.
const STARTUP: Duration = Duration::from_secs(90);
/// How long the gateway may take to learn about a newly issued key.
const KEY_PROPAGATION: Duration = Duration::from_secs(30);
/// How long a child may take to stop once its stdin is closed.
const STOPPING: Duration = Duration::from_secs(20);

/// Which target a child serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Passthrough,
    Gateway,
}

impl Kind {
    pub fn subcommand(self) -> &'static str {
        match self {
            Kind::Passthrough => "serve-passthrough",
            Kind::Gateway => "serve-gateway",
        }
    }
}

// ---- in the child ---------------------------------------------------------------------

/// Writes the one line the parent waits for.
fn announce(line: &Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to the parent")?;
    out.flush().context("writing to the parent")
}

/// Returns once the parent closes our stdin (or goes away). Read on a thread of its
/// own: blocking reads of stdin have no place on the runtime.
async fn wait_for_parent() {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    let reader = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            use std::io::Read as _;
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = closed.send(());
        });
    match reader {
        // An error too means the parent is gone.
        Ok(_) => {
            let _ = on_close.await;
        }
        Err(e) => eprintln!("cannot watch stdin ({e}); stopping"),
    }
}

/// `serve-passthrough`: the bare hop, forwarding to the `upstream` origin.
pub async fn serve_passthrough(upstream: &str) -> anyhow::Result<()> {
    let hop = Passthrough::start(upstream).await?;
    announce(&json!({ "url": hop.url() }))?;
    wait_for_parent().await;
    hop.stop();
    Ok(())
}

/// `serve-gateway`: SecureGate embedded in a temporary data directory, provisioned
/// through its admin API with a connection to `upstream` (an OpenAI base URL).
pub async fn serve_gateway(upstream: &str) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let token = sg_app::generate_admin_token();
    let admin_token = token.expose().to_owned();
    let embedded = Embedded::start(
        EmbeddedOptions {
            data_dir: data_dir.path().to_path_buf(),
            gateway_listen: "127.0.0.1:0".parse()?,
            admin_listen: "127.0.0.1:0".parse()?,
            gateway: GatewaySettings {
                allow_private_upstreams: true,
                ..Default::default()
            },
            limits: sg_app::ServerLimits::default(),
            static_config: None,
            default_plan: "free".into(),
            gateway_url: None,
            smtp_url: None,
            alert_from: None,
        },
        token,
    )
    .await
    .context("starting SecureGate in embedded mode")?;
    let served = async {
        let gateway = embedded.gateway.http.addr;
        let admin = embedded.admin.http.addr;
        if !gateway.ip().is_loopback() || !admin.ip().is_loopback() {
            bail!("SecureGate listens on {gateway} and {admin}, not only on loopback addresses");
        }
        let admin = Admin(AdminApi::new(
            format!("http://{admin}/admin/v1"),
            admin_token,
        )?);
        let key = admin.provision(upstream).await?;
        let url = format!("http://{gateway}");
        wait_for_key(&url, &key).await?;
        announce(&json!({ "url": url, "key": key }))?;
        wait_for_parent().await;
        Ok(())
    }
    .await;
    embedded.stop().await;
    drop(data_dir);
    served
}

/// Provisioning through the admin API.
struct Admin(AdminApi);

impl Admin {
    /// Tenant, project, `openai` connection to the upstream, proxy key; returns the key.
    async fn provision(&self, upstream: &str) -> anyhow::Result<String> {
        // A plan without per-key request caps: the bench measures memory, not a plan.
        self.0.put(
            "/plans/bench",
            json!({"features": ["ip", "model"], "max_connections": null, "key_rpm": null, "key_rpd": null}),
        )
        .await?;
        let tenant = self
            .0
            .post("/tenants", json!({"name": "upload-bench", "plan": "bench"}))
            .await?;
        let tenant_id = field(&tenant, "id")?;
        let project = self
            .0
            .post(
                &format!("/tenants/{tenant_id}/projects"),
                json!({"name": "upload-bench"}),
            )
            .await?;
        let project_id = field(&project, "id")?;
        let connection = self
            .0
            .post(
                &format!("/projects/{project_id}/connections"),
                json!({"provider": "openai", "api_key": UPSTREAM_KEY, "base_url": upstream}),
            )
            .await?;
        field(&connection, "id")?;
        let key = self
            .0
            .post(
                &format!("/projects/{project_id}/keys"),
                json!({"name": "upload-bench"}),
            )
            .await?;
        field(&key, "key")
    }
}

/// Sends a small upload through the gateway until the new key works.
async fn wait_for_key(gateway: &str, key: &str) -> anyhow::Result<()> {
    let client = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + KEY_PROPAGATION;
    let mut last = String::new();
    while Instant::now() < deadline {
        let form = GeneratedForm::new(MODEL, 4096, 0, 4096);
        let sent = client
            .post(format!("{gateway}{ENDPOINT}"))
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(CONTENT_TYPE, form.content_type())
            .header(CONTENT_LENGTH, form.len())
            .body(form.into_reqwest_body())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                r.bytes().await?;
                return Ok(());
            }
            Ok(r) => {
                let status = r.status();
                last = format!("{status}: {}", r.text().await.unwrap_or_default());
                // 401 while the key propagates; anything else will not get better.
                if status != reqwest::StatusCode::UNAUTHORIZED {
                    bail!("the gateway refused the first upload: {last}");
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the gateway did not accept the new key within {KEY_PROPAGATION:?}; last answer: {last}")
}

// ---- in the parent --------------------------------------------------------------------

/// A running target's child process; killed if dropped before [`stop`](Self::stop).
pub struct ChildTarget {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The gateway's proxy key (never printed).
    pub key: Option<String>,
}

impl ChildTarget {
    /// Runs this binary again as `kind`'s server for `upstream`, and waits for its line.
    pub async fn spawn(kind: Kind, upstream: &str) -> anyhow::Result<Self> {
        let exe: PathBuf = std::env::current_exe().context("finding this program's path")?;
        let mut child = Command::new(&exe)
            .arg(kind.subcommand())
            .arg("--upstream")
            .arg(upstream)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), kind.subcommand()))?;
        let pid = child.id().context("the child exited at once")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no pipe from the child")?);
        let mut line = String::new();
        let read = tokio::time::timeout(STARTUP, stdout.read_line(&mut line)).await;
        match read {
            Err(_) => bail!("{} did not start within {STARTUP:?}", kind.subcommand()),
            Ok(Err(e)) => return Err(e).context(format!("reading from {}", kind.subcommand())),
            Ok(Ok(0)) => {
                let status = child.wait().await.ok();
                bail!(
                    "{} exited before it was ready ({}); see its messages above",
                    kind.subcommand(),
                    status.map_or_else(|| "status unknown".into(), |s| s.to_string())
                )
            }
            Ok(Ok(_)) => {}
        }
        // The line may hold the proxy key: it appears in no error message.
        let announced: Value = serde_json::from_str(line.trim()).map_err(|_| {
            anyhow::anyhow!(
                "{} announced itself with a line that is not JSON",
                kind.subcommand()
            )
        })?;
        let url = announced
            .get("url")
            .and_then(Value::as_str)
            .with_context(|| format!("{} announced no url", kind.subcommand()))?
            .to_owned();
        let key = announced
            .get("key")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if kind == Kind::Gateway && key.is_none() {
            bail!("the gateway announced no proxy key");
        }
        let loopback = url
            .strip_prefix("http://")
            .and_then(|rest| rest.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|addr| addr.ip().is_loopback());
        if !loopback {
            bail!(
                "{} listens on {url}, not on a loopback address",
                kind.subcommand()
            );
        }
        Ok(Self {
            child,
            stdin,
            _stdout: stdout,
            pid,
            url,
            key,
        })
    }

    /// Closes the child's stdin and waits for it to stop (killing it if it takes too long).
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(STOPPING, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("warning: child {} ended with {status}", self.pid),
            Ok(Err(e)) => eprintln!("warning: waiting for child {}: {e}", self.pid),
            Err(_) => {
                eprintln!(
                    "warning: child {} did not stop within {STOPPING:?}; killing it",
                    self.pid
                );
                let _ = self.child.kill().await;
            }
        }
    }
}
