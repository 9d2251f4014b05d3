//! The connection task: connects, follows the feed into the fan-out, and reconnects.
//!
//! One task per node owns both Redis connections. It is the only writer of the engine's
//! connection slot and epoch, and the only caller of the fan-out for events, so delivery on a
//! node is in feed order (seq order) by construction. It never fails for good: any error ends
//! the current connection, the engine turns unready, and the task tries again after a backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tidings_protocol::EventId;
use tidings_protocol::frame::{ResyncReason, encode_data_frame, encode_resync};
use tokio_util::sync::CancellationToken;

use super::{Inner, Link, RECONNECT_DELAY_MAX, RECONNECT_DELAY_MIN, entry_seq, field, scripts};
use crate::engine::history::new_epoch;

/// How long one `XREAD` waits for new entries; also how often an idle node checks the epoch
/// (a FLUSHALL does not drop connections, so this is how it is noticed without traffic).
const FEED_BLOCK: Duration = Duration::from_millis(500);
/// Entries read per `XREAD`: bounds one reply while letting a busy feed be read in batches.
const FEED_READ_BATCH_MAX: usize = 512;

/// Where this node is in the history: the epoch it follows and the last seq it delivered.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    epoch: u64,
    seq: u64,
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

pub(super) async fn supervise(inner: Arc<Inner>, stop: CancellationToken) {
    let mut cursor: Option<Cursor> = None;
    let mut failures: u32 = 0;
    let mut generation: u64 = 0;
    loop {
        generation += 1;
        match follow(&inner, &mut cursor, generation, &stop).await {
            Stop::Shutdown => return,
            Stop::Failed(why) => {
                if inner.ready.swap(false, Ordering::AcqRel) {
                    failures = 0;
                }
                inner.conn.write().expect("conn lock").take();
                if failures == 0 {
                    tracing::warn!(error = %why, "Redis engine unavailable; reconnecting");
                } else {
                    tracing::debug!(error = %why, attempt = failures, "Redis still unavailable");
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
async fn follow(inner: &Inner, cursor: &mut Option<Cursor>, generation: u64, stop: &CancellationToken) -> Stop {
    let (conn, mut reader) = match connect(inner).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let mut cmd = conn.clone();
    let at = match settle_epoch(inner, &mut cmd, *cursor).await {
        Ok(at) => at,
        Err(e) => return e.into(),
    };
    *cursor = Some(at);
    inner.epoch.store(at.epoch, Ordering::Release);
    *inner.conn.write().expect("conn lock") = Some(Link { generation, conn });
    inner.ready.store(true, Ordering::Release);
    tracing::info!(epoch = %format!("{:x}", at.epoch), seq = at.seq, "Redis engine connected");
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

async fn connect(inner: &Inner) -> Result<(MultiplexedConnection, MultiplexedConnection), RedisError> {
    let c = &inner.config;
    let commands = AsyncConnectionConfig::new().set_connection_timeout(Some(c.connect_timeout)).set_response_timeout(Some(c.command_timeout));
    // The reader's replies arrive after up to FEED_BLOCK by design.
    let feed = AsyncConnectionConfig::new().set_connection_timeout(Some(c.connect_timeout)).set_response_timeout(Some(FEED_BLOCK + c.command_timeout));
    let conn = inner.client.get_multiplexed_async_connection_with_config(&commands).await?;
    let reader = inner.client.get_multiplexed_async_connection_with_config(&feed).await?;
    Ok((conn, reader))
}

/// Agrees with Redis on the epoch. Same epoch: carry on from the cursor (the feed has what
/// was published meanwhile). New epoch: every stream of the old one is told to resync and the
/// new feed is read from its start, so nothing published in the new epoch is skipped.
async fn settle_epoch(inner: &Inner, conn: &mut MultiplexedConnection, cursor: Option<Cursor>) -> Result<Cursor, RedisError> {
    let candidate = new_epoch();
    let followed = cursor.map(|c| format!("{:x}", c.epoch)).unwrap_or_default();
    let (epoch, head): (String, u64) = scripts::init()
        .key(&inner.keys.epoch)
        .key(&inner.keys.seq)
        .arg(format!("{candidate:x}"))
        .arg(followed)
        .arg(inner.seen_head.load(Ordering::Acquire))
        .invoke_async(conn)
        .await?;
    let epoch = u64::from_str_radix(&epoch, 16).map_err(|_| RedisError::from((redis::ErrorKind::Parse, "epoch is not hex")))?;
    Ok(match cursor {
        None => {
            inner.seen_head.store(head, Ordering::Release);
            Cursor { epoch, seq: head }
        }
        Some(c) if c.epoch == epoch => c,
        Some(c) => {
            tracing::warn!(old = %format!("{:x}", c.epoch), new = %format!("{epoch:x}"), "Redis history changed epoch; open streams get resync");
            inner.seen_head.store(head, Ordering::Release);
            let frame = encode_resync(ResyncReason::EngineOutage, Some(EventId::new(epoch, 0)));
            inner.fanout.new_epoch(epoch, &Bytes::from(frame));
            Cursor { epoch, seq: 0 }
        }
    })
}

type FeedReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

/// Reads the next feed entries after the cursor and delivers them; returns the new cursor.
async fn read_feed(inner: &Inner, reader: &mut MultiplexedConnection, at: Cursor) -> Result<Cursor, Stop> {
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
        .arg(format!("{}-0", at.seq))
        .query_async(reader)
        .await?;
    let current = format!("{:x}", at.epoch);
    if epoch.as_deref() != Some(current.as_str()) {
        return Err(Stop::Failed("the Redis history changed epoch".into()));
    }
    let mut next = at;
    let mut resynced = false;
    for (id, fields) in reply.into_iter().flatten().flat_map(|(_, entries)| entries) {
        let (Some(seq), Some(account), Some(payload)) = (entry_seq(&id), field(&fields, "a"), field(&fields, "p")) else {
            tracing::warn!(entry = %id, "skipping a malformed feed entry");
            continue;
        };
        if field(&fields, "e") != Some(current.as_str()) {
            // Written in a newer epoch while we read (FLUSHALL); settle it on reconnect.
            return Err(Stop::Failed("the Redis history changed epoch".into()));
        }
        if seq > next.seq + 1 && !resynced {
            // The feed was trimmed past our position (or a publish failed half-way and burned
            // seqs): this node cannot prove its streams missed nothing.
            tracing::warn!(from = next.seq, to = seq, "gap in the Redis feed; open streams get resync");
            inner.fanout.resync_all(&Bytes::from(encode_resync(ResyncReason::EngineOutage, None)));
            resynced = true;
        }
        let frame = Bytes::from(encode_data_frame(Some(EventId::new(at.epoch, seq)), payload));
        inner.fanout.deliver(account, seq, &frame);
        next.seq = seq;
    }
    inner.saw(next.seq);
    Ok(next)
}
