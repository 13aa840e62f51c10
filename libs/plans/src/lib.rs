//! Plans: what a tenant may use. Pure: no I/O, no clock.
//!
//! A tenant is on a plan, by name. The built-in plans ([`builtin`]) are `free`, `pro`
//! and `team`; the operator may define more, or redefine these, and a [`Catalog`] holds
//! the result. A plan says which lock features its tenants' keys may use, how many
//! connections a tenant may have, and the request limits of keys that set none (which
//! are also the most a key may set for itself).
//!
//! **Architecture invariant:** a refusal names a plan that would allow the request, so
//! the caller can say which plan to move to.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use sg_policy::{DeviceLock, IpLock, LockSettings};
use sg_spend::Limits;

/// A lock feature a plan may include.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// IP lock (auto-bind or allow-list).
    Ip,
    /// Model allow-list.
    Model,
    /// City allow-list.
    City,
    /// Country allow-list.
    Country,
    /// Device lock (auto-bind or fixed fingerprint).
    Device,
    /// Signed requests.
    Signature,
    /// Location auto-bind (the first request's place).
    GeoAutoBind,
}

impl Feature {
    pub const ALL: [Feature; 7] = [
        Feature::Ip,
        Feature::Model,
        Feature::City,
        Feature::Country,
        Feature::Device,
        Feature::Signature,
        Feature::GeoAutoBind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Ip => "ip",
            Feature::Model => "model",
            Feature::City => "city",
            Feature::Country => "country",
            Feature::Device => "device",
            Feature::Signature => "signature",
            Feature::GeoAutoBind => "geo_auto_bind",
        }
    }

    /// The lock settings field the feature is set in (for an error's `param`).
    pub fn param(self) -> &'static str {
        match self {
            Feature::Ip => "locks.ip",
            Feature::Model => "locks.models",
            Feature::City => "locks.geo.cities",
            Feature::Country => "locks.geo.countries",
            Feature::Device => "locks.device",
            Feature::Signature => "locks.signature",
            Feature::GeoAutoBind => "locks.geo.mode",
        }
    }
}

impl std::str::FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Feature::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Feature::ALL.iter().map(|f| f.as_str()).collect();
                format!(
                    "unknown feature {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One plan's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    /// Connections per tenant; `None`: unlimited.
    pub max_connections: Option<u32>,
    pub features: BTreeSet<Feature>,
    /// Requests per minute of a key that sets none, and the most a key may set.
    pub key_rpm: Option<u64>,
    /// Requests per day of a key that sets none, and the most a key may set.
    pub key_rpd: Option<u64>,
}

impl Plan {
    pub fn has(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }
}

/// Whether `name` can name a plan: 1–32 characters of `[a-z0-9_-]`, starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The built-in plans, cheapest first.
pub fn builtin() -> Vec<Plan> {
    use Feature::*;
    vec![
        Plan {
            name: "free".into(),
            max_connections: Some(2),
            features: [Ip, Model].into(),
            key_rpm: Some(20),
            key_rpd: Some(1_000),
        },
        Plan {
            name: "pro".into(),
            max_connections: None,
            features: [Ip, Model, City, Country, Device, GeoAutoBind].into(),
            key_rpm: Some(200),
            key_rpd: Some(50_000),
        },
        Plan {
            name: "team".into(),
            max_connections: None,
            features: [Ip, Model, City, Country, Device, GeoAutoBind, Signature].into(),
            key_rpm: Some(1_000),
            key_rpd: Some(250_000),
        },
    ]
}

/// The lock features `locks` uses.
pub fn features_used(locks: &LockSettings) -> BTreeSet<Feature> {
    let mut used = BTreeSet::new();
    if !matches!(locks.ip, IpLock::Off) {
        used.insert(Feature::Ip);
    }
    if locks.models.is_some() {
        used.insert(Feature::Model);
    }
    if let Some(geo) = &locks.geo {
        if !geo.cities.is_empty() {
            used.insert(Feature::City);
        }
        if !geo.countries.is_empty() {
            used.insert(Feature::Country);
        }
        if geo.auto_bind.is_some() {
            used.insert(Feature::GeoAutoBind);
        }
    }
    if !matches!(locks.device, DeviceLock::Off) {
        used.insert(Feature::Device);
    }
    if locks.signature.is_some() {
        used.insert(Feature::Signature);
    }
    used
}

/// Why a plan refuses a request, and a plan that would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was asked for, e.g. `the city lock`.
    pub what: String,
    /// The request field it was asked for in.
    pub param: &'static str,
    /// The tenant's plan.
    pub plan: String,
    /// The first plan in the catalog that allows it, if any.
    pub needed: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not included in the {} plan", self.what, self.plan)?;
        match &self.needed {
            Some(p) => write!(f, "; the {p} plan includes it"),
            None => write!(f, "; no plan includes it"),
        }
    }
}

/// The plans in force: the built-in ones, redefined or added to by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Built-in plans first (cheapest first), then the operator's own by name.
    plans: Vec<Plan>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { plans: builtin() }
    }
}

impl Catalog {
    /// The built-in plans with `defined` laid over them (a definition replaces the plan
    /// of the same name, or adds one).
    pub fn new(defined: &BTreeMap<String, Plan>) -> Self {
        let mut plans = builtin();
        for plan in &mut plans {
            if let Some(d) = defined.get(&plan.name) {
                *plan = d.clone();
            }
        }
        for (name, d) in defined {
            if !plans.iter().any(|p| &p.name == name) {
                plans.push(d.clone());
            }
        }
        Catalog { plans }
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }

    fn first(&self, allows: impl Fn(&Plan) -> bool) -> Option<String> {
        self.plans
            .iter()
            .find(|p| allows(p))
            .map(|p| p.name.clone())
    }

    /// Whether `plan` allows lock settings that use `used`. Features a key already had
    /// (`before`) stay allowed, so a tenant moved to a smaller plan can still change
    /// its keys' other settings.
    pub fn check_features(
        &self,
        plan: &Plan,
        used: &BTreeSet<Feature>,
        before: &BTreeSet<Feature>,
    ) -> Result<(), Refusal> {
        match used.iter().find(|f| !plan.has(**f) && !before.contains(f)) {
            None => Ok(()),
            Some(&f) => Err(Refusal {
                what: format!("the {} lock", f.as_str().replace('_', " ")),
                param: f.param(),
                plan: plan.name.clone(),
                needed: self.first(|p| p.has(f)),
            }),
        }
    }

    /// Whether a tenant on `plan` that has `existing` connections may add one.
    pub fn check_connection(&self, plan: &Plan, existing: usize) -> Result<(), Refusal> {
        let fits = |p: &Plan| p.max_connections.is_none_or(|m| existing < m as usize);
        if fits(plan) {
            return Ok(());
        }
        Err(Refusal {
            what: format!(
                "a connection beyond {}",
                plan.max_connections.unwrap_or_default()
            ),
            param: "provider",
            plan: plan.name.clone(),
            needed: self.first(fits),
        })
    }

    /// Whether a key of a tenant on `plan` may set `limits` for itself: its requests per
    /// minute and per day at most the plan's.
    pub fn check_key_limits(&self, plan: &Plan, limits: &Limits) -> Result<(), Refusal> {
        let within = |own: Option<u64>, cap: Option<u64>| match (own, cap) {
            (_, None) => true,
            (None, Some(_)) => true,
            (Some(own), Some(cap)) => own <= cap,
        };
        let rpm_ok = |p: &Plan| within(limits.rpm, p.key_rpm);
        let rpd_ok = |p: &Plan| within(limits.rpd, p.key_rpd);
        if !rpm_ok(plan) {
            return Err(Refusal {
                what: format!("{} requests per minute", limits.rpm.unwrap_or_default()),
                param: "rpm",
                plan: plan.name.clone(),
                needed: self.first(|p| rpm_ok(p) && rpd_ok(p)),
            });
        }
        if !rpd_ok(plan) {
            return Err(Refusal {
                what: format!("{} requests per day", limits.rpd.unwrap_or_default()),
                param: "rpd",
                plan: plan.name.clone(),
                needed: self.first(|p| rpm_ok(p) && rpd_ok(p)),
            });
        }
        Ok(())
    }
}

/// A key's limits with its plan's defaults filled in where the key sets none.
pub fn with_plan_defaults(limits: Limits, plan: Option<&Plan>) -> Limits {
    match plan {
        None => limits,
        Some(p) => Limits {
            rpm: limits.rpm.or(p.key_rpm),
            rpd: limits.rpd.or(p.key_rpd),
            ..limits
        },
    }
}

#[cfg(test)]
mod tests;
