//! Engines: where events live between publish and delivery.
//!
//! An engine assigns ids, keeps a bounded history per account, answers "how does a stream
//! for this account start, given this `Last-Event-ID`" ([`Opening`]), and hands every stored
//! event to the node's [`Fanout`](crate::fanout::Fanout) exactly once, in id order per account.
//! It never writes to a socket. The hub registers a stream in the fan-out *before* opening it,
//! and the stream skips queued frames at or below its replay position, which is what makes the
//! replay/live boundary exact for every engine, local or remote.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tidings_protocol::{Audience, EventId, Viewer};
use tidings_protocol::frame::ResyncReason;
use tidings_protocol::resume::{LastEventId, ResumeDecision};

pub mod durable;
pub mod history;
mod idempotency;
pub mod memory;
pub mod redis;

/// One activity to store: its account, its `activity` payload (JSON, encoded once), who in
/// the account may see it, and its idempotency key, if the publisher gave one.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub account: Arc<str>,
    pub payload: Arc<str>,
    /// `None`: every stream of the account. Stored with the event: delivery and replay both
    /// honour it, on every node.
    pub audience: Option<Arc<Audience>>,
    /// Within `account`, an event whose key is still remembered is not stored again (the rule
    /// is [`history::History::admit`]'s; Redis keeps it in its publish script): the publisher
    /// is answered with the id the key got first.
    pub key: Option<Arc<str>>,
}

/// What the engine did with one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The event's id; for a duplicate, the id its key got the first time.
    pub id: EventId,
    /// The key was already accepted: nothing was stored or delivered for this event.
    pub duplicate: bool,
}

/// A stored event's frame, ready to write.
#[derive(Debug, Clone)]
pub struct StoredFrame {
    pub seq: u64,
    pub bytes: Bytes,
}

/// How a stream starts.
#[derive(Debug)]
pub struct Opening {
    /// The position the stream starts from, sent as the `connected` frame's id.
    pub position: EventId,
    pub decision: ResumeDecision,
    /// With [`ResumeDecision::Replay`], every retained event after the client's id that the
    /// stream may see, in order.
    pub replay: Vec<StoredFrame>,
}

impl Opening {
    /// How a stream starts in a history whose epoch is `epoch` and head `head`, given the
    /// decision and, for a replay, the retained frames of the account in order (read lazily:
    /// reading stops once the replay is known to exceed `replay_max_bytes`, which turns it
    /// into `resync` `replay_too_large`).
    pub(crate) fn from_retained<'f>(
        epoch: u64,
        head: u64,
        decision: ResumeDecision,
        retained: impl IntoIterator<Item = &'f StoredFrame>,
        replay_max_bytes: usize,
    ) -> Self {
        let ResumeDecision::Replay { after } = decision else {
            return Self { position: EventId::new(epoch, head), decision, replay: Vec::new() };
        };
        let mut replay = Vec::new();
        let mut bytes = 0usize;
        for f in retained.into_iter().filter(|f| f.seq > after) {
            bytes += f.bytes.len();
            if bytes > replay_max_bytes {
                return Self::too_large(epoch, head);
            }
            replay.push(f.clone());
        }
        Self { position: EventId::new(epoch, after), decision, replay }
    }

    /// Where the stream stands once its opening is written: after the last replayed event, or
    /// at the `connected` position when nothing is replayed. Live frames at or below it were
    /// already covered by the opening and are skipped.
    pub fn live_from(&self) -> EventId {
        let replayed = self.replay.iter().map(|f| f.seq).max().unwrap_or(0);
        EventId::new(self.position.epoch, self.position.seq.max(replayed))
    }

    /// The answer for a gap larger than the replay budget: `resync`, then live from `head`.
    pub(crate) fn too_large(epoch: u64, head: u64) -> Self {
        Self { position: EventId::new(epoch, head), decision: ResumeDecision::Resync(ResyncReason::ReplayTooLarge), replay: Vec::new() }
    }
}

/// The size of a history window held in the hub's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    pub accounts: usize,
    pub events: usize,
    pub bytes: usize,
}

/// Why an engine cannot start; the hub refuses to run rather than serve without history.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The durable engine's data file cannot be used; the message names it.
    #[error(transparent)]
    Durable(#[from] durable::StoreError),
    /// The Redis engine cannot start (not its server being down: that only makes it unready).
    #[error(transparent)]
    Redis(#[from] redis::StartError),
}

/// An engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The backing store cannot be reached or failed; nothing was stored (publish gets 503).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A batch spanning several stores (shards of the Redis engine) was stored in some and
    /// failed in another: some items are stored and delivered, the rest not (publish gets
    /// 503; a retry with the same idempotency keys stores each item once).
    #[error("engine partly unavailable, part of the batch was stored: {0}")]
    PartlyStored(String),
}

/// The engine interface. Object-safe so the hub holds `Arc<dyn Engine>`.
pub trait Engine: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a batch, all or nothing (for an engine split into shards, all or nothing per
    /// shard: see [`EngineError::PartlyStored`]), and returns what became of each event, in
    /// order. An `Ok` means every new event is stored as durably as the engine promises; events
    /// whose key is already remembered (or repeats an earlier item's of the batch) are answered
    /// with the first id and not stored again.
    fn publish(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, EngineError>>;

    /// Decides how a stream of `account` starts from the client's position and reads what it
    /// must replay: the events after it that `viewer` may see (the others leave gaps in the
    /// seqs, which are not loss).
    fn open<'a>(&'a self, account: &'a str, last_event_id: LastEventId, viewer: &'a Viewer) -> BoxFuture<'a, Result<Opening, EngineError>>;

    /// Whether the engine can serve right now (`/readyz`).
    fn is_ready(&self) -> bool;

    /// For an engine split into shards, whether each can serve right now, in shard order
    /// (`/readyz`, the operator page); empty for an engine that is not.
    fn shards_ready(&self) -> Vec<bool> {
        Vec::new()
    }

    /// Periodic upkeep (age trimming, forgetting idle accounts); called by the hub's ticker.
    fn maintain(&self) {}

    /// What the node's own history window holds, for engines that keep one in this process.
    fn retained(&self) -> Option<Retained> {
        None
    }

    /// Finishes pending work and releases the backing store; called once when the hub stops.
    /// Publishes after it fail with [`EngineError::Unavailable`].
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// A short name for logs and the start-up banner.
    fn name(&self) -> &'static str;
}
