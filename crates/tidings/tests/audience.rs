//! Audiences inside an account, black-box: grants from each identity source (static tokens,
//! JWT claims as an array and as a string, introspection), the implicit `user:` and
//! `session:` grants, audiences from the publisher and from the mapping, resume past hidden
//! events on every engine, every refusal, and grants kept out of frames and logs. The property
//! over random identities and audiences is `audience_property.rs`.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::redis::Redis;
use support::*;

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// Tokens of the account `acme` beside the harness's own (`tok-alice`: alice@example.com,
/// session `s-alice`, no grants).
const GRANTED_TOKENS: &str = r#"
[[auth.tokens]]
token = "tok-admin"
account = "acme"
user = "ann@example.com"
session = "s-ann"
grants = ["role:admin", "billing:read"]

[[auth.tokens]]
token = "tok-viewer"
account = "acme"
user = "vic@example.com"
session = "s-vic"
grants = ["role:viewer"]
"#;

/// Publishes one activity per `(marker, audience)` in one batch; `None` is no audience.
async fn publish_with(hub: &Hub, account: &str, items: &[(u64, Option<Value>)]) -> Vec<String> {
    let body: Vec<Value> = items
        .iter()
        .map(|(n, audience)| {
            let mut item = json!({"account": account, "data": activity(*n)});
            if let Some(a) = audience {
                item["audience"] = a.clone();
            }
            item
        })
        .collect();
    let (status, answer) = hub.publish_raw(&Value::Array(body).to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "{answer}");
    answer["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// An open stream, past its `connected` frame (whose id it returns).
async fn open(hub: &Hub, token: &str) -> (Sse, String) {
    let mut s = Sse::token(hub, token).await;
    assert_eq!(s.status, 200, "{token}");
    let connected = s.next_within(T).await.unwrap();
    assert_eq!(connected.kind(), "connected");
    (s, connected.id.unwrap())
}

/// Reads activities up to and including marker `last`, checking no frame carries an audience.
async fn read_until(s: &mut Sse, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let e = s.next_non_ping(T).await.expect("stream ended early");
        assert_eq!(e.kind(), "activity", "{:?}", e.data);
        assert!(e.data.get("audience").is_none() && e.data["data"].get("audience").is_none(), "audiences are never sent: {:?}", e.data);
        seen.push(e.n());
        if e.n() == last {
            return seen;
        }
    }
}

#[tokio::test]
async fn static_token_grants_and_the_implicit_user_and_session_grants_decide_what_each_stream_sees() {
    let hub = Hub::start(&config("", GRANTED_TOKENS)).await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let (mut viewer, _) = open(&hub, "tok-viewer").await;
    let (mut alice, _) = open(&hub, "tok-alice").await;
    publish_with(
        &hub,
        "acme",
        &[
            (1, None),
            (2, Some(json!(["role:admin"]))),
            (3, Some(json!(["role:viewer", "billing:read"]))),
            (4, Some(json!(["user:alice@example.com"]))),
            (5, Some(json!(["session:s-vic"]))),
            (6, Some(json!(["role:Admin", "user:ann", "session:s-ann "]))),
            (7, None),
        ],
    )
    .await;
    assert_eq!(read_until(&mut admin, 7).await, [1, 2, 3, 7]);
    assert_eq!(read_until(&mut viewer, 7).await, [1, 3, 5, 7]);
    assert_eq!(read_until(&mut alice, 7).await, [1, 4, 7], "no grants: the account's events and her own");
    let delivered = hub.metric("tidings_events_delivered_total").await;
    assert_eq!(delivered, 11.0, "only deliveries made are counted");
}

#[tokio::test]
async fn jwt_grants_are_read_from_the_claim_as_an_array_or_a_space_separated_string() {
    let hub = Hub::start(&config("", &format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\ngrants_claim = \"scope\"\n"))).await;
    let token = |sid: &str, scope: Option<Value>| {
        let mut claims = json!({"account": "acme", "sub": "dana", "sid": sid, "exp": now() + 600});
        if let Some(scope) = scope {
            claims["scope"] = scope;
        }
        jwt(claims)
    };
    let (mut array, _) = open(&hub, &token("s-1", Some(json!(["reports:read", "billing:read"])))).await;
    let (mut string, _) = open(&hub, &token("s-2", Some(json!("billing:read reports:read")))).await;
    let (mut without, _) = open(&hub, &token("s-3", None)).await;
    publish_with(&hub, "acme", &[(1, Some(json!(["billing:read"]))), (2, Some(json!(["session:s-3"]))), (3, None)]).await;
    assert_eq!(read_until(&mut array, 3).await, [1, 3]);
    assert_eq!(read_until(&mut string, 3).await, [1, 3]);
    assert_eq!(read_until(&mut without, 3).await, [2, 3]);

    // Grants the hub cannot use refuse the token (403), rather than cutting its view short.
    let many: Vec<String> = (0..257).map(|i| format!("g{i}")).collect();
    for (name, scope) in [
        ("reserved user grant", json!(["user:someone-else"])),
        ("reserved session grant", json!("a session:s-9")),
        ("not strings", json!(["a", 7])),
        ("not a list", json!({"a": true})),
        ("too many", json!(many)),
        ("too long", json!(["g".repeat(321)])),
    ] {
        let s = Sse::token(&hub, &token("s-4", Some(scope))).await;
        assert_eq!(s.status, 403, "{name}");
    }
}

/// A host application answering introspection with grants.
async fn introspection_server() -> String {
    use axum::{Json, Router, routing::post};
    let app = Router::new().route(
        "/introspect",
        post(|Json(body): Json<Value>| async move {
            let answer = match body["token"].as_str() {
                Some("opaque-billing") => json!({"active": true, "account": "acme", "user": "gina", "session": "s-gina", "grants": ["billing:read"]}),
                Some("opaque-scope") => json!({"active": true, "account": "acme", "user": "hal", "session": "s-hal", "grants": "billing:read team:7"}),
                Some("opaque-plain") => json!({"active": true, "account": "acme", "user": "ivy", "session": "s-ivy"}),
                Some("opaque-bad") => json!({"active": true, "account": "acme", "user": "joe", "session": "s-joe", "grants": ["session:s-gina"]}),
                _ => json!({"active": false}),
            };
            Json(answer)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/introspect")
}

#[tokio::test]
async fn introspection_answers_carry_grants() {
    let url = introspection_server().await;
    let hub = Hub::start(&config("", &format!("[auth.introspection]\nurl = \"{url}\"\n"))).await;
    let (mut billing, _) = open(&hub, "opaque-billing").await;
    let (mut scope, _) = open(&hub, "opaque-scope").await;
    let (mut plain, _) = open(&hub, "opaque-plain").await;
    publish_with(&hub, "acme", &[(1, Some(json!(["billing:read"]))), (2, Some(json!(["team:7", "user:ivy"]))), (3, None)]).await;
    assert_eq!(read_until(&mut billing, 3).await, [1, 3]);
    assert_eq!(read_until(&mut scope, 3).await, [1, 2, 3]);
    assert_eq!(read_until(&mut plain, 3).await, [2, 3]);
    assert_eq!(Sse::token(&hub, "opaque-bad").await.status, 403, "an answer granting another session is refused");
}

#[tokio::test]
async fn publishes_with_a_bad_audience_are_refused_whole_naming_the_field() {
    let hub = Hub::start(&config("", GRANTED_TOKENS)).await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let item = |audience: &str| format!(r#"{{"account":"acme","data":{{"activity_type":"created","metadata":{{"n":9}}}},"audience":{audience}}}"#);
    let many = format!("[{}]", (0..65).map(|i| format!("\"g{i}\"")).collect::<Vec<_>>().join(","));
    let long = format!("[\"{}\"]", "g".repeat(321));
    for (audience, field) in [
        ("[]", "audience"),
        ("null", "audience"),
        ("\"role:admin\"", "audience"),
        (many.as_str(), "audience"),
        ("[\"role:admin\", 3]", "audience[1]"),
        ("[\"role:admin\", \"a\\u0000b\"]", "audience[1]"),
        ("[\"\"]", "audience[0]"),
        (long.as_str(), "audience[0]"),
    ] {
        let (status, answer) = hub.publish_raw(&item(audience), "application/json", PUBLISHER_KEY).await;
        assert_eq!((status, answer["error"]["code"].as_str(), answer["error"]["field"].as_str()), (422, Some("invalid_field"), Some(field)), "{audience}: {answer}");
    }
    let batch = format!("[{},{}]", item("[\"role:admin\"]"), item("[]"));
    let (status, answer) = hub.publish_raw(&batch, "application/json", PUBLISHER_KEY).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (422, Some("[1].audience")));
    hub.publish("acme", &[activity(10)]).await;
    assert_eq!(read_until(&mut admin, 10).await, [10], "nothing of a refused batch was published");
}

#[tokio::test]
async fn bad_grants_and_audience_rules_in_the_configuration_stop_the_hub_at_start() {
    let token = "[[auth.tokens]]\ntoken = \"tok-secret-xyz\"\naccount = \"acme\"\nuser = \"zed\"\nsession = \"s-z\"\ngrants = [\"user:amy\"]\n";
    let out = run_serve(&config("", token)).await;
    assert!(out.contains("grants of the token of user \"zed\"") && out.contains("implied"), "{out}");
    assert!(!out.contains("tok-secret-xyz"), "the token is never named: {out}");
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("mapping.toml");
    std::fs::write(&mapping, "generic = \"kebab-case\"\n[audience.resources]\n\"invoice\" = []\n").unwrap();
    let out = run_serve(&config("", &format!("[mapping]\nfile = \"{}\"\n", mapping.display()))).await;
    assert!(out.contains("mapping.toml:3:") && out.contains("audience.resources.invoice"), "{out}");
}

/// Runs `tidings serve` with a config that must be refused; returns its output.
async fn run_serve(config_toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, config_toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "the hub started");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn the_mapping_derives_an_audience_when_the_publisher_sends_none() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("mapping.toml");
    std::fs::write(
        &mapping,
        "generic = \"kebab-case\"\n[resources.invoice]\naliases = [\"bill\"]\nlist = [\"invoices\"]\n[audience.resources]\ninvoice = [\"billing:read\"]\n[audience.descriptions]\n\"Payroll\" = [\"role:admin\"]\n",
    )
    .unwrap();
    let hub = Hub::start(&config("", &format!("{GRANTED_TOKENS}\n[mapping]\nfile = \"{}\"\n", mapping.display()))).await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let (mut viewer, _) = open(&hub, "tok-viewer").await;
    let with = |n: u64, kind: &str, description: &str| {
        let mut a = activity(n);
        a["resource"]["type"] = kind.into();
        a["description"] = description.into();
        a
    };
    let body = json!([
        {"account": "acme", "data": with(1, "Invoice", "invoice 1 was edited")},
        {"account": "acme", "data": with(2, "bill", "an alias of the same type")},
        {"account": "acme", "data": with(3, "edge_application", "payroll run 3 was edited")},
        {"account": "acme", "data": with(4, "invoice", "the publisher's audience wins"), "audience": ["role:viewer"]},
        {"account": "acme", "data": with(5, "edge_application", "for everyone")},
    ]);
    let (status, answer) = hub.publish_raw(&body.to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(read_until(&mut admin, 5).await, [1, 2, 3, 5]);
    assert_eq!(read_until(&mut viewer, 5).await, [4, 5]);
}

#[tokio::test]
async fn grants_and_audiences_never_reach_the_logs() {
    let marker = "zq7-secret-grant";
    let tokens = GRANTED_TOKENS.replace("billing:read", marker);
    let jwt_table = format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\ngrants_claim = \"grants\"\n");
    let hub = Hub::start_logged(&config("", &format!("{tokens}{jwt_table}")), "trace").await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let token = jwt(json!({"account": "acme", "sub": "kim", "sid": "s-kim", "exp": now() + 600, "grants": [format!("{marker}-jwt")]}));
    let (mut kim, _) = open(&hub, &token).await;
    let refused = jwt(json!({"account": "acme", "sub": "kim", "sid": "s-kim2", "exp": now() + 600, "grants": [format!("user:{marker}-x")]}));
    assert_eq!(Sse::token(&hub, &refused).await.status, 403);
    publish_with(&hub, "acme", &[(1, Some(json!([marker, format!("{marker}-jwt"), format!("user:{marker}-u")])))]).await;
    let (status, _) = hub.publish_raw(&json!({"account": "acme", "data": activity(2), "audience": [format!("{marker}\u{7}")]}).to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 422);
    assert_eq!(read_until(&mut admin, 1).await, [1]);
    assert_eq!(read_until(&mut kim, 1).await, [1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = hub.logs();
    assert!(logs.contains("stream opened"), "trace logs were captured: {logs}");
    assert!(!logs.contains(marker), "a grant reached the logs:\n{logs}");
}

/// The engines, each as the hub configures it; a Redis engine gets a server of its own.
async fn engines() -> Vec<(&'static str, String, Option<Redis>)> {
    let redis = Redis::start().await;
    vec![
        ("memory", String::new(), None),
        ("durable", "[engine]\nkind = \"durable\"\ndata_dir = \"data\"\n".to_owned(), None),
        ("redis", redis.engine_toml(), Some(redis)),
    ]
}

#[tokio::test]
async fn a_resume_replays_only_what_the_stream_may_see_and_past_hidden_events_needs_no_resync() {
    for (engine, engine_toml, _redis) in engines().await {
        let hub = Hub::start(&config("", &format!("{GRANTED_TOKENS}{engine_toml}"))).await;
        hub.wait_ready().await;
        let (viewer, position) = open(&hub, "tok-viewer").await;
        drop(viewer);
        let admin_only = Some(json!(["role:admin"]));
        let hidden = publish_with(&hub, "acme", &[(1, admin_only.clone()), (2, admin_only.clone()), (3, Some(json!(["session:s-ann"])))]).await;

        // Only hidden events since: the resume is exact, replays nothing and needs no resync.
        let mut s = Sse::resume(&hub, "tok-viewer", &position).await;
        let connected = s.next_within(T).await.unwrap();
        assert_eq!((connected.kind(), connected.data["resumed"].as_bool(), connected.id.as_deref()), ("connected", Some(true), Some(position.as_str())), "{engine}");
        s.expect_quiet(Duration::from_millis(300)).await;
        publish_with(&hub, "acme", &[(4, None)]).await;
        assert_eq!(read_until(&mut s, 4).await, [4], "{engine}: live after the empty replay");
        drop(s);

        // Visible and hidden events interleaved: the replay holds exactly the visible ones.
        publish_with(&hub, "acme", &[(5, admin_only.clone()), (6, Some(json!(["role:viewer"]))), (7, admin_only.clone()), (8, None)]).await;
        let mut s = Sse::resume(&hub, "tok-viewer", &position).await;
        assert_eq!(s.next_within(T).await.unwrap().data["resumed"], true, "{engine}");
        assert_eq!(read_until(&mut s, 8).await, [4, 6, 8], "{engine}");
        let mut admin = Sse::resume(&hub, "tok-admin", &position).await;
        assert_eq!(admin.next_within(T).await.unwrap().data["resumed"], true, "{engine}");
        assert_eq!(read_until(&mut admin, 8).await, [1, 2, 3, 4, 5, 7, 8], "{engine}");
        assert_eq!(hub.metric("tidings_resyncs_total").await, 0.0, "{engine}");
        assert!(!hidden.is_empty());
    }
}

/// `tidings publish` with `--audience`, and with a `--file` whose items carry one: the binary's
/// publisher sends the audience, and a malformed one in a file is refused before sending.
#[tokio::test]
async fn tidings_publish_sends_the_audience_from_its_flag_and_from_a_file() {
    let hub = Hub::start(&config("", GRANTED_TOKENS)).await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let (mut viewer, _) = open(&hub, "tok-viewer").await;
    let publish = |args: Vec<String>| {
        let base = ["publish".to_owned(), "--url".to_owned(), hub.url(""), "--key".to_owned(), PUBLISHER_KEY.to_owned()];
        std::process::Command::new(env!("CARGO_BIN_EXE_tidings")).args(base).args(args).output().unwrap()
    };
    let data = |n: u64| activity(n).to_string();
    let flag = publish(vec!["--account".into(), "acme".into(), "--data".into(), data(1), "--audience".into(), "role:admin,user:nobody".into()]);
    assert!(flag.status.success(), "{}", String::from_utf8_lossy(&flag.stderr));
    let file = hub.dir.path().join("batch.json");
    std::fs::write(&file, json!([{"account": "acme", "data": activity(2), "audience": ["role:viewer"]}, {"account": "acme", "data": activity(3)}]).to_string()).unwrap();
    let batch = publish(vec!["--file".into(), file.display().to_string()]);
    assert!(batch.status.success(), "{}", String::from_utf8_lossy(&batch.stderr));
    assert_eq!(read_until(&mut admin, 3).await, [1, 3]);
    assert_eq!(read_until(&mut viewer, 3).await, [2, 3]);

    std::fs::write(&file, json!({"account": "acme", "data": activity(4), "audience": "role:admin"}).to_string()).unwrap();
    let bad = publish(vec!["--file".into(), file.display().to_string()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("item 0: audience must be an array of strings"), "{}", String::from_utf8_lossy(&bad.stderr));
    let empty = publish(vec!["--account".into(), "acme".into(), "--data".into(), data(5), "--audience".into(), String::new()]);
    assert!(!empty.status.success(), "an empty audience is refused by the hub, naming the field");
    assert!(String::from_utf8_lossy(&empty.stderr).contains("audience"), "{}", String::from_utf8_lossy(&empty.stderr));
    publish_with(&hub, "acme", &[(6, None)]).await;
    assert_eq!(read_until(&mut viewer, 6).await, [6], "nothing of the refused publishes was delivered");
}

/// With Redis, the audience travels with the event through Redis: a node that did not take the
/// publish filters its own streams live, and another node's replay filters too.
#[tokio::test]
async fn with_redis_every_node_filters_its_own_streams() {
    let redis = Redis::start().await;
    let node = || async {
        let hub = Hub::start(&config("", &format!("{GRANTED_TOKENS}{}", redis.engine_toml()))).await;
        hub.wait_ready().await;
        hub
    };
    let (one, two) = (node().await, node().await);
    let (mut admin, _) = open(&two, "tok-admin").await;
    let (mut viewer, position) = open(&two, "tok-viewer").await;
    publish_with(&one, "acme", &[(1, Some(json!(["role:admin"]))), (2, Some(json!(["role:viewer"]))), (3, None)]).await;
    assert_eq!(read_until(&mut admin, 3).await, [1, 3]);
    assert_eq!(read_until(&mut viewer, 3).await, [2, 3]);
    drop(viewer);
    let mut again = Sse::resume(&one, "tok-viewer", &position).await;
    assert_eq!(again.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(read_until(&mut again, 3).await, [2, 3], "replayed on the other node, filtered there");
}

/// An idempotency key and an audience on one item: on every engine the repeat is a duplicate
/// (not stored or delivered again), and the one event reaches its audience only, live and
/// replayed.
#[tokio::test]
async fn a_keyed_item_with_an_audience_is_stored_once_and_seen_by_its_audience_only() {
    for (engine, engine_toml, _redis) in engines().await {
        let hub = Hub::start(&config("", &format!("{GRANTED_TOKENS}{engine_toml}"))).await;
        hub.wait_ready().await;
        let (mut admin, position) = open(&hub, "tok-admin").await;
        let (mut viewer, _) = open(&hub, "tok-viewer").await;
        let item = json!({"account": "acme", "key": "rule-7:edited", "audience": ["role:admin"], "data": activity(1)});
        let body = json!([item, item, {"account": "acme", "data": activity(2)}]).to_string();
        let (status, answer) = hub.publish_raw(&body, "application/json", PUBLISHER_KEY).await;
        assert_eq!((status, &answer["duplicates"]), (202, &json!([1])), "{engine}: {answer}");
        let (status, again) = hub.publish_raw(&json!(item).to_string(), "application/json", PUBLISHER_KEY).await;
        assert_eq!((status, &again["ids"][0]), (202, &answer["ids"][0]), "{engine}: {again}");
        assert_eq!(read_until(&mut admin, 2).await, [1, 2], "{engine}");
        assert_eq!(read_until(&mut viewer, 2).await, [2], "{engine}");
        drop(admin);
        let mut replay = Sse::resume(&hub, "tok-admin", &position).await;
        assert_eq!(replay.next_within(T).await.unwrap().data["resumed"], true, "{engine}");
        assert_eq!(read_until(&mut replay, 2).await, [1, 2], "{engine}");
    }
}

/// A reload that changes a static token's grants closes that token's streams (`revoked`): they
/// reconnect holding the new grants. Streams of unchanged tokens stay open.
#[tokio::test]
async fn a_reload_that_changes_a_tokens_grants_revokes_its_streams() {
    let hub = Hub::start(&config("", GRANTED_TOKENS)).await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let (mut viewer, _) = open(&hub, "tok-viewer").await;
    hub.write_config(&config("", &GRANTED_TOKENS.replace(r#"grants = ["role:viewer"]"#, r#"grants = ["role:viewer", "role:admin"]"#)));
    let said = hub.reload().await;
    assert!(said.contains("revoked=1"), "{said}");
    let closed = viewer.next_non_ping(T).await.expect("a closed frame");
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("revoked")));
    let (mut viewer, _) = open(&hub, "tok-viewer").await;
    publish_with(&hub, "acme", &[(1, Some(json!(["role:admin"])))]).await;
    assert_eq!(read_until(&mut viewer, 1).await, [1], "the new grant holds");
    assert_eq!(read_until(&mut admin, 1).await, [1], "an unchanged token's stream stays open");
}

/// The admin page's test publish takes the body of `POST /events`, audience included, and
/// honours it like any publish.
#[tokio::test]
async fn the_admin_pages_test_publish_honours_an_audience() {
    const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
    let hub = Hub::start(&config("", &format!("{GRANTED_TOKENS}[admin]\nkey = \"{ADMIN_KEY}\"\n"))).await;
    let (mut admin, _) = open(&hub, "tok-admin").await;
    let (mut viewer, _) = open(&hub, "tok-viewer").await;
    for (n, audience) in [(1, json!(["role:admin"])), (2, json!(["role:viewer"]))] {
        let (status, answer) = hub.admin_api(Some(ADMIN_KEY), "publish", Some(&json!({"account": "acme", "audience": audience, "data": activity(n)}))).await;
        assert_eq!(status, 202, "{answer}");
    }
    assert_eq!(read_until(&mut admin, 1).await, [1]);
    assert_eq!(read_until(&mut viewer, 2).await, [2]);
}
