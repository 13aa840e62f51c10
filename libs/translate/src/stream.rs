//! Anthropic streaming events → OpenAI `chat.completion.chunk` server-sent events.
//!
//! The caller decodes the upstream SSE (e.g. with [`crate::SseDecoder`]) and hands each
//! event's name and data to [`StreamTranslator::push`], which returns complete frames to
//! send (`"data: {json}\n\n"`). Events are dispatched on the `type` inside their data,
//! the SSE event name serving only when the data has none.
//!
//! Every chunk is
//! `{"id", "object": "chat.completion.chunk", "created", "model", "system_fingerprint": null,
//!   "choices": [{"index": 0, "delta": {…}, "logprobs": null, "finish_reason": …}]}`
//! with the `id` and `model` of `message_start` and the `created` given to
//! [`StreamTranslator::new`].
//!
//! | Anthropic event | Emitted |
//! |---|---|
//! | `message_start` | the role chunk, `delta: {"role": "assistant", "content": ""}` (as OpenAI does); input and cache usage recorded |
//! | `content_block_start` `tool_use` | `delta.tool_calls[{index, id, type: "function", function: {name, arguments: ""}}]`; `index` counts tool blocks from 0 (it is not the Anthropic block index) |
//! | `content_block_delta` `text_delta` | `delta.content` |
//! | `content_block_delta` `input_json_delta` | `delta.tool_calls[{index, function: {arguments: partial_json}}]` (empty fragments skipped) |
//! | `content_block_delta` `thinking_delta` | `delta.reasoning_content` (non-standard, like LiteLLM and agentgateway do) |
//! | `content_block_stop` of a tool that streamed no arguments | `arguments: "{}"` (tools without parameters) |
//! | `message_delta` with a `stop_reason` | the finish chunk, `delta: {}` and the mapped `finish_reason` (see [`crate::response`]); its cumulative usage replaces the one held |
//! | `message_stop` | the usage chunk (`choices: []`) if usage was asked for, then `data: [DONE]` |
//! | `error` | `data: {"error": {"message", "type", "param": null, "code"}}` (see [`crate::error`]), and no `[DONE]`, so the client can tell it from a normal end |
//! | `ping`, unknown events, deltas and blocks | nothing |
//!
//! A call to the JSON-mode tool ([`crate::JSON_RESPONSE_TOOL`]) is streamed as content
//! instead, and ends with `finish_reason: "stop"`.
//!
//! The usage chunk is sent only when the client asked for it
//! (`stream_options.include_usage`), but [`StreamTranslator::usage`] always has it, for
//! the gateway's own accounting: input and cache tokens of `message_start`, replaced by
//! any a `message_delta` carries, and the last cumulative `output_tokens`.
//!
//! Data that is not JSON ends the stream with an error chunk: part of the answer would be
//! lost otherwise. After `message_stop` or an error, further events are ignored. An
//! upstream that ends before `message_stop` is answered by [`StreamTranslator::finish`]
//! with an error chunk, never with `[DONE]`.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::JSON_RESPONSE_TOOL;
use crate::error::{described_error, openai_error};
use crate::response::finish_reason;
use crate::usage::{Counts, Usage};

/// The frame that ends a successful stream.
const DONE: &str = "data: [DONE]\n\n";

/// What an Anthropic content block streams into.
#[derive(Debug)]
enum Block {
    /// A client tool call: its OpenAI `index`, whether arguments were sent, and the
    /// `input` of the start event if it was not empty.
    Tool {
        index: u64,
        sent_arguments: bool,
        start_input: Option<String>,
    },
    /// The JSON-mode tool: its arguments are the answer's content.
    Json { sent: bool },
    /// Text, thinking, anything else: its deltas carry their own kind.
    Other,
}

/// Translates one Anthropic stream into OpenAI chunks. See the [module docs](self).
#[derive(Debug)]
pub struct StreamTranslator {
    created: u64,
    include_usage: bool,
    id: String,
    model: String,
    role_sent: bool,
    blocks: HashMap<u64, Block>,
    next_tool_index: u64,
    client_tool_calls: bool,
    finish_sent: bool,
    counts: Counts,
    usage_seen: bool,
    done: bool,
}

impl StreamTranslator {
    /// `created`: the Unix time (seconds) reported in every chunk. `include_usage`: whether
    /// the client asked for the usage chunk (`stream_options.include_usage`).
    pub fn new(created: u64, include_usage: bool) -> Self {
        StreamTranslator {
            created,
            include_usage,
            id: String::new(),
            model: String::new(),
            role_sent: false,
            blocks: HashMap::new(),
            next_tool_index: 0,
            client_tool_calls: false,
            finish_sent: false,
            counts: Counts::default(),
            usage_seen: false,
            done: false,
        }
    }

    /// Takes one upstream event (`event` is the SSE event name, possibly empty; `data` its
    /// data) and returns the frames to send, in order.
    pub fn push(&mut self, event: &str, data: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let data = data.trim();
        if data.is_empty() {
            return out;
        }
        let parsed: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) if event == "ping" => return out,
            Err(_) => {
                self.fail(
                    &mut out,
                    openai_error(
                        "The upstream provider sent a stream event that is not valid JSON.",
                        "api_error",
                    ),
                );
                return out;
            }
        };
        let kind = parsed.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => self.message_start(&parsed, &mut out),
            "content_block_start" => self.block_start(&parsed, &mut out),
            "content_block_delta" => self.block_delta(&parsed, &mut out),
            "content_block_stop" => self.block_stop(&parsed, &mut out),
            "message_delta" => self.message_delta(&parsed, &mut out),
            "message_stop" => self.message_stop(&mut out),
            "error" => {
                let body = parsed
                    .get("error")
                    .and_then(|e| described_error(e, 500))
                    .unwrap_or_else(|| {
                        openai_error(
                            "The upstream provider reported an error during the stream.",
                            "api_error",
                        )
                    });
                self.fail(&mut out, body);
            }
            // ping, and events added after this was written
            _ => {}
        }
        out
    }

    /// Call when the upstream stream ends. If it ended before `message_stop` (or an
    /// error), returns an error chunk; the stream must then close without `[DONE]`.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.done {
            let mut body = openai_error(
                "The upstream provider ended the stream before the answer was complete.",
                "api_error",
            );
            if let Some(e) = body.get_mut("error").and_then(Value::as_object_mut) {
                e.insert("code".into(), "stream_incomplete".into());
            }
            self.fail(&mut out, body);
        }
        out
    }

    /// The usage reported so far, in OpenAI terms; `None` until the upstream reported any.
    /// Available whether or not the usage chunk is sent, and after an incomplete stream.
    pub fn usage(&self) -> Option<Usage> {
        self.usage_seen.then(|| self.counts.usage())
    }

    fn fail(&mut self, out: &mut Vec<String>, body: Value) {
        out.push(frame(&body));
        self.done = true;
    }

    /// A chunk with one choice; the role chunk goes first if it has not gone yet.
    fn emit(&mut self, out: &mut Vec<String>, delta: Value, finish: Option<&str>) {
        if !self.role_sent {
            self.role_sent = true;
            let role = self.chunk(json!({"role": "assistant", "content": ""}), None);
            out.push(frame(&role));
        }
        let chunk = self.chunk(delta, finish);
        out.push(frame(&chunk));
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    fn message_start(&mut self, parsed: &Value, out: &mut Vec<String>) {
        let Some(message) = parsed.get("message") else {
            return;
        };
        if let Some(id) = message.get("id").and_then(Value::as_str) {
            self.id = id.to_string();
        }
        if let Some(model) = message.get("model").and_then(Value::as_str) {
            self.model = model.to_string();
        }
        if let Some(usage) = message.get("usage") {
            self.usage_seen |= self.counts.update(usage);
        }
        if !self.role_sent {
            self.role_sent = true;
            let role = self.chunk(json!({"role": "assistant", "content": ""}), None);
            out.push(frame(&role));
        }
    }

    fn block_start(&mut self, parsed: &Value, out: &mut Vec<String>) {
        let Some(index) = parsed.get("index").and_then(Value::as_u64) else {
            return;
        };
        let Some(block) = parsed.get("content_block") else {
            return;
        };
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                if name == JSON_RESPONSE_TOOL {
                    self.blocks.insert(index, Block::Json { sent: false });
                    return;
                }
                let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                let tool_index = self.next_tool_index;
                self.next_tool_index = self.next_tool_index.saturating_add(1);
                self.client_tool_calls = true;
                // The start event's `input` is `{}`; streamed arguments must not follow it.
                let start_input = block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    .map(Value::to_string);
                self.blocks.insert(
                    index,
                    Block::Tool {
                        index: tool_index,
                        sent_arguments: false,
                        start_input,
                    },
                );
                self.emit(
                    out,
                    json!({"tool_calls": [{"index": tool_index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                );
            }
            Some("text") => {
                self.blocks.insert(index, Block::Other);
                if let Some(t) = block.get("text").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    self.emit(out, json!({"content": t}), None);
                }
            }
            _ => {
                self.blocks.insert(index, Block::Other);
            }
        }
    }

    fn block_delta(&mut self, parsed: &Value, out: &mut Vec<String>) {
        let Some(delta) = parsed.get("delta") else {
            return;
        };
        let index = parsed.get("index").and_then(Value::as_u64);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                if let Some(t) = delta.get("text").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    self.emit(out, json!({"content": t}), None);
                }
            }
            Some("thinking_delta") => {
                if let Some(t) = delta.get("thinking").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    self.emit(out, json!({"reasoning_content": t}), None);
                }
            }
            Some("input_json_delta") => {
                let Some(part) = delta.get("partial_json").and_then(Value::as_str) else {
                    return;
                };
                if part.is_empty() {
                    return;
                }
                let target = index.and_then(|i| self.blocks.get_mut(&i));
                let chunk = match target {
                    Some(Block::Tool {
                        index,
                        sent_arguments,
                        ..
                    }) => {
                        *sent_arguments = true;
                        json!({"tool_calls": [{"index": *index, "function": {"arguments": part}}]})
                    }
                    Some(Block::Json { sent }) => {
                        *sent = true;
                        json!({"content": part})
                    }
                    // Server tool results and unknown blocks also carry JSON deltas.
                    _ => return,
                };
                self.emit(out, chunk, None);
            }
            _ => {}
        }
    }

    fn block_stop(&mut self, parsed: &Value, out: &mut Vec<String>) {
        let Some(index) = parsed.get("index").and_then(Value::as_u64) else {
            return;
        };
        match self.blocks.remove(&index) {
            Some(Block::Tool {
                index,
                sent_arguments: false,
                start_input,
            }) => {
                let arguments = start_input.unwrap_or_else(|| "{}".to_string());
                self.emit(
                    out,
                    json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
                    None,
                );
            }
            Some(Block::Json { sent: false }) => self.emit(out, json!({"content": "{}"}), None),
            _ => {}
        }
    }

    fn message_delta(&mut self, parsed: &Value, out: &mut Vec<String>) {
        if let Some(usage) = parsed.get("usage") {
            self.usage_seen |= self.counts.update(usage);
        }
        let stop = parsed
            .get("delta")
            .and_then(|d| d.get("stop_reason"))
            .and_then(Value::as_str);
        if let Some(stop) = stop
            && !self.finish_sent
        {
            self.finish_sent = true;
            let reason = finish_reason(Some(stop), self.client_tool_calls);
            self.emit(out, json!({}), Some(reason));
        }
    }

    fn message_stop(&mut self, out: &mut Vec<String>) {
        if !self.finish_sent {
            self.finish_sent = true;
            let reason = finish_reason(None, self.client_tool_calls);
            self.emit(out, json!({}), Some(reason));
        }
        if self.include_usage && self.usage_seen {
            let mut chunk = self.chunk(Value::Null, None);
            if let Some(o) = chunk.as_object_mut() {
                o.insert("choices".into(), json!([]));
                o.insert("usage".into(), self.counts.openai_json());
            }
            out.push(frame(&chunk));
        }
        out.push(DONE.to_string());
        self.done = true;
    }
}

fn frame(value: &Value) -> String {
    format!("data: {value}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(frame: &str) -> Value {
        serde_json::from_str(
            frame
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn deltas_before_message_start_still_get_a_role_chunk_first() {
        let mut t = StreamTranslator::new(1, false);
        let out = t.push(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(data(&out[0])["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(data(&out[1])["choices"][0]["delta"]["content"], "hi");
    }

    #[test]
    fn the_event_name_serves_when_the_data_has_no_type() {
        let mut t = StreamTranslator::new(1, false);
        let out = t.push("message_start", r#"{"message":{"id":"msg_1","model":"m"}}"#);
        assert_eq!(data(&out[0])["id"], "msg_1");
    }

    #[test]
    fn non_json_data_is_an_error_and_the_end() {
        let mut t = StreamTranslator::new(1, true);
        let out = t.push("content_block_delta", "{\"type\":\"content_bl");
        assert_eq!(out.len(), 1);
        assert_eq!(data(&out[0])["error"]["type"], "api_error");
        assert!(
            t.push("message_stop", r#"{"type":"message_stop"}"#)
                .is_empty()
        );
        assert!(t.finish().is_empty());
    }

    #[test]
    fn a_bad_ping_is_still_a_ping() {
        let mut t = StreamTranslator::new(1, true);
        assert!(t.push("ping", "not json").is_empty());
        assert!(t.push("", "").is_empty());
    }

    #[test]
    fn message_stop_without_message_delta_still_finishes() {
        let mut t = StreamTranslator::new(1, true);
        let out = t.push("message_stop", r#"{"type":"message_stop"}"#);
        assert_eq!(out.len(), 3);
        assert_eq!(data(&out[1])["choices"][0]["finish_reason"], "stop");
        assert_eq!(out[2], DONE);
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn a_tool_whose_start_carries_input_sends_it_when_nothing_streams() {
        let mut t = StreamTranslator::new(1, false);
        t.push(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{"a":1}}}"#,
        );
        let out = t.push(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        );
        assert_eq!(
            data(&out[0])["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
    }
}
