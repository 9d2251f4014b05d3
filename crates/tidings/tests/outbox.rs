//! The PostgreSQL outbox relay, black-box: a real PostgreSQL server (started here), the real
//! hub and `tidings relay postgres` processes. Committed rows reach subscribers once, rolled
//! back ones never, a late commit with a lower id is not skipped, a crash between publish and
//! delete delivers nothing twice, a standby relay takes over, and an invalid row is moved
//! aside without holding up the rest.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::postgres::{Postgres, Relay};
use support::*;

const INSERT: &str = "INSERT INTO tidings_outbox (account, data) VALUES ($1, $2) RETURNING id";

async fn insert(tx: &impl tokio_postgres::GenericClient, account: &str, n: u64) -> i64 {
    tx.query_one(INSERT, &[&account, &activity(n)]).await.unwrap().get(0)
}

async fn pending(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM tidings_outbox", &[]).await.unwrap().get(0)
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup() -> (Postgres, Hub, Relay, tokio_postgres::Client) {
    let pg = Postgres::start().await;
    let hub = Hub::start(&config("", "")).await;
    let relay = Relay::start(&pg.url(), &hub.url(""), PUBLISHER_KEY, &[]).await;
    relay.wait_role("active").await;
    let db = pg.client().await.unwrap();
    (pg, hub, relay, db)
}

#[tokio::test]
async fn committed_rows_are_delivered_once_and_rolled_back_rows_never() {
    let (_pg, hub, relay, mut db) = setup().await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");

    let tx = db.transaction().await.unwrap();
    insert(&tx, "acme", 1).await;
    insert(&tx, "acme", 2).await;
    tx.commit().await.unwrap();
    let tx = db.transaction().await.unwrap();
    insert(&tx, "acme", 3).await;
    tx.rollback().await.unwrap();
    insert(&db, "acme", 4).await;

    assert_eq!(alice.activities(3, T).await, vec![1, 2, 4]);
    alice.expect_quiet(Duration::from_millis(500)).await;
    until("an empty outbox", T, async || pending(&db).await == 0).await;
    assert_eq!(relay.metric("tidings_relay_rows_relayed_total").await, 3.0);
    assert!(relay.metric("tidings_relay_lag_seconds_count").await >= 3.0);
    assert_eq!(relay.metric("tidings_relay_oldest_pending_seconds").await, 0.0);
}

#[tokio::test]
async fn a_late_commit_with_a_lower_id_is_not_skipped() {
    let (pg, hub, _relay, mut db) = setup().await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");
    let mut other = pg.client().await.unwrap();
    let observer = pg.client().await.unwrap();

    // A takes the lower id, B the higher; B commits first and is relayed; then A commits.
    let a = db.transaction().await.unwrap();
    let low = insert(&a, "acme", 1).await;
    let b = other.transaction().await.unwrap();
    let high = insert(&b, "acme", 2).await;
    assert!(low < high);
    b.commit().await.unwrap();
    assert_eq!(alice.activities(1, T).await, vec![2]);
    until("the higher id relayed and deleted", T, async || pending(&observer).await == 0).await;
    a.commit().await.unwrap();
    assert_eq!(alice.activities(1, T).await, vec![1], "the lower id, committed later, is relayed too");
}

#[tokio::test]
async fn a_crash_between_publish_and_delete_delivers_nothing_twice() {
    let pg = Postgres::start().await;
    let hub = Hub::start(&config("", "")).await;
    let schema = std::process::Command::new(env!("CARGO_BIN_EXE_tidings")).args(["relay", "postgres", "--print-schema"]).output().unwrap();
    let db = pg.client().await.unwrap();
    db.batch_execute(&String::from_utf8(schema.stdout).unwrap()).await.unwrap();
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");

    let id = insert(&db, "acme", 1).await;
    let created_us: i64 = db
        .query_one("SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM tidings_outbox WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    // What a relay that died after the hub's 202 and before its DELETE leaves behind: the
    // activity published with the row's key, and the row still in the table.
    let (ids, _) = publish_keyed(&hub, &[("acme", Some(&format!("tidings_outbox:{id}:{created_us}")), 1)]).await;
    assert_eq!(alice.activities(1, T).await, vec![1]);

    let relay = Relay::start(&pg.url(), &hub.url(""), PUBLISHER_KEY, &[]).await;
    until("the row deleted", T, async || pending(&db).await == 0).await;
    assert_eq!(relay.metric("tidings_relay_rows_duplicate_total").await, 1.0, "{}", relay.logs());
    alice.expect_quiet(Duration::from_millis(500)).await;
    insert(&db, "acme", 2).await;
    let next = alice.next_non_ping(T).await.unwrap();
    assert_eq!(next.n(), 2, "nothing came between the first delivery and the next row");
    assert_ne!(next.id.as_deref(), Some(ids[0].as_str()));
}

#[tokio::test]
async fn a_standby_relay_takes_over_within_seconds() {
    let (pg, hub, mut first, db) = setup().await;
    let second = Relay::start(&pg.url(), &hub.url(""), PUBLISHER_KEY, &[]).await;
    second.wait_role("standby").await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");
    insert(&db, "acme", 1).await;
    assert_eq!(alice.activities(1, T).await, vec![1]);
    assert_eq!(second.metric("tidings_relay_rows_relayed_total").await, 0.0, "the standby consumed nothing");

    first.kill().await;
    let killed = Instant::now();
    insert(&db, "acme", 2).await;
    assert_eq!(alice.activities(1, Duration::from_secs(10)).await, vec![2]);
    let took = killed.elapsed();
    println!("standby relay delivered the next row {took:?} after the active one was killed");
    assert!(took < Duration::from_secs(5), "{took:?}");
    second.wait_role("active").await;
}

#[tokio::test]
async fn a_row_the_hub_refuses_is_moved_aside_and_the_rest_flow() {
    let (_pg, hub, relay, db) = setup().await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");
    // Three rows committed together: the middle one has no activity_type.
    db.batch_execute(&format!(
        "BEGIN;
         INSERT INTO tidings_outbox (account, data) VALUES ('acme', '{}');
         INSERT INTO tidings_outbox (account, data) VALUES ('acme', '{{\"resource\": {{\"type\": \"x\"}}}}');
         INSERT INTO tidings_outbox (account, data) VALUES ('acme', '{}');
         COMMIT;",
        activity(1),
        activity(3)
    ))
    .await
    .unwrap();
    assert_eq!(alice.activities(2, T).await, vec![1, 3]);
    until("the outbox drained", T, async || pending(&db).await == 0).await;
    let rejected = db.query_one("SELECT data, error FROM tidings_outbox_rejected", &[]).await.unwrap();
    assert_eq!(rejected.get::<_, serde_json::Value>(0), json!({"resource": {"type": "x"}}));
    assert!(rejected.get::<_, String>(1).contains("activity_type"), "{}", rejected.get::<_, String>(1));
    assert_eq!(relay.metric("tidings_relay_rows_rejected_total").await, 1.0);
    // The schema refuses what the relay could never publish at the insert, in the writer's
    // own transaction.
    let err = db.execute("INSERT INTO tidings_outbox (account, data) VALUES ('', '{}')", &[]).await.unwrap_err();
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("check constraint")), "{err:?}");
}

#[tokio::test]
async fn the_relay_waits_out_the_hub_and_the_database() {
    let (mut pg, mut hub, relay, db) = setup().await;
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");
    drop(alice);
    let addr = hub.addr.clone();
    // The hub is gone: rows wait in the table, and the relay says it is not ready.
    hub.sigkill();
    let _ = hub.child.wait().await;
    insert(&db, "acme", 1).await;
    until("readyz to report the hub down", Duration::from_secs(30), async || relay.readyz().await.0 == 503).await;
    assert_eq!(pending(&db).await, 1);
    let cfg = std::fs::read_to_string(&hub.config_path).unwrap();
    let mut dir = std::mem::replace(&mut hub.dir, tempfile::tempdir().unwrap());
    let hub = loop {
        match Hub::try_start_in(dir, &cfg, &addr).await {
            Ok(hub) => break hub,
            Err(d) => dir = d,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut alice = Sse::token(&hub, "tok-alice").await;
    assert_eq!(alice.next_within(T).await.unwrap().kind(), "connected");
    assert_eq!(alice.activities(1, Duration::from_secs(30)).await, vec![1]);

    // The database restarts (a crash): the relay reconnects and carries on.
    pg.restart().await;
    let db = pg.client().await.unwrap();
    insert(&db, "acme", 2).await;
    assert_eq!(alice.activities(1, Duration::from_secs(30)).await, vec![2]);
    relay.wait_role("active").await;
}

#[tokio::test]
async fn relay_help_and_bad_settings() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tidings")).args(["relay", "postgres", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["outbox", "LISTEN/NOTIFY", "--database-url", "--create-schema", "advisory lock"] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["relay", "postgres", "--database-url", "postgres://x@127.0.0.1:1/db", "--key", "k", "--table", "Bad;Name"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--table"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[tokio::test]
async fn a_missing_table_is_named_until_it_exists() {
    let pg = Postgres::start().await;
    let hub = Hub::start(&config("", "")).await;
    let args = ["relay", "postgres", "--database-url", &pg.url(), "--url", &hub.url(""), "--key", PUBLISHER_KEY, "--poll-interval", "200ms"];
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(T, tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut line)).await.unwrap().unwrap();
    assert!(line.contains("tidings_outbox does not exist") && line.contains("--create-schema"), "{line}");
}
