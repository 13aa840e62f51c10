//! The audit trail of a project: suspensions and resumptions, revocations, lock, binding
//! and rotation changes, abuse and alert settings, lock violations, budget signals and
//! alert deliveries, newest first, with a cursor.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sg_events::KeyId;
use sg_views::audit::{self, AuditCursor, AuditFilter};
use utoipa::{IntoParams, ToSchema};

use crate::Admin;
use crate::api::{ErrorBody, rfc3339};
use crate::authz::{Caller, Need};
use crate::commands::{ApiResult, known_project, views_caught_up, views_error};
use crate::reports::{invalid, query, time_param};

/// Events per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;
/// Most events per page.
const MAX_LIMIT: u32 = 500;
/// Most types one `type` parameter may list.
const MAX_TYPES: usize = 32;

/// One event of a project's audit trail.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193b6f0-5c1e-7d3a-9a4e-2f8b1c0d9e7a",
    "type": "lock.violated",
    "time": "2026-12-04T10:15:30.123Z",
    "key_id": "key_3kq9x0c2m1v8b7n6",
    "actor": "node:gw-a",
    "data": {"code": "ip_not_allowed", "client_ip": "203.0.113.9", "endpoint": "/v1/chat/completions"}
}))]
pub struct AuditEvent {
    /// The event's id (unique; the same event is listed once).
    pub id: String,
    /// The event type: `key.suspended`, `key.resumed`, `key.revoked`, `key.locks_set`,
    /// `key.bound`, `key.unbound`, `key.rotated`, `project.abuse_set`,
    /// `project.alerts_set`, `lock.violated`, `budget.threshold`, `budget.reset`,
    /// `alert.raised`, `alert.delivered`, or another `alert.*` type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened (RFC 3339, millisecond precision).
    #[schema(format = DateTime)]
    pub time: String,
    /// The key it is about, if any (for `key.rotated`: the key rotated away from; the
    /// new key is `data.new_key_id`).
    pub key_id: Option<String>,
    /// Who caused it: `operator`, `token:<token id>`, or `node:<gateway or service>`.
    pub actor: String,
    /// The event's data, as the event log holds it in its current version, without
    /// anything secret (no key or token hashes, no sealed secrets).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of a project's audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventPage {
    pub data: Vec<AuditEvent>,
    /// Pass as `cursor` to read the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl From<sg_views::AuditEvent> for AuditEvent {
    fn from(e: sg_views::AuditEvent) -> Self {
        AuditEvent {
            id: e.id.to_string(),
            event_type: e.event_type,
            time: rfc3339(e.time),
            key_id: e.key_id.map(String::from),
            actor: e.actor,
            data: e.data,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Only events of these types, comma-separated (e.g. `key.suspended,lock.violated`).
    #[serde(rename = "type")]
    #[param(example = "lock.violated")]
    types: Option<String>,
    /// Only events about this key.
    key_id: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only events before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// `next_cursor` of the previous page: the listing continues after it.
    cursor: Option<String>,
    /// Events per page, 1–500; default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

fn types_param(value: Option<&str>) -> ApiResult<Vec<String>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let mut types: Vec<String> = Vec::new();
    for name in value.split(',') {
        if !audit::is_audit_type(name) {
            let known: Vec<&str> = audit::CONTROL_TYPES
                .iter()
                .chain(audit::SIGNAL_TYPES.iter())
                .copied()
                .collect();
            let shown: String = name.chars().take(64).collect();
            return Err(invalid(
                "type",
                format!(
                    "`type` lists {shown:?}, which is not an event type of the audit trail: \
                     expected a comma-separated list of {}, or alert.<name>",
                    known.join(", ")
                ),
            ));
        }
        if !types.iter().any(|t| t == name) {
            types.push(name.to_owned());
        }
    }
    if types.len() > MAX_TYPES {
        return Err(invalid(
            "type",
            format!("`type` may list at most {MAX_TYPES} types"),
        ));
    }
    Ok(types)
}

fn filter(q: &EventsQuery) -> ApiResult<AuditFilter> {
    let types = types_param(q.types.as_deref())?;
    let key_id = q
        .key_id
        .as_deref()
        .map(|k| {
            k.parse::<KeyId>()
                .map_err(|_| invalid("key_id", "`key_id` is not a key id"))
        })
        .transpose()?;
    let from = time_param("from", q.from.as_deref())?;
    let to = time_param("to", q.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(invalid("from", "`from` must be before `to`"));
    }
    Ok(AuditFilter {
        types,
        key_id,
        from,
        to,
    })
}

fn limit_param(value: Option<&str>) -> ApiResult<u32> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                invalid(
                    "limit",
                    format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

#[utoipa::path(get, path = "/projects/{id}/events", tag = "audit",
    params(("id" = String, Path, description = "Project id"), EventsQuery),
    responses((status = 200, description = "The project's audit trail, newest first (by time, then by log position): suspensions and resumptions, revocations, lock, binding and rotation changes, abuse and alert settings, lock violations, budget signals and alerts. Pages neither repeat nor skip an event when events are recorded meanwhile.", body = AuditEventPage),
        (status = 400, description = "A parameter is invalid (an unknown event type, a malformed time or cursor, `from` not before `to`, `limit` out of range); `param` names it", body = ErrorBody),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "The views are unavailable; retry", body = ErrorBody)))]
pub(crate) async fn list_events(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<AuditEventPage>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    let q = query(q)?;
    let filter = filter(&q)?;
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            AuditCursor::parse(c).ok_or_else(|| {
                invalid(
                    "cursor",
                    "`cursor` must be a `next_cursor` this API returned",
                )
            })
        })
        .transpose()?;
    let limit = limit_param(q.limit.as_deref())?;
    // The control events this node wrote (a suspension lifted, a key revoked) are listed.
    views_caught_up(&admin).await;
    let page = admin
        .views
        .audit_events(&project, &filter, cursor.as_ref(), limit)
        .await
        .map_err(views_error)?;
    Ok(Json(AuditEventPage {
        data: page.data.into_iter().map(AuditEvent::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.encode()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_validated() {
        assert_eq!(types_param(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            types_param(Some("lock.violated,key.suspended,lock.violated")).unwrap(),
            ["lock.violated", "key.suspended"]
        );
        assert_eq!(
            types_param(Some("alert.escalated")).unwrap(),
            ["alert.escalated"]
        );
        for bad in [
            "",
            "lock.violated,",
            "key.issued",
            "usage.recorded",
            " lock.violated",
        ] {
            let err = types_param(Some(bad)).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("type"), "{bad}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(limit_param(None).unwrap(), 100);
        assert_eq!(limit_param(Some("1")).unwrap(), 1);
        assert_eq!(limit_param(Some("500")).unwrap(), 500);
        for bad in ["0", "501", "-1", "ten", ""] {
            assert!(limit_param(Some(bad)).is_err(), "{bad}");
        }
    }
}
