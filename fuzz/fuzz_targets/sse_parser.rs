//! The event-stream parser on arbitrary bytes, fed whole and cut in two at a point taken from
//! the input: never panics, never yields more than its limit, and the cut changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_client::sse::{SseItem, SseParser};

const LIMIT: usize = 256;

fn parse(chunks: &[&[u8]]) -> Vec<SseItem> {
    let mut p = SseParser::with_limit(LIMIT);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c);
        while let Some(item) = p.next() {
            out.push(item);
        }
    }
    assert!(!p.last_event_id().contains(['\n', '\r', '\0']));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let at = usize::from(cut) % (bytes.len() + 1);
    let whole = parse(&[bytes]);
    assert_eq!(whole, parse(&[&bytes[..at], &bytes[at..]]));
    for item in whole.into_iter().flatten() {
        assert!(item.data.len() <= LIMIT);
    }
});
