//! The web console's files, embedded in the binary at build time, and the routes that
//! serve them under `/console/`.
//!
//! The console is plain ES modules, a stylesheet and one vendored chart library
//! (`assets/vendor/`, uPlot): there is no build step, so what is in `assets/` is exactly
//! what browsers get, and the Rust build needs no Node. The console talks only to the
//! admin API (`/admin/v1/…`) and its session endpoints (`sg-admin`'s `console`), with the
//! same authorization as every other client.
//!
//! Every answer carries a strict Content Security Policy: scripts, styles, images and
//! connections from this origin only, no inline script or style attribute, no framing.
//! A script injected through data the API returns could neither run nor send anything
//! elsewhere.
#![forbid(unsafe_code)]

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Relative to `/console/`, e.g. `vendor/uPlot.min.css`.
    pub path: &'static str,
    pub bytes: &'static [u8],
    /// The same, gzip-compressed, where that saves at least a tenth.
    pub gzip: Option<&'static [u8]>,
    /// A strong entity tag of the bytes (quoted).
    pub etag: &'static str,
    /// The entity tag of the compressed variant.
    pub etag_gzip: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// Every embedded file.
pub fn assets() -> &'static [Asset] {
    ASSETS
}

/// The file at `path` (relative to `/console/`; empty for the page itself).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path.is_empty() { "index.html" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// The policy every console answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// The media type a file is served as, by its extension; unknown ones are refused at
/// build review rather than guessed (`application/octet-stream`).
pub fn media_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The headers every console answer (and the session endpoints') carries.
pub fn security_headers(headers: &mut HeaderMap) {
    let fixed: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// Whether the client takes gzip (`Accept-Encoding: gzip` or `*`, not at `q=0`).
fn accepts_gzip(request_headers: &HeaderMap) -> bool {
    sg_api_error::header_offers(request_headers, header::ACCEPT_ENCODING, "gzip", true)
}

fn serve(path: &str, request_headers: &HeaderMap) -> Response {
    let Some(asset) = asset(path) else {
        let mut response = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file in the console\n",
        )
            .into_response();
        security_headers(response.headers_mut());
        return response;
    };
    let (body, etag, gzip) = match asset.gzip {
        Some(gz) if accepts_gzip(request_headers) => (gz, asset.etag_gzip, true),
        _ => (asset.bytes, asset.etag, false),
    };
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, media_type(asset.path))], body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // File names carry no version, so a browser asks again each time (a 304 when
    // unchanged): an upgrade is never half old and half new.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(headers);
    response
}

/// `GET /` and `/console` (redirects), `GET /console/` (the page) and
/// `GET /console/{file}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|headers: HeaderMap| async move { serve("", &headers) }),
        )
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }),
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        get_with(uri, if_none_match, None).await
    }

    async fn get_with(
        uri: &str,
        if_none_match: Option<&str>,
        accept_encoding: Option<&str>,
    ) -> Response {
        let mut request = Request::builder().uri(uri);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        if let Some(coding) = accept_encoding {
            request = request.header(header::ACCEPT_ENCODING, coding);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[test]
    fn every_file_has_a_known_media_type() {
        assert!(asset("").is_some(), "index.html is embedded");
        for a in assets() {
            assert_ne!(
                media_type(a.path),
                "application/octet-stream",
                "{} has no media type",
                a.path
            );
        }
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_the_policy_and_revalidated_by_tag() {
        let page = get("/console/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            page.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(page.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let tag = page.headers()[header::ETAG].to_str().unwrap().to_owned();
        let body = page.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], asset("").unwrap().bytes);

        let again = get("/console/", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/console/", Some("\"something-else\"")).await;
        assert_eq!(other.status(), StatusCode::OK);

        let chart = get("/console/vendor/uPlot.iife.min.js", None).await;
        assert_eq!(chart.status(), StatusCode::OK);
        assert_eq!(
            chart.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn compressed_copies_go_to_clients_that_take_gzip_and_hold_the_same_bytes() {
        use std::io::Read;
        let compressed = assets().iter().filter(|a| a.gzip.is_some()).count();
        assert!(compressed >= 3, "the scripts and styles are compressed");
        for a in assets() {
            let Some(gz) = a.gzip else { continue };
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(gz)
                .read_to_end(&mut plain)
                .unwrap();
            assert!(plain == a.bytes, "{}: the compressed copy differs", a.path);
            assert!(gz.len() < a.bytes.len());
        }
        let uri = "/console/vendor/uPlot.iife.min.js";
        let asset = asset("vendor/uPlot.iife.min.js").unwrap();
        for (coding, gzip) in [
            (Some("gzip, deflate, br"), true),
            (Some("br;q=1.0, GZIP;q=0.5"), true),
            (Some("*"), true),
            (Some("gzip;q=0, br"), false),
            (Some("identity"), false),
            (None, false),
        ] {
            let response = get_with(uri, None, coding).await;
            assert_eq!(response.status(), StatusCode::OK, "{coding:?}");
            assert_eq!(response.headers()[header::VARY], "accept-encoding");
            assert_eq!(
                response.headers().get(header::CONTENT_ENCODING).is_some(),
                gzip,
                "{coding:?}"
            );
            let tag = response.headers()[header::ETAG]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(tag, if gzip { asset.etag_gzip } else { asset.etag });
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                &body[..],
                if gzip {
                    asset.gzip.unwrap()
                } else {
                    asset.bytes
                }
            );
            let again = get_with(uri, Some(&tag), coding).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{coding:?}");
        }
    }

    #[tokio::test]
    async fn unknown_and_escaping_paths_are_not_found() {
        for uri in [
            "/console/nope.js",
            "/console/../Cargo.toml",
            "/console/%2e%2e/Cargo.toml",
            "/console/vendor/../../build.rs",
        ] {
            let response = get(uri, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
            assert!(
                response
                    .headers()
                    .contains_key(header::CONTENT_SECURITY_POLICY)
            );
        }
        let root = get("/", None).await;
        assert_eq!(root.status(), StatusCode::SEE_OTHER);
        assert_eq!(root.headers()[header::LOCATION], "/console/");
    }
}
