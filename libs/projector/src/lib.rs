//! The projector: folds the event log into the SQL views.
//!
//! One loop per stream ([`StreamName::Control`], [`StreamName::Usage`]) reads the log
//! through a durable consumer and applies the events in batches with
//! [`Views::apply_batch_through`], which moves the stream's checkpoint in the same
//! transaction. Deliveries are acknowledged only after that transaction committed, so
//! a crash at any point loses nothing, and a delivery at or below the checkpoint is
//! acknowledged without being applied again.
//!
//! - An event this build cannot decode (unknown type, malformed) is logged with its
//!   sequence and type and skipped; the checkpoint still moves past it. So is an event
//!   the views reject as unrepresentable ([`ViewError::Rejected`]).
//! - Deliveries beyond a gap (a sequence after the next expected one) are nak'ed with a
//!   short delay so they come back after the missing one. If the gap persists, the
//!   projector looks at the log itself: messages removed by retention are skipped with a
//!   loud warning, messages still stored are read directly with [`EventLog::follow`]
//!   (this is what rebuilds a fresh view database behind an existing durable consumer).
//! - While the view database is down, the batch in hand is retried with capped
//!   exponential backoff and nothing is acknowledged.
//! - If the view database comes back with less than it had committed (a crash without
//!   synchronous commit, a failover to a lagging replica, a restore from backup), the
//!   precondition of [`Views::apply_batch_after`] catches it: the projector moves its
//!   checkpoint back and reads the lost events from the log again.
//!
//! The checkpoint of a stream is kept under the stream's log name
//! ([`StreamName::stream_name`], e.g. `SG_USAGE`). The caller runs [`Views::migrate`]
//! before starting the projector.
//!
//! Progress is published on a [`tokio::sync::watch`] channel of [`ProjectorProgress`]
//! (the checkpoint of each stream), for readiness checks and tests.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sg_eventlog::{Delivery, EventLog, LogError, LogMessage, StreamName};
use sg_events::{DecodeError, Envelope};
use sg_views::{ViewError, Views};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings of the projector.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Durable consumers are named `<prefix>-control` and `<prefix>-usage`.
    pub durable_prefix: String,
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// Delay before a delivery that arrived beyond a gap is delivered again.
    pub gap_nak_delay: Duration,
    /// How long a gap (or an idle consumer behind the log) may last before the
    /// projector reads the missing events from the log itself.
    pub gap_timeout: Duration,
    /// How often an idle stream compares its checkpoint with the log's last sequence.
    pub idle_check: Duration,
    /// Longest wait between two attempts of a failed operation.
    pub max_backoff: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            durable_prefix: "sg-projector".to_owned(),
            batch_size: 256,
            gap_nak_delay: Duration::from_millis(250),
            gap_timeout: Duration::from_secs(2),
            idle_check: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl ProjectorConfig {
    /// The durable consumer name used for `stream`.
    pub fn durable_name(&self, stream: StreamName) -> String {
        format!("{}-{}", self.durable_prefix, stream_label(stream))
    }

    fn validate(&self) -> Result<(), ProjectorError> {
        let prefix_ok = !self.durable_prefix.is_empty()
            && self
                .durable_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !prefix_ok {
            return Err(ProjectorError::Config(
                "durable_prefix must be non-empty ASCII letters, digits, '-' or '_'".to_owned(),
            ));
        }
        if self.batch_size == 0 {
            return Err(ProjectorError::Config(
                "batch_size must be at least 1".to_owned(),
            ));
        }
        if self.gap_timeout.is_zero() || self.idle_check.is_zero() {
            return Err(ProjectorError::Config(
                "gap_timeout and idle_check must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The checkpoint of each stream: every event up to it is reflected in the views.
/// It only moves back if the view database lost committed transactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectorProgress {
    pub control_seq: u64,
    pub usage_seq: u64,
}

impl ProjectorProgress {
    pub fn seq(&self, stream: StreamName) -> u64 {
        match stream {
            StreamName::Control => self.control_seq,
            StreamName::Usage => self.usage_seq,
            // Not projected into the views.
            StreamName::Signals | StreamName::Nonces => 0,
        }
    }

    fn set(&mut self, stream: StreamName, seq: u64) -> bool {
        let slot = match stream {
            StreamName::Control => &mut self.control_seq,
            StreamName::Usage => &mut self.usage_seq,
            StreamName::Signals | StreamName::Nonces => return false,
        };
        let changed = *slot != seq;
        *slot = seq;
        changed
    }
}

/// Why the projector stopped on its own. Outages of the log or of the database are not
/// errors: the projector waits them out.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("invalid projector configuration: {0}")]
    Config(String),
    /// The log refused to start a durable consumer for a reason retrying cannot fix.
    #[error("starting a durable consumer: {0}")]
    Log(#[from] LogError),
    /// The projector task ended abnormally.
    #[error("projector task failed: {0}")]
    Task(String),
}

/// Runs the projector until `shutdown` completes. Returns `Ok(())` after a shutdown and
/// an error only for a condition that retrying cannot fix (bad configuration, a durable
/// consumer the log refuses).
pub async fn run(
    log: Arc<dyn EventLog>,
    views: Views,
    config: ProjectorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    let (progress, _) = watch::channel(ProjectorProgress::default());
    run_with_progress(log, views, config, shutdown, progress).await
}

/// Like [`run`], publishing each stream's checkpoint on `progress` as it moves.
pub async fn run_with_progress(
    log: Arc<dyn EventLog>,
    views: Views,
    config: ProjectorConfig,
    shutdown: impl Future<Output = ()>,
    progress: watch::Sender<ProjectorProgress>,
) -> Result<(), ProjectorError> {
    config.validate()?;
    tracing::info!(durable_prefix = %config.durable_prefix, "projector starting");
    let shared = Shared {
        log,
        views,
        config,
        progress,
    };
    let streams = async {
        tokio::try_join!(
            StreamLoop::new(&shared, StreamName::Control).run(),
            StreamLoop::new(&shared, StreamName::Usage).run(),
        )
    };
    tokio::select! {
        result = streams => {
            if let Err(err) = &result {
                tracing::error!(error = %err, "projector stopped");
            }
            result.map(|_| ())
        }
        () = shutdown => {
            tracing::info!("projector stopped");
            Ok(())
        }
    }
}

/// A projector running in its own task.
#[derive(Debug)]
pub struct Projector {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ProjectorError>>,
}

impl Projector {
    /// Spawns the projector on the current Tokio runtime. It stops when
    /// [`Projector::stop`] is called or the handle is dropped. The receiver follows its
    /// progress; it starts at zero and reports each stream's stored checkpoint once
    /// read.
    pub fn start(
        log: Arc<dyn EventLog>,
        views: Views,
        config: ProjectorConfig,
    ) -> (Projector, watch::Receiver<ProjectorProgress>) {
        let (progress, receiver) = watch::channel(ProjectorProgress::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // Either an explicit stop or the handle being dropped.
            let _ = stopped.await;
        };
        let task = tokio::spawn(run_with_progress(log, views, config, shutdown, progress));
        (
            Projector {
                stop: Some(stop),
                task,
            },
            receiver,
        )
    }

    /// Whether the projector has stopped (on its own, or after [`Projector::stop`]).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the projector and waits for it. Events applied but not yet acknowledged
    /// are delivered again on the next start and recognized as applied.
    pub async fn stop(mut self) -> Result<(), ProjectorError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(err) => Err(ProjectorError::Task(err.to_string())),
        }
    }
}

fn stream_label(stream: StreamName) -> &'static str {
    match stream {
        StreamName::Control => "control",
        StreamName::Usage => "usage",
        StreamName::Signals => "signals",
        StreamName::Nonces => "nonces",
    }
}

/// Delay before the `attempt`-th consecutive retry: 100 ms doubling, capped.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    Duration::from_millis(100u64.saturating_mul(1u64 << exp)).min(max)
}

/// How long catching up waits for the next message read from the log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

struct Shared {
    log: Arc<dyn EventLog>,
    views: Views,
    config: ProjectorConfig,
    progress: watch::Sender<ProjectorProgress>,
}

/// A known gap: deliveries beyond `checkpoint + 1` were seen (or the log was seen
/// ahead of an idle consumer) since `since`; `target` is the first sequence known to
/// follow it.
#[derive(Debug, Clone, Copy)]
struct Gap {
    since: Instant,
    target: u64,
    /// Fill it now rather than after [`ProjectorConfig::gap_timeout`].
    urgent: bool,
}

/// How applying a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Committed; the checkpoint moved.
    Committed,
    /// The views had lost events the projector applied earlier; the checkpoint is back
    /// at what the views hold and the missing events must be read again.
    Behind,
}

/// The projection of one stream.
struct StreamLoop<'a> {
    shared: &'a Shared,
    stream: StreamName,
    /// Checkpoint name in the views.
    name: &'static str,
    durable: String,
    checkpoint: u64,
    gap: Option<Gap>,
}

impl<'a> StreamLoop<'a> {
    fn new(shared: &'a Shared, stream: StreamName) -> Self {
        StreamLoop {
            shared,
            stream,
            name: stream.stream_name(),
            durable: shared.config.durable_name(stream),
            checkpoint: 0,
            gap: None,
        }
    }

    fn config(&self) -> &ProjectorConfig {
        &self.shared.config
    }

    async fn run(mut self) -> Result<(), ProjectorError> {
        self.checkpoint = self.read_checkpoint().await;
        self.publish();
        tracing::info!(stream = self.name, checkpoint = self.checkpoint, durable = %self.durable, "projecting stream");
        let mut opened_once = false;
        let mut failures: u32 = 0;
        loop {
            if failures > 0 {
                tokio::time::sleep(backoff(failures, self.config().max_backoff)).await;
            }
            let deliveries = match self
                .shared
                .log
                .consume(
                    self.stream,
                    &self.durable,
                    self.checkpoint.saturating_add(1),
                )
                .await
            {
                Ok(deliveries) => deliveries,
                Err(err) if !err.is_transient() && !opened_once => return Err(err.into()),
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(stream = self.name, error = %err, attempt = failures, "opening the durable consumer failed; retrying");
                    continue;
                }
            };
            opened_once = true;
            let opened_at = Instant::now();
            // A consumer that fails right after opening backs off further each time.
            let next_failures = |failures: u32| {
                if opened_at.elapsed() < Duration::from_secs(10) {
                    failures.saturating_add(1)
                } else {
                    1
                }
            };
            let mut chunks = deliveries.ready_chunks(self.config().batch_size);
            let tick = self.config().idle_check.min(self.config().gap_timeout);
            loop {
                match tokio::time::timeout(tick, chunks.next()).await {
                    Err(_idle) => self.on_idle().await,
                    Ok(None) => {
                        tracing::warn!(stream = self.name, "delivery stream ended; reopening");
                        failures = next_failures(failures);
                        break;
                    }
                    Ok(Some(items)) => {
                        let mut deliveries = Vec::with_capacity(items.len());
                        let mut broken = None;
                        for item in items {
                            match item {
                                Ok(delivery) => deliveries.push(delivery),
                                Err(err) => broken = Some(err),
                            }
                        }
                        self.handle(deliveries).await;
                        if let Some(err) = broken {
                            tracing::error!(stream = self.name, error = %err, "durable consumer failed; reopening");
                            failures = next_failures(failures);
                            break;
                        }
                    }
                }
                if let Some(gap) = self.gap
                    && (gap.urgent || gap.since.elapsed() >= self.config().gap_timeout)
                {
                    self.catch_up(gap.target).await;
                }
            }
        }
    }

    fn publish(&self) {
        let (stream, seq) = (self.stream, self.checkpoint);
        self.shared
            .progress
            .send_if_modified(|progress| progress.set(stream, seq));
    }

    /// The stored checkpoint, waiting for the database if needed.
    async fn read_checkpoint(&self) -> u64 {
        let mut attempt: u32 = 0;
        loop {
            match self.shared.views.checkpoint(self.name).await {
                Ok(seq) => return seq,
                Err(err) => {
                    attempt = attempt.saturating_add(1);
                    log_view_error(self.name, &err, attempt, "reading the checkpoint failed");
                    tokio::time::sleep(backoff(attempt, self.config().max_backoff)).await;
                }
            }
        }
    }

    /// Applies what a chunk of deliveries allows and acknowledges it after the commit.
    async fn handle(&mut self, mut deliveries: Vec<Delivery>) {
        deliveries.sort_by_key(|d| d.message.seq);
        let mut run: Vec<Delivery> = Vec::new();
        let mut through = self.checkpoint;
        for delivery in deliveries {
            let seq = delivery.message.seq;
            if seq <= self.checkpoint {
                // Applied before (a redelivery, or a commit whose acks were lost).
                ack(self.name, &delivery).await;
            } else if seq <= through.saturating_add(1) {
                // Next in line, or a second copy of one already in the run.
                through = through.max(seq);
                run.push(delivery);
            } else {
                nak(self.name, &delivery, self.config().gap_nak_delay).await;
                self.note_gap(seq, false);
            }
        }
        let Some(first) = run.first().map(|d| d.message.seq) else {
            return;
        };
        let events = self.decode(run.iter().map(|d| &d.message));
        match self.apply(events, through).await {
            Applied::Committed => {
                for delivery in &run {
                    ack(self.name, delivery).await;
                }
            }
            Applied::Behind => {
                // Read what the views lost from the log, then take these again.
                for delivery in &run {
                    nak(self.name, delivery, self.config().gap_nak_delay).await;
                }
                self.note_gap(first, true);
            }
        }
    }

    /// Records that the events from `checkpoint + 1` up to `target - 1` are missing.
    fn note_gap(&mut self, target: u64, urgent: bool) {
        let gap = self.gap.get_or_insert(Gap {
            since: Instant::now(),
            target,
            urgent,
        });
        gap.target = gap.target.min(target);
        gap.urgent |= urgent;
    }

    /// Decodes messages in order, skipping (once per sequence) those this build cannot
    /// read.
    fn decode<'m>(&self, messages: impl Iterator<Item = &'m LogMessage>) -> Vec<(u64, Envelope)> {
        let mut events: Vec<(u64, Envelope)> = Vec::new();
        let mut last = 0;
        for message in messages {
            let seq = message.seq;
            if seq == last {
                continue;
            }
            last = seq;
            match sg_events::decode(&message.payload) {
                Ok(envelope) => events.push((seq, envelope)),
                Err(DecodeError::UnknownType { type_name, version }) => {
                    tracing::warn!(stream = self.name, seq, event_type = %type_name, version, "skipping an event of a type this build does not know");
                }
                Err(DecodeError::Data {
                    type_name, version, ..
                }) => {
                    tracing::error!(stream = self.name, seq, event_type = %type_name, version, "skipping a malformed event");
                }
                Err(DecodeError::Envelope(_)) => {
                    tracing::error!(stream = self.name, seq, subject = %message.subject, "skipping a message that is not an event envelope");
                }
            }
        }
        events
    }

    /// Applies `events` and moves the checkpoint to `through`, retrying until the
    /// database takes it.
    async fn apply(&mut self, mut events: Vec<(u64, Envelope)>, through: u64) -> Applied {
        let mut attempt: u32 = 0;
        loop {
            match self
                .shared
                .views
                .apply_batch_after(self.name, self.checkpoint, &events, through)
                .await
            {
                Ok(checkpoint) => {
                    if attempt > 0 {
                        tracing::info!(stream = self.name, checkpoint, "views writable again");
                    }
                    if checkpoint > self.checkpoint {
                        self.checkpoint = checkpoint;
                        if self
                            .gap
                            .is_some_and(|gap| gap.target <= checkpoint.saturating_add(1))
                        {
                            self.gap = None;
                        }
                        self.publish();
                    }
                    return Applied::Committed;
                }
                Err(ViewError::CheckpointBehind { stored, expected }) => {
                    tracing::warn!(
                        stream = self.name,
                        stored_checkpoint = stored,
                        applied_checkpoint = expected,
                        "the views lost events they had committed (database crashed, failed over or restored); projecting them again"
                    );
                    self.checkpoint = stored;
                    self.publish();
                    return Applied::Behind;
                }
                Err(ViewError::Rejected { seq, reason })
                    if events.iter().any(|(s, _)| *s == seq) =>
                {
                    let event_type = events
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map_or("", |(_, e)| e.event.type_name());
                    tracing::error!(stream = self.name, seq, event_type, reason = %reason, "skipping an event the views cannot hold");
                    events.retain(|(s, _)| *s != seq);
                }
                Err(err) => {
                    attempt = attempt.saturating_add(1);
                    log_view_error(self.name, &err, attempt, "applying events failed; retrying");
                    tokio::time::sleep(backoff(attempt, self.config().max_backoff)).await;
                }
            }
        }
    }

    /// Nothing was delivered for a while: if the log holds more than the views, treat
    /// it as a gap (the durable consumer may be ahead of a fresh view database).
    ///
    /// Also checks that the views still hold what was committed, so that a loss is
    /// repaired even if no further event arrives.
    async fn on_idle(&mut self) {
        match self.shared.views.checkpoint(self.name).await {
            Ok(stored) if stored < self.checkpoint => {
                tracing::warn!(
                    stream = self.name,
                    stored_checkpoint = stored,
                    applied_checkpoint = self.checkpoint,
                    "the views lost events they had committed (database crashed, failed over or restored); projecting them again"
                );
                let target = self.checkpoint.saturating_add(1);
                self.checkpoint = stored;
                self.publish();
                self.note_gap(target, true);
                return;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(stream = self.name, error = %err, "reading the checkpoint failed");
            }
        }
        if self.gap.is_some() {
            return;
        }
        match self.shared.log.bounds(self.stream).await {
            Ok(bounds) if bounds.last_seq > self.checkpoint => {
                tracing::debug!(
                    stream = self.name,
                    checkpoint = self.checkpoint,
                    last_seq = bounds.last_seq,
                    "idle behind the log"
                );
                self.note_gap(bounds.last_seq.saturating_add(1), false);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(stream = self.name, error = %err, "reading the log bounds failed");
            }
        }
    }

    /// Fills a persistent gap below `target` from the log itself.
    async fn catch_up(&mut self, target: u64) {
        // Whatever happens below, a gap still there is detected again afresh.
        self.gap = None;
        let bounds = match self.shared.log.bounds(self.stream).await {
            Ok(bounds) => bounds,
            Err(err) => {
                tracing::warn!(stream = self.name, error = %err, "reading the log bounds failed; gap not filled yet");
                return;
            }
        };
        let expected = self.checkpoint.saturating_add(1);
        if bounds.first_seq > expected {
            let skip_through = bounds.first_seq - 1;
            tracing::warn!(
                stream = self.name,
                expected_seq = expected,
                first_seq = bounds.first_seq,
                lost = bounds.first_seq - expected,
                "events left the log before they were projected; the views miss them"
            );
            if self
                .apply(Vec::new(), skip_through.min(target.saturating_sub(1)))
                .await
                == Applied::Behind
            {
                self.note_gap(target, true);
                return;
            }
        }
        let target = target.min(bounds.last_seq.saturating_add(1));
        if self.checkpoint.saturating_add(1) >= target {
            return;
        }
        tracing::info!(
            stream = self.name,
            from_seq = self.checkpoint + 1,
            to_seq = target - 1,
            "reading events the durable consumer did not deliver"
        );
        let follow = match self
            .shared
            .log
            .follow(self.stream, self.checkpoint.saturating_add(1))
            .await
        {
            Ok(follow) => follow,
            Err(err) => {
                tracing::warn!(stream = self.name, error = %err, "reading the log failed; gap not filled yet");
                return;
            }
        };
        let mut chunks = follow.ready_chunks(self.config().batch_size);
        while self.checkpoint.saturating_add(1) < target {
            let items = match tokio::time::timeout(CATCH_UP_WAIT, chunks.next()).await {
                Ok(Some(items)) => items,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        stream = self.name,
                        checkpoint = self.checkpoint,
                        "reading the log stalled; gap not filled yet"
                    );
                    break;
                }
            };
            let mut messages: Vec<LogMessage> = Vec::with_capacity(items.len());
            let mut reached = false;
            let mut failed = false;
            for item in items {
                match item {
                    Ok(message) if message.seq < target => messages.push(message),
                    Ok(_) => reached = true,
                    Err(err) => {
                        tracing::warn!(stream = self.name, error = %err, "reading the log failed");
                        failed = true;
                    }
                }
            }
            // The follower yields every stored message in order: the sequences it jumps
            // over are gone from the log, and a message at or past the target means
            // nothing is stored between the last one read and the target.
            let through = if reached {
                target - 1
            } else {
                messages.last().map_or(self.checkpoint, |m| m.seq)
            };
            if through > self.checkpoint {
                let events = self.decode(messages.iter());
                if self.apply(events, through).await == Applied::Behind {
                    self.note_gap(target, true);
                    return;
                }
            }
            if reached || failed {
                break;
            }
        }
    }
}

async fn nak(stream: &str, delivery: &Delivery, delay: Duration) {
    if let Err(err) = delivery.acker.nak(delay).await {
        // Unacknowledged, it comes back after the log's ack wait anyway.
        tracing::debug!(stream, seq = delivery.message.seq, error = %err, "nak failed");
    }
}

async fn ack(stream: &str, delivery: &Delivery) {
    if let Err(err) = delivery.acker.ack().await {
        // The log delivers it again; it is then recognized as applied.
        tracing::debug!(stream, seq = delivery.message.seq, error = %err, "ack failed");
    }
}

fn log_view_error(stream: &str, err: &ViewError, attempt: u32, what: &'static str) {
    if err.is_transient() {
        tracing::warn!(stream, error = %err, attempt, "{what}");
    } else {
        tracing::error!(stream, error = %err, attempt, "{what}");
    }
}
