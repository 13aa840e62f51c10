//! The fold from control events to the current state of tenants, projects,
//! connections and keys. Pure: no I/O, no clock, no async.
//!
//! The gateway folds the control stream into a [`State`] and publishes per-key
//! [`KeyView`]s to its hot-path cache; the admin folds the same stream to validate
//! commands and to know each aggregate's last sequence for optimistic concurrency.
//!
//! **Architecture invariant:** an event is applied only if it is consistent with the
//! state (parents exist, and belong to the event's tenant); otherwise the state is left
//! unchanged and [`FoldError`] says why. A hostile or buggy writer cannot attach an
//! object to another tenant's project.
#![forbid(unsafe_code)]

mod keystore;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sg_crypto::SealedSecret;
use sg_events::{
    ConnectionId, Envelope, Event, KeyId, PlanData, ProjectId, Provider, Role, TenantId, TokenId,
};
use std::net::IpAddr;

use sg_policy::{KeyLocks, LockSettings};
use sg_spend::{Limits, Price};
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    /// The tenant's plan; `None`: a tenant from before plans (every feature, no
    /// defaults) until the operator puts it on one.
    pub plan: Option<String>,
    pub created_at: OffsetDateTime,
}

/// An admin API token of a tenant. Only its hash is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub tenant_id: TenantId,
    pub name: String,
    pub role: Role,
    /// The projects it is limited to; `None`: every project of the tenant.
    pub project_ids: Option<Vec<ProjectId>>,
    pub token_hash: String,
    pub hint: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectId,
    pub tenant_id: TenantId,
    pub name: String,
    pub created_at: OffsetDateTime,
    /// The model registry: the names clients use → connection and exact upstream model.
    pub routes: BTreeMap<String, ModelRoute>,
    /// Limits all the project's keys share.
    pub limits: Limits,
    /// Abuse-detection settings; `None`: the defaults.
    pub abuse: Option<sg_events::AbuseSettingsData>,
    /// Where the project's alerts go (webhook secrets sealed).
    pub alerts: AlertChannels,
}

/// A project's alert channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertChannels {
    pub emails: Vec<String>,
    pub webhooks: Vec<sg_events::WebhookData>,
}

/// Where a client-facing model name is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub connection_id: ConnectionId,
    pub upstream_model: String,
}

/// A provider credential. The key is only ever held sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnectionId,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    pub provider: Provider,
    pub name: String,
    pub base_url: Option<String>,
    /// Where requests go: `base_url`, or the provider's default, parsed once (`None` for
    /// a provider answered in-process, or a base that does not parse).
    pub upstream: Option<url::Url>,
    pub api_key: SealedSecret,
    /// Sent as `OpenAI-Organization` (OpenAI connections).
    pub openai_organization: Option<String>,
    /// Sent as `OpenAI-Project` (OpenAI connections).
    pub openai_project: Option<String>,
    /// Azure OpenAI's `api-version` (`None`: the default).
    pub api_version: Option<String>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    pub name: String,
    pub key_hash: String,
    pub hint: String,
    pub connection_ids: Vec<ConnectionId>,
    /// The owner-set locks.
    pub locks: LockSettings,
    /// The key's own limits.
    pub limits: Limits,
    /// Bound by the first request (auto-bind locks) or by the owner.
    pub bound_ip: Option<IpAddr>,
    pub bound_device: Option<String>,
    /// Where a location auto-bind lock bound the key, if it did.
    pub bound_place: Option<sg_policy::Place>,
    /// The key's latest suspension by abuse detection, until it is resumed.
    pub suspension: Option<Suspension>,
    pub status: KeyStatus,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// The sequences of the newest events on the key's own subjects (the key's, then its
    /// binding's) folded while it existed; 0: none. Kept here rather than under the
    /// subject's text in `State::subject_seq`: see [`State::subject_seq`].
    subject_seqs: [u64; 2],
}

/// A key suspended by abuse detection: refused until `until` (unix seconds), or until
/// an owner resumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    pub until: i64,
    pub rule: String,
    pub reason: String,
    pub verdict_id: String,
}

/// Everything the gateway's hot path needs about one key, resolved and immutable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    pub key_id: KeyId,
    pub tenant_id: TenantId,
    pub project_id: ProjectId,
    pub status: KeyStatus,
    /// In order of preference; only connections of the key's project.
    pub connections: Vec<Arc<Connection>>,
    /// Settings and bindings, ready for `sg_policy::evaluate`.
    pub locks: KeyLocks,
    /// The project's model registry.
    pub routes: BTreeMap<String, ModelRoute>,
    /// The key's own limits, and its project's (which all the project's keys share).
    pub limits: Limits,
    pub project_limits: Limits,
    /// The sequence of the key's binding subject when this view was built: a binding
    /// decided from this view is written expecting exactly this sequence, so a binding
    /// written meanwhile by another node makes the write fail instead of overwriting it.
    pub binding_seq: u64,
    /// Unix seconds until which the key is suspended, if it is (a past value means the
    /// suspension has ended, whether or not its `key.resumed` was written yet).
    pub suspended_until: Option<i64>,
}

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("{kind} {id} already exists")]
    Exists { kind: &'static str, id: String },
    #[error("{kind} {id} does not exist in tenant {tenant}")]
    Missing {
        kind: &'static str,
        id: String,
        tenant: String,
    },
    #[error("key hash already belongs to another key")]
    DuplicateKeyHash,
    /// Data this build cannot accept (lock settings the policy refuses).
    #[error("invalid event data: {0}")]
    Invalid(String),
}

/// What an applied event changed that the gateway's cache must reflect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Keys whose [`KeyView`] changed.
    pub keys: Vec<KeyId>,
    /// The price table changed.
    pub prices: bool,
}

/// The fold's maps: foldhash, randomly seeded per process. Their keys are ids and hashes
/// the admin API generates (UUIDs, SHA-256 of random secrets), and subjects made of them,
/// so no client chooses what collides; SipHash's stronger flooding resistance bought
/// nothing here and cost a tenth of the fold.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    tenants: Map<TenantId, Tenant>,
    projects: Map<ProjectId, Project>,
    connections: Map<ConnectionId, Arc<Connection>>,
    /// By id and by key hash.
    keys: keystore::KeyStore,
    /// Subject → sequence of its newest event, for every subject but a key's own ones
    /// while the key exists (those are in the key: a million keys do not make a million
    /// subject strings).
    subject_seq: Map<Box<str>, u64>,
    /// Whether `subject_seq` holds a subject of a key (one written before its key
    /// existed): until then a key's own fields are its subjects' whole story.
    key_subjects_in_map: bool,
    last_seq: u64,
    /// The operator's price overrides.
    prices: BTreeMap<String, Price>,
    /// The operator's plan definitions (over the built-in plans).
    plans: BTreeMap<String, sg_plans::Plan>,
    /// The plans in force, `plans` laid over the built-in ones: rebuilt when a plan is
    /// defined, not each time a key's view is built.
    catalog: sg_plans::Catalog,
    tokens: Map<TokenId, Token>,
    tokens_by_hash: Map<String, TokenId>,
}

fn too_many_keys() -> FoldError {
    FoldError::Invalid("no room for more keys".to_owned())
}

/// A plan definition as the plans crate reads it.
fn plan_of(name: &str, d: &PlanData) -> Result<sg_plans::Plan, FoldError> {
    if !sg_plans::is_valid_name(name) {
        return Err(FoldError::Invalid(format!("{name:?} cannot name a plan")));
    }
    let features = d
        .features
        .iter()
        .map(|f| f.parse::<sg_plans::Feature>())
        .collect::<Result<_, _>>()
        .map_err(FoldError::Invalid)?;
    Ok(sg_plans::Plan {
        name: name.to_owned(),
        max_connections: d.max_connections,
        features,
        key_rpm: d.key_rpm,
        key_rpd: d.key_rpd,
    })
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last control-stream sequence folded in.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The sequence of the newest event on `subject` (0 if none): the expected last
    /// subject sequence for the next write to that aggregate.
    pub fn subject_seq(&self, subject: &str) -> u64 {
        if let Some((key, which)) = self.key_of_subject(subject) {
            let seq = key.subject_seqs[which];
            if seq != 0 {
                return seq;
            }
        }
        self.subject_seq.get(subject).copied().unwrap_or(0)
    }

    /// The existing key `subject` is one of the own subjects of (`sg.control.<tenant>.key.<id>`
    /// or `….keybinding.<id>`, under the key's tenant), and which: 0 the key's, 1 its
    /// binding's. One subject text parses one way only (a tenant id holds no dot here,
    /// the kind is one of two words), so the same subject always lands in the same place.
    fn key_subject_parts(subject: &str) -> Option<(&str, usize, &str)> {
        let rest = subject
            .strip_prefix(sg_subjects::CONTROL)?
            .strip_prefix('.')?;
        let (tenant, rest) = rest.split_once('.')?;
        let (kind, id) = rest.split_once('.')?;
        let which = if kind == sg_events::AggregateKind::Key.as_str() {
            0
        } else if kind == sg_events::AggregateKind::KeyBinding.as_str() {
            1
        } else {
            return None;
        };
        Some((tenant, which, id))
    }

    fn key_of_subject(&self, subject: &str) -> Option<(&Key, usize)> {
        let (tenant, which, id) = Self::key_subject_parts(subject)?;
        let key = self.keys.get(&id.parse::<KeyId>().ok()?)?;
        (key.tenant_id.as_str() == tenant).then_some((key, which))
    }

    /// Records `seq` as the newest event on `subject`.
    fn record_subject_seq(&mut self, subject: &str, seq: u64) {
        if let Some((tenant, which, id)) = Self::key_subject_parts(subject) {
            if let Some(key) = id
                .parse::<KeyId>()
                .ok()
                .and_then(|id| self.keys.get_mut(&id))
                && key.tenant_id.as_str() == tenant
            {
                key.subject_seqs[which] = seq;
                return;
            }
            self.key_subjects_in_map = true;
        }
        match self.subject_seq.get_mut(subject) {
            Some(s) => *s = seq,
            None => {
                self.subject_seq.insert(subject.into(), seq);
            }
        }
    }

    /// `subject_seq` of the key's binding subject, without spelling the subject when the
    /// key's own field answers.
    fn binding_seq(&self, key: &Key) -> u64 {
        // Ids hold no dot (`sg_events::is_valid_id`), so the subject parses back to this
        // key and the key's field is the whole story unless the map holds key subjects.
        if key.subject_seqs[1] != 0 || !self.key_subjects_in_map {
            return key.subject_seqs[1];
        }
        self.subject_seq(&sg_events::aggregate_subject(
            &key.tenant_id,
            sg_events::AggregateKind::KeyBinding,
            key.id.as_str(),
        ))
    }

    pub fn tenant(&self, id: &TenantId) -> Option<&Tenant> {
        self.tenants.get(id)
    }

    pub fn project(&self, id: &ProjectId) -> Option<&Project> {
        self.projects.get(id)
    }

    pub fn connection(&self, id: &ConnectionId) -> Option<&Arc<Connection>> {
        self.connections.get(id)
    }

    /// Every connection.
    pub fn all_connections(&self) -> impl Iterator<Item = &Arc<Connection>> {
        self.connections.values()
    }

    /// The connections of one project.
    pub fn connections_of<'a>(
        &'a self,
        project: &'a ProjectId,
    ) -> impl Iterator<Item = &'a Arc<Connection>> + 'a {
        self.connections
            .values()
            .filter(move |c| &c.project_id == project)
    }

    pub fn key(&self, id: &KeyId) -> Option<&Key> {
        self.keys.get(id)
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// The projects of one tenant.
    pub fn projects_of<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = &'a Project> + 'a {
        self.projects
            .values()
            .filter(move |p| &p.tenant_id == tenant)
    }

    /// The connections of one tenant.
    pub fn connections_of_tenant<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = &'a Arc<Connection>> + 'a {
        self.connections
            .values()
            .filter(move |c| &c.tenant_id == tenant)
    }

    /// The plans in force: the built-in ones with the operator's definitions.
    pub fn plans(&self) -> sg_plans::Catalog {
        self.catalog.clone()
    }

    /// The plan a tenant is on (`None`: no plan, or one no longer defined).
    pub fn plan_of(&self, tenant: &TenantId) -> Option<sg_plans::Plan> {
        self.plan_ref(tenant).cloned()
    }

    fn plan_ref(&self, tenant: &TenantId) -> Option<&sg_plans::Plan> {
        let name = self.tenants.get(tenant)?.plan.as_deref()?;
        self.catalog.get(name)
    }

    /// Makes room for `additional` more keys, so that folding that many grows no table
    /// (a table doubling under the replica's write lock is a pause). Costs about 17
    /// bytes per key reserved and never added.
    pub fn reserve_keys(&mut self, additional: usize) {
        self.keys.reserve(additional);
    }

    /// How many keys exist, in any status.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn token(&self, id: &TokenId) -> Option<&Token> {
        self.tokens.get(id)
    }

    pub fn token_by_hash(&self, hash: &str) -> Option<&Token> {
        self.tokens.get(self.tokens_by_hash.get(hash)?)
    }

    /// The tokens of one tenant.
    pub fn tokens_of<'a>(&'a self, tenant: &'a TenantId) -> impl Iterator<Item = &'a Token> + 'a {
        self.tokens.values().filter(move |t| &t.tenant_id == tenant)
    }

    pub fn key_id_by_hash(&self, hash: &str) -> Option<&KeyId> {
        self.keys.by_hash(hash).map(|k| &k.id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    /// The hot-path view of a key.
    pub fn key_view(&self, id: &KeyId) -> Option<KeyView> {
        let key = self.keys.get(id)?;
        Some(KeyView {
            key_id: key.id.clone(),
            tenant_id: key.tenant_id.clone(),
            project_id: key.project_id.clone(),
            status: key.status,
            connections: key
                .connection_ids
                .iter()
                .filter_map(|c| self.connections.get(c).cloned())
                .collect(),
            locks: key.locks.with_bindings(
                key.bound_ip,
                key.bound_device.clone(),
                key.bound_place.clone(),
            ),
            routes: self
                .projects
                .get(&key.project_id)
                .map(|p| p.routes.clone())
                .unwrap_or_default(),
            limits: sg_plans::with_plan_defaults(key.limits, self.plan_ref(&key.tenant_id)),
            project_limits: self
                .projects
                .get(&key.project_id)
                .map(|p| p.limits)
                .unwrap_or_default(),
            binding_seq: self.binding_seq(key),
            suspended_until: key.suspension.as_ref().map(|s| s.until),
        })
    }

    /// Folds one event stored at `seq` on `subject`. The sequence bookkeeping advances
    /// even when the event is refused, so the fold never stalls on a bad event.
    pub fn apply(&mut self, seq: u64, subject: &str, env: &Envelope) -> Result<Changes, FoldError> {
        self.last_seq = self.last_seq.max(seq);
        // After the event, so that a key's first event already finds the key.
        let result = self.apply_event(env);
        self.record_subject_seq(subject, seq);
        result
    }

    fn keys_of_tenants(&self, tenants: &[&TenantId]) -> Changes {
        Changes {
            keys: self
                .keys
                .values()
                .filter(|k| tenants.contains(&&k.tenant_id))
                .map(|k| k.id.clone())
                .collect(),
            prices: false,
        }
    }

    fn keys_of_project(&self, project: &ProjectId) -> Changes {
        Changes {
            keys: self
                .keys
                .values()
                .filter(|k| &k.project_id == project)
                .map(|k| k.id.clone())
                .collect(),
            prices: false,
        }
    }

    /// Installation-wide events come only from the operator's pseudo-tenant.
    fn operator_only(&self, tenant: &TenantId) -> Result<(), FoldError> {
        if tenant.is_operator() {
            Ok(())
        } else {
            Err(FoldError::Invalid(format!(
                "tenant {tenant} may not change installation-wide settings"
            )))
        }
    }

    /// The price of `model`: the operator's override, else its built-in price.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.prices
            .get(model)
            .copied()
            .or_else(|| sg_spend::default_price(model))
    }

    /// The operator's overrides.
    pub fn price_overrides(&self) -> &BTreeMap<String, Price> {
        &self.prices
    }

    fn key_in_tenant(&mut self, id: &KeyId, tenant: &TenantId) -> Result<&mut Key, FoldError> {
        match self.keys.get_mut(id) {
            Some(k) if &k.tenant_id == tenant => Ok(k),
            _ => Err(FoldError::Missing {
                kind: "key",
                id: id.to_string(),
                tenant: tenant.to_string(),
            }),
        }
    }

    fn project_in_tenant(&self, id: &ProjectId, tenant: &TenantId) -> Result<(), FoldError> {
        match self.projects.get(id) {
            Some(p) if &p.tenant_id == tenant => Ok(()),
            _ => Err(FoldError::Missing {
                kind: "project",
                id: id.to_string(),
                tenant: tenant.to_string(),
            }),
        }
    }

    fn apply_event(&mut self, env: &Envelope) -> Result<Changes, FoldError> {
        let tenant = &env.tenant_id;
        match &env.event {
            Event::TenantCreated(d) => {
                if self.tenants.contains_key(tenant) {
                    return Err(FoldError::Exists {
                        kind: "tenant",
                        id: tenant.to_string(),
                    });
                }
                self.tenants.insert(
                    tenant.clone(),
                    Tenant {
                        id: tenant.clone(),
                        name: d.name.clone(),
                        plan: d.plan.clone(),
                        created_at: env.time,
                    },
                );
                Ok(Changes::default())
            }
            Event::TenantPlanSet(d) => {
                if !sg_plans::is_valid_name(&d.plan) {
                    return Err(FoldError::Invalid(format!(
                        "{:?} cannot name a plan",
                        d.plan
                    )));
                }
                let Some(t) = self.tenants.get_mut(tenant) else {
                    return Err(FoldError::Missing {
                        kind: "tenant",
                        id: tenant.to_string(),
                        tenant: tenant.to_string(),
                    });
                };
                t.plan = Some(d.plan.clone());
                Ok(self.keys_of_tenants(&[tenant]))
            }
            Event::PlanDefined(d) => {
                self.operator_only(tenant)?;
                let plan = plan_of(&d.name, &d.terms)?;
                self.plans.insert(d.name.clone(), plan);
                self.catalog = sg_plans::Catalog::new(&self.plans);
                let on_it: Vec<&TenantId> = self
                    .tenants
                    .values()
                    .filter(|t| t.plan.as_deref() == Some(d.name.as_str()))
                    .map(|t| &t.id)
                    .collect();
                Ok(self.keys_of_tenants(&on_it))
            }
            Event::TokenIssued(d) => {
                if !self.tenants.contains_key(tenant) {
                    return Err(FoldError::Missing {
                        kind: "tenant",
                        id: tenant.to_string(),
                        tenant: tenant.to_string(),
                    });
                }
                if self.tokens.contains_key(&d.token_id) {
                    return Err(FoldError::Exists {
                        kind: "token",
                        id: d.token_id.to_string(),
                    });
                }
                if self.tokens_by_hash.contains_key(&d.token_hash) {
                    return Err(FoldError::DuplicateKeyHash);
                }
                for p in d.project_ids.iter().flatten() {
                    self.project_in_tenant(p, tenant)?;
                }
                self.tokens_by_hash
                    .insert(d.token_hash.clone(), d.token_id.clone());
                self.tokens.insert(
                    d.token_id.clone(),
                    Token {
                        id: d.token_id.clone(),
                        tenant_id: tenant.clone(),
                        name: d.name.clone(),
                        role: d.role,
                        project_ids: d.project_ids.clone(),
                        token_hash: d.token_hash.clone(),
                        hint: d.hint.clone(),
                        expires_at: d.expires_at,
                        created_at: env.time,
                        revoked_at: None,
                    },
                );
                Ok(Changes::default())
            }
            Event::TokenRevoked(d) => {
                match self.tokens.get_mut(&d.token_id) {
                    Some(t) if &t.tenant_id == tenant => {
                        t.revoked_at.get_or_insert(env.time);
                    }
                    _ => {
                        return Err(FoldError::Missing {
                            kind: "token",
                            id: d.token_id.to_string(),
                            tenant: tenant.to_string(),
                        });
                    }
                }
                Ok(Changes::default())
            }
            Event::KeyRotated(d) => {
                if self.keys.contains_key(&d.new_key_id) {
                    return Err(FoldError::Exists {
                        kind: "key",
                        id: d.new_key_id.to_string(),
                    });
                }
                if self.keys.contains_hash(&d.key_hash) {
                    return Err(FoldError::DuplicateKeyHash);
                }
                let old = self.key_in_tenant(&d.key_id, tenant)?;
                if old.project_id != d.project_id {
                    return Err(FoldError::Missing {
                        kind: "key",
                        id: d.key_id.to_string(),
                        tenant: tenant.to_string(),
                    });
                }
                let new = Key {
                    id: d.new_key_id.clone(),
                    key_hash: d.key_hash.clone(),
                    hint: d.hint.clone(),
                    status: KeyStatus::Active,
                    created_at: env.time,
                    revoked_at: None,
                    subject_seqs: [0; 2],
                    ..old.clone()
                };
                // The old key stops at the end of the grace period (or its own earlier
                // expiry), on every node, by its expiry lock.
                old.locks.expires_at = Some(
                    old.locks
                        .expires_at
                        .map_or(d.retires_at, |e| e.min(d.retires_at)),
                );
                self.keys.insert(new).map_err(|_| too_many_keys())?;
                Ok(Changes {
                    keys: vec![d.key_id.clone(), d.new_key_id.clone()],
                    prices: false,
                })
            }
            Event::ProjectCreated(d) => {
                if !self.tenants.contains_key(tenant) {
                    return Err(FoldError::Missing {
                        kind: "tenant",
                        id: tenant.to_string(),
                        tenant: tenant.to_string(),
                    });
                }
                if self.projects.contains_key(&d.project_id) {
                    return Err(FoldError::Exists {
                        kind: "project",
                        id: d.project_id.to_string(),
                    });
                }
                self.projects.insert(
                    d.project_id.clone(),
                    Project {
                        id: d.project_id.clone(),
                        tenant_id: tenant.clone(),
                        name: d.name.clone(),
                        created_at: env.time,
                        routes: BTreeMap::new(),
                        limits: Limits::default(),
                        abuse: None,
                        alerts: AlertChannels::default(),
                    },
                );
                Ok(Changes::default())
            }
            Event::ModelRouted(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                match self.connections.get(&d.connection_id) {
                    Some(c) if c.project_id == d.project_id => {}
                    _ => {
                        return Err(FoldError::Missing {
                            kind: "connection",
                            id: d.connection_id.to_string(),
                            tenant: tenant.to_string(),
                        });
                    }
                }
                if let Some(p) = self.projects.get_mut(&d.project_id) {
                    p.routes.insert(
                        d.model.clone(),
                        ModelRoute {
                            connection_id: d.connection_id.clone(),
                            upstream_model: d.upstream_model.clone(),
                        },
                    );
                }
                Ok(self.keys_of_project(&d.project_id))
            }
            Event::ModelUnrouted(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                if let Some(p) = self.projects.get_mut(&d.project_id) {
                    p.routes.remove(&d.model);
                }
                Ok(self.keys_of_project(&d.project_id))
            }
            Event::ConnectionCreated(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                if self.connections.contains_key(&d.connection_id) {
                    return Err(FoldError::Exists {
                        kind: "connection",
                        id: d.connection_id.to_string(),
                    });
                }
                self.connections.insert(
                    d.connection_id.clone(),
                    Arc::new(Connection {
                        id: d.connection_id.clone(),
                        tenant_id: tenant.clone(),
                        project_id: d.project_id.clone(),
                        provider: d.provider,
                        name: d.name.clone(),
                        base_url: d.base_url.clone(),
                        upstream: d
                            .base_url
                            .as_deref()
                            .or(d.provider.default_base_url())
                            .and_then(|b| url::Url::parse(b.trim_end_matches('/')).ok()),
                        api_key: d.api_key.clone().into(),
                        openai_organization: d.openai_organization.clone(),
                        openai_project: d.openai_project.clone(),
                        api_version: d.api_version.clone(),
                        created_at: env.time,
                    }),
                );
                Ok(Changes::default())
            }
            Event::ConnectionKeyRotated(d) | Event::ConnectionKeyRewrapped(d) => {
                let current = match self.connections.get(&d.connection_id) {
                    Some(c) if &c.tenant_id == tenant && c.project_id == d.project_id => c,
                    _ => {
                        return Err(FoldError::Missing {
                            kind: "connection",
                            id: d.connection_id.to_string(),
                            tenant: tenant.to_string(),
                        });
                    }
                };
                let updated = Connection {
                    api_key: d.api_key.clone().into(),
                    ..(**current).clone()
                };
                self.connections
                    .insert(d.connection_id.clone(), Arc::new(updated));
                // Every key using the connection must see the new credential.
                let keys = self
                    .keys
                    .values()
                    .filter(|k| k.connection_ids.contains(&d.connection_id))
                    .map(|k| k.id.clone())
                    .collect();
                Ok(Changes {
                    keys,
                    prices: false,
                })
            }
            Event::KeyIssued(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                if self.keys.contains_key(&d.key_id) {
                    return Err(FoldError::Exists {
                        kind: "key",
                        id: d.key_id.to_string(),
                    });
                }
                if self.keys.contains_hash(&d.key_hash) {
                    return Err(FoldError::DuplicateKeyHash);
                }
                for c in &d.connection_ids {
                    match self.connections.get(c) {
                        Some(conn) if conn.project_id == d.project_id => {}
                        _ => {
                            return Err(FoldError::Missing {
                                kind: "connection",
                                id: c.to_string(),
                                tenant: tenant.to_string(),
                            });
                        }
                    }
                }
                let locks = LockSettings::try_from(&d.locks)
                    .map_err(|e| FoldError::Invalid(e.to_string()))?;
                self.keys
                    .insert(Key {
                        id: d.key_id.clone(),
                        tenant_id: tenant.clone(),
                        project_id: d.project_id.clone(),
                        name: d.name.clone(),
                        key_hash: d.key_hash.clone(),
                        hint: d.hint.clone(),
                        connection_ids: d.connection_ids.clone(),
                        locks,
                        limits: d.limits.into(),
                        bound_ip: None,
                        bound_device: None,
                        bound_place: None,
                        suspension: None,
                        status: KeyStatus::Active,
                        created_at: env.time,
                        revoked_at: None,
                        subject_seqs: [0; 2],
                    })
                    .map_err(|_| too_many_keys())?;
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::KeyLimitsSet(d) => {
                let key = self.key_in_tenant(&d.key_id, tenant)?;
                key.limits = d.limits.into();
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::ProjectLimitsSet(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                if let Some(p) = self.projects.get_mut(&d.project_id) {
                    p.limits = d.limits.into();
                }
                Ok(self.keys_of_project(&d.project_id))
            }
            Event::PriceSet(d) => {
                self.operator_only(tenant)?;
                self.prices.insert(d.model.clone(), d.price.into());
                Ok(Changes {
                    keys: Vec::new(),
                    prices: true,
                })
            }
            Event::PriceRemoved(d) => {
                self.operator_only(tenant)?;
                self.prices.remove(&d.model);
                Ok(Changes {
                    keys: Vec::new(),
                    prices: true,
                })
            }
            Event::KeyLocksSet(d) => {
                let locks = LockSettings::try_from(&d.locks)
                    .map_err(|e| FoldError::Invalid(e.to_string()))?;
                let key = self.key_in_tenant(&d.key_id, tenant)?;
                // A place bound at another level (or by a lock since removed) means
                // nothing to the new lock: its next request binds again.
                let level = |l: &LockSettings| l.geo.as_ref().and_then(|g| g.auto_bind);
                if level(&key.locks) != level(&locks) {
                    key.bound_place = None;
                }
                key.locks = locks;
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::KeyBound(d) => {
                let key = self.key_in_tenant(&d.key_id, tenant)?;
                if let Some(ip) = d.ip {
                    key.bound_ip = Some(ip);
                }
                if let Some(device) = &d.device {
                    key.bound_device = Some(device.clone());
                }
                if let Some(place) = &d.place {
                    key.bound_place = Some(place.clone().into());
                }
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::KeyUnbound(d) => {
                let key = self.key_in_tenant(&d.key_id, tenant)?;
                if d.ip {
                    key.bound_ip = None;
                }
                if d.device {
                    key.bound_device = None;
                }
                if d.place {
                    key.bound_place = None;
                }
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::KeySuspended(d) => {
                let key = self.key_in_tenant(&d.key_id, tenant)?;
                key.suspension = Some(Suspension {
                    until: d.until,
                    rule: d.rule.clone(),
                    reason: d.reason.clone(),
                    verdict_id: d.verdict_id.clone(),
                });
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::KeyResumed(d) => {
                let key = self.key_in_tenant(&d.key_id, tenant)?;
                // Only the suspension it names ends: a newer one stays.
                if key
                    .suspension
                    .as_ref()
                    .is_some_and(|s| s.verdict_id == d.verdict_id)
                {
                    key.suspension = None;
                }
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::ProjectAlertsSet(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                if let Some(p) = self.projects.get_mut(&d.project_id) {
                    p.alerts = AlertChannels {
                        emails: d.emails.clone(),
                        webhooks: d.webhooks.clone(),
                    };
                }
                Ok(Changes::default())
            }
            Event::ProjectAbuseSet(d) => {
                self.project_in_tenant(&d.project_id, tenant)?;
                if let Some(p) = self.projects.get_mut(&d.project_id) {
                    p.abuse = Some(d.settings.clone());
                }
                Ok(Changes::default())
            }
            Event::KeyRevoked(d) => {
                let key = match self.keys.get_mut(&d.key_id) {
                    Some(k) if &k.tenant_id == tenant => k,
                    _ => {
                        return Err(FoldError::Missing {
                            kind: "key",
                            id: d.key_id.to_string(),
                            tenant: tenant.to_string(),
                        });
                    }
                };
                if key.status != KeyStatus::Revoked {
                    key.status = KeyStatus::Revoked;
                    key.revoked_at = Some(env.time);
                }
                Ok(Changes {
                    keys: vec![d.key_id.clone()],
                    prices: false,
                })
            }
            Event::UsageRecorded(_)
            | Event::LockViolated(_)
            | Event::BudgetThreshold(_)
            | Event::BudgetReset(_)
            | Event::AlertRaised(_)
            | Event::AlertDelivered(_) => Ok(Changes::default()),
        }
    }
}

#[cfg(test)]
mod tests;
