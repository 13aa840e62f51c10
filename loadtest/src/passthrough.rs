//! A bare HTTP pass-through hop: the cheapest possible "extra hop" in front of an
//! upstream, to compare a gateway with.
//!
//! A hyper 1 server on 127.0.0.1 (HTTP/1.1, and HTTP/2 with prior knowledge) that sends
//! each request on to the upstream, unchanged but for the hop-by-hop headers: same
//! method, same path and query, same headers (`Authorization` included, as is), and the
//! body streamed as it arrives. The answer comes back the same way: status, headers
//! minus the hop-by-hop ones, body streamed. Nothing is buffered beyond the pieces in
//! transit, nothing is inspected, redirects are not followed. An upstream that cannot
//! be reached gives a `502` with a one-line text body.
//!
//! The upstream's client adds `Accept: */*` to requests that carry no `Accept`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::TryStreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyDataStream, BodyExt as _, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of the hop's answers.
pub type HopBody = UnsyncBoxBody<Bytes, BoxError>;

/// Headers that concern one connection only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What is removed from a request before it is sent on: the hop-by-hop headers, `Host`
/// (the client sets the upstream's) and `Expect` (this hop answers `100 Continue`
/// itself, by reading the body).
pub fn strip_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
}

/// `scheme://host:port` of `upstream`, which must be an `http` or `https` URL on a
/// loopback IP address, without a path, query or credentials.
pub fn upstream_origin(upstream: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(upstream).with_context(|| format!("`{upstream}` is no URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("the upstream `{upstream}` must be an http or https URL");
    }
    let host = url.host_str().unwrap_or_default();
    let ip: Option<IpAddr> = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok();
    if !ip.is_some_and(|ip| ip.is_loopback()) {
        bail!("the upstream `{upstream}` must be on a loopback IP address");
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        bail!(
            "give the upstream as its origin (`scheme://host:port`): each request's own path \
             and query are sent to it"
        );
    }
    Ok(url.origin().ascii_serialization())
}

struct Hop {
    client: reqwest::Client,
    origin: String,
}

/// The pass-through hop, serving until stopped or dropped.
pub struct Passthrough {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Passthrough {
    /// Serves on a free port of 127.0.0.1, forwarding to `upstream` (an origin, see
    /// [`upstream_origin`]). Must be called within a Tokio runtime.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let origin = upstream_origin(upstream)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .context("building the pass-through's upstream client")?;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding the pass-through to 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("reading the pass-through's address")?;
        let hop = Arc::new(Hop { client, origin });
        let task = tokio::spawn(accept_loop(listener, hop));
        Ok(Self {
            addr,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and drops every connection at once.
    pub fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections until aborted; aborting it drops every connection with it.
async fn accept_loop(listener: TcpListener, hop: Arc<Hop>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let hop = hop.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| forward(hop.clone(), request));
                        // A connection the client drops or breaks is simply closed.
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    eprintln!("pass-through: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(
    hop: Arc<Hop>,
    request: Request<Incoming>,
) -> Result<Response<HopBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", hop.origin);
    let mut headers = parts.headers;
    strip_request_headers(&mut headers);
    let mut outgoing = hop.client.request(parts.method, url).headers(headers);
    // An empty body stays empty (no chunked encoding on a GET); any other is streamed,
    // with the client's `Content-Length` if it sent one.
    if !body.is_end_stream() {
        outgoing = outgoing.body(reqwest::Body::wrap_stream(BodyDataStream::new(body)));
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => return Ok(bad_gateway(&e)),
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    strip_hop_by_hop(&mut headers);
    let stream = answer
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(BoxError::from);
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn bad_gateway(error: &reqwest::Error) -> Response<HopBody> {
    let mut text = format!("pass-through: the upstream failed: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text.push('\n');
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=b"),
        );
        let mut answer = h.clone();
        strip_request_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-length", "content-type"]);
        strip_hop_by_hop(&mut answer);
        let mut left: Vec<&str> = answer.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "authorization",
                "content-length",
                "content-type",
                "expect",
                "host"
            ]
        );
    }

    #[test]
    fn upstream_is_a_loopback_origin() {
        assert_eq!(
            upstream_origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            upstream_origin("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            upstream_origin("http://[::1]:9/").unwrap(),
            "http://[::1]:9"
        );
        assert!(upstream_origin("http://127.0.0.1:8080/v1").is_err());
        assert!(upstream_origin("http://10.0.0.1:8080").is_err());
        assert!(upstream_origin("http://localhost:8080").is_err());
        assert!(upstream_origin("ftp://127.0.0.1:21").is_err());
        assert!(upstream_origin("127.0.0.1:8080").is_err());
        assert!(upstream_origin("http://u:p@127.0.0.1:1").is_err());
    }

    #[tokio::test]
    async fn forwards_method_path_headers_and_body() {
        let upstream = sg_testkit::MediaUpstream::start("sk-hop").await.unwrap();
        let origin = format!("http://127.0.0.1:{}", upstream.port());
        let hop = Passthrough::start(&origin).await.unwrap();
        let form =
            sg_testkit::media_upstream::GeneratedForm::new("whisper-1", 300_001, 7, 16 * 1024);
        let digest = form.digest();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let answer = client
            .post(format!("{}/v1/audio/transcriptions", hop.url()))
            .bearer_auth("sk-hop")
            .header(header::CONTENT_TYPE, form.content_type())
            .header(header::CONTENT_LENGTH, form.len())
            .header("x-client-request-id", "through-the-hop")
            .body(form.into_reqwest_body())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let v: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(v["file"]["sha256"], digest.file_sha256.as_str(), "{v}");
        assert_eq!(v["body"]["sha256"], digest.body_sha256.as_str(), "{v}");
        assert_eq!(v["body"]["bytes"], digest.body_bytes, "{v}");
        let seen = upstream.recorded_with_client_id("through-the-hop");
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].header("authorization").as_deref(),
            Some("Bearer sk-hop")
        );
        assert_eq!(
            seen[0].header("content-length"),
            Some(digest.body_bytes.to_string())
        );
        // The upstream's refusal comes back as it is.
        let refused = client
            .get(format!("{}/v1/files", hop.url()))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        hop.stop();
    }

    #[tokio::test]
    async fn unreachable_upstream_is_a_502() {
        // A port that was free a moment ago.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hop = Passthrough::start(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let answer = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}/v1/models", hop.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 502);
        assert!(answer.text().await.unwrap().starts_with("pass-through:"));
    }
}
