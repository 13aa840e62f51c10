//! Tenants: the top-level aggregate.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{Envelope, Event, TenantCreatedV2, TenantId};

use super::{ApiResult, commit, created, idempotency};
use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};

#[utoipa::path(post, path = "/tenants", tag = "tenants", request_body = CreateTenant,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Created", body = Tenant), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "Only the operator token can do this (`operator_required`)", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_tenant(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    let name = crate::validate::name("name", &body.name)?;
    let plan = body.plan.unwrap_or_else(|| admin.default_plan.clone());
    crate::owners::known_plan(&admin, &plan)?;
    let idem = idempotency(&headers, "create_tenant")?;
    let tenant = TenantId::generate();
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::TenantCreated(TenantCreatedV2 {
            name,
            plan: Some(plan),
        }),
    );
    let c = commit(&admin, env, 0, idem).await?;
    let Event::TenantCreated(d) = &c.envelope.event else {
        return Err(ApiError::internal(
            "idempotency key reused for another command",
        ));
    };
    let body = Tenant {
        id: c.envelope.tenant_id.to_string(),
        name: d.name.clone(),
        plan: d.plan.clone(),
        created_at: rfc3339(c.envelope.time),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = Tenant), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_tenant(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Tenant>> {
    let state = admin.replica.state();
    let id = caller.tenant(&state, &id, Need::Read)?;
    state
        .tenant(&id)
        .map(|t| Json(Tenant::from(t)))
        .ok_or_else(|| ApiError::not_found("unknown_tenant", format!("no tenant with id {id}")))
}

#[utoipa::path(get, path = "/tenants", tag = "tenants",
    responses((status = 200, description = "Every tenant for the operator; a tenant's token sees only its own", body = List<Tenant>), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody)))]
pub(crate) async fn list_tenants(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
) -> Json<List<Tenant>> {
    let state = admin.replica.state();
    let mut data: Vec<Tenant> = state
        .tenants()
        .filter(|t| caller.sees_tenant(&t.id))
        .map(Tenant::from)
        .collect();
    data.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Json(List { data })
}
