//! Property tests: no input makes the translators panic, and what they emit keeps its
//! shape whatever comes in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sg_translate::{
    NativeStreamUsage, RequestOptions, SseDecoder, StreamTranslator, chat_to_messages,
    error_to_openai, messages_to_chat, usage_from_message,
};

/// Any JSON value, a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Object keys: mostly ones the translators look at.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "index",
            "text",
            "delta",
            "content_block",
            "message",
            "usage",
            "id",
            "model",
            "name",
            "input",
            "partial_json",
            "stop_reason",
            "error",
            "message",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "thinking",
            "content",
            "role",
        ])
        .prop_map(str::to_string),
        "[a-z_]{0,8}",
    ]
}

fn arb_block_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "tool_use", "tool_use", "tool_use", "text", "text", "sg_json_response", "thinking",
            "server_tool_use",
        ])
        .prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn arb_delta_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "text_delta", "input_json_delta", "input_json_delta", "thinking_delta",
            "signature_delta",
        ])
        .prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn arb_index() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u64..4).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn arb_usage() -> impl Strategy<Value = Value> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| json!({
            "input_tokens": a, "output_tokens": b,
            "cache_read_input_tokens": c, "cache_creation_input_tokens": d})),
        (0u64..1000).prop_map(|n| json!({"output_tokens": n})),
        arb_json(),
    ]
}

/// Anthropic-looking events with arbitrary fields in them.
fn arb_event_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => (arb_json(), arb_json(), arb_usage()).prop_map(|(id, model, usage)| json!({
            "type": "message_start", "message": {"id": id, "model": model, "usage": usage}})),
        3 => (arb_index(), arb_block_type(), arb_json(), arb_json()).prop_map(|(i, t, id, name)| json!({
            "type": "content_block_start", "index": i,
            "content_block": {"type": t, "id": id, "name": name, "input": {}}})),
        4 => (arb_index(), arb_delta_type(), ".{0,10}").prop_map(|(i, t, s)| json!({
            "type": "content_block_delta", "index": i,
            "delta": {"type": t, "text": s, "partial_json": s, "thinking": s}})),
        2 => arb_index().prop_map(|i| json!({"type": "content_block_stop", "index": i})),
        1 => (arb_json(), arb_usage()).prop_map(|(r, u)| json!({
            "type": "message_delta", "delta": {"stop_reason": r}, "usage": u})),
        1 => Just(json!({"type": "message_stop"})),
        1 => Just(json!({"type": "ping"})),
        1 => arb_json().prop_map(|e| json!({"type": "error", "error": e})),
        1 => arb_json(),
    ]
}

fn arb_event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
        ])
        .prop_map(str::to_string),
        ".{0,12}",
    ]
}

fn arb_data() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => arb_event_json().prop_map(|v| v.to_string()),
        1 => ".{0,40}",
        // A JSON event cut short, as a bad upstream might send it.
        1 => (arb_event_json(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let s = v.to_string();
            let cut = at.index(s.len() + 1);
            s.char_indices().map(|(i, _)| i).take_while(|i| *i <= cut).last().map_or(String::new(), |i| s[..i].to_string())
        }),
    ]
}

fn parse_frame(frame: &str) -> Option<Value> {
    let data = frame.strip_prefix("data: ")?.strip_suffix("\n\n")?;
    if data.contains('\n') {
        return None;
    }
    if data == "[DONE]" {
        return Some(Value::from("[DONE]"));
    }
    serde_json::from_str(data).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any events: no panic; every frame is one well-formed SSE data line; nothing
    /// follows `[DONE]` or an error; tool call indexes count tool calls from 0.
    #[test]
    fn stream_translator_never_panics(
        events in prop::collection::vec((arb_event_name(), arb_data()), 0..24),
        include_usage in any::<bool>(),
        created in any::<u64>(),
    ) {
        let mut t = StreamTranslator::new(created, include_usage);
        let mut native = NativeStreamUsage::new();
        let mut frames = Vec::new();
        for (event, data) in &events {
            frames.extend(t.push(event, data));
            native.push(event, data);
        }
        frames.extend(t.finish());
        prop_assert!(t.finish().is_empty());
        let _ = t.usage();
        let _ = native.usage();

        let mut ended = false;
        let mut tool_starts = 0u64;
        for f in &frames {
            prop_assert!(!ended, "a frame after the end: {:?}", f);
            let v = parse_frame(f);
            prop_assert!(v.is_some(), "malformed frame {:?}", f);
            let v = v.unwrap();
            if v == "[DONE]" || v.get("error").is_some() {
                ended = true;
                continue;
            }
            prop_assert_eq!(&v["object"], "chat.completion.chunk");
            prop_assert_eq!(&v["created"], &json!(created));
            for call in v["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap();
                if call.get("id").is_some() {
                    prop_assert_eq!(i, tool_starts);
                    tool_starts += 1;
                } else {
                    prop_assert!(i < tool_starts);
                }
            }
        }
        prop_assert!(ended, "the stream must end with [DONE] or an error");
    }

    /// Any events: no panic.
    #[test]
    fn native_stream_usage_never_panics(
        events in prop::collection::vec((arb_event_name(), arb_data()), 0..24),
    ) {
        let mut u = NativeStreamUsage::new();
        for (event, data) in &events {
            u.push(event, data);
        }
        if let Some(usage) = u.usage() {
            prop_assert!(usage.total >= usage.prompt && usage.prompt >= usage.cached_prompt);
        }
    }

    /// However the bytes are split, the decoder yields the same events, and any bytes
    /// are safe.
    #[test]
    fn sse_decoder_is_split_independent(
        chunks in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..24),
                "(event: [a-z_]{0,6}\r?\n|data: .{0,8}\r?\n|: c\n|\r\n|\n|\r)*".prop_map(String::into_bytes),
            ],
            0..8,
        ),
    ) {
        let all: Vec<u8> = chunks.concat();
        let whole = SseDecoder::new(1 << 16).push(&all).unwrap();
        let mut d = SseDecoder::new(1 << 16);
        let mut split = Vec::new();
        for c in &chunks {
            split.extend(d.push(c).unwrap());
        }
        prop_assert_eq!(whole, split);
    }

    /// Any JSON: the response reader and the error mapper never panic.
    #[test]
    fn response_and_error_never_panic(v in arb_json(), status in any::<u16>(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = messages_to_chat(&v, 0);
        let _ = messages_to_chat(&json!({"content": [v.clone()], "usage": v.clone(), "stop_reason": v.clone()}), 0);
        let _ = usage_from_message(&v);
        for body in [v.to_string().into_bytes(), bytes] {
            let (_, out) = error_to_openai(status, &body);
            prop_assert!(out["error"]["message"].is_string());
            prop_assert!(out["error"]["type"].is_string());
        }
    }

    /// Requests shaped like chat requests with arbitrary values inside: no panic, and an
    /// accepted one is a well-formed Anthropic request.
    #[test]
    fn request_translation_never_panics(
        messages in prop::collection::vec(arb_message(), 0..6),
        extra in prop::collection::vec((arb_request_key(), arb_json()), 0..2),
        tools in prop::option::weighted(0.3, prop::collection::vec(arb_tool(), 0..3)),
    ) {
        let mut req = Map::new();
        req.insert("model".into(), "claude-sonnet-4-5".into());
        req.insert("messages".into(), Value::Array(messages));
        if let Some(tools) = tools {
            req.insert("tools".into(), Value::Array(tools));
        }
        for (k, v) in extra {
            req.insert(k, v);
        }
        if let Ok(out) = chat_to_messages(&Value::Object(req), &RequestOptions::default()) {
            assert_well_formed(&out)?;
        }
    }
}

/// Checks what every accepted request must be: alternating roles starting anywhere,
/// no empty turn, no blank text, tool results first in their turn.
fn assert_well_formed(out: &Value) -> Result<(), TestCaseError> {
    let msgs = out["messages"].as_array().unwrap();
    prop_assert!(!msgs.is_empty());
    for pair in msgs.windows(2) {
        prop_assert_ne!(&pair[0]["role"], &pair[1]["role"]);
    }
    for m in msgs {
        let blocks = m["content"].as_array().unwrap();
        prop_assert!(!blocks.is_empty());
        let mut seen_other = false;
        for b in blocks {
            if b["type"] == "text" {
                prop_assert!(!b["text"].as_str().unwrap().trim().is_empty());
            }
            if b["type"] == "tool_result" {
                prop_assert!(!seen_other, "tool_result after other content");
            } else {
                seen_other = true;
            }
        }
    }
    if let Some(last) = msgs.last()
        && last["role"] == "assistant"
        && let Some(text) = last["content"].as_array().unwrap().last().unwrap()["text"].as_str()
    {
        prop_assert_eq!(text, text.trim_end());
    }
    prop_assert!(out["max_tokens"].as_u64().unwrap() >= 1);
    Ok(())
}

/// One step of a valid conversation: (kind, text, number of tool calls).
fn arb_step() -> impl Strategy<Value = (u8, String, usize)> {
    (
        0u8..5,
        prop_oneof![3 => "[a-z ]{1,10}", 1 => Just(String::new()), 1 => Just("  \n".to_string())],
        0usize..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Valid conversations (system messages anywhere, blank text, parallel tool calls
    /// answered by tool messages) are always accepted, and well-formed.
    #[test]
    fn valid_conversations_are_accepted(steps in prop::collection::vec(arb_step(), 0..10)) {
        let mut messages = vec![json!({"role": "user", "content": "Hello"})];
        let mut next_id = 0;
        let mut calls_made = 0;
        for (kind, text, n_calls) in steps {
            match kind {
                0 => messages.push(json!({"role": "system", "content": text})),
                1 => messages.push(json!({"role": "user", "content": text})),
                2 => messages.push(json!({"role": "user", "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]})),
                3 => messages.push(json!({"role": "developer", "content": [{"type": "text", "text": text}]})),
                _ => {
                    let ids: Vec<String> = (0..n_calls).map(|_| { next_id += 1; format!("call_{next_id}") }).collect();
                    let calls: Vec<Value> = ids.iter().map(|id| json!({"id": id, "type": "function",
                        "function": {"name": "f", "arguments": if next_id % 2 == 0 { "" } else { "{\"a\": 1}" }}})).collect();
                    let mut m = json!({"role": "assistant", "content": text});
                    if !calls.is_empty() {
                        m["tool_calls"] = Value::Array(calls);
                    }
                    messages.push(m);
                    for id in &ids {
                        messages.push(json!({"role": "tool", "tool_call_id": id, "content": "ok"}));
                    }
                    calls_made += ids.len();
                }
            }
        }
        let req = json!({"model": "claude-sonnet-4-5", "messages": messages,
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        let out = chat_to_messages(&req, &RequestOptions::default());
        prop_assert!(out.is_ok(), "refused: {:?}", out);
        let out = out.unwrap();
        assert_well_formed(&out)?;
        let count = |t: &str| out["messages"].as_array().unwrap().iter()
            .flat_map(|m| m["content"].as_array().unwrap().iter())
            .filter(|b| b["type"] == t).count();
        prop_assert_eq!(count("tool_use"), calls_made);
        prop_assert_eq!(count("tool_result"), calls_made);
    }
}

fn arb_request_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "user",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "n",
        "logprobs",
        "stream_options",
        "metadata",
    ])
    .prop_map(str::to_string)
}

fn arb_content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        4 => ".{0,8}".prop_map(|t| json!({"type": "text", "text": t})),
        2 => prop::sample::select(vec![
            "https://example.com/a.png", "data:image/png;base64,iVBO", "data:image/png,x",
            "ftp://x", "data:application/pdf;base64,JVBE", "",
        ])
        .prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
        1 => ".{0,8}".prop_map(|t| json!({"type": "refusal", "refusal": t})),
        1 => arb_json(),
    ];
    prop_oneof![
        8 => ".{0,12}".prop_map(Value::from),
        4 => prop::collection::vec(part, 0..3).prop_map(Value::Array),
        1 => Just(Value::Null),
        1 => arb_json(),
    ]
}

fn arb_message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        12 => prop::sample::select(vec!["system", "developer", "user", "assistant", "tool"])
            .prop_map(Value::from),
        1 => arb_json(),
    ];
    let id = prop::sample::select(vec!["call_1", "call_2", "c:3"]);
    let args = prop_oneof![
        Just("{}".to_string()),
        Just(String::new()),
        Just("{\"a\":1}".to_string()),
        ".{0,6}",
    ];
    let call = (id.clone(), args).prop_map(
        |(id, a)| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": a}}),
    );
    (
        role,
        arb_content(),
        prop::option::weighted(0.3, prop::collection::vec(call, 0..3)),
        prop::option::of(id),
    )
        .prop_map(|(role, content, calls, id)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(o) = m.as_object_mut() {
                if let Some(calls) = calls {
                    o.insert("tool_calls".into(), Value::Array(calls));
                }
                if let Some(id) = id {
                    o.insert("tool_call_id".into(), id.into());
                }
            }
            m
        })
}

fn arb_tool() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(vec!["f", "g", "bad.name", ""]).prop_map(|n| json!({
            "type": "function", "function": {"name": n, "parameters": {"type": "object"}}})),
        1 => arb_json(),
    ]
}
