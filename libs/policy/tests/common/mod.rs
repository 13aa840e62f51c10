//! Strategies shared by the integration tests.

#![allow(dead_code)]

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use sg_policy::signature::public_key_from_seed;
use sg_policy::{
    CityRef, DeviceLock, Geo, GeoLevel, GeoLock, IpLock, KeyLocks, Place, SignatureLock,
};

pub const NOW: i64 = 1_700_000_000;

pub const SEEDS: [[u8; 32]; 2] = [[1u8; 32], [2u8; 32]];

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A small pool so that generated locks and facts often coincide.
pub fn pool_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(ip("1.2.3.4")),
        Just(ip("1.2.3.5")),
        Just(ip("::ffff:1.2.3.4")),
        Just(ip("10.0.0.1")),
        Just(ip("2001:db8::1")),
        Just(ip("2001:db8::2")),
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

pub fn pool_net() -> impl Strategy<Value = IpNet> {
    (pool_ip(), any::<u8>()).prop_map(|(addr, p)| {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        IpNet::new(addr, p % (max + 1)).unwrap()
    })
}

pub fn ip_lock() -> impl Strategy<Value = IpLock> {
    prop_oneof![
        Just(IpLock::Off),
        Just(IpLock::AutoBind),
        proptest::collection::vec(pool_net(), 0..4).prop_map(IpLock::Allow),
    ]
}

pub fn pool_device() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("dev-a".to_owned()),
        Just("dev-b".to_owned()),
        "[a-z0-9-]{1,12}",
    ]
}

pub fn device_lock() -> impl Strategy<Value = DeviceLock> {
    prop_oneof![
        Just(DeviceLock::Off),
        Just(DeviceLock::AutoBind),
        pool_device().prop_map(DeviceLock::Fixed),
    ]
}

pub fn country() -> impl Strategy<Value = String> {
    prop_oneof![Just("DE"), Just("FR"), Just("US"), Just("JP")].prop_map(str::to_owned)
}

pub fn city() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Berlin"),
        Just("New York"),
        Just("Zürich"),
        Just("Paris")
    ]
    .prop_map(str::to_owned)
}

pub fn geo_lock() -> impl Strategy<Value = GeoLock> {
    let lists = (
        proptest::collection::vec(country(), 0..3),
        proptest::collection::vec(
            (country(), city()).prop_map(|(country, city)| CityRef { country, city }),
            0..3,
        ),
    )
        .prop_map(|(countries, cities)| GeoLock {
            countries,
            cities,
            auto_bind: None,
        });
    let auto =
        prop_oneof![Just(GeoLevel::Country), Just(GeoLevel::City)].prop_map(|level| GeoLock {
            auto_bind: Some(level),
            ..GeoLock::default()
        });
    prop_oneof![3 => lists, 2 => auto]
}

pub fn place() -> impl Strategy<Value = Place> {
    (country(), proptest::option::of(city())).prop_map(|(country, city)| Place { country, city })
}

pub fn pool_model() -> impl Strategy<Value = String> {
    prop_oneof![Just("m1"), Just("m2"), Just("m3")].prop_map(str::to_owned)
}

pub fn key_locks() -> impl Strategy<Value = KeyLocks> {
    (
        ip_lock(),
        proptest::option::of(pool_ip()),
        device_lock(),
        proptest::option::of(pool_device()),
        proptest::option::of(geo_lock()),
        proptest::option::of(proptest::collection::vec(pool_model(), 0..3)),
        proptest::option::of(
            prop_oneof![Just(SEEDS[0]), Just(SEEDS[1])].prop_map(|seed| SignatureLock {
                public_key: public_key_from_seed(&seed),
            }),
        ),
        proptest::option::weighted(0.3, prop_oneof![(NOW - 5..NOW + 5), any::<i64>()]),
        proptest::option::of(place()),
    )
        .prop_map(
            |(
                ip,
                bound_ip,
                device,
                bound_device,
                geo,
                models,
                signature,
                expires_at,
                bound_place,
            )| {
                KeyLocks {
                    ip,
                    bound_ip,
                    device,
                    bound_device,
                    geo,
                    bound_place,
                    models,
                    signature,
                    expires_at,
                }
            },
        )
}

pub fn geo() -> impl Strategy<Value = Geo> {
    (
        proptest::option::of(prop_oneof![country(), Just("de".to_owned())]),
        proptest::option::of(prop_oneof![
            city(),
            Just("BERLIN".to_owned()),
            Just("zürich".to_owned())
        ]),
    )
        .prop_map(|(country, city)| Geo { country, city })
}

/// Owned material for a `SignedRequest`.
#[derive(Debug, Clone)]
pub struct SigInput {
    pub timestamp: i64,
    pub signature: [u8; 64],
    pub method: String,
    pub path_and_query: String,
    pub body_sha256: [u8; 32],
}

impl SigInput {
    pub fn as_signed(&self) -> sg_policy::SignedRequest<'_> {
        sg_policy::SignedRequest {
            timestamp: self.timestamp,
            signature: self.signature,
            method: &self.method,
            path_and_query: &self.path_and_query,
            body_sha256: self.body_sha256,
        }
    }
}

pub fn sig_input(now: i64) -> impl Strategy<Value = SigInput> {
    (
        0usize..2,
        prop_oneof![(-400i64..400), Just(-301), Just(-300), Just(300), Just(301)],
        prop_oneof![Just("POST"), Just("GET"), Just("post")],
        prop_oneof![Just("/v1/chat/completions"), Just("/v1/models?x=1")],
        prop_oneof![Just(b"".to_vec()), Just(b"{}".to_vec())],
        any::<bool>(),
        any::<[u8; 32]>(),
    )
        .prop_map(move |(seed, delta, method, path, body, tamper, noise)| {
            let timestamp = now.saturating_add(delta);
            let body_sha256 = sg_policy::signature::body_sha256(&body);
            let mut signature =
                sg_policy::signature::sign(&SEEDS[seed], timestamp, method, path, &body_sha256);
            if tamper {
                signature[..32].copy_from_slice(&noise);
            }
            SigInput {
                timestamp,
                signature,
                method: method.to_owned(),
                path_and_query: path.to_owned(),
                body_sha256,
            }
        })
}
