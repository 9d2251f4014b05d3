//! `tidings bench scale`: the multi-node model. Several hub nodes on the Redis engine, on
//! Redis servers on loopback, the streams spread over them, and a publish-rate sweep; for
//! every node count and rate it records, per node and for Redis, CPU, bytes read (the feed),
//! publish→delivery latency, loss and duplicates, and which part saturated first. With
//! `--shards` above 1 it starts that many Redis servers and writes them as the engine's
//! `[[engine.shards]]`; it then records each server's CPU and what each node read of each
//! shard's feed (`--shards 1,2,4` runs the counts side by side).
//!
//! Everything shares this machine's cores (Redis, every node, the load generator): the
//! numbers are for ratios and trends (what one more node costs Redis, what one more event
//! costs a node), not for absolute capacity.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::load::{LocalStreams, StreamPlan};
use crate::procfs;
use crate::report::Machine;
use crate::scenario::{Published, spawn_publisher_over};
use crate::target::{Kind, Target, TargetOptions};

/// A node or Redis counts as saturated from this share of one core busy: Redis runs commands
/// on one thread, and a node's work on this machine competes with everything else.
const SATURATED_CORE_SHARE: f64 = 0.9;
/// A rate counts as kept up with when at least this share of the asked publishes was accepted.
const KEPT_UP_SHARE: f64 = 0.95;
/// Deliveries count as kept up with when the last one arrived within this long of the last
/// publish's answer: more is a backlog the nodes (or the streams reading them) work through.
const BACKLOG_SECS_MAX: f64 = 1.0;
/// The machine counts as saturated from this share of all its cores busy (ours and anyone
/// else's): past it, every process here waits for a core, whichever one is asked the most.
const SATURATED_MACHINE_SHARE: f64 = 0.9;
/// A point's deliveries are waited for until they stop moving for this long: a backlog that
/// still drains is waited for, a lost event is not waited for forever.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// How often the drain counts deliveries event by event once their sum is reached: the count
/// walks every account's events on every node.
const PER_EVENT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Redis servers the engine is sharded over, comma-separated: each count runs every node
    /// count. 1 is the unsharded engine (`url = …`); more write one `[[engine.shards]]` table
    /// per server, which needs a hub that has shards.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    pub shards: Vec<usize>,
    /// Node counts to model, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    pub nodes: Vec<usize>,
    /// Publishes per second to sweep, comma-separated (spread over every node and account).
    /// The same streams see every rate in turn, so each rate's events continue the sequence
    /// numbers of the one before.
    #[arg(long, value_delimiter = ',', default_values_t = [500.0, 1000.0, 2000.0, 4000.0, 8000.0])]
    pub rates: Vec<f64>,
    /// Streams in all, spread evenly over the nodes.
    #[arg(long, default_value_t = 4_000)]
    pub streams: usize,
    /// Accounts the streams belong to (stream `i` to account `i % accounts`).
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    /// How long each rate publishes.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Run every (nodes, rate) point this many times; tables show medians.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// The `tidings` binary serving the nodes (default: this binary).
    #[arg(long, env = "BENCH_TIDINGS_BIN")]
    pub tidings_bin: Option<PathBuf>,
    /// The Redis server to start.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// Loopback source addresses (127.0.0.2 and up) the client sockets are spread over.
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// Results file (JSON); the markdown goes next to it with `.md`.
    #[arg(long, default_value = "bench/results/scale-latest.json")]
    pub out: PathBuf,
}

/// One node's share of one point.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeOutcome {
    pub streams: usize,
    pub cpu_cores: f64,
    /// Feed bytes the node read from Redis per second (`tidings_redis_feed_bytes_total`: ids and
    /// fields of every entry, i.e. every event of every account, whatever the node holds),
    /// summed over the shards.
    pub read_bytes_per_sec: f64,
    /// The same, per shard (`{shard="i"}`; one entry without shards).
    #[serde(default)]
    pub read_bytes_per_sec_by_shard: Vec<f64>,
    /// Feed entries the node read from each shard during the point
    /// (`tidings_redis_feed_entries_total`): each shard's events, claims and fences.
    #[serde(default)]
    pub feed_entries_by_shard: Vec<u64>,
    pub delivered: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One (nodes, rate) point.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    /// Redis servers (engine shards).
    #[serde(default = "one")]
    pub shards: usize,
    pub nodes: usize,
    pub rate_asked: f64,
    pub rate_achieved: f64,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Deliveries of events whose publish failed (a timeout after Redis stored them): not
    /// owed, not lost either. Counted event by event, like `lost`, so neither hides the other.
    #[serde(default)]
    pub extra: u64,
    /// Deliveries per second, from the first publish to the last delivery.
    #[serde(default)]
    pub delivered_per_sec: f64,
    /// Deliveries per second owed at the asked rate (each event to every stream of its account).
    #[serde(default)]
    pub owed_per_sec: f64,
    /// Seconds from the end of publishing to the last delivery: the backlog left behind.
    #[serde(default)]
    pub drain_secs: f64,
    pub publish_errors: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Summed over the shards.
    pub redis_cpu_cores: f64,
    /// Each Redis server's (shard's), in shard order.
    #[serde(default)]
    pub redis_cpu_cores_by_server: Vec<f64>,
    /// The busiest shard's: each runs its commands on one thread.
    #[serde(default)]
    pub redis_cpu_max_cores: f64,
    /// Bytes Redis (every shard) wrote to its sockets per second (the feed to every node, publish and open
    /// answers).
    pub redis_write_bytes_per_sec: f64,
    /// The load generator: this process (publishers and every stream), nodes and Redis taken
    /// out.
    pub loadgen_cpu_cores: f64,
    /// Cores the whole machine was busy, everything on it included (other work too).
    #[serde(default)]
    pub machine_busy_cores: f64,
    /// Cores the machine has.
    #[serde(default)]
    pub machine_cores: usize,
    pub per_node: Vec<NodeOutcome>,
    /// 1-minute load average at the end of the point.
    pub load_avg: Option<f64>,
}

impl Point {
    fn node_cpu_max(&self) -> f64 {
        self.per_node.iter().map(|n| n.cpu_cores).fold(0.0, f64::max)
    }

    fn node_read_mean(&self) -> f64 {
        self.per_node.iter().map(|n| n.read_bytes_per_sec).sum::<f64>() / self.per_node.len().max(1) as f64
    }

    /// What gave out at this point, if anything did: the resources past their threshold
    /// (Redis's command thread, a node, the load generator, the machine's cores) and the
    /// symptoms ([`Point::fell_behind`]).
    pub fn saturated(&self) -> Option<String> {
        let mut what = Vec::new();
        if self.redis_cpu_max_cores >= SATURATED_CORE_SHARE {
            what.push(format!("Redis ({:.2} cores)", self.redis_cpu_max_cores));
        }
        if self.node_cpu_max() >= SATURATED_CORE_SHARE {
            what.push(format!("a node ({:.2} cores)", self.node_cpu_max()));
        }
        if self.loadgen_cpu_cores >= SATURATED_CORE_SHARE {
            what.push(format!("load generator ({:.2} cores)", self.loadgen_cpu_cores));
        }
        if self.machine_cores > 0 && self.machine_busy_cores >= self.machine_cores as f64 * SATURATED_MACHINE_SHARE {
            what.push(format!("machine ({:.2} of {} cores)", self.machine_busy_cores, self.machine_cores));
        }
        what.extend(self.fell_behind());
        (!what.is_empty()).then(|| what.join(", "))
    }

    /// Whether the rate was not kept: publishes accepted below it, deliveries left in a
    /// backlog, or any delivery lost or repeated.
    pub fn fell_behind(&self) -> Option<String> {
        let mut what = Vec::new();
        if self.rate_achieved < self.rate_asked * KEPT_UP_SHARE {
            what.push(format!("publishes fell behind ({:.0}/s)", self.rate_achieved));
        }
        if self.drain_secs > BACKLOG_SECS_MAX {
            what.push(format!("deliveries fell behind ({:.1} s backlog)", self.drain_secs));
        }
        if self.lost + self.duplicated + self.extra > 0 {
            what.push(format!("{} lost, {} duplicated, {} extra", self.lost, self.duplicated, self.extra));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }

    /// Where the machine's CPU went: each part of the run, and what was left for other work.
    pub fn cpu_split(&self) -> String {
        let nodes: f64 = self.per_node.iter().map(|n| n.cpu_cores).sum();
        let ours = self.redis_cpu_cores + nodes + self.loadgen_cpu_cores;
        format!(
            "Redis {:.2}, nodes {:.2} ({:.2} the busiest), load generator {:.2}, other work {:.2}, of {} cores",
            self.redis_cpu_cores,
            nodes,
            self.node_cpu_max(),
            self.loadgen_cpu_cores,
            (self.machine_busy_cores - ours).max(0.0),
            self.machine_cores
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    pub started: String,
    pub command: String,
    pub machine: Machine,
    pub redis_version: String,
    pub streams: usize,
    pub accounts: usize,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub points: Vec<Point>,
    pub failures: Vec<String>,
}

fn one() -> usize {
    1
}

/// A `redis-server` of the run's own: loopback, free port, no persistence.
struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start(bin: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tidings-bench-redis-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (apt-get install redis-server)", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, port, _dir: dir })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes a process read from and wrote to files and sockets so far (`rchar`, `wchar`).
fn io_bytes(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (field("rchar:"), field("wchar:"))
}

pub async fn run(a: ScaleArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let tidings_bin = a.tidings_bin.clone().unwrap_or(exe);
    let version = std::process::Command::new(&a.redis_server).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let mut report = ScaleReport {
        started: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::current(),
        redis_version: version,
        streams: a.streams,
        accounts: a.accounts,
        duration: a.duration,
        points: Vec::new(),
        failures: Vec::new(),
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    for (&shards, &nodes) in a.shards.iter().flat_map(|s| a.nodes.iter().map(move |n| (s, n))) {
        eprintln!("[scale] {nodes} node(s), {shards} Redis shard(s)");
        match run_nodes(&a, &tidings_bin, shards, nodes, &mut report).await {
            Ok(()) => {}
            Err(e) => {
                eprintln!("[scale]   failed: {e:#}");
                report.failures.push(format!("{nodes} nodes, {shards} shards: {e:#}"));
            }
        }
        write(&a.out, &report)?;
    }
    eprintln!("[scale] wrote {} and {}", a.out.display(), a.out.with_extension("md").display());
    print!("{}", markdown(&report));
    Ok(())
}

async fn run_nodes(a: &ScaleArgs, bin: &Path, shards: usize, nodes: usize, report: &mut ScaleReport) -> Result<()> {
    let mut redis = Vec::with_capacity(shards);
    for _ in 0..shards.max(1) {
        redis.push(RedisServer::start(&a.redis_server).await?);
    }
    let urls: Vec<String> = redis.iter().map(|r| format!("redis://127.0.0.1:{}", r.port)).collect();
    let redis_pids: Vec<u32> = redis.iter().map(|r| r.child.id()).collect();
    let mut targets = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let opts = TargetOptions {
            tidings_bin: bin.to_owned(),
            max_streams: a.streams,
            accounts: a.accounts,
            durable: false,
            identity: Identity::Static,
            redis_urls: urls.clone(),
            nofile: 20_000,
            history: String::new(),
        };
        targets.push(Target::start(Kind::Tidings, &opts).await?);
    }
    // Stream i goes to node i * nodes / streams: contiguous ranges, so a node holds streams
    // of about min(accounts, streams / nodes) accounts, as a load balancer spreading sessions
    // at random would give it.
    let mut streams = Vec::with_capacity(nodes);
    for (k, t) in targets.iter().enumerate() {
        let first = k * a.streams / nodes;
        let count = (k + 1) * a.streams / nodes - first;
        let plan = StreamPlan { endpoint: t.endpoint.clone(), first, count, accounts: a.accounts, sources: a.sources, reconnect: true, connect_rate: 2_000 };
        streams.push(LocalStreams::start(&plan));
    }
    let open = || streams.iter().map(|s| s.counts().open).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(60);
    while open() < a.streams as u64 {
        if Instant::now() > deadline {
            bail!("only {} of {} streams open after 60 s", open(), a.streams);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The streams live through every rate: the sequence numbers continue from rate to rate.
    let mut last_seq = vec![0u64; a.accounts];
    for &rate in &a.rates {
        for rep in 0..a.repeat.max(1) {
            eprintln!("[scale]   {rate} publishes/s (run {})", rep + 1);
            let point = run_point(a, &targets, &streams, &redis_pids, rate, &mut last_seq).await?;
            eprintln!("[scale]   {}", serde_json::to_string(&point)?);
            report.points.push(point);
            write(&a.out, report)?;
        }
    }
    for s in streams {
        s.stop().await;
    }
    for mut t in targets {
        t.stop().await;
    }
    Ok(())
}

async fn run_point(a: &ScaleArgs, targets: &[Target], streams: &[LocalStreams], redis_pids: &[u32], rate: f64, last_seq: &mut [u64]) -> Result<Point> {
    let nodes = targets.len();
    for s in streams {
        s.reset_latency();
    }
    let delivered0: Vec<u64> = streams.iter().map(|s| s.counts().delivered).collect();
    let dup0: u64 = streams.iter().map(|s| s.counts().duplicated).sum();
    let pids: Vec<u32> = targets.iter().filter_map(Target::pid).collect();
    let cpu0: Vec<f64> = pids.iter().map(|p| procfs::tree_cpu_secs(*p)).collect();
    let http = crate::target::PublishApi::client();
    let shards = redis_pids.len();
    let mut feed0 = Vec::with_capacity(targets.len());
    for t in targets {
        feed0.push(Feed::read(&http, t, shards).await);
    }
    let redis_cpu_now = || -> Vec<f64> { redis_pids.iter().map(|p| procfs::cpu_secs(*p).unwrap_or(0.0)).collect() };
    let redis_written = || redis_pids.iter().map(|p| io_bytes(*p).1).sum::<u64>();
    let redis_cpu0 = redis_cpu_now();
    let redis_w0 = redis_written();
    let me = std::process::id();
    let all_cpu0 = procfs::tree_cpu_secs(me);
    let machine0 = procfs::machine_busy_secs().unwrap_or(0.0);
    let t0 = Instant::now();
    // One publisher per node, each for its own share of the accounts (so per-account order
    // and sequence numbers stay one publisher's), together at `rate`.
    let stop = Arc::new(AtomicBool::new(false));
    let seq_before = last_seq.to_vec();
    let publishers: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let mine: Vec<usize> = (0..a.accounts).filter(|acc| acc % nodes == k).collect();
            let share = rate * mine.len() as f64 / a.accounts as f64;
            spawn_publisher_over(t.publish_api(), share, a.duration, mine, last_seq.to_vec(), stop.clone())
        })
        .collect();
    let mut published = Published { per_account: vec![0; a.accounts], ..Default::default() };
    for p in publishers {
        let one = tokio::task::spawn_blocking(move || p.join()).await?.map_err(|_| anyhow::anyhow!("publisher panicked"))?;
        for (i, n) in one.per_account.iter().enumerate() {
            published.per_account[i] += n;
        }
        // Each account has one publisher: the others leave its number where it was.
        for (last, theirs) in last_seq.iter_mut().zip(&one.last_seq) {
            *last = (*last).max(*theirs);
        }
        published.acked += one.acked;
        for (k, v) in one.failures {
            *published.failures.entry(k).or_default() += v;
        }
        published.elapsed = published.elapsed.max(one.elapsed);
        published.failed.extend(one.failed);
    }
    let failed: HashSet<(usize, u64)> = published.failed.iter().copied().collect();
    let owed = |acc| crate::scenario::streams_of(acc, a.streams, a.accounts);
    let account = |acc: usize| PerEvent::account(streams, acc, seq_before[acc] + 1..=last_seq[acc], owed(acc), &failed);
    let published_at = Instant::now();
    let expected = crate::scenario::expected(&published, a.streams, a.accounts);
    let delivered_now = || streams.iter().zip(&delivered0).map(|(s, d0)| s.counts().delivered - d0).sum::<u64>();
    let per_event = || (0..a.accounts).map(account).fold(PerEvent::default(), PerEvent::add);
    // Wait for every owed delivery, or for deliveries to stop moving for DRAIN_QUIET. The sum
    // reaching `expected` is needed first (cheap to read); the count per event then decides.
    let (mut last, mut last_change, mut checked) = (delivered_now(), published_at, None::<Instant>);
    let events = loop {
        if last >= expected && checked.is_none_or(|c| c.elapsed() >= PER_EVENT_CHECK_INTERVAL) {
            let events = per_event();
            checked = Some(Instant::now());
            if events.lost == 0 {
                break events;
            }
        }
        if last_change.elapsed() >= DRAIN_QUIET {
            break per_event();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = delivered_now();
        if d != last {
            (last, last_change) = (d, Instant::now());
        }
    };
    let window = t0.elapsed().as_secs_f64();
    let machine_busy = procfs::machine_busy_secs().unwrap_or(0.0) - machine0;
    let mut all = crate::load::histogram();
    let mut per_node = Vec::with_capacity(targets.len());
    for (k, s) in streams.iter().enumerate() {
        let h = s.latency();
        all.add(&h).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let feed = Feed::read(&http, &targets[k], shards).await.since(&feed0[k]);
        per_node.push(NodeOutcome {
            streams: (k + 1) * a.streams / nodes - k * a.streams / nodes,
            cpu_cores: (procfs::tree_cpu_secs(pids[k]) - cpu0[k]) / window,
            read_bytes_per_sec: feed.bytes.iter().sum::<u64>() as f64 / window,
            read_bytes_per_sec_by_shard: feed.bytes.iter().map(|b| *b as f64 / window).collect(),
            feed_entries_by_shard: feed.entries,
            delivered: s.counts().delivered - delivered0[k],
            p50_ms: quantile(&h, 0.5),
            p99_ms: quantile(&h, 0.99),
        });
    }
    let nodes_cpu: f64 = pids.iter().zip(&cpu0).map(|(p, c)| procfs::tree_cpu_secs(*p) - c).sum();
    let redis_each: Vec<f64> = redis_cpu_now().iter().zip(&redis_cpu0).map(|(now, then)| now - then).collect();
    let redis_cpu: f64 = redis_each.iter().sum();
    let redis_w = redis_written();
    let loadgen = procfs::tree_cpu_secs(me) - all_cpu0 - nodes_cpu - redis_cpu;
    let delivered = delivered_now();
    let owed_per_sec = rate * a.streams as f64 / a.accounts as f64;
    Ok(Point {
        shards,
        nodes,
        rate_asked: rate,
        rate_achieved: published.acked as f64 / published.elapsed.as_secs_f64().max(1e-3),
        published: published.acked,
        expected,
        delivered,
        lost: events.lost,
        duplicated: streams.iter().map(|s| s.counts().duplicated).sum::<u64>() - dup0,
        extra: events.extra,
        delivered_per_sec: delivered as f64 / last_change.duration_since(t0).as_secs_f64().max(1e-3),
        owed_per_sec,
        drain_secs: last_change.saturating_duration_since(published_at).as_secs_f64(),
        publish_errors: published.failures,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        redis_cpu_cores: redis_cpu / window,
        redis_cpu_cores_by_server: redis_each.iter().map(|c| c / window).collect(),
        redis_cpu_max_cores: redis_each.iter().copied().fold(0.0, f64::max) / window,
        redis_write_bytes_per_sec: redis_w.saturating_sub(redis_w0) as f64 / window,
        loadgen_cpu_cores: loadgen / window,
        machine_busy_cores: machine_busy / window,
        machine_cores: report_cores(),
        per_node,
        load_avg: procfs::load_avg(),
    })
}

/// This point's deliveries counted event by event: an acknowledged event must reach every
/// stream of its account; one whose publish failed is not owed, and any delivery of it is extra.
#[derive(Debug, Clone, Copy, Default)]
struct PerEvent {
    lost: u64,
    extra: u64,
}

impl PerEvent {
    /// Account `acc`'s events numbered `seqs`, owed to `owed` streams over all the nodes.
    fn account(streams: &[LocalStreams], acc: usize, seqs: std::ops::RangeInclusive<u64>, owed: u64, failed: &HashSet<(usize, u64)>) -> Self {
        let mut out = Self::default();
        for seq in seqs {
            let got: u64 = streams.iter().map(|s| u64::from(s.tally(acc, seq))).sum();
            if failed.contains(&(acc, seq)) {
                out.extra += got;
            } else {
                out.lost += owed.saturating_sub(got);
            }
        }
        out
    }

    fn add(self, o: Self) -> Self {
        Self { lost: self.lost + o.lost, extra: self.extra + o.extra }
    }
}

/// Cores of this machine.
fn report_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// What a node has read of each shard's feed so far: `tidings_redis_feed_bytes_total` and
/// `_feed_entries_total`, indexed by shard.
#[derive(Debug, Clone, Default, PartialEq)]
struct Feed {
    bytes: Vec<u64>,
    entries: Vec<u64>,
}

impl Feed {
    /// The node's counters, `shards` of each (zeros when `/metrics` cannot be read).
    async fn read(http: &reqwest::Client, target: &Target, shards: usize) -> Self {
        let url = format!("http://{}/metrics", target.endpoint.addr);
        let text = match http.get(&url).send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Self::parse(&text, shards)
    }

    fn parse(text: &str, shards: usize) -> Self {
        Self { bytes: by_shard(text, "tidings_redis_feed_bytes_total", shards), entries: by_shard(text, "tidings_redis_feed_entries_total", shards) }
    }

    /// What was read between `before` and this.
    fn since(&self, before: &Self) -> Self {
        let sub = |now: &[u64], then: &[u64]| now.iter().zip(then).map(|(n, t)| n.saturating_sub(*t)).collect();
        Self { bytes: sub(&self.bytes, &before.bytes), entries: sub(&self.entries, &before.entries) }
    }
}

/// One counter of a node's `/metrics` text per shard: `name{shard="i"} v` is shard `i`'s (a
/// sharded engine), the unlabelled `name v` shard 0's (an engine without `shards`, which has
/// one). Shards missing from the text count 0.
fn by_shard(text: &str, name: &str, shards: usize) -> Vec<u64> {
    let mut out = vec![0u64; shards.max(1)];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (shard, value) = if let Some(value) = rest.strip_prefix(' ') {
            (Some(0), value)
        } else if let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) {
            (labels.split(',').find_map(|kv| kv.strip_prefix("shard=\"")?.strip_suffix('"')?.parse::<usize>().ok()), value)
        } else {
            continue;
        };
        let value = value.trim().parse::<f64>().map_or(0, |v| v as u64);
        if let Some(slot) = shard.and_then(|i| out.get_mut(i)) {
            *slot += value;
        }
    }
    out
}

fn quantile(h: &hdrhistogram::Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1_000.0)
}

fn write(path: &Path, report: &ScaleReport) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    std::fs::write(path.with_extension("md"), markdown(report))?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The markdown tables: one row per (shards, nodes, rate), medians over repeats (lost,
/// duplicated and extra deliveries summed over them: one is one too many), then per setup the
/// first rate not kept and where the CPU went there.
pub fn markdown(r: &ScaleReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Run started {} on {} ({} CPUs); {}; {} streams over {} accounts, each rate for {:?}.\n",
        r.started, r.machine.os, r.machine.nproc, r.redis_version, r.streams, r.accounts, r.duration
    );
    let _ = writeln!(
        out,
        "| shards | nodes | publishes/s asked | achieved | deliveries/s (owed) | backlog (s) | p50 (ms) | p99 (ms) | lost / dup / extra | Redis CPU (cores) | Redis out (MB/s) | node CPU, mean / max (cores) | load generator (cores) | machine busy (cores) | read per node (MB/s) | Redis CPU ms per 1,000 events | node CPU ms per 1,000 events | load avg | saturated |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let key = |p: &Point| (p.shards, p.nodes, p.rate_asked as u64);
    let mut keys: Vec<(usize, usize, u64)> = r.points.iter().map(key).collect();
    keys.sort();
    keys.dedup();
    for &k in &keys {
        let (shards, nodes, rate) = k;
        let runs: Vec<&Point> = r.points.iter().filter(|p| key(p) == k).collect();
        let med = |f: &dyn Fn(&Point) -> f64| median(runs.iter().map(|p| f(p)).collect());
        let sum = |f: &dyn Fn(&Point) -> u64| runs.iter().map(|p| f(p)).sum::<u64>();
        let node_mean = med(&|p| p.per_node.iter().map(|n| n.cpu_cores).sum::<f64>() / p.per_node.len().max(1) as f64);
        let saturated: Vec<String> = runs.iter().filter_map(|p| p.saturated()).collect();
        let _ = writeln!(
            out,
            "| {shards} | {nodes} | {rate} | {:.0} | {:.0} ({:.0}) | {:.1} | {:.1} | {:.1} | {} / {} / {} | {:.2} | {:.2} | {node_mean:.2} / {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {} |",
            med(&|p| p.rate_achieved),
            med(&|p| p.delivered_per_sec),
            med(&|p| p.owed_per_sec),
            med(&|p| p.drain_secs),
            med(&|p| p.p50_ms.unwrap_or(f64::NAN)),
            med(&|p| p.p99_ms.unwrap_or(f64::NAN)),
            sum(&|p| p.lost),
            sum(&|p| p.duplicated),
            sum(&|p| p.extra),
            med(&|p| p.redis_cpu_cores),
            med(&|p| p.redis_write_bytes_per_sec / 1e6),
            med(&|p| p.node_cpu_max()),
            med(&|p| p.loadgen_cpu_cores),
            med(&|p| p.machine_busy_cores),
            med(&|p| p.node_read_mean() / 1e6),
            // Cores are CPU seconds per second: per 1,000 events, in ms, is cores × 10⁶ / rate.
            med(&|p| p.redis_cpu_cores * 1e6 / p.rate_achieved.max(1e-9)),
            med(&|p| p.per_node.iter().map(|n| n.cpu_cores).sum::<f64>() / p.per_node.len().max(1) as f64 * 1e6 / p.rate_achieved.max(1e-9)),
            med(&|p| p.load_avg.unwrap_or(f64::NAN)),
            if saturated.is_empty() { "–".to_owned() } else { saturated.join("; ") },
        );
    }
    if r.points.iter().any(|p| p.redis_cpu_cores_by_server.len() > 1) {
        let _ = writeln!(
            out,
            "\nPer Redis server (shard), medians: its CPU, that CPU per published event of all accounts (what falls as 1/S if sharding divides the work), its share of the feed entries (node 0's reads), and its CPU per event of its own accounts.\n"
        );
        let _ = writeln!(out, "| shards | nodes | publishes/s asked | server | Redis CPU (cores) | µs per event (all) | share of feed entries | µs per own event | feed read per node from it (MB/s) |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &k in &keys {
            let (shards, nodes, rate) = k;
            let runs: Vec<&Point> = r.points.iter().filter(|p| key(p) == k).collect();
            for i in 0..shards {
                let med = |f: &dyn Fn(&Point) -> Option<f64>| median(runs.iter().filter_map(|p| f(p)).collect());
                let cpu = |p: &Point| p.redis_cpu_cores_by_server.get(i).copied();
                let share = |p: &Point| {
                    let e = &p.per_node.first()?.feed_entries_by_shard;
                    let all: u64 = e.iter().sum();
                    e.get(i).filter(|_| all > 0).map(|n| *n as f64 / all as f64)
                };
                let read = |p: &Point| Some(p.per_node.iter().filter_map(|n| n.read_bytes_per_sec_by_shard.get(i)).sum::<f64>() / p.per_node.len().max(1) as f64);
                let _ = writeln!(
                    out,
                    "| {shards} | {nodes} | {rate} | {i} | {:.3} | {:.0} | {:.2} | {:.0} | {:.3} |",
                    med(&cpu),
                    med(&|p| Some(cpu(p)? * 1e6 / p.rate_achieved.max(1e-9))),
                    med(&share),
                    med(&|p| Some(cpu(p)? * 1e6 / (p.rate_achieved * share(p)?).max(1e-9))),
                    med(&|p| Some(read(p)? / 1e6)),
                );
            }
        }
    }
    let mut setups: Vec<(usize, usize)> = keys.iter().map(|k| (k.0, k.1)).collect();
    setups.dedup();
    if !setups.is_empty() {
        let _ = writeln!(out, "\nThe first rate not kept, per setup (publishes or deliveries behind, or anything lost or repeated), and where the CPU went there:\n");
    }
    for (shards, nodes) in setups {
        let mine: Vec<&Point> = r.points.iter().filter(|p| (p.shards, p.nodes) == (shards, nodes)).collect();
        let line = match mine.iter().find(|p| p.fell_behind().is_some()) {
            Some(p) => format!("at {}/s: {}; CPU: {}", p.rate_asked, p.fell_behind().unwrap_or_default(), p.cpu_split()),
            None => match mine.last() {
                Some(p) => format!("kept up to {}/s; CPU there: {}", p.rate_asked, p.cpu_split()),
                None => continue,
            },
        };
        let _ = writeln!(out, "- {nodes} node(s), {shards} shard(s): {line}");
    }
    for f in &r.failures {
        let _ = writeln!(out, "- not run: {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_counters_are_read_unlabelled_or_summed_by_shard() {
        let one = "# TYPE tidings_redis_feed_bytes counter\ntidings_redis_feed_bytes_total 7\ntidings_redis_feed_entries_total 2\n";
        assert_eq!(Feed::parse(one, 1), Feed { bytes: vec![7], entries: vec![2] });
        let two = "tidings_redis_feed_bytes_total{shard=\"0\"} 10\ntidings_redis_feed_bytes_total{shard=\"1\"} 5\n\
                   tidings_redis_feed_entries_total{shard=\"1\"} 3\ntidings_redis_feed_bytes_total_created 1\n";
        let two = Feed::parse(two, 2);
        assert_eq!(two, Feed { bytes: vec![10, 5], entries: vec![0, 3] });
        let later = Feed { bytes: vec![15, 9], entries: vec![4, 3] };
        assert_eq!(later.since(&two), Feed { bytes: vec![5, 4], entries: vec![4, 0] });
        // Nothing readable (a node not up, a hub without the Redis engine): zeros, not a failure.
        assert_eq!(Feed::parse("", 2), Feed { bytes: vec![0, 0], entries: vec![0, 0] });
    }
}
