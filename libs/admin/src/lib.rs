//! The control plane's HTTP API.
//!
//! Commands are validated against the control [`Replica`] (the same fold the gateways
//! run), sealed where they carry a provider key, and appended to the control stream
//! with optimistic concurrency per aggregate (expected last subject sequence) and the
//! `Idempotency-Key` header as the log's message id. A 2xx means the log acknowledged
//! the event. Queries read the projector's views.
//!
//! **Architecture invariant:** a provider key is sealed before anything else sees it;
//! a proxy key is shown in exactly one response and stored only as its hash.
#![forbid(unsafe_code)]

pub mod api;
mod catalog;
mod commands;
mod openapi;
mod reports;
mod spend;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sg_api_error::ApiError;
use sg_crypto::{Kms, SecretString};
use sg_eventlog::EventLog;
use sg_replica::Replica;
use sg_views::Views;
use sha2::{Digest, Sha256};

pub use openapi::openapi_json;

/// Admin API settings.
pub struct AdminConfig {
    /// The operator token (`Authorization: Bearer …`).
    pub operator_token: SecretString,
    /// Allow connections to private and loopback upstreams (development only).
    pub allow_private_upstreams: bool,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("allow_private_upstreams", &self.allow_private_upstreams)
            .finish_non_exhaustive()
    }
}

/// The admin service's shared parts.
pub struct Admin {
    token_digest: [u8; 32],
    pub(crate) allow_private_upstreams: bool,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) replica: Replica,
    pub(crate) views: Views,
    pub(crate) kms: Arc<dyn Kms>,
}

impl Admin {
    /// Starts the control replica; returns the service and the replica's task.
    pub fn start(
        config: AdminConfig,
        log: Arc<dyn EventLog>,
        views: Views,
        kms: Arc<dyn Kms>,
    ) -> (Arc<Admin>, tokio::task::JoinHandle<()>) {
        let (replica, task) = Replica::spawn(log.clone(), None);
        (Self::with_replica(config, log, views, kms, replica), task)
    }

    /// Like [`Admin::start`], on a replica the caller already runs (in one process, the
    /// gateway's: a command then returns only once the gateway has folded it too).
    pub fn with_replica(
        config: AdminConfig,
        log: Arc<dyn EventLog>,
        views: Views,
        kms: Arc<dyn Kms>,
        replica: Replica,
    ) -> Arc<Admin> {
        let admin = Admin {
            token_digest: Sha256::digest(config.operator_token.expose().as_bytes()).into(),
            allow_private_upstreams: config.allow_private_upstreams,
            log,
            replica,
            views,
            kms,
        };
        Arc::new(admin)
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// `/admin/v1/…`, `/healthz`, `/readyz`.
    pub fn router(self: &Arc<Self>) -> Router {
        use commands as c;
        let api = Router::new()
            .route("/tenants", post(c::create_tenant))
            .route("/tenants/{id}", get(c::get_tenant))
            .route(
                "/tenants/{id}/projects",
                post(c::create_project).get(c::list_projects),
            )
            .route("/projects/{id}", get(c::get_project))
            .route(
                "/projects/{id}/connections",
                post(c::create_connection).get(c::list_connections),
            )
            .route("/projects/{id}/keys", post(c::create_key).get(c::list_keys))
            .route("/projects/{id}/usage", get(reports::project_usage))
            .route("/projects/{id}/spend", get(reports::project_spend))
            .route(
                "/projects/{id}/models",
                get(c::list_model_routes).put(c::set_model_route),
            )
            .route("/projects/{id}/models/remove", post(c::remove_model_route))
            .route("/projects/{id}/requests", get(reports::list_requests))
            .route("/connections/{id}/rotate", post(c::rotate_connection_key))
            .route("/rewrap", post(c::rewrap))
            .route("/keys/{id}", get(c::get_key))
            .route("/keys/{id}/revoke", post(c::revoke_key))
            .route("/keys/{id}/locks", get(c::get_locks).put(c::set_locks))
            .route("/keys/{id}/bind", post(c::bind_key))
            .route("/keys/{id}/unbind", post(c::unbind_key))
            .route("/keys/{id}/usage", get(reports::key_usage))
            .route("/keys/{id}/spend", get(reports::key_spend))
            .route(
                "/keys/{id}/limits",
                get(spend::get_key_limits).put(spend::set_key_limits),
            )
            .route(
                "/projects/{id}/limits",
                get(spend::get_project_limits).put(spend::set_project_limits),
            )
            .route("/prices", get(spend::list_prices).put(spend::set_price))
            .route("/prices/remove", post(spend::remove_price))
            .route("/providers", get(catalog::list_providers))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                require_operator,
            ))
            .route("/openapi.json", get(openapi::serve));
        Router::new()
            .nest("/admin/v1", api)
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .fallback(|| async {
                ApiError::not_found(
                    "unknown_path",
                    "no such endpoint; the admin API is served under /admin/v1",
                )
            })
            .with_state(self.clone())
    }
}

async fn require_operator(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => ApiError::unauthorized(
            "missing_token",
            "the admin API needs the operator token as `Authorization: Bearer …`",
        )
        .into_response(),
        // Comparing digests: equal-length, and timing reveals nothing about the token.
        Some(t) if <[u8; 32]>::from(Sha256::digest(t.as_bytes())) == admin.token_digest => {
            next.run(request).await
        }
        Some(_) => ApiError::unauthorized("invalid_token", "the operator token is not valid")
            .into_response(),
    }
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let ready = admin.replica.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({"ready": ready, "control_seq": admin.replica.applied_seq()})),
    )
}
