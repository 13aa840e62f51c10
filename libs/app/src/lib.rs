//! Wiring: builds each service from its clients and listeners. The `securegate` binary
//! parses flags and calls these; tests and benchmarks call them directly.
//!
//! Every service here shuts down gracefully: it stops accepting, lets requests in
//! flight finish, and (gateway) waits for queued usage events to be acknowledged.
#![forbid(unsafe_code)]

mod metrics;
pub mod static_config;

pub use sg_telemetry::metrics::Metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use sg_admin::{Admin, AdminConfig};
use sg_crypto::{Kms, LocalKms, SecretString};
use sg_eventlog::EventLog;
use sg_eventlog::jetstream::{JetStreamLog, JetStreamOptions};
use sg_eventlog::sqlite::SqliteLog;
use sg_gateway::{Gateway, GatewayConfig, Role};
use sg_views::Views;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use sg_gateway::GatewayConfig as GatewaySettings;
pub use sg_gateway::Role as GatewayRole;
pub use sg_gateway::{BodyTimeouts, SpoolSettings};

/// How long a stopping gateway waits for its usage events to be acknowledged.
const USAGE_FLUSH: Duration = Duration::from_secs(10);

/// An HTTP server bound to an address (connection bound, header and idle timeouts).
pub use sg_serve::{Limits as ServerLimits, Options as ServerOptions, Server as HttpServer};

/// Binds an HTTP server, saying which one failed.
pub async fn bind(
    listen: SocketAddr,
    router: Router,
    name: &'static str,
    options: ServerOptions,
) -> anyhow::Result<HttpServer> {
    HttpServer::bind(listen, router, name, options)
        .await
        .with_context(|| format!("cannot listen on {listen} ({name})"))
}

/// Connects to JetStream and makes sure the streams exist, with `replicas` copies each
/// (1 on a single server, 3 on a three-node cluster; every process must say the same).
pub async fn connect_jetstream(url: &str, replicas: usize) -> anyhow::Result<Arc<dyn EventLog>> {
    let options = JetStreamOptions {
        replicas: replicas.max(1),
        ..JetStreamOptions::default()
    };
    let log = JetStreamLog::connect(url, options)
        .await
        .with_context(|| format!("cannot use NATS JetStream at {url}"))?;
    Ok(Arc::new(log))
}

/// Connects to the views database and applies its migrations.
pub async fn connect_views(url: &str) -> anyhow::Result<Views> {
    let views = Views::connect(url).await.with_context(|| {
        "cannot connect to the views database (check --database-url)".to_string()
    })?;
    views
        .migrate()
        .await
        .context("cannot migrate the views database")?;
    Ok(views)
}

/// The local master-key KMS from a key file.
pub fn local_kms(path: &Path) -> anyhow::Result<Arc<dyn Kms>> {
    let kms = LocalKms::from_file(path)?;
    tracing::warn!(
        key_id = kms.id(),
        "provider keys are sealed with a local master key file; anyone who can read it can open them — use AWS KMS in production"
    );
    Ok(Arc::new(kms))
}

/// Which KMS seals and opens provider keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsKind {
    /// AWS KMS (or a compatible endpoint via `AWS_ENDPOINT_URL_KMS`).
    Aws,
    /// A local master key file (development, embedded mode).
    Local,
}

/// What a process does with the KMS: least privilege by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsUse {
    /// Admin: generates data keys (`kms:GenerateDataKey`), and re-wraps on request.
    Seal,
    /// Egress and all-in-one gateways: unwraps data keys (`kms:Decrypt`), cached.
    Open,
}

/// Builds the KMS client a process needs.
pub async fn build_kms(
    kind: KmsKind,
    key_id: Option<&str>,
    master_key_file: Option<&Path>,
    usage: KmsUse,
    metrics: &Metrics,
) -> anyhow::Result<Arc<dyn Kms>> {
    let kms: Arc<dyn Kms> = match kind {
        KmsKind::Local => {
            let path = master_key_file
                .context("--kms local needs --master-key-file (SECUREGATE_MASTER_KEY_FILE)")?;
            local_kms(path)?
        }
        KmsKind::Aws => match (usage, key_id.filter(|k| !k.trim().is_empty())) {
            (_, Some(id)) => Arc::new(sg_kms_aws::AwsKms::from_env(id.to_owned()).await?),
            (KmsUse::Open, None) => Arc::new(sg_kms_aws::AwsKms::decrypt_only_from_env().await?),
            (KmsUse::Seal, None) => {
                anyhow::bail!(
                    "--kms aws needs --kms-key-id (SECUREGATE_KMS_KEY_ID) to seal provider keys"
                )
            }
        },
    };
    let kms = metrics::CountingKms::wrap(kms, metrics);
    Ok(match usage {
        KmsUse::Seal => kms,
        // Opening is on the request path: decrypted data keys are cached, bounded by
        // age and uses, so KMS is not called per request and a KMS outage does not stop
        // traffic for connections already cached.
        KmsUse::Open => metrics::cached(kms, metrics),
    })
}

/// A running gateway node.
pub struct GatewayService {
    pub http: HttpServer,
    /// `/healthz` and `/readyz` on their own listener, if asked for.
    pub health: Option<HttpServer>,
    pub gateway: Arc<Gateway>,
    tasks: sg_gateway::GatewayTasks,
}

impl GatewayService {
    pub async fn start(
        listen: SocketAddr,
        config: GatewayConfig,
        role: Role,
        log: Arc<dyn EventLog>,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            listen,
            ServerOptions::default(),
            None,
            config,
            role,
            log,
            &Metrics::new(),
        )
        .await
    }

    /// Like [`GatewayService::start`] with the listener's options (limits, PROXY protocol
    /// v2) and an optional separate listener for `/healthz` and `/readyz`, which keeps
    /// answering probes when the main listener is at its connection bound. `/metrics`
    /// is served on the health listener when there is one (not where clients connect),
    /// else on the main listener.
    #[allow(clippy::too_many_arguments)] // wiring: each is a separate part of the node
    pub async fn start_with(
        listen: SocketAddr,
        options: ServerOptions,
        health_listen: Option<SocketAddr>,
        config: GatewayConfig,
        role: Role,
        log: Arc<dyn EventLog>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        tracing::info!(role = role.name(), node = %config.node_id, "starting gateway");
        let service = match role {
            Role::All { .. } => "gateway",
            Role::Edge { .. } => "edge",
            Role::Egress { .. } => "egress",
        };
        let (gateway, tasks) = Gateway::start(config, role, log)?;
        metrics.build_info(service);
        let refusals = gateway.register_metrics(metrics);
        let router = metrics.http().layer(
            gateway.router(),
            service,
            sg_gateway::metrics::request_route,
            Some(refusals),
        );
        let router = match health_listen {
            Some(_) => router,
            None => router.merge(metrics.router()),
        };
        let http = bind(listen, router, "gateway", options).await?;
        let health = match health_listen {
            Some(addr) => {
                let options = ServerOptions {
                    limits: options.limits,
                    proxy_protocol: false,
                };
                let router = gateway.health_router().merge(metrics.router());
                Some(bind(addr, router, "gateway-health", options).await?)
            }
            None => None,
        };
        Ok(GatewayService {
            http,
            health,
            gateway,
            tasks,
        })
    }

    pub async fn stop(self) {
        if let Some(health) = self.health {
            health.stop().await;
        }
        self.http.stop().await;
        // What this node holds of limits and budgets goes back to the cluster now
        // rather than when its leases expire.
        if tokio::time::timeout(USAGE_FLUSH, self.gateway.quotas().give_back_all())
            .await
            .is_err()
        {
            tracing::warn!(
                "quota not all given back at shutdown; it stays counted until its window ends"
            );
        }
        if !self.gateway.usage().flush(USAGE_FLUSH).await {
            tracing::warn!(
                pending = self.gateway.usage().pending(),
                "usage events not yet acknowledged by the event log at shutdown; they stay in the spool and are published at the next start"
            );
        }
        self.gateway.usage().close();
        self.tasks.replica.abort();
        self.tasks.publisher.abort();
        self.tasks.freshness.abort();
        self.tasks.quotas.abort();
    }
}

/// A running admin API.
pub struct AdminService {
    pub http: HttpServer,
    pub admin: Arc<Admin>,
    replica: Option<JoinHandle<()>>,
}

impl AdminService {
    pub async fn start(
        listen: SocketAddr,
        options: ServerOptions,
        config: AdminConfig,
        log: Arc<dyn EventLog>,
        views: Views,
        kms: Arc<dyn Kms>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let (admin, replica) = Admin::start(config, log, views, kms);
        metrics.build_info("admin");
        let http = bind(listen, admin_router(&admin, metrics), "admin", options).await?;
        Ok(AdminService {
            http,
            admin,
            replica: Some(replica),
        })
    }

    /// An admin API sharing a replica already running in this process.
    #[allow(clippy::too_many_arguments)] // wiring: each is a separate part of the API
    pub async fn start_on(
        listen: SocketAddr,
        options: ServerOptions,
        config: AdminConfig,
        log: Arc<dyn EventLog>,
        views: Views,
        kms: Arc<dyn Kms>,
        replica: sg_replica::Replica,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let admin = Admin::with_replica(config, log, views, kms, replica);
        metrics.build_info("admin");
        let http = bind(listen, admin_router(&admin, metrics), "admin", options).await?;
        Ok(AdminService {
            http,
            admin,
            replica: None,
        })
    }

    pub async fn stop(self) {
        self.http.stop().await;
        if let Some(replica) = self.replica {
            replica.abort();
        }
    }
}

/// The admin API, counted, with `/metrics`.
fn admin_router(admin: &Arc<Admin>, metrics: &Metrics) -> Router {
    metrics
        .http()
        .layer(
            // One span per command (OpenTelemetry traces, when on).
            admin.router().layer(axum::middleware::from_fn(|r, n| {
                sg_telemetry::trace::http_span("admin", r, n)
            })),
            "admin",
            sg_telemetry::metrics::matched_route,
            None,
        )
        .merge(metrics.router())
}

/// A running projector, with a small HTTP server for `/healthz`, `/readyz` and
/// `/metrics`.
pub struct ProjectorService {
    pub http: Option<HttpServer>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    watchers: [JoinHandle<()>; 2],
}

impl ProjectorService {
    pub async fn start(
        listen: Option<SocketAddr>,
        log: Arc<dyn EventLog>,
        views: Views,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        // Ready once the views include the control stream as it was at start.
        let target = match log.bounds(sg_eventlog::StreamName::Control).await {
            Ok(b) => b.last_seq,
            Err(e) => {
                tracing::warn!(error = %e, "control stream head unknown at start");
                0
            }
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let (progress_tx, progress) =
            tokio::sync::watch::channel(sg_projector::ProjectorProgress::default());
        metrics.build_info("projector");
        let watchers = metrics::follow_streams(
            metrics,
            "securegate_projector",
            "projector",
            log.clone(),
            progress.clone(),
            |p| [p.control_seq, p.usage_seq, p.signals_seq],
        );
        let alive = Arc::new(AtomicBool::new(true));
        let running = alive.clone();
        let task = tokio::spawn(async move {
            let config = sg_projector::ProjectorConfig::default();
            let shutdown = stop.cancelled_owned();
            if let Err(e) =
                sg_projector::run_with_progress(log, views, config, shutdown, progress_tx).await
            {
                tracing::error!(error = %e, "projector stopped with an error");
            }
            running.store(false, Ordering::SeqCst);
        });
        let watched = progress.clone();
        let http = match listen {
            Some(addr) => Some(
                health_server(addr, "projector", alive, metrics, move || {
                    let p = *watched.borrow();
                    (
                        p.control_seq >= target,
                        serde_json::json!({
                            "control_seq": p.control_seq,
                            "usage_seq": p.usage_seq,
                            "signals_seq": p.signals_seq,
                        }),
                    )
                })
                .await?,
            ),
            None => None,
        };
        Ok(ProjectorService {
            http,
            cancel,
            task,
            watchers,
        })
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        for watcher in &self.watchers {
            watcher.abort();
        }
        if let Some(http) = self.http {
            http.stop().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// `/healthz` (the task is alive) and `/readyz` (alive and `ready()` says so, with its
/// figures) for a background service.
async fn health_server(
    addr: SocketAddr,
    name: &'static str,
    alive: Arc<std::sync::atomic::AtomicBool>,
    metrics: &Metrics,
    ready: impl Fn() -> (bool, serde_json::Value) + Clone + Send + Sync + 'static,
) -> anyhow::Result<HttpServer> {
    use axum::http::StatusCode;
    use std::sync::atomic::Ordering;
    let live = alive.clone();
    let healthz = move || {
        let live = live.load(Ordering::SeqCst);
        async move {
            if live {
                (StatusCode::OK, "ok".to_owned())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, format!("{name} stopped"))
            }
        }
    };
    let readyz = move || {
        let (is_ready, mut figures) = ready();
        let is_ready = is_ready && alive.load(Ordering::SeqCst);
        if let Some(o) = figures.as_object_mut() {
            o.insert("ready".into(), serde_json::Value::Bool(is_ready));
        }
        async move {
            let status = if is_ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(figures))
        }
    };
    let router = Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .merge(metrics.router());
    bind(addr, router, name, ServerOptions::default()).await
}

pub use sg_notify::NotifyConfig;
pub use sg_sentinel::{SentinelConfig, SentinelProgress};

/// The notifier's settings: email through `smtp_url` (if any) from `from`, webhooks
/// (private and `http` ones only when `allow_private`), secrets opened with `kms`.
pub fn notify_config(
    node_id: &str,
    smtp_url: Option<&str>,
    from: Option<&str>,
    allow_private: bool,
    kms: Option<Arc<dyn Kms>>,
) -> anyhow::Result<NotifyConfig> {
    let email = match smtp_url {
        Some(url) => {
            let from = from.unwrap_or("SecureGate <securegate@localhost>");
            Some(Arc::new(
                sg_alerts::EmailSender::new(url, from)
                    .context("invalid --smtp-url or --alert-from")?,
            ))
        }
        None => None,
    };
    let webhook = sg_alerts::WebhookSender::new(allow_private, allow_private)
        .context("cannot build the webhook client")?;
    Ok(NotifyConfig::new(node_id, email, webhook, kms))
}

/// A running sentinel (abuse detection: suspensions and their ends) and notifier
/// (alerts), with an optional small HTTP server for `/healthz` and `/readyz`.
pub struct SentinelService {
    pub http: Option<HttpServer>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    notifier: Option<JoinHandle<()>>,
    /// The sentinel's own replica, when it does not share one.
    replica: Option<JoinHandle<()>>,
    progress: tokio::sync::watch::Receiver<SentinelProgress>,
    watchers: [JoinHandle<()>; 2],
}

impl SentinelService {
    /// Starts the sentinel on `log`, with `replica` if the process already runs one
    /// (embedded mode), else with its own.
    pub async fn start(
        listen: Option<SocketAddr>,
        log: Arc<dyn EventLog>,
        replica: Option<sg_replica::Replica>,
        config: SentinelConfig,
        notify: Option<NotifyConfig>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        metrics.build_info("sentinel");
        let (replica, own) = match replica {
            Some(r) => (r, None),
            None => {
                let (r, task) = sg_replica::Replica::spawn(log.clone(), None);
                (r, Some(task))
            }
        };
        let cancel = CancellationToken::new();
        let notifier = notify.map(|config| {
            let (log, replica, stop) = (log.clone(), replica.clone(), cancel.clone());
            tokio::spawn(sg_notify::run(log, replica, config, stop))
        });
        let (progress_tx, progress) = tokio::sync::watch::channel(SentinelProgress::default());
        let watchers = metrics::follow_streams(
            metrics,
            "securegate_sentinel",
            "sentinel",
            log.clone(),
            progress.clone(),
            |p| [p.control_seq, p.usage_seq, p.signals_seq],
        );
        for (name, help, read) in [
            (
                "securegate_sentinel_suspensions",
                "Key suspensions this sentinel wrote",
                (|p: &SentinelProgress| p.suspended) as fn(&SentinelProgress) -> u64,
            ),
            (
                "securegate_sentinel_resumptions",
                "Ends of suspensions this sentinel wrote",
                |p: &SentinelProgress| p.resumed,
            ),
        ] {
            let watched = progress.clone();
            metrics.counter_fn(name, help, move || read(&watched.borrow()) as f64);
        }
        let alive = Arc::new(AtomicBool::new(true));
        let running = alive.clone();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            if let Err(e) =
                sg_sentinel::run_with_progress(log, replica, config, stop, progress_tx).await
            {
                tracing::error!(error = %e, "sentinel stopped with an error");
            }
            running.store(false, Ordering::SeqCst);
        });
        let watched = progress.clone();
        let http = match listen {
            Some(addr) => Some(
                health_server(addr, "sentinel", alive, metrics, move || {
                    let p = *watched.borrow();
                    (
                        p.ready,
                        serde_json::json!({
                            "control_seq": p.control_seq,
                            "usage_seq": p.usage_seq,
                            "signals_seq": p.signals_seq,
                            "suspended": p.suspended,
                            "resumed": p.resumed,
                        }),
                    )
                })
                .await?,
            ),
            None => None,
        };
        Ok(SentinelService {
            http,
            cancel,
            task,
            notifier,
            replica: own,
            progress,
            watchers,
        })
    }

    /// Where the sentinel is.
    pub fn progress(&self) -> SentinelProgress {
        *self.progress.borrow()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        for watcher in &self.watchers {
            watcher.abort();
        }
        if let Some(http) = self.http {
            http.stop().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        if let Some(notifier) = self.notifier {
            let _ = tokio::time::timeout(Duration::from_secs(10), notifier).await;
        }
        if let Some(replica) = self.replica {
            replica.abort();
        }
    }
}

/// Embedded mode's settings.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    pub gateway_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub gateway: GatewayConfig,
    /// Connection bound and timeouts of the gateway and admin listeners.
    pub limits: ServerLimits,
    /// A static configuration file and the directory Kubernetes secrets are mounted in.
    pub static_config: Option<(PathBuf, PathBuf)>,
    /// The plan of tenants created without naming one.
    pub default_plan: String,
    /// Where clients reach the gateway; `None`: the gateway's own address.
    pub gateway_url: Option<String>,
    /// The console's public origin, when named (`--console-origin`).
    pub console_origin: Option<sg_admin::console::ConsoleOrigin>,
    /// Where alert email goes out (`smtp://host:port`, `smtps://…`), and from whom.
    pub smtp_url: Option<String>,
    pub alert_from: Option<String>,
}

/// Every role in one process on one local data directory: an SQLite event log, SQLite
/// views and a local master key, all under `data_dir`.
pub struct Embedded {
    pub gateway: GatewayService,
    pub admin: AdminService,
    pub projector: ProjectorService,
    pub sentinel: SentinelService,
}

/// Files embedded mode keeps in its data directory.
pub const EVENTS_DB: &str = "events.db";
pub const VIEWS_DB: &str = "views.db";
pub const MASTER_KEY: &str = "master.key";
pub const SPOOL_DIR: &str = "spool";

impl Embedded {
    pub async fn start(
        options: EmbeddedOptions,
        admin_token: SecretString,
    ) -> anyhow::Result<Self> {
        let data_dir = options.data_dir.clone();
        let dir = &data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let key_path = dir.join(MASTER_KEY);
        if !key_path.exists() {
            sg_crypto::generate_master_key_file(&key_path)?;
            tracing::info!(path = %key_path.display(), "generated a new master key");
        }
        let metrics = Metrics::new();
        let kms = build_kms(
            KmsKind::Local,
            None,
            Some(&key_path),
            KmsUse::Seal,
            &metrics,
        )
        .await?;
        let open_kms = metrics::cached(kms.clone(), &metrics);
        let log: Arc<dyn EventLog> = Arc::new(
            SqliteLog::open(&dir.join(EVENTS_DB))
                .await
                .context("cannot open the embedded event log")?,
        );
        let views_url = format!("sqlite://{}?mode=rwc", dir.join(VIEWS_DB).display());
        let views = connect_views(&views_url).await?;
        let projector = ProjectorService::start(None, log.clone(), views.clone(), &metrics).await?;
        let allow_private_upstreams = options.gateway.allow_private_upstreams;
        let mut options = options;
        options.gateway.spool.dir = dir.join(SPOOL_DIR);
        if let Some((file, secrets_dir)) = &options.static_config {
            options.gateway.static_events = static_config::load(file, secrets_dir, &*kms).await?;
        }
        let server = ServerOptions {
            limits: options.limits,
            proxy_protocol: false,
        };
        let open_kms_for_alerts = open_kms.clone();
        let gateway = GatewayService::start_with(
            options.gateway_listen,
            server,
            None,
            options.gateway,
            Role::All { kms: open_kms },
            log.clone(),
            &metrics,
        )
        .await?;
        // One replica for both: a command answers only once the gateway knows its result.
        let admin = AdminService::start_on(
            options.admin_listen,
            server,
            AdminConfig {
                operator_token: admin_token,
                allow_private_upstreams,
                default_plan: options.default_plan.clone(),
                gateway_url: Some(options.gateway_url.clone().unwrap_or_else(|| {
                    let addr = gateway.http.addr;
                    let host = if addr.ip().is_unspecified() {
                        std::net::IpAddr::from([127, 0, 0, 1])
                    } else {
                        addr.ip()
                    };
                    format!("http://{}", std::net::SocketAddr::new(host, addr.port()))
                })),
                console_origin: options.console_origin.clone(),
            },
            log.clone(),
            views,
            kms,
            gateway.gateway.replica().clone(),
            &metrics,
        )
        .await?;
        // Abuse detection on the same replica: its suspensions reach the gateway through
        // the log like any other control event.
        let notify = notify_config(
            "embedded",
            options.smtp_url.as_deref(),
            options.alert_from.as_deref(),
            allow_private_upstreams,
            Some(open_kms_for_alerts),
        )?;
        let sentinel = SentinelService::start(
            None,
            log,
            Some(gateway.gateway.replica().clone()),
            SentinelConfig::default(),
            Some(notify),
            &metrics,
        )
        .await?;
        Ok(Embedded {
            gateway,
            admin,
            projector,
            sentinel,
        })
    }

    pub async fn stop(self) {
        self.sentinel.stop().await;
        self.gateway.stop().await;
        self.admin.stop().await;
        self.projector.stop().await;
    }
}

/// Reads an edge signing key file (base64 of a 32-byte Ed25519 seed).
pub fn edge_signer(path: &Path) -> anyhow::Result<sg_attest::EdgeSigner> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the attestation signing key {}", path.display()))?;
    sg_attest::EdgeSigner::from_base64(&text)
        .with_context(|| format!("{} is not an attestation signing key", path.display()))
}

/// Reads trusted edge public keys: base64 keys separated by commas, whitespace or lines.
pub fn edge_verifier(keys: &str) -> anyhow::Result<sg_attest::Verifier> {
    sg_attest::Verifier::from_base64(keys.split(|c: char| c == ',' || c.is_whitespace()))
        .context("invalid trusted edge public keys")
}

/// Writes a new attestation key pair: `<prefix>.key` (mode 0600) and `<prefix>.pub`.
pub fn write_attestation_keypair(prefix: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    let signer = sg_attest::EdgeSigner::generate();
    let key_path = PathBuf::from(format!("{}.key", prefix.display()));
    let pub_path = PathBuf::from(format!("{}.pub", prefix.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&key_path)
        .with_context(|| format!("cannot create {}", key_path.display()))?;
    file.write_all(signer.to_base64().as_bytes())?;
    file.write_all(b"\n")?;
    std::fs::write(&pub_path, format!("{}\n", signer.public_key_base64()))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok((key_path, pub_path))
}

/// A fresh random operator token (`sgadm_` + 40 base62).
pub fn generate_admin_token() -> SecretString {
    use rand::Rng;
    let token: String = rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    SecretString::new(format!("sgadm_{token}"))
}

/// The file in embedded mode's data directory that keeps its generated operator token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Where embedded mode's operator token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// `SECUREGATE_ADMIN_TOKEN`; the token file is neither read nor written.
    Environment,
    /// The token file, written by an earlier run.
    Stored(PathBuf),
    /// Generated now and written to the token file (mode 0600).
    Generated(PathBuf),
}

/// Embedded mode's operator token: `from_env` (`SECUREGATE_ADMIN_TOKEN`) when given;
/// else the one kept in `<data_dir>/admin.token`; else a new one, written there (mode
/// 0600, created whole or not at all) so that it survives restarts. A token file that
/// group or others can read, or that is empty, is refused with what to do. Nothing here
/// logs the token.
pub fn dev_admin_token(
    data_dir: &Path,
    from_env: Option<SecretString>,
) -> anyhow::Result<(SecretString, AdminTokenSource)> {
    if let Some(token) = from_env {
        return Ok((token, AdminTokenSource::Environment));
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Some(token) = read_admin_token_file(&path)? {
        return Ok((token, AdminTokenSource::Stored(path)));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let token = generate_admin_token();
    // Written to a private temporary file, then linked into place: another process sees
    // the whole token or no file, and of two processes starting at once one token wins.
    let temp = data_dir.join(format!(
        ".{ADMIN_TOKEN_FILE}.{}.{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| -> std::io::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        file.write_all(token.expose().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::hard_link(&temp, &path)
    })();
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => Ok((token, AdminTokenSource::Generated(path))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match read_admin_token_file(&path)? {
                Some(token) => Ok((token, AdminTokenSource::Stored(path))),
                None => anyhow::bail!("{} appeared empty while starting", path.display()),
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The token in `path`, `None` if there is no such file.
fn read_admin_token_file(path: &Path) -> anyhow::Result<Option<SecretString>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => zeroize::Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} holds the operator token but group or others can access it (mode {:o}): run chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!(
            "{} is empty: delete it to have a new operator token generated, or set SECUREGATE_ADMIN_TOKEN",
            path.display()
        );
    }
    Ok(Some(SecretString::new(token.to_owned())))
}
