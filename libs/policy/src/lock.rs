//! Key locks, request facts, and their evaluation.
//!
//! [`evaluate`] is a pure function of the request facts (including `now`) and
//! the key's locks. It performs no I/O and reads no clock. Its allow path
//! allocates only what it returns (a device binding and a replay id); a
//! signed request also builds its signing message once.
//!
//! # Rules, in order (the first failure wins)
//!
//! 1. **Expiry** — `now >= expires_at` → [`DenyCode::KeyExpired`].
//! 2. **IP** — [`IpLock::Allow`]: the client address must be in one of the
//!    networks. [`IpLock::AutoBind`]: a bound key only accepts its bound
//!    address; an unbound key is allowed and the decision carries
//!    `bind_ip: Some(client_ip)` for the caller to persist.
//!    [`IpLock::Off`]: any address. Failure → [`DenyCode::IpNotAllowed`].
//!    `bound_ip` is only read under `AutoBind`.
//! 3. **Geo** — if a [`GeoLock`] with at least one entry is set: an address
//!    the database could not place (no [`Geo`], or no country) is refused;
//!    otherwise the request passes if its country is in `countries` or its
//!    (country, city) is in `cities`. Failure → [`DenyCode::CityNotAllowed`].
//!    A `GeoLock` whose two lists are both empty restricts nothing.
//!    A `GeoLock` in auto-bind mode ([`GeoLock::auto_bind`] at a [`GeoLevel`])
//!    needs the request placed at that level (a country; for `city`, a country
//!    and a city); a bound key accepts only its bound [`Place`] (compared
//!    case-insensitively); an unbound key is allowed and the decision carries
//!    `bind_place` for the caller to persist.
//! 4. **Device** — [`DeviceLock::Fixed`]: the fingerprint must be present
//!    ([`DenyCode::DeviceRequired`]) and equal ([`DenyCode::DeviceNotAllowed`]).
//!    [`DeviceLock::AutoBind`]: the fingerprint must be present; a bound key
//!    accepts only its bound fingerprint; an unbound key is allowed and the
//!    decision carries `bind_device`. An empty fingerprint counts as absent;
//!    one longer than [`MAX_DEVICE_FINGERPRINT_LEN`] bytes is refused.
//! 5. **Model** — if `models` is set: a request naming a model that is not in
//!    the list (exact, case-sensitive) → [`DenyCode::ModelNotAllowed`]; a
//!    request to an endpoint that runs a model but naming none (the provider
//!    would pick its default) → [`DenyCode::ModelRequired`]; a request to an
//!    endpoint whose models the gateway cannot read (files, batches …) →
//!    [`DenyCode::EndpointNotAllowed`]. Requests that run no model (listing
//!    models) pass. `Some(vec![])` refuses every request that runs a model.
//! 6. **Signature** — if a [`SignatureLock`] is set: no signature →
//!    [`DenyCode::SignatureRequired`]; `|now - timestamp| > 300` →
//!    [`DenyCode::SignatureExpired`]; a signature that does not verify →
//!    [`DenyCode::SignatureInvalid`]; otherwise the decision carries
//!    `replay_id` = lower-case hex SHA-256 of the 64 signature bytes, which
//!    the caller must reject if seen before (see [`REPLAY_ID_RETENTION_SECS`]).
//!
//! Bindings are only proposed in an `Allow`: a request refused by a later
//! rule binds nothing.
//!
//! # JSON shapes
//!
//! All lock types refuse unknown fields. A full [`KeyLocks`]:
//!
//! ```json
//! {
//!   "ip": {"mode": "allow", "cidrs": ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]},
//!   "bound_ip": null,
//!   "device": {"mode": "fixed", "fingerprint": "dev-7f3a"},
//!   "bound_device": null,
//!   "geo": {"countries": ["DE", "FR"], "cities": [{"country": "US", "city": "New York"}]},
//!   "models": ["gpt-4o-mini", "claude-3-5-haiku"],
//!   "signature": {"public_key": "<standard base64 of the 32-byte Ed25519 public key>"},
//!   "expires_at": 1767225600
//! }
//! ```
//!
//! * `ip`: `{"mode":"off"}` | `{"mode":"auto_bind"}` |
//!   `{"mode":"allow","cidrs":[...]}`. CIDRs are strings; on input a bare
//!   address means a single host (`"1.2.3.4"` is read as `1.2.3.4/32`).
//! * `device`: `{"mode":"off"}` | `{"mode":"auto_bind"}` |
//!   `{"mode":"fixed","fingerprint":"..."}` (1 to
//!   [`MAX_DEVICE_FINGERPRINT_LEN`] bytes).
//! * `geo`: `null` or an object; both lists default to `[]`. Country codes are
//!   two ASCII letters, upper-cased on input; city names are non-empty. Or, to
//!   bind the key to the place of its first use: `{"mode":"auto_bind"}` with an
//!   optional `"level"`: `"country"` (default) or `"city"`. An auto-bind lock
//!   takes no lists; `"mode":"allow"` (the default) names the list form.
//! * `models`: `null` (any model) or a list of model names.
//! * `signature`: `null` or `{"public_key": "<base64>"}` (standard alphabet,
//!   padding optional on input); the key must be a valid, non-weak Ed25519
//!   point.
//! * `bound_ip` / `bound_device`: `null` or the bound address / fingerprint.
//! * `bound_place`: `null` or `{"country": "DE", "city": "Berlin"}` (`city` is
//!   `null` for a country-level binding).
//! * `expires_at`: `null` or unix seconds.
//!
//! Every field of [`KeyLocks`] may be omitted on input; the defaults are those
//! of a new key ([`KeyLocks::default`]: IP auto-bind, everything else off).
//! Output always carries every field.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::client_ip::{net_contains, parse_net};
use crate::signature::{self, SignedRequest};

/// Longest device fingerprint accepted, in bytes.
pub const MAX_DEVICE_FINGERPRINT_LEN: usize = 256;

/// A signed request is accepted while `|now - timestamp| <= 300`.
pub const SIGNATURE_MAX_SKEW_SECS: i64 = 300;

/// How long a replay id must be remembered so that no signature is accepted
/// twice: a timestamp is accepted during a window of `2 * 300` seconds.
/// Keeping each id until `timestamp + 300` (at most 600 s after first use)
/// is enough.
pub const REPLAY_ID_RETENTION_SECS: i64 = 2 * SIGNATURE_MAX_SKEW_SECS;

/// Which client addresses may use a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IpLock {
    /// Any address.
    Off,
    /// The first address that uses the key becomes its only address.
    /// Default for new keys.
    #[default]
    AutoBind,
    /// Only addresses in these owner-set networks.
    Allow(Vec<IpNet>),
}

/// Which device may use a key, identified by its fingerprint header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeviceLock {
    /// No device check. Default for new keys.
    #[default]
    Off,
    /// The first fingerprint that uses the key becomes its only fingerprint.
    AutoBind,
    /// Only this fingerprint.
    Fixed(String),
}

/// Where requests may come from. Empty lists add no allowance; a request
/// passes if its country is in `countries` or its (country, city) is in
/// `cities`. A lock with both lists empty restricts nothing.
///
/// With `auto_bind` set, the lists are empty and the key is bound instead to
/// the place of its first use, at that level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoLock {
    /// ISO 3166-1 alpha-2 codes, upper-case.
    pub countries: Vec<String>,
    /// Individual cities.
    pub cities: Vec<CityRef>,
    /// Bind the key to the place of its first use, at this level.
    pub auto_bind: Option<GeoLevel>,
}

impl GeoLock {
    /// Whether this lock refuses anything.
    #[must_use]
    pub fn restricts(&self) -> bool {
        self.auto_bind.is_some() || !self.countries.is_empty() || !self.cities.is_empty()
    }
}

/// How precisely a geo auto-bind lock binds a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoLevel {
    /// The country of the first request.
    #[default]
    Country,
    /// The country and city of the first request.
    City,
}

/// A place a key is bound to by a geo auto-bind lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// ISO 3166-1 alpha-2 code, upper-case.
    #[serde(deserialize_with = "de_country")]
    pub country: String,
    /// English city name; `None` for a country-level binding.
    #[serde(default)]
    pub city: Option<String>,
}

/// One city: its country and English name (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityRef {
    /// ISO 3166-1 alpha-2 code, upper-case.
    #[serde(deserialize_with = "de_country")]
    pub country: String,
    /// English city name.
    #[serde(deserialize_with = "de_city")]
    pub city: String,
}

/// Requests must carry an Ed25519 signature by this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureLock {
    /// Ed25519 public key.
    #[serde(serialize_with = "ser_public_key", deserialize_with = "de_public_key")]
    pub public_key: [u8; 32],
}

/// Every lock of one proxy key, plus its current bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLocks {
    /// IP lock.
    pub ip: IpLock,
    /// Address bound by [`IpLock::AutoBind`], if any.
    pub bound_ip: Option<IpAddr>,
    /// Device lock.
    pub device: DeviceLock,
    /// Fingerprint bound by [`DeviceLock::AutoBind`], if any.
    pub bound_device: Option<String>,
    /// Location lock.
    pub geo: Option<GeoLock>,
    /// Place bound by a geo auto-bind lock, if any.
    pub bound_place: Option<Place>,
    /// Allowed model names; `None` allows any model.
    pub models: Option<Vec<String>>,
    /// Request-signature lock.
    pub signature: Option<SignatureLock>,
    /// Unix seconds at which the key stops working.
    pub expires_at: Option<i64>,
}

impl KeyLocks {
    /// Whether a node that may have missed control events (a revocation, a lock change)
    /// must refuse this key: yes if any lock restricts it (IP, device, location, models,
    /// signature, expiry) — whoever set a lock wants it kept; a key with every lock off
    /// keeps working with what the node knows.
    pub fn fails_closed_when_stale(&self) -> bool {
        self.ip != IpLock::Off
            || self.device != DeviceLock::Off
            || self.geo.as_ref().is_some_and(GeoLock::restricts)
            || self.models.is_some()
            || self.signature.is_some()
            || self.expires_at.is_some()
    }
}

/// The owner-set part of a key's locks, without its bindings: what the admin API
/// accepts and control events carry. Same JSON shape as [`KeyLocks`] minus
/// `bound_ip`, `bound_device` and `bound_place`; every field may be omitted (new-key
/// defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockSettings {
    pub ip: IpLock,
    pub device: DeviceLock,
    pub geo: Option<GeoLock>,
    pub models: Option<Vec<String>>,
    pub signature: Option<SignatureLock>,
    pub expires_at: Option<i64>,
}

impl LockSettings {
    /// The full locks of a key with these settings and bindings.
    pub fn with_bindings(
        &self,
        bound_ip: Option<IpAddr>,
        bound_device: Option<String>,
        bound_place: Option<Place>,
    ) -> KeyLocks {
        KeyLocks {
            ip: self.ip.clone(),
            bound_ip,
            device: self.device.clone(),
            bound_device,
            geo: self.geo.clone(),
            bound_place,
            models: self.models.clone(),
            signature: self.signature,
            expires_at: self.expires_at,
        }
    }
}

/// Where the client address was placed by the geolocation database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
    /// English city name.
    pub city: Option<String>,
}

/// What is known about one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The true client address (see [`crate::client_ip::client_ip`]).
    pub client_ip: IpAddr,
    /// `None`: the database could not place the address, or none is
    /// configured.
    pub geo: Option<&'a Geo>,
    /// The device fingerprint header, if sent.
    pub device_fingerprint: Option<&'a str>,
    /// The model the request runs, as far as the gateway can read it.
    pub model: RequestModel<'a>,
    /// The parsed request signature, if sent.
    pub signature: Option<&'a SignedRequest<'a>>,
    /// Unix seconds.
    pub now: i64,
}

/// What a request says about the model it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestModel<'a> {
    /// It runs this model (read from its body, exactly as the provider reads it).
    Named(&'a str),
    /// Its endpoint runs a model, but it names none: the provider would choose.
    Unnamed,
    /// It runs no model (listing or describing models).
    NoModel,
    /// Its endpoint may run models the gateway cannot read (files, batches, …).
    Unchecked,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed.
    Allow {
        /// Bind the key to this address (IP auto-bind, first use).
        bind_ip: Option<IpAddr>,
        /// Bind the key to this fingerprint (device auto-bind, first use).
        bind_device: Option<String>,
        /// Bind the key to this place (geo auto-bind, first use).
        bind_place: Option<Place>,
        /// Hex SHA-256 of the request signature; refuse the request if this
        /// id was already seen.
        replay_id: Option<String>,
    },
    /// The request is refused.
    Deny(Denial),
}

impl Decision {
    /// Whether the request may proceed.
    #[must_use]
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// The denial, if refused.
    #[must_use]
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Self::Allow { .. } => None,
            Self::Deny(d) => Some(d),
        }
    }
}

/// Why a request was refused, and what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// Machine-readable reason.
    pub code: DenyCode,
    /// Human-readable explanation and remedy; never contains secrets.
    pub message: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Machine-readable denial reasons; serialized as [`DenyCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    /// The key is past its expiry.
    KeyExpired,
    /// The client address is not allowed.
    IpNotAllowed,
    /// The client location is not allowed or unknown.
    CityNotAllowed,
    /// The device fingerprint does not match.
    DeviceNotAllowed,
    /// A device fingerprint is required.
    DeviceRequired,
    /// The requested model is not allowed.
    ModelNotAllowed,
    /// The key has a model allow-list, and the request names no model.
    ModelRequired,
    /// The key has a model allow-list, and the endpoint's models cannot be checked.
    EndpointNotAllowed,
    /// A request signature is required.
    SignatureRequired,
    /// The request signature does not verify.
    SignatureInvalid,
    /// The request signature timestamp is too far from now.
    SignatureExpired,
}

impl DenyCode {
    /// Every code, in rule order.
    pub const ALL: [DenyCode; 11] = [
        DenyCode::KeyExpired,
        DenyCode::IpNotAllowed,
        DenyCode::CityNotAllowed,
        DenyCode::DeviceNotAllowed,
        DenyCode::DeviceRequired,
        DenyCode::ModelNotAllowed,
        DenyCode::ModelRequired,
        DenyCode::EndpointNotAllowed,
        DenyCode::SignatureRequired,
        DenyCode::SignatureInvalid,
        DenyCode::SignatureExpired,
    ];

    /// Stable snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DenyCode::KeyExpired => "key_expired",
            DenyCode::IpNotAllowed => "ip_not_allowed",
            DenyCode::CityNotAllowed => "city_not_allowed",
            DenyCode::DeviceNotAllowed => "device_not_allowed",
            DenyCode::DeviceRequired => "device_required",
            DenyCode::ModelNotAllowed => "model_not_allowed",
            DenyCode::ModelRequired => "model_required",
            DenyCode::EndpointNotAllowed => "endpoint_not_allowed",
            DenyCode::SignatureRequired => "signature_required",
            DenyCode::SignatureInvalid => "signature_invalid",
            DenyCode::SignatureExpired => "signature_expired",
        }
    }
}

impl fmt::Display for DenyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn deny(code: DenyCode, message: impl Into<String>) -> Decision {
    Decision::Deny(Denial {
        code,
        message: message.into(),
    })
}

/// Evaluates a request against a key's locks. See the [module docs](self)
/// for the rules and their order.
#[must_use]
pub fn evaluate(facts: &RequestFacts<'_>, locks: &KeyLocks) -> Decision {
    let bindings = match check_without_signature(facts, locks) {
        Ok(bindings) => bindings,
        Err(denial) => return Decision::Deny(denial),
    };

    // 6. Signature.
    let mut replay_id = None;
    if let Some(lock) = &locks.signature {
        let Some(req) = facts.signature else {
            return deny(
                DenyCode::SignatureRequired,
                "this key requires signed requests; send the x-sg-timestamp and \
                 x-sg-signature headers signed with the key registered for it",
            );
        };
        if facts.now.abs_diff(req.timestamp) > SIGNATURE_MAX_SKEW_SECS.unsigned_abs() {
            return deny(
                DenyCode::SignatureExpired,
                "the request signature timestamp is more than 300 seconds from the server \
                 time; check the client clock and sign the request again",
            );
        }
        if !signature::verify(lock, req) {
            return deny(
                DenyCode::SignatureInvalid,
                "the request signature does not match this request; sign the method, path \
                 and query, and body exactly as sent, with the key registered for this key",
            );
        }
        replay_id = Some(hex::encode(Sha256::digest(req.signature)));
    }

    Decision::Allow {
        bind_ip: bindings.ip,
        bind_device: bindings.device.map(str::to_owned),
        bind_place: bindings.place,
        replay_id,
    }
}

/// The bindings an allow would propose.
struct Bindings<'f> {
    ip: Option<IpAddr>,
    device: Option<&'f str>,
    place: Option<Place>,
}

/// Rules 1 to 5 — everything that needs neither the request body's hash nor a
/// binding to be written — as a refusal or nothing. The gateway asks this before
/// it reads a body, so that a key refused by its address, place, device or endpoint
/// costs no body read; [`evaluate`] then decides on the whole request.
pub fn evaluate_before_body(facts: &RequestFacts<'_>, locks: &KeyLocks) -> Result<(), Denial> {
    check_without_signature(facts, locks).map(|_| ())
}

fn denial(code: DenyCode, message: impl Into<String>) -> Denial {
    Denial {
        code,
        message: message.into(),
    }
}

/// Rules 1 to 5; the bindings an allow would propose.
fn check_without_signature<'f>(
    facts: &RequestFacts<'f>,
    locks: &KeyLocks,
) -> Result<Bindings<'f>, Denial> {
    // 1. Expiry.
    if let Some(expires_at) = locks.expires_at
        && facts.now >= expires_at
    {
        return Err(denial(
            DenyCode::KeyExpired,
            "this key has expired; ask the project owner for a new key or a later expiry date",
        ));
    }

    // 2. IP.
    let client = facts.client_ip.to_canonical();
    let mut bind_ip = None;
    match &locks.ip {
        IpLock::Off => {}
        IpLock::Allow(nets) => {
            if !nets.iter().any(|net| net_contains(net, client)) {
                return Err(denial(
                    DenyCode::IpNotAllowed,
                    format!(
                        "requests from {client} are not in this key's IP allow-list; \
                         ask the project owner to add this address"
                    ),
                ));
            }
        }
        IpLock::AutoBind => match locks.bound_ip {
            Some(bound) if bound.to_canonical() == client => {}
            Some(_) => {
                return Err(denial(
                    DenyCode::IpNotAllowed,
                    format!(
                        "this key is bound to another IP address; ask the project owner \
                         to unbind it or add this address ({client})"
                    ),
                ));
            }
            None => bind_ip = Some(client),
        },
    }

    // 3. Geo.
    let mut bind_place = None;
    if let Some(geo_lock) = &locks.geo {
        match geo_lock.auto_bind {
            Some(level) => bind_place = check_geo_binding(level, locks, facts.geo)?,
            None => {
                if let Some(denial) = check_geo(geo_lock, facts.geo) {
                    return Err(denial);
                }
            }
        }
    }

    // 4. Device.
    let fingerprint = facts.device_fingerprint.filter(|fp| !fp.is_empty());
    let mut bind_device = None;
    match &locks.device {
        DeviceLock::Off => {}
        DeviceLock::Fixed(expected) => match fingerprint {
            None => return Err(device_required()),
            Some(fp) if fp == expected => {}
            Some(_) => return Err(device_mismatch()),
        },
        DeviceLock::AutoBind => match (fingerprint, &locks.bound_device) {
            (None, _) => return Err(device_required()),
            (Some(fp), Some(bound)) => {
                if fp != bound {
                    return Err(device_mismatch());
                }
            }
            (Some(fp), None) => {
                if fp.len() > MAX_DEVICE_FINGERPRINT_LEN {
                    return Err(denial(
                        DenyCode::DeviceNotAllowed,
                        format!(
                            "the device fingerprint is longer than \
                             {MAX_DEVICE_FINGERPRINT_LEN} bytes; send a shorter fingerprint"
                        ),
                    ));
                }
                bind_device = Some(fp);
            }
        },
    }

    // 5. Model.
    if let Some(models) = &locks.models {
        match facts.model {
            RequestModel::Named(model) if !models.iter().any(|m| m == model) => {
                return Err(denial(
                    DenyCode::ModelNotAllowed,
                    "the requested model is not allowed for this key; use one of the models the \
                     project owner allowed, or ask them to add it",
                ));
            }
            RequestModel::Unnamed => {
                return Err(denial(
                    DenyCode::ModelRequired,
                    "this key may only use certain models; name one of them in the request's \
                     `model` field",
                ));
            }
            RequestModel::Unchecked => {
                return Err(denial(
                    DenyCode::EndpointNotAllowed,
                    "this key may only use certain models, so it may only call endpoints that \
                     name their model (chat, completions, embeddings, moderations, responses, \
                     audio, images) and list models",
                ));
            }
            RequestModel::Named(_) | RequestModel::NoModel => {}
        }
    }

    Ok(Bindings {
        ip: bind_ip,
        device: bind_device,
        place: bind_place,
    })
}

fn device_required() -> Denial {
    denial(
        DenyCode::DeviceRequired,
        "this key requires a device fingerprint; send it from the device registered for \
         this key",
    )
}

fn device_mismatch() -> Denial {
    denial(
        DenyCode::DeviceNotAllowed,
        "this key is bound to another device; use the registered device or ask the project \
         owner to reset the device binding",
    )
}

fn check_geo(lock: &GeoLock, geo: Option<&Geo>) -> Option<Denial> {
    if lock.countries.is_empty() && lock.cities.is_empty() {
        return None;
    }
    let Some(country) = geo.and_then(|g| g.country.as_deref()) else {
        return Some(denial(
            DenyCode::CityNotAllowed,
            "the location of this request's IP address could not be determined, and this \
             key only allows requests from specific places; ask the project owner to relax \
             the location lock or use a different network",
        ));
    };
    let country = country.trim();
    if lock
        .countries
        .iter()
        .any(|c| c.trim().eq_ignore_ascii_case(country))
    {
        return None;
    }
    if let Some(city) = geo.and_then(|g| g.city.as_deref())
        && lock
            .cities
            .iter()
            .any(|c| c.country.trim().eq_ignore_ascii_case(country) && eq_caseless(&c.city, city))
    {
        return None;
    }
    Some(denial(
        DenyCode::CityNotAllowed,
        "this key does not allow requests from this location; ask the project owner to \
         add it to the key's location lock",
    ))
}

/// A geo auto-bind lock at `level`: the place the key is bound to must match; an unbound
/// key proposes the request's place.
fn check_geo_binding(
    level: GeoLevel,
    locks: &KeyLocks,
    geo: Option<&Geo>,
) -> Result<Option<Place>, Denial> {
    let country = known(geo.and_then(|g| g.country.as_deref()));
    let city = known(geo.and_then(|g| g.city.as_deref()));
    let (country, city) = match (country, level, city) {
        (Some(country), GeoLevel::Country, _) => (country, None),
        (Some(country), GeoLevel::City, Some(city)) => (country, Some(city)),
        _ => {
            return Err(denial(
                DenyCode::CityNotAllowed,
                "the location of this request's IP address could not be determined, and \
                 this key is bound to the place of its first use; use a network whose \
                 location is known or ask the project owner to relax the location lock",
            ));
        }
    };
    let Some(bound) = &locks.bound_place else {
        return Ok(Some(Place {
            country: country.to_ascii_uppercase(),
            city: city.map(str::to_owned),
        }));
    };
    let same_city = match (city, bound.city.as_deref()) {
        (None, _) => true,
        (Some(city), Some(bound)) => eq_caseless(bound, city),
        (Some(_), None) => false,
    };
    if bound.country.trim().eq_ignore_ascii_case(country) && same_city {
        Ok(None)
    } else {
        Err(denial(
            DenyCode::CityNotAllowed,
            "this key is bound to another location; use it from where it was first used or \
             ask the project owner to unbind its place",
        ))
    }
}

/// A non-blank, trimmed place name.
fn known(name: Option<&str>) -> Option<&str> {
    name.map(str::trim).filter(|s| !s.is_empty())
}

/// Case-insensitive comparison of trimmed strings, without allocating.
fn eq_caseless(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

// ---------------------------------------------------------------------------
// Serde

#[derive(Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum IpLockOut<'a> {
    Off,
    AutoBind,
    Allow {
        #[serde(serialize_with = "ser_nets")]
        cidrs: &'a [IpNet],
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum IpMode {
    Off,
    AutoBind,
    Allow,
}

// A plain struct, not an internally tagged enum: serde buffers a tagged enum's content
// before it reads it, and a refused member's place (`ip.cidrs[1]`) is lost with that.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpLockIn {
    mode: IpMode,
    #[serde(default)]
    cidrs: Option<Vec<Net>>,
}

/// One entry of an allow list, refused on its own so the error names its index.
struct Net(IpNet);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        parse_net(&raw).map(Net).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "{:?} is not an IP address or CIDR",
                raw.chars().take(64).collect::<String>()
            ))
        })
    }
}

impl Serialize for IpLock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IpLock::Off => IpLockOut::Off,
            IpLock::AutoBind => IpLockOut::AutoBind,
            IpLock::Allow(nets) => IpLockOut::Allow { cidrs: nets },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for IpLock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = IpLockIn::deserialize(d)?;
        match (raw.mode, raw.cidrs) {
            (IpMode::Off, None) => Ok(IpLock::Off),
            (IpMode::AutoBind, None) => Ok(IpLock::AutoBind),
            (IpMode::Allow, Some(nets)) => {
                Ok(IpLock::Allow(nets.into_iter().map(|n| n.0).collect()))
            }
            (IpMode::Allow, None) => Err(D::Error::missing_field("cidrs")),
            (_, Some(_)) => Err(D::Error::custom("`cidrs` belongs to mode `allow` only")),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum DeviceLockOut<'a> {
    Off,
    AutoBind,
    Fixed { fingerprint: &'a str },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum DeviceMode {
    Off,
    AutoBind,
    Fixed,
}

// A plain struct for the same reason as `IpLockIn`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceLockIn {
    mode: DeviceMode,
    #[serde(default)]
    fingerprint: Option<Fingerprint>,
}

struct Fingerprint(String);

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fp = String::deserialize(d)?;
        if fp.is_empty() || fp.len() > MAX_DEVICE_FINGERPRINT_LEN {
            return Err(serde::de::Error::custom(format_args!(
                "device fingerprint must be 1 to {MAX_DEVICE_FINGERPRINT_LEN} bytes"
            )));
        }
        Ok(Fingerprint(fp))
    }
}

impl Serialize for DeviceLock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DeviceLock::Off => DeviceLockOut::Off,
            DeviceLock::AutoBind => DeviceLockOut::AutoBind,
            DeviceLock::Fixed(fingerprint) => DeviceLockOut::Fixed { fingerprint },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for DeviceLock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = DeviceLockIn::deserialize(d)?;
        match (raw.mode, raw.fingerprint) {
            (DeviceMode::Off, None) => Ok(DeviceLock::Off),
            (DeviceMode::AutoBind, None) => Ok(DeviceLock::AutoBind),
            (DeviceMode::Fixed, Some(fp)) => Ok(DeviceLock::Fixed(fp.0)),
            (DeviceMode::Fixed, None) => Err(D::Error::missing_field("fingerprint")),
            (_, Some(_)) => Err(D::Error::custom(
                "`fingerprint` belongs to mode `fixed` only",
            )),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum GeoLockOut<'a> {
    Lists {
        countries: &'a [String],
        cities: &'a [CityRef],
    },
    AutoBind {
        mode: &'static str,
        level: GeoLevel,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum GeoModeIn {
    Allow,
    AutoBind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GeoLockIn {
    #[serde(default)]
    mode: Option<GeoModeIn>,
    #[serde(default)]
    level: Option<GeoLevel>,
    #[serde(default)]
    countries: Vec<Country>,
    #[serde(default)]
    cities: Vec<CityRef>,
}

impl Serialize for GeoLock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.auto_bind {
            Some(level) => GeoLockOut::AutoBind {
                mode: "auto_bind",
                level,
            },
            None => GeoLockOut::Lists {
                countries: &self.countries,
                cities: &self.cities,
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for GeoLock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = GeoLockIn::deserialize(d)?;
        match raw.mode {
            Some(GeoModeIn::AutoBind) => {
                if !raw.countries.is_empty() || !raw.cities.is_empty() {
                    return Err(D::Error::custom(
                        "a geo lock in auto_bind mode takes no countries or cities",
                    ));
                }
                Ok(GeoLock {
                    countries: Vec::new(),
                    cities: Vec::new(),
                    auto_bind: Some(raw.level.unwrap_or_default()),
                })
            }
            Some(GeoModeIn::Allow) | None => {
                if raw.level.is_some() {
                    return Err(D::Error::custom(
                        "`level` applies only to a geo lock in auto_bind mode",
                    ));
                }
                Ok(GeoLock {
                    countries: raw.countries.into_iter().map(|c| c.0).collect(),
                    cities: raw.cities,
                    auto_bind: None,
                })
            }
        }
    }
}

fn ser_nets<S: Serializer>(nets: &&[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

fn country_code<E: serde::de::Error>(raw: String) -> Result<String, E> {
    if raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(raw.to_ascii_uppercase())
    } else {
        Err(E::custom(format_args!(
            "{:?} is not an ISO 3166-1 alpha-2 country code",
            raw.chars().take(16).collect::<String>()
        )))
    }
}

fn de_country<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    country_code(String::deserialize(d)?)
}

/// One entry of a country list, refused on its own so the error names its index.
struct Country(String);

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        country_code(String::deserialize(d)?).map(Country)
    }
}

fn de_city<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let city = String::deserialize(d)?;
    if city.trim().is_empty() {
        return Err(serde::de::Error::custom("city name must not be empty"));
    }
    Ok(city)
}

fn ser_public_key<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(key))
}

fn de_public_key<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let raw = String::deserialize(d)?;
    signature::decode_public_key(&raw).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ip: &str, now: i64) -> RequestFacts<'static> {
        RequestFacts {
            client_ip: ip.parse().unwrap(),
            geo: None,
            device_fingerprint: None,
            model: RequestModel::NoModel,
            signature: None,
            now,
        }
    }

    #[test]
    fn deny_code_names() {
        for code in DenyCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn default_locks_bind_first_ip() {
        let d = evaluate(&facts("1.2.3.4", 0), &KeyLocks::default());
        assert_eq!(
            d,
            Decision::Allow {
                bind_ip: Some("1.2.3.4".parse().unwrap()),
                bind_device: None,
                bind_place: None,
                replay_id: None
            }
        );
    }

    #[test]
    fn mapped_bound_ip_matches_v4_client() {
        let locks = KeyLocks {
            bound_ip: Some("::ffff:1.2.3.4".parse().unwrap()),
            ..KeyLocks::default()
        };
        assert!(evaluate(&facts("1.2.3.4", 0), &locks).is_allow());
        assert!(evaluate(&facts("::ffff:1.2.3.4", 0), &locks).is_allow());
        assert!(!evaluate(&facts("1.2.3.5", 0), &locks).is_allow());
    }

    #[test]
    fn caseless() {
        assert!(eq_caseless("Zürich", "ZÜRICH"));
        assert!(eq_caseless(" new york ", "New York"));
        assert!(!eq_caseless("York", "New York"));
    }
}
