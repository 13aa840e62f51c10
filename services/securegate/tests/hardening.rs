//! What a hostile client can do with a stolen key, tried against the real binary with a
//! recording stand-in provider that proves what reached it (and what did not): bodies
//! whose model the provider would read differently, paths that climb out of the base
//! URL, headers that must not be forwarded, proxies from the environment, provider
//! errors that echo the credential, slow and idle clients, and the locks that need no
//! body. One class per test; every refusal is checked to have reached nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sg_testkit::mock_upstream::MockUpstream;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROVIDER_KEY: &str = "sk-test-provider-key-0123456789abcdefXYZ";
const ALLOWED: &str = "mock-gpt-4o-mini";

struct World {
    dev: Dev,
    upstream: MockUpstream,
    project: String,
    connection: String,
    /// Locked to [`ALLOWED`] and `whisper-1`.
    locked: String,
    /// No model lock.
    open: String,
}

async fn world(extra: &[&str], envs: &[(&str, &str)]) -> World {
    let upstream = MockUpstream::start_recording(sg_testkit::MockConfig {
        expected_api_key: Some(PROVIDER_KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dev = Dev::start(extra, envs).await;
    let (_, tenant) = dev.admin.post("/tenants", json!({"name": "acme"})).await;
    let (_, project) = dev
        .admin
        .post(
            &format!("/tenants/{}/projects", tenant["id"].as_str().unwrap()),
            json!({"name": "agents"}),
        )
        .await;
    let project = project["id"].as_str().unwrap().to_owned();
    let (s, connection) = dev
        .admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({
                "provider": "openai",
                "base_url": upstream.base_url(),
                "api_key": PROVIDER_KEY,
                "openai_organization": "org-operator",
                "openai_project": "proj_operator",
            }),
        )
        .await;
    assert_eq!(s, 201, "{connection}");
    assert_eq!(connection["openai_organization"], "org-operator");
    let key = |locks: Value| {
        let admin = dev.admin.clone();
        let project = project.clone();
        async move {
            let (s, k) = admin
                .post(
                    &format!("/projects/{project}/keys"),
                    json!({"name": "k", "locks": locks}),
                )
                .await;
            assert_eq!(s, 201, "{k}");
            k["key"].as_str().unwrap().to_owned()
        }
    };
    let locked = key(json!({"ip": {"mode": "off"}, "models": [ALLOWED, "whisper-1"]})).await;
    let open = key(json!({"ip": {"mode": "off"}})).await;
    World {
        connection: connection["id"].as_str().unwrap().to_owned(),
        dev,
        upstream,
        project,
        locked,
        open,
    }
}

impl World {
    fn gw(&self) -> String {
        self.dev.gateway.url()
    }

    /// A request with exactly this content type (or none) and body.
    async fn send(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.gw()))
            .bearer_auth(key)
            .body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.text().await.unwrap())
    }

    async fn chat(&self, key: &str, content_type: Option<&str>, body: &str) -> (u16, String) {
        self.send(
            key,
            reqwest::Method::POST,
            "/v1/chat/completions",
            content_type,
            body.as_bytes().to_vec(),
            &[],
        )
        .await
    }

    /// Asserts a refusal with `status` and `code` that reached nothing upstream.
    fn refused(&self, (status, body): (u16, String), expected: u16, code: &str, case: &str) {
        assert_eq!(status, expected, "{case}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{case}: {body}"));
        assert_eq!(v["error"]["code"], code, "{case}: {body}");
        assert_eq!(
            self.upstream.request_count(),
            0,
            "{case}: a refused request reached the provider"
        );
    }
}

fn chat_body(model: &str) -> String {
    format!("{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}")
}

/// A multipart body with `boundary`; each part is (header lines, content).
fn form(boundary: &str, newline: &str, parts: &[(&str, &str)]) -> Vec<u8> {
    let mut b = String::new();
    for (headers, content) in parts {
        b.push_str(&format!(
            "--{boundary}{newline}{headers}{newline}{newline}{content}{newline}"
        ));
    }
    b.push_str(&format!("--{boundary}--{newline}"));
    b.into_bytes()
}

const FILE_PART: &str =
    "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";

fn model_part(model: &str) -> (&'static str, String) {
    (
        "Content-Disposition: form-data; name=\"model\"",
        model.to_owned(),
    )
}

#[tokio::test]
async fn the_model_lock_decides_on_what_the_provider_reads() {
    let w = world(&[], &[]).await;
    let post = reqwest::Method::POST;

    // JSON under any spelling of its type is read, so the lock sees the real model.
    for ct in [
        "Application/JSON",
        "APPLICATION/JSON; CHARSET=UTF-8",
        "application/json;charset=\"utf-8\"",
    ] {
        w.refused(
            w.chat(&w.locked, Some(ct), &chat_body("gpt-4")).await,
            403,
            "model_not_allowed",
            ct,
        );
    }
    // Types the gateway cannot vouch for are refused for every key, not forwarded.
    for (ct, code) in [
        (Some("text/plain"), "unsupported_content_type"),
        (Some("application/vnd.api+json"), "unsupported_content_type"),
        (
            Some("application/x-www-form-urlencoded"),
            "unsupported_content_type",
        ),
        (None, "unsupported_content_type"),
        (
            Some("application/json; charset=utf-16"),
            "unsupported_content_type",
        ),
        (
            Some("application/json; charset=utf-8; charset=latin1"),
            "invalid_content_type",
        ),
    ] {
        for key in [&w.locked, &w.open] {
            w.refused(
                w.chat(key, ct, &chat_body("gpt-4")).await,
                400,
                code,
                &format!("{ct:?}"),
            );
        }
    }
    // A model given twice (the provider keeps the last), or under an escaped name.
    for body in [
        format!("{{\"model\":\"{ALLOWED}\",\"model\":\"gpt-4\",\"messages\":[]}}"),
        format!("{{\"model\":\"{ALLOWED}\",\"mod\\u0065l\":\"gpt-4\",\"messages\":[]}}"),
    ] {
        for key in [&w.locked, &w.open] {
            w.refused(
                w.chat(key, Some("application/json"), &body).await,
                400,
                "duplicate_field",
                &body,
            );
        }
    }
    // Streaming spelled so that another reader would stream: refused, not guessed.
    let body = format!("{{\"model\":\"{ALLOWED}\",\"stream\":\"true\",\"messages\":[]}}");
    w.refused(
        w.chat(&w.open, Some("application/json"), &body).await,
        400,
        "invalid_body",
        "stream as a string",
    );
    // No model at all: the provider would pick one nobody checked.
    w.refused(
        w.chat(&w.locked, Some("application/json"), "{\"messages\":[]}")
            .await,
        403,
        "model_required",
        "no model",
    );
    // Compressed bodies are not what the gateway read.
    w.refused(
        w.send(
            &w.open,
            post.clone(),
            "/v1/chat/completions",
            Some("application/json"),
            chat_body(ALLOWED).into_bytes(),
            &[("content-encoding", "gzip")],
        )
        .await,
        400,
        "unsupported_content_encoding",
        "gzip",
    );
    // Endpoints whose models the gateway cannot read (a batch file names its own).
    for path in ["/v1/batches", "/v1/files", "/v1/fine_tuning/jobs"] {
        w.refused(
            w.send(
                &w.locked,
                post.clone(),
                path,
                Some("application/json"),
                b"{}".to_vec(),
                &[],
            )
            .await,
            403,
            "endpoint_not_allowed",
            path,
        );
    }

    // Forms: every way readers disagree on the `model` field is refused.
    let audio = "/v1/audio/transcriptions";
    let ct = "multipart/form-data; boundary=XyZ";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "two model fields",
            form(
                "XyZ",
                "\r\n",
                &[
                    (FILE_PART, "RIFF"),
                    (model_part("whisper-1").0, "whisper-1"),
                    (model_part("gpt-4o-transcribe").0, "gpt-4o-transcribe"),
                ],
            ),
            400,
            "duplicate_field",
        ),
        (
            "NAME in capitals",
            form(
                "XyZ",
                "\r\n",
                &[(
                    "Content-Disposition: form-data; NAME=\"model\"",
                    "gpt-4o-transcribe",
                )],
            ),
            400,
            "invalid_multipart",
        ),
        (
            "repeated name",
            form(
                "XyZ",
                "\r\n",
                &[(
                    "Content-Disposition: form-data; name=\"x\"; name=\"model\"",
                    "gpt-4o-transcribe",
                )],
            ),
            400,
            "invalid_multipart",
        ),
        (
            "base64 model",
            form(
                "XyZ",
                "\r\n",
                &[(
                    "Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64",
                    "Z3B0LTQ=",
                )],
            ),
            400,
            "invalid_multipart",
        ),
        (
            "bare line feeds",
            form("XyZ", "\n", &[(model_part("whisper-1").0, "whisper-1")]),
            400,
            "invalid_multipart",
        ),
        (
            "a _charset_ field",
            form(
                "XyZ",
                "\r\n",
                &[
                    (
                        "Content-Disposition: form-data; name=\"_charset_\"",
                        "utf-7",
                    ),
                    (model_part("whisper-1").0, "whisper-1"),
                ],
            ),
            400,
            "invalid_multipart",
        ),
        (
            "not a form at all",
            b"{}".to_vec(),
            400,
            "invalid_multipart",
        ),
    ];
    for (case, body, status, code) in cases {
        w.refused(
            w.send(&w.locked, post.clone(), audio, Some(ct), body, &[])
                .await,
            status,
            code,
            case,
        );
    }
    // The type in capitals is still a form, read and checked.
    let forbidden = form(
        "XyZ",
        "\r\n",
        &[
            (FILE_PART, "RIFF"),
            (model_part("gpt-4o-transcribe").0, "gpt-4o-transcribe"),
        ],
    );
    w.refused(
        w.send(
            &w.locked,
            post.clone(),
            audio,
            Some("Multipart/Form-Data; Boundary=XyZ"),
            forbidden,
            &[],
        )
        .await,
        403,
        "model_not_allowed",
        "form in capitals",
    );
    // A form where the endpoint takes JSON, and JSON where it takes a form.
    w.refused(
        w.send(
            &w.open,
            post.clone(),
            audio,
            Some("application/json"),
            b"{\"model\":\"whisper-1\"}".to_vec(),
            &[],
        )
        .await,
        400,
        "unsupported_content_type",
        "JSON to a form endpoint",
    );

    // What is allowed goes through, declared canonically, with the exact model.
    let (s, body) = w
        .chat(
            &w.locked,
            Some("Application/JSON; Charset=UTF-8"),
            &chat_body(ALLOWED),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let allowed_form = form(
        "XyZ",
        "\r\n",
        &[
            (FILE_PART, "RIFF-bytes"),
            (model_part("whisper-1").0, "whisper-1"),
        ],
    );
    let (s, body) = w
        .send(
            &w.locked,
            post.clone(),
            audio,
            Some("Multipart/Form-Data; Boundary=XyZ"),
            allowed_form.clone(),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let seen = w.upstream.recorded();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/json")
    );
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["model"], ALLOWED);
    assert_eq!(
        seen[1].header("content-type").as_deref(),
        Some("multipart/form-data; boundary=XyZ")
    );
    assert_eq!(
        seen[1].body.as_ref(),
        allowed_form.as_slice(),
        "the form must pass byte for byte"
    );
}

#[tokio::test]
async fn rewrites_happen_at_any_depth() {
    let w = world(&[], &[]).await;
    // A registry route, and a body nested far deeper than a JSON document model allows.
    let (s, body) = w
        .dev
        .admin
        .put(
            &format!("/projects/{}/models", w.project),
            json!({"model": "alias", "connection_id": w.connection, "upstream_model": ALLOWED}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let body = format!("{{\"model\":\"alias\",\"stream\":true,\"messages\":[],\"deep\":{deep}}}");
    let _ = w.chat(&w.open, Some("application/json"), &body).await;
    let seen = w.upstream.recorded();
    assert_eq!(seen.len(), 1);
    let sent = String::from_utf8(seen[0].body.to_vec()).unwrap();
    // Never silently forwarded unrewritten: the provider got the routed model and the
    // usage request, and the deep member untouched.
    assert!(
        sent.starts_with(&format!("{{\"model\":\"{ALLOWED}\"")),
        "{}",
        &sent[..80]
    );
    assert!(sent.contains("\"stream_options\":{\"include_usage\":true}"));
    assert!(sent.contains(&deep));
}

#[tokio::test]
async fn paths_cannot_leave_the_base_url() {
    let w = world(&[], &[]).await;
    let addr = w.dev.gateway.addr;
    for path in [
        "/v1/../admin",
        "/v1/files/../../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/%2e%2e/admin",
        "/v1/files/..%2f..%2fadmin",
        "/v1/files\\..\\..\\admin",
        "/v1/files/%5c..%5cadmin",
        "/v1/files/%252e%252e/admin",
        "/v1/files/..;/admin",
        "/v1//files",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            w.open
        );
        let (status, body) = raw_http(addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid_path"), "{path}: {body}");
    }
    assert_eq!(
        w.upstream.request_count(),
        0,
        "an escaping path reached the provider"
    );
    // An ordinary path lands under the base path, unchanged.
    let request = format!(
        "GET /v1/files/file-abc123/content?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        w.open
    );
    raw_http(addr, request.as_bytes()).await;
    let seen = w.upstream.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path_and_query, "/v1/files/file-abc123/content?x=1");
}

#[tokio::test]
async fn locks_that_need_no_body_refuse_before_reading_it() {
    let w = world(&[], &[]).await;
    let admin = &w.dev.admin;
    let issue = |locks: Value| {
        let admin = admin.clone();
        let project = w.project.clone();
        async move {
            let (_, k) = admin
                .post(
                    &format!("/projects/{project}/keys"),
                    json!({"name": "k", "locks": locks}),
                )
                .await;
            k["key"].as_str().unwrap().to_owned()
        }
    };
    let expired = issue(json!({"ip": {"mode": "off"}, "expires_at": 1_000_000})).await;
    let elsewhere = issue(json!({"ip": {"mode": "allow", "cidrs": ["10.0.0.0/8"]}})).await;
    for (key, code) in [(&expired, "key_expired"), (&elsewhere, "ip_not_allowed")] {
        // Announce 10 MB and send none of it: the answer comes at once.
        let mut stream = tokio::net::TcpStream::connect(w.dev.gateway.addr)
            .await
            .unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("no answer before the body was sent")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(text.contains(code), "{text}");
        // The unread body means the connection cannot carry another request.
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The model list follows the same locks.
        let (s, body) = w
            .send(
                key,
                reqwest::Method::GET,
                "/v1/models",
                None,
                Vec::new(),
                &[],
            )
            .await;
        assert_eq!(s, 403, "/v1/models: {body}");
        assert!(body.contains(code), "{body}");
    }
    assert_eq!(w.upstream.request_count(), 0);
}

#[tokio::test]
async fn only_allowed_headers_reach_the_provider() {
    let w = world(&[], &[]).await;
    let hostile = [
        ("openai-organization", "org-attacker"),
        ("openai-project", "proj_attacker"),
        ("connection", "x-secret"),
        ("x-secret", "1"),
        ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ("via", "1.1 attacker"),
        ("true-client-ip", "1.2.3.4"),
        ("cf-connecting-ip", "1.2.3.4"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-for", "1.2.3.4"),
        ("forwarded", "for=1.2.3.4"),
        ("cookie", "session=1"),
        ("x-api-key", "SG_not_for_the_provider"),
    ];
    let (s, body) = w
        .send(
            &w.open,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some("application/json"),
            chat_body(ALLOWED).into_bytes(),
            &[
                &hostile[..],
                &[
                    ("x-stainless-lang", "python"),
                    ("openai-beta", "assistants=v2"),
                ],
            ]
            .concat(),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let seen = &w.upstream.recorded()[0];
    for (name, _) in hostile {
        if name == "openai-organization" || name == "openai-project" {
            continue;
        }
        assert!(seen.header(name).is_none(), "{name} was forwarded");
    }
    // The connection's settings, not the client's.
    assert_eq!(
        seen.header("openai-organization").as_deref(),
        Some("org-operator")
    );
    assert_eq!(
        seen.header("openai-project").as_deref(),
        Some("proj_operator")
    );
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );
    // What SDKs send for the provider's benefit still arrives.
    assert_eq!(seen.header("x-stainless-lang").as_deref(), Some("python"));
    assert_eq!(seen.header("openai-beta").as_deref(), Some("assistants=v2"));
}

/// A listener that counts the connections it gets and answers each with a 502.
async fn fake_proxy() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn proxies_come_only_from_the_configuration() {
    let (proxy, mut seen_by_proxy) = fake_proxy().await;
    let proxy_url = format!("http://{proxy}");
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
    ];
    let w = world(&[], &env).await;
    let (s, body) = w
        .chat(&w.open, Some("application/json"), &chat_body(ALLOWED))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        w.upstream.request_count(),
        1,
        "the provider was called directly"
    );
    assert!(
        seen_by_proxy.try_recv().is_err(),
        "a proxy from the environment was used"
    );
    drop(w);

    // Configured explicitly, the proxy is used.
    let w = world(&["--upstream-proxy", &proxy_url], &[]).await;
    let (s, _) = w
        .chat(&w.open, Some("application/json"), &chat_body(ALLOWED))
        .await;
    assert_eq!(s, 502);
    let request = tokio::time::timeout(Duration::from_secs(5), seen_by_proxy.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        request.starts_with(&format!("POST {}/chat/completions", w.upstream.base_url())),
        "{request}"
    );
}

#[tokio::test]
async fn provider_errors_never_carry_the_provider_key_back() {
    // A provider that quotes the key it was sent in its 401.
    let upstream = MockUpstream::start(sg_testkit::MockConfig {
        expected_api_key: Some("sk-some-other-key".into()),
        echo_key_in_errors: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dev = Dev::start(&[], &[]).await;
    let (_, project, key) = dev
        .admin
        .setup(
            json!({"provider": "openai", "base_url": upstream.base_url(), "api_key": PROVIDER_KEY}),
        )
        .await;
    let _ = project;
    let (s, body) = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", dev.gateway.url()))
        .bearer_auth(&key)
        .json(&json!({"model": ALLOWED, "messages": []}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    let text = body.text().await.unwrap();
    assert_eq!(s, 401, "{text}");
    assert_eq!(upstream.request_count(), 1);
    assert!(
        !text.contains(PROVIDER_KEY),
        "the provider key came back: {text}"
    );
    assert!(text.contains(&"*".repeat(PROVIDER_KEY.len())), "{text}");
}

#[tokio::test]
async fn slow_and_idle_clients_cannot_hold_the_node() {
    let w = world(
        &[
            "--max-connections",
            "50",
            "--header-read-timeout",
            "500ms",
            "--idle-timeout",
            "1s",
            "--client-body-timeout",
            "500ms",
            "--client-body-min-rate",
            "1000",
        ],
        &[],
    )
    .await;
    let addr = w.dev.gateway.addr;

    // A body that stalls, and one that drips: 408, and nothing reached the provider.
    for drip in [false, true] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":",
            w.open
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let dripper = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            for _ in 0..40 {
                if drip {
                    let _ = s.write_all(b" ").await;
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        got.extend_from_slice(&buf[..n]);
                        break;
                    }
                    Err(_) => {}
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        });
        let answer = dripper.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "drip={drip}: {answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    assert_eq!(w.upstream.request_count(), 0);

    // Two hundred sockets that never finish their headers fill the listener...
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        flood.push(s);
    }
    // ...and are cut at the header timeout, so the node answers again within seconds,
    // health checks included, while the flood's sockets stay open on the client side.
    let started = Instant::now();
    let healthy = eventually(Duration::from_secs(10), || async {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => return false,
        };
        if s.write_all(request).await.is_err() {
            return false;
        }
        let mut out = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await,
            Ok(Ok(_))
        ) && out.starts_with(b"HTTP/1.1 200")
    })
    .await;
    assert!(healthy, "the node did not recover from the flood");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(flood);

    // An idle kept-alive connection is closed after the idle timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle_started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    assert!(idle_started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn health_has_its_own_listener_when_the_main_one_is_full() {
    let nats = sg_testkit::nats::NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let master_key = dir.path().join("master.key");
    sg_crypto::generate_master_key_file(&master_key).unwrap();
    let gateway = Proc::start(
        &[
            "server",
            "gateway",
            "--listen",
            "{addr}",
            "--health-listen",
            "{addr2}",
            "--nats-url",
            &nats.url(),
            "--master-key-file",
            master_key.to_str().unwrap(),
            "--max-connections",
            "10",
            "--header-read-timeout",
            "30s",
        ],
        &[],
        dir.path(),
    )
    .await;
    // Fill the main listener with connections that hold it for 30 s.
    let mut flood = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let _ = s.write_all(b"GET /v1/models HTTP/1.1\r\n").await;
        flood.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = format!(
        "http://{}",
        gateway.addr2.expect("{addr2} is in the arguments")
    );
    for path in ["/healthz", "/readyz"] {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            reqwest::get(format!("{health}{path}")),
        )
        .await
        .expect("probe not answered while the main listener is full")
        .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // The main listener, full, does not take a new connection's request.
    let mut s = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
            .await
            .is_err(),
        "the connection bound was not applied"
    );
}

#[tokio::test]
async fn admin_refuses_what_would_break_or_mislead() {
    let dev = Dev::start(&[], &[]).await;
    let admin = &dev.admin;
    let (_, tenant) = admin.post("/tenants", json!({"name": "acme"})).await;
    let tenant = tenant["id"].as_str().unwrap().to_owned();

    // Names that display as something they are not.
    for name in [
        "evil\u{202E}gpj.exe",
        "zero\u{200B}width",
        "bom\u{FEFF}",
        "iso\u{2067}late",
    ] {
        let (s, body) = admin.post("/tenants", json!({"name": name})).await;
        assert_eq!(s, 400, "{name:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_name");
    }
    let (_, project) = admin
        .post(&format!("/tenants/{tenant}/projects"), json!({"name": "p"}))
        .await;
    let project = project["id"].as_str().unwrap().to_owned();

    // Provider keys that no provider could be sent.
    for bad in [
        "sk-abc\u{7}def",
        "sk-äbc",
        "sk abc",
        "sk-abc\r\nX-Injected: 1",
    ] {
        let (s, body) = admin
            .post(
                &format!("/projects/{project}/connections"),
                json!({"provider": "openai", "api_key": bad, "base_url": "http://127.0.0.1:9/v1"}),
            )
            .await;
        assert_eq!(s, 400, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let (s, conn) = admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "openai", "api_key": "sk-good", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    assert_eq!(s, 201, "{conn}");
    let (s, body) = admin
        .post(
            &format!("/connections/{}/rotate", conn["id"].as_str().unwrap()),
            json!({"api_key": "sk-\u{0}bad"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "mock", "openai_organization": "org-x"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");

    // An Idempotency-Key reused for another request is refused, not replayed.
    let idem = [("idempotency-key", "create-tenant-42")];
    let post = reqwest::Method::POST;
    let (s, first) = admin
        .send(
            post.clone(),
            "/tenants",
            Some(json!({"name": "one"})),
            &idem,
        )
        .await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = admin
        .send(
            post.clone(),
            "/tenants",
            Some(json!({"name": "one"})),
            &idem,
        )
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    let (s, other) = admin
        .send(
            post.clone(),
            "/tenants",
            Some(json!({"name": "two"})),
            &idem,
        )
        .await;
    assert_eq!(s, 422, "{other}");
    assert_eq!(other["error"]["code"], "idempotency_key_mismatch");
    let key_idem = [("idempotency-key", "key-1")];
    let path = format!("/projects/{project}/keys");
    let (s, _) = admin
        .send(post.clone(), &path, Some(json!({"name": "k"})), &key_idem)
        .await;
    assert_eq!(s, 201);
    let (s, body) = admin
        .send(post.clone(), &path, Some(json!({"name": "k2"})), &key_idem)
        .await;
    assert_eq!(s, 422, "{body}");
    let (s, body) = admin
        .send(post, &path, Some(json!({"name": "k"})), &key_idem)
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
}
