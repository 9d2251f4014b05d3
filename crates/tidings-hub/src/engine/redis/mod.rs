//! The Redis engine: many hub nodes, one ordered history per account, kept in one Redis server.
//!
//! **Ids.** One global counter (`<prefix>seq`) gives every event its seq, assigned in the same
//! Lua script that appends the event to its account's stream (`<prefix>a:<account>`, entry id
//! `<seq>-0`) and to the shared feed (`<prefix>feed`). Scripts run one at a time, so seqs, the
//! account streams and the feed all agree on one order, whichever node published. The epoch
//! (`<prefix>epoch`, hex) is created once when missing: a wiped Redis (FLUSHALL, restart
//! without persistence) gets a new epoch, so every old id is answered with `resync`. A Redis
//! restored from an older snapshot is caught too: a node that saw a higher seq than Redis now
//! holds sets a new epoch rather than hand out the same ids twice.
//!
//! **History and gaps.** Each account keeps at most `history.max_events` events no older than
//! `history.max_age`, trimmed exactly inside the scripts; the seq of the last event trimmed is
//! kept per account (`<prefix>trimmed`), which is what proves a gap to a resuming client. A
//! sorted set of each account's oldest event time lets upkeep trim idle accounts by age
//! without scanning keys. `history.max_bytes` bounds each account's payload bytes the same way
//! (counted in `<prefix>trimmed:bytes`). An account left without events is forgotten, keeping
//! Redis's size to what is retained: its `trimmed_through` is folded into a floor per bucket
//! of accounts (`<prefix>trimmed:floors`), which answers its old ids with `resync`.
//!
//! **Idempotency keys.** The publish script also checks each item's key against its
//! account's key set (`<prefix>k:<account>`, key → seq) and answers a key whose event is still
//! retained with that event's seq instead of storing it again; one script at a time means two
//! nodes receiving one key at once store it once (see `scripts::publish`).
//!
//! **Delivery.** Each node follows the feed with `XREAD BLOCK` on one dedicated connection
//! (plus one multiplexed connection for publish and open: two per node, whatever the number
//! of streams or accounts) and hands every entry to its fan-out in seq order. Publishing never
//! delivers locally: one path, one order. A feed rather than `PUBLISH` because a feed has
//! positions: after a network blip the node resumes from its last seq and nobody misses
//! anything; only when the feed was trimmed past that seq (a long outage), or the epoch
//! changed, do streams get `resync` (`engine_outage`), and then at once, not on reconnect.
//!
//! **Faults.** While Redis is unreachable, `publish` and `open` fail at once with
//! [`EngineError::Unavailable`] (503: nothing is reported stored that was not), `/readyz` is
//! not ready, open streams stay open, and one task reconnects with capped, jittered backoff.
//! A server that turned replica (`READONLY`) counts as unreachable too.
//!
//! **Replicas and failover.** With `sentinels`, each (re)connect asks Sentinel for the
//! primary. With `min_replicas` > 0 a publish is acknowledged only after `WAIT` confirmed that
//! many replicas have it (else 503), and a failover goes on in the same epoch behind a fence
//! (see [`scripts::init`]): nobody resyncs. With `min_replicas` = 0 a failover may have lost
//! acknowledged events, so it starts a new epoch and every client resyncs.
//!
//! **One stream per session across nodes.** Every stream opened on a node is announced as a
//! claim in the feed; the nodes read claims in feed order and close the older stream of a
//! session with `closed` `superseded` (see [`crate::fanout`]).
//!
//! What it does not do: Redis Cluster (the scripts touch keys they compute, and every node
//! reads one feed; ARCHITECTURE.md has the sharding plan). An acknowledged publish is as
//! durable as the Redis server's persistence and `min_replicas` make it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::MultiplexedConnection;
use tidings_protocol::frame::encode_data_frame;
use tidings_protocol::{Audience, EventId, Viewer};
use tidings_protocol::resume::{HistoryWindow, LastEventId, ResumeDecision, decide};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::history::now_ms;
use super::{Accepted, Engine, EngineError, NewEvent, Opening, StoredFrame};
use crate::config::{HistoryConfig, RedisConfig};
use crate::fanout::Fanout;

mod connect;
mod feed;
mod scripts;

use scripts::Keys;

/// Accounts trimmed by age in one upkeep call; the rest wait for the next tick, so one call
/// never holds Redis (scripts block it) for long.
const MAINTAIN_ACCOUNTS_MAX: usize = 256;

/// Why the Redis engine cannot start. Redis being down is not one of them: the engine starts
/// unready and connects when it can.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Not called inside a Tokio runtime, which the connection task needs.
    #[error("the Redis engine needs a Tokio runtime")]
    NoRuntime,
    /// A connection setting cannot be used: `engine.url` is not a Redis URL, a TLS file or a
    /// password file cannot be read, … (the message names the setting, never a secret).
    #[error("{0}")]
    Settings(Box<crate::config::ConfigError>),
}

/// The engine handle the hub holds. Dropping it stops the connection task.
#[derive(Debug)]
pub struct RedisEngine {
    inner: Arc<Inner>,
    _stop: DropGuard,
}

/// State shared by the handle and the connection task.
#[derive(Debug)]
struct Inner {
    config: RedisConfig,
    /// Names this node's claims in the feed, so it skips its own (random per start).
    node_id: String,
    history: HistoryConfig,
    keys: Keys,
    fanout: Arc<Fanout>,
    runtime: tokio::runtime::Handle,
    /// The command connection; `None` while Redis is unreachable. Set by the connection task;
    /// taken away by whoever sees it fail, who then wakes the task through `broken`.
    conn: RwLock<Option<Link>>,
    /// The epoch this node follows (0 until the first connection).
    epoch: AtomicU64,
    /// Highest seq this node has seen, from publishes and the feed; detects a rolled-back Redis.
    seen_head: AtomicU64,
    ready: AtomicBool,
    broken: Notify,
    publish_script: redis::Script,
    open_script: redis::Script,
    maintain_script: redis::Script,
}

impl RedisEngine {
    /// Starts the engine and its connection task on the current Tokio runtime. Redis does not
    /// have to be up yet: the engine reports not ready until it connects.
    pub fn start(config: &RedisConfig, history: &HistoryConfig, fanout: Arc<Fanout>) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let connector = connect::Connector::new(config, feed::FEED_BLOCK).map_err(|e| StartError::Settings(Box::new(e)))?;
        fanout.enable_claims();
        let inner = Arc::new(Inner {
            config: config.clone(),
            node_id: format!("{:016x}", rand::random::<u64>()),
            history: history.clone(),
            keys: Keys::new(&config.key_prefix),
            fanout,
            runtime: runtime.clone(),
            conn: RwLock::new(None),
            epoch: AtomicU64::new(0),
            seen_head: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            broken: Notify::new(),
            publish_script: scripts::publish(),
            open_script: scripts::open(),
            maintain_script: scripts::maintain(),
        });
        let stop = CancellationToken::new();
        runtime.spawn(feed::supervise(inner.clone(), connector, stop.clone()));
        Ok(Self { inner, _stop: stop.drop_guard() })
    }
}

/// One command connection and which one it is, so that a failure seen on an old connection
/// does not take down its replacement.
#[derive(Debug, Clone)]
struct Link {
    generation: u64,
    conn: MultiplexedConnection,
    /// Publishes that `WAIT` for replicas (`min_replicas` > 0); `None`: they use `conn`.
    acknowledged: Option<MultiplexedConnection>,
}

impl Inner {
    fn connection(&self) -> Result<Link, EngineError> {
        self.conn.read().expect("conn lock").clone().ok_or_else(|| EngineError::Unavailable("Redis is not connected".into()))
    }

    /// Turns a Redis error into an engine error; a dropped connection is taken out of use and
    /// the connection task is woken to replace it.
    fn failed(&self, link: &Link, e: &redis::RedisError) -> EngineError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || not_primary(e) {
            self.mark_down(link);
        }
        EngineError::Unavailable(e.to_string())
    }

    fn mark_down(&self, link: &Link) {
        let mut slot = self.conn.write().expect("conn lock");
        if slot.as_ref().is_some_and(|l| l.generation == link.generation) {
            slot.take();
            self.ready.store(false, Ordering::Release);
            self.broken.notify_one();
        }
    }

    fn saw(&self, seq: u64) {
        self.seen_head.fetch_max(seq, Ordering::AcqRel);
    }

    /// Events older than this are trimmed.
    fn age_cutoff_ms(&self) -> u64 {
        now_ms().saturating_sub(self.history.max_age.as_millis() as u64)
    }

    async fn publish(&self, batch: Vec<NewEvent>) -> Result<Vec<Accepted>, EngineError> {
        let link = self.connection()?;
        let mut conn = link.acknowledged.clone().unwrap_or_else(|| link.conn.clone());
        let epoch = self.epoch.load(Ordering::Acquire);
        let k = &self.keys;
        let mut inv = self.publish_script.prepare_invoke();
        inv.key(&k.epoch).key(&k.seq).key(&k.feed).key(&k.trimmed).key(&k.oldest);
        inv.arg(format!("{epoch:x}")).arg(now_ms()).arg(self.history.max_events).arg(self.age_cutoff_ms()).arg(self.config.feed_max_events);
        inv.arg(self.history.max_age.as_millis() as u64).arg(self.history.max_bytes);
        for ev in &batch {
            inv.key(k.account(&ev.account)).key(k.account_keys(&ev.account));
            let audience = ev.audience.as_deref().map(Audience::to_stored).unwrap_or_default();
            inv.arg(ev.account.as_bytes()).arg(ev.payload.as_bytes()).arg(ev.key.as_deref().unwrap_or("").as_bytes()).arg(audience);
        }
        let (status, seqs, duplicates): (i64, Vec<u64>, Vec<u8>) = inv.invoke_async(&mut conn).await.map_err(|e| self.failed(&link, &e))?;
        if status < 0 {
            // The epoch moved under us (Redis wiped): follow it before publishing again.
            self.mark_down(&link);
            return Err(EngineError::Unavailable("the Redis history changed epoch".into()));
        }
        if seqs.len() != batch.len() || duplicates.len() != batch.len() {
            return Err(EngineError::Unavailable(format!("the publish script answered {} ids for {} events", seqs.len(), batch.len())));
        }
        if let Some(&last) = seqs.iter().max() {
            self.saw(last);
        }
        if link.acknowledged.is_some() {
            // Duplicates too: the event a duplicate names may have been stored a moment ago
            // by another node, and the script's write makes this WAIT cover it (see
            // `scripts::publish`).
            self.wait_for_replicas(&link, &mut conn).await?;
        }
        Ok(seqs.into_iter().zip(duplicates).map(|(seq, d)| Accepted { id: EventId::new(epoch, seq), duplicate: d == 1 }).collect())
    }

    /// `WAIT`s until `min_replicas` replicas have every write of this connection so far, which
    /// includes the publish just made. Fewer within `replica_timeout` is a 503: the event is
    /// stored on the primary (and delivered) but could be lost in a failover, so the publisher
    /// is told to try again (the retry may then be delivered twice).
    async fn wait_for_replicas(&self, link: &Link, conn: &mut MultiplexedConnection) -> Result<(), EngineError> {
        let want = self.config.min_replicas;
        let confirmed: u32 = redis::cmd("WAIT")
            .arg(want)
            .arg(self.config.replica_timeout.as_millis() as u64)
            .query_async(conn)
            .await
            .map_err(|e| self.failed(link, &e))?;
        if confirmed < want {
            return Err(EngineError::Unavailable(format!("{confirmed} of {want} replicas confirmed the write within engine.replica_timeout")));
        }
        Ok(())
    }

    async fn open(&self, account: &str, last_event_id: LastEventId, viewer: &Viewer) -> Result<Opening, EngineError> {
        let link = self.connection()?;
        let mut conn = link.conn.clone();
        let followed = self.epoch.load(Ordering::Acquire);
        let after = last_event_id.id().filter(|id| id.epoch == followed).map(|id| id.seq);
        let k = &self.keys;
        let claims = self.fanout.take_claims();
        let mut inv = self.open_script.prepare_invoke();
        inv.key(&k.epoch).key(&k.seq).key(&k.trimmed).key(&k.oldest).key(k.account(account)).key(&k.feed);
        inv.arg(account)
            .arg(self.history.max_events)
            .arg(self.age_cutoff_ms())
            .arg(after.map(|s| s.to_string()).unwrap_or_default())
            .arg(self.history.replay_max_bytes)
            .arg(self.config.feed_max_events)
            .arg(&self.node_id)
            .arg(self.history.max_bytes);
        for s in &claims {
            inv.arg(s.account.as_bytes()).arg(s.session().as_bytes());
        }
        type Reply = (String, u64, u64, Vec<(String, Vec<String>)>, u8, Vec<String>);
        let (epoch, head, trimmed_through, entries, too_large, claimed): Reply = match inv.invoke_async(&mut conn).await {
            Ok(reply) => reply,
            Err(e) => {
                self.fanout.requeue_claims(claims);
                return Err(self.failed(&link, &e));
            }
        };
        for (stream, id) in claims.iter().zip(&claimed) {
            if let Some(position) = entry_id(id) {
                self.fanout.claimed(stream, position);
            }
        }
        let epoch = u64::from_str_radix(&epoch, 16).ok().filter(|e| *e == followed).ok_or_else(|| {
            self.mark_down(&link);
            EngineError::Unavailable("the Redis history changed epoch".into())
        })?;
        self.saw(head);
        let decision = decide(last_event_id, &HistoryWindow { epoch, head, trimmed_through });
        if matches!(decision, ResumeDecision::Replay { .. }) && too_large == 1 {
            return Ok(Opening::too_large(epoch, head));
        }
        // Filtered here, on the node: Redis returns the whole gap, and its replay budget
        // counts every event in it, including those this stream may not see.
        let visible = entries.iter().filter(|(_, fields)| viewer.sees(stored_audience(field(fields, "u")).as_deref()));
        let frames: Vec<_> = visible.filter_map(|(id, fields)| account_frame(epoch, id, fields)).collect();
        Ok(Opening::from_retained(epoch, head, decision, &frames, usize::MAX))
    }

    async fn maintain(&self) {
        let Ok(link) = self.connection() else { return };
        let mut conn = link.conn.clone();
        let result: redis::RedisResult<u64> = self
            .maintain_script
            .key(&self.keys.trimmed)
            .key(&self.keys.oldest)
            .arg(&self.keys.prefix)
            .arg(self.history.max_events)
            .arg(self.age_cutoff_ms())
            .arg(MAINTAIN_ACCOUNTS_MAX)
            .arg(self.history.max_bytes)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(n) if n > 0 => tracing::debug!(accounts = n, "trimmed history by age"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %self.failed(&link, &e), "history upkeep failed"),
        }
    }
}

/// The seq of a stream entry id `<seq>-0`.
fn entry_seq(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// A feed entry id `<major>-<minor>` as a pair.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (major, minor) = id.split_once('-')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The server is (no longer) a primary: a failover demoted it, or Sentinel named a server
/// that was not promoted yet. Reconnecting asks Sentinel again.
fn not_primary(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "NOTPRIMARY" | "UNBLOCKED"))
}

/// An account-stream entry (`p`, payload, `t`, time) as a frame.
fn account_frame(epoch: u64, id: &str, fields: &[String]) -> Option<StoredFrame> {
    let seq = entry_seq(id)?;
    let payload = field(fields, "p")?;
    Some(StoredFrame { seq, bytes: Bytes::from(encode_data_frame(Some(EventId::new(epoch, seq)), payload)) })
}

/// An event's audience from its stored `u` field (`None`: the whole account). One that cannot
/// be read admits nobody: a damaged entry must not widen who sees an event.
fn stored_audience(text: Option<&str>) -> Option<Arc<Audience>> {
    let audience = Audience::from_stored(text?).unwrap_or_else(|_| {
        tracing::warn!("an event's stored audience cannot be read; no stream is given the event");
        Audience::nobody()
    });
    Some(Arc::new(audience))
}

/// The value of `name` in a flat `[field, value, …]` list.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields.chunks_exact(2).find(|kv| kv[0] == name).map(|kv| kv[1].as_str())
}

impl Engine for RedisEngine {
    fn publish(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Accepted>, EngineError>> {
        self.inner.publish(batch).boxed()
    }

    fn open<'a>(&'a self, account: &'a str, last_event_id: LastEventId, viewer: &'a Viewer) -> BoxFuture<'a, Result<Opening, EngineError>> {
        self.inner.open(account, last_event_id, viewer).boxed()
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    fn maintain(&self) {
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move { inner.maintain().await });
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Delay before the first reconnect attempt; doubled per failure up to the max, with full
/// jitter so the nodes of a deployment do not knock on a restarting Redis together.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
