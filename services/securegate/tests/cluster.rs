//! Cluster mode end to end: admin, projector and two gateway nodes as separate
//! `securegate server …` processes on a private NATS JetStream and a private PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use sg_testkit::mock_upstream::MockUpstream;
use support::*;

#[tokio::test]
async fn two_gateways_share_state_and_usage_lands_exactly_once() {
    sg_testkit::init_tracing();
    let mut cluster = Cluster::start(&[&["--node-id", "gw-a"], &["--node-id", "gw-b"]]).await;
    let client = cluster.client.clone();
    let nats_url = cluster.nats.url();
    let upstream = MockUpstream::start(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    let (project, key_id, key) = client
        .setup(json!({"provider": "openai", "api_key": "sk-cluster-provider-key", "base_url": upstream.base_url()}))
        .await;

    // Both nodes learn the key from the control stream and serve it, plain and streamed.
    for gw in &cluster.gateways {
        let url = gw.url();
        let k = key.clone();
        assert!(
            eventually(Duration::from_secs(2), || {
                let (url, k) = (url.clone(), k.clone());
                async move { chat(&url, &k, false).await.0 == 200 }
            })
            .await,
            "gateway {url} never accepted the new key"
        );
        let (s, body) = chat(&url, &key, true).await;
        assert_eq!(s, 200, "{body}");
        assert_stream(&body);
    }
    let usage = client.usage_within_a_second(&project, 4).await;
    assert_eq!(usage["totals"]["requests"], 4, "{usage}");
    let (_, requests) = client.get(&format!("/projects/{project}/requests")).await;
    let nodes: Vec<&str> = requests["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert!(
        nodes.contains(&"gw-a") && nodes.contains(&"gw-b"),
        "{requests}"
    );

    // A second key, then revoke the first: every node has the revocation within a
    // second (each reports the control sequence it applied), and refuses the key.
    let (s, second, _) = client
        .post_seq(
            &format!("/projects/{project}/keys"),
            json!({"name": "second"}),
        )
        .await;
    assert_eq!(s, 201);
    let second = second["key"].as_str().unwrap().to_owned();
    let (s, _, revoked_at) = client
        .post_seq(&format!("/keys/{key_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200);
    assert!(revoked_at > 0);
    cluster
        .wait_for_seq_within(revoked_at, Duration::from_secs(1))
        .await;
    for gw in &cluster.gateways {
        let (s, body) = chat(&gw.url(), &key, false).await;
        assert_eq!(s, 401, "{}: {body}", gw.url());
    }

    // Restart a gateway and the projector: state intact, nothing counted twice.
    cluster.gateways[0].restart().await;
    cluster.projector.restart().await;
    // Ready means caught up with the control stream as of its start.
    let ready = cluster.projector.readyz().await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["control_seq"].as_u64().unwrap() > 0, "{ready}");
    let (s, body) = chat(&cluster.gateways[0].url(), &key, false).await;
    assert_eq!(s, 401, "{body}");
    assert_error(&body, "key_revoked");
    let (s, body) = chat(&cluster.gateways[0].url(), &second, false).await;
    assert_eq!(s, 200, "{body}");
    // Five answers were served (a refused key leaves no usage): once everything owed is
    // published and projected, exactly five are counted.
    cluster.usage_settled().await;
    let (_, usage) = client.get(&format!("/projects/{project}/usage")).await;
    assert_eq!(
        usage["totals"]["requests"], 5,
        "usage counted twice, or lost, after restarts: {usage}"
    );

    // Idempotent retries work against JetStream too.
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{}/tenants", client.base))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "cluster-retry")
            .json(&json!({"name": "retry"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        ids.push(r.json::<serde_json::Value>().await.unwrap()["id"].clone());
    }
    assert_eq!(ids[0], ids[1], "a retried command created twice");

    // The provider key never appears in the admin's answers or any process log.
    let (_, conns) = client
        .get(&format!("/projects/{project}/connections"))
        .await;
    assert!(!conns.to_string().contains("sk-cluster-provider-key"));
    for p in cluster
        .gateways
        .iter()
        .chain([&cluster.admin, &cluster.projector])
    {
        let log = p.log();
        assert!(
            !log.contains("sk-cluster-provider-key"),
            "provider key in a log"
        );
        assert!(
            !log.contains(&key) && !log.contains(&second),
            "proxy key in a log"
        );
    }
    // The provider did receive the key, so the searches below are not vacuous.
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-cluster-provider-key")
    );

    // Leak search: every PostgreSQL table…
    let pg = &cluster.pg;
    let dump = tokio::process::Command::new(pg.bindir().join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "--data-only",
            "securegate",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains(&key_id), "the dump holds the views");
    for secret in ["sk-cluster-provider-key", key.as_str(), second.as_str()] {
        assert!(!dump.contains(secret), "a secret is stored in PostgreSQL");
    }
    // …and every message of every stream.
    use sg_eventlog::EventLog;
    let log = sg_eventlog::jetstream::JetStreamLog::connect(&nats_url, Default::default())
        .await
        .unwrap();
    let mut everything = String::new();
    for stream in sg_eventlog::StreamName::ALL {
        let bounds = log.bounds(stream).await.unwrap();
        if matches!(
            stream,
            sg_eventlog::StreamName::Control | sg_eventlog::StreamName::Usage
        ) {
            assert!(bounds.last_seq > 0, "{stream:?} is empty");
        }
        for seq in bounds.first_seq..=bounds.last_seq {
            if let Some(m) = log.get(stream, seq).await.unwrap() {
                everything.push_str(&String::from_utf8_lossy(&m.payload));
            }
        }
    }
    let hash = sg_proxy_key::ProxyKey::parse(&key).unwrap().hash().to_hex();
    assert!(everything.contains(&hash), "the log holds the key's hash");
    assert!(
        everything.contains("sealed") || everything.contains("ciphertext"),
        "the log holds the sealed provider key"
    );
    for secret in ["sk-cluster-provider-key", key.as_str(), second.as_str()] {
        assert!(!everything.contains(secret), "a secret is in the event log");
    }
}
