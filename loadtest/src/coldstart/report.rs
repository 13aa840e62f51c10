//! The printed report, with the goals of the issue.

use std::path::PathBuf;

use crate::Measured;
use crate::fill::FillStats;

/// Ready within this many seconds with a million keys.
const GOAL_READY_SECS: f64 = 10.0;
/// At most this many bytes of memory per key.
const GOAL_BYTES_PER_KEY: f64 = 1024.0;

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
}

impl Machine {
    pub fn detect() -> Self {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.1} GiB", kb as f64 / 1048576.0),
            );
        Machine {
            cpu: sg_loadtest::cpu_model(),
            cores: sg_loadtest::cores(),
            memory,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {}, {} cores, {} RAM",
            self.cpu, self.cores, self.memory
        )
    }
}

pub struct Summary {
    pub machine: Machine,
    pub program: String,
    pub fill: Option<FillStats>,
    pub store_bytes: u64,
    pub stream_head: u64,
    pub baseline: Measured,
    pub runs: Vec<Measured>,
    pub perf: Option<PathBuf>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `1000000` → `1,000,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn per_key(with: u64, base: u64, keys: u64) -> f64 {
    (with as f64 - base as f64) / keys.max(1) as f64
}

impl Summary {
    pub fn print(&self) {
        let base = &self.baseline;
        // The last run's memory (runs differ in time, not in what they hold).
        let Some(last) = self.runs.last() else {
            return;
        };
        let keys = last.keys;
        let extra = keys.saturating_sub(base.keys);
        let readies: Vec<f64> = self
            .runs
            .iter()
            .map(|r| r.start.ready.as_secs_f64())
            .collect();
        let mut sorted = readies.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let worst = sorted[sorted.len() - 1];

        println!();
        println!("sg-coldstart — a gateway node joining a cluster");
        println!("{}", self.machine.line());
        println!("node: {}", self.program);
        println!();
        println!("control stream");
        println!("  keys                 {}", thousands(keys));
        println!("  events (head seq)    {}", thousands(self.stream_head));
        println!("  store on disk        {}", mib(self.store_bytes));
        match &self.fill {
            Some(f) => {
                println!(
                    "  fill                 {:.1} s  ({:.0} keys/s, {:.0} B per event, pipelined PubAcks)",
                    f.elapsed.as_secs_f64(),
                    f.rate(),
                    f.payload_bytes as f64 / f.published.max(1) as f64
                );
            }
            None => println!("  fill                 reused a filled --store"),
        }
        println!();
        println!("cold start (spawn → /readyz 200)");
        println!(
            "  baseline, 1 key      {:.2} s  (listening after {:.2} s)",
            base.start.ready.as_secs_f64(),
            base.start.listening.as_secs_f64()
        );
        for (i, r) in self.runs.iter().enumerate() {
            let fold = r.start.ready.as_secs_f64() - r.start.listening.as_secs_f64();
            println!(
                "  run {}                {:.2} s  (listening after {:.2} s; folded {} events in ≤ {:.2} s, {:.0} events/s; node CPU {}; load avg {:.1})",
                i + 1,
                r.start.ready.as_secs_f64(),
                r.start.listening.as_secs_f64(),
                thousands(r.start.control_seq),
                fold,
                r.start.control_seq as f64 / r.start.ready.as_secs_f64().max(1e-9),
                r.start
                    .cpu
                    .map_or_else(|| "?".into(), |c| format!("{:.2} s", c.as_secs_f64())),
                r.load
            );
        }
        if self.runs.len() > 1 {
            println!("  median / worst       {median:.2} s / {worst:.2} s");
        }
        if let Some(r) = self.runs.first() {
            // The first sample of each second (events applied by then).
            let mut samples = Vec::new();
            let mut second = -1i64;
            for (t, seq) in &r.start.progress {
                if t.floor() as i64 > second {
                    second = t.floor() as i64;
                    samples.push(format!("{t:.1}s:{}", thousands(*seq)));
                }
            }
            println!("  fold progress, run 1 (seconds since spawn: control_seq applied)");
            for line in samples.chunks(6) {
                println!("    {}", line.join("  "));
            }
        }
        println!();
        println!("memory of the node (from /proc/<pid>/status)");
        println!(
            "  {:<22}{:>12}{:>12}{:>12}",
            "", "VmRSS", "RssAnon", "VmHWM"
        );
        let row = |name: &str, m: &crate::node::Memory| {
            println!(
                "  {:<22}{:>12}{:>12}{:>12}",
                name,
                mib(m.rss),
                mib(m.rss_anon),
                mib(m.hwm)
            );
        };
        row("baseline at ready", &base.start.at_ready);
        row("baseline settled", &base.start.settled);
        row(
            &format!("{} keys at ready", thousands(keys)),
            &last.start.at_ready,
        );
        row(
            &format!("{} keys settled", thousands(keys)),
            &last.start.settled,
        );
        let b = &base.start.settled;
        let w = &last.start.settled;
        let rss_per_key = per_key(w.rss, b.rss, extra);
        println!(
            "  per key (settled)     VmRSS {:.0} B   RssAnon {:.0} B   peak (VmHWM) {:.0} B",
            rss_per_key,
            per_key(w.rss_anon, b.rss_anon, extra),
            per_key(w.hwm, b.hwm, extra)
        );
        println!();
        match (
            &base.auth,
            &last.auth,
            self.runs.first().and_then(|r| r.auth.as_ref()),
        ) {
            (Some(b), _, Some(a)) => {
                let describe = |a: &crate::node::AuthCheck| {
                    format!(
                        "known key → {}{}, unknown key → {}",
                        a.known_status,
                        a.known_code
                            .as_deref()
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default(),
                        a.unknown_status
                    )
                };
                println!(
                    "{} a key from the middle of the stream is served   {}",
                    mark(a.passed()),
                    describe(a)
                );
                println!("  (baseline: {})", describe(b));
            }
            _ => println!("✗ authentication not checked"),
        }
        println!(
            "{} ready with {} keys  {:.2} s  goal ≤ {GOAL_READY_SECS:.0} s",
            mark(worst <= GOAL_READY_SECS),
            thousands(keys),
            worst
        );
        println!(
            "{} memory per key  {:.0} B  goal ≤ {GOAL_BYTES_PER_KEY:.0} B",
            mark(rss_per_key <= GOAL_BYTES_PER_KEY),
            rss_per_key
        );
        if let Some(p) = &self.perf {
            println!();
            println!(
                "profile of run 1 (spawn → ready): perf report -i {} --no-children --stdio",
                p.display()
            );
        }
    }
}
