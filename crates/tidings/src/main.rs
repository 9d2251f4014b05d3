//! `tidings`: the one binary. Parses flags and environment once, then hands typed values to
//! the hub or the client. Signal handling lives here and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod demo;
mod publish;
mod relay;
mod resolve;
mod logging;
mod serve;
mod signals;
mod tail;
mod trim;

#[derive(Debug, Parser)]
#[command(name = "tidings", version, about = "Real-time update hub for web consoles")]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `tidings_hub=debug`.
    #[arg(long, global = true, env = "TIDINGS_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "TIDINGS_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub. Without --config: in-memory engine on loopback with a printed dev token.
    Serve(ServeArgs),
    /// Run the hub with a demo console (page, API, a teammate making changes) on one port.
    Demo(demo::DemoArgs),
    /// Publish one activity or a batch to a hub.
    Publish(publish::PublishArgs),
    /// Relay a transactional outbox (PostgreSQL) to a hub: `tidings relay postgres --help`.
    Relay(relay::RelayArgs),
    /// Follow a hub's stream as a user, printing events, keys, reconnects and resyncs.
    Tail(tail::TailArgs),
    /// Show which query keys an activity invalidates, and which resolver tier said so.
    Resolve(resolve::ResolveArgs),
    /// Benchmark the hub side by side with Nchan and Pushpin (see BENCHMARKS.md).
    Bench(tidings_bench::BenchArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to bind (`127.0.0.1:0` picks a free port); overrides the file's `listen`.
    #[arg(long, env = "TIDINGS_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let logs = logging::init(&cli.log, cli.log_json)?;
    // Every stream (and every load-generating connection of `bench`) holds a socket: use the
    // open files limit the system allows this process, not the shell's default soft limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(error = %e, "could not raise the open files limit");
    }
    let result = match cli.command {
        Command::Serve(args) => block_on(serve::run(args.listen, args.config)),
        Command::Demo(args) => block_on(demo::run(args)),
        Command::Publish(args) => block_on(publish::run(args)),
        Command::Relay(args) => block_on(relay::run(args)),
        Command::Tail(args) => block_on(tail::run(args)),
        Command::Resolve(args) => resolve::run(args),
        Command::Bench(args) => block_on(tidings_bench::run(args)),
    };
    logs.flush();
    result
}

/// Longest wait, once a command is done, for tasks of the runtime that are still running
/// (a blocking DNS lookup, a file read): the process exits rather than waiting on them.
const RUNTIME_SHUTDOWN_MAX: Duration = Duration::from_millis(500);

/// Runs an async command on a multi-threaded runtime; commands that need none skip it.
fn block_on(command: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_MAX);
    result
}
