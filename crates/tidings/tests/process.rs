//! The binary as a process: its output going nowhere, and its signals.
//!
//! `tidings serve` and `tidings demo` run with stdout and stderr on one pipe whose reader is
//! gone before the first line (`… 2>&1 | true`), leaves after the first lines
//! (`… 2>&1 | head -2`), or stays but never reads (a stalled log shipper). Whatever happens to
//! their output, they serve, live through SIGHUP, and on SIGTERM or SIGINT close their streams with
//! `closed` and exit within `limits.shutdown_grace`. And `tidings demo` refuses a non-loopback
//! address unless told it is unsafe.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Slack over `limits.shutdown_grace` for the process to exit: the log flush at exit (at most
/// 0.5 s) and a loaded machine.
const EXIT_SLACK: Duration = Duration::from_secs(3);

/// What happens to the pipe holding the process's stdout and stderr.
#[derive(Debug, Clone, Copy)]
enum Reader {
    /// Closed before the process writes anything.
    Gone,
    /// Reads this many lines, then closes (`| head -n`).
    Head(usize),
    /// Stays open and never reads.
    Stalled,
}

/// A `tidings` process on a known port (its stdout may never say which).
struct Proc {
    child: Child,
    port: u16,
    /// Kept open and unread for [`Reader::Stalled`].
    _stalled: Option<ChildStdout>,
}

impl Proc {
    async fn start(args: &[&str], reader: Reader, log: &str) -> Proc {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        // `exec … 2>&1`: the process itself (its pid is the child's) with stderr on the stdout pipe.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 2>&1")
            .arg(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .args(["--listen", &listen])
            .env("TIDINGS_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tidings");
        let stdout = child.stdout.take().unwrap();
        let stalled = match reader {
            Reader::Gone => None,
            Reader::Stalled => Some(stdout),
            Reader::Head(n) => {
                let mut lines = BufReader::new(stdout).lines();
                for _ in 0..n {
                    let line = tokio::time::timeout(T, lines.next_line()).await.expect("a start-up line").unwrap();
                    assert!(line.is_some(), "the process ended before writing {n} lines");
                }
                None
            }
        };
        let mut proc = Proc { child, port, _stalled: stalled };
        proc.wait_until_serving().await;
        proc
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tidings exited before serving: {status}");
            }
            if let Ok(r) = reqwest::get(self.url("/healthz")).await {
                assert_eq!(r.status(), 200);
                return;
            }
            assert!(Instant::now() < deadline, "tidings is not serving on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    /// The process still answers, promptly, after what was done to it.
    async fn still_serving(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "tidings exited");
        let r = tokio::time::timeout(T, reqwest::get(self.url("/healthz"))).await.expect("healthz answered in time").unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Waits for the process to exit by itself, at most `within`; it must exit with success.
    async fn exits_within(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("tidings still running {within:?} after the signal"))
            .unwrap();
        assert!(status.success(), "exit status {status}");
        started.elapsed()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shared configuration with a short grace period and a mapping that leaves unknown types
/// unresolved (each is logged once), in a file that outlives the process.
fn config_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, config("", "[limits]\nshutdown_grace = \"2s\"\n[mapping]\nprofile = \"azion-console\"\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Publishes activities whose resource types no mapping resolves: each new type is logged.
async fn publish_unresolved(p: &Proc, types: std::ops::Range<u32>) {
    let items: Vec<_> = types
        .map(|i| json!({"account": "acme", "data": {"activity_type": "created", "resource": {"type": format!("unmapped-{i:04}"), "id": i.to_string()}}}))
        .collect();
    let r = tokio::time::timeout(
        T,
        reqwest::Client::new().post(p.url("/events")).bearer_auth(PUBLISHER_KEY).json(&items).send(),
    )
    .await
    .expect("publish answered in time")
    .unwrap();
    assert_eq!(r.status(), 202);
}

/// With a configuration: a stream lives through logged publishes and SIGHUP, and SIGTERM (or
/// SIGINT) ends it with `closed` `shutdown` and the process within the grace period.
async fn serve_with_config(reader: Reader, stop: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let mut p = Proc::start(&["serve", "--config", &config], reader, "debug").await;
    let mut sse = Sse::connect_url(&p.url("/events/stream"), &[("authorization", "Bearer tok-alice")]).await;
    assert_eq!(sse.next_within(T).await.unwrap().kind(), "connected");
    // One logged line per new type: with a stalled reader, more than a pipe holds (64 KiB).
    publish_unresolved(&p, 0..1000).await;
    publish_unresolved(&p, 1000..1001).await;
    let mut activities = 0;
    while activities < 1001 {
        let e = sse.next_non_ping(T).await.expect("the stream stays open");
        assert_eq!(e.kind(), "activity");
        activities += 1;
    }
    p.signal("HUP");
    p.still_serving().await;
    hub_says_alive(&p).await;
    p.signal(stop);
    let closed = sse.next_non_ping(T).await.expect("a closed frame");
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("shutdown")), "{:?}", closed.data);
    p.exits_within(Duration::from_secs(2) + EXIT_SLACK).await;
}

/// The stream endpoint still authenticates (a request reaches the router and is answered).
async fn hub_says_alive(p: &Proc) {
    let r = reqwest::Client::new().get(p.url("/events/stream")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn serve_with_config_and_its_output_gone_serves_and_stops_on_sigterm() {
    serve_with_config(Reader::Gone, "TERM").await;
}

#[tokio::test]
async fn serve_with_config_after_head_left_serves_and_stops_on_sigint() {
    serve_with_config(Reader::Head(1), "INT").await;
}

#[tokio::test]
async fn serve_with_config_and_a_stalled_reader_serves_and_stops_on_sigterm() {
    serve_with_config(Reader::Stalled, "TERM").await;
}

/// Without a configuration: the dev banner is many lines, most of them written to no one.
#[tokio::test]
async fn serve_without_config_and_its_output_gone_serves_and_stops() {
    for (reader, stop) in [(Reader::Gone, "TERM"), (Reader::Head(2), "INT")] {
        let mut p = Proc::start(&["serve"], reader, "debug").await;
        hub_says_alive(&p).await;
        p.signal("HUP");
        p.still_serving().await;
        p.signal(stop);
        // No stream is open: nothing to wait for, whatever the (default, 10 s) grace.
        p.exits_within(EXIT_SLACK).await;
    }
}

/// `tidings demo | head -3`, and the demo with its output gone: signed-in pages keep their
/// stream and see changes; SIGTERM closes the stream and ends the demo within its 2 s grace.
#[tokio::test]
async fn demo_with_its_output_gone_serves_and_stops_on_sigterm() {
    for reader in [Reader::Head(3), Reader::Gone] {
        let mut p = Proc::start(&["demo", "--no-teammate", "--heartbeat", "1s"], reader, "debug").await;
        let client = reqwest::Client::new();
        let login = client.post(p.url("/demo/api/login")).json(&json!({"user": "alice"})).send().await.unwrap();
        assert_eq!(login.status(), 200);
        let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let mut sse = Sse::connect_url(&p.url("/events/stream"), &[("cookie", &cookie)]).await;
        assert_eq!(sse.next_within(T).await.unwrap().kind(), "connected");
        let created = client
            .post(p.url("/demo/api/applications"))
            .header("cookie", &cookie)
            .json(&json!({"name": "Made while nobody reads the logs"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
        assert_eq!(sse.next_non_ping(T).await.unwrap().kind(), "activity");
        p.signal("HUP");
        p.still_serving().await;
        p.signal("TERM");
        let closed = sse.next_non_ping(T).await.expect("a closed frame");
        assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("shutdown")));
        p.exits_within(Duration::from_secs(2) + EXIT_SLACK).await;
    }
}

/// SIGHUP with an unchanged file reloads it, changes nothing, and the stream it finds open
/// stays open (reloads that change something: `reload.rs`).
#[tokio::test]
async fn sighup_with_an_unchanged_file_changes_nothing() {
    let hub = Hub::start(&config("", "")).await;
    let mut sse = Sse::token(&hub, "tok-alice").await;
    sse.next_within(T).await.unwrap();
    for _ in 0..3 {
        let said = hub.reload().await;
        assert!(said.contains("configuration reloaded changes=nothing revoked=0"), "{said}");
    }
    hub.publish("acme", &[activity(1)]).await;
    assert_eq!(sse.activities(1, T).await, vec![1], "the stream outlives SIGHUP");
}

#[tokio::test]
async fn demo_refuses_a_non_loopback_address_unless_told_it_is_unsafe() {
    let bin = env!("CARGO_BIN_EXE_tidings");
    let refused = Command::new(bin).args(["demo", "--no-teammate", "--listen", "0.0.0.0:0"]).env("RUST_BACKTRACE", "0").output();
    let refused = tokio::time::timeout(T, refused).await.expect("refused at once").unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started on 0.0.0.0: {stderr}");
    assert!(refused.stdout.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&refused.stdout));
    for why in ["refusing to listen on 0.0.0.0:0", "public secret", "--unsafe-expose"] {
        assert!(stderr.contains(why), "{why:?} not in {stderr}");
    }

    // Loopback addresses other than 127.0.0.1 are loopback too.
    let mut loopback = Command::new(bin)
        .args(["demo", "--no-teammate", "--listen", "127.0.0.2:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    first_line_says_listening(&mut loopback).await;

    // Told explicitly: it listens, and says what that exposes.
    let mut exposed = Command::new(bin)
        .args(["demo", "--no-teammate", "--listen", "0.0.0.0:0", "--unsafe-expose"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    first_line_says_listening(&mut exposed).await;
    let mut stderr = BufReader::new(exposed.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(T, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("--unsafe-expose") {
                return line;
            }
        }
        panic!("no warning about --unsafe-expose");
    })
    .await
    .unwrap();
    assert!(warning.contains("WARN") && warning.contains("anyone"), "{warning}");
}

async fn first_line_says_listening(child: &mut Child) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(T, lines.next_line()).await.expect("a listening line").unwrap().unwrap_or_default();
    assert!(line.contains("demo listening on http://"), "{line}");
}
