//! The publish body: one activity or an array of them, validated all-or-nothing.
//!
//! Each item is `{"account": "...", "data": {…activity…}, "audience": [...]?, "key": "..."?}`;
//! the optional `audience` limits the activity to the streams whose identity holds one of its
//! grants (see [`crate::audience`]); the optional `key` makes the item idempotent within its
//! account (the hub stores it once however often it is sent, see the hub's
//! `engine::idempotency`). The activity is kept as the exact
//! bytes the publisher sent (`RawValue`; only line breaks between tokens become spaces, so a
//! frame stays one line), so every field, known or unknown, reaches subscribers unchanged; a
//! parsed copy is kept beside it for validation and key resolution. Errors name the offending
//! field with a path such as `[3].data.activity_type`. This module does not
//! know about HTTP: the hub maps [`PublishErrorKind`] to a status.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::audience::{AUDIENCE_GRANTS_MAX, Audience, GrantError};

/// Most items in one publish request; larger batches are refused whole.
pub const BATCH_ITEMS_MAX: usize = 1_000;
/// Longest account identifier, in bytes.
pub const ACCOUNT_LEN_MAX: usize = 128;
/// Longest idempotency key, in bytes: room for a UUID or a `table:id:timestamp` name, small
/// enough that the keys a hub remembers (one per retained event) cost little beside the events.
pub const KEY_LEN_MAX: usize = 128;
/// The activity types a publisher may send (`updated` is read as `edited`).
pub const ACTIVITY_TYPES: [&str; 4] = ["created", "edited", "deleted", "updated"];

/// One validated activity, ready to be stored and fanned out.
#[derive(Debug, Clone)]
pub struct PublishItem {
    /// Target account; only sessions of this account receive the activity.
    pub account: String,
    /// The activity exactly as published, on one line (see [`parse_body`]).
    pub data: Box<RawValue>,
    /// The same activity parsed, for resolution.
    pub activity: Value,
    /// Who in the account may see it; `None`: every stream of the account (unless the
    /// mapping derives an audience).
    pub audience: Option<Audience>,
    /// The idempotency key: within `account`, an item whose key was already accepted (and is
    /// still remembered) is not stored again.
    pub key: Option<String>,
}

/// Which kind of bad input a publish body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// Not JSON, or not an object/array at the top (HTTP 400).
    Syntax,
    /// JSON of the wrong shape or with invalid values (HTTP 422).
    Invalid,
}

/// A rejected publish body, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PublishError {
    pub kind: PublishErrorKind,
    /// Path of the offending field (`body` for the whole body).
    pub field: String,
    pub message: String,
}

impl PublishError {
    fn invalid(field: String, message: impl Into<String>) -> Self {
        Self { kind: PublishErrorKind::Invalid, field, message: message.into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemWire {
    account: Option<Value>,
    data: Option<Box<RawValue>>,
    /// Absent is `None`; present (even `null`) is `Some`, so a `null` can be refused.
    #[serde(default, deserialize_with = "present")]
    audience: Option<Value>,
    key: Option<Value>,
}

/// Deserializes a field that is present, whatever its value (`null` included), as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Parses and validates a publish body. Nothing is returned unless every item is valid.
pub fn parse_body(body: &[u8]) -> Result<Vec<PublishItem>, PublishError> {
    let syntax = |e: serde_json::Error| PublishError {
        kind: PublishErrorKind::Syntax,
        field: "body".into(),
        message: format!("invalid JSON: {e}"),
    };
    let text = std::str::from_utf8(body).map_err(|e| PublishError {
        kind: PublishErrorKind::Syntax,
        field: "body".into(),
        message: format!("body is not UTF-8: {e}"),
    })?;
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let raw: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(syntax)?;
            if raw.is_empty() {
                return Err(PublishError::invalid("body".into(), "batch is empty"));
            }
            if raw.len() > BATCH_ITEMS_MAX {
                return Err(PublishError::invalid(
                    "body".into(),
                    format!("batch has {} items; at most {BATCH_ITEMS_MAX} are accepted", raw.len()),
                ));
            }
            raw.iter().enumerate().map(|(i, r)| parse_item(r.get(), &format!("[{i}]."))).collect()
        }
        Some(b'{') => {
            // Checks the whole text is one JSON value before looking at its shape.
            let raw: Box<RawValue> = serde_json::from_str(text).map_err(syntax)?;
            Ok(vec![parse_item(raw.get(), "")?])
        }
        _ => Err(PublishError {
            kind: PublishErrorKind::Syntax,
            field: "body".into(),
            message: "expected a JSON object or an array of objects".into(),
        }),
    }
}

fn parse_item(text: &str, at: &str) -> Result<PublishItem, PublishError> {
    let wire: ItemWire = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // serde names the unknown field in its message; keep the path form for the field.
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map_or_else(|| format!("{at}item").trim_end_matches('.').to_owned(), |f| format!("{at}{f}"));
        PublishError::invalid(field, msg)
    })?;
    let account = match wire.account {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => return Err(PublishError::invalid(format!("{at}account"), "must be a string")),
        None => return Err(PublishError::invalid(format!("{at}account"), "is required")),
    };
    if account.is_empty() || account.len() > ACCOUNT_LEN_MAX || account.chars().any(char::is_control) {
        return Err(PublishError::invalid(
            format!("{at}account"),
            format!("must be 1 to {ACCOUNT_LEN_MAX} bytes without control characters"),
        ));
    }
    let data = one_line(wire.data.ok_or_else(|| PublishError::invalid(format!("{at}data"), "is required"))?);
    let activity: Value = serde_json::from_str(data.get())
        .map_err(|e| PublishError::invalid(format!("{at}data"), e.to_string()))?;
    validate_activity(&activity, &format!("{at}data"))?;
    let audience = wire.audience.map(|v| parse_audience(&v, &format!("{at}audience"))).transpose()?;
    let key = match wire.key {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= KEY_LEN_MAX && !k.chars().any(char::is_control) => Some(k),
        Some(_) => {
            return Err(PublishError::invalid(format!("{at}key"), format!("must be a string of 1 to {KEY_LEN_MAX} bytes without control characters")));
        }
    };
    Ok(PublishItem { account, data, activity, audience, key })
}

/// An item's `audience`: an array of 1 to [`AUDIENCE_GRANTS_MAX`] grant strings. Anything else
/// is refused, `null` included: a publisher meaning to restrict an activity must never
/// address the whole account by accident (leaving the field out does that on purpose).
fn parse_audience(v: &Value, at: &str) -> Result<Audience, PublishError> {
    let shape = || format!("must be an array of 1 to {AUDIENCE_GRANTS_MAX} grant strings; leave it out to address the whole account");
    let Value::Array(list) = v else { return Err(PublishError::invalid(at.to_owned(), shape())) };
    if list.is_empty() || list.len() > AUDIENCE_GRANTS_MAX {
        return Err(PublishError::invalid(at.to_owned(), shape()));
    }
    let mut grants = Vec::with_capacity(list.len());
    for (i, g) in list.iter().enumerate() {
        let g = g.as_str().ok_or_else(|| PublishError::invalid(format!("{at}[{i}]"), "must be a string"))?;
        crate::audience::check_grant(g).map_err(|e| PublishError::invalid(format!("{at}[{i}]"), e.to_string()))?;
        grants.push(g);
    }
    Audience::new(grants).map_err(|e: GrantError| PublishError::invalid(at.to_owned(), e.to_string()))
}

/// The activity text with every CR and LF turned into a space, so the frame that carries it
/// stays one `data:` line. A publisher that pretty-prints its body would otherwise split the
/// frame: the event would reach subscribers as broken JSON and be dropped by every client.
/// This changes no value: JSON strings cannot hold a raw CR or LF, so each one is whitespace
/// between tokens, and a space is whitespace too.
fn one_line(data: Box<RawValue>) -> Box<RawValue> {
    if !data.get().contains(['\n', '\r']) {
        return data;
    }
    let text = data.get().replace(['\n', '\r'], " ");
    RawValue::from_string(text).expect("replacing whitespace keeps JSON valid")
}

/// Checks the fields the hub and resolvers read; everything else is passed through untouched.
pub fn validate_activity(a: &Value, at: &str) -> Result<(), PublishError> {
    let obj = a.as_object().ok_or_else(|| PublishError::invalid(at.to_owned(), "must be an object"))?;
    match obj.get("activity_type") {
        Some(Value::String(t)) if ACTIVITY_TYPES.contains(&t.to_ascii_lowercase().as_str()) => {}
        Some(Value::String(_)) => {
            return Err(PublishError::invalid(
                format!("{at}.activity_type"),
                "must be one of created, edited, deleted, updated",
            ));
        }
        Some(_) => return Err(PublishError::invalid(format!("{at}.activity_type"), "must be a string")),
        None => return Err(PublishError::invalid(format!("{at}.activity_type"), "is required")),
    }
    for name in ["description", "timestamp"] {
        if let Some(v) = obj.get(name).filter(|v| !v.is_null() && !v.is_string()) {
            let _ = v;
            return Err(PublishError::invalid(format!("{at}.{name}"), "must be a string"));
        }
    }
    for (name, v) in [("metadata", obj.get("metadata")), ("user", obj.get("user"))] {
        if v.is_some_and(|v| !v.is_null() && !v.is_object()) {
            return Err(PublishError::invalid(format!("{at}.{name}"), "must be an object"));
        }
    }
    if let Some(r) = obj.get("resource").filter(|v| !v.is_null()) {
        let r = r.as_object().ok_or_else(|| PublishError::invalid(format!("{at}.resource"), "must be an object"))?;
        check_typed_ref(r.get("type"), r.get("id"), &format!("{at}.resource"))?;
        if let Some(p) = r.get("parent").filter(|v| !v.is_null()) {
            check_parent(p, &format!("{at}.resource.parent"))?;
        }
    }
    if let Some(p) = obj.get("parent").filter(|v| !v.is_null()) {
        check_parent(p, &format!("{at}.parent"))?;
    }
    Ok(())
}

fn check_parent(p: &Value, at: &str) -> Result<(), PublishError> {
    let p = p.as_object().ok_or_else(|| PublishError::invalid(at.to_owned(), "must be an object"))?;
    check_typed_ref(p.get("type"), p.get("id"), at)
}

fn check_typed_ref(kind: Option<&Value>, id: Option<&Value>, at: &str) -> Result<(), PublishError> {
    if kind.is_some_and(|t| !t.is_null() && !t.is_string()) {
        return Err(PublishError::invalid(format!("{at}.type"), "must be a string"));
    }
    if id.is_some_and(|i| !(i.is_null() || i.is_string() || i.is_number())) {
        return Err(PublishError::invalid(format!("{at}.id"), "must be a string, a number or null"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (PublishErrorKind, String) {
        let e = parse_body(body.as_bytes()).unwrap_err();
        (e.kind, e.field)
    }

    #[test]
    fn accepts_one_and_many_and_keeps_bytes() {
        let one = r#"{"account":"4242","data":{"activity_type":"created","x":{"y":1.50},"z":[]}}"#;
        let items = parse_body(one.as_bytes()).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].account, "4242");
        assert_eq!(items[0].data.get(), r#"{"activity_type":"created","x":{"y":1.50},"z":[]}"#);
        let many = format!("[{one},{one}]");
        assert_eq!(parse_body(many.as_bytes()).unwrap().len(), 2);
        let numeric = r#"{"account":42,"data":{"activity_type":"Updated"}}"#;
        assert_eq!(parse_body(numeric.as_bytes()).unwrap()[0].account, "42");
        assert_eq!(items[0].key, None);
        let keyed = r#"{"account":"a","key":"order-7:1","data":{"activity_type":"created"}}"#;
        assert_eq!(parse_body(keyed.as_bytes()).unwrap()[0].key.as_deref(), Some("order-7:1"));
        let null_key = r#"{"account":"a","key":null,"data":{"activity_type":"created"}}"#;
        assert_eq!(parse_body(null_key.as_bytes()).unwrap()[0].key, None);
    }

    #[test]
    fn refuses_bad_keys() {
        let with_key = |k: &str| format!(r#"[{{"account":"a","data":{{"activity_type":"created"}}}},{{"account":"a","key":{k},"data":{{"activity_type":"created"}}}}]"#);
        let long = format!("\"{}\"", "k".repeat(KEY_LEN_MAX + 1));
        for bad in ["\"\"", "7", "{}", "\"a\\nb\"", long.as_str()] {
            assert_eq!(err(&with_key(bad)), (PublishErrorKind::Invalid, "[1].key".into()), "{bad}");
        }
        let longest = format!("\"{}\"", "k".repeat(KEY_LEN_MAX));
        assert!(parse_body(with_key(&longest).as_bytes()).is_ok());
    }

    #[test]
    fn names_the_field() {
        use PublishErrorKind::*;
        assert_eq!(err("nope"), (Syntax, "body".into()));
        assert_eq!(err("{"), (Syntax, "body".into()));
        assert_eq!(err("[]"), (Invalid, "body".into()));
        assert_eq!(err(r#"{"data":{"activity_type":"created"}}"#), (Invalid, "account".into()));
        assert_eq!(err(r#"{"account":"a"}"#), (Invalid, "data".into()));
        assert_eq!(err(r#"{"account":"","data":{}}"#), (Invalid, "account".into()));
        assert_eq!(err(r#"{"account":"a","data":[]}"#), (Invalid, "data".into()));
        assert_eq!(err(r#"{"account":"a","data":{}}"#), (Invalid, "data.activity_type".into()));
        assert_eq!(err(r#"{"account":"a","data":{"activity_type":"moved"}}"#), (Invalid, "data.activity_type".into()));
        assert_eq!(err(r#"{"account":"a","acount":"b","data":{}}"#), (Invalid, "acount".into()));
        assert_eq!(
            err(r#"[{"account":"a","data":{"activity_type":"created"}},{"account":"a","data":{"activity_type":"created","resource":{"type":3}}}]"#),
            (Invalid, "[1].data.resource.type".into())
        );
        assert_eq!(
            err(r#"{"account":"a","data":{"activity_type":"created","resource":{"parent":{"id":[]}}}}"#),
            (Invalid, "data.resource.parent.id".into())
        );
        assert_eq!(err(r#"{"account":"a","data":{"activity_type":"created","parent":"x"}}"#), (Invalid, "data.parent".into()));
    }

    #[test]
    fn reads_the_audience_and_refuses_bad_ones_by_name() {
        let item = |audience: &str| format!(r#"{{"account":"a","data":{{"activity_type":"created"}},"audience":{audience}}}"#);
        let parsed = parse_body(item(r#"["role:admin","user:alice","role:admin"]"#).as_bytes()).unwrap();
        let names: Vec<&str> = parsed[0].audience.as_ref().unwrap().iter().collect();
        assert_eq!(names, ["role:admin", "user:alice"]);
        assert!(parse_body(br#"{"account":"a","data":{"activity_type":"created"}}"#).unwrap()[0].audience.is_none());
        let long = format!("[\"{}\"]", "g".repeat(crate::audience::GRANT_LEN_MAX + 1));
        let many = format!("[{}]", (0..=AUDIENCE_GRANTS_MAX).map(|i| format!("\"g{i}\"")).collect::<Vec<_>>().join(","));
        for (bad, field) in [
            ("[]", "audience"),
            ("null", "audience"),
            ("\"role:admin\"", "audience"),
            ("{}", "audience"),
            (many.as_str(), "audience"),
            ("[\"a\", 7]", "audience[1]"),
            ("[\"a\", null]", "audience[1]"),
            ("[\"\"]", "audience[0]"),
            ("[\"a\\nb\"]", "audience[0]"),
            (long.as_str(), "audience[0]"),
        ] {
            assert_eq!(err(&item(bad)), (PublishErrorKind::Invalid, field.to_owned()), "{bad}");
        }
        let batch = format!("[{},{}]", item("[\"a\"]"), item("[]"));
        assert_eq!(err(&batch), (PublishErrorKind::Invalid, "[1].audience".into()));
    }

    #[test]
    fn refuses_deep_json_and_bad_utf8() {
        let deep = format!("{{\"account\":\"a\",\"data\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_body(deep.as_bytes()).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.contains("recursion limit")), ("data", true), "{e}");
        assert_eq!(parse_body(b"{\"account\":\"\xff\"}").unwrap_err().kind, PublishErrorKind::Syntax);
    }
}
