//! One proxied request: authenticate, read and check the body, pick the connection,
//! open the credential, forward, and tap the answer for usage.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use sg_api_error::ApiError;
use sg_crypto::EncryptionContext;
use sg_events::{Actor, Envelope, Event, Provider, UsageRecordedV1};
use sg_proxy_key::ProxyKey;
use sg_state::{Connection, KeyStatus, KeyView};
use time::OffsetDateTime;
use tower::ServiceExt;
use uuid::Uuid;

use crate::tap::{BoxError, Tap, TapMode, TapOutcome};
use crate::usage::Tokens;
use crate::{Gateway, Role};
use sg_crypto::Kms;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-securegate-request-id");
const CONNECTION_ID: &str = "x-connection-id";

/// Request headers never forwarded to a provider: credentials, hop-by-hop, client
/// network details, and our own control headers.
pub(crate) fn forwardable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !matches!(
        n,
        "authorization"
            | "x-api-key"
            | "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept-encoding"
            | "cookie"
            | "forwarded"
            | "x-real-ip"
            | "x-connection-id"
            | "x-device-fingerprint"
    ) && !n.starts_with("x-forwarded-")
        && !n.starts_with("x-sg-")
        && !n.starts_with("x-securegate-")
}

/// Response headers not passed back (hop-by-hop).
pub(crate) fn returnable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    ) && !name.as_str().starts_with("proxy-")
}

/// Facts about one request, carried to its usage event.
pub(crate) struct Ctx {
    pub(crate) request_id: Uuid,
    started: Instant,
    started_at: OffsetDateTime,
    pub(crate) endpoint: String,
    pub(crate) key: Arc<KeyView>,
    pub(crate) model: Option<String>,
    streamed: bool,
    connection: Option<Arc<Connection>>,
}

impl Ctx {
    fn usage_event(&self, node: &str, status: u16, tokens: Tokens) -> Envelope {
        let elapsed = self.started.elapsed();
        Envelope::new(
            self.key.tenant_id.clone(),
            Actor::node(node),
            Event::UsageRecorded(UsageRecordedV1 {
                request_id: self.request_id,
                project_id: self.key.project_id.clone(),
                key_id: self.key.key_id.clone(),
                connection_id: self.connection.as_ref().map(|c| c.id.clone()),
                provider: self.connection.as_ref().map(|c| c.provider),
                model: self.model.clone(),
                endpoint: self.endpoint.clone(),
                status,
                streamed: self.streamed,
                prompt_tokens: tokens.prompt,
                completion_tokens: tokens.completion,
                total_tokens: tokens.total,
                latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                started_at: self.started_at,
                node: node.to_owned(),
            }),
        )
    }
}

fn with_request_id(mut response: Response<Body>, id: Uuid) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// Finds the key named by `Authorization: Bearer SG_…` (or `x-api-key`).
fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<Arc<KeyView>, ApiError> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            let s = v.to_str().unwrap_or("");
            s.strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
                .unwrap_or(s)
        })
        .or_else(|| headers.get("x-api-key").map(|v| v.to_str().unwrap_or("")))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_api_key",
                "no API key: send your SecureGate key as `Authorization: Bearer SG_…`",
            )
        })?;
    let key = ProxyKey::parse(raw).map_err(|e| {
        ApiError::unauthorized(
            "invalid_api_key",
            format!("this is not a valid SecureGate key: {e}"),
        )
    })?;
    let view = gw.keys.get(&key.hash()).ok_or_else(|| {
        ApiError::unauthorized(
            "invalid_api_key",
            "unknown SecureGate key: check that it was copied whole, or ask the project owner for a new one",
        )
    })?;
    match view.status {
        KeyStatus::Active => Ok(view),
        KeyStatus::Revoked => Err(ApiError::unauthorized(
            "key_revoked",
            "this SecureGate key has been revoked; ask the project owner for a new one",
        )),
    }
}

fn pick_connection(key: &KeyView, headers: &HeaderMap) -> Result<Arc<Connection>, ApiError> {
    match headers.get(CONNECTION_ID) {
        Some(v) => {
            let wanted = v.to_str().unwrap_or("");
            key.connections
                .iter()
                .find(|c| c.id.as_str() == wanted)
                .cloned()
                .ok_or_else(|| {
                    ApiError::forbidden(
                        "connection_not_allowed",
                        "this key may not use the connection named in x-connection-id",
                    )
                })
        }
        None => key.connections.first().cloned().ok_or_else(|| {
            ApiError::forbidden(
                "no_connection",
                "this key has no connection to a provider; the project owner must attach one",
            )
        }),
    }
}

/// The connection a model route names, if this key may use it.
fn route_connection(
    key: &KeyView,
    headers: &HeaderMap,
    wanted: &sg_events::ConnectionId,
) -> Result<Arc<Connection>, ApiError> {
    if let Some(v) = headers.get(CONNECTION_ID)
        && v.to_str().unwrap_or("") != wanted.as_str()
    {
        return Err(ApiError::forbidden(
            "connection_not_allowed",
            "this model is served by another connection than the one named in x-connection-id",
        ));
    }
    key.connections
        .iter()
        .find(|c| &c.id == wanted)
        .cloned()
        .ok_or_else(|| {
            ApiError::forbidden(
                "connection_not_allowed",
                "this key may not use the connection that serves this model",
            )
        })
}

/// The JSON body with its `model` replaced.
fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .as_object_mut()?
        .insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(
            "body_read_failed",
            format!("could not read the request body: {e}"),
        )),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"))
}

/// The parsed JSON body, and whether the gateway must strip a usage chunk it asked for.
struct JsonBody {
    model: Option<String>,
    stream: bool,
    strip_usage_chunk: bool,
    rewritten: Option<Bytes>,
}

/// The few fields of a request body the gateway reads; everything else is skipped
/// without being built (chat histories can be large).
#[derive(serde::Deserialize)]
struct Peek {
    model: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
    stream_options: Option<serde_json::Value>,
}

fn inspect_json(body: &[u8], endpoint: &str) -> Result<JsonBody, ApiError> {
    let peek: Peek = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request("invalid_body", "the request body must be a JSON object")
        }
        _ => ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        ),
    })?;
    let model = match peek.model {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(m)) => Some(m),
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_model", "`model` must be a string")
                    .with_param("model"),
            );
        }
    };
    let stream = peek.stream.and_then(|v| v.as_bool()).unwrap_or(false);
    let asked = peek
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut rewritten = None;
    if stream && !asked && matches!(endpoint, "/v1/chat/completions" | "/v1/completions") {
        // Ask for the usage chunk so the request can be accounted for; the client, which
        // did not ask, will not see it. Only this case builds the whole document.
        rewritten = with_include_usage(body);
    }
    Ok(JsonBody {
        model,
        stream,
        strip_usage_chunk: rewritten.is_some(),
        rewritten,
    })
}

/// The body with `stream_options.include_usage = true`.
fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let options = value
        .as_object_mut()?
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    options
        .as_object_mut()?
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// `/v1/*`: everything but `GET /v1/models`.
pub(crate) async fn proxy(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let request_id = Uuid::now_v7();
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    let key = match authenticate(&gw, &headers) {
        Ok(k) => k,
        Err(e) => return with_request_id(e.into_response(), request_id),
    };
    let mut ctx = Ctx {
        request_id,
        started,
        started_at,
        endpoint: uri.path().to_owned(),
        key,
        model: None,
        streamed: false,
        connection: None,
    };
    let response = match forward(&gw, &mut ctx, peer, method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            gw.usage.record(ctx.usage_event(
                &gw.config.node_id,
                e.status.as_u16(),
                Tokens::default(),
            ));
            e.into_response()
        }
    };
    with_request_id(response, request_id)
}

async fn forward(
    gw: &Arc<Gateway>,
    ctx: &mut Ctx,
    peer: SocketAddr,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(body, gw.config.max_body_bytes).await?;
    let mut mode = TapMode::Whole;
    let mut outgoing = body.clone();
    if !body.is_empty() && is_json(headers) {
        let parsed = inspect_json(&body, &ctx.endpoint)?;
        ctx.model = parsed.model;
        ctx.streamed = parsed.stream;
        if parsed.stream {
            mode = TapMode::Sse {
                strip_usage_chunk: parsed.strip_usage_chunk,
            };
        }
        if let Some(b) = parsed.rewritten {
            outgoing = b;
        }
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|ct| ct.trim_start().starts_with("multipart/form-data"))
    {
        ctx.model = crate::locks::multipart_model(ct, &body).await?;
    }
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    crate::locks::enforce(gw, ctx, peer.ip(), headers, &method, path_and_query, &body).await?;
    // The project's model registry decides the connection and the exact upstream model.
    let route = ctx
        .model
        .as_ref()
        .and_then(|m| ctx.key.routes.get(m))
        .cloned();
    let connection = match &route {
        Some(r) => route_connection(&ctx.key, headers, &r.connection_id)?,
        None => pick_connection(&ctx.key, headers)?,
    };
    if let Some(r) = &route
        && is_json(headers)
        && let Some(b) = with_model(&outgoing, &r.upstream_model)
    {
        outgoing = b;
    }
    ctx.connection = Some(connection.clone());

    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    let upstream = match &gw.role {
        Role::All { kms } => {
            call_upstream(
                gw,
                &**kms,
                &connection,
                method,
                path_and_query,
                headers,
                outgoing,
            )
            .await?
        }
        Role::Edge { egress_url, signer } => {
            call_egress(
                gw,
                egress_url,
                signer,
                ctx,
                method,
                path_and_query,
                headers,
                outgoing,
            )
            .await?
        }
        Role::Egress { .. } => return Err(ApiError::internal("an egress node does not serve /v1")),
    };
    let (parts, stream) = upstream;
    if !parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
    {
        mode = TapMode::Whole;
    }
    let status = parts.status;
    let usage = gw.usage.clone();
    let node = gw.config.node_id.clone();
    let record_ctx = Ctx {
        request_id: ctx.request_id,
        started: ctx.started,
        started_at: ctx.started_at,
        endpoint: ctx.endpoint.clone(),
        key: ctx.key.clone(),
        model: ctx.model.clone(),
        streamed: ctx.streamed,
        connection: ctx.connection.clone(),
    };
    let tap = Tap::new(stream, mode, move |outcome: TapOutcome| {
        usage.record(record_ctx.usage_event(&node, status.as_u16(), outcome.tokens));
    });
    let mut response = Response::new(Body::from_stream(tap));
    *response.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if returnable(name)
            && !(matches!(mode, TapMode::Sse { .. }) && name == header::CONTENT_LENGTH)
        {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(response)
}

pub(crate) type UpstreamAnswer = (
    http::response::Parts,
    futures::stream::BoxStream<'static, Result<Bytes, BoxError>>,
);

/// Opens the connection's credential and calls its provider. `path_and_query` starts
/// with `/v1`.
pub(crate) async fn call_upstream(
    gw: &Arc<Gateway>,
    kms: &dyn Kms,
    connection: &Connection,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<UpstreamAnswer, ApiError> {
    let context = EncryptionContext::new()
        .with("tenant", connection.tenant_id.as_str())
        .with("project", connection.project_id.as_str())
        .with("connection", connection.id.as_str());
    let api_key = sg_crypto::open(kms, &context, &connection.api_key)
        .await
        .map_err(|e| match e {
            sg_crypto::CryptoError::KmsUnavailable(_) => {
                ApiError::unavailable("kms_unavailable", "the key service is unavailable; retry shortly")
            }
            other => {
                tracing::error!(connection = %connection.id, error = %other, "cannot open a connection's credential");
                ApiError::internal("the provider credential of this connection cannot be opened; the operator must check the KMS configuration")
            }
        })?;
    let suffix = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
    let bearer = HeaderValue::from_str(&format!("Bearer {}", api_key.expose())).map_err(|_| {
        ApiError::internal("the provider credential of this connection is not a valid header value")
    })?;

    match connection.provider {
        Provider::Mock => {
            let mut builder = Request::builder()
                .method(method)
                .uri(format!("/v1{suffix}"));
            for (name, value) in headers.iter().filter(|(n, _)| forwardable(n)) {
                builder = builder.header(name, value);
            }
            let request = builder
                .header(header::AUTHORIZATION, bearer)
                .body(Body::from(body))
                .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
            let response = match gw.mock.clone().oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let stream =
                TryStreamExt::map_err(body.into_data_stream(), |e| Box::new(e) as BoxError).boxed();
            Ok((parts, stream))
        }
        Provider::Openai => {
            let base = connection
                .base_url
                .as_deref()
                .or(connection.provider.default_base_url())
                .unwrap_or_default()
                .trim_end_matches('/');
            if !gw.config.allow_private_upstreams {
                refuse_private_literal(base)?;
            }
            let url = format!("{base}{suffix}");
            let mut request = gw.http.request(method, &url);
            for (name, value) in headers.iter().filter(|(n, _)| forwardable(n)) {
                request = request.header(name, value);
            }
            let request = request.header(header::AUTHORIZATION, bearer).body(body);
            send(request).await.map_err(|e| upstream_error(&e))
        }
    }
}

/// Names resolved by the client's guarded resolver are checked at connect time; a base
/// URL with a literal address never reaches the resolver, so it is checked here.
fn refuse_private_literal(base: &str) -> Result<(), ApiError> {
    let host = reqwest::Url::parse(base).ok().and_then(|u| match u.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    });
    match host {
        Some(ip) if sg_netguard::is_forbidden_ip(ip) => Err(ApiError::forbidden(
            "upstream_not_allowed",
            "this connection's provider address is private or loopback, which this gateway does not allow",
        )),
        _ => Ok(()),
    }
}

/// Sends a request and turns the answer into parts and a body stream.
async fn send(request: reqwest::RequestBuilder) -> Result<UpstreamAnswer, reqwest::Error> {
    let response = request.send().await?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = response.status();
    parts.headers = response.headers().clone();
    let stream = response
        .bytes_stream()
        .map_err(|e| Box::new(e) as BoxError)
        .boxed();
    Ok((parts, stream))
}

/// Hands an authorised request to an egress node with a signed attestation.
#[allow(clippy::too_many_arguments)]
async fn call_egress(
    gw: &Arc<Gateway>,
    egress_url: &str,
    signer: &sg_attest::EdgeSigner,
    ctx: &Ctx,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<UpstreamAnswer, ApiError> {
    let connection = ctx
        .connection
        .as_ref()
        .ok_or_else(|| ApiError::internal("no connection picked"))?;
    let now = crate::unix_now();
    let claims = sg_attest::Claims {
        v: sg_attest::VERSION,
        iss: gw.config.node_id.clone(),
        jti: ctx.request_id.to_string(),
        tenant_id: ctx.key.tenant_id.to_string(),
        project_id: ctx.key.project_id.to_string(),
        key_id: ctx.key.key_id.to_string(),
        connection_id: connection.id.to_string(),
        model: ctx.model.clone(),
        method: method.as_str().to_owned(),
        path: path_and_query.to_owned(),
        body_sha256: sg_attest::body_sha256(&body),
        iat: now,
        exp: now + sg_attest::DEFAULT_TTL_SECS,
    };
    let url = format!(
        "{}/egress{path_and_query}",
        egress_url.trim_end_matches('/')
    );
    let mut request = gw.internal_http.request(method, &url);
    for (name, value) in headers.iter().filter(|(n, _)| forwardable(n)) {
        request = request.header(name, value);
    }
    let request = request
        .header(sg_attest::HEADER, signer.sign(&claims))
        .body(body);
    send(request).await.map_err(|e| {
        tracing::warn!(error = %e, "egress unreachable");
        ApiError::bad_gateway(
            "egress_unavailable",
            "the gateway's egress service cannot be reached; retry shortly",
        )
    })
}

fn upstream_error(e: &reqwest::Error) -> ApiError {
    if sg_netguard::is_private_address_refusal(e) {
        return ApiError::forbidden(
            "upstream_not_allowed",
            "this connection's provider host resolves only to private or loopback addresses, which this gateway does not allow",
        );
    }
    if e.is_timeout() {
        return ApiError::new(
            http::StatusCode::GATEWAY_TIMEOUT,
            sg_api_error::ErrorType::Upstream,
            "upstream_timeout",
            "the provider did not answer in time",
        );
    }
    // The innermost cause says most (connection refused, DNS failure, TLS); the URL is
    // left out: it is the operator's business.
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    ApiError::bad_gateway(
        "upstream_unavailable",
        format!("the provider could not be reached: {cause}"),
    )
}

/// `GET /v1/models`: the models this key may use.
pub(crate) async fn list_models(
    State(gw): State<Arc<Gateway>>,
    connect_info: ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let request_id = Uuid::now_v7();
    let key = match authenticate(&gw, &headers) {
        Ok(k) => k,
        Err(e) => return with_request_id(e.into_response(), request_id),
    };
    let listed: Option<Vec<&String>> = match (&key.locks.models, key.routes.is_empty()) {
        (Some(models), _) => Some(models.iter().collect()),
        (None, false) => Some(key.routes.keys().collect()),
        (None, true) => None,
    };
    if let Some(models) = listed {
        let data: Vec<serde_json::Value> = models
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "securegate"}))
            .collect();
        let body = axum::Json(serde_json::json!({"object": "list", "data": data}));
        return with_request_id(body.into_response(), request_id);
    }
    // No allow-list: the provider's own list is what the key may use.
    proxy(
        State(gw),
        connect_info,
        Method::GET,
        uri,
        headers,
        Body::empty(),
    )
    .await
}

pub(crate) async fn not_found(uri: Uri) -> Response<Body> {
    ApiError::not_found(
        "unknown_path",
        format!(
            "no such endpoint {}; the OpenAI API is served under /v1",
            uri.path()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "/v1/chat/completions";

    #[test]
    fn body_errors_are_classified() {
        let code = |b: &str| inspect_json(b.as_bytes(), CHAT).err().map(|e| e.code);
        assert_eq!(code("{\"model\": "), Some("invalid_json"));
        assert_eq!(code("{} trailing"), Some("invalid_json"));
        assert_eq!(code("[1, 2]"), Some("invalid_body"));
        assert_eq!(code("\"text\""), Some("invalid_body"));
        assert_eq!(code("{\"model\": 4}"), Some("invalid_model"));
        assert_eq!(
            code("{\"model\": \"m\", \"messages\": [{\"big\": [1,2,3]}]}"),
            None
        );
    }

    #[test]
    fn only_streams_without_usage_are_rewritten() {
        let plain = inspect_json(br#"{"model":"m","messages":[]}"#, CHAT).unwrap();
        assert_eq!(plain.model.as_deref(), Some("m"));
        assert!(!plain.stream && plain.rewritten.is_none() && !plain.strip_usage_chunk);

        let asked = inspect_json(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            CHAT,
        )
        .unwrap();
        assert!(asked.stream && asked.rewritten.is_none() && !asked.strip_usage_chunk);

        let silent = inspect_json(br#"{"model":"m","stream":true,"n":2}"#, CHAT).unwrap();
        assert!(silent.strip_usage_chunk);
        let rewritten: serde_json::Value =
            serde_json::from_slice(&silent.rewritten.unwrap()).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(rewritten["n"], 2, "other fields are kept");

        let embeddings = inspect_json(br#"{"model":"e","stream":true}"#, "/v1/embeddings").unwrap();
        assert!(
            embeddings.rewritten.is_none(),
            "only chat and completions are rewritten"
        );
    }
}
