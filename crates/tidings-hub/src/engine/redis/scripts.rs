//! The Lua scripts that make each Redis step atomic, and the key layout they work on.
//!
//! Every write to history is one script, so a publish is all-or-nothing with respect to other
//! nodes: no node can observe a seq without its event, or an event outside seq order. The
//! scripts need Redis 6.2 or later (exclusive `XRANGE` bounds, `XTRIM MINID`). Account keys
//! are built inside the maintenance script, so the engine needs a single Redis server (or a
//! primary with replicas), not Redis Cluster.
//!
//! Stream entry ids are `<seq>-0`. Per-account entries hold `p` (the activity payload) and `t`
//! (milliseconds since the epoch, for age trimming) in that order, then `u` (the audience in
//! its stored form) when the event has one. The feed holds three kinds of entry: events at
//! `<seq>-0` (`a` account, `e` epoch in hex, `p`, and `u` when there is an audience: every
//! node filters its own streams by it); fences at `<seq>-0`
//! (`f`, the head the fence starts after, and `e`; see [`init`]); and session claims at
//! `<head>-<n>`, `n` > 0 (`c` account, `s` session, `n` node), which take no seq.

use redis::Script;

/// The keys of one hub deployment, all under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub prefix: String,
    /// The history's epoch (hex), created once with `SET` when missing.
    pub epoch: String,
    /// The last seq assigned, across all accounts.
    pub seq: String,
    /// The stream every node reads to deliver events to its own streams.
    pub feed: String,
    /// Hash: account -> seq of its last trimmed event (what proves a gap), for accounts with
    /// retained events. Beside it, built by the scripts: `<trimmed>:bytes` (account -> payload
    /// bytes retained) and `<trimmed>:floors` (floor bucket -> highest `trimmed_through` of a
    /// forgotten account there).
    pub trimmed: String,
    /// Sorted set: account -> time (ms) of its oldest kept event, for age trimming.
    pub oldest: String,
    /// The replication id of the primary the seqs were last issued on (see [`init`]).
    pub lineage: String,
    /// Which shard of how many this server holds, `<index>/<count>` (see [`init`]); missing
    /// means `0/1`, the one shard of a deployment without `shards`.
    pub layout: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let k = |name: &str| format!("{prefix}{name}");
        Self { prefix: prefix.to_owned(), epoch: k("epoch"), seq: k("seq"), feed: k("feed"), trimmed: k("trimmed"), oldest: k("oldest"), lineage: k("lineage"), layout: k("shards") }
    }

    /// The history stream of one account.
    pub fn account(&self, account: &str) -> String {
        format!("{}a:{account}", self.prefix)
    }

    /// Sorted set of one account's idempotency keys (member) and their events' seqs (score).
    pub fn account_keys(&self, account: &str) -> String {
        format!("{}k:{account}", self.prefix)
    }
}

/// Shared by the scripts that trim: drops an account's oldest entries beyond `max`, older
/// than `cutoff` (ms) or beyond `max_bytes` of payload, records the last dropped seq as the
/// account's `trimmed_through`, and indexes the time of the oldest entry kept. An account left
/// with no entry is forgotten: its stream, its byte count and its `trimmed_through` go, and
/// the floor of its bucket (`<trimmed>:floors`, bucket as [`floor_bucket`]) rises to what
/// proved a gap, which is what answers its old ids from then on.
///
/// [`floor_bucket`]: crate::engine::history::floor_bucket
macro_rules! trim_fn {
    () => {
        r#"
local function floor_bucket(account)
  local h = 0
  for i = 1, #account do h = (h * 31 + string.byte(account, i)) % 4096 end
  return h
end
local function trim(key, account, max, cutoff, trimmed, oldest, max_bytes)
  local sizes = trimmed .. ':bytes'
  local held = tonumber(redis.call('HGET', sizes, account) or '0')
  local last = nil
  local excess = redis.call('XLEN', key) - max
  if excess > 0 then
    local old = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
    for _, e in ipairs(old) do held = held - #e[2][2] end
    last = old[#old][1]
  end
  local first = nil
  while true do
    local from = '-'
    if last then from = '(' .. last end
    local batch = redis.call('XRANGE', key, from, '+', 'COUNT', 64)
    for _, e in ipairs(batch) do
      if tonumber(e[2][4]) >= cutoff and held <= max_bytes then first = e; break end
      held = held - #e[2][2]
      last = e[1]
    end
    if first or #batch < 64 then break end
  end
  if last then
    local seq = string.match(last, '^(%d+)')
    redis.call('XTRIM', key, 'MINID', seq .. '-1')
    redis.call('HSET', trimmed, account, seq)
  end
  if first then
    redis.call('ZADD', oldest, first[2][4], account)
    redis.call('HSET', sizes, account, math.max(held, 0))
  else
    redis.call('DEL', key)
    redis.call('ZREM', oldest, account)
    redis.call('HDEL', sizes, account)
    local through = redis.call('HGET', trimmed, account)
    if through then
      local floors = trimmed .. ':floors'
      local bucket = floor_bucket(account)
      if tonumber(through) > tonumber(redis.call('HGET', floors, bucket) or '0') then
        redis.call('HSET', floors, bucket, through)
      end
      redis.call('HDEL', trimmed, account)
    end
  end
end
"#
    };
}

/// Settles the history a node follows on the server it just reached, which must be a
/// primary (otherwise it fails with `NOTPRIMARY` and the node asks Sentinel again).
///
/// - No epoch yet: a new one.
/// - The server was promoted from a replica of the primary the seqs were issued on (its
///   `master_replid2` is the recorded lineage): a failover. Events the old primary stored but
///   had not replicated are gone, and some nodes may have delivered them. When every publish
///   waited for a replica (ARGV[4] = 1), nothing acknowledged is gone, so the history goes
///   on in the same epoch behind a **fence**: the seq counter jumps by ARGV[5] and a fence
///   entry in the feed says so, so no seq a lost event had is issued again, and a node that
///   delivered up to the old head or anywhere below the fence knows nothing was skipped.
///   Otherwise acknowledged events may be gone: a new epoch, and every client resyncs.
/// - The epoch is the one the node followed but the head is below the highest seq it saw
///   (restored from an older snapshot): a new epoch.
/// - The server held another shard of another layout (`<index>/<count>`, missing: `0/1`) than
///   the node's: the shard list changed, and accounts may have moved here from elsewhere or
///   left and come back with events published meanwhile on another server. A new epoch, so
///   no id of the old layout is ever resumed here (clients resync).
///
/// A new epoch keeps the seq counter and empties the feed but for a fence at the head, so a
/// node that follows it from seq 0 sees no gap and no entry of the old epoch.
///
/// KEYS: epoch, seq, lineage, feed, layout. ARGV: candidate epoch, epoch this node followed
/// (or ""), highest seq it saw, 1 when publishes wait for replicas, fence gap, feed length,
/// the node's layout.
/// Returns `{epoch, head, what happened}` (`""`, `"fenced"`, `"failover"` or `"relayout"`).
pub(super) fn init() -> Script {
    Script::new(
        r#"
local info = redis.call('INFO', 'replication')
if not string.find(info, 'role:master', 1, true) then
  return redis.error_reply('NOTPRIMARY this server is a replica')
end
local replid = string.match(info, 'master_replid:(%x+)')
local replid2 = string.match(info, 'master_replid2:(%x+)')
local epoch = redis.call('GET', KEYS[1])
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local lineage = redis.call('GET', KEYS[3])
local layout = redis.call('GET', KEYS[5]) or '0/1'
local happened = ''
-- A new epoch keeps the seq counter (account streams keep their ids increasing) and starts
-- the feed afresh from a fence at the head: nodes read the new epoch from its start.
local function new_epoch()
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[4])
  if head > 0 then
    redis.call('XADD', KEYS[4], string.format('%d-0', head), 'f', '0', 'e', epoch)
  end
end
if epoch and layout ~= ARGV[7] then
  new_epoch()
  happened = 'relayout'
elseif epoch and lineage and replid ~= lineage and replid2 == lineage then
  if ARGV[4] == '1' then
    local fence = string.format('%d', head + tonumber(ARGV[5]))
    redis.call('SET', KEYS[2], fence)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], fence .. '-0', 'f', string.format('%d', head), 'e', epoch)
    head = tonumber(fence)
    happened = 'fenced'
  else
    new_epoch()
    happened = 'failover'
  end
elseif (not epoch) or (epoch == ARGV[2] and head < tonumber(ARGV[3])) then
  new_epoch()
end
if layout ~= ARGV[7] then redis.call('SET', KEYS[5], ARGV[7]) end
if replid then redis.call('SET', KEYS[3], replid) end
return {epoch, string.format('%d', head), happened}
"#,
    )
}

/// Stores a batch: sorts out duplicates, assigns seqs, appends to each account's history and
/// to the feed, trims, and forgets the keys of trimmed events.
///
/// An event is a duplicate when its key is in its account's key set with the seq of an event
/// still in the account's history (not trimmed, not past the age cutoff), or when an earlier
/// item of the batch had the same account and key. Duplicates take no seq and are neither
/// stored nor fed; the answer gives them the first event's seq. Because scripts run one at a
/// time, two nodes publishing the same key at once store it once. A key set expires after
/// `max_age` without publishes (every event it names is past its age by then), and each
/// publish drops the keys of the events trimmed so far, so it never holds more keys than the
/// account's history holds events. A duplicate refreshes its key set's lifetime: that write
/// is what makes the `WAIT` behind a publish with `min_replicas` cover the first event too, so
/// a duplicate is never acknowledged before the event it names is on the replicas.
///
/// KEYS: epoch, seq, feed, trimmed, oldest, then per event its account stream and key set.
/// ARGV: expected epoch, now (ms), max events, age cutoff (ms), feed length, key set lifetime
/// (ms), max bytes per account, then account, payload, key ("" for none) and stored audience
/// ("" for none) per event.
/// Returns `{1, seqs, duplicate flags}` (one per event, in order), or `{-1, {}, {}}` when the
/// epoch is not the expected one (nothing is written then).
pub(super) fn publish() -> Script {
    Script::new(concat!(
        trim_fn!(),
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, {}, {}} end
local n = (#KEYS - 5) / 2
local cutoff = tonumber(ARGV[4])
local seqs, dups, first = {}, {}, {}
local new = 0
for i = 1, n do
  local stream, keys, key = KEYS[4 + 2 * i], KEYS[5 + 2 * i], ARGV[6 + 4 * i]
  dups[i] = 0
  if key ~= '' then
    local earlier = first[keys .. '\0' .. key]
    local s = redis.call('ZSCORE', keys, key)
    if earlier then
      dups[i] = earlier
    elseif s then
      local e = redis.call('XRANGE', stream, s .. '-0', s .. '-0')
      if #e == 1 and tonumber(e[1][2][4]) >= cutoff then
        seqs[i] = tonumber(s)
        dups[i] = -1
        -- A write, so that a WAIT after this script also covers the first event's write
        -- (the replication stream is ordered), however recently another node stored it.
        redis.call('PEXPIRE', keys, ARGV[6])
      end
    end
    if dups[i] == 0 then first[keys .. '\0' .. key] = i end
  end
  if dups[i] == 0 then new = new + 1 end
end
-- Seqs are taken first: if an XADD fails half-way, its seq is burned, never reused.
local seq = redis.call('INCRBY', KEYS[2], new) - new
local touched = {}
for i = 1, n do
  if dups[i] == 0 then
    seq = seq + 1
    seqs[i] = seq
    local id = string.format('%d-0', seq)
    local account, payload, key, audience = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i], ARGV[7 + 4 * i]
    if audience == '' then
      redis.call('XADD', KEYS[4 + 2 * i], id, 'p', payload, 't', ARGV[2])
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], id, 'a', account, 'e', ARGV[1], 'p', payload)
    else
      redis.call('XADD', KEYS[4 + 2 * i], id, 'p', payload, 't', ARGV[2], 'u', audience)
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], id, 'a', account, 'e', ARGV[1], 'p', payload, 'u', audience)
    end
    redis.call('HINCRBY', KEYS[4] .. ':bytes', account, #payload)
    if key ~= '' then
      redis.call('ZADD', KEYS[5 + 2 * i], seq, key)
      redis.call('PEXPIRE', KEYS[5 + 2 * i], ARGV[6])
    end
    touched[KEYS[4 + 2 * i]] = {account, KEYS[5 + 2 * i]}
  elseif dups[i] > 0 then
    seqs[i] = seqs[dups[i]]
  end
end
for key, t in pairs(touched) do
  trim(key, t[1], tonumber(ARGV[3]), cutoff, KEYS[4], KEYS[5], tonumber(ARGV[7]))
  if redis.call('XLEN', key) == 0 then
    -- Every event of the account went (it was forgotten): so do its keys.
    redis.call('DEL', t[2])
  else
    local through = redis.call('HGET', KEYS[4], t[1])
    if through then redis.call('ZREMRANGEBYSCORE', t[2], '-inf', through) end
  end
end
local flags = {}
for i = 1, n do
  if dups[i] == 0 then flags[i] = 0 else flags[i] = 1 end
  seqs[i] = string.format('%d', seqs[i])
end
return {1, seqs, flags}
"#
    ))
}

/// Shared by the scripts that announce streams: appends one claim per (account, session) in
/// `ARGV[first..]` to the feed (see [`open`]) and returns their entry ids.
macro_rules! claim_fn {
    () => {
        r#"
local function claim(seq_key, feed, feed_len, node, first)
  local head = redis.call('GET', seq_key) or '0'
  local minor = 0
  local last = redis.call('XREVRANGE', feed, '+', '-', 'COUNT', 1)
  if #last > 0 then
    local major, n = string.match(last[1][1], '^(%d+)-(%d+)$')
    if major and tonumber(major) >= tonumber(head) then
      head = major
      minor = tonumber(n)
    end
  end
  local ids = {}
  for i = first, #ARGV, 2 do
    minor = minor + 1
    local id = head .. '-' .. string.format('%d', minor)
    redis.call('XADD', feed, 'MAXLEN', '~', feed_len, id, 'c', ARGV[i], 's', ARGV[i + 1], 'n', node)
    ids[#ids + 1] = id
  end
  return ids
end
"#
    };
}

/// Reads how a stream of one account starts: trims it, then returns the epoch (or "" when
/// missing), the head, the account's `trimmed_through`, and, when asked, the entries after a
/// seq, read in pages and only while their payloads add up to at most the replay budget; past
/// it, no entries and a 1 in the last field (the stream gets `resync` `replay_too_large`), so
/// a far-behind client never makes Redis build, or the hub wait for, a huge reply.
///
/// It also announces the streams this node registered since its last open, this one included:
/// one **claim** per stream in the feed, at `<head>-<n>` after the last entry, taking no seq.
/// The feed's order is the order in which opens reached Redis, the same for every node: of two
/// streams of one session, the one claimed later supersedes the other (one stream per session
/// across nodes). Returned last: the claims' entry ids, in order.
///
/// KEYS: epoch, seq, trimmed, oldest, account stream, feed.
/// ARGV: account, max events, age cutoff (ms), seq to replay after (or ""), replay budget
/// (bytes), feed length, node id, max bytes per account, then account and session per claim.
pub(super) fn open() -> Script {
    Script::new(concat!(
        trim_fn!(),
        claim_fn!(),
        r#"
local claims = claim(KEYS[2], KEYS[6], ARGV[6], ARGV[7], 9)
trim(KEYS[5], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), KEYS[3], KEYS[4], tonumber(ARGV[8]))
local epoch = redis.call('GET', KEYS[1]) or ''
local head = redis.call('GET', KEYS[2]) or '0'
-- An account forgotten (or never seen) counts as trimmed through its bucket's floor.
local own = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local floor = tonumber(redis.call('HGET', KEYS[3] .. ':floors', floor_bucket(ARGV[1])) or '0')
local trimmed = string.format('%d', math.max(own, floor))
local replay = {}
local too_large = 0
if ARGV[4] ~= '' then
  local from = '(' .. ARGV[4] .. '-0'
  local budget = tonumber(ARGV[5])
  local bytes = 0
  repeat
    local page = redis.call('XRANGE', KEYS[5], from, '+', 'COUNT', 64)
    for _, entry in ipairs(page) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'p' then bytes = bytes + #fields[i + 1] end
      end
      if bytes > budget then
        too_large = 1
        break
      end
      replay[#replay + 1] = entry
    end
    if #page > 0 then from = '(' .. page[#page][1] end
  until too_large == 1 or #page < 64
  if too_large == 1 then replay = {} end
end
return {epoch, head, trimmed, replay, too_large, claims}
"#
    ))
}

/// Trims by age the accounts whose oldest kept event is older than the cutoff, a bounded
/// number per call. KEYS: trimmed, oldest. ARGV: key prefix, max events, cutoff (ms), limit,
/// max bytes per account.
/// Returns how many accounts were trimmed.
pub(super) fn maintain() -> Script {
    Script::new(concat!(
        trim_fn!(),
        r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
for _, account in ipairs(due) do
  trim(ARGV[1] .. 'a:' .. account, account, tonumber(ARGV[2]), tonumber(ARGV[3]), KEYS[1], KEYS[2], tonumber(ARGV[5]))
end
return #due
"#
    ))
}
