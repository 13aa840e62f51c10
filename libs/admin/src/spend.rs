//! Spend control: limits of keys and projects, and the price table.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{
    Envelope, Event, KeyLimitsSetV1, PriceRemovedV1, PriceSetV1, ProjectLimitsSetV1, TenantId,
};

use crate::Admin;
use crate::api::{ErrorBody, Limits, List, Price, RemovePrice, SetPrice};
use crate::authz::{Caller, Need};
use crate::commands::{ApiResult, commit, commit_to_key, known_key, known_project, with_seq};

// ---- limits -----------------------------------------------------------------------------

#[utoipa::path(get, path = "/keys/{id}/limits", tag = "limits", params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The key's own limits (its project's limits apply as well)", body = Limits),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_key_limits(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Limits>> {
    let key = known_key(&admin, &caller, &id, Need::Read)?;
    let state = admin.replica.state();
    let limits = state.key(&key).map(|k| k.limits).unwrap_or_default();
    Ok(Json(limits.into()))
}

#[utoipa::path(put, path = "/keys/{id}/limits", tag = "limits", request_body = Limits, params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "Limits replaced; every gateway node applies them as fast as a revocation", body = Limits),
        (status = 400, description = "A limit out of range; `param` names it", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_key_limits(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Limits>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    let limits = crate::validate::limits(&body)?;
    let seq = commit_to_key(&admin, &caller, &key_id, |state, key| {
        crate::owners::check_key_limits(state, &key.tenant_id, &limits)?;
        Ok(Event::KeyLimitsSet(KeyLimitsSetV1 {
            key_id: key_id.clone(),
            project_id: key.project_id.clone(),
            limits: limits.into(),
        }))
    })
    .await?;
    Ok(with_seq(seq, Limits::from(limits)))
}

#[utoipa::path(get, path = "/projects/{id}/limits", tag = "limits", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "The project's limits, shared by all its keys", body = Limits),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_project_limits(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Limits>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    let state = admin.replica.state();
    let limits = state
        .project(&project)
        .map(|p| p.limits)
        .unwrap_or_default();
    Ok(Json(limits.into()))
}

#[utoipa::path(put, path = "/projects/{id}/limits", tag = "limits", request_body = Limits, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Limits replaced; every gateway node applies them as fast as a revocation", body = Limits),
        (status = 400, description = "A limit out of range; `param` names it", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_project_limits(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Limits>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    let limits = crate::validate::limits(&body)?;
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::ProjectLimitsSet(ProjectLimitsSetV1 {
            project_id: project,
            limits: limits.into(),
        }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, Limits::from(limits)))
}

// ---- prices -----------------------------------------------------------------------------

fn price_table(admin: &Admin) -> List<Price> {
    let state = admin.replica.state();
    let overrides = state.price_overrides();
    let mut data: Vec<Price> = overrides
        .iter()
        .map(|(model, p)| Price::of(model, *p, "operator"))
        .collect();
    data.extend(
        sg_spend::price::DEFAULT_PRICES
            .iter()
            .filter(|(model, _)| !overrides.contains_key(*model))
            .map(|(model, p)| Price::of(model, *p, "default")),
    );
    data.sort_by(|a, b| a.model.cmp(&b.model));
    List { data }
}

#[utoipa::path(get, path = "/prices", tag = "prices",
    responses((status = 200, description = "Every priced model: the operator's prices and the built-in ones. A model not listed is accounted at zero cost (its usage is flagged `priced: false`), never refused.", body = List<Price>),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody)))]
pub(crate) async fn list_prices(State(admin): State<Arc<Admin>>) -> Json<List<Price>> {
    Json(price_table(&admin))
}

#[utoipa::path(put, path = "/prices", tag = "prices", request_body = SetPrice,
    responses((status = 200, description = "Price set; requests that end from now on are costed with it", body = List<Price>),
        (status = 400, description = "Invalid model name or price", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "Only the operator token can do this (`operator_required`)", body = ErrorBody),
        (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_price(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<SetPrice>,
) -> ApiResult<Response> {
    let model = crate::validate::model_name("model", &body.model)?;
    let price = sg_spend::Price {
        input: crate::validate::usd_per_mtok("input_usd_per_mtok", &body.input_usd_per_mtok)?,
        output: crate::validate::usd_per_mtok("output_usd_per_mtok", &body.output_usd_per_mtok)?,
        cached_input: body
            .cached_input_usd_per_mtok
            .as_ref()
            .map(|n| crate::validate::usd_per_mtok("cached_input_usd_per_mtok", n))
            .transpose()?,
    };
    let env = Envelope::new(
        TenantId::operator(),
        caller.actor(),
        Event::PriceSet(PriceSetV1 {
            model,
            price: price.into(),
        }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, price_table(&admin)))
}

#[utoipa::path(post, path = "/prices/remove", tag = "prices", request_body = RemovePrice,
    responses((status = 200, description = "The operator's price removed; the built-in price, if any, applies again", body = List<Price>),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "Only the operator token can do this (`operator_required`)", body = ErrorBody), (status = 404, description = "No operator price for this model", body = ErrorBody),
        (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn remove_price(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<RemovePrice>,
) -> ApiResult<Response> {
    let (env, expected) = {
        let state = admin.replica.state();
        if !state.price_overrides().contains_key(&body.model) {
            return Err(ApiError::not_found(
                "unknown_price",
                format!("no operator price for model {:?}", body.model),
            ));
        }
        let env = Envelope::new(
            TenantId::operator(),
            caller.actor(),
            Event::PriceRemoved(PriceRemovedV1 { model: body.model }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, price_table(&admin)))
}
