//! The windows limits count in: fixed UTC minutes and days, UTC calendar months, or none.
//!
//! Fixed windows are exact across nodes (every node agrees which window a moment belongs
//! to) at the price of bursts at a boundary: a client may use a whole minute's allowance
//! at 10:00:59 and the next one at 10:01:00, so any 60 s span sees at most twice the
//! per-minute limit.

use crate::limits::Period;

/// What a ledger counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Rpm,
    Rpd,
    Tpm,
    Concurrent,
    Budget(Period),
}

impl Counter {
    /// Its name in subjects and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Rpm => "rpm",
            Counter::Rpd => "rpd",
            Counter::Tpm => "tpm",
            Counter::Concurrent => "concurrent",
            Counter::Budget(_) => "budget",
        }
    }

    /// Whether units come back when a request ends (slots), rather than being spent.
    pub fn returns_on_completion(self) -> bool {
        matches!(self, Counter::Concurrent)
    }
}

/// One window of a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Stable name: `m<minute>`, `d<day>`, `M<yyyy-mm>`, `total`, `live`.
    pub id: String,
    /// Unix milliseconds; `None` for windows without bounds.
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
}

const MINUTE: u64 = 60_000;
const DAY: u64 = 86_400_000;

impl Window {
    /// The window `counter` counts in at `now_ms` (unix milliseconds).
    pub fn of(counter: Counter, now_ms: u64) -> Window {
        match counter {
            Counter::Rpm | Counter::Tpm => {
                let m = now_ms / MINUTE;
                Window {
                    id: format!("m{m}"),
                    start_ms: Some(m * MINUTE),
                    end_ms: Some((m + 1) * MINUTE),
                }
            }
            Counter::Rpd | Counter::Budget(Period::Day) => {
                let d = now_ms / DAY;
                Window {
                    id: format!("d{d}"),
                    start_ms: Some(d * DAY),
                    end_ms: Some((d + 1) * DAY),
                }
            }
            Counter::Budget(Period::Month) => {
                let (y, m, _) = civil_from_days((now_ms / DAY) as i64);
                let start = days_from_civil(y, m, 1) as u64 * DAY;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1) as u64 * DAY;
                Window {
                    id: format!("M{y:04}-{m:02}"),
                    start_ms: Some(start),
                    end_ms: Some(end),
                }
            }
            Counter::Budget(Period::Total) => Window {
                id: "total".into(),
                start_ms: None,
                end_ms: None,
            },
            Counter::Concurrent => Window {
                id: "live".into(),
                start_ms: None,
                end_ms: None,
            },
        }
    }

    /// Whole seconds until the window ends (at least 1), if it ends.
    pub fn seconds_left(&self, now_ms: u64) -> Option<u64> {
        self.end_ms
            .map(|end| end.saturating_sub(now_ms).div_ceil(1000).max(1))
    }
}

/// Whether window `a` comes after window `b` of the same counter (ids of one counter have
/// one shape: `m<n>`, `d<n>` or `M<yyyy-mm>`).
pub fn is_later(a: &str, b: &str) -> bool {
    (a.len(), a) > (b.len(), b)
}

/// (year, month 1–12, day 1–31) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The day number since 1970-01-01 of a date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 2026-11-29T10:22:33.500Z
    const NOW: u64 = 1_795_947_753_500;

    #[test]
    fn windows_at_a_known_moment() {
        assert_eq!(civil_from_days((NOW / DAY) as i64), (2026, 11, 29));
        let m = Window::of(Counter::Rpm, NOW);
        assert_eq!(m.start_ms, Some(NOW - 33_500));
        assert_eq!(m.seconds_left(NOW), Some(27));
        let month = Window::of(Counter::Budget(Period::Month), NOW);
        assert_eq!(month.id, "M2026-11");
        assert_eq!(
            month.start_ms,
            Some(days_from_civil(2026, 11, 1) as u64 * DAY)
        );
        assert_eq!(
            month.end_ms,
            Some(days_from_civil(2026, 12, 1) as u64 * DAY)
        );
        let dec = Window::of(
            Counter::Budget(Period::Month),
            days_from_civil(2026, 12, 31) as u64 * DAY,
        );
        assert_eq!(dec.id, "M2026-12");
        assert_eq!(dec.end_ms, Some(days_from_civil(2027, 1, 1) as u64 * DAY));
        assert_eq!(Window::of(Counter::Budget(Period::Total), NOW).end_ms, None);
    }

    #[test]
    fn a_budget_resets_at_the_period_boundary() {
        // The last millisecond of a month and the first of the next are different windows.
        let first = days_from_civil(2027, 3, 1) as u64 * DAY;
        let before = Window::of(Counter::Budget(Period::Month), first - 1);
        let after = Window::of(Counter::Budget(Period::Month), first);
        assert_eq!(before.id, "M2027-02");
        assert_eq!(after.id, "M2027-03");
        assert_eq!(before.end_ms, after.start_ms);
        let day = Window::of(Counter::Budget(Period::Day), first - 1);
        assert_eq!(day.end_ms, Some(first));
    }

    proptest! {
        #[test]
        fn civil_dates_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn every_moment_is_inside_its_window(now in 0u64..4_102_444_800_000) {
            for c in [Counter::Rpm, Counter::Rpd, Counter::Budget(Period::Month)] {
                let w = Window::of(c, now);
                prop_assert!(w.start_ms.unwrap() <= now && now < w.end_ms.unwrap());
            }
        }
    }
}
