//! Event ids: `<epoch>-<seq>`, ASCII only, comparable by the hub and opaque to clients.
//!
//! `epoch` names one history (an in-memory hub process, a durable data file, a Redis
//! keyspace); `seq` increases with every publish in that history, so within one account ids
//! increase in publish order. An id can never contain CR, LF or NUL: it is built from hex and
//! decimal digits only, so it can never split an SSE frame.

use std::fmt;
use std::str::FromStr;

/// Longest id text accepted from a client (`Last-Event-ID`); anything longer is garbage.
/// 16 hex digits + `-` + 20 decimal digits = 37; the margin tolerates nothing else.
pub const EVENT_ID_TEXT_LEN_MAX: usize = 16 + 1 + 20;

/// A position in one history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// Which history this id belongs to; ids of different epochs are not comparable.
    pub epoch: u64,
    /// Position in that history; 1 is the first event ever published in it.
    pub seq: u64,
}

impl EventId {
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.seq)
    }
}

/// Why a client-supplied id could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// Empty text.
    #[error("event id is empty")]
    Empty,
    /// Longer than [`EVENT_ID_TEXT_LEN_MAX`].
    #[error("event id is too long")]
    TooLong,
    /// Not `<hex epoch>-<decimal seq>`.
    #[error("event id is not of the form <epoch>-<seq>")]
    Malformed,
}

impl FromStr for EventId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParseIdError::Empty);
        }
        if s.len() > EVENT_ID_TEXT_LEN_MAX {
            return Err(ParseIdError::TooLong);
        }
        let (epoch, seq) = s.split_once('-').ok_or(ParseIdError::Malformed)?;
        let hex = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let dec = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !hex(epoch) || !dec(seq) || epoch.len() > 16 {
            return Err(ParseIdError::Malformed);
        }
        Ok(Self {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| ParseIdError::Malformed)?,
            seq: seq.parse().map_err(|_| ParseIdError::Malformed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for id in [EventId::new(0, 0), EventId::new(0xdead_beef, 42), EventId::new(u64::MAX, u64::MAX)] {
            let text = id.to_string();
            assert!(text.len() <= EVENT_ID_TEXT_LEN_MAX, "{text}");
            assert_eq!(text.parse::<EventId>(), Ok(id));
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "-", "1-", "-1", "g-1", "1-x", "1-1-1", "1 -1", "A-1", "1-1\n", "1-99999999999999999999999"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("x".repeat(100).parse::<EventId>(), Err(ParseIdError::TooLong));
    }
}
