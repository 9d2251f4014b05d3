//! The durable engine: one node, history in a data file, ids valid across restarts and
//! crashes.
//!
//! A publish is answered only after its events are committed to the data file (see
//! [`FsyncPolicy`] for what "committed" means). Publishes go through a bounded queue to one
//! writer thread, which commits whatever has accumulated as one transaction — one flush for
//! many concurrent publishers (group commit) — then delivers every event to the fan-out in
//! seq order and answers each publisher.
//!
//! The retained history is also held in memory, as in the memory engine and bounded by the
//! same `[history]` limits, so opening a stream (fresh or resumed) never reads the disk; the
//! file is read once, at start-up. The in-memory copy changes only after a commit and only
//! on the writer thread, under the same lock that stream openings take, and delivery happens
//! under it too: that gives the same replay/live boundary as the memory engine.
//!
//! The epoch lives in the file (a new file draws a new one), and the head is committed with
//! every group, so seqs continue after any restart. Trimming (by count on publish, by age on
//! [`Engine::maintain`]) deletes rows and records each account's `trimmed_through`, which is
//! what proves a gap later. It does not replicate: one hub per data file (the file is locked).
//!
//! Why SQLite (bundled, via `rusqlite`) and not `redb`: SQLite's WAL mode with
//! `synchronous = NORMAL` keeps acknowledged commits through a crash of the process (the OS
//! holds them), which gives a useful middle policy; redb's non-flushed commits are rolled
//! back on any unclean stop. SQLite also names a damaged file precisely (`file is not a
//! database`, `quick_check`), returns freed pages to the file system (`incremental_vacuum`),
//! and its current releases fit this workspace's minimum Rust version. The cost is a C
//! compile of SQLite in the build, and no extra install at run time.

mod store;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use tidings_protocol::EventId;
use tidings_protocol::frame::encode_data_frame;
use tidings_protocol::resume::{HistoryWindow, decide};
use tokio::sync::{mpsc, oneshot};

pub use self::store::{DATA_FILE_NAME, StoreError};
use self::store::{Row, Store};
use super::idempotency::{Dedup, KeyMemory};
use super::{Accepted, Engine, EngineError, NewEvent, Opening, StoredFrame};
use crate::config::{FsyncPolicy, HistoryConfig};
use crate::fanout::Fanout;

/// Publish requests waiting for the writer. Beyond it publishers wait for room (their HTTP
/// request stays open): back-pressure instead of unbounded memory.
const COMMAND_QUEUE_MAX: usize = 1_024;
/// Most events committed in one group. Bounds one transaction's size and the latency added
/// to the first publisher of a group; one batch larger than this still commits whole.
const GROUP_COMMIT_EVENTS_MAX: usize = 8_192;

/// History of every account, on disk and mirrored in memory.
#[derive(Debug)]
pub struct DurableEngine {
    path: PathBuf,
    max_age: Duration,
    replay_max_bytes: usize,
    /// Changed only by the writer thread, after a commit.
    history: Arc<Mutex<History>>,
    /// To the writer thread. The engine holds the only sender: when it is dropped (or
    /// [`Engine::close`] is called) the writer closes the file and ends.
    commands: mpsc::Sender<Command>,
    /// False after a failed commit, until one succeeds (`/readyz`).
    healthy: Arc<AtomicBool>,
}

#[derive(Debug)]
enum Command {
    Publish { batch: Vec<NewEvent>, reply: oneshot::Sender<Result<Vec<Accepted>, EngineError>> },
    /// Trim every account by count and age, then give freed space back.
    Maintain,
    Close { done: oneshot::Sender<()> },
}

#[derive(Debug)]
struct History {
    epoch: u64,
    head: u64,
    accounts: HashMap<Arc<str>, AccountLog>,
    /// Idempotency keys of the retained events (stored with them in the file), forgotten as
    /// their events are trimmed.
    keys: KeyMemory,
}

#[derive(Debug, Default)]
struct AccountLog {
    /// `(stored at, unix ms)` and frame, in seq order.
    events: VecDeque<(u64, StoredFrame)>,
    /// Every event of this account with a seq at or below this may have been dropped.
    trimmed_through: u64,
}

impl AccountLog {
    /// Where a trim must cut (the new `trimmed_through`) once `incoming` `(seq, at)` are
    /// appended, so that at most `max_events` remain and none older than `oldest_ms`; `None`
    /// if nothing goes.
    fn cut(&self, incoming: &[(u64, u64)], max_events: usize, oldest_ms: u64) -> Option<u64> {
        let held = self.events.iter().map(|(at, f)| (f.seq, *at));
        let all = || held.clone().chain(incoming.iter().copied());
        let total = self.events.len() + incoming.len();
        let by_count = total.checked_sub(max_events + 1).and_then(|k| all().nth(k)).map(|(seq, _)| seq);
        let by_age = all().take_while(|(_, at)| *at < oldest_ms).last().map(|(seq, _)| seq);
        by_count.max(by_age).filter(|&cut| cut > self.trimmed_through)
    }

    /// Whether the event `seq` is still in the window a resuming client sees (not trimmed,
    /// and not past its age even if the upkeep has not trimmed it yet).
    fn retains(&self, seq: u64, oldest_ms: u64) -> bool {
        seq > self.trimmed_through
            && self.events.binary_search_by_key(&seq, |(_, f)| f.seq).is_ok_and(|i| self.events[i].0 >= oldest_ms)
    }

    fn apply_cut(&mut self, through: u64) {
        while self.events.front().is_some_and(|(_, f)| f.seq <= through) {
            self.events.pop_front();
        }
        self.trimmed_through = self.trimmed_through.max(through);
    }
}

impl DurableEngine {
    /// Opens (or creates) the data file in `data_dir`, loads the retained history and starts
    /// the writer thread. Fails with an error naming the file when it cannot be used.
    pub fn open(data_dir: &std::path::Path, fsync: FsyncPolicy, bounds: &HistoryConfig, fanout: Arc<Fanout>) -> Result<Self, StoreError> {
        let (store, loaded) = Store::open(data_dir, fsync)?;
        let path = store.path().to_owned();
        let mut h = History { epoch: loaded.epoch, head: loaded.head, accounts: HashMap::new(), keys: KeyMemory::default() };
        for (account, through) in loaded.trims {
            h.accounts.entry(account.into()).or_default().trimmed_through = through;
        }
        let mut events = 0usize;
        for row in loaded.events {
            let bytes = Bytes::from(encode_data_frame(Some(EventId::new(h.epoch, row.seq)), &row.payload));
            if let Some(key) = &row.key {
                h.keys.insert(&row.account, key, row.seq);
            }
            let log = h.accounts.entry(row.account).or_default();
            log.events.push_back((row.at_ms, StoredFrame { seq: row.seq, bytes }));
            events += 1;
        }
        tracing::info!(path = %path.display(), epoch = format_args!("{:x}", h.epoch), head = h.head, events, ?fsync, "durable history loaded");
        let history = Arc::new(Mutex::new(h));
        let healthy = Arc::new(AtomicBool::new(true));
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let writer = Writer {
            store: Some(store),
            history: history.clone(),
            fanout,
            healthy: healthy.clone(),
            max_events: bounds.max_events,
            max_age: bounds.max_age,
        };
        std::thread::Builder::new()
            .name("tidings-durable-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Open { path: path.clone(), detail: format!("cannot start the writer thread: {e}") })?;
        // Apply the configured bounds at once: they may be tighter than the last run's.
        let _ = commands.try_send(Command::Maintain);
        Ok(Self { path, max_age: bounds.max_age, replay_max_bytes: bounds.replay_max_bytes, history, commands, healthy })
    }
}

/// Unix milliseconds, the clock stored with each event (it must mean the same after a
/// restart, which `Instant` does not).
fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn oldest_kept_ms(now_ms: u64, max_age: Duration) -> u64 {
    now_ms.saturating_sub(max_age.as_millis() as u64)
}

impl Engine for DurableEngine {
    fn publish(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, EngineError>> {
        async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let closed = || EngineError::Unavailable("the durable engine is closed".into());
            let (reply, answer) = oneshot::channel();
            self.commands.send(Command::Publish { batch, reply }).await.map_err(|_| closed())?;
            answer.await.map_err(|_| closed())?
        }
        .boxed()
    }

    fn open<'a>(&'a self, account: &'a str, last_event_id: Option<&'a str>) -> BoxFuture<'a, Result<Opening, EngineError>> {
        let oldest = oldest_kept_ms(now_ms(), self.max_age);
        let h = self.history.lock().expect("history lock");
        let log = h.accounts.get(account);
        // Events past their age still held here (age trimming runs on the maintenance tick)
        // count as trimmed, exactly as if the tick had already run.
        let trimmed_through = log.map_or(0, |l| {
            let aged = l.events.iter().take_while(|(at, _)| *at < oldest).last().map(|(_, f)| f.seq);
            aged.unwrap_or(0).max(l.trimmed_through)
        });
        let window = HistoryWindow { epoch: h.epoch, head: h.head, trimmed_through };
        let decision = decide(last_event_id, &window);
        let retained = log.into_iter().flat_map(|l| l.events.iter().map(|(_, f)| f));
        let opening = Opening::from_retained(h.epoch, h.head, decision, retained, self.replay_max_bytes);
        drop(h);
        async move { Ok(opening) }.boxed()
    }

    fn is_ready(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.commands.is_closed()
    }

    fn maintain(&self) {
        // A full queue means the writer is busy; the next tick tries again.
        let _ = self.commands.try_send(Command::Maintain);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (done, finished) = oneshot::channel();
            if self.commands.send(Command::Close { done }).await.is_ok() {
                let _ = finished.await;
            }
            tracing::info!(path = %self.path.display(), "durable history closed");
        }
        .boxed()
    }

    fn name(&self) -> &'static str {
        "durable"
    }
}

/// The one thread that writes: owns the data file.
struct Writer {
    /// `None` once closed.
    store: Option<Store>,
    history: Arc<Mutex<History>>,
    fanout: Arc<Fanout>,
    healthy: Arc<AtomicBool>,
    max_events: usize,
    max_age: Duration,
}

/// One publish request inside a group.
struct Pending {
    batch: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Accepted>, EngineError>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next = rx.blocking_recv();
        while let Some(command) = next.take() {
            match command {
                Command::Publish { batch, reply } => {
                    let mut events = batch.len();
                    let mut group = vec![Pending { batch, reply }];
                    // Everything that queued up during the previous commit joins this one.
                    while events < GROUP_COMMIT_EVENTS_MAX {
                        match rx.try_recv() {
                            Ok(Command::Publish { batch, reply }) => {
                                events += batch.len();
                                group.push(Pending { batch, reply });
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.publish_group(group);
                }
                Command::Maintain => self.maintain(),
                Command::Close { done } => {
                    self.close();
                    let _ = done.send(());
                    return;
                }
            }
            if next.is_none() {
                next = rx.blocking_recv();
            }
        }
        // Every sender is gone: the engine was dropped without `close`.
        self.close();
    }

    fn publish_group(&mut self, group: Vec<Pending>) {
        if self.store.is_none() {
            for p in group {
                let _ = p.reply.send(Err(EngineError::Unavailable("the durable engine is closed".into())));
            }
            return;
        };
        let at_ms = now_ms();
        let (epoch, head, rows, ids) = {
            let h = self.history.lock().expect("history lock");
            let oldest = oldest_kept_ms(at_ms, self.max_age);
            let mut dedup = Dedup::new(&h.keys);
            let mut head = h.head;
            let mut rows = Vec::with_capacity(group.iter().map(|p| p.batch.len()).sum());
            let mut ids = Vec::with_capacity(group.len());
            for p in &group {
                let mut batch_ids = Vec::with_capacity(p.batch.len());
                for ev in &p.batch {
                    let known = dedup.seen(ev).filter(|&seq| {
                        // A key whose event left the window is not a duplicate any more.
                        seq > h.head || h.accounts.get(&ev.account).is_some_and(|log| log.retains(seq, oldest))
                    });
                    if let Some(seq) = known {
                        batch_ids.push(Accepted { id: EventId::new(h.epoch, seq), duplicate: true });
                        continue;
                    }
                    head += 1;
                    dedup.record(ev, head);
                    rows.push(Row { account: ev.account.clone(), seq: head, at_ms, payload: ev.payload.clone(), key: ev.key.clone() });
                    batch_ids.push(Accepted { id: EventId::new(h.epoch, head), duplicate: false });
                }
                ids.push(batch_ids);
            }
            (h.epoch, head, rows, ids)
        };
        if rows.is_empty() {
            // Every event was a duplicate: nothing to commit.
            for (p, batch_ids) in group.into_iter().zip(ids) {
                let _ = p.reply.send(Ok(batch_ids));
            }
            return;
        }
        let trims = self.trims_after(&rows, at_ms);
        let store = self.store.as_mut().expect("checked above");
        if let Err(e) = store.commit(head, &rows, &trims) {
            tracing::error!(path = %store.path().display(), error = %e, events = rows.len(), "commit failed; nothing in this group was published");
            self.healthy.store(false, Ordering::Release);
            for p in group {
                let _ = p.reply.send(Err(EngineError::Unavailable(format!("commit failed: {e}"))));
            }
            return;
        }
        self.healthy.store(true, Ordering::Release);
        let frames: Vec<Bytes> = rows.iter().map(|r| Bytes::from(encode_data_frame(Some(EventId::new(epoch, r.seq)), &r.payload))).collect();
        {
            let mut h = self.history.lock().expect("history lock");
            for (row, bytes) in rows.iter().zip(&frames) {
                let log = h.accounts.entry(row.account.clone()).or_default();
                log.events.push_back((row.at_ms, StoredFrame { seq: row.seq, bytes: bytes.clone() }));
                if let Some(key) = &row.key {
                    h.keys.insert(&row.account, key, row.seq);
                }
            }
            for (account, through) in &trims {
                h.accounts.entry(account.clone()).or_default().apply_cut(*through);
                h.keys.forget_through(account, *through);
            }
            h.head = head;
            // Under the lock, in seq order: a stream opening now sees either the history
            // with these events or their delivery, never neither.
            for (row, bytes) in rows.iter().zip(&frames) {
                self.fanout.deliver(&row.account, row.seq, bytes);
            }
        }
        for (p, batch_ids) in group.into_iter().zip(ids) {
            let _ = p.reply.send(Ok(batch_ids));
        }
    }

    /// The trims that appending `rows` requires, per account touched.
    fn trims_after(&self, rows: &[Row], now_ms: u64) -> Vec<(Arc<str>, u64)> {
        let mut trims = Vec::new();
        let oldest = oldest_kept_ms(now_ms, self.max_age);
        let mut incoming: HashMap<&Arc<str>, Vec<(u64, u64)>> = HashMap::new();
        for r in rows {
            incoming.entry(&r.account).or_default().push((r.seq, r.at_ms));
        }
        let h = self.history.lock().expect("history lock");
        let empty = AccountLog::default();
        for (account, new) in incoming {
            let log = h.accounts.get(account).unwrap_or(&empty);
            if let Some(cut) = log.cut(&new, self.max_events, oldest) {
                trims.push((account.clone(), cut));
            }
        }
        trims
    }

    /// Trims every account by count and age, then returns freed pages to the file system.
    fn maintain(&mut self) {
        let Some(store) = self.store.as_mut() else { return };
        let oldest = oldest_kept_ms(now_ms(), self.max_age);
        let (head, trims) = {
            let h = self.history.lock().expect("history lock");
            let trims: Vec<_> = h.accounts.iter().filter_map(|(a, log)| log.cut(&[], self.max_events, oldest).map(|c| (a.clone(), c))).collect();
            (h.head, trims)
        };
        if trims.is_empty() {
            return;
        }
        if let Err(e) = store.commit(head, &[], &trims) {
            tracing::warn!(path = %store.path().display(), error = %e, "trimming history failed; will retry");
            return;
        }
        let mut h = self.history.lock().expect("history lock");
        for (account, through) in &trims {
            h.keys.forget_through(account, *through);
            if let Some(log) = h.accounts.get_mut(account) {
                log.apply_cut(*through);
                // An empty log keeps its entry: `trimmed_through` is what proves a gap later.
                if log.events.is_empty() {
                    log.events = VecDeque::new();
                }
            }
        }
        drop(h);
        if let Err(e) = store.reclaim() {
            tracing::warn!(path = %store.path().display(), error = %e, "returning free space to the file system failed");
        }
    }

    fn close(&mut self) {
        if let Some(store) = self.store.take() {
            let path = store.path().to_owned();
            if let Err(e) = store.close() {
                tracing::warn!(path = %path.display(), error = %e, "closing the data file failed; the next start recovers from the WAL");
            }
        }
    }
}

#[cfg(test)]
mod tests;
