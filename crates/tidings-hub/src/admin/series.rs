//! The admin page's time charts: one sample of the node's counters per [`SAMPLE_INTERVAL`], in
//! a ring of [`SAMPLES_MAX`]. Counters are read from [`Metrics`] (the same numbers `/metrics`
//! shows) and stored as differences, so a chart is a rate without any arithmetic in the page.
//! The hub's ticker takes the samples while the admin page is on.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tidings_protocol::{CloseReason, ResyncReason};

use crate::metrics::{Metrics, ReasonLabel};

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes at one a second (about 100 bytes each).
pub const SAMPLES_MAX: usize = 600;

/// Reasons a stream ends with, as counted in `tidings_stream_closes_total`.
pub const CLOSE_REASONS: [&str; 7] = [
    CloseReason::Shutdown.as_str(),
    CloseReason::Superseded.as_str(),
    CloseReason::TokenExpired.as_str(),
    CloseReason::SlowConsumer.as_str(),
    CloseReason::Lifetime.as_str(),
    CloseReason::Revoked.as_str(),
    "client_gone",
];

/// Reasons of `resync` frames, as counted in `tidings_resyncs_total`.
pub const RESYNC_REASONS: [&str; 6] = [
    ResyncReason::ALL[0].as_str(),
    ResyncReason::ALL[1].as_str(),
    ResyncReason::ALL[2].as_str(),
    ResyncReason::ALL[3].as_str(),
    ResyncReason::ALL[4].as_str(),
    ResyncReason::ALL[5].as_str(),
];

/// What the node holds now: gauges, read by the caller from the fan-out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub streams: usize,
    pub accounts: usize,
    pub sessions: usize,
}

/// One sample: gauges as they were, counters as differences since the previous sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at: u64,
    pub streams: usize,
    pub accounts: usize,
    pub sessions: usize,
    pub published: u64,
    pub delivered: u64,
    pub evictions: u64,
    pub unresolved: u64,
    /// By [`RESYNC_REASONS`], in that order.
    pub resyncs: [u64; RESYNC_REASONS.len()],
    /// By [`CLOSE_REASONS`], in that order.
    pub closes: [u64; CLOSE_REASONS.len()],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Totals {
    published: u64,
    delivered: u64,
    evictions: u64,
    unresolved: u64,
    resyncs: [u64; RESYNC_REASONS.len()],
    closes: [u64; CLOSE_REASONS.len()],
}

impl Totals {
    fn read(m: &Metrics) -> Self {
        let reason = |family: &prometheus_client::metrics::family::Family<ReasonLabel, prometheus_client::metrics::counter::Counter>, r: &'static str| {
            family.get_or_create(&ReasonLabel { reason: r }).get()
        };
        Self {
            published: m.events_published.get(),
            delivered: m.events_delivered.get(),
            evictions: m.slow_consumer_evictions.get(),
            unresolved: m.unresolved_events.get(),
            resyncs: RESYNC_REASONS.map(|r| reason(&m.resyncs, r)),
            closes: CLOSE_REASONS.map(|r| reason(&m.stream_closes, r)),
        }
    }
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct Series {
    samples: VecDeque<Sample>,
    /// Counter totals at the previous sample; the first sample only records them.
    last: Option<Totals>,
}

impl Series {
    /// Takes a sample at `now`.
    pub fn sample(&mut self, now: SystemTime, gauges: Gauges, metrics: &Metrics) {
        let totals = Totals::read(metrics);
        let Some(last) = self.last.replace(totals) else { return };
        let diff = |a: u64, b: u64| a.saturating_sub(b);
        let sample = Sample {
            at: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            streams: gauges.streams,
            accounts: gauges.accounts,
            sessions: gauges.sessions,
            published: diff(totals.published, last.published),
            delivered: diff(totals.delivered, last.delivered),
            evictions: diff(totals.evictions, last.evictions),
            unresolved: diff(totals.unresolved, last.unresolved),
            resyncs: std::array::from_fn(|i| diff(totals.resyncs[i], last.resyncs[i])),
            closes: std::array::from_fn(|i| diff(totals.closes[i], last.closes[i])),
        };
        if self.samples.len() >= SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Samples taken after `since` (Unix milliseconds), oldest first.
    pub fn since(&self, since: u64) -> Vec<Sample> {
        let start = self.samples.partition_point(|s| s.at <= since);
        self.samples.range(start..).cloned().collect()
    }

    /// Forgets the previous totals (the page was off for a while: the next sample must not
    /// count everything since as one interval).
    pub fn pause(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_differences_in_a_bounded_ring() {
        let m = Metrics::new();
        let mut s = Series::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        s.sample(t0, Gauges::default(), &m);
        assert!(s.since(0).is_empty(), "the first sample only records the totals");
        m.events_published.inc_by(5);
        m.close("revoked");
        m.resyncs.get_or_create(&ReasonLabel { reason: "epoch_changed" }).inc();
        s.sample(t0 + SAMPLE_INTERVAL, Gauges { streams: 3, accounts: 2, sessions: 3 }, &m);
        let got = s.since(0);
        assert_eq!((got.len(), got[0].published, got[0].streams), (1, 5, 3));
        assert_eq!(got[0].closes[CLOSE_REASONS.iter().position(|r| *r == "revoked").unwrap()], 1);
        assert_eq!(got[0].resyncs[RESYNC_REASONS.iter().position(|r| *r == "epoch_changed").unwrap()], 1);
        for n in 2..(SAMPLES_MAX as u64 + 10) {
            s.sample(t0 + SAMPLE_INTERVAL * n as u32, Gauges::default(), &m);
        }
        assert_eq!(s.since(0).len(), SAMPLES_MAX);
        let last = s.since(0).last().unwrap().at;
        assert_eq!(s.since(last - 1000).len(), 1, "only what is newer than `since`");
        assert_eq!(s.since(0).last().unwrap().published, 0);
    }
}
