//! The process's signals, in one place: SIGTERM and SIGINT start the hub's graceful shutdown;
//! SIGHUP, which operators send to mean "reload", calls the command's reload (its default action
//! would end the process at once, without `closed` frames or a drain).
//!
//! SIGPIPE needs nothing here: Rust's runtime ignores it before `main`, so a write to a closed
//! pipe fails with `EPIPE` instead of killing the process, and the writers of the process
//! (logs, the start-up banner) ignore that failure.

use tokio_util::sync::CancellationToken;

/// Installs the handlers now (a signal that arrives once this returns is never missed, even
/// before the start-up lines are out) and spawns the task that cancels `shutdown` on SIGTERM or
/// SIGINT and calls `on_hangup` on each SIGHUP, one at a time (a SIGHUP arriving during a
/// reload is taken after it). `on_hangup` runs on that task: a slow reload delays the next
/// SIGHUP, never a shutdown (a SIGTERM waits at most for the reload in progress).
pub fn spawn(shutdown: CancellationToken, mut on_hangup: impl FnMut() + Send + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::spawn(async move {
            let name = loop {
                tokio::select! {
                    _ = term.recv() => break "SIGTERM",
                    _ = int.recv() => break "SIGINT",
                    _ = hup.recv() => on_hangup(),
                }
            };
            // Cancel before logging: nothing that happens to a log line may delay the shutdown.
            shutdown.cancel();
            tracing::info!("{name}: shutting down");
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = &mut on_hangup;
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        tracing::info!("Ctrl-C: shutting down");
    });
}
