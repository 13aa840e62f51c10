//! One conformance suite for the views, run against a private PostgreSQL and a
//! temporary SQLite file. Every case gets a fresh database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use sg_events::{
    Actor, ConnectionCreatedV2, ConnectionId, Envelope, Event, KeyId, KeyIssuedV1, KeyRevokedV1,
    ProjectCreatedV1, ProjectId, Provider, SealedKey, TenantCreatedV1, TenantId, UsageRecordedV2,
};
use sg_testkit::PostgresServer;
use sg_views::{Backend, KeyStatus, ViewError, Views};
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
            Event::TenantCreated(TenantCreatedV1 {
                name: "Acme".into(),
            }),
            Event::ProjectCreated(ProjectCreatedV1 {
                project_id: self.project.clone(),
                name: "chatbot".into(),
            }),
            Event::ConnectionCreated(ConnectionCreatedV2 {
                connection_id: self.connection.clone(),
                project_id: self.project.clone(),
                provider: Provider::Openai,
                name: "prod openai".into(),
                base_url: Some("https://llm.example/v1".into()),
                api_key: self.secret.clone(),
                openai_organization: None,
                openai_project: None,
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
        self.env(Event::UsageRecorded(UsageRecordedV2 {
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
            latency_us: 1_500 * (minute as u64 + 1),
            started_at: self.base + time::Duration::minutes(minute),
            node: "node-a".into(),
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

fn usage_data(env: &Envelope) -> &UsageRecordedV2 {
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
    let totals = views.project_usage(&world.project).await?;
    ensure!(totals.requests == 0 && totals.avg_latency_ms.is_none());
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

    let project = views.project_usage(&w.project).await?;
    ensure!(project.requests == 3 && project.errors == 1, "{project:?}");
    ensure!(project.prompt_tokens == 20 && project.completion_tokens == 9);
    ensure!(project.total_tokens == 29);
    // Latencies 16.5 ms, 46.5 ms and 31.5 ms.
    ensure!(project.latency_us_sum == 94_500);
    ensure!(project.avg_latency_ms == Some(31.5), "{project:?}");
    ensure!(project.last_used_at == Some(w.base + time::Duration::minutes(30)));

    let key = views.key_usage(&w.key).await?;
    ensure!(
        key.requests == 2 && key.errors == 1 && key.total_tokens == 22,
        "{key:?}"
    );
    ensure!(key.avg_latency_ms == Some(31.5));
    let other = views.key_usage(&w.revoked_key).await?;
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
    ensure!(views.key_usage(&w.key).await?.errors == 2);
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
    ensure!(views.project_usage(&w.project).await?.requests == 4);
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

    let totals = views.project_usage(&w.project).await?;
    ensure!(
        totals.requests == 2 && totals.total_tokens == 22,
        "{totals:?}"
    );
    let key = views.key_usage(&w.key).await?;
    ensure!(key.requests == 2 && key.total_tokens == 22, "{key:?}");
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
    ensure!(views.project_usage(&w.project).await?.requests == 0);
    ensure!(views.key_usage(&w.key).await?.requests == 0);
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
    ensure!(views.project_usage(&w.project).await?.requests == 1);
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
    let control = w.control();
    let mut usage = w.usage_log();
    // Usage of a key the control stream has not issued yet when it is projected, a
    // request stored twice, and more traffic.
    usage.push((4, reappended(&usage[0].1)));
    usage.push((5, w.usage(&w.key, 45, 429, 0, 0)));
    usage.push((6, w.usage(&w.revoked_key, 5, 200, 100, 50)));

    // Live: small batches, streams interleaved, some batches delivered twice.
    live.apply_batch(CONTROL, &control[..2]).await?;
    live.apply_batch(USAGE, &usage[..2]).await?;
    live.apply_batch(CONTROL, &control[..4]).await?;
    live.apply_batch(USAGE, &usage[1..4]).await?;
    live.apply_batch(USAGE, &usage[1..4]).await?;
    live.apply_batch(CONTROL, &control[4..]).await?;
    live.apply_batch(USAGE, &usage[4..]).await?;
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
    rebuilt.apply_batch(USAGE, &usage).await?;
    rebuilt.apply_batch(CONTROL, &control).await?;
    let rebuilt_dump = rebuilt.dump().await?;

    if live_dump != rebuilt_dump {
        bail!(
            "rebuild differs from live:\nlive: {}\nrebuilt: {}",
            serde_json::to_string_pretty(&live_dump)?,
            serde_json::to_string_pretty(&rebuilt_dump)?
        );
    }
    // Every view is covered by the comparison.
    let tables = live_dump.as_object().context("dump is an object")?;
    let mut names: Vec<&str> = tables.keys().map(String::as_str).collect();
    names.sort_unstable();
    ensure!(
        names
            == [
                "connections",
                "key_usage",
                "keys",
                "project_usage",
                "projector_checkpoints",
                "projects",
                "requests",
                "tenants"
            ],
        "tables: {names:?}"
    );
    for (name, rows) in tables {
        ensure!(
            rows.as_array().is_some_and(|r| !r.is_empty()),
            "{name} is empty"
        );
    }
    let key = live.get_key(&w.key).await?.context("key")?;
    ensure!(key.last_used_at == Some(w.base + time::Duration::minutes(45)));
    ensure!(live.project_usage(&w.project).await?.requests == 5);
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
        ensure!(views.key_usage(&w.key).await?.requests == 20);
        ensure!(views.list_keys(&w.project).await?.len() == 2);
    }
    ensure!(views.checkpoint("shared").await? == 10);
    ensure!(views.key_usage(&worlds[0].revoked_key).await?.requests == 10);
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
