//! The notifier: tells a project's owners what happened to their keys — by email and
//! signed webhook — once per alert, at least once per channel.
//!
//! It follows the signals stream (lock violations, budget thresholds, and its own
//! `alert.*` records) and the control stream (suspensions and their ends), and makes
//! alerts of them ([`plan::source`]): refusals go through an [`sg_alerts::Grouper`] (the
//! first of each kind on each key per window at once, the rest in one digest per project
//! and window), the others are alerts of their own. Keys about to expire are alerted
//! from the control state.
//!
//! # Once per alert
//!
//! An alert's id is a function of what it is about (project, key, kind, and the window,
//! threshold or suspension it belongs to), so reading the same events again — after a
//! restart — makes the same alert. Raising one appends `alert.raised` with the alert's
//! id as the message id (a retried append is a duplicate the log drops). At start the
//! notifier first reads the signals stream back over its horizon ([`NotifyConfig::horizon`])
//! and learns which alerts were raised and which deliveries ended (`alert.delivered`);
//! only then does it read the events that make alerts, so none is raised twice.
//!
//! # At least once per channel
//!
//! Each raised alert is delivered to each of the project's channels (`email:<address>`,
//! `webhook:<id>`) until it is delivered or given up on ([`sg_alerts::MAX_ATTEMPTS`],
//! with [`sg_alerts::backoff`]); the end is recorded as `alert.delivered` (`ok: false`
//! with the reason when given up on). A delivery in flight when the notifier stops is
//! made again by the next one — a receiver may see it twice, and deduplicates by the
//! alert id (`webhook-id`, the email's `Message-ID`). With several notifiers, the one
//! whose `alert.raised` the log stored (not as a duplicate) delivers it. Deliveries run apart from the
//! reading, so a dead SMTP server or webhook slows neither the notifier nor anything on
//! the request path.
#![forbid(unsafe_code)]

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sg_alerts::{
    Alert, Delivery, EmailSender, Grouper, WebhookChannel, WebhookSecret, WebhookSender,
};
use sg_crypto::Kms;
use sg_eventlog::{Append, Backoff, EventLog, StreamName};
use sg_events::{Actor, AlertDeliveredV1, AlertRaisedV1, Envelope, Event};
use sg_replica::Replica;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use plan::{Due, Outbox, Source};

/// The notifier's settings.
#[derive(Clone)]
pub struct NotifyConfig {
    /// The name its events carry (`node:<name>`).
    pub node_id: String,
    /// Sends email; `None`: email channels are recorded as undeliverable.
    pub email: Option<Arc<EmailSender>>,
    pub webhook: WebhookSender,
    /// Opens webhook signing secrets; `None`: webhook channels are recorded as
    /// undeliverable.
    pub kms: Option<Arc<dyn Kms>>,
    /// How long one grouping window lasts.
    pub window: Duration,
    /// How far back the streams are read at start.
    pub horizon: Duration,
    /// Keys expiring within this are alerted.
    pub expiry_notice: Duration,
    /// How often digests, expiring keys and due deliveries are looked at.
    pub tick: Duration,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("node_id", &self.node_id)
            .field("email", &self.email.is_some())
            .field("window", &self.window)
            .field("horizon", &self.horizon)
            .finish_non_exhaustive()
    }
}

impl NotifyConfig {
    /// Defaults: 5-minute windows, a day's horizon, a day's notice of expiry, 1 s ticks.
    pub fn new(
        node_id: impl Into<String>,
        email: Option<Arc<EmailSender>>,
        webhook: WebhookSender,
        kms: Option<Arc<dyn Kms>>,
    ) -> Self {
        NotifyConfig {
            node_id: node_id.into(),
            email,
            webhook,
            kms,
            window: Grouper::DEFAULT_WINDOW,
            horizon: Duration::from_secs(86_400),
            expiry_notice: Duration::from_secs(86_400),
            tick: Duration::from_secs(1),
        }
    }
}

/// How often keys are checked for a coming expiry.
const EXPIRY_SCAN: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Runs the notifier until `shutdown` is cancelled. `replica` follows the same log's
/// control stream.
pub async fn run(
    log: Arc<dyn EventLog>,
    replica: Replica,
    config: NotifyConfig,
    shutdown: CancellationToken,
) {
    let tasks = shutdown.child_token();
    let _stop = tasks.clone().drop_guard();
    let notifier = Notifier {
        grouper: Grouper::new(config.window),
        log,
        replica,
        config,
        outbox: Outbox::default(),
        tasks,
    };
    tokio::select! {
        () = notifier.run() => {}
        () = shutdown.cancelled() => tracing::info!("notifier stopped"),
    }
}

struct Notifier {
    log: Arc<dyn EventLog>,
    replica: Replica,
    config: NotifyConfig,
    grouper: Grouper,
    outbox: Outbox,
    tasks: CancellationToken,
}

/// A delivery's outcome, back from its task.
struct Attempted {
    due: Due,
    outcome: Delivery,
}

impl Notifier {
    async fn run(mut self) {
        while !self.replica.is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let since = unix_now().saturating_sub(secs(self.config.horizon));
        let signals_from = self.first_seq(StreamName::Signals, since).await;
        let control_from = self.first_seq(StreamName::Control, since).await;
        // First what was raised and delivered, then what makes alerts.
        self.learn_outbox(signals_from).await;
        let now = unix_now();
        let raised: Vec<(String, String)> = self
            .outbox
            .alerts()
            .map(|a| (a.id.clone(), a.project_id.clone()))
            .collect();
        for (id, project) in raised {
            let channels = plan::channels(&self.replica.state(), &project);
            self.outbox.schedule(&id, &channels, now);
        }
        tracing::info!(
            signals_from,
            control_from,
            pending = self.outbox.pending(),
            "notifier started"
        );

        let (tx, mut rx) = mpsc::channel::<(u64, Option<Envelope>)>(1024);
        for (stream, from) in [
            (StreamName::Signals, signals_from),
            (StreamName::Control, control_from),
        ] {
            let log = self.log.clone();
            let tx = tx.clone();
            let stop = self.tasks.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = follow(log, stream, from, tx) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        drop(tx);
        let (done_tx, mut done_rx) = mpsc::channel::<Attempted>(256);
        let mut deliveries = JoinSet::new();
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry_scan: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some((_, Some(env))) => self.handle(env).await,
                    Some((seq, None)) => tracing::warn!(seq, "skipping an event this build cannot decode"),
                    None => return,
                },
                Some(done) = done_rx.recv() => self.settle(done).await,
                _ = tick.tick() => {
                    let now = unix_now();
                    for alert in self.grouper.flush(now) {
                        self.raise(alert).await;
                    }
                    if last_expiry_scan.is_none_or(|t| t.elapsed() >= EXPIRY_SCAN) {
                        last_expiry_scan = Some(tokio::time::Instant::now());
                        let expiring = plan::expiring(
                            &self.replica.state(),
                            now,
                            secs(self.config.expiry_notice),
                        );
                        for alert in expiring {
                            self.raise(alert).await;
                        }
                    }
                    for due in self.outbox.take_due(now) {
                        self.deliver(due, &mut deliveries, done_tx.clone());
                    }
                    while deliveries.try_join_next().is_some() {}
                    self.outbox.prune(now.saturating_sub(secs(self.config.horizon)));
                }
            }
        }
    }

    async fn first_seq(&self, stream: StreamName, since: i64) -> u64 {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            match sg_sentinel::first_seq_since(&*self.log, stream, since).await {
                Ok(seq) => return seq,
                Err(e) => {
                    tracing::warn!(stream = stream.stream_name(), error = %e, "cannot find where to start reading; retrying");
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
        }
    }

    /// Reads the signals stream from `from` to its head as it is now, for the alerts
    /// raised and the deliveries ended.
    async fn learn_outbox(&mut self, from: u64) {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let head = loop {
            match self.log.bounds(StreamName::Signals).await {
                Ok(b) => break b.last_seq,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the signals stream's head; retrying");
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
        };
        if head < from {
            return;
        }
        let (tx, mut rx) = mpsc::channel::<(u64, Option<Envelope>)>(1024);
        let reader = tokio::spawn(follow(self.log.clone(), StreamName::Signals, from, tx));
        while let Some((seq, env)) = rx.recv().await {
            if let Some(env) = env {
                self.note_record(&env);
            }
            if seq >= head {
                break;
            }
        }
        reader.abort();
    }

    /// Learns from an `alert.*` record; whether it was one.
    fn note_record(&mut self, env: &Envelope) -> bool {
        match &env.event {
            Event::AlertRaised(r) => {
                match serde_json::from_value::<Alert>(r.alert.clone()) {
                    Ok(alert) => self.outbox.raised(alert),
                    Err(e) => {
                        tracing::warn!(alert = %r.alert_id, error = %e, "an alert.raised this build cannot read")
                    }
                }
                true
            }
            Event::AlertDelivered(d) => {
                self.outbox.finished(&d.alert_id, &d.channel);
                true
            }
            _ => false,
        }
    }

    async fn handle(&mut self, env: Envelope) {
        if self.note_record(&env) {
            return;
        }
        let source = plan::source(&env, &self.replica.state());
        match source {
            Source::Grouped(candidate) => {
                if let Some(alert) = self.grouper.offer(candidate) {
                    self.raise(alert).await;
                }
            }
            Source::Direct(alert) => self.raise(alert).await,
            Source::Nothing => {}
        }
    }

    /// Raises `alert` unless it was: records it, then schedules its deliveries.
    async fn raise(&mut self, alert: Alert) {
        if self.outbox.is_raised(&alert.id) {
            return;
        }
        let Ok(project_id) = alert.project_id.parse::<sg_events::ProjectId>() else {
            return;
        };
        let (tenant, channels) = {
            let state = self.replica.state();
            let Some(project) = state.project(&project_id) else {
                return;
            };
            (
                project.tenant_id.clone(),
                plan::channels(&state, &alert.project_id),
            )
        };
        let record = AlertRaisedV1 {
            alert_id: alert.id.clone(),
            project_id: project_id.clone(),
            key_id: alert.key_id.as_deref().and_then(|k| k.parse().ok()),
            kind: alert.kind.as_str().to_owned(),
            subject: alert.email_subject(),
            alert: serde_json::to_value(&alert).unwrap_or_default(),
        };
        let env = Envelope::new(
            tenant,
            Actor::node(&self.config.node_id),
            Event::AlertRaised(record),
        );
        match self.append(env, alert.id.clone()).await {
            Some(appended) if !appended.duplicate => {
                tracing::info!(alert = %alert.id, kind = alert.kind.as_str(), project = %alert.project_id, "alert raised");
                let id = alert.id.clone();
                self.outbox.raised(alert);
                self.outbox.schedule(&id, &channels, unix_now());
            }
            // Raised by another notifier, which delivers it.
            Some(_) => self.outbox.raised(alert),
            None => {}
        }
    }

    /// Appends a record, retrying while the log is away; what the log answered, or
    /// `None` after giving up.
    async fn append(&self, env: Envelope, msg_id: String) -> Option<sg_eventlog::Appended> {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        for _ in 0..20 {
            let append = Append {
                subject: env.subject(),
                payload: sg_events::encode(&env).into(),
                expected_last_subject_seq: None,
                msg_id: Some(msg_id.clone()),
            };
            match self.log.append(append).await {
                Ok(appended) => return Some(appended),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record an alert; retrying");
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
        }
        None
    }

    /// Starts one delivery in its own task.
    fn deliver(&self, due: Due, set: &mut JoinSet<()>, done: mpsc::Sender<Attempted>) {
        let Some(alert) = self.outbox.alert(&due.alert_id).cloned() else {
            return;
        };
        let config = self.config.clone();
        let webhook = due
            .channel
            .strip_prefix("webhook:")
            .and_then(|id| self.webhook(&alert.project_id, id));
        set.spawn(async move {
            let attempt = due.attempts + 1;
            let outcome = if let Some(to) = due.channel.strip_prefix("email:") {
                match &config.email {
                    Some(sender) => sender.send(to, &alert, attempt).await,
                    None => Delivery::Failed {
                        reason: "no SMTP server is configured (--smtp-url)".to_owned(),
                    },
                }
            } else {
                match webhook {
                    Some((tenant, project, hook)) => match &config.kms {
                        Some(kms) => match open_webhook(&**kms, &tenant, &project, &hook).await {
                            Ok(channel) => config.webhook.send(&channel, &alert, attempt).await,
                            Err(reason) => Delivery::after_failure(attempt, false, reason),
                        },
                        None => Delivery::Failed {
                            reason: "no KMS is configured to open the webhook's signing secret"
                                .to_owned(),
                        },
                    },
                    None => Delivery::Failed {
                        reason: "the webhook is no longer configured".to_owned(),
                    },
                }
            };
            let _ = done
                .send(Attempted {
                    due: Due {
                        attempts: attempt,
                        ..due
                    },
                    outcome,
                })
                .await;
        });
    }

    fn webhook(
        &self,
        project: &str,
        id: &str,
    ) -> Option<(
        sg_events::TenantId,
        sg_events::ProjectId,
        sg_events::WebhookData,
    )> {
        let project: sg_events::ProjectId = project.parse().ok()?;
        let state = self.replica.state();
        let p = state.project(&project)?;
        let hook = p.alerts.webhooks.iter().find(|w| w.id == id)?.clone();
        Some((p.tenant_id.clone(), project, hook))
    }

    /// Records a delivery's end, or schedules its next attempt.
    async fn settle(&mut self, done: Attempted) {
        let Attempted { due, outcome } = done;
        let (ok, reason) = match outcome {
            Delivery::Delivered => (true, None),
            Delivery::Failed { reason } => (false, Some(reason)),
            Delivery::Retry { after, reason } => {
                tracing::info!(alert = %due.alert_id, channel = %due.channel, attempts = due.attempts, %reason, "alert delivery will be retried");
                let at = unix_now().saturating_add(secs(after).max(1));
                self.outbox.retry(due, at);
                return;
            }
        };
        let Some(alert) = self.outbox.alert(&due.alert_id).cloned() else {
            return;
        };
        let Ok(project_id) = alert.project_id.parse::<sg_events::ProjectId>() else {
            return;
        };
        let Some(tenant) = self
            .replica
            .state()
            .project(&project_id)
            .map(|p| p.tenant_id.clone())
        else {
            return;
        };
        if !ok {
            tracing::warn!(alert = %due.alert_id, channel = %due.channel, reason = reason.as_deref().unwrap_or(""), "alert undeliverable");
        }
        let env = Envelope::new(
            tenant,
            Actor::node(&self.config.node_id),
            Event::AlertDelivered(AlertDeliveredV1 {
                alert_id: due.alert_id.clone(),
                project_id,
                channel: due.channel.clone(),
                ok,
                attempts: due.attempts,
                reason,
            }),
        );
        let msg_id = format!("{}-{}", due.alert_id, channel_token(&due.channel));
        if self.append(env, msg_id).await.is_some() {
            self.outbox.finished(&due.alert_id, &due.channel);
        } else {
            self.outbox.retry(due, unix_now().saturating_add(5));
        }
    }
}

/// A message-id-safe token for a channel name (addresses may hold any printable
/// character; the log refuses whitespace).
fn channel_token(channel: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(channel.as_bytes())[..8])
}

async fn open_webhook(
    kms: &dyn Kms,
    tenant: &sg_events::TenantId,
    project: &sg_events::ProjectId,
    hook: &sg_events::WebhookData,
) -> Result<WebhookChannel, String> {
    let context = sg_events::webhook_encryption_context(tenant, project, &hook.id);
    let secret = sg_crypto::open(kms, &context, &hook.secret.clone().into())
        .await
        .map_err(|e| format!("the webhook secret cannot be opened: {e}"))?;
    let secret = WebhookSecret::parse(secret.expose())
        .map_err(|e| format!("the webhook secret is malformed: {e}"))?;
    Ok(WebhookChannel {
        id: hook.id.clone(),
        url: hook.url.clone(),
        secret,
    })
}

/// Follows `stream` from `from`, sending each message's sequence and envelope (`None`:
/// it does not decode), reopening after errors, until the receiver is gone.
async fn follow(
    log: Arc<dyn EventLog>,
    stream: StreamName,
    mut from: u64,
    tx: mpsc::Sender<(u64, Option<Envelope>)>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        match log.follow(stream, from).await {
            Ok(mut messages) => {
                while let Some(item) = messages.next().await {
                    match item {
                        Ok(msg) => {
                            backoff.succeeded();
                            from = msg.seq + 1;
                            let env = sg_events::decode(&msg.payload).ok();
                            if tx.send((msg.seq, env)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(stream = stream.stream_name(), error = %e, "reading the stream failed; reopening");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(stream = stream.stream_name(), error = %e, "cannot read the stream; retrying");
            }
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}
