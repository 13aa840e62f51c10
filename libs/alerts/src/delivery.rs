//! What came of one delivery attempt, and when to try again.

use std::time::Duration;

/// Attempts after which a delivery is given up (`failed`, but kept visible). With
/// [`backoff`] the last attempt is about an hour after the first.
pub const MAX_ATTEMPTS: u32 = 20;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// How long to wait after failed attempt number `attempt` (1 for the first try):
/// 1 s, 2 s, 4 s, … doubling, capped at [`MAX_BACKOFF`].
#[must_use]
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver accepted it.
    Delivered,
    /// A transient failure: try again after `after`.
    Retry {
        /// How long to wait before the next attempt.
        after: Duration,
        /// What went wrong, for the delivery's history.
        reason: String,
    },
    /// Given up: a permanent refusal, or [`MAX_ATTEMPTS`] reached.
    Failed {
        /// What went wrong, for the delivery's history.
        reason: String,
    },
}

impl Delivery {
    /// The outcome of failed attempt number `attempt`: [`Delivery::Failed`] when the
    /// failure is `permanent` or this was the last attempt, else [`Delivery::Retry`]
    /// after [`backoff`]`(attempt)`.
    #[must_use]
    pub fn after_failure(attempt: u32, permanent: bool, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        if permanent || attempt >= MAX_ATTEMPTS {
            Delivery::Failed { reason }
        } else {
            Delivery::Retry {
                after: backoff(attempt),
                reason,
            }
        }
    }

    /// Whether the message was delivered.
    #[must_use]
    pub fn is_delivered(&self) -> bool {
        matches!(self, Delivery::Delivered)
    }

    /// Whether this outcome is final (delivered or given up).
    #[must_use]
    pub fn is_final(&self) -> bool {
        !matches!(self, Delivery::Retry { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        let total: Duration = (1..MAX_ATTEMPTS).map(backoff).sum();
        assert!(total > Duration::from_secs(50 * 60) && total < Duration::from_secs(70 * 60));
    }

    #[test]
    fn failures_retry_until_the_last_attempt() {
        assert_eq!(
            Delivery::after_failure(3, false, "down"),
            Delivery::Retry {
                after: Duration::from_secs(4),
                reason: "down".into()
            }
        );
        assert!(matches!(
            Delivery::after_failure(MAX_ATTEMPTS, false, "down"),
            Delivery::Failed { .. }
        ));
        assert!(Delivery::after_failure(1, true, "550 no such user").is_final());
        assert!(!Delivery::after_failure(1, false, "x").is_final());
        assert!(Delivery::Delivered.is_delivered());
    }
}
