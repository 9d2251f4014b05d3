//! `tidings bench accounts`: memory against the number of accounts ever seen. For each count,
//! a fresh hub (memory engine, a short `history.max_age`) gets one event into each of that
//! many distinct accounts; its RSS is read before, right after publishing, and once upkeep has
//! aged every event out and forgotten the accounts (`tidings_history_accounts` back to 0). A
//! hub whose memory follows what is live comes back near where it started.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::report::Machine;
use crate::target::{Kind, PublishApi, Target, TargetOptions};

/// Events per publish request.
const BATCH: usize = 1_000;
/// Publish requests in flight.
const IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, clap::Args)]
pub struct AccountsArgs {
    /// Distinct accounts to publish into, one run (and one fresh hub) per count.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000usize, 200_000, 300_000])]
    pub counts: Vec<usize>,
    /// `history.max_age` of the hub.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub max_age: Duration,
    /// Longest wait for the accounts to be forgotten.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The `tidings` binary serving the hub (default: this binary).
    #[arg(long, env = "BENCH_TIDINGS_BIN")]
    pub tidings_bin: Option<PathBuf>,
    /// Results file (JSON); the markdown goes next to it with `.md`.
    #[arg(long, default_value = "bench/results/accounts-latest.json")]
    pub out: PathBuf,
}

/// One count's run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AccountsPoint {
    pub accounts: usize,
    pub baseline_kib: u64,
    pub published_kib: u64,
    pub settled_kib: u64,
    /// From the last publish until the hub held no account.
    pub forgotten_after_s: Option<f64>,
    pub publish_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountsReport {
    pub started: String,
    pub command: String,
    pub machine: Machine,
    pub max_age: String,
    pub points: Vec<AccountsPoint>,
}

pub async fn run(a: AccountsArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let tidings_bin = a.tidings_bin.clone().unwrap_or(exe);
    let mut report = AccountsReport {
        started: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::current(),
        max_age: humantime::format_duration(a.max_age).to_string(),
        points: Vec::new(),
    };
    for &count in &a.counts {
        eprintln!("[accounts] {count} accounts");
        report.points.push(run_count(&a, &tidings_bin, count).await?);
        if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(a.out.with_extension("md"), markdown(&report))?;
    }
    print!("{}", markdown(&report));
    Ok(())
}

async fn run_count(a: &AccountsArgs, bin: &std::path::Path, count: usize) -> Result<AccountsPoint> {
    let opts = TargetOptions {
        tidings_bin: bin.to_owned(),
        max_streams: 1,
        accounts: 1,
        durable: false,
        identity: Identity::Static,
        redis_urls: Vec::new(),
        nofile: 4_096,
        history: format!("max_age = \"{}\"\n", humantime::format_duration(a.max_age)),
    };
    let mut target = Target::start(Kind::Tidings, &opts).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut point = AccountsPoint { accounts: count, baseline_kib: target.rss_kib(), ..AccountsPoint::default() };
    let api = target.publish_api();
    let http = PublishApi::client();
    let started = Instant::now();
    let batches: Vec<Vec<(usize, u64)>> = (0..count).step_by(BATCH).map(|from| (from..(from + BATCH).min(count)).map(|i| (i, 1)).collect()).collect();
    for group in batches.chunks(IN_FLIGHT) {
        let mut set = tokio::task::JoinSet::new();
        for batch in group {
            let (api, http, batch) = (api.clone(), http.clone(), batch.clone());
            set.spawn(async move { api.publish(&http, &batch).await });
        }
        while let Some(answer) = set.join_next().await {
            if let Some(e) = answer?.into_iter().flatten().next() {
                bail!("publishing failed: {e}");
            }
        }
    }
    point.publish_s = started.elapsed().as_secs_f64();
    point.published_kib = target.rss_kib();
    let published = Instant::now();
    let metrics = format!("http://{}/metrics", target.endpoint.addr);
    while published.elapsed() < a.settle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let text = http.get(&metrics).send().await?.text().await?;
        let held = text.lines().find_map(|l| l.strip_prefix("tidings_history_accounts ")).and_then(|v| v.trim().parse::<f64>().ok());
        if held == Some(0.0) {
            point.forgotten_after_s = Some(published.elapsed().as_secs_f64());
            break;
        }
    }
    point.settled_kib = target.settled_rss_kib().await;
    target.stop().await;
    eprintln!("[accounts]   {:.1} → {:.1} → {:.1} MiB", mib(point.baseline_kib), mib(point.published_kib), mib(point.settled_kib));
    Ok(point)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn markdown(r: &AccountsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Memory engine, `history.max_age = \"{}\"`, one event per account; `{}`\n", r.max_age, r.command);
    let _ = writeln!(out, "| accounts | hub RSS before | after publishing | after aging out | accounts forgotten after | publishing took |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    for p in &r.points {
        let forgotten = p.forgotten_after_s.map_or("not within the wait".to_owned(), |s| format!("{s:.1} s"));
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {forgotten} | {:.1} s |",
            p.accounts,
            mib(p.baseline_kib),
            mib(p.published_kib),
            mib(p.settled_kib),
            p.publish_s
        );
    }
    out
}
