//! The event log: an append-only, per-stream sequenced log of opaque payloads.
//!
//! Two real implementations sit behind [`EventLog`]: NATS JetStream ([`jetstream`]) for
//! clusters and SQLite ([`sqlite`]) for embedded mode. One conformance suite
//! (`tests/conformance.rs`) runs against both.
//!
//! The log knows nothing about event types: payloads are bytes, serialized by `sg-events`.
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod jetstream;
pub mod sqlite;

/// The streams SecureGate keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamName {
    /// Tenants, projects, connections, keys, policies. Kept forever: the source of truth.
    Control,
    /// One event per proxied request.
    Usage,
    /// Lock violations, bindings and other security signals (the audit trail).
    Signals,
    /// Used request-signature ids, kept just past the signature window: a second append
    /// on the same subject is a replay.
    Nonces,
    /// The quota ledgers of limits and budgets: one subject per counter, and only its
    /// newest message is kept (each message is the whole ledger, written with an
    /// expected last sequence).
    Quota,
}

impl StreamName {
    pub const ALL: [StreamName; 5] = [
        StreamName::Control,
        StreamName::Usage,
        StreamName::Signals,
        StreamName::Nonces,
        StreamName::Quota,
    ];

    /// Position in [`StreamName::ALL`].
    pub fn index(self) -> usize {
        match self {
            StreamName::Control => 0,
            StreamName::Usage => 1,
            StreamName::Signals => 2,
            StreamName::Nonces => 3,
            StreamName::Quota => 4,
        }
    }

    /// The JetStream stream name (also the embedded log's stream key).
    pub fn stream_name(self) -> &'static str {
        match self {
            StreamName::Control => "SG_CONTROL",
            StreamName::Usage => "SG_USAGE",
            StreamName::Signals => "SG_SIGNALS",
            StreamName::Nonces => "SG_NONCES",
            StreamName::Quota => "SG_QUOTA",
        }
    }

    /// Every subject of this stream starts with this prefix followed by a `.`.
    pub fn subject_prefix(self) -> &'static str {
        match self {
            StreamName::Control => sg_subjects::CONTROL,
            StreamName::Usage => sg_subjects::USAGE,
            StreamName::Signals => sg_subjects::SIGNALS,
            StreamName::Nonces => sg_subjects::NONCES,
            StreamName::Quota => sg_subjects::QUOTA,
        }
    }

    /// Whether the stream keeps only the newest message of each subject.
    pub fn keeps_last_only(self) -> bool {
        matches!(self, StreamName::Quota)
    }

    /// The stream a subject belongs to, if any.
    pub fn of_subject(subject: &str) -> Option<StreamName> {
        Self::ALL.into_iter().find(|s| {
            subject
                .strip_prefix(s.subject_prefix())
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
        })
    }
}

/// An append to the log.
#[derive(Debug, Clone)]
pub struct Append {
    /// Full subject, e.g. `sg.control.<tenant>.key.<id>`; decides the stream.
    pub subject: String,
    pub payload: Bytes,
    /// Optimistic concurrency: the append succeeds only if the newest message on this
    /// exact subject has this sequence (`Some(0)`: the subject must be empty).
    pub expected_last_subject_seq: Option<u64>,
    /// Idempotency: a second append with the same id (within the stream's duplicate
    /// window) is not stored again; it answers with the first one's sequence and
    /// `duplicate: true`.
    pub msg_id: Option<String>,
}

/// The log's durable acknowledgement of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub duplicate: bool,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// What went wrong talking to the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The expected-last-subject-sequence check failed: someone else wrote first.
    #[error("concurrent write on {subject}: expected last sequence {expected}")]
    WrongLastSequence { subject: String, expected: u64 },
    /// The subject does not belong to any stream SecureGate keeps.
    #[error("subject {0:?} belongs to no stream")]
    UnknownSubject(String),
    /// The log is unreachable or timed out; the operation may be retried.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// Anything else (misconfiguration, corrupt storage).
    #[error("event log error: {0}")]
    Other(String),
}

impl LogError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}

/// How long each stream keeps its messages. The control stream keeps everything: it is
/// the source of truth. Both backends apply the same retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `SG_USAGE` (the views keep their own aggregates).
    pub usage: Duration,
    /// `SG_SIGNALS`, the audit trail.
    pub signals: Duration,
    /// `SG_NONCES`: request-signature ids, just past the ±300 s signature window.
    pub nonces: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            usage: Duration::from_secs(30 * 24 * 60 * 60),
            signals: Duration::from_secs(90 * 24 * 60 * 60),
            nonces: Duration::from_secs(11 * 60),
        }
    }
}

impl Retention {
    /// A stream's maximum message age; `None`: kept forever.
    pub fn max_age(&self, stream: StreamName) -> Option<Duration> {
        let age = match stream {
            // Quota ledgers hold what budgets have spent: kept like the control stream
            // (one message per counter).
            StreamName::Control | StreamName::Quota => return None,
            StreamName::Usage => self.usage,
            StreamName::Signals => self.signals,
            StreamName::Nonces => self.nonces,
        };
        (!age.is_zero()).then_some(age)
    }

    /// How often an embedded log looks for expired messages: a tenth of the shortest
    /// age, between one second and one minute.
    pub fn sweep_interval(&self) -> Duration {
        StreamName::ALL
            .into_iter()
            .filter_map(|s| self.max_age(s))
            .min()
            .map_or(Duration::from_secs(60), |age| age / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Bounds of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamBounds {
    /// Sequence of the oldest message still stored (0 if empty).
    pub first_seq: u64,
    /// Sequence of the newest message (0 if nothing was ever stored).
    pub last_seq: u64,
}

/// Checks an append before it reaches a backend, so that both backends accept and reject
/// exactly the same subjects and message ids. Returns the stream the subject belongs to.
pub(crate) fn check_append(append: &Append) -> Result<StreamName, LogError> {
    let subject = append.subject.as_str();
    let valid_tokens = subject.split('.').all(|token| {
        !token.is_empty()
            && token != "*"
            && token != ">"
            && !token.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    let stream = match StreamName::of_subject(subject) {
        Some(stream) if valid_tokens => stream,
        _ => return Err(LogError::UnknownSubject(append.subject.clone())),
    };
    if let Some(id) = &append.msg_id
        && (id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(LogError::Other(
            "message id must be non-empty and free of whitespace and control characters".to_owned(),
        ));
    }
    Ok(stream)
}

/// The delays between retries of a failing background operation: 100 ms doubling up to
/// a cap, back to the start after a success. The one backoff of the log, the projector
/// and the usage publisher.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff { failures: 0, max }
    }

    /// Notes a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = (self.failures - 1).min(16);
        Duration::from_millis(100u64.saturating_mul(1 << exp)).min(self.max)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Notes a success: the next failure waits the shortest delay again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// Delay before the `attempt`-th consecutive retry of a failed background operation.
pub(crate) fn retry_backoff(attempt: u32) -> Duration {
    let mut b = Backoff::new(Duration::from_secs(5));
    b.failures = attempt.saturating_sub(1);
    b.failed()
}

/// An append-only log with per-stream sequences.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends durably: `Ok` means the log acknowledged the write (on JetStream: the
    /// PubAck arrived).
    async fn append(&self, append: Append) -> Result<Appended, LogError>;

    /// Appends several messages; one result per append, in order. Implementations may
    /// commit them together (the SQLite log: one transaction, one sync), so a batch
    /// costs about as much as one append. Each result means what [`EventLog::append`]'s
    /// would.
    async fn append_batch(&self, appends: Vec<Append>) -> Vec<Result<Appended, LogError>> {
        futures::future::join_all(appends.into_iter().map(|a| self.append(a))).await
    }

    /// First and last sequence of a stream right now.
    async fn bounds(&self, stream: StreamName) -> Result<StreamBounds, LogError>;

    /// One message by sequence; `None` if it does not exist (never written, or deleted).
    async fn get(&self, stream: StreamName, seq: u64) -> Result<Option<LogMessage>, LogError>;

    /// The newest message on exactly `subject`; `None` if it has none.
    async fn last(&self, subject: &str) -> Result<Option<LogMessage>, LogError>;

    /// Ordered, gap-free, live-following read of a stream from `from_seq` (inclusive):
    /// yields every stored message with `seq >= from_seq` in order, then new ones as they
    /// are appended, forever. It recovers from connection loss by itself (resuming after
    /// the last message it yielded); an `Err` item reports a condition it could not
    /// recover from, after which the stream ends.
    async fn follow(
        &self,
        stream: StreamName,
        from_seq: u64,
    ) -> Result<BoxStream<'static, Result<LogMessage, LogError>>, LogError>;
}
