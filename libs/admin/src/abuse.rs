//! Abuse detection: a project's settings, and resuming a suspended key.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use sg_abuse::AbuseSettings;
use sg_api_error::{ApiError, ApiJson};
use sg_events::{Envelope, Event, KeyResumedV1, ProjectAbuseSetV1};

use crate::Admin;
use crate::api::{ErrorBody, KeySuspension};
use crate::authz::{Caller, Need};
use crate::commands::{ApiResult, commit, commit_to_key, known_key, known_project, with_seq};

#[utoipa::path(get, path = "/projects/{id}/abuse", tag = "abuse", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "The project's abuse-detection settings (the defaults until they are set)", body = AbuseSettings),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_abuse(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<AbuseSettings>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    let state = admin.replica.state();
    let settings = state
        .project(&project)
        .and_then(|p| p.abuse.as_ref())
        .map(AbuseSettings::from)
        .unwrap_or_default();
    Ok(Json(settings))
}

#[utoipa::path(put, path = "/projects/{id}/abuse", tag = "abuse", request_body = AbuseSettings, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Settings replaced (fields not given take their defaults); detection applies them to the requests that follow", body = AbuseSettings),
        (status = 400, description = "A threshold or window out of range; `param` names it", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_abuse(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(settings): ApiJson<AbuseSettings>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    settings.validate().map_err(|e| {
        ApiError::bad_request("invalid_abuse_settings", e.to_string()).with_param(e.field.clone())
    })?;
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::ProjectAbuseSet(ProjectAbuseSetV1 {
            project_id: project,
            settings: (&settings).into(),
        }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, settings))
}

#[utoipa::path(post, path = "/keys/{id}/resume", tag = "abuse", params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The suspension is lifted; every gateway accepts the key again as fast as it honours a revocation", body = KeySuspension),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The key is not suspended (`not_suspended`), or a concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn resume_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &caller, &id, Need::Write)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut ended = None;
    let seq = commit_to_key(&admin, &caller, &key_id, |_, key| {
        let suspension = key
            .suspension
            .as_ref()
            .filter(|s| s.until > now)
            .ok_or_else(|| {
                ApiError::conflict("not_suspended", format!("key {key_id} is not suspended"))
            })?;
        ended = Some(KeySuspension::from(suspension));
        Ok(Event::KeyResumed(KeyResumedV1 {
            key_id: key_id.clone(),
            project_id: key.project_id.clone(),
            verdict_id: suspension.verdict_id.clone(),
            early: true,
        }))
    })
    .await?;
    Ok(with_seq(seq, ended))
}
