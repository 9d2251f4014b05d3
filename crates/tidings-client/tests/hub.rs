//! The SDK against the real hub binary on 127.0.0.1: live delivery, resume across a cut and
//! a half-open connection (through a failing proxy), a hub crash and restart, graceful
//! shutdown, auth failures, supersede, and the publisher.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::WAIT;
use support::hub::{ACCOUNT, ALICE, ALICE_AGAIN, BOB, BOB_GRANT, Hub, PUBLISHER_KEY};
use tidings_testkit::proxy::Proxy;
use tidings_client::{
    Backoff, Cache, Client, CloseReason, Disconnect, Error, Event, Key, PublishError, PublishItem, Publisher,
    Subscription,
};

fn fast() -> Backoff {
    Backoff { base: Duration::from_millis(20), cap: Duration::from_millis(200) }
}

fn subscribe(url: String, token: &str) -> Subscription {
    Client::builder(url).token(token).backoff(fast()).subscribe().unwrap()
}

async fn next(sub: &mut Subscription) -> Result<Event, Error> {
    tokio::time::timeout(WAIT, sub.next()).await.expect("no item").expect("stream ended")
}

/// The next event that is not a ping or a reconnect notice.
async fn next_significant(sub: &mut Subscription) -> Event {
    loop {
        match next(sub).await {
            Ok(Event::Ping | Event::Reconnecting { .. }) => continue,
            Ok(event) => return event,
            Err(e) => panic!("terminal error: {e}"),
        }
    }
}

async fn connected(sub: &mut Subscription) -> Option<bool> {
    match next_significant(sub).await {
        Event::Connected { resumed, .. } => resumed,
        other => panic!("expected connected, got {other:?}"),
    }
}

async fn activity(sub: &mut Subscription) -> (String, Value) {
    match next_significant(sub).await {
        Event::Activity { id, data, .. } => (id.expect("activity without id"), data),
        other => panic!("expected activity, got {other:?}"),
    }
}

fn act(n: u64) -> Value {
    json!({
        "activity_type": "edited",
        "resource": {"type": "edge_application", "name": format!("App {n}"), "id": null},
        "metadata": {"id": n},
        "description": format!("App {n} was edited"),
        "custom": {"n": n, "nested": [1, "two", null]}
    })
}

async fn publish(hub_url: &str, n: u64) -> String {
    Publisher::new(hub_url, PUBLISHER_KEY).publish(ACCOUNT, &act(n)).await.unwrap()
}

#[tokio::test]
async fn publisher_and_live_delivery_keep_every_field() {
    let hub = Hub::start("15s").await;
    let mut sub = subscribe(hub.url(), ALICE);
    connected(&mut sub).await;
    let publisher = Publisher::new(&hub.url(), PUBLISHER_KEY);
    let id = publisher.publish(ACCOUNT, &act(1)).await.unwrap();
    assert_eq!(activity(&mut sub).await, (id, act(1)));

    let batch = vec![
        PublishItem::new(ACCOUNT, act(2)),
        PublishItem::new(ACCOUNT, act(3)).with_key("act-3"),
    ];
    let ids = publisher.publish_batch(&batch).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(activity(&mut sub).await, (ids[0].clone(), act(2)));
    assert_eq!(activity(&mut sub).await, (ids[1].clone(), act(3)));
    let again = publisher.submit(&[PublishItem::new(ACCOUNT, act(3)).with_key("act-3")]).await.unwrap();
    assert_eq!((again.ids, again.duplicates), (vec![ids[1].clone()], vec![0]), "the hub stored act-3 once");

    let bad = json!({"activity_type": 7});
    match publisher.publish(ACCOUNT, &bad).await {
        Err(PublishError::Hub { status, field, .. }) => {
            assert!((400..500).contains(&status), "{status}");
            assert!(field.is_some_and(|f| f.contains("activity_type")));
        }
        other => panic!("{other:?}"),
    }
    match Publisher::new(&hub.url(), "wrong-key").publish(ACCOUNT, &act(4)).await {
        Err(PublishError::Hub { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_token_stops_with_unauthorized() {
    let hub = Hub::start("15s").await;
    let mut sub = subscribe(hub.url(), "tok-nobody");
    assert!(matches!(next(&mut sub).await, Err(Error::Unauthorized { .. })));
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn a_newer_stream_of_the_session_supersedes_and_the_old_one_stays_stopped() {
    let hub = Hub::start("15s").await;
    let mut old = subscribe(hub.url(), ALICE);
    connected(&mut old).await;
    let mut new = subscribe(hub.url(), ALICE_AGAIN);
    connected(&mut new).await;
    assert!(matches!(next_significant(&mut old).await, Event::Closed { reason, retry_ms: None } if reason == "superseded"));
    assert_eq!(next(&mut old).await, Err(Error::Closed { reason: CloseReason::Superseded }));
    assert!(old.next().await.is_none());
    // The new stream is not superseded back by a reconnect of the old one.
    let id = publish(&hub.url(), 1).await;
    assert_eq!(activity(&mut new).await.0, id);
}

#[tokio::test]
async fn no_event_is_lost_across_a_cut_connection() {
    let hub = Hub::start("15s").await;
    let proxy = Proxy::start(hub.addr).await;
    let mut sub = subscribe(proxy.url(), ALICE);
    connected(&mut sub).await;
    let first = publish(&hub.url(), 1).await;
    assert_eq!(activity(&mut sub).await.0, first);

    proxy.set_down(true);
    proxy.cut_all();
    match next(&mut sub).await {
        Ok(Event::Reconnecting { cause: Disconnect::Ended | Disconnect::Network(_), .. }) => {}
        other => panic!("{other:?}"),
    }
    let missed = [publish(&hub.url(), 2).await, publish(&hub.url(), 3).await];
    tokio::time::sleep(Duration::from_millis(300)).await; // a few failed reconnects
    proxy.set_down(false);

    assert_eq!(connected(&mut sub).await, Some(true), "resumed from the last id");
    assert_eq!(activity(&mut sub).await, (missed[0].clone(), act(2)));
    assert_eq!(activity(&mut sub).await, (missed[1].clone(), act(3)));
    let live = publish(&hub.url(), 4).await;
    assert_eq!(activity(&mut sub).await.0, live, "no duplicate between replay and live");
}

/// Publishes activity `n` for holders of Bob's grant only.
async fn publish_for_bob(hub_url: &str, n: u64) -> String {
    let item = PublishItem::new(ACCOUNT, act(n)).with_audience([BOB_GRANT]);
    Publisher::new(hub_url, PUBLISHER_KEY).publish_batch(&[item]).await.unwrap().remove(0)
}

fn seq(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn gaps_in_the_seqs_are_not_loss_and_a_resume_past_hidden_events_needs_no_resync() {
    let hub = Hub::start("15s").await;
    let proxy = Proxy::start(hub.addr).await;
    let cache = Arc::new(Recorder::default());
    let mut alice = Client::builder(proxy.url()).token(ALICE).backoff(fast()).cache(cache.clone()).subscribe().unwrap();
    connected(&mut alice).await;
    let mut bob = subscribe(hub.url(), BOB);
    connected(&mut bob).await;

    // Live: Alice's ids skip Bob's events, and nothing makes her client think it lost any.
    let first = publish(&hub.url(), 1).await;
    let hidden = publish_for_bob(&hub.url(), 2).await;
    let second = publish(&hub.url(), 3).await;
    assert_eq!(activity(&mut alice).await.0, first);
    assert_eq!(activity(&mut alice).await.0, second);
    assert_eq!(seq(&second) - seq(&first), 2, "a gap where Bob's event was");
    for expected in [&first, &hidden, &second] {
        assert_eq!(&activity(&mut bob).await.0, expected);
    }

    // Cut: while she is away only Bob's events happen. The resume replays nothing, is exact,
    // and asks for no resync; then one she may see.
    proxy.set_down(true);
    proxy.cut_all();
    assert!(matches!(next(&mut alice).await, Ok(Event::Reconnecting { .. })));
    publish_for_bob(&hub.url(), 4).await;
    publish_for_bob(&hub.url(), 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_down(false);
    assert_eq!(connected(&mut alice).await, Some(true), "resumed, nothing to replay");
    let later = publish(&hub.url(), 6).await;
    assert_eq!(activity(&mut alice).await, (later, act(6)));
    let calls = cache.0.lock().unwrap().clone();
    assert!(!calls.iter().any(|c| c == "invalidate_all"), "no resync, nothing treated as lost: {calls:?}");
}

#[tokio::test]
async fn a_half_open_connection_is_detected_and_resumed() {
    let hub = Hub::start("300ms").await;
    let proxy = Proxy::start(hub.addr).await;
    let mut sub = subscribe(proxy.url(), BOB);
    match next_significant(&mut sub).await {
        Event::Connected { heartbeat, .. } => assert_eq!(heartbeat, Some(Duration::from_millis(300))),
        other => panic!("{other:?}"),
    }
    proxy.stall_all();
    let missed = publish(&hub.url(), 1).await;
    let started = tokio::time::Instant::now();
    loop {
        match next(&mut sub).await.unwrap() {
            Event::Ping => continue,
            Event::Reconnecting { cause: Disconnect::Stalled(after), .. } => {
                assert_eq!(after, Duration::from_millis(750));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3), "detected after {:?}", started.elapsed());
    assert_eq!(connected(&mut sub).await, Some(true));
    assert_eq!(activity(&mut sub).await.0, missed);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Cache for Recorder {
    fn invalidate(&self, key: &Key) {
        self.0.lock().unwrap().push(format!("invalidate {}", json!(key)));
    }
    fn remove(&self, key: &Key) {
        self.0.lock().unwrap().push(format!("remove {}", json!(key)));
    }
    fn invalidate_all(&self) {
        self.0.lock().unwrap().push("invalidate_all".into());
    }
}

#[tokio::test]
async fn after_a_hub_crash_and_restart_the_client_resyncs() {
    let hub = Hub::start("15s").await;
    let addr = hub.addr;
    let cache = Arc::new(Recorder::default());
    let mut sub = Client::builder(hub.url()).token(ALICE).backoff(fast()).cache(cache.clone()).subscribe().unwrap();
    connected(&mut sub).await;
    publish(&hub.url(), 1).await;
    activity(&mut sub).await;

    hub.kill().await;
    match next(&mut sub).await {
        Ok(Event::Reconnecting { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Refused connections keep being retried, never given up.
    for _ in 0..3 {
        assert!(matches!(next(&mut sub).await, Ok(Event::Reconnecting { cause: Disconnect::Network(_), .. })));
    }
    let hub = Hub::start_on(addr, "15s").await;
    connected(&mut sub).await;
    // The in-memory history is gone: the hub cannot prove continuity and says so.
    assert!(matches!(next_significant(&mut sub).await, Event::Resync { .. }));
    assert_eq!(cache.0.lock().unwrap().last().map(String::as_str), Some("invalidate_all"));
    let id = publish(&hub.url(), 2).await;
    assert_eq!(activity(&mut sub).await.0, id);
}

#[tokio::test]
async fn graceful_shutdown_sends_closed_and_the_client_retries() {
    let hub = Hub::start("15s").await;
    let mut sub = subscribe(hub.url(), ALICE);
    connected(&mut sub).await;
    hub.terminate().await;
    match next_significant(&mut sub).await {
        Event::Closed { reason, .. } => assert_eq!(reason, "shutdown"),
        other => panic!("{other:?}"),
    }
    match next(&mut sub).await {
        Ok(Event::Reconnecting { cause: Disconnect::Closed(reason), .. }) => assert_eq!(reason, "shutdown"),
        other => panic!("{other:?}"),
    }
    sub.stop().await;
}
