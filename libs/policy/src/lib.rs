//! Pure evaluation of SecureGate proxy-key locks.
//!
//! Before a request that presents a proxy key (`SG_…`) reaches a provider,
//! the gateway checks it against the key's locks. Everything here is a pure
//! function of the request facts, the key's locks, and the `now` the caller
//! passes in: no I/O, no clock, no async.
//!
//! * [`client_ip`](client_ip::client_ip) — the true client address behind
//!   trusted reverse proxies (`X-Forwarded-For`, read right to left, capped).
//! * [`evaluate`] — expiry, IP, geo, device, model and signature locks, in
//!   that order; the first failure wins. See [`lock`] for the rules and the
//!   JSON shapes of the lock types.
//! * [`signature`] — the `x-sg-timestamp` / `x-sg-signature` request-signing
//!   contract, with a reference signer and a Python client snippet.
//!
//! ```
//! use sg_policy::{evaluate, Decision, KeyLocks, LockSettings, RequestFacts, TrustedProxies};
//!
//! let trusted = TrustedProxies::parse(["10.0.0.0/8", "127.0.0.1/32", "::1/128"]).unwrap();
//! let ip = sg_policy::client_ip(
//!     "10.0.0.5".parse().unwrap(),
//!     &["198.51.100.1, 203.0.113.7"],
//!     &trusted,
//! );
//! assert_eq!(ip.to_string(), "203.0.113.7");
//!
//! let facts = RequestFacts {
//!     client_ip: ip,
//!     geo: None,
//!     device_fingerprint: None,
//!     model: sg_policy::RequestModel::Named("gpt-4o-mini"),
//!     signature: None,
//!     now: 1_700_000_000,
//! };
//! // A new key auto-binds to the first address that uses it.
//! match evaluate(&facts, &KeyLocks::default()) {
//!     Decision::Allow { bind_ip, .. } => assert_eq!(bind_ip, Some(ip)),
//!     Decision::Deny(denial) => panic!("{denial}"),
//! }
//! ```

#![forbid(unsafe_code)]

pub mod client_ip;
pub mod lock;
pub mod signature;

pub use client_ip::{TrustedProxies, TrustedProxiesError, client_ip};
pub use ipnet::IpNet;
pub use lock::{
    CityRef, Decision, Denial, DenyCode, DeviceLock, Geo, GeoLevel, GeoLock, IpLock, KeyLocks,
    LockSettings, Place, RequestFacts, RequestModel, SignatureLock, evaluate, evaluate_before_body,
};
pub use signature::{SignatureParseError, SignedRequest, parse_signature_headers};
