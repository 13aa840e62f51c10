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
use sg_events::{Actor, Envelope, Event, KeyBoundV1, LockViolatedV1};
use sg_policy::{Decision, RequestFacts, SignedRequest};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::proxy::Ctx;

/// How long a node waits to learn a binding another node won.
const CATCH_UP: Duration = Duration::from_secs(2);
const DEVICE_HEADER: &str = "x-device-fingerprint";

/// The `model` field of a multipart body (audio, images), if any.
pub(crate) async fn multipart_model(
    content_type: &str,
    body: &Bytes,
) -> Result<Option<String>, ApiError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::bad_request(
            "invalid_multipart",
            "the multipart body has no valid boundary",
        )
    })?;
    let stream = futures::stream::once({
        let body = body.clone();
        async move { Ok::<Bytes, std::io::Error>(body) }
    });
    let mut multipart = multer::Multipart::new(stream, boundary);
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("model") => {
                let text = field.text().await.map_err(|_| {
                    ApiError::bad_request(
                        "invalid_multipart",
                        "the multipart `model` field is not text",
                    )
                })?;
                return Ok(Some(text.trim().to_owned()));
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_multipart",
                    format!("the multipart body is malformed: {e}"),
                ));
            }
        }
    }
}

/// What the policy saw, kept for the signal of a refusal.
struct Seen<'a> {
    client_ip: IpAddr,
    geo: Option<sg_policy::Geo>,
    device: Option<&'a str>,
}

/// Checks the request against its key's locks; binds or claims what the policy says.
pub(crate) async fn enforce(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    peer: IpAddr,
    headers: &HeaderMap,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    // Forwarded-for headers count only from trusted proxies: skip reading them otherwise.
    let client_ip = if gw.config.trusted_proxies.contains(peer) {
        let xff: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        sg_policy::client_ip(peer, &xff, &gw.config.trusted_proxies)
    } else {
        sg_policy::client_ip(peer, &[], &gw.config.trusted_proxies)
    };
    // Locations are looked up only for keys with a location lock.
    let geo = match (&gw.config.geoip, &ctx.key.locks.geo) {
        (Some(db), Some(_)) => db.lookup(client_ip).map(|g| sg_policy::Geo {
            country: g.country,
            city: g.city,
        }),
        _ => None,
    };
    let device = headers.get(DEVICE_HEADER).and_then(|v| v.to_str().ok());
    let seen = Seen {
        client_ip,
        geo,
        device,
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = sg_policy::parse_signature_headers(
        header(sg_policy::signature::TIMESTAMP_HEADER),
        header(sg_policy::signature::SIGNATURE_HEADER),
    )
    .map_err(|e| {
        refuse(
            gw,
            ctx,
            &seen,
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
        client_ip,
        geo: seen.geo.as_ref(),
        device_fingerprint: device,
        model: ctx.model.as_deref(),
        signature: signed.as_ref(),
        now: i64::try_from(crate::unix_now()).unwrap_or(i64::MAX),
    };
    // Borrowed on the common path; owned only after losing a binding race.
    let mut locks = std::borrow::Cow::Borrowed(&ctx.key.locks);
    // The binding subject's sequence as of the view the decision is made from.
    let mut binding_seq = ctx.key.binding_seq;
    for _attempt in 0..3 {
        match sg_policy::evaluate(&facts, &locks) {
            Decision::Deny(d) => return Err(refuse(gw, ctx, &seen, d.code.as_str(), d.message)),
            Decision::Allow {
                bind_ip,
                bind_device,
                replay_id,
            } => {
                if let Some(id) = &replay_id {
                    claim_signature(gw, ctx, &seen, id).await?;
                }
                if bind_ip.is_none() && bind_device.is_none() {
                    return Ok(());
                }
                match bind(gw, ctx, binding_seq, bind_ip, bind_device).await {
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

enum BindError {
    /// Another node wrote the key's binding subject first.
    Lost,
    Unavailable,
}

async fn bind(
    gw: &Gateway,
    ctx: &Ctx,
    expected: u64,
    ip: Option<IpAddr>,
    device: Option<String>,
) -> Result<(), BindError> {
    let env = Envelope::new(
        ctx.key.tenant_id.clone(),
        Actor::node(&gw.config.node_id),
        Event::KeyBound(KeyBoundV1 {
            key_id: ctx.key.key_id.clone(),
            project_id: ctx.key.project_id.clone(),
            ip,
            device,
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
    seen: &Seen<'_>,
    replay_id: &str,
) -> Result<(), ApiError> {
    let append = Append {
        subject: format!("sg.nonce.{}.{replay_id}", ctx.key.tenant_id),
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
            seen,
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
    seen: &Seen<'_>,
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
            client_ip: seen.client_ip,
            country: seen.geo.as_ref().and_then(|g| g.country.clone()),
            city: seen.geo.as_ref().and_then(|g| g.city.clone()),
            device_hash: seen
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
