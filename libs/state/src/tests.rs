use super::*;
use proptest::prelude::*;
use sg_events::{
    Actor, ConnectionCreatedV3, KeyIssuedV1, KeyRevokedV1, ProjectCreatedV1, TenantCreatedV2,
};

fn sealed() -> SealedSecret {
    SealedSecret {
        v: 1,
        kms: "local".into(),
        kek_id: "local:0".into(),
        wrapped_key: "AA==".into(),
        nonce: "AA==".into(),
        ciphertext: "AA==".into(),
    }
}

struct World {
    state: State,
    seq: u64,
}

impl World {
    fn new() -> Self {
        World {
            state: State::new(),
            seq: 0,
        }
    }
    fn apply(&mut self, tenant: &TenantId, event: Event) -> Result<Changes, FoldError> {
        self.seq += 1;
        let env = Envelope::new(tenant.clone(), Actor::operator(), event);
        self.state.apply(self.seq, &env.subject(), &env)
    }
    fn tenant(&mut self) -> TenantId {
        let t = TenantId::generate();
        self.apply(
            &t,
            Event::TenantCreated(TenantCreatedV2 {
                plan: None,
                name: "t".into(),
            }),
        )
        .unwrap();
        t
    }
    fn project(&mut self, t: &TenantId) -> ProjectId {
        let p = ProjectId::generate();
        self.apply(
            t,
            Event::ProjectCreated(ProjectCreatedV1 {
                project_id: p.clone(),
                name: "p".into(),
            }),
        )
        .unwrap();
        p
    }
    fn connection(&mut self, t: &TenantId, p: &ProjectId) -> Result<ConnectionId, FoldError> {
        let c = ConnectionId::generate(Provider::Mock);
        self.apply(
            t,
            Event::ConnectionCreated(ConnectionCreatedV3 {
                connection_id: c.clone(),
                project_id: p.clone(),
                provider: Provider::Mock,
                name: "c".into(),
                base_url: None,
                api_key: sealed().into(),
                openai_organization: None,
                openai_project: None,
                api_version: None,
            }),
        )?;
        Ok(c)
    }
    fn key(
        &mut self,
        t: &TenantId,
        p: &ProjectId,
        conns: Vec<ConnectionId>,
    ) -> Result<KeyId, FoldError> {
        let k = KeyId::generate();
        self.apply(
            t,
            Event::KeyIssued(
                KeyIssuedV1 {
                    key_id: k.clone(),
                    project_id: p.clone(),
                    name: "k".into(),
                    key_hash: format!("hash-{k}"),
                    hint: "SG_…abcd".into(),
                    connection_ids: conns,
                    allowed_models: Some(vec!["gpt-4o".into()]),
                }
                .into(),
            ),
        )?;
        Ok(k)
    }
}

#[test]
fn plans_supply_key_defaults_and_follow_the_tenant_and_the_operator() {
    use sg_events::{PlanData, PlanDefinedV1, TenantPlanSetV1};
    let mut w = World::new();
    let t = w.tenant();
    let p = w.project(&t);
    let c = w.connection(&t, &p).unwrap();
    let k = w.key(&t, &p, vec![c]).unwrap();
    // A tenant from before plans: no defaults.
    assert_eq!(w.state.key_view(&k).unwrap().limits.rpm, None);
    let changes = w
        .apply(
            &t,
            Event::TenantPlanSet(TenantPlanSetV1 {
                plan: "free".into(),
            }),
        )
        .unwrap();
    assert_eq!(changes.keys, vec![k.clone()]);
    let limits = w.state.key_view(&k).unwrap().limits;
    assert_eq!((limits.rpm, limits.rpd), (Some(20), Some(1_000)));
    // Only the operator defines plans; a definition reaches the keys of its tenants.
    let terms = PlanData {
        max_connections: Some(1),
        features: vec!["ip".into()],
        key_rpm: Some(5),
        key_rpd: None,
    };
    let defined = |terms: PlanData| {
        Event::PlanDefined(PlanDefinedV1 {
            name: "free".into(),
            terms,
        })
    };
    assert!(matches!(
        w.apply(&t, defined(terms.clone())),
        Err(FoldError::Invalid(_))
    ));
    let changes = w
        .apply(&TenantId::operator(), defined(terms.clone()))
        .unwrap();
    assert_eq!(changes.keys, vec![k.clone()]);
    let limits = w.state.key_view(&k).unwrap().limits;
    assert_eq!((limits.rpm, limits.rpd), (Some(5), None));
    assert_eq!(w.state.plan_of(&t).unwrap().max_connections, Some(1));
    let bad = PlanData {
        features: vec!["telepathy".into()],
        ..terms
    };
    assert!(matches!(
        w.apply(&TenantId::operator(), defined(bad)),
        Err(FoldError::Invalid(_))
    ));
}

#[test]
fn tokens_are_found_by_hash_and_revoked_in_their_tenant_only() {
    use sg_events::{Role, TokenIssuedV1, TokenRevokedV1};
    let mut w = World::new();
    let t = w.tenant();
    let other = w.tenant();
    let p = w.project(&t);
    let foreign = w.project(&other);
    let issue = |id: &TokenId, projects: Option<Vec<ProjectId>>| {
        Event::TokenIssued(TokenIssuedV1 {
            token_id: id.clone(),
            name: "ci".into(),
            role: Role::Admin,
            project_ids: projects,
            token_hash: format!("hash-{id}"),
            hint: "SGA_…abcd".into(),
            expires_at: None,
        })
    };
    let id = TokenId::generate();
    // A token cannot be scoped to another tenant's project.
    assert!(matches!(
        w.apply(&t, issue(&id, Some(vec![foreign]))),
        Err(FoldError::Missing { .. })
    ));
    w.apply(&t, issue(&id, Some(vec![p.clone()]))).unwrap();
    let token = w.state.token_by_hash(&format!("hash-{id}")).unwrap();
    assert_eq!(
        (token.role, token.project_ids.clone()),
        (Role::Admin, Some(vec![p]))
    );
    let revoke = Event::TokenRevoked(TokenRevokedV1 {
        token_id: id.clone(),
        reason: None,
    });
    assert!(matches!(
        w.apply(&other, revoke.clone()),
        Err(FoldError::Missing { .. })
    ));
    assert!(w.state.token(&id).unwrap().revoked_at.is_none());
    w.apply(&t, revoke).unwrap();
    assert!(w.state.token(&id).unwrap().revoked_at.is_some());
    assert_eq!(w.state.tokens_of(&t).count(), 1);
    assert_eq!(w.state.tokens_of(&other).count(), 0);
}

#[test]
fn a_rotated_key_copies_the_old_one_which_retires_at_the_end_of_its_grace() {
    use sg_events::{KeyBoundV2, KeyRotatedV1};
    let mut w = World::new();
    let t = w.tenant();
    let p = w.project(&t);
    let c = w.connection(&t, &p).unwrap();
    let old = w.key(&t, &p, vec![c.clone()]).unwrap();
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    w.apply(
        &t,
        Event::KeyBound(KeyBoundV2 {
            key_id: old.clone(),
            project_id: p.clone(),
            ip: Some(ip),
            device: None,
            place: None,
            request_id: None,
        }),
    )
    .unwrap();
    let new = KeyId::generate();
    let rotated = |retires_at| {
        Event::KeyRotated(KeyRotatedV1 {
            key_id: old.clone(),
            project_id: p.clone(),
            new_key_id: new.clone(),
            key_hash: format!("hash-{new}"),
            hint: "SG_…wxyz".into(),
            retires_at,
        })
    };
    let changes = w.apply(&t, rotated(1_900_000_000)).unwrap();
    assert_eq!(changes.keys, vec![old.clone(), new.clone()]);
    let view = w.state.key_view(&new).unwrap();
    assert_eq!(view.connections[0].id, c);
    assert_eq!(view.locks.models, Some(vec!["gpt-4o".to_owned()]));
    assert_eq!(view.locks.bound_ip, Some(ip));
    assert_eq!(view.locks.expires_at, None);
    assert_eq!(w.state.key_id_by_hash(&format!("hash-{new}")), Some(&new));
    let old_view = w.state.key_view(&old).unwrap();
    assert_eq!(old_view.status, KeyStatus::Active);
    assert_eq!(old_view.locks.expires_at, Some(1_900_000_000));
    // The same new key twice is refused.
    assert!(matches!(
        w.apply(&t, rotated(1_800_000_000)),
        Err(FoldError::Exists { .. })
    ));
}

#[test]
fn a_place_binding_is_kept_cleared_and_reset_when_the_geo_level_changes() {
    use sg_events::wire::{GeoLevelData, GeoLockDataV2, GeoModeData};
    use sg_events::{KeyBoundV2, KeyLocksSetV2, KeyUnboundV2, LocksV2, PlaceData};
    let mut w = World::new();
    let t = w.tenant();
    let p = w.project(&t);
    let c = w.connection(&t, &p).unwrap();
    let k = w.key(&t, &p, vec![c]).unwrap();
    let set_level = |level| {
        Event::KeyLocksSet(KeyLocksSetV2 {
            key_id: k.clone(),
            project_id: p.clone(),
            locks: LocksV2 {
                geo: Some(GeoLockDataV2 {
                    mode: Some(GeoModeData::AutoBind),
                    level: Some(level),
                    ..GeoLockDataV2::default()
                }),
                ..LocksV2::default()
            },
        })
    };
    let bind = Event::KeyBound(KeyBoundV2 {
        key_id: k.clone(),
        project_id: p.clone(),
        ip: None,
        device: None,
        place: Some(PlaceData {
            country: "DE".into(),
            city: None,
        }),
        request_id: None,
    });
    let place = |w: &World| w.state.key_view(&k).unwrap().locks.bound_place;
    w.apply(&t, set_level(GeoLevelData::Country)).unwrap();
    w.apply(&t, bind.clone()).unwrap();
    assert_eq!(place(&w).unwrap().country, "DE");
    // The same level again keeps the place; another level clears it.
    w.apply(&t, set_level(GeoLevelData::Country)).unwrap();
    assert!(place(&w).is_some());
    w.apply(&t, set_level(GeoLevelData::City)).unwrap();
    assert_eq!(place(&w), None);
    // Unbinding the place leaves the other bindings alone.
    w.apply(&t, bind).unwrap();
    let unbind = |place| {
        Event::KeyUnbound(KeyUnboundV2 {
            key_id: k.clone(),
            project_id: p.clone(),
            ip: false,
            device: false,
            place,
        })
    };
    w.apply(&t, unbind(false)).unwrap();
    assert!(place(&w).is_some());
    w.apply(&t, unbind(true)).unwrap();
    assert_eq!(place(&w), None);
}

#[test]
fn a_suspension_shows_in_the_key_view_until_its_own_resumption() {
    use sg_events::{KeyResumedV1, KeySuspendedV1};
    let mut w = World::new();
    let t = w.tenant();
    let p = w.project(&t);
    let c = w.connection(&t, &p).unwrap();
    let k = w.key(&t, &p, vec![c]).unwrap();
    let suspend = |verdict: &str, until| {
        Event::KeySuspended(KeySuspendedV1 {
            key_id: k.clone(),
            project_id: p.clone(),
            until,
            rule: "velocity".into(),
            reason: "601 requests in 60 s".into(),
            verdict_id: verdict.into(),
        })
    };
    let resume = |verdict: &str| {
        Event::KeyResumed(KeyResumedV1 {
            key_id: k.clone(),
            project_id: p.clone(),
            verdict_id: verdict.into(),
            early: false,
        })
    };
    let until = |w: &World| w.state.key_view(&k).unwrap().suspended_until;
    assert_eq!(until(&w), None);
    w.apply(&t, suspend("v1", 100)).unwrap();
    assert_eq!(until(&w), Some(100));
    w.apply(&t, suspend("v2", 200)).unwrap();
    // The end of an older suspension does not lift a newer one.
    w.apply(&t, resume("v1")).unwrap();
    assert_eq!(until(&w), Some(200));
    w.apply(&t, resume("v2")).unwrap();
    assert_eq!(until(&w), None);
    // Another tenant cannot suspend the key.
    let other = w.tenant();
    assert!(w.apply(&other, suspend("v3", 300)).is_err());
}

#[test]
fn a_key_view_resolves_its_connections_and_follows_revocation() {
    let mut w = World::new();
    let t = w.tenant();
    let p = w.project(&t);
    let c = w.connection(&t, &p).unwrap();
    let k = w.key(&t, &p, vec![c.clone()]).unwrap();
    let view = w.state.key_view(&k).unwrap();
    assert_eq!(view.status, KeyStatus::Active);
    assert_eq!(view.connections[0].id, c);
    assert_eq!(view.locks.models, Some(vec!["gpt-4o".to_owned()]));
    assert_eq!(w.state.key_id_by_hash(&format!("hash-{k}")), Some(&k));

    let changes = w
        .apply(
            &t,
            Event::KeyRevoked(KeyRevokedV1 {
                key_id: k.clone(),
                project_id: p,
                reason: None,
            }),
        )
        .unwrap();
    assert_eq!(changes.keys, vec![k.clone()]);
    assert_eq!(w.state.key_view(&k).unwrap().status, KeyStatus::Revoked);
}

#[test]
fn objects_cannot_cross_tenants() {
    let mut w = World::new();
    let a = w.tenant();
    let b = w.tenant();
    let pa = w.project(&a);
    let pb = w.project(&b);
    // Tenant b cannot attach a connection or a key to tenant a's project…
    assert!(matches!(
        w.connection(&b, &pa),
        Err(FoldError::Missing { .. })
    ));
    assert!(matches!(
        w.key(&b, &pa, vec![]),
        Err(FoldError::Missing { .. })
    ));
    // …nor use a's connection from its own project…
    let ca = w.connection(&a, &pa).unwrap();
    assert!(matches!(
        w.key(&b, &pb, vec![ca]),
        Err(FoldError::Missing { .. })
    ));
    // …nor revoke a's key.
    let ka = w.key(&a, &pa, vec![]).unwrap();
    let r = w.apply(
        &b,
        Event::KeyRevoked(KeyRevokedV1 {
            key_id: ka.clone(),
            project_id: pb,
            reason: None,
        }),
    );
    assert!(matches!(r, Err(FoldError::Missing { .. })));
    assert_eq!(w.state.key(&ka).unwrap().status, KeyStatus::Active);
}

#[test]
fn subject_sequences_are_tracked_for_optimistic_concurrency() {
    let mut w = World::new();
    let t = w.tenant();
    let subject = sg_events::aggregate_subject(&t, sg_events::AggregateKind::Tenant, t.as_str());
    assert_eq!(w.state.subject_seq(&subject), 1);
    assert_eq!(w.state.subject_seq("sg.control.nothing.here"), 0);
    assert_eq!(w.state.last_seq(), 1);
}

#[test]
fn a_keys_own_subjects_keep_their_sequences_whenever_they_were_written() {
    use sg_events::AggregateKind;
    let mut w = World::new();
    let t = w.tenant();
    let p = w.project(&t);
    let k = KeyId::generate();
    let key_subject = sg_events::aggregate_subject(&t, AggregateKind::Key, k.as_str());
    let binding = sg_events::aggregate_subject(&t, AggregateKind::KeyBinding, k.as_str());
    let revoke = |tenant: &TenantId| {
        Envelope::new(
            tenant.clone(),
            Actor::operator(),
            Event::KeyRevoked(KeyRevokedV1 {
                key_id: k.clone(),
                project_id: p.clone(),
                reason: None,
            }),
        )
    };
    // Refused (no such key yet), but its sequence counts.
    assert!(w.state.apply(3, &binding, &revoke(&t)).is_err());
    assert_eq!(w.state.subject_seq(&binding), 3);
    let issued = Envelope::new(
        t.clone(),
        Actor::operator(),
        Event::KeyIssued(
            KeyIssuedV1 {
                key_id: k.clone(),
                project_id: p.clone(),
                name: "k".into(),
                key_hash: "ab".repeat(32),
                hint: "SG_…abcd".into(),
                connection_ids: vec![],
                allowed_models: None,
            }
            .into(),
        ),
    );
    assert_eq!(issued.subject(), key_subject);
    w.state.apply(4, &key_subject, &issued).unwrap();
    assert_eq!(w.state.subject_seq(&key_subject), 4);
    assert_eq!(w.state.subject_seq(&binding), 3);
    assert_eq!(w.state.key_view(&k).unwrap().binding_seq, 3);
    assert_eq!(w.state.key_id_by_hash(&"ab".repeat(32)), Some(&k));
    assert_eq!(w.state.key_id_by_hash(&"AB".repeat(32)), None);
    w.state.apply(5, &binding, &revoke(&t)).unwrap();
    assert_eq!(w.state.subject_seq(&binding), 5);
    assert_eq!(w.state.key_view(&k).unwrap().binding_seq, 5);
    // The same key id under another tenant's subject is another subject.
    let other = TenantId::generate();
    let foreign = sg_events::aggregate_subject(&other, AggregateKind::Key, k.as_str());
    assert!(w.state.apply(6, &foreign, &revoke(&other)).is_err());
    assert_eq!(w.state.subject_seq(&foreign), 6);
    assert_eq!(w.state.subject_seq(&key_subject), 4);
    assert_eq!(w.state.last_seq(), 6);

    // A key with no binding event reads 0, whatever other keys' subjects hold.
    let fresh = w.key(&t, &p, vec![]).unwrap();
    assert_eq!(w.state.key_view(&fresh).unwrap().binding_seq, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Tenant,
    Project(usize),
    Connection(usize, usize),
    Key(usize, usize, Vec<usize>),
    Revoke(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Tenant),
        any::<usize>().prop_map(Op::Project),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Connection(a, b)),
        (
            any::<usize>(),
            any::<usize>(),
            prop::collection::vec(any::<usize>(), 0..3)
        )
            .prop_map(|(a, b, c)| Op::Key(a, b, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Revoke(a, b)),
    ]
}

proptest! {
    /// Whatever sequence of (possibly inconsistent) events arrives, every key view only
    /// ever points at connections of its own project and tenant. (That folding is the
    /// same through the real log on independent replicas is `sg-replica`'s
    /// `tests/determinism.rs`.)
    #[test]
    fn fold_keeps_tenant_isolation(ops in prop::collection::vec(op(), 1..60)) {
        let pick = |v: &Vec<TenantId>, i: usize| v.get(i % v.len().max(1)).cloned();
        let mut log: Vec<Envelope> = Vec::new();
        let (mut tenants, mut projects, mut conns, mut keys) = (vec![], vec![], vec![], vec![]);
        for op in ops {
            let ev = match op {
                Op::Tenant => { let t = TenantId::generate(); tenants.push(t.clone()); Some((t, Event::TenantCreated(TenantCreatedV2 { plan: None, name: "x".into() }))) }
                Op::Project(t) => pick(&tenants, t).map(|t| { let p = ProjectId::generate(); projects.push(p.clone()); (t, Event::ProjectCreated(ProjectCreatedV1 { project_id: p, name: "p".into() })) }),
                Op::Connection(t, p) => match (pick(&tenants, t), projects.get(p % projects.len().max(1)).cloned()) {
                    (Some(t), Some(p)) => { let c = ConnectionId::generate(Provider::Openai); conns.push(c.clone()); Some((t, Event::ConnectionCreated(ConnectionCreatedV3 { connection_id: c, project_id: p, provider: Provider::Openai, name: "c".into(), base_url: None, api_key: sealed().into(), openai_organization: None, openai_project: None, api_version: None }))) }
                    _ => None,
                },
                Op::Key(t, p, cs) => match (pick(&tenants, t), projects.get(p % projects.len().max(1)).cloned()) {
                    (Some(t), Some(p)) => { let k = KeyId::generate(); keys.push(k.clone());
                        let cids = cs.iter().filter_map(|i| conns.get(i % conns.len().max(1)).cloned()).collect();
                        Some((t, Event::KeyIssued(KeyIssuedV1 { key_id: k.clone(), project_id: p, name: "k".into(), key_hash: k.to_string(), hint: "h".into(), connection_ids: cids, allowed_models: None }.into()))) }
                    _ => None,
                },
                Op::Revoke(t, k) => match (pick(&tenants, t), keys.get(k % keys.len().max(1)).cloned(), projects.first().cloned()) {
                    (Some(t), Some(k), Some(p)) => Some((t, Event::KeyRevoked(KeyRevokedV1 { key_id: k, project_id: p, reason: None }))),
                    _ => None,
                },
            };
            if let Some((t, e)) = ev { log.push(Envelope::new(t, Actor::operator(), e)); }
        }
        let fold = |log: &[Envelope]| {
            let mut s = State::new();
            for (i, e) in log.iter().enumerate() { let _ = s.apply(i as u64 + 1, &e.subject(), e); }
            s
        };
        let s1 = fold(&log);
        for key in s1.keys() {
            let view = s1.key_view(&key.id).unwrap();
            let project = s1.project(&key.project_id).unwrap();
            prop_assert_eq!(&project.tenant_id, &key.tenant_id);
            for c in &view.connections {
                prop_assert_eq!(&c.project_id, &key.project_id);
                prop_assert_eq!(&c.tenant_id, &key.tenant_id);
            }
        }
    }
}
