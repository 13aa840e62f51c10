//! Reports read from the views: usage (grouped, with latency percentiles), spend against
//! budgets, and request history (pages with a cursor, or CSV).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use sg_api_error::ApiError;
use sg_events::{KeyId, TenantId};
use sg_spend::{Counter, Ledger, Period, Window};
use sg_views::budget::Scope;
use sg_views::{GroupBy, RequestCursor, RequestFilter, RequestRow, UsageScope, Views};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use crate::Admin;
use crate::api::{ErrorBody, RequestPage, RequestRecord, Spend, UsageReport, rfc3339};
use crate::authz::{Caller, Need};
use crate::commands::{ApiResult, known_key, known_project, log_error, views_error};

/// Default range of a usage report: the 30 days before `to`.
const DEFAULT_RANGE: time::Duration = time::Duration::days(30);
const HOUR: time::Duration = time::Duration::hours(1);
/// Rows read from the views per CSV chunk.
const CSV_PAGE: u32 = 1_000;

pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_parameter", message).with_param(param)
}

/// Query strings that cannot be read at all (a parameter repeated, bad encoding).
pub(crate) fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

pub(crate) fn time_param(
    param: &'static str,
    value: Option<&str>,
) -> ApiResult<Option<OffsetDateTime>> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                invalid(
                    param,
                    format!("`{param}` must be an RFC 3339 time, e.g. 2026-11-29T10:00:00Z"),
                )
            })
        })
        .transpose()
}

fn floor_hour(t: OffsetDateTime) -> OffsetDateTime {
    let seconds = t.unix_timestamp().div_euclid(3_600) * 3_600;
    OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(t)
}

fn ceil_hour(t: OffsetDateTime) -> OffsetDateTime {
    let floor = floor_hour(t);
    if floor == t { t } else { floor + HOUR }
}

// ---- usage ------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// Start (RFC 3339). Usage is kept per UTC hour: counting starts at the beginning of
    /// this time's hour. Default: 30 days before `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End (RFC 3339, exclusive). Counting ends at the end of this time's hour (a time on
    /// the hour ends there). Default: now.
    #[param(format = DateTime)]
    to: Option<String>,
    /// `key`, `model`, `day` (UTC) or `hour` (UTC). Default: `day`.
    #[param(example = "model")]
    group_by: Option<String>,
}

async fn usage(admin: &Admin, scope: UsageScope<'_>, q: UsageQuery) -> ApiResult<UsageReport> {
    let group_by = match q.group_by.as_deref() {
        None => GroupBy::Day,
        Some(g) => GroupBy::parse(g).ok_or_else(|| {
            invalid(
                "group_by",
                "`group_by` must be `key`, `model`, `day` or `hour`",
            )
        })?,
    };
    let to = time_param("to", q.to.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let from = time_param("from", q.from.as_deref())?.unwrap_or(to - DEFAULT_RANGE);
    if from >= to {
        return Err(invalid("from", "`from` must be before `to`"));
    }
    let (from, to) = (floor_hour(from), ceil_hour(to));
    let report = admin
        .views
        .usage_report(scope, from, to, group_by)
        .await
        .map_err(views_error)?;
    Ok(UsageReport {
        data: report
            .groups
            .into_iter()
            .map(|g| crate::api::UsageGroup {
                group: g.group,
                totals: g.stats.into(),
            })
            .collect(),
        totals: report.totals.into(),
        from: rfc3339(from),
        to: rfc3339(to),
        group_by: group_by.as_str().to_owned(),
    })
}

#[utoipa::path(get, path = "/projects/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "Project id"), UsageQuery),
    responses((status = 200, description = "The project's usage per group, and its totals, over whole UTC hours", body = UsageReport),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "The views are unavailable; retry", body = ErrorBody)))]
pub(crate) async fn project_usage(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<UsageReport>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    let q = query(q)?;
    Ok(Json(usage(&admin, UsageScope::Project(&project), q).await?))
}

#[utoipa::path(get, path = "/keys/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "Key id"), UsageQuery),
    responses((status = 200, description = "The key's usage per group, and its totals, over whole UTC hours", body = UsageReport),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "The views are unavailable; retry", body = ErrorBody)))]
pub(crate) async fn key_usage(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<UsageReport>> {
    let key = known_key(&admin, &caller, &id, Need::Read)?;
    let q = query(q)?;
    Ok(Json(usage(&admin, UsageScope::Key(&key), q).await?))
}

// ---- spend ------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SpendQuery {
    /// `day` (UTC), `month` (UTC calendar month) or `total`. Default: the period of the
    /// configured budget, else `month`.
    #[param(example = "month")]
    period: Option<String>,
}

fn period_param(value: Option<&str>) -> ApiResult<Option<Period>> {
    value
        .map(|p| match p {
            "day" => Ok(Period::Day),
            "month" => Ok(Period::Month),
            "total" => Ok(Period::Total),
            _ => Err(invalid(
                "period",
                "`period` must be `day`, `month` or `total`",
            )),
        })
        .transpose()
}

fn window_time(ms: Option<u64>) -> Option<String> {
    ms.and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| OffsetDateTime::from_unix_timestamp(ms.div_euclid(1_000)).ok())
        .map(rfc3339)
}

/// What a project or key (`scope`, `id`, of `tenant`) spent in the current window.
async fn spend(
    admin: &Admin,
    tenant: &TenantId,
    scope: Scope,
    id: &str,
    budget: Option<sg_spend::Budget>,
    q: SpendQuery,
) -> ApiResult<Spend> {
    let period = period_param(q.period.as_deref())?
        .or(budget.map(|b| b.period))
        .unwrap_or(Period::Month);
    let now_ms =
        u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let window = Window::of(Counter::Budget(period), now_ms);
    let settled = admin
        .views
        .spend(scope, id, period, &window.id)
        .await
        .map_err(views_error)?
        .cost_micros;
    // The budget's quota ledger: what the gateways were granted in its window.
    let subject = sg_subjects::quota(tenant.as_str(), scope.as_str(), id, "budget");
    let ledger = admin.log.last(&subject).await.map_err(log_error)?;
    let granted = match ledger.map(|m| serde_json::from_slice::<Ledger>(&m.payload)) {
        None => 0,
        Some(Ok(ledger)) if ledger.window == window.id => ledger.granted,
        Some(Ok(_)) => 0,
        Some(Err(err)) => {
            tracing::warn!(%subject, error = %err, "unreadable quota ledger; reporting nothing reserved");
            0
        }
    };
    Ok(Spend {
        budget_usd: budget
            .filter(|b| b.period == period)
            .map(|b| sg_spend::micros_to_usd(b.micros)),
        spent_usd: sg_spend::micros_to_usd(settled),
        reserved_usd: sg_spend::micros_to_usd(granted.saturating_sub(settled)),
        period: period.as_str().to_owned(),
        window: window.id,
        period_start: window_time(window.start_ms),
        period_end: window_time(window.end_ms),
    })
}

#[utoipa::path(get, path = "/projects/{id}/spend", tag = "usage",
    params(("id" = String, Path, description = "Project id"), SpendQuery),
    responses((status = 200, description = "What the project (all its keys together) spent in the current window of the period, against its budget", body = Spend),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "The views or the event log are unavailable; retry", body = ErrorBody)))]
pub(crate) async fn project_spend(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<SpendQuery>, QueryRejection>,
) -> ApiResult<Json<Spend>> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Read)?;
    let q = query(q)?;
    let budget = admin
        .replica
        .state()
        .project(&project)
        .and_then(|p| p.limits.budget);
    let answer = spend(&admin, &tenant, Scope::Project, project.as_str(), budget, q).await?;
    Ok(Json(answer))
}

#[utoipa::path(get, path = "/keys/{id}/spend", tag = "usage",
    params(("id" = String, Path, description = "Key id"), SpendQuery),
    responses((status = 200, description = "What the key spent in the current window of the period, against its own budget", body = Spend),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "The views or the event log are unavailable; retry", body = ErrorBody)))]
pub(crate) async fn key_spend(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<SpendQuery>, QueryRejection>,
) -> ApiResult<Json<Spend>> {
    let key = known_key(&admin, &caller, &id, Need::Read)?;
    let q = query(q)?;
    let (tenant, budget) = {
        let state = admin.replica.state();
        let view = state
            .key(&key)
            .ok_or_else(|| ApiError::not_found("unknown_key", format!("no key with id {key}")))?;
        (view.tenant_id.clone(), view.limits.budget)
    };
    let answer = spend(&admin, &tenant, Scope::Key, key.as_str(), budget, q).await?;
    Ok(Json(answer))
}

// ---- request history --------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RequestsQuery {
    /// Only requests made with this key.
    key_id: Option<String>,
    /// Only requests that named this model.
    model: Option<String>,
    /// Only requests answered with this HTTP status.
    #[param(value_type = Option<u16>, minimum = 100, maximum = 599)]
    status: Option<String>,
    /// Only requests that started at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only requests that started before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Requests per page, 1–1000 (values outside are brought into range); default 100.
    /// Not used by the CSV export.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page: the listing continues after it.
    cursor: Option<String>,
}

/// The opaque form of a cursor: base64url of `v1.<start ms>.<sequence>`.
pub(crate) fn encode_cursor(c: RequestCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("v1.{}.{}", c.started_at, c.seq))
}

pub(crate) fn decode_cursor(text: &str) -> Option<RequestCursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split('.');
    if parts.next()? != "v1" {
        return None;
    }
    let started_at = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(RequestCursor { started_at, seq })
}

fn request_filter(q: &RequestsQuery) -> ApiResult<RequestFilter> {
    let key_id = q
        .key_id
        .as_deref()
        .map(|k| {
            k.parse::<KeyId>()
                .map_err(|_| invalid("key_id", "`key_id` is not a key id"))
        })
        .transpose()?;
    let model = q
        .model
        .as_deref()
        .map(|m| {
            if m.is_empty() || m.len() > 256 {
                Err(invalid("model", "`model` must be 1 to 256 bytes"))
            } else {
                Ok(m.to_owned())
            }
        })
        .transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| invalid("status", "`status` must be an HTTP status, 100 to 599"))
        })
        .transpose()?;
    let from = time_param("from", q.from.as_deref())?;
    let to = time_param("to", q.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(invalid("from", "`from` must be before `to`"));
    }
    Ok(RequestFilter {
        key_id,
        model,
        status,
        from,
        to,
    })
}

/// Whether the client asked for CSV (`Accept: text/csv`, with any parameters, not
/// refused with `q=0`).
fn wants_csv(headers: &HeaderMap) -> bool {
    // Only when asked by name: `*/*` is every client's default.
    sg_api_error::header_offers(headers, header::ACCEPT, "text/csv", false)
}

#[utoipa::path(get, path = "/projects/{id}/requests", tag = "usage",
    params(("id" = String, Path, description = "Project id"), RequestsQuery,
        ("Accept" = Option<String>, Header, description = "`text/csv` for a CSV export of every request that matches the filters (not paged: `limit` does not apply, `cursor` does), streamed in order")),
    responses((status = 200, description = "Requests, newest first (by start, then by log position). Pages neither repeat nor skip a request when requests are recorded meanwhile.", content(
            (RequestPage = "application/json"),
            (String = "text/csv", example = json!("request_id,started_at,key_id,...\n")))),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "The views are unavailable; retry", body = ErrorBody)))]
pub(crate) async fn list_requests(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<RequestsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    let q = query(q)?;
    let filter = request_filter(&q)?;
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c).ok_or_else(|| {
                invalid(
                    "cursor",
                    "`cursor` must be a `next_cursor` this API returned",
                )
            })
        })
        .transpose()?;
    if wants_csv(&headers) {
        return csv_export(&admin.views, project, filter, cursor).await;
    }
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<u64>()
            .map_err(|_| invalid("limit", "`limit` must be a whole number from 1 to 1000"))?
            .clamp(1, 1_000) as u32,
    };
    // One more than asked: whether another page follows.
    let mut rows = admin
        .views
        .list_requests(&project, &filter, cursor, limit + 1)
        .await
        .map_err(views_error)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(RequestCursor::after(r)))
    } else {
        None
    };
    Ok(Json(RequestPage {
        data: rows.into_iter().map(RequestRecord::from).collect(),
        next_cursor,
    })
    .into_response())
}

/// The CSV header row.
const CSV_HEADER: &str = "request_id,started_at,key_id,connection_id,provider,model,endpoint,status,\
streamed,prompt_tokens,cached_prompt_tokens,completion_tokens,total_tokens,cost_usd,priced,\
latency_ms,node,request_bytes,response_bytes\r\n";

/// A CSV field: quoted when it holds a separator, a quote or a line break; a text that
/// a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab, carriage return first)
/// is prefixed with `'`.
fn csv_text(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_line(r: &RequestRow) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
        r.request_id,
        rfc3339(r.started_at),
        r.key_id,
        r.connection_id.as_ref().map_or("", |c| c.as_str()),
        r.provider.map_or("", |p| p.as_str()),
        csv_text(r.model.as_deref().unwrap_or("")),
        csv_text(&r.endpoint),
        r.status,
        r.streamed,
        r.prompt_tokens,
        r.cached_prompt_tokens,
        r.completion_tokens,
        r.total_tokens,
        sg_spend::micros_to_usd(r.cost_micros),
        r.priced,
        r.latency_us as f64 / 1000.0,
        csv_text(&r.node),
        r.request_bytes,
        r.response_bytes,
    )
}

enum CsvNext {
    /// The first page, read before answering (so that an unavailable database is a 503,
    /// not a cut-off file).
    First(Vec<RequestRow>),
    After(RequestCursor),
    Done,
}

/// Every request matching `filter` (after `cursor`), as CSV, read from the views
/// [`CSV_PAGE`] rows at a time as the client reads, so memory stays bounded whatever the
/// range. A database failure mid-way aborts the response (the client sees a broken
/// transfer, never a silently short file).
async fn csv_export(
    views: &Views,
    project: sg_events::ProjectId,
    filter: RequestFilter,
    cursor: Option<RequestCursor>,
) -> ApiResult<Response> {
    let first = views
        .list_requests(&project, &filter, cursor, CSV_PAGE)
        .await
        .map_err(views_error)?;
    let filename = format!("attachment; filename=\"requests-{project}.csv\"");
    let state = (views.clone(), project, filter, CsvNext::First(first));
    let body = futures::stream::try_unfold(state, |(views, project, filter, next)| async move {
        let (rows, mut chunk) = match next {
            CsvNext::Done => return Ok(None),
            CsvNext::First(rows) => (rows, CSV_HEADER.to_owned()),
            CsvNext::After(cursor) => {
                let rows = views
                    .list_requests(&project, &filter, Some(cursor), CSV_PAGE)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "reading requests for a CSV export failed");
                        std::io::Error::other("the reporting database query failed")
                    })?;
                if rows.is_empty() {
                    return Ok(None);
                }
                (rows, String::new())
            }
        };
        let next = match rows.last() {
            Some(last) if rows.len() == CSV_PAGE as usize => {
                CsvNext::After(RequestCursor::after(last))
            }
            _ => CsvNext::Done,
        };
        for row in &rows {
            chunk.push_str(&csv_line(row));
        }
        Ok::<_, std::io::Error>(Some((chunk, (views, project, filter, next))))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&filename) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let c = RequestCursor {
            started_at: 1_795_947_753_500,
            seq: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        for bad in ["", "abc", "djEuMS4y.", &encode_cursor(c)[1..]] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
        let v2 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v2.1.2");
        assert_eq!(decode_cursor(&v2), None);
        let extra = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v1.1.2.3");
        assert_eq!(decode_cursor(&extra), None);
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_text("gpt-4o"), "gpt-4o");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_text("-1+2,3"), "\"'-1+2,3\"");
        assert_eq!(csv_text("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn accept_headers() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            wants_csv(&h)
        };
        assert!(with("text/csv"));
        assert!(with("application/json;q=0.5, Text/CSV; charset=utf-8"));
        assert!(!with("application/json"));
        assert!(!with("text/csv;q=0"));
        assert!(!wants_csv(&HeaderMap::new()));
    }

    #[test]
    fn hours() {
        let t = time::macros::datetime!(2026-11-29 10:22:33 UTC);
        assert_eq!(floor_hour(t), time::macros::datetime!(2026-11-29 10:00 UTC));
        assert_eq!(ceil_hour(t), time::macros::datetime!(2026-11-29 11:00 UTC));
        let on = time::macros::datetime!(2026-11-29 10:00 UTC);
        assert_eq!(ceil_hour(on), on);
    }
}
