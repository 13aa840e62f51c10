//! Usage of answers from the Messages API itself, for clients that speak it directly and
//! whose answers pass through unchanged.
//!
//! - A whole answer carries `usage` on the message: [`usage_from_message`].
//! - A stream carries it in two places, read by [`NativeStreamUsage`]:
//!   `message_start.message.usage` has the input and cache counters (and a small initial
//!   `output_tokens`); each `message_delta.usage` has the **cumulative** `output_tokens`
//!   and, on the current API, cumulative input and cache counters too. The last value of
//!   each counter wins (never a sum); counters a `message_delta` lacks keep their
//!   `message_start` value.
//!
//! Counts are given in OpenAI terms ([`Usage`]): the prompt includes cache reads and
//! writes, the cache reads being the cached part.

use serde_json::Value;

use crate::usage::{Counts, Usage};

/// The usage of a whole Anthropic message, if it reports any.
pub fn usage_from_message(response: &Value) -> Option<Usage> {
    let mut counts = Counts::default();
    counts
        .update(response.get("usage")?)
        .then(|| counts.usage())
}

/// Reads the usage of a native Anthropic stream, event by event. Never fails: data that
/// is not JSON, and events without usage, are skipped.
#[derive(Debug, Clone, Default)]
pub struct NativeStreamUsage {
    counts: Counts,
    seen: bool,
}

impl NativeStreamUsage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one event: its SSE event name (possibly empty) and data. Dispatches on the
    /// `type` inside the data, the event name serving when there is none.
    pub fn push(&mut self, event: &str, data: &str) {
        let Ok(parsed) = serde_json::from_str::<Value>(data.trim()) else {
            return;
        };
        let kind = parsed.get("type").and_then(Value::as_str).unwrap_or(event);
        let usage = match kind {
            "message_start" => parsed.get("message").and_then(|m| m.get("usage")),
            "message_delta" => parsed.get("usage"),
            _ => None,
        };
        if let Some(usage) = usage {
            self.seen |= self.counts.update(usage);
        }
    }

    /// The usage so far; `None` until the stream reported any.
    pub fn usage(&self) -> Option<Usage> {
        self.seen.then(|| self.counts.usage())
    }
}
