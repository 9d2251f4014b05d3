//! Prometheus metrics of one hub node, rendered as text at `GET /metrics`.
//!
//! Counters are plain atomics behind `prometheus-client`; nothing here allocates on the hot
//! path except the first use of a label value. Labels are closed sets (close and resync
//! reasons, error codes), never user input, so cardinality is bounded.

use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

/// Which shard of the Redis engine (`0` .. the number of `[[engine.shards]]`, a closed set
/// the configuration fixes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: usize,
}

/// A Redis engine metric per shard: one series per shard labelled `shard` when the engine has
/// `[[engine.shards]]`, and one series without a label otherwise, exactly the series a node
/// had before shards existed (dashboards and scrapers of such deployments see no change).
/// Nothing until the engine starts ([`PerShard::start`]).
#[derive(Debug, Default)]
pub struct PerShard<M> {
    /// Whether the series carry `shard`, and each shard's metric (handles share the value).
    series: Arc<RwLock<(bool, Vec<M>)>>,
}

impl<M> Clone for PerShard<M> {
    fn clone(&self) -> Self {
        Self { series: self.series.clone() }
    }
}

impl<M: Default + Clone> PerShard<M> {
    /// Creates the series of `count` shards, labelled when `labelled`, and returns a handle on
    /// each; called once by the engine when it starts.
    pub fn start(&self, count: usize, labelled: bool) -> Vec<M> {
        let series: Vec<M> = (0..count).map(|_| M::default()).collect();
        *self.series.write().expect("series lock") = (labelled, series.clone());
        series
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for PerShard<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.series.read().expect("series lock");
        match &*guard {
            (false, series) if series.len() == 1 => series[0].encode(encoder),
            (_, series) => {
                for (shard, m) in series.iter().enumerate() {
                    m.encode(encoder.encode_family(&ShardLabel { shard })?)?;
                }
                Ok(())
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `head`, `body` or `response`: which phase of a request ran out of time.
    pub phase: &'static str,
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub streams_open: Gauge,
    /// The most streams this node accepts (`limits.streams_per_node` after fitting it to the
    /// open files limit); set once at start.
    pub streams_max: Gauge,
    /// Client connections open, streams or not.
    pub connections_open: Gauge,
    /// Requests cut off by a time bound, by phase (see [`PhaseLabel`]).
    pub request_timeouts: Family<PhaseLabel, Counter>,
    /// 1 while the engine answers, 0 while it does not; refreshed on each scrape.
    pub engine_ready: Gauge,
    /// Accounts the node's history window holds (memory and durable engines), as of the last
    /// upkeep: those with retained events or open streams, and idle ones not yet forgotten.
    pub history_accounts: Gauge,
    pub history_retained_events: Gauge,
    pub history_retained_bytes: Gauge,
    /// Redis engine, per shard: feed entries this node read (every event of every account of
    /// the shard, whatever streams the node holds, plus claims and fences), and their bytes
    /// (ids and fields).
    pub redis_feed_entries: PerShard<Counter>,
    pub redis_feed_bytes: PerShard<Counter>,
    /// Redis engine, per shard: 1 while this node is connected to the shard's primary and
    /// follows its feed, 0 while not (its accounts' publishes and opens get 503 meanwhile).
    pub redis_shard_ready: PerShard<Gauge>,
    pub streams_opened: Counter,
    /// Streams ended, by reason: the `closed` reasons plus `client_gone` and `error`.
    pub stream_closes: Family<ReasonLabel, Counter>,
    /// Stream requests refused before the stream started, by error code.
    pub stream_refusals: Family<CodeLabel, Counter>,
    pub events_published: Counter,
    /// Publish items whose idempotency key was already accepted (answered, not stored).
    pub publish_duplicates: Counter,
    /// Frames handed to stream queues (activity, per stream).
    pub events_delivered: Counter,
    pub publish_rejections: Family<CodeLabel, Counter>,
    pub replays: Counter,
    pub replayed_events: Counter,
    pub resyncs: Family<ReasonLabel, Counter>,
    pub slow_consumer_evictions: Counter,
    pub unresolved_events: Counter,
    /// Time from a publish request's arrival to its acknowledgement.
    pub publish_latency: Histogram,
    /// Time from an event entering a stream queue to the stream handing it to the connection;
    /// sampled (see [`Metrics::observe_delivery_lag`]).
    pub delivery_lag: Histogram,
}

/// One write in this many is timed into `delivery_lag`: the histogram takes a lock per
/// observation, and with every write of every stream observed (a million a second in a
/// fan-out) that lock was shared by all of them.
pub const DELIVERY_LAG_SAMPLE: u32 = 16;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidings");
        let m = Self {
            streams_open: Gauge::default(),
            streams_max: Gauge::default(),
            connections_open: Gauge::default(),
            request_timeouts: Family::default(),
            engine_ready: Gauge::default(),
            history_accounts: Gauge::default(),
            history_retained_events: Gauge::default(),
            history_retained_bytes: Gauge::default(),
            redis_feed_entries: PerShard::default(),
            redis_feed_bytes: PerShard::default(),
            redis_shard_ready: PerShard::default(),
            streams_opened: Counter::default(),
            stream_closes: Family::default(),
            stream_refusals: Family::default(),
            events_published: Counter::default(),
            publish_duplicates: Counter::default(),
            events_delivered: Counter::default(),
            publish_rejections: Family::default(),
            replays: Counter::default(),
            replayed_events: Counter::default(),
            resyncs: Family::default(),
            slow_consumer_evictions: Counter::default(),
            unresolved_events: Counter::default(),
            // 50 µs .. ~13 s
            publish_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            delivery_lag: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("streams_open", "Streams open on this node", m.streams_open.clone());
        r.register("streams_max", "Most streams this node accepts (limits.streams_per_node, fitted to the open files limit)", m.streams_max.clone());
        r.register("connections_open", "Client connections open, streams or not", m.connections_open.clone());
        r.register("request_timeouts", "Requests cut off by a time bound, by phase (head, body, response)", m.request_timeouts.clone());
        r.register("engine_ready", "1 while the engine answers, 0 while it does not", m.engine_ready.clone());
        r.register("history_accounts", "Accounts held by the node's history window (memory and durable engines), as of the last upkeep", m.history_accounts.clone());
        r.register("history_retained_events", "Events retained in the node's history window (memory and durable engines), as of the last upkeep", m.history_retained_events.clone());
        r.register("history_retained_bytes", "Encoded bytes of the events retained in the node's history window (memory and durable engines), as of the last upkeep", m.history_retained_bytes.clone());
        r.register("redis_feed_entries", "Redis engine: feed entries this node read, by shard when sharded (every event of every account of the shard, claims, fences)", m.redis_feed_entries.clone());
        r.register("redis_feed_bytes", "Redis engine: bytes of the feed entries this node read, by shard when sharded (ids and fields)", m.redis_feed_bytes.clone());
        r.register("redis_shard_ready", "Redis engine: 1 while this node is connected to the shard and follows its feed, 0 while not", m.redis_shard_ready.clone());
        r.register("streams_opened", "Streams opened", m.streams_opened.clone());
        r.register("stream_closes", "Streams ended, by reason", m.stream_closes.clone());
        r.register("stream_refusals", "Stream requests refused before the stream started", m.stream_refusals.clone());
        r.register("events_published", "Activities accepted by publish", m.events_published.clone());
        r.register("publish_duplicates", "Publish items not stored again because their idempotency key was already accepted", m.publish_duplicates.clone());
        r.register("events_delivered", "Activity frames queued to streams", m.events_delivered.clone());
        r.register("publish_rejections", "Publish requests refused, by error code", m.publish_rejections.clone());
        r.register("replays", "Streams resumed with an exact replay", m.replays.clone());
        r.register("replayed_events", "Activities sent in replays", m.replayed_events.clone());
        r.register("resyncs", "Resync frames sent, by reason", m.resyncs.clone());
        r.register("slow_consumer_evictions", "Streams closed because the client did not keep up", m.slow_consumer_evictions.clone());
        r.register("unresolved_events", "Activities no resolver tier mapped to a key", m.unresolved_events.clone());
        r.register("publish_latency_seconds", "Publish request to acknowledgement", m.publish_latency.clone());
        r.register("delivery_lag_seconds", "Event queued to handed to the connection (one write in 16 sampled)", m.delivery_lag.clone());
        Self { registry, ..m }
    }

    /// Records the lag of a write, one write in [`DELIVERY_LAG_SAMPLE`] per thread.
    pub fn observe_delivery_lag(&self, queued_at: std::time::Instant) {
        thread_local!(static WRITES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let n = WRITES.with(|w| {
            let n = w.get().wrapping_add(1);
            w.set(n);
            n
        });
        if n % DELIVERY_LAG_SAMPLE == 0 {
            self.delivery_lag.observe(queued_at.elapsed().as_secs_f64());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }

    /// Counts a request cut off by a time bound in `phase`.
    pub fn timed_out(&self, phase: &'static str) {
        self.request_timeouts.get_or_create(&PhaseLabel { phase }).inc();
    }

    pub fn close(&self, reason: &'static str) {
        self.stream_closes.get_or_create(&ReasonLabel { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_series_carry_the_shard_only_when_the_engine_is_sharded() {
        let one = Metrics::new();
        one.redis_feed_bytes.start(1, false)[0].inc_by(7);
        assert!(one.render().lines().any(|l| l == "tidings_redis_feed_bytes_total 7"), "as before shards existed:\n{}", one.render());
        let two = Metrics::new();
        let shards = two.redis_feed_bytes.start(2, true);
        shards[1].inc_by(5);
        let text = two.render();
        assert!(text.lines().any(|l| l == "tidings_redis_feed_bytes_total{shard=\"0\"} 0"), "{text}");
        assert!(text.lines().any(|l| l == "tidings_redis_feed_bytes_total{shard=\"1\"} 5"), "{text}");
    }
}
