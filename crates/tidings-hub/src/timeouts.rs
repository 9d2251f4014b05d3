//! Time bounds on the phases of a request that a client controls: receiving its body
//! (`limits.body_timeout`) and, for connections served by hyper, taking the bytes of the
//! answer (`limits.response_write_timeout`). Request heads have their own bound in
//! [`crate::h1`]; event streams have theirs (a full queue closes them as `slow_consumer`).
//!
//! Without these, a client that sends a head and part of a body, or that never reads what it
//! asked for, holds its connection, its task and its buffers for as long as it likes.
//!
//! The body bound is one middleware around every route, the host's routes included: the
//! request body is wrapped in [`DeadlineBody`], which fails once the deadline passes, and
//! whatever the handler made of that failure is replaced by a 408 that closes the connection.
//! Handlers need not know about it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use crate::HubState;
use crate::error::ApiError;

/// The bound on one request's body.
struct BodyDeadline {
    timeout: Duration,
    metrics: Arc<Metrics>,
}
use crate::metrics::Metrics;

/// Gives the request's body until `limits.body_timeout` (as in effect when the request
/// arrived) from now to arrive in full; answers 408 and closes the connection when it does not.
pub(crate) async fn bound_request_body(State(hub): State<Arc<HubState>>, req: Request, next: Next) -> Response {
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let bound = BodyDeadline { timeout: hub.config().limits.body_timeout, metrics: hub.metrics().clone() };
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        Body::new(DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(bound.timeout)), expired: expired.clone() })
    });
    let response = next.run(req).await;
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    bound.metrics.timed_out("body");
    let message = format!("the request body did not arrive within {} ms", bound.timeout.as_millis());
    let mut response = ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message).field("body").into_response();
    // The rest of the body may still be on its way: the connection cannot carry another
    // request, and keeping it would hand the slow client what it was cut off for.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails with [`BodyTimedOut`] when it is still incomplete at its
/// deadline. A body that completed in time never fails, however long the handler takes after.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    /// Set when the deadline cut the body off; read by [`bound_request_body`].
    expired: Arc<AtomicBool>,
}

/// The error a [`DeadlineBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A bound on how long one write may wait for the client to take bytes, for I/O served by
/// hyper (which has no such timeout). Each pending write arms the timer once; any progress
/// disarms it.
#[derive(Debug)]
pub(crate) struct WriteStall {
    timeout: Duration,
    armed: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl WriteStall {
    pub fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { timeout, armed: None, metrics }
    }

    /// Passes a write's outcome through, turning a wait longer than the bound into
    /// [`std::io::ErrorKind::TimedOut`].
    pub fn check<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if outcome.is_ready() {
            self.armed = None;
            return outcome;
        }
        let timeout = self.timeout;
        let timer = self.armed.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = None;
        self.metrics.timed_out("response");
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client took no bytes within limits.response_write_timeout")))
    }
}
