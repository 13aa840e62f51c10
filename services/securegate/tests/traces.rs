//! OpenTelemetry traces: real `securegate` processes export over OTLP/HTTP to a
//! collector stand-in (Python, official `opentelemetry-proto`), continue the client's
//! W3C trace across edge → egress → provider, keep secrets out of spans, and never let
//! a missing collector or a bad setting get in a request's way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sg_testkit::MockUpstream;
use sg_testkit::pyserver::{OTLP_RECEIVER, PyServer, require_python};
use support::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const PROVIDER_KEY: &str = "sk-trace-provider-key-0123456789";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
}

fn receiver(dir: &std::path::Path) -> PyServer {
    require_python(&[("opentelemetry.proto", "opentelemetry-proto")]);
    PyServer::start_on_free_port(dir, "otlp", OTLP_RECEIVER, &[])
}

/// Spans of `trace_id` from `service`.
fn spans<'a>(records: &'a [Value], service: &str, trace_id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["service"] == service && r["trace_id"] == trace_id)
        .collect()
}

fn names(spans: &[&Value]) -> HashSet<String> {
    spans
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn named<'a>(spans: &[&'a Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
}

/// Waits (at most 15 s) until the receiver holds every span `wanted` lists for its
/// service in `trace_id`.
async fn wait_for_spans(
    receiver: &PyServer,
    trace_id: &str,
    wanted: &[(&str, &[&str])],
) -> Vec<Value> {
    let mut records = Vec::new();
    let complete = eventually(Duration::from_secs(15), || {
        records = receiver.records();
        let done = wanted.iter().all(|(service, want)| {
            let have = names(&spans(&records, service, trace_id));
            want.iter().all(|w| have.contains(*w))
        });
        async move { done }
    })
    .await;
    assert!(
        complete,
        "missing spans; wanted {wanted:?}, have {:?}",
        records
            .iter()
            .map(|r| format!("{}:{}:{}", r["service"], r["name"], r["trace_id"]))
            .collect::<Vec<_>>()
    );
    receiver.records()
}

/// No span's name, attributes or events hold a secret.
fn assert_no_secrets(records: &[Value], secrets: &[&str]) {
    assert!(!records.is_empty());
    for record in records {
        let text = record.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "a span holds `{secret}`: {text}");
        }
    }
}

#[tokio::test]
async fn edge_and_egress_continue_the_clients_trace_to_the_provider() {
    let cluster = Cluster::start(&[]).await;
    let dir = &cluster.dir;
    let otlp = receiver(dir.path());
    let endpoint = format!("http://127.0.0.1:{}", otlp.port);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let (edge, egress, _) = cluster
        .edge_and_egress(&env, &["--log-format", "json"], &[])
        .await;
    let upstream = MockUpstream::start_recording(sg_testkit::MockConfig {
        expected_api_key: Some(PROVIDER_KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let (_project, key_id, key) = cluster
        .client
        .setup(
            json!({"provider": "openai", "api_key": PROVIDER_KEY, "base_url": upstream.base_url()}),
        )
        .await;
    let (edge_url, k) = (edge.url(), key.clone());
    assert!(
        eventually(Duration::from_secs(5), || {
            let (u, k) = (edge_url.clone(), k.clone());
            async move { chat(&u, &k, false).await.0 == 200 }
        })
        .await,
        "the edge never served the key; edge log:\n{}\negress log:\n{}",
        edge.log(),
        egress.log()
    );
    upstream.reset_stats();

    // A streamed request in the client's trace.
    let http = reqwest::Client::new();
    let (status, body) = chat_with(
        &http,
        &edge.url(),
        &key,
        chat_body(true),
        &[("traceparent", traceparent())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_stream(&body);

    let records = wait_for_spans(
        &otlp,
        TRACE_ID,
        &[
            (
                "securegate-gateway-edge",
                &[
                    "gateway.request",
                    "authenticate",
                    "locks",
                    "limits",
                    "upstream",
                    "stream",
                ],
            ),
            (
                "securegate-gateway-egress",
                &["egress.request", "attestation", "upstream"],
            ),
        ],
    )
    .await;
    let edge_spans = spans(&records, "securegate-gateway-edge", TRACE_ID);
    let egress_spans = spans(&records, "securegate-gateway-egress", TRACE_ID);

    // The edge's request span is the child of the client's span; its phases, of it.
    let request = named(&edge_spans, "gateway.request");
    assert_eq!(request["parent_span_id"], CLIENT_SPAN);
    let attrs = &request["attributes"];
    assert_eq!(attrs["http.request.method"], "POST");
    assert_eq!(attrs["url.path"], "/v1/chat/completions");
    assert_eq!(attrs["http.response.status_code"], "200");
    assert_eq!(attrs["securegate.key_id"], key_id.as_str());
    assert_eq!(attrs["gen_ai.request.model"], "mock-gpt-4o-mini");
    assert!(
        attrs["securegate.request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    for phase in ["authenticate", "locks", "limits", "upstream", "stream"] {
        for span in edge_spans.iter().filter(|s| s["name"] == phase) {
            assert_eq!(
                span["parent_span_id"], request["span_id"],
                "{phase}: {span}"
            );
        }
    }
    let stream = named(&edge_spans, "stream");
    assert!(
        stream["attributes"]["gen_ai.usage.output_tokens"]
            .as_str()
            .is_some_and(|n| n.parse::<u64>().unwrap() > 0),
        "{stream}"
    );

    // The egress continues the edge's trace, under the edge's upstream call.
    let edge_upstream = named(&edge_spans, "upstream");
    let egress_request = named(&egress_spans, "egress.request");
    assert_eq!(egress_request["parent_span_id"], edge_upstream["span_id"]);
    assert_eq!(
        egress_request["attributes"]["securegate.request_id"],
        attrs["securegate.request_id"]
    );

    // The provider saw the same trace, its parent one of the egress's spans.
    let recorded = upstream.recorded();
    let call = recorded
        .iter()
        .find(|r| r.path_and_query.ends_with("/chat/completions"))
        .expect("the provider got the request");
    let seen = call
        .header("traceparent")
        .expect("the provider got a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], TRACE_ID, "{seen}");
    let egress_ids: HashSet<&str> = egress_spans
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    assert!(
        egress_ids.contains(parts[2]),
        "{seen} not under {egress_ids:?}"
    );
    assert_eq!(parts[2], named(&egress_spans, "upstream")["span_id"]);

    // No secret in any span of any trace, nor in the logs.
    let everything = otlp.records();
    assert_no_secrets(&everything, &[&key, PROVIDER_KEY, "Bearer", "sk-trace"]);
    for log in [edge.log(), egress.log()] {
        assert!(!log.contains(&key) && !log.contains(PROVIDER_KEY));
    }
    // JSON logs still come out as JSON, one object a line, with the export announced.
    let edge_log = edge.log();
    let announced = edge_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("exporting OpenTelemetry traces"))
        });
    assert!(announced, "{edge_log}");
}

/// Serves a key through `securegate dev` against a recording provider; returns the
/// gateway, the key and the provider.
async fn dev_with_provider(envs: &[(&str, &str)]) -> (Dev, String, MockUpstream) {
    let dev = Dev::start(&[], envs).await;
    let upstream = MockUpstream::start_recording(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    let (_, _, key) = dev
        .admin
        .setup(
            json!({"provider": "openai", "api_key": PROVIDER_KEY, "base_url": upstream.base_url()}),
        )
        .await;
    let (url, k) = (dev.gateway.url(), key.clone());
    assert!(
        eventually(Duration::from_secs(5), || {
            let (u, k) = (url.clone(), k.clone());
            async move { chat(&u, &k, false).await.0 == 200 }
        })
        .await,
        "{}",
        dev.gateway.log()
    );
    upstream.reset_stats();
    (dev, key, upstream)
}

/// Sends a request with the client's trace headers; returns what the provider got.
async fn traced_call(dev: &Dev, key: &str, upstream: &MockUpstream) -> (String, String) {
    let http = reqwest::Client::new();
    let (status, body) = chat_with(
        &http,
        &dev.gateway.url(),
        key,
        chat_body(false),
        &[
            ("traceparent", traceparent()),
            ("tracestate", "vendor=opaque".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let recorded = upstream.recorded();
    let call = recorded.last().expect("the provider got the request");
    (
        call.header("traceparent").unwrap_or_default(),
        call.header("tracestate").unwrap_or_default(),
    )
}

#[tokio::test]
async fn without_tracing_the_clients_trace_headers_reach_the_provider_unchanged() {
    let (dev, key, upstream) = dev_with_provider(&[]).await;
    let (parent, state) = traced_call(&dev, &key, &upstream).await;
    assert_eq!(parent, traceparent());
    assert_eq!(state, "vendor=opaque");
    assert!(!dev.gateway.log().contains("OpenTelemetry"));

    // A protocol other than http/protobuf: one warning, tracing off, same behaviour.
    let (dev, key, upstream) = dev_with_provider(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .await;
    let (parent, _) = traced_call(&dev, &key, &upstream).await;
    assert_eq!(parent, traceparent());
    let log = dev.gateway.log();
    assert_eq!(
        log.matches("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported")
            .count(),
        1,
        "{log}"
    );

    // An endpoint that is not a URL: the same.
    let (dev, key, upstream) =
        dev_with_provider(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318")]).await;
    let (parent, _) = traced_call(&dev, &key, &upstream).await;
    assert_eq!(parent, traceparent());
    let log = dev.gateway.log();
    assert_eq!(log.matches("is not a usable URL").count(), 1, "{log}");
}

#[tokio::test]
async fn an_unreachable_collector_costs_one_warning_and_no_request() {
    // A port nothing listens on.
    let closed = format!("http://127.0.0.1:{}", sg_testkit::free_port());
    let (dev, key, upstream) = dev_with_provider(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", closed.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    // Over a second and a half: many export attempts fail meanwhile.
    while started.elapsed() < Duration::from_millis(1500) {
        let t = std::time::Instant::now();
        let (status, body) =
            chat_with(&http, &dev.gateway.url(), &key, chat_body(false), &[]).await;
        assert_eq!(status, 200, "{body}");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a request took {slowest:?}"
    );
    assert!(upstream.request_count() > 10);
    let log = dev.gateway.log();
    assert!(log.contains("exporting OpenTelemetry traces"), "{log}");
    assert_eq!(
        log.matches("cannot export traces to the OTLP collector")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn admin_commands_and_projector_batches_are_traced() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = receiver(dir.path());
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", otlp.port);
    let dev = Dev::start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "sg-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let (s, tenant) = dev
        .admin
        .send(
            reqwest::Method::POST,
            "/tenants",
            Some(json!({"name": "traced"})),
            &[("traceparent", &traceparent())],
        )
        .await;
    assert_eq!(s, 201, "{tenant}");
    let records = wait_for_spans(
        &otlp,
        TRACE_ID,
        &[("sg-under-test", &["POST /admin/v1/tenants"])],
    )
    .await;
    let command = named(
        &spans(&records, "sg-under-test", TRACE_ID),
        "POST /admin/v1/tenants",
    );
    assert_eq!(command["parent_span_id"], CLIENT_SPAN);
    assert_eq!(command["attributes"]["http.route"], "/admin/v1/tenants");
    assert_eq!(command["attributes"]["http.response.status_code"], "201");

    // The projector applies the new tenant's event in a batch of its own trace.
    assert!(
        eventually(Duration::from_secs(10), || {
            let found = otlp.records().iter().any(|r| {
                r["service"] == "sg-under-test"
                    && r["name"] == "projector.batch"
                    && r["attributes"]["securegate.stream"].is_string()
                    && r["attributes"]["securegate.events"]
                        .as_str()
                        .is_some_and(|n| n.parse::<u64>().unwrap() >= 1)
            });
            async move { found }
        })
        .await,
        "no projector.batch span"
    );
    assert_no_secrets(&otlp.records(), &[TOKEN, "Bearer"]);
}
