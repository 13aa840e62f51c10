//! Handlers: commands append events; queries read views.
//!
//! This module holds the machinery every resource shares (ids, idempotency, committing
//! to the log, responses, waiting for the views); each submodule owns one aggregate.

pub(crate) mod connections;
pub(crate) mod keys;
pub(crate) mod locks;
pub(crate) mod models;
pub(crate) mod operator;
pub(crate) mod projects;
pub(crate) mod tenants;

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sg_api_error::ApiError;
use sg_eventlog::{Append, LogError, StreamName};
use sg_events::{Envelope, Event, KeyId, ProjectId, TenantId};
use sha2::{Digest, Sha256};

use crate::Admin;
use crate::authz::{Caller, Need};

/// How long a command waits for its own event to reach this node's replica.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);
/// How long a query waits for the views to catch up with this node's replica.
const VIEW_WAIT: Duration = Duration::from_secs(2);
const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The `Idempotency-Key` header, scoped to the command so that the same client key on
/// two different endpoints never collides.
pub(crate) fn idempotency(headers: &HeaderMap, scope: &str) -> ApiResult<Option<String>> {
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

/// A JSON body that may be left out: an empty (or blank) body is `T::default()`.
pub(crate) fn optional_json<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// An event acknowledged by the log.
pub(crate) struct Committed {
    pub(crate) seq: u64,
    /// What the log holds: the command's event, or the first one on an idempotent replay.
    pub(crate) envelope: Envelope,
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
        (Event::TenantCreated(a), Event::TenantCreated(b)) => a.name == b.name && a.plan == b.plan,
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

pub(crate) fn created<T: serde::Serialize>(committed: &Committed, body: T) -> Response {
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
pub(crate) async fn views_caught_up(admin: &Admin) {
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

/// The project, if the caller sees it and may do `need` in it, and its tenant.
pub(crate) fn known_project(
    admin: &Admin,
    caller: &Caller,
    raw: &str,
    need: Need,
) -> ApiResult<(ProjectId, TenantId)> {
    caller.project(&admin.replica.state(), raw, need)
}

/// The key, if the caller sees it and may do `need` to it.
pub(crate) fn known_key(admin: &Admin, caller: &Caller, raw: &str, need: Need) -> ApiResult<KeyId> {
    Ok(caller.key(&admin.replica.state(), raw, need)?.0)
}

/// Commits the event `event` makes from a key as this node's replica holds it (it may
/// refuse, after checking the key against the state), on the key's aggregate, expecting
/// the sequence the decision was made from. Returns the log's sequence of the write.
pub(crate) async fn commit_to_key(
    admin: &Admin,
    caller: &Caller,
    key_id: &KeyId,
    event: impl FnOnce(&sg_state::State, &sg_state::Key) -> ApiResult<Event>,
) -> ApiResult<u64> {
    let (env, expected) = {
        let state = admin.replica.state();
        let key = state.key(key_id).ok_or_else(|| {
            ApiError::not_found("unknown_key", format!("no key with id {key_id}"))
        })?;
        let env = Envelope::new(key.tenant_id.clone(), caller.actor(), event(&state, key)?);
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
