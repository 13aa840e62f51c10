//! Calling a provider: the headers a client may pass on, the upstream URL (which never
//! leaves the connection's base), the credential, and the answer — whose error bodies
//! are scrubbed of the credential before they travel back.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use sg_api_error::ApiError;
use sg_crypto::{Kms, SecretString};
use sg_events::Provider;
use sg_state::Connection;
use tower::ServiceExt;

use crate::Gateway;
use crate::tap::BoxError;

/// Request headers a client may send on to a provider. Everything else is dropped:
/// credentials, hop-by-hop and connection-scoped headers, client network details,
/// settings that belong to the connection (`OpenAI-Organization`, `OpenAI-Project`), and
/// anything not named here. `Content-Type` is set from what the gateway read the body as.
pub(crate) fn forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "accept"
            | "user-agent"
            | "openai-beta"
            | "anthropic-version"
            | "anthropic-beta"
            | "idempotency-key"
            | "x-client-request-id"
            | "traceparent"
            | "tracestate"
    ) || n.starts_with("x-stainless-")
}

/// Response headers not passed back: hop-by-hop, and cookies a provider (or its CDN)
/// sets for itself.
pub(crate) fn returnable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "set-cookie"
    ) && !name.as_str().starts_with("proxy-")
}

/// The headers to send on: the allowed ones, then the body's media type.
pub(crate) fn outgoing_headers(headers: &HeaderMap, content_type: Option<&str>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers.iter().filter(|(n, _)| forwarded(n)) {
        out.append(name.clone(), value.clone());
    }
    if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(ct).ok()) {
        out.insert(header::CONTENT_TYPE, ct);
    }
    out
}

pub(crate) type UpstreamAnswer = (
    http::response::Parts,
    futures::stream::BoxStream<'static, Result<Bytes, BoxError>>,
);

/// `base` + `suffix` (the client's path after `/v1`, with its query), checked to stay on
/// the base's origin and under its path. The client path was checked already
/// (`sg_inspect::path`); this is the second line. The base is parsed once per connection;
/// only the path and query are set here.
pub(crate) fn upstream_url(base: &reqwest::Url, suffix: &str) -> Result<reqwest::Url, ApiError> {
    let (suffix_path, query) = match suffix.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (suffix, None),
    };
    let expected_path = format!("{}{suffix_path}", base.path().trim_end_matches('/'));
    let mut url = base.clone();
    url.set_path(&expected_path);
    url.set_query(query);
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_origin || url.path() != expected_path || url.cannot_be_a_base() {
        tracing::warn!("a request path would leave its connection's base URL; refused");
        return Err(ApiError::bad_request(
            "invalid_path",
            "the request path does not stay under the provider's API base",
        ));
    }
    Ok(url)
}

/// The credential as a header value, marked sensitive (never logged, never indexed by
/// HTTP/2 header compression). Its bytes are zeroized when the last copy of the value
/// is dropped.
fn credential_header(scheme: &str, secret: &SecretString) -> Result<HeaderValue, ApiError> {
    let mut text =
        zeroize::Zeroizing::new(Vec::with_capacity(scheme.len() + secret.expose().len()));
    text.extend_from_slice(scheme.as_bytes());
    text.extend_from_slice(secret.expose().as_bytes());
    let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(text)).map_err(|_| {
        ApiError::internal("the provider credential of this connection is not a valid header value")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A connection's credential, opened, as requests on the connection send it.
pub(crate) struct Opened {
    /// What it was opened from: a rotated credential (new sealed bytes) is opened again.
    sealed: sg_crypto::SealedSecret,
    pub(crate) header_name: &'static str,
    pub(crate) header: HeaderValue,
    /// For scrubbing error answers that would echo it.
    pub(crate) secret: Arc<SecretString>,
}

/// Opened credentials by connection, so that a request does not open its connection's
/// credential again (a data-key cache lookup, hashing, AES-GCM). An entry is kept for
/// the data-key cache's TTL from when it was opened, and at most as many entries as that
/// cache keeps data keys (one sealed credential has one data key), both read from
/// `sg_crypto::DataKeyCacheConfig`'s defaults, which the gateway's data-key cache is
/// built with too. An entry can therefore outlive the data key it was opened with by up
/// to one TTL. It is replaced as soon as the connection's sealed credential changes; its
/// plaintext (the secret and the header value's bytes) is zeroized when dropped.
pub(crate) struct Credentials {
    cache: moka::sync::Cache<sg_events::ConnectionId, Arc<Opened>>,
}

impl Credentials {
    pub(crate) fn new() -> Self {
        let bounds = sg_crypto::DataKeyCacheConfig::default();
        Credentials {
            cache: moka::sync::Cache::builder()
                .time_to_live(bounds.ttl)
                .max_capacity(bounds.capacity)
                .build(),
        }
    }

    /// The connection's credential, opened now or earlier from the same sealed bytes.
    pub(crate) async fn open(
        &self,
        kms: &dyn Kms,
        connection: &Connection,
    ) -> Result<Arc<Opened>, ApiError> {
        if let Some(opened) = self.cache.get(&connection.id)
            && opened.sealed == connection.api_key
        {
            return Ok(opened);
        }
        let context = connection
            .id
            .encryption_context(&connection.tenant_id, &connection.project_id);
        let secret = sg_crypto::open(kms, &context, &connection.api_key)
            .await
            .map_err(|e| match e {
                sg_crypto::CryptoError::KmsUnavailable(_) => {
                    ApiError::unavailable("kms_unavailable", "the key service is unavailable; retry shortly")
                }
                other => {
                    tracing::error!(connection = %connection.id, error = %other, "cannot open a connection's credential");
                    ApiError::internal("the provider credential of this connection cannot be opened; the operator must check the KMS configuration")
                }
            })?;
        let (header_name, scheme) = sg_providers::info(connection.provider).auth.header();
        let opened = Arc::new(Opened {
            sealed: connection.api_key.clone(),
            header_name,
            header: credential_header(scheme, &secret)?,
            secret: Arc::new(secret),
        });
        self.cache.insert(connection.id.clone(), opened.clone());
        Ok(opened)
    }
}

/// Where a client request goes on this connection's provider (pure: see
/// `sg_providers::plan`). `path_and_query` starts with `/v1`; `model` is the model the
/// provider will run.
pub(crate) fn plan(
    connection: &Connection,
    method: &Method,
    path_and_query: &str,
    model: Option<&str>,
) -> Result<sg_providers::Plan, ApiError> {
    let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let base_path = connection.upstream.as_ref().map_or("", |u| u.path());
    sg_providers::plan(
        connection.provider,
        method.as_str(),
        path,
        query,
        model,
        base_path,
        connection.api_version.as_deref(),
    )
    .map_err(|u| ApiError::bad_request(u.code, u.message))
}

/// A request body on its way to a provider: whole, or streamed as the client sends it.
pub(crate) enum OutBody {
    Whole(Bytes),
    Stream(futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>),
}

/// The body the provider reads: the client's, or its translation (a 400 naming the
/// field that cannot be translated).
pub(crate) fn provider_body(plan: &sg_providers::Plan, body: Bytes) -> Result<Bytes, ApiError> {
    match plan.mode {
        sg_providers::Mode::ChatViaMessages => crate::translate::request_body(&body),
        sg_providers::Mode::Passthrough(_) => Ok(body),
    }
}

/// Opens the connection's credential and calls its provider as `plan` says.
/// `path_and_query` is the client's (it starts with `/v1`); `headers` are the outgoing
/// headers ([`outgoing_headers`]); `body` is in the provider's shape
/// ([`provider_body`]). A translated request's answer comes back translated.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call(
    gw: &Arc<Gateway>,
    kms: &dyn Kms,
    connection: &Connection,
    method: Method,
    path_and_query: &str,
    plan: &sg_providers::Plan,
    mut headers: HeaderMap,
    body: OutBody,
) -> Result<UpstreamAnswer, ApiError> {
    let opened = gw.credentials.open(kms, connection).await?;
    let suffix = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
    let info = sg_providers::info(connection.provider);
    headers.insert(
        HeaderName::from_static(opened.header_name),
        opened.header.clone(),
    );
    let api_key = opened.secret.clone();
    if connection.provider == Provider::Openai {
        for (name, value) in [
            ("openai-organization", &connection.openai_organization),
            ("openai-project", &connection.openai_project),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    if plan.mode == sg_providers::Mode::ChatViaMessages {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
    }
    if info.flavour == sg_providers::Flavour::Anthropic {
        headers.remove("openai-beta");
        if !headers.contains_key("anthropic-version") {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(sg_providers::ANTHROPIC_VERSION),
            );
        }
    } else {
        headers.remove("anthropic-version");
        headers.remove("anthropic-beta");
    }
    // The provider sees this call as the parent of its work (without tracing: the
    // client's own `traceparent`, passed on by the allow-list).
    sg_telemetry::trace::inject(&tracing::Span::current(), &mut headers);

    let sent_at = std::time::Instant::now();
    let (parts, stream) = match connection.provider {
        Provider::Mock => {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("/v1{suffix}"))
                .body(match body {
                    OutBody::Whole(b) => Body::from(b),
                    OutBody::Stream(s) => Body::from_stream(s),
                })
                .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
            *request.headers_mut() = headers;
            let response = match gw.mock.clone().oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let stream =
                TryStreamExt::map_err(body.into_data_stream(), |e| Box::new(e) as BoxError).boxed();
            (parts, stream)
        }
        _ => {
            let base = connection.upstream.as_ref().ok_or_else(|| {
                ApiError::internal("this connection's provider address is not a valid URL; the project owner must fix it")
            })?;
            let url = upstream_url(base, &plan.suffix)?;
            if !gw.config.allow_private_upstreams {
                refuse_private_literal(&url)?;
            }
            let body = match body {
                OutBody::Whole(b) => reqwest::Body::from(b),
                OutBody::Stream(s) => reqwest::Body::wrap_stream(s),
            };
            let request = gw.http.request(method, url).headers(headers).body(body);
            send(request).await.map_err(|e| upstream_error(&e))?
        }
    };
    gw.metrics.upstream_time(
        connection.provider.as_str(),
        path_and_query,
        sent_at.elapsed().as_secs_f64(),
    );
    let (parts, stream) = scrub_errors(parts, stream, api_key);
    match plan.mode {
        sg_providers::Mode::ChatViaMessages => crate::translate::answer(parts, stream).await,
        sg_providers::Mode::Passthrough(_) => Ok((parts, stream)),
    }
}

/// Names resolved by the client's guarded resolver are checked at connect time; a base
/// URL with a literal address never reaches the resolver, so it is checked here.
fn refuse_private_literal(url: &reqwest::Url) -> Result<(), ApiError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if sg_netguard::is_forbidden_ip(ip) {
        return Err(ApiError::forbidden(
            "upstream_not_allowed",
            "this connection's provider address is private or loopback, which this gateway does not allow",
        ));
    }
    Ok(())
}

/// Sends a request and turns the answer into parts and a body stream.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<UpstreamAnswer, reqwest::Error> {
    let response = request.send().await?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = response.status();
    parts.headers = response.headers().clone();
    let stream = response
        .bytes_stream()
        .map_err(|e| Box::new(e) as BoxError)
        .boxed();
    Ok((parts, stream))
}

pub(crate) fn upstream_error(e: &reqwest::Error) -> ApiError {
    if sg_netguard::is_private_address_refusal(e) {
        return ApiError::forbidden(
            "upstream_not_allowed",
            "this connection's provider host resolves only to private or loopback addresses, which this gateway does not allow",
        );
    }
    if e.is_timeout() {
        return ApiError::new(
            http::StatusCode::GATEWAY_TIMEOUT,
            sg_api_error::ErrorType::Upstream,
            "upstream_timeout",
            "the provider did not answer in time",
        );
    }
    // The innermost cause says most (connection refused, DNS failure, TLS); the URL is
    // left out: it is the operator's business.
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    ApiError::bad_gateway(
        "upstream_unavailable",
        format!("the provider could not be reached: {cause}"),
    )
}

/// A provider's error answer may echo the credential it was sent (some do, in "invalid
/// key" messages). Non-2xx answers have every occurrence of the exact credential in
/// their headers and body masked (`*` of the same length, so lengths stay true) before
/// they leave the node that holds it.
fn scrub_errors(
    mut parts: http::response::Parts,
    stream: futures::stream::BoxStream<'static, Result<Bytes, BoxError>>,
    secret: Arc<SecretString>,
) -> UpstreamAnswer {
    if parts.status.is_success() || secret.expose().is_empty() {
        return (parts, stream);
    }
    let needle = secret.expose().as_bytes();
    for value in parts.headers.values_mut() {
        if contains(value.as_bytes(), needle) {
            let mut masked = value.as_bytes().to_vec();
            mask(&mut masked, needle);
            if let Ok(v) = HeaderValue::from_bytes(&masked) {
                *value = v;
            }
        }
    }
    let scrub = Scrub {
        inner: stream,
        secret,
        held: BytesMut::new(),
        done: false,
    };
    (parts, scrub.boxed())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Overwrites every occurrence of `needle` in `buf` with `*`.
fn mask(buf: &mut [u8], needle: &[u8]) {
    if needle.is_empty() || buf.len() < needle.len() {
        return;
    }
    let mut i = 0;
    while i + needle.len() <= buf.len() {
        if &buf[i..i + needle.len()] == needle {
            buf[i..i + needle.len()].fill(b'*');
            i += needle.len();
        } else {
            i += 1;
        }
    }
}

/// Masks the secret in a body, holding back the last `len - 1` bytes of each chunk so an
/// occurrence split across chunks is still found.
struct Scrub {
    inner: futures::stream::BoxStream<'static, Result<Bytes, BoxError>>,
    secret: Arc<SecretString>,
    held: BytesMut,
    done: bool,
}

impl Stream for Scrub {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.held.extend_from_slice(&chunk);
                    let needle = this.secret.expose().as_bytes();
                    mask(&mut this.held, needle);
                    let keep = needle.len().saturating_sub(1);
                    if this.held.len() > keep {
                        let ready = this.held.len() - keep;
                        return Poll::Ready(Some(Ok(this.held.split_to(ready).freeze())));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.held.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(this.held.split().freeze())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list() {
        for ok in [
            "accept",
            "user-agent",
            "openai-beta",
            "anthropic-version",
            "anthropic-beta",
            "x-stainless-lang",
            "traceparent",
        ] {
            assert!(forwarded(&HeaderName::from_static(ok)), "{ok}");
        }
        for dropped in [
            "authorization",
            "x-api-key",
            "openai-organization",
            "openai-project",
            "http2-settings",
            "via",
            "true-client-ip",
            "cf-connecting-ip",
            "x-original-url",
            "x-forwarded-for",
            "cookie",
            "content-type",
            "content-length",
            "host",
            "x-anything",
        ] {
            assert!(!forwarded(&HeaderName::from_static(dropped)), "{dropped}");
        }
        assert!(!returnable(&HeaderName::from_static("set-cookie")));
    }

    #[test]
    fn urls_stay_under_the_base() {
        let base = |s: &str| reqwest::Url::parse(s).unwrap();
        let api = base("https://api.example.com/v1");
        let u = upstream_url(&api, "/chat/completions?x=1").unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.com/v1/chat/completions?x=1"
        );
        let local = base("http://127.0.0.1:9/openai/v1");
        let u = upstream_url(&local, "/files/file-1/content").unwrap();
        assert_eq!(u.path(), "/openai/v1/files/file-1/content");
        // What the path check would have refused: the URL check refuses it again.
        for bad in ["/../admin", "/%2e%2e/admin", "/files/..\\..\\x", "/a/./b"] {
            assert!(upstream_url(&api, bad).is_err(), "{bad}");
        }
        // Whatever the suffix, the host stays the base's.
        let u = upstream_url(&base("https://api.example.com"), "@evil.example/x");
        assert!(u.is_err() || u.unwrap().host_str() == Some("api.example.com"));
    }

    #[test]
    fn errors_are_scrubbed_across_chunks() {
        let secret = Arc::new(SecretString::new("sk-test-ABCDEFGHIJ".into()));
        let (a, b) = (
            "{\"error\":\"Incorrect API key provided: sk-test-AB",
            "CDEFGHIJ; or sk-test-ABCDEFGHIJ\"}",
        );
        let chunks = vec![
            Ok(Bytes::from_static(a.as_bytes())),
            Ok(Bytes::from_static(b.as_bytes())),
        ];
        let mut parts = Response::new(()).into_parts().0;
        parts.status = http::StatusCode::UNAUTHORIZED;
        parts
            .headers
            .insert("x-echo", HeaderValue::from_static("key=sk-test-ABCDEFGHIJ"));
        let (parts, stream) = scrub_errors(parts, futures::stream::iter(chunks).boxed(), secret);
        let body: Vec<Bytes> = futures::executor::block_on(stream.map(|r| r.unwrap()).collect());
        let body = String::from_utf8(body.concat()).unwrap();
        assert!(!body.contains("ABCDEFGHIJ"), "{body}");
        assert_eq!(body.len(), a.len() + b.len());
        assert!(
            !parts.headers["x-echo"]
                .to_str()
                .unwrap()
                .contains("ABCDEFGHIJ")
        );
    }
}
