//! Where a project's alerts go: email addresses and signed webhooks, validated as a
//! tenant submits them.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;
use utoipa::ToSchema;
use zeroize::Zeroizing;

/// At most this many email addresses per project.
pub const MAX_EMAILS: usize = 20;
/// At most this many webhooks per project.
pub const MAX_WEBHOOKS: usize = 10;
/// Longest accepted email address (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest accepted webhook URL.
pub const MAX_URL_LEN: usize = 2048;

/// The channels a project's alerts are delivered to, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertChannels {
    /// Recipient addresses, each validated.
    pub emails: Vec<String>,
    /// Webhook endpoints, each with its own signing secret.
    pub webhooks: Vec<WebhookChannel>,
}

impl AlertChannels {
    /// Whether no alert would be delivered anywhere.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.emails.is_empty() && self.webhooks.is_empty()
    }

    /// The configured webhook whose URL is `url` (compared in normalised form).
    #[must_use]
    pub fn webhook_for_url(&self, url: &str) -> Option<&WebhookChannel> {
        let wanted = normalise_url(url)?;
        self.webhooks
            .iter()
            .find(|w| normalise_url(&w.url).as_deref() == Some(wanted.as_str()))
    }

    /// What a tenant is shown: the addresses, and each webhook's id and URL without its
    /// secret.
    #[must_use]
    pub fn view(&self) -> ChannelsView {
        ChannelsView {
            emails: self.emails.clone(),
            webhooks: self
                .webhooks
                .iter()
                .map(|w| WebhookView {
                    id: w.id.clone(),
                    url: w.url.clone(),
                })
                .collect(),
        }
    }
}

/// A project's alert channels as shown to a tenant: no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelsView {
    /// Recipient addresses.
    pub emails: Vec<String>,
    /// Webhook endpoints.
    pub webhooks: Vec<WebhookView>,
}

/// A webhook endpoint as shown to a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// The endpoint's id (`wh_…`).
    pub id: String,
    /// The endpoint.
    pub url: String,
}

/// One webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    /// Stable identifier of the endpoint (`wh_…`), kept while its URL stays configured.
    pub id: String,
    /// The endpoint, normalised.
    pub url: String,
    /// The key its deliveries are signed with (Standard Webhooks).
    pub secret: WebhookSecret,
}

/// A webhook signing secret: `whsec_` followed by the standard base64 of 24 to 64
/// bytes. Its `Debug` form is redacted, and its bytes are wiped when dropped.
#[derive(Clone)]
pub struct WebhookSecret {
    text: Zeroizing<String>,
    key: Zeroizing<Vec<u8>>,
}

/// A string is not a valid webhook secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a webhook secret starts with `whsec_`")]
    Prefix,
    /// What follows the prefix is not standard base64.
    #[error("a webhook secret is `whsec_` followed by standard base64")]
    Encoding,
    /// The decoded key is shorter than 24 or longer than 64 bytes.
    #[error("a webhook secret's key is 24 to 64 bytes")]
    Length,
}

impl WebhookSecret {
    /// The prefix every secret carries.
    pub const PREFIX: &'static str = "whsec_";
    /// Bytes of key in a generated secret.
    pub const GENERATED_LEN: usize = 32;

    /// A fresh secret of 32 random bytes from the operating system's generator.
    #[must_use]
    pub fn generate() -> Self {
        let mut key = Zeroizing::new(vec![0u8; Self::GENERATED_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key);
        let text = Zeroizing::new(format!("{}{}", Self::PREFIX, STANDARD.encode(&*key)));
        Self { text, key }
    }

    /// Parses `whsec_<base64>`; the key must be 24 to 64 bytes (Standard Webhooks).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(Self::PREFIX).ok_or(SecretError::Prefix)?;
        let key = Zeroizing::new(
            STANDARD
                .decode(encoded)
                .map_err(|_| SecretError::Encoding)?,
        );
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Length);
        }
        Ok(Self {
            text: Zeroizing::new(text.to_owned()),
            key,
        })
    }

    /// The secret as the receiver configures it (`whsec_…`). Show it only to the
    /// project's owner; never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The HMAC key: the decoded bytes after the prefix.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Serialises to the secret itself, for storage: show stored channels to tenants through
/// [`AlertChannels::view`].
impl Serialize for WebhookSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        WebhookSecret::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The channels a tenant submits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelsInput {
    /// Up to 20 email addresses (`name@example.com`, no display name).
    #[serde(default)]
    pub emails: Vec<String>,
    /// Up to 10 webhook endpoints. Each gets its own signing secret; an endpoint whose
    /// URL was already configured keeps its secret.
    #[serde(default)]
    pub webhooks: Vec<WebhookInput>,
}

/// A webhook endpoint a tenant submits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// An `https` URL on a public address, without credentials. Deliveries are signed
    /// following Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    pub url: String,
}

/// Why submitted channels are refused: the offending field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ChannelError {
    /// The offending field, e.g. `emails[1]` or `webhooks[0].url`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ChannelError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Channels that passed [`validate_channels`]: normalised addresses and URLs, without
/// secrets yet ([`ValidChannels::into_channels`] assigns them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidChannels {
    emails: Vec<String>,
    webhook_urls: Vec<Url>,
}

impl ValidChannels {
    /// The validated email addresses, in submitted order.
    #[must_use]
    pub fn emails(&self) -> &[String] {
        &self.emails
    }

    /// The validated webhook URLs, normalised, in submitted order.
    #[must_use]
    pub fn webhook_urls(&self) -> &[Url] {
        &self.webhook_urls
    }

    /// The channels to store. A webhook whose URL is already in `existing` keeps its
    /// id and secret (so receivers need not be reconfigured); a new one gets a fresh id
    /// and a fresh secret.
    #[must_use]
    pub fn into_channels(self, existing: Option<&AlertChannels>) -> AlertChannels {
        let known: HashMap<String, &WebhookChannel> = existing
            .map(|e| {
                e.webhooks
                    .iter()
                    .filter_map(|w| normalise_url(&w.url).map(|u| (u, w)))
                    .collect()
            })
            .unwrap_or_default();
        let webhooks = self
            .webhook_urls
            .into_iter()
            .map(|url| {
                let url = url.to_string();
                match known.get(&url) {
                    Some(previous) => WebhookChannel {
                        id: previous.id.clone(),
                        url,
                        secret: previous.secret.clone(),
                    },
                    None => WebhookChannel {
                        id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
                        url,
                        secret: WebhookSecret::generate(),
                    },
                }
            })
            .collect();
        AlertChannels {
            emails: self.emails,
            webhooks,
        }
    }
}

fn normalise_url(raw: &str) -> Option<String> {
    Url::parse(raw).ok().map(|u| u.to_string())
}

/// Checks submitted channels. Emails must be plain addresses (at most
/// [`MAX_EMAILS`], no duplicates). Webhook URLs (at most [`MAX_WEBHOOKS`], no
/// duplicates) must be `https` (`http` too when `allow_http`), carry no credentials,
/// and must not point at a private, loopback, link-local or metadata address unless
/// `allow_private` (names are resolved to check this).
pub async fn validate_channels(
    input: ChannelsInput,
    allow_private: bool,
    allow_http: bool,
) -> Result<ValidChannels, ChannelError> {
    if input.emails.len() > MAX_EMAILS {
        return Err(ChannelError::new(
            "emails",
            format!("at most {MAX_EMAILS} email addresses"),
        ));
    }
    if input.webhooks.len() > MAX_WEBHOOKS {
        return Err(ChannelError::new(
            "webhooks",
            format!("at most {MAX_WEBHOOKS} webhooks"),
        ));
    }
    let mut emails: Vec<String> = Vec::with_capacity(input.emails.len());
    for (i, raw) in input.emails.iter().enumerate() {
        let field = format!("emails[{i}]");
        let address = check_email(raw).map_err(|m| ChannelError::new(&field, m))?;
        if let Some(j) = emails.iter().position(|e| e.eq_ignore_ascii_case(&address)) {
            return Err(ChannelError::new(
                field,
                format!("duplicate of emails[{j}]"),
            ));
        }
        emails.push(address);
    }
    let mut webhook_urls: Vec<Url> = Vec::with_capacity(input.webhooks.len());
    for (i, webhook) in input.webhooks.iter().enumerate() {
        let field = format!("webhooks[{i}].url");
        let url = check_webhook_url(&webhook.url, allow_private, allow_http)
            .await
            .map_err(|m| ChannelError::new(&field, m))?;
        if let Some(j) = webhook_urls.iter().position(|u| *u == url) {
            return Err(ChannelError::new(
                field,
                format!("duplicate of webhooks[{j}].url"),
            ));
        }
        webhook_urls.push(url);
    }
    Ok(ValidChannels {
        emails,
        webhook_urls,
    })
}

fn check_email(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_EMAIL_LEN {
        return Err(format!("longer than {MAX_EMAIL_LEN} characters"));
    }
    let address: lettre::Address = raw
        .parse()
        .map_err(|_| "not a valid email address (expected name@example.com)".to_owned())?;
    Ok(address.to_string())
}

/// Checks a webhook URL as [`validate_channels`] does; the senders check again before
/// every delivery.
pub(crate) async fn check_webhook_url(
    raw: &str,
    allow_private: bool,
    allow_http: bool,
) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        _ if allow_http => return Err("must use https or http".to_owned()),
        _ => return Err("must use https".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    if url.host().is_none() {
        return Err("has no host".to_owned());
    }
    sg_netguard::check_upstream_url(url.as_str(), allow_private)
        .await
        .map_err(|e| match e {
            sg_netguard::UrlError::Private(ip) => format!(
                "points at a private, loopback, link-local or metadata address ({ip}); the operator must allow private webhook targets for this"
            ),
            sg_netguard::UrlError::Unresolvable(host) => format!("host {host} does not resolve"),
            sg_netguard::UrlError::Invalid(e) => format!("not a valid URL: {e}"),
            sg_netguard::UrlError::Scheme => "must use https".to_owned(),
            sg_netguard::UrlError::Credentials => "must not contain credentials".to_owned(),
            sg_netguard::UrlError::NoHost => "has no host".to_owned(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn input(emails: &[&str], urls: &[&str]) -> ChannelsInput {
        ChannelsInput {
            emails: emails.iter().map(|s| (*s).to_owned()).collect(),
            webhooks: urls
                .iter()
                .map(|u| WebhookInput {
                    url: (*u).to_owned(),
                })
                .collect(),
        }
    }

    async fn error(emails: &[&str], urls: &[&str], private: bool, http: bool) -> ChannelError {
        validate_channels(input(emails, urls), private, http)
            .await
            .unwrap_err()
    }

    #[test]
    fn generated_secrets_are_fresh_and_redacted() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.key().len(), 32);
        assert_ne!(a.expose(), b.expose());
        let parsed = WebhookSecret::parse(a.expose()).unwrap();
        assert_eq!(parsed.key(), a.key());
        let debug = format!(
            "{a:?} {:?}",
            WebhookChannel {
                id: "wh_1".into(),
                url: "https://example.com/".into(),
                secret: a.clone(),
            }
        );
        assert!(!debug.contains(a.expose()), "{debug}");
        assert!(!debug.contains(&a.expose()[6..]), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn secrets_are_checked_when_parsed() {
        assert_eq!(
            WebhookSecret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::Encoding
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::Length
        );
        assert!(WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_ok());
        let json =
            serde_json::json!({"id": "wh_1", "url": "https://example.com/", "secret": "whsec_x"});
        assert!(serde_json::from_value::<WebhookChannel>(json).is_err());
    }

    #[tokio::test]
    async fn emails_are_checked() {
        let e = error(&["ops@example.com", "not an address"], &[], false, false).await;
        assert_eq!(e.field, "emails[1]");
        let e = error(&["Ops <ops@example.com>"], &[], false, false).await;
        assert_eq!(e.field, "emails[0]");
        let e = error(&["ops@example.com", "OPS@example.com"], &[], false, false).await;
        assert_eq!(e.field, "emails[1]");
        assert!(e.message.contains("duplicate of emails[0]"), "{e}");
        let many: Vec<String> = (0..=MAX_EMAILS)
            .map(|i| format!("u{i}@example.com"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(error(&many, &[], false, false).await.field, "emails");
        let ok = validate_channels(input(&many[..MAX_EMAILS], &[]), false, false)
            .await
            .unwrap();
        assert_eq!(ok.emails().len(), MAX_EMAILS);
    }

    #[tokio::test]
    async fn webhook_urls_are_checked() {
        for (url, needle) in [
            ("http://93.184.215.14/hook", "https"),
            ("ftp://93.184.215.14/hook", "https"),
            ("https://user:pw@93.184.215.14/hook", "credentials"),
            ("https://127.0.0.1/hook", "private"),
            ("https://[::1]/hook", "private"),
            ("https://10.1.2.3/hook", "private"),
            ("https://169.254.169.254/latest", "metadata"),
            ("https://localhost:8443/hook", "private"),
            ("not a url", "not a valid URL"),
        ] {
            let e = error(&[], &["https://93.184.215.14/ok", url], false, false).await;
            assert_eq!(e.field, "webhooks[1].url", "{url}");
            assert!(e.message.contains(needle), "{url}: {e}");
        }
        // http is refused unless allowed, whatever the address.
        let e = error(&[], &["http://127.0.0.1:9/hook"], true, false).await;
        assert!(e.message.contains("https"), "{e}");
        // Private and plain http when the operator allows both (loopback test servers).
        let ok = validate_channels(input(&[], &["http://127.0.0.1:9/hook"]), true, true)
            .await
            .unwrap();
        assert_eq!(ok.webhook_urls()[0].as_str(), "http://127.0.0.1:9/hook");
        // Credentials are refused even then.
        let e = error(&[], &["http://u:p@127.0.0.1:9/hook"], true, true).await;
        assert!(e.message.contains("credentials"), "{e}");
        let e = error(
            &[],
            &["https://93.184.215.14/a", "https://93.184.215.14:443/a"],
            false,
            false,
        )
        .await;
        assert_eq!(e.field, "webhooks[1].url");
        assert!(e.message.contains("duplicate"), "{e}");
        let many: Vec<String> = (0..=MAX_WEBHOOKS)
            .map(|i| format!("https://93.184.215.14/{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(error(&[], &many, false, false).await.field, "webhooks");
    }

    #[tokio::test]
    async fn existing_secrets_are_kept_for_known_urls() {
        let first = validate_channels(
            input(
                &["ops@example.com"],
                &["https://93.184.215.14/a", "https://93.184.215.14/b"],
            ),
            false,
            false,
        )
        .await
        .unwrap()
        .into_channels(None);
        assert_ne!(
            first.webhooks[0].secret.expose(),
            first.webhooks[1].secret.expose()
        );
        let second = validate_channels(
            input(
                &[],
                &["https://93.184.215.14:443/b", "https://93.184.215.14/c"],
            ),
            false,
            false,
        )
        .await
        .unwrap()
        .into_channels(Some(&first));
        assert!(second.emails.is_empty());
        assert_eq!(second.webhooks[0].id, first.webhooks[1].id);
        assert_eq!(
            second.webhooks[0].secret.expose(),
            first.webhooks[1].secret.expose()
        );
        assert_ne!(second.webhooks[1].id, first.webhooks[0].id);
        assert_ne!(
            second.webhooks[1].secret.expose(),
            first.webhooks[0].secret.expose()
        );
        assert!(
            first
                .webhook_for_url("https://93.184.215.14:443/a")
                .is_some()
        );
        // Stored channels round-trip through JSON, secrets included.
        let json = serde_json::to_string(&second).unwrap();
        let back: AlertChannels = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.webhooks[1].secret.expose(),
            second.webhooks[1].secret.expose()
        );
    }
}
