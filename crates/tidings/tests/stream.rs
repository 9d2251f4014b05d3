//! The stream endpoint, black-box: frames, headers, credentials, tenancy, supersede, caps.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn frames_and_headers_follow_the_wire_protocol() {
    let hub = Hub::start(&config("", "")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache, no-store");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    assert!(s.headers.get("content-encoding").is_none());

    let connected = s.next_within(T).await.unwrap();
    assert_eq!(s.retry, Some(2000), "retry: hint precedes the first event");
    assert_eq!(connected.kind(), "connected");
    assert!(connected.data["client_id"].as_str().unwrap().starts_with("c_"));
    assert!(connected.data["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(connected.data["session_id"], "s-alice");
    assert_eq!(connected.data["resumed"], false);
    assert_eq!(connected.data["heartbeat_ms"], 500);
    assert!(connected.id.is_some(), "connected carries the starting position");

    let published = serde_json::json!({
        "user": {"email": "user@example.com", "name": "User Name"},
        "activity_type": "created",
        "resource": {"type": "edge_application", "name": "Application Name", "id": null},
        "parent": {"type": "edge_application", "id": 12345},
        "timestamp": "2026-03-03T19:58:56Z",
        "description": "Application Name was created",
        "metadata": {"id": 1772562194, "name": "Application Name", "last_editor": "user@example.com"},
        "unknown_field": {"nested": [1, 2.5, "x", null, true]}
    });
    let ids = hub.publish("acme", std::slice::from_ref(&published)).await;
    let ev = s.next_non_ping(T).await.unwrap();
    assert_eq!(ev.kind(), "activity");
    assert_eq!(ev.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(ev.data["data"], published, "every field reaches subscribers unchanged");
    assert!(ev.data["invalidate"].is_array());

    let ping = s.next_within(Duration::from_secs(3)).await.unwrap();
    assert_eq!(ping.kind(), "ping");
    assert!(ping.data["timestamp"].is_string());
    assert!(ping.id.is_none());
}

#[tokio::test]
async fn credentials_in_header_token_bearer_and_cookie() {
    let hub = Hub::start(&config("", "")).await;
    for headers in [
        vec![("authorization", "Token tok-alice")],
        vec![("authorization", "Bearer tok-alice")],
        vec![("cookie", "theme=dark; tidings_session=tok-alice")],
    ] {
        let mut s = Sse::connect(&hub, &headers).await;
        assert_eq!(s.status, 200, "{headers:?}");
        assert_eq!(s.next_within(T).await.unwrap().data["session_id"], "s-alice");
    }
}

#[tokio::test]
async fn configured_cookie_name_and_query_token() {
    let hub = Hub::start(&config("", "").replace("cookie = \"tidings_session\"", "cookie = \"console_sid\"\nquery_token = true")).await;
    let s = Sse::connect(&hub, &[("cookie", "tidings_session=tok-alice")]).await;
    assert_eq!(s.status, 401, "the default name no longer counts");
    let s = Sse::connect(&hub, &[("cookie", "console_sid=tok-alice")]).await;
    assert_eq!(s.status, 200);
    let s = Sse::connect_url(&hub.url("/events/stream?access_token=tok-bob"), &[]).await;
    assert_eq!(s.status, 200);
}

#[tokio::test]
async fn query_token_is_off_by_default() {
    let hub = Hub::start(&config("", "")).await;
    let s = Sse::connect_url(&hub.url("/events/stream?access_token=tok-alice"), &[]).await;
    assert_eq!(s.status, 401);
}

async fn error_of(hub: &Hub, headers: &[(&str, &str)]) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new().get(hub.url("/events/stream"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/json", "errors are JSON");
    (status, resp.json().await.unwrap(), h)
}

#[tokio::test]
async fn refusals_are_json_with_the_right_status() {
    let hub = Hub::start(&config("", "")).await;
    let (status, body, _) = error_of(&hub, &[]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_credentials")));
    let (status, body, _) = error_of(&hub, &[("authorization", "Bearer nope")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_credentials")));
    let (status, _, _) = error_of(&hub, &[("authorization", &format!("Bearer {PUBLISHER_KEY}"))]).await;
    assert_eq!(status, 403, "publisher keys cannot subscribe");
    let (status, body, _) = error_of(&hub, &[("authorization", "Bearer tok-alice"), ("accept", "application/json")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (406, Some("not_acceptable")));
    let huge = format!("Bearer {}", "x".repeat(9000));
    let (status, _, _) = error_of(&hub, &[("authorization", &huge)]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_account_never_sees_another_accounts_events() {
    let hub = Hub::start(&config("", "")).await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    let mut bob = Sse::token(&hub, "tok-bob").await;
    alice.next_within(T).await.unwrap();
    bob.next_within(T).await.unwrap();
    hub.publish("acme", &[activity(1), activity(2)]).await;
    hub.publish("globex", &[activity(100)]).await;
    assert_eq!(alice.activities(2, T).await, vec![1, 2]);
    assert_eq!(bob.activities(1, T).await, vec![100], "globex sees only its own event, first");
    bob.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_second_stream_of_the_same_session_supersedes_the_first() {
    let hub = Hub::start(&config("", "")).await;
    let mut first = Sse::token(&hub, "tok-alice").await;
    first.next_within(T).await.unwrap();
    let mut other_session = Sse::token(&hub, "tok-alice-2").await;
    other_session.next_within(T).await.unwrap();
    let mut second = Sse::token(&hub, "tok-alice").await;
    second.next_within(T).await.unwrap();
    let closed = first.next_non_ping(T).await.unwrap();
    assert_eq!(closed.kind(), "closed");
    assert_eq!(closed.data["reason"], "superseded");
    assert!(closed.data.get("retry_ms").is_none(), "superseded streams must not reconnect");
    assert!(first.next_within(T).await.is_none(), "the superseded stream ends");
    hub.publish("acme", &[activity(7)]).await;
    assert_eq!(second.activities(1, T).await, vec![7]);
    assert_eq!(other_session.activities(1, T).await, vec![7], "other sessions of the account are untouched");
    assert_eq!(hub.metric("tidings_streams_open").await, 2.0);
}

#[tokio::test]
async fn account_and_node_caps_answer_429_and_503_with_retry_after() {
    let hub = Hub::start(&config("", "[limits]\nstreams_per_account = 1\n")).await;
    let mut a = Sse::token(&hub, "tok-alice").await;
    a.next_within(T).await.unwrap();
    let (status, body, h) = error_of(&hub, &[("authorization", "Bearer tok-alice-2")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("account_full")));
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    // The same session replacing its own stream is not refused by the cap.
    let mut again = Sse::token(&hub, "tok-alice").await;
    assert_eq!(again.status, 200);
    again.next_within(T).await.unwrap();
}

#[tokio::test]
async fn node_cap_answers_503() {
    let hub = Hub::start(&config("", "[limits]\nstreams_per_node = 1\n")).await;
    let mut a = Sse::token(&hub, "tok-alice").await;
    a.next_within(T).await.unwrap();
    let (status, body, h) = error_of(&hub, &[("authorization", "Bearer tok-bob")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("node_full")));
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn operations_endpoints() {
    let hub = Hub::start(&config("", "")).await;
    let health = reqwest::get(hub.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = reqwest::get(hub.url("/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true);
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    hub.publish("acme", &[activity(1)]).await;
    s.activities(1, T).await;
    assert_eq!(hub.metric("tidings_streams_open").await, 1.0);
    assert_eq!(hub.metric("tidings_events_published_total").await, 1.0);
    assert_eq!(hub.metric("tidings_events_delivered_total").await, 1.0);
    assert_eq!(hub.metric("tidings_publish_latency_seconds_count").await, 1.0);
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hub.metric("tidings_streams_open").await, 0.0);
    assert_eq!(hub.metric("tidings_stream_closes_total").await, 1.0);
}

#[tokio::test]
async fn cors_allows_listed_origins_with_credentials_only() {
    let hub = Hub::start(&config("", "[cors]\nallowed_origins = [\"https://console.example.com\"]\n")).await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, hub.url("/events/stream"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization, last-event-id")
            .send()
    };
    let ok = preflight("https://console.example.com").await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://console.example.com");
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    let allowed = ok.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"), "{allowed}");
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A wildcard with credentials is refused at start-up, and so is an origin no browser
    // would ever send (it would be dropped in silence otherwise).
    for refused in ["*", "https://console.example.com/"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, config("", &format!("[cors]\nallowed_origins = [\"{refused}\"]\n"))).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings")).args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&path).output().unwrap();
        assert!(!out.status.success(), "{refused}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("allowed_origins"), "{refused}");
    }
}

#[tokio::test]
async fn invalid_configuration_fails_before_binding_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, expected) in [
        ("hartbeat = \"1s\"\n", "hartbeat"),
        ("heartbeat = \"1ms\"\n", "heartbeat"),
        ("[mapping]\nprofile = \"nope\"\n", "mapping.profile"),
        ("[mapping]\nfile = \"missing.toml\"\n", "missing.toml"),
    ] {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings")).args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    }
}

#[tokio::test]
async fn the_hub_attaches_keys_from_the_configured_profile() {
    let hub = Hub::start(&config("", "[mapping]\nprofile = \"azion-console\"\n")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    let mapping: serde_json::Value = reqwest::get(hub.url("/mapping")).await.unwrap().json().await.unwrap();
    assert_eq!(mapping["name"], "azion-console");
    hub.publish("acme", &[serde_json::json!({"activity_type": "deleted", "resource": {"type": "Edge Application", "id": "77"}})]).await;
    let ev = s.next_non_ping(T).await.unwrap();
    assert_eq!(ev.data["invalidate"], serde_json::json!([["application"]]));
    assert_eq!(ev.data["remove"], serde_json::json!([["application", 77]]));
    hub.publish("acme", &[serde_json::json!({"activity_type": "edited", "resource": {"type": "no such type"}})]).await;
    let ev = s.next_non_ping(T).await.unwrap();
    assert_eq!(ev.data["invalidate"], serde_json::json!([]));
    assert_eq!(hub.metric("tidings_unresolved_events_total").await, 1.0);
    // Log lines reach the output through the hub's log writer thread, a moment later.
    let deadline = tokio::time::Instant::now() + T;
    while !hub.logs().contains("no such type") {
        assert!(tokio::time::Instant::now() < deadline, "an unresolved type is logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn revoking_a_session_closes_its_streams_for_good() {
    let hub = Hub::start(&config("", "")).await;
    let mut a = Sse::token(&hub, "tok-alice").await;
    let mut a2 = Sse::token(&hub, "tok-alice-2").await;
    a.next_within(T).await.unwrap();
    a2.next_within(T).await.unwrap();
    let revoke = |body: serde_json::Value, key: &str| {
        reqwest::Client::new().post(hub.url("/sessions/revoke")).bearer_auth(key).json(&body).send()
    };
    assert_eq!(revoke(serde_json::json!({"account": "acme", "session": "s-alice"}), "tok-alice").await.unwrap().status(), 403);
    let resp = revoke(serde_json::json!({"account": "acme", "session": "s-alice"}), PUBLISHER_KEY).await.unwrap();
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["closed"], 1);
    let closed = a.next_non_ping(T).await.unwrap();
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("revoked")));
    assert!(closed.data.get("retry_ms").is_none(), "revoked streams must not reconnect");
    assert!(a.next_within(T).await.is_none());
    hub.publish("acme", &[activity(1)]).await;
    assert_eq!(a2.activities(1, T).await, vec![1], "other sessions stay open");
}

#[tokio::test]
async fn streams_end_at_their_lifetime_with_jitter() {
    let hub = Hub::start(&config("", "[limits]\nstream_lifetime = \"2s\"\n")).await;
    let started = std::time::Instant::now();
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    let closed = s.next_non_ping(T).await.unwrap();
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("lifetime")));
    assert!(closed.data["retry_ms"].is_u64());
    let lived = started.elapsed();
    assert!(lived >= Duration::from_millis(1700) && lived < Duration::from_secs(4), "lived {lived:?}");
}

/// A node whose process may open only 256 files holds fewer streams than that: the next one
/// gets 503 `node_full` with `Retry-After`, and publishes, health checks and delivery to the
/// open streams go on. Without the reserve the hub would run out of descriptors and accept
/// nothing at all.
#[tokio::test]
async fn the_open_files_limit_caps_streams_and_keeps_room_for_publishes() {
    const OPEN_FILES: usize = 256;
    let tokens: String = (0..OPEN_FILES)
        .map(|i| format!("[[tokens]]\ntoken = \"tok-many-{i:04}\"\naccount = \"acme\"\nuser = \"u{i}\"\nsession = \"s-many-{i}\"\n"))
        .collect();
    let cfg = config("", "").replace("[auth]\n", "[auth]\ntokens_file = \"tokens.toml\"\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.toml"), tokens).unwrap();
    // The tokens file must sit next to the configuration: start in that directory.
    let hub = Hub::start_with_open_files_in(dir, &cfg, OPEN_FILES as u64).await;

    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() < OPEN_FILES, "every stream was accepted: the open files limit did not cap the node");
        let resp = tokio::time::timeout(T, reqwest::Client::new().get(hub.url("/events/stream")).bearer_auth(format!("tok-many-{:04}", open.len())).send())
            .await
            .expect("the hub answers a stream request at its cap instead of hanging")
            .unwrap();
        if resp.status() != 200 {
            break resp;
        }
        let mut s = Sse::from_response(resp);
        assert_eq!(s.next_within(T).await.unwrap().kind(), "connected");
        open.push(s);
    };
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "node_full");
    assert!(open.len() >= OPEN_FILES / 2, "the cap keeps a reserve, not most of the limit: {} streams", open.len());
    assert!(hub.logs().contains("limits.streams_per_node lowered"), "the lowered cap is logged");

    // Room is left for everything else.
    assert_eq!(reqwest::get(hub.url("/healthz")).await.unwrap().status(), 200);
    hub.publish("acme", &[activity(1)]).await;
    for s in &mut open {
        assert_eq!(s.activities(1, T).await, vec![1]);
    }
    assert_eq!(hub.metric("tidings_streams_open").await, open.len() as f64);
}
