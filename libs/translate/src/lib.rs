//! Pure translation between the OpenAI Chat Completions API and Anthropic's Messages API,
//! so that OpenAI clients can use Claude models through the gateway, plus the usage
//! readers the gateway needs when a client speaks the Messages API itself.
//!
//! Everything here works on [`serde_json::Value`]s and byte slices: no I/O, no clock (the
//! `created` timestamp is passed in), no logging. Nothing panics on any input.
//!
//! | Direction | Entry point | Module |
//! |---|---|---|
//! | OpenAI chat request → Anthropic request | [`chat_to_messages`] | [`request`] |
//! | Anthropic message → OpenAI `chat.completion` | [`messages_to_chat`] | [`response`] |
//! | Anthropic SSE events → OpenAI `chat.completion.chunk` SSE | [`StreamTranslator`] | [`stream`] |
//! | Anthropic error → OpenAI error | [`error_to_openai`] | [`error`] |
//! | Usage of a native Messages answer (whole or streamed) | [`usage_from_message`], [`NativeStreamUsage`] | [`native`] |
//! | Server-sent events framing (bytes → events) | [`SseDecoder`] | [`sse`] |
//!
//! # Principles
//!
//! - **Refuse rather than guess.** A request field Anthropic cannot honour (`n > 1`,
//!   `logprobs`, audio, a temperature above 1, …) is a [`TranslateError`] naming the field
//!   in OpenAI terms (`messages[2].content[0].image_url`), which the gateway answers with
//!   a 400. A field set to its OpenAI default (`n: 1`, `logprobs: false`,
//!   `frequency_penalty: 0`, …) or to `null` changes nothing and is accepted.
//! - **Canonical Anthropic payloads.** System and developer messages become `system` text
//!   blocks, consecutive turns of one role are merged, tool results of one turn travel
//!   together (first) in the next user turn, and blank text blocks are dropped, which is
//!   what the Messages API accepts without complaint.
//! - **Usage in OpenAI terms.** Anthropic's `input_tokens` exclude cached tokens; OpenAI's
//!   `prompt_tokens` include them. [`Usage`] and every translated `usage` object use the
//!   OpenAI meaning: `prompt = input + cache reads + cache writes`, with the cache reads
//!   as `cached_tokens`.
//! - **Forward compatible.** Unknown stop reasons become `"stop"`; unknown content blocks,
//!   deltas and events are skipped.
#![forbid(unsafe_code)]

pub mod error;
pub mod native;
pub mod request;
pub mod response;
pub mod sse;
pub mod stream;
mod usage;

pub use error::error_to_openai;
pub use native::{NativeStreamUsage, usage_from_message};
pub use request::{RequestOptions, chat_to_messages};
pub use response::messages_to_chat;
pub use sse::{SseDecoder, SseEvent, SseTooLarge};
pub use stream::StreamTranslator;
pub use usage::Usage;

/// A request that cannot be translated for an Anthropic model.
///
/// The gateway answers it with HTTP 400 `invalid_request_error`, `param` set to
/// [`TranslateError::param`] (empty when the body as a whole is at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TranslateError {
    /// The offending field as an OpenAI path, e.g. `messages[1].tool_calls[0].function.arguments`.
    pub param: String,
    /// What is wrong and what to do instead, for the person reading it.
    pub message: String,
}

impl TranslateError {
    pub(crate) fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        TranslateError {
            param: param.into(),
            message: message.into(),
        }
    }

    fn describe(&self) -> String {
        if self.param.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.param, self.message)
        }
    }
}

/// The name of the tool through which a JSON answer is requested from models without
/// native structured outputs (see [`request`]); a `tool_use` of this name in an answer is
/// turned back into message content (see [`response`] and [`stream`]). Clients may not
/// define a tool of this name.
pub const JSON_RESPONSE_TOOL: &str = "sg_json_response";
