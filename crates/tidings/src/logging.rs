//! Logging to stderr that can neither stop nor hang the process.
//!
//! Operators pipe the hub's output into log shippers, `head`, `journald`; a reader that goes
//! away (a closed pipe) or stops reading (a full pipe) must not change what the hub does.
//! With `tracing-subscriber` writing to stderr directly, both did: a failed write makes it
//! report the failure with `eprintln!`, which panics when stderr is the broken pipe, so every
//! log line became a panic in whatever task logged it (the signal task among them: SIGTERM was
//! then received and never acted on); and a full pipe blocked the runtime's worker threads in
//! `write(2)`.
//!
//! Here every line goes through a bounded in-memory queue to one writer thread
//! (`tracing-appender`'s non-blocking writer in lossy mode): a full queue drops the line
//! instead of waiting, a failed write is ignored, and the subscriber's own error reporting is
//! off. What this does not do: keep lines the output cannot take (they are dropped, never
//! retried), or make the start-up banner on stdout reliable (its commands ignore a failed
//! banner write themselves).

use std::time::Duration;

use anyhow::{Context, Result};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Log lines queued for the writer thread before new ones are dropped: about 4 MiB of typical
/// lines, minutes of logging at the rate a busy hub logs at `info`.
const LOG_LINES_QUEUED_MAX: usize = 16_384;
/// Longest wait at exit for queued lines to reach stderr; a stalled reader gets no more.
const LOG_FLUSH_AT_EXIT_MAX: Duration = Duration::from_millis(500);

/// The running writer thread; [`Logs::flush`] it before the process exits.
#[derive(Debug)]
pub struct Logs {
    guard: WorkerGuard,
}

/// Installs the global subscriber: `filter` in `EnvFilter` syntax, text or JSON lines.
pub fn init(filter: &str, json: bool) -> Result<Logs> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_QUEUED_MAX)
        .thread_name("tidings-log")
        .finish(std::io::stderr());
    // Colours only for a terminal: in files, journals and log shippers they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Off: on a failed write the subscriber would `eprintln!`, which panics on a closed stderr.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi).log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(Logs { guard })
}

impl Logs {
    /// Gives queued lines at most [`LOG_FLUSH_AT_EXIT_MAX`] to reach stderr. The guard's own
    /// drop waits up to 1.1 s and then `println!`s a complaint, which blocks on a full stdout
    /// pipe or panics on a closed one: it runs on a helper thread that the exit does not wait
    /// for beyond the bound.
    pub fn flush(self) {
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("tidings-log-flush".into()).spawn(move || {
            drop(self.guard);
            let _ = done.send(());
        });
        if spawned.is_ok() {
            let _ = finished.recv_timeout(LOG_FLUSH_AT_EXIT_MAX);
        }
    }
}
