//! The connection task: connects, follows the feed into the fan-out, and reconnects.
//!
//! One task per shard and node owns the shard's Redis connections. It is the only writer of
//! the shard's connection slot and epoch, and the only caller of the fan-out for the shard's
//! events and other nodes' claims, so delivery on a node is in feed order (seq order) per
//! shard by construction; an account lives on one shard, so that is its order. Resyncs and
//! new epochs reach only the streams of the shard's accounts. It never fails
//! for good: any error ends the current connection, the engine turns unready, and the task
//! tries again after a backoff (asking Sentinel again, when there are sentinels).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use redis::RedisError;
use redis::aio::MultiplexedConnection;
use tidings_protocol::EventId;
use tidings_protocol::frame::{ResyncReason, encode_data_frame, encode_resync};
use tokio_util::sync::CancellationToken;

use super::connect::Connector;
use super::{Link, Shard, RECONNECT_DELAY_MAX, RECONNECT_DELAY_MIN, entry_id, field, scripts, stored_audience};
use crate::engine::history::new_epoch;

/// How long one `XREAD` waits for new entries; also how often an idle node checks the epoch
/// (a FLUSHALL does not drop connections, so this is how it is noticed without traffic).
pub(super) const FEED_BLOCK: Duration = Duration::from_millis(500);
/// Entries read per `XREAD`: bounds one reply while letting a busy feed be read in batches.
const FEED_READ_BATCH_MAX: usize = 512;
/// How far the seq counter jumps at a failover fence (see [`scripts::init`]): more events
/// than an old primary can have stored beyond what its replica had, so no seq a lost event
/// carried is ever issued again. 2^32 leaves room for millions of failovers below 2^53 (the
/// largest integer a JavaScript client holds exactly).
const FAILOVER_SEQ_GAP: u64 = 1 << 32;

/// Where this node is in the history: the epoch it follows, the last seq it delivered, and
/// the last claim read after it (claims take no seq: they sit at `<seq>-<n>`).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    epoch: u64,
    seq: u64,
    minor: u64,
}

/// Why following stopped.
#[derive(Debug)]
enum Stop {
    /// The engine is being dropped.
    Shutdown,
    /// Redis failed or a command saw a dropped connection; reconnect.
    Failed(String),
}

impl From<RedisError> for Stop {
    fn from(e: RedisError) -> Self {
        Stop::Failed(e.to_string())
    }
}

pub(super) async fn supervise(inner: Arc<Shard>, mut connector: Connector, stop: CancellationToken) {
    let mut cursor: Option<Cursor> = None;
    let mut failures: u32 = 0;
    let mut generation: u64 = 0;
    loop {
        generation += 1;
        match follow(&inner, &mut connector, &mut cursor, generation, &stop).await {
            Stop::Shutdown => return,
            Stop::Failed(why) => {
                if inner.set_ready(false) {
                    failures = 0;
                }
                inner.conn.write().expect("conn lock").take();
                if failures == 0 {
                    tracing::warn!(shard = inner.index, error = %why, "Redis engine unavailable; reconnecting");
                } else {
                    tracing::debug!(shard = inner.index, error = %why, attempt = failures, "Redis still unavailable");
                }
                failures = failures.saturating_add(1);
            }
        }
        let cap = RECONNECT_DELAY_MIN.saturating_mul(1 << failures.min(8)).min(RECONNECT_DELAY_MAX);
        let delay = Duration::from_millis(rand::random_range(0..=cap.as_millis() as u64));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life: connect, settle the epoch, then read the feed until something fails.
async fn follow(inner: &Shard, connector: &mut Connector, cursor: &mut Option<Cursor>, generation: u64, stop: &CancellationToken) -> Stop {
    let connections = tokio::select! {
        _ = stop.cancelled() => return Stop::Shutdown,
        c = connector.connect() => match c {
            Ok(c) => c,
            Err(e) => return Stop::Failed(e),
        },
    };
    let (conn, mut reader) = (connections.commands, connections.feed);
    let mut cmd = conn.clone();
    let at = match settle_epoch(inner, &mut cmd, *cursor).await {
        Ok(at) => at,
        Err(e) => return e.into(),
    };
    *cursor = Some(at);
    inner.epoch.store(at.epoch, Ordering::Release);
    *inner.conn.write().expect("conn lock") = Some(Link { generation, conn, acknowledged: connections.acknowledged });
    inner.set_ready(true);
    tracing::info!(shard = inner.index, epoch = %format!("{:x}", at.epoch), seq = at.seq, "Redis engine connected");
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return Stop::Shutdown,
            _ = inner.broken.notified() => {
                if inner.conn.read().expect("conn lock").is_none() {
                    return Stop::Failed("a command found the connection dropped, or the epoch changed".into());
                }
                continue;
            }
            read = read_feed(inner, &mut reader, cursor.expect("set above")) => read,
        };
        match read {
            Ok(next) => *cursor = Some(next),
            Err(e) => return e,
        }
    }
}

/// Agrees with Redis on the epoch. Same epoch: carry on from the cursor (the feed has what
/// was published meanwhile, and a fence after a failover). New epoch: every stream of the old
/// one is told to resync and the new feed is read from its start, so nothing published in the
/// new epoch is skipped.
async fn settle_epoch(inner: &Shard, conn: &mut MultiplexedConnection, cursor: Option<Cursor>) -> Result<Cursor, RedisError> {
    let candidate = new_epoch();
    let followed = cursor.map(|c| format!("{:x}", c.epoch)).unwrap_or_default();
    let (epoch, head, happened): (String, u64, String) = scripts::init()
        .key(&inner.keys.epoch)
        .key(&inner.keys.seq)
        .key(&inner.keys.lineage)
        .key(&inner.keys.feed)
        .key(&inner.keys.layout)
        .arg(format!("{candidate:x}"))
        .arg(followed)
        .arg(inner.seen_head.load(Ordering::Acquire))
        .arg(u8::from(inner.config.min_replicas > 0))
        .arg(FAILOVER_SEQ_GAP)
        .arg(inner.config.feed_max_events)
        .arg(inner.layout())
        .invoke_async(conn)
        .await?;
    let epoch = u64::from_str_radix(&epoch, 16).map_err(|_| RedisError::from((redis::ErrorKind::Parse, "epoch is not hex")))?;
    match happened.as_str() {
        "fenced" => tracing::warn!(shard = inner.index, head, "Redis failed over; history goes on behind a fence (replicated writes were kept)"),
        "failover" => tracing::warn!(shard = inner.index, "Redis failed over without min_replicas; acknowledged events may be lost, so history starts a new epoch"),
        "relayout" => tracing::warn!(shard = inner.index, layout = %inner.layout(), "this Redis held another shard of another shard list; history starts a new epoch"),
        _ => {}
    }
    Ok(match cursor {
        None => {
            inner.seen_head.store(head, Ordering::Release);
            Cursor { epoch, seq: head, minor: 0 }
        }
        Some(c) if c.epoch == epoch => c,
        Some(c) => {
            tracing::warn!(shard = inner.index, old = %format!("{:x}", c.epoch), new = %format!("{epoch:x}"), "Redis history changed epoch; open streams get resync");
            inner.seen_head.store(head, Ordering::Release);
            let frame = encode_resync(ResyncReason::EngineOutage, Some(EventId::new(epoch, 0)));
            inner.fanout.new_epoch(epoch, &Bytes::from(frame), |a| inner.holds(a));
            Cursor { epoch, seq: 0, minor: 0 }
        }
    })
}

type FeedReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

/// Reads the next feed entries after the cursor and delivers them; returns the new cursor.
async fn read_feed(inner: &Shard, reader: &mut MultiplexedConnection, at: Cursor) -> Result<Cursor, Stop> {
    let (epoch, reply): (Option<String>, FeedReply) = redis::pipe()
        .cmd("GET")
        .arg(&inner.keys.epoch)
        .cmd("XREAD")
        .arg("COUNT")
        .arg(FEED_READ_BATCH_MAX)
        .arg("BLOCK")
        .arg(FEED_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&inner.keys.feed)
        .arg(format!("{}-{}", at.seq, at.minor))
        .query_async(reader)
        .await?;
    let current = format!("{:x}", at.epoch);
    if epoch.as_deref() != Some(current.as_str()) {
        return Err(Stop::Failed("the Redis history changed epoch".into()));
    }
    let mut next = at;
    let mut resynced = false;
    for (id, fields) in reply.into_iter().flatten().flat_map(|(_, entries)| entries) {
        inner.feed_entries.inc();
        inner.feed_bytes.inc_by((id.len() + fields.iter().map(String::len).sum::<usize>()) as u64);
        let Some(entry) = Entry::parse(&id, &fields) else {
            tracing::warn!(entry = %id, "skipping a malformed feed entry");
            continue;
        };
        if entry.epoch().is_some_and(|e| e != current) {
            // Written in a newer epoch while we read (FLUSHALL); settle it on reconnect.
            return Err(Stop::Failed("the Redis history changed epoch".into()));
        }
        if entry.follows() > next.seq && !resynced {
            // The feed was trimmed past our position (or a publish failed half-way and burned
            // seqs): this node cannot prove its streams missed nothing.
            tracing::warn!(shard = inner.index, from = next.seq, to = entry.follows(), "gap in the Redis feed; open streams get resync");
            inner.fanout.resync_all(&Bytes::from(encode_resync(ResyncReason::EngineOutage, None)), |a| inner.holds(a));
            resynced = true;
        }
        match entry {
            Entry::Event { seq, account, payload, audience, .. } => {
                let frame = Bytes::from(encode_data_frame(Some(EventId::new(at.epoch, seq)), payload));
                inner.fanout.deliver(account, seq, &frame, stored_audience(audience).as_deref());
                next = Cursor { seq, minor: 0, ..next };
            }
            Entry::Fence { seq, .. } => next = Cursor { seq, minor: 0, ..next },
            Entry::Claim { position, account, session, node } => {
                if node != inner.node_id {
                    inner.fanout.remote_claim(account, session, position);
                }
                next = Cursor { seq: next.seq.max(position.0), minor: position.1, ..next };
            }
        }
    }
    inner.saw(next.seq);
    Ok(next)
}

/// One feed entry (see the layout in [`scripts`]).
#[derive(Debug)]
enum Entry<'a> {
    /// `audience`: the stored form, when the event has one.
    Event { seq: u64, account: &'a str, epoch: &'a str, payload: &'a str, audience: Option<&'a str> },
    /// After a failover: seqs after `after` up to `seq` name no event (see [`scripts::init`]).
    Fence { seq: u64, after: u64, epoch: &'a str },
    Claim { position: (u64, u64), account: &'a str, session: &'a str, node: &'a str },
}

impl<'a> Entry<'a> {
    fn parse(id: &str, fields: &'a [String]) -> Option<Self> {
        let (major, minor) = entry_id(id)?;
        if minor > 0 {
            return Some(Entry::Claim { position: (major, minor), account: field(fields, "c")?, session: field(fields, "s")?, node: field(fields, "n")? });
        }
        let epoch = field(fields, "e")?;
        match field(fields, "f") {
            Some(after) => Some(Entry::Fence { seq: major, after: after.parse().ok()?, epoch }),
            None => Some(Entry::Event { seq: major, account: field(fields, "a")?, epoch, payload: field(fields, "p")?, audience: field(fields, "u") }),
        }
    }

    fn epoch(&self) -> Option<&str> {
        match self {
            Entry::Event { epoch, .. } | Entry::Fence { epoch, .. } => Some(epoch),
            Entry::Claim { .. } => None,
        }
    }

    /// The seq a node must have delivered for this entry to be the next one it may see
    /// without a gap.
    fn follows(&self) -> u64 {
        match self {
            Entry::Event { seq, .. } => seq.saturating_sub(1),
            Entry::Fence { after, .. } => *after,
            Entry::Claim { position, .. } => position.0,
        }
    }
}
