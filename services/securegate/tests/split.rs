//! Edge/egress split: the edge authorises without any access to provider keys, the
//! egress serves only requests the edge attested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use sg_testkit::mock_upstream::MockUpstream;
use support::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn edge_without_kms_serves_through_egress_which_refuses_anything_unattested() {
    let cluster = Cluster::start(&[]).await;
    // No master key, no KMS configuration of any kind on the edge.
    let (edge, egress, signing_file) = cluster
        .edge_and_egress(&[], &["--node-id", "edge-1"], &["--node-id", "egress-1"])
        .await;

    let upstream = MockUpstream::start(sg_testkit::MockConfig {
        expected_api_key: Some("sk-split-provider-key".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = cluster.client.clone();
    let (project, key_id, key) = client
        .setup(json!({"provider": "openai", "api_key": "sk-split-provider-key", "base_url": upstream.base_url()}))
        .await;

    let edge_url = edge.url();
    let k = key.clone();
    assert!(
        eventually(std::time::Duration::from_secs(2), || {
            let (u, k) = (edge_url.clone(), k.clone());
            async move { chat(&u, &k, false).await.0 == 200 }
        })
        .await,
        "edge never served the key; edge log:\n{}\negress log:\n{}",
        edge.log(),
        egress.log()
    );
    let (s, body) = chat(&edge.url(), &key, true).await;
    assert_eq!(s, 200, "{body}");
    assert_stream(&body);
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-split-provider-key")
    );
    let usage = client.usage_within_a_second(&project, 2).await;
    assert!(
        usage["totals"]["completion_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );

    // Straight to the egress: nothing without a valid, fresh, unused attestation.
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let path = "/v1/chat/completions";
    let egress_call = |token: Option<String>, body: Vec<u8>| {
        let mut r = http
            .post(format!("{}/egress{path}", egress.url()))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.header(sg_attest::HEADER, t);
        }
        r.send()
    };
    let r = egress_call(None, body.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_error(&r.text().await.unwrap(), "attestation_missing");

    let (_, keys) = client.get(&format!("/projects/{project}/keys")).await;
    let connection_id = keys["data"][0]["connection_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = |jti: &str, iat: u64, body: &[u8]| sg_attest::Claims {
        v: sg_attest::VERSION,
        iss: "test".into(),
        jti: jti.into(),
        tenant_id: keys["data"][0]["tenant_id"].as_str().unwrap().into(),
        project_id: project.clone(),
        key_id: key_id.clone(),
        connection_id: connection_id.clone(),
        model: Some("mock-gpt-4o-mini".into()),
        method: "POST".into(),
        path: path.into(),
        body_sha256: sg_attest::body_sha256(body),
        iat,
        exp: iat + sg_attest::DEFAULT_TTL_SECS,
    };
    let trusted =
        sg_attest::EdgeSigner::from_base64(&std::fs::read_to_string(&signing_file).unwrap())
            .unwrap();
    let forger = sg_attest::EdgeSigner::generate();

    let forged = forger.sign(&claims("forged", now(), &body));
    let r = egress_call(Some(forged), body.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_error(&r.text().await.unwrap(), "attestation_invalid");

    let expired = trusted.sign(&claims("expired", now() - 3600, &body));
    let r = egress_call(Some(expired), body.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_error(&r.text().await.unwrap(), "attestation_invalid");

    let for_another_body = trusted.sign(&claims("other-body", now(), b"{}"));
    let r = egress_call(Some(for_another_body), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let valid = trusted.sign(&claims("once", now(), &body));
    let r = egress_call(Some(valid.clone()), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a correctly attested request must pass");
    let r = egress_call(Some(valid), body.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_error(&r.text().await.unwrap(), "attestation_replayed");

    // The edge serves no egress path and the egress no client path.
    let r = http
        .post(format!("{}/v1/chat/completions", egress.url()))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The edge never held the provider key.
    assert!(!edge.log().contains("sk-split-provider-key"));
}
