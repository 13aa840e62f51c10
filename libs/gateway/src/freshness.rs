//! How long ago this node last knew it had everything the control stream holds.
//!
//! A revocation, a suspension or a lock change reaches a node through the control
//! stream. A node cut off from the log cannot know what it missed, so past a bound
//! (`max_staleness`) it reports not ready and refuses the keys whose policy says to fail
//! closed (503 `control_plane_unavailable`); it recovers by itself when the log is back.
//!
//! Every `interval` the node asks the log for the control stream's last sequence. When
//! the replica has applied that sequence, the node was up to date as of the moment it
//! asked: that moment is its freshness. Nothing here is on the request path but one
//! atomic load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sg_eventlog::{EventLog, StreamName};
use sg_replica::Replica;

/// The node's freshness, shared with the request path.
#[derive(Debug)]
pub(crate) struct Freshness {
    start: Instant,
    /// Milliseconds after `start` at which the node was last known up to date.
    fresh_at_ms: AtomicU64,
    /// The control stream's last sequence as last read.
    head_seq: AtomicU64,
    max_staleness: Duration,
}

impl Freshness {
    pub(crate) fn new(max_staleness: Duration) -> Self {
        Freshness {
            start: Instant::now(),
            fresh_at_ms: AtomicU64::new(0),
            head_seq: AtomicU64::new(0),
            max_staleness,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long ago the node was last known up to date.
    pub(crate) fn staleness(&self) -> Duration {
        let fresh = self.fresh_at_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(fresh))
    }

    /// Past the bound: what this node knows may be out of date.
    pub(crate) fn is_stale(&self) -> bool {
        self.staleness() > self.max_staleness
    }

    /// The control stream's last sequence as last read (0 before the first read).
    pub(crate) fn head_seq(&self) -> u64 {
        self.head_seq.load(Ordering::Relaxed)
    }

    fn mark(&self, at_ms: u64) {
        self.fresh_at_ms.fetch_max(at_ms, Ordering::AcqRel);
    }
}

/// Keeps `freshness` current until the task is dropped.
pub(crate) async fn watch(freshness: Arc<Freshness>, log: Arc<dyn EventLog>, replica: Replica) {
    let interval =
        (freshness.max_staleness / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // A check that was answered, waiting for the replica to apply what it reported.
    let mut pending: Option<(u64, u64)> = None;
    let mut was_stale = false;
    loop {
        if let Some((at, seq)) = pending
            && replica.applied_seq() >= seq
        {
            freshness.mark(at);
            pending = None;
        }
        let asked_at = freshness.now_ms();
        let bounds = tokio::time::timeout(interval, log.bounds(StreamName::Control)).await;
        if let Ok(Ok(b)) = &bounds {
            freshness.head_seq.fetch_max(b.last_seq, Ordering::Relaxed);
        }
        match bounds {
            Ok(Ok(bounds)) if replica.applied_seq() >= bounds.last_seq => freshness.mark(asked_at),
            Ok(Ok(bounds)) => {
                // Behind, and catching up: fresh as of now once it has this sequence.
                pending = pending.or(Some((asked_at, bounds.last_seq)));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "control stream head unknown"),
            Err(_) => tracing::debug!("control stream head: no answer in time"),
        }
        let stale = freshness.is_stale();
        if stale != was_stale {
            if stale {
                tracing::warn!(
                    staleness_ms = freshness.staleness().as_millis() as u64,
                    "cut off from the control stream past the staleness bound; refusing keys that fail closed"
                );
            } else {
                tracing::info!("in touch with the control stream again");
            }
            was_stale = stale;
        }
        tokio::time::sleep(interval).await;
    }
}
