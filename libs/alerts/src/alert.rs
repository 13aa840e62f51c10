//! Alerts and how they read: an email subject and a one-screen plain-text body, and a
//! webhook payload following the Standard Webhooks convention
//! (`{"type", "timestamp", "data"}`).
//!
//! An alert carries identifiers, names, addresses and amounts — never a key's secret:
//! [`Facts`] has no field that could hold one.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

/// What an alert is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A request with an IP-bound key came from another address.
    IpMismatch,
    /// A request was refused by one of its key's other locks.
    LockViolation,
    /// A key was suspended: its requests are refused.
    Suspended,
    /// A suspended key was resumed.
    Resumed,
    /// Spend crossed a share (50, 80 or 100 %) of a budget.
    BudgetThreshold,
    /// A key expires soon.
    KeyExpiring,
    /// Alerts folded together during a storm, counted per key and kind.
    Digest,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 7] = [
        AlertKind::IpMismatch,
        AlertKind::LockViolation,
        AlertKind::Suspended,
        AlertKind::Resumed,
        AlertKind::BudgetThreshold,
        AlertKind::KeyExpiring,
        AlertKind::Digest,
    ];

    /// Stable snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertKind::IpMismatch => "ip_mismatch",
            AlertKind::LockViolation => "lock_violation",
            AlertKind::Suspended => "suspended",
            AlertKind::Resumed => "resumed",
            AlertKind::BudgetThreshold => "budget_threshold",
            AlertKind::KeyExpiring => "key_expiring",
            AlertKind::Digest => "digest",
        }
    }

    /// The webhook event type (`type` in the payload), e.g. `key.ip_mismatch`.
    #[must_use]
    pub const fn event_type(self) -> &'static str {
        match self {
            AlertKind::IpMismatch => "key.ip_mismatch",
            AlertKind::LockViolation => "key.lock_violation",
            AlertKind::Suspended => "key.suspended",
            AlertKind::Resumed => "key.resumed",
            AlertKind::BudgetThreshold => "budget.threshold",
            AlertKind::KeyExpiring => "key.expiring",
            AlertKind::Digest => "alerts.digest",
        }
    }

    /// A short human name.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            AlertKind::IpMismatch => "IP mismatch",
            AlertKind::LockViolation => "Lock violation",
            AlertKind::Suspended => "Key suspended",
            AlertKind::Resumed => "Key resumed",
            AlertKind::BudgetThreshold => "Budget threshold",
            AlertKind::KeyExpiring => "Key expiring",
            AlertKind::Digest => "Alert digest",
        }
    }
}

/// What is known about an alert, each part optional; only what is set is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// The project's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    /// The key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// The address the key is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_ip: Option<String>,
    /// The address the refused request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offending_ip: Option<String>,
    /// The offending address's country (ISO code), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The offending address's city, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// The refusal's code, e.g. `ip_not_allowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The model the request asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The endpoint the request called, e.g. `/v1/chat/completions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Why (a suspension's or resumption's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The budget whose threshold was crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetFacts>,
    /// When the key expires, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The folded alerts of a digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestFacts>,
    /// Where to look (the console page of the key or project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A budget threshold crossing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFacts {
    /// `day`, `month` or `total`.
    pub period: String,
    /// The budget window, e.g. `M2026-11`.
    pub window: String,
    /// The share crossed: 50, 80 or 100.
    pub percent: u8,
    /// The budget, in micro-dollars.
    pub budget_micros: u64,
    /// Spent in the window, in micro-dollars.
    pub spent_micros: u64,
}

/// The alerts a digest stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestFacts {
    /// Start of the grouping window, unix seconds (inclusive).
    pub window_start: i64,
    /// End of the grouping window, unix seconds (exclusive).
    pub window_end: i64,
    /// How many alerts were folded in, in all.
    pub total: u64,
    /// Counts per key and kind, largest first (at most [`DIGEST_ENTRIES`]).
    pub entries: Vec<DigestEntry>,
    /// Folded alerts whose key and kind did not fit in `entries`.
    #[serde(default)]
    pub omitted: u64,
}

/// At most this many key/kind lines in a digest.
pub const DIGEST_ENTRIES: usize = 50;

/// How many alerts of one kind on one key a digest stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestEntry {
    /// The key; `None`: project-wide alerts.
    pub key_id: Option<String>,
    /// The key's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// The kind of the folded alerts.
    pub kind: AlertKind,
    /// How many.
    pub count: u64,
}

/// One alert, ready to render and deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Deterministic (see [`alert_id`]): the same alert derived twice has the same id,
    /// so deliveries deduplicate by it. Also the webhook message id.
    pub id: String,
    /// The project it belongs to.
    pub project_id: String,
    /// The key it is about, if any.
    pub key_id: Option<String>,
    /// What it is about.
    pub kind: AlertKind,
    /// When it happened, unix seconds.
    pub at: i64,
    /// What is known about it.
    pub facts: Facts,
}

/// A deterministic alert id: `alrt_` and 32 hex characters of the SHA-256 of the
/// project, key, kind and `discriminator` (the grouping window's start, a threshold's
/// id, …). Distinct inputs give distinct ids; the same inputs, the same id.
#[must_use]
pub fn alert_id(
    project_id: &str,
    key_id: Option<&str>,
    kind: AlertKind,
    discriminator: &str,
) -> String {
    let mut hash = Sha256::new();
    for part in [
        project_id,
        key_id.unwrap_or("\u{0}"),
        kind.as_str(),
        discriminator,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(5 + 32);
    id.push_str("alrt_");
    for byte in &digest[..16] {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

impl Alert {
    /// An alert whose id is [`alert_id`] of its project, key, kind and `discriminator`.
    #[must_use]
    pub fn new(
        project_id: impl Into<String>,
        key_id: Option<String>,
        kind: AlertKind,
        at: i64,
        discriminator: &str,
        facts: Facts,
    ) -> Self {
        let project_id = project_id.into();
        let id = alert_id(&project_id, key_id.as_deref(), kind, discriminator);
        Self {
            id,
            project_id,
            key_id,
            kind,
            at,
            facts,
        }
    }

    fn key_label(&self) -> String {
        match (&self.facts.key_name, &self.key_id) {
            (Some(name), Some(id)) => format!("\"{}\" ({})", clean(name), clean(id)),
            (None, Some(id)) => clean(id),
            (Some(name), None) => format!("\"{}\"", clean(name)),
            (None, None) => "(no key)".to_owned(),
        }
    }

    fn project_label(&self) -> String {
        match &self.facts.project_name {
            Some(name) => format!("\"{}\" ({})", clean(name), clean(&self.project_id)),
            None => clean(&self.project_id),
        }
    }

    fn location(&self) -> Option<String> {
        match (&self.facts.city, &self.facts.country) {
            (Some(city), Some(country)) => Some(format!("{}, {}", clean(city), clean(country))),
            (Some(one), None) | (None, Some(one)) => Some(clean(one)),
            (None, None) => None,
        }
    }

    fn offending(&self) -> Option<String> {
        let ip = clean(self.facts.offending_ip.as_deref()?);
        Some(match self.location() {
            Some(place) => format!("{ip} ({place})"),
            None => ip,
        })
    }

    /// The email subject: one line, prefixed `[SecureGate]`.
    #[must_use]
    pub fn email_subject(&self) -> String {
        let key = self.key_label();
        let subject = match self.kind {
            AlertKind::IpMismatch => match &self.facts.offending_ip {
                Some(ip) => format!("Key {key} used from unexpected IP {}", clean(ip)),
                None => format!("Key {key} used from an unexpected IP"),
            },
            AlertKind::LockViolation => match &self.facts.code {
                Some(code) => format!("Key {key}: request refused by a lock ({})", clean(code)),
                None => format!("Key {key}: request refused by a lock"),
            },
            AlertKind::Suspended => format!("Key {key} suspended"),
            AlertKind::Resumed => format!("Key {key} resumed"),
            AlertKind::BudgetThreshold => {
                let scope = if self.key_id.is_some() {
                    format!("Key {key}")
                } else {
                    format!("Project {}", self.project_label())
                };
                match &self.facts.budget {
                    Some(b) => format!(
                        "{scope}: {}% of the {} budget spent",
                        b.percent,
                        clean(&b.period)
                    ),
                    None => format!("{scope}: budget threshold crossed"),
                }
            }
            AlertKind::KeyExpiring => match self.facts.expires_at {
                Some(t) => format!("Key {key} expires {}", utc(t)),
                None => format!("Key {key} expires soon"),
            },
            AlertKind::Digest => {
                let total = self.facts.digest.as_ref().map_or(0, |d| d.total);
                format!(
                    "{total} more alert{} in project {}",
                    if total == 1 { "" } else { "s" },
                    self.project_label()
                )
            }
        };
        format!("[SecureGate] {subject}")
    }

    /// The email body: plain text that fits on one screen — what happened, which key,
    /// the addresses involved, and what to do.
    #[must_use]
    pub fn email_text(&self) -> String {
        let mut out = String::new();
        let headline = match self.kind {
            AlertKind::IpMismatch => {
                "A request with an IP-bound key came from another address. SecureGate refused it."
            }
            AlertKind::LockViolation => "A request was refused by one of its key's locks.",
            AlertKind::Suspended => {
                "A key was suspended. Requests with it are refused until it is resumed."
            }
            AlertKind::Resumed => "A suspended key was resumed. Requests with it are served again.",
            AlertKind::BudgetThreshold => "Spend crossed a budget threshold.",
            AlertKind::KeyExpiring => "A key expires soon.",
            AlertKind::Digest => {
                "More alerts came in than are worth an email each; here they are counted."
            }
        };
        let _ = writeln!(out, "SecureGate alert: {}\n", self.kind.title());
        let _ = writeln!(out, "{headline}\n");
        let mut row = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<12} {value}");
        };
        row("Project:", self.project_label());
        if self.kind != AlertKind::Digest
            && (self.key_id.is_some() || self.facts.key_name.is_some())
        {
            row("Key:", self.key_label());
        }
        row("When:", utc(self.at));
        if let Some(ip) = &self.facts.bound_ip {
            row("Bound IP:", clean(ip));
        }
        if let Some(offending) = self.offending() {
            row("Request IP:", offending);
        }
        if let Some(code) = &self.facts.code {
            row("Refusal:", clean(code));
        }
        if let Some(endpoint) = &self.facts.endpoint {
            row("Endpoint:", clean(endpoint));
        }
        if let Some(model) = &self.facts.model {
            row("Model:", clean(model));
        }
        if let Some(reason) = &self.facts.reason {
            row("Reason:", clean(reason));
        }
        if let Some(b) = &self.facts.budget {
            row(
                "Budget:",
                format!(
                    "{} of {} ({}%) in the {} window {}",
                    usd(b.spent_micros),
                    usd(b.budget_micros),
                    b.percent,
                    clean(&b.period),
                    clean(&b.window)
                ),
            );
        }
        if let Some(t) = self.facts.expires_at {
            row("Expires:", utc(t));
        }
        if let Some(d) = &self.facts.digest {
            let _ = writeln!(
                out,
                "\n{} alert{} between {} and {}, after the first of each kind per key:",
                d.total,
                if d.total == 1 { "" } else { "s" },
                utc(d.window_start),
                utc(d.window_end)
            );
            for e in &d.entries {
                let key = match (&e.key_name, &e.key_id) {
                    (Some(name), Some(id)) => format!("\"{}\" ({})", clean(name), clean(id)),
                    (None, Some(id)) => clean(id),
                    (Some(name), None) => format!("\"{}\"", clean(name)),
                    (None, None) => "project".to_owned(),
                };
                let _ = writeln!(out, "  {:>7} × {:<18} {key}", e.count, e.kind.title());
            }
            if d.omitted > 0 {
                let _ = writeln!(out, "  {:>7} × other keys and kinds", d.omitted);
            }
        }
        let _ = writeln!(out, "\nWhat to do:");
        for step in self.steps() {
            let _ = writeln!(out, "  - {step}");
        }
        if let Some(link) = &self.facts.link {
            let _ = writeln!(out, "\nDetails: {}", clean(link));
        }
        let _ = writeln!(out, "\nAlert id: {}", self.id);
        out
    }

    fn steps(&self) -> Vec<String> {
        let key = self.key_id.as_deref().map(clean);
        let key = key.as_deref().unwrap_or("{key}");
        match self.kind {
            AlertKind::IpMismatch => {
                let ip = self
                    .facts
                    .offending_ip
                    .as_deref()
                    .map(clean)
                    .unwrap_or_else(|| "that address".to_owned());
                vec![
                    format!(
                        "If you moved the client to {ip}, clear the key's binding (POST /admin/v1/keys/{key}/unbind); its next request binds it again."
                    ),
                    format!(
                        "If you do not recognise {ip}, the key has leaked: rotate it (POST /admin/v1/keys/{key}/rotate) or revoke it."
                    ),
                ]
            }
            AlertKind::LockViolation => vec![
                "If the request was yours, review the key's locks.".to_owned(),
                format!(
                    "If it was not, someone else holds the key: rotate it (POST /admin/v1/keys/{key}/rotate) or revoke it."
                ),
            ],
            AlertKind::Suspended => vec![
                "Review the key's recent requests.".to_owned(),
                "If it may have leaked, rotate or revoke it; otherwise resume it.".to_owned(),
            ],
            AlertKind::Resumed => vec![
                "Nothing, if this was expected.".to_owned(),
                "If not, review who can manage this project.".to_owned(),
            ],
            AlertKind::BudgetThreshold => vec![
                "If the spend is expected, raise the budget before it runs out.".to_owned(),
                "If not, review the recent requests and revoke any key you do not trust."
                    .to_owned(),
            ],
            AlertKind::KeyExpiring => vec![format!(
                "Issue a replacement and move its clients over before it expires (or rotate it: POST /admin/v1/keys/{key}/rotate)."
            )],
            AlertKind::Digest => vec![
                "Check the keys listed above: a storm of refusals usually means a leaked key or a misconfigured client.".to_owned(),
                "Rotate or revoke a key you do not trust.".to_owned(),
            ],
        }
    }

    /// The webhook payload: `{"type": "key.ip_mismatch", "timestamp": RFC 3339,
    /// "data": {"alert_id", "project_id", "key_id", …facts}}`.
    #[must_use]
    pub fn webhook_body(&self) -> serde_json::Value {
        let mut data = serde_json::Map::new();
        data.insert("alert_id".into(), self.id.clone().into());
        data.insert("project_id".into(), self.project_id.clone().into());
        data.insert(
            "key_id".into(),
            self.key_id
                .clone()
                .map_or(serde_json::Value::Null, Into::into),
        );
        data.insert("kind".into(), self.kind.as_str().into());
        if let Ok(serde_json::Value::Object(facts)) = serde_json::to_value(&self.facts) {
            data.extend(facts);
        }
        serde_json::json!({
            "type": self.kind.event_type(),
            "timestamp": rfc3339(self.at),
            "data": data,
        })
    }
}

/// `at` (unix seconds) in RFC 3339, UTC; the number itself if out of range.
pub(crate) fn rfc3339(at: i64) -> String {
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| at.to_string())
}

fn utc(at: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| at.to_string())
}

fn usd(micros: u64) -> String {
    let cents = micros / 10_000;
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// Tenant-chosen text on one line, without control characters, at most 200 characters.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn mismatch() -> Alert {
        Alert::new(
            "prj_1",
            Some("key_9".into()),
            AlertKind::IpMismatch,
            1_764_435_349,
            "w1",
            Facts {
                project_name: Some("Acme prod".into()),
                key_name: Some("backend\r\nBcc: evil@example.com".into()),
                bound_ip: Some("198.51.100.4".into()),
                offending_ip: Some("203.0.113.7".into()),
                country: Some("DE".into()),
                city: Some("Frankfurt".into()),
                code: Some("ip_not_allowed".into()),
                endpoint: Some("/v1/chat/completions".into()),
                ..Facts::default()
            },
        )
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = alert_id("p", Some("k"), AlertKind::IpMismatch, "1");
        assert_eq!(a, alert_id("p", Some("k"), AlertKind::IpMismatch, "1"));
        assert!(a.starts_with("alrt_") && a.len() == 37, "{a}");
        for other in [
            alert_id("p", Some("k"), AlertKind::IpMismatch, "2"),
            alert_id("p", Some("k"), AlertKind::LockViolation, "1"),
            alert_id("p", None, AlertKind::IpMismatch, "1"),
            alert_id("p", Some("k1"), AlertKind::IpMismatch, ""),
            alert_id("pk", None, AlertKind::IpMismatch, "1"),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn ip_mismatch_email_reads_well() {
        let alert = mismatch();
        let subject = alert.email_subject();
        assert!(
            subject.starts_with("[SecureGate] Key \"backend  Bcc: evil@example.com\" (key_9)"),
            "{subject}"
        );
        assert!(!subject.contains('\n') && !subject.contains('\r'));
        assert!(subject.contains("203.0.113.7"));
        let text = alert.email_text();
        for needle in [
            "IP mismatch",
            "key_9",
            "Bound IP:    198.51.100.4",
            "Request IP:  203.0.113.7 (Frankfurt, DE)",
            "2025-11-29 16:55:49 UTC",
            "/admin/v1/keys/key_9/unbind",
            "What to do:",
            &alert.id,
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.lines().count() <= 24, "{text}");
        assert!(!text.contains("\r\nBcc"));
    }

    #[test]
    fn every_kind_renders() {
        for kind in AlertKind::ALL {
            let mut alert = mismatch();
            alert.kind = kind;
            alert.facts.budget = Some(BudgetFacts {
                period: "month".into(),
                window: "M2025-11".into(),
                percent: 80,
                budget_micros: 100_000_000,
                spent_micros: 80_123_456,
            });
            alert.facts.expires_at = Some(1_765_000_000);
            alert.facts.digest = Some(DigestFacts {
                window_start: 1_764_435_300,
                window_end: 1_764_435_600,
                total: 9_999,
                entries: vec![DigestEntry {
                    key_id: Some("key_9".into()),
                    key_name: None,
                    kind: AlertKind::IpMismatch,
                    count: 9_999,
                }],
                omitted: 0,
            });
            let subject = alert.email_subject();
            let text = alert.email_text();
            assert!(subject.starts_with("[SecureGate] "), "{kind:?}: {subject}");
            assert!(text.contains(kind.title()), "{kind:?}: {text}");
            let body = alert.webhook_body();
            assert_eq!(body["type"], kind.event_type());
            assert_eq!(body["data"]["alert_id"], alert.id.as_str());
        }
        let mut budget = mismatch();
        budget.kind = AlertKind::BudgetThreshold;
        budget.facts.budget = Some(BudgetFacts {
            period: "month".into(),
            window: "M2025-11".into(),
            percent: 80,
            budget_micros: 100_000_000,
            spent_micros: 80_123_456,
        });
        assert!(budget.email_text().contains("$80.12 of $100.00 (80%)"));
    }

    #[test]
    fn webhook_body_follows_the_convention() {
        let body = mismatch().webhook_body();
        assert_eq!(body["type"], "key.ip_mismatch");
        assert_eq!(body["timestamp"], "2025-11-29T16:55:49Z");
        let data = &body["data"];
        assert_eq!(data["project_id"], "prj_1");
        assert_eq!(data["key_id"], "key_9");
        assert_eq!(data["kind"], "ip_mismatch");
        assert_eq!(data["offending_ip"], "203.0.113.7");
        assert_eq!(data["bound_ip"], "198.51.100.4");
        assert_eq!(data["city"], "Frankfurt");
        assert!(data.get("budget").is_none());
        // An alert round-trips (it is stored until delivered).
        let alert = mismatch();
        let back: Alert = serde_json::from_str(&serde_json::to_string(&alert).unwrap()).unwrap();
        assert_eq!(back, alert);
    }
}
