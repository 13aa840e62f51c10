//! A durable local spool: records appended by one process, kept on disk until a reader
//! acknowledges them, and read back after a crash.
//!
//! The gateway writes every usage event and signal here before it publishes it to the
//! event log, so a node killed during a log outage publishes what it owed when it
//! starts again (the log deduplicates by event id, the views by request id).
//!
//! - **Format**: segment files `<first index>.seg` of records
//!   `[len: u32 LE][crc32(payload): u32 LE][payload]`, and a file `acked` holding the
//!   index of the newest record the reader has acknowledged (8 bytes LE). Indices start
//!   at 1 and are never reused.
//! - **Durability**: one writer thread takes records as they come, appends a batch and
//!   syncs it (`fdatasync`) before it counts as durable — group commit: it gathers what
//!   arrives for 2 ms after the first record, so one sync serves them all. A record is on
//!   disk within that linger and one sync of [`Spool::append`] (a few milliseconds).
//! - **Reading**: the reader sees only durable records, in order, and acknowledges a
//!   prefix; acknowledged segments are deleted and the `acked` mark is persisted
//!   periodically (records acknowledged but not yet marked are read again after a
//!   crash — at least once).
//! - **Recovery**: a torn record at the end of the newest segment (a crash mid-write) is
//!   cut off; records before it are kept.
//! - **Bound**: [`SpoolConfig::max_bytes`] of unacknowledged records. Past it
//!   [`Spool::is_full`] is true — callers refuse new work — but appends are never
//!   dropped: what is already in flight is still written.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

/// Records written per sync at most.
const WRITE_BATCH: usize = 4096;
/// How long the writer gathers records after the first before it writes and syncs: the
/// cost of one sync is shared by everything that arrives meanwhile.
const LINGER: Duration = Duration::from_millis(2);
/// How often the writer persists the acknowledged mark and deletes segments while idle.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
const HEADER: usize = 8;
/// Largest record accepted.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

/// Limits of a spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolConfig {
    /// Unacknowledged bytes beyond which the spool is full.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("a spool record is larger than {MAX_RECORD} bytes")]
    TooLarge,
    /// The writer thread stopped (after an I/O error it could not get past).
    #[error("the spool writer stopped")]
    Stopped,
}

struct Shared {
    dir: PathBuf,
    config: SpoolConfig,
    /// Newest index handed to the writer.
    appended: AtomicU64,
    /// Newest index synced to disk.
    durable: AtomicU64,
    /// Newest index the reader acknowledged.
    acked: AtomicU64,
    /// Bytes appended (records and headers), and of those, acknowledged.
    appended_bytes: AtomicU64,
    acked_bytes: AtomicU64,
    /// Woken when `durable` or `acked` moves.
    progress: Notify,
    stopped: AtomicBool,
    /// Segment first indices, oldest first (shared between writer and reader).
    segments: Mutex<Vec<u64>>,
}

impl Shared {
    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.seg"))
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records waiting for the writer: appended under the lock, taken all at once. The
/// writer is woken only when the inbox goes from empty to not empty, so a burst of
/// appends costs one wake-up, not one per record.
#[derive(Default)]
struct Inbox {
    queue: Mutex<InboxState>,
    wake: Condvar,
}

#[derive(Default)]
struct InboxState {
    records: Vec<(u64, Vec<u8>)>,
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writing side. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

fn crc(payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(payload);
    h.finalize()
}

/// Reads one record at the file's position: `Ok(None)` at a clean end or a torn tail.
fn read_record(file: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match file.read(&mut header[got..])? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read(&mut payload[got..])? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    if crc(&payload) != sum {
        return Ok(None);
    }
    Ok(Some(payload))
}

fn read_acked(dir: &Path) -> io::Result<u64> {
    match fs::read(dir.join("acked")) {
        Ok(bytes) if bytes.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes);
            Ok(u64::from_le_bytes(b))
        }
        Ok(_) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn write_acked(dir: &Path, acked: u64) -> io::Result<()> {
    let tmp = dir.join("acked.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&acked.to_le_bytes())?;
        f.sync_data()?;
    }
    fs::rename(&tmp, dir.join("acked"))?;
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens the spool in `dir` (created if missing), recovering what a previous process
    /// left: unacknowledged records are read again by the [`SpoolReader`].
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<(Spool, SpoolReader), SpoolError> {
        fs::create_dir_all(dir)?;
        let acked = read_acked(dir)?;
        let mut segments: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        segments.sort_unstable();
        // Scan every segment: find the last index, cut a torn tail, count what is owed.
        let mut next = acked.saturating_add(1);
        let mut pending_bytes = 0u64;
        for (i, &first) in segments.iter().enumerate() {
            let path = dir.join(format!("{first:020}.seg"));
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut index = first;
            let mut valid_len = 0u64;
            while let Some(record) = read_record(&mut file)? {
                let size = (HEADER + record.len()) as u64;
                if index > acked {
                    pending_bytes += size;
                }
                valid_len += size;
                index += 1;
            }
            if file.metadata()?.len() != valid_len {
                if i + 1 == segments.len() {
                    tracing::warn!(segment = %path.display(), "spool: a torn record at the end was cut off");
                } else {
                    tracing::error!(segment = %path.display(), "spool: a damaged record in an older segment; what follows it in that segment is lost");
                }
                file.set_len(valid_len)?;
                file.sync_all()?;
            }
            next = next.max(index);
        }
        // Segments wholly acknowledged are no longer needed.
        let mut kept = Vec::new();
        for (i, &first) in segments.iter().enumerate() {
            let end = segments.get(i + 1).copied().unwrap_or(next);
            if end <= acked.saturating_add(1) && i + 1 < segments.len() {
                let _ = fs::remove_file(dir.join(format!("{first:020}.seg")));
            } else {
                kept.push(first);
            }
        }
        let last = next.saturating_sub(1);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            appended: AtomicU64::new(last),
            durable: AtomicU64::new(last),
            acked: AtomicU64::new(acked.min(last)),
            appended_bytes: AtomicU64::new(pending_bytes),
            acked_bytes: AtomicU64::new(0),
            progress: Notify::new(),
            stopped: AtomicBool::new(false),
            segments: Mutex::new(kept),
        });
        if last > acked {
            tracing::info!(
                records = last - acked,
                "spool: records left by the previous run will be published"
            );
        }
        let inbox = Arc::new(Inbox::default());
        let writer = Writer::new(shared.clone(), next)?;
        let writer_inbox = inbox.clone();
        let handle = std::thread::Builder::new()
            .name("sg-spool-writer".into())
            .spawn(move || writer.run(&writer_inbox))?;
        let reader = SpoolReader {
            shared: shared.clone(),
            next: acked.min(last) + 1,
            position: None,
            outstanding: std::collections::VecDeque::new(),
        };
        Ok((
            Spool {
                shared,
                inbox,
                writer: Arc::new(Mutex::new(Some(handle))),
            },
            reader,
        ))
    }

    /// Hands a record to the writer; it is durable within one sync. Never blocks on I/O.
    pub fn append(&self, record: Vec<u8>) -> Result<u64, SpoolError> {
        if record.len() > MAX_RECORD {
            return Err(SpoolError::TooLarge);
        }
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(SpoolError::Stopped);
        }
        let size = (HEADER + record.len()) as u64;
        // Indices are assigned under the inbox lock, so records queue in index order.
        let mut inbox = self.inbox.lock();
        if inbox.closed {
            return Err(SpoolError::Stopped);
        }
        let index = self.shared.appended.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.appended_bytes.fetch_add(size, Ordering::AcqRel);
        let was_empty = inbox.records.is_empty();
        inbox.records.push((index, record));
        drop(inbox);
        if was_empty {
            self.inbox.wake.notify_one();
        }
        Ok(index)
    }

    /// Stops taking records, lets the writer sync what it has and persist the
    /// acknowledged mark, and waits for it to finish.
    pub fn close(&self) {
        self.inbox.lock().closed = true;
        self.inbox.wake.notify_one();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Records appended and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.shared.appended.load(Ordering::Acquire) - self.shared.acked.load(Ordering::Acquire)
    }

    /// Bytes of records appended and not yet acknowledged.
    pub fn pending_bytes(&self) -> u64 {
        self.shared
            .appended_bytes
            .load(Ordering::Acquire)
            .saturating_sub(self.shared.acked_bytes.load(Ordering::Acquire))
    }

    /// Whether the spool holds [`SpoolConfig::max_bytes`] or more, or cannot write.
    pub fn is_full(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
            || self.pending_bytes() >= self.shared.config.max_bytes
    }

    /// Waits until every record appended so far is acknowledged, at most `timeout`.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.progress.notified();
                if self.pending() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Waits until every record appended so far is on disk, at most `timeout`.
    pub async fn synced(&self, timeout: Duration) -> bool {
        let target = self.shared.appended.load(Ordering::Acquire);
        let wait = async {
            loop {
                let notified = self.shared.progress.notified();
                if self.shared.durable.load(Ordering::Acquire) >= target {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

struct Writer {
    shared: Arc<Shared>,
    file: BufWriter<File>,
    segment_len: u64,
    marked: u64,
}

impl Writer {
    fn new(shared: Arc<Shared>, next: u64) -> io::Result<Self> {
        let current = shared.segments().last().copied();
        let first = match current {
            Some(first) => first,
            None => {
                shared.segments().push(next);
                next
            }
        };
        let path = shared.segment_path(first);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let segment_len = file.metadata()?.len();
        if current.is_none() {
            File::open(&shared.dir)?.sync_all()?;
        }
        let marked = shared.acked.load(Ordering::Acquire);
        Ok(Writer {
            shared,
            file: BufWriter::with_capacity(256 * 1024, file),
            segment_len,
            marked,
        })
    }

    fn run(mut self, inbox: &Inbox) {
        loop {
            // Wait for a first record (or the housekeeping tick, or the close).
            let closed = {
                let mut state = inbox.lock();
                if state.records.is_empty() && !state.closed {
                    state = inbox
                        .wake
                        .wait_timeout(state, HOUSEKEEPING)
                        .map(|(s, _)| s)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                state.closed
            };
            let pending = !inbox.lock().records.is_empty();
            if pending && !closed {
                // Let what follows within the linger join this batch: one sync for all.
                std::thread::sleep(LINGER);
            }
            let mut batch = std::mem::take(&mut inbox.lock().records);
            for chunk in batch.chunks(WRITE_BATCH) {
                let mut attempt = 0u32;
                while let Err(e) = self.write(chunk) {
                    attempt += 1;
                    tracing::error!(error = %e, attempt, "spool: writing usage records failed; retrying");
                    if attempt >= 50 {
                        tracing::error!("spool: giving up; this node refuses new requests");
                        self.shared.stopped.store(true, Ordering::Release);
                        self.shared.progress.notify_waiters();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Some((last, _)) = chunk.last() {
                    self.shared.durable.store(*last, Ordering::Release);
                    self.shared.progress.notify_waiters();
                }
            }
            batch.clear();
            if let Err(e) = self.housekeeping() {
                tracing::warn!(error = %e, "spool: housekeeping failed; retrying");
            }
            if closed && inbox.lock().records.is_empty() {
                return;
            }
        }
    }

    /// Appends a batch to the current segment (starting a new one when it is full), and
    /// syncs. A failure leaves the batch to be written again.
    fn write(&mut self, batch: &[(u64, Vec<u8>)]) -> io::Result<()> {
        if self.segment_len >= self.shared.config.segment_bytes
            && let Some((first, _)) = batch.first()
        {
            self.rotate(*first)?;
        }
        // A retry after a failure must not duplicate what reached the file: start again
        // from the known length.
        let len_before = self.segment_len;
        let result = (|| {
            for (_, record) in batch {
                self.file.write_all(&(record.len() as u32).to_le_bytes())?;
                self.file.write_all(&crc(record).to_le_bytes())?;
                self.file.write_all(record)?;
            }
            self.file.flush()?;
            self.file.get_ref().sync_data()
        })();
        match result {
            Ok(()) => {
                self.segment_len += batch
                    .iter()
                    .map(|(_, r)| (HEADER + r.len()) as u64)
                    .sum::<u64>();
                Ok(())
            }
            Err(e) => {
                // Drop whatever the buffer holds and cut the file back.
                let file = self.file.get_ref().try_clone()?;
                file.set_len(len_before)?;
                let mut file = file;
                file.seek(SeekFrom::End(0))?;
                self.file = BufWriter::with_capacity(256 * 1024, file);
                Err(e)
            }
        }
    }

    fn rotate(&mut self, first: u64) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        let path = self.shared.segment_path(first);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.shared.dir)?.sync_all()?;
        self.shared.segments().push(first);
        self.file = BufWriter::with_capacity(256 * 1024, file);
        self.segment_len = 0;
        Ok(())
    }

    /// Persists the acknowledged mark and deletes segments wholly acknowledged.
    fn housekeeping(&mut self) -> io::Result<()> {
        let acked = self.shared.acked.load(Ordering::Acquire);
        if acked == self.marked {
            return Ok(());
        }
        write_acked(&self.shared.dir, acked)?;
        self.marked = acked;
        let removable: Vec<u64> = {
            let segments = self.shared.segments();
            segments
                .windows(2)
                .filter(|w| w[1] <= acked + 1)
                .map(|w| w[0])
                .collect()
        };
        for first in removable {
            fs::remove_file(self.shared.segment_path(first))?;
            self.shared.segments().retain(|s| *s != first);
        }
        Ok(())
    }
}

/// The reading side: durable records in order, acknowledged by prefix.
pub struct SpoolReader {
    shared: Arc<Shared>,
    /// Index of the next record to read.
    next: u64,
    /// The open segment and the index of the record at its position.
    position: Option<(u64, File)>,
    /// Records returned and not yet acknowledged: (index, size on disk).
    outstanding: std::collections::VecDeque<(u64, u64)>,
}

impl std::fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolReader")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl SpoolReader {
    /// The next durable records in order (at most `max`), waiting until there is one.
    /// Records returned are returned again only after a restart, unless acknowledged.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<(u64, Bytes)>, SpoolError> {
        loop {
            let notified = self.shared.progress.notified();
            let durable = self.shared.durable.load(Ordering::Acquire);
            if durable >= self.next {
                break;
            }
            if self.shared.stopped.load(Ordering::Acquire) {
                return Err(SpoolError::Stopped);
            }
            notified.await;
        }
        let durable = self.shared.durable.load(Ordering::Acquire);
        let count = usize::try_from(durable - self.next + 1)
            .unwrap_or(usize::MAX)
            .min(max);
        let shared = self.shared.clone();
        let next = self.next;
        let position = self.position.take();
        let (records, position) =
            tokio::task::spawn_blocking(move || read_from(&shared, next, count, position))
                .await
                .map_err(|e| SpoolError::Io(io::Error::other(e.to_string())))??;
        self.position = position;
        if let Some((last, _)) = records.last() {
            self.next = last + 1;
        }
        self.outstanding
            .extend(records.iter().map(|(i, r)| (*i, (HEADER + r.len()) as u64)));
        Ok(records)
    }

    /// Acknowledges every record up to and including `index` (one returned by
    /// [`SpoolReader::next_batch`]): it will not be read again, even after a restart.
    pub fn ack_through(&mut self, index: u64) {
        let mut bytes = 0;
        while let Some(&(i, size)) = self.outstanding.front() {
            if i > index {
                break;
            }
            bytes += size;
            self.outstanding.pop_front();
        }
        let acked = &self.shared.acked;
        if index > acked.load(Ordering::Acquire) {
            acked.store(index, Ordering::Release);
            self.shared.acked_bytes.fetch_add(bytes, Ordering::AcqRel);
            self.shared.progress.notify_waiters();
        }
    }
}

/// Reads `count` records starting at index `next`, reusing the open segment if it is
/// positioned there.
#[allow(clippy::type_complexity)]
fn read_from(
    shared: &Shared,
    next: u64,
    count: usize,
    position: Option<(u64, File)>,
) -> Result<(Vec<(u64, Bytes)>, Option<(u64, File)>), SpoolError> {
    let segments: Vec<u64> = shared.segments().clone();
    let mut out = Vec::with_capacity(count);
    let mut position = position.filter(|(at, _)| *at == next);
    let mut index = next;
    while out.len() < count {
        let (at, mut file) = match position.take() {
            Some(p) => p,
            None => {
                // Open the segment holding `index` and skip to it.
                let Some(&first) = segments.iter().rev().find(|&&f| f <= index) else {
                    return Err(SpoolError::Io(io::Error::other(format!(
                        "spool record {index} is in no segment"
                    ))));
                };
                let mut file = File::open(shared.segment_path(first))?;
                let mut at = first;
                while at < index {
                    if read_record(&mut file)?.is_none() {
                        break;
                    }
                    at += 1;
                }
                (at, file)
            }
        };
        if at != index {
            return Err(SpoolError::Io(io::Error::other(format!(
                "spool record {index} is missing"
            ))));
        }
        match read_record(&mut file)? {
            Some(record) => {
                out.push((index, Bytes::from(record)));
                index += 1;
                position = Some((index, file));
            }
            None => {
                // The end of this segment: the next one starts at `index`.
                if !segments.contains(&index) {
                    return Err(SpoolError::Io(io::Error::other(format!(
                        "spool record {index} is missing"
                    ))));
                }
                position = None;
            }
        }
    }
    Ok((out, position))
}

#[cfg(test)]
mod tests;
