//! SecureGate's read side: SQL views folded from the event log, and the queries the admin
//! API answers from them.
//!
//! One implementation serves PostgreSQL (clusters) and SQLite (embedded mode) through
//! `sqlx`'s `Any` driver: every statement is written once, with `$N` placeholders, and
//! uses only what both databases share (`TEXT` and `BIGINT` columns, `ON CONFLICT`
//! upserts, `RETURNING`).
//!
//! # Storage conventions
//!
//! - Times are stored as `BIGINT` unix **milliseconds** (sub-millisecond precision of an
//!   event's time is dropped). Row structs expose them as [`time::OffsetDateTime`] and
//!   serialize them as RFC 3339 strings.
//! - Booleans are `BIGINT` 0/1; lists are JSON text.
//! - No view holds a provider secret (sealed or not) or a proxy key's hash.
//!
//! # Exactly-once projection
//!
//! [`Views::apply_batch`] applies a batch of one stream's events and moves that stream's
//! checkpoint in the same transaction, skipping events at or below the checkpoint, so a
//! batch delivered twice changes nothing. Usage counts only requests whose id was
//! inserted into `requests` by this batch, so the same `usage.recorded` event stored
//! twice at different sequences counts once. [`Views::apply_batch_after`] adds a
//! precondition on the stored checkpoint, which detects a database that lost committed
//! transactions. Every write transaction first takes the views' writer lock (one row of
//! `views_writer`), so batches apply one after another even across streams: a key issued
//! beside its first requests, or a budget set beside its spend, never miss each other's
//! uncommitted rows.
//!
//! # Usage and spend
//!
//! A batch's requests are aggregated in memory ([`rollup`]) and each row they touch is
//! written with one upsert: hourly usage per (project, key, model) with a latency
//! histogram, per-minute rates per (project, key), and settled spend per (project or key,
//! period, window) for the day, month and total periods of every project and key. Reports
//! ([`Views::usage_report`]) merge the hourly histograms, so their percentiles are true
//! percentiles (within the histogram's precision), not averages.
//!
//! # Budget signals
//!
//! The transaction that changes a budget's spend or limits also records the
//! `budget.threshold` and `budget.reset` signals it makes due ([`budget`] decides,
//! `budget_signals` keeps them until the log acknowledged them: see
//! [`Views::pending_budget_signals`]).
//!
//! # The audit trail
//!
//! The security-relevant control events and every signal are recorded, as they are
//! applied, in one table listed newest first with an opaque cursor
//! ([`Views::audit_events`]; see [`audit`]).
//!
//! Sequences and counters are `u64` in Rust and `BIGINT` in SQL; an event whose numbers
//! do not fit is refused with [`ViewError::Rejected`] (and nothing of its batch is
//! written).
#![forbid(unsafe_code)]

mod apply;
pub mod audit;
pub mod budget;
mod error;
mod query;
pub mod rollup;
mod signals;

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions as _, Connection as _};

pub use audit::{AuditCursor, AuditEvent, AuditFilter, AuditPage, LogEntry};
pub use error::ViewError;
pub use query::{
    ConnectionRow, GroupBy, KeyRow, KeyStatus, MinuteRate, ProjectRow, RequestCursor,
    RequestFilter, RequestRow, SpendRow, TenantRow, UsageGroup, UsageReport, UsageScope,
    UsageStats,
};
pub use signals::PendingSignal;

/// The embedded schema migrations (identical DDL for both backends).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database holds the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The backend a connection URL names, if it is one of ours.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct ViewsConfig {
    /// Pool size; `None` picks 8 for PostgreSQL and 4 for SQLite.
    pub max_connections: Option<u32>,
    /// How long a query waits for a connection before failing as
    /// [`ViewError::Unavailable`].
    pub acquire_timeout: Duration,
    /// SQLite only: how long a write waits for another writer's lock.
    pub sqlite_busy_timeout: Duration,
}

impl Default for ViewsConfig {
    fn default() -> Self {
        ViewsConfig {
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(10),
        }
    }
}

/// A handle on the view database. Cheap to clone (a shared pool).
#[derive(Debug, Clone)]
pub struct Views {
    pool: AnyPool,
    backend: Backend,
}

impl Views {
    /// Connects to `postgres://…` or `sqlite://PATH?mode=rwc` with default settings.
    /// SQLite databases are switched to WAL journaling and get a busy timeout.
    pub async fn connect(url: &str) -> Result<Views, ViewError> {
        Self::connect_with(url, ViewsConfig::default()).await
    }

    /// Connects with explicit settings. Fails with [`ViewError::Unavailable`] when the
    /// database cannot be reached.
    pub async fn connect_with(url: &str, config: ViewsConfig) -> Result<Views, ViewError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            ViewError::Other(
                "unsupported view database URL: expected postgres://… or sqlite://…".to_owned(),
            )
        })?;
        let options = AnyConnectOptions::from_str(url)
            .map_err(|err| ViewError::Other(format!("invalid view database URL: {err}")))?;
        let pool_options = AnyPoolOptions::new().acquire_timeout(config.acquire_timeout);
        let pool = match backend {
            Backend::Postgres => {
                pool_options
                    .max_connections(config.max_connections.unwrap_or(8))
                    .connect_with(options)
                    .await?
            }
            Backend::Sqlite => {
                // WAL is a property of the database file: set it once, on one connection,
                // before any other connection exists (the switch takes an exclusive lock).
                let mut conn = options.connect().await?;
                sqlx::query("PRAGMA journal_mode = WAL")
                    .fetch_all(&mut conn)
                    .await?;
                conn.close().await?;
                let busy_ms =
                    i64::try_from(config.sqlite_busy_timeout.as_millis()).unwrap_or(i64::MAX);
                pool_options
                    .max_connections(config.max_connections.unwrap_or(4))
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            sqlx::query(&format!("PRAGMA busy_timeout = {busy_ms}"))
                                .execute(&mut *conn)
                                .await?;
                            // Views are derived: a commit is not synced to disk (WAL
                            // keeps it safe from a crash of the process). A power loss
                            // may take back the newest transactions, each with its
                            // projector checkpoint, and the projector applies them again
                            // from the log.
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Views { pool, backend })
    }

    /// Creates or upgrades the view tables. Safe to call on every start, from several
    /// processes at once.
    pub async fn migrate(&self) -> Result<(), ViewError> {
        MIGRATOR.run(&self.pool).await.map_err(ViewError::from)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Every view table's rows, for comparing two databases: an object keyed by table
    /// name, each a list of rows (objects keyed by column name, with the stored values:
    /// unix milliseconds, 0/1, JSON text) sorted by their serialized form. Tables are
    /// discovered from the database catalog, so a new table is included without changes
    /// here; the migration bookkeeping table is left out.
    ///
    /// `budget_signals` rows also say when each signal was derived, what had been spent
    /// by then and when it was published, which depend on how the events were batched
    /// and on the clock: compare two databases' signals by id.
    pub async fn dump(&self) -> Result<serde_json::Value, ViewError> {
        query::dump(self).await
    }
}
