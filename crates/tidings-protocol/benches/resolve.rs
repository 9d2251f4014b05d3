//! Resolutions per second with the shipped azion-console profile, single thread.
//!
//! Run: `cargo bench -p tidings-protocol --bench resolve`. The `mix` benchmark reports items/s
//! over a fixed mix (seed events, every tier, unresolved activities); the target is at least
//! 1,000,000 resolutions per second on one core.

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use serde_json::{Value, json};
use tidings_protocol::resolver::Resolver;

fn main() {
    divan::main();
}

fn resolver() -> Resolver {
    Resolver::from_toml_str(include_str!("../profiles/azion-console.toml"), "azion-console.toml").unwrap()
}

/// The activities of the original console's seed events.
fn seeds() -> Vec<Value> {
    let seeds: Value = serde_json::from_str(include_str!("../../../fixtures/original/seed-events.json")).unwrap();
    seeds
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["event"]["type"] == "activity")
        .map(|s| s["event"]["data"].clone())
        .collect()
}

/// Seeds plus resource, parent, description and unresolved activities in realistic shapes.
fn mix() -> Vec<Value> {
    let mut out = seeds();
    let types = ["edge_application", "Workload", "dns zone", "firewall", "edge_node", "storage bucket object", "team"];
    for (i, t) in types.iter().enumerate() {
        for kind in ["created", "edited", "deleted"] {
            out.push(json!({
                "user": {"email": "user@example.com", "name": "User Name"},
                "activity_type": kind,
                "resource": {"type": t, "name": "Example", "id": null},
                "timestamp": "2026-03-03T19:58:56Z",
                "description": format!("Example was {kind}"),
                "metadata": {"id": 1_772_562_194 + i, "name": "Example", "last_editor": "user@example.com"}
            }));
        }
    }
    for p in ["edge application", "Edge Firewall", "dns_zone", "workload"] {
        out.push(json!({
            "activity_type": "created",
            "resource": {"type": "rule_engine", "name": "Rule", "id": null, "parent": {"type": p, "id": "12345"}},
            "description": "Rule was created",
            "metadata": {"id": 987}
        }));
    }
    for d in
        ["Rule Engine default was edited", "FirewallRuleEngine block was created", "Dns Zone a.example was deleted"]
    {
        out.push(json!({"activity_type": "edited", "resource": {"type": "unknown"}, "description": d, "metadata": {"id": 5}}));
    }
    out.push(json!({"activity_type": "edited", "resource": {"type": "mystery"}, "description": "Something", "metadata": {"id": 1}}));
    out
}

#[divan::bench]
fn mix_of_activities(bencher: Bencher) {
    let r = resolver();
    let activities = mix();
    bencher.counter(ItemsCount::new(activities.len())).bench_local(|| {
        for a in &activities {
            black_box(r.resolve(black_box(a)));
        }
    });
}

#[divan::bench]
fn seed_events(bencher: Bencher) {
    let r = resolver();
    let activities = seeds();
    bencher.counter(ItemsCount::new(activities.len())).bench_local(|| {
        for a in &activities {
            black_box(r.resolve(black_box(a)));
        }
    });
}

#[divan::bench]
fn load_profile() -> Resolver {
    resolver()
}
