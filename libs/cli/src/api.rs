//! The admin API client: JSON over HTTP with a bearer token, and errors a person can act
//! on (which URL could not be reached; a refused token; the API's own message and code).

use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

/// The admin API's base URL as stored: scheme, host, optional path prefix; no trailing
/// `/` and no `/admin/v1` (both are accepted on input).
pub fn normalize_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim();
    let mut base = trimmed.trim_end_matches('/');
    if let Some(stripped) = base.strip_suffix("/admin/v1") {
        base = stripped.trim_end_matches('/');
    }
    let parsed = reqwest::Url::parse(base).map_err(|e| {
        anyhow::anyhow!("{trimmed:?} is not a URL ({e}); e.g. http://127.0.0.1:8081")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{trimmed:?} is not an http:// or https:// URL");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("{trimmed:?} has no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("{trimmed:?}: the admin API URL takes no query or fragment");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!("{trimmed:?}: put no credentials in the URL; the token is read separately");
    }
    Ok(base.to_owned())
}

/// An error answer of the admin API, as a one-line reason.
pub fn describe_error(status: u16, body: &[u8]) -> String {
    let parsed: Option<(String, String, Option<String>)> =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            let e = v.get("error")?;
            Some((
                e.get("message")?.as_str()?.to_owned(),
                e.get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_owned(),
                e.get("param").and_then(Value::as_str).map(str::to_owned),
            ))
        });
    let Some((message, code, param)) = parsed else {
        let text = one_line(&String::from_utf8_lossy(body), 200);
        return if text.is_empty() {
            format!("the admin API answered HTTP {status}")
        } else {
            format!("the admin API answered HTTP {status}: {text}")
        };
    };
    let message = one_line(&message, 500);
    if status == 401 {
        return format!(
            "the admin API refused the token ({code}: {message}): it is invalid, expired or revoked; log in again with `securegate login`"
        );
    }
    let param = param.map(|p| format!(", param {p}")).unwrap_or_default();
    format!("{message} (HTTP {status} {code}{param})")
}

/// `s` on one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// The innermost cause of an error, which for a transport error is the useful part
/// ("Connection refused", "dns error: …").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    one_line(&cause.to_string(), 300)
}

/// A client of one admin API with one token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

impl Api {
    /// `base`: as [`normalize_url`] returns it.
    pub fn new(base: &str, token: Zeroizing<String>) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("securegate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Api {
            http,
            base: normalize_url(base)?,
            token,
        })
    }

    /// The admin API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, &[], None::<&()>).await
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(Method::GET, path, query, None::<&()>).await
    }

    pub async fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", self.token.as_str()),
            )
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).context("cannot encode the request")?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            anyhow::anyhow!(
                "the admin API at {} broke off its answer: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        if !status.is_success() {
            bail!("{}", describe_error(status.as_u16(), &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            anyhow::anyhow!(
                "{} did not answer with JSON (HTTP {}): is it SecureGate's admin API?",
                self.base,
                status.as_u16()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        for (input, want) in [
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
            ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
            (
                "  http://127.0.0.1:8081/admin/v1/ ",
                "http://127.0.0.1:8081",
            ),
            (
                "https://sg.example.com/prefix/admin/v1",
                "https://sg.example.com/prefix",
            ),
        ] {
            assert_eq!(normalize_url(input).unwrap(), want, "{input}");
        }
        for bad in [
            "127.0.0.1:8081",
            "ftp://x",
            "http://",
            "http://x/?a=b",
            "http://u:p@x",
            "",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let body = br#"{"error":{"message":"a key needs\n at least one connection","type":"invalid_request_error","code":"no_connections","param":"connection_ids"}}"#;
        assert_eq!(
            describe_error(400, body),
            "a key needs at least one connection (HTTP 400 no_connections, param connection_ids)"
        );
        let body = br#"{"error":{"message":"needs owner","type":"permission_error","code":"role_required","param":null}}"#;
        assert_eq!(
            describe_error(403, body),
            "needs owner (HTTP 403 role_required)"
        );
    }

    #[test]
    fn a_refused_token_says_to_log_in_again() {
        let body = br#"{"error":{"message":"revoked","type":"authentication_error","code":"invalid_token","param":null}}"#;
        let m = describe_error(401, body);
        assert!(m.contains("invalid, expired or revoked"), "{m}");
        assert!(m.contains("securegate login"), "{m}");
        assert!(m.contains("invalid_token"), "{m}");
    }

    #[test]
    fn non_api_errors_are_shortened() {
        assert_eq!(describe_error(502, b""), "the admin API answered HTTP 502");
        let long = "x".repeat(1000);
        let m = describe_error(500, long.as_bytes());
        assert!(m.len() < 300 && !m.contains('\n'), "{m}");
    }
}
