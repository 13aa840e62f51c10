//! The figures, the goals, the printed report and its JSON; the optional perf profile.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::watch::{Cpu, applied_at};
use crate::{Check, Sent};

/// Goal: events applied per second from a backlog.
pub const THROUGHPUT_GOAL: f64 = 20_000.0;
/// Goal: p99 lag at 5,000 events per second, in milliseconds.
pub const LAG_GOAL_MS: f64 = 1_000.0;

/// Sorted samples in microseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn record(&mut self, d: std::time::Duration) {
        self.0
            .push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    fn sort(mut self) -> Samples {
        self.0.sort_unstable();
        self
    }

    /// The `q` quantile (nearest rank) in milliseconds; 0 with no samples.
    fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = (q * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1] as f64 / 1e3
    }
}

/// Phase 1: a backlog applied.
#[derive(Debug, Clone)]
pub struct Phase1 {
    pub events: u64,
    pub publish_secs: f64,
    /// From the projector's start to the views holding every event.
    pub apply_secs: f64,
    pub throughput: f64,
    /// From the first committed usage batch to the last: without the projector's start.
    pub steady_throughput: f64,
    pub first_commit_ms: f64,
    /// Committed usage batches (moves of the checkpoint seen; a few may coalesce).
    pub commits: usize,
    pub mean_batch: f64,
    pub batch_p50: u64,
    pub batch_max: u64,
    /// Time between consecutive commits.
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    pub cpu: Cpu,
}

impl Phase1 {
    pub fn from_points(
        events: u64,
        publish_secs: f64,
        t0: Instant,
        t1: Instant,
        points: &[(Instant, u64)],
        cpu: Cpu,
    ) -> Phase1 {
        let moves: Vec<(Instant, u64)> = points.iter().copied().filter(|(_, s)| *s > 0).collect();
        let apply_secs = t1.duration_since(t0).as_secs_f64();
        let first = moves.first().copied();
        let last = moves.last().copied();
        let steady_throughput = match (first, last) {
            (Some((a, sa)), Some((b, sb))) if b > a => {
                (sb - sa) as f64 / b.duration_since(a).as_secs_f64()
            }
            _ => 0.0,
        };
        let mut gaps = Samples::default();
        for pair in moves.windows(2) {
            gaps.record(pair[1].0.duration_since(pair[0].0));
        }
        let gaps = gaps.sort();
        let mut sizes: Vec<u64> = moves.windows(2).map(|w| w[1].1 - w[0].1).collect();
        sizes.extend(first.map(|(_, s)| s));
        sizes.sort_unstable();
        let size_at = |q: f64| {
            let rank = (q * sizes.len() as f64).ceil() as usize;
            sizes
                .get(rank.clamp(1, sizes.len().max(1)) - 1)
                .copied()
                .unwrap_or(0)
        };
        Phase1 {
            events,
            publish_secs,
            apply_secs,
            throughput: events as f64 / apply_secs.max(1e-9),
            steady_throughput,
            first_commit_ms: first.map_or(0.0, |(a, _)| a.duration_since(t0).as_secs_f64() * 1e3),
            commits: moves.len(),
            mean_batch: events as f64 / moves.len().max(1) as f64,
            batch_p50: size_at(0.5),
            batch_max: size_at(1.0),
            commit_p50_ms: gaps.ms(0.5),
            commit_p99_ms: gaps.ms(0.99),
            cpu,
        }
    }

    fn json(&self) -> Value {
        json!({
            "events": self.events,
            "publish_secs": self.publish_secs,
            "publish_events_per_sec": self.events as f64 / self.publish_secs.max(1e-9),
            "apply_secs": self.apply_secs,
            "events_per_sec": self.throughput,
            "steady_events_per_sec": self.steady_throughput,
            "first_commit_ms": self.first_commit_ms,
            "commits": self.commits,
            "mean_events_per_commit": self.mean_batch,
            "events_per_commit_p50": self.batch_p50,
            "events_per_commit_max": self.batch_max,
            "commit_interval_p50_ms": self.commit_p50_ms,
            "commit_interval_p99_ms": self.commit_p99_ms,
            "cpu": self.cpu.json(),
        })
    }
}

/// Lags of phase 2, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Lags {
    pub events: usize,
    /// Events never seen applied (within the wait).
    pub not_applied: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// From due to PubAck: the publishing part of the lag.
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    /// Events per second actually published (first due to last PubAck).
    pub achieved_rate: f64,
}

impl Lags {
    pub fn of(sent: &[Sent], points: &[(Instant, u64)]) -> Lags {
        let mut lag = Samples::default();
        let mut ack = Samples::default();
        let mut not_applied = 0;
        for s in sent {
            ack.record(s.acked.saturating_duration_since(s.due));
            match applied_at(points, s.seq) {
                Some(at) => lag.record(at.saturating_duration_since(s.due)),
                None => not_applied += 1,
            }
        }
        let (lag, ack) = (lag.sort(), ack.sort());
        let first = sent.iter().map(|s| s.due).min();
        let last = sent.iter().map(|s| s.acked).max();
        let achieved_rate = match (first, last) {
            (Some(a), Some(b)) if b > a => sent.len() as f64 / b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Lags {
            events: sent.len(),
            not_applied,
            p50_ms: lag.ms(0.5),
            p90_ms: lag.ms(0.9),
            p99_ms: lag.ms(0.99),
            p999_ms: lag.ms(0.999),
            max_ms: lag.ms(1.0),
            ack_p50_ms: ack.ms(0.5),
            ack_p99_ms: ack.ms(0.99),
            ack_max_ms: ack.ms(1.0),
            achieved_rate,
        }
    }
}

/// Phase 2: lag at a rate.
#[derive(Debug, Clone)]
pub struct Phase2 {
    pub rate: u64,
    pub duration: u64,
    pub lags: Lags,
    pub settled: bool,
    pub cpu: Cpu,
    pub check: Check,
}

impl Phase2 {
    fn lag_met(&self) -> bool {
        self.settled && self.lags.not_applied == 0 && self.lags.p99_ms < LAG_GOAL_MS
    }
}

pub struct Report {
    pub cpu: String,
    pub nproc: usize,
    pub loadavg: String,
    pub date: OffsetDateTime,
    pub pg_version: String,
    pub pg_settings: String,
    pub projects: u64,
    pub keys: usize,
    pub control_events: usize,
    pub batch_size: usize,
    pub default_batch: usize,
    pub phase1: Phase1,
    pub check1: Check,
    pub phase2: Option<Phase2>,
    pub perf: String,
    pub statements: String,
    pub wall_secs: f64,
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn check_json(c: &Check) -> Value {
    json!({
        "ok": c.ok(),
        "published": c.published.json(),
        "views": c.views.json(),
        "request_rows": c.request_rows,
        "request_rows_total_tokens": c.request_tokens,
    })
}

fn print_cpu(cpu: &Cpu) {
    println!(
        "  CPU (cores busy)        this process {:.2}   postgres {:.2}   nats {:.2}   whole machine {:.2} of {}",
        cpu.me,
        cpu.postgres,
        cpu.nats,
        cpu.machine,
        sg_loadtest::cores()
    );
}

fn print_check(c: &Check) {
    println!(
        "  {} views = published   requests {} / {}   total tokens {} / {}   cost µ$ {} / {}   errors {} / {}   requests rows {} (tokens {})",
        mark(c.ok()),
        c.views.requests,
        c.published.requests,
        c.views.total_tokens,
        c.published.total_tokens,
        c.views.cost_micros,
        c.published.cost_micros,
        c.views.errors,
        c.published.errors,
        c.request_rows,
        c.request_tokens,
    );
}

impl Report {
    pub fn print(&self) {
        let p1 = &self.phase1;
        println!();
        println!("sg-projector — the usage pipeline (NATS JetStream → projector → PostgreSQL)");
        println!(
            "machine: {} × {} ({}), load average at start {}",
            self.nproc,
            self.cpu,
            self.date.date(),
            self.loadavg
        );
        println!(
            "PostgreSQL {} ({}); nats-server private, file storage",
            self.pg_version, self.pg_settings
        );
        println!(
            "fleet: 1 tenant, {} projects (monthly budget each), {} keys; {} control events",
            self.projects, self.keys, self.control_events
        );
        println!(
            "projector: in this process, batch size {}{}",
            self.batch_size,
            if self.batch_size == self.default_batch {
                " (the default)".to_owned()
            } else {
                format!(" (default {})", self.default_batch)
            }
        );
        println!();
        println!("phase 1 — backlog of {} usage events", p1.events);
        println!(
            "  published               {:.1} s ({:.0} events/s, PubAck-pipelined, before the projector started)",
            p1.publish_secs,
            p1.events as f64 / p1.publish_secs.max(1e-9)
        );
        println!(
            "  applied                 {:.2} s from the projector's start ({:.0} events/s); first commit after {:.0} ms",
            p1.apply_secs, p1.throughput, p1.first_commit_ms
        );
        println!(
            "  steady                  {:.0} events/s (first commit to last)",
            p1.steady_throughput
        );
        println!(
            "  commits                 {} (events each: mean {:.0}, p50 {}, max {}), interval p50 {:.1} ms p99 {:.1} ms",
            p1.commits,
            p1.mean_batch,
            p1.batch_p50,
            p1.batch_max,
            p1.commit_p50_ms,
            p1.commit_p99_ms
        );
        print_cpu(&p1.cpu);
        print_check(&self.check1);
        if let Some(p2) = &self.phase2 {
            let l = &p2.lags;
            println!();
            println!(
                "phase 2 — {} events/s for {} s, open loop ({} events)",
                p2.rate, p2.duration, l.events
            );
            println!("  achieved rate           {:.0} events/s", l.achieved_rate);
            println!(
                "  lag (due → applied)     p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   p99.9 {:.1} ms   max {:.1} ms{}",
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                if l.not_applied > 0 {
                    format!("   ({} never applied)", l.not_applied)
                } else {
                    String::new()
                }
            );
            println!(
                "  of which due → PubAck   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
                l.ack_p50_ms, l.ack_p99_ms, l.ack_max_ms
            );
            print_cpu(&p2.cpu);
            print_check(&p2.check);
        }
        println!();
        println!("goals");
        println!(
            "  {} projector throughput  {:.0} events/s  goal ≥ {:.0}",
            mark(p1.throughput >= THROUGHPUT_GOAL),
            p1.throughput,
            THROUGHPUT_GOAL
        );
        match &self.phase2 {
            Some(p2) => println!(
                "  {} lag at {}/s p99  {:.0} ms  goal < {:.0} ms",
                mark(p2.lag_met()),
                p2.rate,
                p2.lags.p99_ms,
                LAG_GOAL_MS
            ),
            None => println!("  – lag: phase 2 skipped (--rate 0)"),
        }
        println!(
            "  {} views equal what was published",
            mark(self.check1.ok() && self.phase2.as_ref().is_none_or(|p| p.check.ok()))
        );
        println!("(run took {:.0} s)", self.wall_secs);
        if !self.statements.is_empty() {
            println!();
            println!("PostgreSQL statements in phase 1 (pg_stat_statements)");
            println!("  {}", self.statements);
        }
        if !self.perf.is_empty() {
            println!();
            println!(
                "perf (recorded machine-wide from the projector's start in phase 1; shown: this process, PostgreSQL, nats-server, % of their samples)"
            );
            println!("{}", self.perf);
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": {"cpu": self.cpu, "nproc": self.nproc, "loadavg_at_start": self.loadavg},
            "date": self.date.date().to_string(),
            "postgres": {"version": self.pg_version, "settings": self.pg_settings},
            "fleet": {"projects": self.projects, "keys": self.keys, "control_events": self.control_events},
            "projector": {"in_process": true, "batch_size": self.batch_size, "default_batch_size": self.default_batch},
            "phase1": self.phase1.json(),
            "phase1_check": check_json(&self.check1),
            "phase1_pg_statements": self.statements,
            "phase2": self.phase2.as_ref().map(|p| json!({
                "rate": p.rate,
                "duration_secs": p.duration,
                "events": p.lags.events,
                "achieved_rate": p.lags.achieved_rate,
                "settled": p.settled,
                "not_applied": p.lags.not_applied,
                "lag_ms": {"p50": p.lags.p50_ms, "p90": p.lags.p90_ms, "p99": p.lags.p99_ms, "p999": p.lags.p999_ms, "max": p.lags.max_ms},
                "due_to_puback_ms": {"p50": p.lags.ack_p50_ms, "p99": p.lags.ack_p99_ms, "max": p.lags.ack_max_ms},
                "cpu": p.cpu.json(),
                "check": check_json(&p.check),
            })),
            "goals": {
                "throughput": {"value": self.phase1.throughput, "goal_min": THROUGHPUT_GOAL, "met": self.phase1.throughput >= THROUGHPUT_GOAL},
                "lag_p99_ms": self.phase2.as_ref().map(|p| json!({"value": p.lags.p99_ms, "goal_max": LAG_GOAL_MS, "met": p.lag_met()})),
            },
        })
    }
}

/// Starts `perf record -a -g` for `secs` seconds, writing to `out`.
pub fn start_perf(secs: u64, out: &Path) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new("perf")
        .args(["record", "-a", "-g", "-F", "499", "-o"])
        .arg(out)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting `perf record` (is perf installed, and may this user use it?)")
}

/// Waits for perf and returns the top of its report for `pids` (this process,
/// PostgreSQL, nats-server): by process, then by process and symbol.
pub async fn finish_perf(mut child: tokio::process::Child, data: &Path, pids: &[u32]) -> String {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let pids = pids.join(",");
    if let Err(e) = child.wait().await {
        return format!("perf record failed: {e}");
    }
    let mut text = String::new();
    for sort in ["comm,dso", "comm,dso,symbol"] {
        let output = tokio::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "1.5",
                "-g",
                "none",
                "--percentage",
                "relative",
                "--sort",
                sort,
                "--pid",
                &pids,
                "-i",
            ])
            .arg(data)
            .output()
            .await;
        match output {
            Ok(o) => {
                let body = String::from_utf8_lossy(&o.stdout);
                for line in body
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .take(45)
                {
                    text.push_str(line.trim_end());
                    text.push('\n');
                }
                text.push('\n');
            }
            Err(e) => text.push_str(&format!("perf report failed: {e}\n")),
        }
    }
    text
}
