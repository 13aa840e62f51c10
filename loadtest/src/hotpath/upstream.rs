//! The fixed-answer upstream: the cheapest OpenAI-compatible server that still answers
//! like one, so that the figures measure what sits in front of it.
//!
//! A hyper 1 HTTP/1.1 server on 127.0.0.1 answering `POST /v1/chat/completions` with
//! one fixed chat completion (with a `usage` object: 9 + 12 = 21 tokens), or, when the
//! body holds `"stream":true` (found with a plain byte search, not parsed), a fixed
//! server-sent event stream: `chunks` content chunks, `gap` apart, then the usage chunk
//! and `data: [DONE]`, the two together right after the last content chunk. Anything
//! else gets a 404. It does not check the API key.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The path it serves.
pub const PATH: &str = "/v1/chat/completions";
/// The model it names in its answers.
pub const MODEL: &str = "hotpath-mini";

/// The non-streamed answer.
const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-hotpath","object":"chat.completion","created":1700000000,"#,
    r#""model":"hotpath-mini","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":"Hello! This is a fixed answer from the hot path upstream."},"#,
    r#""logprobs":null,"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#
);

type UpBody = BoxBody<Bytes, Infallible>;

/// The shape of streamed answers.
#[derive(Debug, Clone)]
pub struct StreamShape {
    /// Content chunks per answer (at least 1).
    pub chunks: u32,
    /// Pause between two content chunks.
    pub gap: Duration,
}

struct Answers {
    /// One SSE event per content chunk.
    content: Vec<Bytes>,
    /// The usage chunk and `[DONE]`, sent together after the last content chunk.
    tail: Bytes,
    /// Everything at once, when there is no gap.
    whole: Bytes,
    gap: Duration,
}

impl Answers {
    fn new(shape: &StreamShape) -> Self {
        let chunks = shape.chunks.max(1);
        let content: Vec<Bytes> = (0..chunks)
            .map(|i| {
                let finish = if i + 1 == chunks { r#""stop""# } else { "null" };
                let role = if i == 0 {
                    r#""role":"assistant","#
                } else {
                    ""
                };
                Bytes::from(format!(
                    "data: {{\"id\":\"chatcmpl-hotpath\",\"object\":\"chat.completion.chunk\",\
                     \"created\":1700000000,\"model\":\"{MODEL}\",\"choices\":[{{\"index\":0,\
                     \"delta\":{{{role}\"content\":\"tok{i} \"}},\"finish_reason\":{finish}}}]}}\n\n"
                ))
            })
            .collect();
        let tail = Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-hotpath\",\"object\":\"chat.completion.chunk\",\
             \"created\":1700000000,\"model\":\"{MODEL}\",\"choices\":[],\
             \"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}}}\n\n\
             data: [DONE]\n\n"
        ));
        let mut whole = Vec::new();
        for c in &content {
            whole.extend_from_slice(c);
        }
        whole.extend_from_slice(&tail);
        Self {
            content,
            tail,
            whole: Bytes::from(whole),
            gap: shape.gap,
        }
    }
}

/// Serves on a free port of 127.0.0.1 until the returned task is aborted.
pub async fn start(
    shape: &StreamShape,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .context("binding the upstream to 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let answers = Arc::new(Answers::new(shape));
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |r| answer(answers.clone(), r));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    eprintln!("upstream: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((addr, task))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a request body asks for a stream.
pub fn wants_stream(body: &[u8]) -> bool {
    contains(body, br#""stream":true"#) || contains(body, br#""stream": true"#)
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<UpBody> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn answer(
    answers: Arc<Answers>,
    request: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        return Ok(full(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ));
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                "text/plain",
                Bytes::from_static(b"unreadable body\n"),
            ));
        }
    };
    if !wants_stream(&body) {
        return Ok(full(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(COMPLETION.as_bytes()),
        ));
    }
    if answers.gap.is_zero() {
        return Ok(full(
            StatusCode::OK,
            "text/event-stream",
            answers.whole.clone(),
        ));
    }
    let events = futures::stream::unfold(0usize, move |i| {
        let answers = answers.clone();
        async move {
            let n = answers.content.len();
            if i > n {
                return None;
            }
            if i > 0 && i < n {
                tokio::time::sleep(answers.gap).await;
            }
            let bytes = match answers.content.get(i) {
                Some(event) => event.clone(),
                None => answers.tail.clone(),
            };
            Some((Ok::<_, Infallible>(Frame::data(bytes)), i + 1))
        }
    });
    let mut response = Response::new(StreamBody::new(events).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_well_formed() {
        let v: serde_json::Value = serde_json::from_str(COMPLETION).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 21);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let a = Answers::new(&StreamShape {
            chunks: 3,
            gap: Duration::ZERO,
        });
        let text = String::from_utf8(a.whole.to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 5);
        for e in &events[..4] {
            let v: serde_json::Value =
                serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
        }
        assert!(events[3].contains(r#""prompt_tokens":9"#));
        assert!(events[2].contains(r#""finish_reason":"stop""#));
        assert_eq!(events[4], "data: [DONE]");
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"model":"m", "stream": true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
    }
}
