//! The Redis engine, black-box: several real hub processes on one real `redis-server`
//! (started here on a free port, in a temp dir). No mock: if `redis-server` is missing these
//! tests fail and say so.
//!
//! Every scenario runs twice (see [`over_both_transports`]): `plain::` over `redis://`, and
//! `tls::` over `rediss://` with a client certificate and an ACL user allowed only what the
//! engine needs ([`support::redis::ACL_RULE`]).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::redis::{EngineServers, Redis, RedisShards, Transport};
use support::*;

/// How a scenario's Redis is set up: the transport, and how many servers the accounts are
/// sharded over (1: the engine without `shards`, configured exactly as before sharding).
#[derive(Debug, Clone, Copy)]
struct Setup {
    transport: Transport,
    shards: usize,
}

async fn start(t: Setup) -> RedisShards {
    RedisShards::start(t.transport, t.shards).await
}

async fn node(redis: &impl EngineServers, tables: &str) -> Hub {
    let hub = Hub::start(&config("", &redis.toml(tables))).await;
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

async fn publish_on_one_node_is_delivered_on_every_node(t: Setup) {
    let redis = start(t).await;
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

async fn publishers_on_every_node_give_one_order_everywhere(t: Setup) {
    let redis = start(t).await;
    let nodes = [node(&redis, "").await, node(&redis, "").await, node(&redis, "").await];
    let mut subs = Vec::new();
    for (hub, token) in nodes.iter().zip(["tok-alice", "tok-alice-2", "tok-alice-3"]) {
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

async fn resume_on_another_node_is_exact(t: Setup) {
    let redis = start(t).await;
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

async fn resume_during_a_publish_storm_has_no_gap_or_duplicate(t: Setup) {
    let redis = start(t).await;
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

async fn trimmed_history_answers_resync_on_any_node(t: Setup) {
    let redis = start(t).await;
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
async fn redis_restart_mid_stream_gives_resync_and_recovery(t: Setup) {
    let mut redis = start(t).await;
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
async fn a_durable_redis_restart_needs_no_resync(t: Setup) {
    let mut redis = RedisShards::start_durable(t.transport, t.shards).await;
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
async fn flushall_is_noticed_without_a_reconnect(t: Setup) {
    let redis = start(t).await;
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut s = connected(&n2, "tok-alice").await;
    n1.publish("acme", &[activity(1)]).await;
    assert_eq!(s.activities(1, T).await, vec![1]);
    assert!(redis.command_all("FLUSHALL").await.iter().all(|r| r.as_deref().is_some_and(|r| r.starts_with("+OK"))));
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
async fn a_node_that_fell_behind_the_feed_sends_resync(t: Setup) {
    let redis = start(t).await;
    let short_feed = redis.toml("feed_max_events = 100\n[history]\nmax_events = 10000\n");
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

async fn a_killed_node_s_clients_resume_on_a_peer_without_gap(t: Setup) {
    let redis = start(t).await;
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

async fn a_hub_started_before_redis_waits_for_it(t: Setup) {
    let mut redis = start(t).await;
    redis.kill().await;
    let hub = Hub::start(&config("", &redis.toml(""))).await;
    assert!(!ready(&hub).await);
    assert_eq!(try_publish(&hub, "acme", 1).await.0, 503);
    assert_eq!(Sse::token(&hub, "tok-alice").await.status, 503, "no stream without history");
    redis.spawn().await;
    wait_ready(&hub, true).await;
    let mut s = connected(&hub, "tok-alice").await;
    assert_eq!(try_publish(&hub, "acme", 2).await.0, 202);
    assert_eq!(s.activities(1, T).await, vec![2]);
}

async fn history_older_than_max_age_answers_resync(t: Setup) {
    let redis = start(t).await;
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
async fn a_gap_past_the_replay_budget_answers_resync(t: Setup) {
    let redis = start(t).await;
    let hub = node(&redis, &format!("[history]\n{REPLAY_BUDGET_TOML}")).await;
    replay_budget_holds(&hub).await;
    assert!(ready(&hub).await, "the engine stays up");
}

/// One stream per session across nodes: a second open of the session on another node closes
/// the first with `closed` `superseded` (and only that stream), in the order the opens reached
/// Redis; a third open back on the first node closes the second. Prints how long the first
/// `closed` took after the second open started.
async fn a_second_open_on_another_node_supersedes_the_first(t: Setup) {
    let redis = start(t).await;
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut first = connected(&n1, "tok-alice").await;
    let mut bystander = connected(&n1, "tok-alice-2").await;
    // The first stream's claim is written before the second open starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened = std::time::Instant::now();
    let mut second = connected(&n2, "tok-alice").await;
    let closed = first.next_non_ping(T).await.expect("a closed frame before the end");
    let took = opened.elapsed();
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("superseded")));
    assert!(closed.data.get("retry_ms").is_none(), "superseded streams are not told to reconnect");
    assert!(first.next_within(T).await.is_none(), "the superseded stream ends");
    println!("[{t:?}] second open on node 2 to closed superseded on node 1: {:.1} ms", took.as_secs_f64() * 1000.0);
    n2.publish("acme", &[activity(1)]).await;
    assert_eq!(second.activities(1, T).await, vec![1], "the newer stream stays live");
    assert_eq!(bystander.activities(1, T).await, vec![1], "other sessions are untouched");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connected(&n1, "tok-alice").await;
    let closed = second.next_non_ping(T).await.unwrap();
    assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("superseded")));
    n1.publish("acme", &[activity(2)]).await;
    assert_eq!(third.activities(1, T).await, vec![2]);
    assert_eq!(bystander.activities(1, T).await, vec![2]);
}

/// `min_replicas = 1`: a publish is acknowledged only once a replica has it. Without a
/// replica it answers 503 after `replica_timeout` (the event is not acknowledged); with one,
/// 202, and the replica holds the event at that moment. A duplicate's answer waits for the
/// replicas too.
async fn min_replicas_acknowledges_only_replicated_publishes(t: Setup) {
    let primary = Redis::start_on(t.transport).await;
    let hub = node(&primary, "min_replicas = 1\nreplica_timeout = \"300ms\"\n").await;
    let started = std::time::Instant::now();
    assert_eq!(try_publish(&hub, "acme", 1).await.0, 503, "no replica, no acknowledgement");
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited replica_timeout");
    let replica = Redis::start_full(Transport::Plain, false, vec!["--replicaof".into(), "127.0.0.1".into(), primary.admin_port.to_string()]).await;
    let mut acked = None;
    for n in 2..200 {
        if let (202, Some(id)) = try_publish(&hub, "acme", n).await {
            acked = Some((n, id));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (n, id) = acked.expect("publishes are acknowledged once the replica is in sync");
    let on_replica = replica.command(&format!("XRANGE t:a:acme {}-0 {}-0", seq(&id), seq(&id))).await.unwrap();
    assert!(on_replica.contains(&format!("app {n}")), "the replica had event {n} when it was acknowledged: {on_replica}");
    let keyed = |n: u64| serde_json::json!({"account": "acme", "key": "order-1", "data": activity(n)}).to_string();
    // Retried until acknowledged, as above (a slow replica can miss replica_timeout).
    let acknowledged = async |n: u64| {
        for _ in 0..100 {
            let (status, answer) = hub.publish_raw(&keyed(n), "application/json", PUBLISHER_KEY).await;
            if status == 202 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the keyed publish {n} was never acknowledged");
    };
    let first = acknowledged(500).await;
    let again = acknowledged(501).await;
    assert_eq!((&again["ids"], &again["duplicates"]), (&first["ids"], &serde_json::json!([0])), "{again}");
    drop(replica);
    let mut refused = false;
    for n in 1000..1100 {
        if try_publish(&hub, "acme", n).await.0 == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "with the replica gone, publishes are refused again");
    let (status, answer) = hub.publish_raw(&keyed(502), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 503, "a duplicate is acknowledged under the same rule, after the replicas confirm: {answer}");
}

async fn a_key_is_stored_once_in_the_redis_engine(t: Setup) {
    let redis = start(t).await;
    let hub = node(&redis, IDEMPOTENCY_HISTORY_TOML).await;
    idempotent_publish_holds(&hub).await;
}

async fn two_nodes_receiving_one_key_at_once_store_it_once(t: Setup) {
    const KEYS: u64 = 40;
    let redis = start(t).await;
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

async fn key_sets_stay_bounded_by_the_history(t: Setup) {
    let redis = start(t).await;
    let hub = node(&redis, "[history]\nmax_events = 3\n").await;
    for n in 1..=20u64 {
        publish_keyed(&hub, &[("acme", Some(&format!("k{n}")), n)]).await;
    }
    let card = redis.holding("acme").command("ZCARD t:k:acme").await.unwrap();
    assert_eq!(card.trim(), ":3", "one key per retained event");
    let ttl = redis.holding("acme").command("PTTL t:k:acme").await.unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "the key set expires with the history's max_age: {ttl}");
}

/// The server's certificate names `redis.test` and 127.0.0.1: a hub expecting another name
/// refuses to talk (not ready, nothing published), and `tls_server_name` is what it checks.
#[tokio::test]
async fn tls_checks_the_server_name() {
    let redis = Redis::start_on(Transport::Tls).await;
    let wrong = Hub::start(&config("", &format!("{}tls_server_name = \"other.test\"\n", redis.engine_toml()))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ready(&wrong).await, "a certificate for another name is refused");
    assert_eq!(try_publish(&wrong, "acme", 1).await.0, 503);
    assert!(wrong.logs().to_lowercase().contains("certificate"), "the log says why: {}", wrong.logs());
    let right = node(&redis, "tls_server_name = \"redis.test\"\n").await;
    assert_eq!(try_publish(&right, "acme", 2).await.0, 202);
}

/// `user:password` in a `rediss://` URL works; neither that password nor a wrong one ever
/// reaches the logs, even at debug level; a wrong password leaves the hub unready.
#[tokio::test]
async fn url_credentials_work_and_stay_out_of_the_logs() {
    use support::redis::{ACL_PASSWORD, ACL_USER};
    let redis = Redis::start_on(Transport::Tls).await;
    let with_url = |password: &str| {
        let toml = redis.engine_toml().replace("rediss://", &format!("rediss://{ACL_USER}:{password}@"));
        let toml: String = toml.lines().filter(|l| !l.starts_with("username") && !l.starts_with("password_file")).map(|l| format!("{l}\n")).collect();
        config("", &toml)
    };
    let hub = Hub::start_logged(&with_url(ACL_PASSWORD), "debug").await;
    wait_ready(&hub, true).await;
    let mut s = connected(&hub, "tok-alice").await;
    hub.publish("acme", &[activity(1)]).await;
    assert_eq!(s.activities(1, T).await, vec![1]);
    let wrong_password = "wrong-pass-7d2e";
    let refused = Hub::start_logged(&with_url(wrong_password), "debug").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ready(&refused).await, "a wrong password is refused");
    let logs = format!("{}\n{}", hub.logs(), refused.logs());
    assert!(!logs.contains(ACL_PASSWORD) && !logs.contains(wrong_password), "a password reached the logs:\n{logs}");
    assert!(refused.logs().to_lowercase().contains("auth") || refused.logs().contains("WRONGPASS"), "the log says why: {}", refused.logs());
}

/// Settings that cannot work stop the hub before it listens, with a message naming the setting.
#[test]
fn bad_redis_settings_fail_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let cases = [
        ("url = \"rediss://127.0.0.1:1\"\ntls_ca_file = \"ca.pem\"\n", "tls_ca_file"),
        ("url = \"rediss://127.0.0.1:1\"\ntls_ca_file = \"missing.pem\"\n", "missing.pem"),
        ("url = \"redis://127.0.0.1:1\"\ntls_ca_file = \"ca.pem\"\n", "rediss://"),
        ("url = \"redis://127.0.0.1:1\"\nsentinels = [\"127.0.0.1:1\"]\n", "master_name"),
        ("sentinels = [\"127.0.0.1\"]\nmaster_name = \"m\"\n", "host:port"),
        ("url = \"redis://u:pw@127.0.0.1:1\"\npassword_env = \"X\"\n", "password"),
        ("password_env = \"TIDINGS_TEST_UNSET_VARIABLE\"\n", "TIDINGS_TEST_UNSET_VARIABLE"),
        ("url = \"http://127.0.0.1:1\"\n", "rediss://"),
    ];
    for (engine, expected) in cases {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, config("", &format!("[engine]\nkind = \"redis\"\n{engine}"))).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env_remove("TIDINGS_TEST_UNSET_VARIABLE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + T;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{engine:?} started and kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{engine:?} started");
        assert!(stderr.contains(expected), "{engine:?}: expected {expected:?} in {stderr}");
        assert!(!stderr.contains(":pw@"), "the URL's password is shown: {stderr}");
    }
}

/// Runs each scenario over both transports on one server, as `plain::<name>` and
/// `tls::<name>`, and also on [`SHARDS`] plaintext servers, as `sharded::<name>`; the
/// scenarios listed after `one_server_only:` run on one server only.
macro_rules! over_both_transports {
    ($($name:ident),* $(,)? ; one_server_only: $($single:ident),* $(,)?) => {
        mod plain {
            $(#[tokio::test] async fn $name() { super::$name(super::Setup { transport: super::Transport::Plain, shards: 1 }).await })*
            $(#[tokio::test] async fn $single() { super::$single(super::Setup { transport: super::Transport::Plain, shards: 1 }).await })*
        }
        mod tls {
            $(#[tokio::test] async fn $name() { super::$name(super::Setup { transport: super::Transport::Tls, shards: 1 }).await })*
            $(#[tokio::test] async fn $single() { super::$single(super::Setup { transport: super::Transport::Tls, shards: 1 }).await })*
        }
        mod sharded {
            $(#[tokio::test] async fn $name() { super::$name(super::Setup { transport: super::Transport::Plain, shards: super::SHARDS }).await })*
        }
    };
}

/// Servers of the sharded runs: two, which put `acme` (shard 1) and `globex` (shard 0) apart,
/// so "another account" in a scenario is also another Redis.
const SHARDS: usize = 2;

over_both_transports!(
    publish_on_one_node_is_delivered_on_every_node,
    publishers_on_every_node_give_one_order_everywhere,
    resume_on_another_node_is_exact,
    resume_during_a_publish_storm_has_no_gap_or_duplicate,
    trimmed_history_answers_resync_on_any_node,
    redis_restart_mid_stream_gives_resync_and_recovery,
    a_durable_redis_restart_needs_no_resync,
    flushall_is_noticed_without_a_reconnect,
    a_node_that_fell_behind_the_feed_sends_resync,
    a_killed_node_s_clients_resume_on_a_peer_without_gap,
    a_hub_started_before_redis_waits_for_it,
    history_older_than_max_age_answers_resync,
    a_gap_past_the_replay_budget_answers_resync,
    a_second_open_on_another_node_supersedes_the_first,
    a_key_is_stored_once_in_the_redis_engine,
    two_nodes_receiving_one_key_at_once_store_it_once,
    key_sets_stay_bounded_by_the_history;
    // It is about WAIT on one primary, which sharding does not change.
    one_server_only:
    min_replicas_acknowledges_only_replicated_publishes,
);

#[tokio::test]
async fn history_bytes_per_account_are_bounded_inside_redis() {
    let redis = Redis::start().await;
    let hub = node(&redis, &format!("[history]\n{BYTE_BUDGET_TOML}")).await;
    account_byte_budget_holds(&hub).await;
    let held = int_reply(&redis, "HGET t:trimmed:bytes acme").await;
    assert!(held <= 40_960 && held > 3 * 8_192, "payload bytes held: {held}");
}

#[tokio::test]
async fn idle_accounts_are_forgotten_inside_redis() {
    let redis = Redis::start().await;
    let hub = node(&redis, "[history]\nmax_age = \"1s\"\n").await;
    idle_accounts_are_forgotten(&hub, false).await;
    // globex's events aged out too; nothing of the idle tenants is left in Redis.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(int_reply(&redis, "HEXISTS t:trimmed tenant-7").await, 0);
    assert_eq!(int_reply(&redis, "EXISTS t:a:tenant-7").await, 0);
    assert_eq!(int_reply(&redis, "HEXISTS t:trimmed:bytes tenant-7").await, 0);
    let floors = int_reply(&redis, "HLEN t:trimmed:floors").await;
    assert!(floors > 100, "{floors} floor buckets for 300 forgotten accounts");
}

/// A number answered by Redis to an inline command (an integer reply, or a bulk string).
async fn int_reply(redis: &Redis, cmd: &str) -> u64 {
    let reply = redis.command(cmd).await.expect("redis answers");
    let value = reply.strip_prefix(':').map_or_else(|| reply.lines().nth(1).unwrap_or(""), |v| v.trim_end());
    value.trim().parse().unwrap_or_else(|_| panic!("{cmd}: {reply:?}"))
}
