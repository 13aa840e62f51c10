//! Golden tests: realistic inputs under `tests/golden/`, whole outputs compared with the
//! expected files next to them, so any change of shape fails.
//!
//! Set `SG_GOLDEN_UPDATE=1` to rewrite the expected files from the current outputs (then
//! read the diff).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sg_translate::{
    NativeStreamUsage, RequestOptions, SseDecoder, StreamTranslator, Usage, chat_to_messages,
    error_to_openai, messages_to_chat, usage_from_message,
};

/// 2026-01-01T00:00:00Z.
const CREATED: u64 = 1_767_225_600;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares `actual` with the expected file, or rewrites it in update mode.
fn check(expected: &Path, actual: &Value) {
    if std::env::var_os("SG_GOLDEN_UPDATE").is_some() {
        let mut text = serde_json::to_string_pretty(actual).unwrap();
        text.push('\n');
        std::fs::write(expected, text).unwrap();
        return;
    }
    let want = read_json(expected);
    assert!(
        &want == actual,
        "{} differs.\n--- expected\n{}\n--- actual\n{}",
        expected.display(),
        serde_json::to_string_pretty(&want).unwrap(),
        serde_json::to_string_pretty(actual).unwrap()
    );
}

fn usage_json(u: Option<Usage>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => json!({
            "prompt": u.prompt,
            "cached_prompt": u.cached_prompt,
            "cache_creation": u.cache_creation,
            "completion": u.completion,
            "total": u.total,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Requests

fn request_golden(name: &str) {
    let input = read_json(&dir().join(format!("requests/{name}.openai.json")));
    let out = chat_to_messages(&input, &RequestOptions::default())
        .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
    check(&dir().join(format!("requests/{name}.anthropic.json")), &out);
}

#[test]
fn request_plain_chat() {
    request_golden("plain_chat");
}

#[test]
fn request_system_and_developer() {
    request_golden("system_developer");
}

#[test]
fn request_multi_turn_with_tools() {
    request_golden("tools_multi_turn");
}

#[test]
fn request_tool_results_come_before_text() {
    request_golden("tool_results_before_text");
}

#[test]
fn request_images() {
    request_golden("images");
}

#[test]
fn request_response_format_json_schema() {
    request_golden("response_format_json_schema");
}

#[test]
fn request_response_format_json_object() {
    request_golden("response_format_json_object");
}

#[test]
fn request_response_format_on_a_model_without_structured_outputs() {
    request_golden("response_format_legacy_model");
}

/// Every refusal names the field at fault, in OpenAI terms; the messages are golden too.
#[test]
fn refusals_name_the_right_param() {
    let cases = read_json(&dir().join("refusals.json"));
    let mut got = Vec::new();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let e = chat_to_messages(&case["request"], &RequestOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{name}: was translated"));
        assert_eq!(
            e.param,
            case["param"].as_str().unwrap(),
            "{name}: {}",
            e.message
        );
        got.push(json!({"name": name, "param": e.param, "message": e.message}));
    }
    check(&dir().join("refusals.expected.json"), &Value::Array(got));
}

// ---------------------------------------------------------------------------------------
// Responses

fn response_golden(name: &str) -> Value {
    let input = read_json(&dir().join(format!("responses/{name}.anthropic.json")));
    let out = messages_to_chat(&input, CREATED).unwrap();
    check(&dir().join(format!("responses/{name}.openai.json")), &out);
    input
}

#[test]
fn response_text() {
    response_golden("text");
}

#[test]
fn response_tool_use() {
    response_golden("tool_use");
}

#[test]
fn response_usage_with_cache_writes() {
    let input = response_golden("cache_usage");
    assert_eq!(
        usage_from_message(&input),
        Some(Usage {
            prompt: 188_107,
            cached_prompt: 0,
            cache_creation: 188_086,
            completion: 393,
            total: 188_500,
        })
    );
}

#[test]
fn response_usage_with_cache_reads() {
    let input = response_golden("cache_read");
    assert_eq!(
        usage_from_message(&input),
        Some(Usage {
            prompt: 188_241,
            cached_prompt: 188_086,
            cache_creation: 120,
            completion: 12,
            total: 188_253,
        })
    );
}

#[test]
fn response_unknown_stop_reason_and_blocks() {
    response_golden("unknown_stop_reason");
}

#[test]
fn response_refusal() {
    response_golden("refusal");
}

#[test]
fn response_json_mode() {
    response_golden("json_mode");
}

// ---------------------------------------------------------------------------------------
// Streams

/// Decodes `bytes` fed in `chunk`-sized pieces and translates the events; then `finish`.
fn run_stream(
    bytes: &[u8],
    chunk: usize,
    include_usage: bool,
) -> (Vec<String>, StreamTranslator, NativeStreamUsage) {
    let mut decoder = SseDecoder::new(1 << 20);
    let mut translator = StreamTranslator::new(CREATED, include_usage);
    let mut native = NativeStreamUsage::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        for ev in decoder.push(piece).unwrap() {
            native.push(&ev.event, &ev.data);
            frames.extend(translator.push(&ev.event, &ev.data));
        }
    }
    frames.extend(translator.finish());
    (frames, translator, native)
}

/// Frames as JSON for comparison: each frame's data, `"[DONE]"` for the end marker.
fn frames_json(frames: &[String]) -> Value {
    Value::Array(
        frames
            .iter()
            .map(|f| {
                let data = f
                    .strip_prefix("data: ")
                    .and_then(|d| d.strip_suffix("\n\n"))
                    .unwrap_or_else(|| panic!("not an SSE frame: {f:?}"));
                assert!(!data.contains('\n'), "a frame spans lines: {f:?}");
                if data == "[DONE]" {
                    Value::from("[DONE]")
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect(),
    )
}

fn is_usage_chunk(frame: &Value) -> bool {
    frame.get("usage").is_some() && frame["choices"] == json!([])
}

fn stream_golden(name: &str) -> Value {
    let bytes = std::fs::read(dir().join(format!("streams/{name}.sse"))).unwrap();
    let (frames, translator, native) = run_stream(&bytes, bytes.len(), true);
    let frames = frames_json(&frames);
    let usage = usage_json(translator.usage());
    check(
        &dir().join(format!("streams/{name}.openai.json")),
        &json!({"frames": frames, "usage": usage}),
    );
    // The native reader sees the same usage as the translator.
    assert_eq!(usage_json(native.usage()), usage, "{name}: native usage");

    // However the bytes are split, the same frames come out.
    for chunk in (1..=17).chain([64, 333]) {
        let (split, _, _) = run_stream(&bytes, chunk, true);
        assert_eq!(
            frames_json(&split),
            frames,
            "{name}: split every {chunk} bytes"
        );
    }

    // Without include_usage: the same frames but the usage chunk, and the same usage
    // for the gateway's accounting.
    let (quiet, translator, _) = run_stream(&bytes, bytes.len(), false);
    let without: Vec<Value> = frames
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !is_usage_chunk(f))
        .cloned()
        .collect();
    assert_eq!(
        frames_json(&quiet),
        Value::Array(without),
        "{name}: without usage"
    );
    assert_eq!(
        usage_json(translator.usage()),
        usage,
        "{name}: usage without chunk"
    );
    frames
}

#[test]
fn stream_text() {
    let frames = stream_golden("text");
    let frames = frames.as_array().unwrap();
    assert_eq!(frames.last().unwrap(), "[DONE]");
    assert!(is_usage_chunk(&frames[frames.len() - 2]));
}

#[test]
fn stream_tool_calls_split_across_deltas_and_odd_sse_framing() {
    let frames = stream_golden("tool_call_split");
    // The arguments of each call, put back together, are the tool input.
    let mut args = [String::new(), String::new()];
    for f in frames.as_array().unwrap() {
        for call in f["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            args[i].push_str(call["function"]["arguments"].as_str().unwrap());
        }
    }
    let first: Value = serde_json::from_str(&args[0]).unwrap();
    assert_eq!(
        first,
        json!({"location": "São Paulo, BR", "format": "celsius"})
    );
    assert_eq!(args[1], "{}");
}

#[test]
fn stream_thinking_server_tools_and_unknown_events() {
    stream_golden("thinking_and_unknown");
}

#[test]
fn stream_error_event_ends_without_done() {
    let frames = stream_golden("error_midstream");
    let last = frames.as_array().unwrap().last().unwrap();
    assert_eq!(last["error"]["type"], "overloaded_error");
    assert!(!frames.as_array().unwrap().contains(&Value::from("[DONE]")));
}

#[test]
fn stream_cut_off_upstream_ends_with_an_error_not_done() {
    let frames = stream_golden("truncated");
    let frames = frames.as_array().unwrap();
    assert!(!frames.contains(&Value::from("[DONE]")));
    assert_eq!(frames.last().unwrap()["error"]["code"], "stream_incomplete");
}

#[test]
fn stream_json_mode() {
    stream_golden("json_mode");
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn error_mappings() {
    let cases = read_json(&dir().join("errors.json"));
    let mut got = Vec::new();
    for case in cases.as_array().unwrap() {
        let status = case["status"].as_u64().unwrap() as u16;
        let (out_status, body) = error_to_openai(status, case["body"].as_str().unwrap().as_bytes());
        got.push(json!({"name": case["name"], "status": out_status, "body": body}));
    }
    check(&dir().join("errors.expected.json"), &Value::Array(got));
}
