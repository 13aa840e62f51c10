//! The cluster under test: private NATS JetStream and PostgreSQL (`sg_testkit`), the
//! mock upstream, and SecureGate in cluster mode as child processes of this binary: one
//! admin API (with the projector beside it, writing the views) and three gateway nodes,
//! each with its own node id and usage spool, all on the same NATS.
//!
//! Each child announces its URL on its stdout pipe (the admin child its operator token
//! too: it never appears on a command line or in a message) and serves until its stdin
//! closes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use sg_loadtest::admin::AdminApi;
use sg_loadtest::child::ChildProcess;
use sg_testkit::nats::NatsServer;
use sg_testkit::postgres::PostgresServer;
use sg_testkit::{MockConfig, MockUpstream};

/// The hidden subcommands the children run.
pub const SERVE_ADMIN: &str = "serve-admin";
pub const SERVE_GATEWAY: &str = "serve-gateway";

/// The key the mock upstream is given as the provider's (it checks none).
const UPSTREAM_KEY: &str = "sk-revocation-bench-upstream";
/// How long a gateway may take to report ready (replica at the head).
const READY_WITHIN: Duration = Duration::from_secs(30);

// ---- in the parent --------------------------------------------------------------------

/// One gateway node as the parent sees it.
pub struct Node {
    pub id: String,
    pub url: String,
    child: ChildProcess,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.pid
    }
}

/// Everything the benchmark started; dropping it kills what is left.
pub struct Cluster {
    pub nats: NatsServer,
    pub postgres: PostgresServer,
    pub mock: MockUpstream,
    pub admin: AdminApi,
    /// `http://127.0.0.1:PORT/admin/v1`.
    pub admin_base: String,
    /// The operator token (never printed).
    pub admin_token: String,
    admin_child: ChildProcess,
    pub nodes: Vec<Node>,
    pub nats_version: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts NATS, PostgreSQL, the mock upstream, the admin child and `gateways`
    /// gateway children, and waits until every gateway reports ready.
    pub async fn start(gateways: usize) -> anyhow::Result<Self> {
        eprintln!("starting a private NATS JetStream server…");
        let nats = NatsServer::start()
            .await
            .context("starting a private nats-server (sg_testkit)")?;
        let nats_version = sg_testkit::nats::check_version(nats.binary())
            .await
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
            .unwrap_or_else(|_| "unknown".into());
        eprintln!("starting a private PostgreSQL for the views…");
        let postgres = PostgresServer::start()
            .await
            .context("starting a private PostgreSQL (sg_testkit)")?;
        let database_url = postgres
            .create_database("securegate")
            .await
            .context("creating the views database")?;
        let mock = MockUpstream::start(MockConfig::default())
            .await
            .context("starting the mock upstream")?;
        let dir = tempfile::Builder::new()
            .prefix("sg-revocation-")
            .tempdir()
            .context("creating a temporary directory")?;
        let master_key = dir.path().join("master.key");
        sg_crypto::generate_master_key_file(&master_key)
            .context("writing a master key file for the cluster")?;
        let key_file = path_arg(&master_key)?;

        eprintln!("starting the admin API and the projector…");
        let admin_child = ChildProcess::spawn(
            SERVE_ADMIN,
            &[
                "--nats-url".into(),
                nats.url(),
                "--database-url".into(),
                database_url,
                "--master-key-file".into(),
                key_file.clone(),
            ],
            None,
        )
        .await?;
        let admin_base = admin_child
            .field("url")
            .context("the admin child announced no url")?
            .to_owned();
        let admin_token = admin_child
            .field("admin_token")
            .context("the admin child announced no token")?
            .to_owned();
        let admin = AdminApi::new(admin_base.clone(), admin_token.clone())?;

        let mut nodes = Vec::with_capacity(gateways);
        for n in 1..=gateways {
            let id = format!("gw-{n}");
            eprintln!("starting gateway node {id}…");
            let spool = dir.path().join(format!("spool-{id}"));
            let child = ChildProcess::spawn(
                SERVE_GATEWAY,
                &[
                    "--nats-url".into(),
                    nats.url(),
                    "--master-key-file".into(),
                    key_file.clone(),
                    "--node-id".into(),
                    id.clone(),
                    "--spool-dir".into(),
                    path_arg(&spool)?,
                ],
                None,
            )
            .await?;
            let url = child.url()?;
            nodes.push(Node { id, url, child });
        }
        for node in &nodes {
            wait_ready(&node.url)
                .await
                .with_context(|| format!("gateway {}", node.id))?;
        }
        Ok(Self {
            nats,
            postgres,
            mock,
            admin,
            admin_base,
            admin_token,
            admin_child,
            nodes,
            nats_version,
            _dir: dir,
        })
    }

    /// A plan without per-key request caps, a tenant on it, a project (abuse detection
    /// off), an `openai` connection to the mock upstream and `keys` proxy keys. Returns
    /// (key id, key) pairs; the keys are never printed.
    pub async fn provision(&self, keys: usize) -> anyhow::Result<Vec<(String, String)>> {
        use sg_loadtest::admin::field;
        let first = sg_loadtest::child::provision(
            &self.admin,
            "revocation",
            &self.mock.base_url(),
            UPSTREAM_KEY,
        )
        .await?;
        let mut out = Vec::with_capacity(keys);
        out.push((first.key_id, first.key));
        for n in 2..=keys {
            let key = self
                .admin
                .post(
                    &format!("/projects/{}/keys", first.project_id),
                    json!({"name": format!("revocation-{n}")}),
                )
                .await?;
            out.push((field(&key, "id")?, field(&key, "key")?));
        }
        Ok(out)
    }

    /// Stops the children (gracefully), then the servers.
    pub async fn stop(self) {
        for node in self.nodes {
            node.child.stop().await;
        }
        self.admin_child.stop().await;
        drop(self.mock);
        drop(self.postgres);
        drop(self.nats);
    }
}

fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// Waits until `base/readyz` answers 2xx.
async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + READY_WITHIN;
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not ready within {READY_WITHIN:?}; last answer: {last}")
}
