//! Media types (`Content-Type`), parsed strictly: type and subtype compared without
//! regard to case, parameters parsed (token or quoted string), a repeated parameter
//! refused. Anything the grammar of RFC 9110 §8.3.1 does not allow is an error, so that
//! no two readers can disagree about what a header says.

use std::fmt;

/// A parsed media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype`, lower-cased.
    essence: String,
    /// Parameters in order: names lower-cased, values unquoted (case kept).
    params: Vec<(String, String)>,
}

/// Why a media type cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaTypeError {
    /// Not `type/subtype` made of tokens.
    Malformed(&'static str),
    /// The same parameter twice (names compared without regard to case).
    DuplicateParameter(String),
}

impl fmt::Display for MediaTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaTypeError::Malformed(what) => write!(f, "malformed media type: {what}"),
            MediaTypeError::DuplicateParameter(name) => {
                write!(f, "the media type parameter `{name}` is given twice")
            }
        }
    }
}

impl std::error::Error for MediaTypeError {}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        // Token characters are ASCII, so the slice is valid UTF-8.
        (self.pos > start)
            .then(|| std::str::from_utf8(&self.bytes[start..self.pos]).ok())
            .flatten()
    }

    /// A quoted string with its escapes resolved; the cursor is on the opening quote.
    fn quoted(&mut self) -> Result<String, MediaTypeError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(MediaTypeError::Malformed("unterminated quoted string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = self
                        .bytes
                        .get(self.pos + 1)
                        .copied()
                        .filter(|&c| c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80)
                        .ok_or(MediaTypeError::Malformed("bad escape in a quoted string"))?;
                    out.push(escaped);
                    self.pos += 2;
                }
                Some(c) if c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80 => {
                    out.push(c);
                    self.pos += 1;
                }
                Some(_) => {
                    return Err(MediaTypeError::Malformed(
                        "control character in a quoted string",
                    ));
                }
            }
        }
        String::from_utf8(out).map_err(|_| MediaTypeError::Malformed("quoted string is not UTF-8"))
    }
}

/// `*( OWS ";" OWS [ name "=" ( token / quoted-string ) ] )` to the end of the input:
/// a repeated name (compared without regard to case) refused; names lower-cased if
/// `lower`, else as sent.
fn parameters(c: &mut Cursor<'_>, lower: bool) -> Result<Vec<(String, String)>, MediaTypeError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        c.skip_ows();
        match c.peek() {
            None => break,
            Some(b';') => c.pos += 1,
            Some(_) => return Err(MediaTypeError::Malformed("unexpected character")),
        }
        c.skip_ows();
        if matches!(c.peek(), None | Some(b';')) {
            continue; // an empty parameter slot, which the grammar allows
        }
        let name = c
            .token()
            .ok_or(MediaTypeError::Malformed("bad parameter name"))?;
        let name = if lower {
            name.to_ascii_lowercase()
        } else {
            name.to_owned()
        };
        c.skip_ows();
        if c.peek() != Some(b'=') {
            return Err(MediaTypeError::Malformed("parameter without `=`"));
        }
        c.pos += 1;
        c.skip_ows();
        let value = match c.peek() {
            Some(b'"') => c.quoted()?,
            _ => c
                .token()
                .ok_or(MediaTypeError::Malformed("bad parameter value"))?
                .to_owned(),
        };
        if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return Err(MediaTypeError::DuplicateParameter(
                name.to_ascii_lowercase(),
            ));
        }
        params.push((name, value));
    }
    Ok(params)
}

/// A `Content-Disposition` value: its type (lower-cased) and parameters (names as sent),
/// with the same strictness as media types.
pub(crate) fn disposition(value: &str) -> Result<(String, Vec<(String, String)>), MediaTypeError> {
    let mut c = Cursor {
        bytes: value.as_bytes(),
        pos: 0,
    };
    c.skip_ows();
    let kind = c
        .token()
        .ok_or(MediaTypeError::Malformed("no disposition type"))?
        .to_ascii_lowercase();
    Ok((kind, parameters(&mut c, false)?))
}

impl MediaType {
    /// Parses a `Content-Type` value.
    pub fn parse(value: &str) -> Result<MediaType, MediaTypeError> {
        let mut c = Cursor {
            bytes: value.as_bytes(),
            pos: 0,
        };
        c.skip_ows();
        let kind = c.token().ok_or(MediaTypeError::Malformed("no type"))?;
        if c.peek() != Some(b'/') {
            return Err(MediaTypeError::Malformed("no `/` after the type"));
        }
        c.pos += 1;
        let subtype = c.token().ok_or(MediaTypeError::Malformed("no subtype"))?;
        let essence = format!("{kind}/{subtype}").to_ascii_lowercase();
        let params = parameters(&mut c, true)?;
        Ok(MediaType { essence, params })
    }

    /// `type/subtype`, lower-case.
    pub fn essence(&self) -> &str {
        &self.essence
    }

    /// A parameter's value by (case-insensitive) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parameter names in order, lower-case.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_parameters() {
        let m = MediaType::parse("Application/JSON; Charset=\"UTF-8\"").unwrap();
        assert_eq!(m.essence(), "application/json");
        assert_eq!(m.param("charset"), Some("UTF-8"));
        let m = MediaType::parse("multipart/form-data;boundary=abc;").unwrap();
        assert_eq!(m.param("BOUNDARY"), Some("abc"));
        let m = MediaType::parse("multipart/form-data; boundary=\"a\\\"b c\"").unwrap();
        assert_eq!(m.param("boundary"), Some("a\"b c"));
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "json",
            "application/",
            "/json",
            "application/json extra",
            "application/json; charset",
            "application/json; charset=",
            "application/json; charset=\"utf-8",
            "application/json; =x",
            "appli cation/json",
            "application/json; a=b c",
        ] {
            assert!(MediaType::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            MediaType::parse("multipart/form-data; boundary=a; BOUNDARY=b"),
            Err(MediaTypeError::DuplicateParameter("boundary".into()))
        );
    }
}
