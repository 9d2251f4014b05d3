//! Property tests for the event-stream parser against hostile bytes: any input, cut into any
//! chunks, never panics, never holds more than its limit, and parses the same whatever the
//! chunking. Frames the hub writes round-trip. `fuzz/` has a coverage-guided target for the
//! same parser for longer runs.

use proptest::prelude::*;
use tidings_client::sse::{SseError, SseEvent, SseItem, SseParser};
use tidings_protocol::EventId;
use tidings_protocol::frame::encode_data_frame;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// Bytes that look like an event stream more often than random bytes would.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"id".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"retry: ".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\xef\xbb\xbf".to_vec()),
        Just(b"\0".to_vec()),
        Just(vec![0xe2, 0x82]),
        "[ -~]{0,12}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|p| p.concat())
}

/// Cuts `bytes` at the given points (indices are taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

fn run(parser: &mut SseParser, chunks: &[Vec<u8>]) -> Vec<SseItem> {
    let mut out = Vec::new();
    for c in chunks {
        parser.feed(c);
        while let Some(item) = parser.next() {
            out.push(item);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Chunk boundaries never change what is parsed (CR/LF, BOM and UTF-8 split anywhere).
    #[test]
    fn chunking_never_changes_the_result(bytes in stream_bytes(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16)) {
        let whole = run(&mut SseParser::new(), std::slice::from_ref(&bytes));
        let cut = run(&mut SseParser::new(), &chunks(&bytes, &cuts));
        prop_assert_eq!(whole, cut);
        let bytewise: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(run(&mut SseParser::new(), std::slice::from_ref(&bytes)), run(&mut SseParser::new(), &bytewise));
    }

    /// Nothing dispatched exceeds the limit, and ids never carry CR, LF or NUL.
    #[test]
    fn limits_hold_and_ids_are_clean(bytes in stream_bytes(), limit in 1usize..64) {
        let mut p = SseParser::with_limit(limit);
        for item in run(&mut p, &[bytes]) {
            match item {
                Ok(SseEvent { data, id, .. }) => {
                    prop_assert!(data.len() <= limit, "data of {} bytes over the limit {}", data.len(), limit);
                    prop_assert!(!id.contains(['\n', '\r', '\0']), "id {:?}", id);
                }
                Err(SseError::TooLarge { limit: l }) => prop_assert_eq!(l, limit),
                Err(other) => prop_assert!(false, "unexpected error {:?}", other),
            }
        }
        prop_assert!(!p.last_event_id().contains(['\n', '\r', '\0']));
    }

    /// Random bytes of any kind never panic.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = run(&mut SseParser::with_limit(128), &[bytes]);
    }

    /// Any JSON the hub frames comes back exactly, with its id, however it is chunked.
    #[test]
    fn hub_frames_round_trip(texts in prop::collection::vec(any::<String>(), 1..6), seq in any::<u64>(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let json = serde_json::json!({"type": "activity", "data": {"s": t}}).to_string();
            let id = EventId::new(0xabc, seq.wrapping_add(i as u64));
            wire.extend_from_slice(encode_data_frame(Some(id), &json).as_bytes());
            expected.push(Ok(SseEvent { event: "message".into(), data: json, id: id.to_string() }));
        }
        prop_assert_eq!(run(&mut SseParser::new(), &chunks(&wire, &cuts)), expected);
    }
}
