//! The relay's metrics and its readiness, served over HTTP at `/metrics` (Prometheus text),
//! `/readyz` and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Every metric of one relay process, and the state `/readyz` reports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rows the hub accepted (new or duplicate) and the relay deleted.
    pub rows_relayed: Counter,
    /// Of those, rows the hub already had (sent again after a crash or by a second relay).
    pub rows_duplicate: Counter,
    /// Rows the hub refused as invalid, moved to the rejected table.
    pub rows_rejected: Counter,
    /// Publish attempts that failed with the hub unreachable or unavailable.
    pub publish_failures: Counter,
    /// Commit (or insert) of a row to the hub's `202` for it.
    pub lag: Histogram,
    /// Age of the oldest row still in the outbox, seconds (0 when empty).
    pub oldest_pending: Gauge<f64, AtomicU64>,
    /// 1 while this relay holds the consumer lock.
    pub active: Gauge,
    /// 1 while the database connection is up.
    pub database_up: Gauge,
    /// 0 after a publish failed with the hub unavailable, until one succeeds.
    pub hub_up: Gauge,
    /// Set once the relay stops.
    pub stopping: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            rows_relayed: Counter::default(),
            rows_duplicate: Counter::default(),
            rows_rejected: Counter::default(),
            publish_failures: Counter::default(),
            // 1 ms .. ~65 s
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            oldest_pending: Gauge::default(),
            active: Gauge::default(),
            database_up: Gauge::default(),
            hub_up: Gauge::default(),
            stopping: AtomicBool::new(false),
        };
        m.hub_up.set(1);
        let mut registry = Registry::with_prefix("tidings_relay");
        let r = &mut registry;
        r.register("rows_relayed", "Outbox rows the hub accepted and the relay deleted", m.rows_relayed.clone());
        r.register("rows_duplicate", "Relayed rows the hub already had (resent after a crash or by another relay)", m.rows_duplicate.clone());
        r.register("rows_rejected", "Outbox rows the hub refused as invalid, moved to the rejected table", m.rows_rejected.clone());
        r.register("publish_failures", "Publish attempts that failed with the hub unreachable or unavailable", m.publish_failures.clone());
        r.register("lag_seconds", "Row commit (insert without track_commit_timestamp) to the hub's 202", m.lag.clone());
        r.register("oldest_pending_seconds", "Age of the oldest row still in the outbox", m.oldest_pending.clone());
        r.register("active", "1 while this relay holds the consumer lock", m.active.clone());
        r.register("database_up", "1 while the database connection is up", m.database_up.clone());
        r.register("hub_up", "0 after a publish failed with the hub unavailable, until one succeeds", m.hub_up.clone());
        Self { registry, ..m }
    }

    /// Ready: connected to the database, not stopping, and, when active, the hub answering.
    /// A standby is ready: it is what takes over.
    pub fn ready(&self) -> bool {
        self.database_up.get() == 1 && !self.stopping.load(Ordering::Acquire) && (self.active.get() == 0 || self.hub_up.get() == 1)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }
}

/// `/metrics`, `/readyz`, `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(render)).route("/readyz", get(readyz)).route("/healthz", get(|| async { "ok" })).with_state(metrics)
}

async fn render(State(m): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}

async fn readyz(State(m): State<Arc<Metrics>>) -> Response {
    let ready = m.ready();
    let body = serde_json::json!({
        "ready": ready,
        "role": if m.active.get() == 1 { "active" } else { "standby" },
        "database": m.database_up.get() == 1,
        "hub": m.hub_up.get() == 1,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}
