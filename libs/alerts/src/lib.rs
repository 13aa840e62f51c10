//! Alerts for SecureGate projects: where they go, what they say, how storms are kept
//! short, and how they are delivered.
//!
//! - [`channels`]: a project's email addresses and webhooks ([`AlertChannels`]),
//!   validated from what a tenant submits ([`validate_channels`]); each webhook has its
//!   own signing secret ([`WebhookSecret`], redacted in `Debug`).
//! - [`alert`]: an [`Alert`] and how it reads — an email subject and a one-screen
//!   plain-text body, and a webhook payload (`{"type", "timestamp", "data"}`).
//! - [`group`]: the [`Grouper`], pure: the first alert of each kind on each key per
//!   window at once, the rest in one digest per project and window; ids are
//!   deterministic, so a replay gives the same ids.
//! - [`signing`]: Standard Webhooks signatures ([`sign`], [`verify`]).
//! - [`delivery`], [`email`], [`webhook`]: the senders ([`EmailSender`] over SMTP,
//!   [`WebhookSender`] over HTTPS), each attempt's outcome ([`Delivery`]) and the retry
//!   schedule ([`backoff`]). Storing deliveries between attempts is the caller's.
//!
//! No alert carries a key's secret, and no webhook secret or SMTP password is logged.
#![forbid(unsafe_code)]

pub mod alert;
pub mod channels;
pub mod delivery;
pub mod email;
pub mod group;
pub mod signing;
pub mod webhook;

pub use alert::{
    Alert, AlertKind, BudgetFacts, DIGEST_ENTRIES, DigestEntry, DigestFacts, Facts, alert_id,
};
pub use channels::{
    AlertChannels, ChannelError, ChannelsInput, ChannelsView, MAX_EMAILS, MAX_WEBHOOKS,
    SecretError, ValidChannels, WebhookChannel, WebhookInput, WebhookSecret, WebhookView,
    validate_channels,
};
pub use delivery::{Delivery, MAX_ATTEMPTS, MAX_BACKOFF, backoff};
pub use email::{EmailConfigError, EmailSender};
pub use group::{Candidate, Grouper, digest_id};
pub use signing::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SignedHeaders, TOLERANCE_SECS, VerifyError,
    sign, signed_headers, verify,
};
pub use webhook::{WebhookConfigError, WebhookSender};
