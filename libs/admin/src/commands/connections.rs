//! Provider connections: a project's sealed upstream credentials.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_crypto::SecretString;
use sg_events::{
    ConnectionCreatedV3, ConnectionId, ConnectionKeySealedV1, Envelope, Event, ProjectId, Provider,
    TenantId,
};

use super::{ApiResult, commit, created, idempotency, known_project, views_caught_up, views_error};
use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};

#[utoipa::path(post, path = "/projects/{id}/connections", tag = "connections", request_body = CreateConnection,
    params(("id" = String, Path, description = "Project id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Created; the api_key is sealed and never returned", body = Connection), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_connection(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateConnection>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    crate::owners::check_connection(&admin.replica.state(), &tenant)?;
    let provider: Provider = body
        .provider
        .parse()
        .map_err(|e: String| ApiError::bad_request("invalid_provider", e).with_param("provider"))?;
    let name = crate::validate::name("name", body.name.as_deref().unwrap_or(provider.as_str()))?;
    let idem = idempotency(&headers, &format!("create_connection {project}"))?;
    let base_url = match (provider, body.base_url) {
        (Provider::Mock, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_base_url",
                "the mock provider takes no base_url",
            )
            .with_param("base_url"));
        }
        (p, None) if p.default_base_url().is_none() && p != Provider::Mock => {
            return Err(ApiError::bad_request(
                "missing_base_url",
                format!(
                    "`base_url` is required for {}: it has no common address (an Azure resource's endpoint, a self-hosted server's URL)",
                    p.as_str()
                ),
            )
            .with_param("base_url"));
        }
        (_, None) => None,
        (_, Some(url)) => {
            let checked = sg_netguard::check_upstream_url(&url, admin.allow_private_upstreams)
                .await
                .map_err(|e| {
                    let code = match e {
                        sg_netguard::UrlError::Private(_) => "upstream_not_allowed",
                        _ => "invalid_base_url",
                    };
                    ApiError::bad_request(code, e.to_string()).with_param("base_url")
                })?;
            Some(checked.as_str().trim_end_matches('/').to_owned())
        }
    };
    let openai_organization =
        crate::validate::openai_setting("openai_organization", provider, body.openai_organization)?;
    let openai_project =
        crate::validate::openai_setting("openai_project", provider, body.openai_project)?;
    let api_version = crate::validate::api_version(provider, body.api_version)?;
    let api_key = match (provider, body.api_key) {
        (_, Some(k)) if !k.expose().trim().is_empty() => {
            crate::validate::provider_key(provider, k.expose().trim())?;
            SecretString::new(k.expose().trim().to_owned())
        }
        (Provider::Mock, _) => SecretString::new("mock-provider-key".into()),
        (_, _) => {
            return Err(ApiError::bad_request(
                "missing_api_key",
                "`api_key` is required for this provider",
            )
            .with_param("api_key"));
        }
    };
    let connection = ConnectionId::generate(provider);
    let sealed = seal_for(&admin, &tenant, &project, &connection, &api_key).await?;
    drop(api_key);
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::ConnectionCreated(ConnectionCreatedV3 {
            connection_id: connection,
            project_id: project,
            provider,
            name,
            base_url,
            api_key: sealed.into(),
            openai_organization,
            openai_project,
            api_version,
        }),
    );
    let c = commit(&admin, env, 0, idem).await?;
    let Event::ConnectionCreated(d) = &c.envelope.event else {
        return Err(ApiError::internal(
            "idempotency key reused for another command",
        ));
    };
    let body = Connection {
        id: d.connection_id.to_string(),
        tenant_id: c.envelope.tenant_id.to_string(),
        project_id: d.project_id.to_string(),
        provider: d.provider.as_str().to_owned(),
        name: d.name.clone(),
        base_url: d.base_url.clone(),
        openai_organization: d.openai_organization.clone(),
        openai_project: d.openai_project.clone(),
        api_version: d.api_version.clone(),
        created_at: rfc3339(c.envelope.time),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/projects/{id}/connections", tag = "connections", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, body = List<Connection>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_connections(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<Connection>>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    views_caught_up(&admin).await;
    let rows = admin
        .views
        .list_connections(&project)
        .await
        .map_err(views_error)?;
    Ok(Json(List {
        data: rows.into_iter().map(Into::into).collect(),
    }))
}

/// Seals a provider key for one connection.
async fn seal_for(
    admin: &Admin,
    tenant: &TenantId,
    project: &ProjectId,
    connection: &ConnectionId,
    api_key: &SecretString,
) -> ApiResult<sg_crypto::SealedSecret> {
    let context = connection.encryption_context(tenant, project);
    sg_crypto::seal(&*admin.kms, &context, api_key).await.map_err(|e| match e {
        sg_crypto::CryptoError::KmsUnavailable(_) => ApiError::unavailable(
            "kms_unavailable",
            "the key service is unavailable; nothing was changed, retry shortly",
        ),
        other => {
            tracing::error!(error = %other, "sealing a provider key failed");
            ApiError::internal(
                "the provider key could not be sealed; the operator must check the KMS configuration",
            )
        }
    })
}

#[utoipa::path(post, path = "/connections/{id}/rotate", tag = "connections", request_body = RotateConnectionKey,
    params(("id" = String, Path, description = "Connection id")),
    responses((status = 200, description = "Rotated; gateways use the new key from their next request after folding the event", body = Connection),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody),
        (status = 503, description = "Event log or KMS unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn rotate_connection_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateConnectionKey>,
) -> ApiResult<Response> {
    let (connection_id, _, _) = caller.connection(&admin.replica.state(), &id, Need::Write)?;
    let api_key = body.api_key.expose().trim();
    if api_key.is_empty() {
        return Err(
            ApiError::bad_request("missing_api_key", "`api_key` must not be empty")
                .with_param("api_key"),
        );
    }
    let (tenant, project, provider, name, base_url, settings, created_at) = {
        let state = admin.replica.state();
        let c = state.connection(&connection_id).ok_or_else(|| {
            ApiError::not_found(
                "unknown_connection",
                format!("no connection with id {connection_id}"),
            )
        })?;
        (
            c.tenant_id.clone(),
            c.project_id.clone(),
            c.provider,
            c.name.clone(),
            c.base_url.clone(),
            (
                c.openai_organization.clone(),
                c.openai_project.clone(),
                c.api_version.clone(),
            ),
            c.created_at,
        )
    };
    crate::validate::provider_key(provider, api_key)?;
    let api_key = SecretString::new(api_key.to_owned());
    let sealed = seal_for(&admin, &tenant, &project, &connection_id, &api_key).await?;
    drop(api_key);
    let env = Envelope::new(
        tenant.clone(),
        caller.actor(),
        Event::ConnectionKeyRotated(ConnectionKeySealedV1 {
            connection_id: connection_id.clone(),
            project_id: project.clone(),
            api_key: sealed.into(),
        }),
    );
    let expected = admin.replica.state().subject_seq(&env.subject());
    let c = commit(&admin, env, expected, None).await?;
    let body = Connection {
        id: connection_id.to_string(),
        tenant_id: tenant.to_string(),
        project_id: project.to_string(),
        provider: provider.as_str().to_owned(),
        name,
        base_url,
        openai_organization: settings.0,
        openai_project: settings.1,
        api_version: settings.2,
        created_at: rfc3339(created_at),
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&c.seq.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-securegate-seq"), v);
    }
    Ok(response)
}
