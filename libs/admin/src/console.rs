//! The web console's session: an admin API token kept in a cookie, and the check that
//! makes a cookie-borne write prove it comes from the console's own page.
//!
//! Signing in (`POST /console/session`) checks the token exactly as the API does and
//! sets it as an `HttpOnly`, `SameSite=Strict` cookie (`Secure`, under the `__Host-`
//! name, when the page is served over TLS), so no script can read it. From then on the
//! console calls the same `/admin/v1/…` endpoints as every client; `authenticate` takes
//! the token from the cookie when no `Authorization` header is sent, and the caller's
//! role and visibility decide as for any other request — nothing here grants anything.
//!
//! **CSRF.** A browser attaches cookies to requests other pages make it send, and
//! `SameSite` does not separate sites that share a host on other ports. So every write
//! (any method but `GET` and `HEAD`) authenticated by the cookie must carry an
//! `Origin` naming this very host, and `X-CSRF-Token` equal to the session's CSRF
//! token: a digest of the session token, handed out only by the session endpoints in a
//! same-origin JSON answer. Another origin can neither read that answer nor set the
//! header without a CORS preflight, which this service never grants. The token is
//! derived, not stored, so every admin node checks it alike and nothing is kept
//! server-side; signing out only clears the cookie (revoking the token is what ends it
//! everywhere).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sg_api_error::{ApiError, ApiJson};
use sg_crypto::SecretString;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use utoipa::ToSchema;

use crate::Admin;
use crate::api::{ErrorBody, Me};
use crate::authz::{Caller, Refused, caller_of, check_token};

/// The cookie over plain HTTP (a local install).
pub const COOKIE: &str = "sg_session";
/// The cookie over TLS: the `__Host-` prefix makes browsers refuse it unless it is
/// `Secure`, host-only and for the whole path.
pub const SECURE_COOKIE: &str = "__Host-sg_session";
/// The header a cookie-borne write carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a browser keeps a session at most (less when the token expires sooner).
pub const SESSION_SECS: i64 = 12 * 3600;

/// The console's public origin as browsers see it (`--console-origin`), when the
/// operator names it: then a write or a sign-in must come from exactly this origin, and
/// on `https` only the `__Host-` cookie counts. Without it the origin is compared with
/// the request's `Host`, and the plain cookie counts too (a local install over HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleOrigin {
    /// `scheme://host[:port]`, lower case, without a default port.
    origin: String,
    pub(crate) secure: bool,
}

impl ConsoleOrigin {
    /// Reads `https://admin.example.com` (or `http://…`, with a port, a trailing `/`).
    pub fn parse(raw: &str) -> Result<ConsoleOrigin, String> {
        let bad = |why: &str| {
            format!(
                "{raw:?} is not an origin ({why}); give scheme and host, e.g. https://admin.example.com"
            )
        };
        let lower = raw.trim().trim_end_matches('/').to_ascii_lowercase();
        let (scheme, authority) = lower.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let secure = match scheme {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        if authority.is_empty()
            || authority
                .chars()
                .any(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
        {
            return Err(bad("only scheme, host and port, no path, query or user"));
        }
        let uri: axum::http::uri::Authority = authority.parse().map_err(|_| bad("not a host"))?;
        let default_port = if secure { 443 } else { 80 };
        let origin = match uri.port_u16() {
            Some(port) if port != default_port => format!("{scheme}://{}:{port}", uri.host()),
            _ => format!("{scheme}://{}", uri.host()),
        };
        Ok(ConsoleOrigin { origin, secure })
    }

    /// The origin, as browsers send it in `Origin`.
    pub fn as_str(&self) -> &str {
        &self.origin
    }
}

/// The session token a request's cookie carries, if any (the `__Host-` one first).
/// With `secure_only`, the plain cookie is ignored: on HTTPS, a page on another port or
/// a sibling subdomain can set it, but not the `__Host-` one.
pub(crate) fn session_token(headers: &HeaderMap, secure_only: bool) -> Option<SecretString> {
    let mut plain = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let decoded = || {
                URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .map(SecretString::new)
            };
            match name {
                SECURE_COOKIE => return decoded(),
                COOKIE if plain.is_none() && !secure_only => plain = decoded(),
                _ => {}
            }
        }
    }
    plain
}

/// The CSRF token of a session: a digest of its token (domain-separated), so it proves
/// knowledge of the session without revealing it.
pub(crate) fn csrf_token(session: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(b"securegate console csrf v1\n");
    digest.update(session.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.finalize())
}

fn refused(message: &'static str) -> ApiError {
    ApiError::forbidden("csrf_refused", message)
}

/// The host (and port) the request was sent to: HTTP/2's `:authority`, else `Host`.
fn request_host(request_headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request_headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .map(|h| h.to_ascii_lowercase())
}

/// Whether the browser says the request comes from a page of this very origin:
/// `Origin` equals the configured console origin, or without one, its host and port
/// equal the host the request was sent to; and `Sec-Fetch-Site`, when sent, is
/// `same-origin`. `required`: refuse when `Origin` is missing (every browser sends it on
/// writes).
fn same_origin(
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    configured: Option<&ConsoleOrigin>,
    required: bool,
) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(refused(
            "this request was sent by a page of another site; the console only accepts its own",
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return if required {
            Err(refused(
                "a write with the console's session must carry an Origin header; use `Authorization: Bearer …` from scripts",
            ))
        } else {
            Ok(())
        };
    };
    if let Some(configured) = configured {
        return match origin.to_str() {
            Ok(o) if o.eq_ignore_ascii_case(configured.as_str()) => Ok(()),
            _ => Err(refused(
                "this request was sent by a page of another origin; the console only accepts its own (--console-origin)",
            )),
        };
    }
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host.to_ascii_lowercase());
    match (origin_host, request_host(headers, uri)) {
        (Some(origin), Some(host)) if origin == host => Ok(()),
        _ => Err(refused(
            "this request was sent by a page of another origin; the console only accepts its own (a reverse proxy must pass the Host header on)",
        )),
    }
}

/// Whether a request authenticated by the session cookie may proceed: reads always;
/// writes only from this origin and with the session's CSRF token.
pub(crate) fn check_write(
    request: &Request,
    session: &SecretString,
    configured: Option<&ConsoleOrigin>,
) -> Result<(), ApiError> {
    // Only the methods whose handlers change nothing (axum serves HEAD with GET's).
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(());
    }
    same_origin(request.headers(), request.uri(), configured, true)?;
    let presented = request
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Compared as digests: equal length, and timing says nothing about the token.
    let expected = Sha256::digest(csrf_token(session.expose()).as_bytes());
    if Sha256::digest(presented) != expected {
        return Err(refused(
            "the CSRF token is missing or wrong; reload the console",
        ));
    }
    Ok(())
}

/// `POST /console/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    /// The operator token or a tenant's admin API token (`SGA_…`).
    #[schema(value_type = String)]
    token: SecretString,
}

/// The console's session: what it may show, and the token its writes carry.
#[derive(Serialize, ToSchema)]
pub(crate) struct Session {
    /// What a write authenticated by the cookie carries as `X-CSRF-Token`.
    csrf_token: String,
    /// When the browser forgets the session (RFC 3339).
    expires_at: String,
    me: Me,
}

fn session_answer(admin: &Admin, caller: &Caller, token: &str, expires: i64) -> Session {
    Session {
        csrf_token: csrf_token(token),
        expires_at: OffsetDateTime::from_unix_timestamp(expires)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default(),
        me: crate::owners::me_of(admin, caller),
    }
}

/// When a session of `caller` ends: in [`SESSION_SECS`], or when its token expires.
fn session_end(admin: &Admin, caller: &Caller, now: i64) -> i64 {
    let token_end = match caller {
        Caller::Operator => None,
        Caller::Token(t) => admin
            .replica
            .state()
            .token(&t.id)
            .and_then(|r| r.expires_at),
    };
    token_end.map_or(now + SESSION_SECS, |end| end.min(now + SESSION_SECS))
}

fn private(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    sg_console::security_headers(headers);
    response
}

fn cookie(name: &str, value: &str, max_age: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// Whether the page signing in was served over TLS, as its browser reports it.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes().starts_with(b"https://"))
}

/// Sign in to the web console: the token is checked as for any API request and kept in
/// an `HttpOnly`, `SameSite=Strict` cookie (`__Host-sg_session` and `Secure` when the
/// page's `Origin` is `https`, else `sg_session`) for 12 hours at most, or until the
/// token expires. The cookie then stands in for `Authorization: Bearer` on every
/// `/admin/v1` request; a write made with it must also carry `X-CSRF-Token` and an
/// `Origin` of this host.
#[utoipa::path(post, path = "/console/session", tag = "console", request_body = SignIn,
    security(()),
    responses(
        (status = 200, description = "Signed in; `Set-Cookie` carries the session", body = Session,
            headers(("set-cookie" = String, description = "The session cookie"))),
        (status = 400, description = "Invalid request body", body = ErrorBody),
        (status = 401, description = "Wrong, expired or revoked token", body = ErrorBody),
        (status = 403, description = "Sent by a page of another origin (`csrf_refused`)", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not a JSON body", body = ErrorBody)))]
pub(crate) async fn sign_in(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ApiJson(body): ApiJson<SignIn>,
) -> Response {
    private(
        signed_in(&admin, &headers, &uri, body.token.expose())
            .unwrap_or_else(IntoResponse::into_response),
    )
}

/// The answer to a sign-in with `token`: the session and its cookie, or why not.
fn signed_in(
    admin: &Admin,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    token: &str,
) -> Result<Response, ApiError> {
    let configured = admin.console_origin.as_ref();
    same_origin(headers, uri, configured, false)?;
    let caller = caller_of(admin, token).map_err(|e| e.with_param("token"))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let end = session_end(admin, &caller, now);
    let secure = configured.map_or_else(|| over_tls(headers), |c| c.secure);
    let name = if secure { SECURE_COOKIE } else { COOKIE };
    let set = cookie(name, &URL_SAFE_NO_PAD.encode(token), end - now, secure).ok_or_else(|| {
        ApiError::bad_request("invalid_token", "the token cannot be kept in a cookie")
            .with_param("token")
    })?;
    let mut response = Json(session_answer(admin, &caller, token, end)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, set);
    Ok(response)
}

/// The session the browser's cookie holds: who it is, and its CSRF token (the console
/// reads it after a reload).
#[utoipa::path(get, path = "/console/session", tag = "console",
    security(("console_session" = [])),
    responses(
        (status = 200, description = "Signed in", body = Session),
        (status = 401, description = "No session (`missing_session`), or its token is wrong, expired or revoked; a dead session's cookie is cleared", body = ErrorBody)))]
pub(crate) async fn get_session(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let Some(token) = session_token(&headers, admin.secure_cookie_only()) else {
        return private(
            ApiError::unauthorized("missing_session", "not signed in to the console")
                .into_response(),
        );
    };
    let response = match check_token(&admin, token.expose()) {
        Ok(caller) => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let end = session_end(&admin, &caller, now);
            Json(session_answer(&admin, &caller, token.expose(), end)).into_response()
        }
        // A token this node does not know yet may be one another node just issued:
        // the browser keeps it, and a node that has caught up serves it.
        Err(refused @ Refused::Unknown) => ApiError::from(refused).into_response(),
        // One that can never work again is forgotten.
        Err(refused) => {
            let mut response = ApiError::from(refused).into_response();
            clear_cookies(response.headers_mut());
            response
        }
    };
    private(response)
}

fn clear_cookies(headers: &mut HeaderMap) {
    for (name, secure) in [(COOKIE, false), (SECURE_COOKIE, true)] {
        if let Some(value) = cookie(name, "", 0, secure) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// `DELETE /console/session`: the browser forgets the token. Only from the console's
/// own page, so another site cannot sign a user out.
#[utoipa::path(delete, path = "/console/session", tag = "console",
    security(("console_session" = [])),
    responses(
        (status = 204, description = "Signed out: the session cookies are cleared; the token itself stays valid until revoked",
            headers(("set-cookie" = String, description = "The cleared cookies"))),
        (status = 403, description = "Not sent by a page of this origin (`csrf_refused`)", body = ErrorBody)))]
pub(crate) async fn sign_out(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Err(e) = same_origin(&headers, &uri, admin.console_origin.as_ref(), true) {
        return private(e.into_response());
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_cookies(response.headers_mut());
    private(response)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_read_from_any_cookie_header_and_the_host_prefixed_one_wins() {
        let plain = URL_SAFE_NO_PAD.encode("SGA_plain");
        let secure = URL_SAFE_NO_PAD.encode("SGA_secure");
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={plain}"))]);
        assert_eq!(session_token(&h, false).unwrap().expose(), "SGA_plain");
        let h = headers(&[
            ("cookie", &format!("{COOKIE}={plain}")),
            ("cookie", &format!("x=1;{SECURE_COOKIE}={secure}")),
        ]);
        assert_eq!(session_token(&h, false).unwrap().expose(), "SGA_secure");
        for junk in [
            "",
            "sg_session",
            "sg_session=%%%",
            "other=1",
            "sg_sessionx=abc",
        ] {
            assert!(
                session_token(&headers(&[("cookie", junk)]), false).is_none(),
                "{junk}"
            );
        }
    }

    #[test]
    fn only_the_same_origin_passes() {
        let uri: axum::http::Uri = "/admin/v1/x".parse().unwrap();
        let host = ("host", "127.0.0.1:8081");
        assert!(
            same_origin(
                &headers(&[host, ("origin", "http://127.0.0.1:8081")]),
                &uri,
                None,
                true
            )
            .is_ok()
        );
        assert!(
            same_origin(
                &headers(&[host, ("origin", "HTTP://127.0.0.1:8081")]),
                &uri,
                None,
                true
            )
            .is_ok()
        );
        for origin in [
            "http://127.0.0.1:9999",
            "http://evil.example",
            "null",
            "http://127.0.0.1:8081.evil.example",
            "http://127.0.0.1",
        ] {
            assert!(
                same_origin(&headers(&[host, ("origin", origin)]), &uri, None, true).is_err(),
                "{origin}"
            );
        }
        assert!(
            same_origin(&headers(&[host]), &uri, None, true).is_err(),
            "a write needs an Origin"
        );
        assert!(same_origin(&headers(&[host]), &uri, None, false).is_ok());
        let cross = headers(&[
            host,
            ("origin", "http://127.0.0.1:8081"),
            ("sec-fetch-site", "same-site"),
        ]);
        assert!(same_origin(&cross, &uri, None, true).is_err());
    }

    #[test]
    fn with_a_console_origin_only_it_passes_and_only_the_host_cookie_counts_on_https() {
        let configured = ConsoleOrigin::parse("HTTPS://Admin.Example.com:443/").unwrap();
        assert_eq!(configured.as_str(), "https://admin.example.com");
        assert!(configured.secure);
        assert_eq!(
            ConsoleOrigin::parse("http://127.0.0.1:8081")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8081"
        );
        for bad in [
            "admin.example.com",
            "ftp://admin.example.com",
            "https://",
            "https://admin.example.com/console",
            "https://user@admin.example.com",
            "https://admin.example.com?x=1",
            "https://admin example.com",
        ] {
            assert!(ConsoleOrigin::parse(bad).is_err(), "{bad}");
        }
        let uri: axum::http::Uri = "/admin/v1/x".parse().unwrap();
        // The request's Host no longer decides: a proxy may rewrite it.
        let host = ("host", "securegate-admin:8081");
        let with = |origin: &str| {
            same_origin(
                &headers(&[host, ("origin", origin)]),
                &uri,
                Some(&configured),
                true,
            )
        };
        assert!(with("https://admin.example.com").is_ok());
        assert!(with("https://ADMIN.example.com").is_ok());
        for other in [
            "http://admin.example.com",
            "https://admin.example.com:8443",
            "https://evil.admin.example.com",
            "http://securegate-admin:8081",
            "null",
        ] {
            assert!(with(other).is_err(), "{other}");
        }
        assert!(same_origin(&headers(&[host]), &uri, Some(&configured), true).is_err());
        // Over https the plain cookie, which another port or subdomain could set, is
        // not a session.
        let plain = URL_SAFE_NO_PAD.encode("SGA_plain");
        let secure = URL_SAFE_NO_PAD.encode("SGA_secure");
        let h = headers(&[("cookie", &format!("{COOKIE}={plain}"))]);
        assert!(session_token(&h, true).is_none());
        let h = headers(&[(
            "cookie",
            &format!("{COOKIE}={plain}; {SECURE_COOKIE}={secure}"),
        )]);
        assert_eq!(session_token(&h, true).unwrap().expose(), "SGA_secure");
    }

    #[test]
    fn the_csrf_token_depends_on_the_session_and_reveals_nothing_of_it() {
        let a = csrf_token("SGA_one");
        assert_ne!(a, csrf_token("SGA_two"));
        // A domain-separated SHA-256, computed elsewhere with Python's hashlib:
        // urlsafe_b64encode(sha256(b"securegate console csrf v1\nSGA_one")), unpadded.
        assert_eq!(a, "qZTlJoHQf24-6f9W6kxYtG-ZDESRbHPcn4hNXFeT3l4");
        // Not the token's plain hash, which another use of SHA-256 might publish.
        assert_ne!(a, "8cYVLe2BBqgYD1nznL1v-M2P03J2oeZjMQhNg50gvMQ");
    }
}
