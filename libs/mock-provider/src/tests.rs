use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    request_id: Option<String>,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn assert_openai_error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status);
        let v = self.json();
        let error = &v["error"];
        assert!(error["message"].is_string(), "{v}");
        assert!(error["type"].is_string(), "{v}");
        assert!(error.get("code").is_some(), "{v}");
        assert!(error.get("param").is_some(), "{v}");
        v
    }
}

async fn send(app: Router, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let header_str = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let content_type = header_str("content-type");
    let request_id = header_str(REQUEST_ID_HEADER);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        content_type,
        request_id,
        body,
    }
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn chat_body() -> Value {
    json!({
        "model": "mock-gpt-4o",
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": "first question" },
            { "role": "assistant", "content": "first answer" },
            { "role": "user", "content": "Hello there,   world!" }
        ]
    })
}

/// Parses an SSE body into its `data:` payloads, checking the framing.
fn sse_payloads(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "body must end with a blank line");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "one line per event");
            payload.to_owned()
        })
        .collect()
}

#[tokio::test]
async fn chat_answer_and_usage_are_deterministic() {
    let first = send(
        router(MockConfig::default()),
        post_json("/v1/chat/completions", &chat_body()),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert!(first.request_id.is_some());
    let v = first.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-gpt-4o");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "This is a mock reply to: Hello there, world!"
    );
    assert_eq!(choice["finish_reason"], "stop");
    // 3 + 2 + 2 + 3 words in the messages.
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    // "This is a mock reply to: Hello there, world!" has 9 words.
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert_eq!(v["usage"]["total_tokens"], 19);

    let second = send(
        router(MockConfig::default()),
        post_json("/v1/chat/completions", &chat_body()),
    )
    .await
    .json();
    assert_eq!(second["choices"], v["choices"]);
    assert_eq!(second["usage"], v["usage"]);
}

#[tokio::test]
async fn chat_echo_is_truncated_and_reads_content_parts() {
    let long = "x".repeat(500);
    let v = send(
        router(MockConfig::default()),
        post_json(
            "/v1/chat/completions",
            &json!({
                "model": "m",
                "messages": [{ "role": "user", "content": [
                    { "type": "text", "text": long },
                    { "type": "image_url", "image_url": { "url": "data:," } }
                ]}]
            }),
        ),
    )
    .await
    .json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, format!("{REPLY_PREFIX}{}", "x".repeat(200)));
    assert_eq!(v["model"], "m");
    assert_eq!(v["usage"]["prompt_tokens"], 1);
}

#[tokio::test]
async fn chat_without_words_counts_one_prompt_token() {
    let v = send(
        router(MockConfig::default()),
        post_json(
            "/v1/chat/completions",
            &json!({ "model": "m", "messages": [] }),
        ),
    )
    .await
    .json();
    assert_eq!(reply_for(&[]), "This is a mock reply to:");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "This is a mock reply to:"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn chat_max_tokens_cuts_the_reply() {
    let mut body = chat_body();
    body["max_tokens"] = json!(3);
    let v = send(
        router(MockConfig::default()),
        post_json("/v1/chat/completions", &body),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["message"]["content"], "This is a");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

async fn stream_payloads(body: Value) -> (Reply, Vec<String>) {
    let reply = send(
        router(MockConfig::default()),
        post_json("/v1/chat/completions", &body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let payloads = sse_payloads(&reply.body);
    (reply, payloads)
}

#[tokio::test]
async fn streaming_without_usage() {
    let mut body = chat_body();
    body["stream"] = json!(true);
    let (reply, payloads) = stream_payloads(body).await;
    assert_eq!(
        reply.content_type.as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(reply.request_id.is_some());
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    // 9 words, then the finish chunk.
    assert_eq!(chunks.len(), 10);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "mock-gpt-4o");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert!(c.get("usage").is_none());
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(text, "This is a mock reply to: Hello there, world!");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
}

#[tokio::test]
async fn streaming_with_usage_when_asked() {
    let mut body = chat_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    let (_, payloads) = stream_payloads(body).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(chunks.len(), 11);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({ "prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19 })
    );
    assert_eq!(chunks[9]["choices"][0]["finish_reason"], "stop");
    for c in &chunks[..10] {
        assert!(c["usage"].is_null());
    }

    let mut body = chat_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": false });
    let (_, payloads) = stream_payloads(body).await;
    assert_eq!(payloads.len(), 11);
    assert!(!payloads.iter().any(|p| p.contains("\"usage\"")));
}

#[tokio::test]
async fn streaming_sends_chunks_as_they_are_produced() {
    let interval = Duration::from_millis(100);
    let app = router(MockConfig {
        chunk_interval: interval,
        ..MockConfig::default()
    });
    let mut body = chat_body();
    body["stream"] = json!(true);
    let started = Instant::now();
    let response = app
        .oneshot(post_json("/v1/chat/completions", &body))
        .await
        .unwrap();
    let mut frames = response.into_body().into_data_stream();
    let first = frames.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(first.starts_with(b"data: {"));
    assert!(first.ends_with(b"\n\n"));
    let mut count = 1;
    while let Some(frame) = frames.next().await {
        let frame = frame.unwrap();
        assert!(frame.starts_with(b"data: "));
        count += 1;
    }
    let total = started.elapsed();
    // 9 words + finish + [DONE], one frame each.
    assert_eq!(count, 11);
    assert!(
        total >= interval * 10,
        "chunk interval not honoured: {total:?}"
    );
    assert!(
        first_at < interval * 5,
        "first chunk waited for the rest: {first_at:?}"
    );
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let latency = Duration::from_millis(80);
    let app = router(MockConfig {
        latency,
        ..MockConfig::default()
    });
    let started = Instant::now();
    let reply = send(app, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() >= latency);
}

#[tokio::test]
async fn api_key_is_checked_when_configured() {
    let app = router(MockConfig {
        expected_api_key: Some("sk-upstream".to_owned()),
        ..MockConfig::default()
    });
    let with_key = |key: Option<&str>| {
        let mut r = post_json("/v1/chat/completions", &chat_body());
        if let Some(k) = key {
            r.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {k}").parse().unwrap(),
            );
        }
        r
    };
    let wrong = send(app.clone(), with_key(Some("sk-wrong"))).await;
    let v = wrong.assert_openai_error(StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(wrong.content_type.as_deref(), Some("application/json"));
    assert!(wrong.request_id.is_some());

    let missing = send(app.clone(), with_key(None)).await;
    missing.assert_openai_error(StatusCode::UNAUTHORIZED);

    let models = send(
        app.clone(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    models.assert_openai_error(StatusCode::UNAUTHORIZED);

    let right = send(app, with_key(Some("sk-upstream"))).await;
    assert_eq!(right.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let app = router(MockConfig::default());
    let raw = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"model\": "))
        .unwrap();
    let reply = send(app.clone(), raw).await;
    let v = reply.assert_openai_error(StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "invalid_json");

    for body in [
        json!({ "messages": [] }),
        json!({ "model": 4, "messages": [] }),
        json!({ "model": "m" }),
        json!({ "model": "m", "messages": "hi" }),
        json!({ "model": "m", "messages": [], "stream": "yes" }),
        json!([1, 2]),
    ] {
        let reply = send(app.clone(), post_json("/v1/chat/completions", &body)).await;
        reply.assert_openai_error(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() {
    let app = router(MockConfig::default());
    let reply = send(
        app.clone(),
        post_json(
            "/v1/embeddings",
            &json!({ "model": "mock-embedding", "input": ["hello world", "other text here"] }),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "mock-embedding");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let vectors: Vec<Vec<f64>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    for vector in &vectors {
        assert_eq!(vector.len(), EMBEDDING_DIMS);
        let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_ne!(vectors[0], vectors[1]);
    assert_eq!(v["usage"], json!({ "prompt_tokens": 5, "total_tokens": 5 }));

    let single = send(
        app.clone(),
        post_json(
            "/v1/embeddings",
            &json!({ "model": "mock-embedding", "input": "hello world" }),
        ),
    )
    .await
    .json();
    assert_eq!(single["data"][0]["embedding"], data[0]["embedding"]);

    let b64 = send(
        app.clone(),
        post_json(
            "/v1/embeddings",
            &json!({ "model": "e", "input": "hello world", "encoding_format": "base64" }),
        ),
    )
    .await
    .json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, embedding_for("hello world").to_vec());

    for body in [
        json!({ "model": "e" }),
        json!({ "model": "e", "input": [] }),
        json!({ "model": "e", "input": [1, 2] }),
        json!({ "input": "x" }),
        json!({ "model": "e", "input": "x", "encoding_format": "int8" }),
    ] {
        send(app.clone(), post_json("/v1/embeddings", &body))
            .await
            .assert_openai_error(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn models_are_listed() {
    let reply = send(
        router(MockConfig::default()),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, MODELS);
}

fn multipart_request(parts: &[(&str, Option<&str>, &[u8])]) -> Request<Body> {
    let boundary = "sg-mock-boundary";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::post("/v1/audio/transcriptions")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn transcription_reports_the_file_size() {
    let app = router(MockConfig::default());
    let audio = vec![7u8; 1234];
    let reply = send(
        app.clone(),
        multipart_request(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), &audio),
        ]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({ "text": "mock transcription of 1234 bytes" })
    );

    send(
        app.clone(),
        multipart_request(&[("model", None, b"whisper-1")]),
    )
    .await
    .assert_openai_error(StatusCode::BAD_REQUEST);
    send(
        app.clone(),
        multipart_request(&[("file", Some("a.wav"), &audio)]),
    )
    .await
    .assert_openai_error(StatusCode::BAD_REQUEST);
    send(
        app,
        post_json("/v1/audio/transcriptions", &json!({ "model": "x" })),
    )
    .await
    .assert_openai_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_openai_errors() {
    let app = router(MockConfig::default());
    let reply = send(app.clone(), post_json("/v1/completions/legacy", &json!({}))).await;
    let v = reply.assert_openai_error(StatusCode::NOT_FOUND);
    assert_eq!(
        v["error"]["message"],
        "Invalid URL (POST /v1/completions/legacy)"
    );
    assert!(reply.request_id.is_some());

    send(
        app.clone(),
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await
    .assert_openai_error(StatusCode::NOT_FOUND);

    send(
        app,
        Request::get("/v1/chat/completions")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .assert_openai_error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn request_ids_differ() {
    let app = router(MockConfig::default());
    let a = send(
        app.clone(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    let b = send(app, Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_ne!(a.request_id, b.request_id);
}
