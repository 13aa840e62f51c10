//! Abuse detection end to end: the sentinel (`securegate server sentinel`, and inside
//! `securegate dev`) suspends keys that break their project's rules, on every gateway,
//! once, and resumes them when the suspension ends or the owner says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sg_events::Event;
use support::*;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What a gateway answered a chat request: status, error code, `Retry-After`.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: String,
    retry_after: Option<i64>,
}

impl Answer {
    fn suspended(&self) -> bool {
        self.status == 403 && self.code == "key_suspended"
    }
}

async fn call(client: &reqwest::Client, gateway: &str, key: &str) -> Answer {
    let r = client
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
        retry_after,
    }
}

/// Replaces the project's abuse settings through the admin API; returns the write's
/// control sequence.
async fn set_abuse(client: &AdminClient, project: &str, settings: Value) -> u64 {
    let r = client
        .http
        .put(format!("{}/projects/{project}/abuse", client.base))
        .bearer_auth(TOKEN)
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seq = r.headers()["x-securegate-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let full: Value = r.json().await.unwrap();
    assert_eq!(full["enabled"], true, "{full}");
    seq
}

/// Velocity: more than 5 requests a minute suspends for `suspend_seconds`.
fn velocity(suspend_seconds: u64) -> Value {
    json!({"velocity": {"requests": 5, "window_seconds": 60}, "suspend_seconds": suspend_seconds})
}

/// Waits until the sentinel `proc` has read the control stream up to `seq` (it applies
/// settings from its replica, which reads the same stream).
async fn sentinel_reached(proc: &Proc, seq: u64) {
    let reached = eventually(Duration::from_secs(5), || async {
        proc.readyz().await["control_seq"]
            .as_u64()
            .is_some_and(|s| s >= seq)
    })
    .await;
    assert!(reached, "the sentinel did not reach control sequence {seq}");
}

/// Sends `n` requests with `key`, spread over `gateways`; the first five must be served,
/// the rest are served or already refused as suspended.
async fn storm(gateways: &[String], key: &str, n: usize) {
    let client = reqwest::Client::new();
    for i in 0..n {
        let a = call(&client, &gateways[i % gateways.len()], key).await;
        if i < 5 {
            assert_eq!(a.status, 200, "request {i}: {a:?}");
        } else {
            assert!(a.status == 200 || a.suspended(), "request {i}: {a:?}");
        }
    }
}

/// Waits until every gateway refuses `key` as suspended; returns their answers.
async fn suspended_everywhere(gateways: &[String], key: &str, within: Duration) -> Vec<Answer> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let mut answers = Vec::new();
        for gw in gateways {
            answers.push(call(&client, gw, key).await);
        }
        if answers.iter().all(Answer::suspended) {
            return answers;
        }
        assert!(
            Instant::now() < deadline,
            "not suspended everywhere within {within:?}: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every gateway serves `key` again.
async fn served_everywhere(gateways: &[String], key: &str, within: Duration) -> bool {
    let client = reqwest::Client::new();
    eventually(within, || {
        let client = client.clone();
        async move {
            for gw in gateways {
                if call(&client, gw, key).await.status != 200 {
                    return false;
                }
            }
            true
        }
    })
    .await
}

/// The verdict ids of the `key.suspended` events for `key_id` in the control stream,
/// with how many times each was written.
async fn suspensions(cluster: &Cluster, key_id: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for (_, env) in cluster.control_events().await {
        if let Event::KeySuspended(d) = env.event
            && d.key_id.as_str() == key_id
        {
            *ids.entry(d.verdict_id).or_default() += 1;
        }
    }
    ids
}

async fn admin_key(client: &AdminClient, key_id: &str) -> Value {
    let (s, key) = client.get(&format!("/keys/{key_id}")).await;
    assert_eq!(s, 200, "{key}");
    key
}

fn urls(cluster: &Cluster) -> Vec<String> {
    cluster.gateways.iter().map(Proc::url).collect()
}

#[tokio::test]
async fn a_velocity_storm_suspends_the_key_on_every_node_until_the_suspension_ends() {
    let cluster = Cluster::start(&[&["--node-id", "gw-a"], &["--node-id", "gw-b"]]).await;
    let gateways = urls(&cluster);
    let project = cluster.project().await;
    let seq = set_abuse(&cluster.client, &project, velocity(4)).await;
    let (key_id, key) = cluster.key(&project, json!({})).await;
    let (_, other) = cluster.key(&project, json!({})).await;
    sentinel_reached(&cluster.sentinel, seq).await;

    wait_for_minute_left(15).await;
    let started = Instant::now();
    storm(&gateways, &key, 8).await;
    let answers = suspended_everywhere(&gateways, &key, Duration::from_secs(3)).await;
    let detected = started.elapsed();
    for a in &answers {
        let wait = a.retry_after.expect("Retry-After");
        assert!((1..=4).contains(&wait), "{a:?}");
    }
    let shown = admin_key(&cluster.client, &key_id).await;
    assert_eq!(shown["suspension"]["rule"], "velocity", "{shown}");
    assert!(
        shown["suspension"]["until"].as_i64().unwrap() > now(),
        "{shown}"
    );
    assert!(
        shown["suspension"]["reason"]
            .as_str()
            .unwrap()
            .contains("limit 5"),
        "{shown}"
    );
    // The project's other key is not touched.
    let client = reqwest::Client::new();
    for gw in &gateways {
        assert_eq!(call(&client, gw, &other).await.status, 200);
    }

    // Four seconds later the key works again, and the sentinel has written the end.
    assert!(
        served_everywhere(&gateways, &key, Duration::from_secs(8)).await,
        "the suspension did not end"
    );
    let resumed = eventually(Duration::from_secs(3), || async {
        cluster.control_events().await.iter().any(|(_, env)| {
            matches!(&env.event, Event::KeyResumed(d) if d.key_id.as_str() == key_id && !d.early)
        })
    })
    .await;
    assert!(
        resumed,
        "no key.resumed (early: false) in the control stream"
    );
    assert!(
        admin_key(&cluster.client, &key_id).await["suspension"].is_null(),
        "the admin API still shows a suspension"
    );
    let ids = suspensions(&cluster, &key_id).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    eprintln!("suspended on both nodes {detected:?} after the storm began");
}

#[tokio::test]
async fn an_owner_resumes_a_suspended_key_and_a_restarted_sentinel_leaves_it_alone() {
    let mut cluster = Cluster::start(&[&[], &[]]).await;
    let gateways = urls(&cluster);
    let project = cluster.project().await;
    let seq = set_abuse(&cluster.client, &project, velocity(600)).await;
    let (key_id, key) = cluster.key(&project, json!({})).await;
    sentinel_reached(&cluster.sentinel, seq).await;

    // Not suspended: nothing to resume.
    let (s, e) = cluster
        .client
        .post(&format!("/keys/{key_id}/resume"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("not_suspended"))
    );

    wait_for_minute_left(20).await;
    storm(&gateways, &key, 8).await;
    let answers = suspended_everywhere(&gateways, &key, Duration::from_secs(3)).await;
    assert!(
        answers.iter().all(|a| a.retry_after.unwrap() > 500),
        "{answers:?}"
    );

    let (s, ended, seq) = cluster
        .client
        .post_seq(&format!("/keys/{key_id}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{ended}");
    let resumed_at = Instant::now();
    cluster.wait_for_seq(seq).await;
    let client = reqwest::Client::new();
    for gw in &gateways {
        let a = call(&client, gw, &key).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert!(resumed_at.elapsed() < Duration::from_secs(2));
    assert!(admin_key(&cluster.client, &key_id).await["suspension"].is_null());

    // A sentinel restarted now replays the storm and reaches the same verdict: it must
    // not suspend the key again for that window.
    cluster.sentinel.kill().await;
    cluster.sentinel.start_again().await;
    for i in 0..4 {
        let a = call(&client, &gateways[i % 2], &key).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let ids = suspensions(&cluster, &key_id).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    assert_eq!(cluster.sentinel.readyz().await["suspended"], 0);
}

/// Sends requests with `key` over `gateways` until `stop`, counting them.
fn hammer(
    gateways: Vec<String>,
    key: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let a = call(&client, &gateways[i % gateways.len()], &key).await;
            assert!(a.status == 200 || a.suspended(), "{a:?}");
            statuses.push(a.status);
            sent.fetch_add(1, Ordering::SeqCst);
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    })
}

#[tokio::test]
async fn a_sentinel_killed_mid_storm_and_a_second_sentinel_suspend_once() {
    let mut cluster = Cluster::start(&[&[], &[]]).await;
    let gateways = urls(&cluster);
    let project = cluster.project().await;
    let seq = set_abuse(&cluster.client, &project, velocity(600)).await;
    let (key_id, key) = cluster.key(&project, json!({})).await;
    sentinel_reached(&cluster.sentinel, seq).await;

    // The only sentinel dies (SIGKILL) while the key is hammered past the threshold,
    // and comes back while the hammering goes on.
    wait_for_minute_left(20).await;
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let task = hammer(gateways.clone(), key.clone(), stop.clone(), sent.clone());
    assert!(
        eventually(Duration::from_secs(5), || async {
            sent.load(Ordering::SeqCst) >= 4
        })
        .await
    );
    cluster.sentinel.kill().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sent.load(Ordering::SeqCst) >= 10
        })
        .await
    );
    cluster.sentinel.start_again().await;
    suspended_everywhere(&gateways, &key, Duration::from_secs(5)).await;
    // Keep hammering a little: refused, and nothing more is written.
    let more = sent.load(Ordering::SeqCst) + 10;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sent.load(Ordering::SeqCst) >= more
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    let statuses = task.await.unwrap();
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 6,
        "{statuses:?}"
    );
    let ids = suspensions(&cluster, &key_id).await;
    assert_eq!(ids.values().sum::<usize>(), 1, "{ids:?}");
    assert!(
        admin_key(&cluster.client, &key_id).await["suspension"]["rule"] == "velocity",
        "not suspended"
    );

    // Two sentinels at once (and the first killed again and restarted after the
    // suspension): one suspension.
    let second = cluster.another_sentinel().await;
    let (key_id, key) = cluster.key(&project, json!({})).await;
    wait_for_minute_left(15).await;
    storm(&gateways, &key, 8).await;
    suspended_everywhere(&gateways, &key, Duration::from_secs(3)).await;
    cluster.sentinel.kill().await;
    cluster.sentinel.start_again().await;
    let client = reqwest::Client::new();
    for i in 0..4 {
        assert!(call(&client, &gateways[i % 2], &key).await.suspended());
    }
    let ids = suspensions(&cluster, &key_id).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    assert_eq!(cluster.sentinel.readyz().await["suspended"], 0);
    assert!(second.readyz().await["suspended"].as_u64().unwrap() <= 1);
}

#[tokio::test]
async fn a_storm_of_lock_violations_suspends_the_key() {
    let cluster = Cluster::start(&[&[], &[]]).await;
    let gateways = urls(&cluster);
    let project = cluster.project().await;
    let seq = set_abuse(
        &cluster.client,
        &project,
        json!({"violations": {"count": 10, "window_seconds": 300}}),
    )
    .await;
    // The default lock: bound to the address of its first request.
    let (key_id, key) = cluster.key(&project, json!({})).await;
    sentinel_reached(&cluster.sentinel, seq).await;
    let (home, away) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    assert_eq!(call(&home, &gateways[0], &key).await.status, 200);
    let bound = eventually(Duration::from_secs(2), || async {
        cluster.locks(&key_id).await["bound_ip"] == "127.0.0.2"
    })
    .await;
    assert!(bound);

    let mut refused = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let a = call(&away, &gateways[i % 2], &key).await;
        assert_eq!(a.status, 403, "{a:?}");
        *refused.entry(a.code).or_default() += 1;
    }
    assert!(refused["ip_not_allowed"] >= 11, "{refused:?}");
    // Refused from its own address too, on every node.
    let client = home;
    let deadline = Instant::now() + Duration::from_secs(3);
    for gw in &gateways {
        loop {
            if call(&client, gw, &key).await.suspended() {
                break;
            }
            assert!(Instant::now() < deadline, "not suspended on {gw}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let shown = admin_key(&cluster.client, &key_id).await;
    assert_eq!(shown["suspension"]["rule"], "violations", "{shown}");
    let ids = suspensions(&cluster, &key_id).await;
    assert_eq!(ids.values().sum::<usize>(), 1, "{ids:?}");
}

#[tokio::test]
async fn embedded_mode_suspends_too() {
    let dev = Dev::start(&[], &[]).await;
    let (project, key_id, key) = dev.admin.setup(json!({"provider": "mock"})).await;
    let gw = vec![dev.gateway.url()];
    set_abuse(&dev.admin, &project, velocity(600)).await;
    wait_for_minute_left(15).await;
    storm(&gw, &key, 8).await;
    suspended_everywhere(&gw, &key, Duration::from_secs(3)).await;
    let (s, key_shown) = dev.admin.get(&format!("/keys/{key_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(key_shown["suspension"]["rule"], "velocity", "{key_shown}");
    // The owner lifts it; the one process answers only once its gateway knows.
    let (s, e) = dev
        .admin
        .post(&format!("/keys/{key_id}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        call(&reqwest::Client::new(), &gw[0], &key).await.status,
        200
    );
}

#[tokio::test]
async fn abuse_settings_are_validated_and_default_what_is_omitted() {
    let dev = Dev::start(&[], &[]).await;
    let (project, key_id, _) = dev.admin.setup(json!({"provider": "mock"})).await;
    let path = format!("/projects/{project}/abuse");
    let (s, defaults) = dev.admin.get(&path).await;
    assert_eq!(s, 200, "{defaults}");
    assert_eq!(defaults["velocity"]["requests"], 600, "{defaults}");
    let (s, set) = dev
        .admin
        .put(&path, json!({"velocity": {"requests": 50}}))
        .await;
    assert_eq!(s, 200, "{set}");
    assert_eq!(set["velocity"]["requests"], 50);
    assert_eq!(
        set["velocity"]["window_seconds"],
        defaults["velocity"]["window_seconds"]
    );
    assert_eq!(set["suspend_seconds"], defaults["suspend_seconds"]);
    for (bad, param) in [
        (json!({"velocity": {"requests": 0}}), "velocity.requests"),
        (
            json!({"velocity": {"window_seconds": 0}}),
            "velocity.window_seconds",
        ),
        (
            json!({"spread": {"window_seconds": 100_000}}),
            "spread.window_seconds",
        ),
        (
            json!({"velocity": {"spike_factor": 1.0}}),
            "velocity.spike_factor",
        ),
        (json!({"violations": {"count": 0}}), "violations.count"),
        (json!({"suspend_seconds": 0}), "suspend_seconds"),
        (
            json!({"suspend_seconds": 100_000_000u64}),
            "suspend_seconds",
        ),
    ] {
        let (s, e) = dev.admin.put(&path, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {e}");
        assert_eq!(e["error"]["param"], param, "{bad}: {e}");
    }
    // Wrong types, negative and huge numbers, unknown fields: 400, nothing stored.
    for bad in [
        json!({"velocity": {"requests": -1}}),
        json!({"velocity": {"requests": "many"}}),
        json!({"velocity": {"requests": 1e30}}),
        json!({"suspend_seconds": 18_446_744_073_709_551_616f64}),
        json!({"velocity": {"rps": 5}}),
        json!({"enabled": "yes"}),
        json!([]),
    ] {
        let (s, e) = dev.admin.put(&path, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {e}");
    }
    let (_, after) = dev.admin.get(&path).await;
    assert_eq!(after, set);
    // Resuming a key that is not suspended.
    let (s, e) = dev
        .admin
        .post(&format!("/keys/{key_id}/resume"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("not_suspended")),
        "{e}"
    );
}
