//! Projects: a tenant's workspaces.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{Envelope, Event, ProjectCreatedV1, ProjectId};

use super::{ApiResult, commit, created, idempotency, known_project, views_caught_up, views_error};
use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};

#[utoipa::path(post, path = "/tenants/{id}/projects", tag = "projects", request_body = CreateProject,
    params(("id" = String, Path, description = "Tenant id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried command safe: the same key on the same endpoint returns the first result (200, `Idempotent-Replayed: true`) instead of creating twice.")),
    responses((status = 201, description = "Created", body = Project), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 422, description = "This Idempotency-Key was first used with a different request", body = ErrorBody), (status = 503, description = "Event log, KMS or views unavailable; nothing was changed", body = ErrorBody)))]
pub(crate) async fn create_project(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<Response> {
    let tenant = caller.tenant(&admin.replica.state(), &id, Need::Own)?;
    let name = crate::validate::name("name", &body.name)?;
    let idem = idempotency(&headers, &format!("create_project {tenant}"))?;
    let project = ProjectId::generate();
    let env = Envelope::new(
        tenant,
        caller.actor(),
        Event::ProjectCreated(ProjectCreatedV1 {
            project_id: project,
            name,
        }),
    );
    let c = commit(&admin, env, 0, idem).await?;
    let Event::ProjectCreated(d) = &c.envelope.event else {
        return Err(ApiError::internal(
            "idempotency key reused for another command",
        ));
    };
    let body = Project {
        id: d.project_id.to_string(),
        tenant_id: c.envelope.tenant_id.to_string(),
        name: d.name.clone(),
        created_at: rfc3339(c.envelope.time),
    };
    Ok(created(&c, body))
}

#[utoipa::path(get, path = "/tenants/{id}/projects", tag = "projects", params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = List<Project>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_projects(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<Project>>> {
    let tenant = caller.tenant(&admin.replica.state(), &id, Need::Read)?;
    views_caught_up(&admin).await;
    let rows = admin
        .views
        .list_projects(&tenant)
        .await
        .map_err(views_error)?;
    // A token limited to some projects sees only those.
    Ok(Json(List {
        data: rows
            .into_iter()
            .filter(|r| caller.sees_project(&r.id, &tenant))
            .map(Into::into)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/projects/{id}", tag = "projects", params(("id" = String, Path)),
    responses((status = 200, body = Project), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn get_project(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    views_caught_up(&admin).await;
    let row = admin
        .views
        .get_project(&project)
        .await
        .map_err(views_error)?;
    row.map(|r| Json(r.into())).ok_or_else(|| {
        ApiError::not_found("unknown_project", format!("no project with id {project}"))
    })
}
