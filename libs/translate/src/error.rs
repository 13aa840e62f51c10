//! Anthropic errors in the OpenAI error shape.
//!
//! Anthropic answers errors as
//! `{"type": "error", "error": {"type": "invalid_request_error", "message": "…"}, "request_id": "req_…"}`
//! with these statuses and types: 400 `invalid_request_error`, 401 `authentication_error`,
//! 402 `billing_error`, 403 `permission_error`, 404 `not_found_error`, 409
//! `conflict_error`, 413 `request_too_large`, 429 `rate_limit_error`, 500 `api_error`,
//! 529 `overloaded_error`.
//!
//! The OpenAI shape is `{"error": {"message", "type", "param", "code"}}`:
//!
//! - `message` and `type` are Anthropic's; `param` is `null`.
//! - `code` repeats the type, except that a message saying `prompt is too long` gets
//!   `context_length_exceeded`, the code OpenAI clients look for to trim their history.
//! - The status is kept, except 529 (overloaded), which is not an HTTP status OpenAI
//!   clients know, becomes 503. Both are retried by the OpenAI SDKs.
//! - A body that is not an Anthropic error (an HTML page from a proxy, nothing at all)
//!   gets a generic message and a type derived from the status, as Anthropic would have
//!   sent it. The body itself is not echoed to the client.
//!
//! The same body, without a status, is what a mid-stream `error` event becomes (see
//! [`crate::stream`]).

use serde_json::{Value, json};

/// Translates an Anthropic error answer (`status`, raw `body`) into the status and body
/// to send to an OpenAI client.
pub fn error_to_openai(status: u16, body: &[u8]) -> (u16, Value) {
    let out_status = if status == 529 { 503 } else { status };
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let described = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| described_error(e, status));
    let body = match described {
        Some(body) => body,
        None => {
            let kind = type_for_status(status);
            openai_error(
                &format!(
                    "The upstream provider returned HTTP {status} without an error description."
                ),
                kind,
            )
        }
    };
    (out_status, body)
}

/// The OpenAI error body for an Anthropic `error` object holding a message, if it holds one.
pub(crate) fn described_error(error: &Value, status: u16) -> Option<Value> {
    let message = error.get("message").and_then(Value::as_str)?;
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| type_for_status(status));
    Some(openai_error(message, kind))
}

/// `{"error": {"message", "type", "param": null, "code"}}`.
pub(crate) fn openai_error(message: &str, kind: &str) -> Value {
    let code = if message.to_ascii_lowercase().contains("prompt is too long") {
        "context_length_exceeded"
    } else {
        kind
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// The Anthropic error type that goes with an HTTP status.
pub(crate) fn type_for_status(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_without_a_type_takes_the_one_of_its_status() {
        let (status, body) = error_to_openai(429, br#"{"error": {"message": "slow down"}}"#);
        assert_eq!(status, 429);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["message"], "slow down");
    }

    #[test]
    fn invalid_utf8_is_a_body_without_description() {
        let (status, body) = error_to_openai(500, &[0xff, 0xfe, b'{']);
        assert_eq!(status, 500);
        assert_eq!(body["error"]["type"], "api_error");
    }
}
