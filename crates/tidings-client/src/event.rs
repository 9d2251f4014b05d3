//! What a subscription yields: typed stream events, reconnect notices and the terminal error.

use std::time::Duration;

use serde_json::Value;
use tidings_protocol::CloseReason;
use tidings_protocol::resolver::Key;

/// One item of a subscription, in stream order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A stream opened; the first frame of every connection.
    Connected {
        client_id: String,
        session_id: Option<String>,
        /// The hub replayed from our `Last-Event-ID` (no gap).
        resumed: Option<bool>,
        /// The hub's ping interval; the watchdog is derived from it.
        heartbeat: Option<Duration>,
        /// The stream's position at this frame: its `id:` (the hub sends the starting
        /// position), else the id the client resumed from; `None` when there is neither.
        id: Option<String>,
    },
    /// Something changed in the account.
    Activity {
        id: Option<String>,
        /// The activity exactly as published.
        data: Value,
        /// Keys to invalidate: the hub's, or the local resolver's when the hub sent none.
        invalidate: Vec<Key>,
        /// Detail keys of deleted resources, to drop rather than refetch.
        remove: Vec<Key>,
    },
    /// A heartbeat.
    Ping,
    /// The hub could not prove continuity: everything cached for the account is stale.
    /// The cache hook has already been told ([`crate::Cache::invalidate_all`]).
    /// `id`: the position the stream continues from, when the hub sent one (a resync sent
    /// because the history started a new epoch carries the first position of that epoch).
    Resync { reason: String, id: Option<String> },
    /// The hub is ending this stream on purpose.
    Closed { reason: String, retry_ms: Option<u64> },
    /// The connection ended (or could not be made) and the client will retry after `delay`.
    Reconnecting { attempt: u32, delay: Duration, cause: Disconnect },
}

/// Why a connection ended or could not be made, when the client will retry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// Connecting or reading failed at the transport level.
    Network(String),
    /// The hub answered with this non-success status (5xx, 408, 429).
    Status(u16),
    /// The hub sent `closed` with a reason that allows reconnecting.
    Closed(String),
    /// The body ended without a `closed` frame.
    Ended,
    /// No bytes arrived for this long (about 2.5 heartbeats): the connection is presumed dead.
    Stalled(Duration),
    /// The token provider failed for a reason it marked as temporary.
    Token(String),
}

/// Why a subscription stopped for good. It is the last item of the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub rejected the credentials (401): sign in again.
    #[error("unauthorized (401): {body}")]
    Unauthorized { body: String },
    /// The identity may not stream (403).
    #[error("forbidden (403): {body}")]
    Forbidden { body: String },
    /// The hub ended the stream for a reason that forbids reconnecting (`superseded`, `revoked`).
    #[error("stream closed by the hub: {}", reason.as_str())]
    Closed { reason: CloseReason },
    /// The hub refused the request itself (a 4xx other than 401/403/408/429, such as a wrong
    /// URL or 406): retrying the same request cannot succeed.
    #[error("request rejected with status {status}: {body}")]
    Rejected { status: u16, body: String },
    /// The token provider reported that there is no session any more.
    #[error("signed out")]
    SignedOut,
}

/// What a token provider returns when it has no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No session: stop the subscription with [`Error::SignedOut`].
    #[error("signed out")]
    SignedOut,
    /// Could not get a token now (refresh endpoint down, ...): retry with backoff.
    #[error("token unavailable: {0}")]
    Unavailable(String),
}
