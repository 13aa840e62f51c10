//! Arguments → admin API request bodies. Pure: no I/O, so every mapping is unit-tested.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

/// `--models a,b` → the allow-list; `--models any` → `None` (any model).
pub fn models(values: &[String]) -> anyhow::Result<Option<Vec<String>>> {
    let names: Vec<String> = values
        .iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if names.is_empty() {
        bail!("--models needs model names (a,b) or `any`");
    }
    if names.iter().any(|n| n == "any") {
        if names.len() > 1 {
            bail!("--models any stands alone: it lifts the model allow-list");
        }
        return Ok(None);
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(Some(out))
}

/// An ISO 3166-1 alpha-2 country code, upper-cased.
pub fn country(value: &str) -> anyhow::Result<String> {
    let v = value.trim();
    if v.len() != 2 || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
        bail!("{value:?} is not a two-letter country code (ISO 3166-1 alpha-2, e.g. DE)");
    }
    Ok(v.to_ascii_uppercase())
}

/// `--country DE,FR` → `["DE","FR"]` (duplicates dropped).
pub fn countries(values: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for v in values.iter().filter(|v| !v.trim().is_empty()) {
        let c = country(v)?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `--city "GB/London"` → `{"country":"GB","city":"London"}`.
pub fn city(value: &str) -> anyhow::Result<Value> {
    let Some((c, name)) = value.split_once('/') else {
        bail!("{value:?} is not Country/City (e.g. \"GB/London\")");
    };
    let name = name.trim();
    if name.is_empty() {
        bail!("{value:?} names no city (e.g. \"GB/London\")");
    }
    let c = country(c).with_context(|| format!("in --city {value:?}"))?;
    Ok(json!({"country": c, "city": name}))
}

/// Several `--city` values (duplicates, compared case-insensitively, dropped).
pub fn cities(values: &[String]) -> anyhow::Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    for v in values {
        let c = city(v)?;
        let same = |o: &Value| {
            o["country"] == c["country"]
                && o["city"].as_str().map(str::to_lowercase)
                    == c["city"].as_str().map(str::to_lowercase)
        };
        if !out.iter().any(same) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `--expires 2027-01-01T00:00:00Z` → Unix seconds; `--expires never` → `None`.
pub fn expires(value: &str) -> anyhow::Result<Option<i64>> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            anyhow::anyhow!(
                "--expires {value:?} is neither an RFC 3339 time (e.g. 2027-01-01T00:00:00Z) nor `never`"
            )
        })?;
    Ok(Some(t.unix_timestamp()))
}

/// An IP address or CIDR for an IP allow-list, as written (a bare address is one host).
pub fn ip_or_cidr(value: &str) -> anyhow::Result<String> {
    let v = value.trim();
    let bad = || {
        anyhow::anyhow!(
            "{value:?} is not an IP address or CIDR (e.g. 203.0.113.7 or 203.0.113.0/24)"
        )
    };
    match v.split_once('/') {
        None => {
            v.parse::<IpAddr>().map_err(|_| bad())?;
        }
        Some((addr, prefix)) => {
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let prefix: u8 = prefix.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                bail!("{value:?}: the prefix length is at most {max}");
            }
        }
    }
    Ok(v.to_owned())
}

/// Several `--ip` values, duplicates dropped.
pub fn ips(values: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for v in values.iter().filter(|v| !v.trim().is_empty()) {
        let ip = ip_or_cidr(v)?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        bail!("give at least one --ip");
    }
    Ok(out)
}

/// `--grace 24h` → whole seconds (rounded up).
pub fn grace_secs(grace: Duration) -> u64 {
    grace.as_secs() + u64::from(grace.subsec_nanos() > 0)
}

/// What `keys create` asks for.
#[derive(Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub connection_ids: Vec<String>,
    /// `None`: any model.
    pub models: Option<Vec<String>>,
    pub countries: Vec<String>,
    pub cities: Vec<Value>,
}

/// `POST /projects/{id}/keys`'s body. Locks not given keep a new key's defaults (IP
/// auto-bind on first use).
pub fn create_key(k: &NewKey) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(k.name));
    if !k.connection_ids.is_empty() {
        body.insert("connection_ids".into(), json!(k.connection_ids));
    }
    if let Some(models) = &k.models {
        body.insert("allowed_models".into(), json!(models));
    }
    if !k.countries.is_empty() || !k.cities.is_empty() {
        body.insert(
            "locks".into(),
            json!({"geo": {"countries": k.countries, "cities": k.cities}}),
        );
    }
    Value::Object(body)
}

/// Changes to a key's locks; `None` fields are kept as they are.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LockChanges {
    /// `Some(None)`: any model.
    pub models: Option<Option<Vec<String>>>,
    /// Replaces the city list (`Some(vec![])` clears it).
    pub cities: Option<Vec<Value>>,
    /// Replaces the country list (`Some(vec![])` clears it).
    pub countries: Option<Vec<String>>,
    /// `Some(None)`: never expires.
    pub expires_at: Option<Option<i64>>,
    /// Sets the IP lock to this allow-list.
    pub ip_allow: Option<Vec<String>>,
    /// Sets the device lock to this fixed fingerprint.
    pub device_fixed: Option<String>,
    /// Replaces the location lock with an auto-bind at this level (`country`, `city`),
    /// or removes it (`off`).
    pub geo_bind: Option<&'static str>,
}

impl LockChanges {
    pub fn is_empty(&self) -> bool {
        *self == LockChanges::default()
    }

    /// The full locks object for `PUT /keys/{id}/locks`: `current` (the `locks` of
    /// `GET /keys/{id}/locks`) with these changes, everything else as it was.
    pub fn apply(&self, current: &Value) -> anyhow::Result<Value> {
        let Some(current) = current.as_object() else {
            bail!("the admin API sent no locks object for the key");
        };
        let mut locks = current.clone();
        if let Some(models) = &self.models {
            locks.insert("models".into(), json!(models));
        }
        if self.cities.is_some() || self.countries.is_some() {
            let geo = locks.get("geo").and_then(Value::as_object);
            let list = |field: &str| -> Vec<Value> {
                geo.and_then(|g| g.get(field))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let countries = match &self.countries {
                Some(c) => c.iter().map(|c| json!(c)).collect(),
                None => list("countries"),
            };
            let cities = match &self.cities {
                Some(c) => c.clone(),
                None => list("cities"),
            };
            let geo = if countries.is_empty() && cities.is_empty() {
                Value::Null
            } else {
                json!({"countries": countries, "cities": cities})
            };
            locks.insert("geo".into(), geo);
        }
        match self.geo_bind {
            Some("off") => {
                locks.insert("geo".into(), Value::Null);
            }
            Some(level) => {
                locks.insert("geo".into(), json!({"mode": "auto_bind", "level": level}));
            }
            None => {}
        }
        if let Some(expires_at) = self.expires_at {
            locks.insert("expires_at".into(), json!(expires_at));
        }
        if let Some(cidrs) = &self.ip_allow {
            locks.insert("ip".into(), json!({"mode": "allow", "cidrs": cidrs}));
        }
        if let Some(fp) = &self.device_fixed {
            locks.insert("device".into(), json!({"mode": "fixed", "fingerprint": fp}));
        }
        Ok(Value::Object(locks))
    }
}

/// `POST /keys/{id}/revoke`'s body.
pub fn revoke(reason: Option<&str>) -> Value {
    match reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    }
}

/// `POST /keys/{id}/rotate`'s body.
pub fn rotate(grace: Option<Duration>) -> Value {
    match grace {
        Some(g) => json!({"grace_secs": grace_secs(g)}),
        None => json!({}),
    }
}

/// `POST /projects/{id}/connections`'s body, without the provider key (added by the
/// caller from what it read without echo).
pub fn connection(
    provider: &str,
    name: Option<&str>,
    base_url: Option<&str>,
) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("provider".into(), json!(provider));
    if let Some(n) = name {
        body.insert("name".into(), json!(n));
    }
    if let Some(u) = base_url {
        body.insert("base_url".into(), json!(u));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn models_lists_and_any() {
        assert_eq!(
            models(&s(&["gpt-4o", " gpt-4o-mini", "gpt-4o"])).unwrap(),
            Some(s(&["gpt-4o", "gpt-4o-mini"]))
        );
        assert_eq!(models(&s(&["any"])).unwrap(), None);
        assert!(models(&s(&["any", "gpt-4o"])).is_err());
        assert!(models(&s(&["", " "])).is_err());
    }

    #[test]
    fn countries_and_cities() {
        assert_eq!(
            countries(&s(&["de", "FR", "DE"])).unwrap(),
            s(&["DE", "FR"])
        );
        assert!(countries(&s(&["Germany"])).is_err());
        assert!(countries(&s(&["D1"])).is_err());
        assert_eq!(
            city("gb/London").unwrap(),
            json!({"country": "GB", "city": "London"})
        );
        assert_eq!(
            city("US/New York").unwrap(),
            json!({"country": "US", "city": "New York"})
        );
        assert!(city("London").is_err());
        assert!(city("GB/ ").is_err());
        assert!(city("UK-ish/London").is_err());
        assert_eq!(
            cities(&s(&["GB/London", "gb/london", "DE/Berlin"])).unwrap(),
            vec![
                json!({"country": "GB", "city": "London"}),
                json!({"country": "DE", "city": "Berlin"})
            ]
        );
    }

    #[test]
    fn expiry_times() {
        assert_eq!(expires("never").unwrap(), None);
        assert_eq!(
            expires("2027-01-01T00:00:00Z").unwrap(),
            Some(1_798_761_600)
        );
        assert_eq!(
            expires("2027-01-01T01:00:00+01:00").unwrap(),
            Some(1_798_761_600)
        );
        assert!(expires("2027-01-01").is_err());
        assert!(expires("tomorrow").is_err());
    }

    #[test]
    fn ip_allow_list_entries() {
        assert_eq!(ip_or_cidr("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(ip_or_cidr(" 10.0.0.0/8 ").unwrap(), "10.0.0.0/8");
        assert_eq!(ip_or_cidr("2001:db8::/32").unwrap(), "2001:db8::/32");
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "example.com",
            "10.0.0.0/x",
            "1.2.3",
        ] {
            assert!(ip_or_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ips(&s(&["127.0.0.1", "127.0.0.1", "10.0.0.0/8"])).unwrap(),
            s(&["127.0.0.1", "10.0.0.0/8"])
        );
        assert!(ips(&[]).is_err());
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_secs(Duration::from_secs(86_400)), 86_400);
        assert_eq!(grace_secs(Duration::from_millis(1500)), 2);
        assert_eq!(grace_secs(Duration::ZERO), 0);
        assert_eq!(
            rotate(Some(Duration::from_secs(2))),
            json!({"grace_secs": 2})
        );
        assert_eq!(rotate(None), json!({}));
    }

    #[test]
    fn create_key_bodies() {
        let minimal = NewKey {
            name: "ci".into(),
            ..NewKey::default()
        };
        assert_eq!(create_key(&minimal), json!({"name": "ci"}));
        let full = NewKey {
            name: "agent".into(),
            connection_ids: s(&["openai_1", "mock_2"]),
            models: Some(s(&["gpt-4o-mini"])),
            countries: s(&["DE"]),
            cities: vec![json!({"country": "GB", "city": "London"})],
        };
        assert_eq!(
            create_key(&full),
            json!({
                "name": "agent",
                "connection_ids": ["openai_1", "mock_2"],
                "allowed_models": ["gpt-4o-mini"],
                "locks": {"geo": {"countries": ["DE"], "cities": [{"country": "GB", "city": "London"}]}}
            })
        );
    }

    fn current() -> Value {
        json!({
            "ip": {"mode": "auto_bind"},
            "device": {"mode": "off"},
            "geo": {"countries": ["DE"], "cities": [{"country": "GB", "city": "London"}]},
            "models": ["a"],
            "signature": null,
            "expires_at": 1_798_761_600
        })
    }

    #[test]
    fn lock_changes_keep_what_was_not_given() {
        let none = LockChanges::default();
        assert!(none.is_empty());
        assert_eq!(none.apply(&current()).unwrap(), current());

        let models_any = LockChanges {
            models: Some(None),
            ..LockChanges::default()
        };
        let out = models_any.apply(&current()).unwrap();
        assert_eq!(out["models"], Value::Null);
        assert_eq!(out["geo"], current()["geo"]);
        assert_eq!(out["expires_at"], current()["expires_at"]);

        let countries_only = LockChanges {
            countries: Some(s(&["FR"])),
            ..LockChanges::default()
        };
        let out = countries_only.apply(&current()).unwrap();
        assert_eq!(
            out["geo"],
            json!({"countries": ["FR"], "cities": [{"country": "GB", "city": "London"}]})
        );
        assert_eq!(out["models"], json!(["a"]));
    }

    #[test]
    fn geo_bind_replaces_the_location_lock() {
        let city = LockChanges {
            geo_bind: Some("city"),
            ..LockChanges::default()
        };
        let out = city.apply(&current()).unwrap();
        assert_eq!(out["geo"], json!({"mode": "auto_bind", "level": "city"}));
        assert_eq!(out["models"], current()["models"]);
        let off = LockChanges {
            geo_bind: Some("off"),
            ..LockChanges::default()
        };
        assert_eq!(off.apply(&current()).unwrap()["geo"], Value::Null);
    }

    #[test]
    fn clearing_both_geo_lists_removes_the_location_lock() {
        let clear = LockChanges {
            countries: Some(vec![]),
            cities: Some(vec![]),
            ..LockChanges::default()
        };
        assert_eq!(clear.apply(&current()).unwrap()["geo"], Value::Null);
        // From no geo lock, adding a city.
        let mut no_geo = current();
        no_geo["geo"] = Value::Null;
        let add = LockChanges {
            cities: Some(vec![json!({"country": "GB", "city": "London"})]),
            ..LockChanges::default()
        };
        assert_eq!(
            add.apply(&no_geo).unwrap()["geo"],
            json!({"countries": [], "cities": [{"country": "GB", "city": "London"}]})
        );
    }

    #[test]
    fn expiry_ip_and_device_changes() {
        let c = LockChanges {
            expires_at: Some(None),
            ip_allow: Some(s(&["127.0.0.1"])),
            device_fixed: Some("sgd_x".into()),
            ..LockChanges::default()
        };
        let out = c.apply(&current()).unwrap();
        assert_eq!(out["expires_at"], Value::Null);
        assert_eq!(out["ip"], json!({"mode": "allow", "cidrs": ["127.0.0.1"]}));
        assert_eq!(
            out["device"],
            json!({"mode": "fixed", "fingerprint": "sgd_x"})
        );
        assert_eq!(out["models"], json!(["a"]));
        assert!(c.apply(&Value::Null).is_err());
    }

    #[test]
    fn other_bodies() {
        assert_eq!(revoke(None), json!({}));
        assert_eq!(revoke(Some("leaked")), json!({"reason": "leaked"}));
        assert_eq!(
            Value::Object(connection("openai", Some("prod"), Some("https://x/v1"))),
            json!({"provider": "openai", "name": "prod", "base_url": "https://x/v1"})
        );
        assert_eq!(
            Value::Object(connection("mock", None, None)),
            json!({"provider": "mock"})
        );
    }
}
