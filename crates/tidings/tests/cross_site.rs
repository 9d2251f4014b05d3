//! Cross-site cookie streams, black-box: a stream request carrying the session cookie from a
//! page on another origin is refused with 403 before it touches the session, so it can neither
//! open a stream nor supersede the user's real one (SECURITY.md, "Cross-site requests").
//! The same check in a real browser is `clients/js/e2e/cross-site.test.ts`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const CONSOLE: &str = "https://console.example";
const EVIL: &str = "https://evil.example";

fn cookie(token: &str) -> String {
    format!("tidings_session={token}")
}

async fn refusal(hub: &Hub, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(hub.url("/events/stream")).header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The attack: the user's console holds a cookie stream; another site's requests carrying the
/// same cookie are refused (by `Origin`, by `Sec-Fetch-Site`), and the user's stream neither
/// gets `closed` nor misses what is published next.
#[tokio::test]
async fn a_cookie_stream_from_another_site_is_refused_and_the_users_stream_stays_open() {
    let hub = Hub::start(&config("", &format!("[cors]\nallowed_origins = [\"{CONSOLE}\"]\n"))).await;
    let alice = cookie("tok-alice");
    let mut console = Sse::connect(&hub, &[("cookie", &alice)]).await;
    assert_eq!(console.status, 200);
    assert_eq!(console.next_within(T).await.unwrap().kind(), "connected");

    let attacks: [&[(&str, &str)]; 5] = [
        &[("cookie", &alice), ("origin", EVIL), ("sec-fetch-site", "cross-site")],
        &[("cookie", &alice), ("origin", EVIL)],
        &[("cookie", &alice), ("sec-fetch-site", "cross-site")],
        &[("cookie", &alice), ("origin", "null")],
        // Same site (another port of the hub's host) is still another origin.
        &[("cookie", &alice), ("origin", "http://127.0.0.1:1"), ("sec-fetch-site", "same-site")],
    ];
    for headers in attacks {
        let (status, body) = refusal(&hub, headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], "cross_site", "{headers:?}: {body}");
        let field = body["error"]["field"].as_str().unwrap();
        assert!(field == "Origin" || field == "Sec-Fetch-Site", "{body}");
    }
    let (_, body) = refusal(&hub, &[("cookie", &alice), ("origin", EVIL)]).await;
    assert!(body["error"]["message"].as_str().unwrap().contains(EVIL), "the refusal names the origin: {body}");

    console.expect_quiet(Duration::from_millis(700)).await;
    hub.publish("acme", &[activity(1)]).await;
    let e = console.next_non_ping(T).await.expect("the user's stream is still open");
    assert_eq!((e.kind(), e.n()), ("activity", 1));
    assert_eq!(hub.metric("tidings_streams_open").await, 1.0, "the refused requests registered nothing");
    assert_eq!(hub.metric("tidings_stream_refusals_total").await, 6.0);
    let text = reqwest::get(hub.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("tidings_stream_refusals_total{code=\"cross_site\"} 6"), "{text}");
}

/// What a browser sends from the hub's own origin or a listed console origin, what a header
/// token sends from anywhere, and what a non-browser client sends, all open streams.
#[tokio::test]
async fn same_origin_listed_origins_header_tokens_and_non_browsers_are_allowed() {
    let hub = Hub::start(&config("", &format!("[cors]\nallowed_origins = [\"{CONSOLE}\"]\n"))).await;
    let own = format!("http://{}", hub.addr);
    let alice = cookie("tok-alice");
    let allowed: [&[(&str, &str)]; 6] = [
        &[("cookie", &alice), ("origin", &own), ("sec-fetch-site", "same-origin")],
        &[("cookie", &alice), ("sec-fetch-site", "same-origin")],
        &[("cookie", &alice), ("sec-fetch-site", "none")],
        &[("cookie", &alice), ("origin", CONSOLE), ("sec-fetch-site", "cross-site")],
        &[("authorization", "Bearer tok-alice"), ("origin", EVIL), ("sec-fetch-site", "cross-site")],
        &[("cookie", &alice)],
    ];
    for headers in allowed {
        let mut s = Sse::connect(&hub, headers).await;
        assert_eq!(s.status, 200, "{headers:?}");
        assert_eq!(s.next_within(T).await.unwrap().kind(), "connected", "{headers:?}");
    }
    assert_eq!(hub.metric("tidings_stream_refusals_total").await, 0.0);
}

#[tokio::test]
async fn the_check_can_be_switched_off() {
    let hub = Hub::start(&config("", "").replace("[auth]\n", "[auth]\ncookie_origin_check = false\n")).await;
    let mut s = Sse::connect(&hub, &[("cookie", &cookie("tok-alice")), ("origin", EVIL), ("sec-fetch-site", "cross-site")]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next_within(T).await.unwrap().kind(), "connected");
}

/// A trusted origin that is not an origin is a mistake caught at start-up, not a silent no-op.
#[tokio::test]
async fn an_unparsable_trusted_origin_stops_start_up() {
    for bad in ["console.example", "https://console.example/app", "null"] {
        let dir = tempfile::tempdir().unwrap();
        let toml = config("", &format!("[cors]\nallowed_origins = [\"{bad}\"]\n"));
        std::fs::write(dir.path().join("hub.toml"), toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--config"])
            .arg(dir.path().join("hub.toml"))
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cors.allowed_origins") && stderr.contains(bad), "{bad}: {stderr}");
    }
}
