//! One conformance suite for the views, run against a private PostgreSQL and a
//! temporary SQLite file. Every case gets a fresh database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use sg_events::{
    Actor, BudgetThresholdV1, ConnectionCreatedV3, ConnectionId, Envelope, Event, KeyId,
    KeyIssuedV1, KeyIssuedV4, KeyLimitsSetV1, KeyLocksSetV2, KeyResumedV1, KeyRevokedV1,
    KeyRotatedV1, KeySuspendedV1, LimitsData, LockViolatedV1, LocksV2, ProjectCreatedV1, ProjectId,
    ProjectLimitsSetV1, Provider, RawEnvelope, SealedKey, TenantCreatedV2, TenantId,
    UsageRecordedV4,
};
use sg_spend::{Budget, Period};
use sg_testkit::PostgresServer;
use sg_views::budget::Scope;
use sg_views::{
    AuditEvent, AuditFilter, Backend, GroupBy, KeyStatus, LogEntry, RequestCursor, RequestFilter,
    UsageScope, UsageStats, ViewError, Views,
};
use time::OffsetDateTime;
use uuid::Uuid;

const CONTROL: &str = "control";
const USAGE: &str = "usage";
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

// ---- the two backends ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() -> Result<()> {
    sg_testkit::init_tracing();
    let pg = PostgresServer::start().await?;
    let mut n = 0u32;
    run_suite(Backend::Postgres, |case| {
        n += 1;
        let name = format!("views_{n}_{case}");
        let pg = &pg;
        Box::pin(async move { pg.create_database(&name).await })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conformance() -> Result<()> {
    sg_testkit::init_tracing();
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let mut n = 0u32;
    run_suite(Backend::Sqlite, |case| {
        n += 1;
        let path = root.join(format!("views_{n}_{case}.db"));
        Box::pin(async move { Ok(format!("sqlite://{}?mode=rwc", path.display())) })
    })
    .await
}

type NewDb<'a> = Pin<Box<dyn Future<Output = Result<String>> + Send + 'a>>;

/// Runs every case, each on a fresh database from `new_db(case_name)`.
async fn run_suite<'a, F>(backend: Backend, mut new_db: F) -> Result<()>
where
    F: FnMut(&'static str) -> NewDb<'a>,
{
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                let url = new_db(stringify!($case)).await?;
                tokio::time::timeout(SUITE_TIMEOUT, $case(backend, &url))
                    .await
                    .with_context(|| format!("{} timed out", stringify!($case)))?
                    .with_context(|| format!("case {} on {backend:?}", stringify!($case)))?;
                eprintln!("{backend:?}: {} passed", stringify!($case));
            )*
        };
    }
    cases!(
        connects_and_migrates,
        projects_control_events,
        projects_usage_events,
        same_batch_twice_changes_nothing,
        same_usage_at_two_sequences_counts_once,
        rejected_event_rolls_back_the_whole_batch,
        checkpoint_precondition,
        database_failure_mid_batch_rolls_back,
        rebuild_equals_live,
        streams_apply_concurrently,
        no_secret_reaches_the_views,
        usage_reports_group_and_merge_histograms,
        spend_is_kept_per_window_of_every_period,
        budget_signals_are_derived_once,
        budget_signals_at_the_period_boundary,
        requests_are_listed_by_filter_and_cursor,
        upgrade_resets_the_usage_projection,
        streams_meeting_on_one_key_keep_its_last_use,
        audit_trail_records_events,
        audit_trail_filters_and_pages,
        audit_trail_keeps_tenants_apart,
        audit_backfill_after_upgrade,
    );
    Ok(())
}

async fn open(backend: Backend, url: &str) -> Result<Views> {
    let views = Views::connect(url).await?;
    ensure!(views.backend() == backend, "backend of {url}");
    views.migrate().await?;
    Ok(views)
}

// ---- fixtures -----------------------------------------------------------------------

/// A tenant with one project, one connection and two keys (the second one revoked).
struct World {
    tenant: TenantId,
    project: ProjectId,
    connection: ConnectionId,
    key: KeyId,
    revoked_key: KeyId,
    secret: SealedKey,
    base: OffsetDateTime,
}

impl World {
    fn new() -> World {
        World {
            tenant: TenantId::generate(),
            project: ProjectId::generate(),
            connection: ConnectionId::generate(Provider::Openai),
            key: KeyId::generate(),
            revoked_key: KeyId::generate(),
            secret: SealedKey {
                v: 1,
                kms: "local".into(),
                kek_id: "kek-test".into(),
                wrapped_key: "V1JBUFBFRC1EQVRBLUtFWS1NQVJLRVI=".into(),
                nonce: "Tk9OQ0UtTUFSS0VS".into(),
                ciphertext: "Q0lQSEVSVEVYVC1NQVJLRVItc2stbGl2ZS0xMjM0".into(),
            },
            base: OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap(),
        }
    }

    fn env(&self, event: Event) -> Envelope {
        let mut env = Envelope::new(self.tenant.clone(), Actor::operator(), event);
        env.time = self.base;
        env
    }

    /// The control stream, numbered from 1.
    fn control(&self) -> Vec<(u64, Envelope)> {
        let events = vec![
            Event::TenantCreated(TenantCreatedV2 {
                plan: None,
                name: "Acme".into(),
            }),
            Event::ProjectCreated(ProjectCreatedV1 {
                project_id: self.project.clone(),
                name: "chatbot".into(),
            }),
            Event::ConnectionCreated(ConnectionCreatedV3 {
                connection_id: self.connection.clone(),
                project_id: self.project.clone(),
                provider: Provider::Openai,
                name: "prod openai".into(),
                base_url: Some("https://llm.example/v1".into()),
                api_key: self.secret.clone(),
                openai_organization: None,
                openai_project: None,
                api_version: None,
            }),
            Event::KeyIssued(
                KeyIssuedV1 {
                    key_id: self.key.clone(),
                    project_id: self.project.clone(),
                    name: "backend".into(),
                    key_hash: "ab".repeat(32),
                    hint: "SG_…k3y1".into(),
                    connection_ids: vec![self.connection.clone()],
                    allowed_models: Some(vec!["gpt-4o-mini".into(), "gpt-4o".into()]),
                }
                .into(),
            ),
            Event::KeyIssued(
                KeyIssuedV1 {
                    key_id: self.revoked_key.clone(),
                    project_id: self.project.clone(),
                    name: "old".into(),
                    key_hash: "cd".repeat(32),
                    hint: "SG_…k3y2".into(),
                    connection_ids: vec![self.connection.clone()],
                    allowed_models: None,
                }
                .into(),
            ),
            Event::KeyRevoked(KeyRevokedV1 {
                key_id: self.revoked_key.clone(),
                project_id: self.project.clone(),
                reason: Some("rotated".into()),
            }),
        ];
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let mut env = self.env(event);
                env.time = self.base + time::Duration::seconds(i as i64);
                (i as u64 + 1, env)
            })
            .collect()
    }

    /// One usage event, `minute` minutes after the base time.
    fn usage(
        &self,
        key: &KeyId,
        minute: i64,
        status: u16,
        prompt: u64,
        completion: u64,
    ) -> Envelope {
        self.env(Event::UsageRecorded(UsageRecordedV4 {
            request_id: Uuid::now_v7(),
            project_id: self.project.clone(),
            key_id: key.clone(),
            connection_id: Some(self.connection.clone()),
            provider: Some(Provider::Openai),
            model: Some("gpt-4o-mini".into()),
            endpoint: "/v1/chat/completions".into(),
            status,
            streamed: status == 200 && minute % 2 == 0,
            prompt_tokens: prompt,
            cached_prompt_tokens: 0,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cost_micros: (prompt + completion) * 10,
            priced: true,
            request_bytes: 0,
            response_bytes: 0,
            latency_us: 1_500 * (minute as u64 + 1),
            started_at: self.base + time::Duration::minutes(minute),
            node: "node-a".into(),
            client_ip: None,
            country: None,
        }))
    }

    /// Three requests: two with `key` (one failed), one with the revoked key.
    fn usage_log(&self) -> Vec<(u64, Envelope)> {
        vec![
            (1, self.usage(&self.key, 10, 200, 10, 5)),
            (2, self.usage(&self.key, 30, 502, 7, 0)),
            (3, self.usage(&self.revoked_key, 20, 200, 3, 4)),
        ]
    }
}

fn usage_data(env: &Envelope) -> &UsageRecordedV4 {
    match &env.event {
        Event::UsageRecorded(d) => d,
        other => panic!("not usage: {}", other.type_name()),
    }
}

/// The same usage event stored again: a new envelope id, the same request.
fn reappended(env: &Envelope) -> Envelope {
    let mut copy = env.clone();
    copy.id = Uuid::now_v7();
    copy
}

/// Totals of every hour the test worlds can use.
async fn totals(views: &Views, scope: UsageScope<'_>) -> Result<UsageStats> {
    let from = OffsetDateTime::UNIX_EPOCH;
    let to = OffsetDateTime::from_unix_timestamp(4_102_444_800)?;
    Ok(views
        .usage_report(scope, from, to, GroupBy::Key)
        .await?
        .totals)
}

/// Whether a percentile read from the histograms is the true one within their
/// precision (at most 1/128 above it).
fn close_to(got_ms: f64, true_us: u64) -> bool {
    let truth = true_us as f64 / 1000.0;
    got_ms >= truth && got_ms <= truth * (1.0 + 1.0 / 128.0) + 0.001
}

/// Nearest-rank percentile of raw samples.
fn nearest_rank(samples: &[u64], q: f64) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

/// The dump with `budget_signals` reduced to the signal ids: when a signal was derived
/// and how much had been spent by then depend on how the events were batched.
fn comparable(mut dump: serde_json::Value) -> serde_json::Value {
    if let Some(rows) = dump
        .get_mut("budget_signals")
        .and_then(|r| r.as_array_mut())
    {
        let mut ids: Vec<serde_json::Value> = rows.iter().map(|r| r["id"].clone()).collect();
        ids.sort_by_key(|v| v.to_string());
        *rows = ids;
    }
    dump
}

fn limits_with_budget(micros: u64, period: Period) -> LimitsData {
    sg_spend::Limits {
        budget: Some(Budget { micros, period }),
        ..sg_spend::Limits::default()
    }
    .into()
}

// ---- cases --------------------------------------------------------------------------

async fn connects_and_migrates(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    // Migrating again, from another pool too, is harmless.
    views.migrate().await?;
    let again = open(backend, url).await?;
    again.migrate().await?;
    ensure!(views.checkpoint(CONTROL).await? == 0);
    ensure!(views.checkpoint(USAGE).await? == 0);
    let world = World::new();
    ensure!(views.get_project(&world.project).await?.is_none());
    ensure!(views.get_key(&world.key).await?.is_none());
    ensure!(views.list_keys(&world.project).await?.is_empty());
    ensure!(views.recent_requests(&world.project, 10).await?.is_empty());
    let totals = totals(&views, UsageScope::Project(&world.project)).await?;
    ensure!(totals.requests == 0 && totals.latency.is_none());
    // An empty batch leaves the checkpoint alone.
    ensure!(views.apply_batch(CONTROL, &[]).await? == 0);
    again.close().await;
    Ok(())
}

async fn projects_control_events(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let control = w.control();
    ensure!(views.apply_batch(CONTROL, &control).await? == 6);
    ensure!(views.checkpoint(CONTROL).await? == 6);
    ensure!(views.checkpoint(USAGE).await? == 0);

    let tenant = views.get_tenant(&w.tenant).await?.context("tenant")?;
    ensure!(tenant.name == "Acme" && tenant.created_at == w.base);

    let project = views.get_project(&w.project).await?.context("project")?;
    ensure!(project.tenant_id == w.tenant && project.name == "chatbot");
    ensure!(project.created_at == w.base + time::Duration::seconds(1));
    ensure!(views.list_projects(&w.tenant).await? == vec![project]);

    let connections = views.list_connections(&w.project).await?;
    ensure!(connections.len() == 1);
    let c = &connections[0];
    ensure!(c.id == w.connection && c.tenant_id == w.tenant && c.project_id == w.project);
    ensure!(c.provider == Provider::Openai && c.name == "prod openai");
    ensure!(c.base_url.as_deref() == Some("https://llm.example/v1"));
    ensure!(views.get_connection(&w.connection).await?.as_ref() == Some(c));

    let keys = views.list_keys(&w.project).await?;
    ensure!(keys.len() == 2, "two keys: {keys:?}");
    let key = &keys[0];
    ensure!(key.id == w.key && key.tenant_id == w.tenant && key.project_id == w.project);
    ensure!(key.name == "backend" && key.hint == "SG_…k3y1");
    ensure!(key.status == KeyStatus::Active);
    ensure!(key.revoked_at.is_none() && key.last_used_at.is_none());
    ensure!(key.connection_ids == vec![w.connection.clone()]);
    ensure!(key.allowed_models == Some(vec!["gpt-4o-mini".to_owned(), "gpt-4o".to_owned()]));
    ensure!(views.get_key(&w.key).await?.as_ref() == Some(key));

    let revoked = &keys[1];
    ensure!(revoked.id == w.revoked_key && revoked.status == KeyStatus::Revoked);
    ensure!(revoked.allowed_models.is_none());
    ensure!(revoked.revoked_at == Some(w.base + time::Duration::seconds(5)));
    ensure!(revoked.revoke_reason.as_deref() == Some("rotated"));

    // The serialized rows carry RFC 3339 times.
    let json = serde_json::to_value(revoked)?;
    ensure!(json["status"] == "revoked");
    ensure!(json["created_at"] == "2026-01-01T00:00:04Z", "{json}");
    ensure!(json["last_used_at"].is_null());
    Ok(())
}

async fn projects_usage_events(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    let usage = w.usage_log();
    ensure!(views.apply_batch(USAGE, &usage).await? == 3);
    ensure!(views.checkpoint(USAGE).await? == 3);

    let project = totals(&views, UsageScope::Project(&w.project)).await?;
    ensure!(project.requests == 3 && project.errors == 1, "{project:?}");
    ensure!(project.prompt_tokens == 20 && project.completion_tokens == 9);
    ensure!(project.total_tokens == 29 && project.cost_micros == 290);
    ensure!(project.cached_prompt_tokens == 0 && project.unpriced_requests == 0);
    // Latencies 16.5 ms, 46.5 ms and 31.5 ms.
    let latency = project.latency.context("latency")?;
    ensure!(close_to(latency.p50, 31_500), "{latency:?}");
    ensure!(close_to(latency.p95, 46_500) && close_to(latency.p99, 46_500));

    let key = totals(&views, UsageScope::Key(&w.key)).await?;
    ensure!(
        key.requests == 2 && key.errors == 1 && key.total_tokens == 22,
        "{key:?}"
    );
    let latency = key.latency.context("latency")?;
    ensure!(close_to(latency.p50, 16_500) && close_to(latency.p99, 46_500));
    let other = totals(&views, UsageScope::Key(&w.revoked_key)).await?;
    ensure!(other.requests == 1 && other.errors == 0 && other.total_tokens == 7);

    // last_used_at is the latest start, whatever the order the events came in.
    let key_row = views.get_key(&w.key).await?.context("key")?;
    ensure!(key_row.last_used_at == Some(w.base + time::Duration::minutes(30)));
    let revoked_row = views.get_key(&w.revoked_key).await?.context("key")?;
    ensure!(revoked_row.last_used_at == Some(w.base + time::Duration::minutes(20)));

    let recent = views.recent_requests(&w.project, 10).await?;
    let order: Vec<u64> = recent.iter().map(|r| r.seq).collect();
    ensure!(order == vec![2, 3, 1], "newest first: {order:?}");
    let latest = &recent[0];
    let sent = usage_data(&usage[1].1);
    ensure!(latest.request_id == sent.request_id && latest.key_id == w.key);
    ensure!(latest.tenant_id == w.tenant && latest.project_id == w.project);
    ensure!(latest.connection_id.as_ref() == Some(&w.connection));
    ensure!(latest.provider == Some(Provider::Openai));
    ensure!(latest.model.as_deref() == Some("gpt-4o-mini"));
    ensure!(latest.endpoint == "/v1/chat/completions" && latest.status == 502);
    ensure!(!latest.streamed && recent[2].streamed);
    ensure!(latest.prompt_tokens == 7 && latest.completion_tokens == 0 && latest.total_tokens == 7);
    ensure!(latest.cost_micros == 70 && latest.priced && latest.cached_prompt_tokens == 0);
    ensure!(latest.latency_us == 46_500 && latest.node == "node-a");
    ensure!(latest.started_at == w.base + time::Duration::minutes(30));
    ensure!(views.recent_requests(&w.project, 1).await?.len() == 1);

    // A request without connection, provider or model (rejected before routing).
    let mut bare = w.usage(&w.key, 40, 401, 0, 0);
    if let Event::UsageRecorded(d) = &mut bare.event {
        d.connection_id = None;
        d.provider = None;
        d.model = None;
    }
    views.apply_batch(USAGE, &[(4, bare)]).await?;
    let recent = views.recent_requests(&w.project, 1).await?;
    ensure!(recent[0].seq == 4 && recent[0].connection_id.is_none());
    ensure!(recent[0].provider.is_none() && recent[0].model.is_none());
    ensure!(totals(&views, UsageScope::Key(&w.key)).await?.errors == 2);
    Ok(())
}

async fn same_batch_twice_changes_nothing(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let control = w.control();
    let usage = w.usage_log();
    views.apply_batch(CONTROL, &control).await?;
    views.apply_batch(USAGE, &usage).await?;
    let before = views.dump().await?;

    ensure!(views.apply_batch(CONTROL, &control).await? == 6);
    ensure!(views.apply_batch(USAGE, &usage).await? == 3);
    ensure!(views.apply_batch(USAGE, &usage[1..]).await? == 3);
    ensure!(
        views.dump().await? == before,
        "replayed batches changed the views"
    );

    // An overlapping batch applies only what is new.
    let more = vec![usage[2].clone(), (4, w.usage(&w.key, 50, 200, 1, 1))];
    ensure!(views.apply_batch(USAGE, &more).await? == 4);
    ensure!(
        totals(&views, UsageScope::Project(&w.project))
            .await?
            .requests
            == 4
    );
    Ok(())
}

async fn same_usage_at_two_sequences_counts_once(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    let first = w.usage(&w.key, 1, 200, 10, 10);
    let second = w.usage(&w.key, 2, 200, 1, 1);

    // In one batch...
    views
        .apply_batch(USAGE, &[(1, first.clone()), (2, reappended(&first))])
        .await?;
    // ...and across batches.
    views
        .apply_batch(USAGE, &[(3, second.clone()), (4, reappended(&first))])
        .await?;
    ensure!(
        views
            .apply_batch(USAGE, &[(5, reappended(&second))])
            .await?
            == 5
    );

    let project = totals(&views, UsageScope::Project(&w.project)).await?;
    ensure!(
        project.requests == 2 && project.total_tokens == 22,
        "{project:?}"
    );
    let key = totals(&views, UsageScope::Key(&w.key)).await?;
    ensure!(key.requests == 2 && key.total_tokens == 22, "{key:?}");
    // Spend and rates count it once too.
    let spent = views
        .spend(Scope::Key, w.key.as_str(), Period::Total, "total")
        .await?;
    ensure!(spent.requests == 2 && spent.cost_micros == 220, "{spent:?}");
    let rates = views
        .minute_rates(
            UsageScope::Project(&w.project),
            w.base,
            w.base + time::Duration::hours(1),
        )
        .await?;
    ensure!(
        rates.iter().map(|r| r.requests).sum::<u64>() == 2,
        "{rates:?}"
    );
    let seqs: Vec<u64> = views
        .recent_requests(&w.project, 10)
        .await?
        .iter()
        .map(|r| r.seq)
        .collect();
    ensure!(
        seqs == vec![3, 1],
        "first sequence of each request kept: {seqs:?}"
    );
    Ok(())
}

async fn rejected_event_rolls_back_the_whole_batch(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    let good = w.usage(&w.key, 1, 200, 10, 10);
    let mut bad = w.usage(&w.key, 2, 200, 0, 0);
    if let Event::UsageRecorded(d) = &mut bad.event {
        d.prompt_tokens = u64::MAX;
    }
    let err = views
        .apply_batch(USAGE, &[(1, good.clone()), (2, bad)])
        .await
        .expect_err("an unrepresentable event fails the batch");
    ensure!(
        matches!(&err, ViewError::Rejected { seq: 2, .. }),
        "unexpected error {err:?}"
    );
    ensure!(!err.is_transient());
    ensure!(views.checkpoint(USAGE).await? == 0);
    ensure!(views.recent_requests(&w.project, 10).await?.is_empty());
    ensure!(
        totals(&views, UsageScope::Project(&w.project))
            .await?
            .requests
            == 0
    );
    ensure!(totals(&views, UsageScope::Key(&w.key)).await?.requests == 0);
    ensure!(
        views
            .spend(Scope::Project, w.project.as_str(), Period::Total, "total")
            .await?
            .requests
            == 0
    );
    ensure!(
        views
            .get_key(&w.key)
            .await?
            .context("key")?
            .last_used_at
            .is_none()
    );

    // Without the bad event, moving the checkpoint over it, the batch goes through.
    ensure!(views.apply_batch_through(USAGE, &[(1, good)], 2).await? == 2);
    ensure!(
        totals(&views, UsageScope::Project(&w.project))
            .await?
            .requests
            == 1
    );
    Ok(())
}

async fn checkpoint_precondition(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let control = w.control();
    views.apply_batch(CONTROL, &control[..3]).await?;
    // The caller believes 5 were applied: the views lost two.
    let err = views
        .apply_batch_after(CONTROL, 5, &control[5..], 6)
        .await
        .expect_err("the stored checkpoint is behind");
    ensure!(
        err == ViewError::CheckpointBehind {
            stored: 3,
            expected: 5
        },
        "{err:?}"
    );
    ensure!(views.checkpoint(CONTROL).await? == 3);
    ensure!(views.list_keys(&w.project).await?.is_empty());
    // At or past what the caller knows is fine.
    ensure!(
        views
            .apply_batch_after(CONTROL, 3, &control[3..4], 4)
            .await?
            == 4
    );
    ensure!(
        views
            .apply_batch_after(CONTROL, 2, &control[3..], 6)
            .await?
            == 6
    );
    ensure!(views.list_keys(&w.project).await?.len() == 2);
    Ok(())
}

async fn database_failure_mid_batch_rolls_back(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let control = w.control();
    // Break the second event's table behind the views' back.
    sqlx::any::install_default_drivers();
    let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
    sqlx::query("DROP TABLE projects").execute(&mut raw).await?;
    <sqlx::AnyConnection as sqlx::Connection>::close(raw).await?;

    let err = views
        .apply_batch(CONTROL, &control[..2])
        .await
        .expect_err("the second event cannot be stored");
    ensure!(
        matches!(err, ViewError::Other(_)),
        "unexpected error {err:?}"
    );
    ensure!(views.checkpoint(CONTROL).await? == 0, "checkpoint moved");
    ensure!(
        views.get_tenant(&w.tenant).await?.is_none(),
        "first event kept"
    );
    Ok(())
}

async fn rebuild_equals_live(backend: Backend, url: &str) -> Result<()> {
    let live = open(backend, url).await?;
    let w = World::new();
    let mut control = w.control();
    // Budgets: the project's per month, the key's in total.
    control.push((
        7,
        w.env(Event::ProjectLimitsSet(ProjectLimitsSetV1 {
            project_id: w.project.clone(),
            limits: limits_with_budget(2_000, Period::Month),
        })),
    ));
    control.push((
        8,
        w.env(Event::KeyLimitsSet(KeyLimitsSetV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            limits: limits_with_budget(200, Period::Total),
        })),
    ));
    let mut usage = w.usage_log();
    // Usage of a key the control stream has not issued yet when it is projected, a
    // request stored twice, and more traffic.
    usage.push((4, reappended(&usage[0].1)));
    usage.push((5, w.usage(&w.key, 45, 429, 0, 0)));
    usage.push((6, w.usage(&w.revoked_key, 5, 200, 100, 50)));
    // Signals are derived as of an hour into the usage's month.
    let now = w.base + time::Duration::hours(1);
    let apply = |views: &Views, stream: &'static str, batch: Vec<(u64, Envelope)>| {
        let views = views.clone();
        async move {
            let through = batch.iter().map(|(s, _)| *s).max().unwrap_or(0);
            views
                .apply_batch_at(stream, None, &batch, through, now)
                .await
        }
    };

    // Live: small batches, streams interleaved, some batches delivered twice.
    apply(&live, CONTROL, control[..2].to_vec()).await?;
    apply(&live, USAGE, usage[..2].to_vec()).await?;
    apply(&live, CONTROL, control[..4].to_vec()).await?;
    apply(&live, USAGE, usage[1..4].to_vec()).await?;
    apply(&live, USAGE, usage[1..4].to_vec()).await?;
    apply(&live, CONTROL, control[4..].to_vec()).await?;
    apply(&live, USAGE, usage[4..].to_vec()).await?;
    let live_dump = live.dump().await?;

    // Rebuild: a fresh database, each stream in one go, usage first.
    let rebuilt_url = match backend {
        Backend::Postgres => {
            // Same server, another database.
            let (base, name) = url.rsplit_once('/').context("database name")?;
            sqlx::any::install_default_drivers();
            let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
            sqlx::raw_sql(&format!("CREATE DATABASE {name}_rebuilt"))
                .execute(&mut raw)
                .await?;
            <sqlx::AnyConnection as sqlx::Connection>::close(raw).await?;
            format!("{base}/{name}_rebuilt")
        }
        Backend::Sqlite => url.replace(".db?mode=rwc", "_rebuilt.db?mode=rwc"),
    };
    ensure!(rebuilt_url != url);
    let rebuilt = open(backend, &rebuilt_url).await?;
    apply(&rebuilt, USAGE, usage.clone()).await?;
    apply(&rebuilt, CONTROL, control.clone()).await?;
    let rebuilt_dump = rebuilt.dump().await?;

    let (live_cmp, rebuilt_cmp) = (comparable(live_dump.clone()), comparable(rebuilt_dump));
    if live_cmp != rebuilt_cmp {
        bail!(
            "rebuild differs from live:\nlive: {}\nrebuilt: {}",
            serde_json::to_string_pretty(&live_cmp)?,
            serde_json::to_string_pretty(&rebuilt_cmp)?
        );
    }
    // Every view is covered by the comparison.
    let tables = live_dump.as_object().context("dump is an object")?;
    let mut names: Vec<&str> = tables.keys().map(String::as_str).collect();
    names.sort_unstable();
    ensure!(
        names
            == [
                "audit_backfill",
                "audit_events",
                "budget_signals",
                "connections",
                "keys",
                "limits",
                "projector_checkpoints",
                "projects",
                "requests",
                "spend",
                "tenants",
                "usage_hourly",
                "usage_minute",
                "views_writer",
            ],
        "tables: {names:?}"
    );
    for (name, rows) in tables {
        // The backfill of views upgraded from before the trail: none here.
        if name == "audit_backfill" {
            ensure!(rows.as_array().is_some_and(|r| r.is_empty()), "{name}");
            continue;
        }
        ensure!(
            rows.as_array().is_some_and(|r| !r.is_empty()),
            "{name} is empty"
        );
    }
    let key = live.get_key(&w.key).await?.context("key")?;
    ensure!(key.last_used_at == Some(w.base + time::Duration::minutes(45)));
    ensure!(
        totals(&live, UsageScope::Project(&w.project))
            .await?
            .requests
            == 5
    );
    // The same signals, whichever way the events came: the key's total budget of 200 µ$
    // is spent (220 µ$), the project's 2,000 µ$ for the month is at 89.5 %.
    let signals: Vec<String> = live
        .budget_signals(&w.project)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let (p, k) = (w.project.as_str(), w.key.as_str());
    let mut expected = vec![
        format!("{p}:-:M2026-01:50:2000"),
        format!("{p}:-:M2026-01:80:2000"),
        format!("{p}:{k}:total:50:200"),
        format!("{p}:{k}:total:80:200"),
        format!("{p}:{k}:total:100:200"),
    ];
    expected.sort();
    ensure!(signals == expected, "signals {signals:?}");
    Ok(())
}

async fn streams_apply_concurrently(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let mut tasks = Vec::new();
    let worlds: Vec<World> = (0..4).map(|_| World::new()).collect();
    // Four writers per stream at once, each moving its own checkpoint name, plus two
    // writers racing on the same checkpoint.
    for (i, w) in worlds.iter().enumerate() {
        let control = w.control();
        let usage: Vec<(u64, Envelope)> = (1..=20)
            .map(|n| (n, w.usage(&w.key, n as i64, 200, n, 1)))
            .collect();
        for (stream, batch) in [
            (format!("control-{i}"), control),
            (format!("usage-{i}"), usage),
        ] {
            let views = views.clone();
            tasks.push(tokio::spawn(async move {
                for chunk in 1..=batch.len() {
                    views.apply_batch(&stream, &batch[..chunk]).await?;
                }
                Ok::<_, ViewError>(())
            }));
        }
    }
    let shared: Vec<(u64, Envelope)> = (1..=10)
        .map(|n| {
            (
                n,
                worlds[0].usage(&worlds[0].revoked_key, n as i64, 200, 1, 1),
            )
        })
        .collect();
    for _ in 0..2 {
        let views = views.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in 1..=shared.len() {
                views.apply_batch("shared", &shared[..chunk]).await?;
            }
            Ok::<_, ViewError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    for (i, w) in worlds.iter().enumerate() {
        ensure!(views.checkpoint(&format!("control-{i}")).await? == 6);
        ensure!(views.checkpoint(&format!("usage-{i}")).await? == 20);
        ensure!(totals(&views, UsageScope::Key(&w.key)).await?.requests == 20);
        ensure!(views.list_keys(&w.project).await?.len() == 2);
    }
    ensure!(views.checkpoint("shared").await? == 10);
    ensure!(
        totals(&views, UsageScope::Key(&worlds[0].revoked_key))
            .await?
            .requests
            == 10
    );
    Ok(())
}

async fn no_secret_reaches_the_views(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    views.apply_batch(USAGE, &w.usage_log()).await?;
    let dump = views.dump().await?;
    let text = dump.to_string();
    for secret in [
        w.secret.ciphertext.as_str(),
        w.secret.wrapped_key.as_str(),
        w.secret.nonce.as_str(),
        "kek-test",
        &"ab".repeat(32),
        &"cd".repeat(32),
    ] {
        ensure!(!text.contains(secret), "a secret reached the views");
    }
    for (table, rows) in dump.as_object().context("dump")? {
        for row in rows.as_array().context("rows")? {
            for column in row.as_object().context("row")?.keys() {
                for banned in [
                    "api_key",
                    "secret",
                    "hash",
                    "ciphertext",
                    "wrapped",
                    "sealed",
                ] {
                    ensure!(
                        !column.contains(banned),
                        "column {table}.{column} looks like a secret"
                    );
                }
            }
        }
    }
    ensure!(
        dump["connections"].as_array().is_some_and(|r| r.len() == 1),
        "the connection itself is projected"
    );
    Ok(())
}

// ---- usage reports, spend, budget signals, request listings ------------------------

/// A request with the given facts.
#[allow(clippy::too_many_arguments)]
fn request(
    w: &World,
    key: &KeyId,
    at: OffsetDateTime,
    model: Option<&str>,
    status: u16,
    latency_us: u64,
    cost_micros: u64,
) -> Envelope {
    let mut env = w.usage(key, 0, status, 10, 5);
    if let Event::UsageRecorded(d) = &mut env.event {
        d.started_at = at;
        d.model = model.map(str::to_owned);
        d.latency_us = latency_us;
        d.cost_micros = cost_micros;
        d.priced = model.is_some();
        d.cached_prompt_tokens = 3;
    }
    env
}

/// What a report should say about some requests, computed from the raw events.
fn expected_stats(events: &[&UsageRecordedV4]) -> UsageStats {
    let latencies: Vec<u64> = events.iter().map(|d| d.latency_us).collect();
    let mut stats = UsageStats::default();
    for d in events {
        stats.requests += 1;
        stats.errors += u64::from(d.status >= 400);
        stats.prompt_tokens += d.prompt_tokens;
        stats.cached_prompt_tokens += d.cached_prompt_tokens;
        stats.completion_tokens += d.completion_tokens;
        stats.total_tokens += d.total_tokens;
        stats.cost_micros += d.cost_micros;
        stats.unpriced_requests += u64::from(!d.priced);
    }
    stats.latency = (!latencies.is_empty()).then(|| sg_views::rollup::Percentiles {
        p50: nearest_rank(&latencies, 0.50) as f64,
        p95: nearest_rank(&latencies, 0.95) as f64,
        p99: nearest_rank(&latencies, 0.99) as f64,
    });
    stats
}

/// Compares a report's stats with those computed from the samples (whose
/// "percentiles" are raw microseconds).
fn check_stats(what: &str, got: &UsageStats, want: &UsageStats) -> Result<()> {
    let counters = |s: &UsageStats| {
        (
            s.requests,
            s.errors,
            s.prompt_tokens,
            s.cached_prompt_tokens,
            s.completion_tokens,
            s.total_tokens,
            s.cost_micros,
            s.unpriced_requests,
        )
    };
    ensure!(
        counters(got) == counters(want),
        "{what}: {got:?}, expected {want:?}"
    );
    match (&got.latency, &want.latency) {
        (None, None) => {}
        (Some(g), Some(t)) => ensure!(
            close_to(g.p50, t.p50 as u64)
                && close_to(g.p95, t.p95 as u64)
                && close_to(g.p99, t.p99 as u64),
            "{what}: percentiles {g:?}, samples say {t:?} µs"
        ),
        _ => bail!(
            "{what}: latency {:?}, expected {:?}",
            got.latency,
            want.latency
        ),
    }
    Ok(())
}

async fn usage_reports_group_and_merge_histograms(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    // 360 requests over three hours, two keys and three models (one: no model), latencies
    // spread from 0.1 ms to 5 s, some failed.
    let models = [Some("gpt-4o-mini"), Some("gpt-4o"), None];
    let mut usage = Vec::new();
    for i in 0..360u64 {
        let key = if i % 3 == 0 { &w.revoked_key } else { &w.key };
        let at = w.base + time::Duration::seconds((i * 30) as i64);
        let latency = 100 + (i * i * 7_919) % 5_000_000;
        let status = if i % 11 == 0 { 500 } else { 200 };
        let env = request(&w, key, at, models[(i % 3) as usize], status, latency, i);
        usage.push((i + 1, env));
    }
    // In uneven batches, so that stored histograms are merged with new ones.
    for chunk in usage.chunks(37) {
        views.apply_batch(USAGE, chunk).await?;
    }
    let data: Vec<&UsageRecordedV4> = usage.iter().map(|(_, e)| usage_data(e)).collect();
    let hour_of = |d: &UsageRecordedV4| (d.started_at - w.base).whole_hours();

    let (from, to) = (w.base, w.base + time::Duration::hours(3));
    let scope = UsageScope::Project(&w.project);
    for group_by in [GroupBy::Key, GroupBy::Model, GroupBy::Day, GroupBy::Hour] {
        let report = views.usage_report(scope, from, to, group_by).await?;
        check_stats("totals", &report.totals, &expected_stats(&data))?;
        let name = |d: &UsageRecordedV4| -> Option<String> {
            match group_by {
                GroupBy::Key => Some(d.key_id.to_string()),
                GroupBy::Model => d.model.clone(),
                GroupBy::Day => Some("2026-01-01".to_owned()),
                GroupBy::Hour => Some(format!("2026-01-01T{:02}:00:00Z", hour_of(d))),
            }
        };
        let mut names: Vec<Option<String>> = data.iter().map(|d| name(d)).collect();
        names.sort();
        names.dedup();
        let got: Vec<Option<String>> = report.groups.iter().map(|g| g.group.clone()).collect();
        ensure!(
            got == names,
            "{group_by:?}: groups {got:?}, expected {names:?}"
        );
        for group in &report.groups {
            let members: Vec<&UsageRecordedV4> = data
                .iter()
                .copied()
                .filter(|d| name(d) == group.group)
                .collect();
            check_stats(
                &format!("{group_by:?} {:?}", group.group),
                &group.stats,
                &expected_stats(&members),
            )?;
        }
    }

    // Hour granularity: from counts from the start of its hour, to up to the end of its.
    let report = views
        .usage_report(
            scope,
            w.base + time::Duration::minutes(90),
            w.base + time::Duration::minutes(120),
            GroupBy::Hour,
        )
        .await?;
    let second_hour: Vec<&UsageRecordedV4> =
        data.iter().copied().filter(|d| hour_of(d) == 1).collect();
    ensure!(report.groups.len() == 1, "{:?}", report.groups);
    check_stats("second hour", &report.totals, &expected_stats(&second_hour))?;
    let report = views
        .usage_report(
            scope,
            w.base + time::Duration::minutes(90),
            w.base + time::Duration::minutes(121),
            GroupBy::Hour,
        )
        .await?;
    ensure!(report.groups.len() == 2, "{:?}", report.groups);

    // A key's report counts only its requests; an empty range counts nothing.
    let report = views
        .usage_report(UsageScope::Key(&w.key), from, to, GroupBy::Model)
        .await?;
    let mine: Vec<&UsageRecordedV4> = data.iter().copied().filter(|d| d.key_id == w.key).collect();
    check_stats("key totals", &report.totals, &expected_stats(&mine))?;
    let empty = views
        .usage_report(scope, to, to + time::Duration::hours(5), GroupBy::Day)
        .await?;
    ensure!(empty.groups.is_empty() && empty.totals == UsageStats::default());

    // Per-minute rates: two requests a minute.
    let rates = views.minute_rates(scope, from, to).await?;
    ensure!(rates.len() == 180, "{} minutes", rates.len());
    ensure!(
        rates
            .iter()
            .all(|r| r.requests == 2 && r.total_tokens == 30)
    );
    ensure!(rates[0].minute == w.base && rates[0].cost_micros == 1);
    let key_rates = views
        .minute_rates(UsageScope::Key(&w.key), from, to)
        .await?;
    ensure!(key_rates.iter().map(|r| r.requests).sum::<u64>() == 240);
    Ok(())
}

async fn spend_is_kept_per_window_of_every_period(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    let day = time::Duration::days(1);
    let usage = vec![
        (1, request(&w, &w.key, w.base, Some("m"), 200, 10, 100)),
        (2, request(&w, &w.key, w.base + day, Some("m"), 200, 10, 20)),
        (
            3,
            request(&w, &w.revoked_key, w.base + day, None, 200, 10, 3),
        ),
        (
            4,
            request(&w, &w.key, w.base + day * 40, Some("m"), 200, 10, 7_000),
        ),
    ];
    views.apply_batch(USAGE, &usage).await?;
    let d0 = (w.base.unix_timestamp() / 86_400) as u64;
    let (p, k, r) = (w.project.as_str(), w.key.as_str(), w.revoked_key.as_str());
    for (scope, id, period, window, cost, requests) in [
        (Scope::Project, p, Period::Day, format!("d{d0}"), 100, 1),
        (
            Scope::Project,
            p,
            Period::Day,
            format!("d{}", d0 + 1),
            23,
            2,
        ),
        (
            Scope::Project,
            p,
            Period::Month,
            "M2026-01".to_owned(),
            123,
            3,
        ),
        (
            Scope::Project,
            p,
            Period::Month,
            "M2026-02".to_owned(),
            7_000,
            1,
        ),
        (
            Scope::Project,
            p,
            Period::Total,
            "total".to_owned(),
            7_123,
            4,
        ),
        (Scope::Key, k, Period::Day, format!("d{}", d0 + 1), 20, 1),
        (Scope::Key, k, Period::Month, "M2026-01".to_owned(), 120, 2),
        (Scope::Key, k, Period::Total, "total".to_owned(), 7_120, 3),
        (Scope::Key, r, Period::Total, "total".to_owned(), 3, 1),
        (Scope::Key, r, Period::Day, format!("d{d0}"), 0, 0),
    ] {
        let got = views.spend(scope, id, period, &window).await?;
        ensure!(
            (got.cost_micros, got.requests) == (cost, requests),
            "{scope:?} {id} {period:?} {window}: {got:?}"
        );
    }
    Ok(())
}

async fn budget_signals_are_derived_once(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let now = w.base + time::Duration::hours(2);
    let mut control = w.control();
    let next = |control: &Vec<(u64, Envelope)>| control.len() as u64 + 1;
    control.push((
        next(&control),
        w.env(Event::ProjectLimitsSet(ProjectLimitsSetV1 {
            project_id: w.project.clone(),
            limits: limits_with_budget(1_000, Period::Month),
        })),
    ));
    views
        .apply_batch_at(CONTROL, None, &control, next(&control) - 1, now)
        .await?;
    let p = w.project.as_str();
    let ids = |views: Views| {
        let project = w.project.clone();
        async move {
            Ok::<Vec<String>, ViewError>(
                views
                    .budget_signals(&project)
                    .await?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect(),
            )
        }
    };

    let spend = |seq: u64, cost: u64| {
        let at = w.base + time::Duration::minutes(seq as i64);
        (seq, request(&w, &w.key, at, Some("m"), 200, 1_000, cost))
    };
    // 40 %: nothing.
    let first = spend(1, 400);
    views
        .apply_batch_at(USAGE, None, std::slice::from_ref(&first), first.0, now)
        .await?;
    ensure!(ids(views.clone()).await?.is_empty());
    // 55 %: the 50 % crossing, once, however often the batch comes.
    let second = spend(2, 150);
    for _ in 0..3 {
        views
            .apply_batch_at(USAGE, None, &[first.clone(), second.clone()], 2, now)
            .await?;
    }
    ensure!(ids(views.clone()).await? == [format!("{p}:-:M2026-01:50:1000")]);
    // The same request stored again at another sequence changes nothing.
    let again = (3, reappended(&second.1));
    views.apply_batch_at(USAGE, None, &[again], 3, now).await?;
    // 85 %, then 99.9 %: only 80 %.
    let third = spend(4, 300);
    let fourth = spend(5, 149);
    views
        .apply_batch_at(USAGE, None, &[third, fourth], 5, now)
        .await?;
    let mut want = vec![
        format!("{p}:-:M2026-01:50:1000"),
        format!("{p}:-:M2026-01:80:1000"),
    ];
    ensure!(
        ids(views.clone()).await? == want,
        "{:?}",
        ids(views.clone()).await?
    );
    // 100 %.
    let fifth = spend(6, 1);
    views.apply_batch_at(USAGE, None, &[fifth], 6, now).await?;
    want.insert(0, format!("{p}:-:M2026-01:100:1000"));
    ensure!(ids(views.clone()).await? == want);

    // The pending signals are the events to append, oldest first; the same envelope
    // every time they are read.
    let pending = views.pending_budget_signals(100).await?;
    ensure!(pending.len() == 3, "{pending:?}");
    ensure!(pending == views.pending_budget_signals(100).await?);
    let fifty = pending
        .iter()
        .find(|s| s.id.ends_with(":50:1000"))
        .context("50 %")?;
    ensure!(fifty.envelope.subject() == format!("sg.signals.{}.{p}", w.tenant));
    ensure!(fifty.envelope.tenant_id == w.tenant && fifty.envelope.time == now);
    match &fifty.envelope.event {
        Event::BudgetThreshold(d) => {
            ensure!(d.threshold_id == fifty.id && d.project_id == w.project);
            ensure!(d.key_id.is_none() && d.period == "month" && d.window == "M2026-01");
            ensure!(d.percent == 50 && d.budget_micros == 1_000 && d.spent_micros == 550);
        }
        other => bail!("not a threshold: {other:?}"),
    }
    // What the log acknowledged is no longer pending.
    views.budget_signal_published(&fifty.id, now).await?;
    let left = views.pending_budget_signals(100).await?;
    ensure!(left.len() == 2 && left.iter().all(|s| s.id != fifty.id));
    let flags = views.budget_signals(&w.project).await?;
    ensure!(flags.iter().filter(|(_, published)| *published).count() == 1);

    // The budget changed mid-window, in a control batch: raised to 2,000 µ$ (1,000 spent
    // is 50 % of it), then lowered to 800 µ$ (125 %).
    for (micros, new) in [
        (2_000u64, vec!["50:2000"]),
        (800, vec!["50:800", "80:800", "100:800"]),
    ] {
        let before = ids(views.clone()).await?;
        let seq = next(&control);
        control.push((
            seq,
            w.env(Event::ProjectLimitsSet(ProjectLimitsSetV1 {
                project_id: w.project.clone(),
                limits: limits_with_budget(micros, Period::Month),
            })),
        ));
        views
            .apply_batch_at(CONTROL, None, &control, seq, now)
            .await?;
        let after = ids(views.clone()).await?;
        let mut added: Vec<&String> = after.iter().filter(|id| !before.contains(id)).collect();
        added.sort();
        let mut want: Vec<String> = new.iter().map(|s| format!("{p}:-:M2026-01:{s}")).collect();
        want.sort();
        ensure!(
            added.iter().map(|s| s.as_str()).collect::<Vec<_>>() == want,
            "after a budget of {micros}: {added:?}"
        );
    }

    // A key issued with its own budget (total): its signals name the key.
    let key = KeyId::generate();
    let seq = next(&control);
    control.push((
        seq,
        w.env(Event::KeyIssued(KeyIssuedV4 {
            key_id: key.clone(),
            project_id: w.project.clone(),
            name: "budgeted".into(),
            key_hash: "ee".repeat(32),
            hint: "SG_…k3y3".into(),
            connection_ids: vec![w.connection.clone()],
            locks: sg_events::LocksV2::default(),
            limits: limits_with_budget(100, Period::Total),
        })),
    ));
    views
        .apply_batch_at(CONTROL, None, &control, seq, now)
        .await?;
    let use_key = (7, request(&w, &key, now, Some("m"), 200, 10, 80));
    views
        .apply_batch_at(USAGE, None, &[use_key], 7, now)
        .await?;
    let k = key.as_str();
    let key_ids: Vec<String> = ids(views.clone())
        .await?
        .into_iter()
        .filter(|id| id.contains(k))
        .collect();
    ensure!(
        key_ids
            == [
                format!("{p}:{k}:total:50:100"),
                format!("{p}:{k}:total:80:100")
            ],
        "{key_ids:?}"
    );
    let pending = views.pending_budget_signals(100).await?;
    let key_signal = pending
        .iter()
        .find(|s| s.id.contains(k))
        .context("key signal")?;
    match &key_signal.envelope.event {
        Event::BudgetThreshold(d) => {
            ensure!(d.key_id.as_ref() == Some(&key) && d.period == "total")
        }
        other => bail!("not a threshold: {other:?}"),
    }
    Ok(())
}

async fn budget_signals_at_the_period_boundary(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let mut control = w.control();
    control.push((
        7,
        w.env(Event::KeyLimitsSet(KeyLimitsSetV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            limits: limits_with_budget(100, Period::Day),
        })),
    ));
    let midnight = w.base + time::Duration::days(1);
    views
        .apply_batch_at(CONTROL, None, &control, 7, w.base)
        .await?;
    let spent = (1, request(&w, &w.key, w.base, Some("m"), 200, 10, 100));
    views
        .apply_batch_at(USAGE, None, &[spent], 1, w.base + time::Duration::hours(1))
        .await?;
    ensure!(views.budget_signals(&w.project).await?.len() == 3);
    // Up to the last millisecond of the day nothing more is due, even when every budget
    // is checked.
    let last_ms = midnight - time::Duration::milliseconds(1);
    ensure!(views.derive_budget_signals(last_ms).await? == 0);
    // At midnight UTC: the reset, once.
    ensure!(views.derive_budget_signals(midnight).await? == 1);
    ensure!(views.derive_budget_signals(midnight).await? == 0);
    ensure!(
        views
            .derive_budget_signals(midnight + time::Duration::hours(3))
            .await?
            == 0
    );
    let day = midnight.unix_timestamp() / 86_400;
    let reset_id = format!("{}:{}:d{day}", w.project, w.key);
    let pending = views.pending_budget_signals(100).await?;
    let reset = pending
        .iter()
        .find(|s| s.id == reset_id)
        .with_context(|| format!("{reset_id} in {pending:?}"))?;
    ensure!(reset.envelope.time == midnight);
    match &reset.envelope.event {
        Event::BudgetReset(d) => {
            ensure!(d.reset_id == reset_id && d.key_id.as_ref() == Some(&w.key));
            ensure!(d.period == "day" && d.window == format!("d{day}"));
        }
        other => bail!("not a reset: {other:?}"),
    }
    // The next day was not exhausted: no reset the day after.
    ensure!(
        views
            .derive_budget_signals(midnight + time::Duration::days(1))
            .await?
            == 0
    );
    Ok(())
}

async fn requests_are_listed_by_filter_and_cursor(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    views.apply_batch(CONTROL, &w.control()).await?;
    // 30 requests; groups of three start in the same millisecond.
    let mut usage = Vec::new();
    for i in 0..30u64 {
        let key = if i % 4 == 0 { &w.revoked_key } else { &w.key };
        let at = w.base + time::Duration::seconds((i / 3) as i64);
        let model = if i % 2 == 0 {
            Some("gpt-4o")
        } else {
            Some("gpt-4o-mini")
        };
        let status = if i % 5 == 0 { 429 } else { 200 };
        usage.push((i + 1, request(&w, key, at, model, status, 1_000, i)));
    }
    views.apply_batch(USAGE, &usage).await?;
    let all = views.recent_requests(&w.project, 1_000).await?;
    ensure!(all.len() == 30);
    for pair in all.windows(2) {
        ensure!(
            (pair[0].started_at, pair[0].seq) > (pair[1].started_at, pair[1].seq),
            "newest first, by start then sequence"
        );
    }

    // Pages of 7 follow each other without a gap or a repeat, even with requests
    // inserted between pages: newer ones (before the cursor) are not shown, an older one
    // (after the cursor) is.
    let filter = RequestFilter::default();
    let mut seen = Vec::new();
    let mut cursor: Option<RequestCursor> = None;
    let mut pages = 0;
    loop {
        let page = views.list_requests(&w.project, &filter, cursor, 7).await?;
        if pages == 1 {
            let newer = request(
                &w,
                &w.key,
                w.base + time::Duration::hours(1),
                None,
                200,
                1,
                1,
            );
            let older = request(
                &w,
                &w.key,
                w.base - time::Duration::hours(1),
                None,
                200,
                1,
                1,
            );
            views
                .apply_batch(USAGE, &[(31, newer), (32, older)])
                .await?;
        }
        pages += 1;
        let Some(last) = page.last() else { break };
        cursor = Some(RequestCursor::after(last));
        seen.extend(page.iter().map(|r| r.seq));
    }
    let mut expected: Vec<u64> = all.iter().map(|r| r.seq).collect();
    expected.push(32);
    ensure!(seen == expected, "pages {seen:?}");

    // Filters, alone and together.
    let data: Vec<&UsageRecordedV4> = usage.iter().map(|(_, e)| usage_data(e)).collect();
    let from = w.base + time::Duration::seconds(3);
    let to = w.base + time::Duration::seconds(7);
    for (filter, keep) in [
        (
            RequestFilter {
                key_id: Some(w.revoked_key.clone()),
                ..RequestFilter::default()
            },
            Box::new(|d: &UsageRecordedV4| d.key_id == w.revoked_key)
                as Box<dyn Fn(&UsageRecordedV4) -> bool>,
        ),
        (
            RequestFilter {
                model: Some("gpt-4o".into()),
                status: Some(429),
                ..RequestFilter::default()
            },
            Box::new(|d: &UsageRecordedV4| d.model.as_deref() == Some("gpt-4o") && d.status == 429),
        ),
        (
            RequestFilter {
                from: Some(from),
                to: Some(to),
                key_id: Some(w.key.clone()),
                ..RequestFilter::default()
            },
            Box::new(|d: &UsageRecordedV4| {
                d.started_at >= from && d.started_at < to && d.key_id == w.key
            }),
        ),
    ] {
        let got = views
            .list_requests(&w.project, &filter, None, 1_000)
            .await?;
        let mut got: Vec<Uuid> = got.iter().map(|r| r.request_id).collect();
        let mut want: Vec<Uuid> = data
            .iter()
            .filter(|d| keep(d))
            .map(|d| d.request_id)
            .collect();
        got.sort();
        want.sort();
        ensure!(
            !want.is_empty() && got == want,
            "{filter:?}: {got:?} != {want:?}"
        );
    }
    Ok(())
}

/// A database of the previous schema, with usage counted the old way: the migration
/// drops the old counters and makes the projector read both streams again, which then
/// rebuilds usage, spend and limits.
async fn upgrade_resets_the_usage_projection(backend: Backend, url: &str) -> Result<()> {
    // The schema before that migration: every migration before `*_spend_views.sql`,
    // from a copy.
    let dir = tempfile::tempdir()?;
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut names: Vec<String> = std::fs::read_dir(&source)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let spend = names
        .iter()
        .position(|n| n.ends_with("_spend_views.sql"))
        .context("the spend views migration")?;
    for name in &names[..spend] {
        std::fs::copy(source.join(name), dir.path().join(name))?;
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    sqlx::migrate::Migrator::new(dir.path())
        .await?
        .run(&pool)
        .await?;
    let w = World::new();
    for statement in [
        "INSERT INTO projector_checkpoints (stream, seq) VALUES ('SG_CONTROL', 6), ('SG_USAGE', 3)"
            .to_owned(),
        format!(
            "INSERT INTO keys (id, tenant_id, project_id, name, hint, status, created_at, \
             last_used_at, connection_ids) VALUES ('{}', '{}', '{}', 'k', 'h', 'active', 1, 99, '[]')",
            w.key, w.tenant, w.project
        ),
        format!(
            "INSERT INTO key_usage (key_id, tenant_id, project_id, requests, errors, \
             prompt_tokens, completion_tokens, total_tokens, latency_us_sum, last_used_at) \
             VALUES ('{}', '{}', '{}', 3, 0, 1, 1, 2, 10, 99)",
            w.key, w.tenant, w.project
        ),
        format!(
            "INSERT INTO requests (request_id, tenant_id, project_id, key_id, endpoint, status, \
             streamed, prompt_tokens, completion_tokens, total_tokens, latency_us, started_at, \
             node, seq) VALUES ('{}', '{}', '{}', '{}', '/v1/x', 200, 0, 1, 1, 2, 10, 99, 'n', 3)",
            Uuid::now_v7(),
            w.tenant,
            w.project,
            w.key
        ),
    ] {
        sqlx::query(&statement).execute(&pool).await?;
    }
    pool.close().await;

    let views = open(backend, url).await?;
    ensure!(views.checkpoint("SG_CONTROL").await? == 0);
    ensure!(views.checkpoint("SG_USAGE").await? == 0);
    ensure!(views.recent_requests(&w.project, 10).await?.is_empty());
    let key = views.get_key(&w.key).await?.context("key")?;
    ensure!(key.last_used_at.is_none(), "last use is projected again");
    let dump = views.dump().await?;
    ensure!(dump.get("key_usage").is_none() && dump.get("project_usage").is_none());

    // Reading both streams again from their start rebuilds everything.
    views.apply_batch("SG_CONTROL", &w.control()).await?;
    views.apply_batch("SG_USAGE", &w.usage_log()).await?;
    let project = totals(&views, UsageScope::Project(&w.project)).await?;
    ensure!(
        project.requests == 3 && project.cost_micros == 290,
        "{project:?}"
    );
    let key = views.get_key(&w.key).await?.context("key")?;
    ensure!(key.last_used_at == Some(w.base + time::Duration::minutes(30)));
    ensure!(
        views.dump().await?["limits"]
            .as_array()
            .is_some_and(|l| l.len() == 3)
    );
    Ok(())
}

/// A key issued on the control stream while its first requests are applied from the
/// usage stream, at the same time: whichever commits first, the key ends with its last
/// use (each batch would otherwise miss the other's uncommitted rows on PostgreSQL).
async fn streams_meeting_on_one_key_keep_its_last_use(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    for round in 0..40 {
        let w = World::new();
        let control = w.control();
        views
            .apply_batch(&format!("c{round}"), &control[..3])
            .await?;
        let usage = vec![(1, w.usage(&w.key, 5, 200, 1, 1))];
        let (a, b) = (views.clone(), views.clone());
        let key_batch = control[..4].to_vec();
        let issue =
            tokio::spawn(async move { a.apply_batch(&format!("c{round}"), &key_batch).await });
        let record = tokio::spawn(async move { b.apply_batch(&format!("u{round}"), &usage).await });
        issue.await??;
        record.await??;
        let key = views.get_key(&w.key).await?.context("key")?;
        ensure!(
            key.last_used_at == Some(w.base + time::Duration::minutes(5)),
            "round {round}: last use {:?}",
            key.last_used_at
        );
    }
    Ok(())
}

// ---- the audit trail ----------------------------------------------------------------

const SIGNALS: &str = "signals";

impl World {
    fn suspended(&self, key: &KeyId, verdict: &str) -> Event {
        Event::KeySuspended(KeySuspendedV1 {
            key_id: key.clone(),
            project_id: self.project.clone(),
            until: 1_767_229_200,
            rule: "velocity".into(),
            reason: "600 requests in 60 s".into(),
            verdict_id: verdict.into(),
        })
    }

    fn violation(&self, key: &KeyId, at: OffsetDateTime) -> Envelope {
        let mut env = Envelope::new(
            self.tenant.clone(),
            Actor::node("gw-a"),
            Event::LockViolated(LockViolatedV1 {
                request_id: Uuid::now_v7(),
                project_id: self.project.clone(),
                key_id: key.clone(),
                code: "ip_not_allowed".into(),
                client_ip: "127.0.0.3".parse().unwrap(),
                country: None,
                city: None,
                device_hash: None,
                model: Some("gpt-4o-mini".into()),
                endpoint: "/v1/chat/completions".into(),
                node: "gw-a".into(),
            }),
        );
        env.time = at;
        env
    }

    /// A signal of a type this build does not know, as its envelope carries it.
    fn unknown_signal(&self, type_name: &str, at: OffsetDateTime) -> RawEnvelope {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::now_v7(),
            "type": type_name,
            "version": 1,
            "tenant_id": self.tenant,
            "aggregate_id": self.project,
            "time": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "actor": "node:alerts",
            "data": {"alert_id": "al_1", "key_id": self.key, "channel": "webhook:wh_1",
                     "secret": {"ciphertext": "U0VDUkVULVdFQkhPT0s="}, "level": 2}
        }))
        .unwrap()
    }
}

/// Every event of the project's trail, walking pages of `limit`.
async fn walk(
    views: &Views,
    project: &ProjectId,
    filter: &AuditFilter,
    limit: u32,
) -> Result<Vec<AuditEvent>> {
    let mut all = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = views
            .audit_events(project, filter, cursor.as_ref(), limit)
            .await?;
        ensure!(page.data.len() <= limit as usize, "page over its limit");
        all.extend(page.data);
        match page.next_cursor {
            None => return Ok(all),
            Some(next) => cursor = Some(next),
        }
    }
    bail!("the walk does not end")
}

fn types_of(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

async fn audit_trail_records_events(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let new_key = KeyId::generate();
    let at = |s: i64| w.base + time::Duration::seconds(s);
    let mut control = w.control();
    let mut more = |s: i64, actor: Actor, event: Event| {
        let mut env = w.env(event);
        env.time = at(s);
        env.actor = actor;
        control.push((control.len() as u64 + 1, env));
    };
    more(100, Actor::node("sentinel"), w.suspended(&w.key, "vrd_1"));
    more(
        110,
        Actor("token:tok_abcdefghijklmnop".into()),
        Event::KeyResumed(KeyResumedV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            verdict_id: "vrd_1".into(),
            early: true,
        }),
    );
    more(
        120,
        Actor::operator(),
        Event::KeyLocksSet(KeyLocksSetV2 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            locks: LocksV2::default(),
        }),
    );
    more(
        130,
        Actor::operator(),
        Event::KeyRotated(KeyRotatedV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            new_key_id: new_key.clone(),
            key_hash: "9f".repeat(32),
            hint: "SG_…n3w1".into(),
            retires_at: 1_767_232_800,
        }),
    );
    // Events the trail does not record: the tenant, project, connection, keys issued,
    // limits.
    more(
        140,
        Actor::operator(),
        Event::KeyLimitsSet(KeyLimitsSetV1 {
            key_id: w.key.clone(),
            project_id: w.project.clone(),
            limits: LimitsData::default(),
        }),
    );
    views.apply_batch(CONTROL, &control).await?;

    let signals = vec![
        (1, LogEntry::Event(w.violation(&w.key, at(105)))),
        (
            2,
            LogEntry::Event(w.env(Event::BudgetThreshold(BudgetThresholdV1 {
                threshold_id: format!("{}:-:total:50:100", w.project),
                project_id: w.project.clone(),
                key_id: None,
                period: "total".into(),
                window: "total".into(),
                percent: 50,
                budget_micros: 100,
                spent_micros: 60,
            }))),
        ),
        (
            3,
            LogEntry::Unknown(w.unknown_signal("alert.escalated", at(200))),
        ),
    ];
    let through = 3;
    views
        .apply_entries_at(SIGNALS, None, &signals, through, at(300))
        .await?;
    ensure!(views.checkpoint(SIGNALS).await? == 3);

    let all = walk(&views, &w.project, &AuditFilter::default(), 100).await?;
    ensure!(
        types_of(&all)
            == [
                "alert.escalated",
                "key.rotated",
                "key.locks_set",
                "key.resumed",
                "lock.violated",
                "key.suspended",
                "key.revoked",
                "budget.threshold",
            ],
        "trail {:?}",
        types_of(&all)
    );
    let by_type = |t: &str| all.iter().find(|e| e.event_type == t).unwrap();
    let suspended = by_type("key.suspended");
    ensure!(suspended.key_id.as_ref() == Some(&w.key));
    ensure!(suspended.actor == "node:sentinel");
    ensure!(suspended.time == at(100));
    ensure!(suspended.tenant_id == w.tenant && suspended.project_id == w.project);
    ensure!(suspended.data["rule"] == "velocity" && suspended.data["verdict_id"] == "vrd_1");
    ensure!((suspended.stream.as_str(), suspended.seq) == (CONTROL, 7));
    ensure!(suspended.id == control[6].1.id);
    ensure!(by_type("key.resumed").actor == "token:tok_abcdefghijklmnop");
    ensure!(by_type("key.resumed").data["early"] == true);
    let rotated = by_type("key.rotated");
    ensure!(rotated.data["new_key_id"] == new_key.as_str());
    ensure!(rotated.data.get("key_hash").is_none(), "{}", rotated.data);
    let violated = by_type("lock.violated");
    ensure!(violated.data["code"] == "ip_not_allowed" && violated.actor == "node:gw-a");
    ensure!(violated.key_id.as_ref() == Some(&w.key));
    ensure!(by_type("budget.threshold").key_id.is_none());
    let unknown = by_type("alert.escalated");
    ensure!(unknown.key_id.as_ref() == Some(&w.key) && unknown.data["level"] == 2);
    ensure!(unknown.data.get("secret").is_none(), "{}", unknown.data);
    ensure!(unknown.actor == "node:alerts");
    let revoked = by_type("key.revoked");
    ensure!(revoked.key_id.as_ref() == Some(&w.revoked_key));
    ensure!(revoked.data["reason"] == "rotated");

    // Applied again, with a lower checkpoint precondition or none, nothing changes; the
    // same event at another position (appended twice) is recorded once.
    let before = views.dump().await?;
    views.apply_batch(CONTROL, &control).await?;
    views
        .apply_entries_at(SIGNALS, None, &signals, through, at(300))
        .await?;
    ensure!(views.dump().await? == before, "applied twice");
    let again = match &signals[0].1 {
        LogEntry::Event(env) => env.clone(),
        LogEntry::Unknown(_) => unreachable!(),
    };
    views
        .apply_entries_at(SIGNALS, None, &[(4, LogEntry::Event(again))], 4, at(300))
        .await?;
    ensure!(views.checkpoint(SIGNALS).await? == 4);
    let after = walk(&views, &w.project, &AuditFilter::default(), 3).await?;
    ensure!(after == all, "{:?}", types_of(&after));

    // Nothing secret reached the table.
    let text = views.dump().await?["audit_events"].to_string();
    for secret in [
        "9f".repeat(32),
        "ab".repeat(32),
        w.secret.ciphertext.clone(),
        "U0VDUkVULVdFQkhPT0s=".into(),
    ] {
        ensure!(!text.contains(&secret), "a secret reached the audit trail");
    }
    Ok(())
}

async fn audit_trail_filters_and_pages(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let w = World::new();
    let other_key = KeyId::generate();
    views.apply_batch(CONTROL, &w.control()).await?;
    let at = |s: i64| w.base + time::Duration::seconds(s);
    // 60 signals, three per second (equal times across positions), alternating keys,
    // and 10 suspensions on the control stream at the same seconds.
    let signals: Vec<(u64, LogEntry)> = (0..60)
        .map(|i| {
            let key = if i % 2 == 0 { &w.key } else { &other_key };
            (
                i + 1,
                LogEntry::Event(w.violation(key, at(1_000 + i as i64 / 3))),
            )
        })
        .collect();
    views
        .apply_entries_at(SIGNALS, None, &signals, 60, at(2_000))
        .await?;
    let control: Vec<(u64, Envelope)> = (0..10)
        .map(|i| {
            let mut env = w.env(w.suspended(&w.key, &format!("vrd_{i}")));
            env.time = at(1_000 + i * 2);
            (7 + i as u64, env)
        })
        .collect();
    views.apply_batch(CONTROL, &control).await?;
    let total = 60 + 10 + 1; // and the revocation of w.control()

    // Every page size walks every event exactly once, newest first.
    let everything = walk(&views, &w.project, &AuditFilter::default(), 500).await?;
    ensure!(everything.len() == total, "{} events", everything.len());
    for pair in everything.windows(2) {
        let key = |e: &AuditEvent| (e.time, e.stream.clone(), e.seq);
        ensure!(key(&pair[0]) > key(&pair[1]), "not newest first");
    }
    for limit in [1, 2, 7, 70, 71, 72] {
        let walked = walk(&views, &w.project, &AuditFilter::default(), limit).await?;
        ensure!(walked == everything, "pages of {limit}");
    }

    // Filters.
    let types = |t: &[&str]| AuditFilter {
        types: t.iter().map(|s| s.to_string()).collect(),
        ..AuditFilter::default()
    };
    let suspensions = walk(&views, &w.project, &types(&["key.suspended"]), 3).await?;
    ensure!(suspensions.len() == 10);
    let both = walk(
        &views,
        &w.project,
        &types(&["key.suspended", "key.revoked"]),
        4,
    )
    .await?;
    ensure!(both.len() == 11);
    ensure!(
        walk(&views, &w.project, &types(&["budget.reset"]), 4)
            .await?
            .is_empty()
    );
    let of_key = AuditFilter {
        key_id: Some(other_key.clone()),
        ..AuditFilter::default()
    };
    let others = walk(&views, &w.project, &of_key, 4).await?;
    ensure!(others.len() == 30 && others.iter().all(|e| e.key_id.as_ref() == Some(&other_key)));
    let window = AuditFilter {
        types: vec!["lock.violated".into()],
        key_id: Some(w.key.clone()),
        from: Some(at(1_003)),
        to: Some(at(1_006)),
    };
    let windowed = walk(&views, &w.project, &window, 2).await?;
    // Seconds 1003..1005: signals 9..=17, of which the even ones (w.key): 10, 12, 14, 16.
    ensure!(
        windowed.iter().map(|e| e.seq).collect::<Vec<_>>() == [17, 15, 13, 11],
        "{:?}",
        windowed.iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // A walk during which newer events are recorded still lists each event it started
    // with exactly once (and none of the new ones, which sort before its position).
    let first = views
        .audit_events(&w.project, &AuditFilter::default(), None, 20)
        .await?;
    let late: Vec<(u64, LogEntry)> = (0..5)
        .map(|i| {
            (
                61 + i,
                LogEntry::Event(w.violation(&w.key, at(5_000 + i as i64))),
            )
        })
        .collect();
    views
        .apply_entries_at(SIGNALS, None, &late, 65, at(6_000))
        .await?;
    let mut rest = first.data.clone();
    let mut cursor = first.next_cursor.clone();
    while let Some(c) = cursor {
        let page = views
            .audit_events(&w.project, &AuditFilter::default(), Some(&c), 20)
            .await?;
        rest.extend(page.data);
        cursor = page.next_cursor;
    }
    ensure!(rest == everything, "the walk changed under inserts");
    ensure!(
        walk(&views, &w.project, &AuditFilter::default(), 9)
            .await?
            .len()
            == total + 5
    );
    Ok(())
}

async fn audit_trail_keeps_tenants_apart(backend: Backend, url: &str) -> Result<()> {
    let views = open(backend, url).await?;
    let (a, b) = (World::new(), World::new());
    views.apply_batch("control-a", &a.control()).await?;
    views.apply_batch("control-b", &b.control()).await?;
    let at = a.base + time::Duration::seconds(50);
    // B's own signal, and one under B's tenant that names A's project.
    let mut forged = a.violation(&a.key, at);
    forged.tenant_id = b.tenant.clone();
    views
        .apply_entries_at(
            SIGNALS,
            None,
            &[
                (1, LogEntry::Event(a.violation(&a.key, at))),
                (2, LogEntry::Event(b.violation(&b.key, at))),
                (3, LogEntry::Event(forged)),
            ],
            3,
            at,
        )
        .await?;
    for (w, other) in [(&a, &b), (&b, &a)] {
        let events = walk(&views, &w.project, &AuditFilter::default(), 10).await?;
        ensure!(
            types_of(&events) == ["lock.violated", "key.revoked"],
            "{:?}",
            types_of(&events)
        );
        ensure!(
            events
                .iter()
                .all(|e| e.tenant_id == w.tenant && e.project_id == w.project)
        );
        let text = serde_json::to_string(&events)?;
        ensure!(!text.contains(other.tenant.as_str()) && !text.contains(other.key.as_str()));
    }
    // A project the views do not know lists nothing, whatever the trail holds for it.
    ensure!(
        walk(&views, &ProjectId::generate(), &AuditFilter::default(), 10)
            .await?
            .is_empty()
    );
    Ok(())
}

/// Views upgraded from before the trail: the control events projected then are owed
/// to it, and recorded by the backfill without folding them again.
async fn audit_backfill_after_upgrade(backend: Backend, url: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut names: Vec<String> = std::fs::read_dir(&source)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let audit = names
        .iter()
        .position(|n| n.ends_with("_audit_events.sql"))
        .context("the audit migration")?;
    for name in &names[..audit] {
        std::fs::copy(source.join(name), dir.path().join(name))?;
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    sqlx::migrate::Migrator::new(dir.path())
        .await?
        .run(&pool)
        .await?;
    // The control stream, projected up to 7 before the upgrade (the views of it are
    // reduced here to its checkpoint and the project).
    let w = World::new();
    let mut control = w.control();
    let mut suspended = w.env(w.suspended(&w.key, "vrd_old"));
    suspended.time = w.base + time::Duration::seconds(60);
    control.push((7, suspended));
    for statement in [
        "INSERT INTO projector_checkpoints (stream, seq) VALUES ('SG_CONTROL', 7), ('SG_USAGE', 3)"
            .to_owned(),
        format!(
            "INSERT INTO projects (id, tenant_id, name, created_at) VALUES ('{}', '{}', 'p', 1)",
            w.project, w.tenant
        ),
    ] {
        sqlx::query(&statement).execute(&pool).await?;
    }
    pool.close().await;

    let views = open(backend, url).await?;
    ensure!(views.audit_backfill("SG_CONTROL").await? == Some((0, 7)));
    ensure!(views.audit_backfill(USAGE).await?.is_none());
    ensure!(
        walk(&views, &w.project, &AuditFilter::default(), 10)
            .await?
            .is_empty()
    );
    // In two steps; the first, delivered twice.
    for _ in 0..2 {
        ensure!(views.backfill_audit("SG_CONTROL", &control[..6], 6).await? == Some((6, 7)));
    }
    ensure!(
        views
            .backfill_audit("SG_CONTROL", &control[6..], 7)
            .await?
            .is_none()
    );
    ensure!(views.audit_backfill("SG_CONTROL").await?.is_none());
    // Nothing more is owed: a later call changes nothing.
    ensure!(
        views
            .backfill_audit("SG_CONTROL", &control, 7)
            .await?
            .is_none()
    );
    let events = walk(&views, &w.project, &AuditFilter::default(), 10).await?;
    ensure!(
        types_of(&events) == ["key.suspended", "key.revoked"],
        "{:?}",
        types_of(&events)
    );
    ensure!(events[0].seq == 7 && events[0].stream == "SG_CONTROL");
    // Only the trail: nothing else was folded again.
    ensure!(views.checkpoint("SG_CONTROL").await? == 7);
    ensure!(views.get_tenant(&w.tenant).await?.is_none());
    ensure!(views.list_keys(&w.project).await?.is_empty());
    Ok(())
}
