//! The durable engine, black-box: ids and history survive a graceful restart and a SIGKILL,
//! trims resync only clients older than the retained history, and a damaged data file stops
//! start-up with a clear error naming it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;

const DATA_FILE: &str = "data/tidings.db";

fn durable(history: &str) -> String {
    config("", &format!("[engine]\nkind = \"durable\"\ndata_dir = \"data\"\n{history}"))
}

/// Stops the hub (SIGTERM and a clean exit, or SIGKILL) and starts it again on the same data.
async fn restart(hub: Hub, cfg: &str, kill: bool) -> Hub {
    let Hub { mut child, dir, output, .. } = hub;
    if kill {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    } else {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = tokio::time::timeout(T, child.wait()).await.expect("exits after SIGTERM").unwrap();
        assert!(status.success(), "{status:?}\n{}", output.lock().unwrap().join("\n"));
    }
    Hub::start_in(dir, cfg, "127.0.0.1:0").await
}

/// Where a fresh stream of `tok-alice` starts: the position to resume from later.
async fn position(hub: &Hub) -> String {
    let mut s = Sse::token(hub, "tok-alice").await;
    s.next_within(T).await.unwrap().id.unwrap()
}

#[tokio::test]
async fn graceful_restart_resumes_exactly() {
    let cfg = durable("");
    let hub = Hub::start(&cfg).await;
    assert!(hub.logs().contains("engine: durable"), "{}", hub.logs());
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    hub.publish("acme", &(1..=5).map(activity).collect::<Vec<_>>()).await;
    assert_eq!(s.activities(5, T).await, vec![1, 2, 3, 4, 5]);
    let last = s.last_id.clone().unwrap();
    drop(s);
    hub.publish("acme", &[activity(6), activity(7)]).await;
    hub.publish("globex", &[activity(1000)]).await;
    let hub = restart(hub, &cfg, false).await;
    let after = hub.publish("acme", &[activity(8)]).await;
    assert_eq!(after[0].split_once('-').unwrap().0, last.split_once('-').unwrap().0, "same epoch after a restart");
    let mut r = Sse::resume(&hub, "tok-alice", &last).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(r.activities(3, T).await, vec![6, 7, 8], "exactly the missed events, before and after the restart");
    hub.publish("acme", &[activity(9)]).await;
    assert_eq!(r.activities(1, T).await, vec![9], "then live, without duplicates");
    assert_eq!(hub.metric("tidings_resyncs_total").await, 0.0);
}

/// A publisher sends one event at a time at a steady rate; the hub is killed mid-stream.
/// Every event that got its 202 is replayed after the restart, in order and once.
#[tokio::test]
async fn sigkill_loses_no_acknowledged_event() {
    sigkill_while_publishing("always").await;
}

/// With flushing left to the OS, a crash of the hub alone (not of the machine) loses nothing
/// either, and the epoch is kept.
#[tokio::test]
async fn sigkill_with_fsync_never_loses_no_acknowledged_event() {
    sigkill_while_publishing("never").await;
}

async fn sigkill_while_publishing(fsync: &str) {
    let cfg = durable(&format!("fsync = \"{fsync}\"\n[history]\nmax_events = 100000\n"));
    let hub = Hub::start(&cfg).await;
    let start = position(&hub).await;
    let acked = Arc::new(AtomicU64::new(0));
    let publisher = {
        let url = hub.url("/events");
        let acked = acked.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(2));
            for n in 1..=5_000u64 {
                ticks.tick().await;
                let body = serde_json::json!({"account": "acme", "data": activity(n)});
                match client.post(&url).bearer_auth(PUBLISHER_KEY).json(&body).send().await {
                    Ok(r) if r.status() == 202 => acked.store(n, Ordering::SeqCst),
                    _ => return,
                }
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hub = restart(hub, &cfg, true).await;
    publisher.await.unwrap();
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked < 5_000, "the kill landed while publishing");
    let mut r = Sse::resume(&hub, "tok-alice", &start).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    // One event may have been committed without its 202 reaching the publisher.
    let got = r.activities(acked as usize, T).await;
    assert_eq!(got, (1..=acked).collect::<Vec<_>>(), "every acknowledged event, in order, once");
    hub.publish("acme", &[activity(9_999)]).await;
    let next = r.next_non_ping(T).await.unwrap();
    assert!(next.n() == 9_999 || next.n() == acked + 1, "then at most the unacknowledged one, then live: {:?}", next.data);
}

/// Delivery happens on the engine's writer thread: streams resuming while events are being
/// committed still see every event once, replay first, then live.
#[tokio::test]
async fn events_published_during_a_replay_follow_it_without_gap_or_duplicate() {
    let cfg = durable("[history]\nmax_events = 100000\n");
    let hub = Hub::start(&cfg).await;
    let start = position(&hub).await;
    hub.publish("acme", &(1..=1000).map(activity).collect::<Vec<_>>()).await;
    let hub = restart(hub, &cfg, true).await;
    let got = resume_while_publishing(&hub, &start, 1000, 1300).await;
    assert_eq!(got, (1..=1300).collect::<Vec<_>>());
}

#[tokio::test]
async fn trims_resync_only_clients_older_than_the_retained_history() {
    let cfg = durable("[history]\nmax_events = 3\n");
    let hub = Hub::start(&cfg).await;
    let ids = hub.publish("acme", &(1..=10).map(activity).collect::<Vec<_>>()).await;
    let hub = restart(hub, &cfg, true).await;
    let mut old = Sse::resume(&hub, "tok-alice", &ids[5]).await;
    assert_eq!(old.next_within(T).await.unwrap().data["resumed"], false);
    let resync = old.next_within(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("history_trimmed")));
    drop(old);
    let mut recent = Sse::resume(&hub, "tok-alice", &ids[6]).await;
    assert_eq!(recent.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(recent.activities(3, T).await, vec![8, 9, 10]);
}

#[tokio::test]
async fn trims_by_age_resync_old_positions() {
    let cfg = durable("[history]\nmax_age = \"1s\"\n");
    let hub = Hub::start(&cfg).await;
    let ids = hub.publish("acme", &[activity(1), activity(2)]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    hub.publish("acme", &[activity(3)]).await;
    let mut r = Sse::resume(&hub, "tok-alice", &ids[0]).await;
    r.next_within(T).await.unwrap();
    let resync = r.next_within(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("history_trimmed")));
    drop(r);
    let mut exact = Sse::resume(&hub, "tok-alice", &ids[1]).await;
    assert_eq!(exact.next_within(T).await.unwrap().data["resumed"], true);
    assert_eq!(exact.activities(1, T).await, vec![3]);
}

/// Starts the binary on the given directory's config and expects it to fail; returns its
/// output.
async fn failed_start(dir: &tempfile::TempDir) -> String {
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("hub.toml"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a hub with a damaged data file must exit, not serve")
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "exit status {:?}\n{text}", out.status);
    assert!(!text.contains("listening on"), "{text}");
    text
}

#[tokio::test]
async fn a_damaged_data_file_stops_start_up_and_names_the_file() {
    let cfg = durable("");
    // Enough history that the file spans many pages.
    let big = "x".repeat(2_000);
    let hub = Hub::start(&cfg).await;
    for chunk in 0..10u64 {
        let batch: Vec<_> = (chunk * 20..chunk * 20 + 20)
            .map(|n| {
                let mut a = activity(n);
                a["padding"] = big.clone().into();
                a
            })
            .collect();
        hub.publish("acme", &batch).await;
    }
    let hub = restart(hub, &cfg, false).await;
    let Hub { mut child, dir, .. } = hub;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    child.wait().await.unwrap();
    let file = dir.path().join(DATA_FILE);

    // Truncated to half its size.
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 64 * 1024, "file has {} bytes", bytes.len());
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let text = failed_start(&dir).await;
    assert!(text.contains(&file.display().to_string()) && text.contains("damaged"), "{text}");

    // Not a data file at all.
    std::fs::write(&file, b"this is not a tidings data file, just some text ".repeat(200)).unwrap();
    let text = failed_start(&dir).await;
    assert!(text.contains(&file.display().to_string()) && text.contains("damaged"), "{text}");
}

#[tokio::test]
async fn a_gap_past_the_replay_budget_answers_resync() {
    let hub = Hub::start(&durable(&format!("[history]\n{REPLAY_BUDGET_TOML}"))).await;
    replay_budget_holds(&hub).await;
}

#[tokio::test]
async fn a_key_is_stored_once_in_the_durable_engine() {
    let hub = Hub::start(&durable(IDEMPOTENCY_HISTORY_TOML)).await;
    idempotent_publish_holds(&hub).await;
}

#[tokio::test]
async fn keys_survive_a_sigkill() {
    let cfg = durable("");
    let hub = Hub::start(&cfg).await;
    let (first, _) = publish_keyed(&hub, &[("acme", Some("order-7"), 1)]).await;
    let hub = restart(hub, &cfg, true).await;
    let (again, dups) = publish_keyed(&hub, &[("acme", Some("order-7"), 2), ("acme", Some("order-8"), 3)]).await;
    assert_eq!((again[0].as_str(), dups), (first[0].as_str(), vec![0]), "the retry after a crash is recognised");
    let mut s = Sse::resume(&hub, "tok-alice", &format!("{}-0", first[0].split_once('-').unwrap().0)).await;
    assert_eq!(s.next_within(T).await.unwrap().kind(), "connected");
    assert_eq!(s.activities(2, T).await, vec![1, 3], "stored once");
}
