//! Proxy keys: issued, listed and revoked.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_eventlog::StreamName;
use sg_events::{ConnectionId, Envelope, Event, KeyId, KeyIssuedV4, KeyRevokedV1, KeyRotatedV1};
use sg_proxy_key::ProxyKey;
use sg_state::KeyStatus;

use super::{
    ApiResult, OWN_WRITE_WAIT, commit, created, idempotency, known_key, known_project,
    views_caught_up, views_error,
};
use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};

#[utoipa::path(post, path = "/projects/{id}/keys", tag = "keys", request_body = CreateKey,
    params(("id" = String, Path, description = "Project id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Issued; the only response that shows the key", body = IssuedKey), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "This Idempotency-Key already issued a key, whose secret cannot be shown again", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    let name = crate::validate::name("name", &body.name)?;
    let idem = idempotency(&headers, &format!("create_key {project}"))?;
    let connection_ids: Vec<ConnectionId> = {
        let state = admin.replica.state();
        match body.connection_ids {
            Some(ids) => {
                let mut out = Vec::new();
                for raw in ids {
                    let id = raw
                        .parse::<ConnectionId>()
                        .ok()
                        .filter(|c| state.connection(c).is_some_and(|c| c.project_id == project))
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "unknown_connection",
                                format!("project {project} has no connection {raw:?}"),
                            )
                            .with_param("connection_ids")
                        })?;
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
                out
            }
            None => {
                let mut all: Vec<_> = state
                    .connections_of(&project)
                    .map(|c| (c.created_at, c.id.clone()))
                    .collect();
                all.sort();
                all.into_iter().map(|(_, id)| id).collect()
            }
        }
    };
    if connection_ids.is_empty() {
        return Err(ApiError::bad_request(
            "no_connections",
            "a key needs at least one connection: create one with POST /admin/v1/projects/{id}/connections",
        )
        .with_param("connection_ids"));
    }
    let allowed_models = body
        .allowed_models
        .map(|m| crate::validate::model_list("allowed_models", m))
        .transpose()?;
    let mut locks = body.locks.unwrap_or_default();
    match (&locks.models, allowed_models) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_locks",
                "give the model allow-list once: either `allowed_models` or `locks.models`",
            ));
        }
        (None, models) => locks.models = models,
        (Some(models), None) => {
            locks.models = Some(crate::validate::model_list("locks.models", models.clone())?);
        }
    }
    let limits = body
        .limits
        .as_ref()
        .map(crate::validate::limits)
        .transpose()?
        .unwrap_or_default();
    {
        let state = admin.replica.state();
        crate::owners::check_locks(&state, &tenant, &locks, None)?;
        crate::owners::check_key_limits(&state, &tenant, &limits)?;
    }
    let key = ProxyKey::generate();
    let key_id = KeyId::generate();
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::KeyIssued(KeyIssuedV4 {
            key_id,
            project_id: project,
            name,
            key_hash: key.hash().to_hex(),
            hint: key.hint(),
            connection_ids,
            locks: (&locks).into(),
            limits: limits.into(),
        }),
    );
    let c = commit(&admin, env, 0, idem).await?;
    let Event::KeyIssued(d) = &c.envelope.event else {
        return Err(ApiError::internal(
            "idempotency key reused for another command",
        ));
    };
    if c.replayed {
        // The secret of the first request was shown once and is not stored anywhere.
        return Err(ApiError::conflict(
            "idempotency_key_reused",
            format!(
                "key {} was already issued by an earlier request with this Idempotency-Key; its secret is shown only once — revoke it and issue a new one if it was lost",
                d.key_id
            ),
        ));
    }
    let record = Key {
        id: d.key_id.to_string(),
        tenant_id: c.envelope.tenant_id.to_string(),
        project_id: d.project_id.to_string(),
        name: d.name.clone(),
        hint: d.hint.clone(),
        status: "active".into(),
        created_at: rfc3339(c.envelope.time),
        revoked_at: None,
        last_used_at: None,
        connection_ids: d.connection_ids.iter().map(|c| c.to_string()).collect(),
        allowed_models: d.locks.models.clone(),
        suspension: None,
        locks: Some(KeyLocks::unbound(&locks)),
    };
    let body = IssuedKey {
        record,
        key: key.expose().to_owned(),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/projects/{id}/keys", tag = "keys", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "The project's keys, without secrets", body = List<Key>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_keys(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<Key>>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    views_caught_up(&admin).await;
    let rows = admin.views.list_keys(&project).await.map_err(views_error)?;
    let state = admin.replica.state();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(Json(List {
        data: rows
            .into_iter()
            .map(|r| Key::from(r).with_state(&state, now))
            .collect(),
    }))
}

#[utoipa::path(get, path = "/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = Key), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Key>> {
    let key = known_key(&admin, &caller, &id, Need::Read)?;
    views_caught_up(&admin).await;
    let row = admin.views.get_key(&key).await.map_err(views_error)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    row.map(|r| Json(Key::from(r).with_state(&admin.replica.state(), now)))
        .ok_or_else(|| ApiError::not_found("unknown_key", format!("no key with id {key}")))
}

#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys", request_body(content = Option<RevokeKey>, description = "Optional reason"),
    params(("id" = String, Path)),
    responses((status = 200, description = "Revoked (also when it already was); every gateway refuses it within about a second"), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Concurrent change; retry", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn revoke_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    let body: RevokeKey = super::optional_json(&body)?;
    let reason = body.reason.map(|r| r.chars().take(512).collect::<String>());
    for attempt in 0..3 {
        let (env, expected) = {
            let state = admin.replica.state();
            let Some(key) = state.key(&key_id) else {
                return Err(ApiError::not_found(
                    "unknown_key",
                    format!("no key with id {key_id}"),
                ));
            };
            if key.status == KeyStatus::Revoked {
                let body = serde_json::json!({"id": key_id.to_string(), "status": "revoked"});
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
            let env = Envelope::new(
                key.tenant_id.clone(),
                caller.actor(),
                Event::KeyRevoked(KeyRevokedV1 {
                    key_id: key_id.clone(),
                    project_id: key.project_id.clone(),
                    reason: reason.clone(),
                }),
            );
            let expected = state.subject_seq(&env.subject());
            (env, expected)
        };
        match commit(&admin, env, expected, None).await {
            Ok(c) => {
                let body = serde_json::json!({"id": key_id.to_string(), "status": "revoked"});
                let mut response = (StatusCode::OK, Json(body)).into_response();
                if let Ok(v) = HeaderValue::from_str(&c.seq.to_string()) {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static("x-securegate-seq"), v);
                }
                return Ok(response);
            }
            Err(e) if e.code == "concurrent_modification" && attempt < 2 => {
                // Someone else wrote this key: catch up and decide again.
                let head = admin
                    .log
                    .bounds(StreamName::Control)
                    .await
                    .map(|b| b.last_seq)
                    .unwrap_or(0);
                admin.replica.wait_for(head, OWN_WRITE_WAIT).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        "concurrent_modification",
        "the key keeps changing; retry",
    ))
}

/// Longest grace period of a rotation: 30 days.
const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;
/// Grace period when none is given: a day.
const DEFAULT_GRACE_SECS: u64 = 24 * 3600;

#[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys", request_body(content = Option<RotateKey>, description = "Optional grace period"),
    params(("id" = String, Path)),
    responses((status = 201, description = "A new key with the old one's connections, locks, bindings and limits; the only response that shows it. The old key keeps working until `replaced_key_retires_at`, then stops on every gateway.", body = RotatedKey), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The key is revoked, or changed concurrently; retry", body = ErrorBody), (status = 503, description = "Event log unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn rotate_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    let body: RotateKey = super::optional_json(&body)?;
    let grace = body.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
    if grace > MAX_GRACE_SECS {
        return Err(ApiError::bad_request(
            "invalid_grace",
            format!("grace_secs must be at most {MAX_GRACE_SECS} (30 days)"),
        )
        .with_param("grace_secs"));
    }
    let key = ProxyKey::generate();
    let new_key_id = KeyId::generate();
    let now = time::OffsetDateTime::now_utc();
    // Within the u64 → i64 range: grace is at most 30 days.
    let retires_at = now.unix_timestamp() + grace as i64;
    let (env, expected) = {
        let state = admin.replica.state();
        let Some(old) = state.key(&key_id) else {
            return Err(ApiError::not_found(
                "unknown_key",
                format!("no key with id {key_id}"),
            ));
        };
        if old.status == KeyStatus::Revoked {
            return Err(ApiError::conflict(
                "key_revoked",
                "a revoked key cannot be rotated; issue a new key",
            ));
        }
        let env = Envelope::new(
            old.tenant_id.clone(),
            caller.actor(),
            Event::KeyRotated(KeyRotatedV1 {
                key_id: key_id.clone(),
                project_id: old.project_id.clone(),
                new_key_id: new_key_id.clone(),
                key_hash: key.hash().to_hex(),
                hint: key.hint(),
                retires_at,
            }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    let record = {
        let state = admin.replica.state();
        let Some(new) = state.key(&new_key_id) else {
            return Err(ApiError::internal("the new key is not in the state yet"));
        };
        Key {
            id: new.id.to_string(),
            tenant_id: new.tenant_id.to_string(),
            project_id: new.project_id.to_string(),
            name: new.name.clone(),
            hint: new.hint.clone(),
            status: "active".into(),
            created_at: rfc3339(new.created_at),
            revoked_at: None,
            last_used_at: None,
            connection_ids: new.connection_ids.iter().map(|c| c.to_string()).collect(),
            allowed_models: new.locks.models.clone(),
            suspension: None,
            locks: Some(KeyLocks::unbound(&new.locks)),
        }
    };
    let retires = time::OffsetDateTime::from_unix_timestamp(retires_at).unwrap_or(now);
    let body = RotatedKey {
        issued: IssuedKey {
            record,
            key: key.expose().to_owned(),
        },
        replaces: key_id.to_string(),
        replaced_key_retires_at: rfc3339(retires),
    };
    Ok(created(&c, body))
}
