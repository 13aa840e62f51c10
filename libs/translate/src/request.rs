//! An OpenAI Chat Completions request body → an Anthropic Messages request body.
//!
//! # Top-level fields
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `model` | `model` |
//! | `max_completion_tokens`, else `max_tokens`, else [`RequestOptions::default_max_tokens`] | `max_tokens` (required by Anthropic) |
//! | `temperature` (0–1 only; OpenAI allows up to 2), `top_p`, `top_k` | the same |
//! | `stop` (string or array) | `stop_sequences` (array; whitespace-only entries refused) |
//! | `stream` | `stream` |
//! | `stream_options` | not sent: Anthropic always streams usage; the caller decides what to emit |
//! | `safety_identifier`, else `user` | `metadata.user_id`, left out when it looks like an email address or a phone number, which Anthropic refuses |
//! | `prompt_cache_key` | not sent (a hint with no Anthropic equivalent) |
//! | `tools`, `tool_choice`, `parallel_tool_calls` | `tools`, `tool_choice` (see below) |
//! | `response_format` | `output_config.format`, or a forced tool (see below) |
//! | anything else | refused, unless `null` or the OpenAI default (`n: 1`, `logprobs: false`, `frequency_penalty: 0`, `presence_penalty: 0`, `logit_bias: {}`, `metadata: {}`, `store: false`, `service_tier: "auto"`/`"default"`, `reasoning_effort: "none"`) |
//!
//! # Messages
//!
//! - `system` and `developer` messages, wherever they are, become the `system` array of
//!   text blocks, one per message or text part, in order.
//! - `user` content becomes `text`, `image` and `document` blocks. An `image_url` that is a
//!   base64 data URL becomes a base64 source (`image/jpeg|png|gif|webp`, or
//!   `application/pdf` as a document); an http(s) URL becomes a `url` source, which
//!   Anthropic fetches itself. Other schemes and media types are refused. `detail` is
//!   dropped.
//! - `assistant` content and `refusal` become text blocks, then each `tool_calls` entry a
//!   `tool_use` block whose `input` is the parsed `arguments` (blank arguments are `{}`;
//!   anything but a JSON object is refused).
//! - `tool` messages become `tool_result` blocks in a user turn; content stays a string,
//!   or becomes text and image blocks.
//! - Consecutive turns of one role are merged (tool results of one turn thus travel
//!   together), and in a user turn the `tool_result` blocks come first, as Anthropic
//!   requires. Every tool call must be answered in the next turn and every tool result
//!   must answer a call of the previous one; otherwise the request is refused.
//! - Whitespace-only text is dropped (Anthropic refuses empty text blocks), a message left
//!   without content is skipped, and the trailing whitespace of a final assistant
//!   (prefill) message is trimmed, which Anthropic also demands.
//! - Tool call ids are reduced to `[A-Za-z0-9_-]` (other characters become `_`), the same
//!   way on the call and on its result.
//! - `cache_control` on a content part, a message (its last block) or a tool is carried
//!   over, like LiteLLM does, so clients can use Anthropic prompt caching.
//!
//! # Tools
//!
//! `{"type": "function", "function": {"name", "description", "parameters", "strict"}}` →
//! `{"name", "description", "input_schema"}`. Missing parameters are
//! `{"type": "object", "properties": {}}`; a schema without a `type` gets `"object"`; any
//! other schema type, non-function tools and names outside `^[a-zA-Z0-9_-]{1,128}$` are
//! refused.
//!
//! | `tool_choice` | Anthropic |
//! |---|---|
//! | `"auto"` | `{"type": "auto"}` |
//! | `"required"` | `{"type": "any"}` |
//! | `"none"` | `{"type": "none"}` |
//! | `{"type": "function", "function": {"name": X}}` | `{"type": "tool", "name": X}` |
//!
//! `parallel_tool_calls: false` adds `"disable_parallel_tool_use": true` (to
//! `{"type": "auto"}` if no choice was given). Without tools, `"auto"` and `"none"` are
//! dropped and the other choices refused.
//!
//! # `response_format`
//!
//! - `text`: nothing.
//! - `json_schema`: Anthropic structured outputs,
//!   `output_config: {"format": {"type": "json_schema", "schema": …}}`, on models that
//!   have them. Models released before structured outputs (Claude 2 and 3, Sonnet 4,
//!   Opus 4 and 4.1) get the forced-tool fallback below instead.
//! - `json_object`: structured outputs need a schema, so always the fallback: a tool
//!   named [`crate::JSON_RESPONSE_TOOL`] taking the schema (`{"type": "object"}` for
//!   `json_object`), forced with `tool_choice`. The answer's call to it is turned back into
//!   message content with `finish_reason: "stop"` by [`crate::response`] and
//!   [`crate::stream`]. The fallback cannot be combined with the client's own tools.

use serde_json::{Map, Value, json};

use crate::{JSON_RESPONSE_TOOL, TranslateError};

type Obj = Map<String, Value>;

/// Settings of the request translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// `max_tokens` sent when the client gives neither `max_completion_tokens` nor
    /// `max_tokens` (Anthropic requires one). The caller may choose it per model.
    pub default_max_tokens: u64,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            default_max_tokens: 4096,
        }
    }
}

/// Translates an OpenAI chat completions request body into an Anthropic Messages request
/// body, or says which field cannot be translated.
pub fn chat_to_messages(request: &Value, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let req = request
        .as_object()
        .ok_or_else(|| err("", "The request body must be a JSON object."))?;
    check_fields(req)?;

    let model = match req.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.as_str(),
        _ => {
            return Err(err(
                "model",
                "`model` is required and must be a non-empty string.",
            ));
        }
    };
    let mut out = Obj::new();
    out.insert("model".into(), model.into());

    let max_completion_tokens = positive_int(req, "max_completion_tokens")?;
    let max_tokens = positive_int(req, "max_tokens")?;
    let max = max_completion_tokens
        .or(max_tokens)
        .unwrap_or(opts.default_max_tokens);
    out.insert("max_tokens".into(), max.into());

    let (system, messages) = convert_messages(req.get("messages"))?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(t) = present(req, "temperature") {
        match t.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => {
                out.insert("temperature".into(), t.clone());
            }
            Some(x) => {
                return Err(err(
                    "temperature",
                    format!(
                        "`temperature` must be between 0 and 1 for Anthropic models (OpenAI allows up to 2); got {x}."
                    ),
                ));
            }
            None => return Err(err("temperature", "`temperature` must be a number.")),
        }
    }
    if let Some(p) = present(req, "top_p") {
        match p.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => {
                out.insert("top_p".into(), p.clone());
            }
            _ => return Err(err("top_p", "`top_p` must be a number between 0 and 1.")),
        }
    }
    if let Some(k) = present(req, "top_k") {
        match k.as_u64() {
            Some(n) => {
                out.insert("top_k".into(), n.into());
            }
            None => return Err(err("top_k", "`top_k` must be a non-negative integer.")),
        }
    }

    let stops = stop_sequences(req)?;
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), stops.into());
    }

    if let Some(s) = present(req, "stream") {
        match s {
            Value::Bool(_) => {
                out.insert("stream".into(), s.clone());
            }
            _ => return Err(err("stream", "`stream` must be true or false.")),
        }
    }
    if let Some(so) = present(req, "stream_options")
        && !so.is_object()
    {
        return Err(err("stream_options", "`stream_options` must be an object."));
    }

    if let Some(user_id) = user_id(req)? {
        out.insert("metadata".into(), json!({ "user_id": user_id }));
    }

    let tools = convert_tools(req)?;
    let choice = tool_choice(req, &tools)?;
    let json_tool = response_format(req, model, &tools, &mut out)?;
    if let Some((tool, forced)) = json_tool {
        out.insert("tools".into(), json!([tool]));
        out.insert("tool_choice".into(), forced);
    } else {
        if !tools.is_empty() {
            let list: Vec<Value> = tools.into_iter().map(|t| t.block).collect();
            out.insert("tools".into(), Value::Array(list));
        }
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
    }

    Ok(Value::Object(out))
}

fn err(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::new(param, message)
}

/// A field that is there and not `null`.
fn present<'a>(obj: &'a Obj, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn set(target: &mut Value, key: &str, value: Value) {
    if let Some(obj) = target.as_object_mut() {
        obj.insert(key.into(), value);
    }
}

const SUPPORTED: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
];

/// Refuses any field outside [`SUPPORTED`] unless it is `null` or its OpenAI default.
fn check_fields(req: &Obj) -> Result<(), TranslateError> {
    // The first in name order, whatever the map's order.
    let offending = req
        .iter()
        .filter(|(key, value)| {
            !(value.is_null() || SUPPORTED.contains(&key.as_str()) || is_default(key, value))
        })
        .map(|(key, _)| key)
        .min();
    match offending {
        Some(key) => Err(err(key.as_str(), unsupported_message(key))),
        None => Ok(()),
    }
}

fn is_default(key: &str, value: &Value) -> bool {
    match key {
        "n" => value.as_f64() == Some(1.0),
        "logprobs" | "store" => value.as_bool() == Some(false),
        "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
        "logit_bias" | "metadata" => value.as_object().is_some_and(Map::is_empty),
        "service_tier" => matches!(value.as_str(), Some("auto" | "default")),
        "reasoning_effort" => value.as_str() == Some("none"),
        _ => false,
    }
}

fn unsupported_message(key: &str) -> String {
    match key {
        "n" => "Anthropic models give one choice per request: `n` must be 1.".into(),
        "logprobs" | "top_logprobs" => "Anthropic models do not return log probabilities.".into(),
        "audio" | "modalities" => "Anthropic models do not produce audio.".into(),
        "functions" | "function_call" => "The legacy `functions` and `function_call` parameters are not supported for Anthropic models; use `tools` and `tool_choice`.".into(),
        "reasoning_effort" => "`reasoning_effort` is not translated for Anthropic models; use the Messages API (`/v1/messages`) with `thinking` for extended thinking.".into(),
        "store" => "Anthropic models do not store completions: `store` must be false.".into(),
        _ => format!("`{key}` is not supported for Anthropic models; remove it."),
    }
}

fn positive_int(req: &Obj, key: &str) -> Result<Option<u64>, TranslateError> {
    let Some(v) = present(req, key) else {
        return Ok(None);
    };
    if let Some(n) = v.as_u64().filter(|n| *n >= 1) {
        return Ok(Some(n));
    }
    // Some clients send whole numbers as floats (`1024.0`).
    if let Some(f) = v.as_f64()
        && f >= 1.0
        && f.fract() == 0.0
        && f <= 1e15
    {
        return Ok(Some(f as u64));
    }
    Err(err(key, format!("`{key}` must be a positive integer.")))
}

fn stop_sequences(req: &Obj) -> Result<Vec<Value>, TranslateError> {
    let check = |s: &str, param: String| -> Result<Value, TranslateError> {
        if s.trim().is_empty() {
            Err(err(
                param,
                "Anthropic models do not accept empty or whitespace-only stop sequences.",
            ))
        } else {
            Ok(Value::from(s))
        }
    };
    match present(req, "stop") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![check(s, "stop".into())?]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_str() {
                Some(s) => check(s, format!("stop[{i}]")),
                None => Err(err(format!("stop[{i}]"), "Stop sequences must be strings.")),
            })
            .collect(),
        Some(_) => Err(err(
            "stop",
            "`stop` must be a string or an array of strings.",
        )),
    }
}

/// `safety_identifier`, else `user`, if Anthropic will take it as `metadata.user_id`.
fn user_id(req: &Obj) -> Result<Option<String>, TranslateError> {
    let mut chosen = None;
    for key in ["user", "safety_identifier"] {
        match present(req, key) {
            None => {}
            Some(Value::String(s)) => chosen = Some(s.trim()),
            Some(_) => return Err(err(key, format!("`{key}` must be a string."))),
        }
    }
    Ok(chosen.filter(|s| acceptable_user_id(s)).map(str::to_string))
}

/// Anthropic refuses a `user_id` that looks like an email address or a phone number, and
/// any longer than 256 characters. OpenAI takes them, so such an id is left out rather
/// than refused: it is a hint for abuse detection and changes no answer.
fn acceptable_user_id(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let phone = s.starts_with('+')
        && digits >= 7
        && s.chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    !s.is_empty() && s.chars().count() <= 256 && !s.contains('@') && !phone
}

// ---------------------------------------------------------------------------------------
// Messages

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// A tool call or tool result, for checking that calls and results pair up.
struct ToolRef {
    /// The id as sent upstream.
    id: String,
    /// The id as the client wrote it.
    shown: String,
    /// Where the client wrote it.
    param: String,
}

struct Turn {
    role: Role,
    blocks: Vec<Value>,
    calls: Vec<ToolRef>,
    answers: Vec<ToolRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    System,
    User,
    Assistant,
    Tool,
}

fn convert_messages(messages: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), TranslateError> {
    let Some(Value::Array(list)) = messages else {
        return Err(err(
            "messages",
            "`messages` is required and must be an array of messages.",
        ));
    };
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, msg) in list.iter().enumerate() {
        let p = format!("messages[{i}]");
        let m = msg
            .as_object()
            .ok_or_else(|| err(&p, "Each message must be an object with a `role`."))?;
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            err(
                format!("{p}.role"),
                "Each message needs a `role`: `system`, `developer`, `user`, `assistant` or `tool`.",
            )
        })?;
        let turn = match role {
            "system" | "developer" => {
                let mut blocks = content_blocks(m, &p, Speaker::System)?;
                message_cache_control(m, &p, &mut blocks)?;
                system.extend(blocks);
                continue;
            }
            "user" => Turn {
                role: Role::User,
                blocks: content_blocks(m, &p, Speaker::User)?,
                calls: Vec::new(),
                answers: Vec::new(),
            },
            "assistant" => {
                let (blocks, calls) = assistant_blocks(m, &p)?;
                Turn {
                    role: Role::Assistant,
                    blocks,
                    calls,
                    answers: Vec::new(),
                }
            }
            "tool" => {
                let (block, answer) = tool_result(m, &p)?;
                Turn {
                    role: Role::User,
                    blocks: vec![block],
                    calls: Vec::new(),
                    answers: vec![answer],
                }
            }
            "function" => {
                return Err(err(
                    format!("{p}.role"),
                    "The legacy `function` role is not supported for Anthropic models; answer `tool_calls` with `tool` messages.",
                ));
            }
            other => {
                return Err(err(
                    format!("{p}.role"),
                    format!(
                        "Unknown role `{other}`; use `system`, `developer`, `user`, `assistant` or `tool`."
                    ),
                ));
            }
        };
        let mut turn = turn;
        message_cache_control(m, &p, &mut turn.blocks)?;
        if turn.blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == turn.role => {
                last.blocks.append(&mut turn.blocks);
                last.calls.append(&mut turn.calls);
                last.answers.append(&mut turn.answers);
            }
            _ => turns.push(turn),
        }
    }

    check_tool_pairs(&turns)?;

    for turn in &mut turns {
        if turn.role == Role::User {
            // Stable: tool results first, in order, then everything else in order.
            let (mut results, rest): (Vec<Value>, Vec<Value>) = std::mem::take(&mut turn.blocks)
                .into_iter()
                .partition(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
            results.extend(rest);
            turn.blocks = results;
        }
    }
    trim_final_assistant(&mut turns);
    if turns.is_empty() {
        return Err(err(
            "messages",
            "`messages` must contain at least one user or assistant message with content.",
        ));
    }

    let messages = turns
        .into_iter()
        .map(|t| {
            let role = match t.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": t.blocks})
        })
        .collect();
    Ok((system, messages))
}

/// Every tool call is answered in the next turn; every answer answers a call of the
/// previous turn.
fn check_tool_pairs(turns: &[Turn]) -> Result<(), TranslateError> {
    for (k, turn) in turns.iter().enumerate() {
        let next = turns.get(k + 1).filter(|t| t.role == Role::User);
        for call in &turn.calls {
            let answered = next.is_some_and(|n| n.answers.iter().any(|a| a.id == call.id));
            if !answered {
                return Err(err(
                    &call.param,
                    format!(
                        "Tool call `{}` is not answered: every tool call must be answered by a `tool` message with its `tool_call_id` before the next user or assistant message.",
                        call.shown
                    ),
                ));
            }
        }
        let previous = k
            .checked_sub(1)
            .and_then(|j| turns.get(j))
            .filter(|t| t.role == Role::Assistant);
        for answer in &turn.answers {
            let known = previous.is_some_and(|p| p.calls.iter().any(|c| c.id == answer.id));
            if !known {
                return Err(err(
                    &answer.param,
                    format!(
                        "`tool_call_id` `{}` does not answer a tool call of the preceding assistant message.",
                        answer.shown
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Anthropic refuses a final assistant message (a prefill) ending in whitespace.
fn trim_final_assistant(turns: &mut Vec<Turn>) {
    let Some(last) = turns.last_mut() else {
        return;
    };
    if last.role != Role::Assistant {
        return;
    }
    while let Some(block) = last.blocks.last_mut() {
        if block.get("type").and_then(Value::as_str) != Some("text") {
            break;
        }
        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            last.blocks.pop();
            continue;
        }
        if trimmed.len() != text.len() {
            let trimmed = trimmed.to_string();
            set(block, "text", trimmed.into());
        }
        break;
    }
    if last.blocks.is_empty() {
        turns.pop();
    }
}

/// A message's content as Anthropic blocks, for the kinds of part the speaker may send.
fn content_blocks(m: &Obj, p: &str, speaker: Speaker) -> Result<Vec<Value>, TranslateError> {
    let cp = format!("{p}.content");
    match m.get("content") {
        None | Some(Value::Null) => match speaker {
            Speaker::Assistant => Ok(Vec::new()),
            _ => Err(err(cp, "`content` is required for this message.")),
        },
        Some(Value::String(s)) => Ok(text_block(s, None, &cp)?.into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{cp}[{j}]");
                let po = part.as_object().ok_or_else(|| {
                    err(&pp, "Each content part must be an object with a `type`.")
                })?;
                let kind = po.get("type").and_then(Value::as_str).ok_or_else(|| {
                    err(format!("{pp}.type"), "Each content part needs a `type`.")
                })?;
                match (kind, speaker) {
                    ("text", _) => {
                        let text = po.get("text").and_then(Value::as_str).ok_or_else(|| {
                            err(format!("{pp}.text"), "A `text` part needs a string `text`.")
                        })?;
                        blocks.extend(text_block(text, Some(po), &pp)?);
                    }
                    ("refusal", Speaker::Assistant) => {
                        let text = po.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                            err(
                                format!("{pp}.refusal"),
                                "A `refusal` part needs a string `refusal`.",
                            )
                        })?;
                        blocks.extend(text_block(text, Some(po), &pp)?);
                    }
                    ("image_url", Speaker::User | Speaker::Tool) => {
                        blocks.push(image_block(po, &pp)?);
                    }
                    (other, _) => {
                        return Err(err(
                            format!("{pp}.type"),
                            unsupported_part_message(other, speaker),
                        ));
                    }
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(err(
            cp,
            "`content` must be a string or an array of content parts.",
        )),
    }
}

fn unsupported_part_message(kind: &str, speaker: Speaker) -> String {
    match kind {
        "input_audio" => "Audio input is not supported for Anthropic models.".into(),
        "file" => "`file` parts are not supported for Anthropic models; send images and PDFs as `image_url` parts with a base64 data URL.".into(),
        "image_url" => {
            let who = match speaker {
                Speaker::System => "system",
                _ => "assistant",
            };
            format!("Images are not allowed in {who} messages, only in user and tool messages.")
        }
        other => format!("Content parts of type `{other}` are not supported here."),
    }
}

/// A text block, or nothing for blank text (Anthropic refuses empty text blocks).
fn text_block(
    text: &str,
    part: Option<&Obj>,
    param: &str,
) -> Result<Option<Value>, TranslateError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut block = json!({"type": "text", "text": text});
    if let Some(part) = part {
        copy_cache_control(part, &mut block, param)?;
    }
    Ok(Some(block))
}

fn copy_cache_control(src: &Obj, block: &mut Value, param: &str) -> Result<(), TranslateError> {
    match present(src, "cache_control") {
        None => Ok(()),
        Some(cc @ Value::Object(_)) => {
            set(block, "cache_control", cc.clone());
            Ok(())
        }
        Some(_) => Err(err(
            format!("{param}.cache_control"),
            "`cache_control` must be an object such as {\"type\": \"ephemeral\"}.",
        )),
    }
}

/// A message-level `cache_control` marks the message's last block.
fn message_cache_control(m: &Obj, p: &str, blocks: &mut [Value]) -> Result<(), TranslateError> {
    match blocks.last_mut() {
        Some(last) => copy_cache_control(m, last, p),
        // Nothing to mark, but a malformed value is still refused.
        None => copy_cache_control(m, &mut Value::Null, p),
    }
}

fn has_prefix_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|b| b.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// An `image_url` part as an image (or PDF document) block.
fn image_block(po: &Obj, pp: &str) -> Result<Value, TranslateError> {
    let p = format!("{pp}.image_url");
    let url = match po.get("image_url") {
        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
    .ok_or_else(|| {
        err(
            &p,
            "An `image_url` part needs `image_url.url`: an http(s) URL or a base64 data URL.",
        )
    })?;
    let url = url.trim();
    let mut block = if has_prefix_ci(url, "data:") {
        data_url_block(url, &p)?
    } else if has_prefix_ci(url, "https://") || has_prefix_ci(url, "http://") {
        json!({"type": "image", "source": {"type": "url", "url": url}})
    } else {
        return Err(err(
            p,
            "Image URLs must be http(s) URLs or base64 data URLs (`data:image/png;base64,…`).",
        ));
    };
    copy_cache_control(po, &mut block, pp)?;
    Ok(block)
}

/// `data:<media type>[;param…];base64,<data>` as a base64 source.
fn data_url_block(url: &str, p: &str) -> Result<Value, TranslateError> {
    let rest = url.get("data:".len()..).unwrap_or("");
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        err(
            p,
            "Malformed data URL: expected `data:<media type>;base64,<data>`.",
        )
    })?;
    let mut params = meta.split(';');
    let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
    if !params.any(|x| x.trim().eq_ignore_ascii_case("base64")) {
        return Err(err(
            p,
            "Data URLs must be base64-encoded: `data:<media type>;base64,<data>`.",
        ));
    }
    if data.trim().is_empty() {
        return Err(err(p, "The data URL holds no data."));
    }
    let media = if media == "image/jpg" {
        "image/jpeg".to_string()
    } else {
        media
    };
    match media.as_str() {
        "image/jpeg" | "image/png" | "image/gif" | "image/webp" => Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media, "data": data},
        })),
        "application/pdf" => Ok(json!({
            "type": "document",
            "source": {"type": "base64", "media_type": media, "data": data},
        })),
        other => Err(err(
            p,
            format!(
                "Unsupported media type `{other}`: Anthropic models take image/jpeg, image/png, image/gif, image/webp and application/pdf."
            ),
        )),
    }
}

/// Anthropic tool use ids must match `^[a-zA-Z0-9_-]+$`.
fn sanitize_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn assistant_blocks(m: &Obj, p: &str) -> Result<(Vec<Value>, Vec<ToolRef>), TranslateError> {
    if present(m, "function_call").is_some() {
        return Err(err(
            format!("{p}.function_call"),
            "The legacy `function_call` is not supported for Anthropic models; use `tool_calls`.",
        ));
    }
    if present(m, "audio").is_some() {
        return Err(err(
            format!("{p}.audio"),
            "Anthropic models do not take audio.",
        ));
    }
    let mut blocks = content_blocks(m, p, Speaker::Assistant)?;
    match present(m, "refusal") {
        None => {}
        Some(Value::String(r)) => blocks.extend(text_block(r, None, p)?),
        Some(_) => {
            return Err(err(format!("{p}.refusal"), "`refusal` must be a string."));
        }
    }
    let mut calls = Vec::new();
    let list = match present(m, "tool_calls") {
        None => return Ok((blocks, calls)),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(err(
                format!("{p}.tool_calls"),
                "`tool_calls` must be an array.",
            ));
        }
    };
    for (k, call) in list.iter().enumerate() {
        let cp = format!("{p}.tool_calls[{k}]");
        let c = call
            .as_object()
            .ok_or_else(|| err(&cp, "Each tool call must be an object."))?;
        if present(c, "type").is_some_and(|t| t.as_str() != Some("function")) {
            return Err(err(
                format!("{cp}.type"),
                "Only `function` tool calls are supported for Anthropic models.",
            ));
        }
        let id = c
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| err(format!("{cp}.id"), "Each tool call needs a string `id`."))?;
        let f = c
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                err(
                    format!("{cp}.function"),
                    "Each tool call needs a `function` with `name` and `arguments`.",
                )
            })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err(
                    format!("{cp}.function.name"),
                    "Each tool call needs a function `name`.",
                )
            })?;
        let ap = format!("{cp}.function.arguments");
        let input = match f.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    return Err(err(
                        ap,
                        "`arguments` must encode a JSON object: Anthropic takes tool input as an object.",
                    ));
                }
                Err(e) => {
                    return Err(err(
                        ap,
                        format!(
                            "`arguments` is not valid JSON ({e}); Anthropic takes tool input as a JSON object."
                        ),
                    ));
                }
            },
            // Some clients send the arguments already parsed.
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(err(
                    ap,
                    "`arguments` must be a string holding a JSON object.",
                ));
            }
        };
        let sid = sanitize_id(id);
        blocks.push(json!({"type": "tool_use", "id": sid, "name": name, "input": input}));
        calls.push(ToolRef {
            id: sid,
            shown: id.to_string(),
            param: cp,
        });
    }
    Ok((blocks, calls))
}

fn tool_result(m: &Obj, p: &str) -> Result<(Value, ToolRef), TranslateError> {
    let param = format!("{p}.tool_call_id");
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            err(
                &param,
                "A `tool` message needs the `tool_call_id` of the tool call it answers.",
            )
        })?;
    let sid = sanitize_id(id);
    let mut block = json!({"type": "tool_result", "tool_use_id": sid});
    match m.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.trim().is_empty() {
                set(&mut block, "content", s.as_str().into());
            }
        }
        Some(_) => {
            let blocks = content_blocks(m, p, Speaker::Tool)?;
            if !blocks.is_empty() {
                set(&mut block, "content", Value::Array(blocks));
            }
        }
    }
    Ok((
        block,
        ToolRef {
            id: sid,
            shown: id.to_string(),
            param,
        },
    ))
}

// ---------------------------------------------------------------------------------------
// Tools

struct Tool {
    name: String,
    block: Value,
}

fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn convert_tools(req: &Obj) -> Result<Vec<Tool>, TranslateError> {
    let list = match present(req, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(err("tools", "`tools` must be an array.")),
    };
    let mut tools: Vec<Tool> = Vec::new();
    for (k, tool) in list.iter().enumerate() {
        let tp = format!("tools[{k}]");
        let t = tool
            .as_object()
            .ok_or_else(|| err(&tp, "Each tool must be an object."))?;
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(err(
                format!("{tp}.type"),
                "Only `function` tools are supported for Anthropic models.",
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                err(
                    format!("{tp}.function"),
                    "A function tool needs a `function` object.",
                )
            })?;
        let np = format!("{tp}.function.name");
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&np, "A function tool needs a `name`."))?;
        if !valid_tool_name(name) {
            return Err(err(
                np,
                format!(
                    "Tool name `{name}` is not accepted by Anthropic models: use 1 to 128 letters, digits, `_` or `-`."
                ),
            ));
        }
        if name == JSON_RESPONSE_TOOL {
            return Err(err(
                np,
                format!("The tool name `{name}` is reserved; choose another."),
            ));
        }
        if tools.iter().any(|t| t.name == name) {
            return Err(err(
                np,
                format!("Tool names must be unique; `{name}` appears twice."),
            ));
        }
        let mut block = json!({"name": name});
        match present(f, "description") {
            None => {}
            Some(d @ Value::String(_)) => set(&mut block, "description", d.clone()),
            Some(_) => {
                return Err(err(
                    format!("{tp}.function.description"),
                    "`description` must be a string.",
                ));
            }
        }
        let schema = object_schema(
            present(f, "parameters"),
            &format!("{tp}.function.parameters"),
        )?;
        set(&mut block, "input_schema", schema);
        copy_cache_control(t, &mut block, &tp)?;
        tools.push(Tool {
            name: name.to_string(),
            block,
        });
    }
    Ok(tools)
}

/// A JSON Schema for an object: missing → `{"type":"object","properties":{}}`, no `type`
/// → `"object"` added, any other type refused (Anthropic tool input is an object).
fn object_schema(schema: Option<&Value>, param: &str) -> Result<Value, TranslateError> {
    match schema {
        None => Ok(json!({"type": "object", "properties": {}})),
        Some(Value::Object(o)) => match o.get("type") {
            None | Some(Value::Null) => {
                let mut o = o.clone();
                o.insert("type".into(), "object".into());
                Ok(Value::Object(o))
            }
            Some(Value::String(t)) if t == "object" => Ok(Value::Object(o.clone())),
            Some(_) => Err(err(
                param,
                "The schema must describe an object (`\"type\": \"object\"`).",
            )),
        },
        Some(_) => Err(err(param, "The schema must be a JSON Schema object.")),
    }
}

fn tool_choice(req: &Obj, tools: &[Tool]) -> Result<Option<Value>, TranslateError> {
    let has_tools = !tools.is_empty();
    let parallel = match present(req, "parallel_tool_calls") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(err(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be true or false.",
            ));
        }
    };
    let no_tools = |what: &str| {
        err(
            "tool_choice",
            format!("`tool_choice` {what} needs `tools`."),
        )
    };
    let mut choice = match present(req, "tool_choice") {
        None => (has_tools && parallel == Some(false)).then(|| json!({"type": "auto"})),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => has_tools.then(|| json!({"type": "auto"})),
            "none" => has_tools.then(|| json!({"type": "none"})),
            "required" if has_tools => Some(json!({"type": "any"})),
            "required" => return Err(no_tools("`required`")),
            other => {
                return Err(err(
                    "tool_choice",
                    format!(
                        "Unknown `tool_choice` `{other}`; use `auto`, `none`, `required` or a function."
                    ),
                ));
            }
        },
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    err(
                        "tool_choice.function.name",
                        "A function `tool_choice` needs `function.name`.",
                    )
                })?;
            if !has_tools {
                return Err(no_tools("naming a function"));
            }
            if !tools.iter().any(|t| t.name == name) {
                return Err(err(
                    "tool_choice.function.name",
                    format!("`tool_choice` names `{name}`, which is not one of `tools`."),
                ));
            }
            Some(json!({"type": "tool", "name": name}))
        }
        Some(_) => {
            return Err(err(
                "tool_choice",
                "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"function\": {\"name\": …}} for Anthropic models.",
            ));
        }
    };
    if parallel == Some(false)
        && let Some(c) = choice.as_mut()
        && c.get("type").and_then(Value::as_str) != Some("none")
    {
        set(c, "disable_parallel_tool_use", true.into());
    }
    Ok(choice)
}

// ---------------------------------------------------------------------------------------
// response_format

/// Models released before Anthropic structured outputs (a closed list: every later model
/// has them). Matched inside the name, to cover dated ids, Bedrock and Vertex names.
fn lacks_structured_outputs(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    const OLD: &[&str] = &[
        "claude-2",
        "claude-instant",
        "claude-3",
        "claude-sonnet-4-0",
        "claude-sonnet-4-2025",
        "claude-sonnet-4@",
        "claude-opus-4-0",
        "claude-opus-4-1",
        "claude-opus-4-2025",
        "claude-opus-4@",
    ];
    OLD.iter().any(|o| m.contains(o))
        || m.ends_with("claude-sonnet-4")
        || m.ends_with("claude-opus-4")
}

/// Applies `response_format`: sets `output_config` itself, or returns the forced tool and
/// its `tool_choice` for the fallback.
fn response_format(
    req: &Obj,
    model: &str,
    tools: &[Tool],
    out: &mut Obj,
) -> Result<Option<(Value, Value)>, TranslateError> {
    let Some(rf) = present(req, "response_format") else {
        return Ok(None);
    };
    let rf = rf.as_object().ok_or_else(|| {
        err(
            "response_format",
            "`response_format` must be an object with a `type`.",
        )
    })?;
    let json_object = rf.get("type").and_then(Value::as_str) == Some("json_object");
    let schema = match rf.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => json!({"type": "object"}),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    err(
                        "response_format.json_schema.schema",
                        "A `json_schema` response format needs `json_schema.schema`, a JSON Schema object.",
                    )
                })?;
            if !lacks_structured_outputs(model) {
                out.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": schema}}),
                );
                return Ok(None);
            }
            object_schema(Some(schema), "response_format.json_schema.schema")?
        }
        _ => {
            return Err(err(
                "response_format.type",
                "`response_format.type` must be `text`, `json_object` or `json_schema`.",
            ));
        }
    };
    if !tools.is_empty() {
        let message = if json_object {
            "A `json_object` response format cannot be combined with `tools` for Anthropic models; use `json_schema` (on a model with structured outputs) or drop one of them.".to_string()
        } else {
            format!(
                "`{model}` has no structured outputs, so a `json_schema` response format cannot be combined with `tools`; use a newer model or drop one of them."
            )
        };
        return Err(err("response_format", message));
    }
    let tool = json!({
        "name": JSON_RESPONSE_TOOL,
        "description": "Give your answer by calling this tool: its input is the JSON the user asked for.",
        "input_schema": schema,
    });
    let forced = json!({"type": "tool", "name": JSON_RESPONSE_TOOL});
    Ok(Some((tool, forced)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(v: Value) -> Result<Value, TranslateError> {
        chat_to_messages(&v, &RequestOptions::default())
    }

    #[test]
    fn ids_keep_only_allowed_characters() {
        assert_eq!(sanitize_id("call_a-B9"), "call_a-B9");
        assert_eq!(sanitize_id("fc.1/x:y"), "fc_1_x_y");
    }

    #[test]
    fn sanitized_ids_still_pair_calls_with_results() {
        let out = translate(json!({"model": "claude-sonnet-4-5", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "fn:1", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "fn:1", "content": "ok"}]}))
        .unwrap();
        assert_eq!(out["messages"][1]["content"][0]["id"], "fn_1");
        assert_eq!(out["messages"][2]["content"][0]["tool_use_id"], "fn_1");
    }

    #[test]
    fn old_models_lack_structured_outputs() {
        for m in [
            "claude-3-5-haiku-20241022",
            "claude-3-7-sonnet-latest",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "claude-sonnet-4-20250514",
            "claude-sonnet-4-0",
            "claude-sonnet-4@20250514",
            "claude-opus-4-1-20250805",
            "claude-opus-4",
        ] {
            assert!(lacks_structured_outputs(m), "{m}");
        }
        for m in [
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-5-20251101",
            "claude-haiku-4-5",
            "claude-sonnet-4-6",
            "claude-opus-4-7",
            "my-alias",
        ] {
            assert!(!lacks_structured_outputs(m), "{m}");
        }
    }

    #[test]
    fn user_ids_anthropic_refuses_are_left_out() {
        assert!(acceptable_user_id("user-1234"));
        assert!(acceptable_user_id("123456789"));
        assert!(!acceptable_user_id("ada@example.com"));
        assert!(!acceptable_user_id("+1 (415) 555-2671"));
        assert!(!acceptable_user_id(&"x".repeat(257)));
        assert!(!acceptable_user_id(""));
        let out = translate(json!({"model": "m", "user": "ada@example.com",
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert!(out.get("metadata").is_none());
        let out = translate(
            json!({"model": "m", "user": "u1", "safety_identifier": "h-42",
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert_eq!(out["metadata"], json!({"user_id": "h-42"}));
    }

    #[test]
    fn whole_number_floats_are_token_counts() {
        let out = translate(json!({"model": "m", "max_tokens": 512.0,
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert_eq!(out["max_tokens"], 512);
        let e = translate(json!({"model": "m", "max_tokens": 1.5,
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap_err();
        assert_eq!(e.param, "max_tokens");
    }

    #[test]
    fn defaults_and_nulls_are_no_ops() {
        let out = translate(
            json!({"model": "m", "n": 1, "logprobs": false, "seed": null,
            "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "store": false,
            "service_tier": "auto", "reasoning_effort": "none", "tools": null,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "m", "max_tokens": 4096,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
    }

    #[test]
    fn the_default_max_tokens_is_the_callers() {
        let out = chat_to_messages(
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            &RequestOptions {
                default_max_tokens: 64000,
            },
        )
        .unwrap();
        assert_eq!(out["max_tokens"], 64000);
    }

    #[test]
    fn tool_choice_without_tools() {
        let base = |choice: Value| {
            translate(json!({"model": "m", "tool_choice": choice,
                "messages": [{"role": "user", "content": "hi"}]}))
        };
        assert!(base(json!("auto")).unwrap().get("tool_choice").is_none());
        assert!(base(json!("none")).unwrap().get("tool_choice").is_none());
        assert_eq!(base(json!("required")).unwrap_err().param, "tool_choice");
    }

    #[test]
    fn tool_choice_mapping() {
        let with = |choice: Value, parallel: Value| {
            translate(
                json!({"model": "m", "tool_choice": choice, "parallel_tool_calls": parallel,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "messages": [{"role": "user", "content": "hi"}]}),
            )
            .unwrap()
            .get("tool_choice")
            .cloned()
        };
        assert_eq!(
            with(json!("auto"), Value::Null),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            with(json!("required"), Value::Null),
            Some(json!({"type": "any"}))
        );
        assert_eq!(
            with(json!("none"), json!(false)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            with(json!("required"), json!(false)),
            Some(json!({"type": "any", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            with(Value::Null, json!(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(with(Value::Null, json!(true)), None);
    }

    #[test]
    fn a_whitespace_prefill_is_dropped_and_a_real_one_trimmed() {
        let out = translate(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Sure: "}, {"type": "text", "text": "  \n"}]}]}))
        .unwrap();
        assert_eq!(
            out["messages"][1]["content"],
            json!([{"type": "text", "text": "Sure:"}])
        );
        let out = translate(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}))
        .unwrap();
        assert_eq!(out["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn image_media_types_and_schemes() {
        let part = |url: &str| {
            translate(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]}),
            )
        };
        let out = part("data:image/JPG;base64,/9j/4AAQ").unwrap();
        assert_eq!(
            out["messages"][0]["content"][0]["source"],
            json!({"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"})
        );
        let out = part("HTTPS://example.com/a.png").unwrap();
        assert_eq!(
            out["messages"][0]["content"][0]["source"]["type"],
            json!("url")
        );
        for bad in [
            "data:image/png,rawbytes",
            "data:image/png;base64,",
            "data:image/png;base64",
            "file:///etc/passwd",
            "data:text/html;base64,PGI+",
            "",
        ] {
            assert_eq!(
                part(bad).unwrap_err().param,
                "messages[0].content[0].image_url",
                "{bad}"
            );
        }
    }
}
