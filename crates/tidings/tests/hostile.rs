//! Hostile input against the live hub: oversized and streamed bodies, deep JSON, invalid
//! UTF-8, huge and malformed headers, CR/LF in `Last-Event-ID`, and a storm of thousands of
//! connections for one session. Each gets a clear answer, the hub keeps serving, and its
//! resident memory stays within a generous bound.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns what the hub answers until it closes, goes quiet, or 3 s pass
/// (a stream never ends by itself).
async fn raw(hub: &Hub, request: &[u8]) -> String {
    let mut sock = TcpStream::connect(&hub.addr).await.unwrap();
    // The hub may answer and close before reading everything; a failed write is fine.
    let _ = sock.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(1500), sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn still_serving(hub: &Hub) {
    let r = reqwest::get(hub.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200, "the hub keeps serving");
}

#[tokio::test]
async fn oversized_bodies_are_refused_declared_or_streamed() {
    let hub = Hub::start(&config("", "[limits]\npublish_body_bytes = 65536\n")).await;
    let client = reqwest::Client::new();
    // Declared too large: refused before the body is read.
    let big = vec![b' '; 10 * 1024 * 1024];
    let r = client.post(hub.url("/events")).bearer_auth(PUBLISHER_KEY).header("content-type", "application/json").body(big).send().await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "body_too_large");
    }
    // Streamed (chunked, no length) past the limit: 413 once the limit is crossed.
    let chunks = futures_util::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 16 * 1024])));
    let r = client
        .post(hub.url("/events"))
        .bearer_auth(PUBLISHER_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // Unauthenticated big bodies are refused before anything is read.
    let answer = raw(&hub, b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{").await;
    assert_eq!(status_of(&answer), Some(401), "{answer:.200}");
    still_serving(&hub).await;
    assert_eq!(hub.metric("tidings_events_published_total").await, 0.0);
}

#[tokio::test]
async fn deep_json_invalid_utf8_and_wrong_shapes_get_4xx() {
    let hub = Hub::start(&config("", "")).await;
    let deep = |open: &str, close: &str, n: usize| format!("{{\"account\":\"acme\",\"data\":{{\"activity_type\":\"created\",\"x\":{}1{}}}}}", open.repeat(n), close.repeat(n));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (deep("[", "]", 100_000).into_bytes(), 422),
        (deep("{\"a\":", "}", 50_000).into_bytes(), 422),
        (format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes(), 422),
        (b"{\"account\":\"acme\",\"data\":{\"activity_type\":\"created\",\"s\":\"\xc3\x28\"}}".to_vec(), 400),
        (b"\xef\xbb\xbf{\"account\":\"acme\",\"data\":{\"activity_type\":\"created\"}}".to_vec(), 400),
        (b"{\"account\":\"acme\",\"data\":{\"activity_type\":\"created\",\"s\":\"\\ud800\"}}".to_vec(), 422),
        (b"{\"account\":\"acme\",\"account\":\"globex\",\"data\":{\"activity_type\":\"created\"}}".to_vec(), 422),
        (b"\0".to_vec(), 400),
        (b"{\"account\":\"acme\",\"data\":{\"activity_type\":\"created\"}} trailing".to_vec(), 400),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        let r = reqwest::Client::new()
            .post(hub.url("/events"))
            .bearer_auth(PUBLISHER_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let e: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(status, expected, "case {i}: {e}");
        assert!(e["error"]["field"].is_string(), "case {i}: the error names a field: {e}");
    }
    still_serving(&hub).await;
    assert_eq!(hub.metric("tidings_events_published_total").await, 0.0);
}

#[tokio::test]
async fn huge_and_malformed_headers_are_refused_and_the_hub_keeps_serving() {
    let hub = Hub::start(&config("", "")).await;
    let huge_value = format!("GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-alice\r\nX-Big: {}\r\n\r\n", "a".repeat(1024 * 1024));
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-alice\r\n{many}\r\n");
    let big_cookie = format!("GET /events/stream HTTP/1.1\r\nHost: x\r\nCookie: tidings_session={}\r\n\r\n", "c".repeat(64 * 1024));
    for (name, req) in [("one huge header", huge_value), ("500 headers", many)] {
        let answer = raw(&hub, req.as_bytes()).await;
        // Refused with 431 or the connection closed without a stream; never a 200.
        assert!(matches!(status_of(&answer), None | Some(400 | 431)), "{name}: {answer:.200}");
    }
    let answer = raw(&hub, big_cookie.as_bytes()).await;
    assert_eq!(status_of(&answer), Some(401), "an oversized credential is not looked at: {answer:.200}");
    // Bare CR or LF inside a Last-Event-ID header: the request is refused or the id is
    // treated as garbage; a frame is never split and the id never echoed.
    for id in ["1-1\rdata: {\"type\":\"activity\"}", "1-1\ndata: {\"type\":\"activity\"}", "1-1\0x", "\u{1b}[31m"] {
        let req = format!("GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-alice\r\nLast-Event-ID: {id}\r\n\r\n");
        let answer = raw(&hub, req.as_bytes()).await;
        match status_of(&answer) {
            Some(200) => {
                // A bare LF ends the header line in HTTP/1.1 parsing: the id is then `1-1`,
                // of no epoch of this hub. Either way the client is told to resync.
                assert!(answer.contains("\"type\":\"resync\""), "{id:?}: {answer}");
                assert!(!answer.contains("\"type\":\"activity\""), "{id:?}: {answer}");
                assert!(!answer.contains(id), "{id:?} echoed: {answer}");
            }
            other => assert!(matches!(other, None | Some(400)), "{id:?}: {answer:.200}"),
        }
    }
    still_serving(&hub).await;
}

/// Thousands of connections for one session: each new one supersedes the last, every old one
/// is told `superseded` and ends, and memory does not grow with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supersede_storm_from_one_token_stays_bounded() {
    const STORM: usize = 3_000;
    const CONCURRENCY: usize = 50;
    let hub = Hub::start(&config("", "")).await;
    // Warm up so allocator pools and lazy statics are counted in the baseline.
    for _ in 0..50 {
        let mut s = Sse::token(&hub, "tok-alice").await;
        s.next_within(T).await.unwrap();
    }
    let before = hub.rss_kib();
    let url = hub.url("/events/stream");
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = std::time::Instant::now();
    let mut opened = 0;
    let mut superseded = 0;
    let mut overtaken = 0;
    for _ in 0..STORM / CONCURRENCY {
        let mut wave = Vec::new();
        for _ in 0..CONCURRENCY {
            let req = client.get(&url).bearer_auth("tok-alice").header("accept", "text/event-stream");
            wave.push(tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                if resp.status() == 409 {
                    // Overtaken by a request of the same session that arrived later.
                    let body: serde_json::Value = resp.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "superseded");
                    return None;
                }
                let mut s = Sse::from_response(resp);
                assert_eq!(s.status, 200);
                let first = s.next_within(T).await.unwrap();
                assert_eq!(first.kind(), "connected");
                Some(s)
            }));
        }
        let mut streams = Vec::new();
        for w in wave {
            match w.await.unwrap() {
                Some(s) => streams.push(s),
                None => overtaken += 1,
            }
        }
        opened += streams.len();
        // All but (at most) the newest of this wave were superseded and end.
        for mut s in streams {
            loop {
                match tokio::time::timeout(Duration::from_millis(300), s.next()).await {
                    Ok(Some(e)) if e.kind() == "ping" => continue,
                    Ok(Some(e)) if e.kind() == "closed" => {
                        assert_eq!(e.data["reason"], "superseded");
                        superseded += 1;
                    }
                    Ok(Some(e)) => panic!("unexpected {:?}", e.data),
                    // Ended, or still open: the newest stream of the wave.
                    Ok(None) | Err(_) => {}
                }
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "storm took too long");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = hub.rss_kib();
    println!("supersede storm: {opened} streams, {superseded} superseded, {overtaken} overtaken (409), VmRSS {before} KiB -> {after} KiB");
    assert_eq!(opened + overtaken, STORM, "every request got a stream or a 409");
    assert!(superseded >= opened - STORM / CONCURRENCY, "every replaced stream was told: {superseded} of {opened}");
    assert!(hub.metric("tidings_streams_open").await <= 1.0);
    assert!(after < before + 64 * 1024, "memory grew from {before} KiB to {after} KiB");
    // The session still works.
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    hub.publish("acme", &[activity(1)]).await;
    assert_eq!(s.activities(1, T).await, vec![1]);
}

/// Publishing far more than the history keeps, with nobody reading, leaves memory bounded by
/// the history limits, not by what was published.
#[tokio::test]
async fn a_publish_flood_stays_within_the_history_bound() {
    let hub = Hub::start(&config("", "[history]\nmax_events = 200\n")).await;
    let padding = "p".repeat(4096);
    let batch = |from: u64| -> Vec<serde_json::Value> {
        (from..from + 100)
            .map(|n| {
                let mut a = activity(n);
                a["padding"] = padding.clone().into();
                a
            })
            .collect()
    };
    for i in 0..10 {
        hub.publish("acme", &batch(i * 100)).await;
    }
    let before = hub.rss_kib();
    for i in 10..110 {
        hub.publish(&format!("acc-{}", i % 5), &batch(i * 100)).await;
    }
    let after = hub.rss_kib();
    // 10,000 events of ~4 KiB (40 MiB) were published; 5 accounts × 200 events are kept.
    println!("publish flood: VmRSS {before} KiB -> {after} KiB");
    assert!(after < before + 32 * 1024, "memory grew from {before} KiB to {after} KiB");
}

/// A stream request whose client is gone by the time the hub would register it (a reconnect
/// that raced a cut connection: the request was read, then the hub was slow to get to it)
/// must not supersede the session's live stream. The live client would
/// be told `superseded` and stop for good, while the ghost stream writes into a dead socket.
/// A slow introspection answer makes "the hub was slow to get to it" deterministic here.
#[tokio::test]
async fn a_request_from_a_client_already_gone_does_not_supersede_the_live_stream() {
    use axum::{Json, Router, routing::post};
    let app = Router::new().route(
        "/introspect",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            Json(serde_json::json!({"active": true, "account": "acme", "user": "alice", "session": "s-alice"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let introspection = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hub = Hub::start(&config("", &format!("[auth.introspection]\nurl = \"http://{introspection}/introspect\"\n"))).await;
    let mut live = Sse::token(&hub, "tok-alice").await;
    live.next_within(T).await.unwrap();

    // Same session through the slow provider; the client gives up before the hub answers.
    let mut ghost = TcpStream::connect(&hub.addr).await.unwrap();
    ghost.write_all(b"GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer opaque-alice\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(ghost);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    hub.publish("acme", &[activity(1)]).await;
    let next = live.next_non_ping(T).await.unwrap();
    assert_eq!(next.kind(), "activity", "the live stream was replaced by a ghost: {:?}", next.data);
}
