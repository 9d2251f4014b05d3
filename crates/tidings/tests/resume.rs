//! Ids, history and resume, black-box: exact replay or an explicit resync, never a silent gap.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test]
async fn resume_replays_exactly_what_was_missed() {
    let hub = Hub::start(&config("", "")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    hub.publish("acme", &(1..=5).map(activity).collect::<Vec<_>>()).await;
    assert_eq!(s.activities(5, T).await, vec![1, 2, 3, 4, 5]);
    let last = s.last_id.clone().unwrap();
    drop(s);
    hub.publish("acme", &(6..=9).map(activity).collect::<Vec<_>>()).await;
    hub.publish("globex", &[activity(1000)]).await;
    let mut r = Sse::resume(&hub, "tok-alice", &last).await;
    let connected = r.next_within(T).await.unwrap();
    assert_eq!(connected.data["resumed"], true);
    assert_eq!(r.activities(4, T).await, vec![6, 7, 8, 9], "exactly the missed events, in order");
    hub.publish("acme", &[activity(10)]).await;
    assert_eq!(r.activities(1, T).await, vec![10], "then live, without duplicates");
    assert_eq!(hub.metric("tidings_replays_total").await, 1.0);
    assert_eq!(hub.metric("tidings_replayed_events_total").await, 4.0);
}

#[tokio::test]
async fn resume_by_query_parameter_and_from_the_connected_position() {
    let hub = Hub::start(&config("", "")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    let connected = s.next_within(T).await.unwrap();
    let position = connected.id.unwrap();
    drop(s);
    // The client dropped before any activity: its position still lets it catch up.
    hub.publish("acme", &[activity(1), activity(2)]).await;
    let url = hub.url(&format!("/events/stream?last_event_id={position}"));
    let mut r = Sse::connect_url(&url, &[("authorization", "Bearer tok-alice")]).await;
    r.next_within(T).await.unwrap();
    assert_eq!(r.activities(2, T).await, vec![1, 2]);
}

#[tokio::test]
async fn events_published_during_a_replay_follow_it_without_gap_or_duplicate() {
    let hub = Hub::start(&config("", "[history]\nmax_events = 100000\n")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    let start = s.next_within(T).await.unwrap().id.unwrap();
    drop(s);
    hub.publish("acme", &(1..=1000).map(activity).collect::<Vec<_>>()).await;
    hub.publish("acme", &(1001..=2000).map(activity).collect::<Vec<_>>()).await;
    // Publish continuously while clients resume from the start; the last must see 1..=N exactly.
    let got = resume_while_publishing(&hub, &start, 2000, 2300).await;
    assert_eq!(got, (1..=2300).collect::<Vec<_>>());
}

#[tokio::test]
async fn trimmed_history_answers_resync() {
    let hub = Hub::start(&config("", "[history]\nmax_events = 3\n")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    hub.publish("acme", &[activity(1)]).await;
    s.activities(1, T).await;
    let old = s.last_id.clone().unwrap();
    drop(s);
    hub.publish("acme", &(2..=10).map(activity).collect::<Vec<_>>()).await;
    let mut r = Sse::resume(&hub, "tok-alice", &old).await;
    let connected = r.next_within(T).await.unwrap();
    assert_eq!(connected.data["resumed"], false);
    let resync = r.next_within(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("history_trimmed")));
    // After the resync the stream is live, and its position is current.
    hub.publish("acme", &[activity(11)]).await;
    assert_eq!(r.activities(1, T).await, vec![11]);
    // A client still inside the retained window resumes exactly.
    let ids = hub.publish("acme", &[activity(12), activity(13)]).await;
    drop(r);
    let mut exact = Sse::resume(&hub, "tok-alice", &ids[0]).await;
    exact.next_within(T).await.unwrap();
    assert_eq!(exact.activities(1, T).await, vec![13]);
    assert_eq!(hub.metric("tidings_resyncs_total").await, 1.0);
}

#[tokio::test]
async fn garbage_and_future_ids_answer_resync() {
    let hub = Hub::start(&config("", "")).await;
    let ids = hub.publish("acme", &[activity(1)]).await;
    let (epoch, seq) = ids[0].split_once('-').unwrap();
    let future = format!("{epoch}-{}", seq.parse::<u64>().unwrap() + 100);
    for (id, reason) in [("garbage", "invalid_id"), ("../../etc", "invalid_id"), (future.as_str(), "unknown_id"), ("abc-1", "epoch_changed")] {
        let mut r = Sse::resume(&hub, "tok-alice", id).await;
        assert_eq!(r.status, 200);
        r.next_within(T).await.unwrap();
        let resync = r.next_within(T).await.unwrap();
        assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some(reason)), "id {id:?}");
    }
}

#[tokio::test]
async fn an_id_from_a_previous_process_answers_resync() {
    let cfg = config("", "");
    let mut hub = Hub::start(&cfg).await;
    let ids = hub.publish("acme", &[activity(1), activity(2)]).await;
    let addr = hub.addr.clone();
    hub.sigkill();
    let _ = hub.child.wait().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_in(dir, &cfg, &addr).await;
    hub.publish("acme", &[activity(3)]).await;
    let mut r = Sse::resume(&hub, "tok-alice", &ids[0]).await;
    r.next_within(T).await.unwrap();
    let resync = r.next_within(T).await.unwrap();
    assert_eq!((resync.kind(), resync.data["reason"].as_str()), ("resync", Some("epoch_changed")));
}

#[tokio::test]
async fn ids_increase_in_publish_order_per_account() {
    let hub = Hub::start(&config("", "")).await;
    let mut all = Vec::new();
    for n in 0..20 {
        let account = if n % 2 == 0 { "acme" } else { "globex" };
        all.push((account, hub.publish(account, &[activity(n), activity(n + 100)]).await));
    }
    let seqs = |acc: &str| -> Vec<u64> {
        all.iter().filter(|(a, _)| *a == acc).flat_map(|(_, ids)| ids.iter().map(|i| i.split_once('-').unwrap().1.parse().unwrap())).collect()
    };
    for acc in ["acme", "globex"] {
        let s = seqs(acc);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{acc}: {s:?}");
    }
}

/// A client that stops reading is closed as a slow consumer without the hub's memory
/// growing, and resumes from its last id without losing anything.
#[tokio::test]
async fn a_client_that_stops_reading_is_evicted_and_resumes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = Hub::start(&config("", "[limits]\nstream_queue_frames = 64\n[history]\nmax_events = 10000\n")).await;
    let mut sock = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    sock.write_all(b"GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-alice\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut head = [0u8; 512];
    let n = sock.read(&mut head).await.unwrap();
    assert!(std::str::from_utf8(&head[..n]).unwrap().starts_with("HTTP/1.1 200"));
    let published = publish_until_evicted(&hub, "acme").await;
    // The hub no longer queues for it: publishing more does not grow anything for this stream.
    assert_eq!(hub.metric("tidings_streams_open").await, 0.0);

    // The client wakes up and reads what reached it, ending with `closed slow_consumer`.
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let mut last_n = 0;
    let mut last_id = None;
    for block in text.split("\n\n") {
        if let Some(data) = block.lines().find_map(|l| l.split_once("data: ").map(|x| x.1)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                if v["type"] == "activity" {
                    let n = v["data"]["metadata"]["n"].as_u64().unwrap();
                    assert_eq!(n, last_n + 1, "frames before the eviction arrive in order");
                    last_n = n;
                    last_id = block.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned);
                }
            }
        }
    }
    let closed_seen = text.contains(r#""type":"closed","reason":"slow_consumer""#);
    // Either the closed frame got through, or the connection was dropped after the grace.
    assert!(closed_seen || hub.metric("tidings_stream_closes_total").await >= 1.0);
    let last_id = last_id.expect("some frames reached the client");
    let mut r = Sse::resume(&hub, "tok-alice", &last_id).await;
    assert_eq!(r.next_within(T).await.unwrap().data["resumed"], true);
    let rest = r.activities((published - last_n) as usize, T).await;
    assert_eq!(rest, (last_n + 1..=published).collect::<Vec<_>>(), "nothing lost across the eviction");
}

#[tokio::test]
async fn shutdown_closes_every_stream_and_exits_promptly() {
    const STREAMS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = (0..STREAMS)
        .map(|i| format!("[[tokens]]\ntoken = \"tok-{i}\"\naccount = \"acc-{}\"\nuser = \"u{i}\"\nsession = \"s-{i}\"\n", i % 7))
        .collect();
    std::fs::write(dir.path().join("tokens.toml"), tokens).unwrap();
    let cfg = config("", "[limits]\nshutdown_grace = \"5s\"\n").replace("[auth]\n", "[auth]\ntokens_file = \"tokens.toml\"\n");
    let mut hub = Hub::start_in(dir, &cfg, "127.0.0.1:0").await;
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut s = Sse::token(&hub, &format!("tok-{i}")).await;
        s.next_within(T).await.unwrap();
        streams.push(s);
    }
    assert_eq!(hub.metric("tidings_streams_open").await, STREAMS as f64);
    let started = Instant::now();
    hub.sigterm();
    let mut retries = std::collections::HashSet::new();
    for s in &mut streams {
        let closed = s.next_non_ping(T).await.unwrap();
        assert_eq!((closed.kind(), closed.data["reason"].as_str()), ("closed", Some("shutdown")));
        let retry = closed.data["retry_ms"].as_u64().unwrap();
        assert!((2000..=7000).contains(&retry), "jittered retry_ms {retry}");
        retries.insert(retry);
        assert!(s.next_within(T).await.is_none(), "stream ends after closed");
    }
    assert!(retries.len() > STREAMS / 4, "retry_ms is spread, not one value: {} distinct", retries.len());
    let status = tokio::time::timeout(Duration::from_secs(10), hub.child.wait()).await.expect("exits within the grace").unwrap();
    assert!(status.success(), "{status:?}\n{}", hub.logs());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_gap_past_the_replay_budget_answers_resync() {
    let hub = Hub::start(&config("", &format!("[history]\n{REPLAY_BUDGET_TOML}"))).await;
    replay_budget_holds(&hub).await;
}

#[tokio::test]
async fn idle_accounts_are_forgotten_without_a_silent_gap() {
    let hub = Hub::start(&config("", "[history]\nmax_age = \"1s\"\n")).await;
    idle_accounts_are_forgotten(&hub, true).await;
}

#[tokio::test]
async fn byte_budgets_per_account_and_per_node_trim_oldest_first() {
    let hub = Hub::start(&config("", &format!("[history]\n{BYTE_BUDGET_TOML}"))).await;
    let acme = account_byte_budget_holds(&hub).await;
    node_byte_budget_holds(&hub, &acme).await;
}
