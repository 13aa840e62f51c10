//! `securegate`: parses flags and wires services from `sg-app`. No logic lives here.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use sg_app::{
    AdminService, Embedded, EmbeddedOptions, GatewayRole, GatewayService, GatewaySettings,
    ProjectorService, SentinelConfig, SentinelService,
};
use sg_crypto::SecretString;

/// SecureGate: a self-hostable zero-trust gateway for LLM API keys.
///
/// Apps and agents get scoped, revocable proxy keys (`SG_…`) and an OpenAI-compatible
/// base URL; provider keys stay sealed.
#[derive(Parser)]
#[command(name = "securegate", version, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SECUREGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process with no external service (embedded mode): an
    /// event log, views and a local master key in one data directory.
    ///
    /// The admin API's operator token is `SECUREGATE_ADMIN_TOKEN` when set; else the one
    /// kept in `<data-dir>/admin.token` (mode 0600) by an earlier start; else a new one,
    /// printed once and kept there for the next start. Scripts read it with `cat
    /// .securegate/admin.token`.
    Dev(Box<DevArgs>),
    /// Run one service of a cluster against NATS JetStream and PostgreSQL.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Print the admin API's OpenAPI document.
    Openapi,
    /// List the providers a connection can name: default base URL, how the provider
    /// key is sent, the API it speaks and what it supports.
    Providers {
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Read a proxy key from standard input and print its SHA-256 (for `key_sha256` in
    /// a static configuration), so that the key itself need not be in the file.
    HashKey,
    /// Create the Ed25519 key pair edge nodes sign attestations with: `<out>.key` for
    /// edges (`--attestation-key-file`), `<out>.pub` for egress nodes
    /// (`--attestation-public-keys`).
    Keygen {
        #[arg(long, default_value = "attestation")]
        out: PathBuf,
    },
    /// Serve a stand-in OpenAI-compatible provider that answers every model with canned
    /// text, counted tokens and streams (no provider key needed): for trying a cluster
    /// and for load tests. Point a connection's `base_url` at it.
    MockProvider {
        #[arg(long, env = "SECUREGATE_LISTEN", default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Delay before the first byte of every answer.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: std::time::Duration,
    },
    /// Exit 0 if `url` answers 2xx within the timeout, else 1: a container health check
    /// for images without a shell or curl (e.g. `securegate healthcheck
    /// http://127.0.0.1:8080/readyz`).
    Healthcheck {
        url: String,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The owner CLI: clients of an admin API (`sg-cli`).
    #[command(flatten)]
    Client(sg_cli::Command),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// The provider catalog as a table or JSON.
/// Prints `text` and a newline; a reader that stopped early (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn print_providers(output: Output) -> anyhow::Result<()> {
    use std::io::Write as _;
    let entries: Vec<sg_admin::api::ProviderEntry> =
        sg_providers::catalog().map(Into::into).collect();
    let mut out = std::io::stdout().lock();
    let written = (|| -> std::io::Result<()> {
        if output == Output::Json {
            let text = serde_json::to_string_pretty(&entries).map_err(std::io::Error::other)?;
            return writeln!(out, "{text}");
        }
        writeln!(
            out,
            "{:<18} {:<48} {:<10} {:<13} {:<41} DEFAULT BASE URL",
            "ID", "NAME", "AUTH", "API", "SUPPORTS"
        )?;
        for e in entries {
            let s = &e.supports;
            let supports: Vec<&str> = [
                (s.chat, "chat"),
                (s.streaming, "stream"),
                (s.embeddings, "embeddings"),
                (s.audio, "audio"),
                (s.images, "images"),
                (s.files, "files"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            writeln!(
                out,
                "{:<18} {:<48} {:<10} {:<13} {:<41} {}",
                e.id,
                e.name,
                e.auth,
                e.flavour,
                supports.join(","),
                e.default_base_url
                    .as_deref()
                    .unwrap_or("(base_url required)")
            )?;
        }
        Ok(())
    })();
    match written {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Args)]
struct DevArgs {
    /// Where the event log, the views, the master key and the generated operator token
    /// (`admin.token`) live.
    #[arg(long, env = "SECUREGATE_DATA_DIR", default_value = ".securegate")]
    data_dir: PathBuf,
    /// The OpenAI-compatible gateway (`/v1`).
    #[arg(
        long,
        env = "SECUREGATE_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    gateway_listen: SocketAddr,
    /// The admin API (`/admin/v1`) and the web console (`/console/`).
    #[arg(
        long,
        env = "SECUREGATE_ADMIN_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    admin_listen: SocketAddr,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    listener: ListenerArgs,
    #[command(flatten)]
    owners: OwnerArgs,
    #[command(flatten)]
    alerts: AlertArgs,
}

/// Plans and what the admin API tells owners.
#[derive(Args)]
struct OwnerArgs {
    /// The plan of tenants created without naming one (`free`, `pro`, `team`, or one the
    /// operator defined).
    #[arg(long, env = "SECUREGATE_DEFAULT_PLAN", default_value = "free")]
    default_plan: String,
    /// Where clients reach the gateway, as `GET /admin/v1/me` and `securegate env` show
    /// it (e.g. `https://llm.example.com`). Embedded mode uses its own gateway address
    /// when this is not set.
    #[arg(long, env = "SECUREGATE_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// The web console's public origin as browsers see it (e.g.
    /// `https://admin.example.com`). Set it whenever the console is reached through a
    /// proxy or over HTTPS: sign-ins and writes must then come from exactly this origin
    /// (instead of one matching the request's `Host`), and on `https` only the
    /// `__Host-` session cookie counts, so a page on another port or subdomain cannot
    /// plant a session.
    #[arg(long, env = "SECUREGATE_CONSOLE_ORIGIN", value_parser = sg_admin::console::ConsoleOrigin::parse)]
    console_origin: Option<sg_admin::console::ConsoleOrigin>,
}

/// How the HTTP listeners treat slow, idle and numerous clients.
#[derive(Args)]
struct ListenerArgs {
    /// Connections served at once per listener; more wait in the accept queue. Lowered
    /// to fit the process's open-file limit (raised to its hard limit at start).
    #[arg(long, env = "SECUREGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Longest time from a connection's accept, or a kept-alive request's first byte, to
    /// the end of the request's headers; slower connections are closed.
    #[arg(long, env = "SECUREGATE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: std::time::Duration,
    /// A kept-alive connection with no request in flight is closed after this long.
    /// Keep it above the idle timeout of the load balancer in front (AWS ALB: 60 s).
    #[arg(long, env = "SECUREGATE_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    idle_timeout: std::time::Duration,
}

impl ListenerArgs {
    fn limits(&self) -> sg_app::ServerLimits {
        sg_app::ServerLimits {
            max_connections: fit_open_files(self.max_connections),
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Raises the open-file limit to its hard limit and lowers `wanted` connections to fit
/// in it (leaving room for upstream connections, logs and the event log).
fn fit_open_files(wanted: usize) -> usize {
    const RESERVE: u64 = 1024;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // Half for clients, half for the upstream connections they cause.
            let room = usize::try_from(limit.saturating_sub(RESERVE) / 2)
                .unwrap_or(usize::MAX)
                .max(64);
            if wanted > room {
                tracing::warn!(
                    wanted,
                    room,
                    open_file_limit = limit,
                    "--max-connections lowered to fit the open-file limit"
                );
                return room;
            }
            wanted
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            wanted
        }
    }
}

#[derive(Subcommand)]
enum ServerCommand {
    /// A gateway node: the OpenAI-compatible data plane.
    Gateway(Box<GatewayServerArgs>),
    /// The admin API (commands to the event log, queries from the views) and the web
    /// console (`/console/`).
    Admin(AdminServerArgs),
    /// The projector: folds the event log into the PostgreSQL views.
    Projector(ProjectorServerArgs),
    /// The sentinel: abuse detection and alerts.
    ///
    /// Reads usage and lock violations from the event log, suspends keys that break
    /// their project's abuse rules (velocity, spikes, spread, violation storms, model
    /// probing; `PUT /admin/v1/projects/{id}/abuse`) on every gateway, and resumes them
    /// when the suspension ends. It also alerts each project's owners
    /// (`PUT /admin/v1/projects/{id}/alerts`) by email (`--smtp-url`) and signed webhook
    /// (opening webhook secrets with the KMS) of refusals, suspensions, budget thresholds
    /// and expiring keys. Needs NATS; several may run: each suspension and alert is
    /// written once.
    Sentinel(SentinelServerArgs),
}

#[derive(Args)]
struct NatsArgs {
    /// NATS server with JetStream (≥ 2.12.3 recommended).
    #[arg(
        long,
        env = "SECUREGATE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Copies of each JetStream stream: 1 on a single server, 3 on a three-node cluster
    /// (a write is acknowledged once a majority has it). Give every process the same.
    #[arg(long, env = "SECUREGATE_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    stream_replicas: u64,
}

#[derive(Args)]
struct KmsArgs {
    /// Which KMS wraps provider-key data keys: `aws` (AWS KMS; standard AWS configuration —
    /// region, credentials chain, `AWS_ENDPOINT_URL_KMS` for a compatible endpoint) or
    /// `local` (a master key file; development).
    #[arg(long, env = "SECUREGATE_KMS", value_enum, default_value = "local")]
    kms: KmsArg,
    /// AWS KMS key (id, ARN or alias) new data keys are generated under. Needed where
    /// provider keys are sealed (admin); egress nodes only decrypt and need none.
    #[arg(long, env = "SECUREGATE_KMS_KEY_ID")]
    kms_key_id: Option<String>,
    /// `--kms local`: file holding a base64-encoded 32-byte master key
    /// (`head -c 32 /dev/urandom | base64`).
    #[arg(long, env = "SECUREGATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KmsArg {
    Aws,
    Local,
}

impl KmsArgs {
    async fn build(
        &self,
        usage: sg_app::KmsUse,
        metrics: &sg_app::Metrics,
    ) -> anyhow::Result<std::sync::Arc<dyn sg_crypto::Kms>> {
        let kind = match self.kms {
            KmsArg::Aws => sg_app::KmsKind::Aws,
            KmsArg::Local => sg_app::KmsKind::Local,
        };
        sg_app::build_kms(
            kind,
            self.kms_key_id.as_deref(),
            self.master_key_file.as_deref(),
            usage,
            metrics,
        )
        .await
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    /// Authorise and call providers in one process.
    All,
    /// Authorise, then hand requests to egress nodes; no access to provider keys.
    Edge,
    /// Serve only requests attested by edge nodes; opens provider keys.
    Egress,
}

#[derive(Args)]
struct GatewayArgs {
    /// This node's name in usage records.
    #[arg(long, env = "SECUREGATE_NODE_ID")]
    node_id: Option<String>,
    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, env = "SECUREGATE_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest multipart upload (audio, images, files), in bytes (413 above): read only
    /// as far as its model field, then streamed to the provider as it arrives. On an
    /// edge node, and for keys with a signature lock, uploads are read whole within
    /// --max-body-bytes instead.
    #[arg(long, env = "SECUREGATE_MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
    max_upload_bytes: u64,
    /// Longest wait for the next piece of a request body; also the time every body gets
    /// before --client-body-min-rate counts (408 beyond).
    #[arg(long, env = "SECUREGATE_CLIENT_BODY_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    client_body_timeout: std::time::Duration,
    /// Bytes per second a request body must average beyond --client-body-timeout (each
    /// byte received extends its deadline by 1/rate seconds); 0 turns it off.
    #[arg(long, env = "SECUREGATE_CLIENT_BODY_MIN_RATE", default_value_t = 32 * 1024)]
    client_body_min_rate: u64,
    /// How long a node may go without knowing it has every control event (revocations,
    /// lock changes) before it reports not ready and refuses keys with locks (503
    /// `control_plane_unavailable`); keys with every lock off keep working.
    #[arg(long, env = "SECUREGATE_MAX_STALENESS", default_value = "5s", value_parser = humantime::parse_duration)]
    max_staleness: std::time::Duration,
    /// Where usage records wait, on disk, to be published to the event log (gateway
    /// nodes; `dev` keeps them in its data directory). Keep it on a volume that survives
    /// a restart: what a killed node owed is published when it starts again.
    #[arg(
        long,
        env = "SECUREGATE_SPOOL_DIR",
        default_value = "/var/lib/securegate/spool"
    )]
    spool_dir: PathBuf,
    /// Unpublished usage (bytes) beyond which the node refuses new requests with 503
    /// `usage_spool_full` rather than serve what it could not account for.
    #[arg(long, env = "SECUREGATE_SPOOL_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    spool_max_bytes: u64,
    /// Send requests to providers through this HTTP(S) proxy (`http://host:port`). Without
    /// it providers are called directly: HTTPS_PROXY, HTTP_PROXY and ALL_PROXY in the
    /// environment are ignored, so provider keys never go through a proxy by accident.
    #[arg(long, env = "SECUREGATE_UPSTREAM_PROXY")]
    upstream_proxy: Option<String>,
    /// Load balancers and proxies whose `X-Forwarded-For` is believed, as IPs or CIDRs,
    /// comma-separated (e.g. `10.0.0.0/8,127.0.0.1`). Headers from any other peer are
    /// ignored: the peer is the client.
    #[arg(long, env = "SECUREGATE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// MaxMind City database (`.mmdb`) for location locks; reloaded when the file changes.
    #[arg(long, env = "SECUREGATE_GEOIP_DB")]
    geoip_db: Option<PathBuf>,
    /// Connections and keys configured in a TOML file instead of through the admin API
    /// (see the README). Needs a node that opens provider keys (`--role all`, `dev`).
    #[arg(long, env = "SECUREGATE_STATIC_CONFIG")]
    static_config: Option<PathBuf>,
    /// Where Kubernetes secrets are mounted, for `{ secret = "name/key" }` in the static
    /// configuration.
    #[arg(
        long,
        env = "SECUREGATE_SECRETS_DIR",
        default_value = "/var/run/secrets/securegate"
    )]
    secrets_dir: PathBuf,
}

impl GatewayArgs {
    /// The static configuration's events, sealed with `kms`, if a file is configured.
    async fn static_events(
        &self,
        kms: Option<&dyn sg_crypto::Kms>,
    ) -> anyhow::Result<Vec<sg_events::Envelope>> {
        let Some(path) = &self.static_config else {
            return Ok(Vec::new());
        };
        let kms =
            kms.context("--static-config needs a node that opens provider keys (--role all)")?;
        sg_app::static_config::load(path, &self.secrets_dir, kms).await
    }
}

#[derive(Args)]
struct GatewayServerArgs {
    #[arg(long, env = "SECUREGATE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// What this node does.
    #[arg(long, env = "SECUREGATE_ROLE", value_enum, default_value = "all")]
    role: RoleArg,
    /// Edge: the egress service's base URL, e.g. `http://securegate-egress:8080`.
    #[arg(long, env = "SECUREGATE_EGRESS_URL", required_if_eq("role", "edge"))]
    egress_url: Option<String>,
    /// Edge: the attestation signing key file (from `securegate keygen`).
    #[arg(
        long,
        env = "SECUREGATE_ATTESTATION_KEY_FILE",
        required_if_eq("role", "edge")
    )]
    attestation_key_file: Option<PathBuf>,
    /// Egress: the edge public keys it trusts (base64, comma-separated).
    #[arg(long, env = "SECUREGATE_ATTESTATION_PUBLIC_KEYS")]
    attestation_public_keys: Option<String>,
    /// Egress: a file holding the edge public keys it trusts (base64, comma- or
    /// newline-separated; a `.pub` file from `securegate keygen`), instead of
    /// --attestation-public-keys.
    #[arg(
        long,
        env = "SECUREGATE_ATTESTATION_PUBLIC_KEYS_FILE",
        conflicts_with = "attestation_public_keys"
    )]
    attestation_public_keys_file: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    kms: KmsArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Let connections reach private, loopback and link-local upstreams.
    #[arg(long, env = "SECUREGATE_ALLOW_PRIVATE_UPSTREAMS")]
    allow_private_upstreams: bool,
    /// Expect a PROXY protocol v2 header on every connection (behind a network load
    /// balancer such as AWS NLB or HAProxy `send-proxy-v2`); connections without one are
    /// refused. The header's client address is the request's peer.
    #[arg(long, env = "SECUREGATE_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Also serve `/healthz` and `/readyz` on this plain listener (for probes that do not
    /// speak the PROXY protocol); it has its own connection bound, so probes keep being
    /// answered when the main listener is full.
    #[arg(long, env = "SECUREGATE_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    #[command(flatten)]
    listener: ListenerArgs,
}

#[derive(Args)]
struct AdminServerArgs {
    #[arg(long, env = "SECUREGATE_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// PostgreSQL holding the views (`postgres://user@host/db`).
    #[arg(long, env = "SECUREGATE_DATABASE_URL")]
    database_url: String,
    #[command(flatten)]
    kms: KmsArgs,
    /// Allow connections whose base_url is a private, loopback or link-local address.
    #[arg(long, env = "SECUREGATE_ALLOW_PRIVATE_UPSTREAMS")]
    allow_private_upstreams: bool,
    #[command(flatten)]
    owners: OwnerArgs,
    #[command(flatten)]
    listener: ListenerArgs,
}

#[derive(Args)]
struct ProjectorServerArgs {
    /// Health endpoints (`/healthz`, `/readyz`).
    #[arg(long, env = "SECUREGATE_LISTEN", default_value = "0.0.0.0:8082")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// PostgreSQL holding the views.
    #[arg(long, env = "SECUREGATE_DATABASE_URL")]
    database_url: String,
}

#[derive(Args)]
struct SentinelServerArgs {
    /// Health endpoints (`/healthz`, `/readyz`).
    #[arg(long, env = "SECUREGATE_LISTEN", default_value = "0.0.0.0:8083")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// This sentinel's name in the events it writes.
    #[arg(long, env = "SECUREGATE_NODE_ID")]
    node_id: Option<String>,
    #[command(flatten)]
    alerts: AlertArgs,
    /// The KMS that opens webhook signing secrets (as on the admin API). Without
    /// `--master-key-file` (local) or `--kms aws`, webhook alerts are recorded as
    /// undeliverable.
    #[command(flatten)]
    kms: KmsArgs,
    /// Let alert webhooks reach private and loopback addresses, and plain `http`.
    #[arg(long, env = "SECUREGATE_ALLOW_PRIVATE_UPSTREAMS")]
    allow_private_upstreams: bool,
}

/// Where alert email goes.
#[derive(Args)]
struct AlertArgs {
    /// The SMTP server alert email is sent through: `smtp://host:port` (plain;
    /// `?tls=required` for STARTTLS) or `smtps://host:port` (TLS), with
    /// `user:password@` if it needs a login. Without it, email alerts are recorded as
    /// undeliverable.
    #[arg(long, env = "SECUREGATE_SMTP_URL")]
    smtp_url: Option<String>,
    /// The sender of alert email, e.g. `SecureGate <alerts@example.com>`.
    #[arg(long, env = "SECUREGATE_ALERT_FROM")]
    alert_from: Option<String>,
}

fn gateway_settings(
    args: &GatewayArgs,
    allow_private_upstreams: bool,
) -> anyhow::Result<GatewaySettings> {
    let trusted_proxies =
        sg_policy::TrustedProxies::parse(args.trusted_proxies.iter().map(|s| s.trim()))
            .context("invalid --trusted-proxies")?;
    let geoip = match &args.geoip_db {
        Some(path) => {
            let (db, _watcher) =
                sg_geoip::GeoIp::watch(path, std::time::Duration::from_secs(30))
                    .with_context(|| format!("cannot use the GeoIP database {}", path.display()))?;
            Some(db)
        }
        None => None,
    };
    Ok(GatewaySettings {
        trusted_proxies,
        geoip,
        node_id: args
            .node_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "gateway".into()),
        max_body_bytes: args.max_body_bytes,
        max_upload_bytes: args.max_upload_bytes,
        body_timeouts: sg_app::BodyTimeouts {
            timeout: args.client_body_timeout,
            min_rate: args.client_body_min_rate,
        },
        upstream_proxy: args.upstream_proxy.clone().filter(|p| !p.trim().is_empty()),
        spool: sg_app::SpoolSettings {
            dir: args.spool_dir.clone(),
            max_bytes: args.spool_max_bytes,
        },
        max_staleness: args.max_staleness,
        allow_private_upstreams,
        ..GatewaySettings::default()
    })
}

fn admin_token_from_env() -> Option<SecretString> {
    std::env::var("SECUREGATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(SecretString::new)
}

/// `securegate-<role>`: the service name traces carry unless `OTEL_SERVICE_NAME` says.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Dev(_) => "securegate-dev",
        Command::Server(ServerCommand::Gateway(args)) => match args.role {
            RoleArg::All => "securegate-gateway-all",
            RoleArg::Edge => "securegate-gateway-edge",
            RoleArg::Egress => "securegate-gateway-egress",
        },
        Command::Server(ServerCommand::Admin(_)) => "securegate-admin",
        Command::Server(ServerCommand::Projector(_)) => "securegate-projector",
        Command::Server(ServerCommand::Sentinel(_)) => "securegate-sentinel",
        Command::MockProvider { .. } => "securegate-mock-provider",
        _ => "securegate",
    }
}

/// Logs to stderr (text or JSON, filtered by `RUST_LOG`), and OpenTelemetry traces when
/// the `OTEL_EXPORTER_OTLP_*` variables ask for them (`sg_telemetry::trace`). Spans stay
/// out of the logs unless `RUST_LOG` names their target.
fn init_logging(format: LogFormat, service: &str) -> sg_telemetry::trace::TraceGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let from_env = std::env::var("RUST_LOG").ok();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !from_env.is_some_and(|f| f.contains(sg_telemetry::trace::TARGET))
        && let Ok(off) = format!("{}=off", sg_telemetry::trace::TARGET).parse()
    {
        filter = filter.add_directive(off);
    }
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let fmt: Boxed = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (otel, mut guard) = sg_telemetry::trace::layer(service);
    match otel {
        // Each layer its own filter: spans go to the exporter whatever the log level.
        Some(otel) => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .init(),
        None => tracing_subscriber::registry().with(fmt).with(filter).init(),
    }
    guard.announce();
    guard
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Client(command) = cli.command {
        let code = sg_cli::main(command, Cli::command()).await;
        std::process::exit(code);
    }
    if let Command::Openapi = cli.command {
        return print_stdout(&sg_admin::openapi_json());
    }
    if let Command::Healthcheck { url, timeout } = &cli.command {
        let client = reqwest::Client::builder()
            .timeout(*timeout)
            .no_proxy()
            .build()?;
        let code = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => 0,
            Ok(r) => {
                eprintln!("{url}: {}", r.status());
                1
            }
            Err(e) => {
                eprintln!("{url}: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    if let Command::Providers { output } = cli.command {
        return print_providers(output);
    }
    if let Command::HashKey = cli.command {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let key = sg_proxy_key::ProxyKey::parse(line.trim()).map_err(|e| anyhow::anyhow!("{e}"))?;
        return print_stdout(&key.hash().to_hex());
    }
    if let Command::Keygen { out } = &cli.command {
        let (key, public) = sg_app::write_attestation_keypair(out)?;
        return print_stdout(&format!(
            "signing key (edge nodes only): {}\npublic key (egress nodes):    {}",
            key.display(),
            public.display()
        ));
    }
    let traces = init_logging(cli.log_format, service_name(&cli.command));
    match cli.command {
        Command::Openapi
        | Command::Keygen { .. }
        | Command::HashKey
        | Command::Healthcheck { .. }
        | Command::Providers { .. }
        | Command::Client(_) => {}
        Command::MockProvider { listen, latency } => {
            let config = sg_mock_provider::MockConfig {
                latency,
                ..sg_mock_provider::MockConfig::default()
            };
            let server = sg_app::bind(
                listen,
                sg_mock_provider::router(config),
                "mock-provider",
                sg_app::ServerOptions::default(),
            )
            .await?;
            print_stdout(&format!("mock provider: http://{}/v1", server.addr))?;
            shutdown_signal().await;
            server.stop().await;
        }
        Command::Dev(args) => {
            // The operator token: SECUREGATE_ADMIN_TOKEN, else the one kept in the data
            // directory, else a new one kept there. Shown on stdout only when generated;
            // never logged.
            let (token, source) = sg_app::dev_admin_token(&args.data_dir, admin_token_from_env())?;
            let token_line = match &source {
                sg_app::AdminTokenSource::Environment => "from SECUREGATE_ADMIN_TOKEN".to_owned(),
                sg_app::AdminTokenSource::Generated(path) => format!(
                    "{}\n                   (generated; kept in {} for the next start, \
                     SECUREGATE_ADMIN_TOKEN overrides it)",
                    token.expose(),
                    path.display()
                ),
                sg_app::AdminTokenSource::Stored(path) => format!(
                    "the one kept in {0} (`cat {0}`; SECUREGATE_ADMIN_TOKEN overrides it)",
                    path.display()
                ),
            };
            let options = EmbeddedOptions {
                data_dir: args.data_dir.clone(),
                gateway_listen: args.gateway_listen,
                admin_listen: args.admin_listen,
                // Dev mode: local upstreams (a model server on this machine) are fine.
                gateway: gateway_settings(&args.gateway, true)?,
                limits: args.listener.limits(),
                static_config: args
                    .gateway
                    .static_config
                    .clone()
                    .map(|file| (file, args.gateway.secrets_dir.clone())),
                default_plan: args.owners.default_plan.clone(),
                gateway_url: args.owners.gateway_url.clone(),
                console_origin: args.owners.console_origin.clone(),
                smtp_url: args.alerts.smtp_url.clone(),
                alert_from: args.alerts.alert_from.clone(),
            };
            let embedded = Embedded::start(options, token).await?;
            print_stdout(&format!(
                "SecureGate is running (embedded mode).\n  \
                 OpenAI base URL: http://{}/v1\n  \
                 Admin API:       http://{}/admin/v1   (OpenAPI: /admin/v1/openapi.json)\n  \
                 Web console:     http://{}/console/\n  \
                 Admin token:     {}\n  \
                 Data directory:  {}",
                embedded.gateway.http.addr,
                embedded.admin.http.addr,
                embedded.admin.http.addr,
                token_line,
                args.data_dir.display()
            ))?;
            shutdown_signal().await;
            embedded.stop().await;
        }
        Command::Server(ServerCommand::Gateway(args)) => {
            let metrics = sg_app::Metrics::new();
            let role = match args.role {
                RoleArg::All => GatewayRole::All {
                    kms: args.kms.build(sg_app::KmsUse::Open, &metrics).await?,
                },
                RoleArg::Edge => GatewayRole::Edge {
                    egress_url: args
                        .egress_url
                        .clone()
                        .context("--egress-url is required for --role edge")?,
                    signer: std::sync::Arc::new(sg_app::edge_signer(
                        args.attestation_key_file
                            .as_deref()
                            .context("--attestation-key-file is required for --role edge")?,
                    )?),
                },
                RoleArg::Egress => GatewayRole::Egress {
                    kms: args.kms.build(sg_app::KmsUse::Open, &metrics).await?,
                    verifier: sg_app::edge_verifier(&match (
                        &args.attestation_public_keys,
                        &args.attestation_public_keys_file,
                    ) {
                        (Some(keys), _) => keys.clone(),
                        (None, Some(file)) => std::fs::read_to_string(file).with_context(|| {
                            format!(
                                "cannot read --attestation-public-keys-file {}",
                                file.display()
                            )
                        })?,
                        (None, None) => anyhow::bail!(
                            "--role egress needs --attestation-public-keys or --attestation-public-keys-file"
                        ),
                    })?,
                },
            };
            let log =
                sg_app::connect_jetstream(&args.nats.nats_url, args.nats.stream_replicas as usize)
                    .await?;
            let mut settings = gateway_settings(&args.gateway, args.allow_private_upstreams)?;
            let opener = match &role {
                GatewayRole::All { kms } => Some(kms.as_ref()),
                _ => None,
            };
            settings.static_events = args.gateway.static_events(opener).await?;
            let options = sg_app::ServerOptions {
                limits: args.listener.limits(),
                proxy_protocol: args.proxy_protocol,
            };
            let service = GatewayService::start_with(
                args.listen,
                options,
                args.health_listen,
                settings,
                role,
                log,
                &metrics,
            )
            .await?;
            shutdown_signal().await;
            service.stop().await;
        }
        Command::Server(ServerCommand::Admin(args)) => {
            let token = admin_token_from_env().context(
                "SECUREGATE_ADMIN_TOKEN must be set: it is the operator token for the admin API",
            )?;
            let log =
                sg_app::connect_jetstream(&args.nats.nats_url, args.nats.stream_replicas as usize)
                    .await?;
            let views = sg_app::connect_views(&args.database_url).await?;
            let metrics = sg_app::Metrics::new();
            let kms = args.kms.build(sg_app::KmsUse::Seal, &metrics).await?;
            let config = sg_admin::AdminConfig {
                operator_token: token,
                allow_private_upstreams: args.allow_private_upstreams,
                default_plan: args.owners.default_plan.clone(),
                gateway_url: args.owners.gateway_url.clone(),
                console_origin: args.owners.console_origin.clone(),
            };
            let options = sg_app::ServerOptions {
                limits: args.listener.limits(),
                proxy_protocol: false,
            };
            let service =
                AdminService::start(args.listen, options, config, log, views, kms, &metrics)
                    .await?;
            shutdown_signal().await;
            service.stop().await;
        }
        Command::Server(ServerCommand::Projector(args)) => {
            let log =
                sg_app::connect_jetstream(&args.nats.nats_url, args.nats.stream_replicas as usize)
                    .await?;
            let views = sg_app::connect_views(&args.database_url).await?;
            let metrics = sg_app::Metrics::new();
            let service = ProjectorService::start(Some(args.listen), log, views, &metrics).await?;
            shutdown_signal().await;
            service.stop().await;
        }
        Command::Server(ServerCommand::Sentinel(args)) => {
            let log =
                sg_app::connect_jetstream(&args.nats.nats_url, args.nats.stream_replicas as usize)
                    .await?;
            let node_id = args
                .node_id
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "sentinel".into());
            let metrics = sg_app::Metrics::new();
            let kms = match (args.kms.kms, &args.kms.master_key_file) {
                (KmsArg::Local, None) => None,
                _ => Some(args.kms.build(sg_app::KmsUse::Open, &metrics).await?),
            };
            let notify = sg_app::notify_config(
                &node_id,
                args.alerts.smtp_url.as_deref(),
                args.alerts.alert_from.as_deref(),
                args.allow_private_upstreams,
                kms,
            )?;
            let config = SentinelConfig {
                node_id,
                ..SentinelConfig::default()
            };
            let service = SentinelService::start(
                Some(args.listen),
                log,
                None,
                config,
                Some(notify),
                &metrics,
            )
            .await?;
            shutdown_signal().await;
            service.stop().await;
        }
    }
    // What is still queued leaves before the process does.
    traces.shutdown_async().await;
    Ok(())
}
