//! The response tap: passes the provider's answer through to the client as it arrives,
//! reads the token usage on the way, and reports once when the body ends or the client
//! goes away.
//!
//! Server-sent events are forwarded event by event (an event is complete at its blank
//! line), never buffered whole. When the gateway asked the provider for a usage chunk
//! the client did not ask for, that chunk is dropped from what the client sees.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use futures::stream::BoxStream;

use crate::usage::{Tokens, tokens_from_usage};
pub use sg_providers::UsageFormat;

/// A boxed error from either the HTTP client or the in-process provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest non-streamed answer kept aside to read its usage.
const MAX_KEPT: usize = 8 * 1024 * 1024;
/// Largest single SSE event held while waiting for its end.
const MAX_EVENT: usize = 4 * 1024 * 1024;

/// How the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapMode {
    /// A JSON (or other) answer: pass through, read `usage` at the end.
    Whole,
    /// Server-sent events; `strip_usage_chunk` drops the usage-only chunk.
    Sse { strip_usage_chunk: bool },
}

/// What the tap saw, delivered once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOutcome {
    pub tokens: Tokens,
    /// The provider reported usage (else `tokens` are zeros, not a count).
    pub reported: bool,
    /// Bytes of the answer passed to the client.
    pub bytes: u64,
    /// The body ended normally (not cut by an error or a client disconnect).
    pub completed: bool,
}

pub struct Tap<F: FnOnce(TapOutcome) + Send + Unpin + 'static> {
    inner: BoxStream<'static, Result<Bytes, BoxError>>,
    mode: TapMode,
    format: UsageFormat,
    /// Anthropic streams: the counters as the events report them.
    native: sg_translate::NativeStreamUsage,
    kept: Vec<u8>,
    overflow: bool,
    pending: BytesMut,
    tokens: Tokens,
    reported: bool,
    bytes: u64,
    done: Option<F>,
}

impl<F: FnOnce(TapOutcome) + Send + Unpin + 'static> Tap<F> {
    pub fn new(
        inner: BoxStream<'static, Result<Bytes, BoxError>>,
        mode: TapMode,
        on_done: F,
    ) -> Self {
        Self::reading(inner, mode, UsageFormat::Openai, on_done)
    }

    /// A tap that reads usage in the provider's `format`.
    pub fn reading(
        inner: BoxStream<'static, Result<Bytes, BoxError>>,
        mode: TapMode,
        format: UsageFormat,
        on_done: F,
    ) -> Self {
        Tap {
            inner,
            mode,
            format,
            native: sg_translate::NativeStreamUsage::new(),
            kept: Vec::new(),
            overflow: false,
            pending: BytesMut::new(),
            tokens: Tokens::default(),
            reported: false,
            bytes: 0,
            done: Some(on_done),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(done) = self.done.take() {
            if self.mode == TapMode::Whole
                && !self.overflow
                && let Some(t) = match self.format {
                    UsageFormat::Openai => openai_usage(&self.kept),
                    UsageFormat::Anthropic => {
                        serde_json::from_slice::<serde_json::Value>(&self.kept)
                            .ok()
                            .and_then(|v| sg_translate::usage_from_message(&v))
                            .map(tokens_of)
                    }
                }
            {
                self.tokens = t;
                self.reported = true;
            }
            if self.format == UsageFormat::Anthropic
                && matches!(self.mode, TapMode::Sse { .. })
                && let Some(u) = self.native.usage()
            {
                self.tokens = tokens_of(u);
                self.reported = true;
            }
            done(TapOutcome {
                tokens: self.tokens,
                reported: self.reported,
                bytes: self.bytes,
                completed,
            });
        }
    }

    /// Splits complete SSE events off `pending`; returns the bytes to forward.
    fn take_events(&mut self, strip: bool) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if self.format == UsageFormat::Anthropic {
                let (name, data) = event_fields(&event);
                self.native.push(&name, &data);
                out.extend_from_slice(&event);
                continue;
            }
            match inspect_event(&event) {
                EventKind::Usage { tokens, usage_only } => {
                    self.tokens = tokens;
                    self.reported = true;
                    if strip && usage_only {
                        continue;
                    }
                }
                EventKind::Other => {}
            }
            out.extend_from_slice(&event);
        }
        if self.pending.len() > MAX_EVENT {
            // Not SSE as we know it: stop interpreting, forward as is.
            out.extend_from_slice(&self.pending.split());
        }
        out.freeze()
    }
}

/// Index just past the end of the first complete event (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Anthropic's counters as OpenAI-style tokens.
/// The `usage` of a whole OpenAI-shaped answer. Only that member is built; the rest of
/// the answer is checked to be JSON and skipped. An answer that member cannot be read
/// from that way (`usage` twice, say) is read whole, as the client's JSON parser reads
/// it: the last `usage` counts, as before.
fn openai_usage(body: &[u8]) -> Option<Tokens> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    let usage: serde_json::Value = match serde_json::from_slice::<Answer<'_>>(body) {
        Ok(answer) => serde_json::from_str(answer.usage?.get()).ok()?,
        Err(_) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()?
            .get("usage")?
            .clone(),
    };
    tokens_from_usage(&usage)
}

fn tokens_of(u: sg_translate::Usage) -> Tokens {
    Tokens {
        prompt: u.prompt,
        cached: u.cached_prompt,
        completion: u.completion,
        total: u.total,
    }
}

/// The `event:` name and the joined `data:` lines of one SSE event.
fn event_fields(event: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(event);
    let mut name = String::new();
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (name, data.join("\n"))
}

enum EventKind {
    Usage { tokens: Tokens, usage_only: bool },
    Other,
}

fn inspect_event(event: &[u8]) -> EventKind {
    let Ok(text) = std::str::from_utf8(event) else {
        return EventKind::Other;
    };
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    if data.is_empty() || data == "[DONE]" || !data.contains("\"usage\"") {
        return EventKind::Other;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
        return EventKind::Other;
    };
    match value.get("usage").and_then(tokens_from_usage) {
        Some(tokens) => EventKind::Usage {
            tokens,
            usage_only: value
                .get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.is_empty()),
        },
        None => EventKind::Other,
    }
}

impl<F: FnOnce(TapOutcome) + Send + Unpin + 'static> Stream for Tap<F> {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => match this.mode {
                    TapMode::Whole => {
                        if !this.overflow {
                            if this.kept.len() + chunk.len() > MAX_KEPT {
                                this.overflow = true;
                                this.kept = Vec::new();
                            } else {
                                this.kept.extend_from_slice(&chunk);
                            }
                        }
                        this.bytes += chunk.len() as u64;
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    TapMode::Sse { strip_usage_chunk } => {
                        this.pending.extend_from_slice(&chunk);
                        let out = this.take_events(strip_usage_chunk);
                        if !out.is_empty() {
                            this.bytes += out.len() as u64;
                            return Poll::Ready(Some(Ok(out)));
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let rest = this.pending.split().freeze();
                    this.bytes += rest.len() as u64;
                    this.finish(true);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(rest)));
                }
            }
        }
    }
}

impl<F: FnOnce(TapOutcome) + Send + Unpin + 'static> Drop for Tap<F> {
    fn drop(&mut self) {
        // The client went away before the end: report what was seen.
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::{Arc, Mutex};

    #[test]
    fn whole_openai_answers_give_their_usage_only() {
        let answer = br#"{"id":"c1","choices":[{"message":{"content":"a \"usage\": {}"}}],
            "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,
            "prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(
            openai_usage(answer),
            Some(Tokens {
                prompt: 9,
                cached: 4,
                completion: 12,
                total: 21
            })
        );
        assert_eq!(openai_usage(br#"{"id":"c1","usage":null}"#), None);
        assert_eq!(openai_usage(br#"{"id":"c1"}"#), None);
        assert_eq!(openai_usage(br#"[1,2]"#), None);
        // `usage` twice: the last one counts, as a client's JSON parser reads it.
        assert_eq!(
            openai_usage(
                br#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":500,"completion_tokens":700}}"#
            )
            .map(|t| (t.prompt, t.completion, t.total)),
            Some((500, 700, 1200))
        );
        // Not JSON as a whole: nothing is reported, even if a usage member parses.
        assert_eq!(openai_usage(br#"{"usage":{"prompt_tokens":1},"#), None);
    }

    fn run(chunks: Vec<&'static str>, mode: TapMode) -> (String, TapOutcome) {
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let inner = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed();
        let tap = Tap::new(inner, mode, move |o| *seen2.lock().unwrap() = Some(o));
        let out: Vec<Bytes> = futures::executor::block_on(tap.map(|r| r.unwrap()).collect());
        let text = String::from_utf8(out.concat()).unwrap();
        let outcome = seen.lock().unwrap().unwrap();
        (text, outcome)
    }

    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\n";

    #[test]
    fn sse_passes_events_and_strips_the_injected_usage_chunk() {
        let chunks = vec![
            "data: {\"choices\":[{\"delta\":{}}]}\n",
            "\ndata: {\"cho",
            "ices\":[]",
            ",\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
        ];
        let (text, outcome) = run(
            chunks.clone(),
            TapMode::Sse {
                strip_usage_chunk: true,
            },
        );
        assert_eq!(
            text,
            "data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            outcome.tokens,
            Tokens {
                prompt: 2,
                cached: 0,
                completion: 3,
                total: 5
            }
        );
        assert!(outcome.completed);
        let (text, _) = run(
            chunks,
            TapMode::Sse {
                strip_usage_chunk: false,
            },
        );
        assert!(text.contains(USAGE));
    }

    #[test]
    fn whole_answer_passes_through_byte_for_byte() {
        let body = "{\"id\":\"x\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";
        let (text, outcome) = run(vec![&body[..10], &body[10..]], TapMode::Whole);
        assert_eq!(text, body);
        assert_eq!(outcome.tokens.total, 2);
    }

    #[test]
    fn an_unfinished_event_is_flushed_at_the_end() {
        let (text, outcome) = run(
            vec!["data: partial"],
            TapMode::Sse {
                strip_usage_chunk: true,
            },
        );
        assert_eq!(text, "data: partial");
        assert_eq!(outcome.tokens, Tokens::default());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// A streamed chat answer: content events, the usage-only event, `[DONE]`.
        fn answer(contents: &[String], crlf: bool) -> (String, String) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut all = String::new();
            let mut visible = String::new();
            for c in contents {
                let event = format!(
                    "data: {{\"choices\":[{{\"delta\":{{\"content\":{}}}}}]}}{nl}{nl}",
                    serde_json::to_string(c).unwrap()
                );
                all.push_str(&event);
                visible.push_str(&event);
            }
            all.push_str(&format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":11,\"total_tokens\":18}}}}{nl}{nl}"));
            let done = format!("data: [DONE]{nl}{nl}");
            all.push_str(&done);
            visible.push_str(&done);
            (all, visible)
        }

        fn split_at(text: &str, cuts: &[usize]) -> Vec<Bytes> {
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut out = Vec::new();
            let mut at = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                if p > at {
                    out.push(Bytes::copy_from_slice(&bytes[at..p]));
                    at = p;
                }
            }
            out
        }

        fn tap(chunks: Vec<Bytes>, mode: TapMode) -> (Vec<u8>, TapOutcome) {
            let seen = Arc::new(Mutex::new(None));
            let seen2 = seen.clone();
            let inner = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
            let tap = Tap::new(inner, mode, move |o| *seen2.lock().unwrap() = Some(o));
            let out: Vec<Bytes> = futures::executor::block_on(tap.map(|r| r.unwrap()).collect());
            let outcome = seen.lock().unwrap().unwrap();
            (out.concat(), outcome)
        }

        proptest! {
            /// However the provider's bytes are split, the client gets them unchanged
            /// but for the usage chunk it did not ask for, and the usage is read.
            #[test]
            fn any_chunking_passes_events_and_reads_usage(
                contents in prop::collection::vec(".{0,20}", 0..6),
                cuts in prop::collection::vec(any::<usize>(), 0..12),
                crlf in any::<bool>(),
            ) {
                let (all, visible) = answer(&contents, crlf);
                let (out, outcome) = tap(split_at(&all, &cuts), TapMode::Sse { strip_usage_chunk: true });
                prop_assert_eq!(String::from_utf8(out).unwrap(), visible);
                prop_assert_eq!(outcome.tokens, Tokens { prompt: 7, cached: 0, completion: 11, total: 18 });
                prop_assert!(outcome.completed);
                let (out, _) = tap(split_at(&all, &cuts), TapMode::Sse { strip_usage_chunk: false });
                prop_assert_eq!(String::from_utf8(out).unwrap(), all);
            }

            /// Arbitrary bytes in either mode: no panic, and nothing invented.
            #[test]
            fn arbitrary_bytes_pass_through(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
            ) {
                let input: Vec<u8> = chunks.concat();
                let chunks: Vec<Bytes> = chunks.into_iter().map(Bytes::from).collect();
                let (out, _) = tap(chunks.clone(), TapMode::Whole);
                prop_assert_eq!(&out, &input);
                let (out, _) = tap(chunks, TapMode::Sse { strip_usage_chunk: false });
                prop_assert_eq!(&out, &input);
            }
        }
    }

    #[test]
    fn dropping_early_still_reports() {
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let inner = futures::stream::iter(vec![Ok(Bytes::from_static(b"x"))]).boxed();
        let tap = Tap::new(inner, TapMode::Whole, move |o| {
            *seen2.lock().unwrap() = Some(o)
        });
        drop(tap);
        assert!(!seen.lock().unwrap().unwrap().completed);
    }
}
