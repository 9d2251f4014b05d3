//! The Redis engine: many hub nodes, one ordered history per account, kept in one Redis server
//! or sharded by account over several.
//!
//! **Shards.** `[[engine.shards]]` lists independent primaries; an account lives on shard
//! [`shard_of`]`(account, S)` (FNV-1a, fixed: see [`route`]). Each [`Shard`] is everything the
//! rest of this page describes for one server, for its accounts only: its own connection
//! task, epoch, seq counter, feed, fences, claims, floors and readiness. Without `shards` there
//! is one shard made of `[engine]`'s own server, with the same keys and ids as before shards
//! existed. Opens go to the account's shard; a batch is split by shard and the parts stored
//! concurrently (a shard failing while another stored its part is
//! [`EngineError::PartlyStored`]). The engine is ready only while every shard is. Each server
//! records its place in the list (`<prefix>shards`; see [`scripts::init`]) and starts a new
//! epoch when it changes, so an id of another list is answered with `resync`.
//!
//! **Ids.** One counter per shard (`<prefix>seq`) gives every event its seq, assigned in the same
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
//! **Delivery.** Each node follows each shard's feed with `XREAD BLOCK` on one dedicated
//! connection (plus one multiplexed connection for publish and open: two per node and shard,
//! whatever the number of streams or accounts) and hands every entry to its fan-out in seq
//! order. Publishing never delivers locally: one path, one order. A feed rather than `PUBLISH` because a feed has
//! positions: after a network blip the node resumes from its last seq and nobody misses
//! anything; only when the feed was trimmed past that seq (a long outage), or the epoch
//! changed, do streams get `resync` (`engine_outage`), and then at once, not on reconnect.
//!
//! **Faults.** While a shard's Redis is unreachable, `publish` and `open` for its accounts fail
//! at once with [`EngineError::Unavailable`] (503: nothing is reported stored that was not),
//! the other shards' accounts are served, `/readyz` is not ready, open streams stay open, and
//! the shard's task reconnects with capped, jittered backoff.
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
//! reads each shard's one feed); moving accounts between shards (changing the list is a
//! migration: clients resync); reading fewer shards on a node (every node reads every feed).
//! An acknowledged publish is as durable as the Redis server's persistence and
//! `min_replicas` make it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, join_all};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
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
mod route;
mod scripts;

pub use route::shard_of;
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

/// The engine handle the hub holds: one [`Shard`] per configured Redis primary, each account
/// routed to one of them by [`shard_of`]. Dropping it stops every connection task.
#[derive(Debug)]
pub struct RedisEngine {
    shards: Vec<Arc<Shard>>,
    runtime: tokio::runtime::Handle,
    _stop: DropGuard,
}

/// One Redis primary and the accounts [`shard_of`] gives it: what the whole engine was before
/// sharding, state shared by the handle and this shard's connection task.
#[derive(Debug)]
struct Shard {
    /// Which shard this is, of how many: it holds the accounts with `shard_of(a, count) == index`.
    index: usize,
    count: usize,
    config: RedisConfig,
    /// Names this node's claims in the feed, so it skips its own (random per start, the same
    /// for every shard of the node).
    node_id: String,
    history: HistoryConfig,
    keys: Keys,
    fanout: Arc<Fanout>,
    /// The command connection; `None` while Redis is unreachable. Set by the connection task;
    /// taken away by whoever sees it fail, who then wakes the task through `broken`.
    conn: RwLock<Option<Link>>,
    /// The epoch this node follows on this shard (0 until the first connection).
    epoch: AtomicU64,
    /// Highest seq this node has seen, from publishes and the feed; detects a rolled-back Redis.
    seen_head: AtomicU64,
    ready: AtomicBool,
    broken: Notify,
    publish_script: redis::Script,
    open_script: redis::Script,
    maintain_script: redis::Script,
    /// This shard's series of `tidings_redis_feed_entries_total`, `_feed_bytes_total` and
    /// `_shard_ready` (handles on the node's metric families).
    feed_entries: Counter,
    feed_bytes: Counter,
    ready_gauge: Gauge,
}

impl RedisEngine {
    /// Starts the engine and one connection task per shard on the current Tokio runtime.
    /// Redis does not have to be up yet: each shard reports not ready until it connects.
    pub fn start(config: &RedisConfig, history: &HistoryConfig, fanout: Arc<Fanout>) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let configs = config.shard_configs();
        let sharded = config.shards.is_some();
        let connectors = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                connect::Connector::new(c, feed::FEED_BLOCK).map_err(|e| match e {
                    // Which shard, when there are several: the message names the setting only.
                    crate::config::ConfigError::Invalid(m) if sharded => crate::config::ConfigError::Invalid(format!("engine.shards[{i}]: {m}")),
                    e => e,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StartError::Settings(Box::new(e)))?;
        fanout.enable_claims();
        let node_id = format!("{:016x}", rand::random::<u64>());
        let stop = CancellationToken::new();
        let count = configs.len();
        let metrics = fanout.metrics();
        let mut feed_entries = metrics.redis_feed_entries.start(count, sharded).into_iter();
        let mut feed_bytes = metrics.redis_feed_bytes.start(count, sharded).into_iter();
        let mut ready_gauges = metrics.redis_shard_ready.start(count, sharded).into_iter();
        let shards: Vec<_> = configs
            .into_iter()
            .zip(connectors)
            .enumerate()
            .map(|(index, (config, connector))| {
                let shard = Arc::new(Shard {
                    index,
                    count,
                    node_id: node_id.clone(),
                    history: history.clone(),
                    keys: Keys::new(&config.key_prefix),
                    config,
                    fanout: fanout.clone(),
                    conn: RwLock::new(None),
                    epoch: AtomicU64::new(0),
                    seen_head: AtomicU64::new(0),
                    ready: AtomicBool::new(false),
                    broken: Notify::new(),
                    publish_script: scripts::publish(),
                    open_script: scripts::open(),
                    maintain_script: scripts::maintain(),
                    feed_entries: feed_entries.next().expect("one per shard"),
                    feed_bytes: feed_bytes.next().expect("one per shard"),
                    ready_gauge: ready_gauges.next().expect("one per shard"),
                });
                runtime.spawn(feed::supervise(shard.clone(), connector, stop.clone()));
                shard
            })
            .collect();
        Ok(Self { shards, runtime, _stop: stop.drop_guard() })
    }

    /// The shard holding `account`.
    fn shard(&self, account: &str) -> &Arc<Shard> {
        &self.shards[shard_of(account, self.shards.len())]
    }

    /// Publishes a batch whose items may belong to several shards: split by shard, each part
    /// stored by its shard's script (all or nothing within the shard), the parts concurrently,
    /// the answers put back in item order. A shard known to be down refuses the whole batch
    /// before anything is stored; a shard failing while others succeed is
    /// [`EngineError::PartlyStored`] (see docs/protocol.md: retrying with the same keys
    /// stores each item once).
    async fn publish(&self, batch: Vec<NewEvent>) -> Result<Vec<Accepted>, EngineError> {
        if self.shards.len() == 1 {
            return self.shards[0].publish(batch).await;
        }
        let len = batch.len();
        let mut parts: Vec<(Vec<usize>, Vec<NewEvent>)> = (0..self.shards.len()).map(|_| Default::default()).collect();
        for (position, event) in batch.into_iter().enumerate() {
            let part = &mut parts[shard_of(&event.account, self.shards.len())];
            part.0.push(position);
            part.1.push(event);
        }
        let involved: Vec<_> = parts.into_iter().enumerate().filter(|(_, (positions, _))| !positions.is_empty()).collect();
        if let Some((down, _)) = involved.iter().find(|(i, _)| !self.shards[*i].ready.load(Ordering::Acquire)) {
            return Err(EngineError::Unavailable(format!("Redis shard {down} is not connected")));
        }
        let stored = join_all(involved.into_iter().map(|(i, (positions, events))| async move { (i, positions, self.shards[i].publish(events).await) })).await;
        let mut answers: Vec<Option<Accepted>> = vec![None; len];
        let mut failed = None;
        let mut some_stored = false;
        for (i, positions, result) in stored {
            match result {
                Ok(accepted) => {
                    some_stored |= accepted.iter().any(|a| !a.duplicate);
                    for (position, a) in positions.into_iter().zip(accepted) {
                        answers[position] = Some(a);
                    }
                }
                Err(e) => failed = Some(format!("Redis shard {i}: {e}")),
            }
        }
        match failed {
            None => Ok(answers.into_iter().map(|a| a.expect("every shard answered each of its items")).collect()),
            Some(why) if some_stored => Err(EngineError::PartlyStored(why)),
            Some(why) => Err(EngineError::Unavailable(why)),
        }
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

impl Shard {
    fn connection(&self) -> Result<Link, EngineError> {
        let unavailable = || EngineError::Unavailable(if self.count == 1 { "Redis is not connected".into() } else { format!("Redis shard {} is not connected", self.index) });
        self.conn.read().expect("conn lock").clone().ok_or_else(unavailable)
    }

    /// Whether this shard holds `account`.
    fn holds(&self, account: &str) -> bool {
        self.count == 1 || shard_of(account, self.count) == self.index
    }

    /// `<index>/<count>`, recorded in the server (see [`scripts::init`]).
    fn layout(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    /// Readiness, as `/readyz` and the shard's gauge see it.
    fn set_ready(&self, ready: bool) -> bool {
        self.ready_gauge.set(i64::from(ready));
        self.ready.swap(ready, Ordering::AcqRel)
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
            self.set_ready(false);
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
        let claims = self.fanout.take_claims(|a| self.holds(a));
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
        RedisEngine::publish(self, batch).boxed()
    }

    fn open<'a>(&'a self, account: &'a str, last_event_id: LastEventId, viewer: &'a Viewer) -> BoxFuture<'a, Result<Opening, EngineError>> {
        self.shard(account).open(account, last_event_id, viewer).boxed()
    }

    /// Ready only while every shard is: a node that cannot serve some accounts is taken out
    /// of a load balancer's rotation like one that serves none (see docs/redis.md).
    fn is_ready(&self) -> bool {
        self.shards.iter().all(|s| s.ready.load(Ordering::Acquire))
    }

    fn shards_ready(&self) -> Vec<bool> {
        self.shards.iter().map(|s| s.ready.load(Ordering::Acquire)).collect()
    }

    fn maintain(&self) {
        for shard in &self.shards {
            let shard = shard.clone();
            self.runtime.spawn(async move { shard.maintain().await });
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Delay before the first reconnect attempt; doubled per failure up to the max, with full
/// jitter so the nodes of a deployment do not knock on a restarting Redis together.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
