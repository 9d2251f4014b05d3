//! Failover chaos: Redis behind Sentinel loses its primary again and again while two hub
//! nodes publish and clients resume back and forth between them. With `min_replicas = 1`, no
//! event that got a `202` may be missed silently.
//!
//! Real servers only (see [`support::sentinel`]): a primary, a replica and three sentinels on
//! loopback. Each round SIGKILLs the primary; the sentinels promote the replica; the old
//! primary comes back empty as a replica of the new one. Meanwhile two publishers post to
//! both nodes (a `503` is fine: no replica has confirmed it, or there is no primary), and each
//! client holds a stream on one node for a moment, drops it and resumes on the other with its
//! `Last-Event-ID`, over and over.
//!
//! **Accounting** (as in `chaos.rs`): a client owes every acknowledged event of its account
//! after its first `connected` position; an owed event is covered when the client received it
//! or got a `resync` on a stream whose `connected` position is at or after it. Anything else is
//! silently missed, and must be 0; so must duplicates. With `min_replicas = 1` a failover also
//! keeps the epoch (history goes on behind a fence), so no client is asked to resync either.
//!
//! Rounds: `TIDINGS_FAILOVER_ROUNDS` (default 2, about half a minute; use 20 for a soak).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::sentinel::SentinelSet;
use support::*;
use tokio::time::Instant;

const ACCOUNTS: [&str; 2] = ["acc-0", "acc-1"];
const CLIENTS: usize = 8;
/// How long all clients get to be covered for the last event after the chaos.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn rounds() -> usize {
    std::env::var("TIDINGS_FAILOVER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

#[derive(Debug, Clone)]
enum Obs {
    Connected { seq: u64 },
    Activity { seq: u64, n: u64 },
    Resync,
}

#[derive(Default)]
struct Log {
    obs: Mutex<Vec<Obs>>,
    fatal: Mutex<Option<String>>,
    resumes: AtomicU64,
}

/// The epoch and seq of an id; every id of this test must share one epoch.
fn split(id: &str) -> (String, u64) {
    let (epoch, seq) = id.split_once('-').expect("an event id");
    (epoch.to_owned(), seq.parse().expect("a numeric seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_missed_across_sentinel_failovers() {
    let mut redis = SentinelSet::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = (0..CLIENTS)
        .map(|i| format!("[[tokens]]\ntoken = \"tok-f{i}\"\naccount = \"{}\"\nuser = \"u{i}\"\nsession = \"s-f{i}\"\n", ACCOUNTS[i % ACCOUNTS.len()]))
        .collect();
    std::fs::write(dir.path().join("tokens.toml"), tokens).unwrap();
    let engine = redis.engine_toml("min_replicas = 1\nreplica_timeout = \"500ms\"\ncommand_timeout = \"1s\"\nconnect_timeout = \"500ms\"\n");
    let cfg = config("retry = \"200ms\"\n", &format!("[history]\nmax_events = 100000\n{engine}")).replace("[auth]\n", "[auth]\ntokens_file = \"tokens.toml\"\n");
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("tokens.toml"), dir2.path().join("tokens.toml")).unwrap();
    let nodes = [Hub::start_in(dir, &cfg, "127.0.0.1:0").await, Hub::start_in(dir2, &cfg, "127.0.0.1:0").await];
    let urls: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    for n in &nodes {
        wait_ready(n).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Log>> = (0..CLIENTS).map(|_| Arc::new(Log::default())).collect();
    let clients: Vec<_> = logs.iter().enumerate().map(|(i, log)| tokio::spawn(client(urls.clone(), format!("tok-f{i}"), i, log.clone(), stop.clone()))).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while logs.iter().any(|l| l.obs.lock().unwrap().is_empty()) {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let accepted: Arc<Mutex<Vec<(usize, u64, String)>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let next_n = Arc::new(AtomicU64::new(1));
    let publishing = Arc::new(AtomicBool::new(true));
    let publishers: Vec<_> = (0..2)
        .map(|p| tokio::spawn(publish_loop(urls.clone(), p, accepted.clone(), refused.clone(), next_n.clone(), publishing.clone())))
        .collect();

    let mut promotions = Vec::new();
    let mut outages = Vec::new();
    for _ in 0..rounds() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = accepted.lock().unwrap().len();
        let killed = Instant::now();
        promotions.push(redis.fail_over().await);
        // Publishing is back once a publish made after the old primary came back is accepted.
        let deadline = Instant::now() + Duration::from_secs(30);
        while accepted.lock().unwrap().len() <= before + 5 {
            assert!(Instant::now() < deadline, "publishing did not recover within 30 s of the failover");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outages.push(killed.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    publishing.store(false, Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }

    // Settle: one last event per account; every client must have it covered.
    let mut last_of: HashMap<usize, u64> = HashMap::new();
    for (a, account) in ACCOUNTS.iter().enumerate() {
        let n = next_n.fetch_add(1, Ordering::SeqCst);
        let id = nodes[a % 2].publish(account, &[activity(n)]).await.remove(0);
        last_of.insert(a, split(&id).1);
        accepted.lock().unwrap().push((a, n, id));
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let waiting: Vec<usize> = (0..CLIENTS)
            .filter(|i| {
                let last = last_of[&(i % ACCOUNTS.len())];
                !covered(&logs[*i].obs.lock().unwrap()).0.iter().any(|s| *s == last) && !covered(&logs[*i].obs.lock().unwrap()).1.iter().any(|p| *p >= last)
            })
            .collect();
        if waiting.is_empty() {
            break;
        }
        for (i, l) in logs.iter().enumerate() {
            if let Some(f) = l.fatal.lock().unwrap().as_ref() {
                panic!("client {i}: {f}");
            }
        }
        assert!(Instant::now() < deadline, "clients {waiting:?} did not get the last event within {SETTLE_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.abort();
    }

    // Count.
    let accepted = accepted.lock().unwrap().clone();
    let epochs: HashSet<String> = accepted.iter().map(|(_, _, id)| split(id).0).collect();
    let seqs: Vec<u64> = accepted.iter().map(|(_, _, id)| split(id).1).collect();
    let fences = seqs.windows(2).filter(|w| w[1] > w[0] + (1 << 31)).count();
    println!(
        "failover: {} failovers (promoted after {:?}; publishing back after {:?}), {} events acknowledged, {} publishes refused with 503, {} fences, epochs {:?}",
        promotions.len(),
        promotions,
        outages,
        accepted.len(),
        refused.load(Ordering::Relaxed),
        fences,
        epochs
    );
    println!("{:<7} {:>6} {:>9} {:>8} {:>8} {:>6} {:>8}", "client", "owed", "received", "resynced", "MISSED", "dups", "resumes");
    let (mut total_missed, mut total_dups, mut total_resyncs) = (0, 0, 0);
    for (i, log) in logs.iter().enumerate() {
        let obs = log.obs.lock().unwrap().clone();
        let Some(Obs::Connected { seq: first }) = obs.first() else { panic!("client {i}: first observation is not connected") };
        let (received, resync_at) = covered(&obs);
        let mut seen = HashSet::new();
        let dups = obs.iter().filter(|o| matches!(o, Obs::Activity { n, .. } if !seen.insert(*n))).count();
        let owed: Vec<_> = accepted.iter().filter(|(a, _, id)| *a == i % ACCOUNTS.len() && split(id).1 > *first).collect();
        let (mut got, mut resynced, mut missed) = (0, 0, Vec::new());
        for (_, n, id) in &owed {
            let seq = split(id).1;
            if received.contains(&seq) {
                got += 1;
            } else if resync_at.iter().any(|p| *p >= seq) {
                resynced += 1;
            } else {
                missed.push(*n);
            }
        }
        println!("{:<7} {:>6} {:>9} {:>8} {:>8} {:>6} {:>8}", format!("c{i}"), owed.len(), got, resynced, missed.len(), dups, log.resumes.load(Ordering::Relaxed));
        if !missed.is_empty() {
            eprintln!("client {i} silently missed {:?}", &missed[..missed.len().min(20)]);
        }
        total_missed += missed.len();
        total_dups += dups;
        total_resyncs += resync_at.len();
    }
    println!("failover: silently missed {total_missed}, duplicates {total_dups}, resyncs {total_resyncs}");
    assert_eq!(total_missed, 0, "acknowledged events silently missed");
    assert_eq!(total_dups, 0, "events delivered twice");
    assert_eq!(epochs.len(), 1, "with min_replicas = 1 a failover keeps the epoch");
    assert_eq!(total_resyncs, 0, "with min_replicas = 1 nobody is asked to resync");
    assert_eq!(fences, promotions.len(), "one fence per failover");
    assert!(accepted.len() > 100 && promotions.len() == rounds(), "the chaos did not happen");
}

/// The seqs a client received, and the `connected` positions of its streams that got a resync.
fn covered(obs: &[Obs]) -> (HashSet<u64>, Vec<u64>) {
    let mut at = 0;
    let mut received = HashSet::new();
    let mut resyncs = Vec::new();
    for o in obs {
        match o {
            Obs::Connected { seq } => at = *seq,
            Obs::Activity { seq, .. } => {
                received.insert(*seq);
            }
            Obs::Resync => resyncs.push(at),
        }
    }
    (received, resyncs)
}

async fn wait_ready(hub: &Hub) {
    for _ in 0..200 {
        if reqwest::get(hub.url("/readyz")).await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hub not ready:\n{}", hub.logs());
}

/// Posts batches of 1–3 events to alternating accounts on alternating nodes until told to
/// stop, recording what was acknowledged.
async fn publish_loop(
    urls: Vec<String>,
    which: usize,
    accepted: Arc<Mutex<Vec<(usize, u64, String)>>>,
    refused: Arc<AtomicU64>,
    next_n: Arc<AtomicU64>,
    publishing: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut turn = which;
    while publishing.load(Ordering::SeqCst) {
        turn += 1;
        let account = turn % ACCOUNTS.len();
        let len = rand::random_range(1..=3u64);
        let first = next_n.fetch_add(len, Ordering::SeqCst);
        let items: Vec<_> = (first..first + len).map(|n| serde_json::json!({"account": ACCOUNTS[account], "data": activity(n)})).collect();
        let resp = http.post(format!("{}/events", urls[(turn / 2) % 2])).bearer_auth(PUBLISHER_KEY).json(&items).send().await;
        match resp {
            Ok(r) if r.status() == 202 => {
                let body: serde_json::Value = r.json().await.unwrap();
                let mut acc = accepted.lock().unwrap();
                for (i, id) in body["ids"].as_array().unwrap().iter().enumerate() {
                    acc.push((account, first + i as u64, id.as_str().unwrap().to_owned()));
                }
            }
            Ok(r) => {
                assert_eq!(r.status(), 503, "a publish is acknowledged or refused with 503");
                refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish request failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Holds a stream on one node for 0.3–1.5 s, drops it and resumes on the other node with the
/// last id it saw, until the test ends. A `503` (no primary yet) is retried.
async fn client(urls: Vec<String>, token: String, index: usize, log: Arc<Log>, stop: Arc<AtomicBool>) {
    let mut last_id: Option<String> = None;
    let mut turn = index;
    while !stop.load(Ordering::SeqCst) {
        turn += 1;
        let url = format!("{}/events/stream", urls[turn % 2]);
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(id) = &last_id {
            headers.push(("last-event-id", id.as_str()));
        }
        let mut s = Sse::connect_url(&url, &headers).await;
        if s.status != 200 {
            assert_eq!(s.status, 503, "a stream opens or is refused with 503");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if last_id.is_some() {
            log.resumes.fetch_add(1, Ordering::Relaxed);
        }
        let until = Instant::now() + Duration::from_millis(rand::random_range(300..1500));
        while let Ok(Some(e)) = tokio::time::timeout_at(until, s.next()).await {
            match e.kind() {
                "connected" => log.obs.lock().unwrap().push(Obs::Connected { seq: split(e.id.as_deref().unwrap()).1 }),
                "activity" => log.obs.lock().unwrap().push(Obs::Activity { seq: split(e.id.as_deref().unwrap()).1, n: e.n() }),
                "resync" => log.obs.lock().unwrap().push(Obs::Resync),
                "closed" if matches!(e.data["reason"].as_str(), Some("superseded" | "revoked")) => {
                    *log.fatal.lock().unwrap() = Some(format!("closed {}", e.data["reason"]));
                }
                _ => {}
            }
            if e.id.is_some() {
                last_id.clone_from(&e.id);
            }
        }
    }
}
