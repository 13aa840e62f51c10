//! One proxied request: authenticate; check the path and the locks that need no body;
//! read the body and inspect it exactly as the provider will read it; check the rest of
//! the locks; pick the connection; forward; and tap the answer for usage.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, Uri, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use sg_api_error::ApiError;
use sg_events::{Actor, Envelope, Event, UsageRecordedV4};
use sg_proxy_key::ProxyKey;
use sg_state::{Connection, KeyStatus, KeyView};
use time::OffsetDateTime;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::tap::{Tap, TapMode, TapOutcome};
use crate::upstream::UpstreamAnswer;
use crate::usage::Tokens;
use crate::{Gateway, Role};
use sg_inspect::{Body as InspectedBody, ModelUse};
use sg_policy::RequestModel;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-securegate-request-id");
const CONNECTION_ID: &str = "x-connection-id";

/// Facts about one request, carried to its usage event.
pub(crate) struct Ctx {
    pub(crate) request_id: Uuid,
    started: Instant,
    started_at: OffsetDateTime,
    pub(crate) endpoint: String,
    pub(crate) key: Arc<KeyView>,
    pub(crate) model: Option<String>,
    /// The model the provider runs (the registry's upstream model, else `model`): what
    /// the request is priced at.
    pub(crate) priced_model: Option<String>,
    streamed: bool,
    connection: Option<Arc<Connection>>,
    /// The request body was read to its end.
    body_read: bool,
    /// Its bytes (for a streamed upload: those read before the decision).
    request_bytes: u64,
    /// A streamed upload's outcome: its bytes once read whole, and why it was cut off.
    upload: Option<Arc<crate::upload::Outcome>>,
    /// What the request took of its limits and budgets, until it is settled.
    admission: Option<sg_quota::Admission>,
    /// `x-ratelimit-*` headers for the answer.
    rate_headers: Vec<(HeaderName, HeaderValue)>,
    /// The true client address and its country, once known.
    client_ip: Option<std::net::IpAddr>,
    country: Option<String>,
}

impl Ctx {
    /// The price of the model the request runs on, if it has one.
    fn price(&self, gw: &Gateway) -> Option<sg_spend::Price> {
        self.priced_model
            .as_deref()
            .or(self.model.as_deref())
            .and_then(|m| gw.keys.price(m))
    }

    /// What `tokens` cost at the request's price.
    fn cost(price: Option<&sg_spend::Price>, tokens: &Tokens) -> u64 {
        price.map_or(0, |p| {
            sg_spend::cost_micros(
                p,
                &sg_spend::TokenUsage {
                    prompt: tokens.prompt,
                    cached_prompt: tokens.cached,
                    completion: tokens.completion,
                },
            )
        })
    }

    /// The request ended with `status`: settles its admission and records its usage.
    fn finish(&mut self, gw: &Gateway, status: u16, outcome: Option<&TapOutcome>) {
        let tokens = outcome.map(|o| o.tokens).unwrap_or_default();
        let price = self.price(gw);
        let cost_micros = Self::cost(price.as_ref(), &tokens);
        if let Some(admission) = self.admission.take() {
            crate::spend::settle(admission, status, outcome, cost_micros);
        }
        let response_bytes = outcome.map_or(0, |o| o.bytes);
        if let Some(upload) = &self.upload {
            self.request_bytes = self.request_bytes.max(upload.bytes());
        }
        gw.usage.record(self.usage_event(
            gw,
            status,
            tokens,
            (price.is_some(), cost_micros),
            response_bytes,
        ));
    }

    fn usage_event(
        &self,
        gw: &Gateway,
        status: u16,
        tokens: Tokens,
        (priced, cost_micros): (bool, u64),
        response_bytes: u64,
    ) -> Envelope {
        let elapsed = self.started.elapsed();
        let node = gw.config.node_id.as_str();
        Envelope::new(
            self.key.tenant_id.clone(),
            Actor::node(node),
            Event::UsageRecorded(UsageRecordedV4 {
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
                cached_prompt_tokens: tokens.cached,
                completion_tokens: tokens.completion,
                total_tokens: tokens.total,
                cost_micros,
                priced,
                request_bytes: self.request_bytes,
                response_bytes,
                latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                started_at: self.started_at,
                node: node.to_owned(),
                client_ip: self.client_ip,
                country: self.country.clone(),
            }),
        )
    }
}

/// An answer given before the request's body was read: the client may still be sending
/// it, so the connection is not reused (a client that reused it would find it closed).
fn closing(mut response: Response<Body>, headers: &HeaderMap, body_read: bool) -> Response<Body> {
    if !body_read && crate::body::has_body(headers) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
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
        KeyStatus::Active => {
            suspended(&view, crate::unix_now())?;
            Ok(view)
        }
        KeyStatus::Revoked => Err(ApiError::unauthorized(
            "key_revoked",
            "this SecureGate key has been revoked; ask the project owner for a new one",
        )),
    }
}

/// A key suspended by abuse detection is refused until its suspension ends, with
/// `Retry-After` saying when (seconds).
pub(crate) fn suspended(view: &KeyView, now: u64) -> Result<(), ApiError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match view.suspended_until {
        Some(until) if until > now => {
            let wait = until.saturating_sub(now);
            Err(ApiError::forbidden(
                "key_suspended",
                format!(
                    "this SecureGate key is suspended for unusual activity for another {wait} s; \
                     the project owner has been told and can resume it earlier"
                ),
            )
            .with_header(
                header::RETRY_AFTER,
                HeaderValue::from_str(&wait.to_string()).unwrap_or(HeaderValue::from_static("60")),
            ))
        }
        _ => Ok(()),
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

pub(crate) fn inspect_error(e: sg_inspect::InspectError) -> ApiError {
    let error = ApiError::bad_request(e.code, e.message);
    match e.param {
        Some(p) => error.with_param(p),
        None => error,
    }
}

/// The one `Content-Type` of a request, if any (two are refused: readers differ on which
/// counts).
fn content_type(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_content_type",
            "the request has more than one Content-Type header",
        ));
    }
    first
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_content_type", "Content-Type is not ASCII")
            })
        })
        .transpose()
}

/// Request bodies must be sent as they are: a provider would decompress what the
/// gateway could not read.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let identity = value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(ApiError::bad_request(
                "unsupported_content_encoding",
                "request bodies must not be compressed (no Content-Encoding)",
            ));
        }
    }
    Ok(())
}

/// A phase of a request: a child span of the current one (exported with traces on; no
/// secret ever goes into one).
macro_rules! phase {
    ($name:literal $(, $($field:tt)+)?) => {
        tracing::info_span!(target: "sg_trace", $name $(, $($field)+)?)
    };
}
pub(crate) use phase;

/// `/v1/*`: one `gateway.request` span (the child of the client's `traceparent`), with
/// the phases of [`handle`] under it.
pub(crate) async fn proxy(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let request_id = Uuid::now_v7();
    // The path only: a query may carry anything.
    let span = phase!(
        "gateway.request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = uri.path(),
        http.response.status_code = tracing::field::Empty,
        securegate.request_id = %request_id,
        securegate.key_id = tracing::field::Empty,
        gen_ai.request.model = tracing::field::Empty,
    );
    sg_telemetry::trace::set_parent(&span, &headers);
    let response = handle(gw, peer, method, uri, headers, body, request_id)
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    request_id: Uuid,
) -> Response<Body> {
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    let authenticated = phase!("authenticate").in_scope(|| authenticate(&gw, &headers));
    if let Ok(key) = &authenticated {
        tracing::Span::current().record("securegate.key_id", tracing::field::display(&key.key_id));
    }
    let key = match authenticated.and_then(|key| {
        let limited = !key.limits.is_empty() || !key.project_limits.is_empty();
        if gw.freshness.is_stale() && (key.locks.fails_closed_when_stale() || limited) {
            // A revocation, a lock or a limit change may have been missed: refuse keys
            // with locks or limits.
            return Err(ApiError::unavailable(
                "control_plane_unavailable",
                "this gateway node has lost touch with the control plane and cannot vouch for this key's locks; retry shortly",
            ));
        }
        if gw.usage.is_full() {
            // A request served now could not be accounted for: refuse rather than lose it.
            return Err(ApiError::unavailable(
                "usage_spool_full",
                "this gateway node cannot record usage right now (its spool is full); retry shortly",
            ));
        }
        Ok(key)
    }) {
        Ok(k) => k,
        Err(e) => {
            let response = closing(e.into_response(), &headers, false);
            return with_request_id(response, request_id);
        }
    };
    let mut ctx = Ctx {
        request_id,
        started,
        started_at,
        endpoint: uri.path().to_owned(),
        key,
        model: None,
        priced_model: None,
        streamed: false,
        connection: None,
        body_read: false,
        request_bytes: 0,
        upload: None,
        admission: None,
        rate_headers: Vec::new(),
        client_ip: None,
        country: None,
    };
    let mut response = match forward(&gw, &mut ctx, peer, method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            ctx.finish(&gw, e.status.as_u16(), None);
            closing(e.into_response(), &headers, ctx.body_read)
        }
    };
    for (name, value) in std::mem::take(&mut ctx.rate_headers) {
        response.headers_mut().insert(name, value);
    }
    with_request_id(response, request_id)
}

/// The boundary of a multipart upload to stream: a `multipart/form-data` body on an
/// endpoint that takes one, on a node that calls providers itself (an edge attests the
/// whole body's hash) for a key without a signature lock (which signs the whole body).
fn upload_boundary(
    gw: &Gateway,
    ctx: &Ctx,
    endpoint: &sg_inspect::Endpoint,
    declared_type: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let eligible = matches!(gw.role, Role::All { .. })
        && ctx.key.locks.signature.is_none()
        && endpoint.body.is_some_and(|a| a.multipart);
    let Some(ct) = declared_type.filter(|_| eligible) else {
        return Ok(None);
    };
    let Ok(media) = sg_inspect::MediaType::parse(ct) else {
        // The whole-body path refuses it with its reason.
        return Ok(None);
    };
    if media.essence() != "multipart/form-data" {
        return Ok(None);
    }
    match media.param("boundary") {
        Some(b) => Ok(Some(b.to_owned())),
        None => Err(ApiError::bad_request(
            "invalid_multipart",
            "the multipart Content-Type has no boundary",
        )),
    }
}

/// The model names a key may use, when the gateway (not the provider) answers
/// `GET /v1/models`: its allow-list, else its project's registry names.
fn listed_models(key: &KeyView) -> Option<Vec<&String>> {
    match (&key.locks.models, key.routes.is_empty()) {
        (Some(models), _) => Some(models.iter().collect()),
        (None, false) => Some(key.routes.keys().collect()),
        (None, true) => None,
    }
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
    // What the request is, from its line and headers alone.
    let path = uri.path();
    sg_inspect::path::check(path).map_err(inspect_error)?;
    let endpoint = sg_inspect::classify(method.as_str(), path);
    let client = crate::locks::Client::gather(gw, peer.ip(), headers);
    ctx.client_ip = Some(client.ip);
    ctx.country = client.country().map(str::to_owned);
    let early_model = match endpoint.model {
        ModelUse::Unchecked => RequestModel::Unchecked,
        ModelUse::InBody | ModelUse::Listing => RequestModel::NoModel,
    };
    // A key refused by its expiry, address, place, device or endpoint costs no body read.
    phase!("locks", securegate.phase = "before_body")
        .in_scope(|| crate::locks::check_before_body(gw, ctx, &client, early_model))?;
    if endpoint.body.is_none() && crate::body::has_body(headers) {
        return Err(ApiError::bad_request(
            "unexpected_body",
            "this request method takes no body",
        ));
    }
    check_content_encoding(headers)?;
    let declared_type = content_type(headers)?;

    // The body, and exactly what the provider will read in it. A multipart upload is
    // read only as far as its model, then streamed (see `upload`); everything else is
    // read whole.
    let upload_boundary = upload_boundary(gw, ctx, &endpoint, declared_type)?;
    let (body, head) = match &upload_boundary {
        Some(boundary) => {
            let reader = crate::body::BodyReader::new(
                body,
                headers,
                gw.config.max_upload_bytes,
                gw.config.body_timeouts,
            )?;
            let head = crate::upload::read_head(
                reader,
                boundary,
                endpoint.model == ModelUse::InBody,
                gw.config.max_body_bytes,
            )
            .await?;
            ctx.body_read = head.ended;
            (head.prefix.clone(), Some(head))
        }
        None => {
            let body = gw.read_body(body, headers).await?;
            ctx.body_read = true;
            (body, None)
        }
    };
    ctx.request_bytes = body.len() as u64;
    let inspected = match (&head, &upload_boundary) {
        (Some(head), Some(boundary)) => sg_inspect::Inspected {
            body: InspectedBody::Empty,
            model: head.model.clone(),
            stream: false,
            include_usage: false,
            output_limit: None,
            content_type: Some(sg_inspect::multipart::content_type(boundary)),
        },
        _ => sg_inspect::inspect(&endpoint, declared_type, &body).map_err(inspect_error)?,
    };
    ctx.model = inspected.model.clone();
    ctx.streamed = inspected.stream;
    if let Some(model) = &ctx.model {
        tracing::Span::current().record("gen_ai.request.model", model.as_str());
    }
    let model = match endpoint.model {
        ModelUse::InBody => ctx
            .model
            .as_deref()
            .map_or(RequestModel::Unnamed, RequestModel::Named),
        ModelUse::Listing => RequestModel::NoModel,
        ModelUse::Unchecked => RequestModel::Unchecked,
    };
    let path_and_query = uri.path_and_query().map_or(path, |p| p.as_str());
    crate::locks::enforce(
        gw,
        ctx,
        &client,
        model,
        headers,
        &method,
        path_and_query,
        &body,
    )
    .instrument(phase!("locks", securegate.phase = "body"))
    .await?;

    if method == Method::GET
        && path == "/v1/models"
        && let Some(models) = listed_models(&ctx.key)
    {
        let data: Vec<serde_json::Value> = models
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "securegate"}))
            .collect();
        ctx.finish(gw, 200, None);
        return Ok(axum::Json(serde_json::json!({"object": "list", "data": data})).into_response());
    }

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
    ctx.connection = Some(connection.clone());
    let upstream_model = route.as_ref().map(|r| r.upstream_model.as_str());
    ctx.priced_model = upstream_model.map(str::to_owned);
    // The provider decides where the request goes, and whether it can serve it at all.
    let provider_model = upstream_model.or(ctx.model.as_deref()).map(str::to_owned);
    let plan = crate::upstream::plan(
        &connection,
        &method,
        path_and_query,
        provider_model.as_deref(),
    )?;
    let usage_format = match plan.mode {
        sg_providers::Mode::Passthrough(format) => format,
        // Translated answers come back in OpenAI's shape.
        sg_providers::Mode::ChatViaMessages => sg_providers::UsageFormat::Openai,
    };
    // Ask for the usage chunk of a stream so it can be accounted for; a client that did
    // not ask will not see it.
    let add_usage = inspected.stream
        && !inspected.include_usage
        && matches!(path, "/v1/chat/completions" | "/v1/completions");
    let upload = match head {
        Some(head) => {
            let first = match upstream_model {
                Some(m) => head.with_model(m).ok_or_else(|| {
                    ApiError::internal("the routed model cannot be written into this form")
                })?,
                None => head.prefix.clone(),
            };
            Some((head, first))
        }
        None => None,
    };
    let outgoing = match &inspected.body {
        InspectedBody::Json(object) if upstream_model.is_some() || add_usage => {
            Bytes::from(object.rewrite(upstream_model, add_usage))
        }
        InspectedBody::Form(form) => match upstream_model {
            Some(m) => Bytes::from(form.with_model(&body, m).ok_or_else(|| {
                ApiError::internal("the routed model cannot be written into this form")
            })?),
            None => body.clone(),
        },
        _ => body.clone(),
    };
    // Limits and budgets: admitted from what this node holds, or refused.
    let price = ctx.price(gw);
    let body_len = match &upload {
        Some(_) => crate::body::declared_length(headers)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(body.len()),
        None => body.len(),
    };
    let estimate =
        crate::spend::Estimate::of(path, body_len, inspected.output_limit, price.as_ref());
    let demands = crate::spend::demands(&ctx.key, &estimate);
    let limits = phase!("limits", securegate.demands = demands.len());
    if !demands.is_empty() {
        let admitted = gw.quotas.admit(&demands).instrument(limits).await;
        let now = crate::unix_now_ms();
        ctx.rate_headers = crate::spend::headers(&gw.quotas, &demands, now);
        match admitted {
            Ok(admission) => ctx.admission = Some(admission),
            Err(refusal) => return Err(crate::spend::refused(refusal, now)),
        }
    }

    let mut mode = if inspected.stream {
        TapMode::Sse {
            strip_usage_chunk: add_usage,
        }
    } else {
        TapMode::Whole
    };
    let outgoing_headers =
        crate::upstream::outgoing_headers(headers, inspected.content_type.as_deref());

    // A request that cannot be translated is refused here, before it is admitted (the
    // egress translates the attested original again).
    let provider_body = match upload {
        Some((head, first)) => {
            let outcome = Arc::new(crate::upload::Outcome::default());
            ctx.upload = Some(outcome.clone());
            crate::upstream::OutBody::Stream(futures::StreamExt::boxed(crate::upload::body(
                head, first, outcome,
            )))
        }
        None => crate::upstream::OutBody::Whole(crate::upstream::provider_body(
            &plan,
            outgoing.clone(),
        )?),
    };
    let upstream_span = phase!(
        "upstream",
        otel.kind = "client",
        securegate.connection_id = %connection.id,
        securegate.provider = ?connection.provider,
    );
    let upstream = match &gw.role {
        Role::All { kms } => {
            let answer = crate::upstream::call(
                gw,
                &**kms,
                &connection,
                method,
                path_and_query,
                &plan,
                outgoing_headers,
                provider_body,
            )
            .instrument(upstream_span)
            .await;
            match (answer, ctx.upload.as_ref().and_then(|u| u.refusal())) {
                // The upload was cut off by the gateway: that is the answer.
                (Err(_), Some(refusal)) => return Err(refusal),
                (answer, _) => answer?,
            }
        }
        Role::Edge { egress_url, signer } => {
            call_egress(
                gw,
                egress_url,
                signer,
                ctx,
                provider_model.clone(),
                method,
                path_and_query,
                outgoing_headers,
                outgoing,
            )
            .instrument(upstream_span)
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
    let record_gw = gw.clone();
    let mut record_ctx = Ctx {
        request_id: ctx.request_id,
        started: ctx.started,
        started_at: ctx.started_at,
        endpoint: ctx.endpoint.clone(),
        key: ctx.key.clone(),
        model: ctx.model.clone(),
        priced_model: ctx.priced_model.clone(),
        streamed: ctx.streamed,
        connection: ctx.connection.clone(),
        body_read: true,
        request_bytes: ctx.request_bytes,
        upload: ctx.upload.clone(),
        admission: ctx.admission.take(),
        rate_headers: Vec::new(),
        client_ip: ctx.client_ip,
        country: ctx.country.clone(),
    };
    // The answer's body, until the tap has read (or lost) the last of it.
    let stream_span = phase!(
        "stream",
        http.response.status_code = status.as_u16(),
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    );
    let tap = Tap::reading(stream, mode, usage_format, move |outcome: TapOutcome| {
        record_ctx.finish(&record_gw, status.as_u16(), Some(&outcome));
        if outcome.reported {
            stream_span.record("gen_ai.usage.input_tokens", outcome.tokens.prompt);
            stream_span.record("gen_ai.usage.output_tokens", outcome.tokens.completion);
        }
    });
    let mut response = Response::new(Body::from_stream(tap));
    *response.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if crate::upstream::returnable(name)
            && !(matches!(mode, TapMode::Sse { .. }) && name == header::CONTENT_LENGTH)
        {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// Hands an authorised request to an egress node with a signed attestation.
#[allow(clippy::too_many_arguments)]
async fn call_egress(
    gw: &Arc<Gateway>,
    egress_url: &str,
    signer: &sg_attest::EdgeSigner,
    ctx: &Ctx,
    provider_model: Option<String>,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
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
        model: provider_model,
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
    // The egress continues this trace (without tracing: the client's own header).
    let mut headers = headers;
    sg_telemetry::trace::inject(&tracing::Span::current(), &mut headers);
    let request = gw
        .internal_http
        .request(method, &url)
        .headers(headers)
        .header(sg_attest::HEADER, signer.sign(&claims))
        .body(body);
    let sent_at = Instant::now();
    let answer = crate::upstream::send(request).await;
    gw.metrics
        .upstream_time("egress", path_and_query, sent_at.elapsed().as_secs_f64());
    answer.map_err(|e| {
        tracing::warn!(error = %e, "egress unreachable");
        ApiError::bad_gateway(
            "egress_unavailable",
            "the gateway's egress service cannot be reached; retry shortly",
        )
    })
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
