//! Reading the views: the rows the admin API serves.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use sg_events::{ConnectionId, KeyId, ProjectId, Provider, TenantId};
use sg_spend::Period;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{millis, to_u64};
use crate::budget::Scope;
use crate::rollup::{Percentiles, decode_histogram, merge, new_histogram, percentiles};
use crate::{Backend, ViewError, Views};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantRow {
    pub id: TenantId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A project, with the tenant it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectRow {
    pub id: ProjectId,
    pub tenant_id: TenantId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A provider connection. Its credential is never part of the views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionRow {
    pub id: ConnectionId,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    pub provider: Provider,
    pub name: String,
    /// `None`: the provider's default.
    pub base_url: Option<String>,
    pub openai_organization: Option<String>,
    pub openai_project: Option<String>,
    pub api_version: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Whether a proxy key is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
}

/// A proxy key's public record (never its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    pub name: String,
    pub hint: String,
    pub status: KeyStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revoke_reason: Option<String>,
    /// Start of the most recent request made with the key.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    pub connection_ids: Vec<ConnectionId>,
    /// `None`: any model.
    pub allowed_models: Option<Vec<String>>,
}

/// One proxied request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRow {
    pub request_id: Uuid,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    pub key_id: KeyId,
    pub connection_id: Option<ConnectionId>,
    pub provider: Option<Provider>,
    pub model: Option<String>,
    pub endpoint: String,
    pub status: u16,
    pub streamed: bool,
    pub prompt_tokens: u64,
    /// Of the prompt tokens, those the provider served from its cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// What the request cost, in micro-dollars.
    pub cost_micros: u64,
    /// Whether its model had a price (an unpriced request is accounted at zero cost).
    pub priced: bool,
    pub latency_us: u64,
    /// Bytes of the request body and of the answer.
    pub request_bytes: u64,
    pub response_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The gateway node that served it.
    pub node: String,
    /// The usage-stream sequence it was first projected from.
    pub seq: u64,
}

/// Whose usage a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageScope<'a> {
    Project(&'a ProjectId),
    Key(&'a KeyId),
}

/// How a usage report is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    /// By the model the requests named (`None`: requests that named none).
    Model,
    /// By UTC day: `2026-11-29`.
    Day,
    /// By UTC hour: `2026-11-29T10:00:00Z`.
    Hour,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "day" => Some(GroupBy::Day),
            "hour" => Some(GroupBy::Hour),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
        }
    }
}

/// Usage counters and latency percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageStats {
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_micros: u64,
    /// Requests whose model had no price (accounted at zero cost).
    pub unpriced_requests: u64,
    /// Percentiles of the latency, from the merged histograms; `None` with no requests.
    pub latency: Option<Percentiles>,
}

/// One group of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageGroup {
    /// The key id, the model (`None`: no model named), the day or the hour.
    pub group: Option<String>,
    pub stats: UsageStats,
}

/// Usage over a range of hours, grouped, with totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageReport {
    /// Groups with at least one request, in order of their name (days and hours in time
    /// order).
    pub groups: Vec<UsageGroup>,
    pub totals: UsageStats,
}

/// Settled spend of a project or key in one budget window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpendRow {
    pub cost_micros: u64,
    pub requests: u64,
}

/// Request volume of one UTC minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinuteRate {
    #[serde(with = "time::serde::rfc3339")]
    pub minute: OffsetDateTime,
    pub requests: u64,
    pub total_tokens: u64,
    pub cost_micros: u64,
}

/// Which requests a listing returns; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub key_id: Option<KeyId>,
    pub model: Option<String>,
    pub status: Option<u16>,
    /// Requests that started at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Requests that started before this time.
    pub to: Option<OffsetDateTime>,
}

/// A position in a listing of requests (newest first): the listing continues with the
/// requests after it. Positions are (start, sequence) pairs, which no two requests
/// share, so pages neither repeat nor skip a request when others are inserted meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCursor {
    /// Unix milliseconds of the request's start.
    pub started_at: i64,
    pub seq: u64,
}

impl RequestCursor {
    /// The position of a listed request.
    pub fn after(row: &RequestRow) -> RequestCursor {
        RequestCursor {
            started_at: millis(row.started_at).unwrap_or(i64::MIN),
            seq: row.seq,
        }
    }
}

const KEY_COLUMNS: &str = "id, tenant_id, project_id, name, hint, status, created_at, revoked_at, \
     revoke_reason, last_used_at, connection_ids, allowed_models";
const REQUEST_COLUMNS: &str = "request_id, tenant_id, project_id, key_id, connection_id, provider, \
     model, endpoint, status, streamed, prompt_tokens, cached_prompt_tokens, completion_tokens, \
     total_tokens, cost_micros, priced, latency_us, started_at, node, seq, request_bytes, \
     response_bytes";

/// A value bound to a statement built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

/// Counters and histogram of a group being summed.
struct Acc {
    stats: UsageStats,
    histogram: Option<Histogram<u64>>,
}

impl Acc {
    fn new() -> Result<Acc, ViewError> {
        Ok(Acc {
            stats: UsageStats::default(),
            histogram: Some(new_histogram()?),
        })
    }

    fn add(&mut self, row: &AnyRow, latency: &Histogram<u64>) -> Result<(), ViewError> {
        let s = &mut self.stats;
        s.requests += count(row, "requests")?;
        s.errors += count(row, "errors")?;
        s.prompt_tokens += count(row, "prompt_tokens")?;
        s.cached_prompt_tokens += count(row, "cached_prompt_tokens")?;
        s.completion_tokens += count(row, "completion_tokens")?;
        s.total_tokens += count(row, "total_tokens")?;
        s.cost_micros += count(row, "cost_micros")?;
        s.unpriced_requests += count(row, "unpriced_requests")?;
        if let Some(h) = &mut self.histogram {
            merge(h, latency)?;
        }
        Ok(())
    }

    /// Computes the percentiles and drops the histogram.
    fn finish(&mut self) {
        if let Some(h) = self.histogram.take() {
            self.stats.latency = percentiles(&h);
        }
    }
}

/// Unix milliseconds of a time, for a query.
fn ms(t: OffsetDateTime) -> Result<i64, ViewError> {
    millis(t).ok_or_else(|| ViewError::Other("time out of range".to_owned()))
}

const HOUR_MS: i64 = 3_600_000;

impl Views {
    pub async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantRow>, ViewError> {
        sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| tenant_row(&row))
            .transpose()
    }

    /// The tenant's projects, oldest first.
    pub async fn list_projects(&self, tenant: &TenantId) -> Result<Vec<ProjectRow>, ViewError> {
        sqlx::query(
            "SELECT id, tenant_id, name, created_at FROM projects WHERE tenant_id = $1 \
             ORDER BY created_at, id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(project_row)
        .collect()
    }

    pub async fn get_project(&self, project: &ProjectId) -> Result<Option<ProjectRow>, ViewError> {
        sqlx::query("SELECT id, tenant_id, name, created_at FROM projects WHERE id = $1")
            .bind(project.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| project_row(&row))
            .transpose()
    }

    /// The project's connections, oldest first.
    pub async fn list_connections(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<ConnectionRow>, ViewError> {
        sqlx::query(
            "SELECT id, tenant_id, project_id, provider, name, base_url, openai_organization, \
             openai_project, api_version, created_at FROM connections WHERE project_id = $1 ORDER BY created_at, id",
        )
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(connection_row)
        .collect()
    }

    pub async fn get_connection(
        &self,
        connection: &ConnectionId,
    ) -> Result<Option<ConnectionRow>, ViewError> {
        sqlx::query(
            "SELECT id, tenant_id, project_id, provider, name, base_url, openai_organization, \
             openai_project, api_version, created_at FROM connections WHERE id = $1",
        )
        .bind(connection.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| connection_row(&row))
        .transpose()
    }

    /// The project's keys (active and revoked), oldest first.
    pub async fn list_keys(&self, project: &ProjectId) -> Result<Vec<KeyRow>, ViewError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE project_id = $1 ORDER BY created_at, id"
        ))
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_row)
        .collect()
    }

    pub async fn get_key(&self, key: &KeyId) -> Result<Option<KeyRow>, ViewError> {
        sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| key_row(&row))
            .transpose()
    }

    /// Usage of a project or key over the UTC hours that overlap `[from, to)` (hourly
    /// rollups: `from` counts from the start of its hour, `to` up to the end of its
    /// hour), grouped by `group_by`, with totals.
    pub async fn usage_report(
        &self,
        scope: UsageScope<'_>,
        from: OffsetDateTime,
        to: OffsetDateTime,
        group_by: GroupBy,
    ) -> Result<UsageReport, ViewError> {
        let (column, id) = match scope {
            UsageScope::Project(p) => ("project_id", p.as_str()),
            UsageScope::Key(k) => ("key_id", k.as_str()),
        };
        let from_hour = ms(from)?.div_euclid(HOUR_MS) * HOUR_MS;
        let rows = sqlx::query(&format!(
            "SELECT hour, key_id, model, requests, errors, prompt_tokens, cached_prompt_tokens, \
             completion_tokens, total_tokens, cost_micros, unpriced_requests, latency_hist \
             FROM usage_hourly WHERE {column} = $1 AND hour >= $2 AND hour < $3 \
             ORDER BY hour, key_id, model"
        ))
        .bind(id)
        .bind(from_hour)
        .bind(ms(to)?)
        .fetch_all(&self.pool)
        .await?;

        let mut totals = Acc::new()?;
        let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
        // Time groups end as the hours go by: their histograms are dropped as they end.
        let by_time = matches!(group_by, GroupBy::Day | GroupBy::Hour);
        let mut open: Option<String> = None;
        for row in &rows {
            let hour: i64 = row.try_get("hour")?;
            let name = match group_by {
                GroupBy::Key => row.try_get::<String, _>("key_id")?,
                GroupBy::Model => row.try_get::<String, _>("model")?,
                GroupBy::Day => format_day(hour)?,
                GroupBy::Hour => format_hour(hour)?,
            };
            if by_time
                && open.as_ref().is_some_and(|o| *o != name)
                && let Some(acc) = open.take().and_then(|o| groups.get_mut(&o))
            {
                acc.finish();
            }
            let latency = decode_histogram(&row.try_get::<String, _>("latency_hist")?)?;
            totals.add(row, &latency)?;
            if !groups.contains_key(&name) {
                groups.insert(name.clone(), Acc::new()?);
            }
            if let Some(acc) = groups.get_mut(&name) {
                acc.add(row, &latency)?;
            }
            open = Some(name);
        }
        totals.finish();
        Ok(UsageReport {
            groups: groups
                .into_iter()
                .map(|(name, mut acc)| {
                    acc.finish();
                    UsageGroup {
                        // Requests that named no model are stored under "".
                        group: (!(group_by == GroupBy::Model && name.is_empty())).then_some(name),
                        stats: acc.stats,
                    }
                })
                .collect(),
            totals: totals.stats,
        })
    }

    /// Settled spend of a project or key in one window of a budget period (window ids
    /// as [`sg_spend::Window`] names them); zero if nothing was spent.
    pub async fn spend(
        &self,
        scope: Scope,
        id: &str,
        period: Period,
        window: &str,
    ) -> Result<SpendRow, ViewError> {
        let row = sqlx::query(
            "SELECT cost_micros, requests FROM spend \
             WHERE scope = $1 AND id = $2 AND period = $3 AND window_id = $4",
        )
        .bind(scope.as_str())
        .bind(id)
        .bind(period.as_str())
        .bind(window)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(SpendRow::default()),
            Some(row) => Ok(SpendRow {
                cost_micros: count(&row, "cost_micros")?,
                requests: count(&row, "requests")?,
            }),
        }
    }

    /// Requests, tokens and cost per UTC minute in `[from, to)` (minutes with requests
    /// only), oldest first; for a project, summed over its keys.
    pub async fn minute_rates(
        &self,
        scope: UsageScope<'_>,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<MinuteRate>, ViewError> {
        let (column, id) = match scope {
            UsageScope::Project(p) => ("project_id", p.as_str()),
            UsageScope::Key(k) => ("key_id", k.as_str()),
        };
        sqlx::query(&format!(
            "SELECT minute, CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(total_tokens) AS BIGINT) AS total_tokens, \
             CAST(SUM(cost_micros) AS BIGINT) AS cost_micros \
             FROM usage_minute WHERE {column} = $1 AND minute >= $2 AND minute < $3 \
             GROUP BY minute ORDER BY minute"
        ))
        .bind(id)
        .bind(ms(from)?)
        .bind(ms(to)?)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MinuteRate {
                minute: time(row, "minute")?,
                requests: count(row, "requests")?,
                total_tokens: count(row, "total_tokens")?,
                cost_micros: count(row, "cost_micros")?,
            })
        })
        .collect()
    }

    /// The project's requests matching `filter`, newest first (by start, then by
    /// sequence), after `cursor` if given, at most `limit`.
    pub async fn list_requests(
        &self,
        project: &ProjectId,
        filter: &RequestFilter,
        cursor: Option<RequestCursor>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, ViewError> {
        let mut binds = vec![Bind::Text(project.as_str().to_owned())];
        let mut conditions = vec!["project_id = $1".to_owned()];
        let mut condition = |sql: &str, values: Vec<Bind>| {
            let mut sql = sql.to_owned();
            for (i, value) in values.into_iter().enumerate() {
                binds.push(value);
                sql = sql.replace(&format!("?{i}"), &format!("${}", binds.len()));
            }
            conditions.push(sql);
        };
        if let Some(key) = &filter.key_id {
            condition("key_id = ?0", vec![Bind::Text(key.as_str().to_owned())]);
        }
        if let Some(model) = &filter.model {
            condition("model = ?0", vec![Bind::Text(model.clone())]);
        }
        if let Some(status) = filter.status {
            condition("status = ?0", vec![Bind::Int(i64::from(status))]);
        }
        if let Some(from) = filter.from {
            condition("started_at >= ?0", vec![Bind::Int(ms(from)?)]);
        }
        if let Some(to) = filter.to {
            condition("started_at < ?0", vec![Bind::Int(ms(to)?)]);
        }
        if let Some(c) = cursor {
            let seq = i64::try_from(c.seq).unwrap_or(i64::MAX);
            condition(
                "(started_at < ?0 OR (started_at = ?1 AND seq < ?2))",
                vec![
                    Bind::Int(c.started_at),
                    Bind::Int(c.started_at),
                    Bind::Int(seq),
                ],
            );
        }
        binds.push(Bind::Int(i64::from(limit)));
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE {} \
             ORDER BY started_at DESC, seq DESC LIMIT ${}",
            conditions.join(" AND "),
            binds.len()
        );
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(int) => query.bind(int),
            };
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(request_row)
            .collect()
    }

    /// The project's most recent requests, newest first, at most `limit`.
    pub async fn recent_requests(
        &self,
        project: &ProjectId,
        limit: u32,
    ) -> Result<Vec<RequestRow>, ViewError> {
        self.list_requests(project, &RequestFilter::default(), None, limit)
            .await
    }
}

fn format_day(hour_ms: i64) -> Result<String, ViewError> {
    let t = time_of(hour_ms, "hour")?;
    Ok(format!(
        "{:04}-{:02}-{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

fn format_hour(hour_ms: i64) -> Result<String, ViewError> {
    let t = time_of(hour_ms, "hour")?;
    Ok(format!("{}T{:02}:00:00Z", format_day(hour_ms)?, t.hour()))
}

// ---- row decoding -------------------------------------------------------------------

fn corrupt(what: &str) -> ViewError {
    ViewError::Other(format!("malformed {what} in the views"))
}

fn id<T: TryFrom<String>>(row: &AnyRow, column: &str) -> Result<T, ViewError> {
    let text: String = row.try_get(column)?;
    T::try_from(text).map_err(|_| corrupt(column))
}

fn opt_id<T: TryFrom<String>>(row: &AnyRow, column: &str) -> Result<Option<T>, ViewError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| T::try_from(t).map_err(|_| corrupt(column)))
        .transpose()
}

fn time_of(ms: i64, column: &str) -> Result<OffsetDateTime, ViewError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| corrupt(column))
}

fn time(row: &AnyRow, column: &str) -> Result<OffsetDateTime, ViewError> {
    time_of(row.try_get::<i64, _>(column)?, column)
}

fn opt_time(row: &AnyRow, column: &str) -> Result<Option<OffsetDateTime>, ViewError> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|ms| time_of(ms, column))
        .transpose()
}

fn count(row: &AnyRow, column: &str) -> Result<u64, ViewError> {
    to_u64(row.try_get::<i64, _>(column)?, column)
}

fn provider(text: &str) -> Result<Provider, ViewError> {
    text.parse().map_err(|_| corrupt("provider"))
}

fn tenant_row(row: &AnyRow) -> Result<TenantRow, ViewError> {
    Ok(TenantRow {
        id: id(row, "id")?,
        name: row.try_get("name")?,
        created_at: time(row, "created_at")?,
    })
}

fn project_row(row: &AnyRow) -> Result<ProjectRow, ViewError> {
    Ok(ProjectRow {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        name: row.try_get("name")?,
        created_at: time(row, "created_at")?,
    })
}

fn connection_row(row: &AnyRow) -> Result<ConnectionRow, ViewError> {
    Ok(ConnectionRow {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        project_id: id(row, "project_id")?,
        provider: provider(&row.try_get::<String, _>("provider")?)?,
        name: row.try_get("name")?,
        base_url: row.try_get("base_url")?,
        openai_organization: row.try_get("openai_organization")?,
        openai_project: row.try_get("openai_project")?,
        api_version: row.try_get("api_version")?,
        created_at: time(row, "created_at")?,
    })
}

fn key_row(row: &AnyRow) -> Result<KeyRow, ViewError> {
    let status = match row.try_get::<String, _>("status")?.as_str() {
        "active" => KeyStatus::Active,
        "revoked" => KeyStatus::Revoked,
        _ => return Err(corrupt("key status")),
    };
    let connection_ids: String = row.try_get("connection_ids")?;
    let allowed_models: Option<String> = row.try_get("allowed_models")?;
    Ok(KeyRow {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        project_id: id(row, "project_id")?,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        status,
        created_at: time(row, "created_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
        last_used_at: opt_time(row, "last_used_at")?,
        connection_ids: serde_json::from_str(&connection_ids)
            .map_err(|_| corrupt("connection_ids"))?,
        allowed_models: allowed_models
            .map(|text| serde_json::from_str(&text).map_err(|_| corrupt("allowed_models")))
            .transpose()?,
    })
}

fn request_row(row: &AnyRow) -> Result<RequestRow, ViewError> {
    let request_id: String = row.try_get("request_id")?;
    let status = row.try_get::<i64, _>("status")?;
    Ok(RequestRow {
        request_id: request_id.parse().map_err(|_| corrupt("request_id"))?,
        tenant_id: id(row, "tenant_id")?,
        project_id: id(row, "project_id")?,
        key_id: id(row, "key_id")?,
        connection_id: opt_id(row, "connection_id")?,
        provider: row
            .try_get::<Option<String>, _>("provider")?
            .map(|p| provider(&p))
            .transpose()?,
        model: row.try_get("model")?,
        endpoint: row.try_get("endpoint")?,
        status: u16::try_from(status).map_err(|_| corrupt("status"))?,
        streamed: row.try_get::<i64, _>("streamed")? != 0,
        prompt_tokens: count(row, "prompt_tokens")?,
        cached_prompt_tokens: count(row, "cached_prompt_tokens")?,
        completion_tokens: count(row, "completion_tokens")?,
        total_tokens: count(row, "total_tokens")?,
        cost_micros: count(row, "cost_micros")?,
        priced: row.try_get::<i64, _>("priced")? != 0,
        latency_us: count(row, "latency_us")?,
        request_bytes: count(row, "request_bytes")?,
        response_bytes: count(row, "response_bytes")?,
        started_at: time(row, "started_at")?,
        node: row.try_get("node")?,
        seq: count(row, "seq")?,
    })
}

// ---- dump ---------------------------------------------------------------------------

pub(crate) async fn dump(views: &Views) -> Result<serde_json::Value, ViewError> {
    let catalog = match views.backend {
        Backend::Postgres => {
            "SELECT CAST(tablename AS TEXT) AS name FROM pg_catalog.pg_tables \
             WHERE schemaname = current_schema()"
        }
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
        }
    };
    let mut tables = serde_json::Map::new();
    for row in sqlx::query(catalog).fetch_all(&views.pool).await? {
        let name: String = row.try_get("name")?;
        if name.starts_with("_sqlx") {
            continue;
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ViewError::Other(format!(
                "unexpected table name {name:?} in the view database"
            )));
        }
        let mut rows: Vec<(String, serde_json::Value)> = Vec::new();
        for row in sqlx::query(&format!("SELECT * FROM {name}"))
            .fetch_all(&views.pool)
            .await?
        {
            let value = row_json(&row)?;
            rows.push((value.to_string(), value));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        tables.insert(
            name,
            serde_json::Value::Array(rows.into_iter().map(|(_, v)| v).collect()),
        );
    }
    Ok(serde_json::Value::Object(tables))
}

/// A row as a JSON object of its stored values.
fn row_json(row: &AnyRow) -> Result<serde_json::Value, ViewError> {
    use sqlx::Column as _;
    let mut object = serde_json::Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let value = if let Ok(int) = row.try_get::<Option<i64>, _>(i) {
            int.map_or(serde_json::Value::Null, serde_json::Value::from)
        } else if let Ok(text) = row.try_get::<Option<String>, _>(i) {
            text.map_or(serde_json::Value::Null, serde_json::Value::from)
        } else {
            let float: Option<f64> = row.try_get(i)?;
            float.map_or(serde_json::Value::Null, serde_json::Value::from)
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(serde_json::Value::Object(object))
}
