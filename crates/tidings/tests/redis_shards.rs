//! The Redis engine sharded over several real `redis-server` processes (`[[engine.shards]]`),
//! black-box: what sharding adds to the scenarios tests/redis.rs also runs sharded. Accounts
//! spread over the shards each keep one exact order and exact resumes; a publish batch spans
//! shards; one shard down fails only its accounts; changing the shard list answers old ids
//! with `resync`.
//!
//! One shard behind Sentinel fails over while the other shard's accounts are unaffected
//! (tests/failover.rs covers failover itself in depth on one set).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::redis::{EngineServers, Redis, RedisShards, Transport, shard_of};
use support::sentinel::{MASTER_NAME, SentinelSet};
use support::*;

/// Accounts of the tests, with a token each (`tok-<account>`, session `s-<account>`).
const TENANTS: [&str; 6] = ["tenant-0", "tenant-1", "tenant-2", "tenant-3", "tenant-4", "tenant-5"];

fn tokens() -> String {
    TENANTS
        .iter()
        .map(|a| format!("[[auth.tokens]]\ntoken = \"tok-{a}\"\naccount = \"{a}\"\nuser = \"u@{a}\"\nsession = \"s-{a}\"\n"))
        .collect()
}

async fn node(redis: &impl EngineServers, tables: &str) -> Hub {
    let hub = Hub::start(&config("", &redis.toml(&format!("{tables}{}", tokens())))).await;
    hub.wait_ready().await;
    hub
}

async fn readyz(hub: &Hub) -> (u16, Value) {
    let r = reqwest::get(hub.url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until `/readyz` answers `status`; returns its body.
async fn wait_readyz(hub: &Hub, status: u16) -> Value {
    for _ in 0..200 {
        let (got, body) = readyz(hub).await;
        if got == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never answered {status}; logs:\n{}", hub.logs());
}

async fn connected(hub: &Hub, account: &str) -> Sse {
    let mut s = Sse::token(hub, &format!("tok-{account}")).await;
    assert_eq!(s.status, 200, "{account}");
    assert_eq!(s.next_within(T).await.unwrap().kind(), "connected");
    s
}

fn epoch(id: &str) -> &str {
    id.split_once('-').unwrap().0
}

/// A batch of one activity per account, `n` the same for all (each stream sees only its own).
fn across(accounts: &[&str], n: u64) -> String {
    Value::Array(accounts.iter().map(|a| serde_json::json!({"account": a, "data": activity(n)})).collect()).to_string()
}

/// Six accounts over three servers: every account keeps one exact order whatever batch its
/// events came in, resumes exactly on another node, and the ids of each shard carry its own
/// epoch. Each node reads every shard's feed (per-shard metrics).
#[tokio::test]
async fn accounts_spread_over_shards_each_keep_exact_order_and_resume() {
    let redis = RedisShards::start(Transport::Plain, 3).await;
    let shards: HashSet<usize> = TENANTS.iter().map(|a| shard_of(a, 3)).collect();
    assert_eq!(shards.len(), 3, "the tenants cover every shard");
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut streams = Vec::new();
    for a in TENANTS {
        streams.push(connected(&n2, a).await);
    }
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); TENANTS.len()];
    for n in 1..=20u64 {
        // Every batch spans every shard; half the batches hold two events per account.
        let accounts: Vec<&str> = if n % 2 == 0 { TENANTS.iter().chain(&TENANTS).copied().collect() } else { TENANTS.to_vec() };
        let (status, answer) = n1.publish_raw(&across(&accounts, n), "application/json", PUBLISHER_KEY).await;
        assert_eq!(status, 202, "{answer}");
        for (i, id) in answer["ids"].as_array().unwrap().iter().enumerate() {
            ids[i % TENANTS.len()].push(id.as_str().unwrap().to_owned());
        }
    }
    let expected: Vec<u64> = (1..=20u64).flat_map(|n| if n % 2 == 0 { vec![n, n] } else { vec![n] }).collect();
    for (a, s) in TENANTS.iter().zip(&mut streams) {
        assert_eq!(s.activities(expected.len(), T).await, expected, "{a}: its events, in publish order");
    }
    for (i, a) in TENANTS.iter().enumerate() {
        let seqs: Vec<u64> = ids[i].iter().map(|id| id.split_once('-').unwrap().1.parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{a}: ids increase in item order: {:?}", ids[i]);
        for (j, b) in TENANTS.iter().enumerate() {
            let same_shard = shard_of(a, 3) == shard_of(b, 3);
            assert_eq!(epoch(&ids[i][0]) == epoch(&ids[j][0]), same_shard, "{a} and {b}: one epoch per shard");
        }
    }
    for shard in 0..3 {
        let read = n2.metric(&format!("tidings_redis_feed_entries_total{{shard=\"{shard}\"}}")).await;
        assert!(read > 0.0, "node 2 read shard {shard}'s feed");
        assert_eq!(n2.metric(&format!("tidings_redis_shard_ready{{shard=\"{shard}\"}}")).await, 1.0);
    }
    let (_, body) = readyz(&n1).await;
    assert_eq!(body["engine_shards_ready"], serde_json::json!([true, true, true]));
    // Dropped at the 5th event, every account resumes exactly on the other node.
    drop(streams);
    n2.publish("tenant-1", &[activity(100)]).await;
    for (i, a) in TENANTS.iter().enumerate() {
        let mut r = Sse::resume(&n1, &format!("tok-{a}"), &ids[i][4]).await;
        assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true, "{a}");
        let mut want = expected[5..].to_vec();
        if *a == "tenant-1" {
            want.push(100);
        }
        assert_eq!(r.activities(want.len(), T).await, want, "{a}: exactly what it missed");
        r.expect_quiet(Duration::from_millis(100)).await;
    }
}

/// One shard's server killed: only its accounts fail (publish and open 503 at once), the
/// other shard's accounts go on, `/readyz` says which shard is down, open streams stay open,
/// and once the server is back (it kept its data) every acknowledged event arrives once, with
/// no resync. A batch spanning the shards is refused whole while the shard is known down,
/// and stored once when retried with the same keys.
#[tokio::test]
async fn one_shard_down_fails_only_its_accounts_and_recovers() {
    let mut redis = RedisShards::start_durable(Transport::Plain, 2).await;
    let (down, up) = ("tenant-1", "tenant-0");
    assert_eq!((shard_of(down, 2), shard_of(up, 2)), (1, 0));
    let (n1, n2) = (node(&redis, "").await, node(&redis, "").await);
    let mut on_down = connected(&n2, down).await;
    let mut on_up = connected(&n2, up).await;
    n1.publish(down, &[activity(1)]).await;
    n1.publish(up, &[activity(1)]).await;
    assert_eq!(on_down.activities(1, T).await, vec![1]);
    assert_eq!(on_up.activities(1, T).await, vec![1]);

    redis.holding_mut(down).kill().await;
    for hub in [&n1, &n2] {
        let body = wait_readyz(hub, 503).await;
        assert_eq!((body["engine_ready"].as_bool(), &body["engine_shards_ready"]), (Some(false), &serde_json::json!([true, false])));
    }
    let started = std::time::Instant::now();
    let (status, answer) = n1.publish_raw(&across(&[down], 2), "application/json", PUBLISHER_KEY).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (503, Some("engine_unavailable")), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
    assert_eq!(Sse::token(&n1, &format!("tok-{down}")).await.status, 503);
    assert_eq!(n2.metric("tidings_redis_shard_ready{shard=\"1\"}").await, 0.0);
    // The other shard's accounts are served.
    assert_eq!(n1.publish(up, &[activity(2)]).await.len(), 1);
    assert_eq!(on_up.activities(1, T).await, vec![2]);
    // globex (shard 0, like `up`) opens; acme (shard 1, like `down`) does not.
    assert_eq!((shard_of("globex", 2), shard_of("acme", 2)), (0, 1));
    assert_eq!(Sse::token(&n1, "tok-bob").await.status, 200);
    assert_eq!(Sse::token(&n1, "tok-alice").await.status, 503);
    // A batch spanning both shards is refused whole: nothing of it is stored.
    let batch = |n: u64| {
        Value::Array(vec![
            serde_json::json!({"account": up, "key": format!("k-{n}"), "data": activity(n)}),
            serde_json::json!({"account": down, "key": format!("k-{n}"), "data": activity(n)}),
        ])
        .to_string()
    };
    let (status, answer) = n1.publish_raw(&batch(3), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("nothing was published"), "{answer}");
    on_up.expect_quiet(Duration::from_millis(300)).await;

    redis.holding_mut(down).spawn().await;
    wait_readyz(&n1, 200).await;
    wait_readyz(&n2, 200).await;
    let (status, answer) = n1.publish_raw(&batch(3), "application/json", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "{answer}");
    let (status, again) = n2.publish_raw(&batch(3), "application/json", PUBLISHER_KEY).await;
    assert_eq!((status, &again["ids"], &again["duplicates"]), (202, &answer["ids"], &serde_json::json!([0, 1])), "a retry stores nothing twice");
    n1.publish(down, &[activity(4)]).await;
    assert_eq!(on_down.activities(2, T).await, vec![3, 4], "the stream stayed open: no resync, no gap, nothing twice");
    assert_eq!(on_up.activities(1, T).await, vec![3]);
    on_down.expect_quiet(Duration::from_millis(300)).await;
    on_up.expect_quiet(Duration::from_millis(1)).await;
    assert_eq!(n2.metric("tidings_resyncs_total").await, 0.0);
}

/// A shard that fails while the others store their part of a batch (here: its writes paused
/// past `command_timeout`) makes the batch a 503 that says part of it was stored; the retry
/// with the same keys stores each item once, and every stream gets each event once.
#[tokio::test]
async fn a_batch_failing_on_one_shard_is_a_503_and_its_retry_stores_each_item_once() {
    let redis = RedisShards::start(Transport::Plain, 2).await;
    let (slow, fine) = ("tenant-1", "tenant-0");
    let hub = node(&redis, "command_timeout = \"300ms\"\n").await;
    let mut on_slow = connected(&hub, slow).await;
    let mut on_fine = connected(&hub, fine).await;
    let batch = Value::Array(vec![
        serde_json::json!({"account": fine, "key": "order-1", "data": activity(1)}),
        serde_json::json!({"account": slow, "key": "order-1", "data": activity(1)}),
    ])
    .to_string();
    let paused = redis.holding(slow).command("CLIENT PAUSE 1500 WRITE").await.unwrap();
    assert!(paused.starts_with("+OK"), "{paused}");
    let (status, answer) = hub.publish_raw(&batch, "application/json", PUBLISHER_KEY).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (503, Some("engine_unavailable")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("other shards were stored"), "{answer}");
    assert_eq!(on_fine.activities(1, T).await, vec![1], "the other shard's item was stored and delivered");
    // Retried until the paused shard answers again.
    let mut retried = None;
    for _ in 0..100 {
        let (status, answer) = hub.publish_raw(&batch, "application/json", PUBLISHER_KEY).await;
        if status == 202 {
            retried = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retried = retried.expect("the retry is accepted once the shard answers");
    assert_eq!(retried["duplicates"].as_array().unwrap()[0], 0, "the stored item is a duplicate: {retried}");
    assert_eq!(on_slow.activities(1, T).await, vec![1]);
    on_slow.expect_quiet(Duration::from_millis(500)).await;
    on_fine.expect_quiet(Duration::from_millis(1)).await;
}

/// The shard list is part of what an id means: after it changes, an id of the old list is
/// answered with `resync` (never a gap, never another server's replay), even for an account
/// that moves back to a server holding its old events. A deployment without `shards` writes
/// nothing new to Redis.
#[tokio::test]
async fn changing_the_shard_list_answers_old_ids_with_resync() {
    let redis = RedisShards::start(Transport::Plain, 2).await;
    let first = &redis.servers[0];
    let (a, b) = ("tenant-0", "tenant-1");
    assert_eq!((shard_of(a, 2), shard_of(b, 2)), (0, 1), "with two shards, b moves to the second server");

    // Phase 1: one server, no `shards` (as before sharding).
    let hub = node(first, "").await;
    let old_a = hub.publish(a, &[activity(1)]).await.remove(0);
    let old_b = hub.publish(b, &[activity(1)]).await.remove(0);
    assert_eq!(first.command("EXISTS t:shards").await.unwrap().trim(), ":0", "no new key without shards");
    drop(hub);

    // Phase 2: two shards. Both accounts resync (a stays on the first server, whose history
    // now belongs to another list; b moved).
    let hub = node(&redis, "").await;
    for (account, id) in [(a, &old_a), (b, &old_b)] {
        assert_eq!(resync_reason(&hub, account, id).await, "epoch_changed", "{account}");
    }
    let mid_b = hub.publish(b, &[activity(2)]).await.remove(0);
    drop(hub);

    // Phase 3: back to the first server alone. b's event of phase 2 is on the second server:
    // its id of phase 1 must not replay the first server's history of b, which lacks it.
    let hub = node(first, "").await;
    for (account, id) in [(a, &old_a), (b, &old_b), (b, &mid_b)] {
        assert_eq!(resync_reason(&hub, account, id).await, "epoch_changed", "{account} {id}");
    }
    // In the new list, ids resume exactly again.
    let mut s = connected(&hub, b).await;
    let from = hub.publish(b, &[activity(3)]).await.remove(0);
    assert_eq!(s.activities(1, T).await, vec![3]);
    drop(s);
    hub.publish(b, &[activity(4)]).await;
    let mut r = Sse::resume(&hub, &format!("tok-{b}"), &from).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(r.activities(1, T).await, vec![4]);
}

/// The reason of the `resync` a stream resuming from `id` gets.
async fn resync_reason(hub: &Hub, account: &str, id: &str) -> String {
    let mut r = Sse::resume(hub, &format!("tok-{account}"), id).await;
    assert_eq!(r.status, 200);
    let connected = r.next_within(T).await.unwrap();
    assert_eq!(connected.data["resumed"], false, "{account} {id}: {:?}", connected.data);
    let resync = r.next_within(T).await.unwrap();
    assert_eq!(resync.kind(), "resync");
    resync.data["reason"].as_str().unwrap().to_owned()
}

/// Shard 0 is a primary with a replica behind three sentinels, shard 1 a plain server. A
/// failover of shard 0 (without `min_replicas`: a new epoch) sends `resync` to the streams of
/// shard 0's accounts only; shard 1's stream goes on without one, and both shards serve again.
#[tokio::test]
async fn a_sentinel_shard_fails_over_without_touching_the_other_shard() {
    let mut sentinel = SentinelSet::start().await;
    let plain = Redis::start().await;
    let (moved, still) = ("tenant-0", "tenant-1");
    assert_eq!((shard_of(moved, 2), shard_of(still, 2)), (0, 1));
    let sentinels: Vec<String> = sentinel.addresses().iter().map(|a| format!("\"{a}\"")).collect();
    let engine = format!(
        "[engine]\nkind = \"redis\"\nkey_prefix = \"t:\"\n{}[[engine.shards]]\nurl = \"redis://127.0.0.1\"\nsentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\n[[engine.shards]]\nurl = \"redis://127.0.0.1:{}\"\n",
        tokens(),
        sentinels.join(", "),
        plain.port
    );
    let hub = Hub::start(&config("", &engine)).await;
    hub.wait_ready().await;
    let mut on_moved = connected(&hub, moved).await;
    let mut on_still = connected(&hub, still).await;
    hub.publish(moved, &[activity(1)]).await;
    hub.publish(still, &[activity(1)]).await;
    assert_eq!(on_moved.activities(1, T).await, vec![1]);
    assert_eq!(on_still.activities(1, T).await, vec![1]);
    sentinel.fail_over().await;
    let resync = on_moved.next_non_ping(Duration::from_secs(30)).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("engine_outage")));
    hub.wait_ready().await;
    hub.publish(moved, &[activity(2)]).await;
    hub.publish(still, &[activity(2)]).await;
    assert_eq!(on_moved.activities(1, T).await, vec![2]);
    assert_eq!(on_still.activities(1, T).await, vec![2], "no resync on the other shard");
}
