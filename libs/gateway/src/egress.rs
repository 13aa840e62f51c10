//! The egress role: serves only requests an edge node attested, opens the credential
//! and calls the provider. The edge taps the answer for usage; the egress streams it back
//! untouched.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, Uri};
use axum::response::IntoResponse;
use sg_api_error::ApiError;
use sg_events::KeyId;
use sg_state::KeyStatus;

use tracing::Instrument as _;

use crate::proxy::phase;
use crate::upstream::returnable;
use crate::{Gateway, Role};

pub(crate) async fn serve(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    // Continues the edge's trace (its `traceparent`); the path only, never the query.
    let span = phase!(
        "egress.request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = uri.path(),
        http.response.status_code = tracing::field::Empty,
        securegate.request_id = tracing::field::Empty,
        securegate.key_id = tracing::field::Empty,
        gen_ai.request.model = tracing::field::Empty,
    );
    sg_telemetry::trace::set_parent(&span, &headers);
    let response = match handle(&gw, method, &uri, &headers, body)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    span.record("http.response.status_code", response.status().as_u16());
    response
}

fn refuse(code: &'static str, message: &str) -> ApiError {
    ApiError::forbidden(code, message.to_owned())
}

async fn handle(
    gw: &Arc<Gateway>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Body>, ApiError> {
    let Role::Egress { kms, verifier } = &gw.role else {
        return Err(ApiError::not_found("unknown_path", "not an egress node"));
    };
    let token = headers
        .get(sg_attest::HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refuse(
                "attestation_missing",
                "egress serves only attested requests from edge nodes",
            )
        })?;
    let body = gw.read_body(body, headers).await?;
    let attestation = phase!("attestation");
    let entered = attestation.enter();
    let full = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let path_and_query = full.strip_prefix("/egress").unwrap_or(full);
    let now = crate::unix_now();
    let received = sg_attest::Received {
        method: method.as_str(),
        path: path_and_query,
        body: &body,
    };
    let claims = verifier.verify(token, received, now).map_err(|e| {
        tracing::warn!(reason = %e, "attestation refused");
        refuse(
            "attestation_invalid",
            "the attestation is invalid, expired or for another request",
        )
    })?;
    if !gw
        .seen_attestations
        .entry(claims.jti.clone())
        .or_insert(())
        .is_fresh()
    {
        tracing::warn!(issuer = %claims.iss, "attestation replayed");
        return Err(refuse(
            "attestation_replayed",
            "this attestation was already used",
        ));
    }
    drop(entered);
    let current = tracing::Span::current();
    current.record("securegate.request_id", claims.jti.as_str());
    current.record("securegate.key_id", claims.key_id.as_str());
    if let Some(model) = &claims.model {
        current.record("gen_ai.request.model", model.as_str());
    }
    // Defence in depth: the egress checks the key against its own view of the log.
    let connection = {
        let state = gw.replica.state();
        let key_id: KeyId = claims
            .key_id
            .parse()
            .map_err(|_| refuse("attestation_invalid", "the attestation names no valid key"))?;
        let view = state.key_view(&key_id).ok_or_else(|| {
            refuse(
                "key_unknown",
                "the attested key is not known to this egress node yet",
            )
        })?;
        if view.status != KeyStatus::Active {
            return Err(ApiError::unauthorized(
                "key_revoked",
                "this SecureGate key has been revoked",
            ));
        }
        crate::proxy::suspended(&view, crate::unix_now())?;
        view.connections
            .iter()
            .find(|c| c.id.as_str() == claims.connection_id)
            .cloned()
            .ok_or_else(|| {
                refuse(
                    "connection_not_allowed",
                    "the key may not use the attested connection",
                )
            })?
    };
    // The edge sent only what may reach a provider; the same allow-list applies again.
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let outgoing = crate::upstream::outgoing_headers(headers, content_type);
    let plan = crate::upstream::plan(
        &connection,
        &method,
        path_and_query,
        claims.model.as_deref(),
    )?;
    let body = crate::upstream::provider_body(&plan, body)?;
    let (parts, stream) = crate::upstream::call(
        gw,
        &**kms,
        &connection,
        method,
        path_and_query,
        &plan,
        outgoing,
        crate::upstream::OutBody::Whole(body),
    )
    .instrument(phase!(
        "upstream",
        otel.kind = "client",
        securegate.connection_id = %connection.id,
        securegate.provider = ?connection.provider,
    ))
    .await?;
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        if returnable(name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(response)
}
