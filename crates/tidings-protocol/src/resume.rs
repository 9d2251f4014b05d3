//! How a stream starts: fresh, exact replay after the client's id, or an explicit `resync`.
//!
//! The rule the whole product rests on: the hub either proves continuity from the client's
//! `Last-Event-ID` and replays exactly what came after it, or says `resync`. This module only
//! decides; reading history and writing frames is the hub's job.

use crate::frame::ResyncReason;
use crate::id::EventId;

/// What one history knows about an account at the moment a stream registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWindow {
    /// The epoch of the history serving the stream.
    pub epoch: u64,
    /// The highest seq assigned so far in this history (0 when nothing was ever published).
    pub head: u64,
    /// Events of this account with a seq at or below this may have been dropped (trimmed by
    /// count or age, or forgotten); everything above it up to `head` is retained.
    pub trimmed_through: u64,
}

/// The answer to a subscribe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeDecision {
    /// No position given: start live from `head`.
    Fresh,
    /// Continuity is proven: replay every retained event of the account with a seq above
    /// `after`, then go live.
    Replay { after: u64 },
    /// Continuity cannot be proven: send `resync`, then go live from `head`.
    Resync(ResyncReason),
}

/// A client's resume position (`Last-Event-ID`, or the `last_event_id` query parameter),
/// read once where the request arrives; engines only ever see this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastEventId {
    /// No position: none given, or an empty one (what an SSE client sends after an empty
    /// `id:` line). The stream starts live.
    None,
    /// A well-formed id, of this history or not.
    Id(EventId),
    /// Text that is no id at all (malformed, too long, not UTF-8): answered with `resync`
    /// `invalid_id`. The text itself is dropped here, so it is never echoed or logged.
    Invalid,
}

impl LastEventId {
    /// Reads a position from text; empty text is no position.
    pub fn parse(text: &str) -> Self {
        if text.is_empty() {
            return Self::None;
        }
        text.parse().map_or(Self::Invalid, Self::Id)
    }

    /// Reads a position from raw header bytes, which may not be UTF-8 (then it is invalid).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        std::str::from_utf8(bytes).map_or(Self::Invalid, Self::parse)
    }

    /// The id, when there is a well-formed one.
    pub fn id(self) -> Option<EventId> {
        match self {
            Self::Id(id) => Some(id),
            Self::None | Self::Invalid => None,
        }
    }
}

/// Decides how to answer a subscribe from a client's resume position.
pub fn decide(last_event_id: LastEventId, window: &HistoryWindow) -> ResumeDecision {
    let id = match last_event_id {
        LastEventId::None => return ResumeDecision::Fresh,
        LastEventId::Invalid => return ResumeDecision::Resync(ResyncReason::InvalidId),
        LastEventId::Id(id) => id,
    };
    if id.epoch != window.epoch {
        ResumeDecision::Resync(ResyncReason::EpochChanged)
    } else if id.seq > window.head {
        ResumeDecision::Resync(ResyncReason::UnknownId)
    } else if id.seq < window.trimmed_through {
        ResumeDecision::Resync(ResyncReason::HistoryTrimmed)
    } else {
        ResumeDecision::Replay { after: id.seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: HistoryWindow = HistoryWindow { epoch: 0xab, head: 100, trimmed_through: 40 };

    fn check(id: Option<&str>, expected: ResumeDecision) {
        let last = id.map_or(LastEventId::None, LastEventId::parse);
        assert_eq!(decide(last, &W), expected, "id {id:?}");
    }

    #[test]
    fn decisions() {
        use ResumeDecision::*;
        use ResyncReason::*;
        check(None, Fresh);
        check(Some(""), Fresh);
        check(Some("ab-100"), Replay { after: 100 });
        check(Some("ab-40"), Replay { after: 40 });
        check(Some("ab-39"), Resync(HistoryTrimmed));
        check(Some("ab-101"), Resync(UnknownId));
        check(Some("ac-50"), Resync(EpochChanged));
        check(Some("garbage\u{0}"), Resync(InvalidId));
        check(Some("ab-0"), Resync(HistoryTrimmed));
    }

    #[test]
    fn fresh_history_replays_from_zero() {
        let w = HistoryWindow { epoch: 1, head: 0, trimmed_through: 0 };
        assert_eq!(decide(LastEventId::parse("1-0"), &w), ResumeDecision::Replay { after: 0 });
    }

    #[test]
    fn header_bytes_that_are_not_utf8_are_invalid() {
        assert_eq!(LastEventId::from_bytes(b"ab-1\xff"), LastEventId::Invalid);
        assert_eq!(LastEventId::from_bytes(b"ab-1"), LastEventId::Id(EventId::new(0xab, 1)));
        assert_eq!(LastEventId::from_bytes(b""), LastEventId::None);
        assert_eq!(LastEventId::parse("x".repeat(100).as_str()), LastEventId::Invalid);
    }
}
