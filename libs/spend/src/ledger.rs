//! The quota-lease ledger: how gateway nodes share one limit without asking anyone per
//! request.
//!
//! For each counter (a key's requests per minute, a project's budget for the month, …)
//! the event log keeps one [`Ledger`]: the window it counts, the units `granted` so far in
//! that window, and what each node holds. Every change is a conditional append on the
//! ledger's subject (expected last sequence), so changes are serialised cluster-wide
//! exactly as if one process made them.
//!
//! A node **takes** a slice of what is left, serves requests from it locally, takes again
//! when it runs low, and **gives back** what it holds when it goes idle. A slice is a
//! share of what is left — half of it divided among the nodes holding some — so slices
//! shrink as the limit runs out and the last units go one by one.
//!
//! **The bound.** Units are only ever handed out by a take, and a take never hands out
//! more than `limit - granted`. So the units consumed in a window never exceed the limit:
//! a rate limit admits at most `limit` requests per window on the whole cluster, however
//! the load is spread. A budget's reservations never exceed the budget; what is *spent*
//! exceeds it only by what requests cost beyond their reservation (a request without
//! `max_tokens` whose answer is longer than the default reservation), which the node
//! records as `owed` and adds to `granted` at once. Undershoot — requests refused while
//! another node still holds units — is bounded by what nodes hold, which idle nodes give
//! back.
//!
//! **Dead nodes.** A holder entry expires [`LEASE_TTL_MS`] after the node's last change;
//! a live node renews its entry (a take of nothing) while it holds anything. For slots
//! (concurrent requests) a node's entry counts every slot assigned to it, in flight or
//! spare, and an expired holder's slots are reclaimed: its requests died with it. Anything
//! else an expired holder had stays counted as spent: the ledger cannot know what it
//! used, and counting it spent errs on the side of the limit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long a holder entry lives without a take or give-back from its node.
pub const LEASE_TTL_MS: u64 = 30_000;

/// What one node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub amount: u64,
    pub expires_ms: u64,
}

/// One counter's state in one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// The window it counts (see [`crate::Window`]).
    pub window: String,
    /// Units handed out in this window: spent, or held by a node.
    pub granted: u64,
    /// What each node held at its last change.
    #[serde(default)]
    pub holders: BTreeMap<String, Holder>,
}

/// The outcome of [`Ledger::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The ledger to write.
    pub ledger: Ledger,
    /// Units handed to the node (0: not enough left for what it needs).
    pub got: u64,
    /// What is left for the cluster after this take.
    pub available: u64,
}

/// What a node asks of a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    /// The holder's name.
    pub node: &'a str,
    /// What it holds now (for slots: every slot assigned to it, in flight or spare).
    pub held: u64,
    /// Units it needs now (0: renews its entry and records `owed`).
    pub need: u64,
    /// Units it would like to hold, for the requests it expects soon.
    pub want: u64,
    /// What it spent beyond what it was granted, added unconditionally.
    pub owed: u64,
}

/// A slice of what is left: what the node wants, but no more than a share — half of
/// what is left divided among the nodes holding some (this one included) — and at least
/// what it needs, at most what is left. Beyond the need, a whole number of needs: a
/// budget's slices are whole reservations, not fragments that no request fits.
pub fn slice(available: u64, need: u64, want: u64, holders: usize) -> u64 {
    let nodes = holders as u64 + 1;
    let share = available / (2 * nodes);
    let s = need.max(want.min(share)).min(available);
    if need > 0 && s > need {
        s - s % need
    } else {
        s
    }
}

impl Ledger {
    /// The ledger as of `window`: the stored one if it counts this window, else a fresh
    /// one (what an earlier window granted counts for nothing now). A stored ledger of a
    /// *later* window stays as it is: the caller's clock is behind another node's, and
    /// the window the cluster already moved to is the one that counts.
    pub fn current(stored: Option<Ledger>, window: &str) -> Ledger {
        match stored {
            Some(l) if l.window == window || crate::window::is_later(&l.window, window) => l,
            _ => Ledger {
                window: window.to_owned(),
                granted: 0,
                holders: BTreeMap::new(),
            },
        }
    }

    /// What is left for the cluster.
    pub fn available(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.granted)
    }

    /// Forgets holders whose lease expired; with `reclaim`, their holding comes back.
    fn expire(&mut self, now_ms: u64, reclaim: bool) {
        let expired: Vec<(String, u64)> = self
            .holders
            .iter()
            .filter(|(_, h)| h.expires_ms <= now_ms)
            .map(|(n, h)| (n.clone(), h.amount))
            .collect();
        for (node, amount) in expired {
            self.holders.remove(&node);
            if reclaim {
                self.granted = self.granted.saturating_sub(amount);
            }
        }
    }

    /// `ask.node` holds `ask.held` and asks for `ask.need` more, hoping for `ask.want`;
    /// its `ask.owed` is added unconditionally. Units come back from expired holders if
    /// `reclaim` (slots).
    pub fn take(mut self, limit: u64, ask: Ask<'_>, now_ms: u64, reclaim: bool) -> Take {
        self.expire(now_ms, reclaim);
        if reclaim {
            // Slots: the node's entry becomes what it really holds. Less than recorded:
            // it lost slots (a restart under the same name), which come back. More:
            // its entry expired while it still had requests in flight, and those count
            // again.
            let recorded = self.holders.get(ask.node).map_or(0, |h| h.amount);
            self.granted = self
                .granted
                .saturating_sub(recorded)
                .saturating_add(ask.held);
        }
        self.granted = self.granted.saturating_add(ask.owed);
        let available = self.available(limit);
        let others = self.holders.keys().filter(|n| *n != ask.node).count();
        let got = if ask.need > 0 && ask.need <= available {
            slice(available, ask.need, ask.want, others)
        } else {
            0
        };
        self.granted += got;
        self.holders.insert(
            ask.node.to_owned(),
            Holder {
                amount: ask.held + got,
                expires_ms: now_ms + LEASE_TTL_MS,
            },
        );
        let available = self.available(limit);
        Take {
            ledger: self,
            got,
            available,
        }
    }

    /// `node` gives back `amount` it held and keeps `kept`.
    pub fn give_back(
        mut self,
        node: &str,
        amount: u64,
        kept: u64,
        now_ms: u64,
        reclaim: bool,
    ) -> Ledger {
        self.expire(now_ms, reclaim);
        if reclaim {
            // Slots: what the node holds is exactly its entry; an entry that expired was
            // reclaimed already, so only what is recorded can come back.
            let recorded = self.holders.get(node).map_or(0, |h| h.amount);
            self.granted = self.granted.saturating_sub(recorded).saturating_add(kept);
        } else {
            self.granted = self.granted.saturating_sub(amount);
        }
        if kept == 0 {
            self.holders.remove(node);
        } else {
            self.holders.insert(
                node.to_owned(),
                Holder {
                    amount: kept,
                    expires_ms: now_ms + LEASE_TTL_MS,
                },
            );
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ask;
    use proptest::prelude::*;

    #[test]
    fn slices_shrink_as_the_limit_runs_out() {
        assert_eq!(slice(100, 1, 100, 0), 50);
        assert_eq!(slice(100, 1, 100, 2), 16);
        assert_eq!(slice(3, 1, 100, 2), 1);
        assert_eq!(slice(0, 1, 100, 0), 0);
        // A node that expects little takes little.
        assert_eq!(slice(100, 1, 5, 0), 5);
        // A budget reservation larger than a share takes what it needs.
        assert_eq!(slice(1_000_000, 600_000, 0, 1), 600_000);
        // Whole reservations: 3 × 50,000 of a share of 166,666.
        assert_eq!(slice(1_000_000, 50_000, u64::MAX, 2), 150_000);
    }

    #[test]
    fn a_new_window_starts_from_nothing() {
        let old = Ledger {
            window: "m1".into(),
            granted: 100,
            holders: BTreeMap::new(),
        };
        assert_eq!(Ledger::current(Some(old.clone()), "m1").granted, 100);
        assert_eq!(Ledger::current(Some(old), "m2").granted, 0);
    }

    #[test]
    fn a_restarted_node_gets_its_lost_slots_back() {
        let l = Ledger::current(None, "live")
            .take(
                4,
                Ask {
                    node: "a",
                    held: 0,
                    need: 1,
                    want: u64::MAX,
                    owed: 0,
                },
                0,
                true,
            )
            .ledger;
        assert_eq!(l.holders["a"].amount, 2);
        // "a" restarted: it holds nothing, but its entry says 2.
        let t = l.take(
            4,
            Ask {
                node: "a",
                held: 0,
                need: 1,
                want: u64::MAX,
                owed: 0,
            },
            1,
            true,
        );
        assert_eq!(t.ledger.granted, t.got);
        assert_eq!(t.ledger.holders["a"].amount, t.got);
    }

    #[test]
    fn dead_holders_give_slots_back_but_not_spend() {
        let l = Ledger::current(None, "live")
            .take(
                10,
                Ask {
                    node: "a",
                    held: 0,
                    need: 1,
                    want: u64::MAX,
                    owed: 0,
                },
                0,
                true,
            )
            .ledger;
        assert_eq!(l.granted, 5);
        // "a" died; "b" asks after the lease ran out.
        let t = l.clone().take(
            10,
            Ask {
                node: "b",
                held: 0,
                need: 1,
                want: u64::MAX,
                owed: 0,
            },
            LEASE_TTL_MS + 1,
            true,
        );
        assert!(!t.ledger.holders.contains_key("a"));
        assert_eq!(t.ledger.granted, t.got);
        let t = l.take(
            10,
            Ask {
                node: "b",
                held: 0,
                need: 1,
                want: u64::MAX,
                owed: 0,
            },
            LEASE_TTL_MS + 1,
            false,
        );
        assert_eq!(t.ledger.granted, 5 + t.got, "spend is not given back");
    }

    #[test]
    fn an_expired_holder_cannot_return_slots_twice() {
        let ask = |node, held, need| Ask {
            node,
            held,
            need,
            want: u64::MAX,
            owed: 0,
        };
        let l = Ledger::current(None, "live")
            .take(4, ask("a", 0, 2), 0, true)
            .ledger;
        assert_eq!(l.granted, 2);
        // "a" was cut off; its entry expires and "b" gets its slots.
        let t = l.take(4, ask("b", 0, 1), LEASE_TTL_MS + 1, true);
        let b_got = t.got;
        assert_eq!(t.ledger.granted, b_got);
        // "a" comes back and gives back its 2 spare slots: they were reclaimed already.
        let l = t.ledger.give_back("a", 2, 0, LEASE_TTL_MS + 2, true);
        assert_eq!(l.granted, b_got);
        // Had it kept one in flight, that one counts again.
        let l = l.take(4, ask("a", 1, 0), LEASE_TTL_MS + 3, true).ledger;
        assert_eq!(l.granted, b_got + 1);
    }

    /// One node's view: what it holds, what it owes.
    #[derive(Debug, Clone, Default)]
    struct Node {
        held: u64,
        alive: bool,
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Requests in flight at a node finish.
        Finish { node: usize },
        /// A request for `units` arrives at a node.
        Request { node: usize, units: u64 },
        /// A node gives back what it holds.
        Idle { node: usize },
        /// A node dies.
        Crash { node: usize },
        /// Time passes.
        Tick { ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (0usize..3).prop_map(|node| Step::Finish { node }),
            6 => (0usize..3, 1u64..4).prop_map(|(node, units)| Step::Request { node, units }),
            1 => (0usize..3).prop_map(|node| Step::Idle { node }),
            1 => (0usize..3).prop_map(|node| Step::Crash { node }),
            1 => (0u64..40_000).prop_map(|ms| Step::Tick { ms }),
        ]
    }

    proptest! {
        /// However requests arrive at three nodes, whichever give back or die, the units
        /// served never exceed the limit, and `granted` always covers what was served
        /// plus what live nodes hold.
        #[test]
        fn the_cluster_never_serves_more_than_the_limit(
            limit in 1u64..200,
            steps in prop::collection::vec(step(), 1..300),
        ) {
            let mut ledger = Ledger::current(None, "w");
            let mut nodes = vec![Node { held: 0, alive: true }; 3];
            let mut served = 0u64;
            let mut now = 0u64;
            for s in steps {
                match s {
                    Step::Request { node, units } => {
                        let n = &mut nodes[node];
                        if !n.alive {
                            // Restarted: it holds nothing.
                            *n = Node { held: 0, alive: true };
                        }
                        if n.held < units {
                            let t = ledger.clone().take(limit, Ask { node: &node.to_string(), held: n.held, need: units - n.held, want: u64::MAX, owed: 0 }, now, false);
                            ledger = t.ledger;
                            n.held += t.got;
                        }
                        if n.held >= units {
                            n.held -= units;
                            served += units;
                        }
                    }
                    Step::Idle { node } => {
                        let n = &mut nodes[node];
                        if n.alive && n.held > 0 {
                            ledger = ledger.give_back(&node.to_string(), n.held, 0, now, false);
                            n.held = 0;
                        }
                    }
                    Step::Crash { node } => nodes[node] = Node { held: 0, alive: false },
                    Step::Tick { ms } => now += ms,
                    Step::Finish { .. } => {}
                }
                prop_assert!(served <= limit, "served {} of {}", served, limit);
                prop_assert!(ledger.granted <= limit);
                let held: u64 = nodes.iter().filter(|n| n.alive).map(|n| n.held).sum();
                prop_assert!(ledger.granted >= served + held);
            }
        }

        /// Slots: in flight never exceeds the limit; live nodes renew their entries, and
        /// the slots of dead nodes come back.
        #[test]
        fn concurrent_slots_stay_within_the_limit(
            limit in 1u64..20,
            steps in prop::collection::vec(step(), 1..300),
        ) {
            let mut ledger = Ledger::current(None, "live");
            // Slots assigned to each node, and how many of them are in flight.
            let mut assigned = [0u64; 3];
            let mut in_flight = [0u64; 3];
            let mut alive = [true; 3];
            let mut now = 0u64;
            for s in steps {
                match s {
                    Step::Request { node, .. } => {
                        alive[node] = true;
                        if assigned[node] == in_flight[node] {
                            let t = ledger.clone().take(limit, Ask { node: &node.to_string(), held: assigned[node], need: 1, want: u64::MAX, owed: 0 }, now, true);
                            ledger = t.ledger;
                            assigned[node] += t.got;
                        }
                        if assigned[node] > in_flight[node] {
                            in_flight[node] += 1;
                        }
                    }
                    Step::Finish { node } => in_flight[node] = 0,
                    Step::Idle { node } => {
                        // The spare slots are given back; the ones in flight stay assigned.
                        let spare = assigned[node] - in_flight[node];
                        ledger = ledger.give_back(&node.to_string(), spare, in_flight[node], now, true);
                        assigned[node] = in_flight[node];
                    }
                    Step::Crash { node } => {
                        assigned[node] = 0;
                        in_flight[node] = 0;
                        alive[node] = false;
                    }
                    Step::Tick { ms } => {
                        // Live nodes renew before their entries expire.
                        let mut left = ms;
                        while left > 0 {
                            let dt = left.min(LEASE_TTL_MS / 3);
                            now += dt;
                            left -= dt;
                            for node in 0..3 {
                                if alive[node] && assigned[node] > 0 {
                                    ledger = ledger.clone().take(limit, Ask { node: &node.to_string(), held: assigned[node], need: 0, want: u64::MAX, owed: 0 }, now, true).ledger;
                                }
                            }
                        }
                    }
                }
                let total: u64 = in_flight.iter().sum();
                prop_assert!(total <= limit, "{} in flight over {}", total, limit);
            }
        }
    }
}
