//! A scripted HTTP/1.1 server on 127.0.0.1:0 for client tests where a real hub cannot be
//! made to misbehave on cue: malformed frames, a stream that stalls, exact status codes.
//! Each accepted connection is handed to the test, which writes the response by hand.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Bound on how long a test waits for anything; a hang becomes a failure, not a stuck run.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    /// Dropping the server aborts the accept loop.
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Server {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some((head, body)) = read_request(&mut stream).await {
                        let _ = tx.send(Conn { head, body, stream });
                    }
                });
            }
        });
        Self { addr, conns, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request, or a panic after [`WAIT`].
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv()).await.expect("no request arrived").unwrap()
    }

    /// Asserts that no request arrives within `quiet`.
    pub async fn assert_no_request(&mut self, quiet: Duration) {
        if let Ok(Some(conn)) = tokio::time::timeout(quiet, self.conns.recv()).await {
            panic!("unexpected request: {}", conn.head.lines().next().unwrap_or(""));
        }
    }
}

pub struct Conn {
    pub head: String,
    pub body: Vec<u8>,
    pub stream: TcpStream,
}

impl Conn {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Starts an event stream; its body ends when the connection closes.
    pub async fn start_stream(&mut self) {
        self.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n").await;
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Writes `text` and ignores a client that has gone away.
    pub async fn try_write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// A complete response with a body.
    pub async fn respond(mut self, status: &str, headers: &[(&str, &str)], body: &str) {
        let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.write(head.as_bytes()).await;
        self.write(body.as_bytes()).await;
    }

    /// Waits until the client closes the connection (read returns EOF or an error).
    pub async fn closed_by_client(&mut self, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// One SSE frame as the hub writes it.
pub fn frame(id: Option<&str>, json: &str) -> Vec<u8> {
    match id {
        Some(id) => format!("id: {id}\nevent: message\ndata: {json}\n\n"),
        None => format!("event: message\ndata: {json}\n\n"),
    }
    .into_bytes()
}

pub fn connected(heartbeat_ms: u64) -> String {
    format!(r#"{{"type":"connected","client_id":"c1","timestamp":"2026-01-01T00:00:00Z","heartbeat_ms":{heartbeat_ms}}}"#)
}

pub mod hub;
