//! Figures of a run: percentiles, the printed report and the JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::probe::NodeOutcome;

/// The goal: p99 of the time until every node refuses a revoked key.
pub const GOAL_MS: f64 = 50.0;

/// One revocation as measured.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// t0 to the admin API's answer.
    pub ack: Duration,
    /// The admin API's status (200 expected).
    pub ack_status: u16,
    /// Per node, in node order.
    pub nodes: Vec<NodeOutcome>,
}

impl Revocation {
    /// t0 to the last node's first refusal, if every node refused.
    pub fn all_refused(&self) -> Option<Duration> {
        self.nodes
            .iter()
            .map(|n| n.refused_after)
            .try_fold(Duration::ZERO, |max, t| t.map(|t| max.max(t)))
    }
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Run {
    pub cpu: String,
    pub cores: usize,
    pub profile: &'static str,
    pub nats_version: String,
    pub node_ids: Vec<String>,
    pub poll_interval_us: u64,
    pub give_up_ms: u64,
    /// Keys provisioned (one per revocation).
    pub keys: usize,
    /// Warm-up: node-key pairs accepted, and requests refused as unknown first (a new
    /// key not yet folded in by that node).
    pub warmup_accepted: usize,
    pub warmup_unknown: u32,
    /// Just before each revocation: node-key pairs accepted, and what else was seen.
    pub pre_accepted: usize,
    pub pre_failures: Vec<String>,
    pub revocations: Vec<Revocation>,
    /// After every revocation: node-key pairs refused as revoked, and what else was seen.
    pub sweep_refused: usize,
    pub sweep_failures: Vec<String>,
    pub unix_time: u64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// p50, p90, p99, max (ms) of a series.
#[derive(Debug, Clone, Copy)]
pub struct Quantiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(values: Vec<f64>) -> Option<Self> {
        let s = sorted(values);
        Some(Quantiles {
            n: s.len(),
            p50: percentile(&s, 0.50)?,
            p90: percentile(&s, 0.90)?,
            p99: percentile(&s, 0.99)?,
            max: *s.last()?,
        })
    }

    fn json(q: Option<Self>) -> Value {
        match q {
            Some(q) => {
                json!({"n": q.n, "p50_ms": q.p50, "p90_ms": q.p90, "p99_ms": q.p99, "max_ms": q.max})
            }
            None => Value::Null,
        }
    }
}

impl Run {
    pub fn all_nodes(&self) -> Option<Quantiles> {
        Quantiles::of(
            self.revocations
                .iter()
                .filter_map(Revocation::all_refused)
                .map(ms)
                .collect(),
        )
    }

    /// Per revocation, the latest time a node was still seen accepting the key: the
    /// slowest node's last accepted request was sent then, so every node refusing came
    /// later (0 where no node accepted a request after t0). With [`Run::all_nodes`] it
    /// brackets the propagation to the polling's resolution.
    pub fn all_nodes_lower_bound(&self) -> Option<Quantiles> {
        Quantiles::of(
            self.revocations
                .iter()
                .filter(|r| r.all_refused().is_some())
                .map(|r| {
                    r.nodes
                        .iter()
                        .filter_map(|n| n.last_accepted_sent)
                        .max()
                        .map_or(0.0, ms)
                })
                .collect(),
        )
    }

    pub fn ack(&self) -> Option<Quantiles> {
        Quantiles::of(self.revocations.iter().map(|r| ms(r.ack)).collect())
    }

    pub fn node(&self, i: usize) -> Option<Quantiles> {
        Quantiles::of(
            self.revocations
                .iter()
                .filter_map(|r| r.nodes.get(i).and_then(|n| n.refused_after))
                .map(ms)
                .collect(),
        )
    }

    fn pairs(&self) -> usize {
        self.keys * self.node_ids.len()
    }

    /// Node-revocations that ended without a refusal, with why.
    pub fn poll_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.revocations.iter().enumerate() {
            if r.ack_status != 200 {
                out.push(format!(
                    "revocation {}: the admin API answered {}",
                    i + 1,
                    r.ack_status
                ));
            }
            for (n, node) in r.nodes.iter().enumerate() {
                if let Some(f) = &node.failure {
                    out.push(format!("revocation {}, {}: {f}", i + 1, self.node_ids[n]));
                }
            }
        }
        out
    }

    fn refused_pairs(&self) -> usize {
        self.revocations
            .iter()
            .flat_map(|r| &r.nodes)
            .filter(|n| n.refused_after.is_some())
            .count()
    }

    /// Every check passed: keys worked before, every node refused after, the sweep too.
    pub fn correct(&self) -> bool {
        self.warmup_accepted == self.pairs()
            && self.pre_accepted == self.pairs()
            && self.pre_failures.is_empty()
            && self.revocations.len() == self.keys
            && self.refused_pairs() == self.pairs()
            && self.poll_failures().is_empty()
            && self.sweep_refused == self.pairs()
            && self.sweep_failures.is_empty()
    }

    /// The goal is met: every check passed and the p99 is within it.
    pub fn goal_met(&self) -> bool {
        self.correct() && self.all_nodes().is_some_and(|q| q.p99 <= GOAL_MS)
    }

    pub fn render(&self) -> String {
        let nodes = self.node_ids.len();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sg-revocation — a revoked key refused by every gateway node"
        );
        let _ = writeln!(
            out,
            "machine    {}, {} cores (nproc), {} build",
            self.cpu, self.cores, self.profile
        );
        let _ = writeln!(
            out,
            "cluster    nats-server {} (private, JetStream, one server) · PostgreSQL views · admin API + projector · {nodes} gateway nodes ({}), each a child process",
            self.nats_version,
            self.node_ids.join(", ")
        );
        let _ = writeln!(
            out,
            "run        {} revocations one after another; from t0 (just before the admin's revoke request) each node polled with the key every {} µs on a kept-alive connection",
            self.revocations.len(),
            self.poll_interval_us
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<36}{:>10}{:>10}{:>10}{:>10}",
            "time from t0 to …", "p50", "p90", "p99", "max"
        );
        let mut row = |name: &str, q: Option<Quantiles>| {
            let _ = match q {
                Some(q) => writeln!(
                    out,
                    "{name:<36}{:>7.2} ms{:>7.2} ms{:>7.2} ms{:>7.2} ms",
                    q.p50, q.p90, q.p99, q.max
                ),
                None => writeln!(out, "{name:<36}{:>10}", "—"),
            };
        };
        row("the admin API's answer", self.ack());
        for (i, id) in self.node_ids.iter().enumerate() {
            row(&format!("the first refusal on {id}"), self.node(i));
        }
        row(
            &format!("refusal on all {nodes} nodes (max)"),
            self.all_nodes(),
        );
        row(
            "  lower bound: last request accepted",
            self.all_nodes_lower_bound(),
        );
        let pairs: Vec<&NodeOutcome> = self.revocations.iter().flat_map(|r| &r.nodes).collect();
        let count = pairs.len().max(1) as f64;
        let polls: u32 = pairs.iter().map(|n| n.polls).sum();
        let accepted: u32 = pairs.iter().map(|n| n.accepted).sum();
        let before_ack = self
            .revocations
            .iter()
            .flat_map(|r| r.nodes.iter().map(move |n| (r.ack, n)))
            .filter(|(ack, n)| n.refused_after.is_some_and(|t| t <= *ack))
            .count();
        let accepted_after_ack = self
            .revocations
            .iter()
            .flat_map(|r| r.nodes.iter().map(move |n| (r.ack, n)))
            .filter(|(ack, n)| n.last_accepted_sent.is_some_and(|t| t > *ack))
            .count();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "requests per node until refused: mean {:.1} ({:.1} of them still accepted after t0)",
            f64::from(polls) / count,
            f64::from(accepted) / count
        );
        let _ = writeln!(
            out,
            "node refusals seen before the admin API answered: {before_ack} of {}; requests sent after the admin API answered and still accepted: on {accepted_after_ack} of {}",
            pairs.len(),
            pairs.len()
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "correctness");
        let pairs_expected = self.pairs();
        let mark = |ok: bool| if ok { "✓" } else { "✗" };
        let warm_ok = self.warmup_accepted == pairs_expected;
        let _ = writeln!(
            out,
            "{} warm-up: each of the {} keys accepted by all {nodes} nodes ({} of {pairs_expected}; {} early requests refused as not yet known while new keys propagated)",
            mark(warm_ok),
            self.keys,
            self.warmup_accepted,
            self.warmup_unknown
        );
        let pre_ok = self.pre_accepted == pairs_expected && self.pre_failures.is_empty();
        let _ = writeln!(
            out,
            "{} no refusal before the revocation: just before each revoke request the key was accepted by every node ({} of {pairs_expected})",
            mark(pre_ok),
            self.pre_accepted
        );
        let failures = self.poll_failures();
        let refused = self.refused_pairs();
        let _ = writeln!(
            out,
            "{} after each revocation every node refused the key with 401 {} ({refused} of {pairs_expected}; {} failures, limit {} ms each)",
            mark(refused == pairs_expected && failures.is_empty()),
            crate::probe::REVOKED,
            failures.len(),
            self.give_up_ms
        );
        let sweep_ok = self.sweep_refused == pairs_expected && self.sweep_failures.is_empty();
        let _ = writeln!(
            out,
            "{} final sweep after all revocations: every revoked key refused by every node ({} of {pairs_expected})",
            mark(sweep_ok),
            self.sweep_refused
        );
        for f in self
            .pre_failures
            .iter()
            .chain(&failures)
            .chain(&self.sweep_failures)
            .take(10)
        {
            let _ = writeln!(out, "    {f}");
        }
        let _ = writeln!(out);
        let figure = match self.all_nodes() {
            Some(q) => format!("{:.2} ms", q.p99),
            None => "—".into(),
        };
        let _ = writeln!(
            out,
            "{} revocation refused by all {nodes} nodes, p99  {figure}  goal ≤ {GOAL_MS:.0} ms{}",
            mark(self.goal_met()),
            if self.correct() {
                ""
            } else {
                " (and every check above)"
            }
        );
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "benchmark": "sg-revocation",
            "unix_time": self.unix_time,
            "machine": {"cpu": self.cpu, "cores": self.cores, "profile": self.profile},
            "cluster": {
                "nats_server": self.nats_version,
                "gateway_nodes": self.node_ids,
            },
            "poll_interval_us": self.poll_interval_us,
            "give_up_ms": self.give_up_ms,
            "revocations": self.revocations.len(),
            "all_nodes": Quantiles::json(self.all_nodes()),
            "all_nodes_lower_bound": Quantiles::json(self.all_nodes_lower_bound()),
            "admin_ack": Quantiles::json(self.ack()),
            "per_node": self.node_ids.iter().enumerate().map(|(i, id)| {
                json!({"node": id, "refusal": Quantiles::json(self.node(i))})
            }).collect::<Vec<_>>(),
            "goal": {"p99_ms_at_most": GOAL_MS, "met": self.goal_met()},
            "correct": self.correct(),
            "checks": {
                "warmup_accepted": self.warmup_accepted,
                "warmup_unknown_retries": self.warmup_unknown,
                "pre_revocation_accepted": self.pre_accepted,
                "pre_revocation_failures": self.pre_failures,
                "poll_failures": self.poll_failures(),
                "sweep_refused": self.sweep_refused,
                "sweep_failures": self.sweep_failures,
                "expected_per_check": self.pairs(),
            },
            "samples": self.revocations.iter().map(|r| json!({
                "admin_ack_ms": ms(r.ack),
                "all_nodes_ms": r.all_refused().map(ms),
                "nodes_ms": r.nodes.iter().map(|n| n.refused_after.map(ms)).collect::<Vec<_>>(),
                "polls": r.nodes.iter().map(|n| n.polls).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    fn outcome(ms: Option<u64>) -> NodeOutcome {
        NodeOutcome {
            refused_after: ms.map(Duration::from_millis),
            polls: 1,
            ..NodeOutcome::default()
        }
    }

    #[test]
    fn all_nodes_is_the_slowest_node_and_needs_every_node() {
        let r = Revocation {
            ack: Duration::from_millis(3),
            ack_status: 200,
            nodes: vec![outcome(Some(4)), outcome(Some(9)), outcome(Some(2))],
        };
        assert_eq!(r.all_refused(), Some(Duration::from_millis(9)));
        let r = Revocation {
            nodes: vec![outcome(Some(4)), outcome(None)],
            ..r
        };
        assert_eq!(r.all_refused(), None);
    }

    fn run(nodes_ms: &[[Option<u64>; 3]]) -> Run {
        let pairs = nodes_ms.len() * 3;
        Run {
            cpu: "test".into(),
            cores: 2,
            profile: "debug",
            nats_version: "2.15.1".into(),
            node_ids: vec!["gw-1".into(), "gw-2".into(), "gw-3".into()],
            poll_interval_us: 1000,
            give_up_ms: 5000,
            keys: nodes_ms.len(),
            warmup_accepted: pairs,
            warmup_unknown: 0,
            pre_accepted: pairs,
            pre_failures: vec![],
            revocations: nodes_ms
                .iter()
                .map(|n| Revocation {
                    ack: Duration::from_millis(2),
                    ack_status: 200,
                    nodes: n.iter().map(|t| outcome(*t)).collect(),
                })
                .collect(),
            sweep_refused: pairs,
            sweep_failures: vec![],
            unix_time: 0,
        }
    }

    #[test]
    fn goal_line_follows_the_p99_and_the_checks() {
        let good = run(&[[Some(3), Some(5), Some(4)]; 10]);
        assert!(good.correct() && good.goal_met());
        let text = good.render();
        assert!(
            text.contains("✓ revocation refused by all 3 nodes, p99  5.00 ms  goal ≤ 50 ms"),
            "{text}"
        );
        let slow = run(&[[Some(3), Some(60), Some(4)]; 10]);
        assert!(slow.correct() && !slow.goal_met());
        assert!(
            slow.render()
                .contains("✗ revocation refused by all 3 nodes")
        );
        let mut missing = run(&[[Some(3), None, Some(4)]; 2]);
        missing.revocations[0].nodes[1].failure = Some("timed out".into());
        assert!(!missing.correct() && !missing.goal_met());
        let json = missing.to_json();
        assert_eq!(json["correct"], false);
        assert_eq!(json["samples"][0]["all_nodes_ms"], Value::Null);
    }
}
