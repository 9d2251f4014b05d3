//! Security, black-box: tenant isolation as a property over random accounts, sessions and
//! publishes; hostile JWTs; who may stream and who may publish; tokens never in the logs;
//! CORS only for listed origins. (Basic JWT cases, introspection and caps are in `auth.rs`
//! and the conformance scenarios; these extend them.)

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs(alg: Algorithm, claims: &Value, secret: &str) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn stream_status(hub: &Hub, headers: &[(&str, &str)]) -> u16 {
    Sse::connect(hub, headers).await.status
}

/// Accounts that look alike: case, trailing space, accents, numbers with and without zeros.
const LOOKALIKE_ACCOUNTS: [&str; 6] = ["acme", "ACME", "acme ", "acmé", "1", "01"];
const SESSIONS_PER_ACCOUNT: usize = 2;

fn isolation_config() -> String {
    let mut tokens = String::new();
    for (a, account) in LOOKALIKE_ACCOUNTS.iter().enumerate() {
        for s in 0..SESSIONS_PER_ACCOUNT {
            tokens.push_str(&format!("[[auth.tokens]]\ntoken = \"tok-{a}-{s}\"\naccount = {account:?}\nuser = \"u{a}{s}\"\nsession = \"s-{a}-{s}\"\n"));
        }
    }
    format!("heartbeat = \"500ms\"\n[[auth.publishers]]\nkey = \"{PUBLISHER_KEY}\"\n{tokens}")
}

/// One case: which sessions listen, and what is published to whom (account index, count,
/// and whether a numeric account is sent as a JSON number).
#[derive(Debug, Clone)]
struct IsolationCase {
    listening: Vec<(usize, usize)>,
    publishes: Vec<(usize, usize, bool)>,
}

fn isolation_case() -> impl Strategy<Value = IsolationCase> {
    let session = (0..LOOKALIKE_ACCOUNTS.len(), 0..SESSIONS_PER_ACCOUNT);
    (
        prop::collection::btree_set(session, 1..8),
        prop::collection::vec((0..LOOKALIKE_ACCOUNTS.len(), 1usize..4, any::<bool>()), 1..12),
    )
        .prop_map(|(listening, publishes)| IsolationCase { listening: listening.into_iter().collect(), publishes })
}

/// For any sessions and any publishes, each session receives exactly the events published to
/// its own account, in order, and nothing else — however alike the account names are.
#[test]
fn tenant_isolation_holds_for_random_accounts_sessions_and_publishes() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let hub = rt.block_on(Hub::start(&isolation_config()));
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, ..PropConfig::default() });
    let next_n = std::cell::Cell::new(1u64);
    runner
        .run(&isolation_case(), |case| {
            rt.block_on(check_isolation(&hub, &case, &next_n));
            Ok(())
        })
        .unwrap();
    assert!(!hub.logs().contains("panicked"), "{}", hub.logs());
    println!("tenant isolation: {cases} cases, {} events published", next_n.get() - 1);
}

async fn check_isolation(hub: &Hub, case: &IsolationCase, next_n: &std::cell::Cell<u64>) {
    let mut streams = Vec::new();
    for &(a, s) in &case.listening {
        let mut sse = Sse::token(hub, &format!("tok-{a}-{s}")).await;
        assert_eq!(sse.status, 200);
        sse.next_within(T).await.unwrap();
        streams.push((a, sse));
    }
    let mut expected: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut body = Vec::new();
    for &(a, count, numeric) in &case.publishes {
        for _ in 0..count {
            let n = next_n.get();
            next_n.set(n + 1);
            let mut act = activity(n);
            act["target"] = a.into();
            let account = match LOOKALIKE_ACCOUNTS[a].parse::<u64>() {
                Ok(num) if numeric && !LOOKALIKE_ACCOUNTS[a].starts_with('0') => json!(num),
                _ => json!(LOOKALIKE_ACCOUNTS[a]),
            };
            body.push(json!({"account": account, "data": act}));
            expected.entry(a).or_default().push(n);
        }
    }
    // One sentinel per account closes the case: a stream has seen everything once it has its own.
    let mut sentinels = HashMap::new();
    for (a, account) in LOOKALIKE_ACCOUNTS.iter().enumerate() {
        let n = next_n.get();
        next_n.set(n + 1);
        let mut act = activity(n);
        act["target"] = a.into();
        body.push(json!({"account": account, "data": act}));
        sentinels.insert(a, n);
    }
    let (status, answer) = hub.publish_raw(&Value::Array(body).to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "{answer}");
    for (a, sse) in &mut streams {
        let mut got = Vec::new();
        loop {
            let e = sse.next_non_ping(T).await.expect("stream open");
            assert_eq!(e.kind(), "activity", "{:?}", e.data);
            let target = e.data["data"]["target"].as_u64().unwrap() as usize;
            assert_eq!(target, *a, "a session of {:?} received an event for {:?}", LOOKALIKE_ACCOUNTS[*a], LOOKALIKE_ACCOUNTS[target]);
            if e.n() == sentinels[a] {
                break;
            }
            got.push(e.n());
        }
        assert_eq!(&got, expected.get(a).unwrap_or(&Vec::new()), "account {:?}", LOOKALIKE_ACCOUNTS[*a]);
    }
}

#[tokio::test]
async fn hostile_jwts_are_refused() {
    let jwt = format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nissuer = \"https://id.example.com\"\naudience = \"tidings\"\nleeway = \"0s\"\n");
    let hub = Hub::start(&config("", &jwt)).await;
    let claims = |extra: Value| {
        let mut c = json!({"account": "acme", "sub": "dana", "sid": "s-dana", "iss": "https://id.example.com", "aud": "tidings", "exp": now() + 600});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let good = hs(Algorithm::HS256, &claims(json!({})), SECRET);
    assert_eq!(stream_status(&hub, &[("authorization", &format!("Bearer {good}"))]).await, 200);

    let (header, payload, signature) = {
        let mut p = good.split('.');
        (p.next().unwrap().to_owned(), p.next().unwrap().to_owned(), p.next().unwrap().to_owned())
    };
    let tampered = format!("{header}.{}.{signature}", b64(&claims(json!({"account": "globex"}))));
    let mut cases: Vec<(&str, String)> = vec![
        ("payload changed, signature kept", tampered),
        ("signature of another token", format!("{header}.{payload}.{}", hs(Algorithm::HS256, &claims(json!({"sub": "x"})), SECRET).rsplit('.').next().unwrap())),
        ("empty signature", format!("{header}.{payload}.")),
        ("HS512 with the right secret", hs(Algorithm::HS512, &claims(json!({})), SECRET)),
        ("HS384 with the right secret", hs(Algorithm::HS384, &claims(json!({})), SECRET)),
        ("wrong issuer", hs(Algorithm::HS256, &claims(json!({"iss": "https://evil.example.net"})), SECRET)),
        ("wrong audience", hs(Algorithm::HS256, &claims(json!({"aud": "another-service"})), SECRET)),
        ("not valid yet (nbf)", hs(Algorithm::HS256, &claims(json!({"nbf": now() + 3600})), SECRET)),
        ("exp as text", hs(Algorithm::HS256, &claims(json!({"exp": (now() + 600).to_string()})), SECRET)),
        ("expired by a second", hs(Algorithm::HS256, &claims(json!({"exp": now() - 1})), SECRET)),
        ("jku pointing elsewhere", {
            let mut h = Header::new(Algorithm::HS256);
            h.jku = Some("https://evil.example.net/keys".into());
            h.kid = Some("../../../../dev/null".into());
            encode(&h, &claims(json!({})), &EncodingKey::from_secret(b"attacker-secret-32-bytes-long!!!")).unwrap()
        }),
        ("oversized", hs(Algorithm::HS256, &claims(json!({"pad": "x".repeat(10_000)})), SECRET)),
        ("two dots of garbage", "a.b.c".into()),
    ];
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = format!("{}.{}.", b64(&json!({"alg": alg, "typ": "JWT"})), b64(&claims(json!({}))));
        cases.push(("alg none (any case)", t));
    }
    for (name, token) in &cases {
        for headers in [vec![("authorization", format!("Bearer {token}"))], vec![("cookie", format!("tidings_session={token}"))]] {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(stream_status(&hub, &headers).await, 401, "{name} via {}", headers[0].0);
        }
    }
}

#[tokio::test]
async fn tokens_of_another_algorithm_family_are_refused_by_an_rs256_hub() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let public = keys.join("rs256-public.pem");
    let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n", public.display()))).await;
    let claims = json!({"account": "acme", "sub": "erin", "sid": "s-erin", "exp": now() + 600});
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(keys.join("rs256-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(keys.join("es256-private.pem")).unwrap()).unwrap();
    let ok = encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
    assert_eq!(stream_status(&hub, &[("authorization", &format!("Bearer {ok}"))]).await, 200);
    for (name, token) in [
        ("RS512 with the right key", encode(&Header::new(Algorithm::RS512), &claims, &rsa).unwrap()),
        ("PS256 with the right key", encode(&Header::new(Algorithm::PS256), &claims, &rsa).unwrap()),
        ("ES256 with another key", encode(&Header::new(Algorithm::ES256), &claims, &ec).unwrap()),
        ("HS256 keyed with the public key's DER-ish bytes", hs(Algorithm::HS256, &claims, &std::fs::read_to_string(&public).unwrap().replace('\n', ""))),
    ] {
        assert_eq!(stream_status(&hub, &[("authorization", &format!("Bearer {token}"))]).await, 401, "{name}");
    }
}

/// Who may do what: user credentials (static or JWT) stream and never publish; publisher keys
/// publish and never stream, whichever way they are presented.
#[tokio::test]
async fn publisher_keys_never_stream_and_user_credentials_never_publish() {
    let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"))).await;
    let jwt = hs(Algorithm::HS256, &json!({"account": "acme", "sub": "dana", "exp": now() + 600}), SECRET);
    let body = r#"{"account":"acme","data":{"activity_type":"created"}}"#;
    for (who, cred, streams, publishes) in [("static user", "tok-alice", 200, 403), ("JWT user", jwt.as_str(), 200, 403), ("publisher", PUBLISHER_KEY, 403, 202)] {
        for scheme in ["Bearer", "Token"] {
            let auth = format!("{scheme} {cred}");
            assert_eq!(stream_status(&hub, &[("authorization", &auth)]).await, streams, "{who} streams with {scheme}");
            let r = reqwest::Client::new().post(hub.url("/events")).header("authorization", &auth).header("content-type", "application/json").body(body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), publishes, "{who} publishes with {scheme}");
        }
        let cookie = format!("tidings_session={cred}");
        assert_eq!(stream_status(&hub, &[("cookie", &cookie)]).await, streams, "{who} streams with the cookie");
        // A cookie never authorises a publish: publishers are services, not browsers.
        let r = reqwest::Client::new().post(hub.url("/events")).header("cookie", &cookie).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(r.status(), 401, "{who} publishes with the cookie");
    }
}

/// Every credential the hub sees, valid or not, on every path (stream, publish, query token,
/// cookie, refusals), at the most verbose log level: none appears in the hub's output.
#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let tables = format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n");
    let cfg = config("", &tables).replace("cookie = \"tidings_session\"", "cookie = \"tidings_session\"\nquery_token = true");
    let hub = Hub::start_logged(&cfg, "trace").await;
    let jwt = hs(Algorithm::HS256, &json!({"account": "acme", "sub": "dana", "exp": now() + 600}), SECRET);
    let expired = hs(Algorithm::HS256, &json!({"account": "acme", "sub": "dana", "exp": now() - 600}), SECRET);
    let forged = hs(Algorithm::HS256, &json!({"account": "acme", "sub": "dana", "exp": now() + 600}), "forged-secret-of-32-bytes-length!");
    let unknown = "tok-unknown-5f1d2a";
    let secrets: Vec<&str> = vec!["tok-alice", "tok-bob", PUBLISHER_KEY, &jwt, &expired, &forged, unknown, SECRET];
    for cred in &secrets[..7] {
        let _ = stream_status(&hub, &[("authorization", &format!("Bearer {cred}"))]).await;
        let _ = stream_status(&hub, &[("authorization", &format!("Token {cred}"))]).await;
        let _ = stream_status(&hub, &[("cookie", &format!("tidings_session={cred}"))]).await;
        let _ = Sse::connect_url(&format!("{}?access_token={cred}", hub.url("/events/stream")), &[]).await.status;
        let _ = hub.publish_raw(r#"{"account":"acme","data":{"activity_type":"created"}}"#, "application/json", cred).await;
        let _ = hub.publish_raw("{bad", "application/json", cred).await;
    }
    hub.publish("acme", &[activity(1)]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = hub.logs();
    assert!(logs.lines().count() > 10, "trace logging is on: {logs}");
    for s in &secrets {
        // The signature part is the secret part of a JWT; check it alone as well.
        for needle in [*s, s.rsplit('.').next().unwrap()] {
            assert!(!logs.contains(needle), "{needle:.40} appears in the logs");
        }
    }
}

#[tokio::test]
async fn cors_answers_only_listed_origins_and_never_a_wildcard() {
    let listed = "https://console.example.com";
    let hub = Hub::start(&config("", &format!("[cors]\nallowed_origins = [\"{listed}\"]\n"))).await;
    let get = |origin: &'static str| {
        reqwest::Client::new().get(hub.url("/events/stream")).header("origin", origin).bearer_auth("tok-alice").header("accept", "text/event-stream").send()
    };
    let ok = get(listed).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], listed);
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert!(ok.headers().get_all("vary").iter().any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin")), "responses vary by origin");
    drop(ok);
    for origin in ["https://console.example.com.evil.net", "https://evil.example.net", "http://console.example.com", "null", "https://console.example.com:8443"] {
        let r = get(origin).await.unwrap();
        assert!(r.headers().get("access-control-allow-origin").is_none(), "{origin} was allowed");
        drop(r);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without any listed origin there is no CORS at all: browsers refuse cross-origin reads.
    let closed = Hub::start(&config("", "")).await;
    let r = reqwest::Client::new().get(closed.url("/events/stream")).header("origin", listed).bearer_auth("tok-alice").send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let pre = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, closed.url("/events"))
        .header("origin", listed)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(pre.headers().get("access-control-allow-origin").is_none());
}
