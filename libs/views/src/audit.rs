//! The audit trail: what happened to a project's keys and what its owners were told, one
//! row per log message, newest first.
//!
//! Recorded, in the transaction that applies them:
//!
//! - from the control stream, the security-relevant changes an owner wants to see
//!   ([`CONTROL_TYPES`]: suspensions and resumptions, revocations, locks, bindings,
//!   rotations, abuse and alert settings);
//! - every signal ([`Event::aggregate`] of kind [`AggregateKind::Signal`]: lock
//!   violations, budget signals, alerts), and signals of types this build does not know
//!   that the caller hands over as [`LogEntry::Unknown`]: their type, key and data are
//!   kept as the envelope carries them.
//!
//! Each row keeps the event's envelope (id, tenant, time, actor) and its data as JSON,
//! without anything secret: fields named in [`WITHHELD`] are removed wherever they appear
//! (events carry proxy keys only as ids and hashes, provider and webhook secrets only
//! sealed; none of those reach the trail).
//!
//! The row's key is its log position (stream, sequence), so applying a message again
//! changes nothing; the envelope id is unique too, so an event appended twice (a budget
//! signal published again after the log forgot its message id) is recorded once, at its
//! first position.
//!
//! Listings ([`Views::audit_events`]) are newest first, by the event's time, then stream,
//! then sequence — a total order — and continue after an opaque [`AuditCursor`], so pages
//! neither repeat nor skip an event when others are recorded meanwhile (an event recorded
//! during a walk is met by it if it sorts after the walk's position, i.e. is older).

use std::fmt;

use base64::Engine as _;
use serde::Serialize;
use sg_events::{AggregateKind, Envelope, Event, KeyId, ProjectId, RawEnvelope, TenantId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{lock_writer, millis, to_u64};
use crate::{ViewError, Views};

/// Control event types recorded in the trail.
pub const CONTROL_TYPES: [&str; 9] = [
    "key.suspended",
    "key.resumed",
    "key.revoked",
    "key.locks_set",
    "key.bound",
    "key.unbound",
    "key.rotated",
    "project.abuse_set",
    "project.alerts_set",
];

/// Signal types this build knows; every signal is recorded, these and any later
/// `alert.*` type ([`is_audit_type`]).
pub const SIGNAL_TYPES: [&str; 5] = [
    "lock.violated",
    "budget.threshold",
    "budget.reset",
    "alert.raised",
    "alert.delivered",
];

/// Fields of an event's data never stored in the trail, at any depth.
pub const WITHHELD: [&str; 6] = [
    "key_hash",
    "token_hash",
    "api_key",
    "secret",
    "sealed",
    "ciphertext",
];

/// Whether the trail can hold events of type `name`: one of [`CONTROL_TYPES`] or
/// [`SIGNAL_TYPES`], or `alert.<name>` (alert types added later are recorded as they
/// come).
pub fn is_audit_type(name: &str) -> bool {
    if CONTROL_TYPES.contains(&name) || SIGNAL_TYPES.contains(&name) {
        return true;
    }
    name.strip_prefix("alert.").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// A message read from the log, as [`Views::apply_entries_at`] takes it.
// Nearly every entry is an event: boxing it would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LogEntry {
    /// An event this build decodes: folded into the views, and recorded in the trail if
    /// it is one of its types.
    Event(Envelope),
    /// A well-formed envelope of a type this build does not know: recorded in the trail
    /// as it is (the caller decides which such messages belong there: signals).
    Unknown(RawEnvelope),
}

impl LogEntry {
    /// The event's type name.
    pub fn type_name(&self) -> &str {
        match self {
            LogEntry::Event(envelope) => envelope.event.type_name(),
            LogEntry::Unknown(raw) => &raw.type_name,
        }
    }
}

/// Which events a listing returns; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events of these types (none: every type).
    pub types: Vec<String>,
    /// Only events about this key.
    pub key_id: Option<KeyId>,
    /// Events at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Events before this time.
    pub to: Option<OffsetDateTime>,
}

/// A position in a listing of the trail: the listing continues with the events after
/// it. Its text form ([`AuditCursor::encode`], [`AuditCursor::parse`]) is opaque.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditCursor {
    time: i64,
    stream: String,
    seq: u64,
}

impl AuditCursor {
    /// The position of a listed event.
    pub fn after(event: &AuditEvent) -> AuditCursor {
        AuditCursor {
            time: millis(event.time).unwrap_or(i64::MIN),
            stream: event.stream.clone(),
            seq: event.seq,
        }
    }

    /// base64url of `v1.<time ms>.<sequence>.<stream>`.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("v1.{}.{}.{}", self.time, self.seq, self.stream))
    }

    /// A cursor [`AuditCursor::encode`] wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<AuditCursor> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(4, '.');
        if parts.next()? != "v1" {
            return None;
        }
        let time = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let stream = parts.next()?;
        if stream.is_empty() || stream.len() > 128 {
            return None;
        }
        Some(AuditCursor {
            time,
            stream: stream.to_owned(),
            seq,
        })
    }
}

impl fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// One event of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// The event's envelope id.
    pub id: Uuid,
    /// e.g. `key.suspended`, `lock.violated`.
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    /// The key the event is about, if any.
    pub key_id: Option<KeyId>,
    /// Who caused it: `operator`, `token:<id>`, `node:<name>`, …
    pub actor: String,
    /// The event's data (its current version; withheld fields removed).
    pub data: serde_json::Value,
    /// The log stream and sequence it was recorded from.
    pub stream: String,
    pub seq: u64,
}

/// A page of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub data: Vec<AuditEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<AuditCursor>,
}

/// Whether a decoded event belongs in the trail.
fn recorded(event: &Event) -> bool {
    event.aggregate().0 == AggregateKind::Signal || CONTROL_TYPES.contains(&event.type_name())
}

/// Records `envelope` (at `stream`, `seq`) if it belongs in the trail.
pub(crate) async fn record_event(
    conn: &mut AnyConnection,
    stream: &str,
    seq: u64,
    envelope: &Envelope,
) -> Result<(), ViewError> {
    if !recorded(&envelope.event) {
        return Ok(());
    }
    // The data as the log carries it: through the events' one serialization.
    let raw: RawEnvelope =
        serde_json::from_slice(&sg_events::encode(envelope)).map_err(|e| ViewError::Rejected {
            seq,
            reason: format!("event not re-readable: {e}"),
        })?;
    record(conn, stream, seq, &raw).await
}

/// Records an event of a type this build does not know.
pub(crate) async fn record_unknown(
    conn: &mut AnyConnection,
    stream: &str,
    seq: u64,
    raw: &RawEnvelope,
) -> Result<(), ViewError> {
    record(conn, stream, seq, raw).await
}

/// Removes the withheld fields from `value`, at any depth.
fn withhold(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !WITHHELD.contains(&k.as_str()));
            map.values_mut().for_each(withhold);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(withhold),
        _ => {}
    }
}

fn text_id<T: std::str::FromStr>(data: &serde_json::Value, field: &str) -> Option<T> {
    data.get(field)?.as_str()?.parse().ok()
}

async fn record(
    conn: &mut AnyConnection,
    stream: &str,
    seq: u64,
    raw: &RawEnvelope,
) -> Result<(), ViewError> {
    let reject = |reason: &str| ViewError::Rejected {
        seq,
        reason: reason.to_owned(),
    };
    // Every recorded control type names its project; a signal's aggregate is its
    // project.
    let project: Option<ProjectId> =
        text_id(&raw.data, "project_id").or_else(|| raw.aggregate_id.parse().ok());
    let Some(project) = project else {
        tracing::warn!(
            stream,
            seq,
            event_type = %raw.type_name,
            "an event for the audit trail names no project; not recorded"
        );
        return Ok(());
    };
    let key: Option<KeyId> = text_id(&raw.data, "key_id");
    let time = millis(raw.time).ok_or_else(|| reject("event time out of range"))?;
    let seq_i64 = i64::try_from(seq).map_err(|_| reject("sequence beyond the BIGINT range"))?;
    let mut data = raw.data.clone();
    withhold(&mut data);
    let data = serde_json::to_string(&data).map_err(|_| reject("data not serializable"))?;
    sqlx::query(
        "INSERT INTO audit_events (stream, seq, event_id, tenant_id, project_id, key_id, \
         event_type, event_time, actor, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT DO NOTHING",
    )
    .bind(stream)
    .bind(seq_i64)
    .bind(raw.id.to_string())
    .bind(raw.tenant_id.as_str())
    .bind(project.as_str())
    .bind(key.as_ref().map(KeyId::as_str))
    .bind(raw.type_name.as_str())
    .bind(time)
    .bind(raw.actor.0.as_str())
    .bind(data)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const AUDIT_COLUMNS: &str =
    "stream, seq, event_id, tenant_id, project_id, key_id, event_type, event_time, actor, data";

fn corrupt(what: &str) -> ViewError {
    ViewError::Other(format!("malformed {what} in the views"))
}

fn audit_row(row: &AnyRow) -> Result<AuditEvent, ViewError> {
    let id: String = row.try_get("event_id")?;
    let tenant: String = row.try_get("tenant_id")?;
    let project: String = row.try_get("project_id")?;
    let key: Option<String> = row.try_get("key_id")?;
    let time: i64 = row.try_get("event_time")?;
    let data: String = row.try_get("data")?;
    Ok(AuditEvent {
        id: id.parse().map_err(|_| corrupt("event_id"))?,
        event_type: row.try_get("event_type")?,
        time: OffsetDateTime::from_unix_timestamp_nanos(i128::from(time) * 1_000_000)
            .map_err(|_| corrupt("event_time"))?,
        tenant_id: TenantId::try_from(tenant).map_err(|_| corrupt("tenant_id"))?,
        project_id: ProjectId::try_from(project).map_err(|_| corrupt("project_id"))?,
        key_id: key
            .map(|k| KeyId::try_from(k).map_err(|_| corrupt("key_id")))
            .transpose()?,
        actor: row.try_get("actor")?,
        data: serde_json::from_str(&data).map_err(|_| corrupt("audit data"))?,
        stream: row.try_get("stream")?,
        seq: to_u64(row.try_get("seq")?, "seq")?,
    })
}

/// A value bound to a statement built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

impl Views {
    /// The project's trail matching `filter`, newest first (by time, then stream, then
    /// sequence), after `cursor` if given, at most `limit` events (at least one). Only
    /// events recorded under the project's own tenant are listed.
    pub async fn audit_events(
        &self,
        project: &ProjectId,
        filter: &AuditFilter,
        cursor: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<AuditPage, ViewError> {
        let limit = limit.max(1);
        let mut binds = vec![Bind::Text(project.as_str().to_owned())];
        let mut conditions = vec![
            "project_id = $1".to_owned(),
            "tenant_id = (SELECT tenant_id FROM projects WHERE id = $1)".to_owned(),
        ];
        let param = |binds: &mut Vec<Bind>, value: Bind| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if !filter.types.is_empty() {
            let list: Vec<String> = filter
                .types
                .iter()
                .map(|t| param(&mut binds, Bind::Text(t.clone())))
                .collect();
            conditions.push(format!("event_type IN ({})", list.join(", ")));
        }
        if let Some(key) = &filter.key_id {
            let p = param(&mut binds, Bind::Text(key.as_str().to_owned()));
            conditions.push(format!("key_id = {p}"));
        }
        let ms = |t: OffsetDateTime| {
            millis(t).ok_or_else(|| ViewError::Other("time out of range".to_owned()))
        };
        if let Some(from) = filter.from {
            let p = param(&mut binds, Bind::Int(ms(from)?));
            conditions.push(format!("event_time >= {p}"));
        }
        if let Some(to) = filter.to {
            let p = param(&mut binds, Bind::Int(ms(to)?));
            conditions.push(format!("event_time < {p}"));
        }
        if let Some(c) = cursor {
            let seq = i64::try_from(c.seq).unwrap_or(i64::MAX);
            let (t1, t2, s1, s2, q) = (
                param(&mut binds, Bind::Int(c.time)),
                param(&mut binds, Bind::Int(c.time)),
                param(&mut binds, Bind::Text(c.stream.clone())),
                param(&mut binds, Bind::Text(c.stream.clone())),
                param(&mut binds, Bind::Int(seq)),
            );
            conditions.push(format!(
                "(event_time < {t1} OR (event_time = {t2} AND \
                 (stream < {s1} OR (stream = {s2} AND seq < {q}))))"
            ));
        }
        // One more than asked: whether another page follows.
        let p = param(&mut binds, Bind::Int(i64::from(limit) + 1));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE {} \
             ORDER BY event_time DESC, stream DESC, seq DESC LIMIT {p}",
            conditions.join(" AND ")
        );
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(int) => query.bind(int),
            };
        }
        let mut data = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if data.len() > limit as usize {
            data.truncate(limit as usize);
            data.last().map(AuditCursor::after)
        } else {
            None
        };
        Ok(AuditPage { data, next_cursor })
    }

    /// The backfill of the trail `stream` still owes, as (done, through): the control
    /// events projected before the trail existed are recorded by reading the stream again
    /// up to `through` with [`Views::backfill_audit`]. `None`: nothing owed.
    pub async fn audit_backfill(&self, stream: &str) -> Result<Option<(u64, u64)>, ViewError> {
        let row = sqlx::query("SELECT done, through FROM audit_backfill WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok((
                to_u64(row.try_get("done")?, "backfill")?,
                to_u64(row.try_get("through")?, "backfill")?,
            ))
        })
        .transpose()
    }

    /// Records in the trail the events of `batch` (read from `stream` in order, after
    /// what the backfill has done) at or below its `through`, without folding them into
    /// any other view, and moves the backfill to `upto` (sequences the caller skipped
    /// count as done) in the same transaction. Once it is through, the backfill is
    /// removed. Returns what is still owed ([`Views::audit_backfill`]).
    pub async fn backfill_audit(
        &self,
        stream: &str,
        batch: &[(u64, Envelope)],
        upto: u64,
    ) -> Result<Option<(u64, u64)>, ViewError> {
        let mut tx = self.pool.begin().await?;
        lock_writer(&mut tx).await?;
        let row = sqlx::query("SELECT done, through FROM audit_backfill WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let done = to_u64(row.try_get("done")?, "backfill")?;
        let through = to_u64(row.try_get("through")?, "backfill")?;
        for (seq, envelope) in batch {
            if *seq > done && *seq <= through {
                record_event(&mut tx, stream, *seq, envelope).await?;
            }
        }
        let done = done.max(upto.min(through));
        let owed = if done >= through {
            sqlx::query("DELETE FROM audit_backfill WHERE stream = $1")
                .bind(stream)
                .execute(&mut *tx)
                .await?;
            None
        } else {
            sqlx::query("UPDATE audit_backfill SET done = $2 WHERE stream = $1")
                .bind(stream)
                .bind(i64::try_from(done).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            Some((done, through))
        };
        tx.commit().await?;
        Ok(owed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let c = AuditCursor {
            time: 1_795_947_753_500,
            stream: "SG_SIGNALS".into(),
            seq: 42,
        };
        assert_eq!(AuditCursor::parse(&c.encode()), Some(c.clone()));
        let dotted = AuditCursor {
            time: -5,
            stream: "a.b".into(),
            seq: 0,
        };
        assert_eq!(AuditCursor::parse(&dotted.encode()), Some(dotted));
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            String::new(),
            "abc".into(),
            "!!!".into(),
            c.encode()[1..].to_owned(),
            b64("v2.1.2.S"),
            b64("v1.1.2."),
            b64("v1.1.2"),
            b64("v1.x.2.S"),
            b64("v1.1.-2.S"),
        ] {
            assert_eq!(AuditCursor::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn types() {
        for t in CONTROL_TYPES.iter().chain(SIGNAL_TYPES.iter()) {
            assert!(is_audit_type(t), "{t}");
        }
        assert!(is_audit_type("alert.escalated"));
        for t in [
            "",
            "alert.",
            "alert.X",
            "key.issued",
            "usage.recorded",
            "tenant.created",
            "lock.violated,",
        ] {
            assert!(!is_audit_type(t), "{t}");
        }
    }

    #[test]
    fn withheld_fields_are_removed_at_any_depth() {
        let mut v = serde_json::json!({
            "key_id": "key_a", "key_hash": "ab", "nested": {"secret": {"ciphertext": "x"}, "keep": 1},
            "list": [{"api_key": "y", "url": "https://hooks.example"}]
        });
        withhold(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"key_id": "key_a", "nested": {"keep": 1}, "list": [{"url": "https://hooks.example"}]})
        );
    }
}
