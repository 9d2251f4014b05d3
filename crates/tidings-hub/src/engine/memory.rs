//! The in-memory engine: one node, nothing to install, history lost on restart.
//!
//! Ids are `<epoch>-<seq>` with a random epoch per process, so an id from a previous process
//! is recognised and answered with `resync` rather than misread. One global `seq` counter,
//! assigned under one lock together with the history append and the fan-out, gives every
//! account increasing ids in publish order and every stream a consistent cut. The window
//! itself (trimming, opening, idempotency keys) is [`History`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use tidings_protocol::Viewer;
use tidings_protocol::frame::encode_data_frame;
use tidings_protocol::resume::LastEventId;

use super::history::{Entry, History, new_epoch, now_ms};
use super::{Accepted, Engine, EngineError, NewEvent, Opening, Retained, StoredFrame};
use crate::config::HistoryConfig;
use crate::fanout::Fanout;

/// History of every account, bounded by count, age and bytes per account and by bytes for the
/// node; accounts with neither events nor streams are forgotten.
#[derive(Debug)]
pub struct MemoryEngine {
    fanout: Arc<Fanout>,
    /// Taken for every publish (ids, append, delivery) and every opening, so a stream
    /// registered before its opening sees each event in its replay or its queue.
    history: Mutex<History>,
}

impl MemoryEngine {
    pub fn new(history: &HistoryConfig, fanout: Arc<Fanout>) -> Self {
        Self::with_epoch(new_epoch(), history, fanout)
    }

    pub fn with_epoch(epoch: u64, history: &HistoryConfig, fanout: Arc<Fanout>) -> Self {
        Self { fanout, history: Mutex::new(History::new(epoch, 0, history)) }
    }
}

impl Engine for MemoryEngine {
    fn publish(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, EngineError>> {
        let at_ms = now_ms();
        let mut h = self.history.lock().expect("history lock");
        let accepted = h.admit(&batch, at_ms);
        for (ev, a) in batch.into_iter().zip(&accepted) {
            if a.duplicate {
                continue;
            }
            let id = h.next_id();
            debug_assert_eq!(id, a.id, "admit numbers the new events from the head, in order");
            let bytes = Bytes::from(encode_data_frame(Some(id), &ev.payload));
            self.fanout.deliver(&ev.account, id.seq, &bytes, ev.audience.as_deref());
            h.push(&ev.account, Entry { at_ms, frame: StoredFrame { seq: id.seq, bytes }, key: ev.key, audience: ev.audience });
            h.trim(&ev.account, at_ms);
            h.trim_node();
        }
        drop(h);
        async move { Ok(accepted) }.boxed()
    }

    fn open<'a>(&'a self, account: &'a str, last_event_id: LastEventId, viewer: &'a Viewer) -> BoxFuture<'a, Result<Opening, EngineError>> {
        let opening = self.history.lock().expect("history lock").open(account, last_event_id, viewer, now_ms());
        async move { Ok(opening) }.boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn maintain(&self) {
        let mut h = self.history.lock().expect("history lock");
        h.trim_all(now_ms());
        h.trim_node();
        h.forget_idle(|account| self.fanout.has_streams(account));
    }

    fn retained(&self) -> Option<Retained> {
        Some(self.history.lock().expect("history lock").retained())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
