//! SecureGate's events: the envelope, the versioned event types, and their one
//! serialization.
//!
//! **Architecture invariant:** this is the only crate that turns events into bytes and
//! back. Every event type carries a schema version; [`decode`] upcasts older versions to
//! the current Rust type, so the log is never rewritten. One table (the `events!`
//! invocation below) lists every type, its versions, its aggregate and its data structs;
//! everything else — the [`Event`] enum, names, versions, decoding, schemas — is derived
//! from it. Each (type, version) has a JSON Schema file and a golden example under
//! `schemas/` at the workspace root, generated from the very types events are written
//! with ([`wire`] holds the shapes of types other crates own) and checked both ways by
//! `tests/schemas.rs`.
//!
//! **Architecture invariant:** no event holds a plaintext secret: provider keys travel
//! as [`SealedSecret`], proxy keys as their SHA-256.
#![forbid(unsafe_code)]

mod data;
pub mod ids;
pub mod wire;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use data::*;
pub use ids::{ConnectionId, KeyId, ProjectId, TenantId, TokenId, webhook_encryption_context};
pub use wire::{
    AbuseSettingsData, LimitsData, Locks, LocksError, LocksV2, PlaceData, PlanData, PriceData,
    SealedKey,
};

/// LLM providers a connection can point at. What each one needs on the wire (its
/// credential header, paths, usage format) is `sg-providers`' business; this is the name
/// events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI.
    Openai,
    /// Anthropic (the Messages API), also reachable through the OpenAI chat API by
    /// translation.
    Anthropic,
    /// Azure OpenAI: deployments under a resource's endpoint, `api-key` header.
    AzureOpenai,
    /// Google Gemini through its OpenAI-compatible endpoint.
    Gemini,
    Mistral,
    Groq,
    Together,
    Fireworks,
    Deepseek,
    Xai,
    Perplexity,
    Openrouter,
    Cohere,
    Cerebras,
    /// A self-hosted OpenAI-compatible server (vLLM, Ollama, LM Studio …): `base_url`
    /// is required.
    OpenaiCompatible,
    /// A built-in deterministic provider that answers locally (quickstart, tests).
    Mock,
}

impl Provider {
    /// Every provider, in catalog order.
    pub const ALL: [Provider; 16] = [
        Provider::Openai,
        Provider::Anthropic,
        Provider::AzureOpenai,
        Provider::Gemini,
        Provider::Mistral,
        Provider::Groq,
        Provider::Together,
        Provider::Fireworks,
        Provider::Deepseek,
        Provider::Xai,
        Provider::Perplexity,
        Provider::Openrouter,
        Provider::Cohere,
        Provider::Cerebras,
        Provider::OpenaiCompatible,
        Provider::Mock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::AzureOpenai => "azure_openai",
            Provider::Gemini => "gemini",
            Provider::Mistral => "mistral",
            Provider::Groq => "groq",
            Provider::Together => "together",
            Provider::Fireworks => "fireworks",
            Provider::Deepseek => "deepseek",
            Provider::Xai => "xai",
            Provider::Perplexity => "perplexity",
            Provider::Openrouter => "openrouter",
            Provider::Cohere => "cohere",
            Provider::Cerebras => "cerebras",
            Provider::OpenaiCompatible => "openai_compatible",
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

    /// The provider's API base when a connection sets none (`None`: the connection must
    /// name one — Azure resources and self-hosted servers have no common address).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Provider::Openai => Some("https://api.openai.com/v1"),
            Provider::Anthropic => Some("https://api.anthropic.com"),
            Provider::AzureOpenai => None,
            Provider::Gemini => Some("https://generativelanguage.googleapis.com/v1beta/openai"),
            Provider::Mistral => Some("https://api.mistral.ai/v1"),
            Provider::Groq => Some("https://api.groq.com/openai/v1"),
            Provider::Together => Some("https://api.together.xyz/v1"),
            Provider::Fireworks => Some("https://api.fireworks.ai/inference/v1"),
            Provider::Deepseek => Some("https://api.deepseek.com/v1"),
            Provider::Xai => Some("https://api.x.ai/v1"),
            Provider::Perplexity => Some("https://api.perplexity.ai"),
            Provider::Openrouter => Some("https://openrouter.ai/api/v1"),
            Provider::Cohere => Some("https://api.cohere.ai/compatibility/v1"),
            Provider::Cerebras => Some("https://api.cerebras.ai/v1"),
            Provider::OpenaiCompatible => None,
            Provider::Mock => None,
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown provider {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
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
    /// The operator's price table: one aggregate for the whole installation, under the
    /// operator's pseudo-tenant ([`TenantId::operator`]).
    Price,
    /// An admin API token of a tenant.
    Token,
    /// A plan's terms, under the operator's pseudo-tenant, by name.
    Plan,
}

/// The id of the price table's aggregate.
pub const PRICE_TABLE: &str = "table";

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
            AggregateKind::Price => "price",
            AggregateKind::Token => "token",
            AggregateKind::Plan => "plan",
        }
    }
}

// ---- the registry: every event type, its versions and its aggregate ----------------------

macro_rules! events {
    (@current $t:ty) => { $t };
    (@current $t:ty, $($rest:ty),+) => { events!(@current $($rest),+) };
    (@latest $v:literal) => { $v };
    (@latest $v:literal, $($rest:literal),+) => { events!(@latest $($rest),+) };
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal, $kind:ident($d:ident => $aggregate:expr),
            [$($version:literal => $data:ty),+ $(,)?];
    )+) => {
        /// Every event, in its current version.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event {
            $($(#[$doc])* $variant(events!(@current $($data),+)),)+
        }

        /// (type name, current version) of every event type; the schema files follow these.
        pub const EVENT_TYPES: &[(&str, u16)] = &[$(($name, events!(@latest $($version),+))),+];

        impl Event {
            /// The event's type name, e.g. `key.issued`.
            pub fn type_name(&self) -> &'static str {
                match self { $(Event::$variant(_) => $name,)+ }
            }

            /// The schema version this build writes for the event's type.
            pub fn version(&self) -> u16 {
                match self { $(Event::$variant(_) => events!(@latest $($version),+),)+ }
            }

            /// The aggregate the event belongs to, and its id.
            pub fn aggregate(&self) -> (AggregateKind, String) {
                match self { $(Event::$variant($d) => (AggregateKind::$kind, $aggregate),)+ }
            }

            /// Writes `data` straight from the event's struct (no intermediate `Value`).
            fn serialize_data<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self { $(Event::$variant(d) => Serialize::serialize(d, serializer),)+ }
            }

            /// Parses `data` written as `(type_name, version)`, upcasting older versions.
            fn from_data(
                type_name: &str,
                version: u16,
                data: &str,
            ) -> Result<Event, DecodeError> {
                let bad = |e: serde_json::Error| DecodeError::Data {
                    type_name: type_name.to_owned(),
                    version,
                    reason: e.to_string(),
                };
                Ok(match (type_name, version) {
                    $($(($name, $version) => {
                        let parsed: $data = serde_json::from_str(data).map_err(bad)?;
                        Event::$variant(From::from(parsed))
                    })+)+
                    _ => {
                        return Err(DecodeError::UnknownType {
                            type_name: type_name.to_owned(),
                            version,
                        });
                    }
                })
            }
        }

        /// The JSON Schema of one event type's `data`, by (type, version).
        pub fn data_schema(type_name: &str, version: u16) -> Option<schemars::Schema> {
            Some(match (type_name, version) {
                $($(($name, $version) => schemars::schema_for!($data),)+)+
                _ => return None,
            })
        }
    };
}

events! {
    TenantCreated = "tenant.created", Tenant(_d => String::new()),
        [1 => TenantCreatedV1, 2 => TenantCreatedV2];
    TenantPlanSet = "tenant.plan_set", Tenant(_d => String::new()),
        [1 => TenantPlanSetV1];
    PlanDefined = "plan.defined", Plan(d => d.name.clone()),
        [1 => PlanDefinedV1];
    TokenIssued = "token.issued", Token(d => d.token_id.to_string()),
        [1 => TokenIssuedV1];
    TokenRevoked = "token.revoked", Token(d => d.token_id.to_string()),
        [1 => TokenRevokedV1];
    KeyRotated = "key.rotated", Key(d => d.key_id.to_string()),
        [1 => KeyRotatedV1];
    ProjectCreated = "project.created", Project(d => d.project_id.to_string()),
        [1 => ProjectCreatedV1];
    ModelRouted = "project.model_routed", Project(d => d.project_id.to_string()),
        [1 => ModelRoutedV1];
    ModelUnrouted = "project.model_unrouted", Project(d => d.project_id.to_string()),
        [1 => ModelUnroutedV1];
    ConnectionCreated = "connection.created", Connection(d => d.connection_id.to_string()),
        [1 => ConnectionCreatedV1, 2 => ConnectionCreatedV2, 3 => ConnectionCreatedV3];
    ConnectionKeyRotated = "connection.key_rotated", Connection(d => d.connection_id.to_string()),
        [1 => ConnectionKeySealedV1];
    ConnectionKeyRewrapped = "connection.key_rewrapped", Connection(d => d.connection_id.to_string()),
        [1 => ConnectionKeySealedV1];
    KeyIssued = "key.issued", Key(d => d.key_id.to_string()),
        [1 => KeyIssuedV1, 2 => KeyIssuedV2, 3 => KeyIssuedV3, 4 => KeyIssuedV4];
    KeyLimitsSet = "key.limits_set", Key(d => d.key_id.to_string()),
        [1 => KeyLimitsSetV1];
    ProjectLimitsSet = "project.limits_set", Project(d => d.project_id.to_string()),
        [1 => ProjectLimitsSetV1];
    PriceSet = "price.set", Price(_d => PRICE_TABLE.to_owned()),
        [1 => PriceSetV1];
    PriceRemoved = "price.removed", Price(_d => PRICE_TABLE.to_owned()),
        [1 => PriceRemovedV1];
    KeyLocksSet = "key.locks_set", Key(d => d.key_id.to_string()),
        [1 => KeyLocksSetV1, 2 => KeyLocksSetV2];
    KeyBound = "key.bound", KeyBinding(d => d.key_id.to_string()),
        [1 => KeyBoundV1, 2 => KeyBoundV2];
    KeyUnbound = "key.unbound", KeyBinding(d => d.key_id.to_string()),
        [1 => KeyUnboundV1, 2 => KeyUnboundV2];
    KeyRevoked = "key.revoked", Key(d => d.key_id.to_string()),
        [1 => KeyRevokedV1];
    KeySuspended = "key.suspended", Key(d => d.key_id.to_string()),
        [1 => KeySuspendedV1];
    KeyResumed = "key.resumed", Key(d => d.key_id.to_string()),
        [1 => KeyResumedV1];
    ProjectAbuseSet = "project.abuse_set", Project(d => d.project_id.to_string()),
        [1 => ProjectAbuseSetV1];
    ProjectAlertsSet = "project.alerts_set", Project(d => d.project_id.to_string()),
        [1 => ProjectAlertsSetV1];
    AlertRaised = "alert.raised", Signal(d => d.project_id.to_string()),
        [1 => AlertRaisedV1];
    AlertDelivered = "alert.delivered", Signal(d => d.project_id.to_string()),
        [1 => AlertDeliveredV1];
    LockViolated = "lock.violated", Signal(d => d.project_id.to_string()),
        [1 => LockViolatedV1];
    BudgetThreshold = "budget.threshold", Signal(d => d.project_id.to_string()),
        [1 => BudgetThresholdV1];
    BudgetReset = "budget.reset", Signal(d => d.project_id.to_string()),
        [1 => BudgetResetV1];
    UsageRecorded = "usage.recorded", Usage(d => d.project_id.to_string()),
        [1 => UsageRecordedV1, 2 => UsageRecordedV2, 3 => UsageRecordedV3, 4 => UsageRecordedV4];
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
        let (kind, id) = event.aggregate();
        let aggregate_id = match kind {
            AggregateKind::Tenant => tenant_id.to_string(),
            _ => id,
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
        self.event.aggregate().0
    }

    /// The log subject (named in `sg-subjects`): `sg.control.<tenant>.<kind>.<id>` for
    /// control events, `sg.usage.<tenant>.<project>` for usage, `sg.signals.…` for signals.
    pub fn subject(&self) -> String {
        let tenant = self.tenant_id.as_str();
        match self.aggregate_kind() {
            AggregateKind::Usage => sg_subjects::usage(tenant, &self.aggregate_id),
            AggregateKind::Signal => sg_subjects::signals(tenant, &self.aggregate_id),
            kind => sg_subjects::control(tenant, kind.as_str(), &self.aggregate_id),
        }
    }
}

/// The control-stream subject of one aggregate.
pub fn aggregate_subject(tenant: &TenantId, kind: AggregateKind, id: &str) -> String {
    sg_subjects::control(tenant.as_str(), kind.as_str(), id)
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
    let out = EnvelopeOut {
        id: envelope.id,
        type_name: envelope.event.type_name(),
        version: envelope.event.version(),
        tenant_id: &envelope.tenant_id,
        aggregate_id: &envelope.aggregate_id,
        time: envelope.time,
        actor: &envelope.actor,
        data: DataOut(&envelope.event),
    };
    // Plain structs of strings and numbers: serializing them cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Parses bytes written by [`encode`] of this or any earlier version.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let raw: EnvelopeIn<'_> =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    let event = Event::from_data(&raw.type_name, raw.version, raw.data.get())?;
    Ok(Envelope {
        id: raw.id,
        tenant_id: raw.tenant_id,
        aggregate_id: raw.aggregate_id,
        time: raw.time,
        actor: raw.actor,
        event,
    })
}

/// [`RawEnvelope`] as [`encode`] writes it: borrowed, `data` written straight from the
/// event. The same fields in the same order.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    id: Uuid,
    #[serde(rename = "type")]
    type_name: &'static str,
    version: u16,
    tenant_id: &'a TenantId,
    aggregate_id: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    actor: &'a Actor,
    data: DataOut<'a>,
}

struct DataOut<'a>(&'a Event);

impl Serialize for DataOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_data(serializer)
    }
}

/// [`RawEnvelope`] as [`decode`] reads it: `data` stays raw text until its type and
/// version say which struct it is (no intermediate `Value`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<'a> {
    id: Uuid,
    #[serde(rename = "type", borrow)]
    type_name: std::borrow::Cow<'a, str>,
    version: u16,
    tenant_id: TenantId,
    aggregate_id: String,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    actor: Actor,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
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
