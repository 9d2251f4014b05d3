//! Measures the Redis engine against the in-memory engine with one harness, in one run:
//! publish → delivery latency (p50/p99) and fan-out throughput, on real `tidings` processes
//! and a real `redis-server` (started here on free ports, without persistence).
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

#[tokio::main]
async fn main() {
    let bin = std::env::var_os("TIDINGS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("tidings")
    });
    assert!(bin.exists(), "no tidings binary at {}; build it first (see the module doc)", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let _redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is needed for this benchmark (Debian: apt-get install redis-server)");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let memory = Node::start(&bin, &dir, "memory", "").await;
    let redis_engine = format!("[engine]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{redis_port}\"\n");
    let r1 = Node::start(&bin, &dir, "redis1", &redis_engine).await;
    let r2 = Node::start(&bin, &dir, "redis2", &redis_engine).await;
    r1.wait_ready().await;
    r2.wait_ready().await;

    println!("latency, publish → delivery, {LATENCY_EVENTS} events published one at a time:");
    for (name, publish_on, subscribe_on) in
        [("memory, one node", &memory, &memory), ("redis, same node", &r1, &r1), ("redis, across nodes", &r1, &r2)]
    {
        let mut ms = latency(publish_on, subscribe_on).await;
        ms.sort_by(f64::total_cmp);
        println!("  {name:<22} p50 {:>7.3} ms   p99 {:>7.3} ms", pct(&ms, 0.50), pct(&ms, 0.99));
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
