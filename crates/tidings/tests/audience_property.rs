//! The audience guarantee as a property, black-box, on each engine (memory, durable, Redis):
//! for random identities (accounts, users, sessions, grants) and random events (accounts,
//! audiences naming grants, users and sessions, or none), **no frame reaches a stream outside
//! its audience, and every frame reaches every stream inside it**, live and on replay.
//!
//! Each case opens its streams with JWTs carrying its grants, publishes its events and one
//! sentinel per account (no audience) in one batch, and reads every stream up to its
//! account's sentinel: what arrived must be exactly the events of its account that its
//! identity may see, in order. Then every stream resumes from the position it had before the
//! events and must be replayed exactly the same, with `resumed: true` and no `resync`.
//!
//! `TIDINGS_AUDIENCE_CASES` sets the cases per engine (default 48, CI-sized;
//! `TIDINGS_AUDIENCE_CASES=10000` is the long run).

mod support;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};
use support::redis::Redis;
use support::*;

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const CASES_DEFAULT: u32 = 48;
const ACCOUNTS: [&str; 2] = ["acme", "globex"];
const USERS: [&str; 3] = ["u0", "u1", "u2"];
const GRANTS: [&str; 4] = ["g:a", "g:b", "role:admin", "billing:read"];

/// One stream of a case: account and user index, and which of [`GRANTS`] it holds.
#[derive(Debug, Clone)]
struct Identity {
    account: usize,
    user: usize,
    grants: Vec<usize>,
}

/// What an event's audience names.
#[derive(Debug, Clone)]
enum Name {
    Grant(usize),
    User(usize),
    /// The session of the case's stream with this index (modulo the streams).
    Session(usize),
    /// A grant nobody holds.
    Stranger,
}

#[derive(Debug, Clone)]
struct Event {
    account: usize,
    audience: Option<Vec<Name>>,
}

#[derive(Debug, Clone)]
struct Case {
    identities: Vec<Identity>,
    events: Vec<Event>,
}

fn case() -> impl Strategy<Value = Case> {
    let identity = (0..ACCOUNTS.len(), 0..USERS.len(), prop::collection::vec(0..GRANTS.len(), 0..3))
        .prop_map(|(account, user, grants)| Identity { account, user, grants });
    let name = prop_oneof![
        4 => (0..GRANTS.len()).prop_map(Name::Grant),
        2 => (0..USERS.len()).prop_map(Name::User),
        2 => (0..8usize).prop_map(Name::Session),
        1 => Just(Name::Stranger),
    ];
    let event = (0..ACCOUNTS.len(), prop::option::weighted(0.7, prop::collection::vec(name, 1..4)))
        .prop_map(|(account, audience)| Event { account, audience });
    (prop::collection::vec(identity, 1..6), prop::collection::vec(event, 1..10)).prop_map(|(identities, events)| Case { identities, events })
}

fn session(case_no: u64, stream: usize) -> String {
    format!("c{case_no}-s{stream}")
}

fn token(case_no: u64, stream: usize, id: &Identity) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3_600;
    let grants: Vec<&str> = id.grants.iter().map(|&g| GRANTS[g]).collect();
    let claims = json!({"account": ACCOUNTS[id.account], "sub": USERS[id.user], "sid": session(case_no, stream), "exp": exp, "grants": grants});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// The audience as grant strings, for this case's sessions.
fn audience_of(case_no: u64, streams: usize, names: &[Name]) -> Vec<String> {
    names
        .iter()
        .map(|n| match n {
            Name::Grant(g) => GRANTS[*g].to_owned(),
            Name::User(u) => format!("user:{}", USERS[*u]),
            Name::Session(s) => format!("session:{}", session(case_no, s % streams)),
            Name::Stranger => "nobody:holds-this".to_owned(),
        })
        .collect()
}

/// Whether stream `i` of the case may see an event with this audience: the rule, written
/// out independently of the hub's code.
fn may_see(case_no: u64, i: usize, id: &Identity, audience: &Option<Vec<String>>) -> bool {
    let Some(names) = audience else { return true };
    let mut held: Vec<String> = id.grants.iter().map(|&g| GRANTS[g].to_owned()).collect();
    held.push(format!("user:{}", USERS[id.user]));
    held.push(format!("session:{}", session(case_no, i)));
    names.iter().any(|n| held.contains(n))
}

/// Reads a stream up to marker `last`; returns the activity markers seen.
async fn read_to(s: &mut Sse, last: u64, what: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let e = s.next_non_ping(T).await.unwrap_or_else(|| panic!("{what}: stream ended"));
        assert_eq!(e.kind(), "activity", "{what}: {:?}", e.data);
        assert!(e.data.get("audience").is_none(), "{what}: an audience was sent");
        seen.push(e.n());
        if e.n() == last {
            return seen;
        }
    }
}

async fn check(hub: &Hub, case: &Case, case_no: u64, next_n: &mut u64, engine: &str) {
    let n = case.identities.len();
    let mut streams = Vec::new();
    for (i, id) in case.identities.iter().enumerate() {
        let t = token(case_no, i, id);
        let mut s = Sse::token(hub, &t).await;
        assert_eq!(s.status, 200);
        let connected = s.next_within(T).await.unwrap();
        streams.push((t, s, connected.id.unwrap()));
    }
    let mut body = Vec::new();
    let mut published: Vec<(u64, usize, Option<Vec<String>>)> = Vec::new();
    for ev in &case.events {
        let marker = *next_n;
        *next_n += 1;
        let audience = ev.audience.as_ref().map(|a| audience_of(case_no, n, a));
        let mut item = json!({"account": ACCOUNTS[ev.account], "data": activity(marker)});
        if let Some(a) = &audience {
            item["audience"] = json!(a);
        }
        body.push(item);
        published.push((marker, ev.account, audience));
    }
    let mut sentinel = HashMap::new();
    for (a, account) in ACCOUNTS.iter().enumerate() {
        sentinel.insert(a, *next_n);
        body.push(json!({"account": account, "data": activity(*next_n)}));
        published.push((*next_n, a, None));
        *next_n += 1;
    }
    let (status, answer) = hub.publish_raw(&Value::Array(body).to_string(), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "{answer}");

    let expected: Vec<Vec<u64>> = case
        .identities
        .iter()
        .enumerate()
        .map(|(i, id)| published.iter().filter(|(_, a, aud)| *a == id.account && may_see(case_no, i, id, aud)).map(|(m, ..)| *m).collect())
        .collect();
    for (i, (_, s, _)) in streams.iter_mut().enumerate() {
        let what = format!("{engine} case {case_no} stream {i} live ({case:?})");
        assert_eq!(read_to(s, sentinel[&case.identities[i].account], &what).await, expected[i], "{what}");
    }
    // Replay: each stream again, from before the events.
    for (i, (t, s, position)) in streams.into_iter().enumerate() {
        drop(s);
        let what = format!("{engine} case {case_no} stream {i} replay ({case:?})");
        let mut r = Sse::resume(hub, &t, &position).await;
        let connected = r.next_within(T).await.unwrap();
        assert_eq!((connected.kind(), connected.data["resumed"].as_bool()), ("connected", Some(true)), "{what}");
        assert_eq!(read_to(&mut r, sentinel[&case.identities[i].account], &what).await, expected[i], "{what}");
    }
}

fn run_on(engine: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let redis = (engine == "redis").then(|| rt.block_on(Redis::start()));
    let engine_toml = match (engine, &redis) {
        ("durable", _) => "[engine]\nkind = \"durable\"\ndata_dir = \"data\"\n".to_owned(),
        (_, Some(r)) => r.engine_toml(),
        _ => String::new(),
    };
    let jwt = format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\ngrants_claim = \"grants\"\n");
    let hub = rt.block_on(Hub::start(&config("", &format!("{jwt}{engine_toml}"))));
    rt.block_on(hub.wait_ready());
    let cases = std::env::var("TIDINGS_AUDIENCE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, ..PropConfig::default() });
    let counters = std::cell::Cell::new((0u64, 1u64));
    runner
        .run(&case(), |case| {
            let (case_no, mut next_n) = counters.get();
            rt.block_on(check(&hub, &case, case_no, &mut next_n, engine));
            counters.set((case_no + 1, next_n));
            Ok(())
        })
        .unwrap();
    let resyncs = rt.block_on(hub.metric("tidings_resyncs_total"));
    assert_eq!(resyncs, 0.0, "{engine}: no resume needed a resync");
    assert!(!hub.logs().contains("panicked"), "{}", hub.logs());
    let (case_no, next_n) = counters.get();
    println!("audience on {engine}: {case_no} cases, {} events published, live and replayed", next_n - 1);
}

#[test]
fn on_the_memory_engine() {
    run_on("memory");
}

#[test]
fn on_the_durable_engine() {
    run_on("durable");
}

#[test]
fn on_the_redis_engine() {
    run_on("redis");
}
