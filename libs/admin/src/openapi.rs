//! The OpenAPI document, generated from the handlers' annotations and the API types.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::{catalog, commands, reports, spend};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SecureGate admin API",
        description = "Manage tenants, projects, provider connections and proxy keys, and read usage, spend and request history. \
Every endpoint but this document needs the operator token as `Authorization: Bearer …`. \
Errors use the OpenAI error shape `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`. \
A 2xx on a command means the event is durably stored in the event log; commands that change state answer with an \
`x-securegate-seq` header, the event's position in the control stream, which the services' `/readyz` report as `control_seq`. \
Key locks (`LockSettingsDoc`) list the 403 codes the gateway answers with when a lock refuses a request.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/admin/v1")),
    paths(
        commands::create_tenant, commands::get_tenant,
        commands::create_project, commands::list_projects, commands::get_project,
        commands::create_connection, commands::list_connections, commands::rotate_connection_key,
        commands::create_key, commands::list_keys, commands::get_key, commands::revoke_key,
        reports::project_usage, reports::key_usage, reports::project_spend, reports::key_spend,
        reports::list_requests, commands::rewrap,
        commands::list_model_routes, commands::set_model_route, commands::remove_model_route,
        commands::get_locks, commands::set_locks, commands::bind_key, commands::unbind_key,
        spend::get_key_limits, spend::set_key_limits, spend::get_project_limits, spend::set_project_limits,
        spend::list_prices, spend::set_price, spend::remove_price, catalog::list_providers,
    ),
    components(schemas(
        CreateTenant, CreateProject, CreateConnection, RotateConnectionKey, CreateKey, RevokeKey,
        Tenant, Project, Connection, Key, IssuedKey, UsageReport, UsageGroup, UsageTotals, LatencyPercentiles,
        Spend, RequestPage, RequestRecord, ErrorBody, ErrorDetail,
        Rewrap, RewrapReport, RewrapFailure, LockSettingsDoc, KeyLocks, BindKey, UnbindKey, ModelRoute, RemoveModelRoute,
        Limits, BudgetLimit, SetPrice, Price, RemovePrice, ProviderEntry, ProviderSupports,
    )),
    modifiers(&OperatorToken),
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

/// The document as JSON text.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub(crate) async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
