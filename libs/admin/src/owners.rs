//! The owner side: who is calling (`/me`), a tenant's admin API tokens, and plans.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{
    Envelope, Event, PlanData, PlanDefinedV1, ProjectId, TenantId, TenantPlanSetV1, TokenId,
    TokenIssuedV1, TokenRevokedV1,
};
use time::OffsetDateTime;

use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};
use crate::commands::{ApiResult, commit, created, with_seq};

/// A plan's refusal as the API answers it: 403 `plan_required`, naming a plan that has
/// what was asked for.
pub(crate) fn plan_required(r: sg_plans::Refusal) -> ApiError {
    ApiError::forbidden("plan_required", r.to_string()).with_param(r.param)
}

/// The plan `name`, if the catalog has it.
pub(crate) fn known_plan(admin: &Admin, name: &str) -> ApiResult<sg_plans::Plan> {
    admin
        .replica
        .state()
        .plans()
        .get(name)
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_plan",
                format!("no plan named {name:?}; GET /plans lists them"),
            )
            .with_param("plan")
        })
}

/// Whether the tenant's plan allows these lock settings (`before`: the key's current
/// ones, whose features stay allowed after a downgrade).
pub(crate) fn check_locks(
    state: &sg_state::State,
    tenant: &TenantId,
    locks: &sg_policy::LockSettings,
    before: Option<&sg_policy::LockSettings>,
) -> ApiResult<()> {
    let Some(plan) = state.plan_of(tenant) else {
        return Ok(());
    };
    let used = sg_plans::features_used(locks);
    let before = before.map(sg_plans::features_used).unwrap_or_default();
    state
        .plans()
        .check_features(&plan, &used, &before)
        .map_err(plan_required)
}

/// Whether the tenant's plan allows a key to set these limits for itself.
pub(crate) fn check_key_limits(
    state: &sg_state::State,
    tenant: &TenantId,
    limits: &sg_spend::Limits,
) -> ApiResult<()> {
    let Some(plan) = state.plan_of(tenant) else {
        return Ok(());
    };
    state
        .plans()
        .check_key_limits(&plan, limits)
        .map_err(plan_required)
}

/// Whether the tenant's plan allows one more connection.
pub(crate) fn check_connection(state: &sg_state::State, tenant: &TenantId) -> ApiResult<()> {
    let Some(plan) = state.plan_of(tenant) else {
        return Ok(());
    };
    let existing = state.connections_of_tenant(tenant).count();
    state
        .plans()
        .check_connection(&plan, existing)
        .map_err(plan_required)
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[utoipa::path(get, path = "/me", tag = "owners",
    responses((status = 200, body = Me), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody)))]
pub(crate) async fn me(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Me>> {
    Ok(Json(me_of(&admin, &caller)))
}

/// What `GET /me` answers for `caller` (the console's session answers it too).
pub(crate) fn me_of(admin: &Admin, caller: &Caller) -> Me {
    let state = admin.replica.state();
    match caller {
        Caller::Operator => Me {
            caller: "operator".into(),
            role: "operator".into(),
            token: None,
            tenant: None,
            plan: None,
            gateway_url: admin.gateway_url.clone(),
        },
        Caller::Token(t) => Me {
            caller: "token".into(),
            role: t.role.as_str().into(),
            token: state.token(&t.id).map(|r| TokenRecord::of(r, now())),
            tenant: state.tenant(&t.tenant).map(Tenant::from),
            plan: state.plan_of(&t.tenant).as_ref().map(PlanDoc::from),
            gateway_url: admin.gateway_url.clone(),
        },
    }
}

#[utoipa::path(post, path = "/tenants/{id}/tokens", tag = "owners", request_body = IssueToken,
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 201, description = "Issued; the token is shown only in this response", body = IssuedToken), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "Needs an owner of the whole tenant", body = ErrorBody), (status = 404, description = "No such tenant", body = ErrorBody), (status = 503, description = "Event log unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn issue_token(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<IssueToken>,
) -> ApiResult<Response> {
    let tenant = caller.tenant(&admin.replica.state(), &id, Need::Own)?;
    let name = crate::validate::name("name", &body.name)?;
    let project_ids = match &body.project_ids {
        None => None,
        Some(ids) => {
            let state = admin.replica.state();
            let mut out = Vec::new();
            for raw in ids {
                let p: ProjectId = raw.parse().map_err(|_| {
                    ApiError::bad_request("unknown_project", format!("no project {raw:?}"))
                        .with_param("project_ids")
                })?;
                match state.project(&p) {
                    Some(project) if project.tenant_id == tenant => {}
                    _ => {
                        return Err(ApiError::bad_request(
                            "unknown_project",
                            format!("the tenant has no project {raw:?}"),
                        )
                        .with_param("project_ids"));
                    }
                }
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            if out.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_project_ids",
                    "project_ids, when given, names at least one project",
                )
                .with_param("project_ids"));
            }
            Some(out)
        }
    };
    let expires_at = match &body.expires_at {
        None => None,
        Some(raw) => {
            let at = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    ApiError::bad_request("invalid_expires_at", "expires_at must be RFC 3339")
                        .with_param("expires_at")
                })?;
            if at.unix_timestamp() <= now() {
                return Err(ApiError::bad_request(
                    "invalid_expires_at",
                    "expires_at must be in the future",
                )
                .with_param("expires_at"));
            }
            Some(at.unix_timestamp())
        }
    };
    let token = sg_proxy_key::AdminToken::generate();
    let token_id = TokenId::generate();
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::TokenIssued(TokenIssuedV1 {
            token_id: token_id.clone(),
            name,
            role: body.role.into(),
            project_ids,
            token_hash: token.hash_hex(),
            hint: token.hint(),
            expires_at,
        }),
    );
    let c = commit(&admin, env, 0, None).await?;
    let state = admin.replica.state();
    let record = state
        .token(&token_id)
        .map(|t| TokenRecord::of(t, now()))
        .ok_or_else(|| ApiError::internal("the issued token is not in the state yet"))?;
    Ok(created(
        &c,
        IssuedToken {
            record,
            token: token.expose().to_owned(),
        },
    ))
}

#[utoipa::path(get, path = "/tenants/{id}/tokens", tag = "owners",
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = List<TokenRecord>), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "Needs an owner of the whole tenant", body = ErrorBody), (status = 404, description = "No such tenant", body = ErrorBody)))]
pub(crate) async fn list_tokens(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<TokenRecord>>> {
    let state = admin.replica.state();
    let tenant = caller.tenant(&state, &id, Need::Own)?;
    let now = now();
    let mut data: Vec<TokenRecord> = state
        .tokens_of(&tenant)
        .map(|t| TokenRecord::of(t, now))
        .collect();
    data.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(Json(List { data }))
}

#[utoipa::path(post, path = "/tokens/{id}/revoke", tag = "owners",
    request_body(content = Option<RevokeToken>, description = "Optional reason"),
    params(("id" = String, Path)),
    responses((status = 200, description = "Revoked (or already revoked): it stops working on every admin node as soon as each has folded the event", body = TokenRecord), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "Needs an owner of the whole tenant (any token may revoke itself)", body = ErrorBody), (status = 404, description = "No such token", body = ErrorBody), (status = 503, description = "Event log unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn revoke_token(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let (token_id, tenant) = caller.token(&admin.replica.state(), &id)?;
    let reason = crate::commands::optional_json::<RevokeToken>(&body)?
        .reason
        .map(|r| r.chars().take(512).collect::<String>());
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::TokenRevoked(TokenRevokedV1 {
            token_id: token_id.clone(),
            reason,
        }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    let state = admin.replica.state();
    let record = state
        .token(&token_id)
        .map(|t| TokenRecord::of(t, now()))
        .ok_or_else(|| ApiError::internal("the token is not in the state"))?;
    Ok(with_seq(c.seq, record))
}

#[utoipa::path(get, path = "/plans", tag = "plans",
    responses((status = 200, body = List<PlanDoc>), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub(crate) async fn list_plans(State(admin): State<Arc<Admin>>) -> Json<List<PlanDoc>> {
    let catalog = admin.replica.state().plans();
    Json(List {
        data: catalog.plans().iter().map(PlanDoc::from).collect(),
    })
}

#[utoipa::path(put, path = "/plans/{name}", tag = "plans", request_body = DefinePlan,
    params(("name" = String, Path, description = "1–32 characters of a-z, 0-9, `_` and `-`, starting with a letter")),
    responses((status = 200, description = "Defined; tenants on it get its terms as each node folds the event", body = PlanDoc), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "Only the operator defines plans", body = ErrorBody), (status = 503, description = "Event log unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn define_plan(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<DefinePlan>,
) -> ApiResult<Response> {
    if !sg_plans::is_valid_name(&name) {
        return Err(ApiError::bad_request(
            "invalid_plan_name",
            "a plan's name is 1–32 characters of a-z, 0-9, `_` and `-`, starting with a letter",
        ));
    }
    let mut features = BTreeSet::new();
    for f in &body.features {
        let feature: sg_plans::Feature = f.parse().map_err(|e: String| {
            ApiError::bad_request("invalid_feature", e).with_param("features")
        })?;
        features.insert(feature);
    }
    for (field, value, max) in [
        ("key_rpm", body.key_rpm, sg_spend::limits::MAX_RPM),
        ("key_rpd", body.key_rpd, sg_spend::limits::MAX_RPD),
    ] {
        if value.is_some_and(|v| v == 0 || v > max) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("{field} must be between 1 and {max}"),
            )
            .with_param(field));
        }
    }
    let terms = PlanData {
        max_connections: body.max_connections,
        features: features.iter().map(|f| f.as_str().to_owned()).collect(),
        key_rpm: body.key_rpm,
        key_rpd: body.key_rpd,
    };
    let env = Envelope::new(
        TenantId::operator(),
        caller.actor(),
        Event::PlanDefined(PlanDefinedV1 {
            name: name.clone(),
            terms,
        }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    let plan = known_plan(&admin, &name)?;
    Ok(with_seq(c.seq, PlanDoc::from(&plan)))
}

#[utoipa::path(put, path = "/tenants/{id}/plan", tag = "plans", request_body = SetPlan,
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant is on the plan", body = Tenant), (status = 400, description = "Unknown plan", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "Only the operator changes plans", body = ErrorBody), (status = 404, description = "No such tenant", body = ErrorBody), (status = 503, description = "Event log unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn set_plan(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetPlan>,
) -> ApiResult<Response> {
    let tenant = caller.tenant(&admin.replica.state(), &id, Need::Read)?;
    known_plan(&admin, &body.plan)?;
    let env = Envelope::new(
        tenant.clone(),
        caller.actor(),
        Event::TenantPlanSet(TenantPlanSetV1 { plan: body.plan }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    let state = admin.replica.state();
    let t = state
        .tenant(&tenant)
        .map(Tenant::from)
        .ok_or_else(|| ApiError::internal("the tenant is not in the state"))?;
    Ok(with_seq(c.seq, t))
}
