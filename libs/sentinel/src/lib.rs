//! The sentinel: turns usage and lock-violation signals into key suspensions,
//! cluster-wide, exactly once.
//!
//! It follows the usage and signals streams, feeds every request and lock violation into
//! one [`sg_abuse::Detector`] under the settings of the key's project (the defaults when
//! the project set none), and records each verdict as a `key.suspended` event on the
//! key's control subject. Gateways fold it like any other control event and refuse the
//! key (403 `key_suspended`) until the suspension ends. Every second it writes
//! `key.resumed` (`early: false`) for the suspensions that have ended, and tells the
//! detector about suspensions an owner lifted early.
//!
//! # Start
//!
//! It waits for its replica of the control state, tells the detector which keys are
//! suspended, then replays the usage and signals streams from the first event written
//! within the *horizon* — the longest window any project's rules use (at most a day) —
//! found by binary search ([`first_seq_since`]), so that the windows still open are
//! counted again. Windows are aligned, so a replayed window is the same window.
//!
//! # Exactly once
//!
//! A verdict's id is a function of the key, the rule and the window alone, so a replay,
//! a restarted sentinel or a second sentinel reach the same id for the same detection.
//! Three things keep its suspension from being written twice:
//!
//! 1. The decision ([`decide::suspension`]) skips a verdict whose suspension would already
//!    be over, whose key is unknown, revoked or already suspended, whose id the key's
//!    suspension carries, or whose id the sentinel has seen in a `key.suspended` on the
//!    control stream (it reads the control stream back two horizons at start, and on).
//! 2. The append expects the key's subject sequence as of the state the decision was made
//!    from: if anything was written to the key meanwhile (another sentinel's suspension,
//!    an owner's resume), it fails; the sentinel waits for its replica to reach the
//!    stream's head, decides again and retries (5 times, then on the next tick).
//! 3. The append's message id is `suspend-{verdict id}`: a second append with the same id
//!    is answered as a duplicate and not stored (JetStream: within the control stream's
//!    24 h duplicate window; SQLite: always), so a retried append whose acknowledgement
//!    was lost, or a replayed verdict after an owner's early resume, writes nothing.
//!
//! Ends are written likewise, expecting the key's sequence, under `resume-{verdict id}`.
//!
//! # What is counted
//!
//! Every `usage.recorded` with a client address except those answered 403 (a refusal by
//! the key's locks is counted once, as the violation its `lock.violated` records), and
//! every `lock.violated`. Events that do not decode are skipped with a warning.
#![forbid(unsafe_code)]

pub mod decide;
mod start;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sg_abuse::{Detector, Verdict};
use sg_eventlog::{Append, Appended, Backoff, EventLog, LogError, StreamName};
use sg_events::{Actor, Envelope, Event, KeyId};
use sg_replica::Replica;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use decide::{Recorded, Skip, Suspend, Watch, Write};
pub use start::first_seq_since;

/// The sentinel's settings.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// The name the events it writes carry (`node:<name>`).
    pub node_id: String,
    /// How often ended suspensions are written and the detector synchronised with the
    /// state.
    pub tick: Duration,
    /// How often the detector forgets idle keys.
    pub sweep: Duration,
    /// Attempts at a suspension whose key keeps changing under it, before it waits for
    /// the next tick.
    pub retries: u32,
    /// How long to wait for the replica to reach the control stream's head after a
    /// conflicting write.
    pub catch_up: Duration,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            node_id: "sentinel".to_owned(),
            tick: Duration::from_secs(1),
            sweep: Duration::from_secs(60),
            retries: 5,
            catch_up: Duration::from_secs(5),
        }
    }
}

impl SentinelConfig {
    fn validate(&self) -> Result<(), SentinelError> {
        if self.tick.is_zero() || self.sweep.is_zero() {
            return Err(SentinelError::Config(
                "tick and sweep must be positive".to_owned(),
            ));
        }
        if self.node_id.trim().is_empty() {
            return Err(SentinelError::Config(
                "node_id must not be empty".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Where the sentinel is, for readiness checks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentinelProgress {
    /// It has replayed the usage and signals streams as far as their heads when it
    /// started: what it detects now, it detects live.
    pub ready: bool,
    /// The last sequence read of each stream.
    pub control_seq: u64,
    pub usage_seq: u64,
    pub signals_seq: u64,
    /// Suspensions and ends this sentinel wrote (not counting duplicates).
    pub suspended: u64,
    pub resumed: u64,
}

/// Why the sentinel stopped on its own. Outages of the log are not errors: it waits them
/// out.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("invalid sentinel configuration: {0}")]
    Config(String),
}

/// Runs the sentinel until `shutdown` is cancelled. `replica` follows the same log's
/// control stream (it may be shared with a gateway or an admin API in the process).
pub async fn run(
    log: Arc<dyn EventLog>,
    replica: Replica,
    config: SentinelConfig,
    shutdown: CancellationToken,
) -> Result<(), SentinelError> {
    let (progress, _) = watch::channel(SentinelProgress::default());
    run_with_progress(log, replica, config, shutdown, progress).await
}

/// Like [`run`], publishing its [`SentinelProgress`] on `progress`.
pub async fn run_with_progress(
    log: Arc<dyn EventLog>,
    replica: Replica,
    config: SentinelConfig,
    shutdown: CancellationToken,
    progress: watch::Sender<SentinelProgress>,
) -> Result<(), SentinelError> {
    config.validate()?;
    // The followers stop with the sentinel, however it ends.
    let tasks = shutdown.child_token();
    let _stop_tasks = tasks.clone().drop_guard();
    let (tx, rx) = mpsc::channel(1024);
    let sentinel = Sentinel {
        log,
        replica,
        config,
        tasks,
        tx,
        progress,
        detector: Detector::new(),
        recorded: Recorded::default(),
        watched: HashMap::new(),
        pending: Vec::new(),
        state: Progress::default(),
    };
    tracing::info!("sentinel starting");
    tokio::select! {
        () = sentinel.run(rx) => Ok(()),
        () = shutdown.cancelled() => {
            tracing::info!("sentinel stopped");
            Ok(())
        }
    }
}

/// At most this many verdicts wait for the log to come back; beyond, the oldest are
/// dropped (a storm during an outage still suspends its keys: their later windows fire).
const MAX_PENDING: usize = 10_000;

/// One event read from a stream (`None`: it did not decode).
struct Input {
    stream: StreamName,
    seq: u64,
    env: Option<Envelope>,
}

#[derive(Debug, Default)]
struct Progress {
    /// The control stream's head when the sentinel started: the usage and signals
    /// streams are read once the control stream has been read this far.
    control_head: u64,
    streams_started: bool,
    /// (start, head at start) of the usage and signals streams.
    usage: (u64, u64),
    signals: (u64, u64),
    public: SentinelProgress,
}

struct Sentinel {
    log: Arc<dyn EventLog>,
    replica: Replica,
    config: SentinelConfig,
    tasks: CancellationToken,
    tx: mpsc::Sender<Input>,
    progress: watch::Sender<SentinelProgress>,
    detector: Detector,
    recorded: Recorded,
    /// Keys with a suspension, with the control sequence it was noted at.
    watched: HashMap<KeyId, u64>,
    /// Verdicts the log could not take yet.
    pending: Vec<Verdict>,
    state: Progress,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Sentinel {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        while !self.replica.is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = unix_now();
        let (horizon, suspended) = {
            let state = self.replica.state();
            (
                decide::horizon_seconds(&state),
                decide::keys_with_suspension(&state),
            )
        };
        // The detector learns the suspensions before it sees any event.
        self.watched.extend(suspended.into_iter().map(|k| (k, 0)));
        self.sync_watched(now).await;
        let horizon = i64::try_from(horizon).unwrap_or(i64::MAX);
        let since = now.saturating_sub(horizon);
        let usage_from = self.first_seq(StreamName::Usage, since).await;
        let signals_from = self.first_seq(StreamName::Signals, since).await;
        // A verdict replayed now belongs to a window that ended at most a horizon ago and
        // began at most a horizon before that: its suspension, if written, is younger.
        let control_from = self
            .first_seq(StreamName::Control, since.saturating_sub(horizon))
            .await;
        self.state.control_head = self.head(StreamName::Control).await;
        self.state.usage.0 = usage_from;
        self.state.signals.0 = signals_from;
        self.state.public.control_seq = control_from.saturating_sub(1);
        tracing::info!(
            horizon_seconds = horizon,
            usage_from,
            signals_from,
            control_from,
            suspended = self.watched.len(),
            "sentinel replaying"
        );
        self.spawn_follower(StreamName::Control, control_from);
        if control_from > self.state.control_head {
            self.start_streams().await;
        }
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.handle(input).await,
                    // The sentinel holds a sender: unreachable.
                    None => return,
                },
                _ = tick.tick() => {
                    let now = unix_now();
                    self.sync_watched(now).await;
                    self.retry_pending().await;
                    if last_sweep.elapsed() >= self.config.sweep {
                        last_sweep = tokio::time::Instant::now();
                        let dropped = self.detector.sweep(now);
                        let max = i64::try_from(2 * decide::MAX_HORIZON_SECONDS).unwrap_or(i64::MAX);
                        self.recorded.prune(now.saturating_sub(max));
                        tracing::debug!(dropped, keys = self.detector.len(), "detector swept");
                    }
                }
            }
            self.publish();
        }
    }

    /// Retries a log read until it answers (the sentinel is stopped from outside).
    async fn first_seq(&self, stream: StreamName, since: i64) -> u64 {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            match first_seq_since(&*self.log, stream, since).await {
                Ok(seq) => return seq,
                Err(e) => {
                    tracing::warn!(stream = stream.stream_name(), error = %e, "cannot find where to start reading; retrying");
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
        }
    }

    async fn head(&self, stream: StreamName) -> u64 {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            match self.log.bounds(stream).await {
                Ok(b) => return b.last_seq,
                Err(e) => {
                    tracing::warn!(stream = stream.stream_name(), error = %e, "cannot read the stream's head; retrying");
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
        }
    }

    async fn start_streams(&mut self) {
        self.state.streams_started = true;
        for stream in [StreamName::Usage, StreamName::Signals] {
            let head = self.head(stream).await;
            let from = match stream {
                StreamName::Usage => {
                    self.state.usage.1 = head;
                    self.state.public.usage_seq = self.state.usage.0.saturating_sub(1);
                    self.state.usage.0
                }
                _ => {
                    self.state.signals.1 = head;
                    self.state.public.signals_seq = self.state.signals.0.saturating_sub(1);
                    self.state.signals.0
                }
            };
            self.spawn_follower(stream, from);
        }
        self.publish();
    }

    fn spawn_follower(&self, stream: StreamName, from: u64) {
        tokio::spawn(follow(
            self.log.clone(),
            stream,
            from,
            self.tx.clone(),
            self.tasks.clone(),
        ));
    }

    fn publish(&mut self) {
        let s = &mut self.state;
        s.public.ready = s.streams_started
            && s.public.usage_seq >= s.usage.1
            && s.public.signals_seq >= s.signals.1;
        let public = s.public;
        self.progress.send_if_modified(|p| {
            let changed = *p != public;
            *p = public;
            changed
        });
    }

    async fn handle(&mut self, input: Input) {
        match input.stream {
            StreamName::Control => {
                self.state.public.control_seq = input.seq;
                if let Some(env) = &input.env
                    && let Event::KeySuspended(d) = &env.event
                {
                    self.recorded.note(&d.verdict_id, env.time.unix_timestamp());
                    let seq = self.watched.entry(d.key_id.clone()).or_default();
                    *seq = (*seq).max(input.seq);
                }
                if !self.state.streams_started && input.seq >= self.state.control_head {
                    self.start_streams().await;
                }
            }
            stream => {
                match stream {
                    StreamName::Usage => self.state.public.usage_seq = input.seq,
                    _ => self.state.public.signals_seq = input.seq,
                }
                let Some(env) = input.env else { return };
                let Some((project, observation)) = decide::observation(&env) else {
                    return;
                };
                let settings = decide::settings(&self.replica.state(), project);
                if let Some(verdict) = self.detector.observe(&settings, &observation)
                    && !self.enforce(&verdict).await
                {
                    self.defer(verdict);
                }
            }
        }
    }

    fn defer(&mut self, verdict: Verdict) {
        if self.pending.len() >= MAX_PENDING {
            let dropped = self.pending.remove(0);
            tracing::warn!(key = %dropped.key, rule = %dropped.rule, "too many suspensions waiting for the event log; the oldest is dropped");
        }
        self.pending.push(verdict);
    }

    /// Tries the waiting verdicts again, in order, until one still cannot be written.
    async fn retry_pending(&mut self) {
        let mut waiting = std::mem::take(&mut self.pending).into_iter();
        for verdict in waiting.by_ref() {
            if !self.enforce(&verdict).await {
                self.pending.push(verdict);
                break;
            }
        }
        self.pending.extend(waiting);
    }

    /// Records `verdict` unless it is to be skipped. False: it could not be written now
    /// (the log is down, or the key kept changing); try again later.
    async fn enforce(&mut self, verdict: &Verdict) -> bool {
        for attempt in 0..=self.config.retries {
            let now = unix_now();
            let decision = {
                let state = self.replica.state();
                decide::suspension(&state, &self.recorded, verdict, now)
            };
            let write = match decision {
                Suspend::Skip(skip) => {
                    self.skipped(verdict, skip, now);
                    return true;
                }
                Suspend::Write(write) => write,
            };
            match self.write(*write).await {
                Ok(appended) => {
                    self.recorded.note(&verdict.id, now);
                    if let Ok(key) = verdict.key.parse::<KeyId>() {
                        self.watched.insert(key, appended.seq);
                    }
                    if appended.duplicate {
                        tracing::info!(key = %verdict.key, rule = %verdict.rule, "suspension already recorded");
                    } else {
                        self.state.public.suspended += 1;
                        tracing::info!(
                            key = %verdict.key,
                            rule = %verdict.rule,
                            until = verdict.until,
                            reason = %verdict.reason,
                            seq = appended.seq,
                            "key suspended"
                        );
                    }
                    return true;
                }
                Err(LogError::WrongLastSequence { .. }) => {
                    tracing::debug!(key = %verdict.key, attempt, "key changed while deciding; deciding again");
                    self.catch_up().await;
                }
                Err(e) => {
                    tracing::warn!(key = %verdict.key, rule = %verdict.rule, error = %e, "cannot record a suspension; retrying");
                    return false;
                }
            }
        }
        tracing::warn!(key = %verdict.key, rule = %verdict.rule, "key kept changing; retrying its suspension later");
        false
    }

    /// A verdict not written: the detector, which took the key for suspended until the
    /// verdict's end, believes the state instead.
    fn skipped(&mut self, verdict: &Verdict, skip: Skip, now: i64) {
        let until = decide::suspended_until(&self.replica.state(), &verdict.key, now);
        match until {
            Some(until) => self.detector.suspended(&verdict.key, until),
            None => self.detector.resumed(&verdict.key),
        }
        tracing::debug!(key = %verdict.key, rule = %verdict.rule, ?skip, "verdict not recorded");
    }

    /// Waits (briefly) until the replica has folded the control stream's head.
    async fn catch_up(&self) {
        match self.log.bounds(StreamName::Control).await {
            Ok(b) => {
                if !self
                    .replica
                    .wait_for(b.last_seq, self.config.catch_up)
                    .await
                {
                    tracing::warn!(
                        head = b.last_seq,
                        "replica slow to reach the control stream's head"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the control stream's head"),
        }
    }

    async fn write(&self, write: Write) -> Result<Appended, LogError> {
        let env = Envelope::new(
            write.tenant_id,
            Actor::node(&self.config.node_id),
            write.event,
        );
        self.log
            .append(Append {
                subject: env.subject(),
                payload: sg_events::encode(&env).into(),
                expected_last_subject_seq: Some(write.expected_last_subject_seq),
                msg_id: Some(write.msg_id),
            })
            .await
    }

    /// Brings the detector in line with the state for every watched key, and writes the
    /// ends of the suspensions that are over.
    async fn sync_watched(&mut self, now: i64) {
        if self.watched.is_empty() {
            return;
        }
        let decisions: Vec<(KeyId, Watch)> = {
            let state = self.replica.state();
            self.watched
                .iter()
                .map(|(key, seq)| (key.clone(), decide::watch(&state, key, *seq, now)))
                .collect()
        };
        for (key, decision) in decisions {
            match decision {
                Watch::Pending => {}
                Watch::Suspended { until } => self.detector.suspended(key.as_str(), until),
                Watch::Ended => {
                    self.detector.resumed(key.as_str());
                    self.watched.remove(&key);
                }
                Watch::Due(write) => match self.write(*write).await {
                    Ok(appended) => {
                        self.watched.insert(key.clone(), appended.seq);
                        if !appended.duplicate {
                            self.state.public.resumed += 1;
                            tracing::info!(key = %key, seq = appended.seq, "suspension over; key resumed");
                        }
                    }
                    // Changed meanwhile: the next tick decides from the newer state.
                    Err(LogError::WrongLastSequence { .. }) => {}
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "cannot record the end of a suspension; retrying")
                    }
                },
            }
        }
    }
}

/// Reads `stream` from `from` on, forever, handing each event to the sentinel; reopens
/// the read after an error, from the event after the last one handed over.
async fn follow(
    log: Arc<dyn EventLog>,
    stream: StreamName,
    from: u64,
    tx: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let name = stream.stream_name();
    let mut next = from;
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = log.follow(stream, next) => opened,
        };
        match opened {
            Ok(mut messages) => loop {
                let item = tokio::select! {
                    () = stop.cancelled() => return,
                    item = messages.next() => item,
                };
                match item {
                    Some(Ok(msg)) => {
                        backoff.succeeded();
                        if msg.seq < next {
                            continue;
                        }
                        next = msg.seq.saturating_add(1);
                        let env = match sg_events::decode(&msg.payload) {
                            Ok(env) => Some(env),
                            Err(e) => {
                                tracing::warn!(stream = name, seq = msg.seq, error = %e, "event skipped");
                                None
                            }
                        };
                        let input = Input {
                            stream,
                            seq: msg.seq,
                            env,
                        };
                        if tx.send(input).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(stream = name, error = %e, "reading interrupted; reopening");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "cannot read the stream; retrying")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.failed()) => {}
        }
    }
}
