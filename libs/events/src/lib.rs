//! SecureGate's events: the envelope, the versioned event types, and their one
//! serialization.
//!
//! **Architecture invariant:** this is the only crate that turns events into bytes and
//! back. Every event type carries a schema version; [`decode`] upcasts older versions to
//! the current Rust type, so the log is never rewritten. Each (type, version) has a JSON
//! Schema file and a golden example under `schemas/` at the workspace root, checked
//! against these types both ways by `tests/schemas.rs`.
//!
//! **Architecture invariant:** no event holds a plaintext secret: provider keys travel
//! as [`SealedSecret`], proxy keys as their SHA-256.
#![forbid(unsafe_code)]

pub mod ids;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use ids::{ConnectionId, KeyId, ProjectId, TenantId};
pub use sg_crypto::SealedSecret;
pub use sg_policy::LockSettings;

/// LLM providers a connection can point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI, or any OpenAI-compatible API through `base_url`.
    Openai,
    /// A built-in deterministic provider that answers locally (quickstart, tests).
    Mock,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Mock => "mock",
        }
    }

    /// Whether `key` can be a credential for this provider: 1 to 4096 visible ASCII
    /// characters (it travels in an HTTP header; anything else would fail every request).
    pub fn check_api_key(self, key: &str) -> Result<(), &'static str> {
        if key.is_empty() || key.len() > 4096 {
            return Err("must be 1 to 4096 characters");
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "must be visible ASCII characters only (no spaces, control or non-ASCII characters)",
            );
        }
        Ok(())
    }

    /// The provider's API base when a connection sets none.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Provider::Openai => Some("https://api.openai.com/v1"),
            Provider::Mock => None,
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "openai" => Ok(Provider::Openai),
            "mock" => Ok(Provider::Mock),
            other => Err(format!(
                "unknown provider {other:?}: expected \"openai\" or \"mock\""
            )),
        }
    }
}

/// What kind of aggregate an event belongs to; part of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    Tenant,
    Project,
    Connection,
    Key,
    /// A key's bindings (IP, device): their own subject, so that the first binding
    /// wins cluster-wide without racing other changes to the key.
    KeyBinding,
    /// Signals (lock violations) go to the signals stream, one subject per project.
    Signal,
    /// Usage events are not an aggregate of the control stream; they go to the usage
    /// stream, one subject per project.
    Usage,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Tenant => "tenant",
            AggregateKind::Project => "project",
            AggregateKind::Connection => "connection",
            AggregateKind::Key => "key",
            AggregateKind::KeyBinding => "keybinding",
            AggregateKind::Signal => "signal",
            AggregateKind::Usage => "usage",
        }
    }
}

// ---- event data, one struct per (type, version) -------------------------------------

/// `tenant.created` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreatedV1 {
    pub name: String,
}

/// `project.created` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreatedV1 {
    pub project_id: ProjectId,
    pub name: String,
}

/// `connection.created` v1: a provider credential, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCreatedV1 {
    pub connection_id: ConnectionId,
    pub project_id: ProjectId,
    pub provider: Provider,
    pub name: String,
    /// The provider API base; `None` means the provider's default.
    pub base_url: Option<String>,
    #[schemars(with = "SealedSecretSchema")]
    pub api_key: SealedSecret,
}

/// `connection.created` v2: v1 with the OpenAI organization and project the provider
/// key bills (`OpenAI-Organization`, `OpenAI-Project`), which belong to the connection —
/// a client never chooses them. v1 events are upcast with neither set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCreatedV2 {
    pub connection_id: ConnectionId,
    pub project_id: ProjectId,
    pub provider: Provider,
    pub name: String,
    /// The provider API base; `None` means the provider's default.
    pub base_url: Option<String>,
    #[schemars(with = "SealedSecretSchema")]
    pub api_key: SealedSecret,
    /// Sent as `OpenAI-Organization` with every request (OpenAI only).
    pub openai_organization: Option<String>,
    /// Sent as `OpenAI-Project` with every request (OpenAI only).
    pub openai_project: Option<String>,
}

impl From<ConnectionCreatedV1> for ConnectionCreatedV2 {
    fn from(v1: ConnectionCreatedV1) -> Self {
        ConnectionCreatedV2 {
            connection_id: v1.connection_id,
            project_id: v1.project_id,
            provider: v1.provider,
            name: v1.name,
            base_url: v1.base_url,
            api_key: v1.api_key,
            openai_organization: None,
            openai_project: None,
        }
    }
}

/// `connection.key_rotated` v1: the connection's provider key was replaced (a new
/// secret, sealed) — or `connection.key_rewrapped` v1: the same secret's data key was
/// re-wrapped under another KMS key. Either way the sealed form is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionKeySealedV1 {
    pub connection_id: ConnectionId,
    pub project_id: ProjectId,
    #[schemars(with = "SealedSecretSchema")]
    pub api_key: SealedSecret,
}

/// The JSON shape of a sealed secret (documented here; the type lives in `sg-crypto`).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SealedSecretSchema {
    v: u8,
    kms: String,
    kek_id: String,
    wrapped_key: String,
    nonce: String,
    ciphertext: String,
}

/// `key.issued` v1: a proxy key, stored only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyIssuedV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub name: String,
    /// Hex SHA-256 of the full key.
    pub key_hash: String,
    /// A display hint that reveals no randomness (`SG_…abcd`).
    pub hint: String,
    /// Connections the key may use, in order of preference.
    pub connection_ids: Vec<ConnectionId>,
    /// Models the key may call; `None` means any.
    pub allowed_models: Option<Vec<String>>,
}

/// `key.issued` v2: v1 with the key's locks ([`LockSettings`]) instead of only an
/// allow-list of models. v1 events are upcast: their `allowed_models` become
/// `locks.models`, every other lock takes a new key's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyIssuedV2 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub name: String,
    /// Hex SHA-256 of the full key.
    pub key_hash: String,
    /// A display hint that reveals no randomness (`SG_…abcd`).
    pub hint: String,
    /// Connections the key may use, in order of preference.
    pub connection_ids: Vec<ConnectionId>,
    /// The key's locks (IP, device, location, models, signature, expiry).
    #[schemars(with = "LockSettingsSchema")]
    pub locks: LockSettings,
}

impl From<KeyIssuedV1> for KeyIssuedV2 {
    fn from(v1: KeyIssuedV1) -> Self {
        KeyIssuedV2 {
            key_id: v1.key_id,
            project_id: v1.project_id,
            name: v1.name,
            key_hash: v1.key_hash,
            hint: v1.hint,
            connection_ids: v1.connection_ids,
            locks: LockSettings {
                models: v1.allowed_models,
                ..LockSettings::default()
            },
        }
    }
}

/// The JSON shape of lock settings (the type lives in `sg-policy`, which documents each
/// field): an object with optional `ip`, `device`, `geo`, `models`, `signature`,
/// `expires_at`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LockSettingsSchema {
    /// `{"mode":"off"}`, `{"mode":"auto_bind"}` or `{"mode":"allow","cidrs":[...]}`.
    ip: Option<serde_json::Value>,
    /// `{"mode":"off"}`, `{"mode":"auto_bind"}` or `{"mode":"fixed","fingerprint":"..."}`.
    device: Option<serde_json::Value>,
    /// `{"countries":["DE"],"cities":[{"country":"US","city":"New York"}]}`.
    geo: Option<serde_json::Value>,
    models: Option<Vec<String>>,
    /// `{"public_key":"<base64 Ed25519 public key>"}`.
    signature: Option<serde_json::Value>,
    /// Unix seconds.
    expires_at: Option<i64>,
}

/// `key.locks_set` v1: the key's locks replaced by the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLocksSetV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    #[schemars(with = "LockSettingsSchema")]
    pub locks: LockSettings,
}

/// `key.bound` v1: the key was bound to a client address and/or device, on first use
/// (by a gateway node) or explicitly (by the owner). Written on the key's binding
/// subject with its expected last sequence, so across the cluster the first wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBoundV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    #[schemars(with = "Option<String>")]
    pub ip: Option<std::net::IpAddr>,
    pub device: Option<String>,
    /// The request that caused an automatic binding.
    pub request_id: Option<Uuid>,
}

/// `key.unbound` v1: bindings cleared; the next request binds again (auto-bind locks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUnboundV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub ip: bool,
    pub device: bool,
}

/// `lock.violated` v1 (signals stream): a request refused by one of its key's locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockViolatedV1 {
    pub request_id: Uuid,
    pub project_id: ProjectId,
    pub key_id: KeyId,
    /// The refusal's code, e.g. `ip_not_allowed`.
    pub code: String,
    #[schemars(with = "String")]
    pub client_ip: std::net::IpAddr,
    pub country: Option<String>,
    pub city: Option<String>,
    /// First 16 hex characters of the SHA-256 of the device fingerprint, if sent.
    pub device_hash: Option<String>,
    pub model: Option<String>,
    pub endpoint: String,
    pub node: String,
}

/// `project.model_routed` v1: in this project, clients asking for `model` are served by
/// `connection_id` with `upstream_model` (e.g. `gpt-4` → `gpt-4-0613` on a given
/// connection). Replaces an earlier route for the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRoutedV1 {
    pub project_id: ProjectId,
    pub model: String,
    pub connection_id: ConnectionId,
    pub upstream_model: String,
}

/// `project.model_unrouted` v1: the route for `model` is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelUnroutedV1 {
    pub project_id: ProjectId,
    pub model: String,
}

/// `key.revoked` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRevokedV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub reason: Option<String>,
}

/// `usage.recorded` v1: one proxied request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecordedV1 {
    /// The gateway's request id (also returned to the client as `x-request-id`).
    pub request_id: Uuid,
    pub project_id: ProjectId,
    pub key_id: KeyId,
    pub connection_id: Option<ConnectionId>,
    pub provider: Option<Provider>,
    /// The model the client asked for, if the request named one.
    pub model: Option<String>,
    /// The API path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The HTTP status returned to the client.
    pub status: u16,
    pub streamed: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// From the request's arrival to the last byte of the answer, in microseconds.
    pub latency_us: u64,
    /// When the request arrived (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    /// The gateway node that served it.
    pub node: String,
}

// ---- the current event set ----------------------------------------------------------

/// Every event, in its current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TenantCreated(TenantCreatedV1),
    ProjectCreated(ProjectCreatedV1),
    ModelRouted(ModelRoutedV1),
    ModelUnrouted(ModelUnroutedV1),
    ConnectionCreated(ConnectionCreatedV2),
    ConnectionKeyRotated(ConnectionKeySealedV1),
    ConnectionKeyRewrapped(ConnectionKeySealedV1),
    KeyIssued(KeyIssuedV2),
    KeyLocksSet(KeyLocksSetV1),
    KeyBound(KeyBoundV1),
    KeyUnbound(KeyUnboundV1),
    KeyRevoked(KeyRevokedV1),
    LockViolated(LockViolatedV1),
    UsageRecorded(UsageRecordedV1),
}

/// (type name, current version) of every event type; the schema files follow these.
pub const EVENT_TYPES: &[(&str, u16)] = &[
    ("tenant.created", 1),
    ("project.created", 1),
    ("project.model_routed", 1),
    ("project.model_unrouted", 1),
    ("connection.created", 2),
    ("connection.key_rotated", 1),
    ("connection.key_rewrapped", 1),
    ("key.issued", 2),
    ("key.locks_set", 1),
    ("key.bound", 1),
    ("key.unbound", 1),
    ("key.revoked", 1),
    ("lock.violated", 1),
    ("usage.recorded", 1),
];

impl Event {
    /// The event's type name, e.g. `key.issued`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::TenantCreated(_) => "tenant.created",
            Event::ProjectCreated(_) => "project.created",
            Event::ModelRouted(_) => "project.model_routed",
            Event::ModelUnrouted(_) => "project.model_unrouted",
            Event::ConnectionCreated(_) => "connection.created",
            Event::ConnectionKeyRotated(_) => "connection.key_rotated",
            Event::ConnectionKeyRewrapped(_) => "connection.key_rewrapped",
            Event::KeyIssued(_) => "key.issued",
            Event::KeyLocksSet(_) => "key.locks_set",
            Event::KeyBound(_) => "key.bound",
            Event::KeyUnbound(_) => "key.unbound",
            Event::KeyRevoked(_) => "key.revoked",
            Event::LockViolated(_) => "lock.violated",
            Event::UsageRecorded(_) => "usage.recorded",
        }
    }

    /// The schema version this build writes for the event's type.
    pub fn version(&self) -> u16 {
        match self {
            Event::KeyIssued(_) | Event::ConnectionCreated(_) => 2,
            _ => 1,
        }
    }

    fn data_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Event::TenantCreated(d) => serde_json::to_value(d),
            Event::ProjectCreated(d) => serde_json::to_value(d),
            Event::ModelRouted(d) => serde_json::to_value(d),
            Event::ModelUnrouted(d) => serde_json::to_value(d),
            Event::ConnectionCreated(d) => serde_json::to_value(d),
            Event::ConnectionKeyRotated(d) | Event::ConnectionKeyRewrapped(d) => {
                serde_json::to_value(d)
            }
            Event::KeyIssued(d) => serde_json::to_value(d),
            Event::KeyLocksSet(d) => serde_json::to_value(d),
            Event::KeyBound(d) => serde_json::to_value(d),
            Event::KeyUnbound(d) => serde_json::to_value(d),
            Event::KeyRevoked(d) => serde_json::to_value(d),
            Event::LockViolated(d) => serde_json::to_value(d),
            Event::UsageRecorded(d) => serde_json::to_value(d),
        }
    }

    /// Parses `data` written as `(type_name, version)`, upcasting older versions.
    fn from_data(
        type_name: &str,
        version: u16,
        data: serde_json::Value,
    ) -> Result<Event, DecodeError> {
        let bad = |e: serde_json::Error| DecodeError::Data {
            type_name: type_name.to_owned(),
            version,
            reason: e.to_string(),
        };
        Ok(match (type_name, version) {
            ("tenant.created", 1) => {
                Event::TenantCreated(serde_json::from_value(data).map_err(bad)?)
            }
            ("project.created", 1) => {
                Event::ProjectCreated(serde_json::from_value(data).map_err(bad)?)
            }
            ("connection.created", 1) => {
                let v1: ConnectionCreatedV1 = serde_json::from_value(data).map_err(bad)?;
                Event::ConnectionCreated(v1.into())
            }
            ("connection.created", 2) => {
                Event::ConnectionCreated(serde_json::from_value(data).map_err(bad)?)
            }
            ("connection.key_rotated", 1) => {
                Event::ConnectionKeyRotated(serde_json::from_value(data).map_err(bad)?)
            }
            ("connection.key_rewrapped", 1) => {
                Event::ConnectionKeyRewrapped(serde_json::from_value(data).map_err(bad)?)
            }
            ("key.issued", 1) => {
                let v1: KeyIssuedV1 = serde_json::from_value(data).map_err(bad)?;
                Event::KeyIssued(v1.into())
            }
            ("key.issued", 2) => Event::KeyIssued(serde_json::from_value(data).map_err(bad)?),
            ("project.model_routed", 1) => {
                Event::ModelRouted(serde_json::from_value(data).map_err(bad)?)
            }
            ("project.model_unrouted", 1) => {
                Event::ModelUnrouted(serde_json::from_value(data).map_err(bad)?)
            }
            ("key.locks_set", 1) => Event::KeyLocksSet(serde_json::from_value(data).map_err(bad)?),
            ("key.bound", 1) => Event::KeyBound(serde_json::from_value(data).map_err(bad)?),
            ("key.unbound", 1) => Event::KeyUnbound(serde_json::from_value(data).map_err(bad)?),
            ("lock.violated", 1) => Event::LockViolated(serde_json::from_value(data).map_err(bad)?),
            ("key.revoked", 1) => Event::KeyRevoked(serde_json::from_value(data).map_err(bad)?),
            ("usage.recorded", 1) => {
                Event::UsageRecorded(serde_json::from_value(data).map_err(bad)?)
            }
            _ => {
                return Err(DecodeError::UnknownType {
                    type_name: type_name.to_owned(),
                    version,
                });
            }
        })
    }
}

/// Who caused an event: the operator, a tenant's user, or a gateway node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor(pub String);

impl Actor {
    pub fn operator() -> Self {
        Actor("operator".into())
    }
    pub fn node(name: &str) -> Self {
        Actor(format!("node:{name}"))
    }
}

/// An event with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per event; also the log's idempotency id when no command key is given.
    pub id: Uuid,
    pub tenant_id: TenantId,
    /// The aggregate's id (tenant, project, connection or key id; the project for usage).
    pub aggregate_id: String,
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub event: Event,
}

impl Envelope {
    /// A new envelope stamped now with a fresh time-ordered id.
    pub fn new(tenant_id: TenantId, actor: Actor, event: Event) -> Self {
        let aggregate_id = match &event {
            Event::TenantCreated(_) => tenant_id.to_string(),
            Event::ProjectCreated(d) => d.project_id.to_string(),
            Event::ModelRouted(d) => d.project_id.to_string(),
            Event::ModelUnrouted(d) => d.project_id.to_string(),
            Event::ConnectionCreated(d) => d.connection_id.to_string(),
            Event::ConnectionKeyRotated(d) | Event::ConnectionKeyRewrapped(d) => {
                d.connection_id.to_string()
            }
            Event::KeyIssued(d) => d.key_id.to_string(),
            Event::KeyLocksSet(d) => d.key_id.to_string(),
            Event::KeyBound(d) => d.key_id.to_string(),
            Event::KeyUnbound(d) => d.key_id.to_string(),
            Event::KeyRevoked(d) => d.key_id.to_string(),
            Event::LockViolated(d) => d.project_id.to_string(),
            Event::UsageRecorded(d) => d.project_id.to_string(),
        };
        Envelope {
            id: Uuid::now_v7(),
            tenant_id,
            aggregate_id,
            time: OffsetDateTime::now_utc(),
            actor,
            event,
        }
    }

    pub fn aggregate_kind(&self) -> AggregateKind {
        match self.event {
            Event::TenantCreated(_) => AggregateKind::Tenant,
            Event::ProjectCreated(_) | Event::ModelRouted(_) | Event::ModelUnrouted(_) => {
                AggregateKind::Project
            }
            Event::ConnectionCreated(_)
            | Event::ConnectionKeyRotated(_)
            | Event::ConnectionKeyRewrapped(_) => AggregateKind::Connection,
            Event::KeyIssued(_) | Event::KeyLocksSet(_) | Event::KeyRevoked(_) => {
                AggregateKind::Key
            }
            Event::KeyBound(_) | Event::KeyUnbound(_) => AggregateKind::KeyBinding,
            Event::LockViolated(_) => AggregateKind::Signal,
            Event::UsageRecorded(_) => AggregateKind::Usage,
        }
    }

    /// The log subject: `sg.control.<tenant>.<kind>.<id>` for control events,
    /// `sg.usage.<tenant>.<project>` for usage.
    pub fn subject(&self) -> String {
        match self.aggregate_kind() {
            AggregateKind::Usage => format!("sg.usage.{}.{}", self.tenant_id, self.aggregate_id),
            AggregateKind::Signal => format!("sg.signals.{}.{}", self.tenant_id, self.aggregate_id),
            kind => aggregate_subject(&self.tenant_id, kind, &self.aggregate_id),
        }
    }
}

/// The control-stream subject of one aggregate.
pub fn aggregate_subject(tenant: &TenantId, kind: AggregateKind, id: &str) -> String {
    format!("sg.control.{tenant}.{}.{id}", kind.as_str())
}

/// The wire form of an envelope.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEnvelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub type_name: String,
    pub version: u16,
    pub tenant_id: TenantId,
    pub aggregate_id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub data: serde_json::Value,
}

/// Why bytes are not an event this build understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Envelope(String),
    /// Written by a newer build, or not ours: readers skip it and say so.
    #[error("unknown event type {type_name} v{version}")]
    UnknownType { type_name: String, version: u16 },
    #[error("malformed {type_name} v{version}: {reason}")]
    Data {
        type_name: String,
        version: u16,
        reason: String,
    },
}

/// Serializes an envelope in the current version of its type.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let raw = RawEnvelope {
        id: envelope.id,
        type_name: envelope.event.type_name().to_owned(),
        version: envelope.event.version(),
        tenant_id: envelope.tenant_id.clone(),
        aggregate_id: envelope.aggregate_id.clone(),
        time: envelope.time,
        actor: envelope.actor.clone(),
        // Serializing plain structs of strings and numbers into a Value cannot fail.
        data: envelope
            .event
            .data_json()
            .unwrap_or(serde_json::Value::Null),
    };
    serde_json::to_vec(&raw).unwrap_or_default()
}

/// Parses bytes written by [`encode`] of this or any earlier version.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let raw: RawEnvelope =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    let event = Event::from_data(&raw.type_name, raw.version, raw.data)?;
    Ok(Envelope {
        id: raw.id,
        tenant_id: raw.tenant_id,
        aggregate_id: raw.aggregate_id,
        time: raw.time,
        actor: raw.actor,
        event,
    })
}

/// The JSON Schema of one event type's `data`, by (type, version).
pub fn data_schema(type_name: &str, version: u16) -> Option<schemars::Schema> {
    Some(match (type_name, version) {
        ("tenant.created", 1) => schemars::schema_for!(TenantCreatedV1),
        ("project.created", 1) => schemars::schema_for!(ProjectCreatedV1),
        ("connection.created", 1) => schemars::schema_for!(ConnectionCreatedV1),
        ("connection.created", 2) => schemars::schema_for!(ConnectionCreatedV2),
        ("connection.key_rotated", 1) | ("connection.key_rewrapped", 1) => {
            schemars::schema_for!(ConnectionKeySealedV1)
        }
        ("key.issued", 1) => schemars::schema_for!(KeyIssuedV1),
        ("key.issued", 2) => schemars::schema_for!(KeyIssuedV2),
        ("key.locks_set", 1) => schemars::schema_for!(KeyLocksSetV1),
        ("project.model_routed", 1) => schemars::schema_for!(ModelRoutedV1),
        ("project.model_unrouted", 1) => schemars::schema_for!(ModelUnroutedV1),
        ("key.bound", 1) => schemars::schema_for!(KeyBoundV1),
        ("key.unbound", 1) => schemars::schema_for!(KeyUnboundV1),
        ("lock.violated", 1) => schemars::schema_for!(LockViolatedV1),
        ("key.revoked", 1) => schemars::schema_for!(KeyRevokedV1),
        ("usage.recorded", 1) => schemars::schema_for!(UsageRecordedV1),
        _ => return None,
    })
}

/// The JSON Schema of the envelope.
pub fn envelope_schema() -> schemars::Schema {
    schemars::schema_for!(RawEnvelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_subjects() {
        let tenant = TenantId::generate();
        let key = KeyId::generate();
        let project = ProjectId::generate();
        let env = Envelope::new(
            tenant.clone(),
            Actor::operator(),
            Event::KeyRevoked(KeyRevokedV1 {
                key_id: key.clone(),
                project_id: project,
                reason: None,
            }),
        );
        assert_eq!(env.subject(), format!("sg.control.{tenant}.key.{key}"));
        let bytes = encode(&env);
        assert_eq!(decode(&bytes).unwrap(), env);
    }

    #[test]
    fn unknown_and_malformed_events_are_errors_not_panics() {
        assert!(matches!(decode(b"{"), Err(DecodeError::Envelope(_))));
        let future = br#"{"id":"0190f0c2-0000-7000-8000-000000000000","type":"key.teleported","version":9,"tenant_id":"ten_abc","aggregate_id":"x","time":"2026-01-01T00:00:00Z","actor":"operator","data":{}}"#;
        assert!(matches!(
            decode(future),
            Err(DecodeError::UnknownType { .. })
        ));
        let bad = br#"{"id":"0190f0c2-0000-7000-8000-000000000000","type":"tenant.created","version":1,"tenant_id":"ten_abc","aggregate_id":"x","time":"2026-01-01T00:00:00Z","actor":"operator","data":{"nom":1}}"#;
        assert!(matches!(decode(bad), Err(DecodeError::Data { .. })));
    }
}
