//! HTTP/1.1 connections served by the hub itself, so that an open event stream costs a socket,
//! its queue and a small task, and nothing else.
//!
//! A hyper HTTP/1 connection keeps its read and write buffers (8 KiB and more) and a large
//! connection state for as long as the connection lives; for an SSE stream that lives for
//! hours and carries a few hundred bytes a minute, that was most of the hub's memory per
//! stream. Here the connection task reads a request head into a buffer it frees once the head
//! is parsed (with `httparse`, as hyper does), hands the request to the same axum router, and
//! writes the response straight to the socket: a body with a known size at once, any other
//! body (the event stream) as chunks, one vectored write per chunk.
//!
//! Only what is simple is served here: `GET` requests of HTTP/1.1 with no body, no `Upgrade`
//! and no `Expect`, whose head fits in [`HEAD_BYTES_MAX`]. Anything else (other methods,
//! bodies, HTTP/2, HTTP/1.0, malformed or oversized heads) is handed to hyper together with
//! the bytes already read, and hyper serves the rest of that connection, with its own errors
//! (400, 431) exactly as before.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::HubState;
use crate::client_addr::PeerAddr;
use crate::fanout::WriterLink;
use crate::metrics::Metrics;
use crate::timeouts::WriteStall;

/// Largest request head served here; larger heads go to hyper, which applies its own limit.
pub(crate) const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most headers in a request served here.
const HEADERS_MAX: usize = 64;
/// First read buffer for a head; grows up to [`HEAD_BYTES_MAX`].
const HEAD_BUF_INITIAL: usize = 1024;
/// How long a connection may take to send a complete request head (also the idle time
/// allowed between requests on a kept-alive connection).
pub(crate) const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a client may send while its event stream is open (a pipelined next request) before
/// the connection is closed.
const PIPELINED_BYTES_MAX: usize = HEAD_BYTES_MAX;

/// Handle to a connection served by hyper, put in its requests' extensions: lets the fan-out
/// drop a stream's connection when it does not flush its `closed` frame in time. Connections
/// served here have none: their stream's response carries a [`WriterLink`] instead, which
/// the chunk writer polls.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionHandle(pub CancellationToken);

/// What every connection task needs; shared by all of them.
#[derive(Debug)]
pub(crate) struct Shared {
    pub router: axum::Router,
    pub hyper: auto::Builder<TokioExecutor>,
    /// For its drain signal (once cancelled, kept-alive connections end after their current
    /// response), its metrics and `limits.response_write_timeout` (read per response: a reload
    /// may change it).
    pub hub: Arc<HubState>,
    /// Cancelled when the shutdown grace period is over: every connection still open ends,
    /// whatever it is doing. Watched by each phase of a connection while it runs, and by the
    /// fan-out for open streams, so that no connection holds a token of its own.
    pub hard_stop: CancellationToken,
}

impl Shared {
    fn draining(&self) -> &CancellationToken {
        self.hub.draining()
    }

    fn metrics(&self) -> &Arc<Metrics> {
        self.hub.metrics()
    }

    fn response_write_timeout(&self) -> Duration {
        self.hub.config().limits.response_write_timeout
    }
}

/// Serves one accepted connection until it ends; `connections_open`, which the accept loop
/// raised, is lowered when it does.
/// It ends early when the shutdown grace period is over (`Shared::hard_stop`), and when the
/// fan-out drops its stream (a closing stream that does not flush).
#[allow(clippy::manual_async_fn, reason = "an `async fn` keeps its arguments twice; see the comment inside")]
pub(crate) fn serve_connection(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, watcher: Watcher) -> impl Future<Output = ()> + Send {
    // An `async move` block rather than an `async fn`: an `async fn` moves its arguments into
    // locals, and the state machine kept room for both copies (80 bytes in every idle stream).
    async move {
        let _open = OpenConnection(shared.metrics());
        let mut buf: Vec<u8> = Vec::new();
        // Each phase runs boxed and is freed when it ends; what stays for as long as a stream
        // is open is this loop's few locals and the small chunk writer. (Phases written inline,
        // with their `select!`s and timers, made this task 1.9 KiB, the largest cost of an idle
        // stream.)
        loop {
            // Everything up to the answer is scoped to this block, so that none of it keeps
            // room in the task while the answer (an event stream: hours) is being written.
            let (writing, keep_alive) = {
                let (req, consumed) = match Box::pin(next_head(&socket, &mut buf, &shared)).await {
                    None | Some(Head::Closed) => return,
                    Some(Head::HandOff) => return Box::pin(hand_off(socket, peer, buf, &shared, watcher)).await,
                    Some(Head::Parsed(req, consumed)) => (req, consumed),
                };
                buf.drain(..consumed);
                if buf.is_empty() {
                    // An open stream keeps no read buffer.
                    buf = Vec::new();
                }
                // The request and its response are locals of this boxed phase only: a local of
                // this loop keeps its room in the task across every later `await`, moved out or
                // not (the request and response held here took a third of an idle stream's task).
                match Box::pin(until_hard_stop(&shared, answer(&shared, req, peer, &socket, &mut buf))).await.flatten() {
                    None => return,
                    // An event stream is bounded by its queue instead (slow_consumer).
                    Some(Answered::Stream(body, keep_alive, link)) => (write_stream(&shared, &socket, body, link, &mut buf), keep_alive),
                    Some(Answered::Written(written, keep_alive)) => (Box::pin(std::future::ready(written)) as Writing<'_>, keep_alive),
                }
            };
            match writing.await {
                Ok(Written::Complete) => {}
                Ok(Written::Streaming(_)) => unreachable!("a streaming body is written to its end above"),
                Ok(Written::ClientGone | Written::Dropped) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "connection ended while writing a response");
                    return;
                }
            }
            if !keep_alive || shared.draining().is_cancelled() {
                return;
            }
        }
    }
}

/// Lowers `connections_open` when the connection's service ends. The accept loop raises it
/// as it accepts (see `serve.rs`), so that a connection is counted before its task first runs.
struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// `phase`, or `None` once the shutdown grace period is over (the phase is dropped then).
async fn until_hard_stop<T>(shared: &Shared, phase: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        out = phase => Some(out),
        () = shared.hard_stop.cancelled() => None,
    }
}

/// Writes an event stream's body as chunks until it ends, the client goes away or the
/// connection is dropped. A stream of the hub's own carries a [`WriterLink`], through which
/// the fan-out drops it; any other (a host route's) is watched for the end of the grace
/// period here.
fn write_stream<'a>(shared: &'a Shared, socket: &'a TcpStream, body: Body, link: Option<WriterLink>, buf: &'a mut Vec<u8>) -> Writing<'a> {
    match link {
        Some(link) => ChunkWriter::new(socket, body, buf, Some(link)).boxed(),
        None => Box::pin(async move { until_hard_stop(shared, ChunkWriter::new(socket, body, buf, None)).await.unwrap_or(Ok(Written::Dropped)) }),
    }
}

/// Writing an answer's rest, boxed: the connection task holds a pointer to it.
type Writing<'a> = Pin<Box<dyn Future<Output = io::Result<Written>> + Send + 'a>>;

/// What [`answer`] did with a request; each with whether the connection may be kept.
enum Answered {
    /// An event stream's head is written; its body is to go out as chunks, dropped through
    /// the link when the fan-out says so.
    Stream(Body, bool, Option<WriterLink>),
    /// Any other answer, written whole (or how writing it failed).
    Written(io::Result<Written>, bool),
}

/// Routes a request and writes its answer, all but an event stream's body; `None` when the
/// connection is to end (the client went away first, or did not take the answer in time).
async fn answer(shared: &Shared, req: Box<Request<Body>>, peer: SocketAddr, socket: &TcpStream, buf: &mut Vec<u8>) -> Option<Answered> {
    let mut req = *req;
    let mut keep_alive = !wants_close(req.headers());
    req.extensions_mut().insert(PeerAddr(peer));
    let mut response = respond(shared, req, socket, buf).await?;
    keep_alive &= !wants_close(response.headers());
    if is_event_stream(response.headers()) {
        let link = response.extensions_mut().remove::<WriterLink>();
        return Some(match write_response(socket, response).await {
            Ok(Written::Streaming(body)) => Answered::Stream(body, keep_alive, link),
            other => Answered::Written(other, keep_alive),
        });
    }
    // Any answer but a stream must be taken by the client within the bound.
    Some(Answered::Written(write_bounded(socket, response, buf, shared).await?, keep_alive))
}

/// The next request head, within [`HEAD_READ_TIMEOUT`]; `None` when the connection is to
/// end (an error, a timeout, or draining between requests).
async fn next_head(socket: &TcpStream, buf: &mut Vec<u8>, shared: &Shared) -> Option<Head> {
    let idle = buf.is_empty();
    tokio::select! {
        head = tokio::time::timeout(HEAD_READ_TIMEOUT, read_head(socket, buf)) => match head {
            Ok(Ok(h)) => Some(h),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection ended while reading a request");
                None
            }
            Err(_) => {
                // An idle kept-alive connection ending is routine; a partial head is not.
                if !buf.is_empty() {
                    shared.metrics().timed_out("head");
                }
                None
            }
        },
        () = shared.draining().cancelled(), if idle => None,
        () = shared.hard_stop.cancelled() => None,
    }
}

/// The router's answer; `None` when the client went away first. A client that goes away
/// meanwhile cancels its request (as hyper does): a request whose client is gone must not
/// open a stream, nor supersede the session's live one.
async fn respond(shared: &Shared, req: Request<Body>, socket: &TcpStream, buf: &mut Vec<u8>) -> Option<Response<Body>> {
    tokio::select! {
        response = shared.router.clone().call(req) => {
            let Ok(response) = response;
            Some(response)
        }
        () = until_client_gone(socket, buf) => None,
    }
}

/// A whole answer other than a stream, within `limits.response_write_timeout`; `None` (and
/// counted) past it.
async fn write_bounded(socket: &TcpStream, response: Response<Body>, buf: &mut Vec<u8>, shared: &Shared) -> Option<io::Result<Written>> {
    let whole = async {
        match write_response(socket, response).await {
            Ok(Written::Streaming(body)) => ChunkWriter::new(socket, body, buf, None).await,
            other => other,
        }
    };
    match tokio::time::timeout(shared.response_write_timeout(), whole).await {
        Ok(written) => Some(written),
        Err(_) => {
            shared.metrics().timed_out("response");
            None
        }
    }
}

enum Head {
    /// A request served here, and how many bytes of the buffer its head took.
    Parsed(Box<Request<Body>>, usize),
    /// Not for this server: give the connection and the bytes read so far to hyper.
    HandOff,
    /// The client closed the connection between requests.
    Closed,
}

async fn read_head(socket: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Parse::Complete(req, n) => return Ok(Head::Parsed(req, n)),
                Parse::Foreign => return Ok(Head::HandOff),
                Parse::Partial if buf.len() >= HEAD_BYTES_MAX => return Ok(Head::HandOff),
                Parse::Partial => {}
            }
        }
        socket.readable().await?;
        let start = buf.len();
        // Grows by doubling, from a small first read up to the bound.
        let room = if start == 0 { HEAD_BUF_INITIAL } else { start.min(HEAD_BYTES_MAX - start) };
        buf.resize(start + room, 0);
        let read = socket.try_read(&mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) if start == 0 => return Ok(Head::Closed),
            // A client that stops mid-head: let hyper answer what it sent.
            Ok(0) => return Ok(Head::HandOff),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

enum Parse {
    Complete(Box<Request<Body>>, usize),
    Partial,
    Foreign,
}

fn parse_head(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let n = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Foreign,
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return Parse::Foreign;
    }
    let Some(path) = parsed.path.filter(|p| p.starts_with('/')) else { return Parse::Foreign };
    let mut req = Box::new(Request::new(Body::empty()));
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    let Ok(uri) = path.parse() else { return Parse::Foreign };
    *req.uri_mut() = uri;
    let map = req.headers_mut();
    for h in parsed.headers.iter() {
        let Ok(name) = header::HeaderName::from_bytes(h.name.as_bytes()) else { return Parse::Foreign };
        if name == header::CONTENT_LENGTH && h.value != b"0" {
            return Parse::Foreign;
        }
        if matches!(name, header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT) {
            return Parse::Foreign;
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else { return Parse::Foreign };
        map.append(name, value);
    }
    Parse::Complete(req, n)
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

fn wants_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))))
}

enum Written {
    Complete,
    /// The client closed the connection while a stream was open.
    ClientGone,
    /// The fan-out dropped the stream's connection, or the shutdown grace period is over.
    Dropped,
    /// The head of a body of unknown length is written; the body goes out as chunks
    /// ([`ChunkWriter`]).
    Streaming(Body),
}

async fn write_response(socket: &TcpStream, response: Response<Body>) -> io::Result<Written> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = http_body::Body::size_hint(&body).exact();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    if bodiless {
        head.extend_from_slice(b"\r\n");
        return write_all(socket, &mut [IoSlice::new(&head)]).await.map(|()| Written::Complete);
    }
    if let Some(len) = exact {
        let bytes = body.collect().await.map_err(io::Error::other)?.to_bytes();
        debug_assert_eq!(bytes.len() as u64, len);
        head.extend_from_slice(format!("content-length: {}\r\n\r\n", bytes.len()).as_bytes());
        return write_all(socket, &mut [IoSlice::new(&head), IoSlice::new(&bytes)]).await.map(|()| Written::Complete);
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    drop(parts);
    write_all(socket, &mut [IoSlice::new(&head)]).await.map(|()| Written::Streaming(body))
}

/// The last chunk of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes a body of unknown length as chunks (one vectored write per chunk) until it ends or
/// the client goes away, noticing that by polling the socket's read readiness meanwhile.
///
/// Written by hand rather than as an `async fn` with `select!`: it lives as long as the
/// stream, and as a plain struct it holds the socket, the body and the chunk being written
/// (about a hundred bytes) where the generated state machine with its readiness futures was
/// close to 700.
struct ChunkWriter<'a> {
    socket: &'a TcpStream,
    body: Body,
    /// The fan-out's say on whether the connection is to be dropped, for a stream of the hub's.
    link: Option<WriterLink>,
    /// What the client sent meanwhile (the start of its next request), up to a bound.
    pipelined: &'a mut Vec<u8>,
    /// The chunk being written and how much of it went out; `None` between chunks.
    out: Option<Chunk>,
    /// The body ended: the last chunk is being written.
    ending: bool,
}

struct Chunk {
    size: [u8; 18],
    size_len: u8,
    data: Bytes,
    written: usize,
}

impl Chunk {
    fn new(data: Bytes) -> Self {
        let mut size = [0u8; 18];
        let size_len = chunk_size_line(data.len(), &mut size) as u8;
        Self { size, size_len, data, written: 0 }
    }

    fn last() -> Self {
        Self { size: [0; 18], size_len: 0, data: Bytes::from_static(LAST_CHUNK), written: 0 }
    }

    /// The three parts (size line, data, CRLF) still to write; the last chunk has no size
    /// line and no CRLF of its own.
    fn slices(&self) -> [&[u8]; 3] {
        let crlf: &[u8] = if self.size_len == 0 { b"" } else { b"\r\n" };
        let parts = [&self.size[..usize::from(self.size_len)], &self.data[..], crlf];
        let mut skip = self.written;
        parts.map(|p| {
            let cut = skip.min(p.len());
            skip -= cut;
            &p[cut..]
        })
    }
}

impl<'a> ChunkWriter<'a> {
    fn new(socket: &'a TcpStream, body: Body, pipelined: &'a mut Vec<u8>, link: Option<WriterLink>) -> Self {
        Self { socket, body, link, pipelined, out: None, ending: false }
    }

    fn boxed(self) -> Pin<Box<Self>> {
        Box::pin(self)
    }

    /// Writes what it can of the current chunk; `Ready` once it is all written.
    fn poll_flush_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(chunk) = self.out.as_mut() {
            let parts = chunk.slices();
            if parts.iter().all(|p| p.is_empty()) {
                self.out = None;
                break;
            }
            std::task::ready!(self.socket.poll_write_ready(cx))?;
            let slices = parts.map(IoSlice::new);
            match self.socket.try_write_vectored(&slices) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => chunk.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Future for ChunkWriter<'_> {
    type Output = io::Result<Written>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Woken by the fan-out through the body's queue, which shares this task's waker.
        if this.link.as_ref().is_some_and(WriterLink::is_dropped) {
            return Poll::Ready(Ok(Written::Dropped));
        }
        loop {
            // A client that closed its side is gone; bytes it sent are kept as its next request.
            match this.socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if client_gone(this.socket, this.pipelined)? {
                        return Poll::Ready(Ok(Written::ClientGone));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if this.poll_flush_chunk(cx)?.is_pending() {
                // Waiting for the client to take a chunk, the body is not polled: the fan-out
                // must be able to wake this task to drop a client that stopped reading.
                if let Some(link) = &this.link {
                    if link.poll_dropped(cx.waker()).is_ready() {
                        return Poll::Ready(Ok(Written::Dropped));
                    }
                }
                return Poll::Pending;
            }
            if this.ending {
                return Poll::Ready(Ok(Written::Complete));
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => {
                    this.ending = true;
                    this.out = Some(Chunk::last());
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                        this.out = Some(Chunk::new(data));
                    }
                }
            }
        }
    }
}

/// Reads what a client sent while its stream was open: end of file means it is gone; bytes
/// are kept as the start of its next request, up to a bound.
fn client_gone(socket: &TcpStream, pipelined: &mut Vec<u8>) -> io::Result<bool> {
    let mut probe = [0u8; 256];
    match socket.try_read(&mut probe) {
        Ok(0) => Ok(true),
        Ok(n) if pipelined.len() + n <= PIPELINED_BYTES_MAX => {
            pipelined.extend_from_slice(&probe[..n]);
            Ok(false)
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Completes when the client closes its side (or the connection fails).
async fn until_client_gone(socket: &TcpStream, pipelined: &mut Vec<u8>) {
    loop {
        if socket.readable().await.is_err() || client_gone(socket, pipelined).unwrap_or(true) {
            return;
        }
    }
}

/// Writes `len` in hexadecimal followed by CRLF into `out`; returns the bytes used.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

async fn write_all(socket: &TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        socket.writable().await?;
        match socket.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives the connection to hyper for the rest of its life, the bytes already read first.
async fn hand_off(socket: TcpStream, peer: SocketAddr, read: Vec<u8>, shared: &Shared, watcher: Watcher) {
    let router = shared.router.clone();
    // Hyper writes this connection's streams: the fan-out drops one through this token.
    let conn = shared.hard_stop.child_token();
    let handle = ConnectionHandle(conn.clone());
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(handle.clone());
        req.extensions_mut().insert(PeerAddr(peer));
        router.clone().call(req)
    });
    let stall = WriteStall::new(shared.response_write_timeout(), shared.metrics().clone());
    let io = TokioIo::new(Rewind { read: Bytes::from(read), inner: socket, stall });
    let connection = watcher.watch(shared.hyper.serve_connection(io, svc).into_owned());
    tokio::select! {
        served = Box::pin(connection) => if let Err(e) = served {
            tracing::debug!(error = %e, "connection ended with an error");
        },
        () = conn.cancelled() => {}
    }
}

/// A socket with bytes already read from it put back in front, whose writes may wait for the
/// client at most `limits.response_write_timeout` each.
#[derive(Debug)]
struct Rewind {
    read: Bytes,
    inner: TcpStream,
    stall: WriteStall,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(out.remaining());
            out.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall.check(cx, outcome)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall.check(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut out = [0u8; 18];
        for (len, want) in [(1usize, "1\r\n"), (15, "f\r\n"), (16, "10\r\n"), (255, "ff\r\n"), (4096, "1000\r\n"), (usize::MAX, "ffffffffffffffff\r\n")] {
            let n = chunk_size_line(len, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), want);
        }
    }

    #[test]
    fn only_plain_bodiless_gets_are_served_here() {
        let ok = |raw: &str| matches!(parse_head(raw.as_bytes()), Parse::Complete(..));
        let foreign = |raw: &str| matches!(parse_head(raw.as_bytes()), Parse::Foreign);
        assert!(ok("GET /events/stream?x=1 HTTP/1.1\r\nHost: a\r\nCookie: s=1\r\n\r\n"));
        assert!(ok("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parse::Partial));
        assert!(foreign("POST /events HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(foreign("GET / HTTP/1.0\r\n\r\n"));
        assert!(foreign("GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
        assert!(foreign("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(foreign("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"));
        assert!(foreign("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
        assert!(foreign("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(foreign("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"));
        let many: String = (0..HEADERS_MAX + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(foreign(&format!("GET / HTTP/1.1\r\n{many}\r\n")));
    }

    #[test]
    fn connection_close_is_recognised_among_tokens() {
        let mut h = http::HeaderMap::new();
        assert!(!wants_close(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Close"));
        assert!(wants_close(&h));
    }
}
