//! OpenAI chat requests served by an Anthropic connection (`sg_providers::Mode::
//! ChatViaMessages`): the request body out as a Messages request, the answer back as a
//! chat completion — JSON, an SSE stream chunk by chunk, or an error in OpenAI's shape.
//! The mapping itself is `sg-translate`'s; this module moves bytes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sg_api_error::ApiError;

use crate::tap::BoxError;
use crate::upstream::UpstreamAnswer;

/// Most of an error answer read to translate it.
const ERROR_LIMIT: usize = 1 << 20;
/// Most of a plain (not streamed) answer held to translate it.
const ANSWER_LIMIT: usize = 64 << 20;
/// Most one server-sent event may hold.
const EVENT_LIMIT: usize = 16 << 20;

/// The Messages request for an OpenAI chat request body; a 400 naming the field that
/// cannot be translated.
pub(crate) fn request_body(body: &[u8]) -> Result<Bytes, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    let out = sg_translate::chat_to_messages(&value, &sg_translate::RequestOptions::default())
        .map_err(|e| {
            let field = if e.param.is_empty() {
                String::new()
            } else {
                format!("`{}`: ", e.param)
            };
            let error = ApiError::bad_request(
                "unsupported_parameter",
                format!(
                    "this request cannot be sent to an Anthropic model: {field}{}",
                    e.message
                ),
            );
            if e.param.is_empty() {
                error
            } else {
                error.with_param(e.param)
            }
        })?;
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|_| ApiError::internal("the translated request cannot be encoded"))
}

/// Reads a whole body up to `limit` bytes (`None` beyond).
async fn collect(
    mut stream: BoxStream<'static, Result<Bytes, BoxError>>,
    limit: usize,
) -> Result<Option<Bytes>, BoxError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

fn json_parts(mut parts: http::response::Parts, status: StatusCode) -> http::response::Parts {
    parts.status = status;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts
}

fn once(body: Bytes) -> BoxStream<'static, Result<Bytes, BoxError>> {
    futures::stream::once(async move { Ok::<_, BoxError>(body) }).boxed()
}

fn upstream_garbled(what: &str) -> ApiError {
    ApiError::bad_gateway(
        "upstream_invalid_response",
        format!("the provider's answer could not be read: {what}"),
    )
}

/// The Anthropic answer as an OpenAI one.
pub(crate) async fn answer(
    parts: http::response::Parts,
    stream: BoxStream<'static, Result<Bytes, BoxError>>,
) -> Result<UpstreamAnswer, ApiError> {
    let created = crate::unix_now();
    if !parts.status.is_success() {
        let body = collect(stream, ERROR_LIMIT)
            .await
            .map_err(|e| upstream_garbled(&e.to_string()))?
            .unwrap_or_default();
        let (status, error) = sg_translate::error_to_openai(parts.status.as_u16(), &body);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = serde_json::to_vec(&error).unwrap_or_default();
        return Ok((json_parts(parts, status), once(Bytes::from(body))));
    }
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if streamed {
        let mut parts = parts;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        // Usage is always asked for: the tap needs it, and strips the chunk for a client
        // that did not ask.
        let chunks = Chunks {
            inner: stream,
            decoder: sg_translate::SseDecoder::new(EVENT_LIMIT),
            translator: sg_translate::StreamTranslator::new(created, true),
            ready: VecDeque::new(),
            ended: false,
        };
        return Ok((parts, chunks.boxed()));
    }
    let body = collect(stream, ANSWER_LIMIT)
        .await
        .map_err(|e| upstream_garbled(&e.to_string()))?
        .ok_or_else(|| upstream_garbled("it is larger than the gateway translates"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| upstream_garbled("it is not JSON"))?;
    let chat = sg_translate::messages_to_chat(&value, created)
        .map_err(|e| upstream_garbled(&e.message))?;
    let body = serde_json::to_vec(&chat).unwrap_or_default();
    Ok((json_parts(parts, StatusCode::OK), once(Bytes::from(body))))
}

/// An Anthropic event stream as OpenAI chat completion chunks.
struct Chunks {
    inner: BoxStream<'static, Result<Bytes, BoxError>>,
    decoder: sg_translate::SseDecoder,
    translator: sg_translate::StreamTranslator,
    ready: VecDeque<Bytes>,
    ended: bool,
}

impl Chunks {
    fn queue(&mut self, frames: Vec<String>) {
        self.ready.extend(frames.into_iter().map(Bytes::from));
    }
}

impl Stream for Chunks {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => match this.decoder.push(&chunk) {
                    Ok(events) => {
                        for e in events {
                            let frames = this.translator.push(&e.event, &e.data);
                            this.queue(frames);
                        }
                    }
                    Err(_) => {
                        this.ended = true;
                        let frames = this.translator.finish();
                        this.queue(frames);
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    tracing::warn!(error = %e, "the provider's stream broke off");
                    let frames = this.translator.finish();
                    this.queue(frames);
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let frames = this.translator.finish();
                    this.queue(frames);
                }
            }
        }
    }
}
