//! Abuse detection for proxy keys. Pure: no I/O, no clock; every call is given the time
//! (unix seconds).
//!
//! A [`Detector`] is fed [`Observation`]s — requests a key made and requests its locks
//! refused — in stream order, and keeps a few counters per key. When a key breaks one of
//! its project's [`AbuseSettings`] rules, [`Detector::observe`] returns a [`Verdict`]:
//! suspend the key until [`Verdict::until`].
//!
//! # Rules and their defaults
//!
//! | rule | fires when, within one window | default |
//! |------|-------------------------------|---------|
//! | [`Rule::Velocity`] | more than `requests` requests, `tokens` tokens or `cost_micros` micro-dollars | 600 requests / 60 s; tokens and cost off |
//! | [`Rule::Spike`] | requests exceed `spike_factor` × the key's baseline, and number at least `spike_min_requests` | 10 × baseline, at least 60 |
//! | [`Rule::Spread`] | more than `ips` distinct client IPs or `countries` distinct countries | 5 IPs, 3 countries / 3 600 s |
//! | [`Rule::Violations`] | more than `count` lock violations | 20 / 300 s |
//! | [`Rule::ModelProbing`] | more than `count` refused models (violation code `model_not_allowed`) | 5 / 300 s |
//!
//! A verdict suspends the key for `suspend_seconds` (default 900). A `null` threshold
//! turns that check off; `enabled: false` turns detection off for the project.
//!
//! Velocity and spike count requests only; spread counts the places of requests and
//! violations alike; a `model_not_allowed` violation counts both as a violation and as a
//! probe.
//!
//! The spike baseline is an exponentially weighted moving average of the request counts
//! of the key's past *active* velocity windows (windows with at least one request):
//! `baseline ← baseline + 0.3 × (count − baseline)`, starting at the first window's count.
//! Idle windows are skipped rather than averaged in as zero, so a key used in bursts is
//! compared with its own bursts; a key with no completed window has no baseline and is
//! never a spike; and `spike_min_requests` keeps a quiet key's small jumps from counting.
//!
//! # Windows
//!
//! Windows are *aligned*: an observation at `at` falls in the window starting at
//! `at - at.rem_euclid(window_seconds)`. Each rule keeps only its current window's
//! counters, so memory per key is constant, and a window's start depends on the
//! timestamps alone, never on when the detector started or what it saw before. The cost
//! is that a burst straddling two windows is split between them (it may reach twice the
//! threshold before firing); rate limits are the precise tool, and these rules are for
//! catching abuse, not for metering it.
//!
//! Observations should arrive in roughly non-decreasing time per key. One older than the
//! key's latest is counted in the key's current window, as if it had arrived at the
//! latest time; duplicates are counted again (a verdict is still only issued once).
//!
//! # Exactly once
//!
//! A verdict's [`Verdict::id`] is `"{key}:{rule}:{window_start}"` ([`verdict_id`]), a
//! function of the key, the rule and the aligned window alone. A rule fires at most once
//! per key and window, so replaying the same observations into a fresh detector after a
//! restart yields the same verdicts with the same ids, and the caller can use the id to
//! de-duplicate the suspension it records. A replay that starts mid-window sees fewer
//! observations and may fire later in that window, or not at all, but never under
//! another id.
//!
//! A verdict also marks the key suspended in the detector until `until`; while a key is
//! suspended (whether by a verdict or by [`Detector::suspended`]), its observations still
//! count but yield no verdict, and a rule that trips meanwhile is spent for that window.
//! [`Detector::resumed`] lifts a suspension early.
//!
//! # Memory
//!
//! Per key: one set of counters per rule, a set of distinct IPs and one of countries,
//! each holding at most one more entry than its threshold (16 when the check is off, so
//! [`Detector::stats`] still has something to show). [`Detector::sweep`] drops keys idle
//! for longer than their longest window, unless they are suspended.
#![forbid(unsafe_code)]

mod detector;
mod settings;

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use detector::Detector;
pub use settings::{
    AbuseSettings, MAX_DISTINCT, MAX_SUSPEND_SECONDS, MAX_WINDOW_SECONDS, ProbeSettings,
    SettingsError, SpreadSettings, VelocitySettings, ViolationSettings,
};

/// The violation code of a request for a model outside the key's allow-list; such
/// violations also count as model probes.
pub const MODEL_NOT_ALLOWED: &str = "model_not_allowed";

/// One thing a key did, as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation<'a> {
    /// A request the gateway served (or at least let through its locks).
    Request {
        /// The key's id.
        key: &'a str,
        /// When, in unix seconds.
        at: i64,
        /// The client's address.
        ip: IpAddr,
        /// The client's country (ISO code), if known.
        country: Option<&'a str>,
        /// The model asked for, if any.
        model: Option<&'a str>,
        /// Tokens used, input and output.
        tokens: u64,
        /// Cost, in micro-dollars.
        cost_micros: u64,
    },
    /// A request the key's locks refused.
    Violation {
        /// The key's id.
        key: &'a str,
        /// When, in unix seconds.
        at: i64,
        /// The refusal's code, e.g. [`MODEL_NOT_ALLOWED`].
        code: &'a str,
        /// The client's address.
        ip: IpAddr,
        /// The client's country (ISO code), if known.
        country: Option<&'a str>,
        /// The model asked for, if any.
        model: Option<&'a str>,
    },
}

impl Observation<'_> {
    /// The key's id.
    pub fn key(&self) -> &str {
        match self {
            Self::Request { key, .. } | Self::Violation { key, .. } => key,
        }
    }

    /// When it happened, in unix seconds.
    pub fn at(&self) -> i64 {
        match self {
            Self::Request { at, .. } | Self::Violation { at, .. } => *at,
        }
    }
}

/// The rule a verdict was issued under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Too many requests, tokens or micro-dollars in a window.
    Velocity,
    /// Many more requests than the key's baseline.
    Spike,
    /// Too many distinct client IPs or countries in a window.
    Spread,
    /// Too many lock violations in a window.
    Violations,
    /// Too many requests for models outside the allow-list in a window.
    ModelProbing,
}

impl Rule {
    /// The rule's name, as serialized: `velocity`, `spike`, `spread`, `violations` or
    /// `model_probing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Velocity => "velocity",
            Self::Spike => "spike",
            Self::Spread => "spread",
            Self::Violations => "violations",
            Self::ModelProbing => "model_probing",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision to suspend a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The key's id.
    pub key: String,
    /// The rule it broke.
    pub rule: Rule,
    /// One line for people, with the figures (no secrets, no addresses).
    pub reason: String,
    /// The start of the aligned window the rule fired in.
    pub window_start: i64,
    /// When it fired: the time of the key's latest observation.
    pub at: i64,
    /// The end of the suspension: `at + suspend_seconds`.
    pub until: i64,
    /// `"{key}:{rule}:{window_start}"`: the same for a replay of the same observations.
    pub id: String,
}

/// The de-duplication id of the verdict for `key` under `rule` in the window starting at
/// `window_start`.
pub fn verdict_id(key: &str, rule: Rule, window_start: i64) -> String {
    format!("{key}:{rule}:{window_start}")
}

/// A snapshot of a key's statistics, for diagnostics. Counters of a window that has
/// ended are reported as zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyStats {
    /// Requests in the current velocity window.
    pub requests: u64,
    /// Tokens in the current velocity window.
    pub tokens: u64,
    /// Micro-dollars in the current velocity window.
    pub cost_micros: u64,
    /// The spike baseline (requests per active window), once there is one.
    pub baseline: Option<f64>,
    /// Distinct client IPs in the current spread window (at most the set's cap).
    pub ips: u64,
    /// Distinct countries in the current spread window (at most the set's cap).
    pub countries: u64,
    /// Lock violations in the current window.
    pub violations: u64,
    /// Refused models in the current window.
    pub probes: u64,
    /// The end of the key's suspension, if it is suspended.
    pub suspended_until: Option<i64>,
}

#[cfg(test)]
mod tests;
