//! Embedded mode end to end: the real `securegate dev` process, no external service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use sg_testkit::mock_upstream::MockUpstream;
use support::*;

async fn start_dev() -> Dev {
    Dev::start(&["--max-body-bytes", "65536"], &[]).await
}

#[tokio::test]
async fn quickstart_flow_with_the_mock_provider_survives_a_restart() {
    let mut dev = start_dev().await;
    let (project, key_id, key) = dev.admin.setup(json!({"provider": "mock"})).await;
    let gw = dev.gateway.url();

    let (s, body) = chat(&gw, &key, false).await;
    assert_eq!(s, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("hello from the end-to-end test")
    );
    let (s, body) = chat(&gw, &key, true).await;
    assert_eq!(s, 200, "{body}");
    assert_stream(&body);

    let usage = dev.admin.usage_within_a_second(&project, 2).await;
    assert_eq!(usage["totals"]["requests"], 2, "{usage}");
    assert!(
        usage["totals"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    // The streamed request is counted with its tokens although the client never saw a usage chunk.
    assert!(
        usage["totals"]["completion_tokens"].as_u64().unwrap() >= 2,
        "{usage}"
    );
    assert_eq!(
        usage["totals"]["total_tokens"].as_u64().unwrap(),
        usage["totals"]["prompt_tokens"].as_u64().unwrap()
            + usage["totals"]["completion_tokens"].as_u64().unwrap()
    );
    let (_, keys) = dev.admin.get(&format!("/projects/{project}/keys")).await;
    assert_eq!(keys["data"][0]["id"], key_id.as_str());
    assert!(
        !keys.to_string().contains(&key),
        "the key list must not show the key"
    );

    // A second key, then revoke the first: it stops working within a second.
    let (s, second) = dev
        .admin
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "second"}),
        )
        .await;
    assert_eq!(s, 201);
    let second = second["key"].as_str().unwrap().to_owned();
    let (s, _) = dev
        .admin
        .post(&format!("/keys/{key_id}/revoke"), json!({"reason": "test"}))
        .await;
    assert_eq!(s, 200);
    let gw2 = gw.clone();
    let key2 = key.clone();
    assert!(
        eventually(Duration::from_secs(1), || {
            let (gw, key) = (gw2.clone(), key2.clone());
            async move { chat(&gw, &key, false).await.0 == 401 }
        })
        .await,
        "a revoked key still works after a second"
    );

    // Restart the process: everything is still there.
    dev.gateway.restart().await;
    wait_ready(
        &dev.admin.base.replace("/admin/v1", ""),
        &dev.gateway.log_path,
    )
    .await;
    let (s, body) = chat(&gw, &key, false).await;
    assert_eq!(s, 401);
    assert_error(&body, "key_revoked");
    let (s, body) = chat(&gw, &second, false).await;
    assert_eq!(s, 200, "{body}");
    let usage = dev.admin.usage_within_a_second(&project, 3).await;
    // 2 + the revoked attempt is not counted (unauthenticated) + 1 = 3, nothing twice.
    assert_eq!(usage["totals"]["requests"], 3, "{usage}");
    let (_, keys) = dev.admin.get(&format!("/projects/{project}/keys")).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 2, "{keys}");
    let statuses: Vec<_> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        statuses.contains(&"revoked".to_owned()) && statuses.contains(&"active".to_owned()),
        "{keys}"
    );
}

#[tokio::test]
async fn provider_key_is_injected_and_bad_input_gets_clear_errors() {
    let dev = start_dev().await;
    let mut upstream = MockUpstream::start(sg_testkit::MockConfig {
        expected_api_key: Some("sk-test-provider-key".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let (project, _, key) = dev
        .admin
        .setup(json!({"provider": "openai", "api_key": "sk-test-provider-key", "base_url": upstream.base_url()}))
        .await;
    let gw = dev.gateway.url();
    let http = reqwest::Client::new();

    // The provider sees the provider key, never the proxy key.
    let (s, body) = chat(&gw, &key, false).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-test-provider-key")
    );
    let (s, body) = chat(&gw, &key, true).await;
    assert_eq!(s, 200, "{body}");
    assert_stream(&body);

    // Embeddings and other /v1 paths pass through.
    let r = http
        .post(format!("{gw}/v1/embeddings"))
        .bearer_auth(&key)
        .json(&json!({"model": "mock-embedding", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let emb: serde_json::Value = r.json().await.unwrap();
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
    let r = http
        .get(format!("{gw}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Malformed JSON: 400.
    let r = http
        .post(format!("{gw}/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_error(&r.text().await.unwrap(), "invalid_json");

    // Missing, mistyped, unknown keys: 401 before anything else.
    let r = http
        .post(format!("{gw}/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.text().await.unwrap(), "missing_api_key");
    let mut typo = key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let (s, body) = chat(&gw, &String::from_utf8(typo).unwrap(), false).await;
    assert_eq!(s, 401);
    assert_error(&body, "invalid_api_key");
    assert!(body.contains("checksum"), "{body}");
    let (s, body) = chat(&gw, "SG_notakey", false).await;
    assert_eq!(s, 401);
    assert_error(&body, "invalid_api_key");
    // A header value no client library would send (bytes outside ASCII, legal on the
    // wire): written raw, it must still get a clean 401.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(dev.gateway.addr)
            .await
            .unwrap();
        let body = serde_json::to_vec(&chat_body(false)).unwrap();
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: Bearer ",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(b"\xff\xfe\x80SG_\r\n\r\n");
        request.extend_from_slice(&body);
        tcp.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.contains("\"code\":\"missing_api_key\"")
                || answer.contains("\"code\":\"invalid_api_key\""),
            "{answer}"
        );
    }

    // Oversize body: 413 (this instance accepts 64 KiB).
    let huge = json!({"model": "mock-gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let r = http
        .post(format!("{gw}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_error(&r.text().await.unwrap(), "request_too_large");

    // Unknown path: 404 in the same shape.
    let r = http.get(format!("{gw}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Upstream down: 502, and the gateway keeps serving once it is back.
    upstream.stop().await;
    let (s, body) = chat(&gw, &key, false).await;
    assert_eq!(s, 502, "{body}");
    assert_error(&body, "upstream_unavailable");
    upstream.start_again().await.unwrap();
    let (s, _) = chat(&gw, &key, false).await;
    assert_eq!(s, 200);

    // The admin API: no token, wrong token → 401; bad JSON → 400; unknown ids → 404.
    let r = http
        .post(format!("{}/tenants", dev.admin.base))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.text().await.unwrap(), "missing_token");
    let r = http
        .post(format!("{}/tenants", dev.admin.base))
        .bearer_auth("wrong")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.text().await.unwrap(), "invalid_token");
    let r = http
        .post(format!("{}/tenants", dev.admin.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_error(&r.text().await.unwrap(), "invalid_json");
    let (s, body) = dev
        .admin
        .post("/tenants/ten_doesnotexist/projects", json!({"name": "x"}))
        .await;
    assert_eq!(s, 404);
    assert_error(&body.to_string(), "unknown_tenant");
    let (s, body) = dev
        .admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "carrier-pigeon"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_error(&body.to_string(), "invalid_provider");

    // Every request the gateway authenticated is in the usage, errors included.
    let usage = dev.admin.usage_within_a_second(&project, 8).await;
    assert!(usage["totals"]["errors"].as_u64().unwrap() >= 3, "{usage}");
}

#[tokio::test]
async fn idempotency_key_makes_commands_safe_to_retry() {
    let dev = start_dev().await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value, idem: &str| {
        http.post(format!("{}{path}", dev.admin.base))
            .bearer_auth(TOKEN)
            .header("idempotency-key", idem)
            .json(&body)
            .send()
    };
    let first = post("/tenants", json!({"name": "a"}), "same-key")
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = post("/tenants", json!({"name": "a"}), "same-key")
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);

    let (_, project) = dev
        .admin
        .post(
            &format!("/tenants/{}/projects", first["id"].as_str().unwrap()),
            json!({"name": "p"}),
        )
        .await;
    let project = project["id"].as_str().unwrap();
    dev.admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "mock"}),
        )
        .await;
    let k1 = post(
        &format!("/projects/{project}/keys"),
        json!({"name": "k"}),
        "key-1",
    )
    .await
    .unwrap();
    assert_eq!(k1.status(), 201);
    let k2 = post(
        &format!("/projects/{project}/keys"),
        json!({"name": "k"}),
        "key-1",
    )
    .await
    .unwrap();
    assert_eq!(k2.status(), 409);
    assert_error(&k2.text().await.unwrap(), "idempotency_key_reused");
    let (_, keys) = dev.admin.get(&format!("/projects/{project}/keys")).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1, "{keys}");
}

#[tokio::test]
async fn rotating_a_provider_key_switches_requests_without_errors() {
    let dev = start_dev().await;
    let upstream = MockUpstream::start(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    let (project, _, key) = dev
        .admin
        .setup(json!({"provider": "openai", "api_key": "sk-old-provider-key", "base_url": upstream.base_url()}))
        .await;
    let gw = dev.gateway.url();
    let (s, _) = chat(&gw, &key, false).await;
    assert_eq!(s, 200);
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-old-provider-key")
    );

    // Requests keep flowing while the key is rotated.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (gw, key, stop) = (gw.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && statuses.len() < 2000 {
                statuses.push(chat(&gw, &key, false).await.0);
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, conns) = dev
        .admin
        .get(&format!("/projects/{project}/connections"))
        .await;
    let connection = conns["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, body) = dev
        .admin
        .post(
            &format!("/connections/{connection}/rotate"),
            json!({"api_key": "sk-new-provider-key"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(!body.to_string().contains("sk-new-provider-key"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = traffic.await.unwrap();
    assert!(statuses.len() > 5, "the traffic loop barely ran");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "errors during rotation: {statuses:?}"
    );
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-new-provider-key")
    );

    let (s, body) = dev
        .admin
        .post("/connections/openai_nope/rotate", json!({"api_key": "x"}))
        .await;
    assert_eq!(s, 404);
    assert_error(&body.to_string(), "unknown_connection");
}

#[tokio::test]
async fn the_model_registry_routes_client_names_to_a_connection_and_an_exact_model() {
    let dev = start_dev().await;
    let upstream = MockUpstream::start(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    let (_, tenant) = dev.admin.post("/tenants", json!({"name": "t"})).await;
    let (_, project) = dev
        .admin
        .post(
            &format!("/tenants/{}/projects", tenant["id"].as_str().unwrap()),
            json!({"name": "p"}),
        )
        .await;
    let project = project["id"].as_str().unwrap().to_owned();
    let (_, local) = dev
        .admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "mock"}),
        )
        .await;
    let (_, remote) = dev
        .admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "openai", "api_key": "sk-r", "base_url": upstream.base_url()}),
        )
        .await;
    let (s, routes) = dev
        .admin
        .http
        .put(format!("{}/projects/{project}/models", dev.admin.base))
        .bearer_auth(TOKEN)
        .json(&json!({"model": "gpt-4", "connection_id": remote["id"], "upstream_model": "mock-gpt-4o-2024-08-06"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(s, 200, "{:?}", routes.text().await);
    let (_, key) = dev
        .admin
        .post(&format!("/projects/{project}/keys"), json!({"name": "k"}))
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    let gw = dev.gateway.url();
    let http = reqwest::Client::new();
    let ask = |model: &str| {
        http.post(format!("{gw}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // `gpt-4` goes to the routed connection as the exact upstream model…
    let answer: serde_json::Value = ask("gpt-4").await.unwrap().json().await.unwrap();
    assert_eq!(answer["model"], "mock-gpt-4o-2024-08-06", "{answer}");
    assert_eq!(upstream.request_count(), 1);
    // …other names to the key's first connection (the local mock), unchanged.
    let answer: serde_json::Value = ask("mock-gpt-4o-mini").await.unwrap().json().await.unwrap();
    assert_eq!(answer["model"], "mock-gpt-4o-mini");
    assert_eq!(upstream.request_count(), 1, "{local}");
    // /v1/models lists what the key may use: the registry's names.
    let models: serde_json::Value = http
        .get(format!("{gw}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "gpt-4", "{models}");
    // Removing a name that is not routed is a clear 404; removing a route restores the default.
    let (s, body) = dev
        .admin
        .post(
            &format!("/projects/{project}/models/remove"),
            json!({"model": "not-routed"}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = dev
        .admin
        .post(
            &format!("/projects/{project}/models/remove"),
            json!({"model": "gpt-4"}),
        )
        .await;
    assert_eq!(s, 200);
    let answer: serde_json::Value = ask("gpt-4").await.unwrap().json().await.unwrap();
    assert_eq!(answer["model"], "gpt-4");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn usage_spend_and_request_history_of_real_traffic() {
    let dev = start_dev().await;
    let (project, key_id, key) = dev.admin.setup(json!({"provider": "mock"})).await;
    // A budget far above what these requests cost.
    let (s, body) = dev
        .admin
        .put(
            &format!("/projects/{project}/limits"),
            json!({"budget": {"usd": 1000, "period": "month"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let gw = dev.gateway.url();
    for i in 0..5 {
        let (s, body) = chat(&gw, &key, i % 2 == 0).await;
        assert_eq!(s, 200, "{body}");
    }
    let usage = dev.admin.usage_within_a_second(&project, 5).await;
    let totals = &usage["totals"];
    assert_eq!(totals["requests"], 5, "{usage}");
    assert_eq!(totals["errors"], 0, "{usage}");
    assert_eq!(
        totals["unpriced_requests"], 0,
        "the mock models are priced: {usage}"
    );
    let cost = totals["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{usage}");
    let latency = &totals["latency_ms"];
    let (p50, p95, p99) = (
        latency["p50"].as_f64().unwrap(),
        latency["p95"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{usage}");

    let (s, by_model) = dev
        .admin
        .get(&format!("/projects/{project}/usage?group_by=model"))
        .await;
    assert_eq!(s, 200, "{by_model}");
    assert_eq!(by_model["data"].as_array().unwrap().len(), 1, "{by_model}");
    assert_eq!(by_model["data"][0]["group"], "mock-gpt-4o-mini");
    assert_eq!(by_model["data"][0]["requests"], 5);
    let (s, by_hour) = dev
        .admin
        .get(&format!("/keys/{key_id}/usage?group_by=hour"))
        .await;
    assert_eq!(s, 200, "{by_hour}");
    assert_eq!(by_hour["totals"]["requests"], 5, "{by_hour}");
    assert_eq!(by_hour["group_by"], "hour");
    let (s, error) = dev
        .admin
        .get(&format!("/projects/{project}/usage?group_by=week"))
        .await;
    assert_eq!(s, 400, "{error}");
    assert_eq!(error["error"]["param"], "group_by");

    // Spend of the month against the budget.
    let (s, spend) = dev.admin.get(&format!("/projects/{project}/spend")).await;
    assert_eq!(s, 200, "{spend}");
    assert_eq!(spend["period"], "month");
    assert_eq!(spend["budget_usd"], 1000.0);
    let spent = spend["spent_usd"].as_f64().unwrap();
    assert!((spent - cost).abs() < 1e-9, "{spend} vs {usage}");
    assert!(spend["reserved_usd"].as_f64().unwrap() >= 0.0);
    let (s, key_spend) = dev.admin.get(&format!("/keys/{key_id}/spend")).await;
    assert_eq!(s, 200, "{key_spend}");
    assert!(key_spend["budget_usd"].is_null(), "{key_spend}");
    let (s, error) = dev
        .admin
        .get(&format!("/projects/{project}/spend?period=year"))
        .await;
    assert_eq!(s, 400, "{error}");
    assert_eq!(error["error"]["param"], "period");

    // Request history: pages of two, then the same as CSV.
    let mut ids = Vec::new();
    let mut path = format!("/projects/{project}/requests?limit=2");
    loop {
        let (s, page) = dev.admin.get(&path).await;
        assert_eq!(s, 200, "{page}");
        for r in page["data"].as_array().unwrap() {
            assert!(
                r["cost_usd"].as_f64().unwrap() > 0.0 && r["priced"] == true,
                "{r}"
            );
            assert!(
                r["request_bytes"].as_u64().unwrap() > 0
                    && r["response_bytes"].as_u64().unwrap() > 0,
                "{r}"
            );
            ids.push(r["request_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/projects/{project}/requests?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 5);
    let csv = dev
        .admin
        .http
        .get(format!("{}/projects/{project}/requests", dev.admin.base))
        .bearer_auth(TOKEN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 6, "{csv}");
    assert!(lines[0].starts_with("request_id,"), "{csv}");
    let csv_ids: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(
        csv_ids, ids,
        "the CSV lists the requests the pages did, in order"
    );
}
