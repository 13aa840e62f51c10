#![forbid(unsafe_code)]
//! A deterministic OpenAI-compatible upstream.
//!
//! The same router serves three purposes:
//! - the `mock` provider kind, called in-process by the gateway, so a fresh
//!   install answers requests without any provider account;
//! - unit and integration tests, in-process or over HTTP;
//! - load tests, as a real HTTP server.
//!
//! Every answer is a pure function of the request (apart from `created`
//! timestamps and ids), so tests can assert exact content and usage numbers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

/// Header carrying the id the mock gives every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Maximum number of characters of the last user message echoed in a reply.
pub const ECHO_MAX_CHARS: usize = 200;

/// Prefix of every chat reply.
pub const REPLY_PREFIX: &str = "This is a mock reply to: ";

/// Number of dimensions of every embedding vector.
pub const EMBEDDING_DIMS: usize = 8;

/// Models listed by `GET /v1/models`.
pub const MODELS: [&str; 3] = ["mock-gpt-4o", "mock-gpt-4o-mini", "mock-embedding"];

/// Largest request body accepted (the size OpenAI accepts for audio uploads).
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";
const MODELS_CREATED: u64 = 1_700_000_000;
const SYSTEM_FINGERPRINT: &str = "fp_mock";

/// Behaviour of the mock upstream.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// Delay before the first byte of every response.
    pub latency: Duration,
    /// Delay between two SSE chunks of a streaming answer.
    pub chunk_interval: Duration,
    /// When set, any request whose `Authorization` is not `Bearer <key>` gets 401.
    pub expected_api_key: Option<String>,
    /// A 401 quotes the key it was sent in full, as some providers' errors do.
    pub echo_key_in_errors: bool,
}

#[derive(Clone)]
struct AppState {
    config: Arc<MockConfig>,
    next_id: Arc<AtomicU64>,
}

impl AppState {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The OpenAI-compatible router, serving everything under `/v1`.
pub fn router(config: MockConfig) -> Router {
    let state = AppState {
        config: Arc::new(config),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// Adds the request id, applies the configured latency and checks the API key.
async fn front(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = format!("req_mock_{:016x}", state.next_id());
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    let mut response = match check_api_key(&state.config, &request) {
        Ok(()) => next.run(request).await,
        Err(rejection) => rejection.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    response
}

fn check_api_key(config: &MockConfig, request: &Request) -> Result<(), ApiError> {
    let Some(expected) = config.expected_api_key.as_deref() else {
        return Ok(());
    };
    let provided = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let message = match provided {
        Some(token) if token == expected => return Ok(()),
        Some(token) if config.echo_key_in_errors => {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: format!("Incorrect API key provided: {token}."),
                param: None,
                code: "invalid_api_key",
            });
        }
        Some(_) => "Incorrect API key provided.",
        None => {
            "You didn't provide an API key. Provide it in an Authorization header as 'Bearer <key>'."
        }
    };
    Err(ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        param: None,
        code: "invalid_api_key",
    })
}

/// An `invalid_request_error` in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(
            self.status,
            &self.message,
            "invalid_request_error",
            self.param,
            Some(self.code),
        )
    }
}

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
fn api_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_response(
        status,
        &json!({
            "error": {
                "message": message,
                "type": kind,
                "param": param,
                "code": code,
            }
        }),
    )
}

fn invalid_request(message: &str, param: Option<&str>, code: &str) -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        Some(code),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = value.to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(JSON_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {})", uri.path()),
        "invalid_request_error",
        None,
        Some("unknown_url"),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method {method} is not allowed for {}", uri.path()),
        "invalid_request_error",
        None,
        Some("method_not_allowed"),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse_json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    let message = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => return Ok(map),
        Ok(_) => "The request body must be a JSON object.".to_owned(),
        Err(e) => format!("We could not parse the JSON body of your request: {e}"),
    };
    Err(ApiError {
        status: StatusCode::BAD_REQUEST,
        message,
        param: None,
        code: "invalid_json",
    })
}

/// Number of whitespace-separated words.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text of a message's `content`: a string, or the `text` of its parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Prompt tokens of a chat request: words of every message's text, at least 1.
pub fn prompt_tokens(messages: &[Value]) -> u64 {
    let words: u64 = messages
        .iter()
        .map(|m| count_words(&content_text(m.get("content"))))
        .sum();
    words.max(1)
}

/// The deterministic reply to a chat request, before any `max_tokens` cut:
/// [`REPLY_PREFIX`] and the first [`ECHO_MAX_CHARS`] characters of the last
/// user message, with runs of whitespace collapsed to single spaces.
pub fn reply_for(messages: &[Value]) -> String {
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    let echoed: String = last_user.chars().take(ECHO_MAX_CHARS).collect();
    format!("{REPLY_PREFIX}{echoed}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

struct ChatAnswer {
    model: String,
    words: Vec<String>,
    finish_reason: &'static str,
    prompt_tokens: u64,
}

impl ChatAnswer {
    fn content(&self) -> String {
        self.words.join(" ")
    }

    fn usage(&self) -> Value {
        let completion = self.words.len() as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }
}

fn max_tokens(request: &serde_json::Map<String, Value>) -> Option<usize> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Response {
    let request = match parse_json_object(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return invalid_request(
            "you must provide a model parameter (a string)",
            Some("model"),
            "missing_required_parameter",
        );
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return invalid_request(
            "you must provide a messages parameter (an array)",
            Some("messages"),
            "missing_required_parameter",
        );
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return invalid_request("stream must be a boolean", Some("stream"), "invalid_type");
        }
    };
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut words: Vec<String> = reply_for(messages)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut finish_reason = "stop";
    if let Some(limit) = max_tokens(&request)
        && words.len() > limit
    {
        words.truncate(limit);
        finish_reason = "length";
    }
    let answer = ChatAnswer {
        model: model.to_owned(),
        words,
        finish_reason,
        prompt_tokens: prompt_tokens(messages),
    };
    let id = format!("chatcmpl-mock{:012}", state.next_id());
    if stream {
        stream_chat(
            id,
            answer,
            include_usage,
            state.config.chunk_interval,
            unix_now(),
        )
    } else {
        json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": unix_now(),
                "model": answer.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": answer.content(),
                        "refusal": null,
                    },
                    "logprobs": null,
                    "finish_reason": answer.finish_reason,
                }],
                "usage": answer.usage(),
            }),
        )
    }
}

/// Every SSE event of a streaming answer, in order, as JSON payloads
/// (the closing `[DONE]` is not included).
fn chat_chunks(id: &str, answer: &ChatAnswer, include_usage: bool, created: u64) -> Vec<Value> {
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        });
        if include_usage && let Some(obj) = c.as_object_mut() {
            obj.insert("usage".to_owned(), Value::Null);
        }
        c
    };
    let mut chunks = Vec::with_capacity(answer.words.len() + 2);
    for (i, word) in answer.words.iter().enumerate() {
        let delta = if i == 0 {
            json!({ "role": "assistant", "content": word })
        } else {
            json!({ "content": format!(" {word}") })
        };
        chunks.push(chunk(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": null,
        }])));
    }
    if answer.words.is_empty() {
        chunks.push(chunk(json!([{
            "index": 0,
            "delta": { "role": "assistant", "content": "" },
            "logprobs": null,
            "finish_reason": null,
        }])));
    }
    chunks.push(chunk(json!([{
        "index": 0,
        "delta": {},
        "logprobs": null,
        "finish_reason": answer.finish_reason,
    }])));
    if include_usage {
        let mut last = chunk(json!([]));
        if let Some(obj) = last.as_object_mut() {
            obj.insert("usage".to_owned(), answer.usage());
        }
        chunks.push(last);
    }
    chunks
}

fn stream_chat(
    id: String,
    answer: ChatAnswer,
    include_usage: bool,
    interval: Duration,
    created: u64,
) -> Response {
    let mut events: Vec<Bytes> = chat_chunks(&id, &answer, include_usage, created)
        .into_iter()
        .map(|c| Bytes::from(format!("data: {c}\n\n")))
        .collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let events = events.into_iter();
    let body_stream =
        futures::stream::unfold((events, true), move |(mut events, first)| async move {
            let event = events.next()?;
            if !first && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            Some((Ok::<Bytes, Infallible>(event), (events, false)))
        });
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(SSE_CONTENT_TYPE),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(body_stream),
    )
        .into_response()
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The deterministic unit-length embedding of `input`.
pub fn embedding_for(input: &str) -> [f32; EMBEDDING_DIMS] {
    let mut state = fnv1a(input.as_bytes());
    let mut v = [0f32; EMBEDDING_DIMS];
    for x in &mut v {
        // 24 random bits mapped to [-1, 1).
        let bits = (splitmix64(&mut state) >> 40) as f32;
        *x = bits / 8_388_608.0 - 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

async fn embeddings(body: Bytes) -> Response {
    let request = match parse_json_object(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return invalid_request(
            "you must provide a model parameter (a string)",
            Some("model"),
            "missing_required_parameter",
        );
    };
    let inputs: Vec<&str> = match request.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => {
            let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            match strings {
                Some(s) => s,
                None => {
                    return invalid_request(
                        "input must be a string or an array of strings",
                        Some("input"),
                        "invalid_type",
                    );
                }
            }
        }
        Some(Value::Array(_)) => {
            return invalid_request("input must not be empty", Some("input"), "invalid_value");
        }
        Some(_) => {
            return invalid_request(
                "input must be a string or an array of strings",
                Some("input"),
                "invalid_type",
            );
        }
        None => {
            return invalid_request(
                "you must provide an input parameter",
                Some("input"),
                "missing_required_parameter",
            );
        }
    };
    let base64_format = match request.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return invalid_request(
                &format!("unsupported encoding_format '{other}' (use 'float' or 'base64')"),
                Some("encoding_format"),
                "invalid_value",
            );
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_for(input);
            let embedding = if base64_format {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = inputs.iter().map(|i| count_words(i)).sum::<u64>().max(1);
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }),
    )
}

async fn models() -> Response {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "object": "model",
                "created": MODELS_CREATED,
                "owned_by": "securegate-mock",
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

async fn transcriptions(multipart: Result<Multipart, MultipartRejection>) -> Response {
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return invalid_request(
                &format!("expected a multipart/form-data body: {e}"),
                None,
                "invalid_multipart",
            );
        }
    };
    let mut file_len: Option<usize> = None;
    let mut model: Option<String> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return invalid_request(
                    &format!("could not read the multipart body: {e}"),
                    None,
                    "invalid_multipart",
                );
            }
        };
        let name = field.name().map(str::to_owned);
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return invalid_request(
                    &format!("could not read the multipart body: {e}"),
                    None,
                    "invalid_multipart",
                );
            }
        };
        match name.as_deref() {
            Some("file") => file_len = Some(bytes.len()),
            Some("model") => model = Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => {}
        }
    }
    let Some(len) = file_len else {
        return invalid_request(
            "you must provide a file parameter",
            Some("file"),
            "missing_required_parameter",
        );
    };
    if model.as_deref().is_none_or(str::is_empty) {
        return invalid_request(
            "you must provide a model parameter",
            Some("model"),
            "missing_required_parameter",
        );
    }
    json_response(
        StatusCode::OK,
        &json!({ "text": format!("mock transcription of {len} bytes") }),
    )
}

#[cfg(test)]
mod tests;
