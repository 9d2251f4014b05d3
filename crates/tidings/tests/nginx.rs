//! The documented nginx setup, run: Debian's nginx with `deploy/nginx/tidings-locations.conf`
//! in front of the real hub. Events arrive unbuffered (latency through nginx and direct, side
//! by side, printed), a stream stays open through silences longer than nginx's read timeout
//! thanks to heartbeats, `Last-Event-ID` resume and `closed` pass through, and the client's
//! address reaches the hub's logs through `X-Forwarded-For` only when nginx is a trusted
//! proxy.
//!
//! nginx's default `proxy_read_timeout` is 60 s and the shipped file says 1 h; here it is cut
//! to 2 s (the one change made to the shipped file) and the hub's heartbeat to 500 ms, so a
//! silence longer than the read timeout takes seconds to test, not minutes.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;
use tokio::process::{Child, Command};

/// nginx's read timeout in the test, in place of the shipped `1h`.
const READ_TIMEOUT_SECS: u64 = 2;
/// Where the test's clients connect from: not nginx's own address (127.0.0.1), so the hub's
/// logs show which of the two they name.
const CLIENT_IP: [u8; 4] = [127, 0, 0, 2];
/// What a client claims in its own `X-Forwarded-For`: never to be believed.
const SPOOFED: &str = "203.0.113.7";

fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDINGS_NGINX") {
        return path.into();
    }
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx is required by this test and was not found (Debian: apt-get install nginx; or set TIDINGS_NGINX)");
}

/// The shipped locations file with the read timeout cut to [`READ_TIMEOUT_SECS`].
fn shipped_locations() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/tidings-locations.conf");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(text.matches("proxy_read_timeout 1h;").count(), 1, "the shipped file sets the stream's read timeout once");
    text.replace("proxy_read_timeout 1h;", &format!("proxy_read_timeout {READ_TIMEOUT_SECS}s;"))
}

/// A running nginx (one process, no daemon) proxying to one hub; killed on drop.
struct Nginx {
    _child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(hub: &Hub) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("tidings-locations.conf"), shipped_locations()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream tidings {{
        server {hub};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        include {d}/tidings-locations.conf;
    }}
}}
"#,
            hub = hub.addr,
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { _child: child, port, dir };
        let deadline = Instant::now() + T;
        while !reqwest::get(nginx.url("/healthz")).await.is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "nginx does not proxy /healthz: {}", nginx.error_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// A stream through nginx, from [`CLIENT_IP`], claiming [`SPOOFED`] as its address.
    async fn stream(&self, token: &str, last_event_id: Option<&str>) -> Sse {
        let client = reqwest::Client::builder().local_address(IpAddr::from(CLIENT_IP)).build().unwrap();
        let mut req = client
            .get(self.url("/events/stream"))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .header("x-forwarded-for", SPOOFED);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let sse = Sse::from_response(req.send().await.unwrap());
        assert_eq!(sse.status, 200, "{}", self.error_log());
        sse
    }
}

/// One hub behind one nginx.
async fn proxied(extra: &str) -> (Hub, Nginx) {
    let hub = Hub::start_logged(&config(extra, ""), "tidings_hub=debug").await;
    let nginx = Nginx::start(&hub).await;
    (hub, nginx)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn behind_nginx_events_flow_unbuffered_resume_and_close_and_logs_name_the_client() {
    // The shared config's heartbeat is 500 ms, under a quarter of the read timeout.
    let (hub, nginx) = proxied("trusted_proxies = [\"127.0.0.1\"]").await;

    // Unbuffered: each event through nginx arrives about when it arrives directly.
    let mut direct = Sse::token(&hub, "tok-alice").await;
    let mut via = nginx.stream("tok-alice-2", None).await;
    assert_eq!(direct.next_within(T).await.unwrap().kind(), "connected");
    assert_eq!(via.next_within(T).await.unwrap().kind(), "connected");
    let (mut lat_direct, mut lat_via) = (Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for n in 1..=30 {
        let sent = Instant::now();
        ids.extend(hub.publish("acme", &[activity(n)]).await);
        let (d, v) = tokio::join!(
            async { (direct.activities(1, T).await, sent.elapsed()) },
            async { (via.activities(1, T).await, sent.elapsed()) },
        );
        assert_eq!((d.0, v.0), (vec![n], vec![n]));
        lat_direct.push(d.1);
        lat_via.push(v.1);
    }
    // Per event, through nginx minus direct, in ms (negative when nginx's copy came first).
    let mut extra: Vec<f64> = lat_via.iter().zip(&lat_direct).map(|(v, d)| v.as_secs_f64() * 1e3 - d.as_secs_f64() * 1e3).collect();
    extra.sort_by(f64::total_cmp);
    let (m_direct, m_via, m_extra) = (median(lat_direct), median(lat_via.clone()), extra[extra.len() / 2]);
    eprintln!(
        "publish to arrival, median of 30: direct {m_direct:?}, through nginx {m_via:?}; nginx minus direct per event, median {m_extra:+.3} ms; max through nginx {:?}",
        lat_via.iter().max().unwrap()
    );
    // A sanity bound only (timings are measured, not asserted): a buffering proxy holds small
    // events until its buffer fills or the stream ends, which is never within a second.
    assert!(lat_via.iter().all(|l| *l < Duration::from_secs(1)), "an event took {:?} through nginx", lat_via.iter().max());

    // Idle past nginx's read timeout: heartbeats keep the stream open.
    let idle = Duration::from_secs(READ_TIMEOUT_SECS * 5 / 2);
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < idle {
        let e = via.next_within(T).await.expect("the stream stays open through the silence");
        assert_eq!(e.kind(), "ping", "{:?}", e.data);
        pings += 1;
    }
    assert!(pings >= 3, "{pings} pings in {idle:?}");
    hub.publish("acme", &[activity(31)]).await;
    assert_eq!(via.activities(1, T).await, vec![31], "still live after {idle:?} of silence");

    // Resume through nginx: Last-Event-ID reaches the hub, the replay comes back.
    drop(via);
    let mut resumed = nginx.stream("tok-alice-2", Some(&ids[27])).await;
    let connected = resumed.next_within(T).await.unwrap();
    assert_eq!((connected.kind(), connected.data["resumed"].as_bool()), ("connected", Some(true)), "{:?}", connected.data);
    assert_eq!(resumed.activities(3, T).await, vec![29, 30, 31]);

    // `closed` passes through, and the stream then ends.
    let revoked = reqwest::Client::new()
        .post(hub.url("/sessions/revoke"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&serde_json::json!({"account": "acme", "session": "s-alice-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let closed = resumed.next_non_ping(T).await.expect("a closed frame through nginx");
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("revoked")));
    assert!(resumed.next_within(T).await.is_none(), "the stream ends after closed");

    // At shutdown: `closed` `shutdown` with its jittered retry, through nginx.
    let mut last = nginx.stream("tok-alice-2", None).await;
    assert_eq!(last.next_within(T).await.unwrap().kind(), "connected");
    hub.sigterm();
    let closed = last.next_non_ping(T).await.expect("a closed frame through nginx");
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("shutdown")));
    assert!(closed.data["retry_ms"].as_u64().is_some(), "{:?}", closed.data);

    // nginx is trusted: the hub names the client nginx saw, never what the client claimed.
    let logs = hub.logs();
    let client = std::net::Ipv4Addr::from(CLIENT_IP);
    let opened: Vec<&str> = logs.lines().filter(|l| l.contains("stream opened") && l.contains("s-alice-2")).collect();
    assert_eq!(opened.len(), 3, "{logs}");
    assert!(opened.iter().all(|l| l.contains(&format!("client={client}"))), "{opened:#?}");
    assert!(!logs.contains(SPOOFED), "a client's own X-Forwarded-For reached the logs:\n{logs}");
}

#[tokio::test]
async fn behind_nginx_without_heartbeats_a_silent_stream_is_cut_and_an_untrusted_proxy_is_the_client() {
    // The control: a heartbeat far above nginx's read timeout. nginx ends the silent stream,
    // which is what heartbeats prevent above.
    // The shared config's heartbeat (500 ms) replaced by 30 s.
    let text = config("", "").replacen("heartbeat = \"500ms\"", "heartbeat = \"30s\"", 1);
    let hub = Hub::start_logged(&text, "tidings_hub=debug").await;
    let nginx = Nginx::start(&hub).await;
    let mut via = nginx.stream("tok-alice", None).await;
    assert_eq!(via.next_within(T).await.unwrap().kind(), "connected");
    let started = Instant::now();
    let end = via.next_within(Duration::from_secs(READ_TIMEOUT_SECS) + T).await;
    let after = started.elapsed();
    assert!(end.is_none(), "expected nginx to end the silent stream, got {end:?}");
    assert!(after >= Duration::from_secs(READ_TIMEOUT_SECS) - Duration::from_millis(100), "ended after {after:?}");
    eprintln!("without heartbeats nginx ended the stream after {after:?} (proxy_read_timeout {READ_TIMEOUT_SECS}s)");
    assert!(nginx.error_log().contains("upstream timed out"), "{}", nginx.error_log());

    // No trusted proxies: the hub logs nginx's address, ignoring X-Forwarded-For.
    let logs = hub.logs();
    let opened: Vec<&str> = logs.lines().filter(|l| l.contains("stream opened")).collect();
    assert_eq!(opened.len(), 1, "{logs}");
    assert!(opened[0].contains("client=127.0.0.1"), "{}", opened[0]);
    assert!(!logs.contains(SPOOFED) && !logs.contains("client=127.0.0.2"), "{logs}");
}
