//! The open-loop timeline: when each request is meant to start.
//!
//! Request `i` is due at `i / rate` seconds after the start of the timeline,
//! whatever happened to the requests before it. The warm-up requests come
//! first on the same timeline and are not recorded.

use std::time::Duration;

/// Upper bound on the number of requests one timeline may hold.
pub const MAX_PLANNED: u64 = 50_000_000;

/// A constant-rate timeline: `warmup` unrecorded requests, then `measured` ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// Requests sent before measuring starts.
    pub warmup: u64,
    /// Requests measured.
    pub measured: u64,
}

impl Schedule {
    /// The timeline for `warmup_secs` then `duration_secs` at `rate` requests per second.
    pub fn new(rate: f64, warmup_secs: f64, duration_secs: f64) -> Self {
        Schedule {
            rate,
            warmup: planned_count(rate, warmup_secs),
            measured: planned_count(rate, duration_secs),
        }
    }

    /// Every request of the timeline, warm-up included.
    pub fn total(&self) -> u64 {
        self.warmup.saturating_add(self.measured)
    }

    /// When request `index` is due, from the start of the timeline.
    pub fn offset(&self, index: u64) -> Duration {
        intended_offset(index, self.rate)
    }

    /// Whether request `index` is recorded (it comes after the warm-up).
    pub fn is_measured(&self, index: u64) -> bool {
        index >= self.warmup
    }

    /// When the first measured request is due, from the start of the timeline.
    pub fn measure_start(&self) -> Duration {
        self.offset(self.warmup)
    }
}

/// Requests in `seconds` at `rate` per second, rounded down; 0 for a
/// non-positive or non-finite input, at most [`MAX_PLANNED`].
pub fn planned_count(rate: f64, seconds: f64) -> u64 {
    if !(rate.is_finite() && seconds.is_finite()) || rate <= 0.0 || seconds <= 0.0 {
        return 0;
    }
    let count = (rate * seconds).floor();
    if count >= MAX_PLANNED as f64 {
        MAX_PLANNED
    } else {
        count as u64
    }
}

/// When request `index` is due at `rate` per second. Computed from the index
/// rather than by adding intervals, so rounding errors never accumulate.
pub fn intended_offset(index: u64, rate: f64) -> Duration {
    if !(rate.is_finite() && rate > 0.0) {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(index as f64 / rate).unwrap_or(Duration::MAX)
}

/// `count` events over `elapsed`, per second (0 for an empty interval).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_down_and_reject_nonsense() {
        assert_eq!(planned_count(500.0, 10.0), 5000);
        assert_eq!(planned_count(3.0, 0.5), 1);
        assert_eq!(planned_count(0.5, 1.0), 0);
        assert_eq!(planned_count(-1.0, 10.0), 0);
        assert_eq!(planned_count(10.0, 0.0), 0);
        assert_eq!(planned_count(f64::NAN, 10.0), 0);
        assert_eq!(planned_count(f64::INFINITY, 10.0), 0);
        assert_eq!(planned_count(1e12, 1e12), MAX_PLANNED);
    }

    #[test]
    fn offsets_are_evenly_spaced_without_drift() {
        assert_eq!(intended_offset(0, 500.0), Duration::ZERO);
        assert_eq!(intended_offset(1, 500.0), Duration::from_millis(2));
        assert_eq!(intended_offset(5000, 500.0), Duration::from_secs(10));
        // 1/3 s is not exact in binary; the millionth request is still on time.
        let late = intended_offset(3_000_000, 3.0);
        assert!(late.abs_diff(Duration::from_secs(1_000_000)) < Duration::from_micros(1));
        assert_eq!(intended_offset(7, 0.0), Duration::ZERO);
    }

    #[test]
    fn warmup_comes_first_on_the_same_timeline() {
        let s = Schedule::new(500.0, 2.0, 10.0);
        assert_eq!((s.warmup, s.measured, s.total()), (1000, 5000, 6000));
        assert!(!s.is_measured(999));
        assert!(s.is_measured(1000));
        assert_eq!(s.measure_start(), Duration::from_secs(2));
        assert_eq!(s.offset(5999), Duration::from_millis(11_998));

        let none = Schedule::new(100.0, 0.0, 1.0);
        assert_eq!(none.warmup, 0);
        assert!(none.is_measured(0));
        assert_eq!(none.measure_start(), Duration::ZERO);
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(500, Duration::from_secs(2)), 250.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
