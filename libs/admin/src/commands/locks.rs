//! Key locks and bindings.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{Event, KeyBoundV2, KeyId, KeyLocksSetV2, KeyUnboundV2};

use super::{ApiResult, commit_to_key, known_key, with_seq};
use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};

fn key_locks(admin: &Admin, key: &KeyId) -> ApiResult<KeyLocks> {
    let state = admin.replica.state();
    let k = state
        .key(key)
        .ok_or_else(|| ApiError::not_found("unknown_key", format!("no key with id {key}")))?;
    Ok(KeyLocks::of(k))
}

#[utoipa::path(get, path = "/keys/{id}/locks", tag = "locks", params(("id" = String, Path)),
    responses((status = 200, description = "The key's locks and what it is bound to", body = KeyLocks),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_locks(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyLocks>> {
    let key = known_key(&admin, &caller, &id, Need::Read)?;
    Ok(Json(key_locks(&admin, &key)?))
}

#[utoipa::path(put, path = "/keys/{id}/locks", tag = "locks", request_body = LockSettingsDoc, params(("id" = String, Path)),
    responses((status = 200, description = "Locks replaced; every gateway enforces them within about a second", body = KeyLocks),
        (status = 400, description = "Invalid locks", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_locks(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(mut locks): ApiJson<sg_policy::LockSettings>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    if let Some(models) = locks.models.take() {
        locks.models = Some(crate::validate::model_list("models", models)?);
    }
    let seq = commit_to_key(&admin, &caller, &key_id, |state, key| {
        crate::owners::check_locks(state, &key.tenant_id, &locks, Some(&key.locks))?;
        Ok(Event::KeyLocksSet(KeyLocksSetV2 {
            key_id: key_id.clone(),
            project_id: key.project_id.clone(),
            locks: (&locks).into(),
        }))
    })
    .await?;
    Ok(with_seq(seq, key_locks(&admin, &key_id)?))
}

#[utoipa::path(post, path = "/keys/{id}/bind", tag = "locks", request_body = BindKey, params(("id" = String, Path)),
    responses((status = 200, description = "Bound (effective with the auto-bind IP or device lock)", body = KeyLocks),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn bind_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BindKey>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    let ip = body
        .ip
        .as_deref()
        .map(|ip| ip.trim().parse::<std::net::IpAddr>())
        .transpose()
        .map_err(|_| {
            ApiError::bad_request("invalid_ip", "`ip` must be an IPv4 or IPv6 address")
                .with_param("ip")
        })?;
    let device = body.device.map(|d| d.trim().to_owned());
    if device
        .as_deref()
        .is_some_and(|d| d.is_empty() || d.len() > sg_policy::lock::MAX_DEVICE_FINGERPRINT_LEN)
    {
        return Err(
            ApiError::bad_request("invalid_device", "`device` must be 1 to 256 bytes")
                .with_param("device"),
        );
    }
    if ip.is_none() && device.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_bind",
            "give `ip`, `device` or both",
        ));
    }
    let id2 = key_id.clone();
    let seq = commit_to_key(&admin, &caller, &key_id, move |_, key| {
        Ok(Event::KeyBound(KeyBoundV2 {
            key_id: id2,
            project_id: key.project_id.clone(),
            ip,
            device,
            place: None,
            request_id: None,
        }))
    })
    .await?;
    Ok(with_seq(seq, key_locks(&admin, &key_id)?))
}

#[utoipa::path(post, path = "/keys/{id}/unbind", tag = "locks", request_body = UnbindKey, params(("id" = String, Path)),
    responses((status = 200, description = "Unbound (address, device and place, unless a field says false); with auto-bind locks the next request binds again", body = KeyLocks),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn unbind_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UnbindKey>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    let id2 = key_id.clone();
    let seq = commit_to_key(&admin, &caller, &key_id, move |_, key| {
        Ok(Event::KeyUnbound(KeyUnboundV2 {
            key_id: id2,
            project_id: key.project_id.clone(),
            ip: body.ip,
            device: body.device,
            place: body.place,
        }))
    })
    .await?;
    Ok(with_seq(seq, key_locks(&admin, &key_id)?))
}
