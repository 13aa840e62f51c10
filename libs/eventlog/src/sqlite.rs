//! [`EventLog`] over SQLite, for the embedded single-process mode.
//!
//! One table holds the messages of every stream, keyed by (stream, seq). Sequences come from
//! a per-stream counter that only grows, so they are never reused. All writes go through a
//! single connection (one write transaction at a time, no `SQLITE_BUSY` between our own
//! writers); reads use a separate pool. A `watch` channel per stream carries the newest
//! committed sequence and wakes followers without polling.
//!
//! Retention is the JetStream streams' ([`Retention`]): a sweeper deletes messages older
//! than their stream's maximum age, at open and then periodically; sequences are never
//! reused, so a follower simply finds fewer messages.
//!
//! Live reads are woken by this process's own appends: open each database file with one
//! [`SqliteLog`] (clone it to share it) and from one process only.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio::sync::watch;

use crate::{
    Append, Appended, EventLog, LogError, LogMessage, Retention, StreamBounds, StreamName,
    check_append, retry_backoff,
};

/// Messages a follower reads per query.
const FOLLOW_BATCH: i64 = 512;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sg_log_streams (
        stream TEXT PRIMARY KEY NOT NULL,
        last_seq INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS sg_log_messages (
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        subject TEXT NOT NULL,
        msg_id TEXT,
        payload BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL,
        PRIMARY KEY (stream, seq)
    )",
    "CREATE INDEX IF NOT EXISTS sg_log_messages_by_subject
        ON sg_log_messages (stream, subject, seq)",
    "CREATE UNIQUE INDEX IF NOT EXISTS sg_log_messages_by_msg_id
        ON sg_log_messages (stream, msg_id) WHERE msg_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS sg_log_messages_by_age
        ON sg_log_messages (stream, stored_at_ms)",
    // Durable consumers are gone: the projector keeps its position with the views.
    "DROP TABLE IF EXISTS sg_log_consumers",
];

/// Settings of the SQLite event log.
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    /// How long each stream keeps its messages (the same as on JetStream).
    pub retention: Retention,
}

/// The event log in a SQLite database.
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// Exactly one connection: every write transaction runs on it, one after the other.
    writer: SqlitePool,
    /// Reads; the writer pool itself for an in-memory database.
    reader: SqlitePool,
    /// Newest committed sequence, indexed like [`StreamName::ALL`].
    tails: [watch::Sender<u64>; StreamName::ALL.len()],
    opts: SqliteOptions,
}

impl std::fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLog")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl SqliteLog {
    /// Opens (creating it and its directory if needed) the log database at `path`.
    pub async fn open(path: &Path) -> Result<Self, LogError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Like [`SqliteLog::open`], with explicit settings.
    pub async fn open_with(path: &Path, opts: SqliteOptions) -> Result<Self, LogError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|err| {
                LogError::Other(format!("creating directory {}: {err}", dir.display()))
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await
            .map_err(db_err("opening log database"))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .map_err(db_err("opening log database"))?;
        tracing::info!(path = %path.display(), "event log database opened");
        Self::init(writer, reader, opts).await
    }

    /// A log that lives in memory only (tests, throwaway setups).
    pub async fn open_in_memory() -> Result<Self, LogError> {
        Self::open_in_memory_with(SqliteOptions::default()).await
    }

    /// Like [`SqliteLog::open_in_memory`], with explicit settings.
    pub async fn open_in_memory_with(opts: SqliteOptions) -> Result<Self, LogError> {
        let connect = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(db_err("in-memory database options"))?;
        // An in-memory database lives as long as its connection: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .map_err(db_err("opening in-memory log database"))?;
        Self::init(pool.clone(), pool, opts).await
    }

    async fn init(
        writer: SqlitePool,
        reader: SqlitePool,
        opts: SqliteOptions,
    ) -> Result<Self, LogError> {
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&writer)
                .await
                .map_err(db_err("creating log schema"))?;
        }
        let mut last = [0u64; StreamName::ALL.len()];
        for (i, stream) in StreamName::ALL.into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO sg_log_streams (stream, last_seq) VALUES (?, 0)
                 ON CONFLICT (stream) DO NOTHING",
            )
            .bind(stream.stream_name())
            .execute(&writer)
            .await
            .map_err(db_err("creating log streams"))?;
            let seq: i64 =
                sqlx::query_scalar("SELECT last_seq FROM sg_log_streams WHERE stream = ?")
                    .bind(stream.stream_name())
                    .fetch_one(&writer)
                    .await
                    .map_err(db_err("reading log streams"))?;
            last[i] = to_u64(seq)?;
        }
        let inner = Arc::new(Inner {
            writer,
            reader,
            tails: last.map(|seq| watch::channel(seq).0),
            opts,
        });
        inner.sweep().await?;
        tokio::spawn(sweeper(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Closes the database connections; operations afterwards fail.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }
}

impl Inner {
    /// Appends in one transaction. Per-append refusals (unknown subject, wrong last
    /// sequence) are results; a database failure fails the whole batch.
    ///
    /// A batch costs a handful of statements, not a few per append: the message ids are
    /// looked up together, each stream's sequence is read once and written once, and
    /// plain appends are inserted many rows per statement. An append with an expected
    /// last subject sequence, or to a stream that keeps one message per subject, first
    /// writes what is pending (its check reads the table).
    async fn append_all(
        &self,
        appends: Vec<Append>,
    ) -> Result<Vec<Result<Appended, LogError>>, LogError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err("starting append"))?;
        let now = now_ms();
        let streams: Vec<Result<StreamName, LogError>> = appends.iter().map(check_append).collect();
        // Message ids already stored, per stream.
        let mut stored_ids: HashMap<(StreamName, String), i64> = HashMap::new();
        for stream in StreamName::ALL {
            let ids: Vec<&str> = appends
                .iter()
                .zip(&streams)
                .filter(|(_, s)| matches!(s, Ok(s) if *s == stream))
                .filter_map(|(a, _)| a.msg_id.as_deref())
                .collect();
            for chunk in ids.chunks(ID_LOOKUP_CHUNK) {
                let sql = format!(
                    "SELECT msg_id, seq FROM sg_log_messages WHERE stream = ? AND msg_id IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut query = sqlx::query(&sql).bind(stream.stream_name());
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err("checking message ids"))?
                {
                    let id: String = row.try_get(0).map_err(db_err("checking message ids"))?;
                    let seq: i64 = row.try_get(1).map_err(db_err("checking message ids"))?;
                    stored_ids.insert((stream, id), seq);
                }
            }
        }
        let mut last: HashMap<StreamName, i64> = HashMap::new();
        let mut pending: Vec<PendingRow> = Vec::new();
        let mut results = Vec::with_capacity(appends.len());
        for (append, stream) in appends.into_iter().zip(streams) {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let name = stream.stream_name();
            if let Some(id) = &append.msg_id
                && let Some(seq) = stored_ids.get(&(stream, id.clone()))
            {
                results.push(Ok(Appended {
                    seq: to_u64(*seq)?,
                    duplicate: true,
                }));
                continue;
            }
            let checks_table =
                append.expected_last_subject_seq.is_some() || stream.keeps_last_only();
            if checks_table {
                insert_rows(&mut tx, &mut pending).await?;
            }
            if let Some(expected) = append.expected_last_subject_seq {
                let last: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), 0) FROM sg_log_messages WHERE stream = ? AND subject = ?",
                )
                .bind(name)
                .bind(&append.subject)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err("checking last subject sequence"))?;
                if to_u64(last)? != expected {
                    results.push(Err(LogError::WrongLastSequence {
                        subject: append.subject,
                        expected,
                    }));
                    continue;
                }
            }
            let last = match last.entry(stream) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let seq: i64 =
                        sqlx::query_scalar("SELECT last_seq FROM sg_log_streams WHERE stream = ?")
                            .bind(name)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(db_err("reading stream sequence"))?;
                    e.insert(seq)
                }
            };
            let seq = last
                .checked_add(1)
                .ok_or_else(|| LogError::Other(format!("stream {name} is out of sequences")))?;
            *last = seq;
            if let Some(id) = &append.msg_id {
                stored_ids.insert((stream, id.clone()), seq);
            }
            let subject = append.subject;
            pending.push(PendingRow {
                stream: name,
                seq,
                subject: subject.clone(),
                msg_id: append.msg_id,
                payload: append.payload,
                stored_at_ms: now,
            });
            if stream.keeps_last_only() {
                insert_rows(&mut tx, &mut pending).await?;
                sqlx::query(
                    "DELETE FROM sg_log_messages WHERE stream = ? AND subject = ? AND seq < ?",
                )
                .bind(name)
                .bind(&subject)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(db_err("dropping the subject's older message"))?;
            }
            results.push(Ok(Appended {
                seq: to_u64(seq)?,
                duplicate: false,
            }));
        }
        insert_rows(&mut tx, &mut pending).await?;
        let mut tails = Vec::with_capacity(last.len());
        for (stream, seq) in last {
            sqlx::query("UPDATE sg_log_streams SET last_seq = ? WHERE stream = ?")
                .bind(seq)
                .bind(stream.stream_name())
                .execute(&mut *tx)
                .await
                .map_err(db_err("advancing stream sequence"))?;
            tails.push((stream, to_u64(seq)?));
        }
        tx.commit().await.map_err(db_err("committing append"))?;
        for (stream, seq) in tails {
            self.tail(stream).send_if_modified(|tail| {
                if seq > *tail {
                    *tail = seq;
                    true
                } else {
                    false
                }
            });
        }
        Ok(results)
    }
}

/// Message ids looked up per statement (positional parameters, far below SQLite's limit).
const ID_LOOKUP_CHUNK: usize = 200;
/// Messages inserted per statement (6 positional parameters each).
const INSERT_CHUNK: usize = 100;

/// A message waiting to be inserted by [`insert_rows`].
struct PendingRow {
    stream: &'static str,
    seq: i64,
    subject: String,
    msg_id: Option<String>,
    payload: Bytes,
    stored_at_ms: i64,
}

/// Inserts the pending rows, many per statement, and empties `pending`.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    pending: &mut Vec<PendingRow>,
) -> Result<(), LogError> {
    for chunk in pending.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO sg_log_messages (stream, seq, subject, msg_id, payload, stored_at_ms) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(row.stream)
                .bind(row.seq)
                .bind(row.subject.as_str())
                .bind(row.msg_id.as_deref())
                .bind(row.payload.as_ref())
                .bind(row.stored_at_ms);
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(db_err("storing messages"))?;
    }
    pending.clear();
    Ok(())
}

/// Deletes expired messages now and then, until the log is dropped.
async fn sweeper(inner: std::sync::Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(inner) => inner.opts.retention.sweep_interval(),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(err) = inner.sweep().await {
            tracing::warn!(error = %err, "deleting expired log messages failed; retrying later");
        }
    }
}

impl Inner {
    /// Deletes every message older than its stream's maximum age.
    async fn sweep(&self) -> Result<(), LogError> {
        for stream in StreamName::ALL {
            let Some(max_age) = self.opts.retention.max_age(stream) else {
                continue;
            };
            let cutoff =
                now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
            let deleted =
                sqlx::query("DELETE FROM sg_log_messages WHERE stream = ? AND stored_at_ms < ?")
                    .bind(stream.stream_name())
                    .bind(cutoff)
                    .execute(&self.writer)
                    .await
                    .map_err(db_err("deleting expired messages"))?
                    .rows_affected();
            if deleted > 0 {
                tracing::debug!(
                    stream = stream.stream_name(),
                    deleted,
                    "expired log messages deleted"
                );
            }
        }
        Ok(())
    }

    fn tail(&self, stream: StreamName) -> &watch::Sender<u64> {
        &self.tails[stream.index()]
    }

    /// Up to `limit` messages with `seq >= from`, in order.
    async fn page(
        &self,
        stream: StreamName,
        from: u64,
        limit: i64,
    ) -> Result<Vec<LogMessage>, LogError> {
        let rows = sqlx::query(
            "SELECT seq, subject, payload FROM sg_log_messages
             WHERE stream = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(stream.stream_name())
        .bind(clamp_i64(from))
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err("reading log"))?;
        rows.iter().map(row_to_message).collect()
    }
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn append(&self, append: Append) -> Result<Appended, LogError> {
        let mut results = self.append_batch(vec![append]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(LogError::Other("append produced no result".into())))
    }

    async fn append_batch(&self, appends: Vec<Append>) -> Vec<Result<Appended, LogError>> {
        let count = appends.len();
        match self.inner.append_all(appends).await {
            Ok(results) => results,
            // The transaction failed as a whole: nothing of the batch is stored.
            Err(e) => (0..count)
                .map(|_| Err(LogError::Unavailable(e.to_string())))
                .collect(),
        }
    }

    async fn bounds(&self, stream: StreamName) -> Result<StreamBounds, LogError> {
        let row = sqlx::query(
            "SELECT (SELECT last_seq FROM sg_log_streams WHERE stream = ?),
                    (SELECT MIN(seq) FROM sg_log_messages WHERE stream = ?)",
        )
        .bind(stream.stream_name())
        .bind(stream.stream_name())
        .fetch_one(&self.inner.reader)
        .await
        .map_err(db_err("reading stream bounds"))?;
        let last: Option<i64> = row.try_get(0).map_err(db_err("reading stream bounds"))?;
        let first: Option<i64> = row.try_get(1).map_err(db_err("reading stream bounds"))?;
        Ok(StreamBounds {
            first_seq: to_u64(first.unwrap_or(0))?,
            last_seq: to_u64(last.unwrap_or(0))?,
        })
    }

    async fn get(&self, stream: StreamName, seq: u64) -> Result<Option<LogMessage>, LogError> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT seq, subject, payload FROM sg_log_messages WHERE stream = ? AND seq = ?",
        )
        .bind(stream.stream_name())
        .bind(seq)
        .fetch_optional(&self.inner.reader)
        .await
        .map_err(db_err("reading message"))?;
        row.as_ref().map(row_to_message).transpose()
    }

    async fn last(&self, subject: &str) -> Result<Option<LogMessage>, LogError> {
        let stream = StreamName::of_subject(subject)
            .ok_or_else(|| LogError::UnknownSubject(subject.to_owned()))?;
        let row = sqlx::query(
            "SELECT seq, subject, payload FROM sg_log_messages WHERE stream = ? AND subject = ? \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(stream.stream_name())
        .bind(subject)
        .fetch_optional(&self.inner.reader)
        .await
        .map_err(db_err("reading the last message of a subject"))?;
        row.as_ref().map(row_to_message).transpose()
    }

    async fn follow(
        &self,
        stream: StreamName,
        from_seq: u64,
    ) -> Result<BoxStream<'static, Result<LogMessage, LogError>>, LogError> {
        let follower = Follower {
            tail: self.inner.tail(stream).subscribe(),
            inner: self.inner.clone(),
            stream,
            next_seq: from_seq.max(1),
            buffer: VecDeque::new(),
            failures: 0,
            done: false,
        };
        Ok(
            futures::stream::unfold(follower, |mut follower| async move {
                let item = follower.next_item().await?;
                Some((item, follower))
            })
            .boxed(),
        )
    }
}

struct Follower {
    inner: Arc<Inner>,
    stream: StreamName,
    tail: watch::Receiver<u64>,
    next_seq: u64,
    buffer: VecDeque<LogMessage>,
    failures: u32,
    done: bool,
}

impl Follower {
    async fn next_item(&mut self) -> Option<Result<LogMessage, LogError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(message) = self.buffer.pop_front() {
                self.next_seq = message.seq.saturating_add(1);
                return Some(Ok(message));
            }
            let tail = *self.tail.borrow_and_update();
            if tail < self.next_seq {
                // Nothing newer is committed yet: wait for the next append.
                if self.tail.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            match self
                .inner
                .page(self.stream, self.next_seq, FOLLOW_BATCH)
                .await
            {
                Ok(page) => {
                    self.failures = 0;
                    if page.is_empty() {
                        // Committed but not visible to this reader yet; the tail only
                        // advances after commit, so this resolves on the next append.
                        if self.tail.changed().await.is_err() {
                            return None;
                        }
                    }
                    self.buffer = page.into();
                }
                Err(err) if err.is_transient() => {
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(stream = self.stream.stream_name(), error = %err, attempt = self.failures, "follower read failed; retrying");
                    tokio::time::sleep(retry_backoff(self.failures)).await;
                }
                Err(err) => {
                    tracing::error!(stream = self.stream.stream_name(), error = %err, "follower stopped");
                    self.done = true;
                    return Some(Err(err));
                }
            }
        }
    }
}

fn row_to_message(row: &SqliteRow) -> Result<LogMessage, LogError> {
    let seq: i64 = row.try_get(0).map_err(db_err("decoding message"))?;
    let subject: String = row.try_get(1).map_err(db_err("decoding message"))?;
    let payload: Vec<u8> = row.try_get(2).map_err(db_err("decoding message"))?;
    Ok(LogMessage {
        seq: to_u64(seq)?,
        subject,
        payload: Bytes::from(payload),
    })
}

fn to_u64(value: i64) -> Result<u64, LogError> {
    u64::try_from(value).map_err(|_| LogError::Other(format!("negative sequence {value} in log")))
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Maps a database error: lock contention and pool exhaustion may pass, the rest is
/// reported as is.
fn db_err(what: &'static str) -> impl Fn(sqlx::Error) -> LogError {
    move |err| {
        let transient = match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
            _ => false,
        };
        if transient {
            LogError::Unavailable(format!("{what}: {err}"))
        } else {
            LogError::Other(format!("{what}: {err}"))
        }
    }
}
