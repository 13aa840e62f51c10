//! The projector: folds the event log into the SQL views.
//!
//! One loop per stream ([`StreamName::Control`], [`StreamName::Usage`],
//! [`StreamName::Signals`]) reads the log in order from the stream's checkpoint
//! ([`EventLog::follow`]: gap-free, live) and applies the events in batches with
//! [`Views::apply_entries_at`] (with the precondition of [`Views::apply_batch_after`]),
//! which moves the checkpoint in the same transaction. **The checkpoint committed with the views is the only record of
//! progress**: there is no consumer state in the log to reconcile with it, so a crash at
//! any point loses nothing and applies nothing twice — the next start reads from the
//! checkpoint the database holds.
//!
//! - An event this build cannot decode (unknown type, malformed) is logged with its
//!   sequence and type and skipped; the checkpoint still moves past it. So is an event
//!   the views reject as unrepresentable ([`ViewError::Rejected`]). A signal of a type
//!   this build does not know, in a well-formed envelope, is recorded in the audit trail
//!   as it is ([`sg_views::LogEntry::Unknown`]).
//! - Sequences the log no longer holds (removed by retention before they were
//!   projected) are skipped with a loud warning.
//! - While the view database is down, the batch in hand is retried with capped
//!   exponential backoff; while the log is down, the read is reopened likewise.
//! - If the view database comes back with less than it had committed (a crash without
//!   synchronous commit, a failover to a lagging replica, a restore from backup), the
//!   precondition of [`Views::apply_batch_after`] (or the idle check) catches it: the
//!   projector reads the lost events from the log again, from the checkpoint the
//!   database holds.
//!
//! The checkpoint of a stream is kept under the stream's log name
//! ([`StreamName::stream_name`], e.g. `SG_USAGE`). The caller runs [`Views::migrate`]
//! before starting the projector.
//!
//! Progress is published on a [`tokio::sync::watch`] channel of [`ProjectorProgress`]
//! (the checkpoint of each stream), for readiness checks and tests.
//!
//! # The audit trail
//!
//! The views record the trail ([`sg_views::audit`]) as they apply the control and
//! signals streams, in the same transactions. The signals stream is followed like the
//! others, with its own checkpoint; budget signals, which this projector derives and
//! appends there, are recorded when they are read back, so there is one path into the
//! trail. Control events projected before the trail existed are recorded by a backfill
//! ([`Views::audit_backfill`]) that reads the control stream once more, beside the live
//! projection, up to where it had been projected, recording nothing but the trail.
//!
//! # Budget signals
//!
//! The views record the `budget.threshold` and `budget.reset` signals a batch makes due
//! in the batch's own transaction (the `budget_signals` outbox). A third loop appends
//! them to the signals stream after the commit, with the signal's id as the message id,
//! and marks them published once the log acknowledged them. A crash between the commit
//! and the append loses nothing (the next start appends what is still pending); a crash
//! between the append and the mark appends again, which the log's duplicate detection
//! and the signal id (which consumers deduplicate by) absorb. The same loop checks every
//! budget at each UTC midnight (and every [`ProjectorConfig::budget_check`]), so a
//! reset is announced at the period boundary even when no request comes.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sg_eventlog::{Append, Backoff, EventLog, LogError, LogMessage, StreamName};
use sg_events::{DecodeError, Envelope};
use sg_views::{LogEntry, ViewError, Views};
use time::OffsetDateTime;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

/// Settings of the projector.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Events applied in one transaction: a batch stops gathering once it holds this
    /// many (it takes what the log has ready in whole chunks of at most this size, so it
    /// can end up to twice as large).
    pub batch_size: usize,
    /// Longest time a batch that is not full waits for more events before it is applied:
    /// under load, one transaction then serves many events instead of a few. It stops
    /// waiting as soon as nothing arrived for a fifth of it, so a lone event waits
    /// that long only. Zero applies whatever is ready at once.
    pub linger: Duration,
    /// How often an idle stream checks that the views still hold its checkpoint.
    pub idle_check: Duration,
    /// Longest wait between two attempts of a failed operation.
    pub max_backoff: Duration,
    /// How often every budget is checked for signals due with no request to reveal them
    /// (resets at a period boundary); they are also checked at each UTC midnight.
    pub budget_check: Duration,
    /// The time budget signals are derived at (their budgets' current windows).
    pub clock: fn() -> OffsetDateTime,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_size: 2048,
            linger: Duration::from_millis(25),
            idle_check: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
            budget_check: Duration::from_secs(60),
            clock: OffsetDateTime::now_utc,
        }
    }
}

impl ProjectorConfig {
    fn validate(&self) -> Result<(), ProjectorError> {
        if self.batch_size == 0 {
            return Err(ProjectorError::Config(
                "batch_size must be at least 1".to_owned(),
            ));
        }
        if self.idle_check.is_zero() {
            return Err(ProjectorError::Config(
                "idle_check must be positive".to_owned(),
            ));
        }
        if self.budget_check.is_zero() {
            return Err(ProjectorError::Config(
                "budget_check must be positive".to_owned(),
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
    pub signals_seq: u64,
}

impl ProjectorProgress {
    pub fn seq(&self, stream: StreamName) -> u64 {
        match stream {
            StreamName::Control => self.control_seq,
            StreamName::Usage => self.usage_seq,
            StreamName::Signals => self.signals_seq,
            // Not projected into the views.
            StreamName::Nonces | StreamName::Quota => 0,
        }
    }

    fn set(&mut self, stream: StreamName, seq: u64) -> bool {
        let slot = match stream {
            StreamName::Control => &mut self.control_seq,
            StreamName::Usage => &mut self.usage_seq,
            StreamName::Signals => &mut self.signals_seq,
            StreamName::Nonces | StreamName::Quota => return false,
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
    /// The log refused to be read for a reason retrying cannot fix.
    #[error("reading the log: {0}")]
    Log(#[from] LogError),
    /// The projector task ended abnormally.
    #[error("projector task failed: {0}")]
    Task(String),
}

/// Runs the projector until `shutdown` completes. Returns `Ok(())` after a shutdown and
/// an error only for a condition that retrying cannot fix (bad configuration, a stream
/// the log refuses to read).
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
    tracing::info!("projector starting");
    let shared = Shared {
        log,
        views,
        config,
        progress,
        signals: Notify::new(),
    };
    let streams = async {
        tokio::try_join!(
            StreamLoop::new(&shared, StreamName::Control).run(),
            StreamLoop::new(&shared, StreamName::Usage).run(),
            StreamLoop::new(&shared, StreamName::Signals).run(),
            SignalLoop { shared: &shared }.run(),
            AuditBackfill { shared: &shared }.run(),
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

    /// Stops the projector and waits for it. The next start reads on from the
    /// checkpoint the views committed.
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

fn log_view_error(stream: &str, err: &ViewError, attempt: u32, what: &'static str) {
    if err.is_transient() {
        tracing::warn!(stream, error = %err, attempt, "{what}");
    } else {
        tracing::error!(stream, error = %err, attempt, "{what}");
    }
}

struct Shared {
    log: Arc<dyn EventLog>,
    views: Views,
    config: ProjectorConfig,
    progress: watch::Sender<ProjectorProgress>,
    /// Woken after each commit: budget signals may be pending.
    signals: Notify,
}

/// How applying a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Committed; the checkpoint moved.
    Committed,
    /// The views had lost events the projector applied earlier; the checkpoint is back
    /// at what the views hold and the log must be read again from there.
    Behind,
}

/// The projection of one stream.
struct StreamLoop<'a> {
    shared: &'a Shared,
    stream: StreamName,
    /// Checkpoint name in the views.
    name: &'static str,
    checkpoint: u64,
}

impl<'a> StreamLoop<'a> {
    fn new(shared: &'a Shared, stream: StreamName) -> Self {
        StreamLoop {
            shared,
            stream,
            name: stream.stream_name(),
            checkpoint: 0,
        }
    }

    fn config(&self) -> &ProjectorConfig {
        &self.shared.config
    }

    async fn run(mut self) -> Result<(), ProjectorError> {
        self.checkpoint = self.read_checkpoint().await;
        self.publish();
        tracing::info!(
            stream = self.name,
            checkpoint = self.checkpoint,
            "projecting stream"
        );
        let mut opened_once = false;
        let mut backoff = Backoff::new(self.config().max_backoff);
        loop {
            if backoff.failures() > 0 {
                tokio::time::sleep(backoff.failed()).await;
            }
            let from = self.checkpoint.saturating_add(1);
            let messages = match self.shared.log.follow(self.stream, from).await {
                Ok(messages) => messages,
                Err(err) if !err.is_transient() && !opened_once => return Err(err.into()),
                Err(err) => {
                    tracing::warn!(stream = self.name, error = %err, attempt = backoff.failures() + 1, "reading the log failed; retrying");
                    backoff.failed();
                    continue;
                }
            };
            opened_once = true;
            let mut chunks = messages.ready_chunks(self.config().batch_size);
            loop {
                match tokio::time::timeout(self.config().idle_check, chunks.next()).await {
                    Err(_idle) => {
                        if self.views_lost_events().await {
                            break;
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(stream = self.name, "reading the log ended; reopening");
                        backoff.failed();
                        break;
                    }
                    Ok(Some(mut items)) => {
                        let ended = self.linger(&mut chunks, &mut items).await;
                        let mut batch = Vec::with_capacity(items.len());
                        let mut broken = None;
                        for item in items {
                            match item {
                                Ok(message) => batch.push(message),
                                Err(err) => broken = Some(err),
                            }
                        }
                        if self.handle(batch).await == Applied::Behind {
                            break;
                        }
                        backoff.succeeded();
                        if let Some(err) = broken {
                            tracing::error!(stream = self.name, error = %err, "reading the log failed; reopening");
                            backoff.failed();
                            break;
                        }
                        if ended {
                            tracing::warn!(stream = self.name, "reading the log ended; reopening");
                            backoff.failed();
                            break;
                        }
                    }
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
        let mut backoff = Backoff::new(self.config().max_backoff);
        loop {
            match self.shared.views.checkpoint(self.name).await {
                Ok(seq) => return seq,
                Err(err) => {
                    let wait = backoff.failed();
                    log_view_error(
                        self.name,
                        &err,
                        backoff.failures(),
                        "reading the checkpoint failed",
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Applies messages read in order from the checkpoint.
    async fn handle(&mut self, messages: Vec<LogMessage>) -> Applied {
        let Some(last) = messages.last().map(|m| m.seq) else {
            return Applied::Committed;
        };
        let expected = self.checkpoint.saturating_add(1);
        if let Some(first) = messages.first().map(|m| m.seq)
            && first > expected
        {
            // The log yields every message it stores, in order: what it jumps over is gone.
            tracing::warn!(
                stream = self.name,
                expected_seq = expected,
                first_seq = first,
                lost = first - expected,
                "events left the log before they were projected; the views miss them"
            );
        }
        let events = self.decode(messages.iter());
        // One span per batch (OpenTelemetry traces, when on).
        let span = tracing::info_span!(
            target: "sg_trace",
            "projector.batch",
            securegate.stream = self.name,
            securegate.events = events.len(),
            securegate.through_seq = last,
        );
        tracing::Instrument::instrument(self.apply(events, last), span).await
    }

    /// Decodes messages in order, skipping those this build cannot read (but keeping
    /// signals of unknown types for the audit trail).
    fn decode<'m>(&self, messages: impl Iterator<Item = &'m LogMessage>) -> Vec<(u64, LogEntry)> {
        let mut events: Vec<(u64, LogEntry)> = Vec::new();
        for message in messages {
            let seq = message.seq;
            match sg_events::decode(&message.payload) {
                Ok(envelope) => events.push((seq, LogEntry::Event(envelope))),
                Err(DecodeError::UnknownType { type_name, version })
                    if self.stream == StreamName::Signals =>
                {
                    match serde_json::from_slice::<sg_events::RawEnvelope>(&message.payload) {
                        Ok(raw) => {
                            tracing::debug!(stream = self.name, seq, event_type = %type_name, version, "recording a signal of a type this build does not know");
                            events.push((seq, LogEntry::Unknown(raw)));
                        }
                        Err(_) => {
                            tracing::warn!(stream = self.name, seq, event_type = %type_name, version, "skipping an event of a type this build does not know");
                        }
                    }
                }
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
    async fn apply(&mut self, mut events: Vec<(u64, LogEntry)>, through: u64) -> Applied {
        let mut backoff = Backoff::new(self.config().max_backoff);
        loop {
            let now = (self.config().clock)();
            match self
                .shared
                .views
                .apply_entries_at(self.name, Some(self.checkpoint), &events, through, now)
                .await
            {
                Ok(checkpoint) => {
                    // Only control and usage batches can make budget signals due.
                    if self.stream != StreamName::Signals {
                        self.shared.signals.notify_one();
                    }
                    if backoff.failures() > 0 {
                        tracing::info!(stream = self.name, checkpoint, "views writable again");
                    }
                    if checkpoint > self.checkpoint {
                        self.checkpoint = checkpoint;
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
                        .map_or(String::new(), |(_, e)| e.type_name().to_owned());
                    tracing::error!(stream = self.name, seq, event_type, reason = %reason, "skipping an event the views cannot hold");
                    events.retain(|(s, _)| *s != seq);
                }
                Err(err) => {
                    let wait = backoff.failed();
                    log_view_error(
                        self.name,
                        &err,
                        backoff.failures(),
                        "applying events failed; retrying",
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Adds to `items` what arrives within [`ProjectorConfig::linger`], until the batch is
    /// full or nothing came for a fifth of the linger. `true` if the log's stream ended
    /// meanwhile (what was gathered is still applied).
    async fn linger<S, T>(&self, chunks: &mut S, items: &mut Vec<T>) -> bool
    where
        S: futures::Stream<Item = Vec<T>> + Unpin,
    {
        let config = self.config();
        if config.linger.is_zero() {
            return false;
        }
        let until = tokio::time::Instant::now() + config.linger;
        let gap = config.linger / 5;
        while items.len() < config.batch_size {
            let wait = until.min(tokio::time::Instant::now() + gap);
            match tokio::time::timeout_at(wait, chunks.next()).await {
                Ok(Some(more)) => items.extend(more),
                Ok(None) => return true,
                Err(_) => break,
            }
        }
        false
    }

    /// Nothing arrived for a while: checks that the views still hold what was committed,
    /// so a loss is repaired even if no further event arrives. `true`: the log must be
    /// read again from the (older) checkpoint the views hold.
    async fn views_lost_events(&mut self) -> bool {
        match self.shared.views.checkpoint(self.name).await {
            Ok(stored) if stored < self.checkpoint => {
                tracing::warn!(
                    stream = self.name,
                    stored_checkpoint = stored,
                    applied_checkpoint = self.checkpoint,
                    "the views lost events they had committed (database crashed, failed over or restored); projecting them again"
                );
                self.checkpoint = stored;
                self.publish();
                true
            }
            Ok(_) => false,
            Err(err) => {
                tracing::debug!(stream = self.name, error = %err, "reading the checkpoint failed");
                false
            }
        }
    }
}

/// Most budget signals read from the outbox at once.
const SIGNAL_BATCH: u32 = 100;
const DAY: Duration = Duration::from_secs(86_400);

/// Appends the budget signals the views recorded, and checks every budget at period
/// boundaries.
struct SignalLoop<'a> {
    shared: &'a Shared,
}

impl SignalLoop<'_> {
    fn now(&self) -> OffsetDateTime {
        (self.shared.config.clock)()
    }

    /// How long until the next check of every budget: the next UTC midnight (where day
    /// and month budgets renew), or `budget_check`, whichever comes first.
    fn until_next_check(&self) -> Duration {
        let now = self.now();
        let since_midnight = Duration::from_secs(u64::from(now.time().hour()) * 3_600)
            + Duration::from_secs(u64::from(now.time().minute()) * 60)
            + Duration::from_secs(u64::from(now.time().second()))
            + Duration::from_nanos(u64::from(now.time().nanosecond()));
        DAY.saturating_sub(since_midnight)
            .max(Duration::from_millis(1))
            .min(self.shared.config.budget_check)
    }

    async fn run(self) -> Result<(), ProjectorError> {
        let max = self.shared.config.max_backoff;
        let mut backoff = Backoff::new(max);
        // Checked at once on start: boundaries passed while the projector was down.
        let mut check_due = true;
        let mut next_check = tokio::time::Instant::now();
        loop {
            if check_due {
                match self.shared.views.derive_budget_signals(self.now()).await {
                    Ok(new) => {
                        if new > 0 {
                            tracing::info!(new, "budget signals due at a period boundary");
                        }
                        check_due = false;
                        next_check = tokio::time::Instant::now() + self.until_next_check();
                    }
                    Err(err) => {
                        let wait = backoff.failed();
                        log_view_error(
                            "budget signals",
                            &err,
                            backoff.failures(),
                            "checking budgets failed; retrying",
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            if self.publish_pending().await {
                backoff.succeeded();
            } else {
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
            tokio::select! {
                () = self.shared.signals.notified() => {}
                () = tokio::time::sleep_until(next_check) => check_due = true,
            }
        }
    }

    /// Appends every pending signal, oldest first. `false`: something failed (logged);
    /// the rest stays pending.
    async fn publish_pending(&self) -> bool {
        loop {
            let pending = match self.shared.views.pending_budget_signals(SIGNAL_BATCH).await {
                Ok(pending) => pending,
                Err(err) => {
                    log_view_error(
                        "budget signals",
                        &err,
                        1,
                        "reading pending budget signals failed; retrying",
                    );
                    return false;
                }
            };
            if pending.is_empty() {
                return true;
            }
            for signal in pending {
                let append = Append {
                    subject: signal.envelope.subject(),
                    payload: sg_events::encode(&signal.envelope).into(),
                    expected_last_subject_seq: None,
                    msg_id: Some(signal.id.clone()),
                };
                match self.shared.log.append(append).await {
                    Ok(appended) => {
                        tracing::info!(signal = %signal.id, seq = appended.seq, duplicate = appended.duplicate, "budget signal published");
                    }
                    Err(err) => {
                        if err.is_transient() {
                            tracing::warn!(signal = %signal.id, error = %err, "publishing a budget signal failed; retrying");
                        } else {
                            tracing::error!(signal = %signal.id, error = %err, "publishing a budget signal failed; retrying");
                        }
                        return false;
                    }
                }
                if let Err(err) = self
                    .shared
                    .views
                    .budget_signal_published(&signal.id, self.now())
                    .await
                {
                    // Appended again later: the log and the consumers deduplicate it.
                    log_view_error(
                        "budget signals",
                        &err,
                        1,
                        "recording a published budget signal failed; retrying",
                    );
                    return false;
                }
            }
        }
    }
}

/// Records in the audit trail the control events projected before the trail existed:
/// reads the control stream once more, up to where it had been projected then, beside the
/// live projection. Ends once nothing is owed (at once on every later start).
struct AuditBackfill<'a> {
    shared: &'a Shared,
}

impl AuditBackfill<'_> {
    const STREAM: StreamName = StreamName::Control;

    async fn run(self) -> Result<(), ProjectorError> {
        let name = Self::STREAM.stream_name();
        let mut backoff = Backoff::new(self.shared.config.max_backoff);
        let mut announced = false;
        loop {
            let owed = match self.shared.views.audit_backfill(name).await {
                Ok(owed) => owed,
                Err(err) => {
                    let wait = backoff.failed();
                    log_view_error(
                        name,
                        &err,
                        backoff.failures(),
                        "reading the audit backfill failed; retrying",
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let Some((done, through)) = owed else {
                if announced {
                    tracing::info!(stream = name, "audit trail backfilled");
                }
                return Ok(());
            };
            if !announced {
                tracing::info!(
                    stream = name,
                    done,
                    through,
                    "recording the events projected before the audit trail existed"
                );
                announced = true;
            }
            if self.pass(done, through).await {
                backoff.succeeded();
            } else {
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }

    /// Reads from after `done` until the backfill is through. `false`: something failed
    /// (logged); the caller retries from what the views hold.
    async fn pass(&self, done: u64, through: u64) -> bool {
        let name = Self::STREAM.stream_name();
        let log = &self.shared.log;
        // What the log no longer holds (or never held) cannot be read: the backfill ends
        // at its last message.
        let last = match log.bounds(Self::STREAM).await {
            Ok(bounds) => bounds.last_seq,
            Err(err) => {
                tracing::warn!(stream = name, error = %err, "reading the log's bounds failed; retrying");
                return false;
            }
        };
        if last <= done {
            return self.record(Vec::new(), through).await.is_some();
        }
        let messages = match log.follow(Self::STREAM, done.saturating_add(1)).await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(stream = name, error = %err, "reading the log failed; retrying");
                return false;
            }
        };
        let target = through.min(last);
        let mut chunks = messages.ready_chunks(self.shared.config.batch_size);
        while let Some(items) = chunks.next().await {
            let mut events = Vec::with_capacity(items.len());
            let mut upto = None;
            for item in items {
                let message = match item {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(stream = name, error = %err, "reading the log failed; retrying");
                        return false;
                    }
                };
                if message.seq > target {
                    break;
                }
                upto = Some(message.seq);
                // Undecodable events were skipped (and logged) when first projected.
                if let Ok(envelope) = sg_events::decode(&message.payload) {
                    events.push((message.seq, envelope));
                }
            }
            let upto = match upto {
                Some(seq) if seq >= target => through,
                Some(seq) => seq,
                None => through,
            };
            match self.record(events, upto).await {
                None => return false,
                Some(None) => return true,
                Some(Some(_)) => {}
            }
        }
        tracing::warn!(stream = name, "reading the log ended; reopening");
        false
    }

    /// Records `events` and moves the backfill to `upto`, retrying while the views are
    /// unavailable. `None`: gave up (logged); else what is still owed.
    async fn record(
        &self,
        mut events: Vec<(u64, Envelope)>,
        upto: u64,
    ) -> Option<Option<(u64, u64)>> {
        let name = Self::STREAM.stream_name();
        let mut backoff = Backoff::new(self.shared.config.max_backoff);
        loop {
            match self.shared.views.backfill_audit(name, &events, upto).await {
                Ok(owed) => return Some(owed),
                Err(ViewError::Rejected { seq, reason })
                    if events.iter().any(|(s, _)| *s == seq) =>
                {
                    tracing::error!(stream = name, seq, reason = %reason, "skipping an event the audit trail cannot hold");
                    events.retain(|(s, _)| *s != seq);
                }
                Err(err) if err.is_transient() => {
                    let wait = backoff.failed();
                    log_view_error(
                        name,
                        &err,
                        backoff.failures(),
                        "recording the audit backfill failed; retrying",
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(err) => {
                    log_view_error(name, &err, 1, "recording the audit backfill failed");
                    return None;
                }
            }
        }
    }
}
