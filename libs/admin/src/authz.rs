//! Who is calling, and what they may see and do. Every handler asks here before it
//! reads or writes anything.
//!
//! The caller is the operator (the installation's one operator token: everything) or a
//! tenant's admin API token (`SGA_…`, stored as its SHA-256 in the control state, so a
//! revocation reaches every admin node as its replica folds it). A token sees only its
//! tenant, and only its projects when it is limited to some; anything else does not
//! exist for it (404, never 403, never data). Within what it sees, its role decides what
//! it may do (403 `role_required` naming the role needed).
//!
//! **Architecture invariant:** an object is resolved *through* the caller: no handler
//! reads an object by id without [`Caller`] first deciding that the caller may see it.

use std::sync::Arc;

use axum::extract::{RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sg_api_error::ApiError;
use sg_events::{Actor, ConnectionId, KeyId, ProjectId, Role, TenantId, TokenId};
use sg_state::State as ControlState;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Admin;

/// The prefix of admin API tokens.
pub const TOKEN_PREFIX: &str = "SGA_";

type ApiResult<T> = Result<T, ApiError>;

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The operator token: every tenant, and installation-wide settings.
    Operator,
    /// A tenant's admin API token.
    Token(TokenCaller),
}

/// A tenant's token, as it stood when the request arrived.
#[derive(Debug, Clone)]
pub struct TokenCaller {
    pub id: TokenId,
    pub name: String,
    pub tenant: TenantId,
    pub role: Role,
    /// `None`: every project of the tenant.
    pub projects: Option<Vec<ProjectId>>,
}

/// What a request does, and so the least role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read (viewer).
    Read,
    /// Change connections, keys, locks, limits, the model registry (admin).
    Write,
    /// Change the tenant itself: projects, tokens (owner).
    Own,
}

impl Need {
    fn role(self) -> Role {
        match self {
            Need::Read => Role::Viewer,
            Need::Write => Role::Admin,
            Need::Own => Role::Owner,
        }
    }
}

fn role_required(need: Need, role: Role) -> ApiError {
    ApiError::forbidden(
        "role_required",
        format!(
            "this needs the {} role; this token has the {} role",
            need.role().as_str(),
            role.as_str()
        ),
    )
}

fn unknown(kind: &str, code: &'static str, id: &str) -> ApiError {
    ApiError::not_found(code, format!("no {kind} with id {id:?}"))
}

impl Caller {
    /// The actor recorded on the events this caller causes.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Operator => Actor::operator(),
            Caller::Token(t) => Actor(format!("token:{}", t.id)),
        }
    }

    fn allow(&self, need: Need) -> ApiResult<()> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Token(t) if t.role >= need.role() => Ok(()),
            Caller::Token(t) => Err(role_required(need, t.role)),
        }
    }

    /// Whether the caller sees this tenant at all.
    pub fn sees_tenant(&self, tenant: &TenantId) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Token(t) => &t.tenant == tenant,
        }
    }

    /// Whether the caller sees this project (of `tenant`).
    pub fn sees_project(&self, project: &ProjectId, tenant: &TenantId) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Token(t) => {
                &t.tenant == tenant && t.projects.as_ref().is_none_or(|ps| ps.contains(project))
            }
        }
    }

    /// Whether the caller holds the whole tenant (not only some of its projects).
    fn whole_tenant(&self, need: Need) -> ApiResult<()> {
        match self {
            Caller::Token(t) if t.projects.is_some() => Err(ApiError::forbidden(
                "role_required",
                format!(
                    "this needs the {} role over the whole tenant; this token is limited to some projects",
                    need.role().as_str()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The tenant `raw`, if the caller sees it and may do `need` in it. `Own` needs the
    /// whole tenant.
    pub fn tenant(&self, state: &ControlState, raw: &str, need: Need) -> ApiResult<TenantId> {
        let id: TenantId = raw
            .parse()
            .map_err(|_| unknown("tenant", "unknown_tenant", raw))?;
        if state.tenant(&id).is_none() || !self.sees_tenant(&id) {
            return Err(unknown("tenant", "unknown_tenant", raw));
        }
        self.allow(need)?;
        if need == Need::Own {
            self.whole_tenant(need)?;
        }
        Ok(id)
    }

    /// The project `raw` and its tenant, if the caller sees it and may do `need` in it.
    pub fn project(
        &self,
        state: &ControlState,
        raw: &str,
        need: Need,
    ) -> ApiResult<(ProjectId, TenantId)> {
        let id: ProjectId = raw
            .parse()
            .map_err(|_| unknown("project", "unknown_project", raw))?;
        let tenant = match state.project(&id) {
            Some(p) if self.sees_project(&id, &p.tenant_id) => p.tenant_id.clone(),
            _ => return Err(unknown("project", "unknown_project", raw)),
        };
        self.allow(need)?;
        Ok((id, tenant))
    }

    /// The key `raw`, its project and tenant, if the caller sees it and may do `need`.
    pub fn key(
        &self,
        state: &ControlState,
        raw: &str,
        need: Need,
    ) -> ApiResult<(KeyId, ProjectId, TenantId)> {
        let id: KeyId = raw
            .parse()
            .map_err(|_| unknown("key", "unknown_key", raw))?;
        let (project, tenant) = match state.key(&id) {
            Some(k) if self.sees_project(&k.project_id, &k.tenant_id) => {
                (k.project_id.clone(), k.tenant_id.clone())
            }
            _ => return Err(unknown("key", "unknown_key", raw)),
        };
        self.allow(need)?;
        Ok((id, project, tenant))
    }

    /// The connection `raw`, its project and tenant, if the caller sees it and may do
    /// `need`.
    pub fn connection(
        &self,
        state: &ControlState,
        raw: &str,
        need: Need,
    ) -> ApiResult<(ConnectionId, ProjectId, TenantId)> {
        let id: ConnectionId = raw
            .parse()
            .map_err(|_| unknown("connection", "unknown_connection", raw))?;
        let (project, tenant) = match state.connection(&id) {
            Some(c) if self.sees_project(&c.project_id, &c.tenant_id) => {
                (c.project_id.clone(), c.tenant_id.clone())
            }
            _ => return Err(unknown("connection", "unknown_connection", raw)),
        };
        self.allow(need)?;
        Ok((id, project, tenant))
    }

    /// The token `raw` and its tenant, if the caller may manage it: an owner of the whole
    /// tenant, or the token itself (any token may revoke itself).
    pub fn token(&self, state: &ControlState, raw: &str) -> ApiResult<(TokenId, TenantId)> {
        let id: TokenId = raw
            .parse()
            .map_err(|_| unknown("token", "unknown_token", raw))?;
        let tenant = match state.token(&id) {
            Some(t) if self.sees_tenant(&t.tenant_id) => t.tenant_id.clone(),
            _ => return Err(unknown("token", "unknown_token", raw)),
        };
        if let Caller::Token(me) = self
            && me.id == id
        {
            return Ok((id, tenant));
        }
        self.allow(Need::Own)?;
        self.whole_tenant(Need::Own)?;
        Ok((id, tenant))
    }
}

/// Why a presented token is not a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Neither the operator token nor shaped like an admin API token.
    NotValid,
    /// Shaped like an admin API token, but mistyped or truncated.
    Malformed,
    /// Well formed, but this node's replica knows no such token: a wrong token, or one
    /// issued so recently that this node has not read it yet.
    Unknown,
    Revoked,
    Expired,
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> ApiError {
        let message = match refused {
            Refused::NotValid | Refused::Unknown => "the token is not valid",
            Refused::Malformed => "the token is malformed (mistyped or truncated)",
            Refused::Revoked => "the token was revoked",
            Refused::Expired => "the token has expired",
        };
        ApiError::unauthorized("invalid_token", message)
    }
}

/// The caller a presented token stands for: the operator token, or a live admin API
/// token of a tenant; else the 401 to answer.
pub(crate) fn caller_of(admin: &Admin, presented: &str) -> ApiResult<Caller> {
    check_token(admin, presented).map_err(ApiError::from)
}

/// [`caller_of`], with why a token is refused.
pub(crate) fn check_token(admin: &Admin, presented: &str) -> Result<Caller, Refused> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Comparing digests: equal-length, and timing reveals nothing about the token.
    if digest == admin.token_digest {
        return Ok(Caller::Operator);
    }
    if !presented.starts_with(TOKEN_PREFIX) {
        return Err(Refused::NotValid);
    }
    if sg_proxy_key::AdminToken::parse(presented).is_err() {
        return Err(Refused::Malformed);
    }
    let state = admin.replica.state();
    let Some(token) = state.token_by_hash(&hex::encode(digest)) else {
        return Err(Refused::Unknown);
    };
    if token.revoked_at.is_some() {
        return Err(Refused::Revoked);
    }
    if token
        .expires_at
        .is_some_and(|at| OffsetDateTime::now_utc().unix_timestamp() >= at)
    {
        return Err(Refused::Expired);
    }
    Ok(Caller::Token(TokenCaller {
        id: token.id.clone(),
        name: token.name.clone(),
        tenant: token.tenant_id.clone(),
        role: token.role,
        projects: token.project_ids.clone(),
    }))
}

/// Authenticates every admin API request: `Authorization: Bearer …` with the operator
/// token or a live admin API token of a tenant, or else the console's session cookie,
/// whose writes must also pass the console's CSRF check. The caller goes into the
/// request's extensions for the handlers.
pub(crate) async fn authenticate(
    State(admin): State<Arc<Admin>>,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = if let Some(presented) = bearer {
        caller_of(&admin, presented)
    } else if let Some(session) =
        crate::console::session_token(request.headers(), admin.secure_cookie_only())
    {
        // A browser sends the cookie by itself, also on requests another site makes
        // it send: a write must prove it comes from the console's own page.
        caller_of(&admin, session.expose()).and_then(|caller| {
            crate::console::check_write(&request, &session, admin.console_origin.as_ref())?;
            Ok(caller)
        })
    } else {
        return ApiError::unauthorized(
            "missing_token",
            "the admin API needs a token as `Authorization: Bearer …`: the operator token or an admin API token (SGA_…)",
        )
        .into_response();
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// Route-level authorization, decided from the route alone before any body is read:
/// an object the caller cannot see is 404 whatever the request carries, and a viewer
/// changes nothing (but may revoke its own token).
pub(crate) async fn authorize_route(
    State(admin): State<Arc<Admin>>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return ApiError::unauthorized("missing_token", "no caller").into_response();
    };
    let Caller::Token(token) = &caller else {
        return next.run(request).await;
    };
    // Every route with an object id is `/{kind}/{id}…`.
    let path = request.uri().path();
    let path = path.strip_prefix("/admin/v1").unwrap_or(path);
    let kind = path.split('/').nth(1).unwrap_or("").to_owned();
    let kind = kind.as_str();
    let id = params
        .iter()
        .find(|(k, _)| *k == "id")
        .map(|(_, v)| v.to_owned());
    if let Some(id) = &id {
        let state = admin.replica.state();
        let seen = match kind {
            "tenants" => caller.tenant(&state, id, Need::Read).map(|_| ()),
            "projects" => caller.project(&state, id, Need::Read).map(|_| ()),
            "keys" => caller.key(&state, id, Need::Read).map(|_| ()),
            "connections" => caller.connection(&state, id, Need::Read).map(|_| ()),
            "tokens" => id
                .parse::<TokenId>()
                .ok()
                .and_then(|t| state.token(&t))
                .filter(|t| t.tenant_id == token.tenant)
                .map(|_| ())
                .ok_or_else(|| unknown("token", "unknown_token", id)),
            _ => Ok(()),
        };
        if let Err(e) = seen {
            return e.into_response();
        }
    }
    let own_revocation = kind == "tokens" && id.as_deref() == Some(token.id.as_str());
    if token.role == Role::Viewer && request.method() != Method::GET && !own_revocation {
        return role_required(Need::Write, token.role).into_response();
    }
    next.run(request).await
}

/// Installation-wide routes (tenants, plans, prices, re-wrapping): only the operator.
pub(crate) async fn require_operator(request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(Caller::Operator) => next.run(request).await,
        _ => ApiError::forbidden("operator_required", "only the operator token can do this")
            .into_response(),
    }
}
