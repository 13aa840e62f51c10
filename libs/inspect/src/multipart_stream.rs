//! `multipart/form-data` read one chunk at a time, under every framing rule of
//! [`multipart`] and with the same verdicts as [`multipart::parse`]: a body too large to
//! hold is checked as it passes, and the `model` field is known as soon as its part ends.
//!
//! # Use
//!
//! ```
//! use sg_inspect::multipart_stream::{FormStream, Progress};
//!
//! let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
//!              --b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n\
//!              RIFF....\r\n--b--\r\n";
//! let mut form = FormStream::new("b")?;
//! let mut prefix = Vec::new();
//! let mut chunks = body.chunks(16);
//! // Hold chunks until the model question is settled.
//! let model = loop {
//!     let Some(chunk) = chunks.next() else { break form.finish()?.model };
//!     prefix.extend_from_slice(chunk);
//!     if let Progress::ModelKnown(model) = form.push(chunk)? {
//!         break model;
//!     }
//! };
//! assert_eq!(model.as_deref(), Some("whisper-1"));
//! // The field lies inside what was held, so it can be replaced there.
//! let mut sent = form.with_model(&prefix, "whisper-large-v3").unwrap_or(prefix);
//! // ... then forward the prefix, and each later chunk once `push` accepted it.
//! for chunk in chunks {
//!     form.push(chunk)?;
//!     sent.extend_from_slice(chunk);
//! }
//! assert_eq!(form.finish()?, sg_inspect::multipart::parse("b", body)?);
//! let routed = sg_inspect::multipart::parse("b", &sent)?;
//! assert_eq!(routed.model.as_deref(), Some("whisper-large-v3"));
//! # Ok::<(), sg_inspect::InspectError>(())
//! ```
//!
//! A gateway holds the chunks until [`Progress::ModelKnown`], decides on the model,
//! rewrites the held prefix if the model is routed ([`FormStream::with_model`]: the
//! field, [`FormStream::model_span`], lies inside the prefix), then forwards the prefix
//! and every later chunk as it arrives, calling [`FormStream::push`] on each *before*
//! forwarding it. If `push` or `finish` fails, it aborts the upstream body, never ends it, so that
//! the provider never receives a complete request the gateway refused. A `push` fails at
//! the first byte that cannot belong to a valid form, but a body that merely stops early
//! (a form never closed) is only refused by [`FormStream::finish`]: so the gateway also
//! holds back the body's last byte (or last chunk) until `finish` has accepted the form.
//!
//! # Verdicts
//!
//! [`FormStream::finish`] returns exactly what [`multipart::parse`] returns on the
//! concatenation of every chunk: the same [`Form`] (spans in whole-body offsets), or an
//! error with the same `code` (the message may differ: a stream fails at the first byte
//! that makes the body invalid, `parse` names the first rule it checks). An error is
//! final: every later `push` and `finish` returns it again.
//!
//! A second `model` field is refused with `duplicate_field` at its own closing delimiter,
//! not at its headers: until the part is closed the body may still turn out to be
//! badly framed, which `parse` reports first, as `invalid_multipart`.
//!
//! # Memory
//!
//! A reader holds a bounded state, whatever the size of the body or of its chunks:
//!
//! - one part's header section, at most [`MAX_HEADER_BYTES`]` + 3` bytes (the limit,
//!   the blank line, and the byte that overflows it);
//! - the `model` field's content, at most [`MAX_MODEL_BYTES`]` + boundary.len() + 4`
//!   bytes (the cap, and the bytes that may yet turn out to be the next delimiter), then
//!   the field itself (at most [`MAX_MODEL_BYTES`]);
//! - the delimiters `--boundary` and `CRLF--boundary` (at most 74 bytes each), with their
//!   search tables (one `usize` a byte) and the state of each search: how much of a
//!   delimiter the last bytes were, so a delimiter split across chunks is found without
//!   keeping those bytes.
//!
//! That is about 12 KiB in all (8 KiB of it for headers), allocated by
//! [`FormStream::new`] and never grown; nothing of the body beyond the current part's
//! headers and the `model` field is kept, and a `push` copies nothing else either.
//!
//! [`multipart::parse`]: crate::multipart::parse

use std::ops::Range;

use crate::InspectError;
use crate::multipart::{
    self, Form, MAX_HEADER_BYTES, MAX_MODEL_BYTES, MAX_PARTS, Role, refuse, valid_boundary,
};

/// How far the question of the model is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The model is not known yet: more of the body is needed.
    NeedMore,
    /// The `model` field, final: the body has passed the end of the `model` part (or, for
    /// a form without one, reached its closing delimiter). No later part can change it: a
    /// second `model` field makes the stream fail. The form as a whole may still be
    /// refused; once known, every later successful `push` returns it again.
    ModelKnown(Option<String>),
}

/// A fixed pattern searched for one byte at a time (Knuth–Morris–Pratt): the state is
/// how many of its first bytes the last bytes read were, so an occurrence split across
/// chunks is found without keeping those bytes.
#[derive(Debug, Clone)]
struct Search {
    pattern: Vec<u8>,
    /// `fail[i]`: the longest proper prefix of `pattern[..=i]` that is also its suffix.
    fail: Vec<usize>,
    state: usize,
}

impl Search {
    /// `pattern` is never empty (a boundary has at least one byte).
    fn new(pattern: Vec<u8>) -> Search {
        let mut fail = vec![0; pattern.len()];
        let mut k = 0;
        for i in 1..pattern.len() {
            while k > 0 && pattern.get(i) != pattern.get(k) {
                k = fail.get(k - 1).copied().unwrap_or(0);
            }
            if pattern.get(i) == pattern.get(k) {
                k += 1;
            }
            if let Some(f) = fail.get_mut(i) {
                *f = k;
            }
        }
        Search {
            pattern,
            fail,
            state: 0,
        }
    }

    fn len(&self) -> usize {
        self.pattern.len()
    }

    /// The first byte of the pattern: while `state` is 0, only that byte can change it.
    fn first(&self) -> u8 {
        self.pattern.first().copied().unwrap_or(0)
    }

    /// Reads one byte; whether the pattern ends with it.
    fn step(&mut self, b: u8) -> bool {
        let mut q = self.state;
        if q >= self.pattern.len() {
            q = self.fail.last().copied().unwrap_or(0);
        }
        while q > 0 && self.pattern.get(q) != Some(&b) {
            q = self.fail.get(q - 1).copied().unwrap_or(0);
        }
        if self.pattern.get(q) == Some(&b) {
            q += 1;
        }
        self.state = q;
        q == self.pattern.len()
    }

    fn reset(&mut self) {
        self.state = 0;
    }
}

/// What the reader expects next.
#[derive(Debug, Clone)]
enum State {
    /// The opening `--boundary`, this many bytes of it read.
    Opening(usize),
    /// Right after a `--boundary`: `--` closes the form, CRLF opens a part; the first of
    /// those two bytes once read.
    AfterDelimiter(Option<u8>),
    /// A part's header section, held in `FormStream::header`.
    Headers,
    /// A part's content, from `start` (a whole-body offset).
    Content { start: usize, role: Role },
    /// After the closing `--boundary--`: this many bytes of the optional CRLF read.
    Closed(u8),
    /// `finish` accepted the form.
    Finished(Form),
    /// The body is refused.
    Failed(InspectError),
}

/// A `multipart/form-data` body read one chunk at a time; see the [module
/// docs](self) for its use, its verdicts and its memory.
#[derive(Debug, Clone)]
pub struct FormStream {
    /// `--boundary`.
    dash: Search,
    /// `CRLF--boundary`.
    delimiter: Search,
    state: State,
    /// Bytes read so far.
    consumed: usize,
    parts: usize,
    /// The current part's header section, as read so far.
    header: Vec<u8>,
    /// The `model` field's content, as read so far.
    value: Vec<u8>,
    model: Option<String>,
    model_span: Option<Range<usize>>,
    /// Whether the model question is settled.
    model_known: bool,
}

impl FormStream {
    /// A reader for a form with this `boundary` (from the request's media type); an
    /// invalid boundary is refused, as [`multipart::parse`] refuses it.
    pub fn new(boundary: &str) -> Result<FormStream, InspectError> {
        if !valid_boundary(boundary) {
            return Err(refuse("the multipart boundary is not a valid boundary"));
        }
        let mut delimiter = Vec::with_capacity(boundary.len() + 4);
        delimiter.extend_from_slice(b"\r\n--");
        delimiter.extend_from_slice(boundary.as_bytes());
        let dash = delimiter.get(2..).unwrap_or_default().to_vec();
        let delimiter = Search::new(delimiter);
        let value = Vec::with_capacity(MAX_MODEL_BYTES + delimiter.len() + 1);
        Ok(FormStream {
            dash: Search::new(dash),
            delimiter,
            state: State::Opening(0),
            consumed: 0,
            parts: 0,
            header: Vec::with_capacity(MAX_HEADER_BYTES + 3),
            value,
            model: None,
            model_span: None,
            model_known: false,
        })
    }

    /// Reads the next chunk of the body. `Ok` if the body read so far can still be a
    /// valid form (only [`finish`](Self::finish) says whether it is one); an error is
    /// final.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Progress, InspectError> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Finished(_) => return Err(refuse("the form has already been finished")),
            _ => {}
        }
        if let Err(e) = self.read(chunk) {
            return Err(self.fail(e));
        }
        Ok(self.progress())
    }

    /// Ends the body: the form, exactly as [`multipart::parse`] reads the concatenation
    /// of every chunk pushed, or the error it returns (same `code`). Calling it again
    /// returns the same answer; pushing more after it is an error.
    pub fn finish(&mut self) -> Result<Form, InspectError> {
        let unfinished = |m: &str| Err(refuse(m));
        let verdict = match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Finished(form) => return Ok(form.clone()),
            State::Closed(0 | 2) => Ok(Form {
                model: self.model.clone(),
                model_span: self.model_span.clone(),
                parts: self.parts,
            }),
            State::Closed(_) => unfinished("data after the closing boundary"),
            State::Opening(_) => {
                unfinished("the multipart body must start with its boundary (no preamble)")
            }
            State::AfterDelimiter(_) => {
                unfinished("a boundary line must end right after the boundary (CRLF)")
            }
            State::Headers | State::Content { .. } => {
                unfinished("the multipart body is not closed")
            }
        };
        match verdict {
            Ok(form) => {
                self.state = State::Finished(form.clone());
                self.header = Vec::new();
                self.value = Vec::new();
                Ok(form)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// How far the model question is settled (what the last successful `push`
    /// returned).
    pub fn progress(&self) -> Progress {
        if self.model_known {
            Progress::ModelKnown(self.model.clone())
        } else {
            Progress::NeedMore
        }
    }

    /// How many bytes of the body have been read: every byte pushed, or, once the body
    /// is refused, up to the byte that made it invalid.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Where the `model` field's content lies in the body (whole-body offsets), once its
    /// part has ended; it always lies within the first [`consumed`](Self::consumed) bytes.
    pub fn model_span(&self) -> Option<Range<usize>> {
        self.model_span.clone()
    }

    /// `prefix` — the body's first bytes, as far as the `model` field at least — with the
    /// field's content replaced by `model`, as [`Form::with_model`] does; `None` if the
    /// model is not known to be in a field yet, or `model` could not stay that one field
    /// (a line break, the delimiter `--boundary`, more than [`MAX_MODEL_BYTES`]).
    pub fn with_model(&self, prefix: &[u8], model: &str) -> Option<Vec<u8>> {
        let dash = String::from_utf8_lossy(&self.dash.pattern);
        if model.len() > MAX_MODEL_BYTES || model.contains(dash.as_ref()) {
            return None;
        }
        let form = Form {
            model: self.model.clone(),
            model_span: Some(self.model_span.clone()?),
            parts: self.parts,
        };
        form.with_model(prefix, model)
    }

    fn fail(&mut self, e: InspectError) -> InspectError {
        self.state = State::Failed(e.clone());
        self.header = Vec::new();
        self.value = Vec::new();
        e
    }

    /// Reads `chunk`, advancing `consumed` byte by byte (or run by run in a part's
    /// content) so that it points at the failing byte on an error.
    fn read(&mut self, chunk: &[u8]) -> Result<(), InspectError> {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if let State::Content { role, .. } = self.state {
                // A run that cannot start a delimiter is content, read all at once.
                if self.dash.state == 0 && self.delimiter.state == 0 {
                    let (dash, crlf) = (self.dash.first(), self.delimiter.first());
                    let rest = chunk.get(i..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|&c| c == dash || c == crlf)
                        .unwrap_or(rest.len());
                    if run > 0 {
                        if role == Role::Model {
                            if self.value.len() + run > MAX_MODEL_BYTES {
                                self.consumed += MAX_MODEL_BYTES.saturating_sub(self.value.len());
                                return Err(multipart::model_too_long());
                            }
                            self.value
                                .extend_from_slice(rest.get(..run).unwrap_or_default());
                        }
                        i += run;
                        self.consumed += run;
                        continue;
                    }
                }
            }
            self.byte(b)?;
            self.consumed += 1;
            i += 1;
        }
        Ok(())
    }

    /// Reads one byte, at offset `self.consumed`.
    fn byte(&mut self, b: u8) -> Result<(), InspectError> {
        let at = self.consumed;
        match self.state {
            State::Opening(n) => {
                if self.dash.pattern.get(n) != Some(&b) {
                    return Err(refuse(
                        "the multipart body must start with its boundary (no preamble)",
                    ));
                }
                self.state = if n + 1 == self.dash.len() {
                    State::AfterDelimiter(None)
                } else {
                    State::Opening(n + 1)
                };
            }
            State::AfterDelimiter(None) if b == b'-' || b == b'\r' => {
                self.state = State::AfterDelimiter(Some(b));
            }
            State::AfterDelimiter(Some(b'-')) if b == b'-' => {
                self.state = State::Closed(0);
                self.model_known = true;
            }
            State::AfterDelimiter(Some(b'\r')) if b == b'\n' => {
                self.parts += 1;
                if self.parts > MAX_PARTS {
                    return Err(refuse(format!("the form has more than {MAX_PARTS} parts")));
                }
                self.dash.reset();
                self.delimiter.reset();
                self.header.clear();
                self.state = State::Headers;
            }
            State::AfterDelimiter(_) => {
                return Err(refuse(
                    "a boundary line must end right after the boundary (CRLF)",
                ));
            }
            State::Headers => {
                let dash = self.dash.step(b);
                let delimiter = self.delimiter.step(b);
                if dash {
                    return Err(if delimiter {
                        refuse("a part's headers do not end with a blank line")
                    } else {
                        refuse("the boundary appears inside a part")
                    });
                }
                self.header.push(b);
                if self.header == b"\r\n" || self.header.ends_with(b"\r\n\r\n") {
                    self.end_headers(at + 1)?;
                } else if self.header.len() > MAX_HEADER_BYTES + 2 {
                    return Err(refuse("a part's headers are too long"));
                }
            }
            State::Content { start, role } => {
                let dash = self.dash.step(b);
                let delimiter = self.delimiter.step(b);
                if role == Role::Model {
                    self.value.push(b);
                }
                if dash {
                    // The part ends where `CRLF--boundary` starts, if it does not start
                    // before the content (in the blank line ending the headers).
                    let end = (at + 1)
                        .checked_sub(self.delimiter.len())
                        .filter(|&end| delimiter && end >= start);
                    let Some(end) = end else {
                        return Err(if delimiter {
                            refuse("a part's headers do not end with a blank line")
                        } else {
                            refuse("the boundary appears inside a part")
                        });
                    };
                    self.end_part(start..end, role)?;
                    self.state = State::AfterDelimiter(None);
                } else if role == Role::Model
                    && self.value.len().saturating_sub(self.delimiter.state) > MAX_MODEL_BYTES
                {
                    // Bytes that cannot belong to the next delimiter are content.
                    return Err(multipart::model_too_long());
                }
            }
            State::Closed(0) if b == b'\r' => self.state = State::Closed(1),
            State::Closed(1) if b == b'\n' => self.state = State::Closed(2),
            State::Closed(_) => return Err(refuse("data after the closing boundary")),
            State::Finished(_) | State::Failed(_) => {
                return Err(refuse("data after the end of the form"));
            }
        }
        Ok(())
    }

    /// The header section is complete (it ends with the blank line); the content starts
    /// at `start`.
    fn end_headers(&mut self, start: usize) -> Result<(), InspectError> {
        // A part that starts with CRLF has an empty header section.
        let section = self
            .header
            .get(..self.header.len().saturating_sub(2))
            .unwrap_or_default();
        let headers = multipart::part_headers(section)?;
        let role = multipart::role(&headers, self.model.is_some())?;
        self.value.clear();
        self.state = State::Content { start, role };
        Ok(())
    }

    /// The part whose content is `content` ended with a delimiter.
    fn end_part(&mut self, content: Range<usize>, role: Role) -> Result<(), InspectError> {
        match role {
            Role::Other => Ok(()),
            Role::SecondModel => Err(multipart::duplicate_model()),
            Role::Model => {
                self.value.truncate(content.len());
                self.model = Some(multipart::model_text(&self.value)?);
                self.model_span = Some(content);
                self.model_known = true;
                self.value.clear();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multipart::parse;

    const MODEL: &str = "Content-Disposition: form-data; name=\"model\"";
    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";

    fn part(headers: &str, content: &[u8]) -> Vec<u8> {
        let mut b = b"--XyZ\r\n".to_vec();
        b.extend_from_slice(headers.as_bytes());
        b.extend_from_slice(b"\r\n\r\n");
        b.extend_from_slice(content);
        b.extend_from_slice(b"\r\n");
        b
    }

    fn close(mut b: Vec<u8>) -> Vec<u8> {
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    /// Audio-like bytes, full of what could start a delimiter.
    fn audio(len: usize) -> Vec<u8> {
        let pattern = b"RIFF\r\n-\r\n--Xy\r\n--XyZ\x00\xff-\r";
        let mut out = pattern
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect::<Vec<_>>();
        // `\r\n--XyZ` would end the part: break every whole delimiter.
        for w in 0..out.len().saturating_sub(7) {
            if &out[w..w + 7] == b"\r\n--XyZ" {
                out[w + 6] = b'z';
            }
        }
        out
    }

    /// Pushes `chunks` and finishes; every `Progress` returned, then the verdict.
    fn run<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<Progress>, Result<Form, InspectError>) {
        let mut s = FormStream::new("XyZ").unwrap();
        let mut progress = Vec::new();
        for chunk in chunks {
            match s.push(chunk) {
                Ok(p) => progress.push(p),
                Err(e) => {
                    assert_eq!(s.finish(), Err(e.clone()), "an error is final");
                    return (progress, Err(e));
                }
            }
        }
        (progress, s.finish())
    }

    fn same_verdict(body: &[u8], got: &Result<Form, InspectError>) {
        match (parse("XyZ", body), got) {
            (Ok(a), Ok(b)) => assert_eq!(&a, b),
            (Err(a), Err(b)) => assert_eq!(a.code, b.code, "{a} / {b}"),
            (a, b) => panic!("parse: {a:?}, stream: {b:?}"),
        }
    }

    #[test]
    fn model_first_then_a_large_file() {
        let head = part(MODEL, b"whisper-1");
        let file = audio(8 * 1024 * 1024);
        let body = close([head.clone(), part(FILE, &file)].concat());
        let mut s = FormStream::new("XyZ").unwrap();
        // Up to the delimiter's last byte, the model may still grow.
        let settled = head.len() + "--XyZ".len();
        assert_eq!(s.push(&body[..settled - 1]).unwrap(), Progress::NeedMore);
        let known = Progress::ModelKnown(Some("whisper-1".to_owned()));
        assert_eq!(s.push(&body[settled - 1..settled]).unwrap(), known);
        let span = s.model_span().unwrap();
        assert_eq!(&body[span.clone()], b"whisper-1");
        assert_eq!(s.consumed(), settled);
        // Not one byte of the file was needed.
        assert!(settled < head.len() + 8);
        for chunk in body[settled..].chunks(64 * 1024) {
            assert_eq!(s.push(chunk).unwrap(), known);
            assert!(s.header.capacity() <= MAX_HEADER_BYTES + 3);
            assert!(s.value.capacity() <= MAX_MODEL_BYTES + 10);
        }
        let form = s.finish().unwrap();
        assert_eq!(form, parse("XyZ", &body).unwrap());
        assert_eq!(form.model_span, Some(span));
        assert_eq!(form.parts, 2);
        assert_eq!(s.finish(), Ok(form), "finish answers again");
        assert!(s.push(b"x").is_err(), "nothing after finish");
    }

    #[test]
    fn file_first_then_model() {
        let file = part(FILE, &audio(300_000));
        let model = part(MODEL, b"gpt-4o-transcribe");
        let body = close([file.clone(), model.clone()].concat());
        let settled = file.len() + model.len() + "--XyZ".len();
        let mut s = FormStream::new("XyZ").unwrap();
        for (i, chunk) in body.chunks(4096).enumerate() {
            let end = (i + 1) * 4096;
            let p = s.push(chunk).unwrap();
            if end < settled {
                assert_eq!(p, Progress::NeedMore, "known at {end} before {settled}");
                assert_eq!(s.model_span(), None);
            } else {
                assert_eq!(
                    p,
                    Progress::ModelKnown(Some("gpt-4o-transcribe".to_owned()))
                );
                assert!(s.model_span().is_some_and(|span| span.end <= s.consumed()));
            }
        }
        assert_eq!(s.finish(), parse("XyZ", &body));
        // Byte by byte, known exactly at the delimiter's last byte.
        let mut s = FormStream::new("XyZ").unwrap();
        for (i, b) in body.iter().enumerate() {
            let known = matches!(s.push(&[*b]).unwrap(), Progress::ModelKnown(_));
            assert_eq!(known, i + 1 >= settled, "at {i}");
        }
    }

    #[test]
    fn no_model_field_is_known_only_at_the_end() {
        let body = close(
            [
                part(FILE, &audio(10_000)),
                part("Content-Disposition: form-data; name=\"prompt\"", b"hi"),
            ]
            .concat(),
        );
        let closing = body.len() - 2; // `--XyZ--` read, the optional CRLF not yet
        let mut s = FormStream::new("XyZ").unwrap();
        for (i, b) in body.iter().enumerate() {
            let p = s.push(&[*b]).unwrap();
            if i + 1 < closing {
                assert_eq!(p, Progress::NeedMore, "at {i}");
            } else {
                assert_eq!(p, Progress::ModelKnown(None), "at {i}");
            }
        }
        let form = s.finish().unwrap();
        assert_eq!((form.model, form.model_span, form.parts), (None, None, 2));
        // Without the optional CRLF, and with a bad tail.
        let (_, got) = run([&body[..closing]]);
        assert!(got.is_ok_and(|f| f.parts == 2));
        for tail in [&b"\r"[..], b"\r\n\r\n", b"x", b"\n"] {
            let bad = [&body[..closing], tail].concat();
            let (_, got) = run([&bad[..]]);
            same_verdict(&bad, &got);
            assert!(got.is_err());
        }
    }

    #[test]
    fn a_second_model_after_the_first_is_known() {
        let first = part(MODEL, b"allowed");
        let second = part(MODEL, b"forbidden");
        let body = close([first.clone(), part(FILE, b"data"), second.clone()].concat());
        let mut s = FormStream::new("XyZ").unwrap();
        let known = Progress::ModelKnown(Some("allowed".to_owned()));
        let second_at = first.len() + part(FILE, b"data").len();
        let second_end = second_at + second.len() + "--XyZ".len();
        let mut failed_at = None;
        for (i, b) in body.iter().enumerate() {
            match s.push(&[*b]) {
                Ok(p) => {
                    if i + 1 >= first.len() + 5 {
                        assert_eq!(p, known);
                    }
                }
                Err(e) => {
                    assert_eq!(e.code, "duplicate_field");
                    assert_eq!(e.param.as_deref(), Some("model"));
                    failed_at = Some(i);
                    break;
                }
            }
        }
        // At the second field's closing delimiter, before the form could be complete.
        assert_eq!(failed_at, Some(second_end - 1));
        assert_eq!(s.finish().unwrap_err().code, "duplicate_field");
        assert!(s.push(b"more").is_err());
        same_verdict(&body, &run([&body[..]]).1);
        // A second model field that is never closed is badly framed first, as for parse.
        let open = [first, second[..second.len() - 2].to_vec()].concat();
        let (progress, got) = run([&open[..]]);
        assert_eq!(progress, vec![known]);
        assert_eq!(got.unwrap_err().code, "invalid_multipart");
        assert_eq!(parse("XyZ", &open).unwrap_err().code, "invalid_multipart");
    }

    #[test]
    fn a_delimiter_split_at_every_point() {
        let body = close(
            [
                part(FILE, b"\r\n--Xy\r\n-\r"),
                part(MODEL, b"m-1"),
                part(
                    "Content-Disposition: form-data; name=\"p\"",
                    b"--X\r\n--XyY",
                ),
            ]
            .concat(),
        );
        let expected = parse("XyZ", &body).unwrap();
        assert_eq!(expected.model.as_deref(), Some("m-1"));
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let (_, got) = run([&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(got.as_ref(), Ok(&expected), "split at {i} and {j}");
            }
        }
        // A delimiter inside a part, or one not at a line's start, is refused at every split.
        let bad = close([part(FILE, b"a--XyZb"), part(MODEL, b"m")].concat());
        let late = close([part(FILE, b"a\n--XyZ\r\nb"), part(MODEL, b"m")].concat());
        for body in [bad, late] {
            for i in 0..=body.len() {
                let (_, got) = run([&body[..i], &body[i..]]);
                assert_eq!(got.unwrap_err().code, "invalid_multipart", "split at {i}");
                same_verdict(&body, &run([&body[..i], &body[i..]]).1);
            }
        }
    }

    #[test]
    fn an_oversized_part_header() {
        // A header section of exactly the limit is read, one byte more is refused.
        let filler = |section: usize| {
            let fixed = MODEL.len() + "\r\nX-Pad: ".len() + 2;
            format!("{MODEL}\r\nX-Pad: {}", "p".repeat(section - fixed))
        };
        let fits = close(part(&filler(MAX_HEADER_BYTES), b"m"));
        assert!(parse("XyZ", &fits).is_ok());
        assert_eq!(run(fits.chunks(1000)).1, parse("XyZ", &fits));
        let over = close(part(&filler(MAX_HEADER_BYTES + 1), b"m"));
        assert!(parse("XyZ", &over).is_err());
        same_verdict(&over, &run(over.chunks(1000)).1);
        // A header that never ends fails once past the limit, not at the end of the body.
        let mut s = FormStream::new("XyZ").unwrap();
        s.push(b"--XyZ\r\nX-Pad: ").unwrap();
        let endless = vec![b'p'; 1024 * 1024];
        let e = s.push(&endless).unwrap_err();
        assert_eq!(e.code, "invalid_multipart");
        assert!(s.consumed() <= "--XyZ\r\n".len() + MAX_HEADER_BYTES + 3);
        assert!(s.header.capacity() <= MAX_HEADER_BYTES + 3);
    }

    #[test]
    fn an_oversized_model_field() {
        for len in [
            MAX_MODEL_BYTES - 1,
            MAX_MODEL_BYTES,
            MAX_MODEL_BYTES + 1,
            100_000,
        ] {
            let value = "m-\r".repeat(len / 3 + 1)[..len].to_owned();
            let body = close(part(MODEL, value.as_bytes()));
            let expected = parse("XyZ", &body);
            assert_eq!(expected.is_ok(), len <= MAX_MODEL_BYTES, "{len}");
            for size in [1, 7, 4096, body.len()] {
                let (_, got) = run(body.chunks(size));
                same_verdict(&body, &got);
            }
        }
        // Refused as it passes: the field is never held whole.
        let mut s = FormStream::new("XyZ").unwrap();
        s.push(&part(MODEL, b"")[..MODEL.len() + 11]).unwrap();
        assert!(s.push(&vec![b'm'; 1 << 20]).is_err());
        assert!(s.consumed() <= MODEL.len() + 11 + MAX_MODEL_BYTES);
    }

    #[test]
    fn boundaries_and_framing() {
        assert!(FormStream::new("").is_err());
        assert!(FormStream::new(&"a".repeat(71)).is_err());
        assert!(FormStream::new("a ").is_err());
        assert!(FormStream::new(&"a".repeat(70)).is_ok());
        // A boundary that overlaps itself.
        for boundary in ["-", "--", "-a-", "a-a"] {
            let body = format!(
                "--{boundary}\r\n{MODEL}\r\n\r\n-{boundary}-\r\n-{boundary}\r\n--{boundary}--"
            );
            let expected = parse(boundary, body.as_bytes());
            for i in 0..=body.len() {
                let mut s = FormStream::new(boundary).unwrap();
                let got = s
                    .push(&body.as_bytes()[..i])
                    .and_then(|_| s.push(&body.as_bytes()[i..]))
                    .and_then(|_| s.finish());
                match (&expected, &got) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(a), Err(b)) => assert_eq!(a.code, b.code),
                    _ => panic!("{boundary:?} at {i}: {expected:?} / {got:?}"),
                }
            }
        }
        for body in [
            &b""[..],
            b"--XyZ",
            b"--XyZ-",
            b"--XyZ\r",
            b"--XyZ \r\n",
            b"\r\n--XyZ--",
            b"--XyZ--",
            b"--XyZ--\r\n",
            b"--XyZ\r\n\r\n\r\n--XyZ--",
            b"--XyZ\r\n\r\n--XyZ--",
            // The blank line's CRLF is also the delimiter's.
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\r\n--XyZ--",
        ] {
            same_verdict(body, &run([body]).1);
        }
    }

    #[test]
    fn routing_rewrites_the_held_prefix() {
        let file = part(FILE, &audio(1000));
        let body = close([part(MODEL, b"whisper-1"), file].concat());
        let mut s = FormStream::new("XyZ").unwrap();
        assert_eq!(s.with_model(&body, "m"), None, "not known yet");
        let held = &body[..80];
        assert!(matches!(
            s.push(held).unwrap(),
            Progress::ModelKnown(Some(_))
        ));
        let routed = s.with_model(held, "whisper-large-v3").unwrap();
        let sent = [&routed[..], &body[80..]].concat();
        let form = parse("XyZ", &sent).unwrap();
        assert_eq!(form.model.as_deref(), Some("whisper-large-v3"));
        // A model that could not stay one field is not written.
        for bad in ["a\r\nb", "a--XyZ", &"m".repeat(MAX_MODEL_BYTES + 1)] {
            assert_eq!(s.with_model(held, bad), None, "{bad}");
        }
        assert!(s.with_model(held, "a-XyZ").is_some());
    }

    #[test]
    fn the_number_of_parts_is_bounded() {
        let field = part("Content-Disposition: form-data; name=\"p\"", b"x");
        for n in [MAX_PARTS, MAX_PARTS + 1] {
            let body = close(field.repeat(n));
            let (_, got) = run(body.chunks(100));
            same_verdict(&body, &got);
            assert_eq!(got.is_ok(), n <= MAX_PARTS);
        }
    }
}
