//! Storm grouping, pure: the first alert of each kind on each key in a window goes out
//! at once; the rest are counted and go out as one digest per project and window when
//! the window closes.
//!
//! Windows are fixed and aligned to the epoch (`at - at mod window`), and every id is a
//! function of the project, key, kind and window start, so feeding the same candidates
//! to a fresh [`Grouper`] (a replay after a restart) gives the same ids, and the
//! deliveries deduplicate by them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::alert::{Alert, AlertKind, DIGEST_ENTRIES, DigestEntry, DigestFacts, Facts, alert_id};

/// Something that happened that may become an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The project.
    pub project_id: String,
    /// The key, if the alert is about one.
    pub key_id: Option<String>,
    /// What happened.
    pub kind: AlertKind,
    /// When, unix seconds.
    pub at: i64,
    /// What is known about it.
    pub facts: Facts,
}

/// Groups alert candidates so that a storm yields a bounded number of alerts: per
/// project and window at most [`Grouper::max_immediate`] alerts at once (the first of
/// each key and kind) plus one digest.
#[derive(Debug, Clone)]
pub struct Grouper {
    window: i64,
    max_immediate: usize,
    open: BTreeMap<(i64, String), WindowState>,
}

#[derive(Debug, Clone, Default)]
struct WindowState {
    project_name: Option<String>,
    sent: HashSet<(Option<String>, AlertKind)>,
    folded: HashMap<(Option<String>, AlertKind), Folded>,
    total_folded: u64,
}

#[derive(Debug, Clone, Default)]
struct Folded {
    key_name: Option<String>,
    count: u64,
}

impl Default for Grouper {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW)
    }
}

impl Grouper {
    /// Five minutes.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);
    /// Immediate alerts per project and window by default; beyond it, even a key's
    /// first alert of a kind is folded into the digest.
    pub const DEFAULT_MAX_IMMEDIATE: usize = 10;

    /// A grouper with windows of `window` (whole seconds, at least one).
    #[must_use]
    pub fn new(window: Duration) -> Self {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1);
        Self {
            window,
            max_immediate: Self::DEFAULT_MAX_IMMEDIATE,
            open: BTreeMap::new(),
        }
    }

    /// The same grouper with at most `max` immediate alerts per project and window.
    #[must_use]
    pub fn with_max_immediate(mut self, max: usize) -> Self {
        self.max_immediate = max;
        self
    }

    /// Immediate alerts allowed per project and window.
    #[must_use]
    pub fn max_immediate(&self) -> usize {
        self.max_immediate
    }

    /// Start of the window `at` falls in.
    #[must_use]
    pub fn window_start(&self, at: i64) -> i64 {
        at - at.rem_euclid(self.window)
    }

    /// Windows with candidates whose digest is not out yet.
    #[must_use]
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Takes a candidate: returns the alert to send now if it is the first of its key
    /// and kind in its window (and the window's immediate quota is not used up);
    /// otherwise counts it for the window's digest.
    pub fn offer(&mut self, candidate: Candidate) -> Option<Alert> {
        let start = self.window_start(candidate.at);
        let max_immediate = self.max_immediate;
        let state = self
            .open
            .entry((start, candidate.project_id.clone()))
            .or_default();
        if state.project_name.is_none() {
            state.project_name.clone_from(&candidate.facts.project_name);
        }
        let slot = (candidate.key_id.clone(), candidate.kind);
        if !state.sent.contains(&slot) && state.sent.len() < max_immediate {
            state.sent.insert(slot);
            return Some(Alert::new(
                candidate.project_id,
                candidate.key_id,
                candidate.kind,
                candidate.at,
                &start.to_string(),
                candidate.facts,
            ));
        }
        let folded = state.folded.entry(slot).or_default();
        folded.count = folded.count.saturating_add(1);
        if folded.key_name.is_none() {
            folded.key_name = candidate.facts.key_name;
        }
        state.total_folded = state.total_folded.saturating_add(1);
        None
    }

    /// The digests of every window that has ended by `now` (unix seconds), one per
    /// project and window that folded anything, in window order; those windows are
    /// then forgotten.
    pub fn flush(&mut self, now: i64) -> Vec<Alert> {
        let window = self.window;
        let closed: Vec<(i64, String)> = self
            .open
            .keys()
            .take_while(|(start, _)| start.saturating_add(window) <= now)
            .cloned()
            .collect();
        let mut digests = Vec::new();
        for key in closed {
            let Some(state) = self.open.remove(&key) else {
                continue;
            };
            let (start, project_id) = key;
            if state.total_folded == 0 {
                continue;
            }
            let mut entries: Vec<DigestEntry> = state
                .folded
                .into_iter()
                .map(|((key_id, kind), f)| DigestEntry {
                    key_id,
                    key_name: f.key_name,
                    kind,
                    count: f.count,
                })
                .collect();
            entries.sort_by(|a, b| {
                b.count
                    .cmp(&a.count)
                    .then_with(|| a.key_id.cmp(&b.key_id))
                    .then_with(|| a.kind.cmp(&b.kind))
            });
            let omitted = entries
                .iter()
                .skip(DIGEST_ENTRIES)
                .fold(0u64, |n, e| n.saturating_add(e.count));
            entries.truncate(DIGEST_ENTRIES);
            let end = start.saturating_add(window);
            digests.push(Alert::new(
                project_id,
                None,
                AlertKind::Digest,
                end,
                &start.to_string(),
                Facts {
                    project_name: state.project_name,
                    digest: Some(DigestFacts {
                        window_start: start,
                        window_end: end,
                        total: state.total_folded,
                        entries,
                        omitted,
                    }),
                    ..Facts::default()
                },
            ));
        }
        digests
    }
}

/// The id a digest of `project_id`'s window starting at `window_start` has.
#[must_use]
pub fn digest_id(project_id: &str, window_start: i64) -> String {
    alert_id(
        project_id,
        None,
        AlertKind::Digest,
        &window_start.to_string(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn violation(project: &str, key: &str, kind: AlertKind, at: i64) -> Candidate {
        Candidate {
            project_id: project.into(),
            key_id: Some(key.into()),
            kind,
            at,
            facts: Facts {
                key_name: Some(format!("name of {key}")),
                offending_ip: Some("203.0.113.7".into()),
                ..Facts::default()
            },
        }
    }

    /// 10,000 violations on one key, 10 a second for 1,000 s; flushing every 10 s.
    fn storm(grouper: &mut Grouper) -> Vec<Alert> {
        let t0 = 1_764_435_000;
        let mut out = Vec::new();
        for i in 0..10_000i64 {
            let at = t0 + i / 10;
            out.extend(grouper.offer(violation("prj_1", "key_1", AlertKind::IpMismatch, at)));
            if i % 100 == 0 {
                out.extend(grouper.flush(at));
            }
        }
        out.extend(grouper.flush(t0 + 10_000));
        out
    }

    #[test]
    fn a_storm_on_one_key_yields_few_alerts() {
        let mut grouper = Grouper::default();
        let alerts = storm(&mut grouper);
        // 1,000 s spans at most 5 five-minute windows: one immediate and one digest each.
        assert!(alerts.len() <= 10, "{}", alerts.len());
        let immediate = alerts
            .iter()
            .filter(|a| a.kind == AlertKind::IpMismatch)
            .count();
        let digests: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.kind == AlertKind::Digest)
            .collect();
        assert_eq!(immediate, digests.len());
        let folded: u64 = digests
            .iter()
            .map(|d| d.facts.digest.as_ref().unwrap().total)
            .sum();
        assert_eq!(folded as usize + immediate, 10_000);
        assert_eq!(grouper.open_windows(), 0);
        let d = digests[0].facts.digest.as_ref().unwrap();
        assert_eq!(d.entries.len(), 1);
        assert_eq!(d.entries[0].key_id.as_deref(), Some("key_1"));
        assert_eq!(d.entries[0].key_name.as_deref(), Some("name of key_1"));
        assert_eq!(digests[0].id, digest_id("prj_1", d.window_start));
        assert!(digests[0].email_text().contains("IP mismatch"));
    }

    #[test]
    fn a_replay_gives_the_same_ids() {
        let first: Vec<String> = storm(&mut Grouper::default())
            .into_iter()
            .map(|a| a.id)
            .collect();
        let again: Vec<String> = storm(&mut Grouper::default())
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(first, again);
        let unique: HashSet<&String> = first.iter().collect();
        assert_eq!(unique.len(), first.len());
    }

    #[test]
    fn a_storm_over_many_keys_is_bounded_per_window() {
        let mut grouper = Grouper::new(Duration::from_secs(300)).with_max_immediate(5);
        let t0 = 1_764_435_000; // a window boundary
        assert_eq!(grouper.window_start(t0), t0);
        let mut immediate = 0;
        for i in 0..10_000i64 {
            let key = format!("key_{}", i % 200);
            let kind = if i % 2 == 0 {
                AlertKind::IpMismatch
            } else {
                AlertKind::LockViolation
            };
            immediate += usize::from(
                grouper
                    .offer(violation("prj_1", &key, kind, t0 + i % 300))
                    .is_some(),
            );
        }
        assert_eq!(immediate, 5);
        // Nothing out while the window is open.
        assert!(grouper.flush(t0 + 299).is_empty());
        let digests = grouper.flush(t0 + 300);
        assert_eq!(digests.len(), 1);
        let d = digests[0].facts.digest.as_ref().unwrap();
        assert_eq!(d.total, 10_000 - 5);
        assert_eq!(d.entries.len(), DIGEST_ENTRIES);
        let listed: u64 = d.entries.iter().map(|e| e.count).sum();
        assert_eq!(listed + d.omitted, d.total);
        assert!(d.entries.windows(2).all(|w| w[0].count >= w[1].count));
    }

    #[test]
    fn projects_windows_and_kinds_are_separate() {
        let mut grouper = Grouper::default();
        let t0 = 1_764_435_000;
        assert!(
            grouper
                .offer(violation("a", "k", AlertKind::IpMismatch, t0))
                .is_some()
        );
        assert!(
            grouper
                .offer(violation("b", "k", AlertKind::IpMismatch, t0))
                .is_some()
        );
        assert!(
            grouper
                .offer(violation("a", "k", AlertKind::LockViolation, t0))
                .is_some()
        );
        assert!(
            grouper
                .offer(violation("a", "k", AlertKind::IpMismatch, t0 + 1))
                .is_none()
        );
        let next = grouper
            .offer(violation("a", "k", AlertKind::IpMismatch, t0 + 300))
            .unwrap();
        let first = alert_id("a", Some("k"), AlertKind::IpMismatch, &t0.to_string());
        assert_ne!(next.id, first);
        // A window with only immediate alerts has no digest.
        let digests = grouper.flush(t0 + 600);
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].project_id, "a");
        assert_eq!(digests[0].at, t0 + 300);
        // Windows are aligned, so negative and odd times group too.
        assert_eq!(grouper.window_start(-1), -300);
        assert_eq!(Grouper::new(Duration::ZERO).window_start(7), 7);
    }
}
