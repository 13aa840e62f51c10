#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use sg_abuse::{Detector, Rule};
use sg_events::{
    AbuseSettingsData, Actor, KeyIssuedV1, KeyRevokedV1, LockViolatedV1, ProjectAbuseSetV1,
    ProjectCreatedV1, TenantCreatedV2, UsageRecordedV4,
};
use time::OffsetDateTime;

const NOW: i64 = 1_700_000_000;

struct World {
    state: State,
    seq: u64,
    tenant: TenantId,
    project: ProjectId,
}

impl World {
    fn new() -> Self {
        let mut w = World {
            state: State::new(),
            seq: 0,
            tenant: TenantId::generate(),
            project: ProjectId::generate(),
        };
        w.apply(Event::TenantCreated(TenantCreatedV2 {
            name: "t".into(),
            plan: None,
        }));
        w.apply(Event::ProjectCreated(ProjectCreatedV1 {
            project_id: w.project.clone(),
            name: "p".into(),
        }));
        w
    }

    fn apply(&mut self, event: Event) -> u64 {
        self.seq += 1;
        let env = Envelope::new(self.tenant.clone(), Actor::operator(), event);
        self.state.apply(self.seq, &env.subject(), &env).unwrap();
        self.seq
    }

    fn key(&mut self) -> KeyId {
        let k = KeyId::generate();
        self.apply(Event::KeyIssued(
            KeyIssuedV1 {
                key_id: k.clone(),
                project_id: self.project.clone(),
                name: "k".into(),
                key_hash: format!("hash-{k}"),
                hint: "SG_…abcd".into(),
                connection_ids: vec![],
                allowed_models: None,
            }
            .into(),
        ));
        k
    }

    fn suspend(&mut self, key: &KeyId, verdict_id: &str, until: i64) -> u64 {
        self.apply(Event::KeySuspended(KeySuspendedV1 {
            key_id: key.clone(),
            project_id: self.project.clone(),
            until,
            rule: "velocity".into(),
            reason: "r".into(),
            verdict_id: verdict_id.into(),
        }))
    }

    fn resume(&mut self, key: &KeyId, verdict_id: &str, early: bool) -> u64 {
        self.apply(Event::KeyResumed(KeyResumedV1 {
            key_id: key.clone(),
            project_id: self.project.clone(),
            verdict_id: verdict_id.into(),
            early,
        }))
    }

    fn key_seq(&self, key: &KeyId) -> u64 {
        self.state.subject_seq(&sg_events::aggregate_subject(
            &self.tenant,
            AggregateKind::Key,
            key.as_str(),
        ))
    }
}

fn verdict(key: &KeyId, until: i64) -> Verdict {
    Verdict {
        key: key.to_string(),
        rule: Rule::Velocity,
        reason: "6 requests in 60 s (limit 5)".into(),
        window_start: NOW - NOW % 60,
        at: NOW,
        until,
        id: sg_abuse::verdict_id(key.as_str(), Rule::Velocity, NOW - NOW % 60),
    }
}

#[test]
fn a_verdict_suspends_its_key_expecting_the_keys_sequence() {
    let mut w = World::new();
    let k = w.key();
    let _other = w.key();
    let v = verdict(&k, NOW + 600);
    let Suspend::Write(write) = suspension(&w.state, &Recorded::default(), &v, NOW) else {
        panic!("not written")
    };
    assert_eq!(write.tenant_id, w.tenant);
    assert_eq!(write.expected_last_subject_seq, w.key_seq(&k));
    assert_eq!(
        write.expected_last_subject_seq, 3,
        "the key's issue, not the other key's"
    );
    assert_eq!(write.msg_id, format!("suspend-{}", v.id));
    assert_eq!(
        write.event,
        Event::KeySuspended(KeySuspendedV1 {
            key_id: k.clone(),
            project_id: w.project.clone(),
            until: NOW + 600,
            rule: "velocity".into(),
            reason: v.reason.clone(),
            verdict_id: v.id.clone(),
        })
    );
    // Written and folded, the same verdict is recorded; a newer write moves the
    // expectation.
    w.suspend(&k, &v.id, NOW + 600);
    assert_eq!(
        suspension(&w.state, &Recorded::default(), &v, NOW),
        Suspend::Skip(Skip::Recorded)
    );
}

#[test]
fn verdicts_are_skipped_when_over_unknown_revoked_recorded_or_already_suspended() {
    let mut w = World::new();
    let none = Recorded::default();
    let k = w.key();
    // Replayed history: the suspension would be over already (or ends right now).
    assert_eq!(
        suspension(&w.state, &none, &verdict(&k, NOW - 1), NOW),
        Suspend::Skip(Skip::Over)
    );
    assert_eq!(
        suspension(&w.state, &none, &verdict(&k, NOW), NOW),
        Suspend::Skip(Skip::Over)
    );
    // Unknown, and malformed, keys.
    assert_eq!(
        suspension(&w.state, &none, &verdict(&KeyId::generate(), NOW + 9), NOW),
        Suspend::Skip(Skip::UnknownKey)
    );
    let mut bad = verdict(&k, NOW + 9);
    bad.key = "not a key id".into();
    assert_eq!(
        suspension(&w.state, &none, &bad, NOW),
        Suspend::Skip(Skip::UnknownKey)
    );
    // Seen in the control stream, even though the state holds no suspension (an owner
    // resumed it early).
    let v = verdict(&k, NOW + 600);
    let mut seen = Recorded::default();
    seen.note(&v.id, NOW - 5);
    assert_eq!(
        suspension(&w.state, &seen, &v, NOW),
        Suspend::Skip(Skip::Recorded)
    );
    w.suspend(&k, &v.id, NOW + 600);
    w.resume(&k, &v.id, true);
    assert!(w.state.key(&k).unwrap().suspension.is_none());
    assert_eq!(
        suspension(&w.state, &seen, &v, NOW),
        Suspend::Skip(Skip::Recorded)
    );
    // Suspended by another verdict that has not ended: skipped, with its end.
    let other = w.key();
    w.suspend(&other, "other:spread:0", NOW + 30);
    assert_eq!(
        suspension(&w.state, &none, &verdict(&other, NOW + 600), NOW),
        Suspend::Skip(Skip::Suspended { until: NOW + 30 })
    );
    // …and once that one has ended (its end not yet written), the new verdict is written.
    assert!(matches!(
        suspension(&w.state, &none, &verdict(&other, NOW + 600), NOW + 30),
        Suspend::Write(_)
    ));
    // Revoked.
    let revoked = w.key();
    w.apply(Event::KeyRevoked(KeyRevokedV1 {
        key_id: revoked.clone(),
        project_id: w.project.clone(),
        reason: None,
    }));
    assert_eq!(
        suspension(&w.state, &none, &verdict(&revoked, NOW + 9), NOW),
        Suspend::Skip(Skip::Revoked)
    );
}

#[test]
fn ended_suspensions_are_due_and_lifted_ones_end_the_watch() {
    let mut w = World::new();
    let k = w.key();
    // Not folded yet: pending.
    assert_eq!(watch(&w.state, &k, w.seq + 1, NOW), Watch::Pending);
    // Never suspended, or unknown: nothing to watch.
    assert_eq!(watch(&w.state, &k, 0, NOW), Watch::Ended);
    assert_eq!(watch(&w.state, &KeyId::generate(), 0, NOW), Watch::Ended);
    let seq = w.suspend(&k, "v1", NOW + 10);
    assert_eq!(
        watch(&w.state, &k, seq, NOW),
        Watch::Suspended { until: NOW + 10 }
    );
    // Over: its end is written, expecting the key's sequence, once (by message id).
    let Watch::Due(write) = watch(&w.state, &k, seq, NOW + 10) else {
        panic!("not due")
    };
    assert_eq!(write.expected_last_subject_seq, seq);
    assert_eq!(write.msg_id, "resume-v1");
    assert_eq!(
        write.event,
        Event::KeyResumed(KeyResumedV1 {
            key_id: k.clone(),
            project_id: w.project.clone(),
            verdict_id: "v1".into(),
            early: false,
        })
    );
    w.resume(&k, "v1", false);
    assert_eq!(watch(&w.state, &k, seq, NOW + 10), Watch::Ended);
    // An owner's early resume ends it too; a resume naming an older suspension does not.
    let seq = w.suspend(&k, "v2", NOW + 100);
    w.resume(&k, "v1", false);
    assert_eq!(
        watch(&w.state, &k, seq, NOW),
        Watch::Suspended { until: NOW + 100 }
    );
    w.resume(&k, "v2", true);
    assert_eq!(watch(&w.state, &k, seq, NOW), Watch::Ended);
    assert_eq!(keys_with_suspension(&w.state), Vec::<KeyId>::new());
    w.suspend(&k, "v3", NOW - 1);
    assert_eq!(keys_with_suspension(&w.state), vec![k]);
}

#[test]
fn the_horizon_is_the_longest_window_capped_at_a_day() {
    let mut w = World::new();
    // Defaults: the spread rule's hour.
    assert_eq!(horizon_seconds(&w.state), 3_600);
    let mut s = AbuseSettings::default();
    s.spread.window_seconds = 60;
    s.violations.window_seconds = 7_200;
    w.apply(Event::ProjectAbuseSet(ProjectAbuseSetV1 {
        project_id: w.project.clone(),
        settings: AbuseSettingsData::from(&s),
    }));
    assert_eq!(horizon_seconds(&w.state), 7_200);
    assert_eq!(settings(&w.state, &w.project), s);
    assert_eq!(
        settings(&w.state, &ProjectId::generate()),
        AbuseSettings::default()
    );
    s.model_probing.window_seconds = 86_400;
    w.apply(Event::ProjectAbuseSet(ProjectAbuseSetV1 {
        project_id: w.project.clone(),
        settings: AbuseSettingsData::from(&s),
    }));
    assert_eq!(horizon_seconds(&w.state), MAX_HORIZON_SECONDS);
}

fn usage(key: &KeyId, project: &ProjectId, status: u16, ip: Option<[u8; 4]>) -> Envelope {
    Envelope::new(
        TenantId::generate(),
        Actor::node("gw"),
        Event::UsageRecorded(UsageRecordedV4 {
            request_id: uuid::Uuid::now_v7(),
            project_id: project.clone(),
            key_id: key.clone(),
            connection_id: None,
            provider: None,
            model: Some("gpt-4o".into()),
            endpoint: "/v1/chat/completions".into(),
            status,
            streamed: false,
            prompt_tokens: 3,
            cached_prompt_tokens: 0,
            completion_tokens: 4,
            total_tokens: 7,
            cost_micros: 11,
            priced: true,
            request_bytes: 1,
            response_bytes: 1,
            latency_us: 1,
            started_at: OffsetDateTime::from_unix_timestamp(NOW).unwrap(),
            node: "gw".into(),
            client_ip: ip.map(Into::into),
            country: Some("SE".into()),
        }),
    )
}

#[test]
fn requests_and_violations_become_observations() {
    let (k, p) = (KeyId::generate(), ProjectId::generate());
    let env = usage(&k, &p, 200, Some([127, 0, 0, 2]));
    let (project, obs) = observation(&env).unwrap();
    assert_eq!(project, &p);
    assert_eq!(
        obs,
        Observation::Request {
            key: k.as_str(),
            at: NOW,
            ip: [127, 0, 0, 2].into(),
            country: Some("SE"),
            model: Some("gpt-4o"),
            tokens: 7,
            cost_micros: 11,
        }
    );
    // Rate-limited requests still count; refusals by locks count as violations only;
    // a request without an address is not counted.
    assert!(observation(&usage(&k, &p, 429, Some([127, 0, 0, 2]))).is_some());
    assert!(observation(&usage(&k, &p, 403, Some([127, 0, 0, 2]))).is_none());
    assert!(observation(&usage(&k, &p, 200, None)).is_none());

    let mut env = Envelope::new(
        TenantId::generate(),
        Actor::node("gw"),
        Event::LockViolated(LockViolatedV1 {
            request_id: uuid::Uuid::now_v7(),
            project_id: p.clone(),
            key_id: k.clone(),
            code: "model_not_allowed".into(),
            client_ip: [127, 0, 0, 3].into(),
            country: None,
            city: None,
            device_hash: None,
            model: Some("gpt-5".into()),
            endpoint: "/v1/chat/completions".into(),
            node: "gw".into(),
        }),
    );
    env.time = OffsetDateTime::from_unix_timestamp(NOW + 1).unwrap();
    let (_, obs) = observation(&env).unwrap();
    assert_eq!(
        obs,
        Observation::Violation {
            key: k.as_str(),
            at: NOW + 1,
            code: "model_not_allowed",
            ip: [127, 0, 0, 3].into(),
            country: None,
            model: Some("gpt-5"),
        }
    );
    let other = Envelope::new(
        TenantId::generate(),
        Actor::operator(),
        Event::ProjectCreated(ProjectCreatedV1 {
            project_id: p,
            name: "p".into(),
        }),
    );
    assert!(observation(&other).is_none());
}

/// The detector and the decision together, as the sentinel runs them: a storm suspends
/// once; a replay of the same events into a fresh detector (a restart) finds the
/// suspension recorded.
#[test]
fn a_replayed_storm_is_recorded_once() {
    let mut w = World::new();
    let k = w.key();
    let mut s = AbuseSettings::default();
    s.velocity.requests = Some(5);
    w.apply(Event::ProjectAbuseSet(ProjectAbuseSetV1 {
        project_id: w.project.clone(),
        settings: AbuseSettingsData::from(&s),
    }));
    let events: Vec<Envelope> = (0..8)
        .map(|_| usage(&k, &w.project, 200, Some([127, 0, 0, 1])))
        .collect();
    let run = |w: &World, recorded: &Recorded, detector: &mut Detector| -> Vec<Suspend> {
        events
            .iter()
            .filter_map(|env| {
                let (project, obs) = observation(env)?;
                let v = detector.observe(&settings(&w.state, project), &obs)?;
                Some(suspension(&w.state, recorded, &v, NOW))
            })
            .collect()
    };
    let decisions = run(&w, &Recorded::default(), &mut Detector::new());
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let Suspend::Write(write) = &decisions[0] else {
        panic!("{decisions:?}")
    };
    w.apply(write.event.clone());
    assert_eq!(suspended_until(&w.state, k.as_str(), NOW), Some(NOW + 900));
    assert_eq!(suspended_until(&w.state, k.as_str(), NOW + 900), None);
    assert_eq!(suspended_until(&w.state, "nonsense", NOW), None);
    // A restart: a fresh detector, the same events.
    let decisions = run(&w, &Recorded::default(), &mut Detector::new());
    assert_eq!(decisions, vec![Suspend::Skip(Skip::Recorded)]);
    // Even after the owner resumed the key early, as long as the sentinel has read the
    // suspension in the control stream.
    let Event::KeySuspended(d) = &write.event else {
        panic!()
    };
    w.resume(&k, &d.verdict_id, true);
    let mut recorded = Recorded::default();
    recorded.note(&d.verdict_id, NOW);
    let decisions = run(&w, &recorded, &mut Detector::new());
    assert_eq!(decisions, vec![Suspend::Skip(Skip::Recorded)]);
    assert_eq!(suspended_until(&w.state, k.as_str(), NOW), None);
    assert_eq!(recorded.prune(NOW), 0);
    assert_eq!(recorded.prune(NOW + 1), 1);
    assert!(recorded.is_empty());
}
