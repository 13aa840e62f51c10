//! Alerts that reach people: a real SMTP server (aiosmtpd) and a webhook receiver that
//! checks signatures with the official `standardwebhooks` package, fed by a running
//! SecureGate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sg_testkit::free_port;
use sg_testkit::pyserver::{PyServer, SMTP_SERVER, WEBHOOK_RECEIVER, require_python};
use support::*;

const FROM: &str = "SecureGate <alerts@securegate.test>";

fn body() -> Value {
    json!({"model": "mock-gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// Sets the project's channels; returns the new webhook's secret.
async fn channels(admin: &AdminClient, project: &str, email: &str, hook: &str) -> String {
    let (s, c) = admin
        .put(
            &format!("/projects/{project}/alerts"),
            json!({"emails": [email], "webhooks": [{"url": hook}]}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    c["webhooks"][0]["secret"].as_str().unwrap().to_owned()
}

/// A key bound to 127.0.0.2 by its first request.
async fn bound_key(admin: &AdminClient, gateway: &str, project: &str) -> (String, String) {
    let (s, k) = admin
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "billing-worker"}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().unwrap().to_owned();
    let (s, t) = chat_with(&client_from("127.0.0.2"), gateway, &key, body(), &[]).await;
    assert_eq!(s, 200, "{t}");
    (k["id"].as_str().unwrap().to_owned(), key)
}

#[tokio::test]
async fn an_ip_mismatch_reaches_email_and_a_signed_webhook_once_and_a_storm_stays_short() {
    require_python(&[
        ("aiosmtpd", "aiosmtpd"),
        ("standardwebhooks", "standardwebhooks"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = PyServer::start_on_free_port(dir.path(), "smtp", SMTP_SERVER, &[]);
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let dev = Dev::start(&["--smtp-url", &smtp_url, "--alert-from", FROM], &[]).await;
    let gw = dev.gateway.url();
    let (project, _, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let hook_port = free_port();
    let secret = channels(
        &dev.admin,
        &project,
        "owner@example.com",
        &format!("http://127.0.0.1:{hook_port}/hook"),
    )
    .await;
    let hook = PyServer::start(
        dir.path(),
        "webhook",
        WEBHOOK_RECEIVER,
        hook_port,
        &[("WEBHOOK_SECRET", secret.as_str())],
    );
    let (key_id, key) = bound_key(&dev.admin, &gw, &project).await;

    // The stolen key used from elsewhere: refused, and the owner hears of it.
    let thief = client_from("127.0.0.3");
    let (s, t) = chat_with(&thief, &gw, &key, body(), &[]).await;
    assert_eq!(s, 403, "{t}");
    assert_error(&t, "ip_not_allowed");
    let mails = smtp.wait_for_records(1, Duration::from_secs(15));
    let mail = &mails[0];
    assert_eq!(mail["rcpt_tos"], json!(["owner@example.com"]));
    let text = mail["body"].as_str().unwrap();
    assert!(
        text.contains("127.0.0.2") && text.contains("127.0.0.3"),
        "{text}"
    );
    assert!(text.contains(&key_id), "{text}");
    assert!(
        !mail["raw"].as_str().unwrap().contains(&key),
        "the key itself was mailed"
    );
    let hooks = hook.wait_for_records(1, Duration::from_secs(15));
    assert_eq!(hooks[0]["verified"], true, "{}", hooks[0]);
    let payload = &hooks[0]["payload"];
    assert_eq!(payload["type"], "key.ip_mismatch", "{payload}");
    let data = payload["data"].to_string();
    assert!(
        data.contains("127.0.0.2") && data.contains("127.0.0.3"),
        "{data}"
    );
    assert!(!hooks[0]["body"].as_str().unwrap().contains(&key));

    // A storm of 1,000 refusals: a bounded number of messages, not 1,000.
    let mut storm = futures::stream::iter(0..1000)
        .map(|_| {
            let (thief, gw, key) = (thief.clone(), gw.clone(), key.clone());
            async move { chat_with(&thief, &gw, &key, body(), &[]).await.0 }
        })
        .buffer_unordered(16);
    use futures::StreamExt as _;
    let mut refused = 0;
    while let Some(s) = storm.next().await {
        assert!(s == 403, "{s}");
        refused += 1;
    }
    assert_eq!(refused, 1000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mails = smtp.records();
    let hooks = hook.records();
    // The mismatch (once), the suspension the violations rule makes: a handful at most.
    assert!(
        mails.len() <= 5,
        "{} emails: {:?}",
        mails.len(),
        subjects(&mails)
    );
    assert!(hooks.len() <= 5, "{} webhooks", hooks.len());
    let ids: std::collections::BTreeSet<&str> = mails
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), mails.len(), "an alert was mailed twice");
    assert!(
        mails
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains("suspended")),
        "{:?}",
        subjects(&mails)
    );
}

fn subjects(mails: &[Value]) -> Vec<String> {
    mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn an_alert_waits_for_a_mail_server_that_is_down_and_arrives_when_it_is_back() {
    require_python(&[("aiosmtpd", "aiosmtpd")]);
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{smtp_port}");
    let dev = Dev::start(&["--smtp-url", &smtp_url, "--alert-from", FROM], &[]).await;
    let gw = dev.gateway.url();
    let (project, _, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let (s, c) = dev
        .admin
        .put(
            &format!("/projects/{project}/alerts"),
            json!({"emails": ["owner@example.com"]}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let (_, key) = bound_key(&dev.admin, &gw, &project).await;
    let (s, _) = chat_with(&client_from("127.0.0.3"), &gw, &key, body(), &[]).await;
    assert_eq!(s, 403);
    // The mail server is down for 30 s; the gateway answers as fast as ever meanwhile.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (s, _) = chat_with(&client_from("127.0.0.2"), &gw, &key, body(), &[]).await;
    assert_eq!(s, 200);
    let (s, events) = dev
        .admin
        .get(&format!("/projects/{project}/events?type=alert.delivered"))
        .await;
    assert_eq!(s, 200, "{events}");
    assert_eq!(
        events["data"],
        json!([]),
        "delivered while the server was down?"
    );
    let smtp = PyServer::start(dir.path(), "smtp", SMTP_SERVER, smtp_port, &[]);
    // The next attempt (backoff doubling from 1 s) finds it up.
    let mails = smtp.wait_for_records(1, Duration::from_secs(60));
    assert!(mails[0]["body"].as_str().unwrap().contains("127.0.0.3"));
}

#[tokio::test]
async fn alert_channels_are_validated() {
    let dev = Dev::start(&[], &[]).await;
    let (project, _, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let path = format!("/projects/{project}/alerts");
    for (bad, param) in [
        (json!({"emails": ["not an address"]}), "emails[0]"),
        (json!({"emails": ["a@example.com", "b@"]}), "emails[1]"),
        (
            json!({"webhooks": [{"url": "ftp://hooks.example.com/x"}]}),
            "webhooks[0].url",
        ),
        (
            json!({"webhooks": [{"url": "https://user:pw@hooks.example.com/x"}]}),
            "webhooks[0].url",
        ),
    ] {
        let (s, e) = dev.admin.put(&path, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {e}");
        assert_eq!(e["error"]["param"], param, "{bad}: {e}");
    }
    let (s, e) = dev
        .admin
        .put(&path, json!({"emails": [], "extra": 1}))
        .await;
    assert_eq!(s, 400, "{e}");
    // A webhook keeps its id and secret while its URL stays; the secret is shown once.
    let hook = json!({"webhooks": [{"url": "https://hooks.example.com/sg"}]});
    let (s, first) = dev.admin.put(&path, hook.clone()).await;
    assert_eq!(s, 200, "{first}");
    assert!(
        first["webhooks"][0]["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    let (s, again) = dev.admin.put(&path, hook).await;
    assert_eq!(s, 200);
    assert_eq!(again["webhooks"][0]["id"], first["webhooks"][0]["id"]);
    assert_eq!(again["webhooks"][0]["secret"], Value::Null);
    let (s, shown) = dev.admin.get(&path).await;
    assert_eq!(s, 200);
    assert!(!shown.to_string().contains("whsec_"), "{shown}");
}

#[tokio::test]
async fn a_notifier_killed_mid_storm_raises_and_mails_each_alert_once() {
    require_python(&[("aiosmtpd", "aiosmtpd")]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = PyServer::start_on_free_port(dir.path(), "smtp", SMTP_SERVER, &[]);
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let mut cluster = Cluster::start(&[&[]]).await;
    let gw = cluster.gateways[0].url();
    let project = cluster.project().await;
    let (s, c) = cluster
        .client
        .put(
            &format!("/projects/{project}/alerts"),
            json!({"emails": ["owner@example.com"]}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    // The harness's sentinel sends no mail: this one does.
    cluster.sentinel.kill().await;
    let mut sentinel = cluster
        .another_sentinel_with(&["--smtp-url", &smtp_url, "--alert-from", FROM])
        .await;
    let (_, key) = cluster.key(&project, json!({})).await;
    let (s, t) = chat_with(&client_from("127.0.0.2"), &gw, &key, body(), &[]).await;
    assert_eq!(s, 200, "{t}");

    // A storm of refusals; the notifier is killed in the middle and comes back.
    use futures::StreamExt as _;
    let thief = client_from("127.0.0.3");
    let send = |n: usize| {
        futures::stream::iter(0..n)
            .map(|_| {
                let (thief, gw, key) = (thief.clone(), gw.clone(), key.clone());
                async move { chat_with(&thief, &gw, &key, body(), &[]).await.0 }
            })
            .buffer_unordered(8)
            .collect::<Vec<u16>>()
    };
    assert!(send(100).await.iter().all(|s| *s == 403));
    smtp.wait_for_records(1, Duration::from_secs(15));
    // Killed once the delivery is recorded: a kill between sending and recording would
    // send that one again (at least once; receivers deduplicate by the Message-ID).
    assert!(
        eventually(Duration::from_secs(10), || async {
            let events = cluster.events(sg_eventlog::StreamName::Signals).await;
            let count = |delivered: bool| {
                events
                    .iter()
                    .filter(|(_, e)| match &e.event {
                        sg_events::Event::AlertRaised(_) => !delivered,
                        sg_events::Event::AlertDelivered(_) => delivered,
                        _ => false,
                    })
                    .count()
            };
            count(false) > 0 && count(false) == count(true)
        })
        .await
    );
    sentinel.kill().await;
    assert!(send(100).await.iter().all(|s| *s == 403));
    sentinel.start_again().await;
    assert!(send(100).await.iter().all(|s| *s == 403));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let raised: Vec<String> = cluster
        .events(sg_eventlog::StreamName::Signals)
        .await
        .into_iter()
        .filter_map(|(_, e)| match e.event {
            sg_events::Event::AlertRaised(r) => Some(r.alert_id),
            _ => None,
        })
        .collect();
    let unique: std::collections::BTreeSet<&String> = raised.iter().collect();
    assert_eq!(
        unique.len(),
        raised.len(),
        "an alert was raised twice: {raised:?}"
    );
    let mails = smtp.records();
    let ids: std::collections::BTreeSet<&str> = mails
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        mails.len(),
        "mailed twice: {:?}",
        subjects(&mails)
    );
    assert!(mails.len() <= 5, "{:?}", subjects(&mails));
    assert!(
        mails
            .iter()
            .any(|m| m["subject"].as_str().unwrap().to_lowercase().contains("ip")),
        "{:?}",
        subjects(&mails)
    );
}

#[tokio::test]
async fn a_key_budget_crossing_50_80_and_100_percent_mails_each_threshold_once() {
    require_python(&[("aiosmtpd", "aiosmtpd")]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = PyServer::start_on_free_port(dir.path(), "smtp", SMTP_SERVER, &[]);
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let dev = Dev::start(&["--smtp-url", &smtp_url, "--alert-from", FROM], &[]).await;
    let gw = dev.gateway.url();
    let (project, key_id, key) = dev.admin.setup(json!({"provider": "mock"})).await;
    let (s, c) = dev
        .admin
        .put(
            &format!("/projects/{project}/alerts"),
            json!({"emails": ["owner@example.com"]}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    // $10,000 per million output tokens: five output tokens cost $0.05; $1 a day is 20.
    let (s, p) = dev
        .admin
        .put(
            "/prices",
            json!({"model": "mock-budget", "input_usd_per_mtok": 0, "output_usd_per_mtok": 10000}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    let (s, l) = dev
        .admin
        .put(
            &format!("/keys/{key_id}/limits"),
            json!({"budget": {"usd": 1, "period": "day"}}),
        )
        .await;
    assert_eq!(s, 200, "{l}");
    let spend = json!({"model": "mock-budget", "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}]});
    let client = reqwest::Client::new();
    let mut served = 0;
    for _ in 0..25 {
        let (s, _) = chat_with(&client, &gw, &key, spend.clone(), &[]).await;
        if s == 200 {
            served += 1;
        }
    }
    assert_eq!(served, 20);
    smtp.wait_for_records(3, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails: Vec<String> = smtp
        .records()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .filter(|s| s.contains("budget"))
        .collect();
    let percents: Vec<&str> = ["50%", "80%", "100%"]
        .into_iter()
        .filter(|p| mails.iter().any(|m| m.contains(p)))
        .collect();
    assert_eq!(percents, ["50%", "80%", "100%"], "{mails:?}");
    assert_eq!(mails.len(), 3, "a threshold mailed twice: {mails:?}");
}
