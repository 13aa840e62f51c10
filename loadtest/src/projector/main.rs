//! `sg-projector`: the usage pipeline, from the usage stream to the PostgreSQL views.
//!
//! Starts a private NATS JetStream server and a private PostgreSQL (`sg_testkit`), sets
//! up the streams (`sg_app::connect_jetstream`) and the views (`sg_app::connect_views`),
//! and runs the real projector in this process (`sg_projector::Projector`, with the
//! configuration `sg_app::ProjectorService` runs it with). Two phases:
//!
//! 1. **Throughput**: N usage events are published before the projector starts (a
//!    backlog), then the projector is started and timed until the views hold all N.
//!    The views' totals are checked against what was published.
//! 2. **Lag at a rate**: with the projector caught up, events are published on an
//!    open-loop schedule (event *i* due at *i / rate*), and each event's lag is the time
//!    from when it was due to when the projector's committed checkpoint passed its
//!    sequence.
#![forbid(unsafe_code)]

mod fleet;
mod report;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use sg_eventlog::{Append, EventLog, StreamName};
use sg_testkit::{NatsServer, PostgresServer};
use sg_views::{GroupBy, UsageScope, Views};
use time::OffsetDateTime;

use crate::fleet::{Fleet, Rng, Totals};
use crate::report::{Lags, Phase1, Phase2, Report};
use crate::watch::{Meter, Timeline};

/// The usage pipeline: how fast the projector folds usage events from NATS JetStream
/// into the PostgreSQL views (a backlog of N events), and its lag under an open-loop
/// rate. Starts its own nats-server and PostgreSQL; prints a report with the goals.
#[derive(Debug, Parser)]
#[command(name = "sg-projector", version)]
struct Cli {
    /// Phase 1: usage events published as a backlog before the projector starts.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events: u64,
    /// Phase 2: events per second, open loop (0: skip phase 2).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    rate: u64,
    /// Phase 2: seconds of publishing at the rate.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    duration: u64,
    /// Projects of the made-up tenant (traffic skewed towards the first).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    projects: u64,
    /// Keys per project.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    keys_per_project: u64,
    /// The projector's batch size (most events per transaction); default: the
    /// projector's own default, as `securegate server projector` runs it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch_size: Option<u64>,
    /// Longest wait for the projector to apply what was published, per phase (seconds).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    timeout: u64,
    /// Record the whole machine with `perf record -a -g` for this many seconds from the
    /// projector's start in phase 1, and print the top of `perf report` (by process, and
    /// by process and symbol).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    perf: Option<u64>,
    /// Also count PostgreSQL's statements in phase 1, by kind (`pg_stat_statements`; the
    /// private server is restarted once to load it), and print them.
    #[arg(long)]
    pg_statements: bool,
    /// Seed of the events' values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sg_loadtest::init_logging("warn");
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; measure a --release build");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");

    eprintln!("starting a private nats-server and PostgreSQL …");
    let nats = NatsServer::start().await.context(
        "cannot start a private nats-server (sg_testkit::NatsServer): see the cause below",
    )?;
    let mut pg = PostgresServer::start().await.context(
        "cannot start a private PostgreSQL (sg_testkit::PostgresServer): see the cause below",
    )?;
    if cli.pg_statements {
        pg.psql(
            "postgres",
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        )
        .await?;
        pg.restart()
            .await
            .context("restarting PostgreSQL with pg_stat_statements")?;
    }
    let views_url = pg.create_database("views").await?;
    if cli.pg_statements {
        pg.psql("views", "CREATE EXTENSION pg_stat_statements")
            .await
            .context("pg_stat_statements is not available (install postgresql-contrib)")?;
    }
    let log = sg_app::connect_jetstream(&nats.url(), 1).await?;
    let views = sg_app::connect_views(&views_url).await?;
    let meter = Meter::new(&pg.data_dir(), &nats.store_dir());
    if meter.found() != (true, true) {
        eprintln!(
            "warning: could not find the PostgreSQL or nats-server process; their CPU time reads 0"
        );
    }
    let pg_settings = pg
        .psql(
            "views",
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings \
             WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers')",
        )
        .await
        .unwrap_or_default();
    let pg_version = pg
        .psql("views", "SHOW server_version")
        .await
        .unwrap_or_default();

    // The installation the usage belongs to.
    let fleet = Fleet::new(
        usize::try_from(cli.projects)?,
        usize::try_from(cli.keys_per_project)?,
    );
    let control = fleet.control_events();
    let control_count = control.len();
    for result in log.append_batch(control).await {
        result.context("appending the control events")?;
    }

    // Phase 1: the backlog.
    eprintln!("phase 1: publishing {} usage events …", cli.events);
    let mut rng = Rng::new(cli.seed);
    let mut published = Totals::default();
    let publish_start = Instant::now();
    publish_backlog(&log, &fleet, &mut rng, &mut published, cli.events).await?;
    let publish_secs = publish_start.elapsed().as_secs_f64();
    let head = log.bounds(StreamName::Usage).await?.last_seq;
    if head != cli.events {
        bail!(
            "the usage stream holds {head} events after publishing {}",
            cli.events
        );
    }

    let mut config = sg_projector::ProjectorConfig::default();
    let default_batch = config.batch_size;
    if let Some(size) = cli.batch_size {
        config.batch_size = usize::try_from(size)?;
    }
    let batch_size = config.batch_size;
    eprintln!(
        "phase 1: {} events published in {publish_secs:.1} s; starting the projector (batch size {batch_size}) …",
        cli.events
    );
    let timeline = Timeline::default();
    let perf_dir = tempfile::tempdir().context("creating a directory for perf")?;
    if cli.pg_statements {
        pg.psql("views", "SELECT pg_stat_statements_reset()")
            .await?;
    }
    let before = meter.snapshot();
    let t0 = Instant::now();
    let (projector, progress) = sg_projector::Projector::start(log.clone(), views.clone(), config);
    timeline.follow(progress);
    let perf = cli
        .perf
        .map(|secs| report::start_perf(secs, &perf_dir.path().join("perf.data")))
        .transpose()?;
    let caught_up = timeline
        .wait_for(head, Duration::from_secs(cli.timeout))
        .await;
    let t1 = Instant::now();
    let after = meter.snapshot();
    if !caught_up {
        bail!(
            "phase 1: the projector applied {} of {head} events within {} s",
            timeline.last_seq(),
            cli.timeout
        );
    }
    let points = timeline.points();
    let phase1 = Phase1::from_points(
        cli.events,
        publish_secs,
        t0,
        t1,
        &points,
        meter.between(&before, &after),
    );
    eprintln!(
        "phase 1: applied in {:.2} s ({:.0} events/s)",
        phase1.apply_secs, phase1.throughput
    );
    let statements = if cli.pg_statements {
        statements(&pg).await?
    } else {
        String::new()
    };
    let check1 = check_views(&views, &pg, &fleet, &published).await?;
    let perf_text = match perf {
        Some(child) => {
            report::finish_perf(child, &perf_dir.path().join("perf.data"), &meter.pids()).await
        }
        None => String::new(),
    };

    // Phase 2: lag at a rate.
    let phase2 = if cli.rate > 0 {
        eprintln!(
            "phase 2: publishing {} events/s for {} s, open loop …",
            cli.rate, cli.duration
        );
        let before = meter.snapshot();
        let sent = publish_at_rate(&log, &fleet, &mut rng, &mut published, &cli).await?;
        let last = sent.iter().map(|s| s.seq).max().unwrap_or(0);
        let settled = timeline
            .wait_for(last, Duration::from_secs(cli.timeout))
            .await;
        let after = meter.snapshot();
        let points = timeline.points();
        let lags = Lags::of(&sent, &points);
        eprintln!(
            "phase 2: lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lags.p50_ms, lags.p99_ms, lags.max_ms
        );
        let check = check_views(&views, &pg, &fleet, &published).await?;
        Some(Phase2 {
            rate: cli.rate,
            duration: cli.duration,
            lags,
            settled,
            cpu: meter.between(&before, &after),
            check,
        })
    } else {
        None
    };

    projector
        .stop()
        .await
        .context("the projector stopped with an error")?;
    views.close().await;

    let report = Report {
        cpu: sg_loadtest::cpu_model(),
        nproc: sg_loadtest::cores(),
        loadavg,
        date: OffsetDateTime::now_utc(),
        pg_version,
        pg_settings,
        projects: cli.projects,
        keys: fleet.keys(),
        control_events: control_count,
        batch_size,
        default_batch,
        phase1,
        check1,
        phase2,
        perf: perf_text,
        statements,
        wall_secs: started.elapsed().as_secs_f64(),
    };
    report.print();
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(pg);
    drop(nats);
    Ok(())
}

/// Events per append batch, as one PubAck-pipelined burst.
const CHUNK: u64 = 1_000;
/// Batches in flight at once.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Publishes `count` usage events, `CHUNK` at a time through `append_batch` (every
/// publish of a chunk sent before its PubAcks are awaited, as the gateway's publisher
/// does), several chunks in flight.
async fn publish_backlog(
    log: &Arc<dyn EventLog>,
    fleet: &Fleet,
    rng: &mut Rng,
    totals: &mut Totals,
    count: u64,
) -> anyhow::Result<()> {
    let chunks = count.div_ceil(CHUNK);
    let mut results = futures::stream::iter(0..chunks)
        .map(|c| {
            let n = CHUNK.min(count - c * CHUNK);
            let appends: Vec<Append> = (0..n).map(|_| fleet.usage(rng, totals)).collect();
            let log = log.clone();
            async move { log.append_batch(appends).await }
        })
        .buffer_unordered(CHUNKS_IN_FLIGHT);
    let mut done = 0u64;
    while let Some(batch) = results.next().await {
        for result in batch {
            let appended = result.context("publishing a usage event")?;
            if appended.duplicate {
                bail!("a usage event was stored as a duplicate");
            }
            done += 1;
        }
        if done.is_multiple_of(50_000) {
            eprintln!("  {done} published");
        }
    }
    Ok(())
}

/// One event of phase 2.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// When it was due on the schedule.
    pub due: Instant,
    /// When its PubAck arrived.
    pub acked: Instant,
    pub seq: u64,
}

/// Publishes `rate` events per second for `duration` seconds on an open-loop schedule:
/// event *i* is due at *i / rate* after the start; a timer wakes the sender at each
/// due time (the tokio timer's 1 ms resolution: about rate / 1000 events per wake-up),
/// which hands the events due to a task of their own and goes back to sleep without
/// waiting for their PubAcks.
async fn publish_at_rate(
    log: &Arc<dyn EventLog>,
    fleet: &Fleet,
    rng: &mut Rng,
    totals: &mut Totals,
    cli: &Cli,
) -> anyhow::Result<Vec<Sent>> {
    let total = cli.rate * cli.duration;
    let period = Duration::from_secs(1).as_secs_f64() / cli.rate as f64;
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::with_capacity(
        usize::try_from(total).unwrap_or(0),
    )));
    let start = Instant::now() + Duration::from_millis(10);
    let due = |i: u64| start + Duration::from_secs_f64(i as f64 * period);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while i < total {
        tokio::time::sleep_until(due(i).into()).await;
        let now = Instant::now();
        let mut batch = Vec::new();
        while i < total && due(i) <= now {
            batch.push((due(i), fleet.usage(rng, totals)));
            i += 1;
        }
        let log = log.clone();
        let sent = sent.clone();
        tasks.spawn(async move {
            let (dues, appends): (Vec<Instant>, Vec<Append>) = batch.into_iter().unzip();
            let results = log.append_batch(appends).await;
            let acked = Instant::now();
            let mut out = Vec::with_capacity(results.len());
            for (due, result) in dues.into_iter().zip(results) {
                let appended = result.context("publishing a usage event")?;
                out.push(Sent {
                    due,
                    acked,
                    seq: appended.seq,
                });
            }
            sent.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(out);
            anyhow::Ok(())
        });
        // Reap finished publishes as we go, so failures surface early.
        while let Some(done) = tasks.try_join_next() {
            done.context("a publishing task failed")??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a publishing task failed")??;
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(sent)
}

/// PostgreSQL's statements since the last reset, most frequent first: calls, execution
/// time, rows and the statement (shortened).
async fn statements(pg: &PostgresServer) -> anyhow::Result<String> {
    let from = "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                WHERE d.datname = 'views' AND s.query NOT LIKE '%pg_stat_statements%'";
    let total = pg
        .psql(
            "views",
            &format!(
                "SELECT sum(calls) || ' statements, ' || round(sum(total_exec_time)::numeric) \
                 || ' ms executing' {from}"
            ),
        )
        .await?;
    let top = pg
        .psql(
            "views",
            &format!(
                "SELECT lpad(calls::text, 9) || lpad(round(total_exec_time::numeric)::text, 8) \
                 || ' ms ' || lpad(rows::text, 9) || ' rows  ' \
                 || left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
                 {from} ORDER BY calls DESC LIMIT 16"
            ),
        )
        .await?;
    Ok(format!(
        "{total}\n    calls    time      rows  statement\n{top}"
    ))
}

/// What the views hold against what was published.
#[derive(Debug, Clone)]
pub struct Check {
    pub views: Totals,
    pub published: Totals,
    /// Rows of `requests`, and their summed total tokens, read with psql.
    pub request_rows: u64,
    pub request_tokens: u64,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.views == self.published
            && self.request_rows == self.published.requests
            && self.request_tokens == self.published.total_tokens
    }
}

/// Sums the usage report of every project (the hourly rollups, as the admin API reads
/// them) and reads the `requests` table directly.
async fn check_views(
    views: &Views,
    pg: &PostgresServer,
    fleet: &Fleet,
    published: &Totals,
) -> anyhow::Result<Check> {
    let now = OffsetDateTime::now_utc();
    let from = now - time::Duration::days(1);
    let to = now + time::Duration::hours(1);
    let mut totals = Totals::default();
    for project in fleet.project_ids() {
        let report = views
            .usage_report(UsageScope::Project(project), from, to, GroupBy::Model)
            .await
            .context("reading a usage report")?;
        let t = &report.totals;
        totals.merge(&Totals {
            requests: t.requests,
            errors: t.errors,
            prompt_tokens: t.prompt_tokens,
            cached_prompt_tokens: t.cached_prompt_tokens,
            completion_tokens: t.completion_tokens,
            total_tokens: t.total_tokens,
            cost_micros: t.cost_micros,
            unpriced_requests: t.unpriced_requests,
        });
    }
    let rows = pg
        .psql(
            "views",
            "SELECT count(*) || ' ' || coalesce(sum(total_tokens), 0) FROM requests",
        )
        .await
        .context("counting the requests table")?;
    let mut parts = rows.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(request_rows)), Some(Ok(request_tokens))) = (parts.next(), parts.next()) else {
        bail!("unexpected answer counting the requests table: {rows:?}");
    };
    Ok(Check {
        views: totals,
        published: *published,
        request_rows,
        request_tokens,
    })
}
