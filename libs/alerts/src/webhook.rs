//! Webhook delivery: a JSON POST signed following Standard Webhooks.

use std::sync::Arc;
use std::time::Duration;

use crate::alert::Alert;
use crate::channels::{WebhookChannel, check_webhook_url};
use crate::delivery::{Delivery, MAX_BACKOFF};
use crate::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, signed_headers};

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct WebhookConfigError(#[from] reqwest::Error);

/// Posts alerts to webhooks. It follows no redirects, gives up on a request after
/// [`WebhookSender::TIMEOUT`], and — unless private targets are allowed — checks every
/// URL again before sending and resolves names with the guarded resolver, so a name
/// that turns private later (DNS rebinding) is refused at connect time.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    allow_private: bool,
    allow_http: bool,
}

impl WebhookSender {
    /// The whole request's limit: connect, send, and the answer's head.
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    /// The `User-Agent` deliveries carry.
    pub const USER_AGENT: &'static str = concat!("SecureGate-Webhooks/", env!("CARGO_PKG_VERSION"));

    /// A sender; `allow_private` lets webhooks reach private, loopback and metadata
    /// addresses and `allow_http` lets them use plain `http` (both for tests and
    /// closed networks).
    pub fn new(allow_private: bool, allow_http: bool) -> Result<Self, WebhookConfigError> {
        Self::with_timeout(allow_private, allow_http, Self::TIMEOUT)
    }

    /// [`WebhookSender::new`] with another request timeout.
    pub fn with_timeout(
        allow_private: bool,
        allow_http: bool,
        timeout: Duration,
    ) -> Result<Self, WebhookConfigError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(Self::USER_AGENT)
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(sg_netguard::GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
            allow_http,
        })
    }

    /// Posts `alert` to `channel`, signed with the channel's secret at the current
    /// time; `attempt` is 1 for the first try. A 2xx answer is [`Delivery::Delivered`];
    /// 410 Gone, a URL that is no longer allowed or a private address are
    /// [`Delivery::Failed`]; anything else (timeouts, connection errors, other
    /// statuses, redirects) is retried.
    pub async fn send(&self, channel: &WebhookChannel, alert: &Alert, attempt: u32) -> Delivery {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let outcome = self.send_at(channel, alert, attempt, now).await;
        match &outcome {
            Delivery::Delivered => {
                tracing::debug!(alert = %alert.id, webhook = %channel.id, "alert webhook delivered");
            }
            Delivery::Retry { after, reason } => {
                tracing::warn!(alert = %alert.id, webhook = %channel.id, attempt, retry_in_s = after.as_secs(), %reason, "alert webhook not delivered; will retry");
            }
            Delivery::Failed { reason } => {
                tracing::warn!(alert = %alert.id, webhook = %channel.id, attempt, %reason, "alert webhook failed");
            }
        }
        outcome
    }

    async fn send_at(
        &self,
        channel: &WebhookChannel,
        alert: &Alert,
        attempt: u32,
        timestamp: i64,
    ) -> Delivery {
        let url = match check_webhook_url(&channel.url, self.allow_private, self.allow_http).await {
            Ok(url) => url,
            Err(reason) => {
                return Delivery::after_failure(attempt, true, format!("webhook URL {reason}"));
            }
        };
        let body = alert.webhook_body().to_string().into_bytes();
        let headers = signed_headers(&channel.secret, &alert.id, timestamp, &body);
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, headers.id)
            .header(HEADER_TIMESTAMP, headers.timestamp.to_string())
            .header(HEADER_SIGNATURE, headers.signature)
            .body(body)
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Delivery::Delivered;
                }
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_BACKOFF));
                let permanent = status == reqwest::StatusCode::GONE;
                let reason = if status.is_redirection() {
                    format!("answered {status}; redirects are not followed")
                } else {
                    format!("answered {status}")
                };
                match Delivery::after_failure(attempt, permanent, reason) {
                    Delivery::Retry { after, reason } => Delivery::Retry {
                        after: retry_after.map_or(after, |r| r.max(after)),
                        reason,
                    },
                    other => other,
                }
            }
            Err(e) if sg_netguard::is_private_address_refusal(&e) => Delivery::after_failure(
                attempt,
                true,
                "the webhook's host resolves only to private or loopback addresses",
            ),
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                Delivery::after_failure(attempt, false, format!("{what}: {}", error_chain(e)))
            }
        }
    }
}

/// An error and its sources on one line (reqwest's own message is terse). URLs are
/// left out: they may carry query strings the tenant considers private.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
