//! The data of every event type, one struct per (type, version). Old versions stay and
//! are upcast (`From`) to the current one; see the registry in the crate root.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::wire::{
    AbuseSettingsData, LimitsData, Locks, LocksV2, PlaceData, PlanData, PriceData, SealedKey,
};
use crate::{ConnectionId, KeyId, ProjectId, Provider, TokenId};

/// `tenant.created` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreatedV1 {
    pub name: String,
}

/// `tenant.created` v2: v1 with the tenant's plan. v1 tenants are upcast with none: they
/// predate plans and keep every feature, with no plan defaults, until the operator puts
/// them on one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreatedV2 {
    pub name: String,
    /// The plan's name; `null`: no plan (every feature, no plan defaults).
    pub plan: Option<String>,
}

impl From<TenantCreatedV1> for TenantCreatedV2 {
    fn from(v1: TenantCreatedV1) -> Self {
        TenantCreatedV2 {
            name: v1.name,
            plan: None,
        }
    }
}

/// `tenant.plan_set` v1 (operator): the tenant moves to another plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPlanSetV1 {
    pub plan: String,
}

/// `plan.defined` v1 (operator): a plan's terms, replacing the built-in plan of that name
/// or an earlier definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanDefinedV1 {
    pub name: String,
    pub terms: PlanData,
}

/// What an admin API token may do in its tenant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Connections, keys, locks, limits and the model registry of its projects.
    Admin,
    /// Everything in the tenant, including projects and tokens.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// `token.issued` v1: an admin API token, stored only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuedV1 {
    pub token_id: TokenId,
    pub name: String,
    pub role: Role,
    /// The projects it is limited to; `null`: every project of the tenant.
    pub project_ids: Option<Vec<ProjectId>>,
    /// Hex SHA-256 of the full token.
    pub token_hash: String,
    /// A display hint that reveals no randomness (`SGA_…abcd`).
    pub hint: String,
    /// Unix seconds at which the token stops working.
    pub expires_at: Option<i64>,
}

/// `token.revoked` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRevokedV1 {
    pub token_id: TokenId,
    pub reason: Option<String>,
}

/// `key.rotated` v1, on the old key: a new key with the old one's connections, locks,
/// bindings and limits; the old key keeps working until `retires_at` (or its own earlier
/// expiry), then stops on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRotatedV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub new_key_id: KeyId,
    /// Hex SHA-256 of the new key.
    pub key_hash: String,
    pub hint: String,
    /// Unix seconds at which the old key stops working.
    pub retires_at: i64,
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
    pub api_key: SealedKey,
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
    pub api_key: SealedKey,
    /// Sent as `OpenAI-Organization` with every request (OpenAI only).
    pub openai_organization: Option<String>,
    /// Sent as `OpenAI-Project` with every request (OpenAI only).
    pub openai_project: Option<String>,
}

/// `connection.created` v3: v2 with the API version a provider is called with (Azure
/// OpenAI's `api-version`). Older versions are upcast with none (the provider's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCreatedV3 {
    pub connection_id: ConnectionId,
    pub project_id: ProjectId,
    pub provider: Provider,
    pub name: String,
    /// The provider API base; `None` means the provider's default.
    pub base_url: Option<String>,
    pub api_key: SealedKey,
    /// Sent as `OpenAI-Organization` with every request (OpenAI only).
    pub openai_organization: Option<String>,
    /// Sent as `OpenAI-Project` with every request (OpenAI only).
    pub openai_project: Option<String>,
    /// Azure OpenAI's `api-version`; `None`: the gateway's default.
    pub api_version: Option<String>,
}

impl From<ConnectionCreatedV2> for ConnectionCreatedV3 {
    fn from(v2: ConnectionCreatedV2) -> Self {
        ConnectionCreatedV3 {
            connection_id: v2.connection_id,
            project_id: v2.project_id,
            provider: v2.provider,
            name: v2.name,
            base_url: v2.base_url,
            api_key: v2.api_key,
            openai_organization: v2.openai_organization,
            openai_project: v2.openai_project,
            api_version: None,
        }
    }
}

impl From<ConnectionCreatedV1> for ConnectionCreatedV3 {
    fn from(v1: ConnectionCreatedV1) -> Self {
        ConnectionCreatedV2::from(v1).into()
    }
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
    pub api_key: SealedKey,
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

/// `key.issued` v2: v1 with the key's locks ([`Locks`]) instead of only an
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
    pub locks: Locks,
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
            locks: Locks {
                models: v1.allowed_models,
                ..Locks::default()
            },
        }
    }
}

/// `key.issued` v3: v2 with the key's limits (requests, tokens, concurrency, budget).
/// Older versions are upcast with no limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyIssuedV3 {
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
    pub locks: Locks,
    /// The key's limits; every field may be absent.
    pub limits: LimitsData,
}

impl From<KeyIssuedV2> for KeyIssuedV3 {
    fn from(v2: KeyIssuedV2) -> Self {
        KeyIssuedV3 {
            key_id: v2.key_id,
            project_id: v2.project_id,
            name: v2.name,
            key_hash: v2.key_hash,
            hint: v2.hint,
            connection_ids: v2.connection_ids,
            locks: v2.locks,
            limits: LimitsData::default(),
        }
    }
}

impl From<KeyIssuedV1> for KeyIssuedV3 {
    fn from(v1: KeyIssuedV1) -> Self {
        KeyIssuedV2::from(v1).into()
    }
}

/// `key.issued` v4: v3 with [`LocksV2`], whose location lock may also bind the key to
/// the place of its first use. Older versions are upcast unchanged (their location
/// locks are lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyIssuedV4 {
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
    pub locks: LocksV2,
    /// The key's limits; every field may be absent.
    pub limits: LimitsData,
}

impl From<KeyIssuedV3> for KeyIssuedV4 {
    fn from(v3: KeyIssuedV3) -> Self {
        KeyIssuedV4 {
            key_id: v3.key_id,
            project_id: v3.project_id,
            name: v3.name,
            key_hash: v3.key_hash,
            hint: v3.hint,
            connection_ids: v3.connection_ids,
            locks: v3.locks.into(),
            limits: v3.limits,
        }
    }
}

impl From<KeyIssuedV2> for KeyIssuedV4 {
    fn from(v2: KeyIssuedV2) -> Self {
        KeyIssuedV3::from(v2).into()
    }
}

impl From<KeyIssuedV1> for KeyIssuedV4 {
    fn from(v1: KeyIssuedV1) -> Self {
        KeyIssuedV3::from(v1).into()
    }
}

/// `key.limits_set` v1: the key's limits replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsSetV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub limits: LimitsData,
}

/// `project.limits_set` v1: the project's limits replaced (they apply to all its keys
/// together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimitsSetV1 {
    pub project_id: ProjectId,
    pub limits: LimitsData,
}

/// `price.set` v1 (operator): what a model costs, replacing its built-in price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceSetV1 {
    pub model: String,
    pub price: PriceData,
}

/// `price.removed` v1 (operator): the model's override is removed (its built-in price,
/// if any, applies again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRemovedV1 {
    pub model: String,
}

/// `key.locks_set` v1: the key's locks replaced by the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLocksSetV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub locks: Locks,
}

/// `key.locks_set` v2: v1 with [`LocksV2`] (a location lock may auto-bind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLocksSetV2 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub locks: LocksV2,
}

impl From<KeyLocksSetV1> for KeyLocksSetV2 {
    fn from(v1: KeyLocksSetV1) -> Self {
        KeyLocksSetV2 {
            key_id: v1.key_id,
            project_id: v1.project_id,
            locks: v1.locks.into(),
        }
    }
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

/// `key.bound` v2: v1 with the place a location auto-bind lock bound the key to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBoundV2 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    #[schemars(with = "Option<String>")]
    pub ip: Option<std::net::IpAddr>,
    pub device: Option<String>,
    pub place: Option<PlaceData>,
    /// The request that caused an automatic binding.
    pub request_id: Option<Uuid>,
}

impl From<KeyBoundV1> for KeyBoundV2 {
    fn from(v1: KeyBoundV1) -> Self {
        KeyBoundV2 {
            key_id: v1.key_id,
            project_id: v1.project_id,
            ip: v1.ip,
            device: v1.device,
            place: None,
            request_id: v1.request_id,
        }
    }
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

/// `key.unbound` v2: v1 that may also clear the bound place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUnboundV2 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    pub ip: bool,
    pub device: bool,
    pub place: bool,
}

impl From<KeyUnboundV1> for KeyUnboundV2 {
    fn from(v1: KeyUnboundV1) -> Self {
        KeyUnboundV2 {
            key_id: v1.key_id,
            project_id: v1.project_id,
            ip: v1.ip,
            device: v1.device,
            place: false,
        }
    }
}

/// `key.suspended` v1: abuse detection suspended the key until `until`; every gateway
/// refuses it (403 `key_suspended`) until then. Written by the sentinel, once per
/// detection (`verdict_id`: the key, the rule and the window that fired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySuspendedV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    /// Unix seconds at which the suspension ends by itself.
    pub until: i64,
    /// The rule that fired: `velocity`, `spike`, `spread`, `violations`, `model_probing`.
    pub rule: String,
    /// What the rule saw, in one line (figures, never secrets).
    pub reason: String,
    /// The detection's id: the same detection replayed has the same id.
    pub verdict_id: String,
}

/// `key.resumed` v1: the key's suspension ended: by itself at its end (`early: false`,
/// written by the sentinel) or earlier by an owner (`early: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyResumedV1 {
    pub key_id: KeyId,
    pub project_id: ProjectId,
    /// The suspension that ended.
    pub verdict_id: String,
    pub early: bool,
}

/// `project.abuse_set` v1: the project's abuse-detection settings replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectAbuseSetV1 {
    pub project_id: ProjectId,
    pub settings: AbuseSettingsData,
}

/// `project.alerts_set` v1: where the project's alerts go, replacing the earlier
/// channels. Webhook signing secrets are sealed like provider keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectAlertsSetV1 {
    pub project_id: ProjectId,
    pub emails: Vec<String>,
    pub webhooks: Vec<WebhookData>,
}

/// A webhook endpoint of a project's alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookData {
    /// `wh_…`, stable while the URL stays configured.
    pub id: String,
    pub url: String,
    /// The `whsec_…` signing secret, sealed.
    pub secret: SealedKey,
}

/// `alert.raised` v1 (signals stream): an alert for a project's owners, raised once
/// (`alert_id` is the same however often the signals behind it are read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRaisedV1 {
    pub alert_id: String,
    pub project_id: ProjectId,
    pub key_id: Option<KeyId>,
    /// `ip_mismatch`, `lock_violation`, `suspended`, `resumed`, `budget_threshold`,
    /// `key_expiring`, `digest`.
    pub kind: String,
    /// The alert's one-line subject.
    pub subject: String,
    /// The whole alert (`id`, `project_id`, `key_id`, `kind`, `at`, `facts`), from which
    /// its email and webhook payload are rendered; never a secret.
    #[schemars(with = "serde_json::Value")]
    pub alert: serde_json::Value,
}

/// `alert.delivered` v1 (signals stream): an alert's delivery to one channel ended,
/// delivered or given up on (`ok: false`, with the reason). An alert raised without one
/// for a channel is still being delivered there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertDeliveredV1 {
    pub alert_id: String,
    pub project_id: ProjectId,
    /// `email:<address>` or `webhook:<webhook id>`.
    pub channel: String,
    pub ok: bool,
    pub attempts: u32,
    pub reason: Option<String>,
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

/// `budget.threshold` v1 (signals stream, derived by the projector): a project's or a
/// key's settled spend in a budget window crossed `percent` (50, 80 or 100) of its
/// budget. `threshold_id` is the same for the same crossing however often it is derived
/// (a rebuild of the views), so consumers deduplicate by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetThresholdV1 {
    pub threshold_id: String,
    pub project_id: ProjectId,
    /// The key whose own budget this is; `null`: the project's budget.
    pub key_id: Option<KeyId>,
    /// `day`, `month` or `total`.
    pub period: String,
    /// The budget window, e.g. `M2026-11`.
    pub window: String,
    pub percent: u8,
    pub budget_micros: u64,
    pub spent_micros: u64,
}

/// `budget.reset` v1 (signals stream, derived by the projector): a budget that was
/// exhausted in its previous window has a new window (announced at the period boundary,
/// or when the projector next runs if it was down then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetResetV1 {
    pub reset_id: String,
    pub project_id: ProjectId,
    pub key_id: Option<KeyId>,
    pub period: String,
    /// The new window.
    pub window: String,
}

/// `usage.recorded` v4: v3 with the client's address and its country, which abuse
/// detection counts (distinct addresses and countries per key). Older events are upcast
/// without them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecordedV4 {
    /// The gateway's request id (also returned to the client as `x-securegate-request-id`).
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
    /// Of the prompt tokens, those the provider served from its cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// What the request cost, in micro-dollars, at the price of its model.
    pub cost_micros: u64,
    /// Whether the model had a price (an unpriced model is accounted at zero cost).
    pub priced: bool,
    /// The request body's bytes as the client sent them.
    pub request_bytes: u64,
    /// The answer body's bytes as the client received them (up to where it stopped).
    pub response_bytes: u64,
    /// From the request's arrival to the last byte of the answer, in microseconds.
    pub latency_us: u64,
    /// When the request arrived (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    /// The gateway node that served it.
    pub node: String,
    /// The true client address (after trusted proxies).
    #[schemars(with = "Option<String>")]
    pub client_ip: Option<std::net::IpAddr>,
    /// The client address's country (ISO 3166-1 alpha-2), when a GeoIP database placed it.
    pub country: Option<String>,
}

impl From<UsageRecordedV3> for UsageRecordedV4 {
    fn from(v3: UsageRecordedV3) -> Self {
        UsageRecordedV4 {
            request_id: v3.request_id,
            project_id: v3.project_id,
            key_id: v3.key_id,
            connection_id: v3.connection_id,
            provider: v3.provider,
            model: v3.model,
            endpoint: v3.endpoint,
            status: v3.status,
            streamed: v3.streamed,
            prompt_tokens: v3.prompt_tokens,
            cached_prompt_tokens: v3.cached_prompt_tokens,
            completion_tokens: v3.completion_tokens,
            total_tokens: v3.total_tokens,
            cost_micros: v3.cost_micros,
            priced: v3.priced,
            request_bytes: v3.request_bytes,
            response_bytes: v3.response_bytes,
            latency_us: v3.latency_us,
            started_at: v3.started_at,
            node: v3.node,
            client_ip: None,
            country: None,
        }
    }
}

impl From<UsageRecordedV2> for UsageRecordedV4 {
    fn from(v2: UsageRecordedV2) -> Self {
        UsageRecordedV3::from(v2).into()
    }
}

impl From<UsageRecordedV1> for UsageRecordedV4 {
    fn from(v1: UsageRecordedV1) -> Self {
        UsageRecordedV3::from(v1).into()
    }
}

/// `usage.recorded` v3: v2 with the bytes of the request and of the answer, the measure
/// of endpoints that report no tokens (audio, images, files). Older events are upcast
/// with zero bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecordedV3 {
    /// The gateway's request id (also returned to the client as `x-securegate-request-id`).
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
    /// Of the prompt tokens, those the provider served from its cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// What the request cost, in micro-dollars, at the price of its model.
    pub cost_micros: u64,
    /// Whether the model had a price (an unpriced model is accounted at zero cost).
    pub priced: bool,
    /// The request body's bytes as the client sent them.
    pub request_bytes: u64,
    /// The answer body's bytes as the client received them (up to where it stopped).
    pub response_bytes: u64,
    /// From the request's arrival to the last byte of the answer, in microseconds.
    pub latency_us: u64,
    /// When the request arrived (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    /// The gateway node that served it.
    pub node: String,
}

impl From<UsageRecordedV2> for UsageRecordedV3 {
    fn from(v2: UsageRecordedV2) -> Self {
        UsageRecordedV3 {
            request_id: v2.request_id,
            project_id: v2.project_id,
            key_id: v2.key_id,
            connection_id: v2.connection_id,
            provider: v2.provider,
            model: v2.model,
            endpoint: v2.endpoint,
            status: v2.status,
            streamed: v2.streamed,
            prompt_tokens: v2.prompt_tokens,
            cached_prompt_tokens: v2.cached_prompt_tokens,
            completion_tokens: v2.completion_tokens,
            total_tokens: v2.total_tokens,
            cost_micros: v2.cost_micros,
            priced: v2.priced,
            request_bytes: 0,
            response_bytes: 0,
            latency_us: v2.latency_us,
            started_at: v2.started_at,
            node: v2.node,
        }
    }
}

impl From<UsageRecordedV1> for UsageRecordedV3 {
    fn from(v1: UsageRecordedV1) -> Self {
        UsageRecordedV2::from(v1).into()
    }
}

/// `usage.recorded` v2: v1 with what the request cost. Older events are upcast with no
/// cost and as unpriced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecordedV2 {
    /// The gateway's request id (also returned to the client as `x-securegate-request-id`).
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
    /// Of the prompt tokens, those the provider served from its cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// What the request cost, in micro-dollars, at the price of its model.
    pub cost_micros: u64,
    /// Whether the model had a price (an unpriced model is accounted at zero cost).
    pub priced: bool,
    /// From the request's arrival to the last byte of the answer, in microseconds.
    pub latency_us: u64,
    /// When the request arrived (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    /// The gateway node that served it.
    pub node: String,
}

impl From<UsageRecordedV1> for UsageRecordedV2 {
    fn from(v1: UsageRecordedV1) -> Self {
        UsageRecordedV2 {
            request_id: v1.request_id,
            project_id: v1.project_id,
            key_id: v1.key_id,
            connection_id: v1.connection_id,
            provider: v1.provider,
            model: v1.model,
            endpoint: v1.endpoint,
            status: v1.status,
            streamed: v1.streamed,
            prompt_tokens: v1.prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: v1.completion_tokens,
            total_tokens: v1.total_tokens,
            cost_micros: 0,
            priced: false,
            latency_us: v1.latency_us,
            started_at: v1.started_at,
            node: v1.node,
        }
    }
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
