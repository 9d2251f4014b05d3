//! Black-box harness: starts the real `tidings` binary on 127.0.0.1:0 with a TOML config and
//! talks to it over HTTP, as any user would. Shared by the integration test files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tidings_testkit::hub::{Listening, NotListening, Output, wait_listening};
use tokio::process::{Child, Command};

pub mod postgres;
pub mod redis;
pub mod sentinel;

pub const PUBLISHER_KEY: &str = "pub-secret-key";

/// A config with two accounts and three sessions, plus `extra` TOML appended at the top level
/// (before the tables), and `tables` appended at the end.
pub fn config(extra: &str, tables: &str) -> String {
    format!(
        r#"heartbeat = "500ms"
{extra}
[auth]
cookie = "tidings_session"

[[auth.tokens]]
token = "tok-alice"
account = "acme"
user = "alice@example.com"
session = "s-alice"

[[auth.tokens]]
token = "tok-alice-2"
account = "acme"
user = "alice@example.com"
session = "s-alice-2"

[[auth.tokens]]
token = "tok-alice-3"
account = "acme"
user = "alice@example.com"
session = "s-alice-3"

[[auth.tokens]]
token = "tok-bob"
account = "globex"
user = "bob@example.com"
session = "s-bob"

[[auth.publishers]]
key = "{PUBLISHER_KEY}"
{tables}
"#
    )
}

/// A running hub process; killed on drop.
pub struct Hub {
    pub child: Child,
    pub addr: String,
    pub output: Output,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// `TIDINGS_LOG` of the process (and of a restarted one).
    pub log_filter: String,
}

impl Hub {
    pub async fn start(config_toml: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config_toml, "127.0.0.1:0").await
    }

    pub async fn start_in(dir: tempfile::TempDir, config_toml: &str, listen: &str) -> Hub {
        match Self::try_start_in(dir, config_toml, listen).await {
            Ok(hub) => hub,
            Err(_) => panic!("hub exited before listening on {listen}"),
        }
    }

    /// Like [`Hub::start_in`], but gives the directory back when the process exits before
    /// listening (for example when the address is still taken).
    pub async fn try_start_in(dir: tempfile::TempDir, config_toml: &str, listen: &str) -> Result<Hub, tempfile::TempDir> {
        Self::try_start_logged(dir, config_toml, listen, "info").await
    }

    /// Starts a hub logging with this `TIDINGS_LOG` filter.
    pub async fn start_logged(config_toml: &str, log_filter: &str) -> Hub {
        match Self::try_start_logged(tempfile::tempdir().unwrap(), config_toml, "127.0.0.1:0", log_filter).await {
            Ok(hub) => hub,
            Err(_) => panic!("hub exited before listening"),
        }
    }

    pub async fn try_start_logged(dir: tempfile::TempDir, config_toml: &str, listen: &str, log_filter: &str) -> Result<Hub, tempfile::TempDir> {
        Self::launch(dir, config_toml, listen, log_filter, None).await
    }

    /// Starts a hub whose process may open at most `open_files` files (soft and hard limit).
    pub async fn start_with_open_files_in(dir: tempfile::TempDir, config_toml: &str, open_files: u64) -> Hub {
        match Self::launch(dir, config_toml, "127.0.0.1:0", "info", Some(open_files)).await {
            Ok(hub) => hub,
            Err(_) => panic!("hub exited before listening"),
        }
    }

    async fn launch(dir: tempfile::TempDir, config_toml: &str, listen: &str, log_filter: &str, open_files: Option<u64>) -> Result<Hub, tempfile::TempDir> {
        let config_path = dir.path().join("hub.toml");
        std::fs::write(&config_path, config_toml).unwrap();
        let bin = env!("CARGO_BIN_EXE_tidings");
        let mut command = match open_files {
            None => Command::new(bin),
            Some(n) => {
                // The shell's `ulimit -n` sets the soft and the hard limit, then execs the hub.
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
        };
        let mut child = command
            .args(["serve", "--listen", listen, "--config"])
            .arg(&config_path)
            .env("TIDINGS_LOG", log_filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tidings");
        match wait_listening(&mut child, Duration::from_secs(30)).await {
            Ok(Listening { addr, output }) => Ok(Hub { child, addr, output, dir, config_path, log_filter: log_filter.to_owned() }),
            Err(NotListening::Exited(_)) => Err(dir),
            Err(e) => panic!("hub did not start: {e}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Publishes a raw body; returns status and JSON answer.
    pub async fn publish_raw(&self, body: &str, content_type: &str, key: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.url("/events"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Publishes activities to `account`; returns their ids.
    pub async fn publish(&self, account: &str, activities: &[Value]) -> Vec<String> {
        let body: Vec<Value> = activities.iter().map(|a| serde_json::json!({"account": account, "data": a})).collect();
        let (status, answer) = self.publish_raw(&Value::Array(body).to_string(), "application/json", PUBLISHER_KEY).await;
        assert_eq!(status, 202, "publish failed: {answer}");
        answer["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Rewrites the configuration file the hub was started with (for a reload).
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config_path, toml).unwrap();
    }

    /// Sends SIGHUP and waits until the hub logged the outcome: a reload or its refusal.
    /// Returns what it logged from the signal on.
    pub async fn reload(&self) -> String {
        let from = self.output.lock().unwrap().len();
        let pid = self.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let said = self.output.lock().unwrap()[from..].join("\n");
            if said.contains("configuration reloaded") || said.contains("reload refused") {
                return said;
            }
            assert!(tokio::time::Instant::now() < deadline, "no reload outcome logged after SIGHUP: {said}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin page's address as the hub printed it (`admin page: http://…/admin/`, the line
    /// after `listening on`).
    pub async fn admin_addr(&self) -> String {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let found = self.output.lock().unwrap().iter().find_map(|l| Some(l.split("admin page: http://").nth(1)?.split("/admin/").next()?.to_owned()));
            if let Some(addr) = found {
                return addr;
            }
            assert!(tokio::time::Instant::now() < deadline, "no admin page line: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Calls the admin API (`/admin/api/<path>`) with `key`: a GET, or a POST of `body`.
    pub async fn admin_api(&self, key: Option<&str>, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("http://{}/admin/api/{path}", self.admin_addr().await);
        let client = reqwest::Client::new();
        let mut req = match body {
            Some(b) => client.post(url).json(b),
            None => client.get(url),
        };
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Waits until `/readyz` answers 200 (an engine with a server behind it, such as Redis,
    /// connects after the hub listens).
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if reqwest::get(self.url("/readyz")).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("readyz never answered 200; logs:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the hub process, in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("hub is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Stops this process (SIGTERM, or SIGKILL when `kill`), waits for it to exit, and starts
    /// a new one with the same configuration on the same address. Returns the old output.
    pub async fn restart(&mut self, kill: bool) -> String {
        if kill {
            self.sigkill();
        } else {
            self.sigterm();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("hub exits").unwrap();
        assert!(kill || status.success(), "SIGTERM exit: {status:?}\n{}", self.logs());
        let old_logs = self.logs();
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        // Same directory (files the config names stay); the port was just freed, and a new
        // listener may briefly fail to bind it.
        let mut dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        for _ in 0..50 {
            match Hub::try_start_logged(dir, &config, &self.addr, &self.log_filter.clone()).await {
                Ok(next) => {
                    *self = next;
                    return old_logs;
                }
                Err(d) => dir = d,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("hub did not restart on {}", self.addr);
    }
}

/// An activity with a recognisable marker.
pub fn activity(n: u64) -> Value {
    serde_json::json!({
        "activity_type": "edited",
        "resource": {"type": "edge_application", "name": format!("app {n}")},
        "metadata": {"id": n, "n": n},
        "description": format!("app {n} was edited"),
    })
}

/// One SSE event as the test reads it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub data: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }
    /// The `n` marker of an activity made by [`activity`].
    pub fn n(&self) -> u64 {
        self.data["data"]["metadata"]["n"].as_u64().expect("activity with n")
    }
}

/// A test-side SSE reader for the hub's own frames (LF line endings, one data line).
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buf: String,
    pub retry: Option<u64>,
    pub last_id: Option<String>,
}

impl Sse {
    pub async fn connect(hub: &Hub, headers: &[(&str, &str)]) -> Sse {
        Self::connect_url(&hub.url("/events/stream"), headers).await
    }

    pub async fn connect_url(url: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = reqwest::Client::new().get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::from_response(req.send().await.unwrap())
    }

    /// Reads the stream of a response made by the caller (any method, headers or URL).
    pub fn from_response(resp: reqwest::Response) -> Sse {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Sse { status, headers, body: Some(resp.bytes_stream().boxed()), buf: String::new(), retry: None, last_id: None }
    }

    pub async fn token(hub: &Hub, token: &str) -> Sse {
        Self::connect(hub, &[("authorization", &format!("Bearer {token}"))]).await
    }

    pub async fn resume(hub: &Hub, token: &str, last_id: &str) -> Sse {
        Self::connect(hub, &[("authorization", &format!("Bearer {token}")), ("last-event-id", last_id)]).await
    }

    /// The next event, or None when the stream ended. Panics after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.next()).await.expect("timed out waiting for an event")
    }

    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = v.parse().ok();
                    } else {
                        assert!(line.is_empty() || line == "event: message", "unexpected line {line:?}");
                    }
                }
                if id.is_some() {
                    self.last_id.clone_from(&id);
                }
                if let Some(data) = data {
                    return Some(Event { id, data });
                }
                continue;
            }
            let chunk = self.body.as_mut()?.next().await;
            match chunk {
                Some(Ok(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                _ => {
                    self.body = None;
                    return None;
                }
            }
        }
    }

    /// The next raw chunk of the body as text (for non-stream answers), or None at its end.
    pub async fn raw_chunk(&mut self) -> Option<String> {
        if !self.buf.is_empty() {
            return Some(std::mem::take(&mut self.buf));
        }
        match tokio::time::timeout(T, self.body.as_mut()?.next()).await.expect("body within the timeout") {
            Some(Ok(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        }
    }

    /// Next event that is not a ping.
    pub async fn next_non_ping(&mut self, timeout: Duration) -> Option<Event> {
        loop {
            let e = self.next_within(timeout).await?;
            if e.kind() != "ping" {
                return Some(e);
            }
        }
    }

    /// Reads `count` activities (skipping pings), returning their markers.
    pub async fn activities(&mut self, count: usize, timeout: Duration) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < count {
            let e = self.next_non_ping(timeout).await.expect("stream ended early");
            assert_eq!(e.kind(), "activity", "expected an activity, got {:?}", e.data);
            out.push(e.n());
        }
        out
    }

    /// Asserts no activity arrives within `wait` (pings are fine).
    pub async fn expect_quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return,
                Ok(Some(e)) if e.kind() == "ping" => continue,
                Ok(other) => panic!("expected quiet, got {other:?}"),
            }
        }
    }
}

pub const T: Duration = Duration::from_secs(10);

/// Publishes activities `published + 1..=last` one request at a time while a session
/// resumes from `start` five times over; returns the markers the last (surviving) resume
/// received — earlier resumes of the same session are superseded.
pub async fn resume_while_publishing(hub: &Hub, start: &str, published: u64, last: u64) -> Vec<u64> {
    let publisher = {
        let url = hub.url("/events");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in published + 1..=last {
                let body = serde_json::json!({"account": "acme", "data": activity(n)});
                let r = client.post(&url).bearer_auth(PUBLISHER_KEY).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 202);
            }
        })
    };
    let mut resumes = Vec::new();
    for _ in 0..5 {
        let mut r = Sse::resume(hub, "tok-alice-2", start).await;
        r.next_within(T).await.unwrap();
        resumes.push(r);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    publisher.await.unwrap();
    resumes.last_mut().unwrap().activities(last as usize, T).await
}

/// `[history]` setting for [`replay_budget_holds`]: a 64 KiB replay budget.
pub const REPLAY_BUDGET_TOML: &str = "replay_max_bytes = 65536\n";

/// With `replay_max_bytes` at 64 KiB ([`REPLAY_BUDGET_TOML`]): a resume whose gap fits is
/// replayed exactly; one whose gap is larger gets `connected` at the head, `resync`
/// `replay_too_large` and then live events, and the hub counts that resync by reason.
pub async fn replay_budget_holds(hub: &Hub) {
    let padded = |n: u64| {
        let mut a = activity(n);
        a["padding"] = "p".repeat(8 * 1024).into();
        a
    };
    // 16 events of a little over 8 KiB: about 128 KiB retained, twice the budget.
    let ids = hub.publish("acme", &(1..=16).map(padded).collect::<Vec<_>>()).await;

    // After the 12th: 4 events, about 32 KiB, within the budget.
    let mut near = Sse::resume(hub, "tok-alice", &ids[11]).await;
    let connected = near.next_within(T).await.unwrap();
    assert_eq!((connected.kind(), connected.data["resumed"].as_bool()), ("connected", Some(true)));
    assert_eq!(near.activities(4, T).await, vec![13, 14, 15, 16]);
    drop(near);

    // After the 1st: 15 events, about 120 KiB, past the budget.
    let resyncs_before = hub.metric("tidings_resyncs_total{reason=\"replay_too_large\"}").await;
    let mut far = Sse::resume(hub, "tok-alice", &ids[0]).await;
    assert_eq!(far.status, 200);
    let connected = far.next_within(T).await.unwrap();
    assert_eq!((connected.kind(), connected.id.as_deref(), connected.data["resumed"].as_bool()), ("connected", Some(ids[15].as_str()), Some(false)));
    let resync = far.next_within(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("replay_too_large")));
    hub.publish("acme", &[activity(17)]).await;
    assert_eq!(far.activities(1, T).await, vec![17], "after the resync the stream is live from the head");
    assert_eq!(hub.metric("tidings_resyncs_total{reason=\"replay_too_large\"}").await, resyncs_before + 1.0);
}

/// `[history]` settings for [`account_byte_budget_holds`] and [`node_byte_budget_holds`]: 40 KiB
/// per account (four events of a little over 8 KiB fit, five do not) and 64 KiB for the node
/// (seven fit, eight do not).
pub const BYTE_BUDGET_TOML: &str = "max_bytes = 40960\nnode_max_bytes = 65536\n";

/// An activity padded past 8 KiB.
pub fn padded(n: u64) -> Value {
    let mut a = activity(n);
    a["padding"] = "p".repeat(8 * 1024).into();
    a
}

/// The decision a resume of `token` from `id` gets: `Ok(replayed activities)` when it resumed
/// (reading `expect` of them), `Err(resync reason)` otherwise.
pub async fn resume_outcome(hub: &Hub, token: &str, id: &str, expect: usize) -> Result<Vec<u64>, String> {
    let mut s = Sse::resume(hub, token, id).await;
    let connected = s.next_within(T).await.expect("connected");
    assert_eq!(connected.kind(), "connected");
    if connected.data["resumed"].as_bool() == Some(true) {
        return Ok(s.activities(expect, T).await);
    }
    let resync = s.next_within(T).await.expect("resync");
    assert_eq!(resync.kind(), "resync");
    Err(resync.data["reason"].as_str().unwrap_or("").to_owned())
}

/// With [`BYTE_BUDGET_TOML`]: eight padded events into one account leave the newest four; a
/// client that saw the fourth resumes exactly, one that saw only the third gets `resync`
/// `history_trimmed`. Returns the ids published.
pub async fn account_byte_budget_holds(hub: &Hub) -> Vec<String> {
    let ids = hub.publish("acme", &(1..=8).map(padded).collect::<Vec<_>>()).await;
    assert_eq!(resume_outcome(hub, "tok-alice", &ids[3], 4).await, Ok(vec![5, 6, 7, 8]));
    assert_eq!(resume_outcome(hub, "tok-alice", &ids[2], 0).await, Err("history_trimmed".to_owned()));
    ids
}

/// With [`BYTE_BUDGET_TOML`], after [`account_byte_budget_holds`] (acme holds events 5..=8): four
/// padded events into globex put the node past its budget, so the node's oldest event (acme's
/// 5) goes and nothing of globex does.
pub async fn node_byte_budget_holds(hub: &Hub, acme: &[String]) {
    hub.publish("globex", &(101..=104).map(padded).collect::<Vec<_>>()).await;
    assert_eq!(resume_outcome(hub, "tok-alice", &acme[4], 3).await, Ok(vec![6, 7, 8]));
    assert_eq!(resume_outcome(hub, "tok-alice", &acme[3], 0).await, Err("history_trimmed".to_owned()));
    assert_eq!(resume_outcome(hub, "tok-bob", &acme[7], 4).await, Ok(vec![101, 102, 103, 104]), "globex keeps all four");
}

/// Publishes activities numbered from 1, ten at a time and each padded to ~64 KiB (kernel and
/// connection buffers fill quickly), to `account` until the hub has evicted a slow consumer;
/// returns how many were published.
pub async fn publish_until_evicted(hub: &Hub, account: &str) -> u64 {
    let big = "x".repeat(64 * 1024);
    let mut published = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while hub.metric("tidings_slow_consumer_evictions_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "never evicted");
        let batch: Vec<_> = (published + 1..=published + 10)
            .map(|n| {
                let mut a = activity(n);
                a["padding"] = big.clone().into();
                a
            })
            .collect();
        hub.publish(account, &batch).await;
        published += 10;
    }
    published
}

/// Polls `metric` until it equals `want`, for up to `within`; returns the last value seen.
pub async fn metric_settles(hub: &Hub, metric: &str, want: f64, within: Duration) -> f64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = hub.metric(metric).await;
        if v == want || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes one event into each of `n` accounts named `<prefix><i>`, in one request.
pub async fn publish_to_many_accounts(hub: &Hub, prefix: &str, n: usize) {
    let body: Vec<Value> = (0..n).map(|i| serde_json::json!({"account": format!("{prefix}{i}"), "data": activity(i as u64)})).collect();
    let (status, answer) = hub.publish_raw(&Value::Array(body).to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "publish failed: {answer}");
}

/// With `history.max_age = "1s"`: accounts whose events aged out and that have no stream are
/// forgotten (the node holds only globex, which has one), and the old ids of a forgotten
/// account still get `resync` `history_trimmed`, never a silent gap, while a client that saw
/// its last event resumes exactly, also once the account has events again. Returns acme's
/// ids.
pub async fn idle_accounts_are_forgotten(hub: &Hub, count_accounts: bool) -> Vec<String> {
    let mut bob = Sse::token(hub, "tok-bob").await;
    bob.next_within(T).await.unwrap();
    // Other accounts first: acme's floor is then its own last id, whichever bucket it shares.
    publish_to_many_accounts(hub, "tenant-", 300).await;
    let acme = hub.publish("acme", &[activity(1), activity(2)]).await;
    hub.publish("globex", &[activity(3)]).await;
    assert_eq!(bob.activities(1, T).await, vec![3]);
    if count_accounts {
        assert_eq!(metric_settles(hub, "tidings_history_retained_events", 0.0, Duration::from_secs(10)).await, 0.0);
        assert_eq!(metric_settles(hub, "tidings_history_accounts", 1.0, Duration::from_secs(10)).await, 1.0, "only globex, which has a stream");
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(resume_outcome(hub, "tok-alice", &acme[0], 0).await, Err("history_trimmed".to_owned()), "never a silent gap");
    assert_eq!(resume_outcome(hub, "tok-alice", &acme[1], 0).await, Ok(vec![]), "its client saw everything");
    let more = hub.publish("acme", &[activity(4)]).await;
    assert_eq!(resume_outcome(hub, "tok-alice-2", &acme[1], 1).await, Ok(vec![4]));
    assert_eq!(resume_outcome(hub, "tok-alice-2", &acme[0], 0).await, Err("history_trimmed".to_owned()));
    assert!(!more.is_empty());
    acme
}

/// `[history]` for [`idempotent_publish_holds`]: five events per account, so a key's window
/// is easy to leave.
pub const IDEMPOTENCY_HISTORY_TOML: &str = "[history]\nmax_events = 5\n";

/// Publishes `items` (`(account, key, marker)`); returns the answer's `ids` and `duplicates`.
pub async fn publish_keyed(hub: &Hub, items: &[(&str, Option<&str>, u64)]) -> (Vec<String>, Vec<u64>) {
    let body: Vec<Value> = items.iter().map(|(account, key, n)| serde_json::json!({"account": account, "key": key, "data": activity(*n)})).collect();
    let (status, answer) = hub.publish_raw(&Value::Array(body).to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "publish failed: {answer}");
    let ids = answer["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let dups = answer.get("duplicates").map_or_else(Vec::new, |d| d.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect());
    (ids, dups)
}

/// With [`IDEMPOTENCY_HISTORY_TOML`]: an item whose key the account already had accepted is
/// answered with the first id, marked as a duplicate, and neither stored nor delivered; keys
/// are per account; a key repeated inside one batch is stored once; a key whose event left
/// the history window is new again; a bad key is refused with its field named.
pub async fn idempotent_publish_holds(hub: &Hub) {
    let mut alice = Sse::token(hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");
    let dups_before = hub.metric("tidings_publish_duplicates_total").await;

    let (first, dups) = publish_keyed(hub, &[("acme", Some("k1"), 1), ("acme", Some("k2"), 2), ("acme", None, 3)]).await;
    assert!(dups.is_empty(), "{dups:?}");
    let (again, dups) = publish_keyed(hub, &[("acme", Some("k1"), 4), ("acme", Some("k3"), 5), ("globex", Some("k1"), 6)]).await;
    assert_eq!(dups, vec![0], "only the first item was seen before");
    assert_eq!(again[0], first[0], "a duplicate answers the id its key got the first time");
    assert_ne!(again[1], first[0]);
    let (same_batch, dups) = publish_keyed(hub, &[("acme", Some("k4"), 7), ("acme", Some("k4"), 8)]).await;
    assert_eq!((dups, &same_batch[1]), (vec![1], &same_batch[0]));
    assert_eq!(alice.activities(5, T).await, vec![1, 2, 3, 5, 7], "4 and 8 were duplicates, never delivered");
    assert_eq!(hub.metric("tidings_publish_duplicates_total").await, dups_before + 2.0);

    // Five more events of acme push k1's event out of the five-event window.
    hub.publish("acme", &(9..=13).map(activity).collect::<Vec<_>>()).await;
    assert_eq!(alice.activities(5, T).await, (9..=13).collect::<Vec<_>>(), "nothing came between 7 and 9");
    let (late, dups) = publish_keyed(hub, &[("acme", Some("k1"), 14)]).await;
    assert!(dups.is_empty() && late[0] != first[0], "a key older than the window is new: {late:?} {dups:?}");
    assert_eq!(alice.activities(1, T).await, vec![14]);

    let body = r#"{"account":"acme","key":"","data":{"activity_type":"created"}}"#;
    let (status, answer) = hub.publish_raw(body, "application/json", PUBLISHER_KEY).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (422, Some("key")), "{answer}");
}
