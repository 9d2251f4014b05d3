//! SIGHUP reloads the configuration, black-box against the real binary: change the file, send
//! the signal, observe. What can change live does, validated first (an invalid file is logged
//! and the running configuration kept); open streams stay open unless their credential was
//! removed (`closed` `revoked`); restart-only settings are kept and named; the log says what
//! changed and never shows a secret.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::*;

/// Reads a stream up to its `closed` frame, and checks that the stream then ends.
async fn closed_with(s: &mut Sse) -> String {
    loop {
        let e = s.next_non_ping(T).await.expect("a closed frame before the end");
        if e.kind() == "closed" {
            assert!(s.next_within(T).await.is_none(), "the stream ends after closed");
            return e.data["reason"].as_str().unwrap().to_owned();
        }
    }
}

async fn open(hub: &Hub, token: &str) -> Sse {
    let mut s = Sse::token(hub, token).await;
    assert_eq!(s.status, 200, "{token}");
    assert_eq!(s.next_within(T).await.unwrap().kind(), "connected");
    s
}

async fn publish_status(hub: &Hub, key: &str, account: &str) -> u16 {
    hub.publish_raw(&json!({"account": account, "data": activity(1)}).to_string(), "application/json", key).await.0
}

#[tokio::test]
async fn tokens_and_publisher_keys_reload_and_streams_of_removed_tokens_are_revoked() {
    let hub = Hub::start(&config("", "")).await;
    let mut alice = open(&hub, "tok-alice").await;
    let mut alice2 = open(&hub, "tok-alice-2").await;
    let mut alice3 = open(&hub, "tok-alice-3").await;
    let mut bob = open(&hub, "tok-bob").await;

    // tok-alice removed, tok-alice-2 moved to another session, tok-dave added, tok-alice-3 and
    // tok-bob unchanged; the publisher key replaced.
    let changed = config("", "")
        .replace("token = \"tok-alice\"\naccount = \"acme\"\nuser = \"alice@example.com\"\nsession = \"s-alice\"\n", "token = \"tok-dave\"\naccount = \"acme\"\nuser = \"dave@example.com\"\nsession = \"s-dave\"\n")
        .replace("session = \"s-alice-2\"", "session = \"s-alice-moved\"")
        .replace(&format!("key = \"{PUBLISHER_KEY}\""), "key = \"pub-new-secret-key\"\nname = \"billing\"");
    hub.write_config(&changed);
    let said = hub.reload().await;
    assert!(said.contains("configuration reloaded"), "{said}");
    for expected in ["auth.tokens: 2 added, 2 removed or changed (4 in all)", "auth.publishers: keys added \"billing\"; keys removed \"unnamed\"", "revoked=2"] {
        assert!(said.contains(expected), "{expected:?} not in {said}");
    }

    assert_eq!(closed_with(&mut alice).await, "revoked");
    assert_eq!(closed_with(&mut alice2).await, "revoked", "a changed entry is a removed credential");
    assert_eq!(Sse::token(&hub, "tok-alice").await.status, 401);
    let mut dave = open(&hub, "tok-dave").await;
    let mut moved = open(&hub, "tok-alice-2").await;
    assert_eq!(moved.status, 200);

    assert_eq!(publish_status(&hub, PUBLISHER_KEY, "acme").await, 401, "the old publisher key is gone");
    assert_eq!(publish_status(&hub, "pub-new-secret-key", "acme").await, 202);
    assert_eq!(publish_status(&hub, "pub-new-secret-key", "globex").await, 202);
    for s in [&mut alice3, &mut dave, &mut moved, &mut bob] {
        assert_eq!(s.activities(1, T).await, vec![1], "unchanged and new credentials stream on");
    }
    let logs = hub.logs();
    for secret in ["tok-alice", "tok-dave", PUBLISHER_KEY, "pub-new-secret-key"] {
        assert!(!logs.contains(secret), "{secret} reached the logs:\n{logs}");
    }
}

#[tokio::test]
async fn the_tokens_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = |name: &str| format!("[[tokens]]\ntoken = \"tok-{name}\"\naccount = \"initech\"\nuser = \"{name}\"\nsession = \"s-{name}\"\n");
    std::fs::write(dir.path().join("tokens.toml"), tokens("carol")).unwrap();
    let toml = config("", "").replace("[auth]\n", "[auth]\ntokens_file = \"tokens.toml\"\n");
    let hub = Hub::start_in(dir, &toml, "127.0.0.1:0").await;
    let mut carol = open(&hub, "tok-carol").await;
    let mut bob = open(&hub, "tok-bob").await;

    std::fs::write(hub.dir.path().join("tokens.toml"), tokens("erin")).unwrap();
    let said = hub.reload().await;
    assert!(said.contains("auth.tokens: 1 added, 1 removed or changed"), "{said}");
    assert_eq!(closed_with(&mut carol).await, "revoked");
    let mut erin = open(&hub, "tok-erin").await;
    hub.publish("initech", &[activity(5)]).await;
    assert_eq!(erin.activities(1, T).await, vec![5]);
    hub.publish("globex", &[activity(6)]).await;
    assert_eq!(bob.activities(1, T).await, vec![6], "streams of the main file are untouched");
}

/// Each invalid configuration is refused with its reason; the running one stays in force,
/// and its streams stay open.
#[tokio::test]
async fn an_invalid_configuration_is_logged_and_the_running_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.toml"), "[resources.app]\nlist = [\"apps\"]\n").unwrap();
    let good = config("", "[mapping]\nfile = \"mapping.toml\"\n");
    let hub = Hub::start_in(dir, &good, "127.0.0.1:0").await;
    let mut alice = open(&hub, "tok-alice").await;
    let cases = [
        (good.replace("[mapping]", "[mapping"), "TOML parse error"),
        (good.replace("heartbeat = ", "hartbeat = "), "unknown field `hartbeat`"),
        (good.replace(&format!("key = \"{PUBLISHER_KEY}\""), "key = \"short\""), "publisher key must be at least"),
        (good.replace("mapping.toml", "missing.toml"), "missing.toml"),
        (good.replace("mapping.toml", "hub.toml"), "hub.toml"),
        (format!("{good}[cors]\nallowed_origins = [\"*\"]\n"), "cors.allowed_origins"),
        (format!("{good}[admin]\nkey = \"too-short\"\n"), "admin.key"),
        (good.replace("[auth]\n", "[auth]\ntokens_file = \"nowhere.toml\"\n"), "nowhere.toml"),
        (format!("{good}[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"short\"\n"), "auth.jwt"),
    ];
    for (n, (bad, why)) in cases.into_iter().enumerate() {
        hub.write_config(&bad);
        let said = hub.reload().await;
        assert!(said.contains("reload refused") && said.contains(why), "{why:?} not in {said}");
        assert!(!said.contains("configuration reloaded"), "{said}");
        // Still the old configuration: the old key publishes, the old token streams, the old
        // mapping resolves, and the open stream got everything.
        let ids = hub.publish("acme", &[json!({"activity_type": "edited", "resource": {"type": "app"}, "metadata": {"n": n}})]).await;
        let e = alice.next_non_ping(T).await.unwrap();
        assert_eq!((e.id.as_deref(), e.data["invalidate"].clone()), (Some(ids[0].as_str()), json!([["apps"]])), "{why}");
    }
    let mut again = open(&hub, "tok-alice-2").await;
    hub.write_config(&good);
    std::fs::write(hub.dir.path().join("mapping.toml"), "[resources.app]\nlist = [\"applications\"]\n").unwrap();
    let said = hub.reload().await;
    assert!(said.contains("configuration reloaded") && said.contains("mapping: file"), "a valid file is taken again: {said}");
    hub.publish("acme", &[json!({"activity_type": "edited", "resource": {"type": "app"}, "metadata": {"n": 99}})]).await;
    assert_eq!(again.next_non_ping(T).await.unwrap().data["invalidate"], json!([["applications"]]));
}

/// The mapping, CORS origins and limits change for the next request; open streams stay.
#[tokio::test]
async fn mapping_cors_and_limits_change_live() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.toml"), "[resources.app]\nlist = [\"old-key\"]\n").unwrap();
    let base = config("", "[mapping]\nfile = \"mapping.toml\"\n");
    let hub = Hub::start_in(dir, &base, "127.0.0.1:0").await;
    let mut alice = open(&hub, "tok-alice").await;
    let app = |n: u64| json!({"activity_type": "edited", "resource": {"type": "App"}, "metadata": {"n": n}});
    hub.publish("acme", &[app(1)]).await;
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["invalidate"], json!([["old-key"]]));

    let origin = "https://console.example";
    let preflight = || async {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, hub.url("/events/stream"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap()
    };
    let cookie_from_console = || async {
        Sse::connect(&hub, &[("cookie", "tidings_session=tok-alice-3"), ("origin", origin)]).await.status
    };
    assert!(preflight().await.headers().get("access-control-allow-origin").is_none());
    assert_eq!(cookie_from_console().await, 403, "another origin may not use the cookie yet");
    let big_body = json!({"account": "acme", "data": {"activity_type": "edited", "pad": "x".repeat(2000)}}).to_string();
    assert_eq!(hub.publish_raw(&big_body, "application/json", PUBLISHER_KEY).await.0, 202);
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["data"]["pad"].as_str().map(str::len), Some(2000));

    std::fs::write(hub.dir.path().join("mapping.toml"), "[resources.app]\nlist = [\"new-key\"]\n").unwrap();
    let changed = base.replace("heartbeat = \"500ms\"", "heartbeat = \"500ms\"\nretry = \"7s\"")
        + &format!("[cors]\nallowed_origins = [\"{origin}\"]\n[limits]\npublish_body_bytes = 1024\nstreams_per_account = 2\n");
    hub.write_config(&changed);
    let said = hub.reload().await;
    for expected in [
        "mapping: file",
        "cors.allowed_origins: added https://console.example",
        "limits.publish_body_bytes: 1048576 → 1024",
        "limits.streams_per_account: 10000 → 2",
        "retry: 2s → 7s",
    ] {
        assert!(said.contains(expected), "{expected:?} not in {said}");
    }

    hub.publish("acme", &[app(2)]).await;
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["invalidate"], json!([["new-key"]]), "the stream stayed open");
    let mapping: Value = reqwest::get(hub.url("/mapping")).await.unwrap().json().await.unwrap();
    assert_eq!(mapping["resources"]["app"]["list"], json!([["new-key"]]));
    assert_eq!(preflight().await.headers()["access-control-allow-origin"], origin);
    let mut alice3 = Sse::connect(&hub, &[("cookie", "tidings_session=tok-alice-3"), ("origin", origin)]).await;
    assert_eq!(alice3.status, 200, "the listed origin may use the cookie");
    assert_eq!(alice3.retry, None);
    alice3.next_within(T).await.unwrap();
    assert_eq!(alice3.retry, Some(7000), "new streams get the new retry");
    let (status, answer) = hub.publish_raw(&big_body, "application/json", PUBLISHER_KEY).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (413, Some("body_too_large")));
    let third = Sse::token(&hub, "tok-alice-2").await;
    assert_eq!(third.status, 429, "the lowered cap holds for new streams");
    hub.publish("acme", &[app(3)]).await;
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["data"]["metadata"]["n"], 3, "streams above a lowered cap stay");
}

/// Settings that only take effect at a restart keep their running values, and the log says so.
#[tokio::test]
async fn restart_only_settings_are_kept_and_named() {
    let hub = Hub::start(&config("", "")).await;
    let changed = config("", "[history]\nmax_events = 10\n[engine]\nkind = \"durable\"\ndata_dir = \"data\"\n").replace("heartbeat = \"500ms\"", "heartbeat = \"30s\"\nlisten = \"127.0.0.1:1\"");
    hub.write_config(&changed);
    let said = hub.reload().await;
    assert!(said.contains("only take effect at a restart") && said.contains("heartbeat, engine, history"), "{said}");
    assert!(said.contains("configuration reloaded"), "the rest is applied: {said}");
    let mut s = open(&hub, "tok-alice").await;
    assert!(!hub.dir.path().join("data").exists(), "no durable engine was started");
    // Still the 500 ms heartbeat.
    let ping = s.next_within(Duration::from_secs(3)).await.unwrap();
    assert_eq!(ping.kind(), "ping");
    assert_eq!(reqwest::get(hub.url("/healthz")).await.unwrap().status(), 200, "still on the same address");
}

const SECRET_A: &str = "jwt-secret-a-of-32-bytes-length!";
const SECRET_B: &str = "jwt-secret-b-of-32-bytes-length!";

fn jwt(secret: &str, session: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    encode(&Header::new(Algorithm::HS256), &json!({"account": "acme", "sub": "dana", "sid": session, "exp": exp}), &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// A new JWT key closes the streams the old key vouched for; static tokens are untouched; a
/// change of claims settings alone closes nothing.
#[tokio::test]
async fn a_new_jwt_key_revokes_the_streams_of_the_old_one() {
    let jwt_config = |secret: &str, leeway: &str| config("", &format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\nleeway = \"{leeway}\"\n"));
    let hub = Hub::start(&jwt_config(SECRET_A, "5s")).await;
    let mut dana = open(&hub, &jwt(SECRET_A, "s-dana")).await;
    let mut alice = open(&hub, "tok-alice").await;

    hub.write_config(&jwt_config(SECRET_A, "1s"));
    let said = hub.reload().await;
    assert!(said.contains("auth.jwt: settings changed (same key)") && said.contains("revoked=0"), "{said}");

    hub.write_config(&jwt_config(SECRET_B, "1s"));
    let said = hub.reload().await;
    assert!(said.contains("auth.jwt: key changed") && said.contains("revoked=1"), "{said}");
    assert!(!said.contains(SECRET_A) && !said.contains(SECRET_B));
    assert_eq!(closed_with(&mut dana).await, "revoked");
    assert_eq!(Sse::token(&hub, &jwt(SECRET_A, "s-dana")).await.status, 401);
    let mut dana = open(&hub, &jwt(SECRET_B, "s-dana")).await;
    hub.publish("acme", &[activity(4)]).await;
    assert_eq!(dana.activities(1, T).await, vec![4]);
    assert_eq!(alice.activities(1, T).await, vec![4]);
}

/// Introspected streams stay while introspection is configured (its cache too), and are
/// revoked when it is turned off.
#[tokio::test]
async fn introspection_turned_off_revokes_its_streams() {
    use std::sync::atomic::AtomicUsize;
    let calls = Arc::new(AtomicUsize::new(0));
    let url = {
        use axum::{Json, Router, routing::post};
        let calls = calls.clone();
        let app = Router::new().route(
            "/introspect",
            post(move |Json(body): Json<Value>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    Json(match body["token"].as_str() {
                        Some("opaque-frank") => json!({"active": true, "account": "acme", "user": "frank", "session": "s-frank"}),
                        _ => json!({"active": false}),
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/introspect")
    };
    let with = |extra: &str| config(extra, &format!("[auth.introspection]\nurl = \"{url}\"\ncache_ttl = \"60s\"\n"));
    let hub = Hub::start(&with("")).await;
    let mut frank = open(&hub, "opaque-frank").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    hub.write_config(&with("retry = \"3s\""));
    let said = hub.reload().await;
    assert!(said.contains("retry: 2s → 3s") && said.contains("revoked=0"), "{said}");
    hub.publish("acme", &[activity(1)]).await;
    assert_eq!(frank.activities(1, T).await, vec![1], "the introspected stream stayed");
    drop(frank);
    let mut frank = open(&hub, "opaque-frank").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "unchanged introspection settings keep the cache");

    hub.write_config(&config("", ""));
    let said = hub.reload().await;
    assert!(said.contains("auth.introspection: off") && said.contains("revoked=1"), "{said}");
    assert_eq!(closed_with(&mut frank).await, "revoked");
    assert_eq!(Sse::token(&hub, "opaque-frank").await.status, 401);
}

/// The admin key changes on reload; the admin page can be turned on and off; a listener of its
/// own waits for a restart.
#[tokio::test]
async fn the_admin_key_and_page_follow_the_file() {
    let hub = Hub::start(&config("", "")).await;
    let api = |key: &'static str| {
        let url = hub.url("/admin/api/overview");
        async move { reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(api("admin-key-one-0123456789").await, 404);
    hub.write_config(&config("", "[admin]\nkey = \"admin-key-one-0123456789\"\n"));
    assert!(hub.reload().await.contains("admin: on"));
    assert_eq!(api("admin-key-one-0123456789").await, 200);

    hub.write_config(&config("", "[admin]\nkey = \"admin-key-two-0123456789\"\n"));
    let said = hub.reload().await;
    assert!(said.contains("admin.key: changed") && !said.contains("admin-key-"), "{said}");
    assert_eq!(api("admin-key-one-0123456789").await, 401);
    assert_eq!(api("admin-key-two-0123456789").await, 200);

    hub.write_config(&config("", "[admin]\nkey = \"admin-key-two-0123456789\"\nlisten = \"127.0.0.1:0\"\n"));
    let said = hub.reload().await;
    assert!(said.contains("admin.listen"), "{said}");
    assert_eq!(api("admin-key-two-0123456789").await, 200, "still where it was, until a restart");

    hub.write_config(&config("", ""));
    assert!(hub.reload().await.contains("admin: off"));
    assert_eq!(api("admin-key-two-0123456789").await, 404);
}

/// A stream whose credential is being checked while a reload removes its provider does not
/// open: its introspection answer arrives after the reload's sweep of open streams, so the
/// request itself must notice the reload.
#[tokio::test]
async fn a_stream_authenticated_during_a_reload_that_removes_its_provider_does_not_open() {
    use axum::{Json, Router, routing::post};
    const ANSWER_DELAY: Duration = Duration::from_millis(800);
    let app = Router::new().route(
        "/introspect",
        post(|| async {
            tokio::time::sleep(ANSWER_DELAY).await;
            Json(json!({"active": true, "account": "acme", "user": "frank", "session": "s-frank"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hub = Arc::new(Hub::start(&config("", &format!("[auth.introspection]\nurl = \"http://{addr}/introspect\"\n"))).await);

    let asking = {
        let hub = hub.clone();
        tokio::spawn(async move { Sse::token(&hub, "opaque-frank").await })
    };
    tokio::time::sleep(ANSWER_DELAY / 4).await;
    hub.write_config(&config("", ""));
    let said = hub.reload().await;
    assert!(said.contains("auth.introspection: off") && said.contains("revoked=0"), "the request was not open yet: {said}");
    let refused = asking.await.unwrap();
    assert_eq!(refused.status, 401, "the provider that vouched is gone");
    assert_eq!(hub.metric("tidings_streams_open").await, 0.0);
}

/// SIGHUP without a configuration file, and in the demo: nothing to reload, nothing changes.
#[tokio::test]
async fn without_a_file_there_is_nothing_to_reload() {
    for args in [&["serve"][..], &["demo", "--no-teammate"][..]] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let listening = tidings_testkit::hub::wait_listening(&mut child, T).await.unwrap();
        let pid = child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        let deadline = tokio::time::Instant::now() + T;
        while !listening.output.lock().unwrap().iter().any(|l| l.contains("nothing to reload") || l.contains("no configuration file to reload")) {
            assert!(tokio::time::Instant::now() < deadline, "{args:?}: {:?}", listening.output);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = reqwest::get(format!("http://{}/healthz", listening.addr)).await.unwrap();
        assert_eq!(r.status(), 200, "{args:?} still serves");
    }
}
