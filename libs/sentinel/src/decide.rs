//! The sentinel's decisions, pure: what an event is to the detector, how far back to
//! replay, and what to append for a verdict or for a suspension that has ended — given
//! the control state and the time. No I/O, no clock.

use std::collections::HashMap;

use sg_abuse::{AbuseSettings, Observation, Verdict};
use sg_events::{
    AggregateKind, Envelope, Event, KeyId, KeyResumedV1, KeySuspendedV1, ProjectId, TenantId,
};
use sg_state::{KeyStatus, State};

/// The longest replay, in seconds: one day, the longest window a rule may use.
pub const MAX_HORIZON_SECONDS: u64 = sg_abuse::MAX_WINDOW_SECONDS;

/// How far back the streams must be replayed for the detector to see every window that is
/// still open: the longest `horizon_seconds()` among the defaults and every project's
/// settings, at most [`MAX_HORIZON_SECONDS`].
pub fn horizon_seconds(state: &State) -> u64 {
    let default = AbuseSettings::default().horizon_seconds();
    state
        .tenants()
        .flat_map(|t| state.projects_of(&t.id))
        .filter_map(|p| p.abuse.as_ref())
        .map(|d| AbuseSettings::from(d).horizon_seconds())
        .fold(default, u64::max)
        .min(MAX_HORIZON_SECONDS)
}

/// A project's detection settings: its own, else the defaults (also for a project the
/// state does not know).
pub fn settings(state: &State, project: &ProjectId) -> AbuseSettings {
    state
        .project(project)
        .and_then(|p| p.abuse.as_ref())
        .map(AbuseSettings::from)
        .unwrap_or_default()
}

/// What a usage or signals event is to the detector, with the project whose settings
/// apply; `None` for events it does not count:
///
/// - a `usage.recorded` answered 403: a refusal by the key's locks is counted as a
///   violation from its `lock.violated` signal, not also as a request;
/// - a `usage.recorded` without a client address (written before v4, or refused before
///   the address was known): counting it under a made-up address would inflate the
///   spread rule's distinct addresses;
/// - every other event type.
pub fn observation(env: &Envelope) -> Option<(&ProjectId, Observation<'_>)> {
    match &env.event {
        Event::UsageRecorded(u) if u.status != 403 => Some((
            &u.project_id,
            Observation::Request {
                key: u.key_id.as_str(),
                at: u.started_at.unix_timestamp(),
                ip: u.client_ip?,
                country: u.country.as_deref(),
                model: u.model.as_deref(),
                tokens: u.total_tokens,
                cost_micros: u.cost_micros,
            },
        )),
        Event::LockViolated(v) => Some((
            &v.project_id,
            Observation::Violation {
                key: v.key_id.as_str(),
                at: env.time.unix_timestamp(),
                code: &v.code,
                ip: v.client_ip,
                country: v.country.as_deref(),
                model: v.model.as_deref(),
            },
        )),
        _ => None,
    }
}

/// A conditional append on a key's control subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub tenant_id: TenantId,
    pub event: Event,
    /// The key aggregate's sequence in the state the decision was made from: the append
    /// fails if anything was written to the key since.
    pub expected_last_subject_seq: u64,
    /// The log's idempotency id: the same decision retried is stored once.
    pub msg_id: String,
}

/// Why a verdict is not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The suspension would already be over: a detection replayed from history.
    Over,
    /// The key is unknown (or its id malformed).
    UnknownKey,
    /// The key is revoked: nothing to suspend.
    Revoked,
    /// This verdict's suspension is already in the log.
    Recorded,
    /// The key is suspended by another verdict until then.
    Suspended { until: i64 },
}

/// What to do with a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspend {
    Write(Box<Write>),
    Skip(Skip),
}

/// The verdict ids of the suspensions already in the log (as far as the sentinel has read
/// it), with when they were written, so that a verdict replayed after an owner resumed its
/// key does not suspend it again.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    ids: HashMap<String, i64>,
}

impl Recorded {
    /// Notes a suspension written at `at` (unix seconds).
    pub fn note(&mut self, verdict_id: &str, at: i64) {
        self.ids.insert(verdict_id.to_owned(), at);
    }

    pub fn contains(&self, verdict_id: &str) -> bool {
        self.ids.contains_key(verdict_id)
    }

    /// Forgets the suspensions written before `before`; returns how many.
    pub fn prune(&mut self, before: i64) -> usize {
        let n = self.ids.len();
        self.ids.retain(|_, at| *at >= before);
        n - self.ids.len()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Whether and how to record `verdict` at `now`: skipped when the suspension would
/// already be over, when the key is unknown or revoked, when this verdict is already
/// recorded (in the state or in `recorded`), or when the key is suspended by another
/// verdict that has not ended; otherwise a `key.suspended` expecting the key's subject
/// sequence in `state`, with `suspend-{verdict id}` as its message id.
pub fn suspension(state: &State, recorded: &Recorded, verdict: &Verdict, now: i64) -> Suspend {
    if verdict.until <= now {
        return Suspend::Skip(Skip::Over);
    }
    if recorded.contains(&verdict.id) {
        return Suspend::Skip(Skip::Recorded);
    }
    let Some(key) = verdict
        .key
        .parse::<KeyId>()
        .ok()
        .and_then(|id| state.key(&id))
    else {
        return Suspend::Skip(Skip::UnknownKey);
    };
    if key.status == KeyStatus::Revoked {
        return Suspend::Skip(Skip::Revoked);
    }
    match &key.suspension {
        Some(s) if s.verdict_id == verdict.id => return Suspend::Skip(Skip::Recorded),
        Some(s) if s.until > now => return Suspend::Skip(Skip::Suspended { until: s.until }),
        _ => {}
    }
    let subject = sg_events::aggregate_subject(&key.tenant_id, AggregateKind::Key, key.id.as_str());
    Suspend::Write(Box::new(Write {
        tenant_id: key.tenant_id.clone(),
        event: Event::KeySuspended(KeySuspendedV1 {
            key_id: key.id.clone(),
            project_id: key.project_id.clone(),
            until: verdict.until,
            rule: verdict.rule.as_str().to_owned(),
            reason: verdict.reason.clone(),
            verdict_id: verdict.id.clone(),
        }),
        expected_last_subject_seq: state.subject_seq(&subject),
        msg_id: format!("suspend-{}", verdict.id),
    }))
}

/// Where a watched key's suspension stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// The state does not include the suspension yet: look again later.
    Pending,
    /// Suspended until then: the detector must issue no verdict for it meanwhile.
    Suspended { until: i64 },
    /// The suspension is over: write its end (`key.resumed`, `early: false`, message id
    /// `resume-{verdict id}`).
    Due(Box<Write>),
    /// Not suspended (resumed, or gone): the detector must know; stop watching.
    Ended,
}

/// Where `key_id`'s suspension stands at `now`, for a key watched since the control
/// stream's sequence `noted_seq` (the suspension's, or 0).
pub fn watch(state: &State, key_id: &KeyId, noted_seq: u64, now: i64) -> Watch {
    if state.last_seq() < noted_seq {
        return Watch::Pending;
    }
    let Some(key) = state.key(key_id) else {
        return Watch::Ended;
    };
    match &key.suspension {
        None => Watch::Ended,
        Some(s) if s.until > now => Watch::Suspended { until: s.until },
        Some(s) => {
            let subject =
                sg_events::aggregate_subject(&key.tenant_id, AggregateKind::Key, key.id.as_str());
            Watch::Due(Box::new(Write {
                tenant_id: key.tenant_id.clone(),
                event: Event::KeyResumed(KeyResumedV1 {
                    key_id: key.id.clone(),
                    project_id: key.project_id.clone(),
                    verdict_id: s.verdict_id.clone(),
                    early: false,
                }),
                expected_last_subject_seq: state.subject_seq(&subject),
                msg_id: format!("resume-{}", s.verdict_id),
            }))
        }
    }
}

/// Until when `state` holds `key` suspended at `now`, if it does: what the detector must
/// believe after a verdict it issued was not written (its own belief is the verdict's
/// end, which is wrong when the verdict was skipped because an owner had already
/// lifted it, or because another suspension is in force).
pub fn suspended_until(state: &State, key: &str, now: i64) -> Option<i64> {
    let key = state.key(&key.parse::<KeyId>().ok()?)?;
    key.suspension
        .as_ref()
        .map(|s| s.until)
        .filter(|&until| until > now)
}

/// The keys with a suspension in `state`, ended or not (their end may be due).
pub fn keys_with_suspension(state: &State) -> Vec<KeyId> {
    state
        .keys()
        .filter(|k| k.suspension.is_some())
        .map(|k| k.id.clone())
        .collect()
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
