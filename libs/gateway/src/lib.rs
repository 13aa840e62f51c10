//! The data plane: an OpenAI-compatible HTTP surface that authenticates proxy keys from
//! memory, picks the key's connection, injects the provider credential and forwards.
//!
//! **Architecture invariant:** the request path touches no database, no KMS round trip
//! for the local master key, and no log round trip: keys come from the in-memory
//! [`KeyCache`] folded from the control stream; usage is queued and published in the
//! background ([`usage`]).
#![forbid(unsafe_code)]

mod body;
mod egress;
mod freshness;
mod keys;
mod locks;
pub mod metrics;
mod proxy;
pub mod spend;
pub mod tap;
mod translate;
mod upload;
mod upstream;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use sg_crypto::Kms;
use sg_eventlog::EventLog;
use sg_replica::Replica;

pub use body::BodyTimeouts;
pub use keys::KeyCache;
pub use usage::{SpoolSettings, UsageSink};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build the upstream HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot open the usage spool: {0}")]
    Spool(#[from] sg_spool::SpoolError),
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's name, recorded in usage events.
    pub node_id: String,
    /// Largest request body read whole (413 above): JSON bodies, and the part of a
    /// multipart form up to its `model` field.
    pub max_body_bytes: usize,
    /// Largest multipart upload (audio, images, files), streamed to the provider rather
    /// than held (413 above).
    pub max_upload_bytes: u64,
    /// How slowly a request body may arrive (408 beyond).
    pub body_timeouts: BodyTimeouts,
    /// An HTTP(S) proxy for calls to providers. `None` (the default): providers are
    /// called directly — proxy variables in the environment (`HTTPS_PROXY` …) are
    /// ignored, so provider keys never pass through a proxy nobody configured here.
    pub upstream_proxy: Option<String>,
    /// Let connections reach private and loopback upstreams (development only).
    pub allow_private_upstreams: bool,
    pub upstream_connect_timeout: Duration,
    /// Longest silence from the provider while reading its answer.
    pub upstream_read_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, ingress). Empty: the
    /// TCP peer (or the PROXY protocol header's client) is the client.
    pub trusted_proxies: sg_policy::TrustedProxies,
    /// City/country database for location locks; `None`: locations are unknown, and a
    /// key with a location lock is refused.
    pub geoip: Option<sg_geoip::GeoIp>,
    /// Objects configured on this node rather than through the admin API (a static
    /// configuration file), as the control events that would create them.
    pub static_events: Vec<sg_events::Envelope>,
    /// Where usage events wait, durably, to be published.
    pub spool: SpoolSettings,
    /// How long this node may go without knowing it has every control event before it
    /// reports not ready and refuses the keys that fail closed (503).
    pub max_staleness: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            node_id: "gateway".into(),
            max_body_bytes: 32 * 1024 * 1024,
            max_upload_bytes: 512 * 1024 * 1024,
            body_timeouts: BodyTimeouts::default(),
            upstream_proxy: None,
            allow_private_upstreams: false,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_read_timeout: Duration::from_secs(600),
            trusted_proxies: sg_policy::TrustedProxies::default(),
            geoip: None,
            static_events: Vec::new(),
            spool: SpoolSettings::default(),
            max_staleness: Duration::from_secs(5),
        }
    }
}

/// What a gateway node does with an authorised request.
pub enum Role {
    /// Authenticate, authorise, open the credential and call the provider (one process).
    All { kms: Arc<dyn Kms> },
    /// Authenticate and authorise, then hand the request to an egress node with a signed
    /// attestation. Holds no KMS access: provider keys stay sealed here.
    Edge {
        /// The egress service's base URL, e.g. `http://securegate-egress:8080`.
        egress_url: String,
        signer: Arc<sg_attest::EdgeSigner>,
    },
    /// Serve only attested requests from edge nodes: open the credential, call the
    /// provider. Meant to be reachable only from inside the cluster.
    Egress {
        kms: Arc<dyn Kms>,
        verifier: sg_attest::Verifier,
    },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::All { .. } => "all",
            Role::Edge { .. } => "edge",
            Role::Egress { .. } => "egress",
        }
    }
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A running gateway's shared parts.
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) role: Role,
    pub(crate) keys: KeyCache,
    pub(crate) replica: Replica,
    pub(crate) http: reqwest::Client,
    /// Edge → egress calls: cluster-internal, so private addresses are fine here.
    pub(crate) internal_http: reqwest::Client,
    pub(crate) mock: Router,
    pub(crate) usage: UsageSink,
    /// For cluster-wide decisions on the request path: first-use bindings and replayed
    /// signatures (one conditional append each, only when they happen).
    pub(crate) log: Arc<dyn EventLog>,
    /// Attestation ids already served (egress), kept past their expiry.
    pub(crate) seen_attestations: moka::sync::Cache<String, ()>,
    /// How long ago the node last knew it had every control event.
    pub(crate) freshness: Arc<freshness::Freshness>,
    /// This node's share of every limit and budget.
    pub(crate) quotas: sg_quota::Quotas,
    pub(crate) metrics: metrics::GatewayMetrics,
    /// Connections' credentials, opened (nodes that call providers).
    pub(crate) credentials: upstream::Credentials,
}

/// What [`Gateway::start`] spawned.
pub struct GatewayTasks {
    pub replica: tokio::task::JoinHandle<()>,
    pub publisher: tokio::task::JoinHandle<()>,
    pub freshness: tokio::task::JoinHandle<()>,
    pub quotas: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts following the control stream and the usage publisher.
    pub fn start(
        config: GatewayConfig,
        role: Role,
        log: Arc<dyn EventLog>,
    ) -> Result<(Arc<Gateway>, GatewayTasks), StartError> {
        // Built first: an invalid proxy URL fails the start, not a request.
        let proxy = config
            .upstream_proxy
            .as_deref()
            .map(reqwest::Proxy::all)
            .transpose()?;
        let keys = KeyCache::new();
        let (replica, replica_task) =
            Replica::spawn_seeded(log.clone(), Some(keys.hook()), config.static_events.clone());
        keys.attach(replica.clone());
        let gateway_metrics = metrics::GatewayMetrics::default();
        let (usage, publisher) = usage::spawn_publisher(
            log.clone(),
            &config.spool,
            gateway_metrics.publish_lag.clone(),
        )?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .read_timeout(config.upstream_read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .no_proxy();
        if let Some(proxy) = proxy {
            http = http.proxy(proxy);
        }
        if !config.allow_private_upstreams {
            http = http.dns_resolver(Arc::new(sg_netguard::GuardedResolver));
        }
        let internal_http = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .read_timeout(config.upstream_read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        let ttl =
            Duration::from_secs(sg_attest::DEFAULT_TTL_SECS + 2 * sg_attest::CLOCK_SKEW_SECS + 5);
        let freshness = Arc::new(freshness::Freshness::new(config.max_staleness));
        let freshness_task = tokio::spawn(freshness::watch(
            freshness.clone(),
            log.clone(),
            replica.clone(),
        ));
        let (quotas, quotas_task) = sg_quota::Quotas::start(
            log.clone(),
            sg_quota::QuotaConfig::for_node(&config.node_id),
            sg_quota::system_clock(),
        );
        let gateway = Gateway {
            metrics: gateway_metrics,
            quotas,
            freshness,
            mock: sg_mock_provider::router(sg_mock_provider::MockConfig::default()),
            http: http.build()?,
            internal_http,
            config,
            role,
            keys,
            replica,
            usage,
            log,
            seen_attestations: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(1_000_000)
                .build(),
            credentials: upstream::Credentials::new(),
        };
        Ok((
            Arc::new(gateway),
            GatewayTasks {
                replica: replica_task,
                publisher,
                freshness: freshness_task,
                quotas: quotas_task,
            },
        ))
    }

    /// A client's request body, within this node's size and time limits.
    pub(crate) async fn read_body(
        &self,
        body: axum::body::Body,
        headers: &axum::http::HeaderMap,
    ) -> Result<bytes::Bytes, sg_api_error::ApiError> {
        body::read(
            body,
            headers,
            self.config.max_body_bytes,
            self.config.body_timeouts,
        )
        .await
    }

    /// This node's quota engine (to give back what it holds on shutdown).
    pub fn quotas(&self) -> &sg_quota::Quotas {
        &self.quotas
    }

    /// The usage sink (to flush it on shutdown).
    pub fn usage(&self) -> &UsageSink {
        &self.usage
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Only `/healthz` and `/readyz`, for a separate health listener (probes that cannot
    /// speak the PROXY protocol).
    pub fn health_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// The HTTP surface: `/v1/*` (edge and all) or `/egress/v1/*` (egress), plus
    /// `/healthz` and `/readyz`.
    pub fn router(self: &Arc<Self>) -> Router {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz));
        let router = match self.role {
            Role::Egress { .. } => router.route("/egress/v1/{*rest}", any(egress::serve)),
            Role::All { .. } | Role::Edge { .. } => router.route("/v1/{*rest}", any(proxy::proxy)),
        };
        router.fallback(proxy::not_found).with_state(self.clone())
    }
}

/// Ready once caught up with the control stream and while in touch with it (within
/// the staleness bound), with room in the usage spool.
async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    let stale = gw.freshness.is_stale();
    let spool_full = gw.usage.is_full();
    let ready = gw.replica.is_ready() && !stale && !spool_full;
    let body = axum::Json(serde_json::json!({
        "ready": ready,
        "control_seq": gw.replica.applied_seq(),
        "staleness_ms": u64::try_from(gw.freshness.staleness().as_millis()).unwrap_or(u64::MAX),
        "stale": stale,
        "usage_pending": gw.usage.pending(),
        "usage_spool_full": spool_full,
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
