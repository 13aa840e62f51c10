//! The projector against real logs and real databases: the SQLite log with SQLite
//! views, and a private nats-server with a private PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use sg_eventlog::jetstream::{JetStreamLog, JetStreamOptions};
use sg_eventlog::sqlite::SqliteLog;
use sg_eventlog::{Append, EventLog, StreamName};
use sg_events::wire::{BudgetData, PeriodData};
use sg_events::{
    Actor, ConnectionCreatedV3, ConnectionId, Envelope, Event, KeyId, KeyIssuedV1, KeyLimitsSetV1,
    KeySuspendedV1, LimitsData, LockViolatedV1, ProjectCreatedV1, ProjectId, ProjectLimitsSetV1,
    Provider, SealedKey, TenantCreatedV2, TenantId, UsageRecordedV4,
};
use sg_projector::{Projector, ProjectorConfig, ProjectorError, ProjectorProgress};
use sg_testkit::{NatsServer, PostgresServer};
use sg_views::{AuditEvent, AuditFilter, GroupBy, UsageScope, UsageStats, Views, ViewsConfig};
use tempfile::TempDir;
use tokio::sync::watch;
use uuid::Uuid;

/// Bound of every wait for the projector to catch up.
const WAIT: Duration = Duration::from_secs(60);

// ---- environments -------------------------------------------------------------------

struct Env {
    log: Arc<dyn EventLog>,
    dir: TempDir,
    pg: Option<PostgresServer>,
    _nats: Option<NatsServer>,
    databases: u32,
}

impl Env {
    async fn sqlite() -> Result<Env> {
        let dir = tempfile::tempdir()?;
        let log = SqliteLog::open(&dir.path().join("log.db")).await?;
        Ok(Env {
            log: Arc::new(log),
            dir,
            pg: None,
            _nats: None,
            databases: 0,
        })
    }

    async fn cluster() -> Result<Env> {
        let (nats, pg) = tokio::try_join!(NatsServer::start(), PostgresServer::start())?;
        let log = JetStreamLog::connect(&nats.url(), JetStreamOptions::default()).await?;
        Ok(Env {
            log: Arc::new(log),
            dir: tempfile::tempdir()?,
            pg: Some(pg),
            _nats: Some(nats),
            databases: 0,
        })
    }

    /// A fresh, migrated view database: on the private PostgreSQL if there is one,
    /// else a new SQLite file.
    async fn new_views(&mut self) -> Result<Views> {
        Ok(self.new_views_at().await?.0)
    }

    /// [`Env::new_views`], with the database URL.
    async fn new_views_at(&mut self) -> Result<(Views, String)> {
        self.databases += 1;
        let url = match &self.pg {
            Some(pg) => {
                pg.create_database(&format!("views_{}", self.databases))
                    .await?
            }
            None => format!(
                "sqlite://{}?mode=rwc",
                self.dir
                    .path()
                    .join(format!("views_{}.db", self.databases))
                    .display()
            ),
        };
        let views = Views::connect_with(
            &url,
            ViewsConfig {
                acquire_timeout: Duration::from_secs(2),
                ..ViewsConfig::default()
            },
        )
        .await?;
        views.migrate().await?;
        Ok((views, url))
    }

    async fn append(&self, env: &Envelope) -> Result<u64> {
        let appended = self
            .log
            .append(Append {
                subject: env.subject(),
                payload: Bytes::from(sg_events::encode(env)),
                expected_last_subject_seq: None,
                msg_id: Some(env.id.to_string()),
            })
            .await?;
        ensure!(!appended.duplicate, "append was deduplicated");
        Ok(appended.seq)
    }

    async fn append_raw(&self, subject: String, payload: impl Into<Bytes>) -> Result<u64> {
        Ok(self
            .log
            .append(Append {
                subject,
                payload: payload.into(),
                expected_last_subject_seq: None,
                msg_id: Some(Uuid::now_v7().to_string()),
            })
            .await?
            .seq)
    }
}

fn config() -> ProjectorConfig {
    ProjectorConfig {
        batch_size: 4,
        idle_check: Duration::from_millis(300),
        max_backoff: Duration::from_millis(500),
        budget_check: Duration::from_millis(200),
        ..ProjectorConfig::default()
    }
}

/// Waits until both checkpoints reach the given sequences.
async fn reach(
    progress: &mut watch::Receiver<ProjectorProgress>,
    control: u64,
    usage: u64,
) -> Result<()> {
    let reached = tokio::time::timeout(
        WAIT,
        progress.wait_for(|p| p.control_seq >= control && p.usage_seq >= usage),
    )
    .await
    .map(|r| r.map(|_| ()));
    match reached {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => bail!("projector stopped before reaching {control}/{usage}"),
        Err(_) => bail!(
            "projector stuck at {:?}, expected control {control} usage {usage}",
            *progress.borrow()
        ),
    }
}

// ---- fixtures -----------------------------------------------------------------------

struct World {
    tenant: TenantId,
    project: ProjectId,
    connection: ConnectionId,
    key: KeyId,
    secret: SealedKey,
}

impl World {
    fn new() -> World {
        World {
            tenant: TenantId::generate(),
            project: ProjectId::generate(),
            connection: ConnectionId::generate(Provider::Mock),
            key: KeyId::generate(),
            secret: SealedKey {
                v: 1,
                kms: "local".into(),
                kek_id: "kek-test".into(),
                wrapped_key: "V1JBUFBFRC1LRVk=".into(),
                nonce: "Tk9OQ0U=".into(),
                ciphertext: "U0VBTEVELVNFQ1JFVC1NQVJLRVI=".into(),
            },
        }
    }

    fn env(&self, event: Event) -> Envelope {
        Envelope::new(self.tenant.clone(), Actor::operator(), event)
    }

    fn control(&self) -> Vec<Envelope> {
        vec![
            self.env(Event::TenantCreated(TenantCreatedV2 {
                plan: None,
                name: "Acme".into(),
            })),
            self.env(Event::ProjectCreated(ProjectCreatedV1 {
                project_id: self.project.clone(),
                name: "chatbot".into(),
            })),
            self.env(Event::ConnectionCreated(ConnectionCreatedV3 {
                connection_id: self.connection.clone(),
                project_id: self.project.clone(),
                provider: Provider::Mock,
                name: "mock".into(),
                base_url: None,
                api_key: self.secret.clone(),
                openai_organization: None,
                openai_project: None,
                api_version: None,
            })),
            self.env(Event::KeyIssued(
                KeyIssuedV1 {
                    key_id: self.key.clone(),
                    project_id: self.project.clone(),
                    name: "backend".into(),
                    key_hash: "ef".repeat(32),
                    hint: "SG_…abcd".into(),
                    connection_ids: vec![self.connection.clone()],
                    allowed_models: None,
                }
                .into(),
            )),
        ]
    }

    /// A request with `tokens` total tokens, failed if `status` >= 400.
    fn usage(&self, status: u16, tokens: u64) -> Envelope {
        Envelope::new(
            self.tenant.clone(),
            Actor::node("node-a"),
            Event::UsageRecorded(UsageRecordedV4 {
                request_id: Uuid::now_v7(),
                project_id: self.project.clone(),
                key_id: self.key.clone(),
                connection_id: Some(self.connection.clone()),
                provider: Some(Provider::Mock),
                model: Some("mock-1".into()),
                endpoint: "/v1/chat/completions".into(),
                status,
                streamed: false,
                prompt_tokens: tokens,
                cached_prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: tokens,
                cost_micros: tokens,
                priced: true,
                request_bytes: 0,
                response_bytes: 0,
                latency_us: 1_000,
                started_at: time::OffsetDateTime::now_utc(),
                node: "node-a".into(),
                client_ip: None,
                country: None,
            }),
        )
    }

    fn usage_subject(&self) -> String {
        format!("sg.usage.{}.{}", self.tenant, self.project)
    }
}

/// The same request stored again under a new envelope (and so a new message id).
fn reappended(env: &Envelope) -> Envelope {
    let mut copy = env.clone();
    copy.id = Uuid::now_v7();
    copy
}

/// Every hour of usage of a project or key.
async fn totals(views: &Views, scope: UsageScope<'_>) -> Result<UsageStats, sg_views::ViewError> {
    let to = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    Ok(views
        .usage_report(scope, time::OffsetDateTime::UNIX_EPOCH, to, GroupBy::Key)
        .await?
        .totals)
}

/// Checks the project's usage counters.
async fn expect_usage(
    views: &Views,
    w: &World,
    requests: u64,
    errors: u64,
    tokens: u64,
) -> Result<()> {
    let project = totals(views, UsageScope::Project(&w.project)).await?;
    ensure!(
        (project.requests, project.errors, project.total_tokens) == (requests, errors, tokens),
        "expected {requests} requests, {errors} errors, {tokens} tokens; got {project:?}"
    );
    let key = totals(views, UsageScope::Key(&w.key)).await?;
    ensure!(
        (key.requests, key.errors, key.total_tokens) == (requests, errors, tokens),
        "key counters {key:?}"
    );
    let recent = views.recent_requests(&w.project, 1000).await?;
    ensure!(
        recent.len() as u64 == requests,
        "{} request rows",
        recent.len()
    );
    Ok(())
}

/// Polls the views until the project counts `requests` and `tokens` and the usage
/// checkpoint is `usage_seq`.
async fn eventually_usage(
    views: &Views,
    w: &World,
    requests: u64,
    tokens: u64,
    usage_seq: u64,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let totals = totals(views, UsageScope::Project(&w.project)).await;
        let checkpoint = views.checkpoint("SG_USAGE").await;
        if let (Ok(totals), Ok(checkpoint)) = (&totals, &checkpoint)
            && totals.requests == requests
            && totals.total_tokens == tokens
            && *checkpoint == usage_seq
        {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "views did not reach {requests} requests / {tokens} tokens at {usage_seq}: {totals:?} at {checkpoint:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dumps_equal(a: &Views, b: &Views) -> Result<()> {
    let (a, b) = (a.dump().await?, b.dump().await?);
    if a != b {
        bail!(
            "views differ:\n{}\n---\n{}",
            serde_json::to_string_pretty(&a)?,
            serde_json::to_string_pretty(&b)?
        );
    }
    Ok(())
}

// ---- the scenario, run on both setups -----------------------------------------------

async fn lifecycle(env: &mut Env) -> Result<()> {
    let w = World::new();
    let views = env.new_views().await?;

    // Events appended before the projector starts are projected.
    let mut control_seq = 0;
    for event in w.control() {
        control_seq = env.append(&event).await?;
    }
    let mut usage_seq = 0;
    for (status, tokens) in [(200, 10), (200, 20), (500, 0)] {
        usage_seq = env.append(&w.usage(status, tokens)).await?;
    }
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach(&mut progress, control_seq, usage_seq).await?;
    ensure!(views.checkpoint("SG_CONTROL").await? == control_seq);
    ensure!(views.checkpoint("SG_USAGE").await? == usage_seq);
    let project = views.get_project(&w.project).await?.context("project")?;
    ensure!(project.tenant_id == w.tenant);
    let keys = views.list_keys(&w.project).await?;
    ensure!(keys.len() == 1 && keys[0].id == w.key && keys[0].last_used_at.is_some());
    expect_usage(&views, &w, 3, 1, 30).await?;

    // Live events, the same request stored twice under different message ids, and
    // messages this build cannot read: each request counts once, the rest is skipped.
    let repeated = w.usage(200, 5);
    env.append(&repeated).await?;
    env.append(&reappended(&repeated)).await?;
    env.append_raw(w.usage_subject(), &b"not an event"[..])
        .await?;
    let unknown = format!(
        r#"{{"id":"{}","type":"key.teleported","version":9,"tenant_id":"{}","aggregate_id":"{}","time":"2026-01-01T00:00:00Z","actor":"operator","data":{{}}}}"#,
        Uuid::now_v7(),
        w.tenant,
        w.key
    );
    control_seq = env
        .append_raw(format!("sg.control.{}.key.{}", w.tenant, w.key), unknown)
        .await?;
    usage_seq = env.append(&w.usage(404, 1)).await?;
    reach(&mut progress, control_seq, usage_seq).await?;
    expect_usage(&views, &w, 5, 2, 36).await?;

    // Restart: stopped, more events arrive, started again. Nothing counts twice.
    projector.stop().await?;
    for _ in 0..6 {
        usage_seq = env.append(&w.usage(200, 100)).await?;
    }
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach(&mut progress, control_seq, usage_seq).await?;
    expect_usage(&views, &w, 11, 2, 636).await?;

    // The view database goes away mid-run and comes back: nothing is lost or doubled.
    if let Some(mut pg) = env.pg.take() {
        pg.stop().await;
        for _ in 0..5 {
            usage_seq = env.append(&w.usage(200, 1_000)).await?;
        }
        let before = progress.borrow().usage_seq;
        let moved = tokio::time::timeout(
            Duration::from_secs(2),
            progress.wait_for(|p| p.usage_seq > before),
        )
        .await
        .is_ok();
        ensure!(!moved, "progress moved while the database was down");
        pg.restart().await?;
        env.pg = Some(pg);
        reach(&mut progress, control_seq, usage_seq).await?;
        expect_usage(&views, &w, 16, 2, 5_636).await?;
        // What was applied before the outage is not applied again.
        usage_seq = env.append(&w.usage(200, 1)).await?;
        reach(&mut progress, control_seq, usage_seq).await?;
        expect_usage(&views, &w, 17, 2, 5_637).await?;

        // A crash right after a burst (the private server does not commit
        // synchronously, so the last commits may be lost): still exactly once.
        let mut pg = env.pg.take().context("postgres")?;
        for _ in 0..5 {
            env.append(&w.usage(200, 10_000)).await?;
        }
        pg.crash().await;
        pg.restart().await?;
        env.pg = Some(pg);
        usage_seq = env.append(&w.usage(200, 1)).await?;
        eventually_usage(&views, &w, 23, 55_638, usage_seq).await?;
        expect_usage(&views, &w, 23, 2, 55_638).await?;
    }
    ensure!(!projector.is_finished());

    // Rebuild into a fresh view database, twice: while the live projector runs, and once
    // it stopped. The position is the checkpoint in the views alone, so a fresh database
    // reads the whole log; both end equal to the live views.
    let fresh = env.new_views().await?;
    let (rebuilder, mut rebuilt) = Projector::start(env.log.clone(), fresh.clone(), config());
    reach(&mut rebuilt, control_seq, usage_seq).await?;
    dumps_equal(&views, &fresh).await?;
    rebuilder.stop().await?;

    projector.stop().await?;
    let fresh = env.new_views().await?;
    let (rebuilder, mut rebuilt) = Projector::start(env.log.clone(), fresh.clone(), config());
    reach(&mut rebuilt, control_seq, usage_seq).await?;
    dumps_equal(&views, &fresh).await?;
    rebuilder.stop().await?;

    // No secret reaches the views.
    let dump = views.dump().await?.to_string();
    ensure!(!dump.contains(&w.secret.ciphertext) && !dump.contains(&"ef".repeat(32)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_with_sqlite_views() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::sqlite().await?;
    tokio::time::timeout(Duration::from_secs(300), lifecycle(&mut env)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_with_postgres_views() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::cluster().await?;
    tokio::time::timeout(Duration::from_secs(300), lifecycle(&mut env)).await?
}

/// Usage events removed by retention before they were projected are skipped (with a
/// warning) instead of blocking the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_gone_from_the_log_are_skipped() -> Result<()> {
    sg_testkit::init_tracing();
    let nats = NatsServer::start().await?;
    let log = JetStreamLog::connect(&nats.url(), JetStreamOptions::default()).await?;
    let mut env = Env {
        log: Arc::new(log.clone()),
        dir: tempfile::tempdir()?,
        pg: None,
        _nats: None,
        databases: 0,
    };
    let w = World::new();
    let mut last = 0;
    for tokens in 1..=6 {
        last = env.append(&w.usage(200, tokens)).await?;
    }
    ensure!(last == 6);
    // Messages 1..=3 age out.
    let js = async_nats::jetstream::new(log.client().clone());
    let mut stream = js.get_stream(StreamName::Usage.stream_name()).await?;
    stream.purge().sequence(4).await?;
    ensure!(stream.info().await?.state.first_sequence == 4);

    let views = env.new_views().await?;
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach(&mut progress, 0, 6).await?;
    // Only 4, 5 and 6 were there to count.
    expect_usage(&views, &w, 3, 0, 4 + 5 + 6).await?;
    projector.stop().await?;
    drop(nats);
    Ok(())
}

#[tokio::test]
async fn bad_configuration_is_an_error() -> Result<()> {
    let env = Env::sqlite().await?;
    let mut env = env;
    let views = env.new_views().await?;
    for config in [
        ProjectorConfig {
            idle_check: Duration::ZERO,
            ..ProjectorConfig::default()
        },
        ProjectorConfig {
            batch_size: 0,
            ..ProjectorConfig::default()
        },
        ProjectorConfig {
            budget_check: Duration::ZERO,
            ..ProjectorConfig::default()
        },
    ] {
        let result = sg_projector::run(
            env.log.clone(),
            views.clone(),
            config,
            std::future::pending(),
        )
        .await;
        ensure!(
            matches!(result, Err(ProjectorError::Config(_))),
            "{result:?}"
        );
    }
    // A shutdown ends a healthy projector with Ok.
    let result =
        sg_projector::run(env.log.clone(), views, ProjectorConfig::default(), async {}).await;
    ensure!(result.is_ok(), "{result:?}");
    Ok(())
}

/// The view database goes back in time under a running projector (restored from a
/// backup): the projector notices on its next batch and projects the lost events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_that_lost_events_are_repaired() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::sqlite().await?;
    let (views, url) = env.new_views_at().await?;
    let w = World::new();
    let mut control_seq = 0;
    for event in w.control() {
        control_seq = env.append(&event).await?;
    }
    let mut usage_seq = 0;
    for tokens in 1..=5 {
        usage_seq = env.append(&w.usage(200, tokens)).await?;
    }
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach(&mut progress, control_seq, usage_seq).await?;

    // A consistent backup now...
    sqlx::any::install_default_drivers();
    let backup = env.dir.path().join("backup.db");
    let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
    sqlx::query(&format!("VACUUM INTO '{}'", backup.display()))
        .execute(&mut raw)
        .await?;
    // ...more events projected...
    for tokens in 6..=10 {
        usage_seq = env.append(&w.usage(200, tokens)).await?;
    }
    reach(&mut progress, control_seq, usage_seq).await?;
    expect_usage(&views, &w, 10, 0, 55).await?;
    // ...and the backup restored in place while the projector runs.
    let tables = [
        "audit_events",
        "tenants",
        "projects",
        "connections",
        "keys",
        "requests",
        "usage_hourly",
        "usage_minute",
        "spend",
        "limits",
        "budget_signals",
        "projector_checkpoints",
    ];
    let mut restore = format!("ATTACH DATABASE '{}' AS backup; BEGIN;", backup.display());
    for table in tables {
        restore.push_str(&format!(
            " DELETE FROM main.{table}; INSERT INTO main.{table} SELECT * FROM backup.{table};"
        ));
    }
    restore.push_str(" COMMIT; DETACH DATABASE backup;");
    sqlx::raw_sql(&restore).execute(&mut raw).await?;
    <sqlx::AnyConnection as sqlx::Connection>::close(raw).await?;
    expect_usage(&views, &w, 5, 0, 15).await?;

    // The next events reveal the loss; everything ends counted exactly once.
    for tokens in 11..=12 {
        usage_seq = env.append(&w.usage(200, tokens)).await?;
    }
    eventually_usage(&views, &w, 12, 78, usage_seq).await?;
    expect_usage(&views, &w, 12, 0, 78).await?;
    projector.stop().await?;
    Ok(())
}

// ---- budget signals -----------------------------------------------------------------

fn budget(micros: u64, period: PeriodData) -> LimitsData {
    LimitsData {
        budget: Some(BudgetData { micros, period }),
        ..LimitsData::default()
    }
}

impl World {
    /// The project's budget of 100 µ$ in total, and the key's of 50 µ$ in total.
    fn budgets(&self) -> Vec<Envelope> {
        vec![
            self.env(Event::ProjectLimitsSet(ProjectLimitsSetV1 {
                project_id: self.project.clone(),
                limits: budget(100, PeriodData::Total),
            })),
            self.env(Event::KeyLimitsSet(KeyLimitsSetV1 {
                key_id: self.key.clone(),
                project_id: self.project.clone(),
                limits: budget(50, PeriodData::Total),
            })),
        ]
    }

    /// A request costing `cost` µ$, started at `at`.
    fn spending(&self, cost: u64, at: time::OffsetDateTime) -> Envelope {
        let mut env = self.usage(200, 1);
        if let Event::UsageRecorded(d) = &mut env.event {
            d.cost_micros = cost;
            d.started_at = at;
        }
        env
    }

    fn signal_id(&self, key: bool, window: &str, tail: &str) -> String {
        let owner = if key { self.key.as_str() } else { "-" };
        format!("{}:{owner}:{window}{tail}", self.project)
    }
}

/// The ids of every budget signal in the log's signals stream, in log order.
async fn logged_signals(log: &Arc<dyn EventLog>) -> Result<Vec<String>> {
    let bounds = log.bounds(StreamName::Signals).await?;
    let mut ids = Vec::new();
    for seq in bounds.first_seq.max(1)..=bounds.last_seq {
        let Some(message) = log.get(StreamName::Signals, seq).await? else {
            continue;
        };
        match sg_events::decode(&message.payload)?.event {
            Event::BudgetThreshold(d) => ids.push(d.threshold_id),
            Event::BudgetReset(d) => ids.push(d.reset_id),
            other => bail!("unexpected signal {}", other.type_name()),
        }
    }
    Ok(ids)
}

/// Waits until the views hold `expected` budget signals of the project, every one of
/// them acknowledged by the log.
async fn signals_published(views: &Views, w: &World, expected: usize) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let signals = views.budget_signals(&w.project).await;
        if let Ok(signals) = &signals
            && signals.len() == expected
            && signals.iter().all(|(_, published)| *published)
        {
            return Ok(signals.iter().map(|(id, _)| id.clone()).collect());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "budget signals not published: {signals:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Waits until the project's audit trail holds `expected` budget thresholds; their ids.
async fn trail_signals(views: &Views, w: &World, expected: usize) -> Result<Vec<String>> {
    let filter = AuditFilter {
        types: vec!["budget.threshold".into()],
        ..AuditFilter::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = views.audit_events(&w.project, &filter, None, 100).await?;
        if page.data.len() >= expected {
            ensure!(page.data.len() == expected, "{:?}", page.data);
            let ids = page
                .data
                .iter()
                .map(|e| e.data["threshold_id"].as_str().unwrap_or("").to_owned())
                .collect();
            return Ok(sorted(ids));
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "budget signals not in the audit trail: {:?}",
            page.data
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each crossing reaches the signals stream once: through restarts and a rebuild of the
/// views (which derives the same ids again).
async fn budget_signals_reach_the_log_once(env: &mut Env) -> Result<()> {
    let w = World::new();
    let views = env.new_views().await?;
    let mut control_seq = 0;
    for event in w.control().into_iter().chain(w.budgets()) {
        control_seq = env.append(&event).await?;
    }
    let now = time::OffsetDateTime::now_utc();
    let mut usage_seq = 0;
    // 30, 60, 90 µ$ for the project (50 for the key: 60 %, 120 %, ...).
    for _ in 0..3 {
        usage_seq = env.append(&w.spending(30, now)).await?;
    }
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach(&mut progress, control_seq, usage_seq).await?;
    let expected = sorted(vec![
        w.signal_id(false, "total", ":50:100"),
        w.signal_id(false, "total", ":80:100"),
        w.signal_id(true, "total", ":50:50"),
        w.signal_id(true, "total", ":80:50"),
        w.signal_id(true, "total", ":100:50"),
    ]);
    ensure!(sorted(signals_published(&views, &w, 5).await?) == expected);
    ensure!(sorted(logged_signals(&env.log).await?) == expected);
    // Read back from the signals stream into the audit trail, once each.
    ensure!(trail_signals(&views, &w, 5).await? == expected);

    // Restarted, then the project's budget is exhausted: one more signal, once.
    projector.stop().await?;
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    usage_seq = env.append(&w.spending(15, now)).await?;
    reach(&mut progress, control_seq, usage_seq).await?;
    let mut expected = expected;
    expected.push(w.signal_id(false, "total", ":100:100"));
    let expected = sorted(expected);
    ensure!(sorted(signals_published(&views, &w, 6).await?) == expected);
    ensure!(sorted(logged_signals(&env.log).await?) == expected);
    ensure!(trail_signals(&views, &w, 6).await? == expected);

    // A rebuild derives the same ids; appending them again adds nothing to the log.
    let fresh = env.new_views().await?;
    let (rebuilder, mut rebuilt) = Projector::start(env.log.clone(), fresh.clone(), config());
    reach(&mut rebuilt, control_seq, usage_seq).await?;
    ensure!(sorted(signals_published(&fresh, &w, 6).await?) == expected);
    ensure!(sorted(logged_signals(&env.log).await?) == expected);
    ensure!(trail_signals(&fresh, &w, 6).await? == expected);
    rebuilder.stop().await?;
    projector.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_signals_once_on_sqlite() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::sqlite().await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        budget_signals_reach_the_log_once(&mut env),
    )
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_signals_once_on_jetstream_and_postgres() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::cluster().await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        budget_signals_reach_the_log_once(&mut env),
    )
    .await?
}

/// A projector that committed views with budget signals and died before appending them
/// (or after appending one, before recording it): the next start appends what is
/// pending, and the log holds each signal once.
async fn a_crash_between_commit_and_publish_loses_nothing(env: &mut Env) -> Result<()> {
    let w = World::new();
    let views = env.new_views().await?;
    let mut control = Vec::new();
    for event in w.control().into_iter().chain(w.budgets()) {
        let seq = env.append(&event).await?;
        control.push((seq, event));
    }
    let now = time::OffsetDateTime::now_utc();
    let mut usage = Vec::new();
    for cost in [40, 40, 40] {
        let event = w.spending(cost, now);
        let seq = env.append(&event).await?;
        usage.push((seq, event));
    }
    // What the projector commits, batch by batch, read back from the log...
    for (stream, batch) in [(StreamName::Control, &control), (StreamName::Usage, &usage)] {
        let through = batch.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        let mut read = Vec::new();
        for (seq, _) in batch.iter() {
            let message = env.log.get(stream, *seq).await?.context("stored")?;
            read.push((message.seq, sg_events::decode(&message.payload)?));
        }
        views
            .apply_batch_after(stream.stream_name(), 0, &read, through)
            .await?;
    }
    // ...and the crash: nothing appended.
    let pending = views.pending_budget_signals(100).await?;
    let expected = sorted(vec![
        w.signal_id(false, "total", ":50:100"),
        w.signal_id(false, "total", ":80:100"),
        w.signal_id(false, "total", ":100:100"),
        w.signal_id(true, "total", ":50:50"),
        w.signal_id(true, "total", ":80:50"),
        w.signal_id(true, "total", ":100:50"),
    ]);
    ensure!(sorted(pending.iter().map(|s| s.id.clone()).collect()) == expected);
    ensure!(logged_signals(&env.log).await?.is_empty());
    // One of them had been appended when the process died, but not recorded as such.
    let first = &pending[0];
    env.log
        .append(Append {
            subject: first.envelope.subject(),
            payload: Bytes::from(sg_events::encode(&first.envelope)),
            expected_last_subject_seq: None,
            msg_id: Some(first.id.clone()),
        })
        .await?;

    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    let last = |batch: &[(u64, Envelope)]| batch.last().map_or(0, |(seq, _)| *seq);
    reach(&mut progress, last(&control), last(&usage)).await?;
    ensure!(sorted(signals_published(&views, &w, 6).await?) == expected);
    let logged = logged_signals(&env.log).await?;
    ensure!(sorted(logged.clone()) == expected, "logged {logged:?}");
    // The views' counters are not touched by publishing.
    expect_usage(&views, &w, 3, 0, 3).await?;
    projector.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_publishing_on_sqlite() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::sqlite().await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        a_crash_between_commit_and_publish_loses_nothing(&mut env),
    )
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_publishing_on_jetstream_and_postgres() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::cluster().await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        a_crash_between_commit_and_publish_loses_nothing(&mut env),
    )
    .await?
}

/// The projector's clock in `a_reset_is_announced_at_midnight` (unix milliseconds).
static CLOCK_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn test_clock() -> time::OffsetDateTime {
    let ms = CLOCK_MS.load(std::sync::atomic::Ordering::SeqCst);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A day budget exhausted before midnight UTC is announced as reset when the clock
/// reaches midnight, with no request to reveal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_announced_at_midnight() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::sqlite().await?;
    let views = env.new_views().await?;
    let w = World::new();
    // 2026-03-04T23:59:00Z.
    let midnight = time::macros::datetime!(2026-03-05 00:00 UTC);
    let before = midnight - time::Duration::minutes(1);
    CLOCK_MS.store(
        (before.unix_timestamp_nanos() / 1_000_000) as i64,
        std::sync::atomic::Ordering::SeqCst,
    );
    for event in w.control() {
        env.append(&event).await?;
    }
    let control_seq = env
        .append(&w.env(Event::KeyLimitsSet(KeyLimitsSetV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            limits: budget(10, PeriodData::Day),
        })))
        .await?;
    let usage_seq = env.append(&w.spending(10, before)).await?;
    let config = ProjectorConfig {
        clock: test_clock,
        ..config()
    };
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config);
    reach(&mut progress, control_seq, usage_seq).await?;
    let day = (before.unix_timestamp() / 86_400).to_string();
    let thresholds = sorted(
        [":50:10", ":80:10", ":100:10"]
            .iter()
            .map(|t| w.signal_id(true, &format!("d{day}"), t))
            .collect(),
    );
    ensure!(sorted(signals_published(&views, &w, 3).await?) == thresholds);

    // Midnight UTC: the reset into the new day, once.
    CLOCK_MS.store(
        (midnight.unix_timestamp_nanos() / 1_000_000) as i64,
        std::sync::atomic::Ordering::SeqCst,
    );
    let next_day = (midnight.unix_timestamp() / 86_400).to_string();
    let reset = w.signal_id(true, &format!("d{next_day}"), "");
    let published = signals_published(&views, &w, 4).await?;
    ensure!(published.contains(&reset), "{published:?}");
    let logged = logged_signals(&env.log).await?;
    ensure!(logged.len() == 4 && logged[3] == reset, "{logged:?}");
    projector.stop().await?;
    Ok(())
}

// ---- the audit trail ----------------------------------------------------------------

/// Waits until the signals checkpoint reaches `seq`.
async fn reach_signals(progress: &mut watch::Receiver<ProjectorProgress>, seq: u64) -> Result<()> {
    let reached = tokio::time::timeout(WAIT, progress.wait_for(|p| p.signals_seq >= seq))
        .await
        .map(|r| r.map(|_| ()));
    match reached {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => bail!("projector stopped before reaching signals {seq}"),
        Err(_) => bail!(
            "projector stuck at {:?}, expected signals {seq}",
            *progress.borrow()
        ),
    }
}

impl World {
    fn violation(&self) -> Envelope {
        Envelope::new(
            self.tenant.clone(),
            Actor::node("gw-a"),
            Event::LockViolated(LockViolatedV1 {
                request_id: Uuid::now_v7(),
                project_id: self.project.clone(),
                key_id: self.key.clone(),
                code: "ip_not_allowed".into(),
                client_ip: "127.0.0.3".parse().unwrap(),
                country: None,
                city: None,
                device_hash: None,
                model: None,
                endpoint: "/v1/chat/completions".into(),
                node: "gw-a".into(),
            }),
        )
    }

    fn signals_subject(&self) -> String {
        format!("sg.signals.{}.{}", self.tenant, self.project)
    }
}

/// The whole trail of the project.
async fn trail(views: &Views, w: &World) -> Result<Vec<AuditEvent>> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = views
            .audit_events(&w.project, &AuditFilter::default(), cursor.as_ref(), 3)
            .await?;
        all.extend(page.data);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

fn count(events: &[AuditEvent], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

/// Lock violations, suspensions and signals of types this build does not know reach the
/// trail once each, through restarts; control events projected before the trail existed
/// are backfilled.
async fn signals_reach_the_audit_trail(env: &mut Env) -> Result<()> {
    let w = World::new();
    let (views, url) = env.new_views_at().await?;
    let mut control_seq = 0;
    let suspended = w.env(Event::KeySuspended(KeySuspendedV1 {
        key_id: w.key.clone(),
        project_id: w.project.clone(),
        until: 4_102_444_800,
        rule: "violations".into(),
        reason: "3 lock violations in 60 s".into(),
        verdict_id: "vrd_1".into(),
    }));
    for event in w.control().iter().chain([&suspended]) {
        control_seq = env.append(event).await?;
    }
    for _ in 0..3 {
        env.append(&w.violation()).await?;
    }
    // A signal of a type this build does not know, and a message that is no event.
    let unknown = format!(
        r#"{{"id":"{}","type":"alert.escalated","version":1,"tenant_id":"{}","aggregate_id":"{}","time":"2026-01-01T00:00:00Z","actor":"node:alerts","data":{{"alert_id":"al_1","key_id":"{}","level":2}}}}"#,
        Uuid::now_v7(),
        w.tenant,
        w.project,
        w.key
    );
    env.append_raw(w.signals_subject(), unknown).await?;
    let mut signals_seq = env
        .append_raw(w.signals_subject(), &b"not an event"[..])
        .await?;

    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach(&mut progress, control_seq, 0).await?;
    reach_signals(&mut progress, signals_seq).await?;
    ensure!(views.checkpoint("SG_SIGNALS").await? == signals_seq);
    let events = trail(&views, &w).await?;
    ensure!(count(&events, "lock.violated") == 3, "{events:?}");
    ensure!(count(&events, "key.suspended") == 1, "{events:?}");
    ensure!(count(&events, "key.revoked") == 0, "{events:?}");
    ensure!(events.len() == 5, "{events:?}");
    let escalated = events
        .iter()
        .find(|e| e.event_type == "alert.escalated")
        .context("the unknown signal")?;
    ensure!(escalated.key_id.as_ref() == Some(&w.key) && escalated.data["level"] == 2);
    ensure!(escalated.stream == "SG_SIGNALS");

    // Restart: stopped, more violations, started again. Nothing recorded twice.
    projector.stop().await?;
    for _ in 0..2 {
        signals_seq = env.append(&w.violation()).await?;
    }
    let (projector, mut progress) = Projector::start(env.log.clone(), views.clone(), config());
    reach_signals(&mut progress, signals_seq).await?;
    let events = trail(&views, &w).await?;
    ensure!(count(&events, "lock.violated") == 5, "{events:?}");
    ensure!(events.len() == 7, "{events:?}");
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    ensure!(ids.len() == 7, "an event listed twice");

    // Views upgraded from before the trail: the control events they had projected are
    // owed to it (what the migration records), and backfilled beside the live projection.
    projector.stop().await?;
    sqlx::any::install_default_drivers();
    let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
    sqlx::query("DELETE FROM audit_events WHERE stream = 'SG_CONTROL'")
        .execute(&mut raw)
        .await?;
    sqlx::query("INSERT INTO audit_backfill (stream, done, through) VALUES ('SG_CONTROL', 0, $1)")
        .bind(i64::try_from(control_seq)?)
        .execute(&mut raw)
        .await?;
    <sqlx::AnyConnection as sqlx::Connection>::close(raw).await?;
    ensure!(count(&trail(&views, &w).await?, "key.suspended") == 0);
    let (projector, _progress) = Projector::start(env.log.clone(), views.clone(), config());
    let deadline = tokio::time::Instant::now() + WAIT;
    while views.audit_backfill("SG_CONTROL").await?.is_some() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the backfill did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = trail(&views, &w).await?;
    ensure!(
        count(&events, "key.suspended") == 1 && events.len() == 7,
        "{events:?}"
    );

    // A rebuild records the same trail.
    let fresh = env.new_views().await?;
    let (rebuilder, mut rebuilt) = Projector::start(env.log.clone(), fresh.clone(), config());
    reach(&mut rebuilt, control_seq, 0).await?;
    reach_signals(&mut rebuilt, signals_seq).await?;
    ensure!(trail(&fresh, &w).await? == events);
    rebuilder.stop().await?;
    projector.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_on_sqlite() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::sqlite().await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        signals_reach_the_audit_trail(&mut env),
    )
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_on_jetstream_and_postgres() -> Result<()> {
    sg_testkit::init_tracing();
    let mut env = Env::cluster().await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        signals_reach_the_audit_trail(&mut env),
    )
    .await?
}
