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

mod abuse;
mod alerts;
pub mod api;
mod audit;
pub mod authz;
mod catalog;
mod commands;
pub mod console;
mod openapi;
mod owners;
mod reports;
mod spend;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post, put};
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
    /// The plan of tenants created without naming one.
    pub default_plan: String,
    /// Where clients reach the gateway (`GET /me` and the CLI's `env` show it).
    pub gateway_url: Option<String>,
    /// The console's public origin, when the operator names it (`--console-origin`).
    pub console_origin: Option<console::ConsoleOrigin>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("allow_private_upstreams", &self.allow_private_upstreams)
            .field("default_plan", &self.default_plan)
            .field("gateway_url", &self.gateway_url)
            .field("console_origin", &self.console_origin)
            .finish_non_exhaustive()
    }
}

/// The admin service's shared parts.
pub struct Admin {
    token_digest: [u8; 32],
    pub(crate) allow_private_upstreams: bool,
    pub(crate) default_plan: String,
    pub(crate) gateway_url: Option<String>,
    pub(crate) console_origin: Option<console::ConsoleOrigin>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) replica: Replica,
    pub(crate) views: Views,
    pub(crate) kms: Arc<dyn Kms>,
}

impl Admin {
    /// Whether only the `__Host-` session cookie counts: the console's configured origin
    /// is `https`.
    pub(crate) fn secure_cookie_only(&self) -> bool {
        self.console_origin.as_ref().is_some_and(|o| o.secure)
    }

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
            default_plan: config.default_plan,
            gateway_url: config.gateway_url,
            console_origin: config.console_origin,
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

    /// `/admin/v1/…`, the web console (`/console/…`, its session), `/healthz`,
    /// `/readyz`.
    pub fn router(self: &Arc<Self>) -> Router {
        use commands::{connections, keys, locks, models, operator, projects, tenants};
        let api = Router::new()
            .route(
                "/tenants",
                get(tenants::list_tenants).merge(operator_only(post(tenants::create_tenant))),
            )
            .route("/tenants/{id}", get(tenants::get_tenant))
            .route(
                "/tenants/{id}/projects",
                post(projects::create_project).get(projects::list_projects),
            )
            .route("/projects/{id}", get(projects::get_project))
            .route(
                "/projects/{id}/connections",
                post(connections::create_connection).get(connections::list_connections),
            )
            .route(
                "/projects/{id}/keys",
                post(keys::create_key).get(keys::list_keys),
            )
            .route("/projects/{id}/usage", get(reports::project_usage))
            .route("/projects/{id}/spend", get(reports::project_spend))
            .route(
                "/projects/{id}/models",
                get(models::list_model_routes).put(models::set_model_route),
            )
            .route(
                "/projects/{id}/models/remove",
                post(models::remove_model_route),
            )
            .route("/projects/{id}/requests", get(reports::list_requests))
            .route("/projects/{id}/events", get(audit::list_events))
            .route(
                "/connections/{id}/rotate",
                post(connections::rotate_connection_key),
            )
            .route("/rewrap", operator_only(post(operator::rewrap)))
            .route("/keys/{id}", get(keys::get_key))
            .route("/keys/{id}/revoke", post(keys::revoke_key))
            .route(
                "/keys/{id}/locks",
                get(locks::get_locks).put(locks::set_locks),
            )
            .route("/keys/{id}/bind", post(locks::bind_key))
            .route("/keys/{id}/unbind", post(locks::unbind_key))
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
            .route(
                "/prices",
                get(spend::list_prices).merge(operator_only(put(spend::set_price))),
            )
            .route("/prices/remove", operator_only(post(spend::remove_price)))
            .route("/providers", get(catalog::list_providers))
            .route("/me", get(owners::me))
            .route(
                "/tenants/{id}/tokens",
                post(owners::issue_token).get(owners::list_tokens),
            )
            .route("/tokens/{id}/revoke", post(owners::revoke_token))
            .route("/plans", get(owners::list_plans))
            .route("/plans/{name}", operator_only(put(owners::define_plan)))
            .route("/tenants/{id}/plan", operator_only(put(owners::set_plan)))
            .route("/keys/{id}/rotate", post(keys::rotate_key))
            .route("/keys/{id}/resume", post(abuse::resume_key))
            .route(
                "/projects/{id}/abuse",
                get(abuse::get_abuse).put(abuse::set_abuse),
            )
            .route(
                "/projects/{id}/alerts",
                get(alerts::get_alerts).put(alerts::set_alerts),
            )
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                authz::authorize_route,
            ))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                authz::authenticate,
            ))
            .route("/openapi.json", get(openapi::serve));
        Router::new()
            .nest("/admin/v1", api)
            .route(
                "/console/session",
                post(console::sign_in)
                    .get(console::get_session)
                    .delete(console::sign_out),
            )
            .merge(sg_console::router())
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

/// A route only the operator may call (installation-wide settings).
fn operator_only(route: MethodRouter<Arc<Admin>>) -> MethodRouter<Arc<Admin>> {
    route.route_layer(middleware::from_fn(authz::require_operator))
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
