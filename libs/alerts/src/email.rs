//! Email delivery over SMTP.

use std::fmt;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use url::Url;

use crate::alert::Alert;
use crate::delivery::Delivery;

/// The SMTP URL or the sender address is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailConfigError {
    /// The SMTP URL is malformed or not `smtp://` / `smtps://`.
    #[error("invalid SMTP URL: {0}")]
    Url(String),
    /// The sender is not an address (`alerts@example.com` or `Name <alerts@example.com>`).
    #[error("invalid sender address: {0}")]
    From(String),
}

/// Sends alert emails through one SMTP server.
///
/// The URL: `smtp://host:port` sends in plain text (for a relay on the same host or
/// network, and loopback test servers); `smtp://host:port?tls=required` upgrades with
/// STARTTLS and refuses to go on without it, `?tls=opportunistic` upgrades when offered;
/// `smtps://host:port` is TLS from the start. `user:password@` in the URL
/// authenticates (refused over plain `smtp://` except to a loopback relay, as it would
/// travel unencrypted); a path names the client in `EHLO`. Its `Debug` form hides the
/// password.
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
    server: String,
}

impl fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSender")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EmailSender {
    /// How long one SMTP exchange (connect, each command) may take by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A sender for `smtp_url` (see the type's documentation) sending as `from`.
    pub fn new(smtp_url: &str, from: &str) -> Result<Self, EmailConfigError> {
        Self::with_timeout(smtp_url, from, Self::DEFAULT_TIMEOUT)
    }

    /// [`EmailSender::new`] with another timeout for each SMTP exchange.
    pub fn with_timeout(
        smtp_url: &str,
        from: &str,
        timeout: Duration,
    ) -> Result<Self, EmailConfigError> {
        let url = Url::parse(smtp_url).map_err(|e| EmailConfigError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "smtp" | "smtps") {
            return Err(EmailConfigError::Url(
                "the scheme must be smtp or smtps".to_owned(),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EmailConfigError::Url("no host".to_owned()));
        }
        let tls = url
            .query_pairs()
            .any(|(k, v)| k == "tls" && (v == "required" || v == "opportunistic"));
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            // `smtp` is not a special scheme to the URL parser: IPv4 stays a name.
            Some(url::Host::Domain(name)) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            None => false,
        };
        if url.password().is_some() && url.scheme() == "smtp" && !tls && !loopback {
            return Err(EmailConfigError::Url(
                "credentials would travel unencrypted: use smtps:// or ?tls=required".to_owned(),
            ));
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("redacted"));
        }
        let server = shown.to_string();
        let from: Mailbox = from
            .parse()
            .map_err(|e: lettre::address::AddressError| EmailConfigError::From(e.to_string()))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|e| EmailConfigError::Url(e.to_string()))?
            .timeout(Some(timeout))
            .build();
        Ok(Self {
            transport,
            from,
            timeout,
            server,
        })
    }

    /// The sender address.
    #[must_use]
    pub fn from_address(&self) -> &Mailbox {
        &self.from
    }

    /// The message for `alert` to `to`: plain text, its Message-ID derived from the
    /// alert's id (so a resend is recognisably the same message).
    pub fn message(&self, to: &str, alert: &Alert) -> Result<Message, String> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| format!("invalid recipient address: {e}"))?;
        let domain = self.from.email.domain().to_owned();
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(alert.email_subject())
            .message_id(Some(format!("<{}@{domain}>", alert.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(alert.email_text())
            .map_err(|e| format!("cannot build the message: {e}"))
    }

    /// Delivers `alert` to `to`; `attempt` is 1 for the first try. A server that is
    /// down, slow or answers 4xx gives [`Delivery::Retry`]; a 5xx refusal or a bad
    /// address gives [`Delivery::Failed`]. Never waits much longer than a few timeouts.
    pub async fn send(&self, to: &str, alert: &Alert, attempt: u32) -> Delivery {
        let message = match self.message(to, alert) {
            Ok(m) => m,
            Err(reason) => return Delivery::after_failure(attempt, true, reason),
        };
        // lettre bounds each exchange; this bounds the whole conversation.
        let limit = self.timeout.saturating_mul(4);
        let outcome = match tokio::time::timeout(limit, self.transport.send(message)).await {
            Ok(Ok(_)) => Delivery::Delivered,
            Ok(Err(e)) => {
                let permanent = e.is_permanent() || e.is_client();
                Delivery::after_failure(attempt, permanent, format!("smtp: {e}"))
            }
            Err(_) => Delivery::after_failure(
                attempt,
                false,
                format!("smtp: no answer within {} s", limit.as_secs()),
            ),
        };
        match &outcome {
            Delivery::Delivered => {
                tracing::debug!(alert = %alert.id, "alert email delivered");
            }
            Delivery::Retry { after, reason } => {
                tracing::warn!(alert = %alert.id, attempt, retry_in_s = after.as_secs(), %reason, "alert email not delivered; will retry");
            }
            Delivery::Failed { reason } => {
                tracing::warn!(alert = %alert.id, attempt, %reason, "alert email failed");
            }
        }
        outcome
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, Facts};

    #[test]
    fn urls_and_senders_are_checked() {
        assert!(matches!(
            EmailSender::new("http://127.0.0.1:25", "a@example.com"),
            Err(EmailConfigError::Url(_))
        ));
        assert!(matches!(
            EmailSender::new("not a url", "a@example.com"),
            Err(EmailConfigError::Url(_))
        ));
        assert!(matches!(
            EmailSender::new("smtp://127.0.0.1:25", "not an address"),
            Err(EmailConfigError::From(_))
        ));
        assert!(matches!(
            EmailSender::new("smtp://u:p@mail.example.com:25", "a@example.com"),
            Err(EmailConfigError::Url(m)) if m.contains("unencrypted")
        ));
        assert!(EmailSender::new("smtp://u:p@10.0.0.1:25", "a@example.com").is_err());
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://u:p@127.0.0.1:2525",
            "smtp://u:p@[::1]:2525",
            "smtp://u:p@localhost:2525",
            "smtp://u:p@mail.example.com:587?tls=required",
            "smtp://mail.example.com:587?tls=required",
            "smtp://mail.example.com:587?tls=opportunistic",
            "smtps://mail.example.com:465",
        ] {
            EmailSender::new(url, "SecureGate <alerts@example.com>").unwrap();
        }
    }

    #[test]
    fn debug_hides_the_smtp_password() {
        let sender = EmailSender::new(
            "smtps://alerts:hunter2-very-secret@mail.example.com:465",
            "alerts@example.com",
        )
        .unwrap();
        let debug = format!("{sender:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("mail.example.com"), "{debug}");
    }

    #[test]
    fn messages_carry_the_alert() {
        let sender =
            EmailSender::new("smtp://127.0.0.1:2525", "SecureGate <alerts@example.com>").unwrap();
        let alert = Alert::new(
            "prj_1",
            Some("key_1".into()),
            AlertKind::Suspended,
            1_764_435_349,
            "x",
            Facts::default(),
        );
        let raw = String::from_utf8(
            sender
                .message("ops@example.com", &alert)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(raw.contains("To: ops@example.com"), "{raw}");
        assert!(
            raw.contains(&format!("Message-ID: <{}@example.com>", alert.id)),
            "{raw}"
        );
        assert!(raw.contains("Content-Type: text/plain"), "{raw}");
        assert!(sender.message("nope", &alert).is_err());
    }

    #[tokio::test]
    async fn a_bad_recipient_fails_without_retry() {
        let sender = EmailSender::new("smtp://127.0.0.1:9", "alerts@example.com").unwrap();
        let alert = Alert::new("p", None, AlertKind::Resumed, 0, "x", Facts::default());
        assert!(matches!(
            sender.send("not an address", &alert, 1).await,
            Delivery::Failed { .. }
        ));
    }
}
