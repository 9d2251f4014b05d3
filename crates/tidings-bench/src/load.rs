//! The subscriber side of the load: one tokio task per SSE stream on a raw HTTP/1.1
//! connection, bound to one of several loopback source addresses, counting what arrives.
//!
//! Each stream keeps only what it must: its socket, the SSE parser, the highest bench sequence
//! number it has seen, and its last event id for resuming. Reads go through one buffer per
//! runtime thread, so an idle stream holds no read buffer at all.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tidings_client::sse::SseParser;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use crate::target::Endpoint;
use crate::wire::{self, Chunked};

/// Latency histograms are sharded to keep two runtime threads from queueing on one lock.
const SHARDS: usize = 8;
/// Largest latency recorded, in microseconds (longer ones are clamped to it).
pub const LATENCY_MAX_US: u64 = 120_000_000;

/// A new latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Which streams to open and how they behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamPlan {
    pub endpoint: Endpoint,
    /// Index of the first stream (streams are numbered across all processes).
    pub first: usize,
    pub count: usize,
    /// Stream `i` belongs to account `i % accounts`.
    pub accounts: usize,
    /// Client sockets bind to 127.0.0.2 ... 127.0.0.(1 + sources), round robin.
    pub sources: u8,
    /// Reconnect (with the last event id) when a stream ends or is refused.
    pub reconnect: bool,
    /// Streams started per second; 0 starts them all at once (a connect storm).
    pub connect_rate: u64,
}

impl StreamPlan {
    pub fn source(&self, stream: usize) -> Ipv4Addr {
        let n = u32::from(self.sources.max(1));
        Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (stream as u32 % n))
    }
}

/// What the streams have seen so far. Sums over streams; cheap to read at any time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Streams open right now (response head with 200 read, not yet ended).
    pub open: u64,
    /// Streams that were open at least once.
    pub ever_open: u64,
    /// Bench events delivered for the first time to a stream.
    pub delivered: u64,
    /// Bench events a stream had already seen.
    pub duplicated: u64,
    /// Sequence numbers below the highest one a stream has seen that it has not seen (yet).
    pub skipped: u64,
    /// Connections that ended (for any reason) and were opened again.
    pub reconnects: u64,
    /// `closed` frames received (Tidings only).
    pub closed_frames: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.open += o.open;
        self.ever_open += o.ever_open;
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.skipped += o.skipped;
        self.reconnects += o.reconnects;
        self.closed_frames += o.closed_frames;
    }
}

#[derive(Debug, Default)]
struct Shared {
    open: AtomicU64,
    ever_open: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    skipped: AtomicU64,
    reconnects: AtomicU64,
    closed_frames: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    hist: Vec<Mutex<Histogram<u64>>>,
    /// Per account, per bench sequence number: how many streams got that event (the first
    /// time). Counting per event, not in sum, is what tells an acknowledged event that did not
    /// arrive from an unacknowledged one that did: a sum lets the two cancel out.
    tally: Vec<Mutex<Vec<u32>>>,
    /// Record latencies only while set (replays after a restart are counted, not timed).
    timing: AtomicBool,
}

impl Shared {
    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }
}

/// Streams running in this process.
#[derive(Debug)]
pub struct LocalStreams {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalStreams {
    /// Starts the streams of `plan` on the current runtime (at `plan.connect_rate`).
    pub fn start(plan: &StreamPlan) -> Self {
        let shared = Arc::new(Shared {
            hist: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            tally: (0..plan.accounts.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            timing: AtomicBool::new(true),
            ..Default::default()
        });
        let mut tasks = Vec::with_capacity(plan.count);
        let plan = Arc::new(plan.clone());
        let start = tokio::time::Instant::now();
        for k in 0..plan.count {
            let idx = plan.first + k;
            let delay = if plan.connect_rate == 0 { Duration::ZERO } else { Duration::from_secs_f64(k as f64 / plan.connect_rate as f64) };
            tasks.push(tokio::spawn(run_stream(shared.clone(), plan.clone(), idx, start + delay)));
        }
        Self { shared, tasks }
    }

    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            open: s.open.load(Relaxed),
            ever_open: s.ever_open.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            duplicated: s.duplicated.load(Relaxed),
            skipped: s.skipped.load(Relaxed),
            reconnects: s.reconnects.load(Relaxed),
            closed_frames: s.closed_frames.load(Relaxed),
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.shared.errors.lock().unwrap().clone()
    }

    /// Turns latency recording on or off.
    pub fn set_timing(&self, on: bool) {
        self.shared.timing.store(on, Relaxed);
    }

    /// Clears the latency histogram.
    pub fn reset_latency(&self) {
        for h in &self.shared.hist {
            h.lock().unwrap().reset();
        }
    }

    /// How many streams got event `seq` of account `account` (0 for an unknown account).
    pub fn tally(&self, account: usize, seq: u64) -> u32 {
        self.shared.tally.get(account).and_then(|t| t.lock().unwrap().get(seq as usize).copied()).unwrap_or(0)
    }

    pub fn latency(&self) -> Histogram<u64> {
        let mut out = histogram();
        for h in &self.shared.hist {
            out.add(&*h.lock().unwrap()).expect("same bounds");
        }
        out
    }

    /// Closes every stream.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Why one connection ended.
enum Ended {
    /// The stream ended (EOF, reset, `closed` frame): reconnect after up to `retry_ms`.
    Closed { retry_ms: u64 },
    /// Refused before the stream started: wait `retry_after` seconds if given.
    Refused { retry_after: Option<u64> },
}

/// The per-stream state that outlives one connection.
struct StreamState {
    last_event_id: String,
    /// Bench sequence numbers seen (bit `seq`), so a reordered event is told from a
    /// duplicate; and the highest one.
    seen: Vec<u64>,
    max_seq: u64,
    retry_ms: u64,
    was_open: bool,
}

async fn run_stream(shared: Arc<Shared>, plan: Arc<StreamPlan>, idx: usize, at: tokio::time::Instant) {
    tokio::time::sleep_until(at).await;
    let account = plan.endpoint.account(idx % plan.accounts.max(1));
    let source = plan.source(idx);
    let mut st = StreamState { last_event_id: String::new(), seen: Vec::new(), max_seq: 0, retry_ms: 1_000, was_open: false };
    loop {
        let ended = match connection(&shared, &plan, idx, &account, source, &mut st).await {
            Ok(ended) => ended,
            Err(e) => {
                shared.error(format!("io: {}", io_kind(&e)));
                Ended::Refused { retry_after: None }
            }
        };
        if !plan.reconnect {
            return;
        }
        let wait_ms = match ended {
            Ended::Closed { retry_ms } => rand::random_range(0..=retry_ms.clamp(1, 5_000)),
            Ended::Refused { retry_after: Some(s) } => s * 1_000 + rand::random_range(0..=1_000),
            Ended::Refused { retry_after: None } => rand::random_range(100..=500),
        };
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        if st.was_open {
            shared.reconnects.fetch_add(1, Relaxed);
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind()).to_ascii_lowercase()
}

/// Decrements the open count when a connection that was open ends, however it ends.
struct OpenGuard<'a>(&'a Shared, bool);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.open.fetch_sub(1, Relaxed);
        }
    }
}

async fn connection(shared: &Shared, plan: &StreamPlan, idx: usize, account: &str, source: Ipv4Addr, st: &mut StreamState) -> std::io::Result<Ended> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut tcp = socket.connect(plan.endpoint.addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(plan.endpoint.subscribe_request(idx, account, &st.last_event_id).as_bytes()).await?;

    let mut head: Option<Vec<u8>> = Some(Vec::with_capacity(512));
    let mut chunked: Option<Chunked> = None;
    let mut parser = SseParser::with_limit(64 * 1024).with_last_event_id(&st.last_event_id);
    let mut guard = OpenGuard(shared, false);
    let mut closed_retry: Option<u64> = None;
    let result = loop {
        tcp.readable().await?;
        let step = READ_BUF.with_borrow_mut(|buf| -> std::io::Result<Option<Ended>> {
            let n = match tcp.try_read(buf) {
                Ok(0) => return Ok(Some(Ended::Closed { retry_ms: closed_retry.unwrap_or(st.retry_ms) })),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut body = &buf[..n];
            if let Some(h) = head.as_mut() {
                h.extend_from_slice(body);
                let Some(end) = wire::head_end(h) else {
                    if h.len() > wire::HEAD_BYTES_MAX {
                        shared.error("bad response head".into());
                        return Ok(Some(Ended::Refused { retry_after: None }));
                    }
                    return Ok(None);
                };
                let Some(parsed) = wire::parse_head(&h[..end - 4]) else {
                    shared.error("bad response head".into());
                    return Ok(Some(Ended::Refused { retry_after: None }));
                };
                if parsed.status != 200 {
                    let key = if parsed.retry_after.is_some() { format!("{} (Retry-After)", parsed.status) } else { parsed.status.to_string() };
                    shared.error(key);
                    return Ok(Some(Ended::Refused { retry_after: parsed.retry_after }));
                }
                guard.1 = true;
                shared.open.fetch_add(1, Relaxed);
                if !st.was_open {
                    st.was_open = true;
                    shared.ever_open.fetch_add(1, Relaxed);
                }
                chunked = parsed.chunked.then(Chunked::default);
                let consumed = body.len() - (h.len() - end);
                body = &body[consumed..];
                head = None;
            }
            match chunked.as_mut() {
                Some(c) => {
                    if c.decode(body, |b| parser.feed(b)).is_err() {
                        shared.error("bad chunked framing".into());
                        return Ok(Some(Ended::Closed { retry_ms: st.retry_ms }));
                    }
                }
                None => parser.feed(body),
            }
            while let Some(item) = parser.next() {
                let Ok(ev) = item else { continue };
                if let Some((seq, ts)) = wire::parse_marker(&ev.data) {
                    let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                    if st.seen.len() <= word {
                        st.seen.resize(word + 1, 0);
                    }
                    if st.seen[word] & bit == 0 {
                        st.seen[word] |= bit;
                        // `skipped` counts the holes below the highest number seen.
                        if seq > st.max_seq {
                            shared.skipped.fetch_add(seq - st.max_seq - 1, Relaxed);
                            st.max_seq = seq;
                        } else {
                            shared.skipped.fetch_sub(1, Relaxed);
                        }
                        shared.delivered.fetch_add(1, Relaxed);
                        if let Some(t) = shared.tally.get(idx % plan.accounts.max(1)) {
                            let mut t = t.lock().unwrap();
                            if t.len() <= seq as usize {
                                t.resize(seq as usize + 1, 0);
                            }
                            t[seq as usize] += 1;
                        }
                        if shared.timing.load(Relaxed) {
                            let us = (wire::now_ns().saturating_sub(ts) / 1_000).clamp(1, LATENCY_MAX_US);
                            let _ = shared.hist[idx % SHARDS].lock().unwrap().record(us);
                        }
                    } else {
                        shared.duplicated.fetch_add(1, Relaxed);
                    }
                } else if ev.data.contains("\"type\":\"closed\"") {
                    shared.closed_frames.fetch_add(1, Relaxed);
                    closed_retry = retry_ms_field(&ev.data).or(Some(st.retry_ms));
                }
            }
            if let Some(r) = parser.retry() {
                st.retry_ms = r;
            }
            if chunked.as_ref().is_some_and(Chunked::is_done) {
                return Ok(Some(Ended::Closed { retry_ms: closed_retry.unwrap_or(st.retry_ms) }));
            }
            Ok(None)
        });
        match step {
            Ok(Some(ended)) => break Ok(ended),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    if !parser.last_event_id().is_empty() {
        st.last_event_id = parser.last_event_id().to_owned();
    }
    match result {
        // A reset of an open stream is a stream end like any other, not a connect error.
        Err(_) if guard.1 => Ok(Ended::Closed { retry_ms: st.retry_ms }),
        other => other,
    }
}

fn retry_ms_field(data: &str) -> Option<u64> {
    let rest = &data[data.find("\"retry_ms\":")? + "\"retry_ms\":".len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}
