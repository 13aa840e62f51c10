//! The OpenAPI document and the router agree: every documented operation is routed and
//! answers in the documented error shape when called without credentials (the console's
//! session operations, served beside the API, with a status they document).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sg_admin::{Admin, AdminConfig};
use sg_crypto::{LocalKms, SecretString};
use sg_eventlog::sqlite::SqliteLog;
use tower::ServiceExt;

#[tokio::test]
async fn every_documented_operation_is_routed_and_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        SqliteLog::open(&dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let views = sg_views::Views::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("views.db").display()
    ))
    .await
    .unwrap();
    views.migrate().await.unwrap();
    let kms = Arc::new(LocalKms::from_bytes(zeroize::Zeroizing::new([7u8; 32])));
    let config = AdminConfig {
        operator_token: SecretString::new("t".into()),
        allow_private_upstreams: false,
        default_plan: "team".into(),
        gateway_url: None,
        console_origin: None,
    };
    let (admin, _task) = Admin::start(config, log, views, kms);
    let router = admin.router();

    let doc: serde_json::Value = serde_json::from_str(&sg_admin::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{paths:?}");
    let mut operations = 0;
    let mut console = 0;
    for (path, item) in paths {
        // A path may be served elsewhere than the document's `/admin/v1`.
        let base = item["servers"][0]["url"]
            .as_str()
            .map_or("/admin/v1", |url| url.trim_end_matches('/'));
        for (method, op) in item.as_object().unwrap() {
            if method == "servers" {
                continue;
            }
            operations += 1;
            let uri = format!("{base}{}", path.replace("{id}", "x_unknown_id"));
            let method: Method = method.to_uppercase().parse().unwrap();
            let request = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if op["tags"][0] == "console" {
                // The console's session: signing in needs no credentials, reading one
                // needs its cookie, signing out the console's own page.
                console += 1;
                assert!(
                    op["responses"][status.as_str()].is_object(),
                    "{method} {uri} answered {status}, which it does not document: {body}"
                );
                assert!(
                    !matches!(status.as_u16(), 404 | 405),
                    "{method} {uri} is documented but not routed"
                );
                continue;
            }
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} is documented but not routed behind the operator token"
            );
            assert_eq!(body["error"]["code"], "missing_token");
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} does not document its 401"
            );
        }
    }
    assert_eq!(console, 3, "sign in, read and sign out are documented");
    assert!(operations >= 14);

    let request = Request::builder()
        .uri("/admin/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the document itself is public"
    );
}
