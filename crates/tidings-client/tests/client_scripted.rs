//! The subscription against a scripted server that misbehaves on cue: exact statuses,
//! malformed frames, a stream that goes silent, a `closed` frame, a stop mid-stream.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::{Server, WAIT, connected, frame};
use tidings_client::{
    AuthScheme, Backoff, Cache, Client, CloseReason, Disconnect, Error, Event, Key, Resolver, Subscription, TokenError, TypeSpelling,
};

fn fast() -> Backoff {
    Backoff { base: Duration::from_millis(10), cap: Duration::from_millis(50) }
}

fn subscribe(server: &Server) -> Subscription {
    Client::builder(server.url()).token("tok").backoff(fast()).subscribe().unwrap()
}

async fn next(sub: &mut Subscription) -> Result<Event, Error> {
    tokio::time::timeout(WAIT, sub.next()).await.expect("no item").expect("stream ended")
}

async fn next_ok(sub: &mut Subscription) -> Event {
    next(sub).await.unwrap_or_else(|e| panic!("terminal error {e}"))
}

#[tokio::test]
async fn resumes_with_the_last_id_and_a_fresh_token() {
    let mut server = Server::start().await;
    let n = Arc::new(AtomicU32::new(0));
    let tokens = n.clone();
    let mut sub = Client::builder(server.url())
        .token_provider(move || {
            let i = tokens.fetch_add(1, Ordering::SeqCst);
            async move { Ok(format!("tok-{i}")) }
        })
        .auth_scheme(AuthScheme::Token)
        .backoff(fast())
        .subscribe()
        .unwrap();

    let mut c = server.accept().await;
    assert_eq!(c.request_line(), "GET /events/stream HTTP/1.1");
    assert_eq!(c.header("authorization").as_deref(), Some("Token tok-0"));
    assert_eq!(c.header("accept").as_deref(), Some("text/event-stream"));
    assert_eq!(c.header("last-event-id"), None);
    c.start_stream().await;
    c.write(b"retry: 10\n\n").await;
    c.write(&frame(Some("e-0"), &connected(15_000))).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { id: Some(id), .. } if id == "e-0"));
    drop(c);
    assert!(matches!(next_ok(&mut sub).await, Event::Reconnecting { attempt: 1, cause: Disconnect::Ended, .. }));

    // The id of `connected` alone is a position to resume from.
    let mut c = server.accept().await;
    assert_eq!(c.header("authorization").as_deref(), Some("Token tok-1"));
    assert_eq!(c.header("last-event-id").as_deref(), Some("e-0"));
    c.start_stream().await;
    c.write(&frame(None, &connected(15_000))).await;
    let activity = r#"{"type":"activity","data":{"n":1,"extra":{"kept":true}},"invalidate":[["a"]]}"#;
    c.write(&frame(Some("e-1"), activity)).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { .. }));
    match next_ok(&mut sub).await {
        Event::Activity { id, data, invalidate, remove } => {
            assert_eq!(id.as_deref(), Some("e-1"));
            assert_eq!(data, json!({"n":1,"extra":{"kept":true}}));
            assert_eq!(invalidate, vec![vec![json!("a")]]);
            assert!(remove.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // A half-written frame is not an event and does not move the position.
    c.write(b"id: e-2\ndata: {\"type\":\"activity\",\"data\":{}}").await;
    drop(c);
    assert!(matches!(next_ok(&mut sub).await, Event::Reconnecting { .. }));
    let c = server.accept().await;
    assert_eq!(c.header("last-event-id").as_deref(), Some("e-1"));
    sub.stop().await;
}

#[tokio::test]
async fn unauthorized_stops_for_good() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    let body = r#"{"error":{"code":"unauthorized","message":"invalid token"}}"#;
    server.accept().await.respond("401 Unauthorized", &[("content-type", "application/json")], body).await;
    match next(&mut sub).await {
        Err(Error::Unauthorized { body: got }) => assert_eq!(got, body),
        other => panic!("{other:?}"),
    }
    assert!(sub.next().await.is_none());
    server.assert_no_request(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn forbidden_and_other_client_errors_stop() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    server.accept().await.respond("403 Forbidden", &[], "no").await;
    assert!(matches!(next(&mut sub).await, Err(Error::Forbidden { .. })));

    let mut sub = subscribe(&server);
    server.accept().await.respond("404 Not Found", &[], "nope").await;
    assert!(matches!(next(&mut sub).await, Err(Error::Rejected { status: 404, .. })));
    assert!(sub.next().await.is_none());
    server.assert_no_request(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn server_errors_retry_with_growing_attempts_then_connect() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    for attempt in 1..=3 {
        server.accept().await.respond("500 Internal Server Error", &[], "").await;
        match next_ok(&mut sub).await {
            Event::Reconnecting { attempt: a, delay, cause } => {
                assert_eq!((a, cause), (attempt, Disconnect::Status(500)));
                assert!(delay <= Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
    }
    let mut c = server.accept().await;
    c.start_stream().await;
    c.write(&frame(Some("x-0"), &connected(15_000))).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { .. }));
}

#[tokio::test]
async fn retry_after_sets_the_minimum_delay() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    server.accept().await.respond("503 Service Unavailable", &[("retry-after", "1")], "{}").await;
    match next_ok(&mut sub).await {
        Event::Reconnecting { delay, cause: Disconnect::Status(503), .. } => assert_eq!(delay, Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    let started = tokio::time::Instant::now();
    server.accept().await;
    assert!(started.elapsed() >= Duration::from_millis(900), "reconnected after {:?}", started.elapsed());
}

#[tokio::test]
async fn superseded_and_revoked_stop_after_the_closed_event() {
    for reason in [CloseReason::Superseded, CloseReason::Revoked] {
        let mut server = Server::start().await;
        let mut sub = subscribe(&server);
        let mut c = server.accept().await;
        c.start_stream().await;
        c.write(&frame(Some("e-0"), &connected(15_000))).await;
        c.write(&frame(None, &format!(r#"{{"type":"closed","reason":"{}"}}"#, reason.as_str()))).await;
        assert!(matches!(next_ok(&mut sub).await, Event::Connected { .. }));
        assert!(matches!(next_ok(&mut sub).await, Event::Closed { reason: r, retry_ms: None } if r == reason.as_str()));
        assert_eq!(next(&mut sub).await, Err(Error::Closed { reason }));
        assert!(sub.next().await.is_none());
        server.assert_no_request(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn shutdown_close_reconnects_no_sooner_than_retry_ms() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    let mut c = server.accept().await;
    c.start_stream().await;
    c.write(&frame(Some("e-0"), &connected(15_000))).await;
    c.write(&frame(None, r#"{"type":"closed","reason":"shutdown","retry_ms":300}"#)).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { .. }));
    assert!(matches!(next_ok(&mut sub).await, Event::Closed { retry_ms: Some(300), .. }));
    match next_ok(&mut sub).await {
        Event::Reconnecting { delay, cause: Disconnect::Closed(r), .. } => {
            assert_eq!(r, "shutdown");
            assert_eq!(delay, Duration::from_millis(300), "retry_ms above the ceiling is the delay");
        }
        other => panic!("{other:?}"),
    }
    // The client ends the connection itself after `closed`, without waiting for the hub.
    assert!(c.closed_by_client(Duration::from_secs(2)).await);
    assert_eq!(server.accept().await.header("last-event-id").as_deref(), Some("e-0"));
}

#[tokio::test]
async fn invalid_frames_are_skipped_and_the_stream_goes_on() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    let mut c = server.accept().await;
    c.start_stream().await;
    c.write(&frame(Some("e-0"), &connected(15_000))).await;
    c.write(b"data: not json\n\n").await;
    c.write(b"data: {\"type\":\"activity\"}\n\n").await; // no data
    c.write(b"data: {\"type\":\"activity\",\"data\":{},\"invalidate\":\"nope\"}\n\n").await;
    c.write(b"data: {\"no_type\":1}\n\n").await;
    c.write(b"data: {\"type\":\"from_the_future\",\"x\":1}\n\n").await;
    c.write(b"event: other\ndata: {\"type\":\"ping\",\"timestamp\":\"t\"}\n\n").await;
    c.write(b"data: \xff\xfe\n\n").await;
    let mut huge = b"data: ".to_vec();
    huge.resize(tidings_client::sse::EVENT_BYTES_MAX + 100, b'x');
    huge.extend_from_slice(b"\n\n");
    c.write(&huge).await;
    c.write(&frame(Some("e-1"), r#"{"type":"activity","data":{"ok":true},"invalidate":[]}"#)).await;
    c.write(&frame(None, r#"{"type":"ping","timestamp":"t"}"#)).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { .. }));
    assert!(matches!(next_ok(&mut sub).await, Event::Activity { id: Some(id), .. } if id == "e-1"));
    assert_eq!(next_ok(&mut sub).await, Event::Ping);
}

#[tokio::test]
async fn a_silent_connection_is_dropped_after_two_and_a_half_heartbeats() {
    let mut server = Server::start().await;
    let mut sub = subscribe(&server);
    let mut c = server.accept().await;
    c.start_stream().await;
    c.write(&frame(Some("e-0"), &connected(200))).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { heartbeat: Some(h), .. } if h == Duration::from_millis(200)));
    // Pings keep it alive...
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.write(&frame(None, r#"{"type":"ping","timestamp":"t"}"#)).await;
        assert_eq!(next_ok(&mut sub).await, Event::Ping);
    }
    // ...silence with the socket still open does not.
    let started = tokio::time::Instant::now();
    match next_ok(&mut sub).await {
        Event::Reconnecting { cause: Disconnect::Stalled(after), .. } => assert_eq!(after, Duration::from_millis(500)),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(490));
    assert!(c.closed_by_client(Duration::from_secs(2)).await, "the dead connection is closed");
    assert_eq!(server.accept().await.header("last-event-id").as_deref(), Some("e-0"));
}

#[tokio::test]
async fn stop_closes_the_stream_and_nothing_reconnects() {
    let mut server = Server::start().await;
    let sub = subscribe(&server);
    let mut c = server.accept().await;
    c.start_stream().await;
    c.write(&frame(Some("e-0"), &connected(15_000))).await;
    sub.stop().await;
    assert!(c.closed_by_client(Duration::from_secs(2)).await);
    server.assert_no_request(Duration::from_millis(1_500)).await;
}

#[tokio::test]
async fn stop_right_after_start_leaves_no_stream() {
    let mut server = Server::start().await;
    let sub = subscribe(&server);
    sub.stop().await;
    // The connection may or may not have been opened before the stop; none may stay open.
    if let Ok(Some(mut c)) = tokio::time::timeout(Duration::from_millis(500), async { Some(server.accept().await) }).await {
        c.start_stream().await;
        assert!(c.closed_by_client(Duration::from_secs(2)).await);
    }
    server.assert_no_request(Duration::from_millis(1_500)).await;
}

#[tokio::test]
async fn drop_during_backoff_cancels_the_reconnect() {
    let mut server = Server::start().await;
    let mut sub = Client::builder(server.url())
        .token("tok")
        .backoff(Backoff { base: Duration::from_millis(400), cap: Duration::from_millis(400) })
        .subscribe()
        .unwrap();
    server.accept().await.respond("503 Service Unavailable", &[("retry-after", "1")], "").await;
    assert!(matches!(next_ok(&mut sub).await, Event::Reconnecting { .. }));
    drop(sub);
    server.assert_no_request(Duration::from_millis(1_500)).await;
}

#[tokio::test]
async fn signed_out_token_provider_stops_and_unavailable_retries() {
    let mut server = Server::start().await;
    let n = Arc::new(AtomicU32::new(0));
    let calls = n.clone();
    let mut sub = Client::builder(server.url())
        .token_provider(move || {
            let i = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match i {
                    0 => Err(TokenError::Unavailable("refresh endpoint down".into())),
                    1 => Ok("tok".to_owned()),
                    _ => Err(TokenError::SignedOut),
                }
            }
        })
        .backoff(fast())
        .subscribe()
        .unwrap();
    assert!(matches!(next_ok(&mut sub).await, Event::Reconnecting { cause: Disconnect::Token(_), .. }));
    server.accept().await.respond("500 Internal Server Error", &[], "").await;
    assert!(matches!(next_ok(&mut sub).await, Event::Reconnecting { cause: Disconnect::Status(500), .. }));
    assert_eq!(next(&mut sub).await, Err(Error::SignedOut));
    server.assert_no_request(Duration::from_millis(300)).await;
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Cache for Recorder {
    fn invalidate(&self, key: &Key) {
        self.0.lock().unwrap().push(format!("invalidate {}", json!(key)));
    }
    fn remove(&self, key: &Key) {
        self.0.lock().unwrap().push(format!("remove {}", json!(key)));
    }
    fn invalidate_all(&self) {
        self.0.lock().unwrap().push("invalidate_all".into());
    }
}

#[tokio::test]
async fn cache_follows_hub_keys_local_resolution_and_resync() {
    let mut server = Server::start().await;
    let cache = Arc::new(Recorder::default());
    let mut sub = Client::builder(server.url())
        .token("tok")
        .backoff(fast())
        .cache(cache.clone())
        .resolver(Resolver::generic(TypeSpelling::KebabCase))
        .subscribe()
        .unwrap();
    let mut c = server.accept().await;
    c.start_stream().await;
    c.write(&frame(Some("e-0"), &connected(15_000))).await;
    c.write(&frame(Some("e-1"), r#"{"type":"activity","data":{"activity_type":"deleted","resource":{"type":"domain","id":3}},"invalidate":[["domains"]],"remove":[["domains",3]]}"#)).await;
    c.write(&frame(Some("e-2"), r#"{"type":"activity","data":{"activity_type":"deleted","resource":{"type":"Edge Application","id":9}},"invalidate":[]}"#)).await;
    c.write(&frame(Some("e-3"), r#"{"type":"resync","reason":"history_trimmed"}"#)).await;
    assert!(matches!(next_ok(&mut sub).await, Event::Connected { .. }));
    assert!(matches!(next_ok(&mut sub).await, Event::Activity { .. }));
    match next_ok(&mut sub).await {
        Event::Activity { invalidate, remove, .. } => {
            assert_eq!(invalidate, vec![vec![json!("edge-application")]]);
            assert_eq!(remove, vec![vec![json!("edge-application"), json!(9)]]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(next_ok(&mut sub).await, Event::Resync { reason, .. } if reason == "history_trimmed"));
    assert_eq!(
        *cache.0.lock().unwrap(),
        [
            r#"remove ["domains",3]"#,
            r#"invalidate ["domains"]"#,
            r#"remove ["edge-application",9]"#,
            r#"invalidate ["edge-application"]"#,
            "invalidate_all",
        ]
    );
}
