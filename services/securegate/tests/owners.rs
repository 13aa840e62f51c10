#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Owners: admin API tokens scoped to a tenant (and projects), their roles, and plans,
//! against a real `securegate dev` process.
//!
//! The cross-tenant test walks **every operation in the OpenAPI document** (read from the
//! running server, not listed here): a token of tenant B on tenant A's objects gets 404
//! and none of A's data; a viewer of A cannot change anything; the operator can read it
//! all.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// A client holding one bearer token.
#[derive(Clone)]
struct As {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl As {
    fn new(dev: &Dev, token: &str) -> Self {
        As {
            base: dev.admin.base.clone(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, String) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, text) = self.call(method, path, body).await;
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.json(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.json(Method::PUT, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.json(Method::GET, path, None).await
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// One tenant with a project (a second one too), a connection, a key, and a token of
/// each role (and an admin token limited to the first project).
struct Tenant {
    id: String,
    project: String,
    other_project: String,
    connection: String,
    key: String,
    owner: As,
    admin: As,
    viewer: As,
    scoped_admin: As,
    scoped_admin_id: String,
}

impl Tenant {
    /// Every id of this tenant's objects, for checking that none leaks.
    fn ids(&self) -> Vec<&str> {
        vec![
            &self.id,
            &self.project,
            &self.other_project,
            &self.connection,
            &self.key,
            &self.scoped_admin_id,
        ]
    }
}

async fn issue(op: &As, tenant: &str, body: Value) -> (String, String) {
    let (s, t) = op.post(&format!("/tenants/{tenant}/tokens"), body).await;
    assert_eq!(s, 201, "{t}");
    let secret = t["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("SGA_"), "{t}");
    (t["id"].as_str().unwrap().to_owned(), secret)
}

async fn tenant(dev: &Dev, op: &As, name: &str) -> Tenant {
    let (s, t) = op.post("/tenants", json!({"name": name})).await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_owned();
    let (owner_id, owner) = issue(op, &id, json!({"name": "owner", "role": "owner"})).await;
    assert!(!owner_id.is_empty());
    let owner = As::new(dev, &owner);
    // The owner builds the rest.
    let mut projects = Vec::new();
    for p in ["agents", "batch"] {
        let (s, project) = owner
            .post(&format!("/tenants/{id}/projects"), json!({"name": p}))
            .await;
        assert_eq!(s, 201, "{project}");
        projects.push(project["id"].as_str().unwrap().to_owned());
    }
    let (s, c) = owner
        .post(
            &format!("/projects/{}/connections", projects[0]),
            json!({"provider": "mock"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, k) = owner
        .post(
            &format!("/projects/{}/keys", projects[0]),
            json!({"name": "app", "locks": {"ip": {"mode": "off"}}}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let (_, admin) = issue(&owner, &id, json!({"name": "admin", "role": "admin"})).await;
    let (_, viewer) = issue(&owner, &id, json!({"name": "viewer", "role": "viewer"})).await;
    let (scoped_admin_id, scoped) = issue(
        &owner,
        &id,
        json!({"name": "scoped", "role": "admin", "project_ids": [projects[0]]}),
    )
    .await;
    Tenant {
        id,
        project: projects[0].clone(),
        other_project: projects[1].clone(),
        connection: c["id"].as_str().unwrap().to_owned(),
        key: k["id"].as_str().unwrap().to_owned(),
        owner,
        admin: As::new(dev, &admin),
        viewer: As::new(dev, &viewer),
        scoped_admin: As::new(dev, &scoped),
        scoped_admin_id,
    }
}

/// `template` with its `{id}` filled with the object of `a` its first segment names
/// (`{name}`: a plan name).
fn fill(template: &str, a: &Tenant) -> String {
    let kind = template.split('/').nth(1).unwrap_or("");
    let id = match kind {
        "tenants" => a.id.as_str(),
        "projects" => a.project.as_str(),
        "keys" => a.key.as_str(),
        "connections" => a.connection.as_str(),
        "tokens" => a.scoped_admin_id.as_str(),
        // Plans are named, and installation-wide.
        "plans" => "",
        other => panic!("an operation on `{other}` objects: teach this test whose they are"),
    };
    template.replace("{id}", id).replace("{name}", "cheap")
}

#[tokio::test]
async fn every_operation_keeps_tenants_apart_and_viewers_read_only() {
    let dev = Dev::start(&[], &[]).await;
    let op = As::new(&dev, TOKEN);
    let a = tenant(&dev, &op, "tenant-a").await;
    let b = tenant(&dev, &op, "tenant-b").await;

    // A token limited to a project sees only that project.
    let (s, list) = a
        .scoped_admin
        .get(&format!("/tenants/{}/projects", a.id))
        .await;
    assert_eq!(s, 200, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.project.as_str()]);
    let (s, e) = a
        .scoped_admin
        .get(&format!("/projects/{}/keys", a.other_project))
        .await;
    assert_eq!((s, code(&e)), (404, "unknown_project"), "{e}");
    let (s, e) = a
        .scoped_admin
        .post(
            &format!("/projects/{}/keys", a.other_project),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(s, 404, "{e}");
    // …and cannot act for the whole tenant.
    let (s, e) = a
        .scoped_admin
        .post(
            &format!("/tenants/{}/tokens", a.id),
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_eq!((s, code(&e)), (403, "role_required"), "{e}");

    // The operations, from the served OpenAPI document.
    let doc: Value = reqwest::get(format!("{}/openapi.json", dev.admin.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations = Vec::new();
    let mut beside = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        // The console's session, served beside the API (tests/console.rs covers it).
        if item.get("servers").is_some() {
            beside.push(path.clone());
            continue;
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(operations.len() >= 40, "{operations:?}");
    assert_eq!(
        beside,
        ["/console/session"],
        "only the console's session is served outside /admin/v1"
    );

    let strangers = [
        ("owner", &b.owner),
        ("admin", &b.admin),
        ("viewer", &b.viewer),
    ];
    let mut checked = BTreeSet::new();
    for (method, template) in &operations {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let body = (m != Method::GET).then(|| json!({}));
        let has_id = template.contains("{id}");
        let path = if has_id || template.contains("{name}") {
            fill(template, &a)
        } else {
            template.clone()
        };
        for (role, stranger) in strangers {
            let (s, text) = stranger.call(m.clone(), &path, body.clone()).await;
            let what = format!("{method} {template} as tenant B's {role}: {s} {text}");
            // Nothing of A's but the id the request itself named.
            for id in a.ids().into_iter().filter(|id| !path.contains(id)) {
                assert!(!text.contains(id), "{what}: leaks {id}");
            }
            if has_id {
                assert_eq!(s, 404, "{what}");
            } else if m == Method::GET {
                assert_eq!(s, 200, "{what}");
            } else {
                // Installation-wide: tenants, plans, prices, re-wrapping (a viewer is
                // turned away for its role first).
                assert_eq!(s, 403, "{what}");
                assert!(
                    text.contains("operator_required")
                        || (role == "viewer" && text.contains("role_required")),
                    "{what}"
                );
            }
        }
        // A's viewer changes nothing of A's.
        if m != Method::GET {
            let (s, text) = a.viewer.call(m.clone(), &path, body.clone()).await;
            assert_eq!(s, 403, "{method} {template} as A's viewer: {text}");
            assert!(
                text.contains("role_required") || text.contains("operator_required"),
                "{method} {template} as A's viewer: {text}"
            );
        } else {
            // …and reads everything the operator reads.
            let (s, text) = a.viewer.call(m.clone(), &path, None).await;
            let expected = if template.ends_with("/tokens") {
                403
            } else {
                200
            };
            assert_eq!(s, expected, "{method} {template} as A's viewer: {text}");
        }
        // The operator reads everything of A's, and reaches every handler.
        let (s, text) = op.call(m.clone(), &path, body.clone()).await;
        if m == Method::GET {
            assert_eq!(s, 200, "{method} {template} as the operator: {text}");
        } else {
            assert!(
                ![401, 403, 404].contains(&s),
                "{method} {template} as the operator: {s} {text}"
            );
        }
        checked.insert((method.clone(), template.clone()));
    }
    assert_eq!(checked.len(), operations.len());
}

#[tokio::test]
async fn roles_tokens_and_me() {
    let dev = Dev::start(&[], &[]).await;
    let op = As::new(&dev, TOKEN);
    let a = tenant(&dev, &op, "acme").await;

    // Who am I.
    let (s, me) = a.admin.get("/me").await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["caller"], "token");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["tenant"]["id"], a.id.as_str());
    assert_eq!(me["plan"]["name"], "team");
    assert!(
        me["gateway_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{me}"
    );
    let (s, me) = op.get("/me").await;
    assert_eq!((s, me["caller"].as_str()), (200, Some("operator")), "{me}");
    // The operator lists every tenant; a tenant's token only its own.
    let b = tenant(&dev, &op, "other").await;
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, all) = op.get("/tenants").await;
    assert_eq!(s, 200, "{all}");
    assert!(
        ids(&all).contains(&a.id) && ids(&all).contains(&b.id),
        "{all}"
    );
    let (s, mine) = a.viewer.get("/tenants").await;
    assert_eq!((s, ids(&mine)), (200, vec![a.id.clone()]), "{mine}");

    // An admin manages keys but not the tenant.
    let (s, k) = a
        .admin
        .post(
            &format!("/projects/{}/keys", a.project),
            json!({"name": "by-admin"}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    assert!(k["key"].as_str().unwrap().starts_with("SG_"));
    let (s, e) = a
        .admin
        .post(&format!("/tenants/{}/projects", a.id), json!({"name": "x"}))
        .await;
    assert_eq!((s, code(&e)), (403, "role_required"), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("owner"),
        "{e}"
    );
    let (s, e) = a
        .admin
        .post(
            &format!("/tenants/{}/tokens", a.id),
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_eq!((s, code(&e)), (403, "role_required"), "{e}");
    // Installation-wide settings are the operator's.
    let (s, e) = a
        .owner
        .put(&format!("/tenants/{}/plan", a.id), json!({"plan": "free"}))
        .await;
    assert_eq!((s, code(&e)), (403, "operator_required"), "{e}");
    let (s, e) = a.owner.post("/tenants", json!({"name": "mine"})).await;
    assert_eq!((s, code(&e)), (403, "operator_required"), "{e}");

    // Wrong, malformed, revoked and expired tokens are 401.
    let wrong = As::new(&dev, "SGA_0000000000000000000000000000000000000");
    let (s, e) = wrong.get("/me").await;
    assert_eq!((s, code(&e)), (401, "invalid_token"), "{e}");
    let (s, e) = As::new(&dev, "not-a-token").get("/me").await;
    assert_eq!((s, code(&e)), (401, "invalid_token"), "{e}");
    let (victim_id, victim) =
        issue(&a.owner, &a.id, json!({"name": "temp", "role": "admin"})).await;
    let victim = As::new(&dev, &victim);
    assert_eq!(victim.get("/me").await.0, 200);
    let (s, r) = a
        .owner
        .post(&format!("/tokens/{victim_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "revoked");
    let (s, e) = victim.get("/me").await;
    assert_eq!(s, 401, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("revoked"),
        "{e}"
    );
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3))
            .to_string();
    let (_, brief) = issue(
        &a.owner,
        &a.id,
        json!({"name": "brief", "role": "viewer", "expires_at": soon}),
    )
    .await;
    let brief = As::new(&dev, &brief);
    assert_eq!(brief.get("/me").await.0, 200);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (s, e) = brief.get("/me").await;
    assert_eq!(s, 401, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("expired"),
        "{e}"
    );

    // A viewer may revoke itself (and nothing else).
    let (viewer_id, viewer) = issue(&a.owner, &a.id, json!({"name": "v", "role": "viewer"})).await;
    let viewer = As::new(&dev, &viewer);
    let (s, r) = viewer
        .post(&format!("/tokens/{viewer_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(viewer.get("/me").await.0, 401);

    // The list shows every token without a secret; events name the token that acted.
    let (s, list) = a.owner.get(&format!("/tenants/{}/tokens", a.id)).await;
    assert_eq!(s, 200, "{list}");
    let text = list.to_string();
    assert!(
        !text.contains("SGA_0") && !text.contains("token_hash"),
        "{text}"
    );
    let statuses: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"revoked") && statuses.contains(&"expired"),
        "{statuses:?}"
    );
    // Bad requests.
    let (s, e) = a
        .owner
        .post(
            &format!("/tenants/{}/tokens", a.id),
            json!({"name": "x", "role": "emperor"}),
        )
        .await;
    assert!(s == 400 || s == 422, "{s} {e}");
    let (s, e) = a
        .owner
        .post(
            &format!("/tenants/{}/tokens", a.id),
            json!({"name": "x", "role": "viewer", "project_ids": ["prj_doesnotexist0000"]}),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "unknown_project"), "{e}");
    // Another tenant's project, a past or mistyped expiry, a name too long.
    let b = tenant(&dev, &op, "stranger").await;
    let tokens = format!("/tenants/{}/tokens", a.id);
    let (s, e) = a
        .owner
        .post(
            &tokens,
            json!({"name": "x", "role": "viewer", "project_ids": [b.project]}),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "unknown_project"), "{e}");
    assert!(!e.to_string().contains(&b.id), "{e}");
    let (s, e) = a
        .owner
        .post(
            &tokens,
            json!({"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "invalid_expires_at"), "{e}");
    for bad in [
        json!({"name": "x", "role": "viewer", "expires_at": 1_900_000_000u64}),
        json!({"name": 7, "role": "viewer"}),
        json!({"name": "x", "role": "viewer", "project_ids": "prj_x"}),
        json!({"name": "x", "role": "viewer", "sneaky": true}),
    ] {
        let (s, e) = a.owner.post(&tokens, bad.clone()).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {e}");
    }
    let (s, e) = a
        .owner
        .post(
            &tokens,
            json!({"name": "n".repeat(10_000), "role": "viewer"}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = a
        .owner
        .post(
            &format!("/keys/{}/rotate", a.key),
            json!({"grace_secs": -1}),
        )
        .await;
    assert!(s == 400 || s == 422, "{s} {e}");
}

#[tokio::test]
async fn plans_decide_what_a_tenant_may_use() {
    let dev = Dev::start(&[], &[]).await;
    let op = As::new(&dev, TOKEN);
    let (s, plans) = op.get("/plans").await;
    assert_eq!(s, 200, "{plans}");
    let names: Vec<&str> = plans["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["free", "pro", "team"]);

    let (s, t) = op
        .post("/tenants", json!({"name": "small", "plan": "free"}))
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["plan"], "free");
    let tenant = t["id"].as_str().unwrap().to_owned();
    let (s, e) = op
        .post("/tenants", json!({"name": "x", "plan": "platinum"}))
        .await;
    assert_eq!((s, code(&e)), (400, "unknown_plan"), "{e}");
    let (_, owner) = issue(&op, &tenant, json!({"name": "o", "role": "owner"})).await;
    let owner = As::new(&dev, &owner);
    let (_, p) = owner
        .post(&format!("/tenants/{tenant}/projects"), json!({"name": "p"}))
        .await;
    let project = p["id"].as_str().unwrap().to_owned();

    // Two connections, not three.
    for _ in 0..2 {
        let (s, c) = owner
            .post(
                &format!("/projects/{project}/connections"),
                json!({"provider": "mock"}),
            )
            .await;
        assert_eq!(s, 201, "{c}");
    }
    let third = json!({"provider": "mock", "name": "third"});
    let (s, e) = owner
        .post(&format!("/projects/{project}/connections"), third.clone())
        .await;
    assert_eq!((s, code(&e)), (403, "plan_required"), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("pro"),
        "{e}"
    );

    // IP and model locks, not a city lock; per-key request caps.
    let (s, k) = owner
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "m", "locks": {"ip": {"mode": "off"}, "models": ["mock-gpt-4o-mini"]}}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let free_key = k["key"].as_str().unwrap().to_owned();
    let city =
        json!({"name": "c", "locks": {"geo": {"cities": [{"country": "DE", "city": "Berlin"}]}}});
    let (s, e) = owner
        .post(&format!("/projects/{project}/keys"), city.clone())
        .await;
    assert_eq!((s, code(&e)), (403, "plan_required"), "{e}");
    assert_eq!(e["error"]["param"], "locks.geo.cities", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("pro plan"),
        "{e}"
    );
    // Binding to the place of first use is gated like the city lock.
    let geo_bind = json!({"name": "g", "locks": {"geo": {"mode": "auto_bind"}}});
    let (s, e) = owner
        .post(&format!("/projects/{project}/keys"), geo_bind.clone())
        .await;
    assert_eq!((s, code(&e)), (403, "plan_required"), "{e}");
    assert_eq!(e["error"]["param"], "locks.geo.mode", "{e}");
    let (s, e) = owner
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "greedy", "limits": {"rpm": 500}}),
        )
        .await;
    assert_eq!((s, code(&e)), (403, "plan_required"), "{e}");
    assert_eq!(e["error"]["param"], "rpm", "{e}");

    // A key without limits of its own gets the plan's: 20 requests a minute.
    wait_for_minute_left(20).await;
    let gw = dev.gateway.url();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..21 {
        let r = http
            .post(format!("{gw}/v1/chat/completions"))
            .bearer_auth(&free_key)
            .json(&json!({"model": "mock-gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[20], 429, "{statuses:?}");

    // After an upgrade, both work.
    let (s, t) = op
        .put(&format!("/tenants/{tenant}/plan"), json!({"plan": "pro"}))
        .await;
    assert_eq!((s, t["plan"].as_str()), (200, Some("pro")), "{t}");
    let (s, c) = owner
        .post(&format!("/projects/{project}/connections"), third)
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, k) = owner.post(&format!("/projects/{project}/keys"), city).await;
    assert_eq!(s, 201, "{k}");
    let (s, k) = owner
        .post(&format!("/projects/{project}/keys"), geo_bind)
        .await;
    assert_eq!(s, 201, "{k}");
    let (s, me) = owner.get("/me").await;
    assert_eq!((s, me["plan"]["name"].as_str()), (200, Some("pro")), "{me}");

    // The operator defines plans; tenants on them get the new terms.
    let (s, e) = owner
        .put(
            "/plans/cheap",
            json!({"features": ["ip"], "key_rpm": 1, "key_rpd": 1, "max_connections": 1}),
        )
        .await;
    assert_eq!((s, code(&e)), (403, "operator_required"), "{e}");
    let (s, p) = op
        .put("/plans/pro", json!({"features": ["ip", "model"], "key_rpm": 5, "key_rpd": 100, "max_connections": null}))
        .await;
    assert_eq!(s, 200, "{p}");
    let (s, e) = owner
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "d", "locks": {"device": {"mode": "auto_bind"}}}),
        )
        .await;
    assert_eq!((s, code(&e)), (403, "plan_required"), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("team"),
        "{e}"
    );
    let (s, e) = op.put("/plans/x", json!({"features": ["telepathy"]})).await;
    assert_eq!((s, code(&e)), (400, "invalid_feature"), "{e}");
    for (terms, param) in [
        (json!({"features": [], "key_rpm": 0}), "key_rpm"),
        (
            json!({"features": [], "key_rpd": 1_000_000_000_000_000u64}),
            "key_rpd",
        ),
    ] {
        let (s, e) = op.put("/plans/x", terms).await;
        assert_eq!(
            (s, code(&e), e["error"]["param"].as_str()),
            (400, "invalid_limit", Some(param)),
            "{e}"
        );
    }
    let (s, e) = op.put("/plans/Bad.Name", json!({"features": []})).await;
    assert_eq!((s, code(&e)), (400, "invalid_plan_name"), "{e}");
    let (s, e) = op
        .put(
            &format!("/tenants/{tenant}/plan"),
            json!({"plan": "platinum"}),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "unknown_plan"), "{e}");
    let (s, e) = op
        .put(&format!("/tenants/{tenant}/plan"), json!({"plan": 3}))
        .await;
    assert!(s == 400 || s == 422, "{s} {e}");
}

/// Waits until at least `left` seconds remain in the current UTC minute.
async fn wait_for_minute_left(left: u64) {
    loop {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60;
        if 60 - s >= left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_rotated_key_keeps_working_through_its_grace_only() {
    let dev = Dev::start(&[], &[]).await;
    let op = As::new(&dev, TOKEN);
    let a = tenant(&dev, &op, "acme").await;
    let gw = dev.gateway.url();
    let (s, k) = a
        .admin
        .post(
            &format!("/projects/{}/keys", a.project),
            json!({"name": "rotating", "locks": {"ip": {"mode": "off"}}}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let (old_id, old) = (
        k["id"].as_str().unwrap().to_owned(),
        k["key"].as_str().unwrap().to_owned(),
    );
    let chat = |key: String| {
        let gw = gw.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{gw}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "mock-gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    assert_eq!(chat(old.clone()).await.0, 200);
    let (s, r) = a
        .admin
        .post(&format!("/keys/{old_id}/rotate"), json!({"grace_secs": 2}))
        .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["replaces"], old_id.as_str());
    let new = r["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(chat(new.clone()).await.0, 200);
    assert_eq!(
        chat(old.clone()).await.0,
        200,
        "the old key stops only after its grace"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (s, text) = chat(old.clone()).await;
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("key_expired"), "{text}");
    assert_eq!(chat(new).await.0, 200);
    // A viewer cannot rotate; a stranger sees no key; bad grace is refused.
    let (s, _) = a
        .viewer
        .post(&format!("/keys/{old_id}/rotate"), json!({}))
        .await;
    assert_eq!(s, 403);
    let (s, e) = a
        .admin
        .post(
            &format!("/keys/{old_id}/rotate"),
            json!({"grace_secs": 99_999_999}),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "invalid_grace"), "{e}");
}
