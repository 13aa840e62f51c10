//! Child processes of the benchmark binaries: the binary runs itself again with a hidden
//! subcommand, so that a target's memory and CPU are its own process's (and, with
//! `taskset`, on a core of its own).
//!
//! A child starts its target, writes one JSON line on stdout (its URL, and whatever else
//! the parent needs: a proxy key travels only through this pipe), and serves until its
//! stdin closes. The parent holds the child's stdin, and kills the child when its handle
//! is dropped (on errors too).
//!
//! Also here: SecureGate in embedded mode in a temporary data directory, as the
//! benchmarks' embedded gateway children run it, and the provisioning every benchmark's
//! gateway gets through an admin API (embedded or cluster mode): [`provision`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sg_app::{
    AdminService, Embedded, EmbeddedOptions, GatewayRole, GatewayService, GatewaySettings, KmsKind,
    KmsUse, Metrics, ProjectorService, ServerOptions, SpoolSettings,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};

use crate::admin::{AdminApi, field};
use crate::passthrough::Passthrough;

/// How long a child may take to start and announce itself.
const STARTUP: Duration = Duration::from_secs(90);
/// How long a child may take to stop once its stdin is closed.
const STOPPING: Duration = Duration::from_secs(20);

// ---- in the child ---------------------------------------------------------------------

/// Writes the one line the parent waits for.
pub fn announce(line: &Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to the parent")?;
    out.flush().context("writing to the parent")
}

/// Returns once the parent closes our stdin (or goes away). Read on a thread of its
/// own: blocking reads of stdin have no place on the runtime.
pub async fn wait_for_parent() {
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

/// `serve-passthrough`: the bare hop (a child serving until its parent closes stdin),
/// forwarding to the `upstream` origin.
pub async fn serve_passthrough(upstream: &str) -> anyhow::Result<()> {
    let hop = Passthrough::start(upstream).await?;
    announce(&json!({ "url": hop.url() }))?;
    wait_for_parent().await;
    hop.stop();
    Ok(())
}

/// SecureGate in embedded mode (SQLite event log and views, local master key) in a
/// temporary data directory, listening on loopback ports, with the default gateway
/// settings plus private upstreams allowed.
pub struct EmbeddedGateway {
    pub embedded: Embedded,
    pub admin: AdminApi,
    /// `http://127.0.0.1:PORT/admin/v1`.
    pub admin_base: String,
    /// The operator token (never printed).
    pub admin_token: String,
    data_dir: tempfile::TempDir,
}

/// What [`provision`] created.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub project_id: String,
    pub key_id: String,
    /// The proxy key (never printed).
    pub key: String,
}

impl EmbeddedGateway {
    pub async fn start() -> anyhow::Result<Self> {
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
                console_origin: None,
                smtp_url: None,
                alert_from: None,
            },
            token,
        )
        .await
        .context("starting SecureGate in embedded mode")?;
        let gateway = embedded.gateway.http.addr;
        let admin = embedded.admin.http.addr;
        if !gateway.ip().is_loopback() || !admin.ip().is_loopback() {
            embedded.stop().await;
            bail!("SecureGate listens on {gateway} and {admin}, not only on loopback addresses");
        }
        let admin_base = format!("http://{admin}/admin/v1");
        let api = AdminApi::new(admin_base.clone(), admin_token.clone())?;
        Ok(Self {
            embedded,
            admin: api,
            admin_base,
            admin_token,
            data_dir,
        })
    }

    /// `http://127.0.0.1:PORT`: the gateway's proxy listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.embedded.gateway.http.addr)
    }

    /// [`provision`] through this gateway's admin API.
    pub async fn provision(
        &self,
        name: &str,
        upstream: &str,
        upstream_key: &str,
    ) -> anyhow::Result<Provisioned> {
        provision(&self.admin, name, upstream, upstream_key).await
    }

    /// Stops SecureGate (flushing what it can) and removes its data directory.
    pub async fn stop(self) {
        self.embedded.stop().await;
        drop(self.data_dir);
    }
}

/// Through `admin` (embedded or cluster mode alike): a plan without per-key request caps,
/// tenant, project (abuse detection off: the benchmarks send thousands of requests a
/// second on one key), an `openai` connection to `upstream` (an OpenAI base URL,
/// `http://127.0.0.1:PORT/v1`) with `upstream_key`, and a proxy key without limits.
pub async fn provision(
    admin: &AdminApi,
    name: &str,
    upstream: &str,
    upstream_key: &str,
) -> anyhow::Result<Provisioned> {
    admin
        .put(
            "/plans/bench",
            json!({"features": ["ip", "model"], "max_connections": null, "key_rpm": null, "key_rpd": null}),
        )
        .await?;
    let tenant = admin
        .post("/tenants", json!({"name": name, "plan": "bench"}))
        .await?;
    let tenant_id = field(&tenant, "id")?;
    let project = admin
        .post(
            &format!("/tenants/{tenant_id}/projects"),
            json!({"name": name}),
        )
        .await?;
    let project_id = field(&project, "id")?;
    admin
        .put(
            &format!("/projects/{project_id}/abuse"),
            json!({"enabled": false}),
        )
        .await?;
    let connection = admin
        .post(
            &format!("/projects/{project_id}/connections"),
            json!({"provider": "openai", "api_key": upstream_key, "base_url": upstream}),
        )
        .await?;
    field(&connection, "id")?;
    let key = admin
        .post(
            &format!("/projects/{project_id}/keys"),
            json!({"name": name}),
        )
        .await?;
    Ok(Provisioned {
        project_id,
        key_id: field(&key, "id")?,
        key: field(&key, "key")?,
    })
}

/// The arguments of a control-plane child, the same in every benchmark that runs one.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    #[arg(long)]
    pub nats_url: String,
    #[arg(long)]
    pub database_url: String,
    #[arg(long)]
    pub master_key_file: std::path::PathBuf,
}

/// `serve-control` (cluster mode's control plane): the admin API and the projector, on
/// `nats_url` (JetStream) and `database_url` (PostgreSQL views), sealing provider keys
/// with the local master key in `master_key_file`. Announces the admin API's base URL
/// (`url`, `http://127.0.0.1:PORT/admin/v1`) and the operator token (`admin_token`).
pub async fn serve_control(args: &ControlArgs) -> anyhow::Result<()> {
    let ControlArgs {
        nats_url,
        database_url,
        master_key_file,
    } = args;
    let metrics = Metrics::new();
    let log = sg_app::connect_jetstream(nats_url, 1).await?;
    let views = sg_app::connect_views(database_url).await?;
    let kms = sg_app::build_kms(
        KmsKind::Local,
        None,
        Some(master_key_file),
        KmsUse::Seal,
        &metrics,
    )
    .await?;
    let token = sg_app::generate_admin_token();
    let admin_token = token.expose().to_owned();
    let config = sg_admin::AdminConfig {
        operator_token: token,
        allow_private_upstreams: true,
        default_plan: "free".into(),
        gateway_url: None,
        console_origin: None,
    };
    let admin = AdminService::start(
        "127.0.0.1:0".parse()?,
        ServerOptions::default(),
        config,
        log.clone(),
        views.clone(),
        kms,
        &metrics,
    )
    .await
    .context("starting the admin API")?;
    let projector = match ProjectorService::start(None, log, views, &metrics).await {
        Ok(p) => p,
        Err(e) => {
            admin.stop().await;
            return Err(e.context("starting the projector"));
        }
    };
    let announced = announce(&json!({
        "url": format!("http://{}/admin/v1", admin.http.addr),
        "admin_token": admin_token,
    }));
    if announced.is_ok() {
        wait_for_parent().await;
    }
    admin.stop().await;
    projector.stop().await;
    announced
}

/// A gateway node in cluster mode (role `all`) named `node_id`, on `nats_url`: its
/// replica follows the control stream, and it publishes one usage event per request to
/// JetStream through its spool under `spool_dir`. Opens provider keys with the local
/// master key in `master_key_file` (the control plane's). Announces its URL; serves
/// until the parent closes stdin, then flushes its spool to JetStream.
pub async fn serve_cluster_gateway(
    nats_url: &str,
    master_key_file: &Path,
    node_id: &str,
    spool_dir: &Path,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let kms = sg_app::build_kms(
        KmsKind::Local,
        None,
        Some(master_key_file),
        KmsUse::Open,
        &metrics,
    )
    .await?;
    let log = sg_app::connect_jetstream(nats_url, 1).await?;
    let settings = GatewaySettings {
        node_id: node_id.to_owned(),
        allow_private_upstreams: true,
        spool: SpoolSettings {
            dir: spool_dir.to_path_buf(),
            ..SpoolSettings::default()
        },
        ..GatewaySettings::default()
    };
    let gateway = GatewayService::start_with(
        "127.0.0.1:0".parse()?,
        ServerOptions::default(),
        None,
        settings,
        GatewayRole::All { kms },
        log,
        &metrics,
    )
    .await
    .with_context(|| format!("starting gateway node {node_id}"))?;
    let announced = announce(&json!({ "url": format!("http://{}", gateway.http.addr) }));
    if announced.is_ok() {
        wait_for_parent().await;
    }
    gateway.stop().await;
    announced
}

// ---- in the parent --------------------------------------------------------------------

/// The path of `taskset` (util-linux), or an error saying it is needed.
pub fn taskset() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("taskset"))
        .find(|p| p.is_file())
        .context("`taskset` (util-linux) is not on PATH: it is needed to pin processes to cores")
}

/// A running child process of this binary; killed if dropped before [`stop`](Self::stop).
pub struct ChildProcess {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    what: String,
    pub pid: u32,
    /// The JSON line the child announced itself with (may hold secrets: never print it).
    pub announced: Value,
}

impl ChildProcess {
    /// Runs this binary again with `subcommand` and `args`, pinned to `core` with
    /// `taskset` if given, and waits for its line.
    pub async fn spawn(
        subcommand: &str,
        args: &[String],
        core: Option<usize>,
    ) -> anyhow::Result<Self> {
        let exe: PathBuf = std::env::current_exe().context("finding this program's path")?;
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new(taskset()?);
                c.arg("-c").arg(core.to_string()).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // `taskset` sets the affinity and then executes the program: same pid.
        let mut child = command
            .arg(subcommand)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", exe.display()))?;
        let pid = child.id().context("the child exited at once")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no pipe from the child")?);
        let mut line = String::new();
        let read = tokio::time::timeout(STARTUP, stdout.read_line(&mut line)).await;
        match read {
            Err(_) => bail!("{subcommand} did not start within {STARTUP:?}"),
            Ok(Err(e)) => return Err(e).context(format!("reading from {subcommand}")),
            Ok(Ok(0)) => {
                let status = child.wait().await.ok();
                bail!(
                    "{subcommand} exited before it was ready ({}); see its messages above",
                    status.map_or_else(|| "status unknown".into(), |s| s.to_string())
                )
            }
            Ok(Ok(_)) => {}
        }
        // The line may hold a key: it appears in no error message.
        let announced: Value = serde_json::from_str(line.trim()).map_err(|_| {
            anyhow::anyhow!("{subcommand} announced itself with a line that is not JSON")
        })?;
        Ok(Self {
            child,
            stdin,
            _stdout: stdout,
            what: subcommand.to_owned(),
            pid,
            announced,
        })
    }

    /// A string field of the announced line.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.announced.get(name).and_then(Value::as_str)
    }

    /// The announced `url`, which must be `http://` on a loopback address.
    pub fn url(&self) -> anyhow::Result<String> {
        let url = self
            .field("url")
            .with_context(|| format!("{} announced no url", self.what))?;
        let loopback = url
            .strip_prefix("http://")
            .and_then(|rest| rest.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|addr| addr.ip().is_loopback());
        if !loopback {
            bail!("{} listens on {url}, not on a loopback address", self.what);
        }
        Ok(url.to_owned())
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

/// Sends the request `send` builds until the gateway answers 2xx (at most 30 s): a key
/// is refused with 401 until the gateway has folded it in; any other refusal is final.
pub async fn until_key_works(
    what: &str,
    mut send: impl FnMut(&reqwest::Client) -> reqwest::RequestBuilder,
) -> anyhow::Result<()> {
    const KEY_PROPAGATION: Duration = Duration::from_secs(30);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = std::time::Instant::now() + KEY_PROPAGATION;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match send(&client).send().await {
            Ok(r) if r.status().is_success() => {
                r.bytes().await?;
                return Ok(());
            }
            Ok(r) => {
                let status = r.status();
                last = format!("{status}: {}", r.text().await.unwrap_or_default());
                if status != reqwest::StatusCode::UNAUTHORIZED {
                    bail!("the gateway refused the first {what}: {last}");
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the gateway did not accept the new key within {KEY_PROPAGATION:?}; last answer: {last}")
}
