//! A project's detection settings and their validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest window a rule may use: one day.
pub const MAX_WINDOW_SECONDS: u64 = 86_400;
/// The longest automatic suspension: 30 days.
pub const MAX_SUSPEND_SECONDS: u64 = 30 * 86_400;
/// The highest distinct-IP or distinct-country threshold. It bounds the per-key sets.
pub const MAX_DISTINCT: u64 = 1_000;

/// A project's abuse-detection settings. Every field may be omitted (its default
/// applies); a `null` threshold turns that check off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AbuseSettings {
    /// Request, token and cost velocity, and the spike rule.
    pub velocity: VelocitySettings,
    /// Distinct client IPs and countries.
    pub spread: SpreadSettings,
    /// Lock violations.
    pub violations: ViolationSettings,
    /// Requests for models outside the key's allow-list.
    pub model_probing: ProbeSettings,
    /// How long a key is suspended when a rule fires (1 s to 30 days; default 900).
    pub suspend_seconds: u64,
    /// `false` turns detection off for the project (default `true`).
    pub enabled: bool,
}

/// Velocity: how much a key does in one window, and how that compares with its past.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VelocitySettings {
    /// Fires above this many requests in a window (default 600).
    pub requests: Option<u64>,
    /// Fires above this many tokens in a window (default off).
    pub tokens: Option<u64>,
    /// Fires above this cost, in micro-dollars, in a window (default off).
    pub cost_micros: Option<u64>,
    /// The window, in seconds (1 to 86 400; default 60).
    pub window_seconds: u64,
    /// Spike rule: fires when a window's requests exceed this multiple of the key's
    /// baseline (greater than 1; default 10.0; `null` turns the spike rule off).
    pub spike_factor: Option<f64>,
    /// Spike rule: a window with fewer requests than this is never a spike (default 60).
    pub spike_min_requests: u64,
}

/// Spread: from how many places a key is used in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SpreadSettings {
    /// Fires above this many distinct client IPs (1 to 1 000; default 5).
    pub ips: Option<u64>,
    /// Fires above this many distinct countries (1 to 1 000; default 3).
    pub countries: Option<u64>,
    /// The window, in seconds (1 to 86 400; default 3 600).
    pub window_seconds: u64,
}

/// Lock violations: requests the key's locks refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ViolationSettings {
    /// Fires above this many violations in a window (default 20).
    pub count: Option<u64>,
    /// The window, in seconds (1 to 86 400; default 300).
    pub window_seconds: u64,
}

/// Model probing: requests for models outside the key's allow-list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSettings {
    /// Fires above this many refused models in a window (default 5).
    pub count: Option<u64>,
    /// The window, in seconds (1 to 86 400; default 300).
    pub window_seconds: u64,
}

impl Default for AbuseSettings {
    fn default() -> Self {
        Self {
            velocity: VelocitySettings::default(),
            spread: SpreadSettings::default(),
            violations: ViolationSettings::default(),
            model_probing: ProbeSettings::default(),
            suspend_seconds: 900,
            enabled: true,
        }
    }
}

impl Default for VelocitySettings {
    fn default() -> Self {
        Self {
            requests: Some(600),
            tokens: None,
            cost_micros: None,
            window_seconds: 60,
            spike_factor: Some(10.0),
            spike_min_requests: 60,
        }
    }
}

impl Default for SpreadSettings {
    fn default() -> Self {
        Self {
            ips: Some(5),
            countries: Some(3),
            window_seconds: 3_600,
        }
    }
}

impl Default for ViolationSettings {
    fn default() -> Self {
        Self {
            count: Some(20),
            window_seconds: 300,
        }
    }
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            count: Some(5),
            window_seconds: 300,
        }
    }
}

/// Settings that cannot be used, and which field is at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// The field's dotted path, e.g. `velocity.window_seconds`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn fail(field: &str, message: String) -> Result<(), SettingsError> {
    Err(SettingsError {
        field: field.to_owned(),
        message,
    })
}

fn threshold(field: &str, value: Option<u64>, max: u64) -> Result<(), SettingsError> {
    match value {
        Some(0) => fail(
            field,
            "must be at least 1 (null turns the check off)".into(),
        ),
        Some(v) if v > max => fail(field, format!("must be at most {max}")),
        _ => Ok(()),
    }
}

fn window(field: &str, seconds: u64) -> Result<(), SettingsError> {
    if seconds == 0 || seconds > MAX_WINDOW_SECONDS {
        return fail(
            field,
            format!("must be between 1 and {MAX_WINDOW_SECONDS} seconds"),
        );
    }
    Ok(())
}

impl AbuseSettings {
    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let v = &self.velocity;
        threshold("velocity.requests", v.requests, u64::MAX)?;
        threshold("velocity.tokens", v.tokens, u64::MAX)?;
        threshold("velocity.cost_micros", v.cost_micros, u64::MAX)?;
        window("velocity.window_seconds", v.window_seconds)?;
        if let Some(f) = v.spike_factor
            && !(f.is_finite() && f > 1.0)
        {
            fail(
                "velocity.spike_factor",
                "must be a finite number greater than 1 (null turns the spike rule off)".into(),
            )?;
        }
        threshold(
            "velocity.spike_min_requests",
            Some(v.spike_min_requests),
            u64::MAX,
        )?;
        threshold("spread.ips", self.spread.ips, MAX_DISTINCT)?;
        threshold("spread.countries", self.spread.countries, MAX_DISTINCT)?;
        window("spread.window_seconds", self.spread.window_seconds)?;
        threshold("violations.count", self.violations.count, u64::MAX)?;
        window("violations.window_seconds", self.violations.window_seconds)?;
        threshold("model_probing.count", self.model_probing.count, u64::MAX)?;
        window(
            "model_probing.window_seconds",
            self.model_probing.window_seconds,
        )?;
        if self.suspend_seconds == 0 || self.suspend_seconds > MAX_SUSPEND_SECONDS {
            fail(
                "suspend_seconds",
                format!("must be between 1 and {MAX_SUSPEND_SECONDS} seconds"),
            )?;
        }
        Ok(())
    }

    /// The longest of the rules' windows: how long a key's statistics stay useful.
    pub fn horizon_seconds(&self) -> u64 {
        self.velocity
            .window_seconds
            .max(self.spread.window_seconds)
            .max(self.violations.window_seconds)
            .max(self.model_probing.window_seconds)
    }
}
