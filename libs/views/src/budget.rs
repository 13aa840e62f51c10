//! Budget signals, decided without I/O: which `budget.threshold` and `budget.reset`
//! events a budget owes at a given moment, from what was spent. The time is an argument;
//! nothing here reads a clock.
//!
//! - **Thresholds.** In the budget's *current* window (the UTC day, the UTC calendar month,
//!   or `total`), each of 50, 80 and 100 percent of the budget is due once the settled
//!   spend reaches it (`spent × 100 ≥ budget × percent`: 99.9 % is not 100 %). Its id names
//!   the owner, the window, the percent and the budget amount, so a level is announced
//!   once per window and budget: setting another budget mid-window re-arms the levels,
//!   and those the spend already reached under the new amount are due at once.
//! - **Resets.** For a budget that renews (day, month): once the current window has
//!   begun, a reset is due if the spend of the previous window reached the budget. Its id
//!   names the owner and the new window.
//!
//! The ids are a function of the crossing alone (never of when or how often it is
//! derived), so deriving again — a rebuild of the views, a retried publication — yields
//! the same ids, which are also the log's message ids.

use sg_spend::{Budget, Counter, Period, Window};

/// The levels announced, in percent of the budget.
pub const THRESHOLDS: [u8; 3] = [50, 80, 100];

/// Whose budget: a project's, or one key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Project,
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Project => "project",
            Scope::Key => "key",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Scope> {
        match text {
            "project" => Some(Scope::Project),
            "key" => Some(Scope::Key),
            _ => None,
        }
    }
}

/// The owner of a budget: its project, and the key if it is a key's own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub project_id: &'a str,
    pub key_id: Option<&'a str>,
}

impl Owner<'_> {
    /// `<project>:<key or ->`, the common start of the owner's signal ids.
    fn prefix(&self) -> String {
        format!("{}:{}", self.project_id, self.key_id.unwrap_or("-"))
    }
}

/// What a signal announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalKind {
    /// The spend of the window reached `percent` of `budget_micros`.
    Threshold {
        percent: u8,
        budget_micros: u64,
        spent_micros: u64,
    },
    /// The budget, exhausted in the previous window, renewed with this window.
    Reset,
}

/// A signal due for a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSignal {
    /// `threshold_id` or `reset_id`; also the log's message id.
    pub id: String,
    pub kind: SignalKind,
    pub period: Period,
    /// The window it is about (for a reset: the new window).
    pub window: String,
}

/// The windows a budget's signals depend on at `now_ms`: the current one, and the one
/// before it for budgets that renew.
pub fn windows(period: Period, now_ms: u64) -> (Window, Option<Window>) {
    let counter = Counter::Budget(period);
    let current = Window::of(counter, now_ms);
    let previous = current
        .start_ms
        .filter(|start| *start > 0)
        .map(|start| Window::of(counter, start - 1));
    (current, previous)
}

/// The id of a threshold crossing.
pub fn threshold_id(owner: Owner<'_>, window: &str, percent: u8, budget_micros: u64) -> String {
    format!("{}:{window}:{percent}:{budget_micros}", owner.prefix())
}

/// The id of a reset into `window`.
pub fn reset_id(owner: Owner<'_>, window: &str) -> String {
    format!("{}:{window}", owner.prefix())
}

/// Whether `spent` reached `percent` of `budget` (exact integer arithmetic).
pub fn reached(spent: u64, budget: u64, percent: u8) -> bool {
    u128::from(spent) * 100 >= u128::from(budget) * u128::from(percent)
}

/// Every signal `owner`'s `budget` owes at `now_ms`, given `spent(window id)`, the
/// settled spend of a window. The caller keeps those it has not recorded yet (by id).
pub fn due(
    owner: Owner<'_>,
    budget: Budget,
    now_ms: u64,
    spent: impl Fn(&str) -> u64,
) -> Vec<BudgetSignal> {
    let (current, previous) = windows(budget.period, now_ms);
    let mut signals = Vec::new();
    if let Some(previous) = previous
        && reached(spent(&previous.id), budget.micros, 100)
    {
        signals.push(BudgetSignal {
            id: reset_id(owner, &current.id),
            kind: SignalKind::Reset,
            period: budget.period,
            window: current.id.clone(),
        });
    }
    let spent_now = spent(&current.id);
    for percent in THRESHOLDS {
        if reached(spent_now, budget.micros, percent) {
            signals.push(BudgetSignal {
                id: threshold_id(owner, &current.id, percent, budget.micros),
                kind: SignalKind::Threshold {
                    percent,
                    budget_micros: budget.micros,
                    spent_micros: spent_now,
                },
                period: budget.period,
                window: current.id.clone(),
            });
        }
    }
    signals
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use sg_spend::window::days_from_civil;

    const DAY: u64 = 86_400_000;
    const PROJECT: Owner<'static> = Owner {
        project_id: "prj_a",
        key_id: None,
    };

    fn midnight(y: i64, m: u32, d: u32) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY
    }

    /// A budget's life: spend per window, and the ids already recorded (the outbox).
    struct Ledger {
        spent: BTreeMap<String, u64>,
        recorded: BTreeSet<String>,
    }

    impl Ledger {
        fn new() -> Ledger {
            Ledger {
                spent: BTreeMap::new(),
                recorded: BTreeSet::new(),
            }
        }

        fn spend(&mut self, period: Period, at_ms: u64, micros: u64) {
            let window = Window::of(Counter::Budget(period), at_ms).id;
            *self.spent.entry(window).or_default() += micros;
        }

        /// The signals newly due at `now_ms`.
        fn derive(&mut self, owner: Owner<'_>, budget: Budget, now_ms: u64) -> Vec<BudgetSignal> {
            let spent = self.spent.clone();
            let fresh: Vec<BudgetSignal> = due(owner, budget, now_ms, |w| {
                spent.get(w).copied().unwrap_or(0)
            })
            .into_iter()
            .filter(|s| !self.recorded.contains(&s.id))
            .collect();
            for s in &fresh {
                self.recorded.insert(s.id.clone());
            }
            fresh
        }
    }

    fn percents(signals: &[BudgetSignal]) -> Vec<u8> {
        signals
            .iter()
            .filter_map(|s| match s.kind {
                SignalKind::Threshold { percent, .. } => Some(percent),
                SignalKind::Reset => None,
            })
            .collect()
    }

    #[test]
    fn each_level_is_crossed_once() {
        let budget = Budget {
            micros: 10_000_000,
            period: Period::Month,
        };
        let mut now = midnight(2026, 11, 3) + 3_600_000;
        let mut ledger = Ledger::new();
        let mut seen = Vec::new();
        // One dollar at a time, derived after each spend and once more in between.
        for _ in 0..14 {
            ledger.spend(Period::Month, now, 1_000_000);
            now += 60_000;
            seen.extend(percents(&ledger.derive(PROJECT, budget, now)));
            seen.extend(percents(&ledger.derive(PROJECT, budget, now + 1)));
        }
        assert_eq!(seen, vec![50, 80, 100]);
        // The crossing carries what was spent when it was seen.
        let all = due(PROJECT, budget, now, |_| 5_000_000);
        assert_eq!(
            all[0].kind,
            SignalKind::Threshold {
                percent: 50,
                budget_micros: 10_000_000,
                spent_micros: 5_000_000
            }
        );
        assert_eq!(all[0].window, "M2026-11");
        assert_eq!(all[0].id, "prj_a:-:M2026-11:50:10000000");
    }

    #[test]
    fn a_jump_past_several_levels_announces_each() {
        let budget = Budget {
            micros: 1_000,
            period: Period::Total,
        };
        let signals = due(PROJECT, budget, 5, |_| 5_000);
        assert_eq!(percents(&signals), vec![50, 80, 100]);
        assert!(signals.iter().all(|s| s.window == "total"));
    }

    #[test]
    fn nothing_at_99_9_percent() {
        let budget = Budget {
            micros: 1_000_000,
            period: Period::Day,
        };
        let now = midnight(2026, 5, 5) + 10;
        assert_eq!(
            percents(&due(PROJECT, budget, now, |_| 999_999)),
            vec![50, 80]
        );
        assert_eq!(
            percents(&due(PROJECT, budget, now, |_| 1_000_000)),
            vec![50, 80, 100]
        );
        assert!(percents(&due(PROJECT, budget, now, |_| 499_999)).is_empty());
        // Exact at the edge of 80 %.
        assert_eq!(
            percents(&due(PROJECT, budget, now, |_| 800_000)),
            vec![50, 80]
        );
        assert_eq!(percents(&due(PROJECT, budget, now, |_| 799_999)), vec![50]);
    }

    #[test]
    fn a_reset_exactly_at_the_utc_day_boundary() {
        let key = Owner {
            project_id: "prj_a",
            key_id: Some("key_b"),
        };
        let budget = Budget {
            micros: 2_000,
            period: Period::Day,
        };
        let boundary = midnight(2026, 11, 30);
        let mut ledger = Ledger::new();
        ledger.spend(Period::Day, boundary - 5_000, 2_000);
        let before = ledger.derive(key, budget, boundary - 1);
        assert_eq!(percents(&before), vec![50, 80, 100]);
        // The last millisecond of the day: nothing more.
        assert!(ledger.derive(key, budget, boundary - 1).is_empty());
        // The first millisecond of the next day: the reset, once.
        let at = ledger.derive(key, budget, boundary);
        assert_eq!(at.len(), 1, "{at:?}");
        assert_eq!(at[0].kind, SignalKind::Reset);
        let day = boundary / DAY;
        assert_eq!(at[0].window, format!("d{day}"));
        assert_eq!(at[0].id, format!("prj_a:key_b:d{day}"));
        assert!(ledger.derive(key, budget, boundary + 1).is_empty());
        assert!(ledger.derive(key, budget, boundary + DAY / 2).is_empty());
        // A day that did not exhaust the budget is followed by no reset.
        ledger.spend(Period::Day, boundary + 10, 1_999);
        assert_eq!(
            percents(&ledger.derive(key, budget, boundary + 20)),
            [50, 80]
        );
        assert!(ledger.derive(key, budget, boundary + DAY).is_empty());
    }

    #[test]
    fn a_reset_exactly_at_the_utc_month_boundary() {
        let budget = Budget {
            micros: 1_000,
            period: Period::Month,
        };
        // February of a leap year: the window ends at midnight on 1 March.
        let boundary = midnight(2028, 3, 1);
        let mut ledger = Ledger::new();
        ledger.spend(Period::Month, midnight(2028, 2, 29) + 1, 1_000);
        assert_eq!(
            percents(&ledger.derive(PROJECT, budget, boundary - 1)),
            [50, 80, 100]
        );
        assert!(ledger.derive(PROJECT, budget, boundary - 1).is_empty());
        let at = ledger.derive(PROJECT, budget, boundary);
        assert_eq!(at.len(), 1);
        assert_eq!(at[0].kind, SignalKind::Reset);
        assert_eq!(at[0].window, "M2028-03");
        assert_eq!(at[0].id, "prj_a:-:M2028-03");
        // New year's boundary too.
        let newyear = midnight(2029, 1, 1);
        ledger.spend(Period::Month, newyear - 1, 1_000);
        let at = ledger.derive(PROJECT, budget, newyear);
        assert_eq!(at.len(), 1);
        assert_eq!(at[0].window, "M2029-01");
        // A total budget never resets.
        let total = Budget {
            micros: 1_000,
            period: Period::Total,
        };
        assert!(
            due(PROJECT, total, newyear, |_| 1_000)
                .iter()
                .all(|s| s.kind != SignalKind::Reset)
        );
    }

    #[test]
    fn a_budget_changed_mid_window() {
        let mut now = midnight(2026, 7, 1) + 1_000;
        let mut ledger = Ledger::new();
        let ten = Budget {
            micros: 10_000_000,
            period: Period::Month,
        };
        ledger.spend(Period::Month, now, 6_000_000);
        assert_eq!(percents(&ledger.derive(PROJECT, ten, now)), [50]);

        // Raised to $20: $6 is 30 %, nothing is due; the levels are armed for $20.
        let twenty = Budget {
            micros: 20_000_000,
            ..ten
        };
        now += 1_000;
        assert!(ledger.derive(PROJECT, twenty, now).is_empty());
        ledger.spend(Period::Month, now, 4_000_000);
        let at_half = ledger.derive(PROJECT, twenty, now);
        assert_eq!(percents(&at_half), [50]);
        assert_eq!(at_half[0].id, "prj_a:-:M2026-07:50:20000000");

        // Lowered to $5 with $10 spent: every level of the new amount is due at once.
        let five = Budget {
            micros: 5_000_000,
            ..ten
        };
        now += 1_000;
        assert_eq!(percents(&ledger.derive(PROJECT, five, now)), [50, 80, 100]);
        // Back to $10: its 50 % was announced already; 80 % and 100 % were not.
        assert_eq!(percents(&ledger.derive(PROJECT, ten, now)), [80, 100]);
        assert!(ledger.derive(PROJECT, ten, now).is_empty());

        // A period changed from month to day: the day's window counts on its own.
        let daily = Budget {
            micros: 1_000_000,
            period: Period::Day,
        };
        assert!(ledger.derive(PROJECT, daily, now).is_empty());
        ledger.spend(Period::Day, now, 1_000_000);
        let day = ledger.derive(PROJECT, daily, now);
        assert_eq!(percents(&day), [50, 80, 100]);
        assert!(day.iter().all(|s| s.window.starts_with('d')));
    }

    #[test]
    fn ids_name_the_owner_and_never_collide_across_kinds() {
        let key = Owner {
            project_id: "prj_a",
            key_id: Some("key_b"),
        };
        assert_eq!(
            threshold_id(key, "d20000", 80, 5),
            "prj_a:key_b:d20000:80:5"
        );
        assert_ne!(
            threshold_id(PROJECT, "total", 50, 1),
            threshold_id(key, "total", 50, 1)
        );
        assert_ne!(reset_id(PROJECT, "d1"), threshold_id(PROJECT, "d1", 50, 1));
        let (current, previous) = windows(Period::Total, 123);
        assert_eq!(current.id, "total");
        assert!(previous.is_none());
        let (current, previous) = windows(Period::Day, 0);
        assert_eq!(current.id, "d0");
        assert!(previous.is_none());
    }
}
