//! Relay throughput and commit → delivery latency, beside direct `POST /events`, in one run.
//! Started by `bench/outbox.sh`, which brings up PostgreSQL, the hub and the relay.
//!
//! For each path, in turn and `--repeat` times:
//! - **throughput**: `--concurrency` writers send `--count` activities as fast as they can
//!   (outbox: one `INSERT` per transaction; direct: one `POST /events` per activity), timed
//!   from the first send to the last delivery to one subscriber;
//! - **relay drain** (outbox only): `--count` rows committed in one transaction, timed from
//!   the commit to the last delivery: what the relay itself moves, without the writers'
//!   commit cost;
//! - **latency**: `--latency-count` activities paced at `--rate` per second; each is timed
//!   from the moment it is committed (outbox: `COMMIT` returned; direct: just before the
//!   `POST`, where a backend would publish after its own commit) to its delivery.
//!
//! Delivery is one SSE subscription (the Rust SDK) of the account; the clock is the machine's
//! wall clock on both ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tidings_client::{Client, Event, PublishItem, Publisher, RetryPolicy};

#[derive(Debug, Clone)]
struct Args {
    database_url: String,
    hub: String,
    key: String,
    token: String,
    account: String,
    count: u64,
    concurrency: u64,
    latency_count: u64,
    rate: u64,
    repeat: u32,
}

fn args() -> Args {
    let mut a = Args {
        database_url: String::new(),
        hub: String::new(),
        key: String::new(),
        token: String::new(),
        account: String::new(),
        count: 5_000,
        concurrency: 8,
        latency_count: 1_000,
        rate: 200,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || value.parse::<u64>().unwrap_or_else(|_| panic!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--database-url" => a.database_url = value.clone(),
            "--hub" => a.hub = value.clone(),
            "--key" => a.key = value.clone(),
            "--token" => a.token = value.clone(),
            "--account" => a.account = value.clone(),
            "--count" => a.count = num(),
            "--concurrency" => a.concurrency = num(),
            "--latency-count" => a.latency_count = num(),
            "--rate" => a.rate = num(),
            "--repeat" => a.repeat = num() as u32,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.database_url.is_empty() && !a.hub.is_empty() && !a.key.is_empty() && !a.token.is_empty() && !a.account.is_empty(), "--database-url, --hub, --key, --token and --account are required");
    a
}

/// Delivery times by marker, filled by the subscription.
type Delivered = Arc<Mutex<HashMap<u64, SystemTime>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Path {
    Outbox,
    Direct,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let delivered: Delivered = Arc::default();
    let duplicates = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(subscribe(a.clone(), delivered.clone(), duplicates.clone(), ready_tx));
    ready_rx.await.unwrap();
    let (db, connection) = tokio_postgres::connect(&a.database_url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    drop(db);
    let next = Arc::new(AtomicU64::new(1));
    let mut results: HashMap<(&str, Path), Vec<f64>> = HashMap::new();
    for round in 1..=a.repeat {
        for path in [Path::Direct, Path::Outbox] {
            let rate = throughput(&a, path, &next, &delivered).await;
            println!("round {round} {path:?}: throughput {rate:.0} activities/s");
            results.entry(("throughput", path)).or_default().push(rate);
        }
        let rate = drain(&a, &next, &delivered).await;
        println!("round {round} relay drain: {rate:.0} rows/s");
        results.entry(("drain", Path::Outbox)).or_default().push(rate);
        for path in [Path::Direct, Path::Outbox] {
            let (p50, p99) = latency(&a, path, &next, &delivered).await;
            println!("round {round} {path:?}: latency p50 {:.1} ms, p99 {:.1} ms at {}/s", p50 * 1e3, p99 * 1e3, a.rate);
            results.entry(("p50", path)).or_default().push(p50 * 1e3);
            results.entry(("p99", path)).or_default().push(p99 * 1e3);
        }
    }
    println!("\nmedians of {} rounds ({} activities at concurrency {}; latency: {} activities at {}/s):", a.repeat, a.count, a.concurrency, a.latency_count, a.rate);
    println!("| path | throughput, {} writers (activities/s) | relay drain (rows/s) | commit → delivery p50 (ms) | p99 (ms) |", a.concurrency);
    println!("|---|---|---|---|---|");
    for path in [Path::Direct, Path::Outbox] {
        let m = |k| median(results[&(k, path)].clone());
        let (name, drain) = match path {
            Path::Direct => ("direct `POST /events`, one activity per request".to_owned(), "—".to_owned()),
            Path::Outbox => ("outbox, one row per transaction, + `tidings relay postgres`".to_owned(), format!("{:.0}", m("drain"))),
        };
        println!("| {name} | {:.0} | {drain} | {:.1} | {:.1} |", m("throughput"), m("p50"), m("p99"));
    }
    let o = |k| median(results[&(k, Path::Outbox)].clone());
    let d = |k| median(results[&(k, Path::Direct)].clone());
    println!("outbox/direct: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x", o("throughput") / d("throughput"), o("p50") / d("p50"), o("p99") / d("p99"));
    println!("duplicate deliveries: {}", duplicates.load(Ordering::Relaxed));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn subscribe(a: Args, delivered: Delivered, duplicates: Arc<AtomicU64>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut sub = Client::builder(a.hub.clone()).token(a.token.clone()).subscribe().expect("subscribe");
    let mut ready = Some(ready);
    while let Some(item) = sub.next().await {
        match item {
            Ok(Event::Connected { .. }) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Activity { data, .. }) => {
                let now = SystemTime::now();
                let n = data["metadata"]["n"].as_u64().expect("a bench activity");
                if delivered.lock().unwrap().insert(n, now).is_some() {
                    duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Resync { reason, .. }) => eprintln!("resync {reason}: results of this round are incomplete"),
            Ok(_) => {}
            Err(e) => panic!("subscription ended: {e}"),
        }
    }
}

fn activity(n: u64) -> serde_json::Value {
    json!({"activity_type": "created", "resource": {"type": "bench_item", "id": n}, "metadata": {"n": n}})
}

/// Sends one activity by `path`; returns when it is committed (outbox) or just before it is
/// posted (direct), the moment latency is measured from.
struct Sender {
    path: Path,
    db: tokio_postgres::Client,
    publisher: Publisher,
    account: String,
}

impl Sender {
    async fn new(a: &Args, path: Path) -> Self {
        let (db, connection) = tokio_postgres::connect(&a.database_url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        let publisher = Publisher::new(&a.hub, a.key.clone()).with_retry(RetryPolicy::never());
        Self { path, db, publisher, account: a.account.clone() }
    }

    async fn send(&self, n: u64) -> SystemTime {
        match self.path {
            Path::Outbox => {
                self.db.execute("INSERT INTO tidings_outbox (account, data) VALUES ($1, $2)", &[&self.account, &activity(n)]).await.expect("insert");
                SystemTime::now()
            }
            Path::Direct => {
                let at = SystemTime::now();
                self.publisher.submit(&[PublishItem::new(self.account.clone(), activity(n))]).await.expect("publish");
                at
            }
        }
    }
}

async fn wait_delivered(delivered: &Delivered, range: std::ops::Range<u64>) -> SystemTime {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        {
            let d = delivered.lock().unwrap();
            if range.clone().all(|n| d.contains_key(&n)) {
                return range.map(|n| d[&n]).max().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "not every activity was delivered within 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn throughput(a: &Args, path: Path, next: &AtomicU64, delivered: &Delivered) -> f64 {
    let first = next.fetch_add(a.count, Ordering::SeqCst);
    let counter = Arc::new(AtomicU64::new(first));
    let end = first + a.count;
    let mut senders = Vec::new();
    for _ in 0..a.concurrency {
        senders.push(Sender::new(a, path).await);
    }
    let started = SystemTime::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| {
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    if n >= end {
                        return;
                    }
                    s.send(n).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let last = wait_delivered(delivered, first..end).await;
    a.count as f64 / last.duration_since(started).unwrap().as_secs_f64()
}

async fn drain(a: &Args, next: &AtomicU64, delivered: &Delivered) -> f64 {
    let first = next.fetch_add(a.count, Ordering::SeqCst);
    let (mut db, connection) = tokio_postgres::connect(&a.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let tx = db.transaction().await.expect("begin");
    tx.execute(
        "INSERT INTO tidings_outbox (account, data)
         SELECT $1, jsonb_build_object('activity_type', 'created', 'resource', jsonb_build_object('type', 'bench_item', 'id', n), 'metadata', jsonb_build_object('n', n))
         FROM generate_series($2::bigint, $3::bigint) AS n",
        &[&a.account, &(first as i64), &((first + a.count - 1) as i64)],
    )
    .await
    .expect("insert");
    tx.commit().await.expect("commit");
    let committed = SystemTime::now();
    let last = wait_delivered(delivered, first..first + a.count).await;
    a.count as f64 / last.duration_since(committed).unwrap().as_secs_f64()
}

async fn latency(a: &Args, path: Path, next: &AtomicU64, delivered: &Delivered) -> (f64, f64) {
    let first = next.fetch_add(a.latency_count, Ordering::SeqCst);
    let sender = Arc::new(Sender::new(a, path).await);
    let committed: Arc<Mutex<HashMap<u64, SystemTime>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate as f64));
    let mut tasks = Vec::new();
    for n in first..first + a.latency_count {
        tick.tick().await;
        let (sender, committed) = (sender.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            let at = sender.send(n).await;
            committed.lock().unwrap().insert(n, at);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_delivered(delivered, first..first + a.latency_count).await;
    let d = delivered.lock().unwrap();
    let mut lat: Vec<f64> = committed.lock().unwrap().iter().map(|(n, at)| d[n].duration_since(*at).unwrap_or_default().as_secs_f64()).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (pct(0.50), pct(0.99))
}
