//! Provider keys sealed with AWS KMS (a real KMS API endpoint: a private `moto_server`),
//! opened only where requests are forwarded, and re-wrapped under a new KMS key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use sg_testkit::mock_upstream::MockUpstream;
use sg_testkit::moto::MotoServer;
use sg_testkit::nats::NatsServer;
use sg_testkit::postgres::PostgresServer;
use support::*;

#[tokio::test]
async fn aws_kms_seals_at_admin_opens_at_the_gateway_and_rewraps() {
    let dir = tempfile::tempdir().unwrap();
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap()
        .unwrap();
    let first_key = moto.create_kms_key().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let db = pg.create_database("securegate").await.unwrap();
    let nats_url = nats.url();
    let env = [
        ("SECUREGATE_ADMIN_TOKEN", TOKEN),
        ("SECUREGATE_NATS_URL", nats_url.as_str()),
        ("SECUREGATE_KMS", "aws"),
        ("AWS_ENDPOINT_URL_KMS", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];

    // The admin needs a key to generate data keys under; without one it refuses to start.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_securegate"))
        .args([
            "server",
            "admin",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ])
        .env_clear()
        .envs(env)
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--kms-key-id"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let admin = Proc::start(
        &[
            "server",
            "admin",
            "--listen",
            "{addr}",
            "--database-url",
            &db,
            "--kms-key-id",
            &first_key,
            "--allow-private-upstreams",
        ],
        &env,
        dir.path(),
    )
    .await;
    let _projector = Proc::start(
        &[
            "server",
            "projector",
            "--listen",
            "{addr}",
            "--database-url",
            &db,
        ],
        &env,
        dir.path(),
    )
    .await;
    // The gateway only decrypts: no key id.
    let mut gateway = Proc::start(
        &[
            "server",
            "gateway",
            "--listen",
            "{addr}",
            "--allow-private-upstreams",
        ],
        &env,
        dir.path(),
    )
    .await;

    let upstream = MockUpstream::start(sg_testkit::MockConfig {
        expected_api_key: Some("sk-aws-sealed-provider-key".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = AdminClient::new(&admin.url());
    let (_, _, key) = client
        .setup(json!({"provider": "openai", "api_key": "sk-aws-sealed-provider-key", "base_url": upstream.base_url()}))
        .await;
    let gw = gateway.url();
    let k = key.clone();
    assert!(
        eventually(std::time::Duration::from_secs(2), || {
            let (u, k) = (gw.clone(), k.clone());
            async move { chat(&u, &k, false).await.0 == 200 }
        })
        .await,
        "gateway log:\n{}",
        gateway.log()
    );

    // The log holds the secret sealed by AWS KMS under the first key.
    let log = sg_eventlog::jetstream::JetStreamLog::connect(&nats_url, Default::default())
        .await
        .unwrap();
    let sealed_under = |log: sg_eventlog::jetstream::JetStreamLog| async move {
        use sg_eventlog::EventLog;
        let bounds = log.bounds(sg_eventlog::StreamName::Control).await.unwrap();
        let mut kek = Vec::new();
        for seq in 1..=bounds.last_seq {
            let m = log
                .get(sg_eventlog::StreamName::Control, seq)
                .await
                .unwrap()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if let Some(api_key) = v["data"].get("api_key") {
                assert_eq!(api_key["kms"], "aws");
                kek.push(api_key["kek_id"].as_str().unwrap().to_owned());
            }
        }
        kek
    };
    let keks = sealed_under(log.clone()).await;
    assert_eq!(keks.len(), 1);
    assert!(keks[0].contains(&first_key), "{keks:?}");

    // Re-wrap under a second key: the data key moves, the secret does not change.
    let second_key = moto.create_kms_key().await.unwrap();
    let (s, report) = client
        .post("/rewrap", json!({"kms_key_id": second_key}))
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["rewrapped"], 1, "{report}");
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    let (_, again) = client
        .post("/rewrap", json!({"kms_key_id": second_key}))
        .await;
    assert_eq!(again["unchanged"], 1, "{again}");
    let keks = sealed_under(log).await;
    assert!(keks.last().unwrap().contains(&second_key), "{keks:?}");

    // A restarted gateway (nothing cached) opens the re-wrapped secret.
    gateway.restart().await;
    let (s, body) = chat(&gateway.url(), &key, false).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some("Bearer sk-aws-sealed-provider-key")
    );
}
