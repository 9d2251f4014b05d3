//! The Redis engine, black-box: several real hub processes on one real `redis-server`
//! (started here on a free port, in a temp dir). No mock: if `redis-server` is missing these
//! tests fail and say so.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::redis::Redis;
use support::*;

async fn node(redis: &Redis, tables: &str) -> Hub {
    let hub = Hub::start(&config("", &format!("{}{tables}", redis.engine_toml()))).await;
    wait_ready(&hub, true).await;
    hub
}

async fn ready(hub: &Hub) -> bool {
    reqwest::get(hub.url("/readyz")).await.is_ok_and(|r| r.status() == 200)
}

async fn wait_ready(hub: &Hub, want: bool) {
    for _ in 0..200 {
        if ready(hub).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never became {want}; logs:\n{}", hub.logs());
}

/// Publishes one activity; returns the status and, on 202, its id.
async fn try_publish(hub: &Hub, account: &str, n: u64) -> (u16, Option<String>) {
    let body = serde_json::json!({"account": account, "data": activity(n)});
    let (status, answer) = hub.publish_raw(&body.to_string(), "application/json", PUBLISHER_KEY).await;
    (status, answer["ids"][0].as_str().map(str::to_owned))
}

async fn connected(hub: &Hub, token: &str) -> Sse {
    let mut s = Sse::token(hub, token).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next_within(T).await.unwrap().kind(), "connected");
    s
}

fn seq(id: &str) -> u64 {
    id.split_once('-').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn publish_on_one_node_is_delivered_on_every_node() {
    let redis = Redis::start().await;
    let (n1, n2, n3) = (node(&redis, "").await, node(&redis, "").await, node(&redis, "").await);
    let mut on2 = connected(&n2, "tok-alice").await;
    let mut on3 = connected(&n3, "tok-alice-2").await;
    let mut other_account = connected(&n1, "tok-bob").await;
    for batch in (1..=30).collect::<Vec<u64>>().chunks(7) {
        n1.publish("acme", &batch.iter().copied().map(activity).collect::<Vec<_>>()).await;
    }
    let all: Vec<u64> = (1..=30).collect();
    assert_eq!(on2.activities(30, T).await, all);
    assert_eq!(on3.activities(30, T).await, all);
    other_account.expect_quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn publishers_on_every_node_give_one_order_everywhere() {
    let redis = Redis::start().await;
    let nodes = [node(&redis, "").await, node(&redis, "").await, node(&redis, "").await];
    let mut subs = Vec::new();
    for (hub, token) in nodes.iter().zip(["tok-alice", "tok-alice-2", "tok-alice"]) {
        subs.push(connected(hub, token).await);
    }
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, hub)| {
            let url = hub.url("/events");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for k in 0..40u64 {
                    let body = serde_json::json!({"account": "acme", "data": activity(i as u64 * 1000 + k)});
                    let r = client.post(&url).bearer_auth(PUBLISHER_KEY).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 202);
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut transcripts = Vec::new();
    for s in &mut subs {
        let mut ids = Vec::new();
        while ids.len() < 120 {
            let e = s.next_non_ping(T).await.unwrap();
            assert_eq!(e.kind(), "activity");
            let n = e.n();
            ids.push((e.id.unwrap(), n));
        }
        assert!(ids.windows(2).all(|w| seq(&w[0].0) < seq(&w[1].0)), "ids increase: {ids:?}");
        transcripts.push(ids);
    }
    assert_eq!(transcripts[0], transcripts[1], "every node delivers the same events in the same order");
    assert_eq!(transcripts[0], transcripts[2]);
}

#[tokio::test]
async fn resume_on_another_node_is_exact() {
    let redis = Redis::start().await;
    let (n1, n2, n3) = (node(&redis, "").await, node(&redis, "").await, node(&redis, "").await);
    let mut s = connected(&n1, "tok-alice").await;
    n1.publish("acme", &(1..=5).map(activity).collect::<Vec<_>>()).await;
    assert_eq!(s.activities(5, T).await, vec![1, 2, 3, 4, 5]);
    let last = s.last_id.clone().unwrap();
    drop(s);
    n2.publish("acme", &(6..=9).map(activity).collect::<Vec<_>>()).await;
    n2.publish("globex", &[activity(1000)]).await;
    let mut r = Sse::resume(&n3, "tok-alice", &last).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(r.activities(4, T).await, vec![6, 7, 8, 9], "exactly the missed events, in order");
    n1.publish("acme", &[activity(10)]).await;
    assert_eq!(r.activities(1, T).await, vec![10], "then live, without duplicates");
    r.expect_quiet(Duration::from_millis(300)).await;

    // The connected frame's position is a valid resume point on any node too.
    let position = {
        let mut s = Sse::token(&n2, "tok-alice-2").await;
        s.next_within(T).await.unwrap().id.unwrap()
    };
    n3.publish("acme", &[activity(11), activity(12)]).await;
    let mut r = Sse::resume(&n1, "tok-alice-2", &position).await;
    r.next_within(T).await.unwrap();
    assert_eq!(r.activities(2, T).await, vec![11, 12]);
}

#[tokio::test]
async fn resume_during_a_publish_storm_has_no_gap_or_duplicate() {
    let redis = Redis::start().await;
    let (n1, n2) = (node(&redis, "[history]\nmax_events = 100000\n").await, node(&redis, "[history]\nmax_events = 100000\n").await);
    let start = {
        let mut s = Sse::token(&n2, "tok-alice").await;
        s.next_within(T).await.unwrap().id.unwrap()
    };
    n1.publish("acme", &(1..=500).map(activity).collect::<Vec<_>>()).await;
    let publisher = {
        let url = n1.url("/events");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 501..=800u64 {
                let body = serde_json::json!({"account": "acme", "data": activity(n)});
                assert_eq!(client.post(&url).bearer_auth(PUBLISHER_KEY).json(&body).send().await.unwrap().status(), 202);
            }
        })
    };
    let mut resumes = Vec::new();
    for _ in 0..5 {
        let mut r = Sse::resume(&n2, "tok-alice-2", &start).await;
        r.next_within(T).await.unwrap();
        resumes.push(r);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    publisher.await.unwrap();
    let got = resumes.last_mut().unwrap().activities(800, T).await;
    assert_eq!(got, (1..=800).collect::<Vec<_>>());
}

#[tokio::test]
async fn trimmed_history_answers_resync_on_any_node() {
    let redis = Redis::start().await;
    let (n1, n2) = (node(&redis, "[history]\nmax_events = 3\n").await, node(&redis, "[history]\nmax_events = 3\n").await);
    let old = {
        let mut s = connected(&n1, "tok-alice").await;
        n1.publish("acme", &[activity(1)]).await;
        s.activities(1, T).await;
        s.last_id.clone().unwrap()
    };
    let ids = n2.publish("acme", &(2..=10).map(activity).collect::<Vec<_>>()).await;
    let mut r = Sse::resume(&n1, "tok-alice", &old).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], false);
    let resync = r.next_within(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("history_trimmed")));
    n2.publish("acme", &[activity(11)]).await;
    assert_eq!(r.activities(1, T).await, vec![11], "live after the resync");
    drop(r);
    // Inside the retained window (8, 9, 10, 11 minus the oldest), resume is exact.
    let mut exact = Sse::resume(&n2, "tok-alice", &ids[7]).await;
    assert_eq!(exact.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(exact.activities(2, T).await, vec![10, 11]);
}

/// Redis dies mid-stream and comes back empty. Publishes fail with 503 meanwhile (never a
/// 202 for an event that is not stored), readiness drops, the open stream stays open and
/// gets one `resync`, and everything acknowledged after the outage is delivered in order.
#[tokio::test]
async fn redis_restart_mid_stream_gives_resync_and_recovery() {
    let mut redis = Redis::start().await;
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut s = connected(&n2, "tok-alice").await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut refused = 0;
    let mut n = 0u64;
    let publish = async |n: u64, acked: &mut Vec<(u64, String)>, refused: &mut u32| match try_publish(&n1, "acme", n).await {
        (202, Some(id)) => acked.push((n, id)),
        (503, _) => *refused += 1,
        other => panic!("unexpected publish answer {other:?}"),
    };
    for _ in 0..10 {
        n += 1;
        publish(n, &mut acked, &mut refused).await;
    }
    redis.kill().await;
    wait_ready(&n1, false).await;
    wait_ready(&n2, false).await;
    for _ in 0..5 {
        n += 1;
        publish(n, &mut acked, &mut refused).await;
    }
    assert!(refused >= 5, "publishes during the outage are refused");
    redis.restart().await;
    wait_ready(&n1, true).await;
    wait_ready(&n2, true).await;
    let before = acked.len();
    while acked.len() < before + 10 {
        n += 1;
        publish(n, &mut acked, &mut refused).await;
    }
    // Read until the last acknowledged event arrives.
    let last = acked.last().unwrap().0;
    let mut transcript: Vec<Value> = Vec::new();
    loop {
        let e = s.next_non_ping(T).await.expect("the stream stayed open");
        let done = e.kind() == "activity" && e.n() == last;
        transcript.push(e.data.clone());
        if done {
            break;
        }
    }
    let resyncs: Vec<usize> = transcript.iter().enumerate().filter(|(_, d)| d["type"] == "resync").map(|(i, _)| i).collect();
    assert_eq!(resyncs.len(), 1, "one resync: {transcript:?}");
    assert_eq!(transcript[resyncs[0]]["reason"], "engine_outage");
    let delivered = |range: &[Value]| -> Vec<u64> { range.iter().map(|d| d["data"]["metadata"]["n"].as_u64().unwrap()).collect() };
    let acked_n: HashSet<u64> = acked.iter().map(|(n, _)| *n).collect();
    for n in delivered(&transcript[..resyncs[0]]).iter().chain(&delivered(&transcript[resyncs[0] + 1..])) {
        assert!(acked_n.contains(n), "event {n} was delivered but its publish was refused");
    }
    let new_epoch = acked.last().unwrap().1.split_once('-').unwrap().0.to_owned();
    let after_outage: Vec<u64> = acked.iter().filter(|(_, id)| id.starts_with(&format!("{new_epoch}-"))).map(|(n, _)| *n).collect();
    assert_eq!(delivered(&transcript[resyncs[0] + 1..]), after_outage, "everything acknowledged after the outage, in order");
    // A client resuming with an id from before the outage is told to resync too.
    let mut r = Sse::resume(&n1, "tok-alice-2", &acked[0].1).await;
    r.next_within(T).await.unwrap();
    assert_eq!(r.next_within(T).await.unwrap().data["reason"], "epoch_changed");
}

/// With a durable Redis, a restart loses nothing: the nodes reconnect, read the feed from
/// where they were, and the stream goes on with no resync, no gap and no duplicate.
#[tokio::test]
async fn a_durable_redis_restart_needs_no_resync() {
    let mut redis = Redis::start_with(true).await;
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut s = connected(&n2, "tok-alice").await;
    n1.publish("acme", &(1..=3).map(activity).collect::<Vec<_>>()).await;
    assert_eq!(s.activities(3, T).await, vec![1, 2, 3]);
    // A client that dropped now resumes after the restart.
    let dropped_at = s.last_id.clone().unwrap();
    n1.publish("acme", &[activity(4)]).await;
    redis.restart().await;
    wait_ready(&n1, true).await;
    wait_ready(&n2, true).await;
    let ids = n1.publish("acme", &[activity(5)]).await;
    assert_eq!(ids[0].split_once('-').unwrap().0, dropped_at.split_once('-').unwrap().0, "same epoch");
    assert_eq!(s.activities(2, T).await, vec![4, 5], "no resync, nothing lost, nothing twice");
    let mut r = Sse::resume(&n1, "tok-alice-2", &dropped_at).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(r.activities(2, T).await, vec![4, 5]);
}

/// A FLUSHALL drops no connection; the nodes still notice the new history and resync.
#[tokio::test]
async fn flushall_is_noticed_without_a_reconnect() {
    let redis = Redis::start().await;
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut s = connected(&n2, "tok-alice").await;
    n1.publish("acme", &[activity(1)]).await;
    assert_eq!(s.activities(1, T).await, vec![1]);
    assert!(redis.command("FLUSHALL").await.unwrap().starts_with("+OK"));
    let mut id = None;
    for _ in 0..100 {
        if let (202, got) = try_publish(&n1, "acme", 2).await {
            id = got;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(id.is_some(), "publishing recovers after FLUSHALL");
    let resync = s.next_non_ping(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("engine_outage")));
    assert_eq!(s.activities(1, T).await, vec![2]);
    assert_eq!(n2.metric("tidings_resyncs_total").await, 1.0);
}

/// A node that falls further behind than the feed keeps (here: frozen with SIGSTOP) cannot
/// prove its streams missed nothing: they get `resync`, then the node carries on live.
#[tokio::test]
async fn a_node_that_fell_behind_the_feed_sends_resync() {
    let redis = Redis::start().await;
    let short_feed = format!("{}feed_max_events = 100\n[history]\nmax_events = 10000\n", redis.engine_toml());
    let n1 = Hub::start(&config("", &short_feed)).await;
    let n2 = Hub::start(&config("", &short_feed)).await;
    wait_ready(&n1, true).await;
    wait_ready(&n2, true).await;
    let mut s = connected(&n2, "tok-alice").await;
    let signal = |sig: &str| {
        let pid = n2.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    };
    signal("-STOP");
    for first in (1..=1000).step_by(100) {
        n1.publish("acme", &(first..first + 100).map(activity).collect::<Vec<_>>()).await;
    }
    signal("-CONT");
    let mut saw_resync = false;
    let mut last = 0;
    while last < 1000 {
        let e = s.next_non_ping(T).await.unwrap();
        match e.kind() {
            "resync" => {
                assert_eq!(e.data["reason"], "engine_outage");
                saw_resync = true;
            }
            "activity" => {
                assert!(e.n() > last, "in order");
                last = e.n();
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(saw_resync, "the gap was announced");
    n1.publish("acme", &[activity(1001)]).await;
    assert_eq!(s.activities(1, T).await, vec![1001]);
}

#[tokio::test]
async fn a_killed_node_s_clients_resume_on_a_peer_without_gap() {
    let redis = Redis::start().await;
    let (mut n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut s = connected(&n1, "tok-alice").await;
    let publisher = {
        let url = n2.url("/events");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 1..=300u64 {
                let body = serde_json::json!({"account": "acme", "data": activity(n)});
                assert_eq!(client.post(&url).bearer_auth(PUBLISHER_KEY).json(&body).send().await.unwrap().status(), 202);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut got = s.activities(50, T).await;
    n1.sigkill();
    while let Some(e) = s.next_within(T).await {
        if e.kind() == "activity" {
            got.push(e.n());
        }
    }
    let last = s.last_id.clone().unwrap();
    let mut r = Sse::resume(&n2, "tok-alice", &last).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    let missing = 300 - got.len();
    got.extend(r.activities(missing, T).await);
    publisher.await.unwrap();
    assert_eq!(got, (1..=300).collect::<Vec<_>>(), "no gap and no duplicate across the node change");
    r.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_hub_started_before_redis_waits_for_it() {
    let mut redis = Redis::start().await;
    redis.kill().await;
    let hub = Hub::start(&config("", &redis.engine_toml())).await;
    assert!(!ready(&hub).await);
    assert_eq!(try_publish(&hub, "acme", 1).await.0, 503);
    assert_eq!(Sse::token(&hub, "tok-alice").await.status, 503, "no stream without history");
    redis.spawn().await;
    wait_ready(&hub, true).await;
    let mut s = connected(&hub, "tok-alice").await;
    assert_eq!(try_publish(&hub, "acme", 2).await.0, 202);
    assert_eq!(s.activities(1, T).await, vec![2]);
}

#[tokio::test]
async fn history_older_than_max_age_answers_resync() {
    let redis = Redis::start().await;
    let tables = "[history]\nmax_age = \"1s\"\n";
    let (n1, n2) = (node(&redis, tables).await, node(&redis, tables).await);
    let position = {
        let mut s = Sse::token(&n1, "tok-alice").await;
        s.next_within(T).await.unwrap().id.unwrap()
    };
    let ids = n1.publish("acme", &[activity(1), activity(2)]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fresh = n1.publish("acme", &[activity(3)]).await;
    let mut r = Sse::resume(&n2, "tok-alice", &position).await;
    r.next_within(T).await.unwrap();
    assert_eq!(r.next_within(T).await.unwrap().data["reason"], "history_trimmed");
    drop(r);
    // The last aged-out event is still a proven position: everything after it is kept.
    let mut r = Sse::resume(&n2, "tok-alice", &ids[1]).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(r.activities(1, T).await, vec![3]);
    assert_eq!(seq(&fresh[0]), seq(&ids[1]) + 1);
}

/// The budget is applied inside Redis, page by page: a far-behind client costs one small
/// reply, not the whole gap.
#[tokio::test]
async fn a_gap_past_the_replay_budget_answers_resync() {
    let redis = Redis::start().await;
    let hub = node(&redis, &format!("[history]\n{REPLAY_BUDGET_TOML}")).await;
    replay_budget_holds(&hub).await;
    assert!(ready(&hub).await, "the engine stays up");
}

#[tokio::test]
async fn a_key_is_stored_once_in_the_redis_engine() {
    let redis = Redis::start().await;
    let hub = node(&redis, IDEMPOTENCY_HISTORY_TOML).await;
    idempotent_publish_holds(&hub).await;
}

#[tokio::test]
async fn two_nodes_receiving_one_key_at_once_store_it_once() {
    const KEYS: u64 = 40;
    let redis = Redis::start().await;
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut watcher = connected(&n1, "tok-alice").await;
    let mut answers = Vec::new();
    for k in 1..=KEYS {
        let key = format!("order-{k}");
        let items = [("acme", Some(key.as_str()), k)];
        // Both nodes get the same key at the same moment, as a retrying publisher behind a
        // load balancer would cause.
        let (a, b) = tokio::join!(publish_keyed(&n1, &items), publish_keyed(&n2, &items));
        answers.push((a, b));
    }
    for (k, ((ids_a, dups_a), (ids_b, dups_b))) in answers.iter().enumerate() {
        assert_eq!(ids_a, ids_b, "key {k}: both nodes answer the one id");
        assert_eq!(dups_a.len() + dups_b.len(), 1, "key {k}: exactly one of the two was a duplicate");
    }
    assert_eq!(watcher.activities(KEYS as usize, T).await, (1..=KEYS).collect::<Vec<_>>());
    watcher.expect_quiet(Duration::from_millis(500)).await;
    assert_eq!(n1.metric("tidings_publish_duplicates_total").await + n2.metric("tidings_publish_duplicates_total").await, KEYS as f64);
}

#[tokio::test]
async fn key_sets_stay_bounded_by_the_history() {
    let redis = Redis::start().await;
    let hub = node(&redis, "[history]\nmax_events = 3\n").await;
    for n in 1..=20u64 {
        publish_keyed(&hub, &[("acme", Some(&format!("k{n}")), n)]).await;
    }
    let card = redis.command("ZCARD t:k:acme").await.unwrap();
    assert_eq!(card.trim(), ":3", "one key per retained event");
    let ttl = redis.command("PTTL t:k:acme").await.unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "the key set expires with the history's max_age: {ttl}");
}
