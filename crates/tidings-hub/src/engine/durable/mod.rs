//! The durable engine: one node, history in a data file, ids valid across restarts and
//! crashes.
//!
//! A publish is answered only after its events are committed to the data file (see
//! [`FsyncPolicy`] for what "committed" means). Publishes go through a bounded queue to one
//! writer thread, which commits whatever has accumulated as one transaction — one flush for
//! many concurrent publishers (group commit) — then delivers every event to the fan-out in
//! seq order and answers each publisher.
//!
//! The retained history is also held in memory, in the same [`History`] window as the memory
//! engine's and bounded by the same `[history]` limits, so opening a stream (fresh or resumed)
//! never reads the disk; the file is read once, at start-up. Each event's idempotency key is
//! stored with it, so the keys [`History::admit`] checks survive a restart too. The in-memory copy changes only after a commit and only
//! on the writer thread, under the same lock that stream openings take, and delivery happens
//! under it too: that gives the same replay/live boundary as the memory engine.
//!
//! The epoch lives in the file (a new file draws a new one), and the head is committed with
//! every group, so seqs continue after any restart. Trimming (by count on publish, by age on
//! [`Engine::maintain`]) deletes rows and records each account's `trimmed_through`, which is
//! what proves a gap later; an account with neither events nor streams is forgotten, its
//! `trimmed_through` folded into its bucket's floor (meta `floor:<bucket>`, see [`History`]). It does not replicate: one hub per data file (the file is locked).
//!
//! Why SQLite (bundled, via `rusqlite`) and not `redb`: SQLite's WAL mode with
//! `synchronous = NORMAL` keeps acknowledged commits through a crash of the process (the OS
//! holds them), which gives a useful middle policy; redb's non-flushed commits are rolled
//! back on any unclean stop. SQLite also names a damaged file precisely (`file is not a
//! database`, `quick_check`), returns freed pages to the file system (`incremental_vacuum`),
//! and its current releases fit this workspace's minimum Rust version. The cost is a C
//! compile of SQLite in the build, and no extra install at run time.

mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use tidings_protocol::{EventId, Viewer};
use tidings_protocol::frame::encode_data_frame;
use tidings_protocol::resume::LastEventId;
use tokio::sync::{mpsc, oneshot};

pub use self::store::{DATA_FILE_NAME, StoreError};
use self::store::{Row, Store};
use super::history::{Entry, History, now_ms};
use super::{Accepted, Engine, EngineError, NewEvent, Opening, Retained, StoredFrame};
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

impl DurableEngine {
    /// Opens (or creates) the data file in `data_dir`, loads the retained history and starts
    /// the writer thread. Fails with an error naming the file when it cannot be used.
    pub fn open(data_dir: &std::path::Path, fsync: FsyncPolicy, bounds: &HistoryConfig, fanout: Arc<Fanout>) -> Result<Self, StoreError> {
        let (store, loaded) = Store::open(data_dir, fsync)?;
        let path = store.path().to_owned();
        let mut h = History::new(loaded.epoch, loaded.head, bounds);
        for (bucket, through) in loaded.floors {
            h.restore_floor(bucket, through);
        }
        for (account, through) in loaded.trims {
            h.restore_trimmed(&account.into(), through);
        }
        for row in loaded.events {
            let bytes = Bytes::from(encode_data_frame(Some(EventId::new(h.epoch(), row.seq)), &row.payload));
            h.push(&row.account, Entry { at_ms: row.at_ms, frame: StoredFrame { seq: row.seq, bytes }, key: row.key, audience: row.audience });
        }
        let events = h.retained_events();
        tracing::info!(path = %path.display(), epoch = format_args!("{:x}", h.epoch()), head = h.head(), events, ?fsync, "durable history loaded");
        let history = Arc::new(Mutex::new(h));
        let healthy = Arc::new(AtomicBool::new(true));
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let writer = Writer {
            store: Some(store),
            history: history.clone(),
            fanout,
            healthy: healthy.clone(),
        };
        std::thread::Builder::new()
            .name("tidings-durable-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Open { path: path.clone(), detail: format!("cannot start the writer thread: {e}") })?;
        // Apply the configured bounds at once: they may be tighter than the last run's.
        let _ = commands.try_send(Command::Maintain);
        Ok(Self { path, history, commands, healthy })
    }
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

    fn open<'a>(&'a self, account: &'a str, last_event_id: LastEventId, viewer: &'a Viewer) -> BoxFuture<'a, Result<Opening, EngineError>> {
        let opening = self.history.lock().expect("history lock").open(account, last_event_id, viewer, now_ms());
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

    fn retained(&self) -> Option<Retained> {
        Some(self.history.lock().expect("history lock").retained())
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
        // Only this thread changes the history, so what `admit` decides still holds when the
        // new events are pushed after the commit.
        let (epoch, accepted) = {
            let h = self.history.lock().expect("history lock");
            (h.epoch(), h.admit(group.iter().flat_map(|p| &p.batch), at_ms))
        };
        let rows: Vec<Row> = group
            .iter()
            .flat_map(|p| &p.batch)
            .zip(&accepted)
            .filter(|(_, a)| !a.duplicate)
            .map(|(ev, a)| Row { account: ev.account.clone(), seq: a.id.seq, at_ms, payload: ev.payload.clone(), key: ev.key.clone(), audience: ev.audience.clone() })
            .collect();
        let mut answers = accepted.into_iter();
        let replies: Vec<_> = group.into_iter().map(|p| (p.reply, answers.by_ref().take(p.batch.len()).collect::<Vec<_>>())).collect();
        let Some(head) = rows.last().map(|r| r.seq) else {
            // Every event was a duplicate: nothing to commit.
            for (reply, batch_ids) in replies {
                let _ = reply.send(Ok(batch_ids));
            }
            return;
        };
        let frames: Vec<Bytes> = rows.iter().map(|r| Bytes::from(encode_data_frame(Some(EventId::new(epoch, r.seq)), &r.payload))).collect();
        let incoming = rows.iter().zip(&frames).map(|(r, f)| (&r.account, r.seq, f.len()));
        let trims = self.history.lock().expect("history lock").cuts_after(incoming, at_ms);
        let store = self.store.as_mut().expect("checked above");
        if let Err(e) = store.commit(head, &rows, &trims) {
            tracing::error!(path = %store.path().display(), error = %e, events = rows.len(), "commit failed; nothing in this group was published");
            self.healthy.store(false, Ordering::Release);
            for (reply, _) in replies {
                let _ = reply.send(Err(EngineError::Unavailable(format!("commit failed: {e}"))));
            }
            return;
        }
        self.healthy.store(true, Ordering::Release);
        let node_trims = {
            let mut h = self.history.lock().expect("history lock");
            for (row, bytes) in rows.iter().zip(&frames) {
                h.push(&row.account, Entry { at_ms: row.at_ms, frame: StoredFrame { seq: row.seq, bytes: bytes.clone() }, key: row.key.clone(), audience: row.audience.clone() });
            }
            for (account, through) in &trims {
                h.apply_cut(account, *through);
            }
            h.set_head(head);
            // Under the lock, in seq order: a stream opening now sees either the history
            // with these events or their delivery, never neither.
            for (row, bytes) in rows.iter().zip(&frames) {
                self.fanout.deliver(&row.account, row.seq, bytes, row.audience.as_deref());
            }
            h.trim_node()
        };
        self.commit_trims(head, &node_trims);
        for (reply, batch_ids) in replies {
            let _ = reply.send(Ok(batch_ids));
        }
    }

    /// Trims every account by its bounds and the node by its byte budget, forgets accounts
    /// with neither events nor streams, then returns freed pages to the file system.
    fn maintain(&mut self) {
        let Some(store) = self.store.as_mut() else { return };
        let (head, trims) = {
            let h = self.history.lock().expect("history lock");
            (h.head(), h.cuts_due(now_ms()))
        };
        if !trims.is_empty() {
            if let Err(e) = store.commit(head, &[], &trims) {
                tracing::warn!(path = %store.path().display(), error = %e, "trimming history failed; will retry");
                return;
            }
            let mut h = self.history.lock().expect("history lock");
            for (account, through) in &trims {
                h.apply_cut(account, *through);
            }
        }
        let node_trims = self.history.lock().expect("history lock").trim_node();
        self.commit_trims(head, &node_trims);
        let forgotten = self.history.lock().expect("history lock").forgettable(|account| self.fanout.has_streams(account));
        let Some(store) = self.store.as_mut() else { return };
        if !forgotten.is_empty() {
            // The file first: a window that forgot what the file still holds would come back
            // after a restart with an older `trimmed_through` than its clients were told.
            if let Err(e) = store.forget(&forgotten) {
                tracing::warn!(path = %store.path().display(), error = %e, "forgetting idle accounts failed; will retry");
                return;
            }
            let mut h = self.history.lock().expect("history lock");
            for (account, _) in &forgotten {
                h.forget(account);
            }
            h.shrink();
        }
        if trims.is_empty() && node_trims.is_empty() && forgotten.is_empty() {
            return;
        }
        if let Err(e) = store.reclaim() {
            tracing::warn!(path = %store.path().display(), error = %e, "returning free space to the file system failed");
        }
    }

    /// Records in the file cuts the window already made (by the node's byte budget). Failing
    /// only leaves the file holding more than the window, which the next cut or forgetting of
    /// the account removes.
    fn commit_trims(&mut self, head: u64, trims: &[(std::sync::Arc<str>, u64)]) {
        let Some(store) = self.store.as_mut() else { return };
        if trims.is_empty() {
            return;
        }
        if let Err(e) = store.commit(head, &[], trims) {
            tracing::warn!(path = %store.path().display(), error = %e, "recording the node's byte-budget trims failed");
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
