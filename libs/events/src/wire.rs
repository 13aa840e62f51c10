//! The shapes events give to types that other crates own: a sealed provider key
//! (`sg_crypto::SealedSecret`) and a key's lock settings (`sg_policy::LockSettings`).
//!
//! Events carry these wire types, so the JSON Schemas under `schemas/` are generated from
//! what is actually written, and the owning crates stay free to change their own types.
//! Conversions go both ways; reading a lock setting back goes through the policy's own
//! validating reader, so an event can never hold a lock the policy would refuse.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sg_crypto::SealedSecret;
use sg_policy::LockSettings;

/// A provider key sealed under its own data key (see `sg-crypto`): safe to store and to
/// log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedKey {
    /// Format version.
    pub v: u8,
    /// Which KMS wrapped the data key: `local` or `aws`.
    pub kms: String,
    /// The key-encryption key's id.
    pub kek_id: String,
    /// The wrapped data key, base64.
    pub wrapped_key: String,
    /// The 96-bit AES-GCM nonce, base64.
    pub nonce: String,
    /// AES-256-GCM ciphertext with its tag, base64.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedKey")
            .field("v", &self.v)
            .field("kms", &self.kms)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

impl From<SealedSecret> for SealedKey {
    fn from(s: SealedSecret) -> Self {
        SealedKey {
            v: s.v,
            kms: s.kms,
            kek_id: s.kek_id,
            wrapped_key: s.wrapped_key,
            nonce: s.nonce,
            ciphertext: s.ciphertext,
        }
    }
}

impl From<SealedKey> for SealedSecret {
    fn from(k: SealedKey) -> Self {
        SealedSecret {
            v: k.v,
            kms: k.kms,
            kek_id: k.kek_id,
            wrapped_key: k.wrapped_key,
            nonce: k.nonce,
            ciphertext: k.ciphertext,
        }
    }
}

/// Which client addresses may use a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum IpLockData {
    /// Any address.
    Off {},
    /// The first address that uses the key becomes its only address (the default).
    AutoBind {},
    /// Only these networks (addresses or CIDRs).
    Allow { cidrs: Vec<String> },
}

impl Default for IpLockData {
    fn default() -> Self {
        IpLockData::AutoBind {}
    }
}

/// Which device may use a key (its `x-device-fingerprint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceLockData {
    /// No device check (the default).
    Off {},
    /// The first fingerprint that uses the key becomes its only one.
    AutoBind {},
    /// Only this fingerprint.
    Fixed { fingerprint: String },
}

impl Default for DeviceLockData {
    fn default() -> Self {
        DeviceLockData::Off {}
    }
}

/// Where requests may come from: a country in `countries`, or a city in `cities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GeoLockData {
    /// ISO 3166-1 alpha-2 codes.
    pub countries: Vec<String>,
    pub cities: Vec<CityData>,
}

/// One city: its country code and English name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CityData {
    pub country: String,
    pub city: String,
}

/// Where requests may come from (v2): either the list form of [`GeoLockData`]
/// (`countries`, `cities`, optionally `"mode": "allow"`), or `{"mode": "auto_bind",
/// "level": "country" | "city"}`: the key is bound to the place of its first use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GeoLockDataV2 {
    /// `allow` (the list form, the default) or `auto_bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<GeoModeData>,
    /// With `auto_bind`: `country` (the default) or `city`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<GeoLevelData>,
    /// ISO 3166-1 alpha-2 codes (list form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<String>>,
    /// Cities (list form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cities: Option<Vec<CityData>>,
}

/// The form of a v2 location lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GeoModeData {
    Allow,
    AutoBind,
}

/// How precisely a location auto-bind binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GeoLevelData {
    Country,
    City,
}

impl From<GeoLockData> for GeoLockDataV2 {
    fn from(g: GeoLockData) -> Self {
        GeoLockDataV2 {
            mode: None,
            level: None,
            countries: Some(g.countries),
            cities: Some(g.cities),
        }
    }
}

/// A place a key is bound to: a country code, and a city for city-level bindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceData {
    pub country: String,
    pub city: Option<String>,
}

impl From<sg_policy::Place> for PlaceData {
    fn from(p: sg_policy::Place) -> Self {
        PlaceData {
            country: p.country,
            city: p.city,
        }
    }
}

impl From<PlaceData> for sg_policy::Place {
    fn from(p: PlaceData) -> Self {
        sg_policy::Place {
            country: p.country,
            city: p.city,
        }
    }
}

/// Requests must be signed with the Ed25519 key whose public half this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureLockData {
    /// Standard base64 of the 32-byte public key.
    pub public_key: String,
}

/// A key's owner-set locks, as events carry them. Every field may be omitted; the
/// defaults are those of a new key (IP auto-bind, everything else off).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Locks {
    pub ip: IpLockData,
    pub device: DeviceLockData,
    pub geo: Option<GeoLockData>,
    /// Allowed model names; `null`: any model.
    pub models: Option<Vec<String>>,
    pub signature: Option<SignatureLockData>,
    /// Unix seconds at which the key stops working.
    pub expires_at: Option<i64>,
}

/// A key's owner-set locks (v2): [`Locks`] whose location lock may also auto-bind
/// ([`GeoLockDataV2`]). Every field may be omitted, with a new key's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LocksV2 {
    pub ip: IpLockData,
    pub device: DeviceLockData,
    pub geo: Option<GeoLockDataV2>,
    /// Allowed model names; `null`: any model.
    pub models: Option<Vec<String>>,
    pub signature: Option<SignatureLockData>,
    /// Unix seconds at which the key stops working.
    pub expires_at: Option<i64>,
}

impl From<Locks> for LocksV2 {
    fn from(l: Locks) -> Self {
        LocksV2 {
            ip: l.ip,
            device: l.device,
            geo: l.geo.map(Into::into),
            models: l.models,
            signature: l.signature,
            expires_at: l.expires_at,
        }
    }
}

/// A model's price, micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceData {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
    /// Cached input; `null`: charged as input.
    pub cached_input_micros_per_mtok: Option<u64>,
}

impl From<PriceData> for sg_spend::Price {
    fn from(p: PriceData) -> Self {
        sg_spend::Price {
            input: p.input_micros_per_mtok,
            output: p.output_micros_per_mtok,
            cached_input: p.cached_input_micros_per_mtok,
        }
    }
}

impl From<sg_spend::Price> for PriceData {
    fn from(p: sg_spend::Price) -> Self {
        PriceData {
            input_micros_per_mtok: p.input,
            output_micros_per_mtok: p.output,
            cached_input_micros_per_mtok: p.cached_input,
        }
    }
}

/// A budget: micro-dollars per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetData {
    pub micros: u64,
    /// `day`, `month` (UTC) or `total`.
    pub period: PeriodData,
}

/// How a budget renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeriodData {
    Day,
    Month,
    Total,
}

/// Limits of a key or a project; an absent field means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsData {
    /// Requests per UTC minute.
    pub rpm: Option<u64>,
    /// Requests per UTC day.
    pub rpd: Option<u64>,
    /// Tokens per UTC minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrent: Option<u64>,
    pub budget: Option<BudgetData>,
}

impl From<LimitsData> for sg_spend::Limits {
    fn from(l: LimitsData) -> Self {
        sg_spend::Limits {
            rpm: l.rpm,
            rpd: l.rpd,
            tpm: l.tpm,
            concurrent: l.concurrent,
            budget: l.budget.map(|b| sg_spend::Budget {
                micros: b.micros,
                period: match b.period {
                    PeriodData::Day => sg_spend::Period::Day,
                    PeriodData::Month => sg_spend::Period::Month,
                    PeriodData::Total => sg_spend::Period::Total,
                },
            }),
        }
    }
}

impl From<sg_spend::Limits> for LimitsData {
    fn from(l: sg_spend::Limits) -> Self {
        LimitsData {
            rpm: l.rpm,
            rpd: l.rpd,
            tpm: l.tpm,
            concurrent: l.concurrent,
            budget: l.budget.map(|b| BudgetData {
                micros: b.micros,
                period: match b.period {
                    sg_spend::Period::Day => PeriodData::Day,
                    sg_spend::Period::Month => PeriodData::Month,
                    sg_spend::Period::Total => PeriodData::Total,
                },
            }),
        }
    }
}

/// Locks that the policy refuses to read (an event this build cannot have written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lock settings: {0}")]
pub struct LocksError(pub String);

impl From<&LockSettings> for LocksV2 {
    fn from(l: &LockSettings) -> Self {
        use base64::Engine as _;
        LocksV2 {
            ip: match &l.ip {
                sg_policy::IpLock::Off => IpLockData::Off {},
                sg_policy::IpLock::AutoBind => IpLockData::AutoBind {},
                sg_policy::IpLock::Allow(nets) => IpLockData::Allow {
                    cidrs: nets.iter().map(ToString::to_string).collect(),
                },
            },
            device: match &l.device {
                sg_policy::DeviceLock::Off => DeviceLockData::Off {},
                sg_policy::DeviceLock::AutoBind => DeviceLockData::AutoBind {},
                sg_policy::DeviceLock::Fixed(fingerprint) => DeviceLockData::Fixed {
                    fingerprint: fingerprint.clone(),
                },
            },
            geo: l.geo.as_ref().map(|g| match g.auto_bind {
                Some(level) => GeoLockDataV2 {
                    mode: Some(GeoModeData::AutoBind),
                    level: Some(match level {
                        sg_policy::GeoLevel::Country => GeoLevelData::Country,
                        sg_policy::GeoLevel::City => GeoLevelData::City,
                    }),
                    countries: None,
                    cities: None,
                },
                None => GeoLockDataV2 {
                    mode: None,
                    level: None,
                    countries: Some(g.countries.clone()),
                    cities: Some(
                        g.cities
                            .iter()
                            .map(|c| CityData {
                                country: c.country.clone(),
                                city: c.city.clone(),
                            })
                            .collect(),
                    ),
                },
            }),
            models: l.models.clone(),
            signature: l.signature.map(|s| SignatureLockData {
                public_key: base64::engine::general_purpose::STANDARD.encode(s.public_key),
            }),
            expires_at: l.expires_at,
        }
    }
}

impl TryFrom<&LocksV2> for LockSettings {
    type Error = LocksError;

    /// Read through the policy's own validating reader (addresses, country codes,
    /// fingerprints, public keys), so no second copy of its rules lives here.
    fn try_from(locks: &LocksV2) -> Result<Self, LocksError> {
        let value = serde_json::to_value(locks).map_err(|e| LocksError(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| LocksError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_convert_both_ways_and_match_the_policy_json() {
        let settings: Vec<LockSettings> = [
            "{}",
            r#"{"ip":{"mode":"off"}}"#,
            r#"{"ip":{"mode":"allow","cidrs":["203.0.113.0/24","2001:db8::/32","198.51.100.7"]},
                "device":{"mode":"fixed","fingerprint":"dev-7f3a"},
                "geo":{"countries":["de"],"cities":[{"country":"US","city":"New York"}]},
                "models":["gpt-4o-mini"],
                "signature":{"public_key":"O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik="},
                "expires_at":1767225600}"#,
            r#"{"device":{"mode":"auto_bind"},"geo":{}}"#,
            r#"{"geo":{"mode":"auto_bind"}}"#,
            r#"{"geo":{"mode":"auto_bind","level":"city"}}"#,
        ]
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
        for s in settings {
            let wire = LocksV2::from(&s);
            assert_eq!(LockSettings::try_from(&wire).unwrap(), s);
            // The wire JSON is the policy's JSON: old events decode either way.
            assert_eq!(
                serde_json::to_value(&wire).unwrap(),
                serde_json::to_value(&s).unwrap()
            );
        }
        let bad = LocksV2 {
            ip: IpLockData::Allow {
                cidrs: vec!["not-an-address".into()],
            },
            ..LocksV2::default()
        };
        assert!(LockSettings::try_from(&bad).is_err());
        let mixed = LocksV2 {
            geo: Some(GeoLockDataV2 {
                mode: Some(GeoModeData::AutoBind),
                countries: Some(vec!["DE".into()]),
                ..GeoLockDataV2::default()
            }),
            ..LocksV2::default()
        };
        assert!(LockSettings::try_from(&mixed).is_err());
        // A v1 location lock reads the same through v2.
        let v1: Locks = serde_json::from_str(r#"{"geo":{"countries":["DE"]}}"#).unwrap();
        let v2 = LocksV2::from(v1);
        assert_eq!(
            LockSettings::try_from(&v2).unwrap().geo.unwrap().countries,
            vec!["DE".to_owned()]
        );
    }
}

/// A plan's terms: what a tenant on it may use, and the limits its keys get when they
/// set none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanData {
    /// Connections per tenant; `null`: unlimited.
    pub max_connections: Option<u32>,
    /// The lock features it includes: `ip`, `model`, `city`, `country`, `device`,
    /// `signature`, `geo_auto_bind`.
    pub features: Vec<String>,
    /// Requests per minute of a key that sets none; `null`: none.
    pub key_rpm: Option<u64>,
    /// Requests per day of a key that sets none; `null`: none.
    pub key_rpd: Option<u64>,
}

/// A project's abuse-detection settings, every field present (see `sg-abuse` for the
/// rules and their defaults). A `null` threshold turns that check off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbuseSettingsData {
    pub velocity: VelocityData,
    pub spread: SpreadData,
    pub violations: CountWindowData,
    pub model_probing: CountWindowData,
    /// Seconds a key is suspended when a rule fires.
    pub suspend_seconds: u64,
    pub enabled: bool,
}

/// Velocity and spike thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VelocityData {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub cost_micros: Option<u64>,
    pub window_seconds: u64,
    /// A multiple of the key's baseline, greater than 1.
    pub spike_factor: Option<Factor>,
    pub spike_min_requests: u64,
}

/// Distinct client IPs and countries per window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpreadData {
    pub ips: Option<u64>,
    pub countries: Option<u64>,
    pub window_seconds: u64,
}

/// A count per window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountWindowData {
    pub count: Option<u64>,
    pub window_seconds: u64,
}

/// A finite number, compared by its bits (events are compared for equality).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Factor(pub f64);

impl PartialEq for Factor {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Factor {}

impl From<&sg_abuse::AbuseSettings> for AbuseSettingsData {
    fn from(s: &sg_abuse::AbuseSettings) -> Self {
        AbuseSettingsData {
            velocity: VelocityData {
                requests: s.velocity.requests,
                tokens: s.velocity.tokens,
                cost_micros: s.velocity.cost_micros,
                window_seconds: s.velocity.window_seconds,
                spike_factor: s.velocity.spike_factor.map(Factor),
                spike_min_requests: s.velocity.spike_min_requests,
            },
            spread: SpreadData {
                ips: s.spread.ips,
                countries: s.spread.countries,
                window_seconds: s.spread.window_seconds,
            },
            violations: CountWindowData {
                count: s.violations.count,
                window_seconds: s.violations.window_seconds,
            },
            model_probing: CountWindowData {
                count: s.model_probing.count,
                window_seconds: s.model_probing.window_seconds,
            },
            suspend_seconds: s.suspend_seconds,
            enabled: s.enabled,
        }
    }
}

impl From<&AbuseSettingsData> for sg_abuse::AbuseSettings {
    fn from(d: &AbuseSettingsData) -> Self {
        sg_abuse::AbuseSettings {
            velocity: sg_abuse::VelocitySettings {
                requests: d.velocity.requests,
                tokens: d.velocity.tokens,
                cost_micros: d.velocity.cost_micros,
                window_seconds: d.velocity.window_seconds,
                spike_factor: d.velocity.spike_factor.map(|f| f.0),
                spike_min_requests: d.velocity.spike_min_requests,
            },
            spread: sg_abuse::SpreadSettings {
                ips: d.spread.ips,
                countries: d.spread.countries,
                window_seconds: d.spread.window_seconds,
            },
            violations: sg_abuse::ViolationSettings {
                count: d.violations.count,
                window_seconds: d.violations.window_seconds,
            },
            model_probing: sg_abuse::ProbeSettings {
                count: d.model_probing.count,
                window_seconds: d.model_probing.window_seconds,
            },
            suspend_seconds: d.suspend_seconds,
            enabled: d.enabled,
        }
    }
}
