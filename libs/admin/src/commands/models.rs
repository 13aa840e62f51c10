//! The model registry: a project's model routes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use sg_api_error::{ApiError, ApiJson};
use sg_events::{ConnectionId, Envelope, Event, ProjectId};

use super::{ApiResult, commit, known_project, with_seq};
use crate::Admin;
use crate::api::*;
use crate::authz::{Caller, Need};

fn routes_of(admin: &Admin, project: &ProjectId) -> List<ModelRoute> {
    let state = admin.replica.state();
    let data = state
        .project(project)
        .map(|p| {
            p.routes
                .iter()
                .map(|(model, r)| ModelRoute {
                    model: model.clone(),
                    connection_id: r.connection_id.to_string(),
                    upstream_model: r.upstream_model.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    List { data }
}

#[utoipa::path(get, path = "/projects/{id}/models", tag = "models", params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "The project's model registry", body = List<ModelRoute>),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn list_model_routes(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<List<ModelRoute>>> {
    let (project, _) = known_project(&admin, &caller, &id, Need::Read)?;
    Ok(Json(routes_of(&admin, &project)))
}

#[utoipa::path(put, path = "/projects/{id}/models", tag = "models", request_body = ModelRoute, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Routed: clients asking for `model` are served by the connection with `upstream_model`", body = List<ModelRoute>),
        (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Concurrent change; retry", body = ErrorBody)))]
pub(crate) async fn set_model_route(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ModelRoute>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    let model = crate::validate::model_name("model", &body.model)?;
    let upstream_model = crate::validate::model_name("upstream_model", &body.upstream_model)?;
    let (env, expected) = {
        let state = admin.replica.state();
        let connection_id = body
            .connection_id
            .parse::<ConnectionId>()
            .ok()
            .filter(|c| state.connection(c).is_some_and(|c| c.project_id == project))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "unknown_connection",
                    format!(
                        "project {project} has no connection {:?}",
                        body.connection_id
                    ),
                )
                .with_param("connection_id")
            })?;
        let env = Envelope::new(
            tenant,
            caller.actor(),
            Event::ModelRouted(sg_events::ModelRoutedV1 {
                project_id: project.clone(),
                model,
                connection_id,
                upstream_model,
            }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, routes_of(&admin, &project)))
}

#[utoipa::path(post, path = "/projects/{id}/models/remove", tag = "models", request_body = RemoveModelRoute, params(("id" = String, Path, description = "Project id")),
    responses((status = 200, description = "Removed", body = List<ModelRoute>),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody), (status = 403, description = "The token's role, or the tenant's plan (`plan_required`), does not allow it", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub(crate) async fn remove_model_route(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RemoveModelRoute>,
) -> ApiResult<Response> {
    let (project, tenant) = known_project(&admin, &caller, &id, Need::Write)?;
    let (env, expected) = {
        let state = admin.replica.state();
        if !state
            .project(&project)
            .is_some_and(|p| p.routes.contains_key(&body.model))
        {
            return Err(ApiError::not_found(
                "unknown_model_route",
                format!("project {project} routes no model {:?}", body.model),
            ));
        }
        let env = Envelope::new(
            tenant,
            caller.actor(),
            Event::ModelUnrouted(sg_events::ModelUnroutedV1 {
                project_id: project.clone(),
                model: body.model,
            }),
        );
        let expected = state.subject_seq(&env.subject());
        (env, expected)
    };
    let c = commit(&admin, env, expected, None).await?;
    Ok(with_seq(c.seq, routes_of(&admin, &project)))
}
