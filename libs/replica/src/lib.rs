//! A live replica of the control state: follows the control stream from its first
//! message, folds every event into a [`State`], and reports readiness once it has caught
//! up with the stream head as of its start.
//!
//! The gateway registers a change hook that refreshes its hot-path key cache; the admin
//! API reads the state to validate commands and waits on [`Replica::wait_for`] to read
//! its own writes.
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use sg_eventlog::{EventLog, LogError, StreamName};
use sg_state::{Changes, State};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Called after each applied event with the new state and what changed.
pub type ChangeHook = Box<dyn FnMut(&State, &Changes) + Send + 'static>;

/// Handle to a running replica.
#[derive(Clone)]
pub struct Replica {
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
    ready: watch::Receiver<bool>,
}

impl Replica {
    /// Starts following `log`'s control stream in a background task.
    pub fn spawn(log: Arc<dyn EventLog>, hook: Option<ChangeHook>) -> (Replica, JoinHandle<()>) {
        Self::spawn_seeded(log, hook, Vec::new())
    }

    /// Like [`Replica::spawn`], with `seed` events folded first: objects configured
    /// statically on this node (a configuration file), which are in no log.
    pub fn spawn_seeded(
        log: Arc<dyn EventLog>,
        mut hook: Option<ChangeHook>,
        seed: Vec<sg_events::Envelope>,
    ) -> (Replica, JoinHandle<()>) {
        let mut initial = State::new();
        for env in &seed {
            match initial.apply(0, &env.subject(), env) {
                Ok(changes) => {
                    if let Some(h) = hook.as_mut() {
                        h(&initial, &changes);
                    }
                }
                Err(e) => {
                    tracing::warn!(event_type = env.event.type_name(), error = %e, "static configuration entry not applied")
                }
            }
        }
        let state = Arc::new(RwLock::new(initial));
        let (applied_tx, applied) = watch::channel(0u64);
        let (ready_tx, ready) = watch::channel(false);
        let task = tokio::spawn(follow(log, state.clone(), hook, applied_tx, ready_tx));
        (
            Replica {
                state,
                applied,
                ready,
            },
            task,
        )
    }

    /// Read access to the state. Hold the guard briefly: the follower waits for it.
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic happened while folding; the data is still the
        // last consistent fold, so keep serving it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the replica has caught up with the stream head as of its start.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The last applied control-stream sequence.
    pub fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the replica has applied `seq`, for at most `timeout`.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The most keys a replica makes room for before it has folded them.
const RESERVE_MAX: usize = 1 << 22;

async fn follow(
    log: Arc<dyn EventLog>,
    state: Arc<RwLock<State>>,
    mut hook: Option<ChangeHook>,
    applied: watch::Sender<u64>,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    // The head as of start: readiness means having folded at least this far.
    let target = loop {
        match log.bounds(StreamName::Control).await {
            Ok(b) => break b.last_seq,
            Err(e) => {
                tracing::warn!(error = %e, "control stream unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    if target == 0 {
        ready.send_replace(true);
    }
    // Room for as many keys as the stream has events (at most `RESERVE_MAX`): most
    // control events of a large installation are keys' own, and growing the key
    // indexes past a million keys pauses the fold for a good part of a second.
    {
        let mut guard = state.write().unwrap_or_else(|p| p.into_inner());
        let have = guard.key_count();
        let want = usize::try_from(target).map_or(RESERVE_MAX, |t| t.min(RESERVE_MAX));
        guard.reserve_keys(want.saturating_sub(have));
    }
    let mut next = 1u64;
    loop {
        let mut stream = match log.follow(StreamName::Control, next).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the control stream; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(item) = stream.next().await {
            let msg = match item {
                Ok(m) => m,
                Err(e) => {
                    log_follow_error(&e);
                    break;
                }
            };
            if msg.seq < next {
                continue;
            }
            match sg_events::decode(&msg.payload) {
                Ok(env) => {
                    let mut guard = state.write().unwrap_or_else(|p| p.into_inner());
                    match guard.apply(msg.seq, &msg.subject, &env) {
                        Ok(changes) => {
                            if let Some(h) = hook.as_mut() {
                                h(&guard, &changes);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(seq = msg.seq, event_type = env.event.type_name(), error = %e, "control event not applied")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(seq = msg.seq, error = %e, "control event skipped")
                }
            }
            next = msg.seq + 1;
            applied.send_replace(msg.seq);
            if msg.seq >= target {
                ready.send_replace(true);
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

fn log_follow_error(e: &LogError) {
    tracing::warn!(error = %e, "control stream follower interrupted; resubscribing");
}
