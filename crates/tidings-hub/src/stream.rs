//! The body of one SSE response: the opening frames, then whatever the fan-out queues.
//!
//! It implements `http_body::Body` directly rather than going through a generic SSE helper:
//! frames arrive already encoded (once per event, shared by every stream), so the body only
//! hands over `Bytes`. It owns no task and no timer; it is polled by the connection and woken
//! by the fan-out. Dropping it deregisters the stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tidings_protocol::{CloseReason, EventId};
use tidings_protocol::frame::encode_closed;

use crate::HubState;
use crate::fanout::{Next, Queued, SEQ_NONE, StreamShared};
use crate::metrics::ReasonLabel;

/// Most queued frames written in one chunk; bounds the size of one write.
const WRITE_BATCH_FRAMES_MAX: usize = 64;
/// Extra random delay added to `retry_ms` on shutdown, so that every client of a restarting
/// hub does not come back in the same instant.
const SHUTDOWN_RETRY_SPREAD: Duration = Duration::from_secs(5);

/// One stream's body.
#[derive(Debug)]
pub struct SseBody {
    shared: Arc<StreamShared>,
    hub: Arc<HubState>,
    /// `retry:`, `connected`, then `resync` or the replay; written first, once.
    opening: Option<Bytes>,
    /// Highest activity seq already written (or covered by the starting position): queued
    /// frames at or below it are the overlap between replay and live, and are skipped.
    last_seq: u64,
    /// The epoch `last_seq` belongs to; changes only when the engine announces a new epoch.
    epoch: u64,
    ended: bool,
}

impl SseBody {
    pub fn new(shared: Arc<StreamShared>, hub: Arc<HubState>, opening: Bytes, position: EventId) -> Self {
        Self { shared, hub, opening: Some(opening), last_seq: position.seq, epoch: position.epoch, ended: false }
    }

    /// Whether a queued frame is written: activities at or below the position already
    /// written are the overlap between replay and live and are skipped; a new-epoch notice is
    /// written once, by streams positioned in another epoch.
    fn admit(&mut self, q: &Queued) -> bool {
        if let Some(epoch) = q.new_epoch {
            // Seqs restart in a new epoch: forget the old position, and tell the client once
            // (streams opened in the new epoch know already).
            if epoch == self.epoch {
                return false;
            }
            self.epoch = epoch;
            self.last_seq = 0;
            self.hub.metrics().resyncs.get_or_create(&ReasonLabel { reason: "engine_outage" }).inc();
            return true;
        }
        if q.seq == SEQ_NONE {
            return true;
        }
        let fresh = q.seq > self.last_seq;
        self.last_seq = self.last_seq.max(q.seq);
        fresh
    }

    fn closed_frame(&self, reason: CloseReason) -> Bytes {
        let base = self.hub.config().retry;
        let spread = match reason {
            CloseReason::Shutdown => SHUTDOWN_RETRY_SPREAD,
            _ => base,
        };
        let jitter = rand::random_range(0..=spread.as_millis() as u64);
        Bytes::from(encode_closed(reason, base.as_millis() as u64 + jitter))
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(opening) = this.opening.take() {
            return Poll::Ready(Some(Ok(Frame::data(opening))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.shared.poll_next(cx.waker(), WRITE_BATCH_FRAMES_MAX) {
                Next::Pending => return Poll::Pending,
                Next::Close(reason) => {
                    this.ended = true;
                    this.hub.metrics().close(reason.as_str());
                    return Poll::Ready(Some(Ok(Frame::data(this.closed_frame(reason)))));
                }
                Next::Ping => return Poll::Ready(Some(Ok(Frame::data(this.hub.fanout().latest_ping())))),
                Next::One(q) => {
                    if this.admit(&q) {
                        this.hub.metrics().observe_delivery_lag(q.at);
                        return Poll::Ready(Some(Ok(Frame::data(q.bytes))));
                    }
                }
                Next::Frames(frames) => {
                    let oldest = frames[0].at;
                    let mut kept = frames.into_iter().filter(|q| this.admit(q));
                    let Some(first) = kept.next() else { continue };
                    let bytes = match kept.next() {
                        None => first.bytes,
                        Some(second) => {
                            let mut buf = BytesMut::with_capacity(first.bytes.len() * 2);
                            buf.extend_from_slice(&first.bytes);
                            buf.extend_from_slice(&second.bytes);
                            kept.for_each(|q| buf.extend_from_slice(&q.bytes));
                            buf.freeze()
                        }
                    };
                    this.hub.metrics().observe_delivery_lag(oldest);
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.opening.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.shared.finish();
        self.hub.fanout().deregister(&self.shared);
        if !self.ended {
            self.hub.metrics().close("client_gone");
        }
    }
}
