//! Upstream safety: tenants cannot point connections at private, loopback, link-local or
//! metadata addresses unless the operator allows it, and the provider key never goes to
//! a host other than the connection's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use sg_testkit::mock_upstream::MockUpstream;
use sg_testkit::nats::NatsServer;
use sg_testkit::postgres::PostgresServer;
use support::*;

#[tokio::test]
async fn private_upstreams_and_redirects_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let db = pg.create_database("securegate").await.unwrap();
    let master_key = dir.path().join("master.key");
    sg_crypto::generate_master_key_file(&master_key).unwrap();
    let key_file = master_key.to_str().unwrap();
    let nats_url = nats.url();
    let env = [
        ("SECUREGATE_ADMIN_TOKEN", TOKEN),
        ("SECUREGATE_NATS_URL", nats_url.as_str()),
    ];
    let admin_args = |strict: bool| {
        let mut a = vec![
            "server",
            "admin",
            "--listen",
            "{addr}",
            "--database-url",
            db.as_str(),
            "--master-key-file",
            key_file,
        ];
        if !strict {
            a.push("--allow-private-upstreams");
        }
        a
    };
    let strict_admin = Proc::start(&admin_args(true), &env, dir.path()).await;
    let lax_admin = Proc::start(&admin_args(false), &env, dir.path()).await;
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
    let strict_gateway = Proc::start(
        &[
            "server",
            "gateway",
            "--listen",
            "{addr}",
            "--master-key-file",
            key_file,
        ],
        &env,
        dir.path(),
    )
    .await;
    let lax_gateway = Proc::start(
        &[
            "server",
            "gateway",
            "--listen",
            "{addr}",
            "--master-key-file",
            key_file,
            "--allow-private-upstreams",
        ],
        &env,
        dir.path(),
    )
    .await;

    // At creation: every private form is refused with a clear error.
    let strict = AdminClient::new(&strict_admin.url());
    let (s, tenant) = strict.post("/tenants", json!({"name": "t"})).await;
    assert_eq!(s, 201);
    let (_, project) = strict
        .post(
            &format!("/tenants/{}/projects", tenant["id"].as_str().unwrap()),
            json!({"name": "p"}),
        )
        .await;
    let project = project["id"].as_str().unwrap().to_owned();
    for url in [
        "http://127.0.0.1:9/v1",
        "http://[::1]:9/v1",
        "http://10.0.0.1/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://2130706433/v1",
        // Local-use NAT64 and 6to4 of a loopback address.
        "http://[64:ff9b:1::a00:1]/v1",
        "http://[2002:7f00:1::1]/v1",
    ] {
        let (s, body) = strict
            .post(
                &format!("/projects/{project}/connections"),
                json!({"provider": "openai", "api_key": "sk-x", "base_url": url}),
            )
            .await;
        assert_eq!(s, 400, "{url}: {body}");
        assert_error(&body.to_string(), "upstream_not_allowed");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("private"),
            "{body}"
        );
    }
    for url in [
        "file:///etc/passwd",
        "gopher://x/",
        "https://user:pw@example.com/v1",
    ] {
        let (s, body) = strict
            .post(
                &format!("/projects/{project}/connections"),
                json!({"provider": "openai", "api_key": "sk-x", "base_url": url}),
            )
            .await;
        assert_eq!(s, 400, "{url}: {body}");
        assert_error(&body.to_string(), "invalid_base_url");
    }

    // At request time: a gateway that does not allow private upstreams refuses them even
    // when the connection was created where they were allowed (by name, through its DNS
    // resolver; by literal address, before connecting).
    let lax = AdminClient::new(&lax_admin.url());
    let upstream = MockUpstream::start(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    let by_name = upstream.base_url().replace("127.0.0.1", "localhost");
    let (_, _, key_by_name) = lax
        .setup(json!({"provider": "openai", "api_key": "sk-x", "base_url": by_name}))
        .await;
    let (_, _, key_by_ip) = lax
        .setup(json!({"provider": "openai", "api_key": "sk-x", "base_url": upstream.base_url()}))
        .await;
    let strict_url = strict_gateway.url();
    let k = key_by_ip.clone();
    assert!(
        eventually(std::time::Duration::from_secs(2), || {
            let (u, k) = (strict_url.clone(), k.clone());
            async move { chat(&u, &k, false).await.0 != 401 }
        })
        .await
    );
    let (s, body) = chat(&strict_gateway.url(), &key_by_ip, false).await;
    assert_eq!(s, 403, "{body}");
    assert_error(&body, "upstream_not_allowed");
    let (s, body) = chat(&strict_gateway.url(), &key_by_name, false).await;
    assert_eq!(s, 403, "{body}");
    assert_error(&body, "upstream_not_allowed");
    assert!(body.contains("private or loopback"), "{body}");
    assert_eq!(
        upstream.request_count(),
        0,
        "a strict gateway reached a loopback upstream"
    );
    // The lax gateway reaches the same connections.
    let (s, _) = chat(&lax_gateway.url(), &key_by_ip, false).await;
    assert_eq!(s, 200);

    // Redirects are never followed: the answer goes back to the client, and the host it
    // points at never sees the provider key.
    let target = MockUpstream::start(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    target.reset_stats();
    let location = format!("{}/chat/completions", target.base_url());
    let redirector = axum::Router::new().fallback(move || {
        let location = location.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, redirector).await.unwrap() });
    let (_, _, key) = lax
        .setup(json!({"provider": "openai", "api_key": "sk-redirect-secret", "base_url": format!("http://{redirect_addr}/v1")}))
        .await;
    let lax_url = lax_gateway.url();
    let k = key.clone();
    assert!(
        eventually(std::time::Duration::from_secs(2), || {
            let (u, k) = (lax_url.clone(), k.clone());
            async move { chat(&u, &k, false).await.0 != 401 }
        })
        .await
    );
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/v1/chat/completions", lax_gateway.url()))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 307);
    assert_eq!(target.request_count(), 0, "the gateway followed a redirect");
    assert_eq!(target.last_authorization(), None);
}
