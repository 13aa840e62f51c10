//! Alert webhooks delivered to a real HTTP receiver that checks signatures with the
//! official Python `standardwebhooks` package (from PyPI): an independent implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use sg_alerts::{
    Alert, AlertChannels, AlertKind, ChannelsInput, Delivery, Facts, WebhookChannel, WebhookInput,
    WebhookSecret, WebhookSender, validate_channels,
};
use sg_testkit::free_port;
use sg_testkit::pyserver::{PyServer, WEBHOOK_RECEIVER, require_python};

fn ip_mismatch() -> Alert {
    Alert::new(
        "prj_acme",
        Some("key_7Hq2".into()),
        AlertKind::IpMismatch,
        1_764_435_349,
        "1764435300",
        Facts {
            key_name: Some("billing-worker".into()),
            bound_ip: Some("198.51.100.4".into()),
            offending_ip: Some("203.0.113.77".into()),
            country: Some("DE".into()),
            ..Facts::default()
        },
    )
}

/// Channels for `paths` on a loopback receiver, validated as a tenant's would be with
/// private targets and plain http allowed (as in tests).
async fn channels(port: u16, paths: &[&str]) -> AlertChannels {
    let input = ChannelsInput {
        emails: vec![],
        webhooks: paths
            .iter()
            .map(|p| WebhookInput {
                url: format!("http://127.0.0.1:{port}{p}"),
            })
            .collect(),
    };
    validate_channels(input, true, true)
        .await
        .unwrap()
        .into_channels(None)
}

fn receiver(dir: &std::path::Path, secret: &WebhookSecret) -> PyServer {
    PyServer::start_on_free_port(
        dir,
        "webhook",
        WEBHOOK_RECEIVER,
        &[("WEBHOOK_SECRET", secret.expose())],
    )
}

fn header<'a>(record: &'a serde_json::Value, name: &str) -> &'a str {
    record["headers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {record}"))
}

#[tokio::test]
async fn a_signed_alert_is_verified_by_the_reference_implementation() {
    require_python(&[("standardwebhooks", "standardwebhooks")]);
    let dir = tempfile::tempdir().unwrap();
    // The port is needed for the URL and the secret for the receiver: validate first
    // with a placeholder port, then start the receiver with the channel's secret.
    let port = free_port();
    let channels = channels(port, &["/hooks/securegate"]).await;
    let channel = &channels.webhooks[0];
    assert!(channel.id.starts_with("wh_"));
    let server = PyServer::start(
        dir.path(),
        "webhook",
        WEBHOOK_RECEIVER,
        port,
        &[("WEBHOOK_SECRET", channel.secret.expose())],
    );
    let sender = WebhookSender::new(true, true).unwrap();
    let alert = ip_mismatch();

    assert_eq!(sender.send(channel, &alert, 1).await, Delivery::Delivered);
    let records = server.wait_for_records(1, Duration::from_secs(10));
    let record = &records[0];
    assert_eq!(record["verified"], true, "{record}");
    assert_eq!(record["path"], "/hooks/securegate");
    assert_eq!(header(record, "webhook-id"), alert.id);
    assert_eq!(header(record, "content-type"), "application/json");
    assert!(header(record, "user-agent").starts_with("SecureGate-Webhooks/"));
    let payload = &record["payload"];
    assert_eq!(payload["type"], "key.ip_mismatch");
    assert_eq!(payload["timestamp"], "2025-11-29T16:55:49Z");
    assert_eq!(payload["data"]["key_id"], "key_7Hq2");
    assert_eq!(payload["data"]["offending_ip"], "203.0.113.77");
    assert_eq!(payload["data"]["alert_id"], alert.id.as_str());
    // Our own verifier agrees on what was actually sent.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sg_alerts::verify(
        &channel.secret,
        header(record, "webhook-id"),
        header(record, "webhook-timestamp"),
        header(record, "webhook-signature"),
        record["body"].as_str().unwrap().as_bytes(),
        now,
    )
    .unwrap();
    // The secret travels in no header and no body.
    let text = record.to_string();
    assert!(!text.contains(channel.secret.expose()));
    assert!(!text.contains(&channel.secret.expose()["whsec_".len()..]));

    // A retry is the same message: same id, same body, a fresh signature time.
    assert_eq!(sender.send(channel, &alert, 2).await, Delivery::Delivered);
    let records = server.wait_for_records(2, Duration::from_secs(10));
    assert_eq!(header(&records[1], "webhook-id"), alert.id);
    assert_eq!(records[1]["body"], records[0]["body"]);
    assert_eq!(records[1]["verified"], true);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_receiver_and_retried() {
    require_python(&[("standardwebhooks", "standardwebhooks")]);
    let dir = tempfile::tempdir().unwrap();
    let server = receiver(dir.path(), &WebhookSecret::generate());
    // A channel with another secret than the receiver's.
    let channels = channels(server.port, &["/hook"]).await;
    let sender = WebhookSender::new(true, true).unwrap();
    match sender.send(&channels.webhooks[0], &ip_mismatch(), 1).await {
        Delivery::Retry { after, reason } => {
            assert_eq!(after, Duration::from_secs(1));
            assert!(reason.contains("401"), "{reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    let records = server.wait_for_records(1, Duration::from_secs(10));
    assert_eq!(records[0]["verified"], false);
    assert!(
        records[0]["error"]
            .as_str()
            .unwrap()
            .contains("No matching signature"),
        "{}",
        records[0]
    );
}

#[tokio::test]
async fn answers_are_classified() {
    require_python(&[("standardwebhooks", "standardwebhooks")]);
    let dir = tempfile::tempdir().unwrap();
    let secret = WebhookSecret::generate();
    let server = receiver(dir.path(), &secret);
    let channel = |path: &str| WebhookChannel {
        id: "wh_test".into(),
        url: format!("http://127.0.0.1:{}{path}", server.port),
        secret: secret.clone(),
    };
    let sender = WebhookSender::with_timeout(true, true, Duration::from_secs(1)).unwrap();
    let alert = ip_mismatch();

    assert_eq!(
        sender.send(&channel("/status/202"), &alert, 1).await,
        Delivery::Delivered
    );
    assert!(matches!(
        sender.send(&channel("/status/500"), &alert, 4).await,
        Delivery::Retry { after, .. } if after == Duration::from_secs(8)
    ));
    // Retry-After is honoured (up to the backoff cap).
    assert!(matches!(
        sender.send(&channel("/status/429"), &alert, 1).await,
        Delivery::Retry { after, .. } if after == Duration::from_secs(120)
    ));
    match sender.send(&channel("/status/410"), &alert, 1).await {
        Delivery::Failed { reason } => assert!(reason.contains("410"), "{reason}"),
        other => panic!("410 Gone is final, got {other:?}"),
    }
    // A redirect is not followed: only the original path is requested.
    match sender.send(&channel("/status/302"), &alert, 1).await {
        Delivery::Retry { reason, .. } => assert!(reason.contains("redirect"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    // The last attempt gives up but says why.
    assert!(matches!(
        sender.send(&channel("/status/503"), &alert, sg_alerts::MAX_ATTEMPTS).await,
        Delivery::Failed { reason } if reason.contains("503")
    ));
    // A receiver slower than the timeout: a retry, not a hang.
    let started = Instant::now();
    let slow = sender.send(&channel("/slow"), &alert, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&slow, Delivery::Retry { reason, .. } if reason.contains("timed out")),
        "{slow:?}"
    );
    let records = server.wait_for_records(7, Duration::from_secs(10));
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(!paths.contains(&"/elsewhere"), "{paths:?}");
    assert!(records.iter().all(|r| r["verified"] == true));
}

#[tokio::test]
async fn a_receiver_that_is_down_means_retry() {
    let sender = WebhookSender::new(true, true).unwrap();
    let channel = WebhookChannel {
        id: "wh_test".into(),
        url: format!("http://127.0.0.1:{}/hook", free_port()),
        secret: WebhookSecret::generate(),
    };
    match sender.send(&channel, &ip_mismatch(), 1).await {
        Delivery::Retry { reason, .. } => assert!(reason.contains("connect"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    require_python(&[("standardwebhooks", "standardwebhooks")]);
    let dir = tempfile::tempdir().unwrap();
    let secret = WebhookSecret::generate();
    let server = receiver(dir.path(), &secret);
    let alert = ip_mismatch();

    // Refused when the channels are submitted…
    for url in [
        format!("http://127.0.0.1:{}/hook", server.port),
        format!("http://localhost:{}/hook", server.port),
    ] {
        let input = ChannelsInput {
            emails: vec![],
            webhooks: vec![WebhookInput { url: url.clone() }],
        };
        let error = validate_channels(input.clone(), false, true)
            .await
            .unwrap_err();
        assert_eq!(error.field, "webhooks[0].url");
        assert!(error.message.contains("private"), "{error}");
        // …and refused when sending, should one have been stored.
        let channel = WebhookChannel {
            id: "wh_test".into(),
            url,
            secret: secret.clone(),
        };
        let guarded = WebhookSender::new(false, true).unwrap();
        match guarded.send(&channel, &alert, 1).await {
            Delivery::Failed { reason } => assert!(reason.contains("private"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Allowed when the operator allows private targets.
        assert!(validate_channels(input, true, true).await.is_ok());
        let open = WebhookSender::new(true, true).unwrap();
        assert_eq!(open.send(&channel, &alert, 1).await, Delivery::Delivered);
    }
    // Only the two allowed sends arrived.
    let records = server.wait_for_records(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.records().len(), 2);
    assert!(records.iter().all(|r| r["verified"] == true));

    // Plain http is refused unless allowed, even to an allowed address.
    let channel = WebhookChannel {
        id: "wh_test".into(),
        url: format!("http://127.0.0.1:{}/hook", server.port),
        secret,
    };
    let https_only = WebhookSender::new(true, false).unwrap();
    assert!(matches!(
        https_only.send(&channel, &alert, 1).await,
        Delivery::Failed { reason } if reason.contains("https")
    ));
}
