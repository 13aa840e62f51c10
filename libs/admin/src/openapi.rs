//! The OpenAPI document, generated from the handlers' annotations and the API types.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::Server;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::commands::{connections, keys, locks, models, operator, projects, tenants};
use crate::{abuse, alerts, catalog, console, owners, reports, spend};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SecureGate admin API",
        description = "Manage tenants, projects, provider connections and proxy keys, and read usage, spend and request history. \
Every endpoint but this document needs a token as `Authorization: Bearer …`: the operator token (everything, \
including creating tenants and changing plans), or a tenant's admin API token (`SGA_…`, `POST /tenants/{id}/tokens`) \
with a role: `viewer` reads, `admin` also manages connections, keys, locks, limits and the model registry, `owner` also \
manages projects and tokens. A token sees only its tenant (and only its projects, when limited to some): any other \
object is 404. A role too weak is 403 `role_required`; a feature the tenant's plan lacks is 403 `plan_required`. \
Errors use the OpenAI error shape `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`. \
A 2xx on a command means the event is durably stored in the event log; commands that change state answer with an \
`x-securegate-seq` header, the event's position in the control stream, which the services' `/readyz` report as `control_seq`. \
Key locks (`LockSettingsDoc`) list the 403 codes the gateway answers with when a lock refuses a request. \
The web console (`/console/`) calls this same API with its session cookie instead of the header (the `console` \
operations, served beside the API at `/console/session`, set, read and clear it); a write made with the cookie must \
also carry `X-CSRF-Token` (from the session's answer) and an `Origin` of the admin service's own host (or exactly \
`--console-origin`, when set), else 403 \
`csrf_refused`.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/admin/v1")),
    paths(
        tenants::create_tenant, tenants::list_tenants, tenants::get_tenant,
        projects::create_project, projects::list_projects, projects::get_project,
        connections::create_connection, connections::list_connections, connections::rotate_connection_key,
        keys::create_key, keys::list_keys, keys::get_key, keys::revoke_key,
        reports::project_usage, reports::key_usage, reports::project_spend, reports::key_spend,
        reports::list_requests, operator::rewrap,
        crate::audit::list_events,
        models::list_model_routes, models::set_model_route, models::remove_model_route,
        locks::get_locks, locks::set_locks, locks::bind_key, locks::unbind_key,
        spend::get_key_limits, spend::set_key_limits, spend::get_project_limits, spend::set_project_limits,
        spend::list_prices, spend::set_price, spend::remove_price, catalog::list_providers,
        owners::me, owners::issue_token, owners::list_tokens, owners::revoke_token,
        owners::list_plans, owners::define_plan, owners::set_plan, keys::rotate_key,
        abuse::get_abuse, abuse::set_abuse, abuse::resume_key, alerts::get_alerts, alerts::set_alerts,
        console::sign_in, console::get_session, console::sign_out,
    ),
    components(schemas(
        CreateTenant, CreateProject, CreateConnection, RotateConnectionKey, CreateKey, RevokeKey,
        Tenant, Project, Connection, Key, IssuedKey, UsageReport, UsageGroup, UsageTotals, LatencyPercentiles,
        Spend, RequestPage, RequestRecord, ErrorBody, ErrorDetail,
        crate::audit::AuditEventPage, crate::audit::AuditEvent,
        Rewrap, RewrapReport, RewrapFailure, LockSettingsDoc, KeyLocks, BindKey, UnbindKey, ModelRoute, RemoveModelRoute,
        Limits, BudgetLimit, SetPrice, Price, RemovePrice, ProviderEntry, ProviderSupports,
        RoleDoc, IssueToken, TokenRecord, IssuedToken, RevokeToken, PlanDoc, DefinePlan, SetPlan, Me,
        RotateKey, RotatedKey, KeySuspension, sg_abuse::AbuseSettings, sg_abuse::VelocitySettings,
        sg_abuse::SpreadSettings, sg_abuse::ViolationSettings, sg_abuse::ProbeSettings,
        alerts::AlertChannelsDoc, alerts::WebhookDoc, sg_alerts::ChannelsInput, sg_alerts::WebhookInput,
        console::SignIn, console::Session,
    )),
    modifiers(&OperatorToken, &ConsoleSession),
    security(("operator_token" = [])),
)]
struct ApiDoc;

struct OperatorToken;

impl Modify for OperatorToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "operator_token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The console's session: its cookie as a scheme, and its path served beside the API
/// (at the root), not under `/admin/v1`.
struct ConsoleSession;

impl Modify for ConsoleSession {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "console_session",
                SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                    console::COOKIE,
                    "The console's session cookie (`__Host-sg_session` over TLS), set by \
                     `POST /console/session`; it also authenticates `/admin/v1` requests, \
                     whose writes then need `X-CSRF-Token`",
                ))),
            );
        }
        if let Some(item) = openapi.paths.paths.get_mut("/console/session") {
            item.servers = Some(vec![Server::new("/")]);
        }
    }
}

/// The document as JSON text.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub(crate) async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
