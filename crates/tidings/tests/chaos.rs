//! Chaos: many clients, continuous publishing, and the hub's world falling apart around them.
//! At the end, no accepted event may have been missed silently by any client.
//!
//! While publishers post activities, the test repeatedly cuts every connection (a TCP proxy
//! in front of the hub), restarts the hub on the same port (SIGTERM and SIGKILL in turn), and
//! some readers stop reading for seconds at a time so the hub evicts them as slow consumers
//! (a last phase makes them stall until an eviction happens, so at least one always does).
//! Clients are Rust SDK subscriptions ([`tidings_client::Client`]) and raw readers (a plain
//! HTTP/1.1 socket with a small receive buffer and their own `Last-Event-ID` handling).
//!
//! # What "silently missed" means
//!
//! An event is **accepted** when its publish request got `202` with its id. Every hub process
//! is a **generation**, numbered in start order; an id `<epoch>-<seq>` belongs to the
//! generation whose engine issued that epoch (with an engine that keeps history across
//! restarts, several generations share one epoch and it maps to the first of them). Positions
//! are ordered by (generation, seq).
//!
//! A client **owes** every accepted event of its account whose position is after the
//! `connected` position of the client's first stream. An owed event `e` is **covered** when:
//! - the client received `e` (an `activity` frame with `e`'s id), or
//! - the client received a `resync` on a stream whose `connected` position `p` is at or after
//!   `e` — generation(e) < generation(p), or the same generation and seq(e) ≤ seq(p) — because
//!   that resync tells the client to refetch everything, and its refetch happens after `e`
//!   was stored.
//!
//! Any other owed event is **silently missed**; the count must be 0. Events published while
//! the client was away must come by replay or be covered by a resync; events after a resync
//! stream's position must come live on it. At the end chaos stops, one sentinel event per
//! account is published, and every client must have its sentinel covered (received, or a
//! resync at or after it), so every accepted event before it was owed for long enough. Duplicates (one id twice on one client) must be 0 too.
//!
//! With the Redis engine, a real `redis-server` without persistence is also killed and started
//! again (empty) halfway between hub restarts: publishes fail with 503 while it is down, its
//! history starts a new epoch, and every open stream is sent a `resync` carrying the new
//! epoch's first position, which covers every event of the older generations. Sharded over two
//! servers, one shard's server at a time is killed and started again: only its accounts fail
//! and resync, and each shard's epochs number their own generations (an account, and so every
//! position compared, lives on one shard).
//!
//! Duration: `TIDINGS_CHAOS_SECS` of chaos per engine (default 20; with the forced stall and
//! the settle the CI run stays around a minute per engine; use 600 for a soak). Engines:
//! [`engines`].

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tidings_testkit::proxy::Proxy;
use support::redis::{EngineServers, RedisShards, Transport, shard_of};
use support::*;
use tidings_bench::wire::Chunked;
use tidings_client::{Backoff, Client, Event as SdkEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// One engine the chaos test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineCase {
    /// The in-memory default: every hub restart starts a new epoch.
    Memory,
    /// A real `redis-server` without persistence, started here and restarted (wiped) during
    /// the chaos, between hub restarts: open streams get `resync`, publishes fail with 503
    /// while it is down, and the hub follows the new epoch.
    Redis,
    /// Two such servers as `[[engine.shards]]`, restarted one at a time.
    RedisShards,
}

impl EngineCase {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisShards => "redis-shards",
        }
    }

    /// How many Redis servers the engine uses (0: none).
    fn servers(self) -> usize {
        match self {
            Self::Memory => 0,
            Self::Redis => 1,
            Self::RedisShards => 2,
        }
    }
}

fn engines() -> Vec<EngineCase> {
    vec![EngineCase::Memory, EngineCase::Redis]
}

/// Accounts of the non-stalling clients, `acc-0`…; the stalling readers have their own.
const ACCOUNTS: usize = 3;
const SDK_CLIENTS: usize = 6;
const RAW_CLIENTS: usize = 6;
/// Raw readers (from the first) that stall now and then to be evicted as slow consumers.
const STALLING: usize = 3;
/// The account of the stalling readers. Its events carry padding and come in bigger batches
/// so a stalled reader's socket buffers (megabytes on loopback) and queue fill within seconds.
const STALL_ACCOUNT: &str = "acc-stall";
const STALL_PADDING_BYTES: usize = 256 * 1024;
/// How long all clients get to receive the sentinel after chaos stops: more than [`STALL_MAX`],
/// since a stall that began just before chaos stopped may last that long on a starved machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn chaos_secs() -> u64 {
    std::env::var("TIDINGS_CHAOS_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_event_is_missed_silently_under_chaos() {
    for engine in engines() {
        run(engine, Duration::from_secs(chaos_secs())).await;
    }
}

/// A test of its own, so the test runner runs it beside the other engines' rather than after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_event_is_missed_silently_under_chaos_with_redis_shards() {
    run(EngineCase::RedisShards, Duration::from_secs(chaos_secs())).await;
}

/// Probe accounts with a token each, enough that two shards both hold some (checked in
/// [`probe_accounts`]); one per shard is probed.
const PROBES: usize = 8;

/// One probe account per shard of `shards` (one for an engine without shards), so a probe
/// costs one stream open per shard.
fn probe_accounts(shards: usize) -> Vec<String> {
    (0..shards)
        .map(|shard| {
            let account = (0..PROBES).map(|i| format!("probe-{i}")).find(|a| shard_of(a, shards) == shard);
            account.unwrap_or_else(|| panic!("no probe account on shard {shard}"))
        })
        .collect()
}

/// What one client observed, in order.
#[derive(Debug, Clone)]
enum Obs {
    Connected { id: String },
    Activity { id: String, n: u64 },
    /// With the position it carries, if any (a new epoch's first position).
    Resync { id: Option<String> },
}

#[derive(Default)]
struct Log {
    obs: Mutex<Vec<Obs>>,
    /// A terminal error or protocol violation, which fails the test.
    fatal: Mutex<Option<String>>,
    stalls: AtomicU64,
    reconnects: AtomicU64,
}

/// Slow-consumer evictions the hub reported so far, over all its generations; a stalling
/// reader stays stalled until this grows, the hub restarts, or a time limit passes.
static EVICTIONS: AtomicU64 = AtomicU64::new(0);
/// Hub restarts so far: a stall across one is pointless (its connection is gone).
static RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Set during the last phase of the chaos: every stalling reader stalls until an eviction,
/// so at least one slow-consumer eviction and resume happens whatever the timing.
static FORCE_STALL: AtomicBool = AtomicBool::new(false);
/// A stall lasts at least this long, and at most the second value if nothing ends it.
const STALL_MIN: Duration = Duration::from_secs(2);
const STALL_MAX: Duration = Duration::from_secs(30);
/// Longest the final forced stall waits for an eviction.
const FORCED_STALL_MAX: Duration = Duration::from_secs(30);

impl Log {
    fn push(&self, o: Obs) {
        self.obs.lock().unwrap().push(o);
    }
    fn has(&self, n: u64) -> bool {
        self.obs.lock().unwrap().iter().any(|o| matches!(o, Obs::Activity { n: m, .. } if *m == n))
    }
}

struct ClientSpec {
    name: String,
    token: String,
    account: String,
    sdk: bool,
    stalls: bool,
    log: Arc<Log>,
}

fn tokens_toml(clients: &[ClientSpec]) -> String {
    let mut t: String = clients
        .iter()
        .map(|c| format!("[[tokens]]\ntoken = \"{}\"\naccount = \"{}\"\nuser = \"{}\"\nsession = \"s-{}\"\n", c.token, c.account, c.name, c.name))
        .collect();
    for i in 0..PROBES {
        t.push_str(&format!("[[tokens]]\ntoken = \"tok-probe-{i}\"\naccount = \"probe-{i}\"\nuser = \"probe\"\nsession = \"s-probe-{i}\"\n"));
    }
    t
}

async fn run(engine: EngineCase, chaos: Duration) {
    let mut rng = rand::rng();
    let clients: Vec<ClientSpec> = (0..SDK_CLIENTS + RAW_CLIENTS)
        .map(|i| {
            let sdk = i < SDK_CLIENTS;
            let raw_index = i.saturating_sub(SDK_CLIENTS);
            let stalls = !sdk && raw_index < STALLING;
            let account = if stalls { STALL_ACCOUNT.to_owned() } else { format!("acc-{}", i % ACCOUNTS) };
            ClientSpec {
                name: format!("{}{i}", if sdk { "sdk" } else { "raw" }),
                token: format!("tok-chaos-{i}-{:08x}", rng.random::<u32>()),
                account,
                sdk,
                stalls,
                log: Arc::new(Log::default()),
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.toml"), tokens_toml(&clients)).unwrap();
    let mut redis = match engine.servers() {
        0 => None,
        n => Some(RedisShards::start(Transport::Plain, n).await),
    };
    let probes = probe_accounts(engine.servers().max(1));
    let tables = format!(
        "[limits]\nstream_queue_frames = 8\nshutdown_grace = \"2s\"\n[history]\nmax_events = 500\n{}",
        redis.as_ref().map(|r| r.toml("")).unwrap_or_default()
    );
    let cfg = config("retry = \"200ms\"\n", &tables).replace("[auth]\n", "[auth]\ntokens_file = \"tokens.toml\"\n");
    let mut hub = Hub::start_in(dir, &cfg, "127.0.0.1:0").await;
    let hub_addr: SocketAddr = hub.addr.parse().unwrap();
    let proxy = Proxy::start(hub_addr).await;
    let mut generations: HashMap<String, usize> = HashMap::new();
    for epoch in probe_epochs(&hub, &probes).await {
        generations.insert(epoch, 0);
    }
    let mut all_logs = String::new();

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in &clients {
        let log = c.log.clone();
        tasks.push(if c.sdk {
            tokio::spawn(sdk_client(proxy.url(), c.token.clone(), log, stop.clone()))
        } else {
            // Stalling readers go straight to the hub so only its own buffers fill up.
            let addr = if c.stalls { hub_addr } else { proxy.addr };
            tokio::spawn(raw_client(addr, c.token.clone(), c.stalls, log, stop.clone()))
        });
    }
    // Publishing starts once every client is connected, so every accepted event is owed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients.iter().any(|c| !c.log.obs.lock().unwrap().iter().any(|o| matches!(o, Obs::Connected { .. }))) {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let accepted: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let next_n = Arc::new(AtomicU64::new(1));
    let publishing = Arc::new(AtomicBool::new(true));
    let accounts: Vec<String> = (0..ACCOUNTS).map(|a| format!("acc-{a}")).collect();
    let publishers = [
        tokio::spawn(publish_loop(hub.url(""), accounts.clone(), 1..=3, 0, accepted.clone(), next_n.clone(), publishing.clone())),
        tokio::spawn(publish_loop(hub.url(""), vec![STALL_ACCOUNT.into()], 2..=3, STALL_PADDING_BYTES, accepted.clone(), next_n.clone(), publishing.clone())),
    ];

    // Chaos.
    let started = Instant::now();
    let (mut restarts_term, mut restarts_kill, mut restarts_redis, mut evictions) = (0u32, 0u32, 0u32, 0.0);
    let restart_every = (chaos / 3).max(Duration::from_secs(4)).min(Duration::from_secs(10));
    let mut next_restart = started + restart_every;
    let mut next_redis_restart = started + restart_every / 2;
    // A starved machine slows every restart down; rather than end the chaos before each kind
    // of fault happened (and fail), it goes on until they all have, up to three times as long.
    let every_fault_happened = |term: u32, kill: u32, redis_restarts: u32, has_redis: bool| {
        chaos < Duration::from_secs(15) || (term > 0 && kill > 0 && (!has_redis || redis_restarts > 0))
    };
    loop {
        let done = every_fault_happened(restarts_term, restarts_kill, restarts_redis, redis.is_some());
        if started.elapsed() >= chaos && (done || started.elapsed() >= chaos * 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1500))).await;
        let now_evicted = evictions + hub.metric("tidings_slow_consumer_evictions_total").await;
        EVICTIONS.store(now_evicted as u64, Ordering::SeqCst);
        let time_left = started.elapsed() + Duration::from_secs(2) < chaos || !done;
        if let Some(redis) = redis.as_mut().filter(|_| Instant::now() >= next_redis_restart && time_left) {
            // Redis restarts halfway between hub restarts: wiped, so its history starts a new
            // epoch, and publishes fail with 503 until it is back. With shards, one server at
            // a time, in turn.
            let shard = restarts_redis as usize % redis.servers.len();
            redis.servers[shard].restart().await;
            restarts_redis += 1;
            let generation = (restarts_term + restarts_kill + restarts_redis) as usize;
            for epoch in probe_epochs(&hub, &probes).await {
                generations.entry(epoch).or_insert(generation);
            }
            next_redis_restart = Instant::now() + restart_every;
        } else if Instant::now() >= next_restart && time_left {
            evictions += hub.metric("tidings_slow_consumer_evictions_total").await;
            let kill = restarts_term > restarts_kill;
            all_logs.push_str(&hub.restart(kill).await);
            if kill { restarts_kill += 1 } else { restarts_term += 1 }
            RESTARTS.fetch_add(1, Ordering::SeqCst);
            let generation = (restarts_term + restarts_kill + restarts_redis) as usize;
            for epoch in probe_epochs(&hub, &probes).await {
                generations.entry(epoch).or_insert(generation);
            }
            next_restart = Instant::now() + restart_every;
        } else {
            proxy.cut_all();
            if rng.random_bool(0.2) {
                proxy.set_down(true);
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.set_down(false);
            }
        }
    }
    // Forced stall: publishing goes on, nothing restarts, stalling readers stop reading until
    // the hub evicts one of them (then they read on, get `closed`, and resume).
    let before_forced = EVICTIONS.load(Ordering::SeqCst);
    FORCE_STALL.store(true, Ordering::SeqCst);
    let forced_until = Instant::now() + FORCED_STALL_MAX;
    while Instant::now() < forced_until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now_evicted = (evictions + hub.metric("tidings_slow_consumer_evictions_total").await) as u64;
        EVICTIONS.store(now_evicted, Ordering::SeqCst);
        if now_evicted > before_forced {
            break;
        }
    }
    FORCE_STALL.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    publishing.store(false, Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);

    // Settle: one sentinel per account; every client must have its own covered.
    let mut sentinels: HashMap<String, (u64, String)> = HashMap::new();
    for account in accounts.iter().chain([&STALL_ACCOUNT.to_owned()]) {
        let n = next_n.fetch_add(1, Ordering::SeqCst);
        let account = account.clone();
        let ids = hub.publish(&account, &[activity(n)]).await;
        accepted.lock().unwrap().push((account.clone(), n, ids[0].clone()));
        sentinels.insert(account, (n, ids[0].clone()));
    }
    let position = |id: &str| -> (usize, u64) {
        let (epoch, seq) = id.split_once('-').unwrap();
        let generation = *generations.get(epoch).unwrap_or_else(|| panic!("id {id} from an unknown epoch"));
        (generation, seq.parse().unwrap())
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let waiting: Vec<_> = clients
            .iter()
            .filter(|c| {
                let (n, id) = &sentinels[&c.account];
                !c.log.has(*n) && !resync_positions(&c.log.obs.lock().unwrap(), position).iter().any(|p| position(id) <= *p)
            })
            .map(|c| c.name.clone())
            .collect();
        if waiting.is_empty() {
            break;
        }
        for c in &clients {
            if let Some(f) = c.log.fatal.lock().unwrap().as_ref() {
                panic!("{}: {f}", c.name);
            }
        }
        assert!(Instant::now() < deadline, "[{}] no sentinel after {SETTLE_TIMEOUT:?} for {waiting:?}", engine.name());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    evictions += hub.metric("tidings_slow_consumer_evictions_total").await;
    for t in &tasks {
        t.abort();
    }
    all_logs.push_str(&hub.logs());

    // Count.
    let accepted = accepted.lock().unwrap().clone();
    println!("chaos [{}] {:?}: {} events accepted, {} connections cut, {} SIGTERM and {} SIGKILL restarts, {} Redis restarts, {} slow-consumer evictions",
        engine.name(), chaos, accepted.len(), proxy.cuts(), restarts_term, restarts_kill, restarts_redis, evictions);
    println!("{:<8} {:>6} {:>9} {:>8} {:>8} {:>6} {:>6} {:>10}", "client", "owed", "received", "resynced", "MISSED", "dups", "stalls", "reconnects");
    let mut total_missed = 0;
    let mut total_dups = 0;
    for c in &clients {
        let obs = c.log.obs.lock().unwrap().clone();
        let Some(Obs::Connected { id: first }) = obs.first() else { panic!("{}: first observation is not connected", c.name) };
        let first = position(first);
        let mut received = HashSet::new();
        let mut dups = 0;
        for o in &obs {
            if let Obs::Activity { n, id } = o {
                let _ = position(id); // every id is one the hub issued in a known generation
                if !received.insert(*n) {
                    dups += 1;
                }
            }
        }
        let resync_at = resync_positions(&obs, position);
        let owed: Vec<_> = accepted.iter().filter(|(a, _, id)| *a == c.account && position(id) > first).collect();
        let (mut got, mut resynced, mut missed) = (0, 0, Vec::new());
        for (_, n, id) in &owed {
            if received.contains(n) {
                got += 1;
            } else if resync_at.iter().any(|p| position(id) <= *p) {
                resynced += 1;
            } else {
                missed.push(*n);
            }
        }
        println!("{:<8} {:>6} {:>9} {:>8} {:>8} {:>6} {:>6} {:>10}", c.name, owed.len(), got, resynced, missed.len(), dups,
            c.log.stalls.load(Ordering::Relaxed), c.log.reconnects.load(Ordering::Relaxed));
        if !missed.is_empty() {
            eprintln!("{}: silently missed {:?}", c.name, &missed[..missed.len().min(20)]);
        }
        total_missed += missed.len();
        total_dups += dups;
    }
    println!("chaos [{}]: silently missed {total_missed}, duplicates {total_dups}", engine.name());
    assert_eq!(total_missed, 0, "[{}] accepted events silently missed", engine.name());
    assert_eq!(total_dups, 0, "[{}] events delivered twice", engine.name());
    assert!(!accepted.is_empty() && proxy.cuts() > 0 && restarts_term > 0, "the chaos did not happen");
    if chaos >= Duration::from_secs(15) {
        assert!(restarts_kill > 0, "no SIGKILL restart");
        assert!(redis.is_none() || restarts_redis > 0, "no Redis restart");
        assert!(evictions > 0.0, "no slow consumer was evicted");
    }
    for c in &clients {
        assert!(!all_logs.contains(&c.token), "{}'s token is in the hub's logs", c.name);
    }
}

/// For every `resync` a client got, the position it covers: its stream's `connected`
/// position, or the position the resync carries when that is later (a resync for a new epoch
/// sent mid-stream covers everything of the older generations).
fn resync_positions(obs: &[Obs], position: impl Fn(&str) -> (usize, u64)) -> Vec<(usize, u64)> {
    let mut at = None;
    let mut out = Vec::new();
    for o in obs {
        match o {
            Obs::Connected { id } => at = Some(position(id)),
            Obs::Resync { id } => {
                let connected = at.expect("resync after connected");
                out.push(id.as_deref().map_or(connected, |id| connected.max(position(id))));
            }
            Obs::Activity { .. } => {}
        }
    }
    out
}

/// The epochs of the running hub's history (one per shard), read from the `connected`
/// frames' ids of the probe accounts; each retried while the hub answers 503 (its engine, or
/// the probe's shard, is coming back).
async fn probe_epochs(hub: &Hub, probes: &[String]) -> HashSet<String> {
    let mut epochs = HashSet::new();
    for account in probes {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = Sse::token(hub, &format!("tok-{account}")).await;
            if s.status == 200 {
                let id = s.next_within(T).await.unwrap().id.unwrap();
                epochs.insert(id.split_once('-').unwrap().0.to_owned());
                break;
            }
            assert!(Instant::now() < deadline, "the hub did not open a stream within 20 s (status {})", s.status);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    epochs
}

/// Publishes batches to `accounts` in turn until told to stop, recording what was accepted.
async fn publish_loop(
    base: String,
    accounts: Vec<String>,
    batch: std::ops::RangeInclusive<u64>,
    padding: usize,
    accepted: Arc<Mutex<Vec<(String, u64, String)>>>,
    next_n: Arc<AtomicU64>,
    publishing: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let padding = "p".repeat(padding);
    let mut turn = 0;
    while publishing.load(Ordering::SeqCst) {
        turn += 1;
        let account = &accounts[turn % accounts.len()];
        let batch_len = rand::random_range(batch.clone());
        let first = next_n.fetch_add(batch_len, Ordering::SeqCst);
        let items: Vec<serde_json::Value> = (first..first + batch_len)
            .map(|n| {
                let mut a = activity(n);
                if !padding.is_empty() {
                    a["padding"] = padding.clone().into();
                }
                serde_json::json!({"account": account, "data": a})
            })
            .collect();
        let resp = http.post(format!("{base}/events")).bearer_auth(PUBLISHER_KEY).json(&items).send().await;
        match resp {
            Ok(r) if r.status() == 202 => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                // The 202 is the acceptance; a body lost with a killed hub is not one.
                if let Some(ids) = body["ids"].as_array() {
                    let mut acc = accepted.lock().unwrap();
                    for (i, id) in ids.iter().enumerate() {
                        acc.push((account.clone(), first + i as u64, id.as_str().unwrap().to_owned()));
                    }
                }
            }
            Ok(r) => assert!(r.status().is_server_error(), "publish refused: {}", r.status()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// A Rust SDK subscription, recording what it yields until the test ends.
async fn sdk_client(url: String, token: String, log: Arc<Log>, _stop: Arc<AtomicBool>) {
    let mut sub = Client::builder(url)
        .token(token)
        .backoff(Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1) })
        .heartbeat(Duration::from_millis(500))
        .subscribe()
        .unwrap();
    let mut last_cause = None;
    while let Some(item) = sub.next().await {
        match item {
            Ok(SdkEvent::Connected { id, .. }) => log.push(Obs::Connected { id: id.expect("connected carries a position") }),
            Ok(SdkEvent::Activity { id, data, .. }) => {
                let n = data["metadata"]["n"].as_u64().unwrap();
                log.push(Obs::Activity { id: id.expect("activity id"), n });
            }
            Ok(SdkEvent::Resync { id, .. }) => log.push(Obs::Resync { id }),
            Ok(SdkEvent::Reconnecting { cause, .. }) => {
                log.reconnects.fetch_add(1, Ordering::Relaxed);
                last_cause = Some(cause);
            }
            Ok(_) => {}
            Err(e) => {
                let recent: Vec<_> = log.obs.lock().unwrap().iter().rev().take(5).cloned().collect();
                *log.fatal.lock().unwrap() = Some(format!("subscription ended: {e} (last observations, newest first: {recent:?}; last disconnect: {last_cause:?})"));
                return;
            }
        }
    }
}

/// A raw reader: HTTP/1.1 by hand over a socket with a small receive buffer, resuming with
/// the last id it saw. A stalling one stops reading now and then, until the hub evicts a slow
/// consumer or [`STALL_MAX`] passes.
async fn raw_client(addr: SocketAddr, token: String, stalls: bool, log: Arc<Log>, stop: Arc<AtomicBool>) {
    let mut last_id: Option<String> = None;
    loop {
        let _ = raw_stream(addr, &token, stalls, &log, &stop, &mut last_id).await;
        log.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rand::random_range(100..300))).await;
    }
}

async fn raw_stream(addr: SocketAddr, token: &str, stalls: bool, log: &Log, stop: &AtomicBool, last_id: &mut Option<String>) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(8 * 1024)?;
    let mut sock = socket.connect(addr).await?;
    let resume = last_id.as_ref().map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let req = format!("GET /events/stream HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{resume}\r\n");
    sock.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut body_start = None;
    let mut next_stall = Instant::now() + Duration::from_millis(rand::random_range(1000..3000));
    let mut dechunk = Chunked::default();
    let mut frames: Vec<u8> = Vec::new();
    // Bytes of `frames` already searched for a frame end (a padded frame arrives in many reads).
    let mut searched = 0;
    loop {
        if stalls && !stop.load(Ordering::SeqCst) && (Instant::now() >= next_stall || FORCE_STALL.load(Ordering::SeqCst)) {
            log.stalls.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let (evicted, restarted) = (EVICTIONS.load(Ordering::SeqCst), RESTARTS.load(Ordering::SeqCst));
            tokio::time::sleep(STALL_MIN).await;
            while started.elapsed() < STALL_MAX
                && EVICTIONS.load(Ordering::SeqCst) == evicted
                && RESTARTS.load(Ordering::SeqCst) == restarted
                && !stop.load(Ordering::SeqCst)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            next_stall = Instant::now() + Duration::from_millis(rand::random_range(1000..4000));
        }
        let n = match tokio::time::timeout(Duration::from_secs(3), sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(()),
            Ok(Ok(n)) => n,
        };
        if body_start.is_none() {
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                // Refused (draining, restarting): not a violation, try again.
                return Ok(());
            }
            assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
            body_start = Some(());
            let rest = buf.split_off(end + 4);
            dechunk.decode(&rest, |b| frames.extend_from_slice(b)).expect("valid chunked framing");
        } else {
            dechunk.decode(&chunk[..n], |b| frames.extend_from_slice(b)).expect("valid chunked framing");
        }
        while let Some(end) = frames[searched.min(frames.len())..].windows(2).position(|w| w == b"\n\n").map(|i| i + searched) {
            searched = 0;
            let block = String::from_utf8(frames.drain(..end + 2).collect()).expect("frames are UTF-8");
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<serde_json::Value>(v).expect("data is JSON"));
                }
            }
            if let Some(id) = &id {
                *last_id = Some(id.clone());
            }
            let Some(data) = data else { continue };
            match data["type"].as_str() {
                Some("connected") => log.push(Obs::Connected { id: id.expect("connected id") }),
                Some("activity") => log.push(Obs::Activity { id: id.expect("activity id"), n: data["data"]["metadata"]["n"].as_u64().unwrap() }),
                Some("resync") => log.push(Obs::Resync { id: id.clone() }),
                Some("closed") => {
                    let reason = data["reason"].as_str().unwrap_or("");
                    if matches!(reason, "superseded" | "revoked") {
                        *log.fatal.lock().unwrap() = Some(format!("closed {reason}"));
                    }
                }
                _ => {}
            }
        }
        // The last byte may be the first of a frame end still to come.
        searched = frames.len().saturating_sub(1);
    }
}
