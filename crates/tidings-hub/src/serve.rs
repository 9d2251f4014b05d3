//! The accept loop: hyper connections for the axum router, with a per-connection handle and
//! a shutdown that cannot be held up by open streams.
//!
//! axum's own `serve` waits for every connection on graceful shutdown, and an SSE response
//! never finishes by itself (axum issue 2673). Here shutdown first tells every stream to send
//! `closed` and end, then lets connections finish within the grace period, then drops the rest.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::HubState;
use crate::http::ConnectionHandle;

/// Pause after a failed `accept` (for example EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn serve(hub: Arc<HubState>, router: axum::Router, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Cancelled after the grace period: drops every connection still open.
    let hard_stop = CancellationToken::new();
    loop {
        let (socket, _peer) = tokio::select! {
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
        let conn_token = hard_stop.child_token();
        let handle = ConnectionHandle(conn_token.clone());
        let router = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(handle.clone());
            router.clone().call(req)
        });
        let conn = builder.serve_connection(TokioIo::new(socket), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "connection ended with an error") },
                _ = conn_token.cancelled() => {}
            }
        });
    }
    drop(listener);
    crate::begin_drain(&hub);
    let grace = hub.config.limits.shutdown_grace;
    tracing::info!(streams = hub.fanout.closing_len(), ?grace, "shutting down: streams told to close");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over; dropping remaining connections");
            hard_stop.cancel();
        }
    }
    Ok(())
}
