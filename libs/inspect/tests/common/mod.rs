//! What the property tests share: their case count, and forms built from parts the
//! readers of a form differ on.
#![allow(dead_code)]

use proptest::prelude::*;

/// 2,000 cases, or `PROPTEST_CASES` (run longer with e.g. `PROPTEST_CASES=1000000`).
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig::with_cases(cases)
}

/// The boundary of every form [`form`] builds.
pub const BOUNDARY: &str = "BoUnDaRy";

/// One part of a form, as [`form`] writes it.
#[derive(Debug, Clone)]
pub struct Part {
    pub disposition_name: &'static str,
    pub name: &'static str,
    pub extra: &'static str,
    pub content: &'static str,
}

/// Parts named, typed and filled in the ways readers differ on.
pub fn part() -> impl Strategy<Value = Part> {
    (
        prop::sample::select(vec![
            "Content-Disposition",
            "content-disposition",
            "CONTENT-DISPOSITION",
        ]),
        prop::sample::select(vec![
            "name=\"model\"",
            "NAME=\"model\"",
            "name=model",
            "name=\"file\"; filename=\"a.wav\"",
            "name=\"x\"; name=\"model\"",
            "name=\"model\"; name=\"x\"",
            "name=\"prompt\"",
            "name=\"model \"",
            "name*=utf-8''model",
        ]),
        prop::sample::select(vec![
            "",
            "\r\nContent-Type: text/plain",
            "\r\nContent-Type: text/plain; charset=utf-16",
            "\r\nContent-Transfer-Encoding: base64",
            "\r\nContent-Type: audio/wav",
        ]),
        prop::sample::select(vec![
            "whisper-1",
            "gpt-4o-transcribe",
            "d2hpc3Blci0x",
            " m ",
            "RIFF\0\x01",
        ]),
    )
        .prop_map(|(disposition_name, name, extra, content)| Part {
            disposition_name,
            name,
            extra,
            content,
        })
}

/// A form of `parts` with boundary [`BOUNDARY`], lines ending in `newline`, after
/// `preamble`, with `padding` after each boundary.
pub fn form(parts: &[Part], newline: &str, preamble: &str, padding: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(preamble.as_bytes());
    for p in parts {
        b.extend_from_slice(format!("--BoUnDaRy{padding}{newline}").as_bytes());
        b.extend_from_slice(
            format!(
                "{}: form-data; {}{}{newline}{newline}{}{newline}",
                p.disposition_name, p.name, p.extra, p.content
            )
            .as_bytes(),
        );
    }
    b.extend_from_slice(format!("--BoUnDaRy--{newline}").as_bytes());
    b
}
