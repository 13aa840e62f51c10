//! Limits and budgets that hold for the whole cluster, with nothing on the hot path.
//!
//! Each counter (a key's requests per minute, a project's budget for the month, …) has a
//! [`Ledger`] in the event log's quota stream, one subject per counter, changed only by
//! conditional appends (expected last sequence) — so changes are serialised cluster-wide.
//! A node **takes** a slice of what is left, serves requests from it in memory, takes
//! again *before* it runs out (in the background), and **gives back** what it holds once
//! it goes idle. A request waits for the log only when its node holds nothing for it:
//! the first request of a window, or when the quota is nearly spent and slices are
//! down to single units.
//!
//! **The bound** (see `sg_spend::ledger`): units are only handed out by takes, and no
//! take hands out more than `limit - granted`, so a window never serves more than its
//! limit, however the load is spread. Settling a request to more than it reserved
//! (tokens or cost beyond the estimate) is taken from what the node holds, else recorded
//! as owed and added to `granted` with the node's next write.
//!
//! **Failure.** A node that cannot reach the log serves what it already holds, then
//! refuses with [`Refusal::Unavailable`] — never unlimited. Slots (concurrent requests)
//! are leases: a node that cannot renew them within the lease stops using its spare
//! ones, since the cluster will reclaim them.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use sg_eventlog::{Append, EventLog, LogError};
use sg_spend::ledger::LEASE_TTL_MS;
use sg_spend::{Ask, Counter, Ledger, Window};

/// Whose counter: a key's own, or its project's (shared by all its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Key,
    Project,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Project => "project",
        }
    }
}

/// One counter of one key or project.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterId {
    pub tenant: String,
    pub scope: Scope,
    /// The key's or the project's id.
    pub id: String,
    pub counter: Counter,
}

impl CounterId {
    /// Its ledger's subject in the quota stream.
    pub fn subject(&self) -> String {
        sg_subjects::quota(
            &self.tenant,
            self.scope.as_str(),
            &self.id,
            self.counter.as_str(),
        )
    }
}

/// What one request needs of one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub counter: CounterId,
    pub limit: u64,
    /// Requests: 1; tokens: the estimate; budget: the worst-case cost in µ$.
    pub units: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The counter's limit is reached for now.
    Exhausted {
        counter: CounterId,
        limit: u64,
        /// When the window ends, if it does (unix ms).
        window_end_ms: Option<u64>,
    },
    /// The request alone needs more than the whole limit: it can never be admitted.
    TooLarge {
        counter: CounterId,
        limit: u64,
        units: u64,
    },
    /// The log could not be reached to take more, and this node holds too little.
    Unavailable { counter: CounterId },
}

/// Settings of a node's quota engine.
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// This node's name in the ledgers; unique per process (the node id and a random
    /// incarnation), so a restarted node never mistakes its predecessor's holdings for
    /// its own.
    pub holder: String,
    /// Longest wait for the log when a request needs a take.
    pub op_timeout: Duration,
    /// A counter not used for this long gives back what its node holds.
    pub idle_give_back: Duration,
    /// Slices are sized for about this much of the node's recent demand.
    pub hold_for: Duration,
    /// After the cluster ran out, how long a node refuses without asking the log again
    /// (units another node gives back become visible after this).
    pub exhausted_recheck: Duration,
    /// After the log could not be reached, how long requests that need a take are
    /// refused at once (instead of each waiting `op_timeout`).
    pub unavailable_recheck: Duration,
    /// How often held counters are renewed, given back or settled.
    pub tick: Duration,
}

impl QuotaConfig {
    /// Defaults for a node named `node`.
    pub fn for_node(node: &str) -> QuotaConfig {
        QuotaConfig {
            holder: format!("{node}#{:08x}", rand::random::<u32>()),
            op_timeout: Duration::from_secs(2),
            idle_give_back: Duration::from_secs(3),
            hold_for: Duration::from_secs(1),
            exhausted_recheck: Duration::from_millis(250),
            unavailable_recheck: Duration::from_secs(1),
            tick: Duration::from_millis(500),
        }
    }
}

/// Unix milliseconds now; tests give their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as unix milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// A slot's lease is used only this long after its last successful write, leaving a
/// margin for clock differences between nodes before the ledger reclaims it.
const LEASE_USE_MS: u64 = LEASE_TTL_MS - 5_000;
/// Conditional writes retried on conflict before the log counts as unavailable.
const MAX_CAS_ATTEMPTS: usize = 32;
/// Counters unused for this long with nothing held are forgotten.
const FORGET_AFTER_MS: u64 = 10 * 60_000;

/// What this node knows and holds of one counter.
#[derive(Debug, Default)]
struct Local {
    /// The window `held` belongs to, and its bounds when known (`window_start_ms` is
    /// `u64::MAX` for a window adopted from another node's clock: always checked).
    window: String,
    window_start_ms: u64,
    window_end_ms: Option<u64>,
    limit: u64,
    /// Units usable here now (slots: spare slots assigned to this node).
    held: u64,
    /// Slots in flight.
    in_use: u64,
    /// Spent beyond what was granted, not yet written.
    owed: u64,
    /// Held under a limit that changed since: to give back with the next write.
    returning: u64,
    /// What the cluster had left at this node's last write.
    cluster_available: u64,
    /// No take before this (the cluster ran out).
    exhausted_until_ms: u64,
    /// No take before this (the log could not be reached): refuse at once meanwhile.
    unavailable_until_ms: u64,
    /// Demand since the last take, for sizing the next slice.
    used_since_take: u64,
    last_take_ms: u64,
    last_used_ms: u64,
    last_write_ms: u64,
    /// Slots: this node's lease is good until then.
    lease_until_ms: u64,
}

impl Local {
    fn slots(counter: Counter) -> bool {
        counter.returns_on_completion()
    }

    /// Moves to the window of `now`, dropping what an ended window held. A window later
    /// than ours (adopted from the ledger) is kept.
    fn roll(&mut self, counter: Counter, now: u64) {
        if !self.window.is_empty()
            && self.window_start_ms <= now
            && self.window_end_ms.is_none_or(|end| now < end)
        {
            return;
        }
        let w = Window::of(counter, now);
        if w.id != self.window && !sg_spend::window::is_later(&self.window, &w.id) {
            self.window = w.id;
            self.window_start_ms = w.start_ms.unwrap_or(0);
            self.window_end_ms = w.end_ms;
            if !Self::slots(counter) {
                self.held = 0;
                self.owed = 0;
                self.returning = 0;
            }
            self.exhausted_until_ms = 0;
            self.used_since_take = 0;
        }
    }

    /// Takes `units` from what is held, if enough is (after paying what is owed).
    fn consume(&mut self, counter: Counter, units: u64, now: u64) -> bool {
        if Self::slots(counter) && now >= self.lease_until_ms {
            return false;
        }
        let pay = self.owed.min(self.held);
        self.owed -= pay;
        self.held -= pay;
        if self.held < units {
            return false;
        }
        self.held -= units;
        if Self::slots(counter) {
            self.in_use += units;
        }
        self.used_since_take = self.used_since_take.saturating_add(units);
        self.last_used_ms = now;
        true
    }

    /// Whether the cluster had too little left for `units` at this node's last try,
    /// recently enough not to ask again.
    fn exhausted(&self, units: u64, now: u64) -> bool {
        self.exhausted_until_ms > now && units > self.held.saturating_add(self.cluster_available)
    }

    /// The slice this node would like: its demand over `hold_for`, at least `need` and a
    /// thousandth of the limit.
    fn want(&self, need: u64, now: u64, hold_for_ms: u64) -> u64 {
        let elapsed = now.saturating_sub(self.last_take_ms).max(50);
        let rate = self.used_since_take as f64 / elapsed as f64;
        let by_rate = (rate * hold_for_ms as f64) as u64;
        need.max(by_rate).max(self.limit / 1000)
    }
}

/// One counter: what this node holds, and its ledger as last written or read.
struct Slot {
    id: CounterId,
    subject: String,
    local: Mutex<Local>,
    /// Serialises this node's writes of the ledger (one take at a time: requests that
    /// need one wait for it and share what it brings); holds the ledger and its sequence
    /// as of this node's last write, to write again without reading first.
    ledger: tokio::sync::Mutex<Option<(Ledger, u64)>>,
    refilling: AtomicBool,
}

impl Slot {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Inner {
    log: Arc<dyn EventLog>,
    config: QuotaConfig,
    clock: Clock,
    slots: RwLock<HashMap<CounterId, Arc<Slot>>>,
}

/// A node's quota engine. Cheap to clone.
#[derive(Clone)]
pub struct Quotas {
    inner: Arc<Inner>,
}

/// What an admitted request took; settle it when the request ends. Dropped unsettled,
/// it releases its slots and keeps everything else as spent.
pub struct Admission {
    inner: Arc<Inner>,
    grants: Vec<Grant>,
}

struct Grant {
    slot: Arc<Slot>,
    window: String,
    units: u64,
}

/// What a node knows of a counter, for rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub limit: u64,
    /// What the cluster had left at this node's last write, plus what it holds.
    pub remaining: u64,
    /// When the window ends (unix ms), if it does.
    pub window_end_ms: Option<u64>,
}

impl Quotas {
    /// A quota engine writing ledgers to `log`, and its maintenance task (renewals,
    /// give-backs, owed amounts), which runs until the engine is dropped.
    pub fn start(
        log: Arc<dyn EventLog>,
        config: QuotaConfig,
        clock: Clock,
    ) -> (Quotas, tokio::task::JoinHandle<()>) {
        let inner = Arc::new(Inner {
            log,
            config,
            clock,
            slots: RwLock::new(HashMap::new()),
        });
        let task = tokio::spawn(maintain(Arc::downgrade(&inner)));
        (Quotas { inner }, task)
    }

    /// This node's name in the ledgers.
    pub fn holder(&self) -> &str {
        &self.inner.config.holder
    }

    /// Admits a request if every counter has room for it; otherwise takes nothing and
    /// says which counter refused.
    pub async fn admit(&self, demands: &[Demand]) -> Result<Admission, Refusal> {
        let mut admission = Admission {
            inner: self.inner.clone(),
            grants: Vec::with_capacity(demands.len()),
        };
        for d in demands {
            let slot = self.inner.slot(&d.counter);
            match self.inner.acquire(&slot, d.limit, d.units).await {
                Ok(window) => admission.grants.push(Grant {
                    slot,
                    window,
                    units: d.units,
                }),
                Err(refusal) => {
                    admission.unwind();
                    return Err(refusal);
                }
            }
        }
        Ok(admission)
    }

    /// What this node knows of `counter` under `limit`.
    pub fn status(&self, counter: &CounterId, limit: u64) -> Status {
        let now = (self.inner.clock)();
        let window = Window::of(counter.counter, now);
        let slot = self.inner.existing(counter);
        let (remaining, end) = match slot {
            Some(slot) => {
                let mut local = slot.local();
                local.roll(counter.counter, now);
                if local.last_write_ms == 0 || local.limit != limit {
                    (limit, window.end_ms)
                } else {
                    (
                        local
                            .cluster_available
                            .saturating_add(local.held)
                            .min(limit),
                        local.window_end_ms,
                    )
                }
            }
            None => (limit, window.end_ms),
        };
        Status {
            limit,
            remaining,
            window_end_ms: end,
        }
    }

    /// Gives back everything this node holds (on shutdown), as far as the log lets it.
    pub async fn give_back_all(&self) {
        let slots: Vec<Arc<Slot>> = self.inner.all_slots();
        for slot in slots {
            if let Err(e) = self.inner.give_back(&slot).await {
                tracing::warn!(error = %e, "quota not given back on shutdown; it stays counted until the window ends");
            }
        }
    }
}

impl Admission {
    /// The request ended having used `actual(counter)` units of each counter that is
    /// not a slot or a request count (`None`: unknown — the reservation stands).
    pub fn settle(mut self, actual: impl Fn(Counter) -> Option<u64>) {
        let now = (self.inner.clock)();
        for g in std::mem::take(&mut self.grants) {
            let counter = g.slot.id.counter;
            let mut local = g.slot.local();
            if Local::slots(counter) {
                release(&mut local, g.units);
                continue;
            }
            if matches!(counter, Counter::Rpm | Counter::Rpd) || local.window != g.window {
                continue;
            }
            let Some(used) = actual(counter) else {
                continue;
            };
            if used <= g.units {
                local.held += g.units - used;
            } else {
                let extra = used - g.units;
                let covered = extra.min(local.held);
                local.held -= covered;
                local.owed = local.owed.saturating_add(extra - covered);
            }
            local.last_used_ms = now;
        }
    }

    /// Returns everything taken (a later counter refused the request).
    fn unwind(&mut self) {
        for g in self.grants.drain(..) {
            let mut local = g.slot.local();
            if Local::slots(g.slot.id.counter) {
                release(&mut local, g.units);
            } else if local.window == g.window {
                local.held += g.units;
                local.used_since_take = local.used_since_take.saturating_sub(g.units);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for g in self.grants.drain(..) {
            if Local::slots(g.slot.id.counter) {
                release(&mut g.slot.local(), g.units);
            }
        }
    }
}

/// A slot's request ended: the slot stays with this node, spare.
fn release(local: &mut Local, units: u64) {
    let n = units.min(local.in_use);
    local.in_use -= n;
    local.held += n;
}

impl Inner {
    fn existing(&self, id: &CounterId) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn slot(&self, id: &CounterId) -> Arc<Slot> {
        if let Some(slot) = self.existing(id) {
            return slot;
        }
        self.slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    subject: id.subject(),
                    id: id.clone(),
                    local: Mutex::new(Local::default()),
                    ledger: tokio::sync::Mutex::new(None),
                    refilling: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Consumes `units` of `slot`, taking from the log if this node holds too little.
    /// Returns the window the units came from.
    async fn acquire(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        limit: u64,
        units: u64,
    ) -> Result<String, Refusal> {
        let counter = slot.id.counter;
        if units > limit {
            return Err(Refusal::TooLarge {
                counter: slot.id.clone(),
                limit,
                units,
            });
        }
        let exhausted = |local: &Local| Refusal::Exhausted {
            counter: slot.id.clone(),
            limit,
            window_end_ms: local.window_end_ms,
        };
        // Three rounds: a take can be overtaken by other requests of this node.
        for _ in 0..3 {
            let now = (self.clock)();
            {
                let mut local = slot.local();
                local.roll(counter, now);
                if local.limit == 0 {
                    local.limit = limit;
                } else if local.limit != limit {
                    // A limit change: what was taken under the old limit goes back with
                    // the next write, and requests are served under the new one.
                    local.returning += local.held;
                    local.held = 0;
                    local.limit = limit;
                    local.exhausted_until_ms = 0;
                }
                if local.consume(counter, units, now) {
                    let window = local.window.clone();
                    self.maybe_prefetch(slot, &local, now);
                    return Ok(window);
                }
                if local.exhausted(units, now) {
                    return Err(exhausted(&local));
                }
                if local.unavailable_until_ms > now {
                    return Err(Refusal::Unavailable {
                        counter: slot.id.clone(),
                    });
                }
            }
            let mut ledger = slot.ledger.lock().await;
            let now = (self.clock)();
            {
                // Another request's take may have brought enough meanwhile.
                let mut local = slot.local();
                local.roll(counter, now);
                if local.consume(counter, units, now) {
                    return Ok(local.window.clone());
                }
                if local.exhausted(units, now) {
                    return Err(exhausted(&local));
                }
                if local.unavailable_until_ms > now {
                    return Err(Refusal::Unavailable {
                        counter: slot.id.clone(),
                    });
                }
            }
            let need = if Local::slots(counter) {
                units
            } else {
                units.saturating_sub(slot.local().held).max(1)
            };
            let taken = tokio::time::timeout(
                self.config.op_timeout,
                self.take(slot, &mut ledger, limit, need),
            )
            .await;
            let failed = match taken {
                Ok(Ok(0)) => return Err(exhausted(&slot.local())),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => {
                    // The write may or may not have landed; read the ledger next time.
                    *ledger = None;
                    "timed out".to_owned()
                }
            };
            tracing::warn!(subject = %slot.subject, error = %failed, "quota ledger unavailable");
            slot.local().unavailable_until_ms =
                (self.clock)() + self.config.unavailable_recheck.as_millis() as u64;
            return Err(Refusal::Unavailable {
                counter: slot.id.clone(),
            });
        }
        Err(exhausted(&slot.local()))
    }

    /// Starts a background take when what is held runs low, so requests rarely wait.
    fn maybe_prefetch(self: &Arc<Self>, slot: &Arc<Slot>, local: &Local, now: u64) {
        if Local::slots(slot.id.counter) || local.exhausted_until_ms > now {
            return;
        }
        let hold_for = self.config.hold_for.as_millis() as u64;
        let want = local.want(1, now, hold_for);
        if local.held >= want / 4 || slot.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let slot = slot.clone();
        let limit = local.limit;
        tokio::spawn(async move {
            let mut ledger = slot.ledger.lock().await;
            let low = {
                let local = slot.local();
                local.held < local.want(1, (inner.clock)(), hold_for) / 4
            };
            if low && let Err(e) = inner.take(&slot, &mut ledger, limit, 1).await {
                tracing::debug!(subject = %slot.subject, error = %e, "quota prefetch failed");
            }
            drop(ledger);
            slot.refilling.store(false, Ordering::Release);
        });
    }

    async fn read(&self, slot: &Slot) -> Result<(Option<Ledger>, u64), LogError> {
        match self.log.last(&slot.subject).await? {
            None => Ok((None, 0)),
            Some(m) => match serde_json::from_slice::<Ledger>(&m.payload) {
                Ok(l) => Ok((Some(l), m.seq)),
                Err(e) => {
                    // A ledger this build cannot read: start a fresh one over it rather
                    // than refuse forever (at worst one window counts from zero).
                    tracing::error!(subject = %slot.subject, error = %e, "unreadable quota ledger replaced");
                    Ok((None, m.seq))
                }
            },
        }
    }

    /// One conditional write of the ledger, retried on conflicts: takes `need` (0:
    /// renews and records what is owed). Returns the units got.
    async fn take(
        &self,
        slot: &Slot,
        cached: &mut Option<(Ledger, u64)>,
        limit: u64,
        need: u64,
    ) -> Result<u64, LogError> {
        let counter = slot.id.counter;
        let slots = Local::slots(counter);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (stored, seq) = match cached.take() {
                Some((l, seq)) => (Some(l), seq),
                None => self.read(slot).await?,
            };
            let now = (self.clock)();
            let window = Window::of(counter, now);
            let ledger = Ledger::current(stored, &window.id);
            let (held, owed, returning, want) = {
                let mut local = slot.local();
                local.roll(counter, now);
                let same = local.window == ledger.window;
                let returning = if same { local.returning } else { 0 };
                let held = if slots {
                    local.held + local.in_use
                } else if same {
                    local.held
                } else {
                    0
                };
                let owed = if same { local.owed } else { 0 };
                let want = local.want(need, now, self.config.hold_for.as_millis() as u64);
                (held, owed, returning, want)
            };
            let ledger = if returning > 0 {
                ledger.give_back(&self.config.holder, returning, held, now, slots)
            } else {
                ledger
            };
            let t = ledger.take(
                limit,
                Ask {
                    node: &self.config.holder,
                    held,
                    need,
                    want: if need == 0 { 0 } else { want },
                    owed,
                },
                now,
                slots,
            );
            let payload = serde_json::to_vec(&t.ledger)
                .map_err(|e| LogError::Other(format!("encoding a quota ledger: {e}")))?;
            let appended = self
                .log
                .append(Append {
                    subject: slot.subject.clone(),
                    payload: payload.into(),
                    expected_last_subject_seq: Some(seq),
                    msg_id: None,
                })
                .await;
            match appended {
                Ok(a) => {
                    let mut local = slot.local();
                    if local.window != t.ledger.window {
                        // The ledger counts a window this node had no holding in.
                        local.window = t.ledger.window.clone();
                        (local.window_start_ms, local.window_end_ms) =
                            if t.ledger.window == window.id {
                                (window.start_ms.unwrap_or(0), window.end_ms)
                            } else {
                                (u64::MAX, None)
                            };
                        if !slots {
                            local.held = 0;
                            local.owed = 0;
                            local.returning = 0;
                        }
                    } else {
                        local.owed = local.owed.saturating_sub(owed);
                        local.returning = local.returning.saturating_sub(returning);
                    }
                    if local.limit == limit {
                        local.held += t.got;
                    } else {
                        // The limit changed while this take was under way.
                        local.returning += t.got;
                    }
                    local.cluster_available = t.available;
                    local.last_write_ms = now;
                    local.last_take_ms = now;
                    local.used_since_take = 0;
                    local.lease_until_ms = now + LEASE_USE_MS;
                    local.unavailable_until_ms = 0;
                    local.exhausted_until_ms = if need > 0 && t.got == 0 {
                        now + self.config.exhausted_recheck.as_millis() as u64
                    } else {
                        0
                    };
                    *cached = Some((t.ledger, a.seq));
                    return Ok(t.got);
                }
                Err(LogError::WrongLastSequence { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(LogError::Unavailable(format!(
            "{}: too many concurrent writers",
            slot.subject
        )))
    }

    /// Gives back what this node holds of `slot` (slots: the spare ones).
    async fn give_back(&self, slot: &Slot) -> Result<(), LogError> {
        let mut cached = slot.ledger.lock().await;
        let counter = slot.id.counter;
        let slots = Local::slots(counter);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let now = (self.clock)();
            let (amount, kept, window) = {
                let mut local = slot.local();
                local.roll(counter, now);
                if local.held == 0 && local.owed == 0 && local.returning == 0 {
                    return Ok(());
                }
                let parts = (local.held, local.returning);
                local.held = 0;
                local.returning = 0;
                (parts, local.in_use, local.window.clone())
            };
            let (held_part, returning_part) = amount;
            let amount = held_part + returning_part;
            let restore = |slot: &Slot| {
                let mut local = slot.local();
                if local.window == window {
                    local.held += held_part;
                    local.returning += returning_part;
                }
            };
            let (stored, seq) = match cached.take() {
                Some((l, seq)) => (Some(l), seq),
                None => match self.read(slot).await {
                    Ok(x) => x,
                    Err(e) => {
                        restore(slot);
                        return Err(e);
                    }
                },
            };
            let Some(stored) = stored.filter(|l| l.window == window) else {
                // The ledger moved on to another window: nothing of ours is in it.
                return Ok(());
            };
            let owed = slot.local().owed;
            let mut ledger = stored;
            ledger.granted = ledger.granted.saturating_add(owed);
            let ledger = ledger.give_back(&self.config.holder, amount, kept, now, slots);
            let payload = serde_json::to_vec(&ledger)
                .map_err(|e| LogError::Other(format!("encoding a quota ledger: {e}")))?;
            match self
                .log
                .append(Append {
                    subject: slot.subject.clone(),
                    payload: payload.into(),
                    expected_last_subject_seq: Some(seq),
                    msg_id: None,
                })
                .await
            {
                Ok(a) => {
                    let mut local = slot.local();
                    local.owed = local.owed.saturating_sub(owed);
                    local.last_write_ms = now;
                    local.lease_until_ms = now + LEASE_USE_MS;
                    local.cluster_available = ledger.available(local.limit);
                    *cached = Some((ledger, a.seq));
                    return Ok(());
                }
                Err(LogError::WrongLastSequence { .. }) => {
                    restore(slot);
                    continue;
                }
                Err(e) => {
                    restore(slot);
                    return Err(e);
                }
            }
        }
        Err(LogError::Unavailable(format!(
            "{}: too many concurrent writers",
            slot.subject
        )))
    }

    /// One pass of maintenance over every counter.
    async fn tend(&self) {
        let now = (self.clock)();
        let idle_ms = self.config.idle_give_back.as_millis() as u64;
        let mut forget = Vec::new();
        for slot in self.all_slots() {
            let counter = slot.id.counter;
            let slots = Local::slots(counter);
            let (held, in_use, owed, idle, since_write, limit) = {
                let mut local = slot.local();
                local.roll(counter, now);
                (
                    local.held + local.returning,
                    local.in_use,
                    local.owed,
                    now.saturating_sub(local.last_used_ms),
                    now.saturating_sub(local.last_write_ms),
                    local.limit,
                )
            };
            let returning = slot.local().returning > 0;
            let result = if (held > 0 && idle >= idle_ms) || returning {
                self.give_back(&slot).await
            } else if (slots && held + in_use > 0 && since_write >= LEASE_TTL_MS / 3)
                || (owed > 0 && since_write >= 1_000)
            {
                let mut cached = slot.ledger.lock().await;
                self.take(&slot, &mut cached, limit, 0).await.map(|_| ())
            } else {
                if held + in_use + owed == 0 && idle >= FORGET_AFTER_MS {
                    forget.push(slot.id.clone());
                }
                Ok(())
            };
            if let Err(e) = result {
                tracing::debug!(subject = %slot.subject, error = %e, "quota upkeep failed; retrying");
            }
        }
        if !forget.is_empty() {
            let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
            for id in forget {
                // Only if still unused (a request may have come in meanwhile).
                let unused = slots.get(&id).is_some_and(|s| {
                    Arc::strong_count(s) == 1 && {
                        let l = s.local();
                        l.held + l.in_use + l.owed == 0
                    }
                });
                if unused {
                    slots.remove(&id);
                }
            }
        }
    }
}

async fn maintain(inner: std::sync::Weak<Inner>) {
    loop {
        let tick = match inner.upgrade() {
            Some(inner) => inner.config.tick,
            None => return,
        };
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tend().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn want_follows_demand() {
        let mut l = Local {
            limit: 10_000,
            ..Local::default()
        };
        // Nothing known: the need, or a thousandth of the limit.
        assert_eq!(l.want(1, 1_000, 1_000), 10);
        assert_eq!(l.want(50, 1_000, 1_000), 50);
        // 200 units in the last 500 ms: 400 for the next second.
        l.last_take_ms = 500;
        l.used_since_take = 200;
        assert_eq!(l.want(1, 1_000, 1_000), 400);
    }

    #[test]
    fn a_new_window_drops_what_the_old_one_held() {
        let mut l = Local::default();
        l.roll(Counter::Rpm, 60_000);
        assert_eq!(l.window, "m1");
        l.held = 5;
        l.roll(Counter::Rpm, 119_999);
        assert_eq!(l.held, 5);
        l.roll(Counter::Rpm, 120_000);
        assert_eq!((l.window.as_str(), l.held), ("m2", 0));
        // A later window adopted from the ledger is kept when this clock is behind.
        l.window = "m3".into();
        l.held = 2;
        l.roll(Counter::Rpm, 125_000);
        assert_eq!((l.window.as_str(), l.held), ("m3", 2));
        // Slots have one window and keep their holding.
        let mut s = Local::default();
        s.roll(Counter::Concurrent, 0);
        s.held = 3;
        s.roll(Counter::Concurrent, 10_000_000);
        assert_eq!(s.held, 3);
        // An adopted window's bounds are unknown: the next roll checks again.
        let mut l = Local {
            window: "m5".into(),
            window_start_ms: u64::MAX,
            held: 1,
            ..Local::default()
        };
        l.roll(Counter::Rpm, 4 * 60_000);
        assert_eq!((l.window.as_str(), l.held), ("m5", 1));
        l.roll(Counter::Rpm, 6 * 60_000);
        assert_eq!((l.window.as_str(), l.held), ("m6", 0));
    }

    #[test]
    fn slots_need_a_live_lease() {
        let mut s = Local {
            held: 2,
            lease_until_ms: 100,
            ..Local::default()
        };
        assert!(s.consume(Counter::Concurrent, 1, 50));
        assert_eq!((s.held, s.in_use), (1, 1));
        assert!(!s.consume(Counter::Concurrent, 1, 100));
        release(&mut s, 1);
        assert_eq!((s.held, s.in_use), (2, 0));
    }
}
