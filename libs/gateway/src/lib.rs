//! The data plane: an OpenAI-compatible HTTP surface that authenticates proxy keys from
//! memory, picks the key's connection, injects the provider credential and forwards.
//!
//! **Architecture invariant:** the request path touches no database, no KMS round trip
//! for the local master key, and no log round trip: keys come from the in-memory
//! [`KeyCache`] folded from the control stream; usage is queued and published in the
//! background ([`usage`]).
#![forbid(unsafe_code)]

mod keys;
mod proxy;
pub mod tap;
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

pub use keys::KeyCache;
pub use usage::UsageSink;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's name, recorded in usage events.
    pub node_id: String,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Let connections reach private and loopback upstreams (development only).
    pub allow_private_upstreams: bool,
    pub upstream_connect_timeout: Duration,
    /// Longest silence from the provider while reading its answer.
    pub upstream_read_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            node_id: "gateway".into(),
            max_body_bytes: 32 * 1024 * 1024,
            allow_private_upstreams: false,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_read_timeout: Duration::from_secs(600),
        }
    }
}

/// A running gateway's shared parts.
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) keys: KeyCache,
    pub(crate) replica: Replica,
    pub(crate) kms: Arc<dyn Kms>,
    pub(crate) http: reqwest::Client,
    pub(crate) mock: Router,
    pub(crate) usage: UsageSink,
}

/// What [`Gateway::start`] spawned.
pub struct GatewayTasks {
    pub replica: tokio::task::JoinHandle<()>,
    pub publisher: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts following the control stream and the usage publisher.
    pub fn start(
        config: GatewayConfig,
        log: Arc<dyn EventLog>,
        kms: Arc<dyn Kms>,
    ) -> Result<(Arc<Gateway>, GatewayTasks), reqwest::Error> {
        let keys = KeyCache::new();
        let (replica, replica_task) = Replica::spawn(log.clone(), Some(keys.hook()));
        let (usage, publisher) = usage::spawn_publisher(log);
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .read_timeout(config.upstream_read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if !config.allow_private_upstreams {
            http = http.dns_resolver(Arc::new(sg_netguard::GuardedResolver));
        }
        let gateway = Gateway {
            mock: sg_mock_provider::router(sg_mock_provider::MockConfig::default()),
            http: http.build()?,
            config,
            keys,
            replica,
            kms,
            usage,
        };
        Ok((
            Arc::new(gateway),
            GatewayTasks {
                replica: replica_task,
                publisher,
            },
        ))
    }

    /// The usage sink (to flush it on shutdown).
    pub fn usage(&self) -> &UsageSink {
        &self.usage
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The HTTP surface: `/v1/*` plus `/healthz` and `/readyz`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/v1/models", get(proxy::list_models))
            .route("/v1/{*rest}", any(proxy::proxy))
            .fallback(proxy::not_found)
            .with_state(self.clone())
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    let ready = gw.replica.is_ready();
    let body = axum::Json(serde_json::json!({
        "ready": ready,
        "control_seq": gw.replica.applied_seq(),
        "usage_pending": gw.usage.pending(),
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
