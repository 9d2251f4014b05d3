//! SSE frames of wire protocol v1: encoding (hub side) and the typed message (client side).
//!
//! Every frame is the default SSE event (`event: message`) carrying one JSON object with a
//! `type` field in a single `data:` line. JSON from `serde_json` never contains a raw newline
//! (strings escape it), so a frame can never be split by its payload. Encoding happens once
//! per event; the hub shares the resulting bytes with every stream. This module does not know
//! about clocks: timestamps come in as text.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::EventId;
use crate::resolver::Key;

/// Why the hub ends a stream on purpose; sent in the `closed` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CloseReason {
    /// The hub is shutting down or draining; reconnect elsewhere or later.
    Shutdown,
    /// A newer stream for the same session replaced this one; do not reconnect.
    Superseded,
    /// The credential expired during the stream; reconnect with a fresh token.
    TokenExpired,
    /// The client did not read fast enough; reconnect and resume.
    SlowConsumer,
    /// The stream reached its maximum lifetime; reconnect and resume.
    Lifetime,
    /// The session was revoked; do not reconnect.
    Revoked,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        Self::Shutdown,
        Self::Superseded,
        Self::TokenExpired,
        Self::SlowConsumer,
        Self::Lifetime,
        Self::Revoked,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Superseded => "superseded",
            Self::TokenExpired => "token_expired",
            Self::SlowConsumer => "slow_consumer",
            Self::Lifetime => "lifetime",
            Self::Revoked => "revoked",
        }
    }

    /// Whether a client should reconnect after this close.
    pub const fn allows_reconnect(self) -> bool {
        !matches!(self, Self::Superseded | Self::Revoked)
    }
}

/// Why the hub cannot prove continuity from a client's `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResyncReason {
    /// The id is older than the retained history.
    HistoryTrimmed,
    /// The id belongs to another history (hub restarted without persistence, data wiped).
    EpochChanged,
    /// The id is well-formed but ahead of anything this history assigned.
    UnknownId,
    /// The id could not be read at all.
    InvalidId,
    /// The engine lost events or could not be reached; continuity is unknown.
    EngineOutage,
    /// The events after the id are retained but add up to more than the hub replays to one
    /// stream (`history.replay_max_bytes`); refetching is cheaper than replaying them.
    ReplayTooLarge,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 6] =
        [Self::HistoryTrimmed, Self::EpochChanged, Self::UnknownId, Self::InvalidId, Self::EngineOutage, Self::ReplayTooLarge];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HistoryTrimmed => "history_trimmed",
            Self::EpochChanged => "epoch_changed",
            Self::UnknownId => "unknown_id",
            Self::InvalidId => "invalid_id",
            Self::EngineOutage => "engine_outage",
            Self::ReplayTooLarge => "replay_too_large",
        }
    }
}

/// The `retry:` preamble that opens every stream.
pub fn encode_retry(retry_ms: u64) -> String {
    format!("retry: {retry_ms}\n\n")
}

/// The `connected` frame, always the first event of a stream. It carries the stream's
/// starting position as its `id:`, so a client that drops before any activity still resumes
/// from a known position instead of silently starting fresh.
pub fn encode_connected(position: EventId, c: &Connected<'_>) -> String {
    message(Some(position), &ConnectedWire { kind: "connected", c })
}

/// Fields of the `connected` frame.
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    pub client_id: &'a str,
    pub timestamp: &'a str,
    pub session_id: &'a str,
    pub resumed: bool,
    pub heartbeat_ms: u64,
}

#[derive(Serialize)]
struct ConnectedWire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    c: &'a Connected<'a>,
}

/// The JSON payload of an `activity` frame. `data` is written byte for byte as published;
/// `remove` is omitted when empty so the common frame stays small. Engines store this text
/// and frame it with its id once the id is assigned ([`encode_data_frame`]).
pub fn activity_payload(data: &RawValue, invalidate: &[Key], remove: &[Key]) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        data: &'a RawValue,
        invalidate: &'a [Key],
        #[serde(skip_serializing_if = "<[Key]>::is_empty")]
        remove: &'a [Key],
    }
    to_json(&Wire { kind: "activity", data, invalidate, remove })
}

/// An `activity` frame with its id.
pub fn encode_activity(id: EventId, data: &RawValue, invalidate: &[Key], remove: &[Key]) -> String {
    encode_data_frame(Some(id), &activity_payload(data, invalidate, remove))
}

/// Frames one JSON payload (which must not contain CR or LF) as an SSE event.
pub fn encode_data_frame(id: Option<EventId>, json: &str) -> String {
    debug_assert!(!json.contains('\n') && !json.contains('\r'));
    let mut out = String::with_capacity(json.len() + 64);
    if let Some(id) = id {
        use std::fmt::Write;
        let _ = writeln!(out, "id: {id}");
    }
    out.push_str("event: message\ndata: ");
    out.push_str(json);
    out.push_str("\n\n");
    out
}

/// A heartbeat `ping` frame.
pub fn encode_ping(timestamp: &str) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        timestamp: &'a str,
    }
    message(None, &Wire { kind: "ping", timestamp })
}

/// A `resync` frame: the client must treat all cached data of the account as stale.
/// When `id` is given the frame carries it, so the client's next resume starts from there.
pub fn encode_resync(reason: ResyncReason, id: Option<EventId>) -> String {
    #[derive(Serialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: &'static str,
        reason: ResyncReason,
    }
    message(id, &Wire { kind: "resync", reason })
}

/// A `closed` frame, sent just before the hub ends a stream on purpose.
/// `retry_ms` is dropped for reasons after which the client must not reconnect.
pub fn encode_closed(reason: CloseReason, retry_ms: u64) -> String {
    #[derive(Serialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: &'static str,
        reason: CloseReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    }
    let retry_ms = reason.allows_reconnect().then_some(retry_ms);
    let frame = message(None, &Wire { kind: "closed", reason, retry_ms });
    match retry_ms {
        // Also as a `retry:` field, which a native `EventSource` obeys (it never reads the
        // JSON): its reconnect then gets the same jitter as every other client's.
        Some(ms) => format!("retry: {ms}\n{frame}"),
        None => frame,
    }
}

fn message(id: Option<EventId>, body: &impl Serialize) -> String {
    encode_data_frame(id, &to_json(body))
}

fn to_json(body: &impl Serialize) -> String {
    // Serialising these types cannot fail: no maps with non-string keys, no fallible Serialize.
    serde_json::to_string(body).expect("frame serialisation is infallible")
}

/// A message as a client reads it from the `data:` of one SSE event.
/// Unknown `type` values become [`ServerMessage::Unknown`] so that clients stay forward
/// compatible; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMessage {
    Connected {
        client_id: String,
        timestamp: String,
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        resumed: Option<bool>,
        #[serde(default)]
        heartbeat_ms: Option<u64>,
    },
    Activity {
        data: serde_json::Value,
        #[serde(default)]
        invalidate: Vec<Key>,
        #[serde(default)]
        remove: Vec<Key>,
    },
    Ping {
        timestamp: String,
    },
    Resync {
        reason: String,
    },
    Closed {
        reason: String,
        #[serde(default)]
        retry_ms: Option<u64>,
    },
    #[serde(other)]
    Unknown,
}

impl ServerMessage {
    /// Parses one SSE `data:` payload.
    pub fn parse(data: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn activity_keeps_data_verbatim_and_parses_back() {
        let raw = RawValue::from_string(r#"{"b":1,"a":{"x":[1.50,"\n"]},"z":null}"#.to_owned()).unwrap();
        let keys = vec![vec![json!("edge-application")], vec![json!("edge-application"), json!(7)]];
        let frame = encode_activity(EventId::new(10, 3), &raw, &keys, &[]);
        assert!(frame.starts_with("id: a-3\nevent: message\ndata: {\"type\":\"activity\",\"data\":{\"b\":1,\"a\":{\"x\":[1.50,\"\\n\"]},\"z\":null},"));
        assert!(frame.ends_with("\n\n"));
        assert_eq!(frame.matches('\n').count(), 4, "one id line, one event line, one data line, blank");
        let data = frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        match ServerMessage::parse(data).unwrap() {
            ServerMessage::Activity { invalidate, remove, .. } => {
                assert_eq!(invalidate, keys);
                assert!(remove.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn closed_drops_retry_for_final_reasons() {
        assert!(encode_closed(CloseReason::Shutdown, 1500).contains(r#"{"type":"closed","reason":"shutdown","retry_ms":1500}"#));
        assert!(encode_closed(CloseReason::Shutdown, 1500).starts_with("retry: 1500\nevent: message\n"));
        assert!(encode_closed(CloseReason::Superseded, 1500).contains(r#"{"type":"closed","reason":"superseded"}"#));
        assert!(!encode_closed(CloseReason::Revoked, 1500).contains("retry:"));
        assert!(encode_closed(CloseReason::Revoked, 1500).contains(r#"{"type":"closed","reason":"revoked"}"#));
    }

    #[test]
    fn unknown_types_are_tolerated() {
        assert_eq!(ServerMessage::parse(r#"{"type":"future","x":1}"#).unwrap(), ServerMessage::Unknown);
        assert!(ServerMessage::parse("not json").is_err());
    }
}
