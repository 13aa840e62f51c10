//! Large multipart uploads (audio, images, files) streamed to the provider.
//!
//! The gateway reads a form only until its `model` field is settled (or, on endpoints
//! that name no model, not at all beyond its first piece), decides on it, then forwards
//! the rest as it arrives while `sg_inspect::FormStream` keeps checking every framing
//! rule. The last byte is held back until the whole form has passed: a form the gateway
//! would refuse (a second `model` field, broken framing, a body cut short) never reaches
//! the provider whole — its upload is aborted, and the client gets the refusal.
//! Memory per upload: the part read before the decision (at most `--max-body-bytes`),
//! then one piece at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use sg_api_error::ApiError;
use sg_inspect::multipart_stream::{FormStream, Progress};

use crate::body::BodyReader;

/// What was read before the decision.
pub(crate) struct Head {
    /// Every byte read so far.
    pub(crate) prefix: Bytes,
    /// The form's `model` field, once settled.
    pub(crate) model: Option<String>,
    /// The whole body was read (and the form passed).
    pub(crate) ended: bool,
    form: FormStream,
    reader: BodyReader,
}

impl Head {
    /// The prefix with the model field replaced, if the form can carry `model`.
    pub(crate) fn with_model(&self, model: &str) -> Option<Bytes> {
        self.form.with_model(&self.prefix, model).map(Bytes::from)
    }
}

/// How a streamed upload ended, for the answer and the usage record.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Why the upload was cut off, if it was.
    refusal: Mutex<Option<ApiError>>,
    bytes: AtomicU64,
}

impl Outcome {
    fn refuse(&self, e: ApiError) {
        let mut slot = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The refusal that cut the upload off, if any.
    pub(crate) fn refusal(&self) -> Option<ApiError> {
        self.refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bytes of the body read from the client.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Reads until the model is settled (`need_model`), else just the first piece. A form
/// whose model comes after more than `max_prefix` bytes is refused (413): its file would
/// have to be held whole.
pub(crate) async fn read_head(
    mut reader: BodyReader,
    boundary: &str,
    need_model: bool,
    max_prefix: usize,
) -> Result<Head, ApiError> {
    let mut form = FormStream::new(boundary).map_err(crate::proxy::inspect_error)?;
    let mut prefix = BytesMut::new();
    loop {
        let Some(chunk) = reader.next().await? else {
            let parsed = form.finish().map_err(crate::proxy::inspect_error)?;
            return Ok(Head {
                prefix: prefix.freeze(),
                model: parsed.model,
                ended: true,
                form,
                reader,
            });
        };
        prefix.extend_from_slice(&chunk);
        match form.push(&chunk).map_err(crate::proxy::inspect_error)? {
            Progress::ModelKnown(model) => {
                return Ok(Head {
                    prefix: prefix.freeze(),
                    model,
                    ended: false,
                    form,
                    reader,
                });
            }
            Progress::NeedMore if !need_model => {
                return Ok(Head {
                    prefix: prefix.freeze(),
                    model: None,
                    ended: false,
                    form,
                    reader,
                });
            }
            Progress::NeedMore => {
                if prefix.len() > max_prefix {
                    return Err(ApiError::new(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        sg_api_error::ErrorType::InvalidRequest,
                        "request_too_large",
                        format!(
                            "the form's `model` field must come before its file when the form is larger than {max_prefix} bytes"
                        ),
                    )
                    .with_param("model"));
                }
            }
        }
    }
}

enum State {
    /// Forward the prefix (less the byte held back).
    Start {
        head: Head,
        first: Bytes,
    },
    /// Forwarding: `held` goes out once the next piece (or the end) has passed.
    Streaming {
        form: FormStream,
        reader: BodyReader,
        held: Bytes,
    },
    Done,
}

fn cut_off(outcome: &Outcome, e: ApiError) -> std::io::Error {
    let message = e.message.clone();
    outcome.refuse(e);
    std::io::Error::other(message)
}

/// The upload as the provider receives it: `first` (the prefix as sent on, possibly
/// with the model rewritten), then the rest of the client's body as it arrives.
pub(crate) fn body(
    head: Head,
    first: Bytes,
    outcome: Arc<Outcome>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    outcome
        .bytes
        .store(head.reader.received(), Ordering::Relaxed);
    futures::stream::unfold(
        (State::Start { head, first }, outcome),
        |(state, outcome)| async move {
            match state {
                State::Done => None,
                State::Start { head, first } => {
                    if head.ended {
                        return Some((Ok(first), (State::Done, outcome)));
                    }
                    // Hold back the last byte until the form has passed whole.
                    let split = first.len().saturating_sub(1);
                    let out = first.slice(..split);
                    let held = first.slice(split..);
                    let next = State::Streaming {
                        form: head.form,
                        reader: head.reader,
                        held,
                    };
                    Some((Ok(out), (next, outcome)))
                }
                State::Streaming {
                    mut form,
                    mut reader,
                    held,
                } => {
                    let piece = reader.next().await;
                    outcome.bytes.store(reader.received(), Ordering::Relaxed);
                    match piece {
                        Err(e) => Some((Err(cut_off(&outcome, e)), (State::Done, outcome))),
                        Ok(None) => match form.finish() {
                            Ok(_) => Some((Ok(held), (State::Done, outcome))),
                            Err(e) => {
                                let e = crate::proxy::inspect_error(e);
                                Some((Err(cut_off(&outcome, e)), (State::Done, outcome)))
                            }
                        },
                        Ok(Some(chunk)) => match form.push(&chunk) {
                            Ok(_) => {
                                let next = State::Streaming {
                                    form,
                                    reader,
                                    held: chunk,
                                };
                                Some((Ok(held), (next, outcome)))
                            }
                            Err(e) => {
                                let e = crate::proxy::inspect_error(e);
                                Some((Err(cut_off(&outcome, e)), (State::Done, outcome)))
                            }
                        },
                    }
                }
            }
        },
    )
}
