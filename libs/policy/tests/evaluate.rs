#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use sg_policy::signature::{body_sha256, public_key_from_seed, sign, verify};
use sg_policy::{
    CityRef, Decision, DenyCode, DeviceLock, Geo, GeoLock, IpLock, KeyLocks, RequestFacts,
    RequestModel, SignatureLock, SignedRequest, evaluate, evaluate_before_body,
};
use sha2::{Digest, Sha256};

fn base_facts() -> RequestFacts<'static> {
    RequestFacts {
        client_ip: ip("1.2.3.4"),
        geo: None,
        device_fingerprint: None,
        model: RequestModel::NoModel,
        signature: None,
        now: NOW,
    }
}

fn open_locks() -> KeyLocks {
    KeyLocks {
        ip: IpLock::Off,
        ..KeyLocks::default()
    }
}

fn code(d: &Decision) -> Option<DenyCode> {
    d.denial().map(|d| d.code)
}

fn allow_plain() -> Decision {
    Decision::Allow {
        bind_ip: None,
        bind_device: None,
        bind_place: None,
        replay_id: None,
    }
}

/// Position of the rule that produced a code.
fn rule_index(code: DenyCode) -> usize {
    match code {
        DenyCode::KeyExpired => 0,
        DenyCode::IpNotAllowed => 1,
        DenyCode::CityNotAllowed => 2,
        DenyCode::DeviceNotAllowed | DenyCode::DeviceRequired => 3,
        DenyCode::ModelNotAllowed | DenyCode::ModelRequired | DenyCode::EndpointNotAllowed => 4,
        DenyCode::SignatureRequired | DenyCode::SignatureInvalid | DenyCode::SignatureExpired => 5,
    }
}

/// Turns off the lock responsible for a code.
fn clear_rule(locks: &mut KeyLocks, code: DenyCode) {
    match rule_index(code) {
        0 => locks.expires_at = None,
        1 => locks.ip = IpLock::Off,
        2 => locks.geo = None,
        3 => locks.device = DeviceLock::Off,
        4 => locks.models = None,
        _ => locks.signature = None,
    }
}

/// Client address, geo, fingerprint, model, signature, now, locks.
type Case = (
    std::net::IpAddr,
    Option<Geo>,
    Option<String>,
    Option<String>,
    Option<SigInput>,
    i64,
    KeyLocks,
);

fn any_facts_and_locks() -> impl Strategy<Value = Case> {
    (prop_oneof![(NOW - 10..NOW + 10), any::<i64>()], key_locks()).prop_flat_map(|(now, locks)| {
        (
            pool_ip(),
            proptest::option::of(geo()),
            proptest::option::of(prop_oneof![pool_device(), Just(String::new())]),
            proptest::option::of(prop_oneof![pool_model(), Just("other".to_owned())]),
            proptest::option::of(sig_input(now)),
            Just(now),
            Just(locks),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn evaluate_invariants(
        (client_ip, geo, device, model, sig, now, locks) in any_facts_and_locks()
    ) {
        let signed = sig.as_ref().map(SigInput::as_signed);
        let facts = RequestFacts {
            client_ip,
            geo: geo.as_ref(),
            device_fingerprint: device.as_deref(),
            model: model.as_deref().map_or(RequestModel::NoModel, RequestModel::Named),
            signature: signed.as_ref(),
            now,
        };
        let decision = evaluate(&facts, &locks);

        // The check before the body refuses exactly what the whole evaluation refuses
        // by rules 1 to 5, with the same code.
        let early = evaluate_before_body(&facts, &locks).err().map(|d| d.code);
        match code(&decision) {
            Some(c) if rule_index(c) < 5 => prop_assert_eq!(early, Some(c)),
            _ => prop_assert_eq!(early, None),
        }

        // Expired keys are always refused, before anything else.
        if locks.expires_at.is_some_and(|e| now >= e) {
            prop_assert_eq!(code(&decision), Some(DenyCode::KeyExpired));
        }

        match &decision {
            Decision::Allow { bind_ip, bind_device, bind_place, replay_id } => {
                let auto_geo = locks.geo.as_ref().and_then(|g| g.auto_bind);
                prop_assert_eq!(
                    bind_place.is_some(),
                    auto_geo.is_some() && locks.bound_place.is_none()
                );
                if let Some(p) = bind_place {
                    let g = geo.as_ref().unwrap();
                    prop_assert!(p.country.eq_ignore_ascii_case(g.country.as_deref().unwrap()));
                    prop_assert_eq!(p.city.is_some(), auto_geo == Some(sg_policy::GeoLevel::City));
                }
                let ip_unbound = locks.ip == IpLock::AutoBind && locks.bound_ip.is_none();
                prop_assert_eq!(bind_ip.is_some(), ip_unbound);
                if let Some(b) = bind_ip {
                    prop_assert_eq!(*b, client_ip.to_canonical());
                }
                let dev_unbound =
                    locks.device == DeviceLock::AutoBind && locks.bound_device.is_none();
                prop_assert_eq!(bind_device.is_some(), dev_unbound);
                if let Some(b) = bind_device {
                    prop_assert_eq!(Some(b.as_str()), device.as_deref());
                }
                prop_assert_eq!(replay_id.is_some(), locks.signature.is_some());
                if let Some(id) = replay_id {
                    let sig = signed.unwrap();
                    prop_assert_eq!(id, &hex::encode(Sha256::digest(sig.signature)));
                    prop_assert!(sig.timestamp.abs_diff(now) <= 300);
                    prop_assert!(verify(locks.signature.as_ref().unwrap(), &sig));
                }
                // Removing any lock keeps an allowed request allowed.
                for c in [DenyCode::KeyExpired, DenyCode::IpNotAllowed, DenyCode::CityNotAllowed,
                          DenyCode::DeviceRequired, DenyCode::ModelNotAllowed,
                          DenyCode::SignatureRequired] {
                    let mut relaxed = locks.clone();
                    clear_rule(&mut relaxed, c);
                    prop_assert!(evaluate(&facts, &relaxed).is_allow());
                }
            }
            Decision::Deny(denial) => {
                prop_assert!(!denial.message.is_empty());
                // The refusal is attributable to a lock that is set, and
                // clearing that lock moves on to a later rule or allows.
                let idx = rule_index(denial.code);
                let mut relaxed = locks.clone();
                clear_rule(&mut relaxed, denial.code);
                prop_assert_ne!(&relaxed, &locks);
                let next = evaluate(&facts, &relaxed);
                if let Some(next_code) = code(&next) {
                    prop_assert!(rule_index(next_code) > idx, "{:?} then {:?}", denial.code, next_code);
                }
                // Secrets and bindings are never echoed.
                // (Short random strings may occur in the fixed text.)
                if let Some(bound) = locks.bound_device.as_ref().filter(|b| b.len() >= 5) {
                    prop_assert!(!denial.message.contains(bound.as_str()));
                }
                if let DeviceLock::Fixed(fp) = &locks.device
                    && fp.len() >= 5
                {
                    prop_assert!(!denial.message.contains(fp.as_str()));
                }
                if let Some(bound) = locks.bound_ip {
                    let bound = bound.to_canonical().to_string();
                    if !client_ip.to_canonical().to_string().contains(&bound) {
                        prop_assert!(!denial.message.contains(&bound));
                    }
                }
            }
        }
    }

    /// A valid signature over one request verifies for no other method,
    /// path, body or timestamp.
    #[test]
    fn signature_binds_every_field(
        seed in any::<[u8; 32]>(),
        ts in NOW - 100..NOW + 100,
        other_ts in NOW - 100..NOW + 100,
        method in "[A-Z]{3,7}",
        other_method in "[A-Z]{3,7}",
        path in "/[a-z0-9/?=&]{0,20}",
        other_path in "/[a-z0-9/?=&]{0,20}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
        other_body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let lock = SignatureLock { public_key: public_key_from_seed(&seed) };
        let body_hash = body_sha256(&body);
        let signature = sign(&seed, ts, &method, &path, &body_hash);
        let req = SignedRequest {
            timestamp: ts,
            signature,
            method: &method,
            path_and_query: &path,
            body_sha256: body_hash,
        };
        prop_assert!(verify(&lock, &req));
        prop_assert_eq!(verify(&lock, &SignedRequest { timestamp: other_ts, ..req }), ts == other_ts);
        prop_assert_eq!(
            verify(&lock, &SignedRequest { method: &other_method, ..req }),
            method == other_method
        );
        prop_assert_eq!(
            verify(&lock, &SignedRequest { path_and_query: &other_path, ..req }),
            path == other_path
        );
        prop_assert_eq!(
            verify(&lock, &SignedRequest { body_sha256: body_sha256(&other_body), ..req }),
            body == other_body
        );

        // Through `evaluate`, a tampered field is an invalid signature.
        let locks = KeyLocks { signature: Some(lock), ..open_locks() };
        let tampered = SignedRequest { timestamp: ts + 1, ..req };
        let facts = RequestFacts { signature: Some(&tampered), now: ts, ..base_facts() };
        prop_assert_eq!(code(&evaluate(&facts, &locks)), Some(DenyCode::SignatureInvalid));
        let facts = RequestFacts { signature: Some(&req), now: ts, ..base_facts() };
        prop_assert!(evaluate(&facts, &locks).is_allow());
    }
}

fn signed_at(ts: i64) -> (SignatureLock, [u8; 64]) {
    let seed = [5u8; 32];
    let sig = sign(
        &seed,
        ts,
        "POST",
        "/v1/chat/completions",
        &body_sha256(b"{}"),
    );
    (
        SignatureLock {
            public_key: public_key_from_seed(&seed),
        },
        sig,
    )
}

#[test]
fn signature_skew_window() {
    for (delta, ok) in [
        (0, true),
        (299, true),
        (-299, true),
        (300, true),
        (-300, true),
        (301, false),
        (-301, false),
        (100_000, false),
    ] {
        let ts = NOW + delta;
        let (lock, signature) = signed_at(ts);
        let req = SignedRequest {
            timestamp: ts,
            signature,
            method: "POST",
            path_and_query: "/v1/chat/completions",
            body_sha256: body_sha256(b"{}"),
        };
        let locks = KeyLocks {
            signature: Some(lock),
            ..open_locks()
        };
        let facts = RequestFacts {
            signature: Some(&req),
            ..base_facts()
        };
        let d = evaluate(&facts, &locks);
        if ok {
            let Decision::Allow { replay_id, .. } = d else {
                panic!("delta {delta}: {d:?}")
            };
            assert_eq!(
                replay_id.unwrap(),
                hex::encode(Sha256::digest(signature)),
                "delta {delta}"
            );
        } else {
            assert_eq!(code(&d), Some(DenyCode::SignatureExpired), "delta {delta}");
        }
    }
}

#[test]
fn extreme_timestamps_do_not_overflow() {
    for (now, ts) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (0, i64::MAX)] {
        let (lock, signature) = signed_at(ts);
        let req = SignedRequest {
            timestamp: ts,
            signature,
            method: "POST",
            path_and_query: "/v1/chat/completions",
            body_sha256: body_sha256(b"{}"),
        };
        let locks = KeyLocks {
            signature: Some(lock),
            ..open_locks()
        };
        let facts = RequestFacts {
            signature: Some(&req),
            now,
            ..base_facts()
        };
        assert_eq!(
            code(&evaluate(&facts, &locks)),
            Some(DenyCode::SignatureExpired)
        );
    }
}

#[test]
fn signature_required_and_invalid() {
    let (lock, mut signature) = signed_at(NOW);
    let locks = KeyLocks {
        signature: Some(lock),
        ..open_locks()
    };
    assert_eq!(
        code(&evaluate(&base_facts(), &locks)),
        Some(DenyCode::SignatureRequired)
    );
    signature[63] ^= 0x01;
    let req = SignedRequest {
        timestamp: NOW,
        signature,
        method: "POST",
        path_and_query: "/v1/chat/completions",
        body_sha256: body_sha256(b"{}"),
    };
    let facts = RequestFacts {
        signature: Some(&req),
        ..base_facts()
    };
    assert_eq!(
        code(&evaluate(&facts, &locks)),
        Some(DenyCode::SignatureInvalid)
    );
    // A signature by another key is invalid too.
    let other = sign(
        &[6u8; 32],
        NOW,
        "POST",
        "/v1/chat/completions",
        &body_sha256(b"{}"),
    );
    let req = SignedRequest {
        signature: other,
        ..req
    };
    let facts = RequestFacts {
        signature: Some(&req),
        ..base_facts()
    };
    assert_eq!(
        code(&evaluate(&facts, &locks)),
        Some(DenyCode::SignatureInvalid)
    );
}

#[test]
fn method_is_signed_upper_case() {
    let seed = [8u8; 32];
    let lock = SignatureLock {
        public_key: public_key_from_seed(&seed),
    };
    let sig = sign(&seed, NOW, "post", "/x", &body_sha256(b""));
    let req = SignedRequest {
        timestamp: NOW,
        signature: sig,
        method: "POST",
        path_and_query: "/x",
        body_sha256: body_sha256(b""),
    };
    assert!(verify(&lock, &req));
}

#[test]
fn expiry_boundary() {
    let locks = KeyLocks {
        expires_at: Some(NOW),
        ..open_locks()
    };
    assert_eq!(
        code(&evaluate(&base_facts(), &locks)),
        Some(DenyCode::KeyExpired)
    );
    let locks = KeyLocks {
        expires_at: Some(NOW + 1),
        ..open_locks()
    };
    assert_eq!(evaluate(&base_facts(), &locks), allow_plain());
}

#[test]
fn ip_locks() {
    let allow = KeyLocks {
        ip: IpLock::Allow(vec![
            "1.2.3.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]),
        bound_ip: Some(ip("9.9.9.9")),
        ..KeyLocks::default()
    };
    assert_eq!(evaluate(&base_facts(), &allow), allow_plain());
    let facts = RequestFacts {
        client_ip: ip("::ffff:1.2.3.200"),
        ..base_facts()
    };
    assert_eq!(evaluate(&facts, &allow), allow_plain());
    let facts = RequestFacts {
        client_ip: ip("1.2.4.1"),
        ..base_facts()
    };
    let d = evaluate(&facts, &allow);
    assert_eq!(code(&d), Some(DenyCode::IpNotAllowed));
    assert!(d.denial().unwrap().message.contains("1.2.4.1"));

    let bound = KeyLocks {
        bound_ip: Some(ip("5.6.7.8")),
        ..KeyLocks::default()
    };
    let d = evaluate(&base_facts(), &bound);
    assert_eq!(code(&d), Some(DenyCode::IpNotAllowed));
    let msg = &d.denial().unwrap().message;
    assert!(msg.contains("bound to another IP address"));
    assert!(!msg.contains("5.6.7.8"));

    // `Off` ignores a stale binding and never proposes one.
    let off = KeyLocks {
        ip: IpLock::Off,
        bound_ip: Some(ip("5.6.7.8")),
        ..KeyLocks::default()
    };
    assert_eq!(evaluate(&base_facts(), &off), allow_plain());
}

#[test]
fn auto_bind_is_not_proposed_when_a_later_rule_refuses() {
    let locks = KeyLocks {
        models: Some(vec!["m1".into()]),
        ..KeyLocks::default()
    };
    let facts = RequestFacts {
        model: RequestModel::Named("m2"),
        ..base_facts()
    };
    assert_eq!(
        code(&evaluate(&facts, &locks)),
        Some(DenyCode::ModelNotAllowed)
    );
}

#[test]
fn model_allow_list() {
    let locks = KeyLocks {
        models: Some(vec!["gpt-4o-mini".into(), "claude-3-5-haiku".into()]),
        ..open_locks()
    };
    use RequestModel::*;
    for (model, expected) in [
        (Named("gpt-4o-mini"), None),
        (Named("claude-3-5-haiku"), None),
        (NoModel, None),
        (Named("gpt-4o"), Some(DenyCode::ModelNotAllowed)),
        (Named("GPT-4O-MINI"), Some(DenyCode::ModelNotAllowed)),
        (Named("gpt-4o-mini "), Some(DenyCode::ModelNotAllowed)),
        (Named(""), Some(DenyCode::ModelNotAllowed)),
        // The provider would choose a model nobody checked.
        (Unnamed, Some(DenyCode::ModelRequired)),
        // A batch names its models in a file the gateway does not read.
        (Unchecked, Some(DenyCode::EndpointNotAllowed)),
    ] {
        let facts = RequestFacts {
            model,
            ..base_facts()
        };
        let d = evaluate(&facts, &locks);
        assert_eq!(code(&d), expected, "{model:?}");
        // The same facts refuse the same way before the body (where the gateway
        // knows the endpoint but not yet the named model).
        let early = evaluate_before_body(&facts, &locks).err().map(|d| d.code);
        assert_eq!(early, expected, "{model:?} before the body");
    }
    // Without an allow-list every endpoint and every model passes.
    for model in [Unnamed, Unchecked, Named("anything")] {
        let facts = RequestFacts {
            model,
            ..base_facts()
        };
        assert!(evaluate(&facts, &open_locks()).is_allow());
    }
    let none_allowed = KeyLocks {
        models: Some(vec![]),
        ..open_locks()
    };
    let facts = RequestFacts {
        model: RequestModel::Named("m1"),
        ..base_facts()
    };
    assert!(!evaluate(&facts, &none_allowed).is_allow());
    assert!(evaluate(&base_facts(), &none_allowed).is_allow());
}

#[test]
fn geo_lock() {
    let locks = KeyLocks {
        geo: Some(GeoLock {
            countries: vec!["DE".into()],
            cities: vec![
                CityRef {
                    country: "US".into(),
                    city: "New York".into(),
                },
                CityRef {
                    country: "CH".into(),
                    city: "Zürich".into(),
                },
            ],
            auto_bind: None,
        }),
        ..open_locks()
    };
    let geo = |country: Option<&str>, city: Option<&str>| Geo {
        country: country.map(str::to_owned),
        city: city.map(str::to_owned),
    };
    let cases = [
        (Some(geo(Some("DE"), None)), true),
        (Some(geo(Some("DE"), Some("Munich"))), true),
        (Some(geo(Some("de"), None)), true),
        (Some(geo(Some("US"), Some("new york"))), true),
        (Some(geo(Some("US"), Some("NEW YORK"))), true),
        (Some(geo(Some("CH"), Some("ZÜRICH"))), true),
        (Some(geo(Some("US"), Some("Boston"))), false),
        (Some(geo(Some("US"), None)), false),
        (Some(geo(Some("GB"), Some("New York"))), false),
        (Some(geo(None, Some("New York"))), false),
        (Some(geo(None, None)), false),
        (None, false),
    ];
    for (g, ok) in cases {
        let facts = RequestFacts {
            geo: g.as_ref(),
            ..base_facts()
        };
        let d = evaluate(&facts, &locks);
        assert_eq!(d.is_allow(), ok, "{g:?}");
        if !ok {
            assert_eq!(code(&d), Some(DenyCode::CityNotAllowed));
        }
    }
    // An unplaceable address is refused with a message saying so.
    let d = evaluate(&base_facts(), &locks);
    assert!(
        d.denial()
            .unwrap()
            .message
            .contains("could not be determined")
    );

    // A lock with nothing in it restricts nothing.
    let empty = KeyLocks {
        geo: Some(GeoLock::default()),
        ..open_locks()
    };
    assert!(evaluate(&base_facts(), &empty).is_allow());
}

#[test]
fn device_locks() {
    let fixed = KeyLocks {
        device: DeviceLock::Fixed("dev-secret-123".into()),
        ..open_locks()
    };
    let with = |fp: Option<&'static str>| RequestFacts {
        device_fingerprint: fp,
        ..base_facts()
    };
    assert_eq!(
        evaluate(&with(Some("dev-secret-123")), &fixed),
        allow_plain()
    );
    assert_eq!(
        code(&evaluate(&with(None), &fixed)),
        Some(DenyCode::DeviceRequired)
    );
    assert_eq!(
        code(&evaluate(&with(Some("")), &fixed)),
        Some(DenyCode::DeviceRequired)
    );
    let d = evaluate(&with(Some("dev-other")), &fixed);
    assert_eq!(code(&d), Some(DenyCode::DeviceNotAllowed));
    assert!(!d.denial().unwrap().message.contains("dev-secret-123"));

    let auto = KeyLocks {
        device: DeviceLock::AutoBind,
        ..open_locks()
    };
    assert_eq!(
        code(&evaluate(&with(None), &auto)),
        Some(DenyCode::DeviceRequired)
    );
    assert_eq!(
        evaluate(&with(Some("dev-a")), &auto),
        Decision::Allow {
            bind_ip: None,
            bind_device: Some("dev-a".into()),
            bind_place: None,
            replay_id: None
        }
    );
    let long = "x".repeat(257);
    let facts = RequestFacts {
        device_fingerprint: Some(&long),
        ..base_facts()
    };
    assert_eq!(
        code(&evaluate(&facts, &auto)),
        Some(DenyCode::DeviceNotAllowed)
    );

    let bound = KeyLocks {
        bound_device: Some("dev-a".into()),
        ..auto
    };
    assert_eq!(evaluate(&with(Some("dev-a")), &bound), allow_plain());
    assert_eq!(
        code(&evaluate(&with(Some("dev-b")), &bound)),
        Some(DenyCode::DeviceNotAllowed)
    );
}

#[test]
fn rule_order() {
    // Everything fails: expiry wins, then IP, then geo, ...
    let (lock, _) = signed_at(NOW);
    let mut locks = KeyLocks {
        ip: IpLock::Allow(vec![]),
        bound_ip: None,
        device: DeviceLock::Fixed("d".into()),
        bound_device: None,
        geo: Some(GeoLock {
            countries: vec!["DE".into()],
            cities: vec![],
            auto_bind: None,
        }),
        bound_place: None,
        models: Some(vec![]),
        signature: Some(lock),
        expires_at: Some(NOW),
    };
    let facts = RequestFacts {
        model: RequestModel::Named("m"),
        ..base_facts()
    };
    let mut seen = Vec::new();
    loop {
        let d = evaluate(&facts, &locks);
        let Some(c) = code(&d) else { break };
        seen.push(c);
        clear_rule(&mut locks, c);
    }
    assert_eq!(
        seen,
        [
            DenyCode::KeyExpired,
            DenyCode::IpNotAllowed,
            DenyCode::CityNotAllowed,
            DenyCode::DeviceRequired,
            DenyCode::ModelNotAllowed,
            DenyCode::SignatureRequired,
        ]
    );
}

/// Signature produced by the Python snippet in the crate docs (seed bytes
/// 0..32, timestamp 1700000000, `POST /v1/chat/completions?x=1`).
#[test]
fn python_reference_vector() {
    let seed: [u8; 32] = core::array::from_fn(|i| i as u8);
    let body = br#"{"model":"gpt-4o-mini"}"#;
    let (ts, sig) = sg_policy::parse_signature_headers(
        Some("1700000000"),
        Some(
            "oEK3aRuWx/uAx8I6Ryc6k6nqr4SS/nUJlSPpPYHEd52s824MS4z04B/sKAQ0zERFmBFRD0iOlPI4M/6SO1AbAg==",
        ),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        sign(
            &seed,
            ts,
            "post",
            "/v1/chat/completions?x=1",
            &body_sha256(body)
        ),
        sig
    );
    let public_key =
        sg_policy::signature::decode_public_key("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=")
            .unwrap();
    assert_eq!(public_key, public_key_from_seed(&seed));
    let req = SignedRequest {
        timestamp: ts,
        signature: sig,
        method: "POST",
        path_and_query: "/v1/chat/completions?x=1",
        body_sha256: body_sha256(body),
    };
    assert!(verify(&SignatureLock { public_key }, &req));
}

#[test]
fn keys_with_locks_fail_closed_when_the_node_is_stale() {
    // A new key (IP auto-bind) fails closed; a key with every lock off keeps working.
    assert!(KeyLocks::default().fails_closed_when_stale());
    assert!(!open_locks().fails_closed_when_stale());
    let with_models = KeyLocks {
        models: Some(vec!["m".into()]),
        ..open_locks()
    };
    assert!(with_models.fails_closed_when_stale());
    let expiring = KeyLocks {
        expires_at: Some(NOW + 1000),
        ..open_locks()
    };
    assert!(expiring.fails_closed_when_stale());
}

#[test]
fn geo_auto_bind() {
    use sg_policy::{GeoLevel, Place};
    let geo = |country: Option<&str>, city: Option<&str>| Geo {
        country: country.map(str::to_owned),
        city: city.map(str::to_owned),
    };
    let at = |g: Option<Geo>, locks: &KeyLocks| {
        let facts = RequestFacts {
            geo: g.as_ref(),
            ..base_facts()
        };
        evaluate(&facts, locks)
    };
    let lock = |level| KeyLocks {
        geo: Some(GeoLock {
            auto_bind: Some(level),
            ..GeoLock::default()
        }),
        ..open_locks()
    };
    let bind_place = |d: Decision| match d {
        Decision::Allow { bind_place, .. } => bind_place,
        Decision::Deny(d) => panic!("refused: {d}"),
    };

    // Unbound: the first place is proposed, at the lock's level.
    let country = lock(GeoLevel::Country);
    assert_eq!(
        bind_place(at(Some(geo(Some("de"), Some("Berlin"))), &country)),
        Some(Place {
            country: "DE".into(),
            city: None
        })
    );
    let city = lock(GeoLevel::City);
    assert_eq!(
        bind_place(at(Some(geo(Some("DE"), Some("Berlin"))), &city)),
        Some(Place {
            country: "DE".into(),
            city: Some("Berlin".into())
        })
    );
    // A place the database cannot resolve at the level binds nothing and is refused.
    for (g, locks) in [
        (None, &country),
        (Some(geo(None, Some("Berlin"))), &country),
        (Some(geo(Some(" "), None)), &country),
        (Some(geo(Some("DE"), None)), &city),
        (None, &city),
    ] {
        assert_eq!(code(&at(g, locks)), Some(DenyCode::CityNotAllowed));
    }

    // Bound: only the bound place passes, compared without case.
    let bound_country = KeyLocks {
        bound_place: Some(Place {
            country: "DE".into(),
            city: None,
        }),
        ..country.clone()
    };
    assert_eq!(
        bind_place(at(Some(geo(Some("de"), Some("Munich"))), &bound_country)),
        None
    );
    let d = at(Some(geo(Some("FR"), Some("Paris"))), &bound_country);
    assert_eq!(code(&d), Some(DenyCode::CityNotAllowed));
    let bound_city = KeyLocks {
        bound_place: Some(Place {
            country: "CH".into(),
            city: Some("Zürich".into()),
        }),
        ..city.clone()
    };
    assert_eq!(
        bind_place(at(Some(geo(Some("CH"), Some("ZÜRICH"))), &bound_city)),
        None
    );
    for g in [
        geo(Some("CH"), Some("Geneva")),
        geo(Some("DE"), Some("Zürich")),
    ] {
        assert_eq!(
            code(&at(Some(g), &bound_city)),
            Some(DenyCode::CityNotAllowed)
        );
    }
    // A later rule's refusal binds nothing.
    let with_models = KeyLocks {
        models: Some(vec![]),
        ..country
    };
    let facts = RequestFacts {
        geo: Some(&geo(Some("DE"), None)),
        model: RequestModel::Named("m1"),
        ..base_facts()
    };
    assert!(!evaluate(&facts, &with_models).is_allow());
    assert!(with_models.fails_closed_when_stale());
}
