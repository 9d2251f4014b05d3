//! A client-supplied `Last-Event-ID` against the resume decision: never panics, and only an
//! id that parses, of this epoch and inside the window, is replayed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_protocol::EventId;
use tidings_protocol::resume::{HistoryWindow, LastEventId, ResumeDecision, decide};

fuzz_target!(|text: &str| {
    let w = HistoryWindow { epoch: 0xab, head: 1_000, trimmed_through: 10 };
    if let ResumeDecision::Replay { after } = decide(LastEventId::parse(text), &w) {
        assert_eq!(text.parse::<EventId>().ok(), Some(EventId::new(0xab, after)));
        assert!((w.trimmed_through..=w.head).contains(&after));
    }
});
