//! Spend control on real processes: limits and budgets hold for the whole cluster (three
//! gateways on a private nats-server and PostgreSQL), the same rules hold embedded, the
//! answers are what OpenAI clients expect (429, `Retry-After`, `x-ratelimit-*`, read by
//! the official Python SDK), and a node cut off from the log fails closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use support::*;

/// What a burst of requests was answered: (status, error code, headers) each.
struct Burst {
    answers: Vec<(u16, Option<String>, reqwest::header::HeaderMap)>,
}

impl Burst {
    fn count(&self, status: u16) -> usize {
        self.answers.iter().filter(|a| a.0 == status).count()
    }
    fn codes(&self, status: u16) -> std::collections::BTreeSet<String> {
        self.answers
            .iter()
            .filter(|a| a.0 == status)
            .map(|a| a.1.clone().unwrap_or_default())
            .collect()
    }
}

/// `n` chat requests with `body`, spread round robin over `gateways`, `concurrency` at a
/// time.
async fn burst(gateways: &[String], key: &str, body: Value, n: usize, concurrency: usize) -> Burst {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let answers = futures::stream::iter(0..n)
        .map(|i| {
            let url = format!("{}/v1/chat/completions", gateways[i % gateways.len()]);
            let (http, body, key) = (http.clone(), body.clone(), key.to_owned());
            async move {
                let r = http
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let text = r.text().await.unwrap();
                let code = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
                (status, code, headers)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Burst { answers }
}

/// Waits until at least `left` seconds remain in the current UTC minute, so a burst
/// counts in one window.
async fn with_minute_left(left: u64) {
    loop {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60;
        if 60 - s >= left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A key with `limits` in `project`; returns (key id, key) once `wait` says every node
/// knows it.
async fn limited_key(admin: &AdminClient, project: &str, limits: Value) -> (String, String, u64) {
    let (s, key, seq) = admin
        .post_seq(
            &format!("/projects/{project}/keys"),
            json!({"name": "limited", "limits": limits, "locks": {"ip": {"mode": "off"}}}),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
        seq,
    )
}

/// A chat request whose answer is exactly `max_tokens` completion tokens (the mock echoes
/// a long message) on `model`.
fn exact_body(model: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten eleven twelve"}],
    })
}

/// $10,000 per million output tokens, nothing for input: five output tokens cost $0.05.
async fn price_budget_model(admin: &AdminClient) -> u64 {
    let r = admin
        .http
        .put(format!("{}/prices", admin.base))
        .bearer_auth(TOKEN)
        .json(
            &json!({"model": "mock-budget", "input_usd_per_mtok": 0, "output_usd_per_mtok": 10000}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-securegate-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_budgets_hold_across_three_gateways() {
    sg_testkit::init_tracing();
    let cluster = Cluster::start(&[&[], &[], &[]]).await;
    let gateways: Vec<String> = cluster.gateways.iter().map(|g| g.url()).collect();
    let project = cluster.project().await;
    cluster.client.without_abuse_detection(&project).await;

    // 100 requests per minute; 2,000 requests over three nodes.
    let (_, rpm_key, seq) = limited_key(&cluster.client, &project, json!({"rpm": 100})).await;
    cluster.wait_for_seq(seq).await;
    with_minute_left(25).await;
    let b = burst(&gateways, &rpm_key, chat_body(false), 2_000, 24).await;
    let admitted = b.count(200);
    assert!(
        (95..=105).contains(&admitted),
        "{admitted} of 2000 admitted under a cluster-wide limit of 100 per minute"
    );
    assert_eq!(b.count(429), 2_000 - admitted, "{:?}", b.codes(503));
    assert_eq!(
        b.codes(429),
        ["rate_limit_exceeded".to_owned()].into(),
        "refusals are rate limits"
    );
    for (status, _, headers) in &b.answers {
        assert_eq!(headers["x-ratelimit-limit-requests"], "100", "{status}");
        assert!(headers.contains_key("x-ratelimit-remaining-requests"));
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
        if *status == 429 {
            let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&after), "Retry-After {after}");
        }
    }

    // A $1 budget and 200 concurrent requests of $0.05 each.
    let seq = price_budget_model(&cluster.client).await;
    cluster.wait_for_seq(seq).await;
    let (budget_key_id, budget_key, seq) = limited_key(
        &cluster.client,
        &project,
        json!({"budget": {"usd": 1.0, "period": "month"}}),
    )
    .await;
    cluster.wait_for_seq(seq).await;
    let b = burst(
        &gateways,
        &budget_key,
        exact_body("mock-budget", 5, false),
        200,
        200,
    )
    .await;
    let served = b.count(200);
    assert!(
        served <= 20,
        "{served} requests of $0.05 served on a $1 budget (at most 20)"
    );
    assert!(served >= 19, "only {served} of the 20 that fit were served");
    assert_eq!(b.count(429), 200 - served);
    assert_eq!(b.codes(429), ["insufficient_quota".to_owned()].into());

    // What the views settled agrees: never more than the budget plus one request.
    cluster.usage_settled().await;
    let (s, usage) = cluster
        .client
        .get(&format!("/keys/{budget_key_id}/usage"))
        .await;
    assert_eq!(s, 200, "{usage}");
    let spent = usage_cost(&usage);
    assert!(
        spent <= 1.05 + 1e-9,
        "settled spend ${spent} over a $1 budget plus one request"
    );
    assert!((spent - 0.05 * served as f64).abs() < 1e-9, "{usage}");
    // The spend answer: settled from the views, reserved from the quota ledger.
    let (s, spend) = cluster
        .client
        .get(&format!("/keys/{budget_key_id}/spend"))
        .await;
    assert_eq!(s, 200, "{spend}");
    assert_eq!(spend["budget_usd"].as_f64(), Some(1.0), "{spend}");
    assert_eq!(spend["period"], "month", "{spend}");
    let settled = spend["spent_usd"].as_f64().unwrap();
    let reserved = spend["reserved_usd"].as_f64().unwrap();
    assert!((settled - spent).abs() < 1e-9, "{spend}");
    assert!(
        reserved >= 0.0 && settled + reserved <= 1.0 + 1e-9,
        "{spend}"
    );
}

/// The settled cost in a usage answer.
fn usage_cost(usage: &Value) -> f64 {
    usage["totals"]["cost_usd"]
        .as_f64()
        .or_else(|| usage["cost_usd"].as_f64())
        .unwrap_or_else(|| panic!("no cost in {usage}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_enforces_the_same_rules() {
    let dev = Dev::start(&[], &[]).await;
    let (project, _, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let gw = [dev.gateway.url()];

    let (_, key, _) = limited_key(&dev.admin, &project, json!({"rpm": 100})).await;
    with_minute_left(20).await;
    let b = burst(&gw, &key, chat_body(false), 300, 16).await;
    assert_eq!(b.count(200), 100);
    assert_eq!(b.codes(429), ["rate_limit_exceeded".to_owned()].into());

    price_budget_model(&dev.admin).await;
    let (_, key, _) = limited_key(
        &dev.admin,
        &project,
        json!({"budget": {"usd": 1, "period": "day"}}),
    )
    .await;
    let b = burst(&gw, &key, exact_body("mock-budget", 5, false), 100, 50).await;
    assert_eq!(b.count(200), 20);
    assert_eq!(b.codes(429), ["insufficient_quota".to_owned()].into());

    // Concurrency: one in flight at a time; a slow stream holds the slot.
    let (_, key, _) = limited_key(&dev.admin, &project, json!({"concurrent": 1})).await;
    let b = burst(&gw, &key, chat_body(false), 40, 8).await;
    assert!(b.count(200) >= 1);
    assert_eq!(b.count(200) + b.count(429), 40);
    if b.count(429) > 0 {
        assert_eq!(b.codes(429), ["rate_limit_exceeded".to_owned()].into());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_count_streamed_answers() {
    let dev = Dev::start(&[], &[]).await;
    let (project, _, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let (key_id, key, _) = limited_key(&dev.admin, &project, json!({"tpm": 600})).await;
    with_minute_left(20).await;
    // Each streamed request reserves its prompt estimate (body/4) plus max_tokens, and
    // settles to what the stream's usage chunk reports.
    let mut served = 0;
    let mut refused = None;
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", dev.gateway.url()))
            .bearer_auth(&key)
            .json(&exact_body("mock-gpt-4o-mini", 5, true))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        match status {
            200 => {
                assert_stream(&text);
                assert_eq!(headers["x-ratelimit-limit-tokens"], "600");
                served += 1;
            }
            429 => {
                assert_error(&text, "rate_limit_exceeded");
                refused = Some(headers);
                break;
            }
            other => panic!("{other}: {text}"),
        }
    }
    let headers = refused.expect("the token limit never refused");
    assert!(headers.contains_key("retry-after"));
    // Each answer is 12 prompt + 5 completion = 17 tokens, reserved at about 50: far
    // more than 600/50 = 12 requests fit once settled, never more than 600/17.
    assert!(
        served > 12,
        "streamed answers were not settled: {served} served"
    );
    assert!(served <= 600 / 17, "{served} served over the limit");
    let usage = dev
        .admin
        .usage_within_a_second(&project, served as u64 + 1)
        .await;
    let _ = (usage, key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_reads_the_429() {
    let probe = tokio::process::Command::new(sg_testkit::python())
        .args(["-c", "import openai"])
        .output()
        .await
        .expect("Python is needed for the SDK test (sg_testkit::python(): SG_PYTHON, the active virtual environment, else python3)");
    assert!(
        probe.status.success(),
        "the official OpenAI Python SDK is missing from {}: `{} -m pip install openai` (.ci/run installs it; SG_PYTHON or an active virtual environment picks the interpreter)",
        sg_testkit::python().display(),
        sg_testkit::python().display()
    );
    let dev = Dev::start(&[], &[]).await;
    let (project, _, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let (_, key, _) = limited_key(&dev.admin, &project, json!({"rpm": 2, "tpm": 100000})).await;
    with_minute_left(15).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/rate_limit.py");
    let out = tokio::process::Command::new(sg_testkit::python())
        .arg(script)
        .env("SG_BASE_URL", format!("{}/v1", dev.gateway.url()))
        .env("SG_KEY", &key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        dev.gateway.log()
    );
    assert!(stdout.contains("rate limit checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_prices_are_validated_and_readable() {
    let dev = Dev::start(&[], &[]).await;
    let admin = &dev.admin;
    let (project, key_id, _) = admin.setup(json!({"provider": "mock"})).await;

    for (limits, param) in [
        (json!({"rpm": 0}), "limits.rpm"),
        (json!({"rpm": -5}), "limits.rpm"),
        (json!({"tpm": 2.5}), "limits.tpm"),
        (json!({"concurrent": 99_999_999}), "limits.concurrent"),
        (
            json!({"budget": {"usd": -1, "period": "month"}}),
            "limits.budget.usd",
        ),
        (
            json!({"budget": {"usd": 0, "period": "month"}}),
            "limits.budget.usd",
        ),
        (
            json!({"budget": {"usd": 5, "period": "year"}}),
            "limits.budget.period",
        ),
    ] {
        for path in [
            format!("/keys/{key_id}/limits"),
            format!("/projects/{project}/limits"),
        ] {
            let (s, body) = admin.put(&path, limits.clone()).await;
            assert_eq!(s, 400, "{path} {limits}: {body}");
            assert_eq!(body["error"]["param"], param, "{body}");
        }
        let (s, body) = admin
            .post(
                &format!("/projects/{project}/keys"),
                json!({"name": "x", "limits": limits}),
            )
            .await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (s, body) = admin
        .put(&format!("/keys/{key_id}/limits"), json!({"rpx": 1}))
        .await;
    assert_eq!(s, 400, "unknown fields are refused: {body}");

    let limits = json!({"rpm": 60, "rpd": 1000, "tpm": 50000, "concurrent": 4,
        "budget": {"usd": 12.5, "period": "month"}});
    let (s, body) = admin
        .put(&format!("/keys/{key_id}/limits"), limits.clone())
        .await;
    assert_eq!((s, &body), (200, &limits));
    let (s, body) = admin.get(&format!("/keys/{key_id}/limits")).await;
    assert_eq!((s, &body), (200, &limits));
    let (s, body) = admin
        .put(&format!("/projects/{project}/limits"), json!({"rpd": 5}))
        .await;
    assert_eq!((s, body), (200, json!({"rpd": 5})));
    let (s, _) = admin.get("/keys/key_000000000000nope/limits").await;
    assert_eq!(s, 404);

    // Prices: built in, overridden, removed.
    let (s, prices) = admin.get("/prices").await;
    assert_eq!(s, 200);
    let find = |prices: &Value, model: &str| {
        prices["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["model"] == model)
            .cloned()
    };
    assert_eq!(find(&prices, "gpt-4o-mini").unwrap()["source"], "default");
    for (bad, param) in [
        (
            json!({"model": "m", "input_usd_per_mtok": -1, "output_usd_per_mtok": 1}),
            "input_usd_per_mtok",
        ),
        (
            json!({"model": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1e9}),
            "output_usd_per_mtok",
        ),
        (
            json!({"model": "", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}),
            "model",
        ),
    ] {
        let (s, body) = admin.put("/prices", bad).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (s, prices) = admin
        .put(
            "/prices",
            json!({"model": "gpt-4o-mini", "input_usd_per_mtok": 0.2, "output_usd_per_mtok": 0.8, "cached_input_usd_per_mtok": 0.1}),
        )
        .await;
    assert_eq!(s, 200, "{prices}");
    let p = find(&prices, "gpt-4o-mini").unwrap();
    assert_eq!(
        (
            p["source"].as_str(),
            p["input_usd_per_mtok"].as_f64(),
            p["cached_input_usd_per_mtok"].as_f64()
        ),
        (Some("operator"), Some(0.2), Some(0.1))
    );
    let (s, prices) = admin
        .post("/prices/remove", json!({"model": "gpt-4o-mini"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(find(&prices, "gpt-4o-mini").unwrap()["source"], "default");
    let (s, _) = admin
        .post("/prices/remove", json!({"model": "gpt-4o-mini"}))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_from_the_log_serves_what_it_holds_then_fails_closed() {
    sg_testkit::init_tracing();
    let nats = sg_testkit::nats::NatsServer::start().await.unwrap();
    let proxy =
        sg_testkit::TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], nats.port())))
            .await
            .unwrap();
    let through_proxy = format!("nats://127.0.0.1:{}", proxy.port());
    // A long staleness bound, so that what refuses is the limit, not the staleness.
    let cluster = Cluster::start_with(
        Nats::Single(nats),
        &[&["--nats-url", &through_proxy, "--max-staleness", "60s"]],
        &[],
    )
    .await;
    let project = cluster.project().await;
    cluster.client.unmetered(&project).await;
    let (_, key, seq) = limited_key(&cluster.client, &project, json!({"rpm": 1_000_000})).await;
    cluster.wait_for_seq(seq).await;
    let gw = [cluster.gateways[0].url()];
    with_minute_left(30).await;
    let b = burst(&gw, &key, chat_body(false), 50, 4).await;
    assert_eq!(b.count(200), 50);

    proxy.cut();
    let b = burst(&gw, &key, chat_body(false), 3_000, 16).await;
    let served = b.count(200);
    assert!(b.count(503) > 0, "never refused while cut off");
    assert_eq!(b.codes(503), ["limit_unavailable".to_owned()].into());
    assert_eq!(served + b.count(503), 3_000);
    // It served no more than it held: a slice sized for about a second of its demand.
    assert!(served < 3_000, "served {served} without the log");

    proxy.restore();
    let back = eventually(Duration::from_secs(30), || async {
        chat(&gw[0], &key, false).await.0 == 200
    })
    .await;
    assert!(back, "limits did not recover once the log was back");
}
