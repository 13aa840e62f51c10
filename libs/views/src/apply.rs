//! Folding events into the views.

use sg_events::{Envelope, Event, UsageRecordedV2};
use sqlx::{Any, AnyConnection, Row as _, Transaction};
use time::OffsetDateTime;

use crate::{ViewError, Views};

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
        self.apply(stream, None, batch, through).await
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
        self.apply(stream, Some(applied), batch, through).await
    }

    async fn apply(
        &self,
        stream: &str,
        applied: Option<u64>,
        batch: &[(u64, Envelope)],
        through: u64,
    ) -> Result<u64, ViewError> {
        let mut events: Vec<&(u64, Envelope)> = batch.iter().collect();
        events.sort_by_key(|(seq, _)| *seq);

        let mut tx: Transaction<'static, Any> = self.pool.begin().await?;
        // A write first: it takes the row lock on PostgreSQL and the write lock on
        // SQLite before anything is read, so concurrent batches of one stream serialize
        // and a SQLite read snapshot never has to be upgraded.
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
        for (seq, envelope) in events {
            if *seq <= checkpoint {
                continue;
            }
            apply_event(&mut tx, *seq, envelope).await?;
            checkpoint = *seq;
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

/// Applies one event inside the batch's transaction.
async fn apply_event(
    conn: &mut AnyConnection,
    seq: u64,
    envelope: &Envelope,
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
        }
        Event::ConnectionCreated(d) => {
            // The sealed api_key is deliberately not projected.
            sqlx::query(
                "INSERT INTO connections (id, tenant_id, project_id, provider, name, base_url, \
                 openai_organization, openai_project, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
            )
            .bind(d.connection_id.as_str())
            .bind(tenant)
            .bind(d.project_id.as_str())
            .bind(d.provider.as_str())
            .bind(d.name.as_str())
            .bind(d.base_url.as_deref())
            .bind(d.openai_organization.as_deref())
            .bind(d.openai_project.as_deref())
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
            // start from what the usage counters already saw.
            sqlx::query(
                "INSERT INTO keys (id, tenant_id, project_id, name, hint, status, created_at, \
                 revoked_at, revoke_reason, last_used_at, connection_ids, allowed_models) \
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, NULL, NULL, \
                 (SELECT last_used_at FROM key_usage WHERE key_id = $1), $7, $8) \
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
        Event::UsageRecorded(d) => apply_usage(conn, seq, tenant, d).await?,
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
        // Bindings live in the control state; signals are not projected.
        // Bindings and the model registry live in the control state; signals are not
        // projected.
        Event::KeyBound(_)
        | Event::KeyUnbound(_)
        | Event::KeyLimitsSet(_)
        | Event::ProjectLimitsSet(_)
        | Event::PriceSet(_)
        | Event::PriceRemoved(_)
        | Event::BudgetThreshold(_)
        | Event::BudgetReset(_)
        | Event::LockViolated(_)
        | Event::ModelRouted(_)
        | Event::ModelUnrouted(_) => {}
    }
    Ok(())
}

/// The numbers of one usage event, checked to fit SQL `BIGINT`s.
struct UsageNumbers {
    error: i64,
    prompt: i64,
    completion: i64,
    total: i64,
    latency_us: i64,
    started_at: i64,
    seq: i64,
}

impl UsageNumbers {
    fn of(seq: u64, d: &UsageRecordedV2) -> Result<Self, ViewError> {
        let fit = |value: u64, what: &str| {
            i64::try_from(value).map_err(|_| ViewError::Rejected {
                seq,
                reason: format!("{what} beyond the BIGINT range"),
            })
        };
        Ok(UsageNumbers {
            error: i64::from(d.status >= 400),
            prompt: fit(d.prompt_tokens, "prompt_tokens")?,
            completion: fit(d.completion_tokens, "completion_tokens")?,
            total: fit(d.total_tokens, "total_tokens")?,
            latency_us: fit(d.latency_us, "latency_us")?,
            started_at: millis(d.started_at).ok_or_else(|| ViewError::Rejected {
                seq,
                reason: "started_at out of range".to_owned(),
            })?,
            seq: fit(seq, "sequence")?,
        })
    }
}

/// Records one request; the counters move only if the request id was not seen before.
async fn apply_usage(
    conn: &mut AnyConnection,
    seq: u64,
    tenant: &str,
    d: &UsageRecordedV2,
) -> Result<(), ViewError> {
    let n = UsageNumbers::of(seq, d)?;
    let inserted = sqlx::query(
        "INSERT INTO requests (request_id, tenant_id, project_id, key_id, connection_id, \
         provider, model, endpoint, status, streamed, prompt_tokens, completion_tokens, \
         total_tokens, latency_us, started_at, node, seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(d.request_id.to_string())
    .bind(tenant)
    .bind(d.project_id.as_str())
    .bind(d.key_id.as_str())
    .bind(d.connection_id.as_ref().map(|c| c.as_str()))
    .bind(d.provider.map(|p| p.as_str()))
    .bind(d.model.as_deref())
    .bind(d.endpoint.as_str())
    .bind(i64::from(d.status))
    .bind(i64::from(d.streamed))
    .bind(n.prompt)
    .bind(n.completion)
    .bind(n.total)
    .bind(n.latency_us)
    .bind(n.started_at)
    .bind(d.node.as_str())
    .bind(n.seq)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        tracing::debug!(seq, "request already recorded; usage counters unchanged");
        return Ok(());
    }

    sqlx::query(
        "INSERT INTO key_usage (key_id, tenant_id, project_id, requests, errors, prompt_tokens, \
         completion_tokens, total_tokens, latency_us_sum, last_used_at) \
         VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (key_id) DO UPDATE SET \
         requests = key_usage.requests + 1, \
         errors = key_usage.errors + excluded.errors, \
         prompt_tokens = key_usage.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = key_usage.completion_tokens + excluded.completion_tokens, \
         total_tokens = key_usage.total_tokens + excluded.total_tokens, \
         latency_us_sum = key_usage.latency_us_sum + excluded.latency_us_sum, \
         last_used_at = CASE WHEN excluded.last_used_at > key_usage.last_used_at \
         THEN excluded.last_used_at ELSE key_usage.last_used_at END",
    )
    .bind(d.key_id.as_str())
    .bind(tenant)
    .bind(d.project_id.as_str())
    .bind(n.error)
    .bind(n.prompt)
    .bind(n.completion)
    .bind(n.total)
    .bind(n.latency_us)
    .bind(n.started_at)
    .execute(&mut *conn)
    .await?;

    sqlx::query(
        "INSERT INTO project_usage (project_id, tenant_id, requests, errors, prompt_tokens, \
         completion_tokens, total_tokens, latency_us_sum, last_used_at) \
         VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (project_id) DO UPDATE SET \
         requests = project_usage.requests + 1, \
         errors = project_usage.errors + excluded.errors, \
         prompt_tokens = project_usage.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = project_usage.completion_tokens + excluded.completion_tokens, \
         total_tokens = project_usage.total_tokens + excluded.total_tokens, \
         latency_us_sum = project_usage.latency_us_sum + excluded.latency_us_sum, \
         last_used_at = CASE WHEN excluded.last_used_at > project_usage.last_used_at \
         THEN excluded.last_used_at ELSE project_usage.last_used_at END",
    )
    .bind(d.project_id.as_str())
    .bind(tenant)
    .bind(n.error)
    .bind(n.prompt)
    .bind(n.completion)
    .bind(n.total)
    .bind(n.latency_us)
    .bind(n.started_at)
    .execute(&mut *conn)
    .await?;

    sqlx::query(
        "UPDATE keys SET last_used_at = $2 \
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
    )
    .bind(d.key_id.as_str())
    .bind(n.started_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Unix milliseconds of a time, if it fits a `BIGINT`.
pub(crate) fn millis(time: OffsetDateTime) -> Option<i64> {
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, ViewError> {
    u64::try_from(value).map_err(|_| ViewError::Other(format!("negative {what} in the views")))
}
