//! Alert emails delivered to a real SMTP server (aiosmtpd, from PyPI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use sg_alerts::{Alert, AlertKind, Delivery, EmailSender, Facts, WebhookSecret};
use sg_testkit::free_port;
use sg_testkit::pyserver::{PyServer, SMTP_SERVER, require_python};

const FROM: &str = "SecureGate Alerts <alerts@securegate.test>";
/// What a leaked proxy key would look like; the alert must never carry one.
const KEY_SECRET: &str = "sgk_live_4f9d1c0b7a6e5d4c3b2a19080706050403020100";

fn ip_mismatch() -> Alert {
    Alert::new(
        "prj_acme",
        Some("key_7Hq2".into()),
        AlertKind::IpMismatch,
        1_764_435_349,
        "1764435300",
        Facts {
            project_name: Some("Acme production".into()),
            key_name: Some("billing-worker".into()),
            bound_ip: Some("198.51.100.4".into()),
            offending_ip: Some("203.0.113.77".into()),
            country: Some("DE".into()),
            city: Some("Frankfurt am Main".into()),
            code: Some("ip_not_allowed".into()),
            endpoint: Some("/v1/chat/completions".into()),
            model: Some("gpt-4o-mini".into()),
            ..Facts::default()
        },
    )
}

fn smtp(dir: &std::path::Path) -> PyServer {
    PyServer::start_on_free_port(dir, "smtp", SMTP_SERVER, &[])
}

#[tokio::test]
async fn an_alert_email_reaches_a_real_smtp_server() {
    require_python(&[("aiosmtpd", "aiosmtpd")]);
    let dir = tempfile::tempdir().unwrap();
    let server = smtp(dir.path());
    let sender = EmailSender::new(&format!("smtp://127.0.0.1:{}", server.port), FROM).unwrap();
    let alert = ip_mismatch();
    let webhook_secret = WebhookSecret::generate();

    assert_eq!(
        sender.send("ops@acme.example", &alert, 1).await,
        Delivery::Delivered
    );
    let records = server.wait_for_records(1, Duration::from_secs(10));
    let mail = &records[0];
    assert_eq!(mail["mail_from"], "alerts@securegate.test");
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["ops@acme.example"]));
    assert_eq!(mail["from"], FROM);
    assert_eq!(mail["to"], "ops@acme.example");
    assert_eq!(mail["subject"], alert.email_subject());
    let subject = mail["subject"].as_str().unwrap();
    assert!(
        subject.contains("billing-worker") && subject.contains("203.0.113.77"),
        "{subject}"
    );
    assert_eq!(
        mail["message_id"],
        format!("<{}@securegate.test>", alert.id)
    );
    assert_eq!(mail["content_type"], "text/plain");
    let body = mail["body"].as_str().unwrap();
    for needle in [
        "203.0.113.77 (Frankfurt am Main, DE)",
        "198.51.100.4",
        "key_7Hq2",
        "billing-worker",
        "What to do",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
    let raw = mail["raw"].as_str().unwrap();
    assert!(!raw.contains(KEY_SECRET));
    assert!(!raw.contains(webhook_secret.expose()));
    assert!(!raw.contains(&webhook_secret.expose()["whsec_".len()..]));
}

#[tokio::test]
async fn a_down_server_means_retry_and_the_resend_succeeds() {
    require_python(&[("aiosmtpd", "aiosmtpd")]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sender = EmailSender::with_timeout(
        &format!("smtp://127.0.0.1:{port}"),
        FROM,
        Duration::from_secs(2),
    )
    .unwrap();
    let alert = ip_mismatch();

    let started = Instant::now();
    let first = sender.send("ops@acme.example", &alert, 1).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    match first {
        Delivery::Retry { after, reason } => {
            assert_eq!(after, Duration::from_secs(1));
            assert!(reason.starts_with("smtp:"), "{reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }

    let server = PyServer::start(dir.path(), "smtp", SMTP_SERVER, port, &[]);
    assert_eq!(
        sender.send("ops@acme.example", &alert, 2).await,
        Delivery::Delivered
    );
    let records = server.wait_for_records(1, Duration::from_secs(10));
    assert_eq!(records[0]["subject"], alert.email_subject());
}

#[tokio::test]
async fn a_silent_server_times_out_into_a_retry() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let sender = EmailSender::with_timeout(
        &format!("smtp://127.0.0.1:{port}"),
        FROM,
        Duration::from_secs(1),
    )
    .unwrap();
    let started = Instant::now();
    let outcome = sender.send("ops@acme.example", &ip_mismatch(), 3).await;
    let took = started.elapsed();
    holder.abort();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        matches!(&outcome, Delivery::Retry { after, .. } if *after == Duration::from_secs(4)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn smtp_refusals_are_classified() {
    require_python(&[("aiosmtpd", "aiosmtpd")]);
    let dir = tempfile::tempdir().unwrap();
    let server = smtp(dir.path());
    let sender = EmailSender::new(&format!("smtp://127.0.0.1:{}", server.port), FROM).unwrap();
    let alert = ip_mismatch();
    match sender.send("reject@acme.example", &alert, 1).await {
        Delivery::Failed { reason } => assert!(reason.contains("550"), "{reason}"),
        other => panic!("a 550 is permanent, got {other:?}"),
    }
    match sender.send("later@acme.example", &alert, 1).await {
        Delivery::Retry { reason, .. } => assert!(reason.contains("451"), "{reason}"),
        other => panic!("a 451 is transient, got {other:?}"),
    }
    assert!(server.records().is_empty());
}
