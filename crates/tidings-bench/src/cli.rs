//! `tidings bench`: `run` the scenarios, `report` a results file as markdown, and the
//! internal `worker` that carries part of the streams in another process.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::identity::Identity;
use crate::report::{Machine, Report, markdown};
use crate::scenario::{Harness, Scenario, Sizes};
use crate::target::{self, Kind};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Start each target, run the scenarios against it, write results (JSON and markdown).
    Run(RunArgs),
    /// The multi-node model: 1, 2, 4, 8 hub nodes on one Redis, a publish-rate sweep, CPU,
    /// bytes read and latency per node and for Redis (BENCHMARKS.md, "Scale model").
    Scale(crate::scale::ScaleArgs),
    /// Memory against accounts ever seen: publish into N distinct accounts with a short
    /// `history.max_age`, then watch the hub's RSS return once their events aged out
    /// (BENCHMARKS.md, "Accounts come and go").
    Accounts(crate::accounts::AccountsArgs),
    /// Print the markdown tables of a results file.
    Report {
        /// A results file written by `tidings bench run`.
        json: PathBuf,
    },
    /// Internal: run part of the streams for `bench run` (plan on stdin, reports on stdout).
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Targets, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["tidings", "nchan", "pushpin"])]
    pub targets: Vec<Kind>,
    /// Scenarios, comma-separated (`fanout-audience` is the fan-out with an audience on every
    /// event, Tidings only; it is not in the default list).
    #[arg(long, value_delimiter = ',', default_values = ["idle", "fanout", "many-accounts", "connect-storm", "resume-storm"])]
    pub scenarios: Vec<Scenario>,
    #[command(flatten)]
    pub sizes: Sizes,
    /// How Tidings streams authenticate, comma-separated: the idle scenario runs once per
    /// identity source; the other scenarios use the first.
    #[arg(long, value_delimiter = ',', default_values = ["static", "jwt", "introspection"])]
    pub identities: Vec<Identity>,
    /// Smoke run: 1,000 streams over 100 accounts, 3 s of publishing (overrides the sizes).
    #[arg(long)]
    pub quick: bool,
    /// Run every scenario this many times; the table shows medians.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// The `tidings` binary serving the hub (default: this binary).
    #[arg(long, env = "BENCH_TIDINGS_BIN")]
    pub tidings_bin: Option<PathBuf>,
    /// Streams per load-generating process; above it, worker processes share the streams.
    #[arg(long, default_value_t = 15_000)]
    pub per_process: usize,
    /// Loopback source addresses (127.0.0.2 and up) the client sockets are spread over.
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// File descriptors a peer may open (nginx worker_rlimit_nofile and worker_connections).
    #[arg(long, default_value_t = 20_000)]
    pub nofile: u64,
    /// Results file (JSON); the markdown goes next to it with `.md`.
    #[arg(long, default_value = "bench/results/latest.json")]
    pub out: PathBuf,
}

/// Runs `tidings bench ...`.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Run(a) => run_all(a).await,
        BenchCommand::Report { json } => {
            let text = std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
            let report: Report = serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
            print!("{}", markdown(&report));
            Ok(())
        }
        BenchCommand::Worker => crate::streams::run_worker().await,
        BenchCommand::Scale(a) => crate::scale::run(a).await,
        BenchCommand::Accounts(a) => crate::accounts::run(a).await,
    }
}

async fn run_all(mut a: RunArgs) -> Result<()> {
    if a.quick {
        a.sizes.streams = 1_000;
        a.sizes.accounts = 100;
        a.sizes.duration = std::time::Duration::from_secs(3);
        a.sizes.settle = std::time::Duration::from_secs(2);
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let tidings_bin = a.tidings_bin.clone().unwrap_or_else(|| exe.clone());
    let harness = Harness { tidings_bin: tidings_bin.clone(), exe, per_process: a.per_process.max(1), sources: a.sources.max(1), nofile: a.nofile };
    let mut report = Report {
        started: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::current(),
        versions: target::versions(&tidings_bin),
        sizes: a.sizes.clone(),
        results: Vec::new(),
        failures: Vec::new(),
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    for kind in &a.targets {
        if let Err(e) = target::check_installed(&[*kind]) {
            report.failures.push(format!("{}: {e:#}", kind.name()));
            continue;
        }
        for scenario in a.scenarios.iter().filter(|s| {
            let runs = s.runs_on(*kind);
            if !runs {
                eprintln!("[bench] {} / {:?}: not run, audiences are a Tidings feature", kind.name(), s);
            }
            runs
        }) {
            let identities = match (kind, scenario) {
                (Kind::Tidings, Scenario::Idle) => a.identities.clone(),
                _ => a.identities.first().copied().into_iter().collect(),
            };
            for (identity, rep) in identities.iter().flat_map(|i| (0..a.repeat.max(1)).map(move |r| (*i, r))) {
                eprintln!("[bench] {} / {:?} / {} (run {})", kind.name(), scenario, identity.name(), rep + 1);
                match harness.run(*kind, *scenario, &a.sizes, identity).await {
                    Ok(o) => {
                        eprintln!("[bench]   {}", serde_json::to_string(&o)?);
                        report.results.push(o);
                    }
                    Err(e) => {
                        eprintln!("[bench]   failed: {e:#}");
                        report.failures.push(format!("{} / {:?}: {e:#}", kind.name(), scenario));
                    }
                }
                // Results so far survive an interrupted run.
                write(&a.out, &report)?;
            }
        }
    }
    write(&a.out, &report)?;
    eprintln!("[bench] wrote {} and {}", a.out.display(), a.out.with_extension("md").display());
    print!("{}", markdown(&report));
    Ok(())
}

fn write(path: &PathBuf, report: &Report) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    std::fs::write(path.with_extension("md"), markdown(report))?;
    Ok(())
}
