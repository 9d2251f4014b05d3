//! All the streams of a scenario, in this process or spread over worker processes when they
//! would not fit under one process's file limit. A worker is this same binary run as
//! `tidings bench worker`: it reads its [`StreamPlan`] as one JSON line on stdin, prints a
//! [`WorkerReport`] line every 100 ms, obeys `timing on|off`, `reset` and `stop` lines, and
//! prints a last report with its latency histogram when told to stop (or when stdin ends).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::load::{Counts, LocalStreams, StreamPlan, histogram};

/// One line a worker prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub counts: Counts,
    pub errors: BTreeMap<String, u64>,
    /// Base64 of the V2-serialized latency histogram; only in the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
}

#[derive(Debug)]
struct Remote {
    child: Child,
    stdin: ChildStdin,
    latest: Arc<Mutex<WorkerReport>>,
    last: tokio::sync::oneshot::Receiver<WorkerReport>,
}

/// The streams of one scenario.
#[derive(Debug)]
pub struct Streams {
    local: Option<LocalStreams>,
    remote: Vec<Remote>,
}

impl Streams {
    /// Starts `plan`, in this process when it has at most `per_process` streams, otherwise in
    /// `ceil(count / per_process)` worker processes running `exe bench worker`.
    pub async fn start(plan: &StreamPlan, per_process: usize, exe: &PathBuf) -> Result<Self> {
        if plan.count <= per_process {
            return Ok(Self { local: Some(LocalStreams::start(plan)), remote: Vec::new() });
        }
        let workers = plan.count.div_ceil(per_process);
        let mut remote = Vec::with_capacity(workers);
        for w in 0..workers {
            let first = w * plan.count / workers;
            let end = (w + 1) * plan.count / workers;
            let part = StreamPlan { first: plan.first + first, count: end - first, ..plan.clone() };
            remote.push(spawn_worker(exe, &part).await?);
        }
        Ok(Self { local: None, remote })
    }

    pub fn counts(&self) -> Counts {
        let mut c = self.local.as_ref().map(LocalStreams::counts).unwrap_or_default();
        for r in &self.remote {
            c.add(&r.latest.lock().unwrap().counts);
        }
        c
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut e = self.local.as_ref().map(LocalStreams::errors).unwrap_or_default();
        for r in &self.remote {
            for (k, v) in &r.latest.lock().unwrap().errors {
                *e.entry(k.clone()).or_default() += v;
            }
        }
        e
    }

    async fn command(&mut self, line: &str) -> Result<()> {
        for r in &mut self.remote {
            r.stdin.write_all(format!("{line}\n").as_bytes()).await?;
            r.stdin.flush().await?;
        }
        Ok(())
    }

    /// Turns latency recording on or off everywhere.
    pub async fn set_timing(&mut self, on: bool) -> Result<()> {
        if let Some(l) = &self.local {
            l.set_timing(on);
        }
        self.command(if on { "timing on" } else { "timing off" }).await
    }

    /// Clears the latency histograms everywhere.
    pub async fn reset_latency(&mut self) -> Result<()> {
        if let Some(l) = &self.local {
            l.reset_latency();
        }
        self.command("reset").await
    }

    /// Closes every stream; returns the final counts, errors and latency.
    pub async fn finish(mut self) -> Result<(Counts, BTreeMap<String, u64>, Histogram<u64>)> {
        let mut counts = Counts::default();
        let mut errors = BTreeMap::new();
        let mut latency = histogram();
        if let Some(l) = self.local.take() {
            counts = l.counts();
            errors = l.errors();
            latency = l.latency();
            l.stop().await;
        }
        self.command("stop").await?;
        for mut r in self.remote.drain(..) {
            let report = tokio::time::timeout(Duration::from_secs(30), r.last).await.context("worker did not report")?.context("worker ended without a last report")?;
            counts.add(&report.counts);
            for (k, v) in report.errors {
                *errors.entry(k).or_default() += v;
            }
            if let Some(b64) = report.latency {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| anyhow::anyhow!("worker histogram: {e:?}"))?;
                latency.add(&h).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            let _ = r.child.wait().await;
        }
        Ok((counts, errors, latency))
    }
}

async fn spawn_worker(exe: &PathBuf, plan: &StreamPlan) -> Result<Remote> {
    let mut child = Command::new(exe)
        .args(["bench", "worker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting worker {}", exe.display()))?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    stdin.write_all(format!("{}\n", serde_json::to_string(plan)?).as_bytes()).await?;
    stdin.flush().await?;
    let latest = Arc::new(Mutex::new(WorkerReport::default()));
    let (tx, last) = tokio::sync::oneshot::channel();
    let latest2 = latest.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(report) = serde_json::from_str::<WorkerReport>(&line) else { continue };
            if report.latency.is_some() {
                let _ = tx.send(report);
                return;
            }
            *latest2.lock().unwrap() = report;
        }
    });
    Ok(Remote { child, stdin, latest, last })
}

/// The `bench worker` side: runs one plan read from stdin and reports on stdout.
pub async fn run_worker() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let Some(first) = lines.next_line().await? else { bail!("no plan on stdin") };
    let plan: StreamPlan = serde_json::from_str(&first).context("plan")?;
    let streams = Arc::new(LocalStreams::start(&plan));
    let reporter = {
        let streams = streams.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let report = WorkerReport { counts: streams.counts(), errors: streams.errors(), latency: None };
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
        })
    };
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "timing on" => streams.set_timing(true),
            "timing off" => streams.set_timing(false),
            "reset" => streams.reset_latency(),
            "stop" => break,
            _ => {}
        }
    }
    reporter.abort();
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(&streams.latency(), &mut bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let report = WorkerReport { counts: streams.counts(), errors: streams.errors(), latency: Some(base64::engine::general_purpose::STANDARD.encode(bytes)) };
    println!("{}", serde_json::to_string(&report)?);
    if let Ok(streams) = Arc::try_unwrap(streams) {
        streams.stop().await;
    }
    Ok(())
}
