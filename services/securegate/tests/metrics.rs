//! Prometheus metrics: after traffic through a cluster of real processes, every
//! service's `/metrics` passes `promtool check metrics` and its counters match the
//! requests sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// `promtool check metrics` on `text`; fails loudly if promtool is missing.
fn promtool_check(service: &str, text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("this test needs promtool: apt-get install prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects the metrics of {service}: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scrape(base: &str) -> String {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200, "{base}/metrics");
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    r.text().await.unwrap()
}

/// The value of the series `name{labels}` (exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn requests(service: &str, route: &str, status: u16, code: &str) -> String {
    format!(
        "securegate_http_requests_total{{service=\"{service}\",route=\"{route}\",status=\"{status}\",code=\"{code}\"}}"
    )
}

#[tokio::test]
async fn every_service_serves_valid_metrics_whose_counters_match_the_traffic() {
    let cluster = Cluster::start(&[&[], &["--health-listen", "{addr2}"]]).await;
    let health = cluster.gateways[1]
        .addr2
        .expect("{addr2} is in the arguments");
    let project = cluster.project().await;
    let (_, key) = cluster.key(&project, json!({})).await;
    let (_, locked) = cluster
        .key(
            &project,
            json!({"ip": {"mode": "allow", "cidrs": ["10.9.9.9/32"]}}),
        )
        .await;
    let gateway = cluster.gateways[0].url();

    const OK: usize = 7;
    const STREAMED: usize = 2;
    const UNKNOWN: usize = 3;
    const REFUSED: usize = 2;
    let mut sent_bytes = 0usize;
    for i in 0..OK {
        let stream = i < STREAMED;
        let (status, body) = chat(&gateway, &key, stream).await;
        assert_eq!(status, 200, "{body}");
        sent_bytes += body.len();
    }
    for _ in 0..UNKNOWN {
        let (status, _) = chat(
            &gateway,
            "SG_live_thisisnotakeyatallthisisnotakeyatall",
            false,
        )
        .await;
        assert_eq!(status, 401);
    }
    for _ in 0..REFUSED {
        let (status, body) = chat(&gateway, &locked, false).await;
        assert_eq!(status, 403, "{body}");
        assert_error(&body, "ip_not_allowed");
    }
    cluster.usage_settled().await;

    // The gateway.
    let text = scrape(&gateway).await;
    promtool_check("gateway", &text);
    let chat_route = "/v1/chat/completions";
    assert_eq!(
        value(&text, &requests("gateway", chat_route, 200, "")),
        OK as f64
    );
    assert_eq!(
        value(
            &text,
            &requests("gateway", chat_route, 401, "invalid_api_key")
        ),
        UNKNOWN as f64
    );
    assert_eq!(
        value(
            &text,
            &requests("gateway", chat_route, 403, "ip_not_allowed")
        ),
        REFUSED as f64
    );
    assert_eq!(
        value(
            &text,
            "securegate_lock_refusals_total{code=\"ip_not_allowed\"}"
        ),
        REFUSED as f64
    );
    let all = OK + UNKNOWN + REFUSED;
    assert_eq!(
        value(
            &text,
            &format!(
                "securegate_http_request_duration_seconds_count{{service=\"gateway\",route=\"{chat_route}\"}}"
            )
        ),
        all as f64
    );
    // What the clients read includes the error answers' bodies.
    let response_bytes = value(
        &text,
        &format!(
            "securegate_http_response_body_bytes_total{{service=\"gateway\",route=\"{chat_route}\"}}"
        ),
    );
    assert!(
        response_bytes >= sent_bytes as f64,
        "{response_bytes} < {sent_bytes}"
    );
    let request_bytes = value(
        &text,
        &format!(
            "securegate_http_request_body_bytes_total{{service=\"gateway\",route=\"{chat_route}\"}}"
        ),
    );
    // Bodies are read only once a key passed its early locks: the served requests'.
    let body_len = |stream| serde_json::to_vec(&chat_body(stream)).unwrap().len();
    let read = STREAMED * body_len(true) + (OK - STREAMED) * body_len(false);
    assert_eq!(request_bytes, read as f64);
    assert_eq!(
        value(
            &text,
            &format!(
                "securegate_upstream_duration_seconds_count{{upstream=\"mock\",route=\"{chat_route}\"}}"
            )
        ),
        OK as f64
    );
    // The connection's credential was opened once, by the first served request (one
    // KMS call); the others sent the opened credential the gateway keeps.
    assert_eq!(
        value(&text, "securegate_data_key_cache_hits_total")
            + value(&text, "securegate_data_key_cache_misses_total"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "securegate_kms_calls_total{operation=\"decrypt_data_key\",outcome=\"ok\"}"
        ),
        value(&text, "securegate_data_key_cache_misses_total")
    );
    // Served and refused requests leave usage, and each refusal a lock violation too,
    // all acknowledged.
    assert_eq!(
        value(&text, "securegate_usage_publish_lag_seconds_count"),
        (OK + 2 * REFUSED) as f64
    );
    assert_eq!(value(&text, "securegate_usage_queue_depth"), 0.0);
    assert_eq!(value(&text, "securegate_key_cache_entries"), 2.0);
    assert!(value(&text, "securegate_control_applied_sequence") > 0.0);
    let caught_up = eventually(Duration::from_secs(10), || async {
        let text = scrape(&gateway).await;
        value(&text, "securegate_control_lag_events") == 0.0
            && value(&text, "securegate_control_head_sequence")
                == value(&text, "securegate_control_applied_sequence")
    })
    .await;
    assert!(caught_up, "the gateway's control lag never reached 0");
    // No label carries a key, a tenant, a project or an address.
    for secret in [key.as_str(), locked.as_str(), project.as_str(), "127.0.0.1"] {
        assert!(!text.contains(secret), "metrics mention {secret}");
    }

    // A gateway with a health listener serves its metrics there, not to clients.
    let second = &cluster.gateways[1];
    let r = reqwest::get(format!("{}/metrics", second.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = scrape(&format!("http://{health}")).await;
    promtool_check("gateway (health listener)", &text);
    assert!(text.contains("securegate_build_info{version=\""));

    // The admin API: what the cluster helpers sent.
    let text = scrape(&cluster.admin.url()).await;
    promtool_check("admin", &text);
    assert_eq!(
        value(&text, &requests("admin", "/admin/v1/tenants", 201, "")),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &requests("admin", "/admin/v1/projects/{id}/connections", 201, "")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &requests("admin", "/admin/v1/projects/{id}/keys", 201, "")
        ),
        2.0
    );
    // The connection's provider key was sealed under one new data key.
    assert_eq!(
        value(
            &text,
            "securegate_kms_calls_total{operation=\"generate_data_key\",outcome=\"ok\"}"
        ),
        1.0
    );
    let (status, _) = cluster.client.get("/projects/nope").await;
    assert_eq!(status, 404);
    let text = scrape(&cluster.admin.url()).await;
    assert!(
        text.contains("route=\"/admin/v1/projects/{id}\",status=\"404\""),
        "{text}"
    );
    assert!(
        !text.contains("/projects/nope"),
        "a raw path became a label"
    );

    // The projector and the sentinel: their progress on each stream.
    for (service, proc, prefix) in [
        ("projector", &cluster.projector, "securegate_projector"),
        ("sentinel", &cluster.sentinel, "securegate_sentinel"),
    ] {
        let settled = eventually(Duration::from_secs(15), || async {
            let text = scrape(&proc.url()).await;
            let head = value(
                &text,
                &format!("{prefix}_head_sequence{{stream=\"usage\"}}"),
            );
            let applied = value(
                &text,
                &format!("{prefix}_applied_sequence{{stream=\"usage\"}}"),
            );
            head >= (OK + REFUSED) as f64
                && applied == head
                && value(&text, &format!("{prefix}_lag_events{{stream=\"usage\"}}")) == 0.0
        })
        .await;
        let text = scrape(&proc.url()).await;
        assert!(settled, "{service} never caught up:\n{text}");
        promtool_check(service, &text);
    }
}
