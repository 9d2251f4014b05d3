//! Reconnect delays: capped exponential backoff with full jitter, as a pure function.
//!
//! The caller supplies the random draw, so every delay is reproducible in tests. Nothing here
//! sleeps or reads a clock.

use std::time::Duration;

/// Default base delay when the server sent no `retry:`.
pub const BASE_DEFAULT: Duration = Duration::from_secs(1);

/// Default ceiling of any computed delay (docs/protocol.md C3: capped at 30 s).
pub const CAP_DEFAULT: Duration = Duration::from_secs(30);

/// Largest server-imposed minimum honoured (`Retry-After`, `retry_ms`). A misconfigured
/// server must not park a client for hours; ten minutes still respects any sane drain.
pub const FLOOR_MAX: Duration = Duration::from_secs(600);

/// How reconnect delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay ceiling of the first retry; doubled on every further attempt. A `retry:` from
    /// the server replaces it when larger.
    pub base: Duration,
    /// No ceiling grows past this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: BASE_DEFAULT, cap: CAP_DEFAULT }
    }
}

/// What the server asked for, if anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// The stream's last `retry:` value: the base of the exponential.
    pub retry: Option<Duration>,
    /// A minimum delay for this attempt: `Retry-After` of a 429/503, or `retry_ms` of a
    /// `closed` frame (already jittered by the hub).
    pub floor: Option<Duration>,
}

impl Backoff {
    /// The ceiling for `attempt` (0 = first retry): `base * 2^attempt`, capped.
    pub fn ceiling(&self, attempt: u32, retry: Option<Duration>) -> Duration {
        let base = retry.map_or(self.base, |r| r.max(self.base)).min(self.cap);
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }

    /// The delay before reconnect `attempt`, given `unit`, a uniform random draw in [0, 1).
    ///
    /// Full jitter: uniform in [0, ceiling]. With a floor, uniform in [floor, ceiling] — or
    /// exactly the floor when it is above the ceiling, so a server that asks for a long pause
    /// gets it (up to [`FLOOR_MAX`]) while clients still spread over the rest of the window.
    pub fn delay(&self, attempt: u32, hints: Hints, unit: f64) -> Duration {
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        let ceiling = self.ceiling(attempt, hints.retry);
        let floor = hints.floor.unwrap_or(Duration::ZERO).min(FLOOR_MAX);
        if floor >= ceiling {
            return floor;
        }
        floor + (ceiling - floor).mul_f64(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff { base: MS(500), cap: MS(4_000) };
        let ceilings: Vec<_> = (0..6).map(|a| b.ceiling(a, None)).collect();
        assert_eq!(ceilings, [MS(500), MS(1_000), MS(2_000), MS(4_000), MS(4_000), MS(4_000)]);
        assert_eq!(b.ceiling(u32::MAX, None), MS(4_000));
    }

    #[test]
    fn retry_field_raises_the_base_only() {
        let b = Backoff { base: MS(500), cap: MS(30_000) };
        assert_eq!(b.ceiling(0, Some(MS(2_000))), MS(2_000));
        assert_eq!(b.ceiling(2, Some(MS(2_000))), MS(8_000));
        assert_eq!(b.ceiling(0, Some(MS(10))), MS(500), "a tiny retry: cannot make clients hammer");
        assert_eq!(b.ceiling(0, Some(MS(60_000))), MS(30_000), "still capped");
    }

    #[test]
    fn floor_is_honoured() {
        let b = Backoff { base: MS(1_000), cap: MS(30_000) };
        let h = Hints { retry: Some(MS(2_000)), floor: Some(MS(1_500)) };
        assert_eq!(b.delay(0, h, 0.0), MS(1_500));
        assert_eq!(b.delay(0, h, 0.5), MS(1_750));
        let long = Hints { retry: None, floor: Some(MS(120_000)) };
        assert_eq!(b.delay(0, long, 0.3), MS(120_000), "Retry-After above the cap is obeyed");
        let absurd = Hints { retry: None, floor: Some(Duration::from_secs(86_400)) };
        assert_eq!(b.delay(0, absurd, 0.3), FLOOR_MAX);
    }

    #[test]
    fn bad_draws_are_tamed() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, Hints::default(), f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(3, Hints::default(), 7.0), b.ceiling(3, None));
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_zero_and_cap(
            base_ms in 1u64..10_000, cap_ms in 1u64..120_000, attempt in 0u32..200,
            retry_ms in proptest::option::of(0u64..100_000), unit in 0.0f64..1.0,
        ) {
            let b = Backoff { base: MS(base_ms), cap: MS(cap_ms) };
            let d = b.delay(attempt, Hints { retry: retry_ms.map(MS), floor: None }, unit);
            prop_assert!(d <= b.cap);
        }

        #[test]
        fn ceiling_grows_monotonically_to_the_cap(
            base_ms in 1u64..10_000, cap_ms in 1u64..120_000, retry_ms in proptest::option::of(0u64..100_000),
        ) {
            let b = Backoff { base: MS(base_ms), cap: MS(cap_ms) };
            let retry = retry_ms.map(MS);
            let mut last = Duration::ZERO;
            for attempt in 0..64 {
                let c = b.ceiling(attempt, retry);
                prop_assert!(c >= last && c <= b.cap);
                last = c;
            }
            prop_assert_eq!(last, b.cap, "the ceiling reaches the configured maximum");
        }

        #[test]
        fn floor_bounds_the_delay(
            attempt in 0u32..40, floor_ms in 0u64..1_000_000, unit in 0.0f64..1.0,
        ) {
            let b = Backoff::default();
            let floor = MS(floor_ms);
            let d = b.delay(attempt, Hints { retry: None, floor: Some(floor) }, unit);
            prop_assert!(d >= floor.min(FLOOR_MAX));
            prop_assert!(d <= b.cap.max(floor.min(FLOOR_MAX)));
        }
    }
}
