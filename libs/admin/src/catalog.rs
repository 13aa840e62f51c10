//! The provider catalog: what a connection can name.

use axum::Json;

use crate::api::{ErrorBody, List, ProviderEntry};

#[utoipa::path(get, path = "/providers", tag = "providers",
    responses((status = 200, description = "Every provider a connection can name, with its default base URL, credential scheme, API flavour and what it supports", body = List<ProviderEntry>),
        (status = 401, description = "Missing, wrong, expired or revoked token", body = ErrorBody)))]
pub(crate) async fn list_providers() -> Json<List<ProviderEntry>> {
    Json(List {
        data: sg_providers::catalog().map(Into::into).collect(),
    })
}
