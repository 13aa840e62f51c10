//! `multipart/form-data` bodies (RFC 7578), framed strictly so that every reader finds
//! the same parts.
//!
//! Readers differ at the edges: some accept bare line feeds, transport padding after a
//! delimiter, a preamble, folded or repeated headers, `NAME=` in capitals, a repeated
//! `name=`, base64 content transfer encodings, a `_charset_` field; and when a field
//! appears twice most servers keep the *last*. Each of those is refused here, so the
//! one field the gateway decides on — `model` — is the one the provider reads:
//!
//! - the body starts with `--boundary CRLF` and ends with `--boundary--` (an optional
//!   CRLF after it, nothing else);
//! - the delimiter `--boundary` appears nowhere but at the start of a delimiter line;
//! - header lines end in CRLF, are not folded, and name a token; each part has exactly
//!   one `Content-Disposition: form-data` with one `name` (parameters compared without
//!   regard to case, none repeated, no `name*`);
//! - no part has a `Content-Transfer-Encoding` other than `7bit`, `8bit` or `binary`, and
//!   no part is named `_charset_`;
//! - at most one part is named `model`; it carries no file name, is UTF-8 text (no
//!   other charset) of at most [`MAX_MODEL_BYTES`] bytes and is read exactly as sent (no
//!   trimming).
//!
//! [`parse`] reads a whole body; [`crate::multipart_stream::FormStream`] reads one chunk
//! at a time under the same rules, with the same verdicts.

use crate::InspectError;
use crate::media::{MediaType, disposition};

/// Most parts accepted in one form.
pub const MAX_PARTS: usize = 256;
/// Most header lines per part.
const MAX_PART_HEADERS: usize = 16;
/// Longest header section of one part (its header lines, each with its CRLF; the blank
/// line that ends them not counted).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest `model` field accepted, in bytes (model names are short; a longer field is
/// refused rather than held).
pub const MAX_MODEL_BYTES: usize = 1024;

/// What the gateway needs of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The `model` field, exactly as sent.
    pub model: Option<String>,
    /// Where the `model` field's content lies in the body (to replace it).
    pub model_span: Option<std::ops::Range<usize>>,
    /// How many parts the form has.
    pub parts: usize,
}

pub(crate) fn refuse(message: impl Into<String>) -> InspectError {
    InspectError::new("invalid_multipart", message)
}

/// Whether `boundary` is a boundary RFC 2046 allows (1 to 70 `bchars`, not ending in a
/// space).
pub fn valid_boundary(boundary: &str) -> bool {
    let b = boundary.as_bytes();
    (1..=70).contains(&b.len())
        && !boundary.ends_with(' ')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One part's headers, as far as they matter.
pub(crate) struct PartHeaders {
    name: String,
    has_filename: bool,
    content_type: Option<String>,
}

/// Reads a part's header section: its header lines, each ending in CRLF (the blank line
/// excluded).
pub(crate) fn part_headers(section: &[u8]) -> Result<PartHeaders, InspectError> {
    if section.len() > MAX_HEADER_BYTES {
        return Err(refuse("a part's headers are too long"));
    }
    let text =
        std::str::from_utf8(section).map_err(|_| refuse("a part's headers are not UTF-8"))?;
    let mut disposition_value = None;
    let mut content_type = None;
    let mut count = 0;
    // `section` is the header lines, each ending in CRLF (the blank line excluded).
    for line in text.split_terminator("\r\n") {
        count += 1;
        if count > MAX_PART_HEADERS {
            return Err(refuse("a part has too many headers"));
        }
        if line.contains(['\r', '\n']) {
            return Err(refuse("a part header line has a bare CR or LF"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| refuse("a part header line has no `:`"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(refuse("a part header has an invalid name (or is folded)"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(refuse("a part header value has control characters"));
        }
        if name.eq_ignore_ascii_case("content-disposition") {
            if disposition_value.replace(value).is_some() {
                return Err(refuse("a part has two Content-Disposition headers"));
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            if content_type.replace(value.to_owned()).is_some() {
                return Err(refuse("a part has two Content-Type headers"));
            }
        } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
            let identity = ["7bit", "8bit", "binary"]
                .iter()
                .any(|e| value.eq_ignore_ascii_case(e));
            if !identity {
                return Err(refuse(
                    "a part has a Content-Transfer-Encoding; send the field as plain bytes",
                ));
            }
        }
    }
    let value =
        disposition_value.ok_or_else(|| refuse("a part has no Content-Disposition header"))?;
    let (kind, params) =
        disposition(value).map_err(|e| refuse(format!("a part's Content-Disposition: {e}")))?;
    if kind != "form-data" {
        return Err(refuse("a part's Content-Disposition is not form-data"));
    }
    // Readers differ on `NAME=` (some match parameter names exactly): only lower case.
    if params
        .iter()
        .any(|(n, _)| n.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(refuse(
            "a part's Content-Disposition parameter names must be lower-case",
        ));
    }
    if params.iter().any(|(n, _)| n == "name*") {
        return Err(refuse(
            "a part's name is given in the extended `name*` form",
        ));
    }
    let name = params
        .iter()
        .find(|(n, _)| n == "name")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| refuse("a part has no name"))?;
    let has_filename = params
        .iter()
        .any(|(n, _)| n == "filename" || n == "filename*");
    Ok(PartHeaders {
        name,
        has_filename,
        content_type,
    })
}

/// What a part is to the gateway, once its headers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A field the gateway does not decide on.
    Other,
    /// The `model` field, its headers checked.
    Model,
    /// A `model` field after the first: refused with [`duplicate_model`] once the part is
    /// known to be well framed (a part that is not is `invalid_multipart` first).
    SecondModel,
}

/// The rules on a part's name and, for `model`, its headers; `model_seen` if the form
/// had a `model` field before this part.
pub(crate) fn role(headers: &PartHeaders, model_seen: bool) -> Result<Role, InspectError> {
    if headers.name == "_charset_" {
        return Err(refuse(
            "a `_charset_` field is not accepted; send every field as UTF-8",
        ));
    }
    if headers.name != "model" {
        return Ok(Role::Other);
    }
    if model_seen {
        return Ok(Role::SecondModel);
    }
    if headers.has_filename {
        return Err(refuse("the `model` field must be text, not a file").with_param("model"));
    }
    if let Some(ct) = &headers.content_type {
        let media = MediaType::parse(ct)
            .map_err(|e| refuse(format!("the `model` field's Content-Type: {e}")))?;
        let utf8 = media
            .param("charset")
            .is_none_or(|c| c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("us-ascii"));
        if media.essence() != "text/plain" || !utf8 {
            return Err(refuse("the `model` field must be UTF-8 text").with_param("model"));
        }
    }
    Ok(Role::Model)
}

/// The error for a second `model` field.
pub(crate) fn duplicate_model() -> InspectError {
    InspectError::new(
        "duplicate_field",
        "the form has more than one `model` field; send it once",
    )
    .with_param("model")
}

/// The error for a `model` field longer than [`MAX_MODEL_BYTES`].
pub(crate) fn model_too_long() -> InspectError {
    refuse(format!(
        "the `model` field is longer than {MAX_MODEL_BYTES} bytes"
    ))
    .with_param("model")
}

/// The `model` field's content, read as text.
pub(crate) fn model_text(content: &[u8]) -> Result<String, InspectError> {
    if content.len() > MAX_MODEL_BYTES {
        return Err(model_too_long());
    }
    std::str::from_utf8(content)
        .map(str::to_owned)
        .map_err(|_| refuse("the `model` field is not UTF-8 text").with_param("model"))
}

/// Reads a form; `boundary` comes from the request's media type.
pub fn parse(boundary: &str, body: &[u8]) -> Result<Form, InspectError> {
    if !valid_boundary(boundary) {
        return Err(refuse("the multipart boundary is not a valid boundary"));
    }
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(boundary.as_bytes());
    let dash_boundary = &delimiter[2..];
    if !body.starts_with(dash_boundary) {
        return Err(refuse(
            "the multipart body must start with its boundary (no preamble)",
        ));
    }
    let mut pos = dash_boundary.len();
    let mut model: Option<String> = None;
    let mut model_span = None;
    let mut parts = 0usize;
    loop {
        let rest = &body[pos..];
        if let Some(after) = rest.strip_prefix(b"--") {
            if after.is_empty() || after == b"\r\n" {
                break;
            }
            return Err(refuse("data after the closing boundary"));
        }
        let Some(rest) = rest.strip_prefix(b"\r\n") else {
            return Err(refuse(
                "a boundary line must end right after the boundary (CRLF)",
            ));
        };
        pos += 2;
        // The part runs to the next delimiter; the boundary must appear nowhere inside.
        let end =
            find(rest, &delimiter).ok_or_else(|| refuse("the multipart body is not closed"))?;
        let part = &rest[..end];
        if find(part, dash_boundary).is_some() {
            return Err(refuse("the boundary appears inside a part"));
        }
        parts += 1;
        if parts > MAX_PARTS {
            return Err(refuse(format!("the form has more than {MAX_PARTS} parts")));
        }
        // Where the content starts, relative to the part.
        let content_at = if part.starts_with(b"\r\n") {
            2
        } else {
            find(part, b"\r\n\r\n")
                .ok_or_else(|| refuse("a part's headers do not end with a blank line"))?
                + 4
        };
        let section = &part[..content_at - 2];
        let content = &part[content_at..];
        let headers = part_headers(section)?;
        match role(&headers, model.is_some())? {
            Role::Other => {}
            Role::SecondModel => return Err(duplicate_model()),
            Role::Model => {
                model = Some(model_text(content)?);
                model_span = Some(pos + content_at..pos + end);
            }
        }
        pos += end + dash_boundary.len() + 2;
    }
    Ok(Form {
        model,
        model_span,
        parts,
    })
}

impl Form {
    /// The form's body with the `model` field's content replaced; `None` if the form has
    /// no `model` field or `model` has a line break (it could not stay one field).
    pub fn with_model(&self, body: &[u8], model: &str) -> Option<Vec<u8>> {
        let span = self.model_span.clone()?;
        if model.contains(['\r', '\n']) || span.end > body.len() {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() + model.len());
        out.extend_from_slice(&body[..span.start]);
        out.extend_from_slice(model.as_bytes());
        out.extend_from_slice(&body[span.end..]);
        Some(out)
    }
}

/// The canonical `Content-Type` for a form with this boundary (quoted only if needed).
pub fn content_type(boundary: &str) -> String {
    let bare = boundary
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if bare {
        format!("multipart/form-data; boundary={boundary}")
    } else {
        format!("multipart/form-data; boundary=\"{boundary}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (headers, content) in parts {
            b.extend_from_slice(b"--XyZ\r\n");
            b.extend_from_slice(headers.as_bytes());
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(content.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    const MODEL: &str = "Content-Disposition: form-data; name=\"model\"";
    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";

    fn code(body: &[u8]) -> Option<&'static str> {
        parse("XyZ", body).err().map(|e| e.code)
    }

    #[test]
    fn reads_the_model() {
        let body = form(&[(FILE, "RIFF....\r\nbytes"), (MODEL, "whisper-1")]);
        let f = parse("XyZ", &body).unwrap();
        assert_eq!(f.model.as_deref(), Some("whisper-1"));
        assert_eq!(&body[f.model_span.clone().unwrap()], b"whisper-1");
        let routed = f.with_model(&body, "whisper-large-v3").unwrap();
        let again = parse("XyZ", &routed).unwrap();
        assert_eq!(again.model.as_deref(), Some("whisper-large-v3"));
        assert!(f.with_model(&body, "a\r\n--XyZ").is_none());
        assert_eq!(f.parts, 2);
        // Header names are case-insensitive; values are not trimmed.
        let f = parse(
            "XyZ",
            &form(&[("CONTENT-DISPOSITION: Form-Data; name=\"model\"", " m ")]),
        )
        .unwrap();
        assert_eq!(f.model.as_deref(), Some(" m "));
        // Parameter names in capitals are read differently by different servers.
        assert!(
            parse(
                "XyZ",
                &form(&[("Content-Disposition: form-data; NAME=\"model\"", "m")])
            )
            .is_err()
        );
        let f = parse("XyZ", &form(&[(FILE, "x")])).unwrap();
        assert_eq!(f.model, None);
        // A model name is short: a longer field is refused, not held.
        let longest = "m".repeat(MAX_MODEL_BYTES);
        assert!(parse("XyZ", &form(&[(MODEL, &longest)])).is_ok());
        let e = parse("XyZ", &form(&[(MODEL, &format!("{longest}m"))])).unwrap_err();
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_multipart", Some("model"))
        );
    }

    #[test]
    fn refuses_what_readers_disagree_on() {
        assert_eq!(
            code(&form(&[(MODEL, "a"), (MODEL, "b")])),
            Some("duplicate_field")
        );
        assert_eq!(
            code(&form(&[
                (MODEL, "a"),
                ("Content-Disposition: form-data; name=model", "b")
            ])),
            Some("duplicate_field")
        );
        let bad: &[&[u8]] = &[
            // Repeated name parameter.
            &form(&[("Content-Disposition: form-data; name=\"x\"; name=\"model\"", "a")]),
            // Extended name.
            &form(&[("Content-Disposition: form-data; name*=utf-8''model", "a")]),
            // A model part that is a file, or base64, or another charset.
            &form(&[("Content-Disposition: form-data; name=\"model\"; filename=\"m\"", "a")]),
            &form(&[(&format!("{MODEL}\r\nContent-Transfer-Encoding: base64"), "YQ==")]),
            &form(&[(&format!("{MODEL}\r\nContent-Type: text/plain; charset=utf-16"), "a")]),
            &form(&[("Content-Disposition: form-data; name=\"_charset_\"", "utf-7")]),
            // No or two dispositions, folded header.
            &form(&[("Content-Type: text/plain", "a")]),
            &form(&[(&format!("{MODEL}\r\n{MODEL}"), "a")]),
            &form(&[("Content-Disposition: form-data;\r\n name=\"model\"", "a")]),
            // Framing: preamble, bare LF, padding, epilogue, unclosed, boundary inside.
            b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XyZ--",
            b"--XyZ\nContent-Disposition: form-data; name=\"model\"\n\na\n--XyZ--",
            b"--XyZ  \r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XyZ--\r\ntrailing",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\na\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--XyZ--",
        ];
        for body in bad {
            assert!(
                parse("XyZ", body).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse("", b"").is_err());
        assert!(parse(&"a".repeat(71), b"").is_err());
    }

    #[test]
    fn canonical_content_type() {
        assert_eq!(content_type("abc"), "multipart/form-data; boundary=abc");
        assert_eq!(content_type("a:b"), "multipart/form-data; boundary=\"a:b\"");
    }
}
