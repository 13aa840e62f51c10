//! The admin API's request and response types: its public contract, documented in the
//! OpenAPI document. Storage rows from `sg-views` are converted into these.

use serde::{Deserialize, Serialize};
use sg_views::{ConnectionRow, KeyRow, ProjectRow, RequestRow};
use time::OffsetDateTime;
use utoipa::ToSchema;

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1–128 characters.
    pub name: String,
    /// The tenant's plan (`GET /plans`). Omitted: the installation's default plan
    /// (`--default-plan`, `free` unless the operator chose another).
    pub plan: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1–128 characters.
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    /// One of the catalog's providers (`GET /providers`): `openai`, `anthropic`,
    /// `azure_openai`, `gemini`, … `openai_compatible` (a self-hosted server), or `mock`
    /// (answers locally, for trying SecureGate without a provider account).
    pub provider: String,
    /// Defaults to the provider's name.
    pub name: Option<String>,
    /// The provider API key. Sealed before it leaves the handler; never returned.
    #[schema(value_type = String, format = Password)]
    pub api_key: Option<sg_crypto::SecretString>,
    /// The provider's API base, e.g. `https://api.openai.com/v1`. Private, loopback and
    /// metadata addresses are refused unless the operator allows private upstreams.
    pub base_url: Option<String>,
    /// OpenAI only: the organization the key bills, sent as `OpenAI-Organization`
    /// (clients cannot choose it).
    pub openai_organization: Option<String>,
    /// OpenAI only: the project the key bills, sent as `OpenAI-Project` (clients cannot
    /// choose it).
    pub openai_project: Option<String>,
    /// Azure OpenAI only: the `api-version` deployments are called with (`YYYY-MM-DD` or
    /// `YYYY-MM-DD-preview`; default `2024-10-21`).
    pub api_version: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateConnectionKey {
    /// The new provider API key. Sealed before it leaves the handler; never returned.
    /// Requests switch to it as soon as each gateway has folded the event.
    #[schema(value_type = String, format = Password)]
    pub api_key: sg_crypto::SecretString,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrap {
    /// The KMS key (id, ARN or alias) to re-wrap every provider key's data key under.
    /// With AWS KMS this uses `ReEncrypt`: no plaintext leaves KMS. Afterwards, point
    /// `--kms-key-id` at the new key; the old one may then be disabled.
    pub kms_key_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RewrapReport {
    /// Connections re-wrapped by this call.
    pub rewrapped: u64,
    /// Connections already wrapped by the new key.
    pub unchanged: u64,
    /// Connections that could not be re-wrapped; call again to retry them.
    pub failed: Vec<RewrapFailure>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RewrapFailure {
    pub connection_id: String,
    pub error: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// 1–128 characters.
    pub name: String,
    /// Connections the key may use, in order of preference (the first is the default;
    /// clients pick another with `x-connection-id`). Defaults to all of the project's
    /// connections at the time of issue.
    pub connection_ids: Option<Vec<String>>,
    /// Models the key may call. Omitted: any model. (Same as `locks.models`.)
    pub allowed_models: Option<Vec<String>>,
    /// The key's locks; omitted fields take a new key's defaults (IP auto-bind on first
    /// use, everything else off). See `KeyLocks`.
    #[schema(value_type = Option<LockSettingsDoc>)]
    pub locks: Option<sg_policy::LockSettings>,
    /// The key's limits (requests, tokens, concurrency, budget). Omitted: none of its own
    /// (its project's limits still apply).
    pub limits: Option<Limits>,
}

/// A key's locks, as set by its owner. Every field may be omitted (new-key defaults).
///
/// The gateway refuses a request that a lock does not allow with 403 and one of these
/// `error.code`s (OpenAI error shape), before any provider traffic: `key_expired`,
/// `ip_not_allowed`, `city_not_allowed`, `device_required`, `device_not_allowed`,
/// `model_not_allowed`, `signature_required`, `signature_expired`, `signature_invalid`,
/// `signature_replayed`. If a first-use binding or a replay check cannot be recorded
/// cluster-wide, it answers 503 `binding_unavailable` / `replay_check_unavailable`
/// (fail closed). Signed requests carry `x-sg-timestamp` (Unix seconds, within 300 s) and
/// `x-sg-signature` (base64 Ed25519 over
/// `"SG1\n" + timestamp + "\n" + METHOD + "\n" + path_and_query + "\n" + hex(sha256(body))`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct LockSettingsDoc {
    /// Which client addresses may use the key: `{"mode":"auto_bind"}` (default: the first
    /// request binds the key to its address, cluster-wide), `{"mode":"off"}`, or
    /// `{"mode":"allow","cidrs":["203.0.113.0/24","2001:db8::/32"]}`.
    #[schema(value_type = Object)]
    pub ip: Option<serde_json::Value>,
    /// Which device may use the key, by its `x-device-fingerprint` header:
    /// `{"mode":"off"}` (default), `{"mode":"auto_bind"}`, or
    /// `{"mode":"fixed","fingerprint":"…"}`.
    #[schema(value_type = Object)]
    pub device: Option<serde_json::Value>,
    /// Allowed locations, from the client address (MaxMind database):
    /// `{"countries":["DE"],"cities":[{"country":"GB","city":"London"}]}`; or
    /// `{"mode":"auto_bind","level":"country"}` (`level` `country`, the default, or
    /// `city`): the first request's place becomes the key's only place, cluster-wide. An
    /// address the database cannot place is refused while a location lock is set.
    #[schema(value_type = Object)]
    pub geo: Option<serde_json::Value>,
    /// Models the key may call; omitted or null: any.
    pub models: Option<Vec<String>>,
    /// Require signed requests: `{"public_key":"<base64 Ed25519 public key>"}`.
    #[schema(value_type = Object)]
    pub signature: Option<serde_json::Value>,
    /// Unix seconds after which the key stops working.
    pub expires_at: Option<i64>,
}

/// A key's locks and what it is bound to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyLocks {
    #[schema(value_type = LockSettingsDoc)]
    pub locks: sg_policy::LockSettings,
    /// The client address the key is bound to (auto-bind), if any.
    pub bound_ip: Option<String>,
    /// The device fingerprint the key is bound to (auto-bind), if any.
    pub bound_device: Option<String>,
    /// The place the key is bound to (location auto-bind), if any:
    /// `{"country":"DE","city":null}` or `{"country":"DE","city":"Berlin"}`.
    #[schema(value_type = Option<Object>)]
    pub bound_place: Option<sg_policy::Place>,
}

impl KeyLocks {
    /// A key's locks and bindings as the control state holds them.
    pub fn of(key: &sg_state::Key) -> Self {
        KeyLocks {
            locks: key.locks.clone(),
            bound_ip: key.bound_ip.map(|ip| ip.to_string()),
            bound_device: key.bound_device.clone(),
            bound_place: key.bound_place.clone(),
        }
    }

    /// A new key's locks: bound to nothing yet.
    pub fn unbound(locks: &sg_policy::LockSettings) -> Self {
        KeyLocks {
            locks: locks.clone(),
            bound_ip: None,
            bound_device: None,
            bound_place: None,
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindKey {
    /// Bind to this client address.
    pub ip: Option<String>,
    /// Bind to this device fingerprint.
    pub device: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnbindKey {
    /// Clear the IP binding (default true).
    #[serde(default = "yes")]
    pub ip: bool,
    /// Clear the device binding (default true).
    #[serde(default = "yes")]
    pub device: bool,
    /// Clear the place binding (default true).
    #[serde(default = "yes")]
    pub place: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    /// Why, for the audit trail.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// The tenant's plan; `null`: a tenant from before plans, or defined in a static
    /// configuration (every feature, no plan defaults).
    pub plan: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&sg_state::Tenant> for Tenant {
    fn from(t: &sg_state::Tenant) -> Self {
        Tenant {
            id: t.id.to_string(),
            name: t.name.clone(),
            plan: t.plan.clone(),
            created_at: rfc3339(t.created_at),
        }
    }
}

/// What an admin API token may do: `viewer` reads; `admin` also manages connections,
/// keys, locks, limits and the model registry of its projects; `owner` also manages the
/// tenant's projects and tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleDoc {
    Viewer,
    Admin,
    Owner,
}

impl From<RoleDoc> for sg_events::Role {
    fn from(r: RoleDoc) -> Self {
        match r {
            RoleDoc::Viewer => sg_events::Role::Viewer,
            RoleDoc::Admin => sg_events::Role::Admin,
            RoleDoc::Owner => sg_events::Role::Owner,
        }
    }
}

impl From<sg_events::Role> for RoleDoc {
    fn from(r: sg_events::Role) -> Self {
        match r {
            sg_events::Role::Viewer => RoleDoc::Viewer,
            sg_events::Role::Admin => RoleDoc::Admin,
            sg_events::Role::Owner => RoleDoc::Owner,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    /// 1–128 characters, e.g. who or what holds it.
    pub name: String,
    pub role: RoleDoc,
    /// Limit the token to these projects of the tenant. Omitted: every project.
    pub project_ids: Option<Vec<String>>,
    /// RFC 3339; omitted: it does not expire.
    pub expires_at: Option<String>,
}

/// An admin API token, without the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: RoleDoc,
    pub project_ids: Option<Vec<String>>,
    /// `SGA_…` and the last four (checksum) characters.
    pub hint: String,
    /// `active`, `expired` or `revoked`.
    pub status: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl TokenRecord {
    pub(crate) fn of(t: &sg_state::Token, now: i64) -> Self {
        let unix = |s: i64| {
            OffsetDateTime::from_unix_timestamp(s)
                .map(rfc3339)
                .unwrap_or_default()
        };
        TokenRecord {
            id: t.id.to_string(),
            tenant_id: t.tenant_id.to_string(),
            name: t.name.clone(),
            role: t.role.into(),
            project_ids: t
                .project_ids
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.to_string()).collect()),
            hint: t.hint.clone(),
            status: if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at.is_some_and(|e| now >= e) {
                "expired"
            } else {
                "active"
            }
            .into(),
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(unix),
            revoked_at: t.revoked_at.map(rfc3339),
        }
    }
}

/// A newly issued admin API token.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub record: TokenRecord,
    /// The token, `SGA_…`. Shown once: store it now.
    pub token: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    pub reason: Option<String>,
}

/// A plan: what a tenant on it may use.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanDoc {
    pub name: String,
    /// Connections per tenant; `null`: unlimited.
    pub max_connections: Option<u32>,
    /// Lock features: `ip`, `model`, `city`, `country`, `device`, `signature`,
    /// `geo_auto_bind`.
    pub features: Vec<String>,
    /// Requests per minute of a key that sets none, and the most a key may set.
    pub key_rpm: Option<u64>,
    /// Requests per day of a key that sets none, and the most a key may set.
    pub key_rpd: Option<u64>,
}

impl From<&sg_plans::Plan> for PlanDoc {
    fn from(p: &sg_plans::Plan) -> Self {
        PlanDoc {
            name: p.name.clone(),
            max_connections: p.max_connections,
            features: p.features.iter().map(|f| f.as_str().to_owned()).collect(),
            key_rpm: p.key_rpm,
            key_rpd: p.key_rpd,
        }
    }
}

/// A plan's terms, as the operator defines them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinePlan {
    pub max_connections: Option<u32>,
    pub features: Vec<String>,
    pub key_rpm: Option<u64>,
    pub key_rpd: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPlan {
    pub plan: String,
}

/// Who is calling.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// `operator` or `token`.
    pub caller: String,
    /// `operator`, `owner`, `admin` or `viewer`.
    pub role: String,
    /// The token, for a tenant's token.
    pub token: Option<TokenRecord>,
    pub tenant: Option<Tenant>,
    pub plan: Option<PlanDoc>,
    /// Where clients reach the gateway, if the operator said (`--gateway-url`).
    pub gateway_url: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old key keeps working (0–2,592,000; default 86,400: a day).
    pub grace_secs: Option<u64>,
}

/// A key issued to replace another.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    #[serde(flatten)]
    pub issued: IssuedKey,
    /// The key it replaces.
    pub replaces: String,
    /// When the replaced key stops working (RFC 3339).
    pub replaced_key_retires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub created_at: String,
}

impl From<ProjectRow> for Project {
    fn from(r: ProjectRow) -> Self {
        Project {
            id: r.id.to_string(),
            tenant_id: r.tenant_id.to_string(),
            name: r.name,
            created_at: rfc3339(r.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    /// e.g. `openai_x8z92a0k1q`.
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub provider: String,
    pub name: String,
    pub base_url: Option<String>,
    pub openai_organization: Option<String>,
    pub openai_project: Option<String>,
    /// Azure OpenAI's `api-version` (`null`: the default).
    pub api_version: Option<String>,
    pub created_at: String,
}

impl From<ConnectionRow> for Connection {
    fn from(r: ConnectionRow) -> Self {
        Connection {
            id: r.id.to_string(),
            tenant_id: r.tenant_id.to_string(),
            project_id: r.project_id.to_string(),
            provider: r.provider.as_str().to_owned(),
            name: r.name,
            base_url: r.base_url,
            openai_organization: r.openai_organization,
            openai_project: r.openai_project,
            api_version: r.api_version,
            created_at: rfc3339(r.created_at),
        }
    }
}

/// A proxy key's public record. Never contains the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct Key {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    /// `SG_…` and the last four (checksum) characters: enough to tell keys apart.
    pub hint: String,
    /// `active` or `revoked`.
    pub status: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub connection_ids: Vec<String>,
    pub allowed_models: Option<Vec<String>>,
    /// Set while abuse detection has the key suspended: gateways refuse it with 403
    /// `key_suspended` until `until`, or until an owner resumes it.
    pub suspension: Option<KeySuspension>,
    /// The key's locks and bindings, as `GET /keys/{id}/locks` answers them (`null` only
    /// for a key this admin node has not folded yet).
    pub locks: Option<KeyLocks>,
}

/// A suspension by abuse detection.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeySuspension {
    /// Unix seconds at which it ends by itself.
    pub until: i64,
    /// The rule that fired: `velocity`, `spike`, `spread`, `violations`, `model_probing`.
    pub rule: String,
    /// What the rule saw.
    pub reason: String,
}

impl From<&sg_state::Suspension> for KeySuspension {
    fn from(s: &sg_state::Suspension) -> Self {
        KeySuspension {
            until: s.until,
            rule: s.rule.clone(),
            reason: s.reason.clone(),
        }
    }
}

impl Key {
    /// The key's suspension (if still in force at `now`), locks and bindings, as `state`
    /// holds them.
    pub fn with_state(mut self, state: &sg_state::State, now: i64) -> Self {
        let id: Option<sg_events::KeyId> = self.id.parse().ok();
        let key = id.and_then(|id| state.key(&id));
        self.suspension = key
            .and_then(|k| k.suspension.as_ref())
            .filter(|s| s.until > now)
            .map(KeySuspension::from);
        self.locks = key.map(KeyLocks::of);
        self
    }
}

impl From<KeyRow> for Key {
    fn from(r: KeyRow) -> Self {
        Key {
            id: r.id.to_string(),
            tenant_id: r.tenant_id.to_string(),
            project_id: r.project_id.to_string(),
            name: r.name,
            hint: r.hint,
            status: match r.status {
                sg_views::KeyStatus::Active => "active".into(),
                sg_views::KeyStatus::Revoked => "revoked".into(),
            },
            created_at: rfc3339(r.created_at),
            revoked_at: r.revoked_at.map(rfc3339),
            last_used_at: r.last_used_at.map(rfc3339),
            connection_ids: r.connection_ids.iter().map(|c| c.to_string()).collect(),
            allowed_models: r.allowed_models,
            suspension: None,
            locks: None,
        }
    }
}

/// A newly issued key: the only response that ever shows the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub record: Key,
    /// The proxy key, `SG_…`. Shown once: store it now.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub data: Vec<T>,
}

/// Latency percentiles in milliseconds, from the merged latency histograms (true
/// percentiles within 0.8 %, not averages); `null` with no requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyPercentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Usage counters of a set of requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotals {
    pub requests: u64,
    /// Requests answered with status 400 or more.
    pub errors: u64,
    pub prompt_tokens: u64,
    /// Of the prompt tokens, those the provider served from its cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// What the requests cost at their models' prices (micro-dollar precision).
    pub cost_usd: f64,
    /// Requests whose model had no price: counted at zero cost.
    pub unpriced_requests: u64,
    pub latency_ms: LatencyPercentiles,
}

impl From<sg_views::UsageStats> for UsageTotals {
    fn from(s: sg_views::UsageStats) -> Self {
        UsageTotals {
            requests: s.requests,
            errors: s.errors,
            prompt_tokens: s.prompt_tokens,
            cached_prompt_tokens: s.cached_prompt_tokens,
            completion_tokens: s.completion_tokens,
            total_tokens: s.total_tokens,
            cost_usd: sg_spend::micros_to_usd(s.cost_micros),
            unpriced_requests: s.unpriced_requests,
            latency_ms: LatencyPercentiles {
                p50: s.latency.map(|l| l.p50),
                p95: s.latency.map(|l| l.p95),
                p99: s.latency.map(|l| l.p99),
            },
        }
    }
}

/// One group of a usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroup {
    /// The key id (`group_by=key`), the model the requests named (`model`; `null`: no
    /// model named), the UTC day `2026-11-29` (`day`) or the UTC hour
    /// `2026-11-29T10:00:00Z` (`hour`).
    pub group: Option<String>,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Usage over a range of UTC hours: groups with at least one request (in order of their
/// name: days and hours in time order), and the totals of the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub data: Vec<UsageGroup>,
    pub totals: UsageTotals,
    /// The range counted, in whole UTC hours: the start of `from`'s hour...
    pub from: String,
    /// ...to the end of `to`'s hour (exclusive).
    pub to: String,
    pub group_by: String,
}

/// What a project or key spent in the current window of a budget period.
#[derive(Debug, Serialize, ToSchema)]
pub struct Spend {
    /// The budget configured for this period; `null` if there is none, or if the budget
    /// is for another period.
    pub budget_usd: Option<f64>,
    /// Settled spend of the window: requests that ended and were recorded.
    pub spent_usd: f64,
    /// What gateway nodes hold from the budget beyond the settled spend (reserved for
    /// requests in flight, or held for the next ones); never negative, 0 when the
    /// budget's quota ledger does not count this window.
    pub reserved_usd: f64,
    /// `day`, `month` or `total`.
    pub period: String,
    /// The window's id, as budget signals name it: `d<day>`, `M<yyyy-mm>` or `total`.
    pub window: String,
    /// Start of the window (UTC); `null` for `total`.
    pub period_start: Option<String>,
    /// End of the window (UTC, exclusive); `null` for `total`.
    pub period_end: Option<String>,
}

/// A page of request history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestPage {
    pub data: Vec<RequestRecord>,
    /// Pass as `cursor` to read the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestRecord {
    pub request_id: String,
    pub key_id: String,
    pub connection_id: Option<String>,
    pub model: Option<String>,
    pub endpoint: String,
    pub status: u16,
    pub streamed: bool,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    /// Whether the model had a price (`false`: counted at zero cost).
    pub priced: bool,
    pub latency_ms: f64,
    /// Bytes of the request body and of the answer.
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub started_at: String,
    pub node: String,
}

impl From<RequestRow> for RequestRecord {
    fn from(r: RequestRow) -> Self {
        RequestRecord {
            request_id: r.request_id.to_string(),
            key_id: r.key_id.to_string(),
            connection_id: r.connection_id.map(|c| c.to_string()),
            model: r.model,
            endpoint: r.endpoint,
            status: r.status,
            streamed: r.streamed,
            prompt_tokens: r.prompt_tokens,
            cached_prompt_tokens: r.cached_prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.total_tokens,
            cost_usd: sg_spend::micros_to_usd(r.cost_micros),
            priced: r.priced,
            latency_ms: r.latency_us as f64 / 1000.0,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            started_at: rfc3339(r.started_at),
            node: r.node,
        }
    }
}

/// The OpenAI-shaped error body every endpoint answers with on failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// e.g. `invalid_request_error`, `authentication_error`, `not_found_error`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// e.g. `invalid_json`, `unknown_project`, `concurrent_modification`.
    pub code: String,
    pub param: Option<String>,
}

/// One entry of a project's model registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRoute {
    /// The name clients ask for, e.g. `gpt-4`.
    pub model: String,
    /// The connection that serves it (must belong to the project).
    pub connection_id: String,
    /// The exact model sent to the provider, e.g. `gpt-4-0613`.
    pub upstream_model: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveModelRoute {
    pub model: String,
}

/// Limits of a key or of a project (a project's limits bind all its keys together).
/// Every field may be omitted: no limit of that kind. Limits hold for the whole cluster,
/// not per gateway node.
///
/// A request over a limit is refused with 429 in the OpenAI error shape: code
/// `rate_limit_exceeded` for `rpm`, `rpd`, `tpm` and `concurrent`, code
/// `insufficient_quota` for a spent budget, with `Retry-After` (seconds). Every answer of
/// a key with request or token limits carries `x-ratelimit-limit-requests`,
/// `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the `-tokens`
/// variants. A gateway node that cannot reach the event log to take more quota serves
/// what it holds, then answers 503 `limit_unavailable`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per UTC minute (1 – 10,000,000).
    #[schema(value_type = Option<u64>, minimum = 1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<serde_json::Number>,
    /// Requests per UTC day (1 – 10,000,000,000).
    #[schema(value_type = Option<u64>, minimum = 1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<serde_json::Number>,
    /// Tokens (prompt + completion) per UTC minute. Each request reserves its prompt
    /// estimate plus its `max_tokens` (or 4,096) and settles to what the provider
    /// reported.
    #[schema(value_type = Option<u64>, minimum = 1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<serde_json::Number>,
    /// Requests in flight at once (1 – 1,000,000).
    #[schema(value_type = Option<u64>, minimum = 1)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetLimit>,
}

/// A budget: US dollars per UTC `day`, per UTC calendar `month`, or in `total`. Each
/// request reserves its worst-case cost before it is forwarded (prompt estimate plus
/// `max_tokens`/`max_completion_tokens`/`max_output_tokens`, else 4,096 output tokens, at
/// the model's price) and settles to its actual cost when the answer ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetLimit {
    /// More than 0, at most 10,000,000; micro-dollar precision.
    #[schema(value_type = f64)]
    pub usd: serde_json::Number,
    /// `day`, `month` or `total`.
    pub period: String,
}

impl From<sg_spend::Limits> for Limits {
    fn from(l: sg_spend::Limits) -> Self {
        Limits {
            rpm: l.rpm.map(Into::into),
            rpd: l.rpd.map(Into::into),
            tpm: l.tpm.map(Into::into),
            concurrent: l.concurrent.map(Into::into),
            budget: l.budget.map(|b| BudgetLimit {
                usd: serde_json::Number::from_f64(sg_spend::micros_to_usd(b.micros))
                    .unwrap_or_else(|| 0.into()),
                period: b.period.as_str().to_owned(),
            }),
        }
    }
}

/// `PUT /prices`: a model's price, replacing its built-in one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrice {
    /// The model name as the provider reports it (for routed models: the upstream model).
    pub model: String,
    /// USD per million input (prompt) tokens.
    #[schema(value_type = f64)]
    pub input_usd_per_mtok: serde_json::Number,
    /// USD per million output (completion) tokens.
    #[schema(value_type = f64)]
    pub output_usd_per_mtok: serde_json::Number,
    /// USD per million cached input tokens, where the provider reports them. Omitted:
    /// cached tokens are charged as input.
    #[schema(value_type = Option<f64>)]
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<serde_json::Number>,
}

/// A model's price.
#[derive(Debug, Serialize, ToSchema)]
pub struct Price {
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    pub cached_input_usd_per_mtok: Option<f64>,
    /// `operator` (set with `PUT /prices`) or `default` (built in).
    pub source: String,
}

impl Price {
    pub(crate) fn of(model: &str, p: sg_spend::Price, source: &str) -> Price {
        Price {
            model: model.to_owned(),
            input_usd_per_mtok: sg_spend::micros_to_usd(p.input),
            output_usd_per_mtok: sg_spend::micros_to_usd(p.output),
            cached_input_usd_per_mtok: p.cached_input.map(sg_spend::micros_to_usd),
            source: source.to_owned(),
        }
    }
}

/// `POST /prices/remove`: drop the operator's price of a model (its built-in price, if
/// any, applies again).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovePrice {
    pub model: String,
}

/// One provider a connection can name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderEntry {
    /// What `"provider"` takes when creating a connection.
    pub id: String,
    pub name: String,
    /// Used when a connection gives no `base_url`; `null`: `base_url` is required.
    pub default_base_url: Option<String>,
    /// How the provider key is sent: `bearer` (`Authorization: Bearer`), `x_api_key`
    /// (`x-api-key`) or `api_key` (`api-key`).
    pub auth: String,
    /// The API it speaks: `openai` (OpenAI-compatible), `anthropic` (Messages; OpenAI chat
    /// requests are translated) or `azure_openai` (deployments and `api-version`).
    pub flavour: String,
    /// What SecureGate serves through it.
    pub supports: ProviderSupports,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderSupports {
    pub chat: bool,
    pub streaming: bool,
    pub embeddings: bool,
    pub audio: bool,
    pub images: bool,
    pub files: bool,
}

impl From<sg_providers::ProviderInfo> for ProviderEntry {
    fn from(i: sg_providers::ProviderInfo) -> Self {
        ProviderEntry {
            id: i.id.to_owned(),
            name: i.name.to_owned(),
            default_base_url: i.default_base_url.map(str::to_owned),
            auth: i.auth.as_str().to_owned(),
            flavour: i.flavour.as_str().to_owned(),
            supports: ProviderSupports {
                chat: i.supports.chat,
                streaming: i.supports.streaming,
                embeddings: i.supports.embeddings,
                audio: i.supports.audio,
                images: i.supports.images,
                files: i.supports.files,
            },
        }
    }
}
