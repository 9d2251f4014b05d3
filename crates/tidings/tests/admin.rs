//! The admin page and its API, black-box against the real binary: off by default, nothing
//! without its key, a key of its own checked at start, its own listener, and what it shows and
//! does (activities and their keys, unresolved types with the entry to add, accounts and
//! sessions, revoke, test publish, the resolver playground, the charts' samples).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

/// A mapping that knows one resource type, so that other types are unresolved.
const MAPPING: &str = "[resources.\"edge application\"]\nid = \"number\"\nlist = [\"applications\"]\ndetail = [\"applications\", \"{id}\"]\n";

/// The hub's test configuration with the admin page on (and `admin` appended to `[admin]`),
/// resolving with [`MAPPING`] from `mapping.toml` beside the configuration.
async fn admin_hub(admin: &str) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.toml"), MAPPING).unwrap();
    let toml = config("", &format!("[mapping]\nfile = \"mapping.toml\"\n[admin]\nkey = \"{ADMIN_KEY}\"\n{admin}"));
    Hub::start_in(dir, &toml, "127.0.0.1:0").await
}

fn app(activity_type: &str, id: u64) -> Value {
    json!({"activity_type": activity_type, "resource": {"type": "edge_application", "name": format!("app {id}")}, "metadata": {"id": id}, "description": format!("app {id} was {activity_type}")})
}

fn mystery(id: u64) -> Value {
    json!({"activity_type": "created", "resource": {"type": "Mystery Box", "id": id}, "description": "a box appeared"})
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

#[tokio::test]
async fn the_admin_page_is_off_unless_configured() {
    let hub = Hub::start(&config("", "")).await;
    for path in ["/admin", "/admin/", "/admin/admin.js", "/admin/api/overview", "/admin/api/snapshot", "/admin/api/nope"] {
        assert_eq!(get(&hub.url(path)).await.status(), 404, "{path}");
    }
    let r = reqwest::Client::new().get(hub.url("/admin/api/overview")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 404, "no key opens what is not there");
    assert!(!hub.logs().contains("admin page:"), "{}", hub.logs());
}

#[tokio::test]
async fn without_the_admin_key_the_api_answers_401_and_nothing_else() {
    let hub = admin_hub("").await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    alice.next_within(T).await.unwrap();
    hub.publish("acme", &[app("edited", 7), mystery(1)]).await;

    let client = reqwest::Client::new();
    let gets = ["snapshot", "overview", "series", "accounts", "sessions?account=acme", "activities", "unresolved", "nope"];
    let posts = ["resolve", "revoke", "publish", "nope"];
    let credentials: [(&str, Option<(&str, String)>); 7] = [
        ("none", None),
        ("a wrong key", Some(("authorization", "Bearer admin-key-0123456789abcdeX".into()))),
        ("a user token", Some(("authorization", "Bearer tok-alice".into()))),
        ("a publisher key", Some(("authorization", format!("Bearer {PUBLISHER_KEY}")))),
        ("the key in a cookie", Some(("cookie", format!("tidings_session={ADMIN_KEY}")))),
        ("the key in the query", None),
        ("another scheme", Some(("authorization", format!("Basic {ADMIN_KEY}")))),
    ];
    for (what, header) in &credentials {
        for (method, path) in gets.iter().map(|p| ("GET", p)).chain(posts.iter().map(|p| ("POST", p))) {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match *what {
                "the key in the query" => format!("{}{sep}access_token={ADMIN_KEY}", hub.url(&format!("/admin/api/{path}"))),
                _ => hub.url(&format!("/admin/api/{path}")),
            };
            let mut req = match method {
                "GET" => client.get(url),
                _ => client.post(url).json(&json!({"account": "acme", "data": mystery(2)})),
            };
            if let Some((name, value)) = header {
                req = req.header(*name, value);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {what}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            assert_eq!(resp.headers()["cache-control"], "no-store");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["error"], "{method} {path} with {what}: {body}");
            assert!(!body.to_string().contains("acme") && !body.to_string().contains("mystery"), "{body}");
        }
    }
    // Nothing was done by any of those: no revoke, no publish.
    hub.publish("acme", &[app("edited", 8)]).await;
    let e = alice.next_non_ping(T).await.unwrap();
    assert_eq!(e.kind(), "activity", "the stream is open: {:?}", e.data);
    assert_eq!(e.data["data"]["metadata"]["id"], 7);
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["data"]["resource"]["type"], "Mystery Box");
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["data"]["metadata"]["id"], 8, "no test activity was published");

    // With the key, an unknown route is a 404; the page's own files need no key and carry no data.
    let (status, _) = hub.admin_api(Some(ADMIN_KEY), "nope", None).await;
    assert_eq!(status, 404);
    let page = get(&hub.url("/admin/")).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(page.headers().get("set-cookie").is_none());
    let html = page.text().await.unwrap();
    assert!(html.contains("admin.js") && !html.contains("acme"));
    assert_eq!(get(&hub.url("/admin")).await.url().path(), "/admin/", "redirected to the page");
}

/// The hub refuses to start with an admin key that is weak or shared with another credential,
/// and says why without printing the key.
#[tokio::test]
async fn a_weak_or_shared_admin_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.toml"), "[[tokens]]\ntoken = \"tok-from-the-file-0123\"\naccount = \"acme\"\nuser = \"x\"\nsession = \"s-x\"\n").unwrap();
    let jwt = "[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"jwt-secret-0123456789abcdef\"\n";
    let cases = [
        ("[admin]\nkey = \"short-key\"\n".to_owned(), "at least 16 characters"),
        (format!("[admin]\nkey = \"{PUBLISHER_KEY}-0123456789\"\n[[auth.publishers]]\nkey = \"{PUBLISHER_KEY}-0123456789\"\n"), "also a publisher key"),
        ("[admin]\nkey = \"tok-from-the-file-0123\"\n".to_owned(), "also a user token"),
        (format!("[admin]\nkey = \"jwt-secret-0123456789abcdef\"\n{jwt}"), "also the JWT secret"),
        ("[admin]\nkey = \" 0123456789abcdef \"\n".to_owned(), "spaces"),
        ("[admin]\nlisten = \"127.0.0.1:9\"\n".to_owned(), "missing field `key`"),
    ];
    for (admin, why) in cases {
        let toml = config("", &admin).replace("[auth]\n", "[auth]\ntokens_file = \"tokens.toml\"\n");
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, &toml).unwrap();
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings")).args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&path).output();
        let out = tokio::time::timeout(T, run).await.expect("refused at once").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {admin:?}");
        assert!(stderr.contains(why), "{why:?} not in {stderr}");
        assert!(out.stdout.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&out.stdout));
        let key = admin.lines().find_map(|l| l.strip_prefix("key = ")).unwrap_or("\"\"").trim_matches('"').trim();
        if !key.is_empty() {
            assert!(!stderr.contains(key), "the key is in the error: {stderr}");
        }
    }
}

/// A small host application answering introspection requests, counting them and remembering
/// every token it was sent.
async fn introspection_server(calls: Arc<AtomicUsize>, seen: Arc<std::sync::Mutex<Vec<String>>>) -> String {
    use axum::{Json, Router, routing::post};
    let app = Router::new().route(
        "/introspect",
        post(move |Json(body): Json<Value>| {
            calls.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(body["token"].as_str().unwrap_or_default().to_owned());
            async move { Json(json!({"active": false})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/introspect")
}

/// The admin key only opens the admin API: it neither streams nor publishes, and it is never
/// sent to the introspection endpoint (where user credentials go).
#[tokio::test]
async fn the_admin_key_neither_streams_nor_publishes_nor_travels() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::default();
    let url = introspection_server(calls.clone(), Arc::clone(&seen)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config("", &format!("[auth.introspection]\nurl = \"{url}\"\n[admin]\nkey = \"{ADMIN_KEY}\"\n"));
    let hub = Hub::start_in(dir, &toml, "127.0.0.1:0").await;
    assert_eq!(Sse::token(&hub, ADMIN_KEY).await.status, 403);
    assert_eq!(Sse::connect(&hub, &[("cookie", &format!("tidings_session={ADMIN_KEY}"))]).await.status, 403);
    let (status, answer) = hub.publish_raw(&json!({"account": "acme", "data": mystery(1)}).to_string(), "application/json", ADMIN_KEY).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the admin key never reached the introspection endpoint");
    assert_eq!(Sse::token(&hub, "some-user-token").await.status, 401);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "while user tokens do");
    assert!(!seen.lock().unwrap().iter().any(|t| t == ADMIN_KEY));
    assert!(!hub.logs().contains(ADMIN_KEY), "the key never reaches the logs");
}

/// With `[admin] listen`, the page, its API and `/metrics` live on that address only.
#[tokio::test]
async fn its_own_listener_takes_the_page_and_metrics_off_the_public_port() {
    let hub = admin_hub("listen = \"127.0.0.1:0\"\n").await;
    let admin = format!("http://{}", hub.admin_addr().await);
    assert_ne!(hub.admin_addr().await, hub.addr);
    for path in ["/admin/", "/admin/api/overview", "/metrics"] {
        assert_eq!(get(&hub.url(path)).await.status(), 404, "public {path}");
    }
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.status, 200, "streams stay public");
    alice.next_within(T).await.unwrap();
    assert_eq!(get(&format!("{admin}/admin/")).await.status(), 200);
    assert_eq!(get(&format!("{admin}/admin/api/overview")).await.status(), 401);
    let metrics = get(&format!("{admin}/metrics")).await;
    assert_eq!(metrics.status(), 200, "scrapes need no key, only the address");
    assert!(metrics.text().await.unwrap().contains("tidings_streams_open"));
    assert_eq!(get(&format!("{admin}/healthz")).await.status(), 200);
    assert_eq!(get(&format!("{admin}/readyz")).await.status(), 200);
    for path in ["/events/stream", "/events", "/mapping"] {
        assert_eq!(get(&format!("{admin}{path}")).await.status(), 404, "admin {path}");
    }
    let (status, overview) = hub.admin_api(Some(ADMIN_KEY), "overview", None).await;
    assert_eq!((status, overview["streams"].as_u64()), (200, Some(1)));
}

/// What the page shows and does, through its API: recent activities with their keys and the
/// entry that answered, unresolved types with the entry to add, accounts and their sessions,
/// revoke, a test publish, the resolver playground and the charts' samples.
#[tokio::test]
async fn the_api_shows_what_flows_and_acts_on_it() {
    let hub = admin_hub("").await;
    let key = Some(ADMIN_KEY);
    let mut alice = Sse::token(&hub, "tok-alice").await;
    let mut alice2 = Sse::token(&hub, "tok-alice-2").await;
    let mut bob = Sse::token(&hub, "tok-bob").await;
    for s in [&mut alice, &mut alice2, &mut bob] {
        s.next_within(T).await.unwrap();
    }
    hub.publish("acme", &[app("edited", 7), mystery(1), mystery(2)]).await;
    let ids = hub.publish("globex", &[app("deleted", 9)]).await;

    let (_, recent) = hub.admin_api(key, "activities", None).await;
    let recent = recent["activities"].as_array().unwrap();
    assert_eq!(recent.len(), 4);
    let newest = &recent[0];
    assert_eq!(newest["id"], ids[0].as_str(), "newest first");
    assert_eq!((newest["account"].as_str(), newest["publisher"].as_str()), (Some("globex"), Some("unnamed")));
    assert_eq!((newest["tier"].as_str(), newest["entry"].as_str()), (Some("resource"), Some("resources.\"edge application\"")));
    assert_eq!(newest["invalidate"], json!([["applications"]]));
    assert_eq!(newest["remove"], json!([["applications", 9]]));
    assert_eq!(newest["data"]["metadata"]["id"], 9, "the activity itself, for the playground");
    let unresolved_one = &recent[1];
    assert_eq!((unresolved_one["tier"].clone(), unresolved_one["resource_type"].as_str()), (Value::Null, Some("mystery box")));

    let (_, unresolved) = hub.admin_api(key, "unresolved", None).await;
    let types = unresolved["types"].as_array().unwrap();
    assert_eq!(types.len(), 1, "{unresolved}");
    assert_eq!((types[0]["resource_type"].as_str(), types[0]["count"].as_u64()), (Some("mystery box"), Some(2)));
    assert!(types[0]["first_seen"].as_str().unwrap() <= types[0]["last_seen"].as_str().unwrap());
    let entry = types[0]["mapping_entry"].as_str().unwrap();
    assert!(entry.starts_with("[resources.\"mystery box\"]\nlist = [\"mystery-box\"]"), "{entry}");

    let (_, accounts) = hub.admin_api(key, "accounts", None).await;
    assert_eq!(accounts["accounts"], 2);
    assert_eq!(accounts["top"][0]["account"], "acme");
    assert_eq!((accounts["top"][0]["streams"].as_u64(), accounts["top"][0]["sessions"].as_u64()), (Some(2), Some(2)));
    assert!(accounts["top"][0]["last_activity"].is_string());
    assert_eq!((accounts["top"][1]["account"].as_str(), accounts["top"][1]["streams"].as_u64()), (Some("globex"), Some(1)));
    let (_, top1) = hub.admin_api(key, "accounts?top=1", None).await;
    assert_eq!(top1["top"].as_array().unwrap().len(), 1);

    let (_, sessions) = hub.admin_api(key, "sessions?account=acme", None).await;
    let listed: Vec<(&str, &str)> = sessions["sessions"].as_array().unwrap().iter().map(|s| (s["session"].as_str().unwrap(), s["credential"].as_str().unwrap())).collect();
    assert_eq!(listed, [("s-alice", "static token"), ("s-alice-2", "static token")]);

    // Revoke one session: its stream ends with `revoked`, the other stays.
    let (status, answer) = hub.admin_api(key, "revoke", Some(&json!({"account": "acme", "session": "s-alice"}))).await;
    assert_eq!((status, answer["closed"].as_u64()), (200, Some(1)));
    let closed = drain_to_close(&mut alice).await;
    assert_eq!(closed.data["reason"], "revoked");
    let (_, sessions) = hub.admin_api(key, "sessions?account=acme", None).await;
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);

    // A test activity: published, delivered, listed as the admin's.
    let (status, published) = hub.admin_api(key, "publish", Some(&json!({"account": "globex", "data": app("created", 11)}))).await;
    assert_eq!(status, 202, "{published}");
    let e = bob.next_non_ping(T).await.unwrap();
    assert_eq!((e.kind(), e.data["data"]["metadata"]["id"].as_u64()), ("activity", Some(9)));
    let e = bob.next_non_ping(T).await.unwrap();
    assert_eq!((e.id.as_deref(), e.data["invalidate"].clone()), (published["ids"][0].as_str(), json!([["applications"]])));
    let (_, recent) = hub.admin_api(key, "activities", None).await;
    assert_eq!(recent["activities"][0]["publisher"], "admin");
    for (body, status, field) in [
        (json!([{"account": "globex", "data": app("created", 1)}, {"account": "globex", "data": app("created", 2)}]), 422, "body"),
        (json!({"account": "", "data": app("created", 1)}), 422, "account"),
        (json!({"account": "globex", "data": {"activity_type": "exploded"}}), 422, "data.activity_type"),
    ] {
        let (got, answer) = hub.admin_api(key, "publish", Some(&body)).await;
        assert_eq!((got, answer["error"]["field"].as_str()), (status, Some(field)), "{body}: {answer}");
    }

    // The playground, with an activity, a publish item, and something no tier resolves.
    let (_, r) = hub.admin_api(key, "resolve", Some(&app("deleted", 5))).await;
    assert_eq!((r["tier"].as_str(), r["entry"].as_str(), r["remove"].clone()), (Some("resource"), Some("resources.\"edge application\""), json!([["applications", 5]])));
    let (_, r) = hub.admin_api(key, "resolve", Some(&json!({"account": "acme", "data": app("edited", 5)}))).await;
    assert_eq!(r["invalidate"], json!([["applications"]]));
    let (_, r) = hub.admin_api(key, "resolve", Some(&mystery(3))).await;
    assert_eq!(r["tier"], Value::Null);
    assert!(r["mapping_entry"].as_str().unwrap().contains("[resources.\"mystery box\"]"), "{r}");
    let raw = reqwest::Client::new().post(hub.url("/admin/api/resolve")).bearer_auth(ADMIN_KEY).body("{not json").send().await.unwrap();
    assert_eq!(raw.status(), 400);
    let big = reqwest::Client::new().post(hub.url("/admin/api/resolve")).bearer_auth(ADMIN_KEY).body(vec![b' '; 2 * 1024 * 1024]).send().await.unwrap();
    assert_eq!(big.status(), 413, "bodies are bounded by limits.publish_body_bytes");

    // Revoke a whole account.
    let (_, answer) = hub.admin_api(key, "revoke", Some(&json!({"account": "acme"}))).await;
    assert_eq!(answer["closed"], 1);
    assert_eq!(drain_to_close(&mut alice2).await.data["reason"], "revoked");

    // The charts' samples: one a second, counters as differences.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_, snap) = hub.admin_api(key, "snapshot", None).await;
    let samples = snap["series"]["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{snap}");
    let sum = |field: &str| samples.iter().map(|s| s[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("published"), 5, "every publish counted once: {samples:?}");
    let revoked_at = snap["series"]["close_reasons"].as_array().unwrap().iter().position(|r| r == "revoked").unwrap();
    assert_eq!(samples.iter().map(|s| s["closes"][revoked_at].as_u64().unwrap()).sum::<u64>(), 2);
    let last = samples.last().unwrap()["at"].as_u64().unwrap();
    let (_, newer) = hub.admin_api(key, &format!("series?since={last}"), None).await;
    assert!(newer["samples"].as_array().unwrap().iter().all(|s| s["at"].as_u64().unwrap() > last));
    assert_eq!((snap["overview"]["streams"].as_u64(), snap["overview"]["accounts"].as_u64()), (Some(1), Some(1)));
    assert_eq!(snap["overview"]["unresolved"], 2);
}

/// The entry the page suggests for an unresolved type, pasted into the mapping file and
/// reloaded with SIGHUP, resolves that type, and the type leaves the list.
#[tokio::test]
async fn the_suggested_entry_resolves_the_type_after_a_reload() {
    let hub = admin_hub("").await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    alice.next_within(T).await.unwrap();
    hub.publish("acme", &[mystery(1)]).await;
    assert_eq!(alice.next_non_ping(T).await.unwrap().data["invalidate"], json!([]));
    let (_, unresolved) = hub.admin_api(Some(ADMIN_KEY), "unresolved", None).await;
    let entry = unresolved["types"][0]["mapping_entry"].as_str().unwrap().to_owned();

    std::fs::write(hub.dir.path().join("mapping.toml"), format!("{MAPPING}\n{entry}")).unwrap();
    let said = hub.reload().await;
    assert!(said.contains("configuration reloaded") && said.contains("mapping: file"), "{said}");
    hub.publish("acme", &[mystery(2)]).await;
    let e = alice.next_non_ping(T).await.unwrap();
    assert_eq!(e.data["invalidate"], json!([["mystery-box"]]), "{:?}", e.data);
    let (_, unresolved) = hub.admin_api(Some(ADMIN_KEY), "unresolved", None).await;
    assert_eq!(unresolved["types"], json!([]), "mapped types leave the list");
    let (_, overview) = hub.admin_api(Some(ADMIN_KEY), "overview", None).await;
    assert_eq!(overview["reloads"], 1);
}

/// Reads a stream up to its `closed` frame.
async fn drain_to_close(s: &mut Sse) -> Event {
    loop {
        let e = s.next_non_ping(T).await.expect("a closed frame before the end");
        if e.kind() == "closed" {
            return e;
        }
    }
}
