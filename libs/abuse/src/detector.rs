//! The per-key state and the rules.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::{AbuseSettings, KeyStats, MAX_DISTINCT, MODEL_NOT_ALLOWED, Observation, Rule, Verdict};

/// The EWMA weight of the latest completed window in the spike baseline.
const ALPHA: f64 = 0.3;
/// How many distinct IPs or countries a key keeps when their spread check is off.
const UNTRACKED_CAP: usize = 16;

/// An aligned window: a count in it, and whether its rule has fired there.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: i64,
    /// 0 until the first observation.
    len: i64,
    n: u64,
    fired: bool,
}

impl Window {
    /// Moves to the aligned window holding `at`, true when that restarts the window. An
    /// `at` before the current window is counted in the current window.
    fn enter(&mut self, at: i64, seconds: u64) -> bool {
        let len = i64::try_from(seconds).unwrap_or(i64::MAX).max(1);
        let start = at.saturating_sub(at.rem_euclid(len));
        let new = self.len == 0 || start > self.start;
        if new {
            *self = Window {
                start,
                len,
                ..Window::default()
            };
        }
        new
    }

    /// Whether the window has started and not yet ended at `now`.
    fn live(&self, now: i64) -> bool {
        self.len != 0 && now < self.start.saturating_add(self.len)
    }
}

#[derive(Debug, Default)]
struct KeyState {
    last_at: Option<i64>,
    horizon: i64,
    suspended_until: Option<i64>,
    /// Counts requests.
    velocity: Window,
    tokens: u64,
    cost_micros: u64,
    baseline: Option<f64>,
    /// Aligned with `velocity`; only its `fired` is used.
    spike: Window,
    /// Counts nothing: the sets below are its figures.
    spread: Window,
    ips: HashSet<IpAddr>,
    countries: Vec<Box<str>>,
    violations: Window,
    probes: Window,
}

/// The rule (first in [`Rule`] order) that tripped on an observation.
#[derive(Default)]
struct Hit(Option<(Rule, i64, String)>);

impl Hit {
    /// Spends `w`'s rule for its window and records the hit, unless it already fired.
    fn trip(&mut self, w: &mut Window, rule: Rule, reason: impl FnOnce() -> String) {
        if !w.fired {
            w.fired = true;
            if self.0.as_ref().is_none_or(|h| rule < h.0) {
                self.0 = Some((rule, w.start, reason()));
            }
        }
    }

    /// Counts one more event in `w`, and trips `rule` above `limit`.
    fn count(&mut self, w: &mut Window, at: i64, (limit, secs): (Option<u64>, u64), rule: Rule) {
        w.enter(at, secs);
        w.n = w.n.saturating_add(1);
        if let Some(l) = over(w.n, limit) {
            let what = match rule {
                Rule::ModelProbing => "requests for models outside the allow-list",
                _ => "lock violations",
            };
            let n = w.n;
            self.trip(w, rule, || format!("{n} {what} in {secs} s (limit {l})"));
        }
    }
}

fn over(value: u64, limit: Option<u64>) -> Option<u64> {
    limit.filter(|&l| value > l)
}

fn cap(threshold: Option<u64>) -> usize {
    threshold.map_or(UNTRACKED_CAP, |t| {
        usize::try_from(t.min(MAX_DISTINCT)).unwrap_or(0) + 1
    })
}

fn fold(baseline: Option<f64>, requests: u64) -> Option<f64> {
    let n = requests as f64;
    match baseline {
        _ if requests == 0 => baseline,
        None => Some(n),
        Some(b) => Some(b + ALPHA * (n - b)),
    }
}

/// Per-key statistics over aligned windows, and the rules that turn them into
/// [`Verdict`]s. See the crate documentation.
#[derive(Debug, Default)]
pub struct Detector {
    keys: HashMap<String, KeyState>,
}

impl Detector {
    /// An empty detector.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys the detector holds state for.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the detector holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn entry(&mut self, key: &str) -> Option<&mut KeyState> {
        if !self.keys.contains_key(key) {
            self.keys.insert(key.to_owned(), KeyState::default());
        }
        self.keys.get_mut(key)
    }

    /// Counts `obs` under its project's `settings`. Returns a verdict when a rule fires
    /// for the first time in its window and the key is not suspended; when several fire
    /// at once, it names the first in [`Rule`] order, and all are spent.
    pub fn observe(&mut self, settings: &AbuseSettings, obs: &Observation<'_>) -> Option<Verdict> {
        if !settings.enabled {
            return None;
        }
        let key = obs.key();
        let st = self.entry(key)?;
        let now = st.last_at.map_or(obs.at(), |t| t.max(obs.at()));
        st.last_at = Some(now);
        st.horizon = i64::try_from(settings.horizon_seconds()).unwrap_or(i64::MAX);
        if st.suspended_until.is_some_and(|u| now >= u) {
            st.suspended_until = None;
        }
        let mut hit = Hit::default();
        let (ip, country) = match *obs {
            Observation::Request {
                ip,
                country,
                tokens,
                cost_micros,
                ..
            } => {
                let (v, w) = (&settings.velocity, settings.velocity.window_seconds);
                st.spike.enter(now, w);
                let previous = st.velocity.n;
                if st.velocity.enter(now, w) {
                    st.baseline = fold(st.baseline, previous);
                    (st.tokens, st.cost_micros) = (0, 0);
                }
                st.velocity.n = st.velocity.n.saturating_add(1);
                st.tokens = st.tokens.saturating_add(tokens);
                st.cost_micros = st.cost_micros.saturating_add(cost_micros);
                let (n, t, c) = (st.velocity.n, st.tokens, st.cost_micros);
                let why = over(n, v.requests)
                    .map(|l| (n, "requests", l))
                    .or_else(|| over(t, v.tokens).map(|l| (t, "tokens", l)))
                    .or_else(|| over(c, v.cost_micros).map(|l| (c, "micro-dollars", l)));
                if let Some((x, what, l)) = why {
                    let reason = || format!("{x} {what} in {w} s (limit {l})");
                    hit.trip(&mut st.velocity, Rule::Velocity, reason);
                }
                if let (Some(f), Some(b)) = (v.spike_factor, st.baseline)
                    && n >= v.spike_min_requests
                    && n as f64 > f * b
                {
                    let reason =
                        || format!("{n} requests in {w} s, more than {f} × the usual {b:.1}");
                    hit.trip(&mut st.spike, Rule::Spike, reason);
                }
                (ip, country)
            }
            Observation::Violation {
                ip, country, code, ..
            } => {
                let (v, p) = (&settings.violations, &settings.model_probing);
                hit.count(
                    &mut st.violations,
                    now,
                    (v.count, v.window_seconds),
                    Rule::Violations,
                );
                if code == MODEL_NOT_ALLOWED {
                    let p = (p.count, p.window_seconds);
                    hit.count(&mut st.probes, now, p, Rule::ModelProbing);
                }
                (ip, country)
            }
        };
        let (s, w) = (&settings.spread, settings.spread.window_seconds);
        if st.spread.enter(now, w) {
            st.ips.clear();
            st.countries.clear();
        }
        if st.ips.len() < cap(s.ips) {
            st.ips.insert(ip);
        }
        if let Some(c) = country
            && st.countries.len() < cap(s.countries)
            && !st.countries.iter().any(|k| **k == *c)
        {
            st.countries.push(c.into());
        }
        let (ips, countries) = (st.ips.len() as u64, st.countries.len() as u64);
        let why = over(ips, s.ips)
            .map(|l| (ips, "distinct client IPs", l))
            .or_else(|| over(countries, s.countries).map(|l| (countries, "countries", l)));
        if let Some((x, what, l)) = why {
            let reason = || format!("{x} {what} in {w} s (limit {l})");
            hit.trip(&mut st.spread, Rule::Spread, reason);
        }

        let (rule, window_start, reason) = hit.0.filter(|_| st.suspended_until.is_none())?;
        let until = now.saturating_add(i64::try_from(settings.suspend_seconds).unwrap_or(i64::MAX));
        st.suspended_until = Some(until);
        let (id, key, at) = (
            crate::verdict_id(key, rule, window_start),
            key.to_owned(),
            now,
        );
        Some(Verdict {
            key,
            rule,
            reason,
            window_start,
            at,
            until,
            id,
        })
    }

    /// Records that `key` is suspended until `until` (replacing any earlier record): its
    /// observations yield no verdict before then.
    pub fn suspended(&mut self, key: &str, until: i64) {
        if let Some(st) = self.entry(key) {
            st.suspended_until = Some(until);
        }
    }

    /// Records that `key`'s suspension was lifted. Rules already spent in their current
    /// windows stay spent.
    pub fn resumed(&mut self, key: &str) {
        if let Some(st) = self.keys.get_mut(key) {
            st.suspended_until = None;
        }
    }

    /// Drops the keys idle for longer than their longest window (under the settings of
    /// their latest observation), except those still suspended at `now`, and returns how
    /// many it dropped. A dropped key starts afresh, without a spike baseline.
    pub fn sweep(&mut self, now: i64) -> usize {
        let before = self.keys.len();
        self.keys.retain(|_, st| {
            let idle = st
                .last_at
                .is_none_or(|t| now.saturating_sub(t) > st.horizon);
            !idle || st.suspended_until.is_some_and(|u| now < u)
        });
        before - self.keys.len()
    }

    #[cfg(test)]
    pub(crate) fn ip_set_len(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |st| st.ips.len())
    }

    /// A snapshot of `key`'s statistics at `now`, if the detector holds it.
    pub fn stats(&self, key: &str, now: i64) -> Option<KeyStats> {
        let st = self.keys.get(key)?;
        let pick = |w: &Window, n: u64| if w.live(now) { n } else { 0 };
        let (v, s) = (&st.velocity, &st.spread);
        Some(KeyStats {
            requests: pick(v, v.n),
            tokens: pick(v, st.tokens),
            cost_micros: pick(v, st.cost_micros),
            baseline: if v.live(now) {
                st.baseline
            } else {
                fold(st.baseline, v.n)
            },
            ips: pick(s, st.ips.len() as u64),
            countries: pick(s, st.countries.len() as u64),
            violations: pick(&st.violations, st.violations.n),
            probes: pick(&st.probes, st.probes.n),
            suspended_until: st.suspended_until.filter(|&u| now < u),
        })
    }
}
