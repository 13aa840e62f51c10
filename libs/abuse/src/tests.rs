#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const T0: i64 = 1_699_999_200; // a multiple of 3 600
const IP_LOCK: &str = "ip_not_allowed";
const PROBE: &str = MODEL_NOT_ALLOWED;

/// A request (10 tokens, 5 micro-dollars) or, with a `code`, a violation, from `10.0.0.n`.
fn obs<'a>(
    key: &'a str,
    at: i64,
    n: u32,
    country: Option<&'a str>,
    code: Option<&'a str>,
) -> Observation<'a> {
    let (ip, model) = (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), None);
    match code {
        None => Observation::Request {
            key,
            at,
            ip,
            country,
            model,
            tokens: 10,
            cost_micros: 5,
        },
        Some(code) => Observation::Violation {
            key,
            at,
            code,
            ip,
            country,
            model,
        },
    }
}

fn req(key: &str, at: i64) -> Observation<'_> {
    obs(key, at, 1, Some("DE"), None)
}

fn refused<'a>(key: &'a str, at: i64, code: &'a str) -> Observation<'a> {
    obs(key, at, 1, Some("DE"), Some(code))
}

/// Feeds `n` observations (built from their index) and returns the verdicts.
fn feed<'a>(
    d: &mut Detector,
    s: &AbuseSettings,
    n: u32,
    o: impl Fn(u32) -> Observation<'a>,
) -> Vec<Verdict> {
    (0..n).filter_map(|i| d.observe(s, &o(i))).collect()
}

/// The reasons of the verdicts for `n` requests at `T0` into a fresh detector.
fn reasons(s: &AbuseSettings, n: u32) -> Vec<String> {
    let v = feed(&mut Detector::new(), s, n, |_| req("k", T0));
    v.into_iter().map(|v| v.reason).collect()
}

#[test]
fn velocity_fires_just_above_its_thresholds() {
    let (mut s, mut d) = (AbuseSettings::default(), Detector::new());
    assert!(feed(&mut d, &s, 600, |_| req("k", T0 + 10)).is_empty());
    let v = d.observe(&s, &req("k", T0 + 11)).unwrap();
    let want = (Rule::Velocity, T0, T0 + 11, T0 + 911);
    assert_eq!((v.rule, v.window_start, v.at, v.until), want);
    assert_eq!(v.id, "k:velocity:1699999200");
    assert_eq!(v.reason, "601 requests in 60 s (limit 600)");

    (s.velocity.tokens, s.velocity.cost_micros) = (Some(100), Some(40));
    assert_eq!(reasons(&s, 9), ["45 micro-dollars in 60 s (limit 40)"]);
    s.velocity.cost_micros = None;
    assert_eq!(reasons(&s, 11), ["110 tokens in 60 s (limit 100)"]);
}

#[test]
fn spike_needs_a_baseline_and_a_jump() {
    let (mut s, mut d) = (AbuseSettings::default(), Detector::new());
    s.velocity.requests = None;
    // A new key is never a spike, however busy; nor is a steadily busy key.
    for w in 0..20 {
        assert!(feed(&mut d, &s, 5_000, |_| req("busy", T0 + 60 * w)).is_empty());
    }
    // A quiet key's jump stays under spike_min_requests.
    feed(&mut d, &s, 2, |_| req("quiet", T0));
    assert!(feed(&mut d, &s, 59, |_| req("quiet", T0 + 60)).is_empty());
    // 40 a window, then more than 10 × 40.
    for w in 0..5 {
        assert!(feed(&mut d, &s, 40, |_| req("k", T0 + 60 * w)).is_empty());
    }
    let start = T0 + 300;
    assert!(feed(&mut d, &s, 400, |_| req("k", start)).is_empty());
    let v = d.observe(&s, &req("k", start + 1)).unwrap();
    assert_eq!((v.rule, v.window_start), (Rule::Spike, start));
    let want = "401 requests in 60 s, more than 10 × the usual 40.0";
    assert_eq!(v.reason, want);
}

#[test]
fn baseline_is_an_ewma_of_active_windows() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    feed(&mut d, &s, 10, |_| req("k", T0));
    feed(&mut d, &s, 20, |_| req("k", T0 + 600)); // idle windows between are skipped
    d.observe(&s, &req("k", T0 + 660));
    let baseline = |now| d.stats("k", now).unwrap().baseline;
    assert_eq!(baseline(T0 + 660), Some(10.0 + 0.3 * 10.0));
    assert_eq!(baseline(T0 + 720), Some(13.0 + 0.3 * (1.0 - 13.0)));
}

#[test]
fn spread_fires_above_distinct_ips_and_countries() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    let ips = feed(&mut d, &s, 50, |i| {
        obs("k", T0 + i64::from(i), i % 5, None, None)
    });
    assert!(ips.is_empty());
    let v = d
        .observe(&s, &obs("k", T0 + 3_599, 9, None, Some(IP_LOCK)))
        .unwrap();
    assert_eq!((v.rule, v.window_start), (Rule::Spread, T0));
    assert_eq!(v.reason, "6 distinct client IPs in 3600 s (limit 5)");

    let places =
        ["DE", "FR", "", "DE", "NL", "FR", "US"].map(|c| Some(c).filter(|c| !c.is_empty()));
    let v = feed(&mut d, &s, 7, |i| obs("c", T0, 0, places[i as usize], None));
    let reasons: Vec<String> = v.into_iter().map(|v| v.reason).collect();
    assert_eq!(reasons, ["4 countries in 3600 s (limit 3)"]);
}

#[test]
fn violations_and_model_probing_fire_above_their_counts() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    assert!(feed(&mut d, &s, 20, |_| refused("k", T0, IP_LOCK)).is_empty());
    let v = d.observe(&s, &refused("k", T0 + 299, IP_LOCK)).unwrap();
    assert_eq!((v.rule, v.window_start), (Rule::Violations, T0));
    assert_eq!(v.reason, "21 lock violations in 300 s (limit 20)");

    assert!(feed(&mut d, &s, 5, |_| refused("p", T0, PROBE)).is_empty());
    let v = d.observe(&s, &refused("p", T0, PROBE)).unwrap();
    assert_eq!(v.rule, Rule::ModelProbing);
    let st = d.stats("p", T0).unwrap();
    assert_eq!((st.violations, st.probes), (6, 6));
}

#[test]
fn a_rule_fires_once_per_window_and_several_at_once_name_the_first() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    let mut ids = Vec::new();
    for i in 0..3_700 {
        if let Some(v) = d.observe(&s, &req("k", T0 + i / 20)) {
            d.resumed("k"); // so that the next window may fire
            ids.push(v.id);
        }
    }
    let want: Vec<String> = (0..3)
        .map(|w| format!("k:velocity:{}", T0 + 60 * w))
        .collect();
    assert_eq!(ids, want);

    let mut s = AbuseSettings::default();
    (s.violations.count, s.model_probing.count) = (Some(1), Some(1));
    let v = feed(&mut d, &s, 2, |_| refused("m", T0, PROBE));
    assert_eq!((v.len(), v[0].rule), (1, Rule::Violations));
    d.resumed("m");
    assert_eq!(d.observe(&s, &refused("m", T0, PROBE)), None);
}

#[test]
fn suspended_keys_yield_nothing_until_until() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    d.suspended("k", T0 + 120);
    assert!(feed(&mut d, &s, 2_000, |i| req("k", T0 + i64::from(i) / 20)).is_empty());
    assert_eq!(d.stats("k", T0).unwrap().suspended_until, Some(T0 + 120));
    let v = feed(&mut d, &s, 601, |_| req("k", T0 + 120));
    let want = (1, T0 + 120, T0 + 1_020);
    assert_eq!((v.len(), v[0].window_start, v[0].until), want);
    // The verdict suspends the key: other rules stay quiet, and are spent for the window.
    assert!(feed(&mut d, &s, 30, |_| refused("k", T0 + 130, IP_LOCK)).is_empty());
    d.resumed("k");
    assert_eq!(d.observe(&s, &refused("k", T0 + 131, IP_LOCK)), None);
    let v = feed(&mut d, &s, 21, |_| refused("k", T0 + 300, IP_LOCK));
    assert_eq!(v.len(), 1);

    let mut d = Detector::new();
    let off = AbuseSettings {
        enabled: false,
        ..s
    };
    assert!(feed(&mut d, &off, 5_000, |_| refused("k", T0, PROBE)).is_empty());
    assert!(d.is_empty());
}

#[test]
fn memory_stays_bounded() {
    let (mut s, mut d) = (AbuseSettings::default(), Detector::new());
    feed(&mut d, &s, 100_000, |i| obs("k", T0, i, None, None));
    assert_eq!((d.ip_set_len("k"), d.stats("k", T0).unwrap().ips), (6, 6));
    s.spread.ips = None;
    feed(&mut d, &s, 100_000, |i| obs("k", T0 + 3_600, i, None, None));
    assert_eq!(d.ip_set_len("k"), 16);
}

#[test]
fn sweep_evicts_idle_keys() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    d.observe(&s, &req("old", T0));
    d.observe(&s, &req("recent", T0 + 3_000));
    d.observe(&s, &req("held", T0));
    d.suspended("held", T0 + 10_000);
    d.suspended("never-seen", T0 + 10_000);
    assert_eq!(d.sweep(T0 + 3_600), 0);
    assert_eq!(d.sweep(T0 + 3_601), 1);
    assert!(d.stats("old", T0 + 3_601).is_none());
    assert_eq!((d.len(), d.sweep(T0 + 10_000)), (3, 3));
}

#[test]
fn late_observations_count_in_the_current_window() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    feed(&mut d, &s, 300, |_| req("k", T0 + 61));
    let v = feed(&mut d, &s, 301, |_| req("k", T0 + 58));
    assert_eq!((v.len(), v[0].window_start, v[0].at), (1, T0 + 60, T0 + 61));
}

#[test]
fn stats_report_the_current_windows() {
    let (s, mut d) = (AbuseSettings::default(), Detector::new());
    feed(&mut d, &s, 3, |_| req("k", T0));
    d.observe(&s, &refused("k", T0, PROBE));
    let want = json!({"requests": 3, "tokens": 30, "cost_micros": 15, "baseline": null, "ips": 1,
        "countries": 1, "violations": 1, "probes": 1, "suspended_until": null});
    let now = d.stats("k", T0 + 59).unwrap();
    assert_eq!(serde_json::to_value(now).unwrap(), want);
    let later = d.stats("k", T0 + 60).unwrap();
    let got = (later.requests, later.baseline, later.ips);
    assert_eq!(got, (0, Some(3.0), 1));
    assert!(d.stats("other", T0).is_none());
}

fn parse(v: Value) -> Result<AbuseSettings, serde_json::Error> {
    serde_json::from_value(v)
}

#[test]
fn settings_json_shape_defaults_and_refusals() {
    let want = json!({
        "velocity": {"requests": 600, "tokens": null, "cost_micros": null, "window_seconds": 60,
                     "spike_factor": 10.0, "spike_min_requests": 60},
        "spread": {"ips": 5, "countries": 3, "window_seconds": 3600},
        "violations": {"count": 20, "window_seconds": 300},
        "model_probing": {"count": 5, "window_seconds": 300},
        "suspend_seconds": 900,
        "enabled": true
    });
    let defaults = AbuseSettings::default();
    assert_eq!(serde_json::to_value(&defaults).unwrap(), want);
    assert_eq!(parse(json!({})).unwrap(), defaults);
    assert_eq!(defaults.validate(), Ok(()));
    let partial = parse(json!({"velocity": {"requests": null, "tokens": 1000}})).unwrap();
    let v = &partial.velocity;
    assert_eq!(
        (v.requests, v.tokens, v.window_seconds),
        (None, Some(1000), 60)
    );
    assert_eq!(partial.spread, defaults.spread);
    let back = serde_json::to_value(&partial).unwrap();
    assert_eq!(parse(back).unwrap(), partial);
    for bad in [json!({"velocty": {}}), json!({"spread": {"ip": 3}})] {
        let err = parse(bad).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
    assert!(parse(json!({"suspend_seconds": -1})).is_err());
    for r in [
        Rule::Velocity,
        Rule::Spike,
        Rule::Spread,
        Rule::Violations,
        Rule::ModelProbing,
    ] {
        assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
    }
    assert_eq!(Rule::ModelProbing.to_string(), "model_probing");
}

#[test]
fn validation_names_the_field() {
    let with = |field: &str, value: Value| {
        let mut v = serde_json::to_value(AbuseSettings::default()).unwrap();
        *v.pointer_mut(&format!("/{}", field.replace('.', "/")))
            .unwrap() = value;
        parse(v).unwrap().validate()
    };
    let cases = [
        ("velocity.requests", 0),
        ("velocity.tokens", 0),
        ("velocity.cost_micros", 0),
        ("velocity.window_seconds", 0),
        ("velocity.window_seconds", 86_401),
        ("velocity.spike_min_requests", 0),
        ("spread.ips", 0),
        ("spread.ips", 1_001),
        ("spread.countries", 0),
        ("spread.window_seconds", 0),
        ("violations.count", 0),
        ("violations.window_seconds", 100_000),
        ("model_probing.count", 0),
        ("model_probing.window_seconds", 0),
        ("suspend_seconds", 0),
        ("suspend_seconds", 2_592_001),
    ];
    for (field, value) in cases {
        let err = with(field, json!(value)).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().starts_with(field));
    }
    for f in [f64::NAN, f64::INFINITY, 1.0, 0.5] {
        let mut s = AbuseSettings::default();
        s.velocity.spike_factor = Some(f);
        assert_eq!(s.validate().unwrap_err().field, "velocity.spike_factor");
    }
    assert_eq!(with("velocity.spike_factor", Value::Null), Ok(()));
    assert_eq!(with("spread.ips", json!(1_000)), Ok(()));
    assert_eq!(with("suspend_seconds", json!(2_592_000)), Ok(()));
}

/// A compact observation: (key, time step, ip, country, kind).
type Step = (u8, i8, u8, u8, u8);

/// Runs `steps` under tight settings through a fresh detector, lifting each suspension at
/// once when `resume`, and sweeping now and then.
fn run(steps: &[Step], resume: bool) -> Vec<Verdict> {
    let s = parse(json!({
        "velocity": {"requests": 6, "window_seconds": 30, "spike_factor": 2.0,
                     "spike_min_requests": 4},
        "spread": {"ips": 3, "countries": 2, "window_seconds": 90},
        "violations": {"count": 4, "window_seconds": 45},
        "model_probing": {"count": 2, "window_seconds": 45},
        "suspend_seconds": 20
    }));
    let (s, keys, countries) = (s.unwrap(), ["a", "b", "c:d"], ["DE", "FR", "US", "NL"]);
    let (mut d, mut at, mut out) = (Detector::new(), T0, Vec::new());
    for &(k, dt, ip, c, kind) in steps {
        at += i64::from(dt);
        let (key, country) = (
            keys[usize::from(k % 3)],
            Some(countries[usize::from(c % 4)]),
        );
        let code = [None, Some(IP_LOCK), Some(PROBE)][usize::from(kind % 3)];
        if let Some(v) = d.observe(&s, &obs(key, at, u32::from(ip % 8), country, code)) {
            if resume {
                d.resumed(key);
            }
            out.push(v);
        }
        if at % 97 == 0 {
            d.sweep(at);
        }
    }
    out
}

#[test]
fn the_random_runs_exercise_every_rule() {
    let mut x: u64 = 7;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        ((x >> 33) % m) as u8
    };
    // Alternately sparse and dense, so that spikes happen too.
    let mut step = |i: u32| {
        let dt = if (i / 200).is_multiple_of(2) {
            next(8)
        } else {
            next(4) / 3
        };
        (next(3), dt as i8, next(8), next(4), next(3))
    };
    let steps: Vec<Step> = (0..2_000).map(&mut step).collect();
    let rules: HashSet<Rule> = run(&steps, true).iter().map(|v| v.rule).collect();
    assert_eq!(rules.len(), 5, "{rules:?}");
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec((0u8..3, -2i8..6, 0u8..8, 0u8..4, 0u8..3), 0..400)
}

proptest! {
    #[test]
    fn replay_yields_identical_verdicts(steps in steps()) {
        prop_assert_eq!(run(&steps, false), run(&steps, false));
        prop_assert_eq!(run(&steps, true), run(&steps, true));
    }

    #[test]
    fn at_most_one_verdict_per_key_rule_and_window(steps in steps()) {
        for resume in [false, true] {
            let mut seen = HashSet::new();
            for v in run(&steps, resume) {
                prop_assert_eq!(&v.id, &verdict_id(&v.key, v.rule, v.window_start));
                let len = match v.rule {
                    Rule::Velocity | Rule::Spike => 30,
                    Rule::Spread => 90,
                    Rule::Violations | Rule::ModelProbing => 45,
                };
                prop_assert_eq!(v.window_start.rem_euclid(len), 0);
                prop_assert!(v.window_start <= v.at && v.at < v.window_start + len);
                prop_assert_eq!(v.until, v.at + 20);
                prop_assert!(seen.insert(v.id.clone()), "duplicate {}", v.id);
            }
        }
    }
}
