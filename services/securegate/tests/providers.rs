//! Providers other than OpenAI, end to end: a real `securegate dev` process in front of
//! real stand-ins on 127.0.0.1 (an Anthropic Messages API stand-in, a recording
//! OpenAI-compatible one), driven by the official SDKs (Python and Node) and by plain
//! HTTP. Covers Anthropic natively and by translation, each catalog provider's request
//! shape, and the locks and limits on the native path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sg_events::Provider;
use sg_testkit::{AnthropicUpstream, MockConfig, MockUpstream, Recorded};
use support::*;

/// The provider credential the connections hold (never the client's).
const PROVIDER_KEY: &str = "sk-ant-provider-secret-4f9c2b7e1d";
const CLAUDE: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";

/// Fails, saying how to install it, unless Python (`sg_testkit::python()`) can import `module`.
async fn need_python_module(module: &str, package: &str) {
    let probe = tokio::process::Command::new(sg_testkit::python())
        .args(["-c", &format!("import {module}")])
        .output()
        .await
        .expect("Python is needed for the SDK tests (sg_testkit::python(): SG_PYTHON, the active virtual environment, else python3)");
    assert!(
        probe.status.success(),
        "the official Python package `{package}` is missing from {}: `{} -m pip install {package}` (.ci/run installs it; SG_PYTHON or an active virtual environment picks the interpreter)",
        sg_testkit::python().display(),
        sg_testkit::python().display()
    );
}

/// Runs a Python script of `tests/sdk/`; returns its standard output once it passed.
async fn run_python(script: &str, envs: &[(&str, String)], dev: &Dev, passed: &str) -> String {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = tokio::process::Command::new(sg_testkit::python());
    cmd.arg(&path);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(passed),
        "{script} failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        dev.gateway.log()
    );
    stdout
}

/// `securegate dev`, an Anthropic stand-in, and a project whose connection is to it;
/// returns (dev, stand-in, project id, key).
async fn anthropic_project() -> (Dev, AnthropicUpstream, String, String) {
    let upstream = AnthropicUpstream::start(PROVIDER_KEY).await.unwrap();
    let dev = Dev::start(&[], &[]).await;
    let (project, _, key) = dev
        .admin
        .setup(json!({"provider": "anthropic", "api_key": PROVIDER_KEY, "base_url": upstream.base_url()}))
        .await;
    (dev, upstream, project, key)
}

/// The totals of a project usage answer, whether it is `{requests, …}` or
/// `{data: […], totals: {requests, …}}`.
fn totals(usage: &Value) -> &Value {
    usage.get("totals").unwrap_or(usage)
}

/// Waits (at most 10 s) until the project's usage counts `n` requests; returns its totals.
async fn usage_reaching(admin: &AdminClient, project: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, usage) = admin.get(&format!("/projects/{project}/usage")).await;
        assert_eq!(s, 200, "{usage}");
        let totals = totals(&usage).clone();
        if totals["requests"].as_u64().unwrap_or(0) >= n {
            return totals;
        }
        assert!(
            Instant::now() < deadline,
            "usage did not reach {n} requests: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The project's request history once it holds `n` requests (waits at most 10 s).
async fn history_reaching(admin: &AdminClient, project: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, list) = admin
            .get(&format!("/projects/{project}/requests?limit=1000"))
            .await;
        assert_eq!(s, 200, "{list}");
        let rows = list["data"].as_array().cloned().unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "the request history did not reach {n}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a request reached the provider with the provider's credential and nothing of
/// the client's: no SecureGate key and no `client_secret` in any header or the body.
fn assert_clean(r: &Recorded, sg_key: &str, client_secret: Option<&str>) {
    let body = String::from_utf8_lossy(&r.body);
    let mut leaks = vec![sg_key];
    leaks.extend(client_secret);
    for leak in leaks {
        assert!(
            !body.contains(leak),
            "a client credential reached the provider's body: {r:?}"
        );
        for (name, value) in &r.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(leak),
                "a client credential reached the provider in {name}"
            );
        }
    }
}

/// A recorded request to the Anthropic stand-in as the gateway must send it: the
/// provider key as `x-api-key`, `anthropic-version`, and nothing of the client's.
fn assert_anthropic_request(r: &Recorded, sg_key: &str) {
    assert_eq!(
        r.header("x-api-key").as_deref(),
        Some(PROVIDER_KEY),
        "{r:?}"
    );
    assert!(r.header("anthropic-version").is_some(), "{r:?}");
    assert!(r.header("authorization").is_none(), "{r:?}");
    assert_clean(r, sg_key, None);
}

fn body_of(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&r.body)))
}

/// Posts `body` to the gateway's `path` as an Anthropic client does (`x-api-key`);
/// returns (status, body).
async fn post_native(
    gateway: &str,
    key: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .post(format!("{gateway}{path}"))
        .header("x-api-key", key)
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn message_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi there"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_python_sdk_speaks_messages_natively() {
    need_python_module("anthropic", "anthropic").await;
    let (dev, upstream, project, key) = anthropic_project().await;
    let stdout = run_python(
        "anthropic_sdk.py",
        &[
            ("SG_BASE_URL", dev.gateway.url()),
            ("SG_KEY", key.clone()),
            ("SG_MODEL", CLAUDE.to_owned()),
        ],
        &dev,
        "anthropic sdk checks passed",
    )
    .await;

    // Plain, stream helper, raw stream, count, tool call, tool result, models: seven
    // requests reached the provider (the mistyped key did not).
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 7, "{recorded:?}");
    for r in &recorded {
        assert_anthropic_request(r, &key);
    }
    let paths: Vec<(&str, &str)> = recorded
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path_and_query.split('?').next().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages"),
            ("GET", "/v1/models"),
        ]
    );
    // The Messages body passes as the client sent it.
    let first = body_of(&recorded[0]);
    assert_eq!(first["model"], CLAUDE);
    assert_eq!(
        first["messages"][0]["content"],
        "Hello from the Anthropic SDK"
    );

    // What the answers reported is what the gateway recorded, request by request.
    let reported: Vec<Value> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("usage "))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no usage line in {stdout}"));
    let mut expected: Vec<(bool, u64, u64)> = reported
        .iter()
        .map(|u| {
            (
                u["streamed"].as_bool().unwrap(),
                u["prompt"].as_u64().unwrap(),
                u["completion"].as_u64().unwrap(),
            )
        })
        .collect();
    let rows = history_reaching(&dev.admin, &project, 7).await;
    let mut seen: Vec<(bool, u64, u64)> = rows
        .iter()
        .filter(|r| r["endpoint"] == "/v1/messages")
        .map(|r| {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["model"], CLAUDE, "{r}");
            (
                r["streamed"].as_bool().unwrap(),
                r["prompt_tokens"].as_u64().unwrap(),
                r["completion_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    expected.sort_unstable();
    seen.sort_unstable();
    assert_eq!(
        seen, expected,
        "recorded usage differs from what the answers reported"
    );
    assert!(seen.iter().all(|(_, p, c)| *p > 0 && *c > 0), "{seen:?}");
    let count = rows
        .iter()
        .find(|r| r["endpoint"] == "/v1/messages/count_tokens")
        .unwrap_or_else(|| panic!("no count_tokens request in {rows:?}"));
    assert_eq!(count["status"], 200, "{count}");

    let usage = usage_reaching(&dev.admin, &project, 7).await;
    let prompt: u64 = expected.iter().map(|(_, p, _)| p).sum();
    let completion: u64 = expected.iter().map(|(_, _, c)| c).sum();
    assert_eq!(usage["requests"], 7, "{usage}");
    assert_eq!(usage["prompt_tokens"], prompt, "{usage}");
    assert_eq!(usage["completion_tokens"], completion, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_headers_a_client_sends_reach_the_provider() {
    let (dev, upstream, _, key) = anthropic_project().await;
    let gw = dev.gateway.url();
    // Without a version, the gateway sends the one it knows.
    let (s, body) = post_native(&gw, &key, "/v1/messages", &message_body(CLAUDE), &[]).await;
    assert_eq!(s, 200, "{body}");
    let sent = upstream.recorded().pop().unwrap();
    assert_eq!(
        sent.header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    // The client's version and beta flags are the client's choice.
    let (s, body) = post_native(
        &gw,
        &key,
        "/v1/messages",
        &message_body(CLAUDE),
        &[
            ("anthropic-version", "2023-01-01"),
            (
                "anthropic-beta",
                "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19",
            ),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let sent = upstream.recorded().pop().unwrap();
    assert_eq!(
        sent.header("anthropic-beta").as_deref(),
        Some("prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"),
        "anthropic-beta did not reach the provider"
    );
    assert_eq!(
        sent.header("anthropic-version").as_deref(),
        Some("2023-01-01"),
        "the client's anthropic-version was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_reaches_claude_by_translation() {
    need_python_module("openai", "openai").await;
    let (dev, upstream, project, key) = anthropic_project().await;
    run_python(
        "openai_to_anthropic.py",
        &[
            ("SG_BASE_URL", format!("{}/v1", dev.gateway.url())),
            ("SG_KEY", key.clone()),
            ("SG_MODEL", CLAUDE.to_owned()),
        ],
        &dev,
        "openai sdk to anthropic checks passed",
    )
    .await;

    // plain, stream, stream with usage, streamed tool call, tool call, tool result, length.
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 7, "{recorded:?}");
    for r in &recorded {
        assert_eq!(
            (r.method.as_str(), r.path_and_query.as_str()),
            ("POST", "/v1/messages")
        );
        assert_anthropic_request(r, &key);
        assert_eq!(r.header("anthropic-version").as_deref(), Some("2023-06-01"));
        assert!(
            r.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{r:?}"
        );
        // The stand-in validated it (else the SDK would have failed); what an OpenAI
        // request has and Messages lacks was left behind.
        let body = body_of(r);
        assert_eq!(body["model"], CLAUDE, "{body}");
        assert!(body["max_tokens"].as_u64().is_some_and(|n| n > 0), "{body}");
        for openai_only in [
            "stream_options",
            "n",
            "max_completion_tokens",
            "response_format",
        ] {
            assert!(
                body.get(openai_only).is_none(),
                "{openai_only} reached the provider: {body}"
            );
        }
        assert!(
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["role"] == "user" || m["role"] == "assistant"),
            "{body}"
        );
    }
    let bodies: Vec<Value> = recorded.iter().map(body_of).collect();
    assert_eq!(
        bodies[0]["system"][0]["text"], "You are terse.",
        "{}",
        bodies[0]
    );
    let streamed: Vec<bool> = bodies.iter().map(|b| b["stream"] == true).collect();
    assert_eq!(streamed, [false, true, true, true, false, false, false]);
    for b in &bodies[3..6] {
        assert_eq!(b["tools"][0]["name"], "get_weather", "{b}");
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object", "{b}");
    }
    // The tool result went back as a tool_result answering the call.
    let result = &bodies[5]["messages"];
    assert_eq!(result[1]["content"][0]["type"], "tool_use", "{result}");
    assert_eq!(result[2]["content"][0]["type"], "tool_result", "{result}");
    assert_eq!(
        result[2]["content"][0]["tool_use_id"],
        result[1]["content"][0]["id"]
    );
    assert_eq!(bodies[6]["max_tokens"], 3);

    // Every answer was accounted for, streamed ones included.
    let rows = history_reaching(&dev.admin, &project, 7).await;
    for r in &rows {
        assert_eq!(r["endpoint"], "/v1/chat/completions", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert!(r["prompt_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");
    }
    let usage = usage_reaching(&dev.admin, &project, 7).await;
    assert_eq!(usage["requests"], 7, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_claude_cannot_honour_is_refused_before_it_leaves() {
    let (dev, upstream, _, key) = anthropic_project().await;
    let gw = dev.gateway.url();
    let client = reqwest::Client::new();
    let ask = |extra: Value| {
        let mut body = json!({"model": CLAUDE, "messages": [{"role": "user", "content": "hello"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (extra, param) in [
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"temperature": 1.5}), "temperature"),
    ] {
        let (s, body) = chat_with(&client, &gw, &key, ask(extra.clone()), &[]).await;
        assert_eq!(s, 400, "{extra}: {body}");
        assert_error(&body, "unsupported_parameter");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["param"], param, "{body}");
    }
    assert_eq!(upstream.request_count(), 0, "{:?}", upstream.recorded());
    // The same request without the field goes through.
    let (s, body) = chat_with(&client, &gw, &key, ask(json!({"n": 1})), &[]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_limits_hold_on_the_native_messages_path() {
    let (dev, upstream, project, _) = anthropic_project().await;
    let gw = dev.gateway.url();

    // A key locked to one model: another model is refused before anything is sent.
    let (s, locked) = dev
        .admin
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "haiku-only", "locks": {"models": [HAIKU]}}),
        )
        .await;
    assert_eq!(s, 201, "{locked}");
    let locked = locked["key"].as_str().unwrap().to_owned();
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let mut body = message_body(CLAUDE);
        if path.ends_with("count_tokens") {
            body.as_object_mut().unwrap().remove("max_tokens");
        }
        let (s, answer) = post_native(&gw, &locked, path, &body, &[]).await;
        assert_eq!(s, 403, "{path}: {answer}");
        assert_error(&answer, "model_not_allowed");
    }
    let mut streamed = message_body(CLAUDE);
    streamed["stream"] = json!(true);
    let (s, answer) = post_native(&gw, &locked, "/v1/messages", &streamed, &[]).await;
    assert_eq!(s, 403, "{answer}");
    assert_error(&answer, "model_not_allowed");
    assert_eq!(upstream.request_count(), 0, "{:?}", upstream.recorded());
    let (s, answer) = post_native(&gw, &locked, "/v1/messages", &message_body(HAIKU), &[]).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(upstream.request_count(), 1);

    // A key limited to two requests a minute: the third is refused, and not sent.
    upstream.reset();
    let (s, limited) = dev
        .admin
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "two-a-minute", "limits": {"rpm": 2}}),
        )
        .await;
    assert_eq!(s, 201, "{limited}");
    let limited = limited["key"].as_str().unwrap().to_owned();
    // The three requests fall in one minute window.
    with_minute_left(15).await;
    for _ in 0..2 {
        let (s, answer) =
            post_native(&gw, &limited, "/v1/messages", &message_body(CLAUDE), &[]).await;
        assert_eq!(s, 200, "{answer}");
    }
    let (s, answer) = post_native(&gw, &limited, "/v1/messages", &message_body(CLAUDE), &[]).await;
    assert_eq!(s, 429, "{answer}");
    assert_error(&answer, "rate_limit_exceeded");
    assert_eq!(upstream.request_count(), 2);
}

/// Waits until the current UTC minute has at least `left` seconds to run.
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

/// What a provider must receive for one chat request: its base URL's path (the default
/// base URL's, on the stand-in), the upstream path and query, and the credential header.
struct Shape {
    base_path: &'static str,
    model: &'static str,
    upstream: &'static str,
    credential: &'static str,
    /// The connection's `api_version`, if it sets one.
    api_version: Option<&'static str>,
}

fn shape(provider: Provider) -> Shape {
    let openai_style = |base_path: &'static str, upstream: &'static str| Shape {
        base_path,
        model: "mock-gpt-4o-mini",
        upstream,
        credential: "authorization",
        api_version: None,
    };
    match provider {
        Provider::Openai => openai_style("/v1", "/v1/chat/completions"),
        Provider::Anthropic => Shape {
            base_path: "",
            model: HAIKU,
            upstream: "/v1/messages",
            credential: "x-api-key",
            api_version: None,
        },
        Provider::AzureOpenai => Shape {
            base_path: "",
            model: "gpt4o-prod",
            upstream: "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            credential: "api-key",
            api_version: None,
        },
        Provider::Gemini => openai_style("/v1beta/openai", "/v1beta/openai/chat/completions"),
        Provider::Mistral => openai_style("/v1", "/v1/chat/completions"),
        Provider::Groq => openai_style("/openai/v1", "/openai/v1/chat/completions"),
        Provider::Together => openai_style("/v1", "/v1/chat/completions"),
        Provider::Fireworks => openai_style("/inference/v1", "/inference/v1/chat/completions"),
        Provider::Deepseek => openai_style("/v1", "/v1/chat/completions"),
        Provider::Xai => openai_style("/v1", "/v1/chat/completions"),
        Provider::Perplexity => openai_style("", "/chat/completions"),
        Provider::Openrouter => openai_style("/api/v1", "/api/v1/chat/completions"),
        Provider::Cohere => openai_style("/compatibility/v1", "/compatibility/v1/chat/completions"),
        Provider::Cerebras => openai_style("/v1", "/v1/chat/completions"),
        Provider::OpenaiCompatible => openai_style("/v1", "/v1/chat/completions"),
        Provider::Mock => unreachable!("the built-in mock has no upstream"),
    }
}

/// The path of a URL (`""` for the root).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("", |i| rest[i..].trim_end_matches('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_provider_gets_the_request_shape_it_expects() {
    let openai_like = MockUpstream::start_recording(MockConfig::default())
        .await
        .unwrap();
    let claude = AnthropicUpstream::start(PROVIDER_KEY).await.unwrap();
    let dev = Dev::start(&[], &[]).await;
    let (s, tenant) = dev.admin.post("/tenants", json!({"name": "catalog"})).await;
    assert_eq!(s, 201, "{tenant}");
    let tenant = tenant["id"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    const CLIENT_SECRET: &str = "sk-client-own-secret-do-not-forward";

    let mut cases: Vec<(Provider, Shape)> = Provider::ALL
        .into_iter()
        .filter(|p| *p != Provider::Mock)
        .map(|p| (p, shape(p)))
        .collect();
    // Azure's v1 API, when the base URL ends in /openai/v1: OpenAI's paths, `api-key`.
    cases.push((
        Provider::AzureOpenai,
        Shape {
            base_path: "/openai/v1",
            model: "gpt-4o-mini",
            upstream: "/openai/v1/chat/completions",
            credential: "api-key",
            api_version: None,
        },
    ));
    // A deployment called with the connection's own api-version.
    cases.push((
        Provider::AzureOpenai,
        Shape {
            base_path: "",
            model: "gpt4o-preview",
            upstream: "/openai/deployments/gpt4o-preview/chat/completions?api-version=2025-04-01-preview",
            credential: "api-key",
            api_version: Some("2025-04-01-preview"),
        },
    ));
    for (provider, expected) in cases {
        let id = provider.as_str();
        if let Some(default) = provider.default_base_url() {
            assert_eq!(
                url_path(default),
                expected.base_path,
                "{id}'s default base URL"
            );
        }
        let stand_in = if provider == Provider::Anthropic {
            claude.base_url()
        } else {
            format!("http://127.0.0.1:{}", openai_like.port())
        };
        let provider_key = if provider == Provider::Anthropic {
            PROVIDER_KEY.to_owned()
        } else {
            format!("sk-{id}-provider-secret")
        };
        let (s, project) = dev
            .admin
            .post(
                &format!("/tenants/{tenant}/projects"),
                json!({"name": format!("{id}{}{}", expected.base_path, expected.api_version.unwrap_or(""))}),
            )
            .await;
        assert_eq!(s, 201, "{project}");
        let project = project["id"].as_str().unwrap().to_owned();
        let mut connection = json!({"provider": id, "api_key": provider_key, "base_url": format!("{stand_in}{}", expected.base_path)});
        if let Some(v) = expected.api_version {
            connection["api_version"] = json!(v);
        }
        let (s, conn) = dev
            .admin
            .post(&format!("/projects/{project}/connections"), connection)
            .await;
        assert_eq!(conn["api_version"].as_str(), expected.api_version, "{conn}");
        assert_eq!(s, 201, "{id}: {conn}");
        let (s, key) = dev
            .admin
            .post(&format!("/projects/{project}/keys"), json!({"name": id}))
            .await;
        assert_eq!(s, 201, "{key}");
        let key = key["key"].as_str().unwrap().to_owned();

        openai_like.reset_stats();
        claude.reset();
        let body = json!({"model": expected.model, "messages": [{"role": "user", "content": "shape check"}]});
        let client_headers = [
            ("x-api-key", CLIENT_SECRET.to_owned()),
            ("api-key", CLIENT_SECRET.to_owned()),
            ("openai-organization", "org-client-own".to_owned()),
            ("cookie", format!("session={CLIENT_SECRET}")),
        ];
        let (status, answer) =
            chat_with(&client, &dev.gateway.url(), &key, body, &client_headers).await;
        let recorded = if provider == Provider::Anthropic {
            claude.recorded()
        } else {
            openai_like.recorded()
        };
        assert_eq!(recorded.len(), 1, "{id}: {recorded:?}");
        let r = &recorded[0];
        assert_eq!(r.method, "POST", "{id}");
        assert_eq!(r.path_and_query, expected.upstream, "{id}");
        let (scheme, value) = match expected.credential {
            "authorization" => ("authorization", format!("Bearer {provider_key}")),
            other => (other, provider_key.clone()),
        };
        assert_eq!(
            r.header(scheme).as_deref(),
            Some(value.as_str()),
            "{id}: {r:?}"
        );
        for other in ["authorization", "x-api-key", "api-key"] {
            if other != scheme {
                assert!(
                    r.header(other).is_none(),
                    "{id} was also sent {other}: {r:?}"
                );
            }
        }
        assert!(r.header("openai-organization").is_none(), "{id}: {r:?}");
        assert!(r.header("cookie").is_none(), "{id}: {r:?}");
        assert_clean(r, &key, Some(CLIENT_SECRET));
        let sent = body_of(r);
        assert_eq!(sent["model"], expected.model, "{id}: {sent}");
        // The stand-ins answer what they serve: the OpenAI stand-in serves /v1 only.
        let served = provider == Provider::Anthropic || expected.upstream == "/v1/chat/completions";
        if served {
            assert_eq!(status, 200, "{id}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["object"], "chat.completion", "{id}: {answer}");
        } else {
            assert_eq!(status, 404, "{id}: {answer}");
            assert_error(&answer, "unknown_url");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_sdks_work_through_the_gateway() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    support::npm_packages(
        &dir,
        &["openai", "@anthropic-ai/sdk"],
        "the JavaScript SDK test",
    )
    .await;
    let (dev, upstream, project, key) = anthropic_project().await;
    let out = tokio::process::Command::new("node")
        .arg(dir.join("sdk.mjs"))
        .current_dir(&dir)
        .env("SG_GATEWAY", dev.gateway.url())
        .env("SG_KEY", &key)
        .env("SG_MODEL", CLAUDE)
        .output()
        .await
        .expect("node is needed for the JavaScript SDK test: `apt-get install nodejs npm`");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("node sdk checks passed"),
        "Node SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        dev.gateway.log()
    );
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    for r in &recorded {
        assert_eq!(
            (r.method.as_str(), r.path_and_query.as_str()),
            ("POST", "/v1/messages")
        );
        assert_anthropic_request(r, &key);
    }
    let streamed: Vec<bool> = recorded
        .iter()
        .map(|r| body_of(r)["stream"] == true)
        .collect();
    assert_eq!(streamed, [false, true, false, true]);
    let rows = history_reaching(&dev.admin, &project, 4).await;
    let mut endpoints: Vec<&str> = rows
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    endpoints.sort_unstable();
    assert_eq!(
        endpoints,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/messages",
            "/v1/messages"
        ]
    );
    assert!(
        rows.iter()
            .all(|r| r["completion_tokens"].as_u64().unwrap() > 0),
        "{rows:?}"
    );
}
