//! Handlers: commands append events; queries read views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sg_api_error::{ApiError, ApiJson};
use sg_crypto::SecretString;
use sg_eventlog::{Append, LogError, StreamName};
use sg_events::{
    Actor, ConnectionCreatedV3, ConnectionId, ConnectionKeySealedV1, Envelope, Event, KeyBoundV1,
    KeyId, KeyIssuedV3, KeyLocksSetV1, KeyRevokedV1, KeyUnboundV1, ProjectCreatedV1, ProjectId,
    Provider, TenantCreatedV1, TenantId,
};
use sg_proxy_key::ProxyKey;
use sg_state::KeyStatus;
use sha2::{Digest, Sha256};

use crate::Admin;
use crate::api::*;

/// How long a command waits for its own event to reach this node's replica.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);
/// How long a query waits for the views to catch up with this node's replica.
const VIEW_WAIT: Duration = Duration::from_secs(2);
const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub(crate) type ApiResult<T> = Result<T, ApiError>;

fn parse_id<T: std::str::FromStr>(
    raw: &str,
    what: &'static str,
    code: &'static str,
) -> ApiResult<T> {
    raw.parse()
        .map_err(|_| ApiError::not_found(code, format!("no {what} with id {raw:?}")))
}

/// The `Idempotency-Key` header, scoped to the command so that the same client key on
/// two different endpoints never collides.
fn idempotency(headers: &HeaderMap, scope: &str) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            )
        })?;
    let digest = Sha256::digest(format!("{scope}\n{key}").as_bytes());
    Ok(Some(format!("cmd-{}", hex::encode(&digest[..20]))))
}

/// An event acknowledged by the log.
pub(crate) struct Committed {
    pub(crate) seq: u64,
    /// What the log holds: the command's event, or the first one on an idempotent replay.
    envelope: Envelope,
    replayed: bool,
}

pub(crate) fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::WrongLastSequence { .. } => ApiError::conflict(
            "concurrent_modification",
            "the object was changed by another request at the same time; retry",
        ),
        LogError::Unavailable(_) => ApiError::unavailable(
            "log_unavailable",
            "the event log is unavailable; nothing was changed, retry shortly",
        ),
        other => {
            tracing::error!(error = %other, "event log write failed");
            ApiError::internal("the event log refused the write")
        }
    }
}

pub(crate) async fn commit(
    admin: &Admin,
    envelope: Envelope,
    expected_last_subject_seq: u64,
    msg_id: Option<String>,
) -> ApiResult<Committed> {
    let append = Append {
        subject: envelope.subject(),
        payload: sg_events::encode(&envelope).into(),
        expected_last_subject_seq: Some(expected_last_subject_seq),
        msg_id: Some(msg_id.unwrap_or_else(|| envelope.id.to_string())),
    };
    let appended = admin.log.append(append).await.map_err(log_error)?;
    let envelope = if appended.duplicate {
        let stored = admin
            .log
            .get(StreamName::Control, appended.seq)
            .await
            .map_err(log_error)?
            .ok_or_else(|| {
                ApiError::internal("the first request with this Idempotency-Key cannot be found")
            })?;
        let stored = sg_events::decode(&stored.payload).map_err(|_| {
            ApiError::internal("the first request with this Idempotency-Key cannot be read")
        })?;
        if !same_command(&stored.event, &envelope.event) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                sg_api_error::ErrorType::InvalidRequest,
                "idempotency_key_mismatch",
                "this Idempotency-Key was first used with a different request; use a new key for a new request",
            ));
        }
        stored
    } else {
        envelope
    };
    if !admin.replica.wait_for(appended.seq, OWN_WRITE_WAIT).await {
        tracing::warn!(seq = appended.seq, "replica slow to apply its own write");
    }
    Ok(Committed {
        seq: appended.seq,
        envelope,
        replayed: appended.duplicate,
    })
}

/// Whether a retried command asks for what the first one did: every field the client
/// chose, ignoring what the server generated (ids, hashes, timestamps). A provider key is
/// sealed afresh each time and cannot be compared; the other fields of its request are.
fn same_command(first: &Event, retry: &Event) -> bool {
    match (first, retry) {
        (Event::TenantCreated(a), Event::TenantCreated(b)) => a.name == b.name,
        (Event::ProjectCreated(a), Event::ProjectCreated(b)) => a.name == b.name,
        (Event::ConnectionCreated(a), Event::ConnectionCreated(b)) => {
            a.project_id == b.project_id
                && a.provider == b.provider
                && a.name == b.name
                && a.base_url == b.base_url
                && a.openai_organization == b.openai_organization
                && a.openai_project == b.openai_project
                && a.api_version == b.api_version
        }
        (Event::KeyIssued(a), Event::KeyIssued(b)) => {
            a.project_id == b.project_id
                && a.name == b.name
                && a.connection_ids == b.connection_ids
                && a.locks == b.locks
                && a.limits == b.limits
        }
        _ => false,
    }
}

fn created<T: serde::Serialize>(committed: &Committed, body: T) -> Response {
    let status = if committed.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = (status, Json(body)).into_response();
    if committed.replayed {
        response.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&committed.seq.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-securegate-seq"), v);
    }
    response
}

pub(crate) fn views_error(e: sg_views::ViewError) -> ApiError {
    if e.is_transient() {
        ApiError::unavailable(
            "views_unavailable",
            "the reporting database is unavailable; retry shortly",
        )
    } else {
        tracing::error!(error = %e, "views query failed");
        ApiError::internal("the reporting database query failed")
    }
}

/// Waits (briefly) until the views include everything this node's replica has seen, so
/// a client reads its own writes.
async fn views_caught_up(admin: &Admin) {
    let target = admin.replica.applied_seq();
    let deadline = Instant::now() + VIEW_WAIT;
    while Instant::now() < deadline {
        match admin
            .views
            .checkpoint(StreamName::Control.stream_name())
            .await
        {
            Ok(cp) if cp >= target => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => return,
        }
    }
}

// ---- tenants and projects -------------------------------------------------------------

#[utoipa::path(post, path = "/tenants", tag = "tenants", request_body = CreateTenant,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Created", body = Tenant), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_tenant(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    let name = crate::validate::name("name", &body.name)?;
    let idem = idempotency(&headers, "create_tenant")?;
    let tenant = TenantId::generate();
    let env = Envelope::new(
        tenant,
        Actor::operator(),
        Event::TenantCreated(TenantCreatedV1 { name }),
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
        created_at: rfc3339(c.envelope.time),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = Tenant), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_tenant(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Tenant>> {
    let id: TenantId = parse_id(&id, "tenant", "unknown_tenant")?;
    views_caught_up(&admin).await;
    let row = admin.views.get_tenant(&id).await.map_err(views_error)?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("unknown_tenant", format!("no tenant with id {id}")))
}

#[utoipa::path(post, path = "/tenants/{id}/projects", tag = "projects", request_body = CreateProject,
    params(("id" = String, Path, description = "Tenant id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Created", body = Project), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_project(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<Response> {
    let tenant: TenantId = parse_id(&id, "tenant", "unknown_tenant")?;
    let name = crate::validate::name("name", &body.name)?;
    let idem = idempotency(&headers, &format!("create_project {tenant}"))?;
    if admin.replica.state().tenant(&tenant).is_none() {
        return Err(ApiError::not_found(
            "unknown_tenant",
            format!("no tenant with id {tenant}"),
        ));
    }
    let project = ProjectId::generate();
    let env = Envelope::new(
        tenant,
        Actor::operator(),
        Event::ProjectCreated(ProjectCreatedV1 {
            project_id: project,
            name,
        }),
    );
    let c = commit(&admin, env, 0, idem).await?;
    let Event::ProjectCreated(d) = &c.envelope.event else {
        return Err(ApiError::internal(
            "idempotency key reused for another command",
        ));
    };
    let body = Project {
        id: d.project_id.to_string(),
        tenant_id: c.envelope.tenant_id.to_string(),
        name: d.name.clone(),
        created_at: rfc3339(c.envelope.time),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/tenants/{id}/projects", tag = "projects", params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = List<Project>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_projects(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<Project>>> {
    let tenant: TenantId = parse_id(&id, "tenant", "unknown_tenant")?;
    if admin.replica.state().tenant(&tenant).is_none() {
        return Err(ApiError::not_found(
            "unknown_tenant",
            format!("no tenant with id {tenant}"),
        ));
    }
    views_caught_up(&admin).await;
    let rows = admin
        .views
        .list_projects(&tenant)
        .await
        .map_err(views_error)?;
    Ok(Json(List {
        data: rows.into_iter().map(Into::into).collect(),
    }))
}

/// The project, known to this node's replica, and its tenant.
pub(crate) fn known_project(admin: &Admin, raw: &str) -> ApiResult<(ProjectId, TenantId)> {
    let project: ProjectId = parse_id(raw, "project", "unknown_project")?;
    let tenant = admin
        .replica
        .state()
        .project(&project)
        .map(|p| p.tenant_id.clone())
        .ok_or_else(|| {
            ApiError::not_found("unknown_project", format!("no project with id {project}"))
        })?;
    Ok((project, tenant))
}

#[utoipa::path(get, path = "/projects/{id}", tag = "projects", params(("id" = String, Path)),
    responses((status = 200, body = Project), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_project(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    let (project, _) = known_project(&admin, &id)?;
    views_caught_up(&admin).await;
    let row = admin
        .views
        .get_project(&project)
        .await
        .map_err(views_error)?;
    row.map(|r| Json(r.into())).ok_or_else(|| {
        ApiError::not_found("unknown_project", format!("no project with id {project}"))
    })
}

// ---- connections ------------------------------------------------------------------------

#[utoipa::path(post, path = "/projects/{id}/connections", tag = "connections", request_body = CreateConnection,
    params(("id" = String, Path, description = "Project id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Created; the api_key is sealed and never returned", body = Connection), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_connection(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateConnection>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &id)?;
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
        Actor::operator(),
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
    responses((status = 200, body = List<Connection>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_connections(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<Connection>>> {
    let (project, _) = known_project(&admin, &id)?;
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
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody),
        (status = 503, description = "Event log or KMS unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn rotate_connection_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateConnectionKey>,
) -> ApiResult<Response> {
    let connection_id: ConnectionId = parse_id(&id, "connection", "unknown_connection")?;
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
        Actor::operator(),
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

#[utoipa::path(post, path = "/rewrap", tag = "operator", request_body = Rewrap,
    responses((status = 200, description = "Every connection's data key re-wrapped, or the failures listed", body = RewrapReport),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody)))]
pub(crate) async fn rewrap(
    State(admin): State<Arc<Admin>>,
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
                Actor::operator(),
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

// ---- keys -----------------------------------------------------------------------------------

#[utoipa::path(post, path = "/projects/{id}/keys", tag = "keys", request_body = CreateKey,
    params(("id" = String, Path, description = "Project id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Issued; the only response that shows the key", body = IssuedKey), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "This Idempotency-Key already issued a key, whose secret cannot be shown again", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &id)?;
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
    let key = ProxyKey::generate();
    let key_id = KeyId::generate();
    let env = Envelope::new(
        tenant,
        Actor::operator(),
        Event::KeyIssued(KeyIssuedV3 {
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
    };
    let body = IssuedKey {
        record,
        key: key.expose().to_owned(),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/projects/{id}/keys", tag = "keys", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "The project's keys, without secrets", body = List<Key>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_keys(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<Key>>> {
    let (project, _) = known_project(&admin, &id)?;
    views_caught_up(&admin).await;
    let rows = admin.views.list_keys(&project).await.map_err(views_error)?;
    Ok(Json(List {
        data: rows.into_iter().map(Into::into).collect(),
    }))
}

pub(crate) fn known_key(admin: &Admin, raw: &str) -> ApiResult<KeyId> {
    let key: KeyId = parse_id(raw, "key", "unknown_key")?;
    if admin.replica.state().key(&key).is_none() {
        return Err(ApiError::not_found(
            "unknown_key",
            format!("no key with id {key}"),
        ));
    }
    Ok(key)
}

#[utoipa::path(get, path = "/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = Key), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Key>> {
    let key = known_key(&admin, &id)?;
    views_caught_up(&admin).await;
    let row = admin.views.get_key(&key).await.map_err(views_error)?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("unknown_key", format!("no key with id {key}")))
}

#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys", request_body(content = Option<RevokeKey>, description = "Optional reason"),
    params(("id" = String, Path)),
    responses((status = 200, description = "Revoked (also when it already was); every gateway refuses it within about a second"), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Concurrent change; retry", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn revoke_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &id)?;
    let body: RevokeKey = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })?
    };
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
                Actor::operator(),
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

// ---- model registry -------------------------------------------------------------------------

fn routes_of(admin: &Admin, project: &ProjectId) -> List<ModelRoute> {
    let state = admin.replica.state();
    let data = state
        .project(project)
        .map(|p| {
            p.routes
                .iter()
                .map(|(model, r)| ModelRoute {
                    model: model.clone(),
                    connection_id: r.connection_id.to_string(),
                    upstream_model: r.upstream_model.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    List { data }
}

#[utoipa::path(get, path = "/projects/{id}/models", tag = "models", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "The project's model registry", body = List<ModelRoute>),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_model_routes(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<ModelRoute>>> {
    let (project, _) = known_project(&admin, &id)?;
    Ok(Json(routes_of(&admin, &project)))
}

#[utoipa::path(put, path = "/projects/{id}/models", tag = "models", request_body = ModelRoute, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Routed: clients asking for `model` are served by the connection with `upstream_model`", body = List<ModelRoute>),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_model_route(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ModelRoute>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &id)?;
    let model = crate::validate::model_name("model", &body.model)?;
    let upstream_model = crate::validate::model_name("upstream_model", &body.upstream_model)?;
    let (env, expected) = {
        let state = admin.replica.state();
        let connection_id = body
            .connection_id
            .parse::<ConnectionId>()
            .ok()
            .filter(|c| state.connection(c).is_some_and(|c| c.project_id == project))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "unknown_connection",
                    format!(
                        "project {project} has no connection {:?}",
                        body.connection_id
                    ),
                )
                .with_param("connection_id")
            })?;
        let env = Envelope::new(
            tenant,
            Actor::operator(),
            Event::ModelRouted(sg_events::ModelRoutedV1 {
                project_id: project.clone(),
                model,
                connection_id,
                upstream_model,
            }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, routes_of(&admin, &project)))
}

#[utoipa::path(post, path = "/projects/{id}/models/remove", tag = "models", request_body = RemoveModelRoute, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Removed", body = List<ModelRoute>),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn remove_model_route(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RemoveModelRoute>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &id)?;
    let (env, expected) = {
        let state = admin.replica.state();
        if !state
            .project(&project)
            .is_some_and(|p| p.routes.contains_key(&body.model))
        {
            return Err(ApiError::not_found(
                "unknown_model_route",
                format!("project {project} routes no model {:?}", body.model),
            ));
        }
        let env = Envelope::new(
            tenant,
            Actor::operator(),
            Event::ModelUnrouted(sg_events::ModelUnroutedV1 {
                project_id: project.clone(),
                model: body.model,
            }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, routes_of(&admin, &project)))
}

// ---- locks ------------------------------------------------------------------------------------

fn key_locks(admin: &Admin, key: &KeyId) -> ApiResult<KeyLocks> {
    let state = admin.replica.state();
    let k = state
        .key(key)
        .ok_or_else(|| ApiError::not_found("unknown_key", format!("no key with id {key}")))?;
    Ok(KeyLocks {
        locks: k.locks.clone(),
        bound_ip: k.bound_ip.map(|ip| ip.to_string()),
        bound_device: k.bound_device.clone(),
    })
}

#[utoipa::path(get, path = "/keys/{id}/locks", tag = "locks", params(("id" = String, Path)),
    responses((status = 200, description = "The key's locks and what it is bound to", body = KeyLocks),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_locks(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyLocks>> {
    let key = known_key(&admin, &id)?;
    Ok(Json(key_locks(&admin, &key)?))
}

#[utoipa::path(put, path = "/keys/{id}/locks", tag = "locks", request_body = LockSettingsDoc, params(("id" = String, Path)),
    responses((status = 200, description = "Locks replaced; every gateway enforces them within about a second", body = KeyLocks),
        (status = 400, description = "Invalid locks", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_locks(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    ApiJson(mut locks): ApiJson<sg_policy::LockSettings>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &id)?;
    if let Some(models) = locks.models.take() {
        locks.models = Some(crate::validate::model_list("models", models)?);
    }
    let (env, expected) = {
        let state = admin.replica.state();
        let key = state.key(&key_id).ok_or_else(|| {
            ApiError::not_found("unknown_key", format!("no key with id {key_id}"))
        })?;
        let env = Envelope::new(
            key.tenant_id.clone(),
            Actor::operator(),
            Event::KeyLocksSet(KeyLocksSetV1 {
                key_id: key_id.clone(),
                project_id: key.project_id.clone(),
                locks: (&locks).into(),
            }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, key_locks(&admin, &key_id)?))
}

async fn commit_binding(
    admin: &Admin,
    key_id: &KeyId,
    event: impl FnOnce(sg_events::ProjectId) -> Event,
) -> ApiResult<u64> {
    let (env, expected) = {
        let state = admin.replica.state();
        let key = state.key(key_id).ok_or_else(|| {
            ApiError::not_found("unknown_key", format!("no key with id {key_id}"))
        })?;
        let env = Envelope::new(
            key.tenant_id.clone(),
            Actor::operator(),
            event(key.project_id.clone()),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    commit(admin, env, expected, None).await.map(|c| c.seq)
}

/// A JSON answer carrying the log sequence of the write, so that callers can wait for
/// gateways to reach it (`/readyz` reports `control_seq`).
pub(crate) fn with_seq<T: serde::Serialize>(seq: u64, body: T) -> Response {
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-securegate-seq"), v);
    }
    response
}

#[utoipa::path(post, path = "/keys/{id}/bind", tag = "locks", request_body = BindKey, params(("id" = String, Path)),
    responses((status = 200, description = "Bound (effective with the auto-bind IP or device lock)", body = KeyLocks),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn bind_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BindKey>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &id)?;
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
    let seq = commit_binding(&admin, &key_id, move |project_id| {
        Event::KeyBound(KeyBoundV1 {
            key_id: id2,
            project_id,
            ip,
            device,
            request_id: None,
        })
    })
    .await?;
    Ok(with_seq(seq, key_locks(&admin, &key_id)?))
}

#[utoipa::path(post, path = "/keys/{id}/unbind", tag = "locks", request_body = UnbindKey, params(("id" = String, Path)),
    responses((status = 200, description = "Unbound; with auto-bind locks the next request binds again", body = KeyLocks),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn unbind_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UnbindKey>,
) -> ApiResult<Response> {
    let key_id = known_key(&admin, &id)?;
    let id2 = key_id.clone();
    let seq = commit_binding(&admin, &key_id, move |project_id| {
        Event::KeyUnbound(KeyUnboundV1 {
            key_id: id2,
            project_id,
            ip: body.ip,
            device: body.device,
        })
    })
    .await?;
    Ok(with_seq(seq, key_locks(&admin, &key_id)?))
}
