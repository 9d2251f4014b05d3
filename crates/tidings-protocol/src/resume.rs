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

/// Decides how to answer a subscribe with an optional `Last-Event-ID`.
/// An empty id counts as none (that is what an SSE client sends after an empty `id:` line).
pub fn decide(last_event_id: Option<&str>, window: &HistoryWindow) -> ResumeDecision {
    let Some(text) = last_event_id.filter(|t| !t.is_empty()) else {
        return ResumeDecision::Fresh;
    };
    let Ok(id) = text.parse::<EventId>() else {
        return ResumeDecision::Resync(ResyncReason::InvalidId);
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
        assert_eq!(decide(id, &W), expected, "id {id:?}");
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
        assert_eq!(decide(Some("1-0"), &w), ResumeDecision::Replay { after: 0 });
    }
}
