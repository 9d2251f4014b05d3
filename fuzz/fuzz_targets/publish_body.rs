//! Publish-body validation on arbitrary bytes: never panics, and whatever is accepted is
//! one-line JSON with a bounded account, so it can be framed as one SSE event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_protocol::publish::parse_body;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = parse_body(data) {
        for item in items {
            assert!(!item.account.is_empty() && item.account.len() <= 128);
            assert!(!item.data.get().contains(['\n', '\r']));
            assert!(item.activity.is_object());
        }
    }
});
