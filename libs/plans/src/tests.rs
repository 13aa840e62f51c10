use super::*;
use sg_policy::{CityRef, GeoLock, SignatureLock};

fn plan(c: &Catalog, name: &str) -> Plan {
    c.get(name).cloned().unwrap()
}

fn city_lock() -> LockSettings {
    LockSettings {
        geo: Some(GeoLock {
            countries: vec![],
            cities: vec![CityRef {
                country: "DE".into(),
                city: "Berlin".into(),
            }],
            auto_bind: None,
        }),
        ..LockSettings::default()
    }
}

#[test]
fn builtin_plans_match_the_product() {
    let c = Catalog::default();
    let names: Vec<&str> = c.plans().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["free", "pro", "team"]);
    let free = plan(&c, "free");
    assert_eq!(free.max_connections, Some(2));
    assert_eq!((free.key_rpm, free.key_rpd), (Some(20), Some(1_000)));
    assert!(free.has(Feature::Ip) && free.has(Feature::Model) && !free.has(Feature::City));
    let pro = plan(&c, "pro");
    assert_eq!(pro.max_connections, None);
    assert_eq!((pro.key_rpm, pro.key_rpd), (Some(200), Some(50_000)));
    assert!(pro.has(Feature::Device) && !pro.has(Feature::Signature));
    let team = plan(&c, "team");
    assert_eq!((team.key_rpm, team.key_rpd), (Some(1_000), Some(250_000)));
    assert!(team.has(Feature::Signature));
}

#[test]
fn features_used_reads_every_lock() {
    // A new key's default locks: IP auto-bind only.
    assert_eq!(
        features_used(&LockSettings::default()),
        [Feature::Ip].into()
    );
    let none = LockSettings {
        ip: IpLock::Off,
        ..LockSettings::default()
    };
    assert!(features_used(&none).is_empty());
    let all = LockSettings {
        ip: IpLock::AutoBind,
        device: DeviceLock::AutoBind,
        geo: Some(GeoLock {
            countries: vec!["FR".into()],
            cities: city_lock().geo.unwrap().cities,
            auto_bind: None,
        }),
        models: Some(vec!["gpt-4o".into()]),
        signature: Some(SignatureLock {
            public_key: [7; 32],
        }),
        expires_at: Some(1),
    };
    use Feature::*;
    assert_eq!(
        features_used(&all),
        [Ip, Model, City, Country, Device, Signature].into()
    );
}

#[test]
fn a_missing_feature_names_the_first_plan_with_it() {
    let c = Catalog::default();
    let free = plan(&c, "free");
    let used = features_used(&city_lock());
    let refusal = c
        .check_features(&free, &used, &BTreeSet::new())
        .unwrap_err();
    assert_eq!(refusal.needed.as_deref(), Some("pro"));
    assert_eq!(refusal.param, "locks.geo.cities");
    assert_eq!(
        refusal.to_string(),
        "the city lock is not included in the free plan; the pro plan includes it"
    );
    let signed: BTreeSet<Feature> = [Feature::Signature].into();
    let refusal = c
        .check_features(&plan(&c, "pro"), &signed, &BTreeSet::new())
        .unwrap_err();
    assert_eq!(refusal.needed.as_deref(), Some("team"));
    assert!(
        c.check_features(&plan(&c, "team"), &signed, &BTreeSet::new())
            .is_ok()
    );
    // A feature the key already had stays allowed after a downgrade.
    assert!(c.check_features(&free, &used, &used).is_ok());

    // Geo auto-bind is gated like the city lock.
    let auto = LockSettings {
        geo: Some(GeoLock {
            auto_bind: Some(sg_policy::GeoLevel::Country),
            ..GeoLock::default()
        }),
        ..LockSettings::default()
    };
    let used = features_used(&auto);
    assert_eq!(used, [Feature::Ip, Feature::GeoAutoBind].into());
    let refusal = c
        .check_features(&free, &used, &BTreeSet::new())
        .unwrap_err();
    assert_eq!(refusal.needed.as_deref(), Some("pro"));
    assert_eq!(refusal.param, "locks.geo.mode");
    assert!(
        c.check_features(&plan(&c, "pro"), &used, &BTreeSet::new())
            .is_ok()
    );
}

#[test]
fn connections_are_counted_against_the_plan() {
    let c = Catalog::default();
    let free = plan(&c, "free");
    assert!(c.check_connection(&free, 0).is_ok());
    assert!(c.check_connection(&free, 1).is_ok());
    let refusal = c.check_connection(&free, 2).unwrap_err();
    assert_eq!(refusal.needed.as_deref(), Some("pro"));
    assert!(c.check_connection(&plan(&c, "pro"), 1_000).is_ok());
}

#[test]
fn key_limits_are_capped_and_defaulted_by_the_plan() {
    let c = Catalog::default();
    let free = plan(&c, "free");
    let own = Limits {
        rpm: Some(10),
        ..Limits::default()
    };
    assert!(c.check_key_limits(&free, &own).is_ok());
    let effective = with_plan_defaults(own, Some(&free));
    assert_eq!((effective.rpm, effective.rpd), (Some(10), Some(1_000)));
    assert_eq!(with_plan_defaults(own, None), own);
    let greedy = Limits {
        rpm: Some(500),
        ..Limits::default()
    };
    let refusal = c.check_key_limits(&free, &greedy).unwrap_err();
    assert_eq!(
        (refusal.param, refusal.needed.as_deref()),
        ("rpm", Some("team"))
    );
    let daily = Limits {
        rpd: Some(100_000),
        ..Limits::default()
    };
    let refusal = c.check_key_limits(&plan(&c, "pro"), &daily).unwrap_err();
    assert_eq!(
        (refusal.param, refusal.needed.as_deref()),
        ("rpd", Some("team"))
    );
}

#[test]
fn operator_definitions_replace_and_extend_the_builtins() {
    let unlimited = Plan {
        name: "enterprise".into(),
        max_connections: None,
        features: Feature::ALL.into_iter().collect(),
        key_rpm: None,
        key_rpd: None,
    };
    let cheaper_free = Plan {
        max_connections: Some(1),
        ..builtin().remove(0)
    };
    let defined: BTreeMap<String, Plan> = [
        ("enterprise".to_owned(), unlimited.clone()),
        ("free".to_owned(), cheaper_free),
    ]
    .into();
    let c = Catalog::new(&defined);
    let names: Vec<&str> = c.plans().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["free", "pro", "team", "enterprise"]);
    assert_eq!(plan(&c, "free").max_connections, Some(1));
    let huge = Limits {
        rpm: Some(5_000),
        ..Limits::default()
    };
    let refusal = c.check_key_limits(&plan(&c, "team"), &huge).unwrap_err();
    assert_eq!(refusal.needed.as_deref(), Some("enterprise"));
}

#[test]
fn plan_names() {
    assert!(is_valid_name("free") && is_valid_name("team-2026") && is_valid_name("a"));
    assert!(!is_valid_name("") && !is_valid_name("Free") && !is_valid_name("1x"));
    assert!(!is_valid_name("a.b") && !is_valid_name(&"a".repeat(33)));
}
