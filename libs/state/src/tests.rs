use super::*;
use proptest::prelude::*;
use sg_events::{
    Actor, ConnectionCreatedV3, KeyIssuedV1, KeyRevokedV1, ProjectCreatedV1, TenantCreatedV1,
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
            Event::TenantCreated(TenantCreatedV1 { name: "t".into() }),
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
                Op::Tenant => { let t = TenantId::generate(); tenants.push(t.clone()); Some((t, Event::TenantCreated(TenantCreatedV1 { name: "x".into() }))) }
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
