//! The web console, through the real binary in embedded mode.
//!
//! - In a browser: headless Chromium (Debian `chromium`) driven by the npm package
//!   `playwright-core` runs `tests/console/console.mjs` — sign in, add a mock
//!   connection, generate a key and read it once, use it with the official OpenAI SDK,
//!   see it in usage and request history, lock it to a model and see a request refused,
//!   revoke it, sign out; every abuse rule shows and saves in Settings, and a low
//!   velocity rule suspends a key (403 `key_suspended`), shown on the keys page until
//!   Resume lifts it; a city lock admits London and refuses Linköping, a key bound to
//!   its first city shows the place until Unbind clears it; a viewer sees no
//!   write controls; a page of another origin cannot make the owner's browser write; an
//!   expired token's session returns to sign-in saying so; axe-core finds no WCAG 2.1
//!   A/AA violation on any page or dialog (light and dark). Screenshots of every main
//!   page are saved under `target/tmp/console-screenshots/`.
//! - Over HTTP: the session cookie's attributes, the CSRF check on every cookie-borne
//!   write, expired and revoked tokens, and that a cookie grants nothing a token does
//!   not (a viewer's writes are refused).
//! - The vendored chart library is byte for byte the release `package.json` pins, and
//!   the whole console stays within its size budget.
//!
//! Needs Node.js with npm and Chromium: a missing one fails the test naming the
//! package to install (`.ci/run` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::Dev;

/// The console's package directory: the browser test, its pinned packages.
fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// The console test's directory, its pinned packages installed.
async fn npm_packages() -> PathBuf {
    let dir = console_dir();
    support::npm_packages(
        &dir,
        &["playwright-core", "openai", "uplot", "axe-core"],
        "the console tests",
    )
    .await;
    dir
}

fn chromium() -> String {
    let path = std::env::var("SG_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).is_file(),
        "the console's browser test needs Chromium at {path}: `apt-get install chromium` \
         (Debian's package; .ci/run installs it), or set SG_CHROMIUM to a Chromium binary"
    );
    path
}

/// A tenant (on the `team` plan the tests' servers default to: every lock) with an
/// owner and a viewer token; returns (tenant, owner token, viewer token, viewer id).
async fn tenant_with_tokens(dev: &Dev) -> (String, String, String, String) {
    let tenant = dev.admin.tenant("acme").await;
    let (_, owner) = dev.admin.token(&tenant, "console owner", "owner").await;
    let (viewer_id, viewer) = dev.admin.token(&tenant, "console viewer", "viewer").await;
    (tenant, owner, viewer, viewer_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser() {
    let dir = npm_packages().await;
    let chromium = chromium();
    // MaxMind's test database places the addresses the browser run sends as
    // X-Forwarded-For (from 127.0.0.1, which the gateway trusts).
    let geoip = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/geoip/GeoIP2-City-Test.mmdb");
    assert!(
        geoip.is_file(),
        "the console test needs MaxMind's test database at {} (the shared test data beside the checkout)",
        geoip.display()
    );
    let dev = Dev::start(
        &[
            "--geoip-db",
            geoip.to_str().unwrap(),
            "--trusted-proxies",
            "127.0.0.1",
        ],
        &[],
    )
    .await;
    let (tenant, owner, viewer, _) = tenant_with_tokens(&dev).await;
    let admin = dev.admin.base.trim_end_matches("/admin/v1").to_owned();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    // A screenshot left from an earlier run must not stand in for a missing one.
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let run = tokio::process::Command::new("node")
        .arg(dir.join("console.mjs"))
        .current_dir(&dir)
        .env("SG_CONSOLE_URL", format!("{admin}/console/"))
        .env("SG_ADMIN_URL", &admin)
        .env("SG_GATEWAY_URL", format!("{}/v1", dev.gateway.url()))
        .env("SG_OWNER_TOKEN", &owner)
        .env("SG_VIEWER_TOKEN", &viewer)
        .env("SG_TENANT_ID", &tenant)
        .env("SG_ARTIFACTS", &artifacts)
        .env("SG_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser test did not finish within 5 minutes")
        .expect("node is needed for the console test: `apt-get install nodejs npm`");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\nsecuregate's log:\n{}",
        dev.gateway.log()
    );
    println!("{stdout}\nscreenshots: {}", artifacts.display());
    for page in [
        "signin",
        "connections",
        "keys",
        "usage",
        "requests",
        "events",
        "settings",
        "account",
        "key-created",
        "locks",
        "suspended",
        "viewer",
        "mobile",
        "expired",
    ] {
        let shot = artifacts.join(format!("{page}.png"));
        assert!(shot.is_file(), "no screenshot {}", shot.display());
    }
    let log = dev.gateway.log();
    for secret in [&owner, &viewer] {
        assert!(!log.contains(secret.as_str()), "a token reached the log");
    }
}

/// A browser-like client of the console's session: cookies kept by hand, the page's
/// origin sent as `Origin`.
struct Browser {
    http: reqwest::Client,
    admin: String,
    origin: String,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Browser {
    fn new(admin: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            admin: admin.to_owned(),
            origin: admin.to_owned(),
            cookie: None,
            csrf: None,
        }
    }

    /// Signs in; returns the status, the `Set-Cookie` header and the body.
    async fn sign_in(&mut self, token: &str) -> (u16, Option<String>, Value) {
        let r = self
            .http
            .post(format!("{}/console/session", self.admin))
            .header("origin", &self.origin)
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let set = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_owned());
        if let Some(set) = &set {
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        let body: Value = r.json().await.unwrap();
        if let Some(csrf) = body["csrf_token"].as_str() {
            self.csrf = Some(csrf.to_owned());
        }
        (status, set, body)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.admin));
        if let Some(cookie) = &self.cookie {
            r = r.header("cookie", cookie);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A write as the console sends it: same origin, the CSRF token.
    async fn write(&self, path: &str, body: Value) -> (u16, Value) {
        let csrf = self.csrf.clone().unwrap_or_default();
        self.send(
            reqwest::Method::POST,
            path,
            Some(body),
            &[("origin", &self.origin), ("x-csrf-token", &csrf)],
        )
        .await
    }
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_guarded_against_other_origins_and_grants_nothing_more() {
    let dev = Dev::start(&[], &[]).await;
    let (tenant, owner, viewer, viewer_id) = tenant_with_tokens(&dev).await;
    let admin = dev.admin.base.trim_end_matches("/admin/v1").to_owned();
    let project = dev.admin.project(&tenant, "agents").await;
    dev.admin
        .connection(&project, json!({"provider": "mock"}))
        .await;
    let keys = format!("/admin/v1/projects/{project}/keys");

    // Bodies that are not a sign-in: 4xx naming what is wrong, never a cookie.
    let http = reqwest::Client::new();
    let session = format!("{admin}/console/session");
    let huge = format!("{{\"token\":\"{}\"}}", "A".repeat(3 << 20));
    for (body, content_type, status, code) in [
        (
            r#"{"token":5}"#.to_owned(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            r#"{"token":null}"#.to_owned(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            r#"{"token":"x","role":"owner"}"#.to_owned(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            r#"["token"]"#.to_owned(),
            "application/json",
            400,
            "invalid_body",
        ),
        ("{".to_owned(), "application/json", 400, "invalid_json"),
        (
            r#"{"token":"x"}"#.to_owned(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (huge, "application/json", 413, "request_too_large"),
    ] {
        let r = http
            .post(&session)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let cookie = r.headers().contains_key("set-cookie");
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, code_of(&answer), cookie),
            (status, code, false),
            "{}: {answer}",
            &body[..body.len().min(40)]
        );
    }
    // Another tenant's token signs in to that tenant only: its session sees none of
    // this tenant's projects.
    let other = dev.admin.tenant("other").await;
    let (_, other_owner) = dev.admin.token(&other, "other owner", "owner").await;
    let mut stranger = Browser::new(&admin);
    let (s, _, body) = stranger.sign_in(&other_owner).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["me"]["tenant"]["id"], other.as_str(), "{body}");
    let (s, body) = stranger.send(reqwest::Method::GET, &keys, None, &[]).await;
    assert_eq!((s, code_of(&body)), (404, "unknown_project"), "{body}");
    let (s, body) = stranger.write(&keys, json!({"name": "theirs"})).await;
    assert_eq!((s, code_of(&body)), (404, "unknown_project"), "{body}");

    // A wrong token: 401 naming the field, and no cookie.
    let mut browser = Browser::new(&admin);
    let (s, set, body) = browser.sign_in("SGA_not_a_real_token").await;
    assert_eq!((s, set.is_none()), (401, true), "{body}");
    assert_eq!(body["error"]["param"], "token", "{body}");
    // An empty one and a 100 KB one alike.
    for token in [String::new(), "SGA_".to_owned() + &"x".repeat(100 << 10)] {
        let (s, set, body) = Browser::new(&admin).sign_in(&token).await;
        assert_eq!(
            (s, code_of(&body), set.is_none()),
            (401, "invalid_token", true),
            "{body}"
        );
        assert_eq!(body["error"]["param"], "token", "{body}");
    }
    // A valid token sent by a page of another origin (or one the browser calls
    // cross-site) signs nobody in: another site cannot plant its session.
    for (origin, fetch_site) in [
        ("http://127.0.0.1:1", None),
        (admin.as_str(), Some("cross-site")),
    ] {
        let mut r = http
            .post(&session)
            .header("origin", origin)
            .json(&json!({"token": owner}));
        if let Some(site) = fetch_site {
            r = r.header("sec-fetch-site", site);
        }
        let r = r.send().await.unwrap();
        let (got, cookie) = (r.status().as_u16(), r.headers().contains_key("set-cookie"));
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, code_of(&body), cookie),
            (403, "csrf_refused", false),
            "{origin} {fetch_site:?}: {body}"
        );
    }
    // Cookies that hold no session: not base64, or a token that is not one.
    let garbage = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("garbage");
    for (cookie, code, clears) in [
        ("sg_session=%%%".to_owned(), "missing_session", false),
        (format!("sg_session={garbage}"), "invalid_token", true),
    ] {
        let r = http
            .get(&session)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let cleared = r.headers().contains_key("set-cookie");
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, code_of(&body), cleared),
            (401, code, clears),
            "{cookie}: {body}"
        );
    }
    // A well-formed token this node does not know (another node may have just issued
    // it) is refused but not forgotten: the cookie stays.
    let unknown = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sg_proxy_key::AdminToken::generate().expose());
    let r = http
        .get(&session)
        .header("cookie", format!("sg_session={unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        !r.headers().contains_key("set-cookie"),
        "an unknown token's cookie was cleared"
    );

    // Over plain HTTP: HttpOnly, SameSite=Strict, not Secure; the answer says who.
    let (s, set, body) = browser.sign_in(&owner).await;
    assert_eq!(s, 200, "{body}");
    let set = set.unwrap();
    assert!(set.starts_with("sg_session="), "{set}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attribute), "{set} lacks {attribute}");
    }
    assert!(!set.contains("Secure"), "{set}");
    assert!(
        !set.contains(&owner),
        "the cookie carries the token encoded: {set}"
    );
    let value = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("sg_session=");
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .as_deref(),
        Some(owner.as_str()),
        "the cookie holds the token, base64url-encoded: {set}"
    );
    assert_eq!(body["me"]["role"], "owner", "{body}");
    assert!(body.to_string().find(&owner).is_none(), "{body}");

    // Reads with the cookie need nothing more; the session can be read back.
    let (s, me) = browser
        .send(reqwest::Method::GET, "/admin/v1/me", None, &[])
        .await;
    assert_eq!((s, me["role"].as_str()), (200, Some("owner")), "{me}");
    let (s, again) = browser
        .send(reqwest::Method::GET, "/console/session", None, &[])
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["csrf_token"], browser.csrf.clone().unwrap().as_str());

    // Writes with the cookie: only from this origin, only with the CSRF token.
    let csrf = browser.csrf.clone().unwrap();
    let key = json!({"name": "k"});
    for (headers, why) in [
        (vec![("origin", admin.as_str())], "no CSRF token"),
        (
            vec![("origin", admin.as_str()), ("x-csrf-token", "forged")],
            "a wrong CSRF token",
        ),
        (vec![("x-csrf-token", csrf.as_str())], "no Origin"),
        (
            vec![
                ("origin", "http://127.0.0.1:1"),
                ("x-csrf-token", csrf.as_str()),
            ],
            "another origin",
        ),
        (
            vec![
                ("origin", admin.as_str()),
                ("x-csrf-token", csrf.as_str()),
                ("sec-fetch-site", "same-site"),
            ],
            "a same-site page on another port",
        ),
    ] {
        let (s, body) = browser
            .send(reqwest::Method::POST, &keys, Some(key.clone()), &headers)
            .await;
        assert_eq!((s, code_of(&body)), (403, "csrf_refused"), "{why}: {body}");
    }
    let (s, body) = browser.write(&keys, key.clone()).await;
    assert_eq!(s, 201, "{body}");
    let (s, listed) = dev.admin.get(&keys.replace("/admin/v1", "")).await;
    assert_eq!(
        (s, listed["data"].as_array().unwrap().len()),
        (200, 1),
        "only the console's own write created a key: {listed}"
    );
    // The list carries each key's locks and bindings (the keys page needs no call per
    // key).
    assert_eq!(
        listed["data"][0]["locks"]["locks"]["ip"]["mode"], "auto_bind",
        "{listed}"
    );
    assert!(listed["data"][0]["locks"]["bound_ip"].is_null(), "{listed}");
    assert_eq!(
        listed["data"][0]["locks"].get("bound_ip"),
        Some(&Value::Null),
        "the list names the binding, unbound: {listed}"
    );

    // A bearer token needs no CSRF token (another site cannot set the header).
    let (s, body) = dev
        .admin
        .post(&keys.replace("/admin/v1", ""), key.clone())
        .await;
    assert_eq!(s, 201, "{body}");

    // Served over TLS (as the browser reports in Origin): the __Host- cookie, Secure.
    let mut tls = Browser::new(&admin);
    tls.origin = admin.replace("http://", "https://");
    let (s, set, _) = tls.sign_in(&owner).await;
    assert_eq!(s, 200);
    let set = set.unwrap();
    assert!(
        set.starts_with("__Host-sg_session=") && set.contains("; Secure"),
        "{set}"
    );

    // A viewer's cookie grants what its token does: reads, no writes.
    let mut view = Browser::new(&admin);
    let (s, _, body) = view.sign_in(&viewer).await;
    assert_eq!((s, body["me"]["role"].as_str()), (200, Some("viewer")));
    let (s, body) = view.send(reqwest::Method::GET, &keys, None, &[]).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = view.write(&keys, key.clone()).await;
    assert_eq!((s, code_of(&body)), (403, "role_required"), "{body}");

    // Signing out clears the cookie; only the console's own page may sign out.
    let (s, body) = browser
        .send(
            reqwest::Method::DELETE,
            "/console/session",
            None,
            &[("origin", "http://127.0.0.1:1")],
        )
        .await;
    assert_eq!((s, code_of(&body)), (403, "csrf_refused"), "{body}");
    let r = browser
        .http
        .delete(format!("{admin}/console/session"))
        .header("origin", &admin)
        .header("cookie", browser.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("sg_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );

    // A revoked token's session ends at once; an expired one when it expires.
    let (s, short) = dev
        .admin
        .post(
            &format!("/tenants/{tenant}/tokens"),
            json!({"name": "short", "role": "admin",
                   "expires_at": time::OffsetDateTime::now_utc()
                       .saturating_add(time::Duration::seconds(5))
                       .format(&time::format_description::well_known::Rfc3339).unwrap()}),
        )
        .await;
    assert_eq!(s, 201, "{short}");
    let mut brief = Browser::new(&admin);
    let (s, set, _) = brief.sign_in(short["token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    let max_age: i64 = set
        .unwrap()
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        max_age <= 5,
        "the browser keeps the session no longer than the token: {max_age}"
    );
    assert!(max_age >= 1, "a live token's session is kept: {max_age}");
    // Refused once the token has expired (within 5 s, and a little slack).
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let (s, body) = loop {
        let (s, body) = brief
            .send(reqwest::Method::GET, "/console/session", None, &[])
            .await;
        if s != 200 || std::time::Instant::now() > deadline {
            break (s, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((s, code_of(&body)), (401, "invalid_token"), "{body}");
    let (s, body) = brief
        .send(reqwest::Method::GET, "/admin/v1/me", None, &[])
        .await;
    assert_eq!(s, 401, "{body}");

    let mut revoked = Browser::new(&admin);
    let (s, _, body) = revoked.sign_in(&viewer).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = dev
        .admin
        .post(&format!("/tokens/{viewer_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = revoked
        .send(reqwest::Method::GET, "/admin/v1/me", None, &[])
        .await;
    assert_eq!((s, code_of(&body)), (401, "invalid_token"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_console_origin_is_the_only_one_and_over_https_only_the_host_cookie_counts() {
    // The console behind a TLS proxy at https://console.example: the admin service sees
    // plain HTTP on its own address, and the browser reports the public origin.
    let public = "https://console.example";
    let dev = Dev::start(&["--console-origin", "https://Console.example:443/"], &[]).await;
    let (tenant, owner, _, _) = tenant_with_tokens(&dev).await;
    let admin = dev.admin.base.trim_end_matches("/admin/v1").to_owned();
    let project = dev.admin.project(&tenant, "agents").await;
    dev.admin
        .connection(&project, json!({"provider": "mock"}))
        .await;
    let keys = format!("/admin/v1/projects/{project}/keys");

    // A page served from the admin service's own address is another origin now.
    let mut direct = Browser::new(&admin);
    let (s, set, body) = direct.sign_in(&owner).await;
    assert_eq!(
        (s, code_of(&body), set.is_none()),
        (403, "csrf_refused", true),
        "{body}"
    );

    // From the public origin: the __Host- cookie, Secure, and writes go through.
    let mut browser = Browser::new(&admin);
    browser.origin = public.to_owned();
    let (s, set, body) = browser.sign_in(&owner).await;
    assert_eq!(s, 200, "{body}");
    let set = set.unwrap();
    assert!(
        set.starts_with("__Host-sg_session=") && set.contains("; Secure"),
        "{set}"
    );
    let (s, body) = browser.write(&keys, json!({"name": "k"})).await;
    assert_eq!(s, 201, "{body}");
    // The same write from the admin service's address is refused.
    let csrf = browser.csrf.clone().unwrap();
    let (s, body) = browser
        .send(
            reqwest::Method::POST,
            &keys,
            Some(json!({"name": "k2"})),
            &[("origin", admin.as_str()), ("x-csrf-token", csrf.as_str())],
        )
        .await;
    assert_eq!((s, code_of(&body)), (403, "csrf_refused"), "{body}");

    // A plain sg_session cookie (what a page on another port or subdomain could set)
    // holding a valid token is no session: reads and writes are refused.
    let planted = format!(
        "sg_session={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&owner)
    );
    let mut tossed = Browser::new(&admin);
    tossed.origin = public.to_owned();
    tossed.cookie = Some(planted);
    tossed.csrf = Some(csrf.clone());
    let (s, body) = tossed
        .send(reqwest::Method::GET, "/console/session", None, &[])
        .await;
    assert_eq!((s, code_of(&body)), (401, "missing_session"), "{body}");
    let (s, body) = tossed.send(reqwest::Method::GET, &keys, None, &[]).await;
    assert_eq!((s, code_of(&body)), (401, "missing_token"), "{body}");
    let (s, body) = tossed.write(&keys, json!({"name": "planted"})).await;
    assert_eq!((s, code_of(&body)), (401, "missing_token"), "{body}");
    let (s, listed) = dev.admin.get(&keys.replace("/admin/v1", "")).await;
    assert_eq!(
        (s, listed["data"].as_array().unwrap().len()),
        (200, 1),
        "only the public origin's write created a key: {listed}"
    );
}

#[tokio::test]
async fn the_vendored_chart_library_is_the_pinned_release_and_the_console_is_small() {
    let dir = npm_packages().await;
    let package: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap()).unwrap();
    let pinned = package["dependencies"]["uplot"].as_str().unwrap();
    let installed: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("node_modules/uplot/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(installed["version"], pinned, "uplot is pinned exactly");
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../libs/console/assets");
    for file in ["uPlot.iife.min.js", "uPlot.min.css"] {
        let vendored = std::fs::read(assets.join("vendor").join(file)).unwrap();
        let release = std::fs::read(dir.join("node_modules/uplot/dist").join(file)).unwrap();
        assert!(
            vendored == release,
            "libs/console/assets/vendor/{file} is not uplot {pinned}'s: copy it from \
             services/securegate/tests/console/node_modules/uplot/dist/"
        );
    }
    let total: usize = sg_console::assets().iter().map(|a| a.bytes.len()).sum();
    let sent: usize = sg_console::assets()
        .iter()
        .map(|a| a.gzip.map_or(a.bytes.len(), <[u8]>::len))
        .sum();
    println!(
        "the console: {} files, {total} bytes, {sent} bytes sent to a browser taking gzip",
        sg_console::assets().len()
    );
    assert!(
        total <= 300 * 1024,
        "the console is {total} bytes; its budget is 300 KiB"
    );
}
