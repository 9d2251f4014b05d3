//! The in-memory engine: one node, nothing to install, history lost on restart.
//!
//! Ids are `<epoch>-<seq>` with a random epoch per process, so an id from a previous process
//! is recognised and answered with `resync` rather than misread. One global `seq` counter,
//! assigned under one lock together with the history append and the fan-out, gives every
//! account increasing ids in publish order and every stream a consistent cut.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use tidings_protocol::EventId;
use tidings_protocol::frame::encode_data_frame;
use tidings_protocol::resume::{HistoryWindow, decide};

use super::idempotency::KeyMemory;
use super::{Accepted, Engine, EngineError, NewEvent, Opening, StoredFrame};
use crate::config::HistoryConfig;
use crate::fanout::Fanout;

/// History of every account, bounded by count and age per account.
#[derive(Debug)]
pub struct MemoryEngine {
    epoch: u64,
    max_events: usize,
    max_age: Duration,
    replay_max_bytes: usize,
    fanout: Arc<Fanout>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    head: u64,
    accounts: HashMap<Arc<str>, AccountLog>,
    /// Idempotency keys of the retained events, forgotten as their events are trimmed.
    keys: KeyMemory,
}

#[derive(Debug, Default)]
struct AccountLog {
    events: VecDeque<(Instant, StoredFrame)>,
    /// Every event of this account with a seq at or below this may have been dropped.
    trimmed_through: u64,
}

impl AccountLog {
    fn trim(&mut self, max_events: usize, oldest: Option<Instant>) {
        while self.events.len() > max_events || self.events.front().is_some_and(|(at, _)| oldest.is_some_and(|o| *at < o)) {
            if let Some((_, f)) = self.events.pop_front() {
                self.trimmed_through = f.seq;
            }
        }
    }
}

impl MemoryEngine {
    pub fn new(history: &HistoryConfig, fanout: Arc<Fanout>) -> Self {
        // 32 random bits keep ids short; a collision between two processes' epochs needs
        // the same 1-in-4-billion draw, and then still needs a matching seq to be misread.
        let epoch = u64::from(rand::random::<u32>()) | 1;
        Self::with_epoch(epoch, history, fanout)
    }

    pub fn with_epoch(epoch: u64, history: &HistoryConfig, fanout: Arc<Fanout>) -> Self {
        Self { epoch, max_events: history.max_events, max_age: history.max_age, replay_max_bytes: history.replay_max_bytes, fanout, state: Mutex::default() }
    }

    fn oldest_kept(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(self.max_age)
    }
}

impl Engine for MemoryEngine {
    fn publish(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, EngineError>> {
        let now = Instant::now();
        let oldest = self.oldest_kept(now);
        let mut guard = self.state.lock().expect("engine lock");
        let state = &mut *guard;
        let mut ids = Vec::with_capacity(batch.len());
        for ev in batch {
            if let (Some(key), Some(log)) = (&ev.key, state.accounts.get_mut(&ev.account)) {
                // Exactly the window a resuming client sees: events past their age are gone
                // even if the upkeep tick has not trimmed them yet.
                log.trim(self.max_events, oldest);
                state.keys.forget_through(&ev.account, log.trimmed_through);
                if let Some(seq) = state.keys.get(&ev.account, key) {
                    ids.push(Accepted { id: EventId::new(self.epoch, seq), duplicate: true });
                    continue;
                }
            }
            state.head += 1;
            let id = EventId::new(self.epoch, state.head);
            let bytes = Bytes::from(encode_data_frame(Some(id), &ev.payload));
            let log = state.accounts.entry(ev.account.clone()).or_default();
            log.events.push_back((now, StoredFrame { seq: id.seq, bytes: bytes.clone() }));
            log.trim(self.max_events, oldest);
            if let Some(key) = &ev.key {
                state.keys.insert(&ev.account, key, id.seq);
            }
            state.keys.forget_through(&ev.account, log.trimmed_through);
            self.fanout.deliver(&ev.account, id.seq, &bytes);
            ids.push(Accepted { id, duplicate: false });
        }
        drop(guard);
        async move { Ok(ids) }.boxed()
    }

    fn open<'a>(&'a self, account: &'a str, last_event_id: Option<&'a str>) -> BoxFuture<'a, Result<Opening, EngineError>> {
        let oldest = self.oldest_kept(Instant::now());
        let mut state = self.state.lock().expect("engine lock");
        let head = state.head;
        let log = state.accounts.get_mut(account);
        let trimmed_through = log.map_or(0, |l| {
            l.trim(self.max_events, oldest);
            l.trimmed_through
        });
        state.keys.forget_through(account, trimmed_through);
        let window = HistoryWindow { epoch: self.epoch, head, trimmed_through };
        let decision = decide(last_event_id, &window);
        let retained = state.accounts.get(account).into_iter().flat_map(|l| l.events.iter().map(|(_, f)| f));
        let opening = Opening::from_retained(self.epoch, head, decision, retained, self.replay_max_bytes);
        drop(state);
        async move { Ok(opening) }.boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn maintain(&self) {
        let oldest = self.oldest_kept(Instant::now());
        let mut state = self.state.lock().expect("engine lock");
        let state = &mut *state;
        for (account, log) in &mut state.accounts {
            log.trim(self.max_events, oldest);
            state.keys.forget_through(account, log.trimmed_through);
            // An empty log keeps its entry: `trimmed_through` is what proves a gap later.
            if log.events.is_empty() && log.events.capacity() > 0 {
                log.events = VecDeque::new();
            }
        }
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
