//! The accept loop: every connection starts in [`crate::h1`] (plain HTTP/1.1 `GET`s, event
//! streams among them), which hands anything else to hyper; and a shutdown that cannot be held
//! up by open streams.
//!
//! axum's own `serve` waits for every connection on graceful shutdown, and an SSE response
//! never finishes by itself (axum issue 2673). Here shutdown first tells every stream to send
//! `closed` and end, then lets connections finish within the grace period, then drops the rest.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::HubState;
use crate::h1;

/// Pause after a failed `accept` (for example EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves every `(listener, router)` pair (the main listener, and the admin listener when it
/// has its own) until `shutdown`, then drains them all as one.
pub(crate) async fn serve(hub: Arc<HubState>, endpoints: Vec<(TcpListener, axum::Router)>, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut hyper = auto::Builder::new(TokioExecutor::new());
    hyper.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(h1::HEAD_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = TaskTracker::new();
    // Cancelled after the grace period: drops every connection still open.
    let hard_stop = CancellationToken::new();
    let accepting = endpoints.into_iter().map(|(listener, router)| {
        let shared = Arc::new(h1::Shared { router, hyper: hyper.clone(), hub: hub.clone(), hard_stop: hard_stop.clone() });
        accept(shared, listener, &shutdown, &graceful, &connections)
    });
    futures_util::future::join_all(accepting).await;
    hub.begin_drain();
    connections.close();
    let grace = hub.config().limits.shutdown_grace;
    tracing::info!(streams = hub.fanout().closing_len(), ?grace, "shutting down: streams told to close");
    tokio::select! {
        _ = async { tokio::join!(graceful.shutdown(), connections.wait()) } => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over; dropping remaining connections");
            hard_stop.cancel();
            hub.fanout().drop_all_connections();
        }
    }
    Ok(())
}

/// Accepts connections on one listener until `shutdown`, then drops the listener.
async fn accept(
    shared: Arc<h1::Shared>,
    listener: TcpListener,
    shutdown: &CancellationToken,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    connections: &TaskTracker,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        // Counted as accepted, not when its task first runs: a scrape in between would miss it.
        // `h1::serve_connection` lowers it again when it ends.
        shared.hub.metrics().connections_open.inc();
        // The task holds only the boxed connection: with a `select!` on a token of its own
        // beside it, the task took the next size of tokio's cache-aligned task cells (256
        // bytes instead of 128) and the token another hundred, for every idle stream. The
        // connection watches for the end of the grace period itself (see `h1::Shared`).
        connections.spawn(Box::pin(h1::serve_connection(socket, peer, shared.clone(), graceful.watcher())));
    }
}
