use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tidings_protocol::frame::ResyncReason;
use tidings_protocol::resume::{LastEventId, ResumeDecision};

use super::*;
use crate::metrics::Metrics;

fn engine(dir: &Path, max_events: usize) -> DurableEngine {
    let fanout = Arc::new(Fanout::new(10, 10, 16, Arc::new(Metrics::new())));
    let bounds = HistoryConfig { max_events, max_age: Duration::from_secs(3_600), ..HistoryConfig::default() };
    DurableEngine::open(dir, FsyncPolicy::Always, &bounds, fanout).unwrap()
}

fn batch(account: &str, n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| NewEvent { account: account.into(), payload: format!("{{\"n\":{i}}}").into(), audience: None, key: None }).collect()
}

fn anyone() -> Viewer {
    Viewer::new("u".into(), "s".into(), Arc::default())
}

/// Publishes a batch; returns the ids.
async fn publish(e: &DurableEngine, batch: Vec<NewEvent>) -> Result<Vec<EventId>, EngineError> {
    Ok(e.publish(batch).await?.into_iter().map(|a| a.id).collect())
}

fn keyed(account: &str, key: &str) -> NewEvent {
    NewEvent { account: account.into(), payload: format!("{{\"key\":\"{key}\"}}").into(), audience: None, key: Some(key.into()) }
}

/// The decision and replayed seqs for a resume of `account` from `id`.
async fn resume(e: &DurableEngine, account: &str, id: &EventId) -> (ResumeDecision, Vec<u64>) {
    resume_as(e, account, id, &anyone()).await
}

async fn resume_as(e: &DurableEngine, account: &str, id: &EventId, viewer: &Viewer) -> (ResumeDecision, Vec<u64>) {
    let o = e.open(account, LastEventId::Id(*id), viewer).await.unwrap();
    (o.decision, o.replay.iter().map(|f| f.seq).collect())
}

#[tokio::test]
async fn audiences_are_stored_with_their_events_and_honoured_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let admins = Some(Arc::new(tidings_protocol::Audience::new(["role:admin", "user:ann"]).unwrap()));
    let start = {
        let e = engine(dir.path(), 100);
        let start = publish(&e, batch("a", 1)).await.unwrap()[0];
        let mut events = batch("a", 3);
        events[1].audience = admins;
        publish(&e, events).await.unwrap();
        e.close().await;
        start
    };
    let e = engine(dir.path(), 100);
    let ann = Viewer::new("ann".into(), "s-1".into(), Arc::default());
    assert_eq!(resume(&e, "a", &start).await, (ResumeDecision::Replay { after: 1 }, vec![2, 4]));
    assert_eq!(resume_as(&e, "a", &start, &ann).await, (ResumeDecision::Replay { after: 1 }, vec![2, 3, 4]));
}

#[tokio::test]
async fn a_format_2_file_is_upgraded_in_place_and_keeps_its_history_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let e = engine(dir.path(), 100);
        let ids = publish(&e, vec![keyed("a", "k"), batch("a", 1).remove(0)]).await.unwrap();
        e.close().await;
        ids
    };
    // What a hub from before audiences left behind.
    let conn = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    conn.execute_batch("ALTER TABLE events DROP COLUMN audience; UPDATE meta SET value = 2 WHERE key = 'format';").unwrap();
    drop(conn);
    let e = engine(dir.path(), 100);
    assert_eq!(resume(&e, "a", &ids[0]).await, (ResumeDecision::Replay { after: 1 }, vec![2]));
    assert!(e.publish(vec![keyed("a", "k")]).await.unwrap()[0].duplicate, "keys survive the upgrade");
    let mut restricted = batch("a", 1);
    restricted[0].audience = Some(Arc::new(tidings_protocol::Audience::new(["role:admin"]).unwrap()));
    assert_eq!(publish(&e, restricted).await.unwrap(), vec![EventId::new(ids[0].epoch, 3)]);
    e.close().await;
    let e = engine(dir.path(), 100);
    assert_eq!(resume(&e, "a", &ids[0]).await, (ResumeDecision::Replay { after: 1 }, vec![2]), "upgraded, and the new event kept its audience");
}

#[tokio::test]
async fn ids_and_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let e = engine(dir.path(), 100);
        let ids = publish(&e, batch("a", 3)).await.unwrap();
        publish(&e, batch("b", 1)).await.unwrap();
        e.close().await;
        ids
    };
    let e = engine(dir.path(), 100);
    let next = publish(&e, batch("a", 1)).await.unwrap();
    assert_eq!(next[0], EventId::new(first[0].epoch, 5), "same epoch, seq continues after the head");
    assert_eq!(resume(&e, "a", &first[0]).await, (ResumeDecision::Replay { after: 1 }, vec![2, 3, 5]));
}

#[tokio::test]
async fn trims_by_count_are_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let e = engine(dir.path(), 3);
        let ids = publish(&e, batch("a", 10)).await.unwrap();
        e.close().await;
        ids
    };
    let e = engine(dir.path(), 3);
    assert_eq!(resume(&e, "a", &ids[5]).await.0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
    assert_eq!(resume(&e, "a", &ids[6]).await, (ResumeDecision::Replay { after: 7 }, vec![8, 9, 10]));
}

#[tokio::test]
async fn a_smaller_bound_at_start_trims_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let e = engine(dir.path(), 100);
        let ids = publish(&e, batch("a", 10)).await.unwrap();
        e.close().await;
        ids
    };
    let e = engine(dir.path(), 2);
    // The start-up maintenance runs before this publish, in queue order.
    publish(&e, batch("z", 1)).await.unwrap();
    assert_eq!(resume(&e, "a", &ids[0]).await.0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
    assert_eq!(resume(&e, "a", &ids[7]).await, (ResumeDecision::Replay { after: 8 }, vec![9, 10]));
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATA_FILE_NAME), vec![0x5a; 8192]).unwrap();
    let fanout = Arc::new(Fanout::new(10, 10, 16, Arc::new(Metrics::new())));
    let err = DurableEngine::open(dir.path(), FsyncPolicy::Always, &HistoryConfig::default(), fanout).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().join(DATA_FILE_NAME).display().to_string()), "{err}");
}

#[tokio::test]
async fn a_second_engine_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 10);
    publish(&e, batch("a", 1)).await.unwrap();
    let fanout = Arc::new(Fanout::new(10, 10, 16, Arc::new(Metrics::new())));
    let err = DurableEngine::open(dir.path(), FsyncPolicy::Always, &HistoryConfig::default(), fanout).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

#[tokio::test]
async fn unflushed_history_from_another_boot_gets_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let fanout = || Arc::new(Fanout::new(10, 10, 16, Arc::new(Metrics::new())));
    let bounds = HistoryConfig::default();
    let before = {
        let e = DurableEngine::open(dir.path(), FsyncPolicy::Never, &bounds, fanout()).unwrap();
        let ids = publish(&e, batch("a", 2)).await.unwrap();
        e.close().await;
        ids
    };
    // What a crash of the machine leaves behind: the marker of a run that did not flush,
    // written during an earlier boot.
    let conn = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('unsynced_boot', 'an-earlier-boot')", []).unwrap();
    drop(conn);
    let e = DurableEngine::open(dir.path(), FsyncPolicy::Always, &bounds, fanout()).unwrap();
    let after = publish(&e, batch("a", 1)).await.unwrap();
    assert_ne!(after[0].epoch, before[0].epoch, "clients must resync, not resume");
    assert_eq!(after[0].seq, 3, "seqs still continue");
    assert_eq!(resume(&e, "a", &before[0]).await.0, ResumeDecision::Resync(ResyncReason::EpochChanged));
    e.close().await;
    // A clean stop (or a crash of the hub alone, same boot) keeps the epoch.
    let again = DurableEngine::open(dir.path(), FsyncPolicy::Never, &bounds, fanout()).unwrap();
    assert_eq!(publish(&again, batch("a", 1)).await.unwrap()[0].epoch, after[0].epoch);
}

#[tokio::test]
async fn keys_are_remembered_across_a_restart_and_forgotten_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let e = engine(dir.path(), 3);
        let first = e.publish(vec![keyed("a", "k1"), keyed("a", "k1"), keyed("b", "k1")]).await.unwrap();
        assert_eq!((first[0].duplicate, first[1].duplicate, first[2].duplicate), (false, true, false));
        assert_eq!(first[1].id, first[0].id, "the second item of one batch gets the first one's id");
        assert_ne!(first[2].id, first[0].id, "keys are per account");
        e.close().await;
        first
    };
    let e = engine(dir.path(), 3);
    let again = e.publish(vec![keyed("a", "k1")]).await.unwrap();
    assert_eq!(again[0], Accepted { id: first[0].id, duplicate: true }, "the key came back from the data file");
    assert_eq!(publish(&e, batch("a", 1)).await.unwrap()[0].seq, 3, "a duplicate takes no seq");
    // Three more events of `a` trim k1's event out of the window: the key is new again.
    publish(&e, batch("a", 3)).await.unwrap();
    let late = e.publish(vec![keyed("a", "k1")]).await.unwrap();
    assert!(!late[0].duplicate && late[0].id.seq > first[0].id.seq, "{late:?}");
}

#[tokio::test]
async fn concurrent_publishers_of_one_key_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(engine(dir.path(), 100));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { e.publish(vec![keyed("a", "same")]).await.unwrap()[0] })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| !a.duplicate).count(), 1, "{answers:?}");
    assert!(answers.iter().all(|a| a.id == answers[0].id), "{answers:?}");
    let replay = e.open("a", LastEventId::Id(EventId::new(answers[0].id.epoch, 0)), &anyone()).await.unwrap().replay;
    assert_eq!(replay.len(), 1, "stored once");
}

#[tokio::test]
async fn a_format_1_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let e = engine(dir.path(), 100);
        let ids = publish(&e, batch("a", 2)).await.unwrap();
        e.close().await;
        ids
    };
    // What a hub from before idempotency keys left behind.
    let conn = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    conn.execute_batch("ALTER TABLE events DROP COLUMN key; ALTER TABLE events DROP COLUMN audience; UPDATE meta SET value = 1 WHERE key = 'format';").unwrap();
    drop(conn);
    let e = engine(dir.path(), 100);
    assert_eq!(resume(&e, "a", &ids[0]).await, (ResumeDecision::Replay { after: 1 }, vec![2]));
    let keyed_ids = e.publish(vec![keyed("a", "k"), keyed("a", "k")]).await.unwrap();
    assert_eq!((keyed_ids[0].id.seq, keyed_ids[1].duplicate), (3, true));
}
