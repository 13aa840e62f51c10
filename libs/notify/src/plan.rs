//! What the notifier makes of an event, and what it still has to deliver. Pure: no I/O,
//! no clock.

use std::collections::{BTreeMap, HashSet};

use sg_alerts::{Alert, AlertKind, BudgetFacts, Candidate, Facts};
use sg_events::{Envelope, Event};
use sg_state::State;

/// What one event means for the project's owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A refusal: grouped, so that a storm becomes a handful of alerts.
    Grouped(Candidate),
    /// An alert of its own (a suspension, its end, a budget threshold).
    Direct(Alert),
    Nothing,
}

fn rfc3339(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at.to_string())
}

/// The facts every alert about `key` starts from: the names of the key and project.
fn base_facts(
    state: &State,
    project: &sg_events::ProjectId,
    key: Option<&sg_events::KeyId>,
) -> Facts {
    Facts {
        project_name: state.project(project).map(|p| p.name.clone()),
        key_name: key.and_then(|k| state.key(k)).map(|k| k.name.clone()),
        ..Facts::default()
    }
}

/// What `env` means, read against the control state as it is now.
pub fn source(env: &Envelope, state: &State) -> Source {
    let at = env.time.unix_timestamp();
    match &env.event {
        Event::LockViolated(v) => {
            let ip_mismatch = v.code == "ip_not_allowed";
            let mut facts = base_facts(state, &v.project_id, Some(&v.key_id));
            if ip_mismatch {
                facts.bound_ip = state
                    .key(&v.key_id)
                    .and_then(|k| k.bound_ip)
                    .map(|ip| ip.to_string());
            }
            facts.offending_ip = Some(v.client_ip.to_string());
            facts.country = v.country.clone();
            facts.city = v.city.clone();
            facts.code = Some(v.code.clone());
            facts.model = v.model.clone();
            facts.endpoint = Some(v.endpoint.clone());
            Source::Grouped(Candidate {
                project_id: v.project_id.to_string(),
                key_id: Some(v.key_id.to_string()),
                kind: if ip_mismatch {
                    AlertKind::IpMismatch
                } else {
                    AlertKind::LockViolation
                },
                at,
                facts,
            })
        }
        Event::KeySuspended(s) => {
            let mut facts = base_facts(state, &s.project_id, Some(&s.key_id));
            facts.reason = Some(format!(
                "{} (rule `{}`); suspended until {}",
                s.reason,
                s.rule,
                rfc3339(s.until)
            ));
            Source::Direct(Alert::new(
                s.project_id.to_string(),
                Some(s.key_id.to_string()),
                AlertKind::Suspended,
                at,
                &s.verdict_id,
                facts,
            ))
        }
        Event::KeyResumed(r) => {
            let mut facts = base_facts(state, &r.project_id, Some(&r.key_id));
            facts.reason = Some(if r.early {
                "an owner lifted the suspension".to_owned()
            } else {
                "the suspension ended".to_owned()
            });
            Source::Direct(Alert::new(
                r.project_id.to_string(),
                Some(r.key_id.to_string()),
                AlertKind::Resumed,
                at,
                &r.verdict_id,
                facts,
            ))
        }
        Event::BudgetThreshold(b) => {
            let mut facts = base_facts(state, &b.project_id, b.key_id.as_ref());
            facts.budget = Some(BudgetFacts {
                period: b.period.clone(),
                window: b.window.clone(),
                percent: b.percent,
                budget_micros: b.budget_micros,
                spent_micros: b.spent_micros,
            });
            Source::Direct(Alert::new(
                b.project_id.to_string(),
                b.key_id.as_ref().map(ToString::to_string),
                AlertKind::BudgetThreshold,
                at,
                &b.threshold_id,
                facts,
            ))
        }
        _ => Source::Nothing,
    }
}

/// Alerts for active keys that expire within `notice` seconds of `now` (one per key and
/// expiry date).
pub fn expiring(state: &State, now: i64, notice: i64) -> Vec<Alert> {
    state
        .keys()
        .filter(|k| k.status == sg_state::KeyStatus::Active)
        .filter_map(|k| {
            let expires = k.locks.expires_at?;
            (expires > now && expires <= now.saturating_add(notice)).then(|| {
                let mut facts = base_facts(state, &k.project_id, Some(&k.id));
                facts.expires_at = Some(expires);
                Alert::new(
                    k.project_id.to_string(),
                    Some(k.id.to_string()),
                    AlertKind::KeyExpiring,
                    now,
                    &expires.to_string(),
                    facts,
                )
            })
        })
        .collect()
}

/// The channels of a project, by name: `email:<address>` and `webhook:<id>`.
pub fn channels(state: &State, project: &str) -> Vec<String> {
    let Ok(project) = project.parse::<sg_events::ProjectId>() else {
        return Vec::new();
    };
    state
        .project(&project)
        .map(|p| {
            p.alerts
                .emails
                .iter()
                .map(|e| format!("email:{e}"))
                .chain(
                    p.alerts
                        .webhooks
                        .iter()
                        .map(|w| format!("webhook:{}", w.id)),
                )
                .collect()
        })
        .unwrap_or_default()
}

/// One delivery still to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub alert_id: String,
    pub channel: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Alerts raised and deliveries made, as the signals stream records them, and the
/// deliveries still to make.
#[derive(Debug, Default)]
pub struct Outbox {
    raised: BTreeMap<String, Alert>,
    finished: HashSet<(String, String)>,
    /// (due at, alert id, channel) → attempts so far.
    pending: BTreeMap<(i64, String, String), u32>,
}

impl Outbox {
    /// Whether an alert with this id was raised.
    pub fn is_raised(&self, id: &str) -> bool {
        self.raised.contains_key(id)
    }

    /// Every alert raised (within the horizon).
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.raised.values()
    }

    /// The raised alert with this id.
    pub fn alert(&self, id: &str) -> Option<&Alert> {
        self.raised.get(id)
    }

    /// An `alert.raised` read from the stream.
    pub fn raised(&mut self, alert: Alert) {
        self.raised.insert(alert.id.clone(), alert);
    }

    /// An `alert.delivered` read from the stream: that channel is done with the alert.
    pub fn finished(&mut self, alert_id: &str, channel: &str) {
        self.finished
            .insert((alert_id.to_owned(), channel.to_owned()));
        self.pending
            .retain(|(_, a, c), _| !(a == alert_id && c == channel));
    }

    /// Whether the alert's delivery to `channel` has ended.
    pub fn is_finished(&self, alert_id: &str, channel: &str) -> bool {
        self.finished
            .contains(&(alert_id.to_owned(), channel.to_owned()))
    }

    /// Schedules the alert for every channel not done with it, now.
    pub fn schedule(&mut self, alert_id: &str, channels: &[String], now: i64) {
        for channel in channels {
            let done = self.is_finished(alert_id, channel)
                || self
                    .pending
                    .keys()
                    .any(|(_, a, c)| a == alert_id && c == channel);
            if !done {
                self.pending
                    .insert((now, alert_id.to_owned(), channel.clone()), 0);
            }
        }
    }

    /// The deliveries due at `now`, taken out of the schedule.
    pub fn take_due(&mut self, now: i64) -> Vec<Due> {
        let later = self
            .pending
            .split_off(&(now.saturating_add(1), String::new(), String::new()));
        let due = std::mem::replace(&mut self.pending, later);
        due.into_iter()
            .map(|((_, alert_id, channel), attempts)| Due {
                alert_id,
                channel,
                attempts,
            })
            .collect()
    }

    /// A delivery to try again at `at`.
    pub fn retry(&mut self, due: Due, at: i64) {
        self.pending
            .insert((at, due.alert_id, due.channel), due.attempts);
    }

    /// Deliveries waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Forgets alerts raised before `before` (their deliveries too).
    pub fn prune(&mut self, before: i64) {
        let old: Vec<String> = self
            .raised
            .iter()
            .filter(|(_, a)| a.at < before)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            self.raised.remove(id);
        }
        self.finished.retain(|(a, _)| !old.contains(a));
        self.pending.retain(|(_, a, _), _| !old.contains(a));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use sg_events::{
        Actor, BudgetThresholdV1, KeyBoundV2, KeyId, KeyIssuedV4, KeySuspendedV1, LockViolatedV1,
        LocksV2, ProjectCreatedV1, ProjectId, TenantCreatedV2, TenantId,
    };

    /// A state with one tenant, project and key (expiring at `expires_at`), bound to
    /// 198.51.100.4; and envelopes of that tenant.
    struct World {
        state: State,
        seq: u64,
        tenant: TenantId,
        project: ProjectId,
        key: KeyId,
    }

    impl World {
        fn new(expires_at: Option<i64>) -> Self {
            let mut w = World {
                state: State::new(),
                seq: 0,
                tenant: TenantId::generate(),
                project: ProjectId::generate(),
                key: KeyId::generate(),
            };
            w.apply(Event::TenantCreated(TenantCreatedV2 {
                name: "acme".into(),
                plan: None,
            }));
            w.apply(Event::ProjectCreated(ProjectCreatedV1 {
                project_id: w.project.clone(),
                name: "production".into(),
            }));
            w.apply(Event::KeyIssued(KeyIssuedV4 {
                key_id: w.key.clone(),
                project_id: w.project.clone(),
                name: "billing-worker".into(),
                key_hash: "ab".repeat(32),
                hint: "SG_…abcd".into(),
                connection_ids: vec![],
                locks: LocksV2 {
                    expires_at,
                    ..LocksV2::default()
                },
                limits: Default::default(),
            }));
            w.apply(Event::KeyBound(KeyBoundV2 {
                key_id: w.key.clone(),
                project_id: w.project.clone(),
                ip: Some("198.51.100.4".parse().unwrap()),
                device: None,
                place: None,
                request_id: None,
            }));
            w
        }

        fn env(&self, event: Event) -> Envelope {
            Envelope::new(self.tenant.clone(), Actor::node("gw-1"), event)
        }

        fn apply(&mut self, event: Event) {
            self.seq += 1;
            let env = self.env(event);
            self.state.apply(self.seq, &env.subject(), &env).unwrap();
        }
    }

    #[test]
    fn an_ip_refusal_is_grouped_and_names_both_addresses_and_the_key() {
        let w = World::new(None);
        let violated = w.env(Event::LockViolated(LockViolatedV1 {
            request_id: uuid::Uuid::now_v7(),
            project_id: w.project.clone(),
            key_id: w.key.clone(),
            code: "ip_not_allowed".into(),
            client_ip: "203.0.113.77".parse().unwrap(),
            country: Some("DE".into()),
            city: Some("Frankfurt am Main".into()),
            device_hash: None,
            model: None,
            endpoint: "/v1/chat/completions".into(),
            node: "gw-1".into(),
        }));
        let Source::Grouped(c) = source(&violated, &w.state) else {
            panic!("not grouped");
        };
        assert_eq!(c.kind, AlertKind::IpMismatch);
        assert_eq!(c.facts.bound_ip.as_deref(), Some("198.51.100.4"));
        assert_eq!(c.facts.offending_ip.as_deref(), Some("203.0.113.77"));
        assert_eq!(c.facts.key_name.as_deref(), Some("billing-worker"));
        assert_eq!(c.facts.project_name.as_deref(), Some("production"));
    }

    #[test]
    fn suspensions_and_budget_thresholds_are_alerts_of_their_own_with_stable_ids() {
        let w = World::new(None);
        let suspended = w.env(Event::KeySuspended(KeySuspendedV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            until: 1_800_000_000,
            rule: "velocity".into(),
            reason: "601 requests in 60 s".into(),
            verdict_id: "v1".into(),
        }));
        let (Source::Direct(a), Source::Direct(b)) =
            (source(&suspended, &w.state), source(&suspended, &w.state))
        else {
            panic!("not direct");
        };
        assert_eq!(a.kind, AlertKind::Suspended);
        assert_eq!(a.id, b.id);
        assert!(a.facts.reason.unwrap().contains("601 requests"));
        let threshold = w.env(Event::BudgetThreshold(BudgetThresholdV1 {
            threshold_id: "t-80".into(),
            project_id: w.project.clone(),
            key_id: None,
            period: "month".into(),
            window: "M2026-11".into(),
            percent: 80,
            budget_micros: 10_000_000,
            spent_micros: 8_100_000,
        }));
        let Source::Direct(t) = source(&threshold, &w.state) else {
            panic!("not direct");
        };
        assert_eq!(t.kind, AlertKind::BudgetThreshold);
        assert_eq!(t.facts.budget.unwrap().percent, 80);
        assert_ne!(t.id, a.id);
    }

    #[test]
    fn keys_expiring_within_the_notice_are_alerted_once_per_expiry() {
        let now = 1_800_000_000;
        let soon = World::new(Some(now + 3_600));
        let alerts = expiring(&soon.state, now, 86_400);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::KeyExpiring);
        assert_eq!(alerts[0].facts.expires_at, Some(now + 3_600));
        // The same expiry an hour later is the same alert.
        assert_eq!(expiring(&soon.state, now + 60, 86_400)[0].id, alerts[0].id);
        assert!(expiring(&World::new(Some(now + 2 * 86_400)).state, now, 86_400).is_empty());
        assert!(expiring(&World::new(Some(now - 1)).state, now, 86_400).is_empty());
        assert!(expiring(&World::new(None).state, now, 86_400).is_empty());
    }

    fn alert(id: &str, at: i64) -> Alert {
        Alert {
            id: id.into(),
            project_id: "prj_a".into(),
            key_id: None,
            kind: AlertKind::Suspended,
            at,
            facts: Facts::default(),
        }
    }

    #[test]
    fn an_outbox_delivers_each_alert_once_per_channel_and_retries_what_failed() {
        let mut o = Outbox::default();
        let channels = vec!["email:a@example.com".to_owned(), "webhook:wh_1".to_owned()];
        o.raised(alert("alrt_1", 10));
        o.schedule("alrt_1", &channels, 10);
        // Scheduling again (a replay) adds nothing.
        o.schedule("alrt_1", &channels, 11);
        assert_eq!(o.pending(), 2);
        let due = o.take_due(10);
        assert_eq!(due.len(), 2);
        assert_eq!(o.take_due(10), vec![]);
        // The email failed for now; the webhook went through.
        let mut it = due.into_iter();
        let email = it.next().unwrap();
        o.retry(
            Due {
                attempts: 1,
                ..email
            },
            12,
        );
        o.finished("alrt_1", "webhook:wh_1");
        assert!(o.take_due(11).is_empty());
        let again = o.take_due(12);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        o.finished("alrt_1", "email:a@example.com");
        // A restart that reads both deliveries back schedules nothing.
        o.schedule("alrt_1", &channels, 20);
        assert_eq!(o.pending(), 0);
        o.prune(11);
        assert!(!o.is_raised("alrt_1"));
    }

    #[test]
    fn a_delivery_recorded_while_pending_is_dropped_from_the_schedule() {
        let mut o = Outbox::default();
        o.schedule("alrt_2", &["webhook:wh_1".to_owned()], 5);
        o.finished("alrt_2", "webhook:wh_1");
        assert!(o.take_due(100).is_empty());
    }
}
