//! Requests with a key to the gateway nodes: the warm-up, the pre-revocation check, the
//! tight polling loop after a revocation, and the final sweep.
//!
//! A key travels only in the `Authorization` header; no error message here quotes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

/// The error code a gateway refuses a revoked key with (401).
pub const REVOKED: &str = "key_revoked";
/// The error code of a key a node has not folded in yet (401).
const UNKNOWN: &str = "invalid_api_key";
/// How long a new key may take to work on a node.
const KEY_WORKS_WITHIN: Duration = Duration::from_secs(15);

/// What a node answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the key was accepted and the request proxied to the mock.
    Accepted,
    /// 401 `key_revoked`.
    Revoked,
    /// Anything else: the status and the error code, if any.
    Other(u16, String),
}

/// One keep-alive HTTP client per node, and the request body.
#[derive(Clone)]
pub struct Prober {
    clients: Arc<Vec<reqwest::Client>>,
    urls: Arc<Vec<String>>,
    body: Bytes,
}

impl Prober {
    pub fn new(urls: Vec<String>) -> anyhow::Result<Self> {
        let clients = urls
            .iter()
            .map(|_| {
                reqwest::Client::builder()
                    .no_proxy()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(4)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .context("building an HTTP client")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "revocation probe"}],
        });
        Ok(Self {
            clients: Arc::new(clients),
            urls: Arc::new(
                urls.into_iter()
                    .map(|u| format!("{u}/v1/chat/completions"))
                    .collect(),
            ),
            body: Bytes::from(body.to_string()),
        })
    }

    /// One chat request with `key` to node `node`; the answer is read whole (so that the
    /// connection is kept alive).
    pub async fn ask(&self, node: usize, key: &str) -> anyhow::Result<Answer> {
        let response = self.clients[node]
            .post(&self.urls[node])
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .with_context(|| format!("POST {}", self.urls[node]))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {}", self.urls[node]))?;
        if status.is_success() {
            return Ok(Answer::Accepted);
        }
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(if status == StatusCode::UNAUTHORIZED && code == REVOKED {
            Answer::Revoked
        } else {
            Answer::Other(status.as_u16(), code)
        })
    }

    /// Sends requests with a new key to `node` until one is accepted; an unknown key
    /// (not folded in yet) is retried for a while, anything else is an error. Returns
    /// how many requests were refused as unknown first.
    pub async fn until_accepted(&self, node: usize, key: &str) -> anyhow::Result<u32> {
        let deadline = Instant::now() + KEY_WORKS_WITHIN;
        let mut unknown = 0;
        loop {
            match self.ask(node, key).await? {
                Answer::Accepted => return Ok(unknown),
                Answer::Other(401, code) if code == UNKNOWN && Instant::now() < deadline => {
                    unknown += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => bail!(
                    "{} did not accept a new key within {KEY_WORKS_WITHIN:?}: {other:?}",
                    self.urls[node]
                ),
            }
        }
    }
}

/// How one node took one revocation.
#[derive(Debug, Clone, Default)]
pub struct NodeOutcome {
    /// From t0 to the arrival of the node's first `key_revoked` refusal.
    pub refused_after: Option<Duration>,
    /// Requests sent until then (including the refused one).
    pub polls: u32,
    /// Requests accepted after t0 (the node had not folded the revocation yet).
    pub accepted: u32,
    /// When the last accepted request was sent, from t0.
    pub last_accepted_sent: Option<Duration>,
    /// Why polling stopped without a refusal (an unexpected answer, an error, the
    /// time limit).
    pub failure: Option<String>,
}

/// Polls `node` with `key` from `t0` on, every `interval`, until it refuses the key as
/// revoked or `give_up` has passed since `t0`.
pub async fn poll_until_refused(
    prober: Prober,
    node: usize,
    key: Arc<str>,
    t0: Instant,
    interval: Duration,
    give_up: Duration,
) -> NodeOutcome {
    let mut out = NodeOutcome::default();
    loop {
        let sent = t0.elapsed();
        if sent > give_up {
            out.failure = Some(format!(
                "still accepting the key {} ms after the revocation was sent",
                give_up.as_millis()
            ));
            return out;
        }
        out.polls += 1;
        match prober.ask(node, &key).await {
            Ok(Answer::Revoked) => {
                out.refused_after = Some(t0.elapsed());
                return out;
            }
            Ok(Answer::Accepted) => {
                out.accepted += 1;
                out.last_accepted_sent = Some(sent);
            }
            Ok(Answer::Other(status, code)) => {
                out.failure = Some(format!("answered {status} {code}"));
                return out;
            }
            Err(e) => {
                out.failure = Some(format!("{e:#}"));
                return out;
            }
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
}
