//! Outbox chaos: writers commit and roll back transactions into a PostgreSQL outbox while the
//! relays, the hub (durable engine) and PostgreSQL are each killed and restarted, and
//! subscribers resume through all of it. At the end, every committed row was delivered to
//! every subscriber of its account exactly once (or covered by a `resync`), no rolled-back row
//! was ever delivered, and the hub stored every committed row exactly once.
//!
//! # Ground truth
//! Each writer transaction inserts its outbox rows and, in the same transaction, their
//! markers into `chaos_committed`. After the run that table says exactly which rows committed,
//! including those whose `COMMIT` was cut off by a killed server (its outcome unknown to the
//! writer). Some transactions stay open for a while before committing, and one writer commits
//! pairs out of id order on purpose: the lower id commits after the higher one was relayed.
//!
//! # Faults, in turn
//! SIGKILL of one of two relays (the other may take over; the killed one comes back), the hub
//! restarted by SIGTERM and by SIGKILL, and PostgreSQL killed with SIGKILL (crash recovery on
//! restart). Subscribers are Rust SDK clients that resume with `Last-Event-ID`.
//!
//! # What is checked
//! - After the writers stop, the outbox drains; one sentinel row per account, committed last,
//!   reaches every subscriber.
//! - The hub's history (replayed from the start of its epoch) holds every committed marker
//!   once, and no other marker.
//! - Every subscriber received every committed marker of its account exactly once, or a
//!   `resync` whose position is at or after the marker's id covers it.
//!
//! Duration: `TIDINGS_OUTBOX_CHAOS_SECS` of faults (default 20; use 600 for a soak).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use support::postgres::{Postgres, Relay};
use support::*;
use tidings_client::{Backoff, Client, Event as SdkEvent};
use tokio::time::Instant;

/// Subscribers: token and account (from [`config`]).
const SUBSCRIBERS: [(&str, &str); 3] = [("tok-alice", "acme"), ("tok-alice-2", "acme"), ("tok-bob", "globex")];
const ACCOUNTS: [&str; 2] = ["acme", "globex"];
/// Writers committing at random besides the out-of-order pair writer.
const WRITERS: usize = 3;
/// How long the outbox gets to drain, and subscribers to see the sentinels, once faults stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

fn chaos_secs() -> u64 {
    std::env::var("TIDINGS_OUTBOX_CHAOS_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// What one subscriber observed.
#[derive(Debug, Clone)]
enum Obs {
    Connected { seq: u64 },
    Activity { seq: u64, n: u64 },
    Resync { seq: Option<u64> },
}

#[derive(Default)]
struct Counts {
    committed_tx: AtomicU64,
    rolled_back_tx: AtomicU64,
    in_doubt_tx: AtomicU64,
    out_of_order_pairs: AtomicU64,
    write_errors: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_row_is_delivered_once_under_chaos() {
    let chaos = Duration::from_secs(chaos_secs());
    let mut pg = Postgres::start().await;
    let tables = "[engine]\nkind = \"durable\"\ndata_dir = \"data\"\n[limits]\nshutdown_grace = \"2s\"\n[history]\nmax_events = 100000\nreplay_max_bytes = 268435456\n";
    let mut hub = Hub::start(&config("retry = \"200ms\"\n", tables)).await;
    let mut relays = vec![
        Relay::start(&pg.url(), &hub.url(""), PUBLISHER_KEY, &["--batch-rows", "50"]).await,
        Relay::start(&pg.url(), &hub.url(""), PUBLISHER_KEY, &["--batch-rows", "50"]).await,
    ];
    for r in &relays {
        tokio::time::timeout(Duration::from_secs(30), async {
            while r.readyz().await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("relays ready");
    }
    pg.client().await.unwrap().batch_execute("CREATE TABLE chaos_committed (n bigint PRIMARY KEY)").await.unwrap();
    let epoch = {
        let mut s = Sse::token(&hub, "tok-alice").await;
        s.next_within(T).await.unwrap().id.unwrap().split_once('-').unwrap().0.to_owned()
    };

    let logs: Vec<Arc<Mutex<Vec<Obs>>>> = SUBSCRIBERS.iter().map(|_| Arc::default()).collect();
    let fatal: Arc<Mutex<Option<String>>> = Arc::default();
    let subscribers: Vec<_> = SUBSCRIBERS
        .iter()
        .zip(&logs)
        .map(|((token, _), log)| tokio::spawn(subscribe(hub.url(""), token.to_string(), epoch.clone(), log.clone(), fatal.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while logs.iter().any(|l| l.lock().unwrap().is_empty()) {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let accounts_of: Arc<Mutex<HashMap<u64, &'static str>>> = Arc::default();
    let next_n = Arc::new(AtomicU64::new(1));
    let writing = Arc::new(AtomicBool::new(true));
    let counts = Arc::new(Counts::default());
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(tokio::spawn(writer(pg.url(), next_n.clone(), accounts_of.clone(), writing.clone(), counts.clone())));
    }
    writers.push(tokio::spawn(out_of_order_writer(pg.url(), next_n.clone(), accounts_of.clone(), writing.clone(), counts.clone())));

    // Faults, in turn.
    let mut rng = rand::rng();
    let started = Instant::now();
    let (mut relay_kills, mut hub_terms, mut hub_kills, mut pg_kills) = (0u32, 0u32, 0u32, 0u32);
    let mut hub_duplicates = 0.0;
    let mut turn = 0;
    while started.elapsed() < chaos {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
        match turn % 4 {
            0 => {
                let r = &mut relays[rng.random_range(0..2)];
                r.restart().await;
                relay_kills += 1;
            }
            1 | 3 => {
                let kill = hub_terms > hub_kills;
                hub_duplicates += hub.metric("tidings_publish_duplicates_total").await;
                hub.restart(kill).await;
                if kill { hub_kills += 1 } else { hub_terms += 1 }
            }
            _ => {
                pg.restart().await;
                pg_kills += 1;
            }
        }
        turn += 1;
    }
    writing.store(false, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    // Settle: the outbox drains, then one sentinel per account goes through it last.
    let db = pg.client().await.unwrap();
    let settle = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let left: i64 = db.query_one("SELECT count(*) FROM tidings_outbox", &[]).await.unwrap().get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < settle, "the outbox did not drain: {left} rows left\n{}\n{}", relays[0].logs(), relays[1].logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sentinels = HashMap::new();
    for account in ACCOUNTS {
        let n = next_n.fetch_add(1, Ordering::SeqCst);
        db.execute("INSERT INTO tidings_outbox (account, data) VALUES ($1, $2)", &[&account, &activity(n)]).await.unwrap();
        db.execute("INSERT INTO chaos_committed (n) VALUES ($1)", &[&(n as i64)]).await.unwrap();
        accounts_of.lock().unwrap().insert(n, account);
        sentinels.insert(account, n);
    }
    for ((token, account), log) in SUBSCRIBERS.iter().zip(&logs) {
        let n = sentinels[account];
        while !log.lock().unwrap().iter().any(|o| matches!(o, Obs::Activity { n: m, .. } if *m == n)) {
            if let Some(f) = fatal.lock().unwrap().as_ref() {
                panic!("{f}");
            }
            assert!(Instant::now() < settle, "{token} never received its sentinel {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    hub_duplicates += hub.metric("tidings_publish_duplicates_total").await;
    for s in &subscribers {
        s.abort();
    }

    // Ground truth and the hub's own record.
    let committed: HashSet<u64> =
        db.query("SELECT n FROM chaos_committed", &[]).await.unwrap().iter().map(|r| r.get::<_, i64>(0) as u64).collect();
    let accounts_of = accounts_of.lock().unwrap().clone();
    let attempted = accounts_of.len();
    let mut stored: HashMap<u64, u64> = HashMap::new();
    let mut stored_twice = Vec::new();
    for (token, account) in [("tok-alice", "acme"), ("tok-bob", "globex")] {
        let mut s = Sse::resume(&hub, token, &format!("{epoch}-0")).await;
        let connected = s.next_within(T).await.unwrap();
        assert_eq!((connected.kind(), connected.data["resumed"].as_bool()), ("connected", Some(true)), "the whole history replays");
        loop {
            let e = s.next_non_ping(T).await.expect("history ends with the sentinel");
            assert_eq!(e.kind(), "activity", "{:?}", e.data);
            let seq = seq_of(e.id.as_deref().unwrap(), &epoch);
            if stored.insert(e.n(), seq).is_some() {
                stored_twice.push(e.n());
            }
            if e.n() == sentinels[account] {
                break;
            }
        }
    }
    let never_committed: Vec<u64> = stored.keys().filter(|n| !committed.contains(n)).copied().collect();
    let not_stored: Vec<u64> = committed.iter().filter(|n| !stored.contains_key(n)).copied().collect();

    println!(
        "outbox chaos {chaos:?}: {} rows attempted, {} committed in {} transactions, {} transactions rolled back, {} commits in doubt, {} out-of-id-order pairs committed, {} write errors",
        attempted,
        committed.len(),
        counts.committed_tx.load(Ordering::Relaxed),
        counts.rolled_back_tx.load(Ordering::Relaxed),
        counts.in_doubt_tx.load(Ordering::Relaxed),
        counts.out_of_order_pairs.load(Ordering::Relaxed),
        counts.write_errors.load(Ordering::Relaxed),
    );
    println!(
        "faults: {relay_kills} relay SIGKILLs, {hub_terms} hub SIGTERM and {hub_kills} hub SIGKILL restarts, {pg_kills} PostgreSQL SIGKILLs; the hub answered {hub_duplicates} resent rows as duplicates"
    );
    println!("hub history: {} markers stored, {} stored twice, {} never committed, {} committed but not stored", stored.len(), stored_twice.len(), never_committed.len(), not_stored.len());
    println!("{:<12} {:>6} {:>9} {:>8} {:>8} {:>6} {:>12}", "subscriber", "owed", "received", "resynced", "MISSED", "dups", "rolled-back");
    let mut failures = Vec::new();
    for ((token, account), log) in SUBSCRIBERS.iter().zip(&logs) {
        let obs = log.lock().unwrap().clone();
        let mut received: HashMap<u64, u32> = HashMap::new();
        let mut wrong_ids = Vec::new();
        for o in &obs {
            if let Obs::Activity { n, seq } = o {
                *received.entry(*n).or_default() += 1;
                if stored.get(n).is_some_and(|s| s != seq) {
                    wrong_ids.push(*n);
                }
            }
        }
        let resyncs = resync_positions(&obs);
        let owed: Vec<u64> = committed.iter().filter(|n| accounts_of.get(n) == Some(account)).copied().collect();
        let (mut got, mut resynced, mut missed) = (0, 0, Vec::new());
        for n in &owed {
            if received.contains_key(n) {
                got += 1;
            } else if stored.get(n).is_some_and(|seq| resyncs.iter().any(|p| seq <= p)) {
                resynced += 1;
            } else {
                missed.push(*n);
            }
        }
        let dups: Vec<u64> = received.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
        let rolled_back: Vec<u64> = received.keys().filter(|n| !committed.contains(n)).copied().collect();
        println!("{:<12} {:>6} {:>9} {:>8} {:>8} {:>6} {:>12}", token, owed.len(), got, resynced, missed.len(), dups.len(), rolled_back.len());
        if !missed.is_empty() || !dups.is_empty() || !rolled_back.is_empty() || !wrong_ids.is_empty() {
            failures.push(format!(
                "{token}: missed {missed:?}, delivered twice {dups:?}, delivered but never committed {rolled_back:?}, delivered under another id than stored {wrong_ids:?}"
            ));
        }
    }
    assert!(stored_twice.is_empty() && never_committed.is_empty() && not_stored.is_empty(),
        "hub history: stored twice {stored_twice:?}, never committed {never_committed:?}, committed but not stored {not_stored:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(committed.len() > 20 && counts.rolled_back_tx.load(Ordering::Relaxed) > 0, "the writers did not write");
    assert!(counts.out_of_order_pairs.load(Ordering::Relaxed) > 0, "no pair committed out of id order");
    assert!(relay_kills > 0 && hub_terms > 0 && pg_kills > 0, "the chaos did not happen");
    if chaos >= Duration::from_secs(15) {
        assert!(hub_kills > 0, "no hub SIGKILL");
    }
}

fn seq_of(id: &str, epoch: &str) -> u64 {
    let (e, seq) = id.split_once('-').unwrap();
    assert_eq!(e, epoch, "the durable hub kept its epoch through every restart");
    seq.parse().unwrap()
}

/// The position each `resync` covers: its stream's `connected` position, or the position it
/// carries when later.
fn resync_positions(obs: &[Obs]) -> Vec<u64> {
    let mut at = 0;
    let mut out = Vec::new();
    for o in obs {
        match o {
            Obs::Connected { seq } => at = *seq,
            Obs::Resync { seq } => out.push(seq.map_or(at, |s| s.max(at))),
            Obs::Activity { .. } => {}
        }
    }
    out
}

async fn subscribe(url: String, token: String, epoch: String, log: Arc<Mutex<Vec<Obs>>>, fatal: Arc<Mutex<Option<String>>>) {
    let mut sub = Client::builder(url)
        .token(token.clone())
        .backoff(Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1) })
        .heartbeat(Duration::from_millis(500))
        .subscribe()
        .unwrap();
    while let Some(item) = sub.next().await {
        let obs = match item {
            Ok(SdkEvent::Connected { id, .. }) => Obs::Connected { seq: seq_of(&id.expect("connected carries a position"), &epoch) },
            Ok(SdkEvent::Activity { id, data, .. }) => {
                Obs::Activity { seq: seq_of(&id.expect("activity id"), &epoch), n: data["metadata"]["n"].as_u64().unwrap() }
            }
            Ok(SdkEvent::Resync { id, .. }) => Obs::Resync { seq: id.map(|i| seq_of(&i, &epoch)) },
            Ok(_) => continue,
            Err(e) => {
                *fatal.lock().unwrap() = Some(format!("{token}: subscription ended: {e}"));
                return;
            }
        };
        log.lock().unwrap().push(obs);
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    loop {
        if let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            tokio::spawn(connection);
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Inserts one outbox row and its marker in `tx`.
async fn write_row(
    tx: &tokio_postgres::Transaction<'_>,
    next_n: &AtomicU64,
    accounts_of: &Mutex<HashMap<u64, &'static str>>,
) -> Result<i64, tokio_postgres::Error> {
    let n = next_n.fetch_add(1, Ordering::SeqCst);
    let account = ACCOUNTS[rand::random_range(0..ACCOUNTS.len())];
    accounts_of.lock().unwrap().insert(n, account);
    let id = tx.query_one("INSERT INTO tidings_outbox (account, data) VALUES ($1, $2) RETURNING id", &[&account, &activity(n)]).await?.get(0);
    tx.execute("INSERT INTO chaos_committed (n) VALUES ($1)", &[&(n as i64)]).await?;
    Ok(id)
}

/// Commits or rolls back transactions of 1 to 3 rows at random, some held open for a while.
async fn writer(url: String, next_n: Arc<AtomicU64>, accounts_of: Arc<Mutex<HashMap<u64, &'static str>>>, writing: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut client = connect(&url).await;
    while writing.load(Ordering::SeqCst) {
        let result: Result<(), tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            for _ in 0..rand::random_range(1..=3) {
                write_row(&tx, &next_n, &accounts_of).await?;
            }
            if rand::random_bool(0.3) {
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..300))).await;
            }
            if rand::random_bool(0.25) {
                tx.rollback().await?;
                counts.rolled_back_tx.fetch_add(1, Ordering::Relaxed);
            } else {
                match tx.commit().await {
                    Ok(()) => counts.committed_tx.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        counts.in_doubt_tx.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                };
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            counts.write_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client.is_closed() {
                client = connect(&url).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(5..40))).await;
    }
}

/// Commits pairs out of id order: `a` takes the lower id, `b` the higher, `b` commits, and
/// `a` commits (or rolls back) a moment later, usually after the relay has relayed `b`.
async fn out_of_order_writer(url: String, next_n: Arc<AtomicU64>, accounts_of: Arc<Mutex<HashMap<u64, &'static str>>>, writing: Arc<AtomicBool>, counts: Arc<Counts>) {
    let (mut a, mut b) = (connect(&url).await, connect(&url).await);
    while writing.load(Ordering::SeqCst) {
        let result: Result<(), tokio_postgres::Error> = async {
            let ta = a.transaction().await?;
            let low = write_row(&ta, &next_n, &accounts_of).await?;
            let tb = b.transaction().await?;
            let high = write_row(&tb, &next_n, &accounts_of).await?;
            assert!(low < high, "ids are taken in insert order");
            tb.commit().await?;
            counts.committed_tx.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..400))).await;
            if rand::random_bool(0.2) {
                ta.rollback().await?;
                counts.rolled_back_tx.fetch_add(1, Ordering::Relaxed);
            } else {
                if let Err(e) = ta.commit().await {
                    counts.in_doubt_tx.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                counts.committed_tx.fetch_add(1, Ordering::Relaxed);
                counts.out_of_order_pairs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            counts.write_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            if a.is_closed() || b.is_closed() {
                a = connect(&url).await;
                b = connect(&url).await;
            }
        }
    }
}
