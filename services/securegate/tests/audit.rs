//! The audit trail through the real binary: a key IP-bound on first use from 127.0.0.2
//! and then used from 127.0.0.3 is refused, and the refusal (with the binding, the
//! settings change and the revocation around it) is listed by
//! `GET /projects/{id}/events` — filtered, paged, and with bad input refused — in
//! embedded mode (SQLite) and in a cluster (NATS JetStream, PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn body() -> Value {
    json!({"model": "mock-gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// `GET /projects/{project}/events?{query}`.
async fn events(admin: &AdminClient, project: &str, query: &str) -> (u16, Value) {
    admin
        .get(&format!("/projects/{project}/events?{query}"))
        .await
}

/// Every event of the listing, walking pages of `limit`.
async fn walk(admin: &AdminClient, project: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{query}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = events(admin, project, &q).await;
        assert_eq!(s, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit as usize, "{page}");
        all.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// The types this scenario causes (other features may add alerts beside them).
const MINE: &str = "type=project.abuse_set,key.bound,lock.violated,key.revoked";

fn count(events: &[Value], event_type: &str) -> usize {
    events.iter().filter(|e| e["type"] == event_type).count()
}

/// An RFC 3339 UTC time as the API writes it (`…:SS[.fff]Z`), in a form that sorts as
/// the time does (the fraction has no trailing zeros).
fn sortable(time: &str) -> String {
    let time = time.strip_suffix('Z').unwrap();
    let (seconds, fraction) = time.split_once('.').unwrap_or((time, ""));
    format!("{seconds}.{fraction:0<9}")
}

fn bad_param(status: u16, body: &Value, param: &str) {
    assert_eq!(status, 400, "{param}: {body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
}

/// The scenario, on any deployment: `key` (`key_id`, of `project`) has default locks
/// (IP auto-bind) and was never used; `gateway` serves it.
async fn scenario(admin: &AdminClient, gateway: &str, project: &str, key_id: &str, key: &str) {
    // Abuse detection off for the project: a settings change for the trail, and no
    // suspension of the key under test.
    let (s, e) = admin
        .put(
            &format!("/projects/{project}/abuse"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(s, 200, "{e}");

    // First use from 127.0.0.2 binds the key there…
    let (from2, from3) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let (s, text) = chat_with(&from2, gateway, key, body(), &[]).await;
    assert_eq!(s, 200, "{text}");
    let bound = eventually(Duration::from_secs(5), || async {
        let (_, locks) = admin.get(&format!("/keys/{key_id}/locks")).await;
        locks["bound_ip"] == "127.0.0.2"
    })
    .await;
    assert!(bound, "the key was not bound to 127.0.0.2");
    // …so 127.0.0.3 is refused, five times.
    for _ in 0..5 {
        let (s, text) = chat_with(&from3, gateway, key, body(), &[]).await;
        assert_eq!(s, 403, "{text}");
        assert_error(&text, "ip_not_allowed");
    }

    // The refusals reach the trail (signals are projected as they come).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let violations = loop {
        let (s, page) = events(admin, project, "type=lock.violated").await;
        assert_eq!(s, 200, "{page}");
        let data = page["data"].as_array().unwrap().clone();
        if data.len() >= 5 {
            break data;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lock violations not listed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(violations.len(), 5, "{violations:?}");
    for v in &violations {
        assert_eq!(v["type"], "lock.violated", "{v}");
        assert_eq!(v["key_id"], key_id, "{v}");
        assert_eq!(v["data"]["code"], "ip_not_allowed", "{v}");
        assert_eq!(v["data"]["client_ip"], "127.0.0.3", "{v}");
        assert!(v["actor"].as_str().unwrap().starts_with("node:"), "{v}");
        assert!(v["id"].as_str().is_some_and(|id| id.len() == 36), "{v}");
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    }

    // The owner revokes the key; the trail has it at once (the admin waits for its own
    // write to reach the views).
    let (s, e) = admin
        .post(
            &format!("/keys/{key_id}/revoke"),
            json!({"reason": "leaked"}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, page) = events(admin, project, "type=key.revoked").await;
    assert_eq!(s, 200, "{page}");
    let revoked = page["data"].as_array().unwrap();
    assert_eq!(revoked.len(), 1, "{page}");
    assert_eq!(revoked[0]["key_id"], key_id);
    assert_eq!(revoked[0]["actor"], "operator");
    assert_eq!(revoked[0]["data"]["reason"], "leaked");

    // Everything, newest first; every page size walks it exactly once.
    let everything = walk(admin, project, "", 500).await;
    let all = walk(admin, project, MINE, 500).await;
    assert_eq!(count(&all, "lock.violated"), 5, "{all:?}");
    assert_eq!(count(&all, "key.bound"), 1, "{all:?}");
    assert_eq!(count(&all, "project.abuse_set"), 1, "{all:?}");
    assert_eq!(count(&all, "key.revoked"), 1, "{all:?}");
    assert_eq!(all.len(), 8, "{all:?}");
    for e in &all {
        assert!(everything.contains(e), "{e} is not in the unfiltered trail");
    }
    let order: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        [
            "key.revoked",
            "lock.violated",
            "lock.violated",
            "lock.violated",
            "lock.violated",
            "lock.violated",
            "key.bound",
            "project.abuse_set"
        ],
        "newest first"
    );
    let bound = all.iter().find(|e| e["type"] == "key.bound").unwrap();
    assert_eq!(bound["data"]["ip"], "127.0.0.2", "{bound}");
    let times: Vec<String> = all
        .iter()
        .map(|e| sortable(e["time"].as_str().unwrap()))
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "not newest first");
    let ids: BTreeSet<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "an event listed twice");
    for limit in [1, 2, 3, 7, 8] {
        assert_eq!(
            walk(admin, project, MINE, limit).await,
            all,
            "pages of {limit}"
        );
    }

    // Filters: several types, the key, a time range.
    let some = walk(admin, project, "type=key.bound,key.revoked", 1).await;
    assert_eq!(some.len(), 2, "{some:?}");
    let of_key = walk(admin, project, &format!("{MINE}&key_id={key_id}"), 4).await;
    let expected: Vec<Value> = all
        .iter()
        .filter(|e| e["key_id"] == key_id)
        .cloned()
        .collect();
    assert_eq!(expected.len(), 7, "all but the settings: {all:?}");
    assert_eq!(of_key, expected);
    let (s, page) = events(admin, project, "key_id=key_0000000000000000").await;
    assert_eq!(
        (s, page["data"].as_array().unwrap().len()),
        (200, 0),
        "{page}"
    );
    let newest_violation = violations[0]["time"].as_str().unwrap();
    let oldest_violation = violations[4]["time"].as_str().unwrap();
    let since = walk(
        admin,
        project,
        &format!("type=lock.violated&from={oldest_violation}"),
        2,
    )
    .await;
    assert_eq!(since, violations, "from the oldest violation on");
    let before = walk(
        admin,
        project,
        &format!("type=lock.violated&to={newest_violation}"),
        2,
    )
    .await;
    assert!(
        before.len() < 5
            && before
                .iter()
                .all(|e| sortable(e["time"].as_str().unwrap()) < sortable(newest_violation)),
        "{before:?}"
    );
    let (s, page) = events(admin, project, "from=2999-01-01T00:00:00Z").await;
    assert_eq!(
        (s, page["data"].as_array().unwrap().len()),
        (200, 0),
        "{page}"
    );
    assert_eq!(page["next_cursor"], Value::Null);

    // Nothing secret: not the key, not its hash.
    let text = serde_json::to_string(&everything).unwrap();
    let hash = sg_proxy_key::ProxyKey::parse(key).unwrap().hash().to_hex();
    assert!(
        !text.contains(key) && !text.contains(&hash),
        "a secret in the trail"
    );
    assert!(!text.contains("key_hash"));

    // Bad input, each refused naming its parameter.
    for (query, param) in [
        ("type=bogus", "type"),
        ("type=key.issued", "type"),
        ("type=lock.violated,", "type"),
        ("type=usage.recorded", "type"),
        ("key_id=NOT%20A%20KEY", "key_id"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2027-01-02T00:00:00Z&to=2027-01-01T00:00:00Z", "from"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("cursor=%21%21", "cursor"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
    ] {
        let (s, body) = events(admin, project, query).await;
        bad_param(s, &body, param);
    }
    let (s, body) = events(admin, project, "type=a&type=b").await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = events(admin, "prj_0000000000000000", "").await;
    assert_eq!(s, 404, "{body}");
}

#[tokio::test]
async fn embedded_mode_lists_the_audit_trail() {
    let dev = Dev::start(&[], &[]).await;
    let (project, key_id, key) = dev.admin.setup(json!({"provider": "mock"})).await;
    scenario(&dev.admin, &dev.gateway.url(), &project, &key_id, &key).await;
}

#[tokio::test]
async fn cluster_lists_the_audit_trail() {
    let cluster = Cluster::start(&[&["--node-id", "gw-a"]]).await;
    let project = cluster.project().await;
    let (key_id, key) = cluster.key(&project, json!({})).await;
    scenario(
        &cluster.client,
        &cluster.gateways[0].url(),
        &project,
        &key_id,
        &key,
    )
    .await;
}
