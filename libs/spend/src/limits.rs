//! Limits of a key or a project: requests per minute and per day, tokens per minute,
//! concurrent requests, and a budget per day, month or in total.

use serde::{Deserialize, Serialize};

/// How a budget renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Each UTC day.
    Day,
    /// Each UTC calendar month.
    Month,
    /// Never: the amount is spent once.
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }
}

/// A budget: micro-dollars per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub micros: u64,
    pub period: Period,
}

/// The limits of one key or project; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute (UTC minute windows).
    pub rpm: Option<u64>,
    /// Requests per day (UTC days).
    pub rpd: Option<u64>,
    /// Tokens per minute: reserved from the request's estimate, settled to what the
    /// provider reported.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrent: Option<u64>,
    pub budget: Option<Budget>,
}

/// Largest values accepted: far beyond any real need, so a typo is caught.
pub const MAX_RPM: u64 = 10_000_000;
pub const MAX_RPD: u64 = 10_000_000_000;
pub const MAX_TPM: u64 = 100_000_000_000;
pub const MAX_CONCURRENT: u64 = 1_000_000;
/// $10,000,000.
pub const MAX_BUDGET_MICROS: u64 = 10_000_000 * 1_000_000;

/// A limit that cannot be right, naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for LimitsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for LimitsError {}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Refuses zero, and values beyond what any deployment needs.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let check = |field: &'static str, value: Option<u64>, max: u64| match value {
            Some(0) => Err(LimitsError {
                field,
                message: "must be at least 1 (leave it out for no limit)".into(),
            }),
            Some(v) if v > max => Err(LimitsError {
                field,
                message: format!("must be at most {max}"),
            }),
            _ => Ok(()),
        };
        check("rpm", self.rpm, MAX_RPM)?;
        check("rpd", self.rpd, MAX_RPD)?;
        check("tpm", self.tpm, MAX_TPM)?;
        check("concurrent", self.concurrent, MAX_CONCURRENT)?;
        if let Some(b) = self.budget {
            check("budget.usd", Some(b.micros), MAX_BUDGET_MICROS).map_err(|e| LimitsError {
                message: if b.micros == 0 {
                    "must be more than 0".into()
                } else {
                    "must be at most 10000000".into()
                },
                ..e
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(Limits::default().validate().is_ok());
        let ok = Limits {
            rpm: Some(100),
            budget: Some(Budget {
                micros: 1_000_000,
                period: Period::Month,
            }),
            ..Limits::default()
        };
        assert!(ok.validate().is_ok());
        for (limits, field) in [
            (
                Limits {
                    rpm: Some(0),
                    ..Limits::default()
                },
                "rpm",
            ),
            (
                Limits {
                    rpd: Some(MAX_RPD + 1),
                    ..Limits::default()
                },
                "rpd",
            ),
            (
                Limits {
                    tpm: Some(0),
                    ..Limits::default()
                },
                "tpm",
            ),
            (
                Limits {
                    concurrent: Some(MAX_CONCURRENT + 1),
                    ..Limits::default()
                },
                "concurrent",
            ),
            (
                Limits {
                    budget: Some(Budget {
                        micros: 0,
                        period: Period::Day,
                    }),
                    ..Limits::default()
                },
                "budget.usd",
            ),
        ] {
            assert_eq!(limits.validate().unwrap_err().field, field);
        }
    }
}
