//! HTTP/1.1 on the wire, byte for byte: kept-alive connections, a stream on a connection that
//! served other requests first, the chunked framing of a stream and of its end, requests the
//! hub's own HTTP/1 path hands to hyper mid-connection (bodies, HTTP/1.0), clients that leave.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

/// A raw connection that reads responses one at a time.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(hub: &Hub) -> Conn {
        Conn { sock: TcpStream::connect(&hub.addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// Reads until `buf` holds `needle`; returns everything up to and including it.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(at) = find(&self.buf, needle.as_bytes()) {
                let rest = self.buf.split_off(at + needle.len());
                return String::from_utf8(std::mem::replace(&mut self.buf, rest)).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within {T:?}; got {:?}", String::from_utf8_lossy(&self.buf)))
                .unwrap();
            assert!(n > 0, "connection closed before {needle:?}; got {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one complete response with a `content-length` body.
    async fn response(&mut self) -> (u16, String, String) {
        let head = self.until("\r\n\r\n").await;
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        while self.buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(T, self.sock.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed mid-body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let rest = self.buf.split_off(len);
        let body = String::from_utf8(std::mem::replace(&mut self.buf, rest)).unwrap();
        (status, head, body)
    }

    /// Whether the hub closes the connection within `T`, once what is buffered is read.
    async fn closed_by_hub(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        matches!(tokio::time::timeout(T, self.sock.read(&mut chunk)).await, Ok(Ok(0) | Err(_)))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

fn stream_request(token: &str) -> Vec<u8> {
    format!("GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_then_a_stream_with_chunked_framing() {
    let hub = Hub::start(&config("", "")).await;
    let mut c = Conn::open(&hub).await;
    // Two requests pipelined in one write, then one more: three answers, in order.
    c.send(&[HEALTHZ, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"].concat()).await;
    let (s1, head, body) = c.response().await;
    assert_eq!((s1, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    assert_eq!(c.response().await.0, 200);
    c.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.0, 404);

    c.send(&stream_request("tok-alice")).await;
    let head = c.until("\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream\r\n") && head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    c.until("\"type\":\"connected\"").await;
    c.until("\r\n").await;
    hub.publish("acme", &[activity(7)]).await;
    // One chunk: its hex size line, then exactly that many bytes holding the whole frame.
    let chunk = c.until("\"type\":\"activity\"").await;
    let frame_start = chunk.rfind("\r\n").map_or(0, |i| i + 2);
    let size_line_end = chunk[..frame_start - 2].rfind("\r\n").map_or(0, |i| i + 2);
    let size = usize::from_str_radix(&chunk[size_line_end..frame_start - 2], 16).expect("a chunk size line before the frame");
    let rest = c.until("\n\n\r\n").await;
    assert_eq!(chunk.len() - frame_start + rest.len() - 2, size, "the frame fills its chunk: {chunk:?} {rest:?}");

    // Revoking the session ends the stream: `closed`, then the last chunk.
    let resp = reqwest::Client::new()
        .post(hub.url("/sessions/revoke"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&serde_json::json!({"account": "acme", "session": "s-alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let end = c.until("\r\n0\r\n\r\n").await;
    assert!(end.contains("\"reason\":\"revoked\""), "{end}");
    // The connection is still usable afterwards.
    c.send(HEALTHZ).await;
    assert_eq!(c.response().await.0, 200);
}

#[tokio::test]
async fn requests_with_bodies_and_http_1_0_are_served_on_the_same_connection() {
    let hub = Hub::start(&config("", "")).await;
    let mut sse = Sse::token(&hub, "tok-alice").await;
    sse.next_within(T).await.unwrap();
    let mut c = Conn::open(&hub).await;
    c.send(HEALTHZ).await;
    assert_eq!(c.response().await.0, 200);
    // A publish (a body) after a GET on the same connection, then a GET again.
    let body = serde_json::json!({"account": "acme", "data": activity(1)}).to_string();
    let post = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISHER_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send(post.as_bytes()).await;
    let (status, _, answer) = c.response().await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(sse.activities(1, T).await, vec![1]);
    c.send(HEALTHZ).await;
    assert_eq!(c.response().await.0, 200);

    let mut old = Conn::open(&hub).await;
    old.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let (status, head, _) = old.response().await;
    assert_eq!(status, 200, "{head}");
    assert!(old.closed_by_hub().await, "HTTP/1.0 without keep-alive is closed after the answer");
}

#[tokio::test]
async fn connection_close_is_honoured_and_a_client_that_leaves_frees_its_stream() {
    let hub = Hub::start(&config("", "")).await;
    let mut c = Conn::open(&hub).await;
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(c.response().await.0, 200);
    assert!(c.closed_by_hub().await, "Connection: close ends the connection after the answer");

    let mut streams = Vec::new();
    for token in ["tok-alice", "tok-alice-2", "tok-bob"] {
        let mut c = Conn::open(&hub).await;
        c.send(&stream_request(token)).await;
        c.until("\"type\":\"connected\"").await;
        streams.push(c);
    }
    assert_eq!(hub.metric("tidings_streams_open").await, 3.0);
    drop(streams);
    let deadline = tokio::time::Instant::now() + T;
    while hub.metric("tidings_streams_open").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "streams of clients that left are still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An idle stream is noticed too when its client only half-closes: nothing is written
    // to it, yet it ends.
    let mut c = Conn::open(&hub).await;
    c.send(&stream_request("tok-alice")).await;
    c.until("\"type\":\"connected\"").await;
    c.sock.shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while hub.metric("tidings_streams_open").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "a half-closed client's stream is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
