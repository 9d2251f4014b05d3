//! The scenarios, each run against a freshly started target: idle memory, fan-out (with and
//! without an audience), many accounts, connect storm, resume storm.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::load::{Counts, StreamPlan};
use crate::procfs;
use crate::streams::Streams;
use crate::target::{Kind, PublishApi, Target, TargetOptions};

/// Which scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[clap(rename_all = "kebab-case")]
pub enum Scenario {
    #[default]
    Idle,
    Fanout,
    /// The fan-out with an audience on every event that half of the streams are in (Tidings
    /// only), at twice the publish rate, so the deliveries asked for are those of `fanout`.
    FanoutAudience,
    ManyAccounts,
    ConnectStorm,
    ResumeStorm,
}

impl Scenario {
    pub const ALL: [Scenario; 6] =
        [Scenario::Idle, Scenario::Fanout, Scenario::FanoutAudience, Scenario::ManyAccounts, Scenario::ConnectStorm, Scenario::ResumeStorm];

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Idle => "(a) idle",
            Scenario::Fanout => "(b) fan-out, one account",
            Scenario::FanoutAudience => "(b') fan-out, one account, an audience on every event",
            Scenario::ManyAccounts => "(c) many accounts",
            Scenario::ConnectStorm => "(d) connect storm",
            Scenario::ResumeStorm => "(e) resume storm",
        }
    }

    /// Whether a target can run it: audiences are a Tidings feature.
    pub fn runs_on(self, kind: Kind) -> bool {
        self != Scenario::FanoutAudience || kind == Kind::Tidings
    }
}

/// The grant of half the streams (the even ones), which every event of
/// [`Scenario::FanoutAudience`] is addressed to; the other half hold [`GRANT_ODD`]. Every
/// stream holds its grant in every scenario, so (b) and (b') run against the same hub.
pub const GRANT_EVEN: &str = "bench:half-0";
pub const GRANT_ODD: &str = "bench:half-1";

/// Sizes of the scenarios; the defaults are the issue's.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct Sizes {
    /// Streams opened in every scenario.
    #[arg(long, env = "BENCH_STREAMS", default_value_t = 10_000)]
    pub streams: usize,
    /// Accounts of the many-accounts and resume scenarios.
    #[arg(long, env = "BENCH_ACCOUNTS", default_value_t = 1_000)]
    pub accounts: usize,
    /// Publishes per second in the fan-out scenario (all to one account).
    #[arg(long, env = "BENCH_FANOUT_RATE", default_value_t = 100.0)]
    pub fanout_rate: f64,
    /// Publishes per second in the many-accounts scenario.
    #[arg(long, env = "BENCH_MANY_RATE", default_value_t = 2_000.0)]
    pub many_rate: f64,
    /// Publishes per second while the resume storm runs (over all accounts).
    #[arg(long, env = "BENCH_RESUME_RATE", default_value_t = 100.0)]
    pub resume_rate: f64,
    /// How long the publishing scenarios publish.
    #[arg(long, env = "BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// How long streams sit idle before memory is read.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// Streams started per second outside the connect storm.
    #[arg(long, default_value_t = 5_000)]
    pub connect_rate: u64,
}

/// How the harness runs.
#[derive(Debug, Clone)]
pub struct Harness {
    pub tidings_bin: PathBuf,
    /// This binary, for worker processes.
    pub exe: PathBuf,
    /// Streams per load-generating process before workers are spawned.
    pub per_process: usize,
    /// Loopback source addresses to spread client sockets over.
    pub sources: u8,
    /// File descriptors a peer may open.
    pub nofile: u64,
}

/// What one scenario measured against one target. Fields a scenario does not measure are
/// absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub scenario: Scenario,
    /// Tidings: how the streams authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    pub engine: String,
    pub streams: usize,
    pub accounts: usize,
    /// Names of the processes whose memory was summed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Seconds from the first connect until every stream was open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_secs: Option<f64>,
    pub all_open: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    /// Hub resident memory added per open stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_stream_kib: Option<f64>,
    /// Kernel TCP socket memory added per stream (both ends of each loopback connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_mem_per_stream_kib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate_asked: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate_achieved: Option<f64>,
    /// Events the target acknowledged.
    pub published: u64,
    /// Deliveries the streams should have seen (published events × streams of the account).
    pub expected: u64,
    pub delivered: u64,
    pub duplicated: u64,
    /// `expected - delivered` when the scenario ended: skipped plus not yet delivered.
    pub lost: u64,
    /// Events a stream had not got when waiting ended although it got a later one of the
    /// same account.
    pub skipped: u64,
    /// Deliveries still outstanding when waiting ended (lost minus skipped): a backlog that
    /// had not drained within the wait, or events lost at the end of the run.
    pub undelivered: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Stream failures by HTTP status or I/O error kind (retries included).
    pub errors: BTreeMap<String, u64>,
    pub publish_errors: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub closed_frames: u64,
    /// CPU seconds used by the target's processes while publishing and delivering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_secs: Option<f64>,
    /// CPU seconds used by the load generator (this process and its workers) meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_secs: Option<f64>,
    /// Wall-clock seconds those CPU times were measured over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_window_secs: Option<f64>,
    /// Resume storm: seconds the target took to stop and listen again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_secs: Option<f64>,
    /// Resume storm: seconds from the stop signal until every stream was open again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub back_secs: Option<f64>,
    /// The machine's 1-minute load average when the run measured (the machine is shared:
    /// CPU and latency figures are read beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_avg: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub per_account: Vec<u64>,
    pub acked: u64,
    pub failures: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// The last bench sequence number used per account (acknowledged or not): where the next
    /// publisher to the same streams must continue.
    pub last_seq: Vec<u64>,
    /// `(account, seq)` of every event whose publish failed: it may still have been stored
    /// (a publish that timed out) and be delivered, but it is not owed.
    pub failed: Vec<(usize, u64)>,
}

/// Publishes `rate` events per second round robin over `accounts` accounts for `duration`
/// (or until `stop`), on its own thread and runtime so stream load cannot delay the ticks.
/// Sequence numbers start at 1: the streams must be new.
pub fn spawn_publisher(api: PublishApi, rate: f64, duration: Duration, accounts: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Published> {
    spawn_publisher_over(api, rate, duration, (0..accounts).collect(), vec![0; accounts], stop)
}

/// Like [`spawn_publisher`], round robin over the accounts in `mine` only (of the
/// `last_seq.len()` accounts numbered from 0), so several publishers can share the accounts
/// without sharing one; account `a` continues after sequence number `last_seq[a]`.
///
/// Streams tell a duplicate from a new event by its sequence number alone, for as long as
/// they live: a publisher that follows another on the same streams must continue the numbers
/// (its [`Published::last_seq`]), or every event it reuses a number for counts as a duplicate
/// and the deliveries it was owed as lost.
pub fn spawn_publisher_over(api: PublishApi, rate: f64, duration: Duration, mine: Vec<usize>, last_seq: Vec<u64>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Published> {
    let accounts = last_seq.len();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("publisher runtime");
        rt.block_on(async move {
            let http = PublishApi::client();
            let mut out = Published { per_account: vec![0; accounts], ..Default::default() };
            let mut seq = last_seq;
            let total = (rate * duration.as_secs_f64()).round() as u64;
            let mut sent = 0u64;
            let mut next_account = 0usize;
            let start = Instant::now();
            let mine = if mine.is_empty() { vec![0] } else { mine };
            // Requests overlap (up to IN_FLIGHT), as a fleet of backend services would publish:
            // a target that answers a publish slowly is not also starved of publishes.
            const IN_FLIGHT: usize = 32;
            let mut inflight = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Stop issuing when far behind: the achieved rate tells the story.
            let deadline = duration + Duration::from_secs(5);
            let record = |out: &mut Published, results: Vec<((usize, u64), Option<String>)>| {
                for ((a, seq), r) in results {
                    match r {
                        None => {
                            out.per_account[a] += 1;
                            out.acked += 1;
                        }
                        Some(e) => {
                            *out.failures.entry(e).or_default() += 1;
                            out.failed.push((a, seq));
                        }
                    }
                }
            };
            while sent < total && !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
                while sent < due {
                    let n = (due - sent).min(500);
                    let batch: Vec<(usize, u64)> = (0..n)
                        .map(|_| {
                            let a = mine[next_account];
                            next_account = (next_account + 1) % mine.len();
                            seq[a] += 1;
                            (a, seq[a])
                        })
                        .collect();
                    sent += n;
                    while inflight.len() >= IN_FLIGHT {
                        if let Some(Ok(r)) = inflight.join_next().await {
                            record(&mut out, r);
                        }
                    }
                    let (api, http) = (api.clone(), http.clone());
                    inflight.spawn(async move {
                        let results = api.publish(&http, &batch).await;
                        batch.into_iter().zip(results).collect::<Vec<_>>()
                    });
                }
                while let Some(Ok(r)) = inflight.try_join_next() {
                    record(&mut out, r);
                }
            }
            while let Some(r) = inflight.join_next().await {
                if let Ok(r) = r {
                    record(&mut out, r);
                }
            }
            out.elapsed = start.elapsed();
            out.last_seq = seq;
            out
        })
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1_000.0)
}

async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if cond() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for deliveries to reach `expected`, or to stop moving for `quiet`; returns the
/// counts and when the last delivery was seen.
async fn drain(streams: &Streams, expected: u64, quiet: Duration, max: Duration) -> (Counts, Instant) {
    let t0 = Instant::now();
    let mut last = streams.counts();
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let c = streams.counts();
        if c.delivered != last.delivered || c.duplicated != last.duplicated {
            last_change = Instant::now();
        }
        last = c;
        if last.delivered >= expected || last_change.elapsed() > quiet || t0.elapsed() > max {
            return (last, last_change);
        }
    }
}

impl Harness {
    fn plan(&self, target: &Target, streams: usize, accounts: usize, connect_rate: u64, reconnect: bool) -> StreamPlan {
        StreamPlan { endpoint: target.endpoint.clone(), first: 0, count: streams, accounts, sources: self.sources, reconnect, connect_rate }
    }

    /// Runs one scenario against a fresh `kind` target whose streams (Tidings) authenticate
    /// with `identity`.
    pub async fn run(&self, kind: Kind, scenario: Scenario, sizes: &Sizes, identity: Identity) -> Result<Outcome> {
        let n = sizes.streams;
        let accounts = match scenario {
            Scenario::Fanout | Scenario::FanoutAudience | Scenario::ConnectStorm => 1,
            Scenario::Idle | Scenario::ManyAccounts | Scenario::ResumeStorm => sizes.accounts.min(n).max(1),
        };
        let opts = TargetOptions { tidings_bin: self.tidings_bin.clone(), max_streams: n, accounts, durable: scenario == Scenario::ResumeStorm, identity, redis_urls: Vec::new(), nofile: self.nofile, history: String::new() };
        let mut target = Target::start(kind, &opts).await?;
        let identity = (kind == Kind::Tidings).then_some(identity);
        let mut out = Outcome { target: kind.name().into(), scenario, identity, engine: target.engine.clone(), streams: n, accounts, ..Default::default() };
        // Settled, not read at a fixed moment: what starting took and freed (a 10,000-entry
        // tokens file parsed, for static tokens) is given back on the allocator's schedule, and
        // streams opened before that reuse it and look free.
        let rss_before = target.settled_rss_kib().await;
        let sock_before = procfs::tcp_mem_pages().unwrap_or(0);

        let storm = scenario == Scenario::ConnectStorm;
        let plan = self.plan(&target, n, accounts, if storm { 0 } else { sizes.connect_rate }, true);
        let t0 = Instant::now();
        let mut streams = Streams::start(&plan, self.per_process, &self.exe).await?;
        let open_timeout = Duration::from_secs(60);
        let opened = wait_until(open_timeout, || streams.counts().open >= n as u64).await;
        out.all_open = opened.is_some();
        out.connect_secs = opened.map(|_| t0.elapsed().as_secs_f64());
        if !out.all_open {
            out.notes.push(format!("only {} of {n} streams open after {open_timeout:?}", streams.counts().open));
        }

        match scenario {
            Scenario::Idle => {
                tokio::time::sleep(sizes.settle).await;
                let rss = target.rss_kib();
                let sock = procfs::tcp_mem_pages().unwrap_or(0);
                let open = streams.counts().open.max(1) as f64;
                out.rss_before_kib = Some(rss_before);
                out.rss_after_kib = Some(rss);
                out.rss_per_stream_kib = Some((rss as f64 - rss_before as f64) / open);
                out.sock_mem_per_stream_kib = Some((sock as f64 - sock_before as f64) * procfs::PAGE_BYTES as f64 / 1024.0 / open);
                out.processes = target.processes();
                out.load_avg = procfs::load_avg();
            }
            Scenario::Fanout | Scenario::FanoutAudience | Scenario::ManyAccounts => {
                let (rate, api) = match scenario {
                    Scenario::Fanout => (sizes.fanout_rate, target.publish_api()),
                    Scenario::FanoutAudience => (sizes.fanout_rate * 2.0, target.publish_api().with_audience(GRANT_EVEN)),
                    _ => (sizes.many_rate, target.publish_api()),
                };
                tokio::time::sleep(Duration::from_millis(500)).await;
                streams.reset_latency().await?;
                let base = streams.counts();
                let stop = Arc::new(AtomicBool::new(false));
                let cpu0 = (target.cpu_secs(), procfs::tree_cpu_secs(std::process::id()));
                let t_pub = Instant::now();
                let publisher = spawn_publisher(api, rate, sizes.duration, accounts, stop);
                let published = tokio::task::spawn_blocking(move || publisher.join()).await?.map_err(|_| anyhow::anyhow!("publisher panicked"))?;
                let expected = match scenario {
                    // The even streams: those holding the audience's grant.
                    Scenario::FanoutAudience => published.per_account[0] * n.div_ceil(2) as u64,
                    _ => expected(&published, n, accounts),
                };
                let (counts, last) = drain(&streams, base.delivered + expected, Duration::from_secs(5), Duration::from_secs(20)).await;
                out.skipped = counts.skipped - base.skipped;
                let delivered = counts.delivered - base.delivered;
                let target_cpu = target.cpu_secs() - cpu0.0;
                out.target_cpu_secs = Some(target_cpu);
                // The targets are children of this process: take them out of its tree.
                out.loadgen_cpu_secs = Some(procfs::tree_cpu_secs(std::process::id()) - cpu0.1 - target_cpu);
                out.cpu_window_secs = Some(t_pub.elapsed().as_secs_f64());
                out.publish_rate_asked = Some(rate);
                out.publish_rate_achieved = Some(published.acked as f64 / published.elapsed.as_secs_f64());
                out.published = published.acked;
                out.publish_errors = published.failures;
                out.expected = expected;
                out.delivered = delivered;
                out.lost = expected.saturating_sub(delivered);
                out.deliveries_per_sec = Some(delivered as f64 / last.duration_since(t_pub).as_secs_f64().max(1e-3));
                out.load_avg = procfs::load_avg();
            }
            Scenario::ConnectStorm => {}
            Scenario::ResumeStorm => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let base = streams.counts();
                let stop = Arc::new(AtomicBool::new(false));
                let publisher = spawn_publisher(target.publish_api(), sizes.resume_rate, Duration::from_secs(3_600), accounts, stop.clone());
                tokio::time::sleep(Duration::from_secs(2)).await;
                streams.set_timing(false).await?;
                let t_stop = Instant::now();
                let restart = target.restart().await;
                match restart {
                    Ok(d) => out.restart_secs = Some(d.as_secs_f64()),
                    Err(e) => out.notes.push(format!("restart failed: {e:#}")),
                }
                let back = wait_until(Duration::from_secs(60), || streams.counts().open >= n as u64).await;
                out.back_secs = back.map(|_| t_stop.elapsed().as_secs_f64());
                if back.is_none() {
                    out.notes.push(format!("only {} of {n} streams back after 60 s", streams.counts().open));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                stop.store(true, Ordering::Relaxed);
                let published = tokio::task::spawn_blocking(move || publisher.join()).await?.map_err(|_| anyhow::anyhow!("publisher panicked"))?;
                let expected = expected(&published, n, accounts);
                let (counts, _) = drain(&streams, base.delivered + expected, Duration::from_secs(5), Duration::from_secs(20)).await;
                out.skipped = counts.skipped - base.skipped;
                let delivered = counts.delivered - base.delivered;
                out.publish_rate_asked = Some(sizes.resume_rate);
                out.published = published.acked;
                out.publish_errors = published.failures;
                out.expected = expected;
                out.delivered = delivered;
                out.lost = expected.saturating_sub(delivered);
                if delivered > expected {
                    out.notes.push(format!("{} deliveries of events whose publish was not acknowledged", delivered - expected));
                }
            }
        }
        out.undelivered = out.lost.saturating_sub(out.skipped);
        let (counts, errors, latency) = streams.finish().await?;
        out.duplicated = counts.duplicated;
        out.reconnects = counts.reconnects;
        out.closed_frames = counts.closed_frames;
        out.errors = errors;
        if matches!(scenario, Scenario::Fanout | Scenario::FanoutAudience | Scenario::ManyAccounts) {
            out.p50_ms = ms(&latency, 0.5);
            out.p99_ms = ms(&latency, 0.99);
            out.max_ms = (!latency.is_empty()).then(|| latency.max() as f64 / 1_000.0);
        }
        target.stop().await;
        Ok(out)
    }
}

/// Deliveries owed: each acknowledged event once to every stream of its account.
pub(crate) fn expected(published: &Published, streams: usize, accounts: usize) -> u64 {
    (0..accounts).map(|a| published.per_account[a] * streams_of(a, streams, accounts)).sum()
}

/// Streams of account `a` when stream `i` belongs to account `i % accounts`.
pub(crate) fn streams_of(a: usize, streams: usize, accounts: usize) -> u64 {
    (streams / accounts + usize::from(a < streams % accounts)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_split_over_accounts_exactly() {
        for (n, a) in [(10, 3), (10_000, 1_000), (5, 7), (1, 1)] {
            let total: u64 = (0..a).map(|i| streams_of(i, n, a)).sum();
            assert_eq!(total, n as u64);
            let counted = (0..n).filter(|i| i % a == 2.min(a - 1)).count() as u64;
            assert_eq!(streams_of(2.min(a - 1), n, a), counted);
        }
    }
}
