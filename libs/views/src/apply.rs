//! Folding events into the views.
//!
//! Control events are applied one by one. Usage events are applied in runs: the
//! requests are inserted first (the request id is the primary key, so a request stored
//! twice is inserted once), then those actually inserted are aggregated in memory
//! ([`crate::rollup`]) and each rollup row the run touches is written with one upsert.
//! Budgets whose spend or limits changed are then checked for signals due
//! ([`crate::signals`]), in the same transaction. Every event the audit trail records
//! ([`crate::audit`]) is recorded there as it is applied, also in the same transaction.

use std::collections::{BTreeSet, HashMap, HashSet};

use sg_events::{Envelope, Event, LimitsData, RawEnvelope, UsageRecordedV4};
use sqlx::{Any, AnyConnection, Row as _, Transaction};
use time::OffsetDateTime;

use crate::audit::{self, LogEntry};
use crate::budget::Scope;
use crate::rollup::{
    HourKey, HourTotals, RequestFacts, Rollup, decode_histogram, encode_histogram, merge,
};
use crate::{ViewError, Views};

/// Budgets to check after a batch: (scope, id).
pub(crate) type Touched = BTreeSet<(Scope, String)>;

/// A message of a batch, borrowed.
#[derive(Clone, Copy)]
enum Item<'a> {
    Event(&'a Envelope),
    /// A type this build does not know: recorded in the audit trail only.
    Unknown(&'a RawEnvelope),
}

fn events(batch: &[(u64, Envelope)]) -> Vec<(u64, Item<'_>)> {
    batch
        .iter()
        .map(|(seq, e)| (*seq, Item::Event(e)))
        .collect()
}

impl Views {
    /// The last sequence of `stream` applied to the views (0 if none).
    pub async fn checkpoint(&self, stream: &str) -> Result<u64, ViewError> {
        let row = sqlx::query("SELECT seq FROM projector_checkpoints WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(0),
            Some(row) => to_u64(row.try_get::<i64, _>("seq")?, "checkpoint"),
        }
    }

    /// Applies one stream's events in ONE transaction: reads the stream's checkpoint,
    /// applies the events with a greater sequence in sequence order, stores the new
    /// checkpoint and commits. Returns the checkpoint after the batch. On any error
    /// nothing of the batch is written.
    pub async fn apply_batch(
        &self,
        stream: &str,
        batch: &[(u64, Envelope)],
    ) -> Result<u64, ViewError> {
        let through = batch.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        self.apply_batch_through(stream, batch, through).await
    }

    /// Like [`Views::apply_batch`], and moves the checkpoint to at least `through` even
    /// if no event of the batch carries that sequence: sequences the caller skipped
    /// (events it could not decode, messages gone from the log) count as applied.
    pub async fn apply_batch_through(
        &self,
        stream: &str,
        batch: &[(u64, Envelope)],
        through: u64,
    ) -> Result<u64, ViewError> {
        self.apply(
            stream,
            None,
            events(batch),
            through,
            OffsetDateTime::now_utc(),
        )
        .await
    }

    /// Like [`Views::apply_batch_through`], for a caller that knows the views already
    /// hold everything up to `applied`: if the stored checkpoint is lower (the database
    /// lost committed transactions: a crash without synchronous commit, a failover to a
    /// lagging replica, a restore from backup), nothing is written and the answer is
    /// [`ViewError::CheckpointBehind`], so the caller can re-read the missing events
    /// instead of jumping over them.
    pub async fn apply_batch_after(
        &self,
        stream: &str,
        applied: u64,
        batch: &[(u64, Envelope)],
        through: u64,
    ) -> Result<u64, ViewError> {
        self.apply(
            stream,
            Some(applied),
            events(batch),
            through,
            OffsetDateTime::now_utc(),
        )
        .await
    }

    /// The general form of the `apply_batch` methods: `applied` is the precondition of
    /// [`Views::apply_batch_after`] (`None`: none), and `now` the time budget signals
    /// are derived at (the budgets' current windows).
    pub async fn apply_batch_at(
        &self,
        stream: &str,
        applied: Option<u64>,
        batch: &[(u64, Envelope)],
        through: u64,
        now: OffsetDateTime,
    ) -> Result<u64, ViewError> {
        self.apply(stream, applied, events(batch), through, now)
            .await
    }

    /// Like [`Views::apply_batch_at`], for messages as the projector reads them: events
    /// this build decodes, and signals of types it does not know, which are recorded in
    /// the audit trail only ([`LogEntry::Unknown`]).
    pub async fn apply_entries_at(
        &self,
        stream: &str,
        applied: Option<u64>,
        batch: &[(u64, LogEntry)],
        through: u64,
        now: OffsetDateTime,
    ) -> Result<u64, ViewError> {
        let items = batch
            .iter()
            .map(|(seq, entry)| {
                let item = match entry {
                    LogEntry::Event(e) => Item::Event(e),
                    LogEntry::Unknown(raw) => Item::Unknown(raw),
                };
                (*seq, item)
            })
            .collect();
        self.apply(stream, applied, items, through, now).await
    }

    async fn apply(
        &self,
        stream: &str,
        applied: Option<u64>,
        mut events: Vec<(u64, Item<'_>)>,
        through: u64,
        now: OffsetDateTime,
    ) -> Result<u64, ViewError> {
        events.sort_by_key(|(seq, _)| *seq);

        let mut tx: Transaction<'static, Any> = self.pool.begin().await?;
        // Writes first: they take the row locks on PostgreSQL and the write lock on
        // SQLite before anything is read, so concurrent batches serialize (of one
        // stream, and across streams: see `lock_writer`) and a SQLite read snapshot
        // never has to be upgraded.
        lock_writer(&mut tx).await?;
        let start: i64 = sqlx::query(
            "INSERT INTO projector_checkpoints (stream, seq) VALUES ($1, 0) \
             ON CONFLICT (stream) DO UPDATE SET seq = projector_checkpoints.seq \
             RETURNING seq",
        )
        .bind(stream)
        .fetch_one(&mut *tx)
        .await?
        .try_get("seq")?;
        let start = to_u64(start, "checkpoint")?;
        if let Some(expected) = applied
            && start < expected
        {
            return Err(ViewError::CheckpointBehind {
                stored: start,
                expected,
            });
        }

        let mut checkpoint = start;
        let mut touched = Touched::new();
        // Consecutive usage events, applied together.
        let mut usage: Vec<(u64, &Envelope, &UsageRecordedV4)> = Vec::new();
        for (seq, item) in events {
            if seq <= checkpoint {
                continue;
            }
            if let Item::Event(envelope) = item
                && let Event::UsageRecorded(d) = &envelope.event
            {
                usage.push((seq, envelope, d));
            } else {
                if !usage.is_empty() {
                    apply_usage(&mut tx, &usage, &mut touched).await?;
                    usage.clear();
                }
                match item {
                    Item::Event(envelope) => {
                        apply_event(&mut tx, seq, envelope, &mut touched).await?;
                        audit::record_event(&mut tx, stream, seq, envelope).await?;
                    }
                    Item::Unknown(raw) => {
                        audit::record_unknown(&mut tx, stream, seq, raw).await?;
                    }
                }
            }
            checkpoint = seq;
        }
        if !usage.is_empty() {
            apply_usage(&mut tx, &usage, &mut touched).await?;
        }
        if !touched.is_empty() {
            let now_ms = millis(now)
                .and_then(|ms| u64::try_from(ms).ok())
                .ok_or_else(|| ViewError::Other("the clock is out of range".to_owned()))?;
            crate::signals::derive(&mut tx, &touched, now_ms).await?;
        }
        let checkpoint = checkpoint.max(through);
        if checkpoint != start {
            let seq = i64::try_from(checkpoint).map_err(|_| ViewError::Rejected {
                seq: checkpoint,
                reason: "sequence beyond the BIGINT range".to_owned(),
            })?;
            sqlx::query("UPDATE projector_checkpoints SET seq = $2 WHERE stream = $1")
                .bind(stream)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(checkpoint)
    }
}

/// Takes the views' writer lock for the rest of the transaction. Batches of different
/// streams would otherwise race where they meet: on PostgreSQL a key issued in one
/// transaction and its first requests recorded in another, concurrent one would each miss
/// the other's uncommitted rows (the key's last use lost), and a budget changed beside
/// spend recorded would be checked against neither.
pub(crate) async fn lock_writer(conn: &mut AnyConnection) -> Result<(), ViewError> {
    sqlx::query("UPDATE views_writer SET id = id WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Applies one event inside the batch's transaction.
async fn apply_event(
    conn: &mut AnyConnection,
    seq: u64,
    envelope: &Envelope,
    touched: &mut Touched,
) -> Result<(), ViewError> {
    let reject = |reason: &str| ViewError::Rejected {
        seq,
        reason: reason.to_owned(),
    };
    let time = millis(envelope.time).ok_or_else(|| reject("event time out of range"))?;
    let tenant = envelope.tenant_id.as_str();
    match &envelope.event {
        Event::TenantCreated(d) => {
            sqlx::query(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(tenant)
            .bind(d.name.as_str())
            .bind(time)
            .execute(&mut *conn)
            .await?;
        }
        Event::ProjectCreated(d) => {
            sqlx::query(
                "INSERT INTO projects (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(d.project_id.as_str())
            .bind(tenant)
            .bind(d.name.as_str())
            .bind(time)
            .execute(&mut *conn)
            .await?;
            let project = d.project_id.as_str();
            let limits = LimitsData::default();
            set_limits(
                conn,
                seq,
                Scope::Project,
                project,
                tenant,
                project,
                &limits,
                false,
            )
            .await?;
        }
        Event::ConnectionCreated(d) => {
            // The sealed api_key is deliberately not projected.
            sqlx::query(
                "INSERT INTO connections (id, tenant_id, project_id, provider, name, base_url, \
                 openai_organization, openai_project, api_version, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(d.connection_id.as_str())
            .bind(tenant)
            .bind(d.project_id.as_str())
            .bind(d.provider.as_str())
            .bind(d.name.as_str())
            .bind(d.base_url.as_deref())
            .bind(d.openai_organization.as_deref())
            .bind(d.openai_project.as_deref())
            .bind(d.api_version.as_deref())
            .bind(time)
            .execute(&mut *conn)
            .await?;
        }
        Event::KeyIssued(d) => {
            let connection_ids = serde_json::to_string(&d.connection_ids)
                .map_err(|_| reject("connection ids not serializable"))?;
            let allowed_models = d
                .locks
                .models
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|_| reject("allowed models not serializable"))?;
            // Usage may have been projected before the key (the streams are independent):
            // start from the requests already recorded.
            sqlx::query(
                "INSERT INTO keys (id, tenant_id, project_id, name, hint, status, created_at, \
                 revoked_at, revoke_reason, last_used_at, connection_ids, allowed_models) \
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, NULL, NULL, \
                 (SELECT MAX(started_at) FROM requests WHERE key_id = $1), $7, $8) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(d.key_id.as_str())
            .bind(tenant)
            .bind(d.project_id.as_str())
            .bind(d.name.as_str())
            .bind(d.hint.as_str())
            .bind(time)
            .bind(connection_ids)
            .bind(allowed_models)
            .execute(&mut *conn)
            .await?;
            let (key, project) = (d.key_id.as_str(), d.project_id.as_str());
            if set_limits(
                conn,
                seq,
                Scope::Key,
                key,
                tenant,
                project,
                &d.limits,
                false,
            )
            .await?
            {
                touched.insert((Scope::Key, key.to_owned()));
            }
        }
        Event::KeyLimitsSet(d) => {
            let (key, project) = (d.key_id.as_str(), d.project_id.as_str());
            set_limits(conn, seq, Scope::Key, key, tenant, project, &d.limits, true).await?;
            touched.insert((Scope::Key, key.to_owned()));
        }
        Event::ProjectLimitsSet(d) => {
            let project = d.project_id.as_str();
            set_limits(
                conn,
                seq,
                Scope::Project,
                project,
                tenant,
                project,
                &d.limits,
                true,
            )
            .await?;
            touched.insert((Scope::Project, project.to_owned()));
        }
        Event::KeyRevoked(d) => {
            sqlx::query(
                "UPDATE keys SET status = 'revoked', revoked_at = $2, revoke_reason = $3 \
                 WHERE id = $1 AND status = 'active'",
            )
            .bind(d.key_id.as_str())
            .bind(time)
            .bind(d.reason.as_deref())
            .execute(&mut *conn)
            .await?;
        }
        Event::UsageRecorded(d) => {
            apply_usage(conn, &[(seq, envelope, d)], touched).await?;
        }
        // The credential is not part of the views.
        Event::ConnectionKeyRotated(_) | Event::ConnectionKeyRewrapped(_) => {}
        Event::KeyLocksSet(d) => {
            let allowed_models = d
                .locks
                .models
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|_| reject("allowed models not serializable"))?;
            sqlx::query("UPDATE keys SET allowed_models = $1 WHERE id = $2")
                .bind(allowed_models)
                .bind(d.key_id.as_str())
                .execute(&mut *conn)
                .await?;
        }
        Event::KeyRotated(d) => {
            // The new key: the old one's name, connections, models and limits.
            sqlx::query(
                "INSERT INTO keys (id, tenant_id, project_id, name, hint, status, created_at, \
                 revoked_at, revoke_reason, last_used_at, connection_ids, allowed_models) \
                 SELECT $1, tenant_id, project_id, name, $2, 'active', $3, NULL, NULL, \
                 (SELECT MAX(started_at) FROM requests WHERE key_id = $1), connection_ids, \
                 allowed_models FROM keys WHERE id = $4 ON CONFLICT (id) DO NOTHING",
            )
            .bind(d.new_key_id.as_str())
            .bind(d.hint.as_str())
            .bind(time)
            .bind(d.key_id.as_str())
            .execute(&mut *conn)
            .await?;
            let written = sqlx::query(
                "INSERT INTO limits (scope, id, tenant_id, project_id, limits_json, \
                 budget_micros, budget_period) SELECT scope, $1, tenant_id, project_id, \
                 limits_json, budget_micros, budget_period FROM limits \
                 WHERE scope = $2 AND id = $3 ON CONFLICT (scope, id) DO NOTHING",
            )
            .bind(d.new_key_id.as_str())
            .bind(Scope::Key.as_str())
            .bind(d.key_id.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if written > 0 {
                touched.insert((Scope::Key, d.new_key_id.as_str().to_owned()));
            }
        }
        // Plans and admin tokens are read from the control state.
        Event::TenantPlanSet(_)
        | Event::PlanDefined(_)
        | Event::TokenIssued(_)
        | Event::TokenRevoked(_) => {}
        // Bindings, prices and the model registry live in the control state; signals
        // (and suspensions, bindings, abuse and alert settings) are only recorded in the
        // audit trail (`crate::audit`; budget signals are derived here, see
        // `crate::signals`).
        Event::KeyBound(_)
        | Event::KeyUnbound(_)
        | Event::PriceSet(_)
        | Event::PriceRemoved(_)
        | Event::BudgetThreshold(_)
        | Event::BudgetReset(_)
        | Event::LockViolated(_)
        | Event::ModelRouted(_)
        | Event::ModelUnrouted(_)
        | Event::KeySuspended(_)
        | Event::KeyResumed(_)
        | Event::ProjectAbuseSet(_)
        | Event::ProjectAlertsSet(_)
        | Event::AlertRaised(_)
        | Event::AlertDelivered(_) => {}
    }
    Ok(())
}

/// Stores the limits of a project or key; `replace`: over earlier ones (a
/// `*.limits_set`), else only if none are stored (creation). Whether anything was written.
#[allow(clippy::too_many_arguments)]
async fn set_limits(
    conn: &mut AnyConnection,
    seq: u64,
    scope: Scope,
    id: &str,
    tenant: &str,
    project: &str,
    limits: &LimitsData,
    replace: bool,
) -> Result<bool, ViewError> {
    let json = serde_json::to_string(limits).map_err(|_| ViewError::Rejected {
        seq,
        reason: "limits not serializable".to_owned(),
    })?;
    let budget = sg_spend::Limits::from(*limits).budget;
    let micros = budget
        .map(|b| {
            i64::try_from(b.micros).map_err(|_| ViewError::Rejected {
                seq,
                reason: "budget beyond the BIGINT range".to_owned(),
            })
        })
        .transpose()?;
    let conflict = if replace {
        "ON CONFLICT (scope, id) DO UPDATE SET limits_json = excluded.limits_json, \
         budget_micros = excluded.budget_micros, budget_period = excluded.budget_period"
    } else {
        "ON CONFLICT (scope, id) DO NOTHING"
    };
    let written = sqlx::query(&format!(
        "INSERT INTO limits (scope, id, tenant_id, project_id, limits_json, budget_micros, \
         budget_period) VALUES ($1, $2, $3, $4, $5, $6, $7) {conflict}"
    ))
    .bind(scope.as_str())
    .bind(id)
    .bind(tenant)
    .bind(project)
    .bind(json)
    .bind(micros)
    .bind(budget.map(|b| b.period.as_str()))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written > 0)
}

/// One usage event, checked to fit the views.
struct Checked<'a> {
    seq: i64,
    tenant: &'a str,
    d: &'a UsageRecordedV4,
    facts: RequestFacts<'a>,
}

impl<'a> Checked<'a> {
    fn of(seq: u64, envelope: &'a Envelope, d: &'a UsageRecordedV4) -> Result<Self, ViewError> {
        let fit = |value: u64, what: &str| {
            i64::try_from(value).map_err(|_| ViewError::Rejected {
                seq,
                reason: format!("{what} beyond the BIGINT range"),
            })
        };
        fit(d.latency_us, "latency_us")?;
        let tenant = envelope.tenant_id.as_str();
        Ok(Checked {
            seq: fit(seq, "sequence")?,
            tenant,
            d,
            facts: RequestFacts {
                tenant_id: tenant,
                project_id: d.project_id.as_str(),
                key_id: d.key_id.as_str(),
                model: d.model.as_deref().unwrap_or(""),
                started_at: millis(d.started_at).ok_or_else(|| ViewError::Rejected {
                    seq,
                    reason: "started_at out of range".to_owned(),
                })?,
                error: d.status >= 400,
                prompt_tokens: fit(d.prompt_tokens, "prompt_tokens")?,
                cached_prompt_tokens: fit(d.cached_prompt_tokens, "cached_prompt_tokens")?,
                completion_tokens: fit(d.completion_tokens, "completion_tokens")?,
                total_tokens: fit(d.total_tokens, "total_tokens")?,
                cost_micros: fit(d.cost_micros, "cost_micros")?,
                priced: d.priced,
                latency_us: d.latency_us,
            },
        })
    }
}

/// Columns of `requests` written per request.
const REQUEST_INSERT_COLUMNS: &str = "request_id, tenant_id, project_id, key_id, \
     connection_id, provider, model, endpoint, status, streamed, prompt_tokens, \
     cached_prompt_tokens, completion_tokens, total_tokens, cost_micros, priced, latency_us, \
     started_at, node, seq, request_bytes, response_bytes";
const REQUEST_INSERT_WIDTH: usize = 22;
/// Requests per multi-row insert (far below both databases' limits on parameters).
const REQUEST_INSERT_ROWS: usize = 50;
/// The same on SQLite, where binding is quadratic in a statement's `$N` parameters
/// (each `sqlite3_bind_parameter_name` walks the statement's list of names): 50 rows of
/// 22 cost more to bind than to insert, 5 rows keep one round trip per few requests.
const SQLITE_REQUEST_INSERT_ROWS: usize = 5;

/// Rows per multi-row statement on `conn`'s database.
fn rows_per_statement(conn: &AnyConnection) -> usize {
    if conn.backend_name() == "SQLite" {
        SQLITE_REQUEST_INSERT_ROWS
    } else {
        REQUEST_INSERT_ROWS
    }
}

/// Applies a run of usage events (in sequence order): records each request once, and
/// counts only those recorded now.
async fn apply_usage(
    conn: &mut AnyConnection,
    events: &[(u64, &Envelope, &UsageRecordedV4)],
    touched: &mut Touched,
) -> Result<(), ViewError> {
    let mut checked = Vec::with_capacity(events.len());
    let mut ids = HashSet::with_capacity(events.len());
    for (seq, envelope, d) in events {
        let c = Checked::of(*seq, envelope, d)?;
        // The first event of a request in the run wins, as in separate batches.
        if ids.insert(d.request_id) {
            checked.push(c);
        }
    }

    let mut inserted: HashSet<String> = HashSet::with_capacity(checked.len());
    let rows_per_insert = rows_per_statement(conn);
    for chunk in checked.chunks(rows_per_insert) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|r| {
                let params: Vec<String> = (1..=REQUEST_INSERT_WIDTH)
                    .map(|c| format!("${}", r * REQUEST_INSERT_WIDTH + c))
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO requests ({REQUEST_INSERT_COLUMNS}) VALUES {} \
             ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for c in chunk {
            let (d, f) = (c.d, &c.facts);
            query = query
                .bind(d.request_id.to_string())
                .bind(c.tenant)
                .bind(f.project_id)
                .bind(f.key_id)
                .bind(d.connection_id.as_ref().map(|c| c.as_str()))
                .bind(d.provider.map(|p| p.as_str()))
                .bind(d.model.as_deref())
                .bind(d.endpoint.as_str())
                .bind(i64::from(d.status))
                .bind(i64::from(d.streamed))
                .bind(f.prompt_tokens)
                .bind(f.cached_prompt_tokens)
                .bind(f.completion_tokens)
                .bind(f.total_tokens)
                .bind(f.cost_micros)
                .bind(i64::from(f.priced))
                .bind(i64::try_from(f.latency_us).unwrap_or(i64::MAX))
                .bind(f.started_at)
                .bind(d.node.as_str())
                .bind(c.seq)
                .bind(i64::try_from(d.request_bytes).unwrap_or(i64::MAX))
                .bind(i64::try_from(d.response_bytes).unwrap_or(i64::MAX));
        }
        for row in query.fetch_all(&mut *conn).await? {
            inserted.insert(row.try_get::<String, _>("request_id")?);
        }
    }

    let mut rollup = Rollup::default();
    for c in &checked {
        if inserted.contains(&c.d.request_id.to_string()) {
            rollup.add(&c.facts)?;
            touched.insert((Scope::Project, c.facts.project_id.to_owned()));
            touched.insert((Scope::Key, c.facts.key_id.to_owned()));
        } else {
            tracing::debug!(seq = c.seq, "request already recorded; usage unchanged");
        }
    }
    write_rollup(conn, rollup).await
}

/// Writes a batch's rollup: its rows upserted many per statement, keys' last use one
/// statement per key.
async fn write_rollup(conn: &mut AnyConnection, rollup: Rollup) -> Result<(), ViewError> {
    let per_statement = rows_per_statement(conn);
    // Histograms merge in Rust: read the stored ones (many rows per statement), add,
    // write the sums.
    let mut hourly: Vec<(HourKey, HourTotals)> = rollup.hourly.into_iter().collect();
    for chunk in hourly.chunks_mut(per_statement) {
        let conditions: Vec<String> = (0..chunk.len())
            .map(|r| {
                let n = r * 4;
                format!(
                    "(project_id = ${} AND hour = ${} AND key_id = ${} AND model = ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4
                )
            })
            .collect();
        let sql = format!(
            "SELECT project_id, hour, key_id, model, latency_hist FROM usage_hourly WHERE {}",
            conditions.join(" OR ")
        );
        let mut query = sqlx::query(&sql);
        for (k, _) in chunk.iter() {
            query = query
                .bind(k.project_id.as_str())
                .bind(k.hour)
                .bind(k.key_id.as_str())
                .bind(k.model.as_str());
        }
        let mut stored: HashMap<(String, i64, String, String), String> = HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            stored.insert(
                (
                    row.try_get("project_id")?,
                    row.try_get("hour")?,
                    row.try_get("key_id")?,
                    row.try_get("model")?,
                ),
                row.try_get("latency_hist")?,
            );
        }
        for (k, v) in chunk.iter_mut() {
            let id = (
                k.project_id.clone(),
                k.hour,
                k.key_id.clone(),
                k.model.clone(),
            );
            if let Some(stored) = stored.get(&id) {
                merge(&mut v.latency, &decode_histogram(stored)?)?;
            }
        }
    }
    let histograms: Vec<String> = hourly
        .iter()
        .map(|(_, v)| encode_histogram(&v.latency))
        .collect::<Result<_, _>>()?;
    let rows: Vec<Vec<Val<'_>>> = hourly
        .iter()
        .zip(&histograms)
        .map(|((k, v), hist)| {
            vec![
                Val::Text(&k.project_id),
                Val::Int(k.hour),
                Val::Text(&k.key_id),
                Val::Text(&k.model),
                Val::Text(&v.tenant_id),
                Val::Int(v.requests),
                Val::Int(v.errors),
                Val::Int(v.prompt_tokens),
                Val::Int(v.cached_prompt_tokens),
                Val::Int(v.completion_tokens),
                Val::Int(v.total_tokens),
                Val::Int(v.cost_micros),
                Val::Int(v.unpriced_requests),
                Val::Text(hist),
            ]
        })
        .collect();
    insert_many(
        conn,
        "INSERT INTO usage_hourly (project_id, hour, key_id, model, tenant_id, requests, \
         errors, prompt_tokens, cached_prompt_tokens, completion_tokens, total_tokens, \
         cost_micros, unpriced_requests, latency_hist)",
        "ON CONFLICT (project_id, hour, key_id, model) DO UPDATE SET \
         requests = usage_hourly.requests + excluded.requests, \
         errors = usage_hourly.errors + excluded.errors, \
         prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens, \
         cached_prompt_tokens = usage_hourly.cached_prompt_tokens + excluded.cached_prompt_tokens, \
         completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens, \
         total_tokens = usage_hourly.total_tokens + excluded.total_tokens, \
         cost_micros = usage_hourly.cost_micros + excluded.cost_micros, \
         unpriced_requests = usage_hourly.unpriced_requests + excluded.unpriced_requests, \
         latency_hist = excluded.latency_hist",
        &rows,
    )
    .await?;

    // The minute and spend rows: many per statement (each row once per batch, as the
    // rollup is keyed by their primary keys).
    let minutes: Vec<Vec<Val<'_>>> = rollup
        .minutes
        .iter()
        .map(|(k, v)| {
            vec![
                Val::Text(&k.project_id),
                Val::Int(k.minute),
                Val::Text(&k.key_id),
                Val::Text(&v.tenant_id),
                Val::Int(v.requests),
                Val::Int(v.total_tokens),
                Val::Int(v.cost_micros),
            ]
        })
        .collect();
    insert_many(
        conn,
        "INSERT INTO usage_minute (project_id, minute, key_id, tenant_id, requests, \
         total_tokens, cost_micros)",
        "ON CONFLICT (project_id, minute, key_id) DO UPDATE SET \
         requests = usage_minute.requests + excluded.requests, \
         total_tokens = usage_minute.total_tokens + excluded.total_tokens, \
         cost_micros = usage_minute.cost_micros + excluded.cost_micros",
        &minutes,
    )
    .await?;
    let spend: Vec<Vec<Val<'_>>> = rollup
        .spend
        .iter()
        .map(|(k, v)| {
            vec![
                Val::Text(k.scope.as_str()),
                Val::Text(&k.id),
                Val::Text(k.period),
                Val::Text(&k.window),
                Val::Text(&v.tenant_id),
                Val::Text(&v.project_id),
                Val::Int(v.cost_micros),
                Val::Int(v.requests),
            ]
        })
        .collect();
    insert_many(
        conn,
        "INSERT INTO spend (scope, id, period, window_id, tenant_id, project_id, \
         cost_micros, requests)",
        "ON CONFLICT (scope, id, period, window_id) DO UPDATE SET \
         cost_micros = spend.cost_micros + excluded.cost_micros, \
         requests = spend.requests + excluded.requests",
        &spend,
    )
    .await?;

    for (key, started_at) in rollup.last_used {
        sqlx::query(
            "UPDATE keys SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(key.as_str())
        .bind(started_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
/// A value bound into [`insert_many`]'s statements.
enum Val<'a> {
    Text(&'a str),
    Int(i64),
}

/// `head VALUES (…), (…) tail` for `rows` (all of one width), [`rows_per_statement`]
/// rows per statement.
async fn insert_many(
    conn: &mut AnyConnection,
    head: &str,
    tail: &str,
    rows: &[Vec<Val<'_>>],
) -> Result<(), ViewError> {
    let per_statement = rows_per_statement(conn);
    for chunk in rows.chunks(per_statement) {
        let mut n = 0;
        let values: Vec<String> = chunk
            .iter()
            .map(|row| {
                let params: Vec<String> = row
                    .iter()
                    .map(|_| {
                        n += 1;
                        format!("${n}")
                    })
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!("{head} VALUES {} {tail}", values.join(", "));
        let mut query = sqlx::query(&sql);
        for value in chunk.iter().flatten() {
            query = match value {
                Val::Text(s) => query.bind(*s),
                Val::Int(i) => query.bind(*i),
            };
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Unix milliseconds of a time, if it fits a `BIGINT`.
pub(crate) fn millis(time: OffsetDateTime) -> Option<i64> {
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, ViewError> {
    u64::try_from(value).map_err(|_| ViewError::Other(format!("negative {what} in the views")))
}
