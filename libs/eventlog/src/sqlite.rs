//! [`EventLog`] over SQLite, for the embedded single-process mode.
//!
//! One table holds the messages of every stream, keyed by (stream, seq). Sequences come from
//! a per-stream counter that only grows, so they are never reused. All writes go through a
//! single connection (one write transaction at a time, no `SQLITE_BUSY` between our own
//! writers); reads use a separate pool. A `watch` channel per stream carries the newest
//! committed sequence and wakes followers and consumers without polling.
//!
//! Durable consumers keep their ack floor (the highest sequence up to which everything is
//! acknowledged) in a table. They deliver in order from the floor; a nak or an ack that does
//! not arrive within the ack wait makes the consumer go back to the first unacknowledged
//! message. One consume stream per durable name is expected at a time.
//!
//! Live reads are woken by this process's own appends: open each database file with one
//! [`SqliteLog`] (clone it to share it) and from one process only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
use tokio::time::Instant;

use crate::{
    Acker, Append, Appended, Delivery, EventLog, LogError, LogMessage, StreamBounds, StreamName,
    check_append, check_durable, retry_backoff,
};

/// Messages a follower reads per query.
const FOLLOW_BATCH: i64 = 512;
/// Messages a durable consumer reads per query.
const CONSUME_BATCH: i64 = 64;
/// Unacknowledged deliveries after which a durable consumer waits for acks.
const MAX_ACK_PENDING: usize = 1000;

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
    "CREATE TABLE IF NOT EXISTS sg_log_consumers (
        stream TEXT NOT NULL,
        name TEXT NOT NULL,
        ack_floor INTEGER NOT NULL,
        PRIMARY KEY (stream, name)
    )",
];

/// Settings of the SQLite event log.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a durable consumer waits for an ack before delivering again from the first
    /// unacknowledged message.
    pub ack_wait: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
        }
    }
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
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                reader,
                tails: last.map(|seq| watch::channel(seq).0),
                opts,
            }),
        })
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
    async fn append_all(
        &self,
        appends: Vec<Append>,
    ) -> Result<Vec<Result<Appended, LogError>>, LogError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err("starting append"))?;
        let mut results = Vec::with_capacity(appends.len());
        let mut tails: Vec<(StreamName, u64)> = Vec::new();
        for append in appends {
            let stream = match check_append(&append) {
                Ok(s) => s,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let name = stream.stream_name();
            if let Some(id) = &append.msg_id {
                let existing: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM sg_log_messages WHERE stream = ? AND msg_id = ?",
                )
                .bind(name)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err("checking message id"))?;
                if let Some(seq) = existing {
                    results.push(Ok(Appended {
                        seq: to_u64(seq)?,
                        duplicate: true,
                    }));
                    continue;
                }
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
            let last: i64 =
                sqlx::query_scalar("SELECT last_seq FROM sg_log_streams WHERE stream = ?")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err("reading stream sequence"))?;
            let seq = last
                .checked_add(1)
                .ok_or_else(|| LogError::Other(format!("stream {name} is out of sequences")))?;
            sqlx::query(
                "INSERT INTO sg_log_messages (stream, seq, subject, msg_id, payload, stored_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(name)
            .bind(seq)
            .bind(&append.subject)
            .bind(append.msg_id.as_deref())
            .bind(append.payload.as_ref())
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_err("storing message"))?;
            sqlx::query("UPDATE sg_log_streams SET last_seq = ? WHERE stream = ?")
                .bind(seq)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err("advancing stream sequence"))?;
            let seq = to_u64(seq)?;
            tails.push((stream, seq));
            results.push(Ok(Appended {
                seq,
                duplicate: false,
            }));
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

impl Inner {
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

    async fn consume(
        &self,
        stream: StreamName,
        durable: &str,
        start_seq: u64,
    ) -> Result<BoxStream<'static, Result<Delivery, LogError>>, LogError> {
        check_durable(durable)?;
        let name = stream.stream_name();
        sqlx::query(
            "INSERT INTO sg_log_consumers (stream, name, ack_floor) VALUES (?, ?, ?)
             ON CONFLICT (stream, name) DO NOTHING",
        )
        .bind(name)
        .bind(durable)
        .bind(clamp_i64(start_seq.max(1) - 1))
        .execute(&self.inner.writer)
        .await
        .map_err(db_err("creating durable consumer"))?;
        let floor: i64 = sqlx::query_scalar(
            "SELECT ack_floor FROM sg_log_consumers WHERE stream = ? AND name = ?",
        )
        .bind(name)
        .bind(durable)
        .fetch_one(&self.inner.writer)
        .await
        .map_err(db_err("reading durable consumer"))?;
        let floor = to_u64(floor)?;
        tracing::debug!(
            stream = name,
            durable,
            ack_floor = floor,
            "durable consumer opened"
        );

        let (wake, wake_rx) = watch::channel(0u64);
        let shared = Arc::new(ConsumerShared {
            inner: self.inner.clone(),
            stream,
            durable: durable.to_owned(),
            state: Mutex::new(ConsumerState {
                floor,
                acked_above: BTreeSet::new(),
                inflight: BTreeMap::new(),
                rewind_at: None,
            }),
            wake,
        });
        let consumer = Consumer {
            tail: self.inner.tail(stream).subscribe(),
            wake: wake_rx,
            shared,
            next_seq: floor + 1,
            buffer: VecDeque::new(),
            failures: 0,
            done: false,
        };
        Ok(
            futures::stream::unfold(consumer, |mut consumer| async move {
                let item = consumer.next_item().await?;
                Some((item, consumer))
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

struct ConsumerShared {
    inner: Arc<Inner>,
    stream: StreamName,
    durable: String,
    state: Mutex<ConsumerState>,
    /// Bumped on every ack and nak so the delivery loop re-evaluates its state.
    wake: watch::Sender<u64>,
}

struct ConsumerState {
    /// Every sequence up to here is acknowledged (and persisted, or about to be).
    floor: u64,
    /// Acknowledged sequences above `floor + 1`.
    acked_above: BTreeSet<u64>,
    /// Delivered, unacknowledged sequences and when their ack wait runs out.
    inflight: BTreeMap<u64, Instant>,
    /// When the consumer goes back to the first unacknowledged message (after a nak).
    rewind_at: Option<Instant>,
}

impl ConsumerShared {
    fn lock(&self) -> MutexGuard<'_, ConsumerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poke(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

struct Consumer {
    shared: Arc<ConsumerShared>,
    tail: watch::Receiver<u64>,
    wake: watch::Receiver<u64>,
    next_seq: u64,
    buffer: VecDeque<LogMessage>,
    failures: u32,
    done: bool,
}

impl Consumer {
    async fn next_item(&mut self) -> Option<Result<Delivery, LogError>> {
        loop {
            if self.done {
                return None;
            }
            self.wake.borrow_and_update();
            let tail = *self.tail.borrow_and_update();
            let (wake_at, blocked) = {
                let mut state = self.shared.lock();
                let now = Instant::now();
                let due = state.rewind_at.is_some_and(|at| at <= now)
                    || state.inflight.values().any(|deadline| *deadline <= now);
                if due {
                    tracing::debug!(
                        stream = self.shared.stream.stream_name(),
                        durable = %self.shared.durable,
                        ack_floor = state.floor,
                        "redelivering from first unacknowledged message"
                    );
                    self.next_seq = state.floor + 1;
                    state.inflight.clear();
                    state.rewind_at = None;
                    self.buffer.clear();
                }
                if self.next_seq <= state.floor {
                    self.next_seq = state.floor + 1;
                }
                while state.acked_above.contains(&self.next_seq) {
                    self.next_seq += 1;
                }
                let wake_at = state
                    .rewind_at
                    .into_iter()
                    .chain(state.inflight.values().copied())
                    .min();
                (wake_at, state.inflight.len() >= MAX_ACK_PENDING)
            };

            if !blocked {
                while self
                    .buffer
                    .front()
                    .is_some_and(|message| message.seq < self.next_seq)
                {
                    self.buffer.pop_front();
                }
                if self.buffer.is_empty() && tail >= self.next_seq {
                    match self
                        .shared
                        .inner
                        .page(self.shared.stream, self.next_seq, CONSUME_BATCH)
                        .await
                    {
                        Ok(page) => {
                            self.failures = 0;
                            self.buffer = page.into();
                        }
                        Err(err) if err.is_transient() => {
                            self.failures = self.failures.saturating_add(1);
                            tracing::warn!(stream = self.shared.stream.stream_name(), durable = %self.shared.durable, error = %err, attempt = self.failures, "consumer read failed; retrying");
                            tokio::time::sleep(retry_backoff(self.failures)).await;
                            continue;
                        }
                        Err(err) => {
                            tracing::error!(stream = self.shared.stream.stream_name(), durable = %self.shared.durable, error = %err, "durable consumer stopped");
                            self.done = true;
                            return Some(Err(err));
                        }
                    }
                }
                if let Some(message) = self.buffer.pop_front() {
                    let mut state = self.shared.lock();
                    if message.seq <= state.floor || state.acked_above.contains(&message.seq) {
                        continue;
                    }
                    self.next_seq = message.seq + 1;
                    state.inflight.insert(
                        message.seq,
                        Instant::now() + self.shared.inner.opts.ack_wait,
                    );
                    drop(state);
                    let seq = message.seq;
                    return Some(Ok(Delivery {
                        message,
                        acker: Box::new(SqliteAcker {
                            shared: self.shared.clone(),
                            seq,
                        }),
                    }));
                }
            }

            let timer = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.tail.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.wake.changed() => {}
                () = timer => {}
            }
        }
    }
}

struct SqliteAcker {
    shared: Arc<ConsumerShared>,
    seq: u64,
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(&self) -> Result<(), LogError> {
        let new_floor = {
            let mut state = self.shared.lock();
            state.inflight.remove(&self.seq);
            if self.seq <= state.floor || !state.acked_above.insert(self.seq) {
                None
            } else {
                let mut floor = state.floor;
                while state.acked_above.remove(&(floor + 1)) {
                    floor += 1;
                }
                (floor > state.floor).then(|| {
                    state.floor = floor;
                    floor
                })
            }
        };
        self.shared.poke();
        if let Some(floor) = new_floor {
            sqlx::query(
                "UPDATE sg_log_consumers SET ack_floor = MAX(ack_floor, ?)
                 WHERE stream = ? AND name = ?",
            )
            .bind(clamp_i64(floor))
            .bind(self.shared.stream.stream_name())
            .bind(&self.shared.durable)
            .execute(&self.shared.inner.writer)
            .await
            .map_err(db_err("storing ack floor"))?;
        }
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), LogError> {
        {
            let mut state = self.shared.lock();
            if self.seq <= state.floor || state.acked_above.contains(&self.seq) {
                return Ok(());
            }
            state.inflight.remove(&self.seq);
            let at = Instant::now() + delay;
            state.rewind_at = Some(state.rewind_at.map_or(at, |current| current.min(at)));
        }
        self.shared.poke();
        Ok(())
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
