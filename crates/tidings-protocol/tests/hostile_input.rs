//! Property tests over hostile input: the publish body, the mapping loader, event ids and the
//! frames built from accepted input. The CI run is short (`PROPTEST_CASES`, default 256 per
//! property); `fuzz/` holds coverage-guided targets for the same entry points for longer runs.
//!
//! What must hold for *any* input: no panic, a bounded answer, and for accepted input the
//! guarantees the hub builds on (data kept byte for byte apart from line breaks, one-line
//! frames, ids that cannot split a frame).

use proptest::prelude::*;
use serde_json::{Value, json};
use tidings_protocol::EventId;
use tidings_protocol::frame::{activity_payload, encode_data_frame};
use tidings_protocol::publish::{PublishErrorKind, parse_body};
use tidings_protocol::resolver::{Mapping, Resolver};
use tidings_protocol::resume::{HistoryWindow, LastEventId, ResumeDecision, decide};

/// Any JSON value, bounded in depth and width so one case stays fast.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid activity with arbitrary extra fields.
fn activity() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["created", "edited", "deleted", "updated", "CREATED", "Edited"]),
        prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
        prop::option::of(("[A-Za-z _-]{0,20}", prop::option::of(any::<i64>()))),
    )
        .prop_map(|(kind, extra, resource)| {
            let mut a = serde_json::Map::new();
            for (k, v) in extra {
                a.insert(format!("x_{k}"), v);
            }
            a.insert("activity_type".into(), kind.into());
            if let Some((t, id)) = resource {
                a.insert("resource".into(), json!({"type": t, "id": id}));
            }
            Value::Object(a)
        })
}

/// JSON text of `v` with insignificant whitespace (including CR and LF) sprinkled between
/// tokens, the way a pretty-printer or a hand-written body has it.
fn with_whitespace(v: &Value, style: u8) -> String {
    match style % 3 {
        0 => v.to_string(),
        1 => serde_json::to_string_pretty(v).unwrap(),
        _ => serde_json::to_string_pretty(v).unwrap().replace('\n', "\r\n\t"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic; the error always names a field.
    #[test]
    fn publish_body_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_body(&body) {
            prop_assert!(!e.field.is_empty());
            prop_assert!(!e.message.is_empty());
        }
    }

    /// Arbitrary JSON never panics, and whatever is accepted has a valid account and an
    /// activity object.
    #[test]
    fn publish_body_never_panics_on_json(v in json_value()) {
        if let Ok(items) = parse_body(v.to_string().as_bytes()) {
            for item in items {
                prop_assert!(!item.account.is_empty() && item.account.len() <= 128);
                prop_assert!(item.activity.is_object());
            }
        }
    }

    /// Valid items are accepted in order, with every field kept: the activity text equals the
    /// published text apart from line breaks (which become spaces, so a frame stays one line).
    #[test]
    fn valid_batches_are_accepted_and_kept(
        items in prop::collection::vec(("[a-z0-9-]{1,20}", activity(), any::<u8>()), 1..8),
    ) {
        let texts: Vec<String> = items.iter().map(|(acc, a, style)| {
            let data = with_whitespace(a, *style);
            format!("{{\"account\": {},\n \"data\": {data}}}", Value::from(acc.as_str()))
        }).collect();
        let body = format!("[\n{}\n]", texts.join(",\n"));
        let parsed = parse_body(body.as_bytes()).expect("valid batch accepted");
        prop_assert_eq!(parsed.len(), items.len());
        for (item, (acc, a, style)) in parsed.iter().zip(&items) {
            prop_assert_eq!(&item.account, acc);
            let raw = item.data.get();
            prop_assert!(!raw.contains(['\n', '\r']), "line break kept in {:?}", raw);
            prop_assert_eq!(raw, with_whitespace(a, *style).replace(['\n', '\r'], " "));
            let frame = encode_data_frame(Some(EventId::new(1, 1)), &activity_payload(&item.data, &[], &[]));
            prop_assert_eq!(frame.matches('\n').count(), 4, "one id line, one event line, one data line, one blank line: {:?}", frame);
        }
    }

    /// One bad item anywhere rejects the whole batch and the error points at it.
    #[test]
    fn one_bad_item_rejects_the_batch(
        good in prop::collection::vec(activity(), 1..6),
        bad_at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec![
            json!({"activity_type": "renamed"}),
            json!({"activity_type": 7}),
            json!({"activity_type": "created", "resource": "x"}),
            json!({"activity_type": "created", "parent": {"id": []}}),
            json!([]),
        ]),
    ) {
        let mut items: Vec<Value> = good.into_iter().map(|a| json!({"account": "acme", "data": a})).collect();
        let at = bad_at.index(items.len() + 1);
        items.insert(at, json!({"account": "acme", "data": bad}));
        let e = parse_body(Value::Array(items).to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(e.kind, PublishErrorKind::Invalid);
        let prefix = format!("[{at}].data");
        prop_assert!(e.field.starts_with(&prefix), "{} does not name item {}", e.field, at);
    }

    /// Nesting of any depth is refused or accepted without exhausting the stack.
    #[test]
    fn deep_nesting_is_bounded(depth in 1usize..20_000, open in prop::sample::select(vec!["[", "{\"a\":"])) {
        let close = if open == "[" { "]" } else { "}" };
        let body = format!("{{\"account\":\"a\",\"data\":{{\"activity_type\":\"created\",\"x\":{}1{}}}}}", open.repeat(depth), close.repeat(depth));
        let _ = parse_body(body.as_bytes());
    }

    /// Arbitrary text never panics the mapping loader; errors carry a line number.
    #[test]
    fn mapping_loader_never_panics_on_text(text in "\\PC{0,300}") {
        if let Err(e) = Mapping::from_toml_str(&text, "fuzz.toml") {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Mappings assembled from the real vocabulary, valid or not, never panic the loader, and
    /// whatever loads resolves arbitrary activities without panicking and with every key
    /// non-empty.
    #[test]
    fn mapping_loader_and_resolver_never_panic_on_structured_input(
        toml in mapping_toml(),
        activities in prop::collection::vec(json_value(), 0..4),
        typed in prop::collection::vec(activity(), 0..4),
    ) {
        if let Ok(mapping) = Mapping::from_toml_str(&toml, "fuzz.toml") {
            let _ = mapping.to_json_pretty();
            let resolver = Resolver::from_mapping(mapping);
            for a in activities.iter().chain(&typed) {
                let r = resolver.resolve(a);
                for key in r.invalidate.iter().chain(&r.remove) {
                    prop_assert!(!key.is_empty(), "empty key for {}", a);
                }
            }
        }
    }

    /// Client-supplied ids: any text gets a decision, and only well-formed ids of this epoch
    /// within the window are replayed.
    #[test]
    fn any_last_event_id_gets_a_decision(text in "\\PC{0,60}|[0-9a-f]{1,17}-[0-9]{1,21}", head in 0u64..1000, trimmed in 0u64..1000) {
        let w = HistoryWindow { epoch: 0xab, head, trimmed_through: trimmed.min(head) };
        if let ResumeDecision::Replay { after } = decide(LastEventId::parse(&text), &w) {
            prop_assert_eq!(text.parse::<EventId>().unwrap(), EventId::new(0xab, after));
            prop_assert!(after <= head && after >= w.trimmed_through);
        }
    }

    /// Every id the hub can produce round-trips and cannot split a frame.
    #[test]
    fn ids_round_trip_and_stay_on_one_line(epoch in any::<u64>(), seq in any::<u64>()) {
        let id = EventId::new(epoch, seq);
        let text = id.to_string();
        prop_assert!(text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        prop_assert_eq!(text.parse::<EventId>().unwrap(), id);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// A mapping document built from the loader's vocabulary with random values.
fn mapping_toml() -> impl Strategy<Value = String> {
    let name = "[A-Za-z _-]{0,12}";
    let key_elem = prop_oneof![
        "[a-z-]{0,8}".prop_map(|s| format!("{s:?}")),
        Just("\"{id}\"".to_owned()),
        Just("\"{parent_id}\"".to_owned()),
        Just("\"{ids}\"".to_owned()),
        any::<i32>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("1.5".to_owned()),
    ];
    let key = prop::collection::vec(key_elem, 0..4).prop_map(|v| format!("[{}]", v.join(", ")));
    let key_set = prop_oneof![key.clone(), prop::collection::vec(key, 0..3).prop_map(|v| format!("[{}]", v.join(", ")))];
    let id = prop::sample::select(vec!["", "id = \"number\"\n", "id = \"string\"\n", "id = \"as-published\"\n", "id = \"float\"\n"]);
    let resource = (name, prop::collection::vec(name, 0..3), id.clone(), prop::option::of(key_set.clone()), prop::option::of(key_set.clone()))
        .prop_map(|(n, aliases, id, list, detail)| {
            let mut s = format!("[resources.{n:?}]\naliases = {aliases:?}\n{id}");
            if let Some(l) = list { s += &format!("list = {l}\n"); }
            if let Some(d) = detail { s += &format!("detail = {d}\n"); }
            s
        });
    let parent = (name, id, key_set.clone()).prop_map(|(n, id, keys)| format!("[parents.{n:?}]\n{id}keys = {keys}\n"));
    let descriptions = prop::collection::vec((name, key_set), 0..3)
        .prop_map(|d| format!("[descriptions]\n{}", d.iter().map(|(p, k)| format!("{p:?} = {k}\n")).collect::<String>()));
    let header = prop::sample::select(vec!["", "format = 1\n", "format = 2\n", "generic = \"kebab-case\"\n", "generic = \"as-published\"\n", "generic = \"maybe\"\n", "bogus = 1\n"]);
    (header, prop::collection::vec(resource, 0..4), prop::collection::vec(parent, 0..3), descriptions)
        .prop_map(|(h, r, p, d)| format!("{h}{}{}{d}", r.concat(), p.concat()))
}
