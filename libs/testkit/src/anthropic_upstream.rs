//! A stand-in for Anthropic's Messages API as a real HTTP server on 127.0.0.1, close
//! enough to the real one for the official SDKs, keeping every request it receives.
//!
//! - `POST /v1/messages`: checks `x-api-key` (401 `authentication_error` unless it is the
//!   configured key) and `anthropic-version` (400 when missing), validates the body the
//!   way the real API does (required fields, no unknown top-level fields, roles, non-empty
//!   text blocks, `temperature` in 0–1, every `tool_use` answered by a `tool_result` in
//!   the next turn and every result answering a call, tool schemas of type `object`), and
//!   answers deterministically:
//!   - text: [`REPLY_PREFIX`] and the last user turn's text (tool results included),
//!     whitespace collapsed, cut at `max_tokens` words (`stop_reason: "max_tokens"`) or at
//!     the first of `stop_sequences` it contains (`"stop_sequence"`);
//!   - a tool call when the request has `tools` and either `tool_choice` is `any` or
//!     `tool`, or the last user turn names one of the tools (`tool_choice: none` never
//!     calls): a short text block, then a `tool_use` block whose input fills each property
//!     of the tool's schema ([`tool_input`]), `stop_reason: "tool_use"`;
//!   - `stream: true`: the real event sequence (`message_start` with input and cache
//!     counters and `output_tokens: 1`, then per block `content_block_start`, `ping`
//!     after the first, `content_block_delta`s — one `text_delta` per word, one
//!     `input_json_delta` per [`JSON_PIECE`] characters after an empty one —,
//!     `content_block_stop`, then `message_delta` with the stop reason and the cumulative
//!     usage, `message_stop`), each with its `event:` line.
//! - `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, the same `N` a message with
//!   that body reports ([`input_tokens`]).
//! - `GET /v1/models`, `GET /v1/models/{id}`: [`MODELS`].
//!
//! Usage is deterministic: `input_tokens` is a quarter of the JSON of `system`,
//! `messages` and `tools` (rounded up), output tokens are the words of the text plus a
//! quarter of each tool input's JSON; a request marking any block with `cache_control`
//! also reports [`CACHE_READ_TOKENS`] read from the cache.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::mock_upstream::Recorded;

/// The start of every text answer.
pub const REPLY_PREFIX: &str = "Stand-in Claude replies to: ";
/// Characters of the last user turn echoed in a text answer.
pub const ECHO_MAX_CHARS: usize = 200;
/// Tokens reported as read from the cache by a request that uses `cache_control`.
pub const CACHE_READ_TOKENS: u64 = 32;
/// Characters of a tool input's JSON per `input_json_delta` event.
pub const JSON_PIECE: usize = 6;
/// The models `GET /v1/models` lists (any model name is served).
pub const MODELS: [&str; 2] = ["claude-sonnet-4-5", "claude-haiku-4-5"];
/// Largest request body read.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Top-level fields of a Messages request.
const MESSAGE_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
    "inference_geo",
    "cache_control",
    "diagnostics",
    "speed",
    "user_profile_id",
    "workspace_id",
];
/// Top-level fields of a token count request.
const COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
    "cache_control",
    "speed",
    "user_profile_id",
    "workspace_id",
];

struct Shared {
    api_key: String,
    recorded: Mutex<Vec<Recorded>>,
    next_id: AtomicU64,
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        format!("{prefix}_sg{n:022}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The Messages API stand-in, stopped when dropped. See the [module docs](self).
pub struct AnthropicUpstream {
    port: u16,
    shared: Arc<Shared>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for AnthropicUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicUpstream")
            .field("base_url", &self.base_url())
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl AnthropicUpstream {
    /// Serves on a free port, accepting `api_key` as `x-api-key`.
    pub async fn start(api_key: impl Into<String>) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding the Anthropic stand-in to 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("reading the Anthropic stand-in's port")?
            .port();
        let shared = Arc::new(Shared {
            api_key: api_key.into(),
            recorded: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("the Anthropic stand-in on port {port} failed: {e}");
            }
        });
        Ok(Self {
            port,
            shared,
            running: Some((shutdown, task)),
        })
    }

    /// The API root, `http://127.0.0.1:PORT` (as `https://api.anthropic.com`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received since start (or the last [`reset`](Self::reset)), in
    /// order, whether it was answered or refused.
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.shared.recorded).clone()
    }

    /// How many requests were received since start (or the last reset).
    pub fn request_count(&self) -> usize {
        lock(&self.shared.recorded).len()
    }

    /// Forgets the recorded requests.
    pub fn reset(&self) {
        lock(&self.shared.recorded).clear();
    }
}

impl Drop for AnthropicUpstream {
    fn drop(&mut self) {
        if let Some((shutdown, task)) = self.running.take() {
            let _ = shutdown.send(());
            task.abort();
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = shared.id("req");
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                &request_id,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
            );
        }
    };
    lock(&shared.recorded).push(Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });

    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-api-key") != Some(shared.api_key.as_str()) {
        return error(
            &request_id,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        );
    }
    if header("anthropic-version").is_none_or(|v| v.trim().is_empty()) {
        return error(
            &request_id,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::POST, "/v1/messages" | "/v1/messages/count_tokens") => {
            let json_body = header("content-type")
                .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
            if !json_body {
                return error(
                    &request_id,
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "the request body must be JSON (Content-Type: application/json)",
                );
            }
            let value: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return error(
                        &request_id,
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        &format!("the request body is not valid JSON: {e}"),
                    );
                }
            };
            let count_only = path.ends_with("/count_tokens");
            if let Err(message) = validate(&value, count_only) {
                return error(
                    &request_id,
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &message,
                );
            }
            if count_only {
                return json_response(&request_id, &json!({"input_tokens": input_tokens(&value)}));
            }
            let answer = answer(&shared, &value);
            if value.get("stream").and_then(Value::as_bool) == Some(true) {
                sse_response(&request_id, &answer)
            } else {
                json_response(&request_id, &answer.message())
            }
        }
        (&Method::GET, "/v1/models") => {
            let data: Vec<Value> = MODELS.iter().map(|m| model_json(m)).collect();
            json_response(
                &request_id,
                &json!({"data": data, "has_more": false, "first_id": MODELS[0], "last_id": MODELS[MODELS.len() - 1]}),
            )
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if MODELS.contains(&id) {
                json_response(&request_id, &model_json(id))
            } else {
                error(
                    &request_id,
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    &format!("model: {id}"),
                )
            }
        }
        _ => error(
            &request_id,
            StatusCode::NOT_FOUND,
            "not_found_error",
            "Not found",
        ),
    }
}

fn model_json(id: &str) -> Value {
    json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-09-29T00:00:00Z"})
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

fn json_response(request_id: &str, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_request_id(response, request_id)
}

/// An Anthropic-shaped error answer.
fn error(request_id: &str, status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    let mut response = json_response(request_id, &body);
    *response.status_mut() = status;
    response
}

// ---- validation -------------------------------------------------------------------------

fn field_required(field: &str) -> String {
    format!("{field}: Field required")
}

/// Checks a Messages (or token count) request as the real API does; the error message
/// names the offending field.
fn validate(body: &Value, count_only: bool) -> Result<(), String> {
    let object = body
        .as_object()
        .ok_or_else(|| "the request body must be a JSON object".to_owned())?;
    let allowed = if count_only {
        COUNT_FIELDS
    } else {
        MESSAGE_FIELDS
    };
    if let Some(extra) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    match object.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        Some(_) => return Err("model: Input should be a non-empty string".into()),
        None => return Err(field_required("model")),
    }
    if !count_only {
        match object.get("max_tokens") {
            Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
            Some(_) => return Err("max_tokens: Input should be an integer of at least 1".into()),
            None => return Err(field_required("max_tokens")),
        }
    }
    if let Some(t) = object.get("temperature")
        && !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t))
    {
        return Err("temperature: Input should be a number between 0 and 1".into());
    }
    if let Some(stream) = object.get("stream")
        && !stream.is_boolean()
    {
        return Err("stream: Input should be a valid boolean".into());
    }
    if let Some(stops) = object.get("stop_sequences") {
        let ok = stops.as_array().is_some_and(|a| {
            a.iter()
                .all(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
        });
        if !ok {
            return Err("stop_sequences: Input should be a list of non-blank strings".into());
        }
    }
    match object.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(format!("system.{i}.type: Input should be 'text'"));
                }
                check_text(block, &format!("system.{i}"))?;
            }
        }
        Some(_) => return Err("system: Input should be a string or a list of text blocks".into()),
    }
    let tool_names = validate_tools(object.get("tools"))?;
    validate_tool_choice(object.get("tool_choice"), &tool_names)?;
    validate_messages(object.get("messages"))
}

fn check_text(block: &Value, at: &str) -> Result<(), String> {
    match block.get("text").and_then(Value::as_str) {
        Some(t) if !t.trim().is_empty() => Ok(()),
        Some(_) => Err(format!("{at}: text content blocks must be non-empty")),
        None => Err(field_required(&format!("{at}.text"))),
    }
}

fn validate_tools(tools: Option<&Value>) -> Result<Vec<String>, String> {
    let Some(tools) = tools else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| "tools: Input should be a valid list".to_owned())?;
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| field_required(&format!("tools.{i}.name")))?;
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(format!(
                "tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            ));
        }
        // Server tools (web search, …) have a `type` and no schema.
        if tool
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(|t| t == "custom")
        {
            let schema = tool
                .get("input_schema")
                .ok_or_else(|| field_required(&format!("tools.{i}.input_schema")))?;
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(format!(
                    "tools.{i}.input_schema.type: Input should be 'object'"
                ));
            }
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("tools: Tool names must be unique ({name})"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn validate_tool_choice(choice: Option<&Value>, tools: &[String]) -> Result<(), String> {
    let Some(choice) = choice else {
        return Ok(());
    };
    match choice.get("type").and_then(Value::as_str) {
        Some("auto" | "none") => Ok(()),
        Some("any") if !tools.is_empty() => Ok(()),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(n) if tools.iter().any(|t| t == n) => Ok(()),
            _ => Err("tool_choice.name: the named tool is not among `tools`".into()),
        },
        Some("any") => Err("tool_choice: `any` needs tools".into()),
        _ => Err("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'".into()),
    }
}

fn validate_messages(messages: Option<&Value>) -> Result<(), String> {
    let messages = match messages {
        Some(Value::Array(m)) => m,
        Some(_) => return Err("messages: Input should be a valid list".into()),
        None => return Err(field_required("messages")),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    // The tool calls of the previous assistant turn, to be answered in this user turn.
    let mut open_calls: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        let mut results = Vec::new();
        let mut calls = Vec::new();
        match message.get("content") {
            Some(Value::String(s)) => {
                let last_assistant = role == Some("assistant") && i + 1 == messages.len();
                if s.is_empty() && !last_assistant {
                    return Err(format!(
                        "messages.{i}: text content blocks must be non-empty"
                    ));
                }
            }
            Some(Value::Array(blocks)) => {
                if blocks.is_empty() && !(role == Some("assistant") && i + 1 == messages.len()) {
                    return Err(format!(
                        "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
                    ));
                }
                for (j, block) in blocks.iter().enumerate() {
                    let at = format!("messages.{i}.content.{j}");
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => check_text(block, &at)?,
                        Some("tool_use") if role == Some("assistant") => {
                            let id = block
                                .get("id")
                                .and_then(Value::as_str)
                                .ok_or_else(|| field_required(&format!("{at}.id")))?;
                            if !block.get("input").is_some_and(Value::is_object) {
                                return Err(format!("{at}.input: Input should be an object"));
                            }
                            calls.push(id.to_owned());
                        }
                        Some("tool_result") if role == Some("user") => {
                            let id = block
                                .get("tool_use_id")
                                .and_then(Value::as_str)
                                .ok_or_else(|| field_required(&format!("{at}.tool_use_id")))?;
                            if !open_calls.iter().any(|c| c == id) {
                                return Err(format!(
                                    "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                                ));
                            }
                            if results.len() != j {
                                return Err(format!(
                                    "{at}: `tool_result` blocks must come first in the user message"
                                ));
                            }
                            results.push(id.to_owned());
                        }
                        Some("tool_use" | "tool_result") => {
                            return Err(format!(
                                "{at}.type: not allowed in a {} message",
                                role.unwrap_or("")
                            ));
                        }
                        Some(
                            "image" | "document" | "thinking" | "redacted_thinking"
                            | "search_result",
                        ) => {}
                        Some(other) => {
                            return Err(format!("{at}.type: unknown content block type {other:?}"));
                        }
                        None => return Err(field_required(&format!("{at}.type"))),
                    }
                }
            }
            Some(_) => {
                return Err(format!(
                    "messages.{i}.content: Input should be a string or a list"
                ));
            }
            None => return Err(field_required(&format!("messages.{i}.content"))),
        }
        if let Some(unanswered) = open_calls.iter().find(|c| !results.contains(c)) {
            return Err(format!(
                "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {unanswered}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
            ));
        }
        open_calls = calls;
    }
    Ok(())
}

// ---- answers ----------------------------------------------------------------------------

/// The input tokens the stand-in reports for a request: a quarter of the JSON of its
/// `system`, `messages` and `tools`, rounded up, at least 1.
pub fn input_tokens(body: &Value) -> u64 {
    let bytes: usize = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(|v| v.to_string().len())
        .sum();
    (bytes as u64).div_ceil(4).max(1)
}

/// The input the stand-in gives a call to a tool with `schema`: each property filled by
/// its type (`"sg-<name>"` for strings, or the first of an `enum`; 1 for integers, 1.5 for
/// numbers, `true`, `[]`, `{}`).
pub fn tool_input(schema: &Value) -> Value {
    let mut input = Map::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let value = if let Some(first) = property
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                first.clone()
            } else {
                match property.get("type").and_then(Value::as_str) {
                    Some("integer") => json!(1),
                    Some("number") => json!(1.5),
                    Some("boolean") => json!(true),
                    Some("array") => json!([]),
                    Some("object") => json!({}),
                    _ => json!(format!("sg-{name}")),
                }
            };
            input.insert(name.clone(), value);
        }
    }
    Value::Object(input)
}

fn uses_cache_control(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "cache_control" || uses_cache_control(v)),
        Value::Array(items) => items.iter().any(uses_cache_control),
        _ => false,
    }
}

/// The text of a user turn: its text blocks and the text of its tool results.
fn turn_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                Some("tool_result") => turn_text(b.get("content")),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

struct Answer {
    id: String,
    model: String,
    blocks: Vec<Block>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    cache_read: u64,
    output_tokens: u64,
}

impl Answer {
    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        })
    }

    fn block_json(block: &Block) -> Value {
        match block {
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        }
    }

    fn message(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks.iter().map(Self::block_json).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(self.output_tokens),
        })
    }

    /// The answer as the event stream the real API sends.
    fn events(&self) -> Vec<(&'static str, Value)> {
        let mut start = self.message();
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["stop_sequence"] = Value::Null;
        start["usage"] = self.usage(1);
        let mut events = vec![(
            "message_start",
            json!({"type": "message_start", "message": start}),
        )];
        for (index, block) in self.blocks.iter().enumerate() {
            let empty = match block {
                Block::Text(_) => json!({"type": "text", "text": ""}),
                Block::ToolUse { id, name, .. } => {
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                }
            };
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": empty}),
            ));
            if index == 0 {
                events.push(("ping", json!({"type": "ping"})));
            }
            let deltas: Vec<Value> = match block {
                Block::Text(t) => t
                    .split_inclusive(' ')
                    .map(|piece| json!({"type": "text_delta", "text": piece}))
                    .collect(),
                Block::ToolUse { input, .. } => std::iter::once(String::new())
                    .chain(pieces(&input.to_string(), JSON_PIECE))
                    .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                    .collect(),
            };
            for delta in deltas {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push((
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                "usage": self.usage(self.output_tokens),
            }),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        events
    }
}

/// `text` in pieces of at most `size` characters.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

fn answer(shared: &Shared, body: &Value) -> Answer {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let user_text = turn_text(last_user.and_then(|m| m.get("content")));
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let choice = body.get("tool_choice");
    let choice_type = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let named = |name: &str| {
        tools
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
    };
    let tool = match choice_type {
        Some("none") => None,
        Some("tool") => choice
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .and_then(named),
        Some("any") => tools
            .iter()
            .find(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| user_text.contains(n))
            })
            .or_else(|| tools.first()),
        _ => tools.iter().find(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| user_text.contains(n))
        }),
    };
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let mut answer = Answer {
        id: shared.id("msg"),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        blocks: Vec::new(),
        stop_reason: "end_turn",
        stop_sequence: None,
        input_tokens: input_tokens(body),
        cache_read: if uses_cache_control(body) {
            CACHE_READ_TOKENS
        } else {
            0
        },
        output_tokens: 0,
    };
    if let Some(tool) = tool {
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let input = tool_input(tool.get("input_schema").unwrap_or(&Value::Null));
        let text = format!("Calling {name}.");
        answer.output_tokens =
            text.split_whitespace().count() as u64 + (input.to_string().len() as u64).div_ceil(4);
        answer.blocks.push(Block::Text(text));
        answer.blocks.push(Block::ToolUse {
            id: shared.id("toolu"),
            name,
            input,
        });
        answer.stop_reason = "tool_use";
        return answer;
    }
    let echoed: String = user_text.chars().take(ECHO_MAX_CHARS).collect();
    let mut words: Vec<String> = format!("{REPLY_PREFIX}{echoed}")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if words.len() as u64 > max_tokens {
        words.truncate(usize::try_from(max_tokens).unwrap_or(usize::MAX));
        answer.stop_reason = "max_tokens";
    }
    let mut text = words.join(" ");
    let stops = body
        .get("stop_sequences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let first_stop = stops
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|s| text.find(s).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, stop)) = first_stop {
        text.truncate(at);
        answer.stop_reason = "stop_sequence";
        answer.stop_sequence = Some(stop.to_owned());
    }
    answer.output_tokens = text.split_whitespace().count() as u64;
    answer.blocks.push(Block::Text(text));
    answer
}

fn sse_response(request_id: &str, answer: &Answer) -> Response {
    let mut body = String::new();
    for (name, data) in answer.events() {
        body.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    let mut response = Response::new(Body::from(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_request_id(response, request_id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY: &str = "sk-ant-stand-in-test";

    async fn post(
        upstream: &AnthropicUpstream,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> (u16, String, String) {
        let mut r = reqwest::Client::new()
            .post(format!("{}{path}", upstream.base_url()))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body.to_string());
        if let Some(key) = key {
            r = r.header("x-api-key", key);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.text().await.unwrap())
    }

    fn events(text: &str) -> Vec<(String, Value)> {
        text.split("\n\n")
            .filter(|f| !f.trim().is_empty())
            .map(|frame| {
                let mut lines = frame.lines();
                let event = lines
                    .next()
                    .and_then(|l| l.strip_prefix("event: "))
                    .unwrap_or_else(|| panic!("no event line in {frame:?}"));
                let data = lines
                    .next()
                    .and_then(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("no data line in {frame:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], event, "{frame}");
                (event.to_owned(), data)
            })
            .collect()
    }

    fn hello(stream: bool) -> Value {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
               "messages": [{"role": "user", "content": "hello  there"}]})
    }

    #[tokio::test]
    async fn answers_with_text_and_reports_usage() {
        let upstream = AnthropicUpstream::start(KEY).await.unwrap();
        let (s, ct, body) = post(&upstream, "/v1/messages", Some(KEY), &hello(false)).await;
        assert_eq!((s, ct.as_str()), (200, "application/json"), "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert_eq!(
            v["content"][0]["text"],
            format!("{REPLY_PREFIX}hello there")
        );
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"]["output_tokens"], 6);
        assert_eq!(v["usage"]["input_tokens"], input_tokens(&hello(false)));
        assert_eq!(v["usage"]["cache_read_input_tokens"], 0);

        let (s, _, body) = post(
            &upstream,
            "/v1/messages/count_tokens",
            Some(KEY),
            &json!({"model": "m", "messages": hello(false)["messages"]}),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["input_tokens"], input_tokens(&hello(false)));

        let recorded = upstream.recorded();
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0].method, "POST");
        assert_eq!(recorded[0].path_and_query, "/v1/messages");
        assert_eq!(recorded[0].header("x-api-key").as_deref(), Some(KEY));
        let sent: Value = serde_json::from_slice(&recorded[0].body).unwrap();
        assert_eq!(sent, hello(false));
    }

    #[tokio::test]
    async fn refuses_like_the_real_api() {
        let upstream = AnthropicUpstream::start(KEY).await.unwrap();
        let (s, _, body) = post(&upstream, "/v1/messages", Some("sk-wrong"), &hello(false)).await;
        assert_eq!(s, 401);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let (s, _, _) = post(&upstream, "/v1/messages", None, &hello(false)).await;
        assert_eq!(s, 401);

        let r = reqwest::Client::new()
            .post(format!("{}/v1/messages", upstream.base_url()))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(hello(false).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("anthropic-version")
        );

        let bad = [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "n": 2, "messages": [{"role": "user", "content": "x"}]}),
                "n: Extra inputs",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]}),
                "non-empty",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}),
                "temperature",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": "no result"}]}),
                "tool_result",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "r"}]}]}),
                "tool_use_id",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "tools": [{"name": "f", "input_schema": {"type": "string"}}],
                    "messages": [{"role": "user", "content": "x"}]}),
                "input_schema.type",
            ),
        ];
        for (body, needle) in bad {
            let (s, _, answer) = post(&upstream, "/v1/messages", Some(KEY), &body).await;
            assert_eq!(s, 400, "{body}: {answer}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(needle),
                "{needle}: {answer}"
            );
        }
        let (s, _, _) = post(&upstream, "/v1/complete", Some(KEY), &hello(false)).await;
        assert_eq!(s, 404);
        // Refused requests are recorded too.
        assert_eq!(upstream.request_count(), 3 + 1 + 8);
    }

    #[tokio::test]
    async fn streams_the_real_event_sequence() {
        let upstream = AnthropicUpstream::start(KEY).await.unwrap();
        let mut body = hello(true);
        body["system"] =
            json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]);
        let (s, ct, text) = post(&upstream, "/v1/messages", Some(KEY), &body).await;
        assert_eq!(s, 200, "{text}");
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let events = events(&text);
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
        assert_eq!(
            names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let start = &events[0].1["message"];
        assert_eq!(start["usage"]["input_tokens"], input_tokens(&body));
        assert_eq!(start["usage"]["cache_read_input_tokens"], CACHE_READ_TOKENS);
        assert_eq!(start["usage"]["output_tokens"], 1);
        let text: String = events
            .iter()
            .filter(|(e, _)| e == "content_block_delta")
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, format!("{REPLY_PREFIX}hello there"));
        let deltas = events
            .iter()
            .filter(|(e, _)| e == "content_block_delta")
            .count();
        assert_eq!(deltas, 6);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 6);
    }

    #[tokio::test]
    async fn calls_a_tool_when_asked_and_streams_its_input_in_pieces() {
        let upstream = AnthropicUpstream::start(KEY).await.unwrap();
        let tools = json!([{"name": "get_weather", "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "kelvin"]}}}}]);
        let ask = |stream: bool, text: &str| {
            json!({"model": "claude-haiku-4-5", "max_tokens": 100, "stream": stream, "tools": tools,
                   "messages": [{"role": "user", "content": text}]})
        };
        let (s, _, body) = post(
            &upstream,
            "/v1/messages",
            Some(KEY),
            &ask(false, "use get_weather for Paris"),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][1]["type"], "tool_use");
        assert_eq!(v["content"][1]["name"], "get_weather");
        assert_eq!(
            v["content"][1]["input"],
            json!({"city": "sg-city", "unit": "celsius"})
        );
        assert!(
            v["content"][1]["id"]
                .as_str()
                .unwrap()
                .starts_with("toolu_")
        );

        // Without naming the tool: text.
        let (_, _, body) = post(
            &upstream,
            "/v1/messages",
            Some(KEY),
            &ask(false, "just chat"),
        )
        .await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["stop_reason"], "end_turn");

        let (s, _, text) = post(
            &upstream,
            "/v1/messages",
            Some(KEY),
            &ask(true, "use get_weather"),
        )
        .await;
        assert_eq!(s, 200);
        let events = events(&text);
        let json_pieces: Vec<&str> = events
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert!(json_pieces.len() > 3, "{json_pieces:?}");
        assert_eq!(json_pieces[0], "");
        let input: Value = serde_json::from_str(&json_pieces.concat()).unwrap();
        assert_eq!(input, json!({"city": "sg-city", "unit": "celsius"}));
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn stops_at_max_tokens_and_stop_sequences_and_lists_models() {
        let upstream = AnthropicUpstream::start(KEY).await.unwrap();
        let mut body = hello(false);
        body["max_tokens"] = json!(2);
        let (_, _, answer) = post(&upstream, "/v1/messages", Some(KEY), &body).await;
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"]["output_tokens"], 2);
        let mut body = hello(false);
        body["stop_sequences"] = json!(["there"]);
        let (_, _, answer) = post(&upstream, "/v1/messages", Some(KEY), &body).await;
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["stop_reason"], "stop_sequence");
        assert_eq!(v["stop_sequence"], "there");
        assert!(!v["content"][0]["text"].as_str().unwrap().contains("there"));

        let r = reqwest::Client::new()
            .get(format!("{}/v1/models?limit=20", upstream.base_url()))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["data"][0]["id"], MODELS[0]);
        assert_eq!(v["has_more"], false);
    }
}
