//! Identity providers, black-box: JWT (HS256, RS256, ES256), introspection, and expiry
//! enforced while the stream is open.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use support::*;

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

async fn status_with(hub: &Hub, token: &str) -> u16 {
    Sse::token(hub, token).await.status
}

#[tokio::test]
async fn hs256_tokens_are_verified_and_their_claims_used() {
    let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nleeway = \"0s\"\n"))).await;
    let good = hs256(json!({"account": "acme", "sub": "dana", "sid": "s-dana", "exp": now() + 600}), SECRET);
    let mut s = Sse::token(&hub, &good).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next_within(T).await.unwrap().data["session_id"], "s-dana");
    hub.publish("acme", &[activity(1)]).await;
    assert_eq!(s.activities(1, T).await, vec![1], "the account claim decides tenancy");

    let expired = hs256(json!({"account": "acme", "sub": "dana", "exp": now() - 60}), SECRET);
    let forged = hs256(json!({"account": "acme", "sub": "dana", "exp": now() + 600}), "another-secret-of-32-bytes-length");
    let no_exp = hs256(json!({"account": "acme", "sub": "dana"}), SECRET);
    // alg:none: header {"alg":"none"}, no signature.
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(json!({"account": "acme", "exp": now() + 600})));
    for (name, token) in [("expired", &expired), ("forged", &forged), ("no exp", &no_exp), ("alg none", &alg_none), ("truncated", &good[..good.len() - 5].to_owned())] {
        assert_eq!(status_with(&hub, token).await, 401, "{name}");
    }
    let no_account = hs256(json!({"sub": "dana", "exp": now() + 600}), SECRET);
    assert_eq!(status_with(&hub, &no_account).await, 403, "an identity without an account may not stream");
    let resp = reqwest::Client::new().post(hub.url("/events")).bearer_auth(&good).json(&json!({"account": "acme", "data": {"activity_type": "created"}})).send().await.unwrap();
    assert_eq!(resp.status(), 403, "user JWTs cannot publish");
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_verified() {
    for (alg, name) in [(Algorithm::RS256, "rs256"), (Algorithm::ES256, "es256")] {
        let public = keys_dir().join(format!("{name}-public.pem"));
        let private = std::fs::read(keys_dir().join(format!("{name}-private.pem"))).unwrap();
        let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"{alg:?}\"\npublic_key_file = \"{}\"\n", public.display()))).await;
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let claims = json!({"account": "acme", "sub": "erin", "sid": "s-erin", "exp": now() + 600});
        let token = encode(&Header::new(alg), &claims, &key).unwrap();
        assert_eq!(status_with(&hub, &token).await, 200, "{name}");
        // A token signed with HS256 using the public key as the secret (key confusion) is refused.
        let pem = std::fs::read_to_string(&public).unwrap();
        assert_eq!(status_with(&hub, &hs256(claims.clone(), &pem)).await, 401, "{name} key confusion");
    }
}

#[tokio::test]
async fn expiry_is_enforced_during_the_stream() {
    let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nleeway = \"0s\"\n"))).await;
    let token = hs256(json!({"account": "acme", "sub": "dana", "sid": "s-1", "exp": now() + 2}), SECRET);
    let mut s = Sse::token(&hub, &token).await;
    assert_eq!(s.status, 200);
    s.next_within(T).await.unwrap();
    let closed = s.next_non_ping(Duration::from_secs(6)).await.unwrap();
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("token_expired")));
    assert!(closed.data["retry_ms"].is_u64(), "the client may come back with a fresh token");
    assert!(s.next_within(T).await.is_none());
}

/// A small host application answering introspection requests, counting them.
async fn introspection_server(calls: Arc<AtomicUsize>) -> String {
    use axum::{Json, Router, routing::post};
    let app = Router::new().route(
        "/introspect",
        post(move |Json(body): Json<serde_json::Value>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let answer = match (body["token"].as_str(), body["source"].as_str()) {
                    (Some("sess-cookie"), Some("cookie")) => json!({"active": true, "account": "acme", "user": "frank", "session": "s-frank"}),
                    (Some("opaque-1"), Some("header")) => json!({"active": true, "account": 4242, "user": "gina", "session": "s-gina"}),
                    (Some("banned"), _) => json!({"active": true, "allowed": false, "account": "acme"}),
                    _ => json!({"active": false}),
                };
                (axum::http::StatusCode::OK, Json(answer))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/introspect")
}

#[tokio::test]
async fn introspection_asks_the_host_application_and_caches_answers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = introspection_server(calls.clone()).await;
    let hub = Hub::start(&config("", &format!("[auth.introspection]\nurl = \"{url}\"\ncache_ttl = \"30s\"\n"))).await;
    let mut s = Sse::connect(&hub, &[("cookie", "tidings_session=sess-cookie")]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next_within(T).await.unwrap().data["session_id"], "s-frank");
    let mut g = Sse::token(&hub, "opaque-1").await;
    assert_eq!(g.status, 200);
    g.next_within(T).await.unwrap();
    hub.publish("4242", &[activity(9)]).await;
    assert_eq!(g.activities(1, T).await, vec![9], "numeric accounts from introspection are text");
    assert_eq!(status_with(&hub, "unknown").await, 401);
    assert_eq!(status_with(&hub, "banned").await, 403);
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        let mut again = Sse::token(&hub, "opaque-1").await;
        assert_eq!(again.status, 200);
        again.next_within(T).await.unwrap();
        assert_eq!(status_with(&hub, "unknown").await, 401);
    }
    assert_eq!(calls.load(Ordering::SeqCst), before, "answers are cached");
}

#[tokio::test]
async fn an_unreachable_introspection_endpoint_answers_503() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let hub = Hub::start(&config("", &format!("[auth.introspection]\nurl = \"http://{addr}/introspect\"\ntimeout = \"500ms\"\n"))).await;
    let resp = reqwest::Client::new().get(hub.url("/events/stream")).bearer_auth("opaque").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(!hub.logs().contains("opaque"), "tokens never reach the logs");
}

/// Many streams with an `exp`, in several accounts, with heartbeats running: each closes with
/// `token_expired` once its own `exp` passes, never before, within the ticker's sweep (plus
/// slack for a busy machine), while the later ones keep streaming.
#[tokio::test]
async fn every_stream_closes_at_its_own_expiry() {
    let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nleeway = \"0s\"\n"))).await;
    let base = now();
    let mut streams = Vec::new();
    for i in 0..40u64 {
        let exp = base + 2 + (i % 2) * 2;
        let claims = json!({"account": format!("acct-{}", i % 8), "sub": format!("u{i}"), "sid": format!("s{i}"), "exp": exp});
        let mut s = Sse::token(&hub, &hs256(claims, SECRET)).await;
        assert_eq!(s.status, 200);
        s.next_within(T).await.unwrap();
        streams.push((exp, s));
    }
    let closes = streams.into_iter().map(|(exp, mut s)| {
        tokio::spawn(async move {
            let mut pings = 0;
            loop {
                let e = s.next_within(Duration::from_secs(10)).await.expect("a frame before the expiry");
                if e.kind() == "ping" {
                    pings += 1;
                    continue;
                }
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                return (exp, at, e.kind().to_owned(), e.data["reason"].as_str().map(str::to_owned), pings);
            }
        })
    });
    for close in closes {
        let (exp, at, kind, reason, pings) = close.await.unwrap();
        assert_eq!((kind.as_str(), reason.as_deref()), ("closed", Some("token_expired")));
        assert!(at >= exp as f64 - 0.01, "closed {:.2} s before its exp", exp as f64 - at);
        assert!(at <= exp as f64 + 3.0, "closed {:.2} s after its exp", at - exp as f64);
        assert!(pings > 0, "heartbeats reached the stream while it was open");
    }
}
