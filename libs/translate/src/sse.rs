//! A server-sent events decoder: bytes as they arrive, split anywhere, → whole events.
//!
//! It follows the WHATWG event-stream rules as far as an API client needs them:
//!
//! - Lines end in `\n`, `\r\n` or `\r`, also when the two bytes of `\r\n` arrive in
//!   different chunks. Lines are decoded once complete, so a chunk boundary inside a
//!   multi-byte character is harmless (invalid UTF-8 becomes U+FFFD).
//! - `event:` sets the event name; each `data:` line appends to the data, lines joined by
//!   `\n` (so JSON spread over several `data:` lines still parses); one space after the
//!   colon is dropped; `id:`, `retry:`, unknown fields and `:` comments are ignored; a
//!   byte-order mark at the very start is skipped.
//! - A blank line ends an event; an event without data is not dispatched.
//! - An event that was not ended by a blank line when the stream stops is discarded.
//!
//! One event (its pending line plus its data) may hold at most `max_event_bytes`; beyond
//! that the decoder stops with [`SseTooLarge`] instead of growing without bound.

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, empty when the event had none.
    pub event: String,
    /// The data lines joined by `\n`.
    pub data: String,
}

/// An event exceeded the decoder's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a server-sent event exceeds {limit} bytes")]
pub struct SseTooLarge {
    pub limit: usize,
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SseDecoder {
    max_event_bytes: usize,
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    at_start: bool,
    event: String,
    data: String,
    has_data: bool,
    failed: bool,
}

impl SseDecoder {
    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: String::new(),
            data: String::new(),
            has_data: false,
            failed: false,
        }
    }

    /// Takes the next bytes of the stream and returns the events they complete.
    /// After an error every call fails.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseTooLarge> {
        let too_large = SseTooLarge {
            limit: self.max_event_bytes,
        };
        if self.failed {
            return Err(too_large);
        }
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => self.line.push(b),
            }
            if self.line.len().saturating_add(self.data.len()) > self.max_event_bytes {
                self.failed = true;
                return Err(too_large);
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, raw: &[u8]) -> Option<SseEvent> {
        let mut line = String::from_utf8_lossy(raw).into_owned();
        if self.at_start {
            self.at_start = false;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        let had_data = std::mem::replace(&mut self.has_data, false);
        had_data.then_some(SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_comments_multiline_data_and_line_endings() {
        let mut d = SseDecoder::new(1 << 20);
        let input = "\u{feff}: hello\r\nevent: a\r\ndata: {\"x\":\r\ndata:1}\r\n\r\nid: 7\rretry: 5\rdata:b\r\revent: only-name\n\nevent:c\ndata\n\n";
        let events = d.push(input.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![ev("a", "{\"x\":\n1}"), ev("", "b"), ev("c", "")]
        );
    }

    #[test]
    fn byte_by_byte_is_the_same_and_crlf_may_straddle_chunks() {
        let input = "event: e\r\ndata: h\u{e9}llo \u{1f600}\r\n\r\ndata: 2\r\n\r\n".as_bytes();
        let whole = SseDecoder::new(1024).push(input).unwrap();
        let mut d = SseDecoder::new(1024);
        let mut split = Vec::new();
        for b in input {
            split.extend(d.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(whole, split);
        assert_eq!(whole, vec![ev("e", "h\u{e9}llo \u{1f600}"), ev("", "2")]);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut d = SseDecoder::new(1024);
        assert!(d.push(b"data: partial\n").unwrap().is_empty());
    }

    #[test]
    fn a_huge_event_is_refused() {
        let mut d = SseDecoder::new(16);
        assert_eq!(
            d.push(b"data: 0123456789abcdef").unwrap_err(),
            SseTooLarge { limit: 16 }
        );
        assert!(d.push(b"\n\n").is_err());
        let mut d = SseDecoder::new(16);
        assert!(d.push(b"data: 0123456789\ndata: 0123456789\n").is_err());
    }
}
