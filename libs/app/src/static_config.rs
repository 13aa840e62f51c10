//! Static connections and keys from a configuration file, for operators who run a
//! gateway without the admin API.
//!
//! ```toml
//! # Optional: the tenant and project the objects belong to (usage is recorded under them).
//! tenant = "ten_static"
//! project = "prj_static"
//!
//! [[connections]]
//! id = "openai_main"
//! provider = "openai"                       # or "mock"
//! base_url = "https://api.openai.com/v1"    # optional
//! api_key = { env = "OPENAI_API_KEY" }      # or { value = "sk-…" },
//!                                           #    { file = "/etc/securegate/openai.key" },
//!                                           #    { secret = "openai/api-key" }: a mounted
//!                                           #    Kubernetes secret, <secrets dir>/openai/api-key
//!
//! [[keys]]
//! id = "key_ci"
//! name = "ci"
//! key_sha256 = "…"                          # `securegate hash-key` prints it; or
//! # key = { env = "SG_CI_KEY" }              # the key itself, from any of the four sources
//! connections = ["openai_main"]
//! locks = { ip = { mode = "off" }, models = ["gpt-4o-mini"] }
//! limits = { rpm = 60, budget = { usd = 5.0, period = "day" } }   # optional
//! ```
//!
//! The file becomes the control events that would create these objects; they seed the
//! gateway's state before it follows the log. Provider keys are sealed at start with the
//! node's KMS like any other (so this node's KMS must be able to generate data keys);
//! their plaintext is dropped right after.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use sg_crypto::{Kms, SecretString};
use sg_events::{
    Actor, ConnectionCreatedV3, ConnectionId, Envelope, Event, KeyId, KeyIssuedV4,
    ProjectCreatedV1, ProjectId, Provider, TenantCreatedV2, TenantId,
};

/// Where a secret comes from: the four sources operators know.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// Inline in the file (fine for tests; prefer the others).
    Value(SecretString),
    /// An environment variable.
    Env(String),
    /// A file (trailing whitespace is trimmed).
    File(PathBuf),
    /// A mounted Kubernetes secret, `name/key`, read from `<secrets dir>/name/key`.
    Secret(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("Value([REDACTED])"),
            SecretSource::Env(v) => write!(f, "Env({v})"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Secret(s) => write!(f, "Secret({s})"),
        }
    }
}

impl SecretSource {
    fn resolve(&self, secrets_dir: &Path) -> anyhow::Result<SecretString> {
        let text = match self {
            SecretSource::Value(v) => v.expose().to_owned(),
            SecretSource::Env(name) => std::env::var(name)
                .with_context(|| format!("environment variable {name} is not set"))?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            SecretSource::Secret(reference) => {
                let (name, key) = reference
                    .split_once('/')
                    .filter(|(n, k)| {
                        !n.is_empty() && !k.is_empty() && !k.contains('/') && !n.contains("..")
                    })
                    .with_context(|| format!("secret {reference:?} must be `name/key`"))?;
                let path = secrets_dir.join(name).join(key);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the mounted secret {}", path.display()))?
            }
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            bail!("the secret from {self:?} is empty");
        }
        Ok(SecretString::new(trimmed.to_owned()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    tenant: Option<String>,
    project: Option<String>,
    #[serde(default)]
    connections: Vec<StaticConnection>,
    #[serde(default)]
    keys: Vec<StaticKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticConnection {
    id: String,
    provider: String,
    name: Option<String>,
    base_url: Option<String>,
    api_key: Option<SecretSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticKey {
    id: String,
    name: Option<String>,
    key_sha256: Option<String>,
    key: Option<SecretSource>,
    #[serde(default)]
    connections: Vec<String>,
    #[serde(default)]
    locks: sg_policy::LockSettings,
    #[serde(default)]
    limits: StaticLimits,
}

/// A key's limits as the file writes them: whole numbers, a budget in US dollars.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticLimits {
    rpm: Option<u64>,
    rpd: Option<u64>,
    tpm: Option<u64>,
    concurrent: Option<u64>,
    budget: Option<StaticBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticBudget {
    usd: f64,
    period: sg_spend::Period,
}

impl StaticLimits {
    fn check(&self) -> anyhow::Result<sg_spend::Limits> {
        let budget = match &self.budget {
            None => None,
            Some(b) => Some(sg_spend::Budget {
                micros: sg_spend::usd_to_micros(b.usd, 10_000_000.0)
                    .filter(|m| *m > 0)
                    .context("budget.usd must be more than 0 and at most 10000000")?,
                period: b.period,
            }),
        };
        let limits = sg_spend::Limits {
            rpm: self.rpm,
            rpd: self.rpd,
            tpm: self.tpm,
            concurrent: self.concurrent,
            budget,
        };
        limits.validate()?;
        Ok(limits)
    }
}

/// Reads a static configuration file into the control events that create its objects,
/// sealing provider keys with `kms`.
pub async fn load(path: &Path, secrets_dir: &Path, kms: &dyn Kms) -> anyhow::Result<Vec<Envelope>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the static configuration {}", path.display()))?;
    let file: StaticFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid static configuration", path.display()))?;
    let tenant: TenantId = file
        .tenant
        .unwrap_or_else(|| "ten_static".into())
        .parse()
        .context("`tenant` is not a valid id ([a-z][a-z0-9_]{2,63})")?;
    let project: ProjectId = file
        .project
        .unwrap_or_else(|| "prj_static".into())
        .parse()
        .context("`project` is not a valid id ([a-z][a-z0-9_]{2,63})")?;
    let actor = Actor("static".into());
    let mut events = vec![
        Envelope::new(
            tenant.clone(),
            actor.clone(),
            Event::TenantCreated(TenantCreatedV2 {
                plan: None,
                name: tenant.to_string(),
            }),
        ),
        Envelope::new(
            tenant.clone(),
            actor.clone(),
            Event::ProjectCreated(ProjectCreatedV1 {
                project_id: project.clone(),
                name: project.to_string(),
            }),
        ),
    ];
    for c in file.connections {
        let id: ConnectionId =
            c.id.parse()
                .with_context(|| format!("connection id {:?} is not valid", c.id))?;
        let provider: Provider = c.provider.parse().map_err(anyhow::Error::msg)?;
        let api_key = match (&c.api_key, provider) {
            (Some(source), _) => source
                .resolve(secrets_dir)
                .with_context(|| format!("connection {id}"))?,
            (None, Provider::Mock) => SecretString::new("mock-provider-key".into()),
            (None, _) => bail!("connection {id} needs an api_key"),
        };
        if let Err(why) = provider.check_api_key(api_key.expose()) {
            bail!("the api_key of connection {id} {why}");
        }
        let context = id.encryption_context(&tenant, &project);
        let sealed = sg_crypto::seal(kms, &context, &api_key)
            .await
            .with_context(|| format!("cannot seal the provider key of connection {id}"))?;
        drop(api_key);
        events.push(Envelope::new(
            tenant.clone(),
            actor.clone(),
            Event::ConnectionCreated(ConnectionCreatedV3 {
                connection_id: id,
                project_id: project.clone(),
                provider,
                name: c.name.unwrap_or_else(|| provider.as_str().to_owned()),
                base_url: c.base_url.map(|u| u.trim_end_matches('/').to_owned()),
                api_key: sealed.into(),
                openai_organization: None,
                openai_project: None,
                api_version: None,
            }),
        ));
    }
    for k in file.keys {
        let id: KeyId =
            k.id.parse()
                .with_context(|| format!("key id {:?} is not valid", k.id))?;
        let key_hash = match (&k.key_sha256, &k.key) {
            (Some(hash), None) => sg_proxy_key::KeyHash::from_hex(hash.trim())
                .with_context(|| format!("key {id}: key_sha256 must be 64 hex characters"))?
                .to_hex(),
            (None, Some(source)) => {
                let secret = source
                    .resolve(secrets_dir)
                    .with_context(|| format!("key {id}"))?;
                sg_proxy_key::ProxyKey::parse(secret.expose())
                    .map_err(|e| anyhow::anyhow!("key {id}: {e}"))?
                    .hash()
                    .to_hex()
            }
            _ => bail!("key {id} needs exactly one of key_sha256 and key"),
        };
        let connection_ids = k
            .connections
            .iter()
            .map(|c| {
                c.parse::<ConnectionId>()
                    .with_context(|| format!("key {id}: connection {c:?} is not valid"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        events.push(Envelope::new(
            tenant.clone(),
            actor.clone(),
            Event::KeyIssued(KeyIssuedV4 {
                key_id: id.clone(),
                project_id: project.clone(),
                name: k.name.unwrap_or_else(|| id.to_string()),
                key_hash,
                hint: "SG_…".into(),
                connection_ids,
                locks: (&k.locks).into(),
                limits: k
                    .limits
                    .check()
                    .with_context(|| format!("key {id}: limits"))?
                    .into(),
            }),
        ));
    }
    // Check that the file is consistent (connections of keys exist, no duplicates).
    let mut state = sg_state::State::new();
    for env in &events {
        state
            .apply(0, &env.subject(), env)
            .map_err(|e| anyhow::anyhow!("static configuration: {e}"))?;
    }
    Ok(events)
}
