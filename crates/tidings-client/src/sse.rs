//! A sans-IO parser for the WHATWG `text/event-stream` format: bytes in, events out.
//!
//! Chunk boundaries may fall anywhere, including inside a UTF-8 sequence, a BOM, or between
//! the CR and LF of a CRLF. The parser knows nothing about HTTP, reconnection or timers; it
//! keeps only what the format itself carries across events (the last event id and the last
//! `retry:` value).
//!
//! Why not the `sse-stream` crate (0.3): run against `fixtures/sse` it passes 95 of the 102
//! cases and fails the rest for reasons that matter here. It has no bound on line or event
//! size (all six `limits` cases), so a server that never ends a line grows client memory
//! without limit; and it drops a `retry:` read in a block the stream never finished, where the
//! spec applies it as soon as the line is read. Its documentation also says invalid UTF-8 ends
//! its stream with an error, where the format says to decode with replacement characters. Its
//! parser is private behind a `Stream` adapter and returns raw blocks, leaving the
//! last-event-id rules to the caller. The format is small enough that a parser written to the
//! spec is shorter than the glue needed around those.

use std::collections::VecDeque;

/// Largest line, and largest event (`data` accumulated over its lines), accepted, in bytes.
///
/// The hub writes every frame as one `data:` line of JSON, and the largest frame is one
/// activity, which the hub bounds by its publish body limit (well under this). 1 MiB leaves a
/// wide margin for that while bounding what a broken or hostile server can make a client hold.
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type; `message` when the block named none (or an empty one).
    pub event: String,
    /// The data lines joined with LF.
    pub data: String,
    /// The last event id at dispatch time (the stream's, not only this block's); empty when
    /// no id was ever set or it was reset.
    pub id: String,
}

/// Why part of the stream was dropped. The parser carries on after reporting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line or an event grew past the limit. The whole event it belonged to is discarded
    /// (including any `id:` it set) and parsing resumes after the next blank line.
    #[error("event larger than {limit} bytes discarded")]
    TooLarge {
        /// The limit in force, in bytes.
        limit: usize,
    },
}

/// What [`SseParser::next`] yields, in stream order.
pub type SseItem = Result<SseEvent, SseError>;

/// The parser state for one connection. Create a new one per connection, except that the
/// last event id is a property of the event source: carry it over with
/// [`SseParser::with_last_event_id`] if needed.
#[derive(Debug)]
pub struct SseParser {
    limit: usize,
    /// Bytes of the current, not yet terminated, line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF at the start of the next one belongs to it.
    after_cr: bool,
    /// No line has been completed yet: a leading BOM is still to be stripped.
    at_start: bool,
    /// Skipping the rest of an oversized event, up to and including its blank line.
    discarding_event: bool,
    /// Skipping the rest of an oversized line (and then of its event).
    discarding_line: bool,
    data: String,
    event_type: String,
    id_buffer: String,
    last_event_id: String,
    retry: Option<u64>,
    out: VecDeque<SseItem>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::with_limit(EVENT_BYTES_MAX)
    }

    /// A parser with another line/event size limit (in bytes).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            discarding_event: false,
            discarding_line: false,
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            retry: None,
            out: VecDeque::new(),
        }
    }

    /// Starts with a known last event id, as an event source does across reconnects.
    pub fn with_last_event_id(mut self, id: &str) -> Self {
        self.id_buffer = id.to_owned();
        self.last_event_id = id.to_owned();
        self
    }

    /// The last event id string: set when an event block ends, even one without data.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The last valid `retry:` value seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Feeds the next bytes of the stream. Completed events become available from
    /// [`SseParser::next`].
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&chunk[..pos]);
            self.end_line();
            let skip = if chunk[pos] == b'\r' {
                match chunk.get(pos + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.after_cr = true;
                        1
                    }
                }
            } else {
                1
            };
            chunk = &chunk[pos + skip..];
        }
        self.append(chunk);
    }

    /// The next completed event or error, in stream order.
    #[allow(clippy::should_implement_trait)] // draining a queue, not an Iterator: feed() refills it
    pub fn next(&mut self) -> Option<SseItem> {
        self.out.pop_front()
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.discarding_line {
            return;
        }
        if self.line.len() + bytes.len() > self.limit {
            self.line = Vec::new();
            self.discard_event();
            self.discarding_line = true;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn discard_event(&mut self) {
        if !self.discarding_event {
            self.out.push_back(Err(SseError::TooLarge { limit: self.limit }));
        }
        self.discarding_event = true;
        self.data = String::new();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        let was_discarding_line = std::mem::replace(&mut self.discarding_line, false);
        if std::mem::replace(&mut self.at_start, false) && line.starts_with(b"\xEF\xBB\xBF") {
            line.drain(..3);
        }
        if was_discarding_line {
            return;
        }
        if self.discarding_event {
            if line.is_empty() {
                self.discarding_event = false;
            }
            return;
        }
        self.process_line(&String::from_utf8_lossy(&line));
        // Keep the line buffer's allocation unless a long line inflated it.
        if line.capacity() <= 4096 {
            line.clear();
            self.line = line;
        }
    }

    fn process_line(&mut self, line: &str) {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return self.discard_event();
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only; a value too large for u64 is not a usable delay either.
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF appended after the last data line
        let event = if event.is_empty() { "message".to_owned() } else { event };
        self.out.push_back(Ok(SseEvent { event, data, id: self.last_event_id.clone() }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser) -> Vec<SseItem> {
        std::iter::from_fn(|| p.next()).collect()
    }

    fn msg(data: &str, id: &str) -> SseItem {
        Ok(SseEvent { event: "message".into(), data: data.into(), id: id.into() })
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let mut p = SseParser::new();
        p.feed(b"data: a\xFFb\n\ndata: ok\n\n");
        assert_eq!(all(&mut p), vec![msg("a\u{FFFD}b", ""), msg("ok", "")]);
    }

    #[test]
    fn utf8_split_across_chunks_is_kept() {
        let text = "data: ☀→ok\n\n".as_bytes();
        for cut in 0..text.len() {
            let mut p = SseParser::new();
            p.feed(&text[..cut]);
            p.feed(&text[cut..]);
            assert_eq!(all(&mut p), vec![msg("☀→ok", "")], "cut at {cut}");
        }
    }

    #[test]
    fn oversize_line_is_reported_and_stream_resynchronised() {
        let mut p = SseParser::with_limit(16);
        p.feed(b"id: 1\ndata: ok\n\nid: 2\ndata: ");
        for _ in 0..1000 {
            p.feed(b"xxxxxxxxxx"); // never held: memory stays within the limit
            assert!(p.line.capacity() <= 4096);
        }
        p.feed(b"\ndata: more\n\nid: 3\ndata: after\n\n");
        assert_eq!(all(&mut p), vec![msg("ok", "1"), Err(SseError::TooLarge { limit: 16 }), msg("after", "3")]);
    }

    #[test]
    fn oversize_event_over_many_lines_is_reported_once() {
        let mut p = SseParser::with_limit(16);
        p.feed(b"id: 7\ndata: 12345\ndata: 12345\ndata: 12345\ndata: 12345\n\ndata: next\n\n");
        assert_eq!(all(&mut p), vec![Err(SseError::TooLarge { limit: 16 }), msg("next", "")]);
        assert_eq!(p.last_event_id(), "", "the id of a discarded event is not taken");
    }

    #[test]
    fn last_event_id_carries_over() {
        let mut p = SseParser::new().with_last_event_id("a-5");
        p.feed(b"data: x\n\n");
        assert_eq!(all(&mut p), vec![msg("x", "a-5")]);
    }
}
