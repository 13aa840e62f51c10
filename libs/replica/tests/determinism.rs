//! The fold is the same wherever it runs: a random sequence of control events of every
//! type (consistent or not) folded directly, and the same events appended to a real log
//! and folded by two independent replicas reading it back, give equal states. This fails
//! if the wire loses anything (an event that does not survive encoding), if a replica
//! applies events in another order or skips one, or if the fold depends on anything but
//! the events (iteration order, time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sg_eventlog::sqlite::SqliteLog;
use sg_eventlog::{Append, EventLog};
use sg_events::wire::{GeoLevelData, GeoLockDataV2, GeoModeData, IpLockData, SealedKey};
use sg_events::*;
use sg_replica::Replica;
use sg_state::State;

fn sealed(n: u8) -> SealedKey {
    SealedKey {
        v: 1,
        kms: "local".into(),
        kek_id: format!("local:{n}"),
        wrapped_key: "AA==".into(),
        nonce: "AA==".into(),
        ciphertext: format!("{n}A=="),
    }
}

/// One control command, by indices into what was created before it (taken modulo the
/// count, so any index works); `foreign` picks another tenant than the object's own.
#[derive(Debug, Clone)]
enum Op {
    Tenant,
    Project {
        tenant: usize,
    },
    Connection {
        project: usize,
        foreign: Option<usize>,
    },
    Rotate {
        connection: usize,
    },
    Rewrap {
        connection: usize,
    },
    Key {
        project: usize,
        connections: Vec<usize>,
        foreign: Option<usize>,
    },
    Locks {
        key: usize,
        models: Option<Vec<u8>>,
        ip_off: bool,
        geo_auto: bool,
    },
    Bind {
        key: usize,
        ip: Option<u8>,
        device: Option<u8>,
        place: Option<u8>,
    },
    Unbind {
        key: usize,
        ip: bool,
        device: bool,
        place: bool,
    },
    Revoke {
        key: usize,
    },
    Suspend {
        key: usize,
        verdict: u8,
    },
    Resume {
        key: usize,
        verdict: u8,
    },
    Abuse {
        project: usize,
        requests: Option<u64>,
    },
    Alerts {
        project: usize,
        emails: u8,
        webhook: bool,
    },
    Route {
        project: usize,
        model: u8,
        connection: usize,
    },
    Unroute {
        project: usize,
        model: u8,
    },
    KeyLimits {
        key: usize,
        rpm: Option<u64>,
    },
    ProjectLimits {
        project: usize,
        budget: Option<u64>,
    },
    /// `tenant`: a tenant's attempt (refused by the fold) instead of the operator's.
    Price {
        model: u8,
        input: u64,
        tenant: Option<usize>,
    },
    Unprice {
        model: u8,
        tenant: Option<usize>,
    },
    PlanSet {
        tenant: usize,
        plan: u8,
    },
    /// `tenant`: a tenant's attempt (refused by the fold) instead of the operator's.
    PlanDefined {
        plan: u8,
        rpm: Option<u64>,
        tenant: Option<usize>,
    },
    Token {
        tenant: usize,
        projects: Option<Vec<usize>>,
    },
    TokenRevoked {
        token: usize,
        foreign: Option<usize>,
    },
    KeyRotated {
        key: usize,
        retires_at: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let i = || any::<usize>();
    prop_oneof![
        Just(Op::Tenant),
        i().prop_map(|tenant| Op::Project { tenant }),
        (i(), proptest::option::weighted(0.1, i()))
            .prop_map(|(project, foreign)| Op::Connection { project, foreign }),
        i().prop_map(|connection| Op::Rotate { connection }),
        i().prop_map(|connection| Op::Rewrap { connection }),
        (
            i(),
            prop::collection::vec(i(), 0..3),
            proptest::option::weighted(0.1, i())
        )
            .prop_map(|(project, connections, foreign)| Op::Key {
                project,
                connections,
                foreign
            }),
        (
            i(),
            proptest::option::of(prop::collection::vec(0u8..4, 0..3)),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(key, models, ip_off, geo_auto)| Op::Locks {
                key,
                models,
                ip_off,
                geo_auto
            }),
        (
            i(),
            proptest::option::of(any::<u8>()),
            proptest::option::of(0u8..4),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(key, ip, device, place)| Op::Bind {
                key,
                ip,
                device,
                place
            }),
        (i(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(key, ip, device, place)| {
            Op::Unbind {
                key,
                ip,
                device,
                place,
            }
        }),
        i().prop_map(|key| Op::Revoke { key }),
        (i(), 0u8..3).prop_map(|(key, verdict)| Op::Suspend { key, verdict }),
        (i(), 0u8..3).prop_map(|(key, verdict)| Op::Resume { key, verdict }),
        (i(), proptest::option::of(1u64..1000))
            .prop_map(|(project, requests)| Op::Abuse { project, requests }),
        (i(), 0u8..3, any::<bool>()).prop_map(|(project, emails, webhook)| Op::Alerts {
            project,
            emails,
            webhook
        }),
        (i(), 0u8..3, i()).prop_map(|(project, model, connection)| Op::Route {
            project,
            model,
            connection
        }),
        (i(), 0u8..3).prop_map(|(project, model)| Op::Unroute { project, model }),
        (i(), proptest::option::of(1u64..1000)).prop_map(|(key, rpm)| Op::KeyLimits { key, rpm }),
        (i(), proptest::option::of(1u64..1_000_000))
            .prop_map(|(project, budget)| Op::ProjectLimits { project, budget }),
        (0u8..3, any::<u64>(), proptest::option::weighted(0.1, i())).prop_map(
            |(model, input, tenant)| Op::Price {
                model,
                input,
                tenant
            }
        ),
        (0u8..3, proptest::option::weighted(0.1, i()))
            .prop_map(|(model, tenant)| Op::Unprice { model, tenant }),
        (i(), 0u8..4).prop_map(|(tenant, plan)| Op::PlanSet { tenant, plan }),
        (
            0u8..4,
            proptest::option::of(1u64..100),
            proptest::option::weighted(0.1, i())
        )
            .prop_map(|(plan, rpm, tenant)| Op::PlanDefined { plan, rpm, tenant }),
        (
            i(),
            proptest::option::of(proptest::collection::vec(i(), 1..3))
        )
            .prop_map(|(tenant, projects)| Op::Token { tenant, projects }),
        (i(), proptest::option::weighted(0.1, i()))
            .prop_map(|(token, foreign)| Op::TokenRevoked { token, foreign }),
        (i(), 1_700_000_000i64..1_900_000_000)
            .prop_map(|(key, retires_at)| Op::KeyRotated { key, retires_at }),
    ]
}

fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()].clone())
}

/// The envelopes the ops stand for.
fn envelopes(ops: &[Op]) -> Vec<Envelope> {
    let mut tenants: Vec<TenantId> = Vec::new();
    let mut projects: Vec<(TenantId, ProjectId)> = Vec::new();
    let mut connections: Vec<(TenantId, ProjectId, ConnectionId)> = Vec::new();
    let mut keys: Vec<(TenantId, ProjectId, KeyId)> = Vec::new();
    let mut tokens: Vec<(TenantId, TokenId)> = Vec::new();
    let mut out = Vec::new();
    let mut n = 0u8;
    for op in ops {
        n = n.wrapping_add(1);
        let ev = match op.clone() {
            Op::Tenant => {
                let t = TenantId::generate();
                tenants.push(t.clone());
                Some((
                    t,
                    Event::TenantCreated(TenantCreatedV2 {
                        plan: None,
                        name: format!("t{n}"),
                    }),
                ))
            }
            Op::Project { tenant } => pick(&tenants, tenant).map(|t| {
                let p = ProjectId::generate();
                projects.push((t.clone(), p.clone()));
                (
                    t,
                    Event::ProjectCreated(ProjectCreatedV1 {
                        project_id: p,
                        name: "p".into(),
                    }),
                )
            }),
            Op::Connection { project, foreign } => pick(&projects, project).map(|(t, p)| {
                let c = ConnectionId::generate(Provider::Openai);
                let t = foreign.and_then(|f| pick(&tenants, f)).unwrap_or(t);
                connections.push((t.clone(), p.clone(), c.clone()));
                (
                    t,
                    Event::ConnectionCreated(ConnectionCreatedV3 {
                        connection_id: c,
                        project_id: p,
                        provider: Provider::Openai,
                        name: "c".into(),
                        base_url: n
                            .is_multiple_of(2)
                            .then(|| "https://llm.example.com/v1".into()),
                        api_key: sealed(n),
                        openai_organization: n.is_multiple_of(3).then(|| "org-x".into()),
                        openai_project: None,
                        api_version: None,
                    }),
                )
            }),
            Op::Rotate { connection } | Op::Rewrap { connection } => pick(&connections, connection)
                .map(|(t, p, c)| {
                    let data = ConnectionKeySealedV1 {
                        connection_id: c,
                        project_id: p,
                        api_key: sealed(n),
                    };
                    let event = if matches!(op, Op::Rotate { .. }) {
                        Event::ConnectionKeyRotated(data)
                    } else {
                        Event::ConnectionKeyRewrapped(data)
                    };
                    (t, event)
                }),
            Op::Key {
                project,
                connections: cs,
                foreign,
            } => pick(&projects, project).map(|(t, p)| {
                let k = KeyId::generate();
                let t = foreign.and_then(|f| pick(&tenants, f)).unwrap_or(t);
                keys.push((t.clone(), p.clone(), k.clone()));
                let connection_ids = cs
                    .iter()
                    .filter_map(|i| pick(&connections, *i))
                    .map(|c| c.2)
                    .collect();
                (
                    t,
                    Event::KeyIssued(KeyIssuedV4 {
                        key_id: k.clone(),
                        project_id: p,
                        name: "k".into(),
                        key_hash: format!("{:064x}", n),
                        hint: "SG_…ab".into(),
                        connection_ids,
                        locks: LocksV2::default(),
                        limits: LimitsData {
                            concurrent: n.is_multiple_of(2).then_some(u64::from(n)),
                            ..LimitsData::default()
                        },
                    }),
                )
            }),
            Op::Locks {
                key,
                models,
                ip_off,
                geo_auto,
            } => pick(&keys, key).map(|(t, p, k)| {
                let locks = LocksV2 {
                    ip: if ip_off {
                        IpLockData::Off {}
                    } else {
                        IpLockData::AutoBind {}
                    },
                    geo: geo_auto.then(|| GeoLockDataV2 {
                        mode: Some(GeoModeData::AutoBind),
                        level: Some(if ip_off {
                            GeoLevelData::City
                        } else {
                            GeoLevelData::Country
                        }),
                        ..GeoLockDataV2::default()
                    }),
                    models: models.map(|m| m.iter().map(|i| format!("m{i}")).collect()),
                    ..LocksV2::default()
                };
                (
                    t,
                    Event::KeyLocksSet(KeyLocksSetV2 {
                        key_id: k,
                        project_id: p,
                        locks,
                    }),
                )
            }),
            Op::Bind {
                key,
                ip,
                device,
                place,
            } => pick(&keys, key).map(|(t, p, k)| {
                (
                    t,
                    Event::KeyBound(KeyBoundV2 {
                        key_id: k,
                        project_id: p,
                        ip: ip.map(|o| std::net::IpAddr::from([10, 0, 0, o])),
                        device: device.map(|d| format!("dev-{d}")),
                        place: place.map(|i| PlaceData {
                            country: ["DE", "FR", "JP"][usize::from(i) % 3].into(),
                            city: (i == 0).then(|| "Berlin".into()),
                        }),
                        request_id: None,
                    }),
                )
            }),
            Op::Unbind {
                key,
                ip,
                device,
                place,
            } => pick(&keys, key).map(|(t, p, k)| {
                (
                    t,
                    Event::KeyUnbound(KeyUnboundV2 {
                        key_id: k,
                        project_id: p,
                        ip,
                        device,
                        place,
                    }),
                )
            }),
            Op::Suspend { key, verdict } => pick(&keys, key).map(|(t, p, k)| {
                (
                    t,
                    Event::KeySuspended(KeySuspendedV1 {
                        verdict_id: format!("{k}:velocity:{verdict}"),
                        key_id: k,
                        project_id: p,
                        until: 1_800_000_000 + i64::from(verdict),
                        rule: "velocity".into(),
                        reason: "r".into(),
                    }),
                )
            }),
            Op::Resume { key, verdict } => pick(&keys, key).map(|(t, p, k)| {
                (
                    t,
                    Event::KeyResumed(KeyResumedV1 {
                        verdict_id: format!("{k}:velocity:{verdict}"),
                        key_id: k,
                        project_id: p,
                        early: verdict == 0,
                    }),
                )
            }),
            Op::Abuse { project, requests } => pick(&projects, project).map(|(t, p)| {
                let mut settings = sg_abuse::AbuseSettings::default();
                settings.velocity.requests = requests;
                (
                    t,
                    Event::ProjectAbuseSet(ProjectAbuseSetV1 {
                        project_id: p,
                        settings: (&settings).into(),
                    }),
                )
            }),
            Op::Alerts {
                project,
                emails,
                webhook,
            } => pick(&projects, project).map(|(t, p)| {
                (
                    t,
                    Event::ProjectAlertsSet(ProjectAlertsSetV1 {
                        project_id: p,
                        emails: (0..emails).map(|i| format!("o{i}@example.com")).collect(),
                        webhooks: webhook
                            .then(|| WebhookData {
                                id: format!("wh_{n}"),
                                url: "https://hooks.example.com/sg".into(),
                                secret: sealed(n),
                            })
                            .into_iter()
                            .collect(),
                    }),
                )
            }),
            Op::Revoke { key } => pick(&keys, key).map(|(t, p, k)| {
                (
                    t,
                    Event::KeyRevoked(KeyRevokedV1 {
                        key_id: k,
                        project_id: p,
                        reason: None,
                    }),
                )
            }),
            Op::Route {
                project,
                model,
                connection,
            } => match (pick(&projects, project), pick(&connections, connection)) {
                (Some((t, p)), Some(c)) => Some((
                    t,
                    Event::ModelRouted(ModelRoutedV1 {
                        project_id: p,
                        model: format!("m{model}"),
                        connection_id: c.2,
                        upstream_model: format!("up-{model}"),
                    }),
                )),
                _ => None,
            },
            Op::Unroute { project, model } => pick(&projects, project).map(|(t, p)| {
                (
                    t,
                    Event::ModelUnrouted(ModelUnroutedV1 {
                        project_id: p,
                        model: format!("m{model}"),
                    }),
                )
            }),
            Op::KeyLimits { key, rpm } => pick(&keys, key).map(|(t, p, k)| {
                (
                    t,
                    Event::KeyLimitsSet(KeyLimitsSetV1 {
                        key_id: k,
                        project_id: p,
                        limits: LimitsData {
                            rpm,
                            ..LimitsData::default()
                        },
                    }),
                )
            }),
            Op::ProjectLimits { project, budget } => pick(&projects, project).map(|(t, p)| {
                (
                    t,
                    Event::ProjectLimitsSet(ProjectLimitsSetV1 {
                        project_id: p,
                        limits: LimitsData {
                            budget: budget.map(|micros| wire::BudgetData {
                                micros,
                                period: wire::PeriodData::Month,
                            }),
                            ..LimitsData::default()
                        },
                    }),
                )
            }),
            Op::Price {
                model,
                input,
                tenant,
            } => Some((
                tenant
                    .and_then(|i| pick(&tenants, i))
                    .unwrap_or_else(TenantId::operator),
                Event::PriceSet(PriceSetV1 {
                    model: format!("m{model}"),
                    price: PriceData {
                        input_micros_per_mtok: input,
                        output_micros_per_mtok: input / 2,
                        cached_input_micros_per_mtok: None,
                    },
                }),
            )),
            Op::Unprice { model, tenant } => Some((
                tenant
                    .and_then(|i| pick(&tenants, i))
                    .unwrap_or_else(TenantId::operator),
                Event::PriceRemoved(PriceRemovedV1 {
                    model: format!("m{model}"),
                }),
            )),
            Op::PlanSet { tenant, plan } => pick(&tenants, tenant).map(|t| {
                (
                    t,
                    Event::TenantPlanSet(TenantPlanSetV1 {
                        plan: ["free", "pro", "team", "custom"][usize::from(plan)].into(),
                    }),
                )
            }),
            Op::PlanDefined { plan, rpm, tenant } => Some((
                tenant
                    .and_then(|i| pick(&tenants, i))
                    .unwrap_or_else(TenantId::operator),
                Event::PlanDefined(PlanDefinedV1 {
                    name: ["free", "pro", "team", "custom"][usize::from(plan)].into(),
                    terms: PlanData {
                        max_connections: Some(u32::from(plan) + 1),
                        features: vec!["ip".into(), "model".into()],
                        key_rpm: rpm,
                        key_rpd: None,
                    },
                }),
            )),
            Op::Token {
                tenant,
                projects: scope,
            } => pick(&tenants, tenant).map(|t| {
                n = n.wrapping_add(1);
                let id = TokenId::generate();
                tokens.push((t.clone(), id.clone()));
                (
                    t,
                    Event::TokenIssued(TokenIssuedV1 {
                        token_id: id,
                        name: format!("tok{n}"),
                        role: Role::Admin,
                        // Any project, possibly another tenant's (refused by the fold).
                        project_ids: scope.map(|ps| {
                            ps.into_iter()
                                .filter_map(|i| pick(&projects, i).map(|(_, p)| p))
                                .collect()
                        }),
                        token_hash: format!("tokhash{n}"),
                        hint: "SGA_…abcd".into(),
                        expires_at: None,
                    }),
                )
            }),
            Op::TokenRevoked { token, foreign } => pick(&tokens, token).map(|(t, id)| {
                (
                    foreign.and_then(|i| pick(&tenants, i)).unwrap_or(t),
                    Event::TokenRevoked(TokenRevokedV1 {
                        token_id: id,
                        reason: None,
                    }),
                )
            }),
            Op::KeyRotated { key, retires_at } => pick(&keys, key).map(|(t, p, k)| {
                n = n.wrapping_add(1);
                let new = KeyId::generate();
                keys.push((t.clone(), p.clone(), new.clone()));
                (
                    t,
                    Event::KeyRotated(KeyRotatedV1 {
                        key_id: k,
                        project_id: p,
                        new_key_id: new,
                        key_hash: format!("rotated{n}"),
                        hint: "SG_…wxyz".into(),
                        retires_at,
                    }),
                )
            }),
        };
        if let Some((t, e)) = ev {
            out.push(Envelope::new(t, Actor::operator(), e));
        }
    }
    out
}

fn fold(envelopes: &[Envelope]) -> State {
    let mut s = State::new();
    for (i, e) in envelopes.iter().enumerate() {
        let _ = s.apply(i as u64 + 1, &e.subject(), e);
    }
    s
}

async fn through_the_log(envelopes: &[Envelope]) -> (State, State) {
    let log: Arc<dyn EventLog> = Arc::new(SqliteLog::open_in_memory().await.unwrap());
    for e in envelopes {
        log.append(Append {
            subject: e.subject(),
            payload: sg_events::encode(e).into(),
            expected_last_subject_seq: None,
            msg_id: None,
        })
        .await
        .unwrap();
    }
    let n = envelopes.len() as u64;
    let (a, task_a) = Replica::spawn(log.clone(), None);
    let (b, task_b) = Replica::spawn(log, None);
    assert!(
        a.wait_for(n, Duration::from_secs(10)).await,
        "replica a did not fold {n} events"
    );
    assert!(
        b.wait_for(n, Duration::from_secs(10)).await,
        "replica b did not fold {n} events"
    );
    let states = (a.state().clone(), b.state().clone());
    task_a.abort();
    task_b.abort();
    states
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_fold_of_the_same_log_is_the_same(ops in prop::collection::vec(op(), 1..80)) {
        let envelopes = envelopes(&ops);
        let direct = fold(&envelopes);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (a, b) = runtime.block_on(through_the_log(&envelopes));
        prop_assert_eq!(&a, &direct);
        prop_assert_eq!(&b, &direct);
    }
}

#[test]
fn the_generator_covers_every_control_event_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let ops = prop::collection::vec(op(), 60..80)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        for e in envelopes(&ops) {
            seen.insert(e.event.type_name());
        }
    }
    let control: Vec<&str> = EVENT_TYPES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            !matches!(
                *name,
                "usage.recorded"
                    | "lock.violated"
                    | "budget.threshold"
                    | "budget.reset"
                    | "alert.raised"
                    | "alert.delivered"
            )
        })
        .collect();
    for name in control {
        assert!(seen.contains(name), "the generator never makes {name}");
    }
}
