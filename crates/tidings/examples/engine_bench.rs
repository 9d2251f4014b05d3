//! Measures the Redis engine against the in-memory engine with one harness, in one run:
//! publish → delivery latency (p50/p99) and fan-out throughput, on real `tidings` processes
//! and a real `redis-server` (started here on free ports, without persistence) with one
//! replica. The same server also listens with TLS (certificates made here with `openssl`,
//! client certificates required), so plaintext, TLS, and TLS with `min_replicas = 1` (each
//! publish waits for the replica's `WAIT` confirmation) are measured side by side; each
//! configuration has its own key prefix, so nodes of one do not read the others' events.
//!
//! ```sh
//! cargo build --release -p tidings --bin tidings --example engine_bench
//! target/release/examples/engine_bench            # TIDINGS_BIN=… to use another binary
//! ```
//!
//! Latency: one publisher posts events one at a time; one subscriber records when each
//! arrives; the latency of an event is arrival time minus the moment its POST started.
//! Throughput: `STREAMS` subscribers of one account, events published in batches; the rate is
//! deliveries (events × streams) per second until the last stream has the last event.
//! Publisher and subscribers run in this process, so both engines pay the same client cost.
//! Latency is measured `BENCH_RUNS` times (default 3) in turn; the medians of the runs' p50 and
//! p99 are printed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings_testkit::hub::wait_listening;
use tokio::process::{Child, Command};

const PUBLISHER_KEY: &str = "bench-publisher-key";
/// Events timed one by one for latency.
const LATENCY_EVENTS: u64 = 2_000;
/// Streams of one account fed during the throughput run.
const STREAMS: usize = 100;
/// Events published during the throughput run, and per request.
const THROUGHPUT_EVENTS: u64 = 20_000;
const THROUGHPUT_BATCH: u64 = 100;
/// Times a session's second stream, on another node, supersedes its first.
const SUPERSEDE_TRIALS: usize = 50;

#[tokio::main]
async fn main() {
    let bin = std::env::var_os("TIDINGS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("tidings")
    });
    assert!(bin.exists(), "no tidings binary at {}; build it first (see the module doc)", bin.display());
    let dir = tempfile::tempdir().unwrap();
    tidings_testkit::tls::make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (redis_port, tls_port, replica_port) = (free_port(), free_port(), free_port());
    let redis_server = |args: Vec<String>| {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is needed for this benchmark (Debian: apt-get install redis-server)")
    };
    let _redis = redis_server(
        [
            "--port", &redis_port.to_string(), "--tls-port", &tls_port.to_string(), "--tls-cert-file", &file("server.crt"), "--tls-key-file",
            &file("server.key"), "--tls-ca-cert-file", &file("ca.crt"), "--tls-auth-clients", "yes",
        ]
        .map(String::from)
        .to_vec(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _replica = redis_server(["--port", &replica_port.to_string(), "--replicaof", "127.0.0.1", &redis_port.to_string()].map(String::from).to_vec());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let memory = Node::start(&bin, &dir, "memory", "").await;
    let plain = format!("[engine]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{redis_port}\"\nkey_prefix = \"p:\"\n");
    let tls = format!(
        "[engine]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{tls_port}\"\ntls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    let tls_only = format!("{tls}key_prefix = \"t:\"\n");
    let replicated = format!("{tls}key_prefix = \"w:\"\nmin_replicas = 1\n");
    let r1 = Node::start(&bin, &dir, "redis1", &plain).await;
    let r2 = Node::start(&bin, &dir, "redis2", &plain).await;
    let t1 = Node::start(&bin, &dir, "tls1", &tls_only).await;
    let t2 = Node::start(&bin, &dir, "tls2", &tls_only).await;
    let w1 = Node::start(&bin, &dir, "wait1", &replicated).await;
    let w2 = Node::start(&bin, &dir, "wait2", &replicated).await;
    for n in [&r1, &r2, &t1, &t2, &w1, &w2] {
        n.wait_ready().await;
    }

    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("latency, publish → delivery, {LATENCY_EVENTS} events published one at a time, medians of {runs} runs:");
    let cases = [
        ("memory, one node", &memory, &memory),
        ("redis, same node", &r1, &r1),
        ("redis, across nodes", &r1, &r2),
        ("redis TLS, across nodes", &t1, &t2),
        ("redis TLS + min_replicas = 1, across nodes", &w1, &w2),
    ];
    let mut results = vec![(Vec::new(), Vec::new()); cases.len()];
    for _ in 0..runs {
        for (i, (_, publish_on, subscribe_on)) in cases.iter().enumerate() {
            let mut ms = latency(publish_on, subscribe_on).await;
            ms.sort_by(f64::total_cmp);
            results[i].0.push(pct(&ms, 0.50));
            results[i].1.push(pct(&ms, 0.99));
        }
    }
    for ((name, _, _), (p50s, p99s)) in cases.iter().zip(&mut results) {
        println!("  {name:<42} p50 {:>7.3} ms   p99 {:>7.3} ms   (p50 per run {:.3?})", median(p50s), median(p99s), p50s);
    }
    println!("one stream per session across nodes, {SUPERSEDE_TRIALS} times: second open on node 2 (request sent) → closed superseded on node 1:");
    for (name, a, b) in [("redis", &r1, &r2), ("redis TLS", &t1, &t2)] {
        let mut ms = supersede(a, b).await;
        ms.sort_by(f64::total_cmp);
        println!("  {name:<42} p50 {:>7.3} ms   max {:>7.3} ms", pct(&ms, 0.50), ms[ms.len() - 1]);
    }
    println!("fan-out throughput, {STREAMS} streams of one account, {THROUGHPUT_EVENTS} events in batches of {THROUGHPUT_BATCH}:");
    let mut rates = Vec::new();
    for (name, publish_on, subscribe_on) in [("memory, one node", &memory, &memory), ("redis, across nodes", &r1, &r2)] {
        let rate = throughput(publish_on, subscribe_on).await;
        println!("  {name:<22} {:>10.0} deliveries/s", rate);
        rates.push(rate);
    }
    println!("  redis / memory         {:>10.2}", rates[1] / rates[0]);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    _child: Child,
    addr: String,
    client: reqwest::Client,
}

impl Node {
    async fn start(bin: &PathBuf, dir: &tempfile::TempDir, name: &str, engine: &str) -> Node {
        let mut tokens = String::new();
        for i in 0..=STREAMS {
            tokens.push_str(&format!("[[auth.tokens]]\ntoken = \"tok-{i}\"\naccount = \"bench\"\nuser = \"u{i}\"\nsession = \"s{i}\"\n"));
        }
        let config = format!(
            "heartbeat = \"15s\"\n{engine}[limits]\nstream_queue_frames = 100000\n[history]\nmax_events = 1000\n{tokens}[[auth.publishers]]\nkey = \"{PUBLISHER_KEY}\"\n"
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env("TIDINGS_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let started = wait_listening(&mut child, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
        Node { _child: child, addr: started.addr, client: reqwest::Client::new() }
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.client.get(format!("http://{}/readyz", self.addr)).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} never became ready", self.addr);
    }

    async fn publish(&self, first: u64, count: u64) {
        let body: Vec<_> = (first..first + count)
            .map(|n| serde_json::json!({"account": "bench", "data": {"activity_type": "edited", "resource": {"type": "edge_application"}, "metadata": {"id": n, "n": n}, "description": "bench"}}))
            .collect();
        let r = self.client.post(format!("http://{}/events", self.addr)).bearer_auth(PUBLISHER_KEY).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }

    /// Opens a stream and waits for its `connected` frame.
    async fn subscribe(&self, token: &str) -> Frames {
        let resp = self
            .client
            .get(format!("http://{}/events/stream", self.addr))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut f = Frames { body: resp.bytes_stream().boxed(), buf: String::new() };
        assert!(f.next().await.contains("\"connected\""));
        f
    }
}

/// The `data:` lines of a stream, one at a time.
struct Frames {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Frames {
    async fn next(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=end).collect();
                if let Some(data) = line.strip_prefix("data: ") {
                    return data.trim_end().to_owned();
                }
                continue;
            }
            let chunk = self.body.next().await.expect("stream ended").unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The `n` marker of the next activity.
    async fn next_activity(&mut self) -> u64 {
        loop {
            let data = self.next().await;
            if data.starts_with("{\"type\":\"activity\"") {
                let v: serde_json::Value = serde_json::from_str(&data).unwrap();
                return v["data"]["metadata"]["n"].as_u64().unwrap();
            }
        }
    }
}

async fn latency(publish_on: &Node, subscribe_on: &Node) -> Vec<f64> {
    let mut sub = subscribe_on.subscribe("tok-0").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        for _ in 0..LATENCY_EVENTS {
            let n = sub.next_activity().await;
            tx.send((n, Instant::now())).unwrap();
        }
    });
    let base = 1_000_000 * rand_u16();
    let mut sent = Vec::with_capacity(LATENCY_EVENTS as usize);
    for i in 0..LATENCY_EVENTS {
        sent.push(Instant::now());
        publish_on.publish(base + i, 1).await;
    }
    reader.await.unwrap();
    let mut out = Vec::new();
    while let Ok((n, at)) = rx.try_recv() {
        out.push(at.duration_since(sent[(n - base) as usize]).as_secs_f64() * 1000.0);
    }
    assert_eq!(out.len() as u64, LATENCY_EVENTS);
    out
}

/// For each trial: a stream of one session on `first`, then a second open of the same session
/// on `second`; the time from sending the second request to the first stream's `closed`.
async fn supersede(first: &Node, second: &Node) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..SUPERSEDE_TRIALS {
        let mut old = first.subscribe("tok-1").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let newer = tokio::spawn({
            let (client, addr) = (second.client.clone(), second.addr.clone());
            async move { client.get(format!("http://{addr}/events/stream")).bearer_auth("tok-1").header("accept", "text/event-stream").send().await.unwrap() }
        });
        loop {
            let data = old.next().await;
            if data.starts_with("{\"type\":\"closed\"") {
                assert!(data.contains("superseded"), "{data}");
                break;
            }
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(newer.await.unwrap());
    }
    out
}

async fn throughput(publish_on: &Node, subscribe_on: &Node) -> f64 {
    let mut subs = Vec::new();
    for i in 1..=STREAMS {
        subs.push(subscribe_on.subscribe(&format!("tok-{i}")).await);
    }
    let base = 1_000_000 * rand_u16();
    let started = Instant::now();
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut seen = 0;
                while seen < THROUGHPUT_EVENTS {
                    let data = s.next().await;
                    if data.starts_with("{\"type\":\"activity\"") {
                        seen += 1;
                    }
                }
            })
        })
        .collect();
    for first in (0..THROUGHPUT_EVENTS).step_by(THROUGHPUT_BATCH as usize) {
        publish_on.publish(base + first, THROUGHPUT_BATCH).await;
    }
    for r in readers {
        r.await.unwrap();
    }
    (THROUGHPUT_EVENTS as f64 * STREAMS as f64) / started.elapsed().as_secs_f64()
}

/// Separates the markers of successive runs.
fn rand_u16() -> u64 {
    u64::from(rand::random::<u16>()) + 1
}
