//! The mock upstream over real HTTP.
// A panic in a test helper is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use sg_testkit::{MockConfig, MockUpstream};

fn chat(stream: bool) -> Value {
    json!({
        "model": "mock-gpt-4o-mini",
        "stream": stream,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "ping over http" }]
    })
}

#[tokio::test]
async fn mock_upstream_serves_counts_stops_and_starts_again() {
    sg_testkit::init_tracing();
    let mut upstream = MockUpstream::start(MockConfig {
        expected_api_key: Some("sk-provider".to_owned()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let base = upstream.base_url();
    assert_eq!(base, format!("http://127.0.0.1:{}/v1", upstream.port()));
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth("sk-provider")
        .header("content-type", "application/json")
        .body(chat(false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "This is a mock reply to: ping over http"
    );
    assert_eq!(body["model"], "mock-gpt-4o-mini");
    assert_eq!(upstream.request_count(), 1);
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-provider")
    );

    let wrong = http
        .get(format!("{base}/models"))
        .bearer_auth("sk-gateway-should-not-leak")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let error: Value = serde_json::from_slice(&wrong.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    assert_eq!(upstream.request_count(), 2);
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-gateway-should-not-leak")
    );

    upstream.stop().await;
    assert!(!upstream.is_running());
    let down = http.get(format!("{base}/models")).send().await.unwrap_err();
    assert!(down.is_connect(), "expected a refused connection: {down}");

    upstream.start_again().await.unwrap();
    assert_eq!(upstream.base_url(), base);
    let up = http
        .get(format!("{base}/models"))
        .bearer_auth("sk-provider")
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    assert_eq!(upstream.request_count(), 3);

    upstream.reset_stats();
    assert_eq!(upstream.request_count(), 0);
    assert_eq!(upstream.last_authorization(), None);

    let port = upstream.port();
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn streaming_arrives_chunk_by_chunk_over_http() {
    let interval = Duration::from_millis(100);
    let upstream = MockUpstream::start(MockConfig {
        chunk_interval: interval,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", upstream.base_url()))
        .header("content-type", "application/json")
        .body(chat(true).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream; charset=utf-8"
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        first_at.get_or_insert_with(|| started.elapsed());
        text.push_str(std::str::from_utf8(&piece).unwrap());
    }
    let total = started.elapsed();
    // 8 words, the finish chunk, the usage chunk and [DONE]: 10 pauses.
    assert!(total >= interval * 10, "{total:?}");
    let first_at = first_at.unwrap();
    assert!(
        first_at < interval * 5,
        "first chunk came late: {first_at:?}"
    );

    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 3);
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    assert_eq!(upstream.request_count(), 1);
    assert_eq!(upstream.last_authorization(), None);
}
