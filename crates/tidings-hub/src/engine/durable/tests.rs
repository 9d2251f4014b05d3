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
    (0..n).map(|i| NewEvent { account: account.into(), payload: format!("{{\"n\":{i}}}").into(), audience: None }).collect()
}

fn anyone() -> Viewer {
    Viewer::new("u".into(), "s".into(), Arc::default())
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
        let start = e.publish(batch("a", 1)).await.unwrap()[0];
        let mut events = batch("a", 3);
        events[1].audience = admins;
        e.publish(events).await.unwrap();
        e.close().await;
        start
    };
    let e = engine(dir.path(), 100);
    let ann = Viewer::new("ann".into(), "s-1".into(), Arc::default());
    assert_eq!(resume(&e, "a", &start).await, (ResumeDecision::Replay { after: 1 }, vec![2, 4]));
    assert_eq!(resume_as(&e, "a", &start, &ann).await, (ResumeDecision::Replay { after: 1 }, vec![2, 3, 4]));
}

#[tokio::test]
async fn a_format_1_file_is_upgraded_in_place_and_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE TABLE events (account TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (account, seq)) WITHOUT ROWID;
         CREATE TABLE accounts (account TEXT PRIMARY KEY, trimmed_through INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO meta (key, value) VALUES ('format', 1), ('epoch', 77), ('head', 2);",
    )
    .unwrap();
    let now = now_ms() as i64;
    conn.execute("INSERT INTO events VALUES ('a', 1, ?1, '{\"n\":1}'), ('a', 2, ?1, '{\"n\":2}')", [now]).unwrap();
    drop(conn);
    let e = engine(dir.path(), 100);
    assert_eq!(resume(&e, "a", &EventId::new(77, 0)).await, (ResumeDecision::Replay { after: 0 }, vec![1, 2]));
    let mut restricted = batch("a", 1);
    restricted[0].audience = Some(Arc::new(tidings_protocol::Audience::new(["role:admin"]).unwrap()));
    assert_eq!(e.publish(restricted).await.unwrap(), vec![EventId::new(77, 3)]);
    e.close().await;
    let e = engine(dir.path(), 100);
    assert_eq!(resume(&e, "a", &EventId::new(77, 0)).await, (ResumeDecision::Replay { after: 0 }, vec![1, 2]), "upgraded, and the new event kept its audience");
}

#[tokio::test]
async fn ids_and_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let e = engine(dir.path(), 100);
        let ids = e.publish(batch("a", 3)).await.unwrap();
        e.publish(batch("b", 1)).await.unwrap();
        e.close().await;
        ids
    };
    let e = engine(dir.path(), 100);
    let next = e.publish(batch("a", 1)).await.unwrap();
    assert_eq!(next[0], EventId::new(first[0].epoch, 5), "same epoch, seq continues after the head");
    assert_eq!(resume(&e, "a", &first[0]).await, (ResumeDecision::Replay { after: 1 }, vec![2, 3, 5]));
}

#[tokio::test]
async fn trims_by_count_are_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let e = engine(dir.path(), 3);
        let ids = e.publish(batch("a", 10)).await.unwrap();
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
        let ids = e.publish(batch("a", 10)).await.unwrap();
        e.close().await;
        ids
    };
    let e = engine(dir.path(), 2);
    // The start-up maintenance runs before this publish, in queue order.
    e.publish(batch("z", 1)).await.unwrap();
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
    e.publish(batch("a", 1)).await.unwrap();
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
        let ids = e.publish(batch("a", 2)).await.unwrap();
        e.close().await;
        ids
    };
    // What a crash of the machine leaves behind: the marker of a run that did not flush,
    // written during an earlier boot.
    let conn = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('unsynced_boot', 'an-earlier-boot')", []).unwrap();
    drop(conn);
    let e = DurableEngine::open(dir.path(), FsyncPolicy::Always, &bounds, fanout()).unwrap();
    let after = e.publish(batch("a", 1)).await.unwrap();
    assert_ne!(after[0].epoch, before[0].epoch, "clients must resync, not resume");
    assert_eq!(after[0].seq, 3, "seqs still continue");
    assert_eq!(resume(&e, "a", &before[0]).await.0, ResumeDecision::Resync(ResyncReason::EpochChanged));
    e.close().await;
    // A clean stop (or a crash of the hub alone, same boot) keeps the epoch.
    let again = DurableEngine::open(dir.path(), FsyncPolicy::Never, &bounds, fanout()).unwrap();
    assert_eq!(again.publish(batch("a", 1)).await.unwrap()[0].epoch, after[0].epoch);
}
