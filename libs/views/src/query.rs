//! Reading the views: the rows the admin API serves.

use serde::Serialize;
use sg_events::{ConnectionId, KeyId, ProjectId, Provider, TenantId};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::to_u64;
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
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub latency_us: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The gateway node that served it.
    pub node: String,
    /// The usage-stream sequence it was first projected from.
    pub seq: u64,
}

/// Usage counters of a key or a project; all zero when nothing was recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub latency_us_sum: u64,
    /// Mean latency in milliseconds; `None` when there were no requests.
    pub avg_latency_ms: Option<f64>,
    /// Start of the most recent request.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

const KEY_COLUMNS: &str = "id, tenant_id, project_id, name, hint, status, created_at, revoked_at, \
     revoke_reason, last_used_at, connection_ids, allowed_models";
const REQUEST_COLUMNS: &str = "request_id, tenant_id, project_id, key_id, connection_id, provider, \
     model, endpoint, status, streamed, prompt_tokens, completion_tokens, total_tokens, latency_us, \
     started_at, node, seq";
const USAGE_COLUMNS: &str = "requests, errors, prompt_tokens, completion_tokens, total_tokens, latency_us_sum, last_used_at";

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
             openai_project, created_at FROM connections WHERE project_id = $1 ORDER BY created_at, id",
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
             openai_project, created_at FROM connections WHERE id = $1",
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

    pub async fn project_usage(&self, project: &ProjectId) -> Result<UsageTotals, ViewError> {
        sqlx::query(&format!(
            "SELECT {USAGE_COLUMNS} FROM project_usage WHERE project_id = $1"
        ))
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| usage_totals(&row))
        .transpose()
        .map(Option::unwrap_or_default)
    }

    pub async fn key_usage(&self, key: &KeyId) -> Result<UsageTotals, ViewError> {
        sqlx::query(&format!(
            "SELECT {USAGE_COLUMNS} FROM key_usage WHERE key_id = $1"
        ))
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| usage_totals(&row))
        .transpose()
        .map(Option::unwrap_or_default)
    }

    /// The project's most recent requests, newest first (by start time, then by
    /// sequence), at most `limit`.
    pub async fn recent_requests(
        &self,
        project: &ProjectId,
        limit: u32,
    ) -> Result<Vec<RequestRow>, ViewError> {
        sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE project_id = $1 \
             ORDER BY started_at DESC, seq DESC LIMIT $2"
        ))
        .bind(project.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(request_row)
        .collect()
    }
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
        completion_tokens: count(row, "completion_tokens")?,
        total_tokens: count(row, "total_tokens")?,
        latency_us: count(row, "latency_us")?,
        started_at: time(row, "started_at")?,
        node: row.try_get("node")?,
        seq: count(row, "seq")?,
    })
}

fn usage_totals(row: &AnyRow) -> Result<UsageTotals, ViewError> {
    let requests = count(row, "requests")?;
    let latency_us_sum = count(row, "latency_us_sum")?;
    Ok(UsageTotals {
        requests,
        errors: count(row, "errors")?,
        prompt_tokens: count(row, "prompt_tokens")?,
        completion_tokens: count(row, "completion_tokens")?,
        total_tokens: count(row, "total_tokens")?,
        latency_us_sum,
        avg_latency_ms: (requests > 0).then(|| latency_us_sum as f64 / requests as f64 / 1000.0),
        last_used_at: opt_time(row, "last_used_at")?,
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
