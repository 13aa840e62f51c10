//! Budget signals, the I/O side: derived inside the transaction that changed a budget's
//! spend or limits (so a signal is recorded exactly when its cause is), kept in the
//! `budget_signals` outbox, and handed to the projector to append to the signals stream
//! after the commit. A row stays pending until the log acknowledged its append, so a
//! crash between the commit and the append loses nothing: the append is retried, with
//! the signal's id as the log's message id.

use sg_events::{
    Actor, BudgetResetV1, BudgetThresholdV1, Envelope, Event, KeyId, ProjectId, TenantId,
};
use sg_spend::{Budget, Period};
use sha2::{Digest as _, Sha256};
use sqlx::{AnyConnection, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{Touched, lock_writer, millis, to_u64};
use crate::budget::{self, Owner, Scope, SignalKind};
use crate::{ViewError, Views};

/// A budget signal waiting to be appended to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSignal {
    /// `threshold_id` or `reset_id`: the append's message id.
    pub id: String,
    /// The event, with an envelope id derived from the signal id (the same on every
    /// attempt) and the time it was derived.
    pub envelope: Envelope,
}

fn period_of(text: &str) -> Option<Period> {
    match text {
        "day" => Some(Period::Day),
        "month" => Some(Period::Month),
        "total" => Some(Period::Total),
        _ => None,
    }
}

fn corrupt(what: &str) -> ViewError {
    ViewError::Other(format!("malformed {what} in the views"))
}

/// Records the signals due for the budgets of `touched` at `now_ms`, inside the caller's
/// transaction. Returns how many were new.
pub(crate) async fn derive(
    conn: &mut AnyConnection,
    touched: &Touched,
    now_ms: u64,
) -> Result<u64, ViewError> {
    let mut new = 0;
    for (scope, id) in touched {
        let row = sqlx::query(
            "SELECT tenant_id, project_id, budget_micros, budget_period FROM limits \
             WHERE scope = $1 AND id = $2 AND budget_micros IS NOT NULL",
        )
        .bind(scope.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { continue };
        let tenant: String = row.try_get("tenant_id")?;
        let project: String = row.try_get("project_id")?;
        let micros: i64 = row.try_get("budget_micros")?;
        let period: Option<String> = row.try_get("budget_period")?;
        let budget = Budget {
            micros: to_u64(micros, "budget")?,
            period: period
                .as_deref()
                .and_then(period_of)
                .ok_or_else(|| corrupt("budget period"))?,
        };
        new += derive_one(conn, *scope, id, &tenant, &project, budget, now_ms).await?;
    }
    Ok(new)
}

async fn derive_one(
    conn: &mut AnyConnection,
    scope: Scope,
    id: &str,
    tenant: &str,
    project: &str,
    budget: Budget,
    now_ms: u64,
) -> Result<u64, ViewError> {
    let (current, previous) = budget::windows(budget.period, now_ms);
    let previous = previous.map(|w| w.id).unwrap_or_default();
    let mut spent: Vec<(String, u64)> = Vec::with_capacity(2);
    for row in sqlx::query(
        "SELECT window_id, cost_micros FROM spend \
         WHERE scope = $1 AND id = $2 AND period = $3 AND window_id IN ($4, $5)",
    )
    .bind(scope.as_str())
    .bind(id)
    .bind(budget.period.as_str())
    .bind(current.id.as_str())
    .bind(previous.as_str())
    .fetch_all(&mut *conn)
    .await?
    {
        spent.push((
            row.try_get("window_id")?,
            to_u64(row.try_get("cost_micros")?, "spend")?,
        ));
    }
    let owner = Owner {
        project_id: project,
        key_id: (scope == Scope::Key).then_some(id),
    };
    let due = budget::due(owner, budget, now_ms, |window| {
        spent
            .iter()
            .find(|(w, _)| w == window)
            .map_or(0, |(_, micros)| *micros)
    });
    let derived_at = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let fit = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut new = 0;
    for signal in due {
        let (kind, percent, budget_micros, spent_micros) = match signal.kind {
            SignalKind::Threshold {
                percent,
                budget_micros,
                spent_micros,
            } => (
                "threshold",
                Some(i64::from(percent)),
                Some(fit(budget_micros)),
                Some(fit(spent_micros)),
            ),
            SignalKind::Reset => ("reset", None, None, None),
        };
        let written = sqlx::query(
            "INSERT INTO budget_signals (id, kind, tenant_id, project_id, key_id, period, \
             window_id, percent, budget_micros, spent_micros, derived_at, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(signal.id.as_str())
        .bind(kind)
        .bind(tenant)
        .bind(project)
        .bind(owner.key_id)
        .bind(signal.period.as_str())
        .bind(signal.window.as_str())
        .bind(percent)
        .bind(budget_micros)
        .bind(spent_micros)
        .bind(derived_at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if written > 0 {
            tracing::info!(signal = %signal.id, kind, "budget signal due");
            new += 1;
        }
    }
    Ok(new)
}

/// The envelope id of a signal: a UUID (version 8) from the SHA-256 of its id, so every
/// attempt to append it carries the same event id.
fn envelope_id(signal_id: &str) -> Uuid {
    let digest = Sha256::digest(signal_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn pending_signal(row: &sqlx::any::AnyRow) -> Result<PendingSignal, ViewError> {
    let id: String = row.try_get("id")?;
    let tenant = TenantId::try_from(row.try_get::<String, _>("tenant_id")?)
        .map_err(|_| corrupt("tenant_id"))?;
    let project = ProjectId::try_from(row.try_get::<String, _>("project_id")?)
        .map_err(|_| corrupt("project_id"))?;
    let key = row
        .try_get::<Option<String>, _>("key_id")?
        .map(KeyId::try_from)
        .transpose()
        .map_err(|_| corrupt("key_id"))?;
    let period: String = row.try_get("period")?;
    let window: String = row.try_get("window_id")?;
    let event = match row.try_get::<String, _>("kind")?.as_str() {
        "threshold" => {
            let number = |column: &str| -> Result<u64, ViewError> {
                let value: Option<i64> = row.try_get(column)?;
                to_u64(value.ok_or_else(|| corrupt(column))?, column)
            };
            Event::BudgetThreshold(BudgetThresholdV1 {
                threshold_id: id.clone(),
                project_id: project,
                key_id: key,
                period,
                window,
                percent: u8::try_from(number("percent")?).map_err(|_| corrupt("percent"))?,
                budget_micros: number("budget_micros")?,
                spent_micros: number("spent_micros")?,
            })
        }
        "reset" => Event::BudgetReset(BudgetResetV1 {
            reset_id: id.clone(),
            project_id: project,
            key_id: key,
            period,
            window,
        }),
        _ => return Err(corrupt("signal kind")),
    };
    let derived_at: i64 = row.try_get("derived_at")?;
    let mut envelope = Envelope::new(tenant, Actor::node("projector"), event);
    envelope.id = envelope_id(&id);
    envelope.time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(derived_at) * 1_000_000)
        .map_err(|_| corrupt("derived_at"))?;
    Ok(PendingSignal { id, envelope })
}

impl Views {
    /// Records the signals due at `now` for every budget (for resets at a period
    /// boundary, when no request comes to reveal them). Returns how many were new.
    pub async fn derive_budget_signals(&self, now: OffsetDateTime) -> Result<u64, ViewError> {
        let now_ms = millis(now)
            .and_then(|ms| u64::try_from(ms).ok())
            .ok_or_else(|| ViewError::Other("the clock is out of range".to_owned()))?;
        let mut tx = self.pool.begin().await?;
        lock_writer(&mut tx).await?;
        let mut budgets = Touched::new();
        for row in sqlx::query("SELECT scope, id FROM limits WHERE budget_micros IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?
        {
            let scope = Scope::parse(&row.try_get::<String, _>("scope")?)
                .ok_or_else(|| corrupt("scope"))?;
            budgets.insert((scope, row.try_get("id")?));
        }
        let new = derive(&mut tx, &budgets, now_ms).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Signals not yet acknowledged by the log, oldest first, at most `limit`.
    pub async fn pending_budget_signals(
        &self,
        limit: u32,
    ) -> Result<Vec<PendingSignal>, ViewError> {
        sqlx::query(
            "SELECT id, kind, tenant_id, project_id, key_id, period, window_id, percent, \
             budget_micros, spent_micros, derived_at FROM budget_signals \
             WHERE published_at IS NULL ORDER BY derived_at, id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(pending_signal)
        .collect()
    }

    /// Notes that the log acknowledged the signal's append.
    pub async fn budget_signal_published(
        &self,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<(), ViewError> {
        sqlx::query(
            "UPDATE budget_signals SET published_at = $2 WHERE id = $1 AND published_at IS NULL",
        )
        .bind(id)
        .bind(millis(at).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every budget signal of a project, derived and published or not: (id, published).
    pub async fn budget_signals(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<(String, bool)>, ViewError> {
        sqlx::query("SELECT id, published_at FROM budget_signals WHERE project_id = $1 ORDER BY id")
            .bind(project.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    row.try_get::<Option<i64>, _>("published_at")?.is_some(),
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn envelope_ids_are_stable_and_distinct() {
        let a = super::envelope_id("prj_a:-:M2026-11:50:1");
        assert_eq!(a, super::envelope_id("prj_a:-:M2026-11:50:1"));
        assert_ne!(a, super::envelope_id("prj_a:-:M2026-11:80:1"));
        assert_eq!(a.get_version_num(), 8);
    }
}
