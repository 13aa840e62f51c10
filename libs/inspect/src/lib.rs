//! Strict inspection of what a client sends through the gateway, before any decision is
//! made on it.
//!
//! **Architecture invariant:** the lock decides on exactly what the provider reads. A
//! request body is read under its declared media type, compared without regard to case
//! and with its parameters parsed ([`media`]); a JSON body at its top level, with
//! repeated members refused ([`json`]); a form with strict framing and one `model` field
//! at most ([`multipart`]), whole or one chunk at a time as it streams past
//! ([`multipart_stream`], same rules, same verdicts, bounded memory). A body whose model
//! cannot be determined unambiguously — unparsable under its declared type, a type the
//! endpoint does not take, no type at all — is an error, never forwarded unchecked. What
//! is forwarded is then declared under a canonical media type
//! ([`Inspected::content_type`]) so the provider reads it the same way. Client paths are
//! checked before a URL is built from them ([`path`]).
//!
//! Pure: no I/O, no async, no clock.
#![forbid(unsafe_code)]

pub mod endpoint;
pub mod json;
pub mod media;
pub mod multipart;
pub mod multipart_stream;
pub mod path;

use std::fmt;

pub use endpoint::{Accepts, Endpoint, ModelUse, classify};
pub use json::JsonObject;
pub use media::{MediaType, MediaTypeError};
pub use multipart::Form;
pub use multipart_stream::{FormStream, Progress};

/// Why a request is refused (always a 400: the client sent something the gateway will
/// not pass on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectError {
    /// Machine-readable, e.g. `duplicate_field`.
    pub code: &'static str,
    /// What was wrong and what to send instead.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

impl InspectError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        InspectError {
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for InspectError {}

/// A body, read under its media type.
#[derive(Debug)]
pub enum Body<'a> {
    Empty,
    Json(JsonObject<'a>),
    Form(Form),
}

/// What the gateway knows of a request body.
#[derive(Debug)]
pub struct Inspected<'a> {
    pub body: Body<'a>,
    /// The model the body names, exactly as the provider will read it.
    pub model: Option<String>,
    /// A JSON body asking for a streamed answer.
    pub stream: bool,
    /// A JSON body asking for the usage chunk of a stream itself.
    pub include_usage: bool,
    /// The most output tokens the body allows (`max_tokens` and its kin, times `n`).
    pub output_limit: Option<u64>,
    /// The `Content-Type` to forward: canonical for the type the body was read as.
    pub content_type: Option<String>,
}

fn unsupported(endpoint: &Endpoint) -> InspectError {
    let expected = match endpoint.body {
        Some(Accepts {
            json: true,
            multipart: false,
        }) => "application/json",
        Some(Accepts {
            json: false,
            multipart: true,
        }) => "multipart/form-data",
        _ => "application/json or multipart/form-data",
    };
    InspectError::new(
        "unsupported_content_type",
        format!("this endpoint takes a body of type {expected}; set Content-Type accordingly"),
    )
}

/// Reads `body` as `content_type` for `endpoint`.
pub fn inspect<'a>(
    endpoint: &Endpoint,
    content_type: Option<&str>,
    body: &'a [u8],
) -> Result<Inspected<'a>, InspectError> {
    if body.is_empty() {
        return Ok(Inspected {
            body: Body::Empty,
            model: None,
            stream: false,
            include_usage: false,
            output_limit: None,
            content_type: None,
        });
    }
    let Some(accepts) = endpoint.body else {
        return Err(InspectError::new(
            "unexpected_body",
            "this request method takes no body",
        ));
    };
    let Some(content_type) = content_type else {
        return Err(unsupported(endpoint));
    };
    let media = MediaType::parse(content_type)
        .map_err(|e| InspectError::new("invalid_content_type", format!("Content-Type: {e}")))?;
    match media.essence() {
        "application/json" if accepts.json => {
            if media
                .param("charset")
                .is_some_and(|c| !c.eq_ignore_ascii_case("utf-8"))
            {
                return Err(InspectError::new(
                    "unsupported_content_type",
                    "JSON bodies must be UTF-8 (charset=utf-8 or none)",
                ));
            }
            let object = JsonObject::parse(body)?;
            Ok(Inspected {
                model: object.model()?,
                stream: object.stream()?,
                include_usage: object.include_usage()?,
                output_limit: object.output_limit()?,
                body: Body::Json(object),
                content_type: Some("application/json".to_owned()),
            })
        }
        "multipart/form-data" if accepts.multipart => {
            let boundary = media.param("boundary").ok_or_else(|| {
                InspectError::new(
                    "invalid_multipart",
                    "the multipart Content-Type has no boundary",
                )
            })?;
            let form = multipart::parse(boundary, body)?;
            Ok(Inspected {
                model: form.model.clone(),
                stream: false,
                include_usage: false,
                output_limit: None,
                body: Body::Form(form),
                content_type: Some(multipart::content_type(boundary)),
            })
        }
        _ => Err(unsupported(endpoint)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Endpoint {
        classify("POST", "/v1/chat/completions")
    }

    #[test]
    fn media_types_are_read_without_regard_to_case() {
        let body = br#"{"model":"m"}"#;
        for ct in [
            "application/json",
            "Application/JSON",
            "APPLICATION/JSON; CHARSET=UTF-8",
            "application/json;charset=\"utf-8\"",
        ] {
            let i = inspect(&chat(), Some(ct), body).unwrap();
            assert_eq!(i.model.as_deref(), Some("m"), "{ct}");
            assert_eq!(i.content_type.as_deref(), Some("application/json"));
        }
    }

    #[test]
    fn bodies_the_gateway_cannot_read_are_refused() {
        let body = br#"{"model":"m"}"#;
        for ct in [
            None,
            Some("text/plain"),
            Some("application/vnd.api+json"),
            Some("application/x-www-form-urlencoded"),
            Some("application/json; charset=utf-16"),
            Some("application/json; charset=utf-8; charset=latin1"),
            Some("multipart/form-data; boundary=x"),
            Some("json"),
        ] {
            assert!(inspect(&chat(), ct, body).is_err(), "{ct:?} was accepted");
        }
        let get = classify("GET", "/v1/models");
        assert_eq!(
            inspect(&get, Some("application/json"), body)
                .unwrap_err()
                .code,
            "unexpected_body"
        );
        // An empty body names nothing, whatever its type.
        assert!(
            inspect(&chat(), Some("text/plain"), b"")
                .unwrap()
                .model
                .is_none()
        );
    }

    #[test]
    fn forms_by_endpoint() {
        let audio = classify("POST", "/v1/audio/transcriptions");
        let body =
            b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
        let i = inspect(&audio, Some("Multipart/Form-Data; Boundary=b"), body).unwrap();
        assert_eq!(i.model.as_deref(), Some("whisper-1"));
        assert_eq!(
            i.content_type.as_deref(),
            Some("multipart/form-data; boundary=b")
        );
        assert!(inspect(&audio, Some("application/json"), br#"{"model":"m"}"#).is_err());
        assert!(inspect(&audio, Some("multipart/form-data"), body).is_err());
    }
}
