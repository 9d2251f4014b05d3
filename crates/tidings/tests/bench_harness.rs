//! The benchmark harness end to end against the real `tidings serve`: small sizes, no timing
//! assertions, only that every stream opens and every published event is counted exactly once.

use std::path::PathBuf;
use std::time::Duration;

use tidings_bench::{Harness, Identity, Kind, Scenario, Sizes};

fn harness(per_process: usize) -> Harness {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tidings"));
    Harness { tidings_bin: bin.clone(), exe: bin, per_process, sources: 4, nofile: 4_096 }
}

fn sizes() -> Sizes {
    Sizes {
        streams: 200,
        accounts: 20,
        fanout_rate: 50.0,
        many_rate: 200.0,
        resume_rate: 50.0,
        duration: Duration::from_secs(1),
        settle: Duration::from_millis(200),
        connect_rate: 2_000,
    }
}

fn assert_exact(o: &tidings_bench::Outcome) {
    assert!(o.all_open, "{o:?}");
    assert!(o.published > 0, "{o:?}");
    assert!(o.publish_errors.is_empty() && o.errors.is_empty(), "{o:?}");
    assert_eq!((o.lost, o.duplicated), (0, 0), "{o:?}");
    assert_eq!(o.delivered, o.expected, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_every_delivery_once() {
    let o = harness(10_000).run(Kind::Tidings, Scenario::Fanout, &sizes(), Identity::Static).await.unwrap();
    // One account: every acknowledged event reaches all 200 streams.
    assert_eq!(o.expected, o.published * 200, "{o:?}");
    assert_exact(&o);
    assert!(o.p50_ms.is_some() && o.max_ms >= o.p99_ms, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_with_an_audience_reaches_exactly_the_half_in_it() {
    let o = harness(10_000).run(Kind::Tidings, Scenario::FanoutAudience, &sizes(), Identity::Static).await.unwrap();
    // Every event is for the 100 even streams; a delivery to an odd one would be counted too.
    assert_eq!(o.expected, o.published * 100, "{o:?}");
    assert_exact(&o);
    assert!(o.publish_rate_asked == Some(100.0), "twice the fan-out rate: {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_accounts_split_over_worker_processes_add_up() {
    // 200 streams at 80 per process: three `tidings bench worker` processes carry them.
    let o = harness(80).run(Kind::Tidings, Scenario::ManyAccounts, &sizes(), Identity::Static).await.unwrap();
    // 20 accounts of 10 streams each: every event reaches the 10 streams of its account.
    assert_eq!(o.expected, o.published * 10, "{o:?}");
    assert_exact(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_memory_is_measured_for_every_identity_source() {
    for identity in [Identity::Static, Identity::Jwt, Identity::Introspection] {
        let o = harness(10_000).run(Kind::Tidings, Scenario::Idle, &sizes(), identity).await.unwrap();
        assert!(o.all_open, "{identity:?}: {o:?}");
        assert!(o.rss_after_kib.unwrap() > 0 && o.rss_per_stream_kib.is_some(), "{identity:?}: {o:?}");
        assert_eq!(o.processes, vec!["tidings".to_owned()], "{identity:?}: {o:?}");
    }
}

/// The multi-node model at CI size: one and two nodes on a real Redis, two rates in turn on
/// the same streams; every published event reaches every stream of its account on whichever
/// node holds it, once. The second rate publishes 4 events per 10 ms tick (one request, one
/// Redis script call and mostly one feed read for several events) and follows the first on
/// streams that have already counted its events: a harness that restarted its sequence
/// numbers, or a hub that lost or repeated an event of a batch, fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_model_counts_every_delivery_once_on_every_node() {
    let (report, _) = scale_model(vec![1], vec![1, 2], vec![50.0, 400.0]).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let points: Vec<(usize, f64)> = report.points.iter().map(|p| (p.nodes, p.rate_asked)).collect();
    assert_eq!(points, vec![(1, 50.0), (1, 400.0), (2, 50.0), (2, 400.0)]);
    for p in &report.points {
        assert!(p.published > 0 && p.expected == p.published * 10, "{p:?}");
        assert!(p.publish_errors.is_empty(), "{p:?}");
        assert_eq!((p.delivered, p.lost, p.duplicated, p.extra), (p.expected, 0, 0, 0), "{p:?}");
        assert_eq!(p.per_node.len(), p.nodes, "{p:?}");
        assert!(p.per_node.iter().all(|n| n.delivered > 0 && n.read_bytes_per_sec > 0.0), "{p:?}");
        assert!(p.redis_cpu_cores > 0.0, "{p:?}");
    }
}

/// The same model over two Redis servers as the engine's `[[engine.shards]]`: every event
/// still reaches every stream of its account once, each node reads both shards' feeds (the
/// `{shard="i"}` series, summed into the node's feed bytes), and each server's CPU is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_model_over_two_shards_reads_both_feeds_and_counts_every_delivery_once() {
    let (report, md) = scale_model(vec![2], vec![2], vec![200.0]).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.points.len(), 1, "{:?}", report.points);
    let p = &report.points[0];
    assert_eq!((p.shards, p.nodes), (2, 2), "{p:?}");
    assert!(p.published > 0 && p.expected == p.published * 10, "{p:?}");
    assert!(p.publish_errors.is_empty(), "{p:?}");
    assert_eq!((p.delivered, p.lost, p.duplicated, p.extra), (p.expected, 0, 0, 0), "{p:?}");
    assert_eq!(p.redis_cpu_cores_by_server.len(), 2, "{p:?}");
    assert!(p.redis_cpu_cores_by_server.iter().all(|c| *c > 0.0), "every server's CPU: {p:?}");
    assert_eq!(p.per_node.len(), 2, "{p:?}");
    for n in &p.per_node {
        assert!(n.delivered > 0, "{p:?}");
        assert_eq!((n.feed_entries_by_shard.len(), n.read_bytes_per_sec_by_shard.len()), (2, 2), "{p:?}");
        assert!(n.feed_entries_by_shard.iter().all(|e| *e > 0), "both shards' feeds read: {p:?}");
        assert!(n.read_bytes_per_sec_by_shard.iter().all(|b| *b > 0.0), "{p:?}");
        let sum: f64 = n.read_bytes_per_sec_by_shard.iter().sum();
        assert!((n.read_bytes_per_sec - sum).abs() < 1e-6, "{p:?}");
    }
    assert!(md.contains("Per Redis server"), "{md}");
}

/// Accounts come and go: once 50,000 accounts' events aged out and the accounts were forgotten,
/// the hub gives most of what they took back to the system (with glibc, through the trim in
/// `trim.rs`; without it the RSS stayed at its peak), not just to its allocator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_taken_by_forgotten_accounts_goes_back_to_the_system() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("accounts.json");
    let args = tidings_bench::accounts::AccountsArgs {
        counts: vec![50_000],
        max_age: Duration::from_secs(2),
        settle: Duration::from_secs(60),
        tidings_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_tidings"))),
        out: out.clone(),
    };
    tidings_bench::accounts::run(args).await.unwrap();
    let report: tidings_bench::accounts::AccountsReport = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let p = &report.points[0];
    assert!(p.forgotten_after_s.is_some(), "the accounts were never forgotten: {p:?}");
    let grown = p.published_kib.saturating_sub(p.baseline_kib);
    assert!(grown > 8 * 1024, "50,000 accounts should take more than 8 MiB: {p:?}");
    let kept = p.settled_kib.saturating_sub(p.baseline_kib);
    assert!(kept * 2 < grown, "less than half of what the accounts took came back: {p:?}");
}

/// Runs the scale model at CI size (100 streams over 10 accounts, one second per point) on
/// real Redis servers and reads its report and its Markdown table.
async fn scale_model(shards: Vec<usize>, nodes: Vec<usize>, rates: Vec<f64>) -> (tidings_bench::scale::ScaleReport, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scale.json");
    let args = tidings_bench::scale::ScaleArgs {
        shards,
        nodes,
        rates,
        streams: 100,
        accounts: 10,
        duration: Duration::from_secs(1),
        repeat: 1,
        tidings_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_tidings"))),
        redis_server: PathBuf::from("redis-server"),
        sources: 4,
        out: out.clone(),
    };
    tidings_bench::scale::run(args).await.unwrap();
    let report = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    (report, std::fs::read_to_string(out.with_extension("md")).unwrap())
}
