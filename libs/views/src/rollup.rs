//! Rollups, without I/O: a batch of requests aggregated in memory into the rows the
//! views keep (hourly usage with a latency histogram, per-minute rates, spend per budget
//! window, last use of each key), and the latency histogram's storage form.
//!
//! The histogram is an HdrHistogram of latencies in microseconds, with fixed bounds
//! (1 µs to one day; longer latencies count as one day) and two significant digits: any
//! percentile read from it is at most 1/128 (0.8 %) above the true one. Its storage form
//! is the V2 serialization (uncompressed), base64-encoded. With fixed bounds the stored
//! text depends only on the counts, so merging the same requests in any grouping gives
//! the same text (a rebuild of the views equals the live ones).

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use sg_spend::{Counter, Period, Window};

use crate::ViewError;
use crate::budget::Scope;

/// Highest latency the histograms tell apart: one day, in microseconds.
pub const LATENCY_MAX_US: u64 = 86_400_000_000;
/// Significant decimal digits of the latency histograms.
pub const LATENCY_DIGITS: u8 = 2;

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// An empty latency histogram.
pub fn new_histogram() -> Result<Histogram<u64>, ViewError> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_DIGITS)
        .map_err(|e| ViewError::Other(format!("latency histogram: {e:?}")))
}

/// The storage form of a histogram: base64 of its V2 serialization.
pub fn encode_histogram(histogram: &Histogram<u64>) -> Result<String, ViewError> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| ViewError::Other(format!("serializing a latency histogram: {e:?}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A histogram from its storage form (with the bounds it was stored with: merge it into
/// a [`new_histogram`] before storing the sum).
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, ViewError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ViewError::Other("malformed latency histogram in the views".to_owned()))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|_| ViewError::Other("malformed latency histogram in the views".to_owned()))
}

/// Adds `other`'s counts to `into`.
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<(), ViewError> {
    into.add(other)
        .map_err(|e| ViewError::Other(format!("merging latency histograms: {e:?}")))
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The 50th, 95th and 99th percentiles of a histogram; `None` if it is empty.
pub fn percentiles(histogram: &Histogram<u64>) -> Option<Percentiles> {
    if histogram.is_empty() {
        return None;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Some(Percentiles {
        p50: ms(0.50),
        p95: ms(0.95),
        p99: ms(0.99),
    })
}

/// One request's numbers, checked to fit SQL `BIGINT`s.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub key_id: &'a str,
    /// `""` when the request named no model.
    pub model: &'a str,
    /// Unix milliseconds.
    pub started_at: i64,
    pub error: bool,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
    pub priced: bool,
    pub latency_us: u64,
}

/// Primary key of an hourly row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HourKey {
    pub project_id: String,
    /// Unix milliseconds of the UTC hour's start.
    pub hour: i64,
    pub key_id: String,
    pub model: String,
}

/// Counters of an hourly row.
#[derive(Debug, Clone)]
pub struct HourTotals {
    pub tenant_id: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
    pub unpriced_requests: i64,
    pub latency: Histogram<u64>,
}

/// Primary key of a per-minute row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinuteKey {
    pub project_id: String,
    /// Unix milliseconds of the UTC minute's start.
    pub minute: i64,
    pub key_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteTotals {
    pub tenant_id: String,
    pub requests: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
}

/// Primary key of a spend row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpendKey {
    pub scope: Scope,
    pub id: String,
    pub period: &'static str,
    pub window: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendTotals {
    pub tenant_id: String,
    pub project_id: String,
    pub cost_micros: i64,
    pub requests: i64,
}

/// A batch of requests, aggregated: one entry per row the batch touches.
#[derive(Debug, Default)]
pub struct Rollup {
    pub hourly: BTreeMap<HourKey, HourTotals>,
    pub minutes: BTreeMap<MinuteKey, MinuteTotals>,
    pub spend: BTreeMap<SpendKey, SpendTotals>,
    /// Latest start per key.
    pub last_used: BTreeMap<String, i64>,
}

/// The budget periods every project and key is accounted in.
pub const PERIODS: [Period; 3] = [Period::Day, Period::Month, Period::Total];

impl Rollup {
    /// Counts one request.
    pub fn add(&mut self, r: &RequestFacts<'_>) -> Result<(), ViewError> {
        let hour = HourKey {
            project_id: r.project_id.to_owned(),
            hour: r.started_at.div_euclid(HOUR_MS) * HOUR_MS,
            key_id: r.key_id.to_owned(),
            model: r.model.to_owned(),
        };
        let row = match self.hourly.entry(hour) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(HourTotals {
                tenant_id: r.tenant_id.to_owned(),
                requests: 0,
                errors: 0,
                prompt_tokens: 0,
                cached_prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: 0,
                cost_micros: 0,
                unpriced_requests: 0,
                latency: new_histogram()?,
            }),
        };
        row.requests += 1;
        row.errors += i64::from(r.error);
        row.prompt_tokens = row.prompt_tokens.saturating_add(r.prompt_tokens);
        row.cached_prompt_tokens = row
            .cached_prompt_tokens
            .saturating_add(r.cached_prompt_tokens);
        row.completion_tokens = row.completion_tokens.saturating_add(r.completion_tokens);
        row.total_tokens = row.total_tokens.saturating_add(r.total_tokens);
        row.cost_micros = row.cost_micros.saturating_add(r.cost_micros);
        row.unpriced_requests += i64::from(!r.priced);
        row.latency.saturating_record(r.latency_us);

        let minute = self
            .minutes
            .entry(MinuteKey {
                project_id: r.project_id.to_owned(),
                minute: r.started_at.div_euclid(MINUTE_MS) * MINUTE_MS,
                key_id: r.key_id.to_owned(),
            })
            .or_insert_with(|| MinuteTotals {
                tenant_id: r.tenant_id.to_owned(),
                ..MinuteTotals::default()
            });
        minute.requests += 1;
        minute.total_tokens = minute.total_tokens.saturating_add(r.total_tokens);
        minute.cost_micros = minute.cost_micros.saturating_add(r.cost_micros);

        // Requests before 1970 do not exist; such a time counts in the first windows.
        let at_ms = u64::try_from(r.started_at).unwrap_or(0);
        for period in PERIODS {
            let window = Window::of(Counter::Budget(period), at_ms).id;
            for (scope, id) in [(Scope::Project, r.project_id), (Scope::Key, r.key_id)] {
                let spend = self
                    .spend
                    .entry(SpendKey {
                        scope,
                        id: id.to_owned(),
                        period: period.as_str(),
                        window: window.clone(),
                    })
                    .or_insert_with(|| SpendTotals {
                        tenant_id: r.tenant_id.to_owned(),
                        project_id: r.project_id.to_owned(),
                        ..SpendTotals::default()
                    });
                spend.cost_micros = spend.cost_micros.saturating_add(r.cost_micros);
                spend.requests += 1;
            }
        }

        let last = self
            .last_used
            .entry(r.key_id.to_owned())
            .or_insert(i64::MIN);
        *last = (*last).max(r.started_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(key: &str, model: &str, started_at: i64, latency_us: u64) -> RequestFacts<'static> {
        RequestFacts {
            tenant_id: "ten_a",
            project_id: "prj_a",
            key_id: if key == "k1" { "key_1" } else { "key_2" },
            model: if model.is_empty() { "" } else { "gpt" },
            started_at,
            error: latency_us % 2 == 1,
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            completion_tokens: 5,
            total_tokens: 15,
            cost_micros: 7,
            priced: !model.is_empty(),
            latency_us,
        }
    }

    /// Nearest-rank percentile of raw samples.
    fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn a_batch_touches_each_row_once() {
        let mut rollup = Rollup::default();
        // 2026-01-01T00:00:00Z plus a few minutes and an hour.
        let t0 = 1_767_225_600_000;
        for f in [
            facts("k1", "gpt", t0 + 1_000, 1_000),
            facts("k1", "gpt", t0 + 61_000, 3_001),
            facts("k1", "", t0 + 2_000, 2_000),
            facts("k2", "gpt", t0 + HOUR_MS, 5_000),
        ] {
            rollup.add(&f).unwrap();
        }
        assert_eq!(rollup.hourly.len(), 3);
        let first = &rollup.hourly[&HourKey {
            project_id: "prj_a".into(),
            hour: t0,
            key_id: "key_1".into(),
            model: "gpt".into(),
        }];
        assert_eq!((first.requests, first.errors), (2, 1));
        assert_eq!(
            (
                first.prompt_tokens,
                first.cached_prompt_tokens,
                first.total_tokens
            ),
            (20, 8, 30)
        );
        assert_eq!((first.cost_micros, first.unpriced_requests), (14, 0));
        assert_eq!(first.latency.len(), 2);
        let unnamed = rollup
            .hourly
            .iter()
            .find(|(k, _)| k.model.is_empty())
            .unwrap()
            .1;
        assert_eq!(unnamed.unpriced_requests, 1);
        // Minutes: key_1 at t0 (two requests), key_1 at t0+1m, key_2 an hour later.
        assert_eq!(rollup.minutes.len(), 3);
        // Spend: three periods for the project and each key.
        assert_eq!(rollup.spend.len(), 9);
        let total = &rollup.spend[&SpendKey {
            scope: Scope::Project,
            id: "prj_a".into(),
            period: "total",
            window: "total".into(),
        }];
        assert_eq!((total.cost_micros, total.requests), (28, 4));
        let month = &rollup.spend[&SpendKey {
            scope: Scope::Key,
            id: "key_1".into(),
            period: "month",
            window: "M2026-01".into(),
        }];
        assert_eq!((month.cost_micros, month.requests), (21, 3));
        assert_eq!(rollup.last_used["key_1"], t0 + 61_000);
    }

    #[test]
    fn merged_histograms_give_true_percentiles() {
        // Latencies spread over four orders of magnitude, recorded in uneven groups.
        let mut samples: Vec<u64> = (0..5_000u64)
            .map(|i| 200 + (i * i * 7919) % 3_000_000)
            .collect();
        let mut parts = Vec::new();
        for chunk in samples.chunks(777) {
            let mut h = new_histogram().unwrap();
            for s in chunk {
                h.saturating_record(*s);
            }
            parts.push(encode_histogram(&h).unwrap());
        }
        let mut merged = new_histogram().unwrap();
        for text in &parts {
            merge(&mut merged, &decode_histogram(text).unwrap()).unwrap();
        }
        samples.sort_unstable();
        let p = percentiles(&merged).unwrap();
        for (q, got) in [(0.50, p.p50), (0.95, p.p95), (0.99, p.p99)] {
            let truth = nearest_rank(&samples, q) as f64 / 1000.0;
            assert!(
                got >= truth && got <= truth * (1.0 + 1.0 / 128.0) + 0.001,
                "p{q}: {got} ms from the histogram, {truth} ms from the samples"
            );
        }
        // Not an average: one slow request moves p99, not p50.
        let mut skewed = new_histogram().unwrap();
        for _ in 0..99 {
            skewed.saturating_record(1_000);
        }
        skewed.saturating_record(60_000_000);
        let p = percentiles(&skewed).unwrap();
        assert!((p.p50 - 1.0).abs() < 0.01 && (p.p99 - 1.0).abs() < 0.01);
        assert!(percentiles(&new_histogram().unwrap()).is_none());
    }

    #[test]
    fn storage_form_depends_only_on_the_counts() {
        let values = [
            5u64,
            70,
            900,
            12_000,
            450_000,
            9_000_000,
            LATENCY_MAX_US * 3,
        ];
        let mut all = new_histogram().unwrap();
        for v in values {
            all.saturating_record(v);
        }
        // The same values merged in another grouping, through the storage form.
        let mut a = new_histogram().unwrap();
        let mut b = new_histogram().unwrap();
        for (i, v) in values.iter().rev().enumerate() {
            if i % 2 == 0 {
                a.saturating_record(*v);
            } else {
                b.saturating_record(*v);
            }
        }
        let mut merged = decode_histogram(&encode_histogram(&a).unwrap()).unwrap();
        merge(
            &mut merged,
            &decode_histogram(&encode_histogram(&b).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            encode_histogram(&merged).unwrap(),
            encode_histogram(&all).unwrap()
        );
        assert_eq!(merged.len(), values.len() as u64);
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("AAAA").is_err());
    }
}
