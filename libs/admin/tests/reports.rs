//! Usage, spend and request history through the admin API, on a real SQLite log and
//! views fed by the real projector: objects are created through the API, requests are
//! recorded in the usage stream as gateways record them, a quota ledger is written where
//! gateways write it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sg_admin::{Admin, AdminConfig};
use sg_crypto::{LocalKms, SecretString};
use sg_eventlog::sqlite::SqliteLog;
use sg_eventlog::{Append, EventLog};
use sg_events::{
    Actor, ConnectionId, Envelope, Event, ProjectId, Provider, TenantId, UsageRecordedV4,
};
use sg_projector::{Projector, ProjectorConfig};
use sg_spend::{Counter, Ledger, Period, Window};
use time::OffsetDateTime;
use tower::ServiceExt;
use uuid::Uuid;

const TOKEN: &str = "operator-token-for-tests";

struct Api {
    router: Router,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        accept: Option<&str>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/admin/v1{uri}"))
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => request.body(Body::empty()).unwrap(),
        };
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    async fn json(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, bytes) = self.call(method, uri, body, None).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{uri}: not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    async fn get(&self, uri: &str) -> Value {
        let (status, value) = self.json(Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {value}");
        value
    }

    /// Expects a 400 naming `param`.
    async fn refused(&self, uri: &str, param: &str) {
        let (status, value) = self.json(Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {value}");
        assert_eq!(value["error"]["param"], param, "{uri}: {value}");
        assert_eq!(value["error"]["type"], "invalid_request_error", "{value}");
    }
}

/// Nearest-rank percentile, in milliseconds.
fn percentile_ms(samples: &[u64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1] as f64 / 1000.0
}

/// Within the histograms' precision: at most 1/128 above the true percentile.
fn assert_percentile(got: &Value, samples: &[u64], q: f64) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("no percentile: {got}"));
    let truth = percentile_ms(samples, q);
    assert!(
        got >= truth && got <= truth * (1.0 + 1.0 / 128.0) + 0.001,
        "p{q}: {got} ms reported, {truth} ms from the samples"
    );
}

fn usd(value: &Value) -> u64 {
    (value.as_f64().unwrap() * 1_000_000.0).round() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_spend_and_request_history() {
    sg_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        SqliteLog::open(&dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let views = sg_views::Views::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("views.db").display()
    ))
    .await
    .unwrap();
    views.migrate().await.unwrap();
    let kms = Arc::new(LocalKms::from_bytes(zeroize::Zeroizing::new([7u8; 32])));
    let config = AdminConfig {
        operator_token: SecretString::new(TOKEN.into()),
        allow_private_upstreams: false,
        default_plan: "team".into(),
        gateway_url: None,
        console_origin: None,
    };
    let (admin, _task) = Admin::start(config, log.clone(), views.clone(), kms);
    let api = Api {
        router: admin.router(),
    };
    let (projector, mut progress) = Projector::start(
        log.clone(),
        views.clone(),
        ProjectorConfig {
            idle_check: Duration::from_millis(200),
            ..ProjectorConfig::default()
        },
    );

    // A tenant, a project with a connection, two keys; budgets: $1 a month for the
    // project, $0.50 a day for the first key.
    let (_, tenant) = api
        .json(Method::POST, "/tenants", Some(json!({"name": "acme"})))
        .await;
    let tenant_id: TenantId = tenant["id"].as_str().unwrap().parse().unwrap();
    let (_, project) = api
        .json(
            Method::POST,
            &format!("/tenants/{tenant_id}/projects"),
            Some(json!({"name": "reports"})),
        )
        .await;
    let p = project["id"].as_str().unwrap().to_owned();
    let (s, connection) = api
        .json(
            Method::POST,
            &format!("/projects/{p}/connections"),
            Some(json!({"provider": "mock"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{connection}");
    let mut keys = Vec::new();
    for name in ["one", "two"] {
        let (s, key) = api
            .json(
                Method::POST,
                &format!("/projects/{p}/keys"),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{key}");
        keys.push(key["id"].as_str().unwrap().to_owned());
    }
    for (path, limits) in [
        (
            format!("/projects/{p}/limits"),
            json!({"budget": {"usd": 1, "period": "month"}}),
        ),
        (
            format!("/keys/{}/limits", keys[0]),
            json!({"budget": {"usd": 0.5, "period": "day"}}),
        ),
    ] {
        let (s, body) = api.json(Method::PUT, &path, Some(limits)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }

    // 1,100 requests over the last 1.1 s, as gateways record them: two keys, two models
    // and none, some failed, latencies from 0.2 ms to 3 s.
    let now = OffsetDateTime::now_utc();
    let project_id: ProjectId = p.parse().unwrap();
    let connection_id: ConnectionId = connection["id"].as_str().unwrap().parse().unwrap();
    let models = [Some("mock-gpt-4o-mini"), Some("mock-gpt-4o"), None];
    let mut requests: Vec<UsageRecordedV4> = Vec::new();
    for i in 0..1_100u64 {
        requests.push(UsageRecordedV4 {
            request_id: Uuid::now_v7(),
            project_id: project_id.clone(),
            key_id: keys[(i % 2) as usize].parse().unwrap(),
            connection_id: Some(connection_id.clone()),
            provider: Some(Provider::Mock),
            model: models[(i % 3) as usize].map(str::to_owned),
            endpoint: "/v1/chat/completions".into(),
            status: if i % 7 == 0 { 500 } else { 200 },
            streamed: i % 2 == 0,
            prompt_tokens: 20,
            cached_prompt_tokens: i % 5,
            completion_tokens: 10,
            total_tokens: 30,
            cost_micros: if i % 3 == 2 { 0 } else { 100 + i },
            priced: i % 3 != 2,
            request_bytes: 0,
            response_bytes: 0,
            latency_us: 200 + (i * i * 7_919) % 3_000_000,
            started_at: now - time::Duration::milliseconds(i as i64),
            node: "gw-a".into(),
            client_ip: None,
            country: None,
        });
    }
    let appends = requests
        .iter()
        .map(|d| {
            let env = Envelope::new(
                tenant_id.clone(),
                Actor::node("gw-a"),
                Event::UsageRecorded(d.clone()),
            );
            Append {
                subject: env.subject(),
                payload: sg_events::encode(&env).into(),
                expected_last_subject_seq: None,
                msg_id: Some(env.id.to_string()),
            }
        })
        .collect();
    let mut last = 0;
    for appended in log.append_batch(appends).await {
        last = appended.unwrap().seq;
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|p| p.usage_seq >= last),
    )
    .await
    .unwrap()
    .unwrap();

    // ---- usage ----
    let latencies = |keep: &dyn Fn(&UsageRecordedV4) -> bool| -> Vec<u64> {
        requests
            .iter()
            .filter(|d| keep(d))
            .map(|d| d.latency_us)
            .collect()
    };
    let cost = |keep: &dyn Fn(&UsageRecordedV4) -> bool| -> u64 {
        requests
            .iter()
            .filter(|d| keep(d))
            .map(|d| d.cost_micros)
            .sum()
    };
    let report = api.get(&format!("/projects/{p}/usage")).await;
    let totals = &report["totals"];
    assert_eq!(totals["requests"], 1_100, "{report}");
    assert_eq!(totals["errors"], 158, "{report}");
    assert_eq!(totals["prompt_tokens"], 22_000);
    assert_eq!(totals["cached_prompt_tokens"], 2_200);
    assert_eq!(totals["completion_tokens"], 11_000);
    assert_eq!(totals["total_tokens"], 33_000);
    assert_eq!(totals["unpriced_requests"], 366);
    assert_eq!(usd(&totals["cost_usd"]), cost(&|_| true));
    let all = latencies(&|_| true);
    for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
        assert_percentile(&totals["latency_ms"][name], &all, q);
    }
    assert_eq!(report["group_by"], "day");
    let day_requests: u64 = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(day_requests, 1_100);

    let by_model = api
        .get(&format!("/projects/{p}/usage?group_by=model"))
        .await;
    let groups = by_model["data"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{by_model}");
    for group in groups {
        let model = group["group"].as_str().map(str::to_owned);
        let same = |d: &UsageRecordedV4| d.model == model;
        assert_eq!(group["requests"], latencies(&same).len() as u64, "{group}");
        assert_eq!(usd(&group["cost_usd"]), cost(&same), "{group}");
        for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
            assert_percentile(&group["latency_ms"][name], &latencies(&same), q);
        }
    }
    let unnamed = groups.iter().find(|g| g["group"].is_null()).unwrap();
    assert_eq!(unnamed["unpriced_requests"], unnamed["requests"]);

    let key_report = api
        .get(&format!("/keys/{}/usage?group_by=key", keys[1]))
        .await;
    let theirs = |d: &UsageRecordedV4| d.key_id.as_str() == keys[1];
    assert_eq!(key_report["data"].as_array().unwrap().len(), 1);
    assert_eq!(key_report["data"][0]["group"], keys[1].as_str());
    assert_eq!(key_report["totals"]["requests"], 550);
    assert_percentile(
        &key_report["totals"]["latency_ms"]["p99"],
        &latencies(&theirs),
        0.99,
    );

    // Whole hours: a range inside the current hour counts the hour; a range before it
    // counts nothing and reports no latency.
    let hour_start =
        OffsetDateTime::from_unix_timestamp(now.unix_timestamp() / 3_600 * 3_600).unwrap();
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let inside = api
        .get(&format!(
            "/projects/{p}/usage?group_by=hour&from={}&to={}",
            rfc(now + time::Duration::seconds(1)),
            rfc(now + time::Duration::seconds(2)),
        ))
        .await;
    assert_eq!(inside["from"], rfc(hour_start).as_str(), "{inside}");
    assert_eq!(
        inside["to"],
        rfc(hour_start + time::Duration::hours(1)).as_str()
    );
    let counted: u64 = inside["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["requests"].as_u64().unwrap())
        .sum();
    let in_this_hour = requests
        .iter()
        .filter(|d| d.started_at >= hour_start)
        .count();
    assert_eq!(counted, in_this_hour as u64, "{inside}");
    let before = api
        .get(&format!(
            "/projects/{p}/usage?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z"
        ))
        .await;
    assert_eq!(before["totals"]["requests"], 0);
    assert!(before["totals"]["latency_ms"]["p50"].is_null());
    assert!(before["data"].as_array().unwrap().is_empty());

    api.refused(&format!("/projects/{p}/usage?from=yesterday"), "from")
        .await;
    api.refused(
        &format!("/projects/{p}/usage?to=2026-13-01T00:00:00Z"),
        "to",
    )
    .await;
    api.refused(&format!("/projects/{p}/usage?group_by=week"), "group_by")
        .await;
    api.refused(
        &format!("/projects/{p}/usage?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
        "from",
    )
    .await;
    let (s, body) = api
        .json(Method::GET, "/projects/prj_nosuchproject/usage", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    // ---- spend ----
    let window = |period: Period| {
        let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Window::of(Counter::Budget(period), ms as u64)
    };
    let month = window(Period::Month);
    let in_window = |w: &Window, d: &UsageRecordedV4| {
        let ms = (d.started_at.unix_timestamp_nanos() / 1_000_000) as u64;
        w.start_ms.is_none_or(|s| ms >= s) && w.end_ms.is_none_or(|e| ms < e)
    };
    let spent_month = cost(&|d| in_window(&month, d));
    let spend = api.get(&format!("/projects/{p}/spend")).await;
    assert_eq!(spend["period"], "month", "{spend}");
    assert_eq!(spend["window"], month.id.as_str());
    assert_eq!(spend["budget_usd"], 1.0);
    assert_eq!(usd(&spend["spent_usd"]), spent_month);
    assert_eq!(spend["reserved_usd"], 0.0, "no quota ledger yet");
    assert!(
        spend["period_start"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z")
    );

    // The gateways' quota ledger for the project's budget: what it granted beyond the
    // settled spend is reserved, if it counts the current window.
    let subject = sg_subjects::quota(tenant_id.as_str(), "project", &p, "budget");
    let write_ledger = |window: String, granted: u64| {
        let log = log.clone();
        let subject = subject.clone();
        async move {
            let ledger = Ledger {
                window,
                granted,
                holders: Default::default(),
            };
            log.append(Append {
                subject,
                payload: serde_json::to_vec(&ledger).unwrap().into(),
                expected_last_subject_seq: None,
                msg_id: None,
            })
            .await
            .unwrap();
        }
    };
    write_ledger(month.id.clone(), spent_month + 250_000).await;
    let spend = api.get(&format!("/projects/{p}/spend")).await;
    assert_eq!(usd(&spend["reserved_usd"]), 250_000, "{spend}");
    write_ledger("M1999-01".into(), spent_month + 250_000).await;
    let spend = api.get(&format!("/projects/{p}/spend")).await;
    assert_eq!(spend["reserved_usd"], 0.0, "another window: {spend}");
    write_ledger(month.id.clone(), spent_month / 2).await;
    let spend = api.get(&format!("/projects/{p}/spend")).await;
    assert_eq!(spend["reserved_usd"], 0.0, "never negative: {spend}");

    // Another period than the budget's: no budget to compare with; total has no bounds.
    let total = api.get(&format!("/projects/{p}/spend?period=total")).await;
    assert!(total["budget_usd"].is_null(), "{total}");
    assert!(total["period_start"].is_null() && total["period_end"].is_null());
    assert_eq!(usd(&total["spent_usd"]), cost(&|_| true));
    api.refused(&format!("/projects/{p}/spend?period=year"), "period")
        .await;

    // A key: its own budget's period by default; a key without a budget: the month.
    let first = |d: &UsageRecordedV4| d.key_id.as_str() == keys[0];
    let day = window(Period::Day);
    let key_spend = api.get(&format!("/keys/{}/spend", keys[0])).await;
    assert_eq!(key_spend["period"], "day", "{key_spend}");
    assert_eq!(key_spend["budget_usd"], 0.5);
    assert_eq!(
        usd(&key_spend["spent_usd"]),
        cost(&|d| first(d) && in_window(&day, d))
    );
    let other = api.get(&format!("/keys/{}/spend", keys[1])).await;
    assert_eq!(other["period"], "month");
    assert!(other["budget_usd"].is_null());
    assert_eq!(
        usd(&other["spent_usd"]),
        cost(&|d| theirs(d) && in_window(&month, d))
    );

    // ---- request history ----
    let mut seen = Vec::new();
    let mut uri = format!("/projects/{p}/requests?limit=400");
    loop {
        let page = api.get(&uri).await;
        let data = page["data"].as_array().unwrap();
        seen.extend(
            data.iter()
                .map(|r| r["request_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(data.len(), 400);
                uri = format!("/projects/{p}/requests?limit=400&cursor={cursor}");
            }
            None => break,
        }
    }
    // Newest first, each request once.
    let expected: Vec<String> = requests.iter().map(|d| d.request_id.to_string()).collect();
    assert_eq!(seen, expected);

    let failed = api
        .get(&format!(
            "/projects/{p}/requests?status=500&key_id={}&limit=1000",
            keys[0]
        ))
        .await;
    let want = requests
        .iter()
        .filter(|d| d.status == 500 && first(d))
        .count();
    assert_eq!(failed["data"].as_array().unwrap().len(), want);
    assert!(failed["next_cursor"].is_null());
    let record = &failed["data"][0];
    assert_eq!(record["status"], 500);
    assert!(record["cost_usd"].is_number() && record["priced"].is_boolean());
    assert!(record["cached_prompt_tokens"].is_number());

    api.refused(
        &format!("/projects/{p}/requests?key_id=Not-A-Key"),
        "key_id",
    )
    .await;
    api.refused(&format!("/projects/{p}/requests?status=42"), "status")
        .await;
    api.refused(&format!("/projects/{p}/requests?limit=ten"), "limit")
        .await;
    api.refused(&format!("/projects/{p}/requests?cursor=bm9wZQ"), "cursor")
        .await;
    api.refused(&format!("/projects/{p}/requests?from=tomorrow"), "from")
        .await;

    // CSV: every matching request (more than one page of the views), a header first.
    let (s, headers, body) = api
        .call(
            Method::GET,
            &format!("/projects/{p}/requests"),
            None,
            Some("text/csv"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1 + 1_100);
    assert!(lines[0].starts_with("request_id,started_at,key_id,"));
    let columns = lines[0].split(',').count();
    let ids: Vec<String> = lines[1..]
        .iter()
        .map(|l| {
            assert_eq!(l.split(',').count(), columns, "{l}");
            l.split(',').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, expected);
    let (_, _, body) = api
        .call(
            Method::GET,
            &format!("/projects/{p}/requests?status=500"),
            None,
            Some("text/csv"),
        )
        .await;
    let failed_rows = String::from_utf8(body.to_vec())
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .count()
        - 1;
    assert_eq!(
        failed_rows,
        requests.iter().filter(|d| d.status == 500).count()
    );

    projector.stop().await.unwrap();
}
