//! Lock enforcement on the request path: gathers the request's facts (true client IP,
//! location, device, model, signature), asks the pure `sg_policy::evaluate`, and carries
//! out what it decides — a refusal (recorded as a `lock.violated` signal), or a
//! first-use binding and a signature replay check, each one conditional append to the
//! log so that the first one wins across the cluster.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use sg_api_error::ApiError;
use sg_eventlog::{Append, LogError, StreamName};
use sg_events::{Actor, Envelope, Event, KeyBoundV2, LockViolatedV1};
use sg_policy::{Decision, RequestFacts, RequestModel, SignedRequest};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::proxy::Ctx;

/// How long a node waits to learn a binding another node won.
const CATCH_UP: Duration = Duration::from_secs(2);
const DEVICE_HEADER: &str = "x-device-fingerprint";

/// Who is asking, as far as the locks care: the true client address, its location (only
/// for keys with a location lock) and the device header. Gathered once per request,
/// before the body is read.
pub(crate) struct Client<'h> {
    pub(crate) ip: IpAddr,
    geo: Option<sg_policy::Geo>,
    device: Option<&'h str>,
}

impl<'h> Client<'h> {
    pub(crate) fn gather(gw: &Gateway, peer: IpAddr, headers: &'h HeaderMap) -> Self {
        // Forwarded-for headers count only from trusted proxies: skip reading them otherwise.
        let ip = if gw.config.trusted_proxies.contains(peer) {
            let xff: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            sg_policy::client_ip(peer, &xff, &gw.config.trusted_proxies)
        } else {
            sg_policy::client_ip(peer, &[], &gw.config.trusted_proxies)
        };
        // With a GeoIP database, every request is placed: the locations lock checks it,
        // and usage records its country for abuse detection.
        let geo = gw.config.geoip.as_ref().and_then(|db| {
            db.lookup(ip).map(|g| sg_policy::Geo {
                country: g.country,
                city: g.city,
            })
        });
        let device = headers.get(DEVICE_HEADER).and_then(|v| v.to_str().ok());
        Client { ip, geo, device }
    }

    /// The client address's country, when the database placed it.
    pub(crate) fn country(&self) -> Option<&str> {
        self.geo.as_ref().and_then(|g| g.country.as_deref())
    }

    fn facts<'a>(&'a self, model: RequestModel<'a>) -> RequestFacts<'a> {
        RequestFacts {
            client_ip: self.ip,
            geo: self.geo.as_ref(),
            device_fingerprint: self.device,
            model,
            signature: None,
            now: i64::try_from(crate::unix_now()).unwrap_or(i64::MAX),
        }
    }
}

/// Refuses, before any body is read, what the locks refuse without it: expiry, address,
/// location, device, and endpoints a model-locked key may not call.
pub(crate) fn check_before_body(
    gw: &Gateway,
    ctx: &Ctx,
    client: &Client<'_>,
    model: RequestModel<'_>,
) -> Result<(), ApiError> {
    sg_policy::evaluate_before_body(&client.facts(model), &ctx.key.locks)
        .map_err(|d| refuse(gw, ctx, client, d.code.as_str(), d.message))
}

/// Checks the whole request against its key's locks; binds or claims what the policy says.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn enforce(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    client: &Client<'_>,
    model: RequestModel<'_>,
    headers: &HeaderMap,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = sg_policy::parse_signature_headers(
        header(sg_policy::signature::TIMESTAMP_HEADER),
        header(sg_policy::signature::SIGNATURE_HEADER),
    )
    .map_err(|e| {
        refuse(
            gw,
            ctx,
            client,
            "signature_invalid",
            format!("the request signature headers are malformed: {e}"),
        )
    })?;
    let signed = signature.map(|(timestamp, signature)| SignedRequest {
        timestamp,
        signature,
        method: method.as_str(),
        path_and_query,
        body_sha256: sg_policy::signature::body_sha256(body),
    });
    let facts = RequestFacts {
        signature: signed.as_ref(),
        ..client.facts(model)
    };
    // Borrowed on the common path; owned only after losing a binding race.
    let mut locks = std::borrow::Cow::Borrowed(&ctx.key.locks);
    // The binding subject's sequence as of the view the decision is made from.
    let mut binding_seq = ctx.key.binding_seq;
    for _attempt in 0..3 {
        match sg_policy::evaluate(&facts, &locks) {
            Decision::Deny(d) => return Err(refuse(gw, ctx, client, d.code.as_str(), d.message)),
            Decision::Allow {
                bind_ip,
                bind_device,
                bind_place,
                replay_id,
            } => {
                if let Some(id) = &replay_id {
                    claim_signature(gw, ctx, client, id).await?;
                }
                let bindings = Bindings {
                    ip: bind_ip,
                    device: bind_device,
                    place: bind_place,
                };
                if bindings.is_empty() {
                    return Ok(());
                }
                match bind(gw, ctx, binding_seq, bindings).await {
                    Ok(()) => return Ok(()),
                    Err(BindError::Lost) => {
                        // Another node bound the key first: learn what it bound, decide again.
                        let head = gw
                            .log
                            .bounds(StreamName::Control)
                            .await
                            .map(|b| b.last_seq)
                            .unwrap_or(0);
                        gw.replica.wait_for(head, CATCH_UP).await;
                        match gw.replica.state().key_view(&ctx.key.key_id) {
                            Some(view) => {
                                locks = std::borrow::Cow::Owned(view.locks);
                                binding_seq = view.binding_seq;
                            }
                            None => {
                                return Err(ApiError::unauthorized(
                                    "invalid_api_key",
                                    "unknown SecureGate key",
                                ));
                            }
                        }
                        // A replay id was already claimed by this request: do not claim twice.
                        if replay_id.is_some() {
                            locks.to_mut().signature = None;
                        }
                    }
                    Err(BindError::Unavailable) => {
                        return Err(ApiError::unavailable(
                            "binding_unavailable",
                            "this key's first use cannot be recorded right now; retry shortly",
                        ));
                    }
                }
            }
        }
    }
    Err(ApiError::conflict(
        "binding_conflict",
        "the key's binding keeps changing; retry",
    ))
}

/// What a first use binds the key to.
struct Bindings {
    ip: Option<IpAddr>,
    device: Option<String>,
    place: Option<sg_policy::Place>,
}

impl Bindings {
    fn is_empty(&self) -> bool {
        self.ip.is_none() && self.device.is_none() && self.place.is_none()
    }
}

enum BindError {
    /// Another node wrote the key's binding subject first.
    Lost,
    Unavailable,
}

async fn bind(gw: &Gateway, ctx: &Ctx, expected: u64, bindings: Bindings) -> Result<(), BindError> {
    let env = Envelope::new(
        ctx.key.tenant_id.clone(),
        Actor::node(&gw.config.node_id),
        Event::KeyBound(KeyBoundV2 {
            key_id: ctx.key.key_id.clone(),
            project_id: ctx.key.project_id.clone(),
            ip: bindings.ip,
            device: bindings.device,
            place: bindings.place.map(Into::into),
            request_id: Some(ctx.request_id),
        }),
    );
    let subject = env.subject();
    let append = Append {
        subject,
        payload: sg_events::encode(&env).into(),
        expected_last_subject_seq: Some(expected),
        msg_id: Some(env.id.to_string()),
    };
    match gw.log.append(append).await {
        Ok(_) => {
            tracing::info!(key = %ctx.key.key_id, "key bound on first use");
            Ok(())
        }
        Err(LogError::WrongLastSequence { .. }) => Err(BindError::Lost),
        Err(e) => {
            tracing::warn!(error = %e, "cannot record a key binding");
            Err(BindError::Unavailable)
        }
    }
}

/// Claims a signature's replay id cluster-wide: the first append on its subject wins.
async fn claim_signature(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    client: &Client<'_>,
    replay_id: &str,
) -> Result<(), ApiError> {
    let append = Append {
        subject: sg_subjects::nonce(ctx.key.tenant_id.as_str(), replay_id),
        payload: Bytes::from(format!(
            "{{\"key_id\":\"{}\",\"request_id\":\"{}\"}}",
            ctx.key.key_id, ctx.request_id
        )),
        expected_last_subject_seq: Some(0),
        msg_id: None,
    };
    match gw.log.append(append).await {
        Ok(_) => Ok(()),
        Err(LogError::WrongLastSequence { .. }) => Err(refuse(
            gw,
            ctx,
            client,
            "signature_replayed",
            "this signed request was already served; sign every request anew".into(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a request signature for replay");
            Err(ApiError::unavailable(
                "replay_check_unavailable",
                "signed requests cannot be checked for replay right now; retry shortly",
            ))
        }
    }
}

/// A 403 for a lock refusal, recorded as a `lock.violated` signal.
fn refuse(
    gw: &Gateway,
    ctx: &Ctx,
    client: &Client<'_>,
    code: &'static str,
    message: String,
) -> ApiError {
    let env = Envelope::new(
        ctx.key.tenant_id.clone(),
        Actor::node(&gw.config.node_id),
        Event::LockViolated(LockViolatedV1 {
            request_id: ctx.request_id,
            project_id: ctx.key.project_id.clone(),
            key_id: ctx.key.key_id.clone(),
            code: code.to_owned(),
            client_ip: client.ip,
            country: client.geo.as_ref().and_then(|g| g.country.clone()),
            city: client.geo.as_ref().and_then(|g| g.city.clone()),
            device_hash: client
                .device
                .map(|d| hex::encode(&Sha256::digest(d.as_bytes())[..8])),
            model: ctx.model.clone(),
            endpoint: ctx.endpoint.clone(),
            node: gw.config.node_id.clone(),
        }),
    );
    gw.usage.record(env);
    ApiError::forbidden(code, message)
}
