//! Operator-wide maintenance.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{ConnectionKeySealedV1, Envelope, Event};

use super::{ApiResult, commit};
use crate::Admin;
use crate::api::*;
use crate::authz::Caller;

#[utoipa::path(post, path = "/rewrap", tag = "operator", request_body = Rewrap,
    responses((status = 200, description = "Every connection's data key re-wrapped, or the failures listed", body = RewrapReport),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "Only the operator token can do this (`operator_required`)", body = ErrorBody)))]
pub(crate) async fn rewrap(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<Rewrap>,
) -> ApiResult<Json<RewrapReport>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let target = body.kms_key_id.trim().to_owned();
    if target.is_empty() {
        return Err(
            ApiError::bad_request("invalid_kms_key_id", "`kms_key_id` must not be empty")
                .with_param("kms_key_id"),
        );
    }
    let connections: Vec<_> = admin.replica.state().all_connections().cloned().collect();
    let mut report = RewrapReport {
        rewrapped: 0,
        unchanged: 0,
        failed: Vec::new(),
    };
    for c in connections {
        let sealed = &c.api_key;
        if sealed.kek_id == target || sealed.kek_id.ends_with(&format!("/{target}")) {
            report.unchanged += 1;
            continue;
        }
        let context = c.id.encryption_context(&c.tenant_id, &c.project_id);
        let outcome = async {
            let wrapped = b64
                .decode(&sealed.wrapped_key)
                .map_err(|_| "the sealed key is malformed".to_owned())?;
            let (new_wrapped, new_kek) = admin
                .kms
                .rewrap(&sealed.kek_id, &wrapped, &context, &target)
                .await
                .map_err(|e| e.to_string())?;
            let resealed = sg_crypto::SealedSecret {
                wrapped_key: b64.encode(new_wrapped),
                kek_id: new_kek,
                ..sealed.clone()
            };
            let env = Envelope::new(
                c.tenant_id.clone(),
                caller.actor(),
                Event::ConnectionKeyRewrapped(ConnectionKeySealedV1 {
                    connection_id: c.id.clone(),
                    project_id: c.project_id.clone(),
                    api_key: resealed.into(),
                }),
            );
            let expected = admin.replica.state().subject_seq(&env.subject());
            commit(&admin, env, expected, None)
                .await
                .map_err(|e| e.message)?;
            Ok::<(), String>(())
        }
        .await;
        match outcome {
            Ok(()) => report.rewrapped += 1,
            Err(error) => {
                tracing::warn!(connection = %c.id, %error, "re-wrap failed");
                report.failed.push(RewrapFailure {
                    connection_id: c.id.to_string(),
                    error,
                });
            }
        }
    }
    Ok(Json(report))
}
