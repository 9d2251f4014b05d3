//! Per-node fan-out: which streams are open, per account and per session, and their queues.
//!
//! Engines call [`Fanout::deliver`] with an event's frame, encoded once; every stream of the
//! account whose identity is in the event's audience (every stream, for an event without one)
//! gets a clone of the same bytes in its bounded queue. The audience check is a few integer
//! operations for a stream outside the audience and a short lookup in a shared set for one
//! inside it, with no allocation (see `tidings_protocol::audience`). A queue that overflows closes
//! its stream as a slow consumer (its frames are dropped at once, so memory stays flat) and
//! the client resumes from its last id. This module owns no tasks and no timers: the hub's
//! ticker drives heartbeats and deadlines through [`Fanout::tick`].
//!
//! **One stream per session.** On one node, registering a stream supersedes the session's
//! older one. Across nodes, an engine shared by several nodes turns on claims
//! ([`Fanout::enable_claims`]): every registered stream is queued for the engine to announce
//! with the next open ([`Fanout::take_claims`]), the engine reports the claim's place in one
//! order shared by all nodes ([`Fanout::claimed`]) and hands over other nodes' claims
//! ([`Fanout::remote_claim`]); of two streams of one session, the one claimed later wins and
//! the other gets `closed` `superseded`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidings_protocol::{Audience, CloseReason, Viewer};
use tokio_util::sync::CancellationToken;

use crate::auth::Credential;
use crate::metrics::Metrics;

/// How long a stream that was told to close may take to flush its `closed` frame before its
/// connection is dropped. A client that stopped reading would otherwise hold its socket and
/// buffers forever (the connection is never polled again once the socket is full).
pub const CLOSE_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// `seq` of frames that are not activities (pings, control frames): never de-duplicated.
pub const SEQ_NONE: u64 = 0;

/// One frame waiting in a stream queue.
#[derive(Debug)]
pub struct Queued {
    pub seq: u64,
    pub at: Instant,
    pub bytes: Bytes,
    /// `Some(epoch)`: the engine's history changed epoch (a shared store was wiped). Streams
    /// positioned in another epoch write this frame (a `resync`) and take every later frame of
    /// the new epoch; streams already in that epoch drop it. `None` for everything else.
    pub new_epoch: Option<u64>,
}

/// State shared between a stream's body (the reader) and the fan-out (the writers).
#[derive(Debug)]
pub struct StreamShared {
    pub id: u64,
    /// Arrival order of the request that opened it (see [`Fanout::ticket`]).
    arrived: u64,
    pub account: Arc<str>,
    /// Who is watching: user, session and grants, which decide what of the account it sees.
    pub viewer: Viewer,
    /// What vouched for the stream's identity; a reload that no longer accepts it closes the
    /// stream (`revoked`).
    pub credential: Credential,
    /// When the stream must end on its own (credential expiry or lifetime cap).
    pub deadline: Option<(Instant, CloseReason)>,
    /// Cancels the connection of a stream served by hyper (see [`StreamShared::drop_connection`]);
    /// `None` for a connection served by the hub's own HTTP/1.1 writer, which watches
    /// `dropped` instead and so needs no token of its own.
    connection: Option<CancellationToken>,
    /// Set by the body when it is dropped: nothing reads the queue any more.
    finished: AtomicBool,
    /// Set when the fan-out drops the stream's connection: a closing stream that did not
    /// flush within [`CLOSE_FLUSH_GRACE`], or the end of the shutdown grace period.
    dropped: AtomicBool,
    queue: Mutex<QueueState>,
    /// Where this stream's open stands in the order shared by all nodes (see [`ClaimPosition`]).
    claim: Mutex<ClaimState>,
}

/// A stream open's place in the order shared by all nodes: the position of its claim in the
/// shared engine, compared as a pair. Later wins.
pub type ClaimPosition = (u64, u64);

#[derive(Debug, Default)]
struct ClaimState {
    /// This stream's own claim, once the engine has written it.
    own: Option<ClaimPosition>,
    /// The latest claim of the same session from another node seen before `own` was known.
    newest_remote: Option<ClaimPosition>,
}

#[derive(Debug)]
struct QueueState {
    frames: VecDeque<Queued>,
    /// A heartbeat is due: the node's latest ([`Fanout::latest_ping`]) is written once the
    /// queue is empty. A flag rather than a queued frame: an idle stream then holds no queue
    /// buffer at all (a `VecDeque` keeps its capacity once grown, which was a few hundred
    /// bytes per idle stream), and heartbeats a stalled client has not read coalesce into one.
    ping: bool,
    waker: Option<Waker>,
    close: Option<(CloseReason, Instant)>,
    capacity: u32,
}

/// What the body finds when it polls its queue.
#[derive(Debug)]
pub enum Next {
    /// The one frame that was queued (the common case: no allocation).
    One(Queued),
    /// A heartbeat ([`Fanout::latest_ping`]), written after everything queued before it.
    Ping,
    /// Frames, in order (several at once to save writes).
    Frames(Vec<Queued>),
    /// The queue is drained and the stream must close for this reason.
    Close(CloseReason),
    /// Nothing yet; the waker is stored.
    Pending,
}

impl StreamShared {
    /// Queues a frame. Returns false when the stream overflowed and was closed by this push.
    fn push(&self, q: Queued) -> bool {
        let mut s = self.queue.lock().expect("queue lock");
        if s.close.is_some() {
            return true;
        }
        if s.frames.len() >= s.capacity as usize {
            s.frames = VecDeque::new();
            s.close = Some((CloseReason::SlowConsumer, Instant::now()));
            wake(&mut s);
            return false;
        }
        s.frames.push_back(q);
        wake(&mut s);
        true
    }

    /// Asks the stream to close once its queue is flushed. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.queue.lock().expect("queue lock");
        if s.close.is_none() {
            s.close = Some((reason, Instant::now()));
            wake(&mut s);
        }
    }

    /// Takes what is queued, or registers `waker` for later.
    pub fn poll_next(&self, waker: &Waker, batch_max: usize) -> Next {
        let mut s = self.queue.lock().expect("queue lock");
        match s.frames.len() {
            0 => {}
            1 => return Next::One(s.frames.pop_front().expect("one frame")),
            n => return Next::Frames(s.frames.drain(..n.min(batch_max)).collect()),
        }
        if std::mem::take(&mut s.ping) {
            return Next::Ping;
        }
        if let Some((reason, _)) = s.close {
            return Next::Close(reason);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        Next::Pending
    }

    pub fn session(&self) -> &Arc<str> {
        self.viewer.session()
    }

    /// Called by the body when it is dropped.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    fn closing_since(&self) -> Option<Instant> {
        self.queue.lock().expect("queue lock").close.map(|(_, at)| at)
    }

    /// Drops the stream's connection whatever it is doing (even waiting for a client that
    /// stopped reading): the writer polling [`WriterLink`] ends it, or its token is cancelled.
    fn drop_connection(&self) {
        self.dropped.store(true, Ordering::Release);
        wake(&mut self.queue.lock().expect("queue lock"));
        if let Some(token) = &self.connection {
            token.cancel();
        }
    }
}

/// What the connection writing a stream polls to learn that the fan-out dropped it
/// ([`StreamShared::drop_connection`]). The stream's response carries it in its extensions
/// for the hub's own HTTP/1.1 writer, which then needs no cancellation token (a token is a
/// node of a tree: a hundred bytes and a slot in its parent for every connection).
#[derive(Debug, Clone)]
pub struct WriterLink(Arc<StreamShared>);

impl WriterLink {
    pub fn new(stream: &Arc<StreamShared>) -> Self {
        Self(stream.clone())
    }

    pub fn is_dropped(&self) -> bool {
        self.0.dropped.load(Ordering::Acquire)
    }

    /// `Ready` once the connection is to be dropped; otherwise the task is woken when it is.
    /// The queue's waker slot is shared with the body, which is polled by the same task.
    pub fn poll_dropped(&self, waker: &Waker) -> std::task::Poll<()> {
        if self.is_dropped() {
            return std::task::Poll::Ready(());
        }
        let mut s = self.0.queue.lock().expect("queue lock");
        // Checked again under the lock: `drop_connection` sets the flag before it takes the
        // lock to wake, so either the flag is seen here or the waker stored here is woken.
        if self.is_dropped() {
            return std::task::Poll::Ready(());
        }
        match &mut s.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        std::task::Poll::Pending
    }
}

fn wake(s: &mut QueueState) {
    if let Some(w) = s.waker.take() {
        w.wake();
    }
}

/// Why a stream could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The node holds its maximum of streams.
    NodeFull,
    /// The account holds its maximum of streams on this node.
    AccountFull,
    /// A stream of the same session from a request that arrived later is already open: this
    /// request was overtaken (its client has most likely given up on it) and must not
    /// supersede the newer stream.
    Overtaken,
}

/// The registry of open streams on this node.
#[derive(Debug)]
pub struct Fanout {
    registry: RwLock<Registry>,
    /// Streams told to close whose body has not finished yet; swept by [`Fanout::tick`].
    closing: Mutex<Vec<Arc<StreamShared>>>,
    next_id: AtomicU64,
    next_ticket: AtomicU64,
    /// The caps and the queue size of new streams: set at start and by a reload
    /// ([`Fanout::set_limits`]); open streams keep the queue they were given.
    streams_per_node: AtomicUsize,
    streams_per_account: AtomicUsize,
    queue_capacity: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Set once by an engine shared by several nodes; until then nothing is queued in `claims`.
    claims_enabled: AtomicBool,
    /// Registered streams whose claim the engine has not written yet. At most one entry per
    /// registered stream (a stream is registered right before its own open, which takes it),
    /// so bounded by `streams_per_node`; entries of streams gone meanwhile are dropped.
    claims: Mutex<Vec<Arc<StreamShared>>>,
    /// The latest heartbeat frame (see [`Fanout::heartbeat`]).
    ping: Mutex<Bytes>,
}

/// Open streams by account, then by session: a node holds one stream per session (a new one
/// supersedes the older), so the session is the stream's key. One map for both lookups: a map
/// by stream id beside one by (account, session) took a hundred bytes per stream.
#[derive(Debug, Default)]
struct Registry {
    accounts: HashMap<Arc<str>, HashMap<Arc<str>, Arc<StreamShared>>>,
    total: usize,
}

impl Registry {
    /// The open stream of `account` with this id, if still registered.
    fn get(&self, account: &str, session: &str, id: u64) -> Option<&Arc<StreamShared>> {
        self.accounts.get(account)?.get(session).filter(|s| s.id == id)
    }
}

/// What a new stream needs to register.
#[derive(Debug)]
pub struct NewStream {
    pub account: Arc<str>,
    pub viewer: Viewer,
    pub credential: Credential,
    pub deadline: Option<(Instant, CloseReason)>,
    /// The connection's token when hyper serves it; `None` for the hub's own writer, which
    /// polls a [`WriterLink`].
    pub connection: Option<CancellationToken>,
    /// From [`Fanout::ticket`], taken when the request arrived.
    pub arrived: u64,
}

impl Fanout {
    pub fn new(streams_per_node: usize, streams_per_account: usize, queue_capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            registry: RwLock::default(),
            closing: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_ticket: AtomicU64::new(1),
            streams_per_node: AtomicUsize::new(streams_per_node),
            streams_per_account: AtomicUsize::new(streams_per_account),
            queue_capacity: AtomicUsize::new(queue_capacity),
            metrics,
            claims_enabled: AtomicBool::new(false),
            claims: Mutex::default(),
            ping: Mutex::default(),
        }
    }

    /// New caps and queue size, from a reload. Streams already open stay open even above a
    /// lowered cap (new ones are refused until there is room) and keep their queue size.
    pub fn set_limits(&self, streams_per_node: usize, streams_per_account: usize, queue_capacity: usize) {
        self.streams_per_node.store(streams_per_node, Ordering::Relaxed);
        self.streams_per_account.store(streams_per_account, Ordering::Relaxed);
        self.queue_capacity.store(queue_capacity, Ordering::Relaxed);
    }

    /// An arrival ticket for a stream request, taken before any await: the order in which
    /// requests of one session arrived decides which supersedes which, even when a slow
    /// credential check lets an older request finish after a newer one.
    pub fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a stream; an older stream of the same session is superseded.
    pub fn register(&self, new: NewStream) -> Result<Arc<StreamShared>, RegisterError> {
        let mut reg = self.registry.write().expect("registry lock");
        let previous = reg.accounts.get(&new.account).and_then(|streams| streams.get(new.viewer.session())).cloned();
        if previous.as_ref().is_some_and(|s| s.arrived > new.arrived) {
            return Err(RegisterError::Overtaken);
        }
        let replacing = usize::from(previous.is_some());
        if reg.total - replacing >= self.streams_per_node.load(Ordering::Relaxed) {
            return Err(RegisterError::NodeFull);
        }
        let in_account = reg.accounts.get(&new.account).map_or(0, HashMap::len);
        if in_account - replacing >= self.streams_per_account.load(Ordering::Relaxed) {
            return Err(RegisterError::AccountFull);
        }
        if let Some(old) = previous.and_then(|old| remove_locked(&mut reg, &old)) {
            old.close(CloseReason::Superseded);
            self.closing.lock().expect("closing lock").push(old);
        }
        // Streams of one account share the registry's copy of its name: an identity decoded
        // per request (JWT, introspection) brings its own, which then lives only as long as
        // the request.
        let account = reg.accounts.get_key_value(&new.account).map_or_else(|| new.account.clone(), |(k, _)| k.clone());
        let stream = Arc::new(StreamShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            arrived: new.arrived,
            account: account.clone(),
            viewer: new.viewer,
            credential: new.credential,
            deadline: new.deadline,
            connection: new.connection,
            finished: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            queue: Mutex::new(QueueState {
                frames: VecDeque::new(),
                ping: false,
                waker: None,
                close: None,
                capacity: u32::try_from(self.queue_capacity.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            }),
            claim: Mutex::default(),
        });
        reg.accounts.entry(account).or_default().insert(stream.session().clone(), stream.clone());
        reg.total += 1;
        self.metrics.streams_open.set(reg.total as i64);
        drop(reg);
        if self.claims_enabled.load(Ordering::Acquire) {
            self.claims.lock().expect("claims lock").push(stream.clone());
        }
        Ok(stream)
    }

    /// Turns on cross-node claims (see the module docs); called once by a shared engine.
    pub fn enable_claims(&self) {
        self.claims_enabled.store(true, Ordering::Release);
    }

    /// Takes every stream of the accounts `accounts` admits whose claim is not written yet,
    /// oldest first, skipping those that closed or never opened; the others stay queued. The
    /// engine writes them with the open it is about to make (of an account it admits), so a
    /// stream's claim is in the shared order no later than its own open. An engine split into
    /// shards passes its shard's accounts: a claim is ordered with its account's events.
    pub fn take_claims(&self, accounts: impl Fn(&str) -> bool) -> Vec<Arc<StreamShared>> {
        let (mut taken, kept): (Vec<_>, Vec<_>) = {
            let mut queue = self.claims.lock().expect("claims lock");
            std::mem::take(&mut *queue).into_iter().partition(|s| accounts(&s.account))
        };
        if !kept.is_empty() {
            self.claims.lock().expect("claims lock").splice(0..0, kept);
        }
        let reg = self.registry.read().expect("registry lock");
        taken.retain(|s| reg.get(&s.account, s.session(), s.id).is_some());
        taken
    }

    /// Puts claims the engine could not write back at the front of the queue, in order; the
    /// next open takes them.
    pub fn requeue_claims(&self, streams: Vec<Arc<StreamShared>>) {
        if !streams.is_empty() {
            self.claims.lock().expect("claims lock").splice(0..0, streams);
        }
    }

    /// The engine wrote `stream`'s claim at `position`: if another node's claim of the same
    /// session came later, this stream is superseded now.
    pub fn claimed(&self, stream: &Arc<StreamShared>, position: ClaimPosition) {
        let superseded = {
            let mut c = stream.claim.lock().expect("claim lock");
            c.own = Some(position);
            c.newest_remote.is_some_and(|remote| remote > position)
        };
        if superseded {
            self.supersede(stream.clone());
        }
    }

    /// Another node's stream of `account`/`session` claimed `position`: this node's stream of
    /// that session, if claimed earlier, is superseded; if its own claim is not written yet,
    /// the comparison waits for [`Fanout::claimed`].
    pub fn remote_claim(&self, account: &str, session: &str, position: ClaimPosition) {
        let stream = {
            let reg = self.registry.read().expect("registry lock");
            let Some(s) = reg.accounts.get(account).and_then(|streams| streams.get(session)) else { return };
            s.clone()
        };
        let superseded = {
            let mut c = stream.claim.lock().expect("claim lock");
            match c.own {
                Some(own) => position > own,
                None => {
                    c.newest_remote = c.newest_remote.max(Some(position));
                    false
                }
            }
        };
        if superseded {
            self.supersede(stream);
        }
    }

    fn supersede(&self, stream: Arc<StreamShared>) {
        tracing::debug!(stream = stream.id, "stream superseded by a newer one of its session on another node");
        stream.close(CloseReason::Superseded);
        self.retire(vec![stream]);
    }

    /// Forgets a stream (its body ended). Idempotent.
    pub fn deregister(&self, stream: &StreamShared) {
        let mut reg = self.registry.write().expect("registry lock");
        if remove_locked(&mut reg, stream).is_some() {
            self.metrics.streams_open.set(reg.total as i64);
        }
    }

    /// Queues an activity frame for every stream of `account` in its `audience` (every
    /// stream of the account when there is none).
    pub fn deliver(&self, account: &str, seq: u64, bytes: &Bytes, audience: Option<&Audience>) {
        let now = Instant::now();
        let mut evicted = Vec::new();
        {
            let reg = self.registry.read().expect("registry lock");
            let Some(streams) = reg.accounts.get(account) else { return };
            let mut delivered = 0u64;
            for s in streams.values().filter(|s| s.viewer.sees(audience)) {
                delivered += 1;
                if !s.push(Queued { seq, at: now, bytes: bytes.clone(), new_epoch: None }) {
                    evicted.push(s.clone());
                }
            }
            self.metrics.events_delivered.inc_by(delivered);
        }
        self.evict(evicted);
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether any stream of `account` is open on this node.
    pub fn has_streams(&self, account: &str) -> bool {
        self.registry.read().expect("registry lock").accounts.contains_key(account)
    }

    /// Gives every stream on the node the heartbeat `ping` to write once its queue is empty
    /// (replacing one it has not written yet).
    pub fn heartbeat(&self, ping: Bytes) {
        *self.ping.lock().expect("ping lock") = ping;
        let reg = self.registry.read().expect("registry lock");
        for st in reg.accounts.values().flat_map(HashMap::values) {
            let mut s = st.queue.lock().expect("queue lock");
            if s.close.is_none() {
                s.ping = true;
                wake(&mut s);
            }
        }
    }

    /// The latest heartbeat frame, which a stream with one due writes.
    pub fn latest_ping(&self) -> Bytes {
        self.ping.lock().expect("ping lock").clone()
    }

    /// Sends a `resync` frame to every stream of the accounts `accounts` admits (the engine,
    /// or the shard of it holding them, lost continuity) and counts it as `engine_outage`.
    pub fn resync_all(&self, bytes: &Bytes, accounts: impl Fn(&str) -> bool) {
        let streams = self.broadcast_queued(bytes, None, accounts);
        self.metrics.resyncs.get_or_create(&crate::metrics::ReasonLabel { reason: "engine_outage" }).inc_by(streams);
    }

    /// Tells every stream of the accounts `accounts` admits that their history now has epoch
    /// `epoch` (see [`Queued::new_epoch`]); `bytes` is the `resync` frame streams of an older
    /// epoch write.
    pub fn new_epoch(&self, epoch: u64, bytes: &Bytes, accounts: impl Fn(&str) -> bool) {
        self.broadcast_queued(bytes, Some(epoch), accounts);
    }

    /// Queues `bytes` for the streams of the accounts admitted; returns how many were given it.
    fn broadcast_queued(&self, bytes: &Bytes, new_epoch: Option<u64>, accounts: impl Fn(&str) -> bool) -> u64 {
        let now = Instant::now();
        let mut evicted = Vec::new();
        let mut given = 0u64;
        {
            let reg = self.registry.read().expect("registry lock");
            for s in reg.accounts.iter().filter(|(a, _)| accounts(a)).flat_map(|(_, streams)| streams.values()) {
                given += 1;
                if !s.push(Queued { seq: SEQ_NONE, at: now, bytes: bytes.clone(), new_epoch }) {
                    evicted.push(s.clone());
                }
            }
        }
        self.evict(evicted);
        given
    }

    fn evict(&self, evicted: Vec<Arc<StreamShared>>) {
        if evicted.is_empty() {
            return;
        }
        self.metrics.slow_consumer_evictions.inc_by(evicted.len() as u64);
        tracing::info!(streams = evicted.len(), "closing slow consumers");
        self.retire(evicted);
    }

    /// Removes streams that were told to close from delivery and watches their flush.
    fn retire(&self, streams: Vec<Arc<StreamShared>>) {
        {
            let mut reg = self.registry.write().expect("registry lock");
            for s in &streams {
                remove_locked(&mut reg, s);
            }
            self.metrics.streams_open.set(reg.total as i64);
        }
        self.closing.lock().expect("closing lock").extend(streams);
    }

    /// Closes the streams of one session (or, without a session, of the whole account) with
    /// `reason`; returns how many were closed.
    pub fn close_matching(&self, account: &str, session: Option<&str>, reason: CloseReason) -> usize {
        let matching: Vec<_> = {
            let reg = self.registry.read().expect("registry lock");
            let Some(streams) = reg.accounts.get(account) else { return 0 };
            streams.values().filter(|s| session.is_none_or(|want| &**s.session() == want)).cloned().collect()
        };
        for s in &matching {
            s.close(reason);
        }
        let n = matching.len();
        self.retire(matching);
        n
    }

    /// Closes every stream for which `close` answers true with `reason` (a reload closing the
    /// streams whose credential it no longer accepts); returns how many were closed.
    pub fn close_where(&self, reason: CloseReason, close: impl Fn(&StreamShared) -> bool) -> usize {
        let matching = self.open_where(close);
        for s in &matching {
            s.close(reason);
        }
        let n = matching.len();
        if n > 0 {
            self.retire(matching);
        }
        n
    }

    /// Accounts with open streams on this node: their number, and the `n` holding the most
    /// streams, most first (ties by name), each with its number of streams (also its number of
    /// sessions: one stream per session).
    pub fn top_accounts(&self, n: usize) -> (usize, Vec<(Arc<str>, usize)>) {
        let reg = self.registry.read().expect("registry lock");
        let mut top: Vec<(&Arc<str>, usize)> = Vec::with_capacity(n.min(reg.accounts.len()) + 1);
        for (account, streams) in &reg.accounts {
            let count = streams.len();
            let at = top.partition_point(|(a, c)| (*c, std::cmp::Reverse(*a)) > (count, std::cmp::Reverse(account)));
            if at < n {
                top.insert(at, (account, count));
                top.truncate(n);
            }
        }
        let top = top.into_iter().map(|(account, count)| (account.clone(), count)).collect();
        (reg.accounts.len(), top)
    }

    /// The open streams of one account, at most `n`, ordered by session.
    pub fn streams_of(&self, account: &str, n: usize) -> (usize, Vec<Arc<StreamShared>>) {
        let reg = self.registry.read().expect("registry lock");
        let Some(streams) = reg.accounts.get(account) else { return (0, Vec::new()) };
        let mut all: Vec<_> = streams.values().cloned().collect();
        all.sort_by(|a, b| a.session().cmp(b.session()));
        all.truncate(n);
        (streams.len(), all)
    }

    /// Accounts with an open stream on this node.
    pub fn accounts_len(&self) -> usize {
        self.registry.read().expect("registry lock").accounts.len()
    }

    /// Sessions with an open stream on this node: the number of open streams, as a node holds
    /// one stream per session (the admin page shows both).
    pub fn sessions_len(&self) -> usize {
        self.len()
    }

    /// Closes every stream (shutdown), each with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        let all = self.open_where(|_| true);
        for s in &all {
            s.close(reason);
        }
        self.retire(all);
    }

    /// Drops the connection of every stream, open or closing, at once (the end of the
    /// shutdown grace period).
    pub fn drop_all_connections(&self) {
        let open = self.open_where(|_| true);
        let closing = std::mem::take(&mut *self.closing.lock().expect("closing lock"));
        for s in open.iter().chain(&closing) {
            s.drop_connection();
        }
    }

    /// The open streams `keep` admits, taken out of the registry's lock.
    fn open_where(&self, keep: impl Fn(&StreamShared) -> bool) -> Vec<Arc<StreamShared>> {
        let reg = self.registry.read().expect("registry lock");
        reg.accounts.values().flat_map(HashMap::values).filter(|s| keep(s)).cloned().collect()
    }

    /// Periodic upkeep: ends streams past their deadline and drops the connections of closing
    /// streams that did not flush within [`CLOSE_FLUSH_GRACE`].
    pub fn tick(&self, now: Instant) {
        let due = self.open_where(|s| s.deadline.is_some_and(|(at, _)| at <= now));
        for s in &due {
            if let Some((_, reason)) = s.deadline {
                s.close(reason);
            }
        }
        if !due.is_empty() {
            self.retire(due);
        }
        let mut closing = self.closing.lock().expect("closing lock");
        closing.retain(|s| {
            if s.finished.load(Ordering::Acquire) {
                return false;
            }
            if s.closing_since().is_some_and(|at| now.duration_since(at) >= CLOSE_FLUSH_GRACE) {
                tracing::debug!(stream = s.id, "closing stream did not flush; dropping its connection");
                s.drop_connection();
                return false;
            }
            true
        });
    }

    /// Number of open streams (not counting those flushing their `closed` frame).
    pub fn len(&self) -> usize {
        self.registry.read().expect("registry lock").total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams still flushing a `closed` frame.
    pub fn closing_len(&self) -> usize {
        self.closing.lock().expect("closing lock").iter().filter(|s| !s.finished.load(Ordering::Acquire)).count()
    }
}

fn remove_locked(reg: &mut Registry, stream: &StreamShared) -> Option<Arc<StreamShared>> {
    reg.get(&stream.account, stream.session(), stream.id)?;
    let streams = reg.accounts.get_mut(&stream.account)?;
    let s = streams.remove(stream.session())?;
    if streams.is_empty() {
        reg.accounts.remove(&stream.account);
    }
    reg.total -= 1;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(f: &Fanout, session: &str, arrived: u64) -> Result<Arc<StreamShared>, RegisterError> {
        f.register(NewStream {
            account: "acme".into(),
            viewer: Viewer::new("u".into(), session.into(), Arc::default()),
            credential: Credential::Introspected,
            deadline: None,
            connection: None,
            arrived,
        })
    }

    #[test]
    fn an_overtaken_request_does_not_supersede_the_newer_stream() {
        let f = Fanout::new(10, 10, 8, Arc::new(Metrics::new()));
        let (first, second, third) = (f.ticket(), f.ticket(), f.ticket());
        let newer = stream(&f, "s", second).unwrap();
        assert_eq!(stream(&f, "s", first).unwrap_err(), RegisterError::Overtaken);
        assert!(newer.queue.lock().unwrap().close.is_none(), "the newer stream stays open");
        let newest = stream(&f, "s", third).unwrap();
        assert_eq!(newer.queue.lock().unwrap().close.map(|(r, _)| r), Some(CloseReason::Superseded));
        assert!(newest.queue.lock().unwrap().close.is_none());
        assert_eq!(f.len(), 1);
        assert!(stream(&f, "other", first).is_ok(), "other sessions are not affected by order");
    }

    #[test]
    fn an_event_with_an_audience_is_queued_only_for_the_streams_in_it() {
        let metrics = Arc::new(Metrics::new());
        let f = Fanout::new(10, 10, 8, metrics.clone());
        let open = |user: &str, session: &str, grants: &[&str]| {
            let grants = Arc::new(tidings_protocol::Grants::new(grants.iter().copied()).unwrap());
            let viewer = Viewer::new(user.into(), session.into(), grants);
            f.register(NewStream { account: "acme".into(), viewer, credential: Credential::Introspected, deadline: None, connection: None, arrived: f.ticket() }).unwrap()
        };
        let admin = open("ann", "s-1", &["role:admin"]);
        let viewer = open("vic", "s-2", &[]);
        let queued = |s: &StreamShared| s.queue.lock().unwrap().frames.iter().map(|q| q.seq).collect::<Vec<_>>();
        let audience = |g: &[&str]| Audience::new(g.iter().copied()).unwrap();
        f.deliver("acme", 1, &Bytes::from_static(b"x"), None);
        f.deliver("acme", 2, &Bytes::from_static(b"x"), Some(&audience(&["role:admin"])));
        f.deliver("acme", 3, &Bytes::from_static(b"x"), Some(&audience(&["user:vic"])));
        f.deliver("acme", 4, &Bytes::from_static(b"x"), Some(&audience(&["billing:read"])));
        assert_eq!((queued(&admin), queued(&viewer)), (vec![1, 2], vec![1, 3]));
        assert_eq!(metrics.events_delivered.get(), 4, "only deliveries made are counted");
    }

    /// A waker that counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Waker, Arc<Wakes>) {
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        (Waker::from(wakes.clone()), wakes)
    }

    #[test]
    fn a_closing_stream_that_does_not_flush_has_its_writer_woken_to_drop_the_connection() {
        let f = Fanout::new(10, 10, 8, Arc::new(Metrics::new()));
        let s = stream(&f, "s", f.ticket()).unwrap();
        let link = WriterLink::new(&s);
        let (waker, wakes) = counting_waker();
        // The writer waits for the client to take a chunk.
        assert!(link.poll_dropped(&waker).is_pending());
        assert_eq!(f.close_matching("acme", Some("s"), CloseReason::Revoked), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the close wakes the task to write `closed`");
        // Woken, it finds the client still not reading, and waits again.
        assert!(link.poll_dropped(&waker).is_pending());
        f.tick(Instant::now());
        assert!(!link.is_dropped(), "the stream has its grace to flush");
        f.tick(Instant::now() + CLOSE_FLUSH_GRACE);
        assert!(link.is_dropped());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "the drop wakes the writer");
        assert!(link.poll_dropped(&waker).is_ready());
        assert_eq!(f.closing_len(), 0, "a dropped stream is no longer watched");
    }

    #[test]
    fn the_end_of_the_grace_period_drops_every_connection_open_or_closing() {
        let f = Fanout::new(10, 10, 8, Arc::new(Metrics::new()));
        let open = stream(&f, "open", f.ticket()).unwrap();
        let closing = stream(&f, "closing", f.ticket()).unwrap();
        f.close_matching("acme", Some("closing"), CloseReason::Shutdown);
        let token = CancellationToken::new();
        let viewer = Viewer::new("u".into(), "hyper".into(), Arc::default());
        let served_by_hyper = f
            .register(NewStream { account: "acme".into(), viewer, credential: Credential::Introspected, deadline: None, connection: Some(token.clone()), arrived: f.ticket() })
            .unwrap();
        let links: Vec<_> = [&open, &closing, &served_by_hyper].into_iter().map(WriterLink::new).collect();
        let (waker, wakes) = counting_waker();
        for l in &links {
            assert!(l.poll_dropped(&waker).is_pending());
        }
        f.drop_all_connections();
        assert!(links.iter().all(WriterLink::is_dropped));
        assert!(token.is_cancelled(), "hyper's connection is dropped through its token");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 3, "each waiting writer is woken");
    }

    #[test]
    fn streams_are_found_by_session_and_a_newer_one_replaces_the_older() {
        let f = Fanout::new(10, 10, 8, Arc::new(Metrics::new()));
        let first = stream(&f, "s", f.ticket()).unwrap();
        let other = stream(&f, "t", f.ticket()).unwrap();
        let second = stream(&f, "s", f.ticket()).unwrap();
        assert_eq!((f.len(), f.sessions_len()), (2, 2));
        let reg = f.registry.read().unwrap();
        assert!(reg.get("acme", "s", first.id).is_none(), "the superseded stream is gone");
        assert_eq!(reg.get("acme", "s", second.id).map(|s| s.id), Some(second.id));
        assert_eq!(reg.get("acme", "t", other.id).map(|s| s.id), Some(other.id));
        drop(reg);
        f.deregister(&second);
        f.deregister(&first);
        assert_eq!((f.len(), f.has_streams("acme")), (1, true));
        f.deregister(&other);
        assert!(!f.has_streams("acme"), "an account without streams leaves the registry");
    }
}
