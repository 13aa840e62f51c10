#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use sg_policy::signature::public_key_from_seed;
use sg_policy::{CityRef, DeviceLock, GeoLock, IpLock, KeyLocks, SignatureLock, evaluate};

fn parse(v: serde_json::Value) -> Result<KeyLocks, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[test]
fn full_shape() {
    let pk = public_key_from_seed(&[3u8; 32]);
    let locks = KeyLocks {
        ip: IpLock::Allow(vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]),
        bound_ip: Some(ip("203.0.113.9")),
        device: DeviceLock::Fixed("dev-7f3a".into()),
        bound_device: None,
        geo: Some(GeoLock {
            countries: vec!["DE".into()],
            cities: vec![CityRef {
                country: "US".into(),
                city: "New York".into(),
            }],
            auto_bind: None,
        }),
        bound_place: None,
        models: Some(vec!["gpt-4o-mini".into()]),
        signature: Some(SignatureLock { public_key: pk }),
        expires_at: Some(1_767_225_600),
    };
    let v = serde_json::to_value(&locks).unwrap();
    use base64::Engine as _;
    let pk_b64 = base64::engine::general_purpose::STANDARD.encode(pk);
    assert_eq!(
        v,
        json!({
            "ip": {"mode": "allow", "cidrs": ["203.0.113.0/24", "2001:db8::/32"]},
            "bound_ip": "203.0.113.9",
            "device": {"mode": "fixed", "fingerprint": "dev-7f3a"},
            "bound_device": null,
            "geo": {"countries": ["DE"], "cities": [{"country": "US", "city": "New York"}]},
            "bound_place": null,
            "models": ["gpt-4o-mini"],
            "signature": {"public_key": pk_b64},
            "expires_at": 1_767_225_600
        })
    );
    assert_eq!(parse(v).unwrap(), locks);
}

#[test]
fn defaults_and_modes() {
    let d = parse(json!({})).unwrap();
    assert_eq!(d, KeyLocks::default());
    assert_eq!(d.ip, IpLock::AutoBind);
    assert_eq!(d.device, DeviceLock::Off);
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        json!({
            "ip": {"mode": "auto_bind"}, "bound_ip": null,
            "device": {"mode": "off"}, "bound_device": null,
            "geo": null, "bound_place": null, "models": null, "signature": null,
            "expires_at": null
        })
    );
    assert_eq!(
        parse(json!({"ip": {"mode": "off"}})).unwrap().ip,
        IpLock::Off
    );
    assert_eq!(
        parse(json!({"device": {"mode": "auto_bind"}}))
            .unwrap()
            .device,
        DeviceLock::AutoBind
    );
    // Bare addresses are single hosts.
    assert_eq!(
        parse(json!({"ip": {"mode": "allow", "cidrs": ["1.2.3.4", "::1"]}}))
            .unwrap()
            .ip,
        IpLock::Allow(vec![
            "1.2.3.4/32".parse().unwrap(),
            "::1/128".parse().unwrap()
        ])
    );
    // Lower-case country codes are normalized; lists default to empty.
    let g = parse(json!({"geo": {"countries": ["de"]}}))
        .unwrap()
        .geo
        .unwrap();
    assert_eq!(g.countries, ["DE"]);
    assert!(g.cities.is_empty());
    // Public keys may come unpadded.
    let pk = public_key_from_seed(&[3u8; 32]);
    use base64::Engine as _;
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(pk);
    assert_eq!(
        parse(json!({"signature": {"public_key": unpadded}}))
            .unwrap()
            .signature
            .unwrap()
            .public_key,
        pk
    );
}

#[test]
fn refuses_unknown_and_invalid() {
    for bad in [
        json!({"unknown": 1}),
        json!({"ip": {"mode": "off", "cidrs": []}}),
        json!({"ip": {"mode": "auto_bind", "x": 1}}),
        json!({"ip": {"mode": "allow"}}),
        json!({"ip": {"mode": "allow", "cidrs": ["1.2.3.0/33"]}}),
        json!({"ip": {"mode": "allow", "cidrs": ["example.com"]}}),
        json!({"ip": {"mode": "allow", "cidrs": [42]}}),
        json!({"ip": {"mode": "sometimes"}}),
        json!({"ip": "off"}),
        json!({"device": {"mode": "fixed"}}),
        json!({"device": {"mode": "fixed", "fingerprint": ""}}),
        json!({"device": {"mode": "fixed", "fingerprint": "x".repeat(257)}}),
        json!({"device": {"mode": "off", "fingerprint": "a"}}),
        json!({"geo": {"countries": ["DEU"]}}),
        json!({"geo": {"countries": ["D1"]}}),
        json!({"geo": {"cities": [{"country": "DE"}]}}),
        json!({"geo": {"cities": [{"country": "DE", "city": " "}]}}),
        json!({"geo": {"cities": [{"country": "DE", "city": "Berlin", "x": 1}]}}),
        json!({"geo": {"regions": []}}),
        json!({"signature": {"public_key": "AAAA"}}),
        json!({"signature": {"public_key": "not base64!"}}),
        json!({"signature": {"public_key": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}),
        json!({"signature": {}}),
        json!({"bound_ip": "1.2.3.4/24"}),
        json!({"expires_at": "soon"}),
    ] {
        assert!(parse(bad.clone()).is_err(), "accepted {bad}");
    }
}

/// What the admin API reports as an error's `param`: the refused member's place.
fn refused_at(v: serde_json::Value) -> String {
    let text = v.to_string();
    let de = &mut serde_json::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, KeyLocks>(de) {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => e.path().to_string(),
    }
}

#[test]
fn refusals_name_the_member_and_entry() {
    for (bad, path) in [
        (
            json!({"ip": {"mode": "allow", "cidrs": ["10.0.0.0/8", "example.com"]}}),
            "ip.cidrs[1]",
        ),
        (
            json!({"ip": {"cidrs": [42], "mode": "allow"}}),
            "ip.cidrs[0]",
        ),
        (json!({"ip": {"mode": "sometimes"}}), "ip.mode"),
        (json!({"ip": {"mode": "allow"}}), "ip"),
        (json!({"ip": {"mode": "off", "cidrs": []}}), "ip"),
        (json!({"ip": {"mode": "auto_bind", "x": 1}}), "ip.x"),
        (
            json!({"device": {"mode": "fixed", "fingerprint": ""}}),
            "device.fingerprint",
        ),
        (
            json!({"device": {"mode": "off", "fingerprint": "a"}}),
            "device",
        ),
        (
            json!({"geo": {"countries": ["DE", "D1"]}}),
            "geo.countries[1]",
        ),
    ] {
        assert_eq!(refused_at(bad.clone()), path, "{bad}");
    }
}

#[test]
fn deny_shape() {
    let locks = KeyLocks {
        expires_at: Some(0),
        ..KeyLocks::default()
    };
    let facts = sg_policy::RequestFacts {
        client_ip: ip("1.2.3.4"),
        geo: None,
        device_fingerprint: None,
        model: sg_policy::RequestModel::NoModel,
        signature: None,
        now: 0,
    };
    let denial = evaluate(&facts, &locks).denial().cloned().unwrap();
    let v = serde_json::to_value(&denial).unwrap();
    assert_eq!(v["code"], "key_expired");
    assert!(v["message"].as_str().unwrap().contains("expired"));
}

proptest! {
    #[test]
    fn key_locks_round_trip(locks in key_locks()) {
        let text = serde_json::to_string(&locks).unwrap();
        let back: KeyLocks = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, locks);
    }

    #[test]
    fn arbitrary_json_never_panics(s in any::<String>()) {
        let _ = serde_json::from_str::<KeyLocks>(&s);
    }
}

#[test]
fn geo_auto_bind_shape() {
    use sg_policy::{GeoLevel, Place};
    let d = parse(json!({"geo": {"mode": "auto_bind"}, "bound_place": {"country": "de"}})).unwrap();
    let geo = d.geo.clone().unwrap();
    assert_eq!(geo.auto_bind, Some(GeoLevel::Country));
    assert_eq!(
        d.bound_place,
        Some(Place {
            country: "DE".into(),
            city: None
        })
    );
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["geo"], json!({"mode": "auto_bind", "level": "country"}));
    assert_eq!(v["bound_place"], json!({"country": "DE", "city": null}));
    assert_eq!(parse(v).unwrap(), d);

    let city = parse(json!({"geo": {"mode": "auto_bind", "level": "city"}})).unwrap();
    assert_eq!(city.geo.unwrap().auto_bind, Some(GeoLevel::City));
    // The list form may name its mode.
    let lists = parse(json!({"geo": {"mode": "allow", "countries": ["fr"]}})).unwrap();
    assert_eq!(lists.geo.unwrap().countries, vec!["FR".to_owned()]);

    for bad in [
        json!({"geo": {"mode": "auto_bind", "countries": ["DE"]}}),
        json!({"geo": {"mode": "auto_bind", "cities": [{"country": "DE", "city": "Berlin"}]}}),
        json!({"geo": {"mode": "auto_bind", "level": "street"}}),
        json!({"geo": {"level": "city"}}),
        json!({"geo": {"mode": "allow", "level": "city"}}),
        json!({"geo": {"mode": "nearby"}}),
        json!({"geo": {"mode": "auto_bind", "extra": 1}}),
        json!({"bound_place": {"country": "Germany"}}),
        json!({"bound_place": {"city": "Berlin"}}),
    ] {
        assert!(parse(bad.clone()).is_err(), "accepted {bad}");
    }
}
