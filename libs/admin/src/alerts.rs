//! Where a project's alerts go: email addresses and signed webhooks.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use sg_alerts::{ChannelsInput, WebhookSecret};
use sg_api_error::{ApiError, ApiJson};
use sg_crypto::SecretString;
use sg_events::{Envelope, Event, ProjectAlertsSetV1, WebhookData};
use utoipa::ToSchema;

use crate::Admin;
use crate::api::ErrorBody;
use crate::authz::{Caller, Need};
use crate::commands::{ApiResult, commit, known_project, with_seq};

/// A project's alert channels.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertChannelsDoc {
    pub emails: Vec<String>,
    pub webhooks: Vec<WebhookDoc>,
}

/// A webhook endpoint; its signing secret is shown once, in the answer that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDoc {
    /// `wh_…`: the same while the URL stays configured.
    pub id: String,
    pub url: String,
    /// The `whsec_…` signing secret (Standard Webhooks): only in the answer to the `PUT`
    /// that added this URL. Store it; it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn channels_doc(channels: &sg_state::AlertChannels) -> AlertChannelsDoc {
    AlertChannelsDoc {
        emails: channels.emails.clone(),
        webhooks: channels
            .webhooks
            .iter()
            .map(|w| WebhookDoc {
                id: w.id.clone(),
                url: w.url.clone(),
                secret: None,
            })
            .collect(),
    }
}

#[utoipa::path(get, path = "/projects/{id}/alerts", tag = "alerts", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Where the project's alerts go (never the webhook secrets)", body = AlertChannelsDoc),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_alerts(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<AlertChannelsDoc>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    let state = admin.replica.state();
    let channels = state
        .project(&project)
        .map(|p| channels_doc(&p.alerts))
        .unwrap_or(AlertChannelsDoc {
            emails: Vec::new(),
            webhooks: Vec::new(),
        });
    Ok(Json(channels))
}

#[utoipa::path(put, path = "/projects/{id}/alerts", tag = "alerts", request_body = ChannelsInput, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Channels replaced. A webhook URL not configured before gets a new signing `secret`, shown here once; one already configured keeps its id and secret", body = AlertChannelsDoc),
        (status = 400, description = "An invalid email address, or a webhook URL that is not https or points at a private address; `param` names it", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody), (status = 503, description = "Event log or KMS unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn set_alerts(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ChannelsInput>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    let allow = admin.allow_private_upstreams;
    let valid = sg_alerts::validate_channels(input, allow, allow)
        .await
        .map_err(|e| {
            ApiError::bad_request("invalid_alert_channel", e.to_string()).with_param(e.field)
        })?;
    let (existing, expected) = {
        let state = admin.replica.state();
        let existing = state
            .project(&project)
            .map(|p| p.alerts.webhooks.clone())
            .unwrap_or_default();
        let subject = sg_events::aggregate_subject(
            &tenant,
            sg_events::AggregateKind::Project,
            project.as_str(),
        );
        (existing, state.subject_seq(&subject))
    };
    // A URL already configured keeps its id and sealed secret; a new one gets both.
    let mut webhooks = Vec::new();
    let mut shown = Vec::new();
    for url in valid.webhook_urls() {
        let url = url.to_string();
        if let Some(known) = existing.iter().find(|w| w.url == url) {
            webhooks.push(known.clone());
            shown.push(WebhookDoc {
                id: known.id.clone(),
                url,
                secret: None,
            });
            continue;
        }
        let id = format!("wh_{}", uuid::Uuid::now_v7().simple());
        let secret = WebhookSecret::generate();
        let sealed = sg_crypto::seal(
            &*admin.kms,
            &sg_events::webhook_encryption_context(&tenant, &project, &id),
            &SecretString::new(secret.expose().to_owned()),
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "sealing a webhook secret failed");
            ApiError::unavailable(
                "kms_unavailable",
                "the key service is unavailable; nothing was changed, retry shortly",
            )
        })?;
        webhooks.push(WebhookData {
            id: id.clone(),
            url: url.clone(),
            secret: sealed.into(),
        });
        shown.push(WebhookDoc {
            id,
            url,
            secret: Some(secret.expose().to_owned()),
        });
    }
    let emails = valid.emails().to_vec();
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::ProjectAlertsSet(ProjectAlertsSetV1 {
            project_id: project,
            emails: emails.clone(),
            webhooks,
        }),
    );
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(
        c.seq,
        AlertChannelsDoc {
            emails,
            webhooks: shown,
        },
    ))
}
