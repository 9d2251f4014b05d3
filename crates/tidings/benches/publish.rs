//! Publish throughput and latency of each engine, measured from outside like any publisher:
//! starts the real `tidings` binary once per engine and drives `POST /events` with one event
//! per request, from 1 and from 8 concurrent publishers.
//!
//! Run with `cargo bench -p tidings --bench publish` (add `-- --secs 5 --rounds 5` to change
//! the defaults). Rounds alternate between engines so that machine noise hits them alike; the
//! report gives the median of the rounds and each durable engine's ratio to memory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tidings_testkit::hub::wait_listening;
use tokio::process::{Child, Command};

const PUBLISHER_KEY: &str = "bench-publisher-key";
/// Accounts the publishers spread their events over.
const ACCOUNTS: usize = 50;
const CONCURRENCY: [usize; 2] = [1, 8];
/// Requests sent before measuring, per publisher: connections open, caches warm.
const WARMUP_REQUESTS: usize = 50;

struct Engine {
    name: &'static str,
    toml: &'static str,
}

const ENGINES: [Engine; 3] = [
    Engine { name: "memory", toml: "" },
    Engine { name: "durable fsync=always", toml: "[engine]\nkind = \"durable\"\ndata_dir = \"data\"\nfsync = \"always\"\n" },
    Engine { name: "durable fsync=never", toml: "[engine]\nkind = \"durable\"\ndata_dir = \"data\"\nfsync = \"never\"\n" },
];

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u64| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let secs = Duration::from_secs(flag("--secs", 3));
    let rounds = flag("--rounds", 3) as usize;
    let mut samples = vec![vec![Vec::new(); CONCURRENCY.len()]; ENGINES.len()];
    for round in 0..rounds {
        for (e, engine) in ENGINES.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let (mut child, addr) = start(&dir, engine).await;
            for (c, &publishers) in CONCURRENCY.iter().enumerate() {
                let s = measure(&addr, publishers, secs).await;
                eprintln!("round {round} {:<22} {publishers} publisher(s): {:>8.0}/s p50 {:.2} ms p99 {:.2} ms", engine.name, s.per_sec, s.p50_ms, s.p99_ms);
                samples[e][c].push(s);
            }
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
    println!("\nmedians of {rounds} rounds of {secs:?}, one event per request\n");
    println!("| engine | publishers | events/s | p50 ms | p99 ms | throughput vs memory | p50 vs memory |");
    println!("|---|---|---|---|---|---|---|");
    for (c, publishers) in CONCURRENCY.iter().enumerate() {
        let base = median(&samples[0][c]);
        for (e, engine) in ENGINES.iter().enumerate() {
            let m = median(&samples[e][c]);
            println!(
                "| {} | {publishers} | {:.0} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
                engine.name,
                m.per_sec,
                m.p50_ms,
                m.p99_ms,
                m.per_sec / base.per_sec,
                m.p50_ms / base.p50_ms
            );
        }
    }
}

/// Starts the hub binary for `engine` in `dir`; returns it and its address.
async fn start(dir: &tempfile::TempDir, engine: &Engine) -> (Child, String) {
    let config = format!("heartbeat = \"15s\"\n[[auth.publishers]]\nkey = \"{PUBLISHER_KEY}\"\n[history]\nmax_events = 1000\n{}", engine.toml);
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("TIDINGS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tidings");
    let started = wait_listening(&mut child, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
    (child, started.addr)
}

/// `publishers` tasks, each sending one event per request back to back for `duration`.
async fn measure(addr: &str, publishers: usize, duration: Duration) -> Sample {
    let url = format!("http://{addr}/events");
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut latencies = Vec::new();
                let mut n = 0u64;
                let send = |n: u64| {
                    let body = serde_json::json!({
                        "account": format!("acc-{}", (p + n as usize) % ACCOUNTS),
                        "data": {"activity_type": "edited", "resource": {"type": "edge_application", "name": "bench"}, "metadata": {"id": n}},
                    });
                    client.post(&url).bearer_auth(PUBLISHER_KEY).json(&body).send()
                };
                for _ in 0..WARMUP_REQUESTS {
                    n += 1;
                    assert_eq!(send(n).await.unwrap().status(), 202);
                }
                let started = Instant::now();
                while started.elapsed() < duration {
                    n += 1;
                    let t = Instant::now();
                    assert_eq!(send(n).await.unwrap().status(), 202);
                    latencies.push(t.elapsed());
                }
                (latencies, started.elapsed())
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut longest = Duration::ZERO;
    for t in tasks {
        let (l, elapsed) = t.await.unwrap();
        all.extend(l);
        longest = longest.max(elapsed);
    }
    all.sort_unstable();
    let pct = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    Sample { per_sec: all.len() as f64 / longest.as_secs_f64(), p50_ms: pct(0.50), p99_ms: pct(0.99) }
}

fn median(samples: &[Sample]) -> Sample {
    let pick = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Sample { per_sec: pick(|s| s.per_sec), p50_ms: pick(|s| s.p50_ms), p99_ms: pick(|s| s.p99_ms) }
}
