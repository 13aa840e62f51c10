//! An Anthropic Messages answer → an OpenAI `chat.completion` object.
//!
//! - `id` and `model` are Anthropic's (`msg_…`); `created` is passed in, since Anthropic
//!   gives no timestamp.
//! - `text` blocks are concatenated with no separator (a message may hold several, e.g.
//!   around citations) into `message.content`, `null` when there is no text.
//! - Each `tool_use` block becomes a `tool_calls` entry with its `input` serialised as the
//!   `arguments` string, in order; `tool_calls` is left out when there are none. A call to
//!   [`crate::JSON_RESPONSE_TOOL`] (the JSON-mode fallback of [`crate::request`]) is
//!   instead appended to the content as JSON text.
//! - `thinking` blocks are concatenated into the non-standard `message.reasoning_content`,
//!   like LiteLLM and agentgateway do. Other blocks (images, server tool results,
//!   unknown ones) have no OpenAI equivalent and are skipped.
//! - `stop_reason` → `finish_reason`:
//!
//!   | Anthropic | OpenAI |
//!   |---|---|
//!   | `end_turn`, `stop_sequence`, `pause_turn` | `stop` |
//!   | `max_tokens`, `model_context_window_exceeded`, `compaction` | `length` |
//!   | `tool_use` | `tool_calls` (`stop` when only the JSON-mode tool was called) |
//!   | `refusal` | `content_filter` |
//!   | absent or unknown | `stop`, never a failure |
//!
//! - `usage`: `prompt_tokens = input + cache reads + cache writes`, `completion_tokens`,
//!   `total_tokens`, `prompt_tokens_details.cached_tokens = cache reads`, and the
//!   Anthropic cache counters as extra fields when either is non-zero (cache writes cost
//!   more than input). Left out if the answer has no usage.

use serde_json::{Map, Value, json};

use crate::usage::Counts;
use crate::{JSON_RESPONSE_TOOL, TranslateError};

/// Translates an Anthropic Messages answer into an OpenAI `chat.completion` object.
/// `created` is the Unix time in seconds to report. Fails only if the answer is not a
/// message (`param` then names the Anthropic field at fault).
pub fn messages_to_chat(response: &Value, created: u64) -> Result<Value, TranslateError> {
    let obj = response
        .as_object()
        .ok_or_else(|| TranslateError::new("", "The upstream answer is not a JSON object."))?;
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        return Err(TranslateError::new(
            "type",
            "The upstream answer is an error, not a message.",
        ));
    }
    let content = obj
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            TranslateError::new("content", "The upstream answer has no `content` array.")
        })?;

    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for (i, block) in content.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = block.get("text").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("content[{i}].text"), "A text block has no text.")
                })?;
                text.push_str(t);
            }
            Some("thinking") => {
                if let Some(t) = block.get("thinking").and_then(Value::as_str) {
                    reasoning.push_str(t);
                }
            }
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(
                        format!("content[{i}].name"),
                        "A tool_use block has no name.",
                    )
                })?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if name == JSON_RESPONSE_TOOL {
                    text.push_str(&input.to_string());
                    continue;
                }
                let id = block.get("id").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::new(format!("content[{i}].id"), "A tool_use block has no id.")
                })?;
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            _ => {}
        }
    }

    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    let has_tool_calls = !tool_calls.is_empty();
    if has_tool_calls {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
    }

    let stop_reason = obj.get("stop_reason").and_then(Value::as_str);
    let mut out = json!({
        "id": obj.get("id").and_then(Value::as_str).unwrap_or(""),
        "object": "chat.completion",
        "created": created,
        "model": obj.get("model").and_then(Value::as_str).unwrap_or(""),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(stop_reason, has_tool_calls),
        }],
    });
    if let Some(usage) = obj.get("usage") {
        let mut counts = Counts::default();
        if counts.update(usage)
            && let Some(o) = out.as_object_mut()
        {
            o.insert("usage".into(), counts.openai_json());
        }
    }
    Ok(out)
}

/// The OpenAI `finish_reason` for an Anthropic `stop_reason`. `tool_use` without a call
/// the client sees (only the JSON-mode tool) is an ordinary `stop`.
pub(crate) fn finish_reason(stop_reason: Option<&str>, client_tool_calls: bool) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded" | "compaction") => "length",
        Some("tool_use") if client_tool_calls => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, tool_use for the JSON-mode tool, and any
        // stop reason added after this was written.
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason(Some("end_turn"), false), "stop");
        assert_eq!(finish_reason(Some("stop_sequence"), false), "stop");
        assert_eq!(finish_reason(Some("pause_turn"), false), "stop");
        assert_eq!(finish_reason(Some("max_tokens"), false), "length");
        assert_eq!(
            finish_reason(Some("model_context_window_exceeded"), false),
            "length"
        );
        assert_eq!(finish_reason(Some("tool_use"), true), "tool_calls");
        assert_eq!(finish_reason(Some("tool_use"), false), "stop");
        assert_eq!(finish_reason(Some("refusal"), false), "content_filter");
        assert_eq!(finish_reason(Some("brand_new_reason"), false), "stop");
        assert_eq!(finish_reason(None, false), "stop");
    }

    #[test]
    fn not_a_message() {
        assert_eq!(messages_to_chat(&json!([]), 0).unwrap_err().param, "");
        assert_eq!(
            messages_to_chat(&json!({"type": "error", "error": {}}), 0)
                .unwrap_err()
                .param,
            "type"
        );
        assert_eq!(
            messages_to_chat(&json!({"type": "message"}), 0)
                .unwrap_err()
                .param,
            "content"
        );
    }

    #[test]
    fn no_usage_no_usage_field() {
        let out = messages_to_chat(
            &json!({"id": "msg_1", "model": "m", "content": [], "stop_reason": "end_turn"}),
            7,
        )
        .unwrap();
        assert!(out.get("usage").is_none());
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
    }
}
