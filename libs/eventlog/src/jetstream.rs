//! [`EventLog`] over NATS JetStream.
//!
//! Streams are created or updated on start: `SG_CONTROL` keeps everything forever with a 24h
//! duplicate window, `SG_USAGE` keeps messages for a configurable age with a 10 minute
//! duplicate window. Appends are published with the JetStream concurrency and idempotency
//! headers and wait for the PubAck. Followers use ordered consumers, recreated after
//! connection loss.

use std::error::Error as StdError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{
        DeliverPolicy,
        pull::{self, OrderedConfig},
    },
    context::{Context, CreateStreamError, CreateStreamErrorKind, PublishErrorKind},
    message::PublishMessage,
    stream::{
        Config as StreamConfig, ConsumerError, ConsumerErrorKind, RawMessageErrorKind,
        RetentionPolicy, StorageType,
    },
};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{
    Append, Appended, EventLog, LogError, LogMessage, Retention, StreamBounds, StreamName,
    check_append, retry_backoff,
};

/// JetStream API error codes this module reacts to.
mod code {
    pub const CLUSTER_NOT_ACTIVE: u64 = 10006;
    pub const CLUSTER_NOT_AVAILABLE: u64 = 10008;
    pub const CLUSTER_NOT_LEADER: u64 = 10009;
    #[cfg(test)]
    pub const STREAM_NOT_FOUND: u64 = 10059;
    pub const STREAM_WRONG_LAST_SEQUENCE: u64 = 10071;
    pub const STREAM_WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
}

const CONTROL_DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
const USAGE_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
const NONCES_DUPLICATE_WINDOW: Duration = Duration::from_secs(60);
/// Upper bound of one pull request of a follower; followers get idle heartbeats at half
/// of it, and two missed heartbeats make the follower be recreated.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// How long one publish of an append with a message id waits for its PubAck before it is
/// sent again (within [`JetStreamOptions::request_timeout`]).
const APPEND_ATTEMPT: Duration = Duration::from_secs(1);
/// Pause between two attempts of one append.
const APPEND_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often a follower checks whether its connection was re-established.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);
/// How long a follower waits for its next message before it asks the stream whether it
/// holds one the consumer has not delivered (and then again as often). A consumer lives
/// on one server: when that server dies while the follower's own connection survives,
/// the library notices only after missed heartbeats and a recreation that first tries
/// the dead server (about 20 s, measured in `tests/follower_failover.rs`).
const STALL_AFTER: Duration = Duration::from_secs(2);
/// Bound of that question.
const STALL_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the JetStream event log.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Replicas of each stream (1 for a single server, 3 or 5 in a cluster).
    pub replicas: usize,
    /// How long each stream keeps its messages.
    pub retention: Retention,
    /// Bound of every JetStream API request and of the wait for a PubAck.
    pub request_timeout: Duration,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            retention: Retention::default(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The event log on NATS JetStream.
#[derive(Clone)]
pub struct JetStreamLog {
    client: async_nats::Client,
    context: Context,
    opts: JetStreamOptions,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl JetStreamLog {
    /// Connects to the NATS server(s) at `url` (comma separated for several) and makes sure
    /// the streams exist with the configured settings.
    pub async fn connect(url: &str, opts: JetStreamOptions) -> Result<Self, LogError> {
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = async_nats::ConnectOptions::new()
            .name("securegate")
            .connection_timeout(opts.request_timeout)
            .connect(servers.as_slice())
            .await
            .map_err(|err| LogError::Unavailable(format!("connecting to nats: {err}")))?;
        Self::new(client, opts).await
    }

    /// Uses an existing connection (e.g. one set up with credentials or TLS) and makes sure
    /// the streams exist with the configured settings.
    pub async fn new(client: async_nats::Client, opts: JetStreamOptions) -> Result<Self, LogError> {
        let context = jetstream::ContextBuilder::new()
            .timeout(opts.request_timeout)
            .build(client.clone());
        let log = Self {
            client,
            context,
            opts,
        };
        log.ensure_streams().await?;
        Ok(log)
    }

    /// The underlying NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The configuration a stream is created or updated with.
    pub fn stream_config(&self, stream: StreamName) -> StreamConfig {
        let window = match stream {
            StreamName::Control => CONTROL_DUPLICATE_WINDOW,
            StreamName::Usage | StreamName::Signals | StreamName::Quota => USAGE_DUPLICATE_WINDOW,
            StreamName::Nonces => NONCES_DUPLICATE_WINDOW,
        };
        let max_age = self
            .opts
            .retention
            .max_age(stream)
            .unwrap_or(Duration::ZERO);
        // The server requires the duplicate window to fit into the max age.
        let duplicate_window = if max_age.is_zero() {
            window
        } else {
            window.min(max_age)
        };
        StreamConfig {
            name: stream.stream_name().to_owned(),
            subjects: vec![format!("{}.>", stream.subject_prefix())],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age,
            duplicate_window,
            num_replicas: self.opts.replicas.max(1),
            max_messages_per_subject: if stream.keeps_last_only() { 1 } else { 0 },
            ..Default::default()
        }
    }

    /// Creates the streams, or updates them to the current configuration.
    async fn ensure_streams(&self) -> Result<(), LogError> {
        for stream in StreamName::ALL {
            self.context
                .create_or_update_stream(self.stream_config(stream))
                .await
                .map_err(|err| {
                    from_create_stream(&err, &format!("creating stream {}", stream.stream_name()))
                })?;
            tracing::debug!(stream = stream.stream_name(), "stream ready");
        }
        Ok(())
    }

    /// Sequence and message id of the newest message on `subject`.
    async fn last_on_subject(
        &self,
        stream: StreamName,
        subject: &str,
    ) -> Result<Option<(u64, Option<String>)>, LogError> {
        let handle = self.stream_handle(stream).await?;
        let what = format!("last message of {}", stream.stream_name());
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some((
                message.sequence,
                message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|id| id.as_str().to_owned()),
            ))),
            Err(err) => match err.kind() {
                RawMessageErrorKind::NoMessageFound => Ok(None),
                RawMessageErrorKind::JetStream(api) => Err(from_api(&api, &what)),
                RawMessageErrorKind::InvalidSubject => {
                    Err(LogError::Other(format!("{what}: {err}")))
                }
                RawMessageErrorKind::Other => Err(from_chain(&err, &what)),
            },
        }
    }

    async fn stream_handle(
        &self,
        stream: StreamName,
    ) -> Result<jetstream::stream::Stream<()>, LogError> {
        self.context
            .get_stream_no_info(stream.stream_name())
            .await
            .map_err(|err| LogError::Other(format!("stream handle: {err}")))
    }
}

#[async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, append: Append) -> Result<Appended, LogError> {
        let stream = check_append(&append)?;
        let mut message = PublishMessage::build()
            .payload(append.payload)
            .expected_stream(stream.stream_name());
        if let Some(expected) = append.expected_last_subject_seq {
            message = message.expected_last_subject_sequence(expected);
        }
        if let Some(id) = &append.msg_id {
            message = message.message_id(id);
        }
        let map_err = |kind: PublishErrorKind, err: &(dyn StdError + 'static)| -> LogError {
            match kind {
                PublishErrorKind::WrongLastSequence => LogError::WrongLastSequence {
                    subject: append.subject.clone(),
                    expected: append.expected_last_subject_seq.unwrap_or(0),
                },
                PublishErrorKind::TimedOut
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::StreamNotFound
                | PublishErrorKind::MaxAckPending => {
                    LogError::Unavailable(format!("append to {}: {err}", stream.stream_name()))
                }
                PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::WrongLastMessageId => {
                    LogError::Other(format!("append to {}: {err}", stream.stream_name()))
                }
                PublishErrorKind::Other => match api_error_code(err) {
                    Some(
                        code::STREAM_WRONG_LAST_SEQUENCE
                        | code::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
                    ) => LogError::WrongLastSequence {
                        subject: append.subject.clone(),
                        expected: append.expected_last_subject_seq.unwrap_or(0),
                    },
                    _ => from_chain(err, &format!("append to {}", stream.stream_name())),
                },
            }
        };
        // An append with a message id is safe to publish again (the server keeps the first),
        // so it is retried within its bound: a publish sent while a replicated stream elects
        // a new leader is dropped, and the retry after the election is stored instead of the
        // whole bound passing on one lost message. Without an id, one attempt.
        let deadline = tokio::time::Instant::now() + self.opts.request_timeout;
        let result = loop {
            let attempt_bound = if append.msg_id.is_some() {
                APPEND_ATTEMPT.min(self.opts.request_timeout)
            } else {
                self.opts.request_timeout
            };
            let attempt = async {
                match self
                    .context
                    .send_publish(append.subject.clone(), message.clone())
                    .await
                {
                    Ok(ack_future) => ack_future.await.map_err(|err| map_err(err.kind(), &err)),
                    Err(err) => Err(map_err(err.kind(), &err)),
                }
            };
            let result = match tokio::time::timeout(attempt_bound, attempt).await {
                Ok(result) => result,
                Err(_) => Err(LogError::Unavailable(format!(
                    "append to {}: timed out",
                    stream.stream_name()
                ))),
            };
            match result {
                Err(LogError::Unavailable(_))
                    if append.msg_id.is_some()
                        && tokio::time::Instant::now() + APPEND_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(APPEND_RETRY_PAUSE).await;
                }
                result => break result,
            }
        };
        let ack = match (result, &append.msg_id) {
            (Ok(ack), _) => ack,
            // The server checks the expected sequence before the message id, so the retry of
            // an append that was stored (but whose PubAck was lost) is rejected. It is a
            // duplicate if the subject's newest message carries the same id.
            (Err(err @ LogError::WrongLastSequence { .. }), Some(id)) => {
                return match self.last_on_subject(stream, &append.subject).await? {
                    Some((seq, Some(last_id))) if last_id == *id => Ok(Appended {
                        seq,
                        duplicate: true,
                    }),
                    _ => Err(err),
                };
            }
            (Err(err), _) => return Err(err),
        };
        if ack.stream != stream.stream_name() {
            return Err(LogError::Other(format!(
                "subject {:?} was stored by stream {:?}",
                append.subject, ack.stream
            )));
        }
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn bounds(&self, stream: StreamName) -> Result<StreamBounds, LogError> {
        let handle = self.stream_handle(stream).await?;
        let info = handle
            .get_info()
            .await
            .map_err(|err| from_chain(&err, &format!("stream info of {}", stream.stream_name())))?;
        let state = info.state;
        Ok(StreamBounds {
            first_seq: if state.messages == 0 {
                0
            } else {
                state.first_sequence
            },
            last_seq: state.last_sequence,
        })
    }

    async fn get(&self, stream: StreamName, seq: u64) -> Result<Option<LogMessage>, LogError> {
        if seq == 0 {
            return Ok(None);
        }
        let handle = self.stream_handle(stream).await?;
        match handle.get_raw_message(seq).await {
            Ok(message) => Ok(Some(LogMessage {
                seq: message.sequence,
                subject: message.subject.to_string(),
                payload: message.payload,
            })),
            Err(err) => {
                let what = format!("get {seq} from {}", stream.stream_name());
                match err.kind() {
                    RawMessageErrorKind::NoMessageFound => Ok(None),
                    RawMessageErrorKind::JetStream(api) => Err(from_api(&api, &what)),
                    RawMessageErrorKind::InvalidSubject => {
                        Err(LogError::Other(format!("{what}: {err}")))
                    }
                    RawMessageErrorKind::Other => Err(from_chain(&err, &what)),
                }
            }
        }
    }

    async fn last(&self, subject: &str) -> Result<Option<LogMessage>, LogError> {
        let stream = StreamName::of_subject(subject)
            .ok_or_else(|| LogError::UnknownSubject(subject.to_owned()))?;
        let handle = self.stream_handle(stream).await?;
        let what = format!("last message on {subject}");
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(LogMessage {
                seq: message.sequence,
                subject: message.subject.to_string(),
                payload: message.payload,
            })),
            Err(err) => match err.kind() {
                RawMessageErrorKind::NoMessageFound => Ok(None),
                RawMessageErrorKind::JetStream(api) => Err(from_api(&api, &what)),
                RawMessageErrorKind::InvalidSubject => {
                    Err(LogError::Other(format!("{what}: {err}")))
                }
                RawMessageErrorKind::Other => Err(from_chain(&err, &what)),
            },
        }
    }

    async fn follow(
        &self,
        stream: StreamName,
        from_seq: u64,
    ) -> Result<BoxStream<'static, Result<LogMessage, LogError>>, LogError> {
        let mut reconnect_check = tokio::time::interval(RECONNECT_CHECK);
        reconnect_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follower = Follower {
            handle: self.stream_handle(stream).await?,
            client: self.client.clone(),
            stream,
            next_seq: from_seq.max(1),
            messages: None,
            connects: 0,
            reconnect_check,
            failures: 0,
            done: false,
        };
        // Open the consumer right away so that setup errors surface to the caller.
        match follower.open().await {
            Ok(messages) => follower.messages = Some(messages),
            Err(err) if err.is_transient() => {
                tracing::warn!(stream = stream.stream_name(), error = %err, "follower not started yet; retrying");
                follower.failures = 1;
            }
            Err(err) => return Err(err),
        }
        Ok(
            futures::stream::unfold(follower, |mut follower| async move {
                let item = follower.next_item().await?;
                Some((item, follower))
            })
            .boxed(),
        )
    }
}

/// Live reader of a stream on top of an ordered consumer, recreated from the last message
/// it yielded whenever the consumer fails.
struct Follower {
    handle: jetstream::stream::Stream<()>,
    client: async_nats::Client,
    stream: StreamName,
    next_seq: u64,
    messages: Option<pull::Ordered>,
    /// Connection count when the consumer was opened. Ephemeral consumers do not survive a
    /// server restart, and the library only notices a lost one after missed heartbeats, so
    /// the follower reopens itself as soon as the connection was re-established.
    connects: u64,
    reconnect_check: tokio::time::Interval,
    failures: u32,
    done: bool,
}

impl Follower {
    fn open(&mut self) -> impl Future<Output = Result<pull::Ordered, LogError>> + Send + 'static {
        self.connects = self.connection_count();
        Self::open_at(self.handle.clone(), self.next_seq)
    }

    fn connection_count(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    async fn open_at(
        handle: jetstream::stream::Stream<()>,
        next_seq: u64,
    ) -> Result<pull::Ordered, LogError> {
        let deliver_policy = if next_seq <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: next_seq,
            }
        };
        let consumer = handle
            .create_consumer(OrderedConfig {
                deliver_policy,
                max_expires: PULL_EXPIRES,
                ..Default::default()
            })
            .await
            .map_err(|err| from_consumer(&err, "creating ordered consumer"))?;
        consumer
            .messages()
            .await
            .map_err(|err| from_chain(&err, "starting ordered consumer"))
    }

    async fn next_item(&mut self) -> Option<Result<LogMessage, LogError>> {
        // Only the time spent here waiting counts: a caller slow to ask again is not a
        // stalled consumer.
        let entered = Instant::now();
        let mut probed = entered;
        loop {
            if self.done {
                return None;
            }
            let Some(messages) = self.messages.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(retry_backoff(self.failures)).await;
                }
                match self.open().await {
                    Ok(messages) => {
                        tracing::info!(
                            stream = self.stream.stream_name(),
                            from_seq = self.next_seq,
                            "follower resumed"
                        );
                        self.messages = Some(messages);
                        // A new consumer gets its own time to deliver.
                        probed = Instant::now();
                    }
                    Err(err) if err.is_transient() => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(stream = self.stream.stream_name(), error = %err, attempt = self.failures, "reopening follower failed");
                    }
                    Err(err) => {
                        tracing::error!(stream = self.stream.stream_name(), error = %err, "follower stopped");
                        self.done = true;
                        return Some(Err(err));
                    }
                }
                continue;
            };
            let next = tokio::select! {
                next = messages.next() => next,
                _ = self.reconnect_check.tick() => {
                    if self.connection_count() != self.connects {
                        tracing::info!(stream = self.stream.stream_name(), next_seq = self.next_seq, "connection re-established; reopening follower");
                        self.messages = None;
                    } else if probed.elapsed() >= STALL_AFTER {
                        probed = Instant::now();
                        if self.stalled().await {
                            tracing::warn!(stream = self.stream.stream_name(), next_seq = self.next_seq, "the stream holds messages the consumer did not deliver; reopening follower");
                            self.messages = None;
                        }
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let seq = match message.info() {
                        Ok(info) => info.stream_sequence,
                        Err(err) => {
                            tracing::warn!(stream = self.stream.stream_name(), error = %err, "message without stream metadata; reopening follower");
                            self.reset();
                            continue;
                        }
                    };
                    if seq < self.next_seq {
                        continue;
                    }
                    self.next_seq = seq.saturating_add(1);
                    self.failures = 0;
                    let message = message.message;
                    return Some(Ok(LogMessage {
                        seq,
                        subject: message.subject.to_string(),
                        payload: message.payload,
                    }));
                }
                Some(Err(err)) => {
                    tracing::warn!(stream = self.stream.stream_name(), error = %err, next_seq = self.next_seq, "follower interrupted; reopening");
                    self.reset();
                }
                None => {
                    tracing::warn!(
                        stream = self.stream.stream_name(),
                        next_seq = self.next_seq,
                        "follower ended; reopening"
                    );
                    self.reset();
                }
            }
        }
    }

    fn reset(&mut self) {
        self.messages = None;
        self.failures = self.failures.saturating_add(1);
    }

    /// Whether the stream holds a message at or after the next one this follower waits
    /// for (asked when it has waited [`STALL_AFTER`]; no answer counts as no).
    fn stalled(&self) -> impl Future<Output = bool> + Send + 'static {
        let (handle, next_seq) = (self.handle.clone(), self.next_seq);
        async move {
            match tokio::time::timeout(STALL_PROBE_TIMEOUT, handle.get_info()).await {
                Ok(Ok(info)) => info.state.last_sequence >= next_seq,
                _ => false,
            }
        }
    }
}

/// The JetStream API error code somewhere in the error's source chain, if the server
/// answered with one.
fn api_error_code(err: &(dyn StdError + 'static)) -> Option<u64> {
    api_error_in_chain(err).map(|api| api.error_code().0)
}

fn api_error_in_chain<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a jetstream::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(inner) = current {
        if let Some(api) = inner.downcast_ref::<jetstream::Error>() {
            return Some(api);
        }
        current = inner.source();
    }
    None
}

/// A rejection by the JetStream API is permanent, except when it reports a cluster that is
/// (re)electing or a temporarily unavailable service.
fn from_api(api: &jetstream::Error, what: &str) -> LogError {
    let transient = api.code() == 503
        || matches!(
            api.error_code().0,
            code::CLUSTER_NOT_ACTIVE | code::CLUSTER_NOT_AVAILABLE | code::CLUSTER_NOT_LEADER
        );
    if transient {
        LogError::Unavailable(format!("{what}: {api}"))
    } else {
        LogError::Other(format!("{what}: {api}"))
    }
}

/// Maps an error whose kind says nothing specific: a JetStream API rejection in its source
/// chain decides; anything else (timeouts, no responders, disconnects) is transient.
fn from_chain(err: &(dyn StdError + 'static), what: &str) -> LogError {
    match api_error_in_chain(err) {
        Some(api) => from_api(api, what),
        None => LogError::Unavailable(format!("{what}: {err}")),
    }
}

fn from_create_stream(err: &CreateStreamError, what: &str) -> LogError {
    match err.kind() {
        CreateStreamErrorKind::JetStream(api) => from_api(&api, what),
        CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::JetStreamUnavailable
        | CreateStreamErrorKind::Response => LogError::Unavailable(format!("{what}: {err}")),
        _ => LogError::Other(format!("{what}: {err}")),
    }
}

fn from_consumer(err: &ConsumerError, what: &str) -> LogError {
    match err.kind() {
        ConsumerErrorKind::JetStream(api) => from_api(&api, what),
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => {
            LogError::Unavailable(format!("{what}: {err}"))
        }
        _ => LogError::Other(format!("{what}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": "test"
        }))
        .unwrap()
    }

    #[test]
    fn api_rejections_are_permanent_unless_cluster_is_busy() {
        assert!(matches!(
            from_api(&api(404, code::STREAM_NOT_FOUND), "x"),
            LogError::Other(_)
        ));
        assert!(from_api(&api(503, code::CLUSTER_NOT_AVAILABLE), "x").is_transient());
        assert!(from_api(&api(500, code::CLUSTER_NOT_LEADER), "x").is_transient());
    }

    #[test]
    fn errors_without_api_rejection_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        assert!(from_chain(&io, "x").is_transient());
        let wrapped = async_nats::jetstream::context::PublishError::with_source(
            PublishErrorKind::Other,
            api(400, code::STREAM_WRONG_LAST_SEQUENCE),
        );
        assert_eq!(
            api_error_code(&wrapped),
            Some(code::STREAM_WRONG_LAST_SEQUENCE)
        );
    }
}
