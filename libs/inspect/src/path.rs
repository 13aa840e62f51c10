//! Client request paths, checked before anything is built from them.
//!
//! The gateway appends the client's path (after `/v1`) to a connection's base URL. A
//! path that a URL parser or a provider's server could resolve differently from how it
//! reads — dot segments, dots or slashes hidden in percent escapes, backslashes (which
//! some servers read as slashes), `;` parameters (which some read as part of a dot
//! segment), control characters, empty segments — could climb out of the base path with
//! the provider key attached, so it is refused.

use crate::InspectError;

fn refuse(message: &str) -> InspectError {
    InspectError::new("invalid_path", message.to_owned())
}

/// The byte a `%XX` escape stands for.
fn unescape(hi: u8, lo: u8) -> Option<u8> {
    let h = (hi as char).to_digit(16)?;
    let l = (lo as char).to_digit(16)?;
    u8::try_from(h * 16 + l).ok()
}

/// Checks a request path (without its query). It must start with `/v1/`.
pub fn check(path: &str) -> Result<(), InspectError> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(refuse("the path must start with /v1/"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            if i == last {
                continue; // a trailing slash
            }
            return Err(refuse("the path has an empty segment (`//`)"));
        }
        if *segment == "." || *segment == ".." {
            return Err(refuse("the path has a `.` or `..` segment"));
        }
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let decoded = match (bytes.get(i + 1), bytes.get(i + 2)) {
                        (Some(&h), Some(&l)) => unescape(h, l),
                        _ => None,
                    }
                    .ok_or_else(|| refuse("the path has a malformed percent escape"))?;
                    if matches!(decoded, b'.' | b'/' | b'\\' | b'%' | b';')
                        || decoded < 0x20
                        || decoded == 0x7f
                    {
                        return Err(refuse(
                            "the path hides a dot, slash, backslash, `%`, `;` or control character in a percent escape",
                        ));
                    }
                    i += 3;
                }
                b'\\' => return Err(refuse("the path has a backslash")),
                b';' => return Err(refuse("the path has a `;`")),
                b if b < 0x20 || b == 0x7f => {
                    return Err(refuse("the path has a control character"));
                }
                _ => i += 1,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "/v1/chat/completions",
            "/v1/files/file-abc123/content",
            "/v1/models/ft:gpt-4o-mini:acme::abc123",
            "/v1/models/",
            "/v1/files/a%20b",
            "/v1/.well-known-ish/x.json",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "/v1/../admin",
            "/v1/files/..",
            "/v1/./chat/completions",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2E/admin",
            "/v1/.%2e/admin",
            "/v1/files/..%2f..%2fadmin",
            "/v1/files/%2fetc",
            "/v1/files\\..\\admin",
            "/v1/files/%5c..%5cadmin",
            "/v1/files/%252e%252e",
            "/v1/files/..;/admin",
            "/v1/files/x%00",
            "/v1//chat/completions",
            "/v1/files/%zz",
            "/v1/files/%2",
            "/v2/chat/completions",
            "/v1",
        ] {
            assert!(check(bad).is_err(), "{bad} was accepted");
        }
    }
}
