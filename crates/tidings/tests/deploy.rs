//! The monitoring files under `deploy/` hold up against the real hub and the real Prometheus
//! tooling: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), every query of the Grafana dashboard is valid PromQL, and every
//! metric either of them names exists in the `/metrics` of a running hub.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Runs promtool; fails loudly when it is not installed.
fn promtool(args: &[&str], dir: &Path) {
    let bin = std::env::var("TIDINGS_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&bin).args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("{bin}: {e}. promtool is required by this test (Debian: apt-get install prometheus; or set TIDINGS_PROMTOOL)")
    });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy("prometheus");
    promtool(&["check", "rules", "tidings-alerts.yml"], &dir);
    promtool(&["test", "rules", "tidings-alerts.test.yml"], &dir);
}

/// Every query of the dashboard's panels, with Grafana's variables put in as values.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read("grafana/tidings-hub.json")).expect("the dashboard is JSON");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "panel {id} is wider than the grid");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id} uses the dashboard's data source variable");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("panel {id} has no query"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {id}: a target without expr"));
            let concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*");
            assert!(!concrete.contains('$'), "panel {id}: an unknown variable in {expr}");
            queries.push((format!("panel {id} {}", panel["title"]), concrete));
        }
    }
    queries
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    // promtool checks the syntax of recording rules: one per query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {}\n", serde_json::to_string(expr).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard-queries.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard-queries.yml"], dir.path());
}

/// Names shaped like the hub's metrics (`tidings_…`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    while let Some(found) = text[at..].find("tidings_") {
        let start = at + found;
        let mut end = start + "tidings_".len();
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word(bytes[start - 1]) {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// The sample names a `/metrics` exposition can hold, from its `# TYPE` lines.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_name_exists_in_the_hubs_metrics() {
    let hub = Hub::start(&config("", "")).await;
    let text = reqwest::get(hub.url("/metrics")).await.unwrap().text().await.unwrap();
    let exposed = exposed(&text);
    assert!(exposed.contains("tidings_streams_open"), "{text}");

    let rules = read("prometheus/tidings-alerts.yml");
    let used_by_rules = metric_names(&rules);
    // The alerts the operator's side asks for, each on the metric that carries it.
    for needed in [
        "tidings_resyncs_total",
        "tidings_slow_consumer_evictions_total",
        "tidings_unresolved_events_total",
        "tidings_publish_rejections_total",
        "tidings_engine_ready",
        "tidings_streams_max",
    ] {
        assert!(used_by_rules.contains(needed), "no alert uses {needed}");
    }
    let mut used = used_by_rules;
    used.extend(metric_names(&read("prometheus/tidings-alerts.test.yml")));
    used.extend(metric_names(&read("grafana/tidings-hub.json")));
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(missing.is_empty(), "named in deploy/ but not in the hub's /metrics: {missing:?}\n{text}");
    eprintln!("{} metric names used in deploy/, all exposed by the hub", used.len());
}
