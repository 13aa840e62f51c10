//! CPU time, read from `/proc`: how busy each core was and how much CPU each child
//! process used over a window, so that throughput can be read per core.

use std::time::Instant;

use anyhow::Context as _;

/// `(busy, total)` ticks of each `cpuN` line of `/proc/stat`, by N.
pub fn parse_proc_stat(text: &str) -> Vec<(usize, u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let cpu = fields.next()?.strip_prefix("cpu")?;
            let n: usize = cpu.parse().ok()?;
            let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest counted in user).
            let total: u64 = values.iter().take(8).sum();
            let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
            Some((n, total.saturating_sub(idle), total))
        })
        .collect()
}

/// utime + stime ticks of a process, from the text of `/proc/<pid>/stat`.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: the fields follow the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is index 0 here; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// One reading.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    cores: Vec<(usize, u64, u64)>,
    /// CPU ticks of each watched process (`None`: unreadable).
    processes: Vec<Option<u64>>,
}

/// What happened between two readings.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub wall_secs: f64,
    /// Busy share (0–1) of each core, by core number.
    pub cores: Vec<(usize, f64)>,
    /// CPU seconds each watched process used.
    pub processes: Vec<Option<f64>>,
}

impl Usage {
    pub fn core(&self, n: usize) -> Option<f64> {
        self.cores.iter().find(|(c, _)| *c == n).map(|(_, b)| *b)
    }
}

/// Reads the cores and some processes.
#[derive(Debug, Clone)]
pub struct Meter {
    pids: Vec<u32>,
    ticks: f64,
}

impl Meter {
    pub fn new(pids: Vec<u32>) -> Self {
        Self {
            pids,
            ticks: sg_loadtest::clock_ticks(),
        }
    }

    pub fn read(&self) -> anyhow::Result<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let processes = self
            .pids
            .iter()
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .as_deref()
                    .and_then(parse_pid_stat)
            })
            .collect();
        Ok(Snapshot {
            at: Instant::now(),
            cores: parse_proc_stat(&stat),
            processes,
        })
    }

    pub fn between(&self, a: &Snapshot, b: &Snapshot) -> Usage {
        let cores = b
            .cores
            .iter()
            .filter_map(|(n, busy, total)| {
                let (_, busy0, total0) = a.cores.iter().find(|(m, _, _)| m == n)?;
                let total = total.saturating_sub(*total0);
                (total > 0).then(|| (*n, busy.saturating_sub(*busy0) as f64 / total as f64))
            })
            .collect();
        let processes = a
            .processes
            .iter()
            .zip(&b.processes)
            .map(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => Some(y.saturating_sub(*x) as f64 / self.ticks),
                _ => None,
            })
            .collect();
        Usage {
            wall_secs: (b.at - a.at).as_secs_f64(),
            cores,
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat() {
        let text = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 38 2 0 0 0 0 0\nintr 1 2\n";
        assert_eq!(parse_proc_stat(text), vec![(0, 10, 50), (1, 10, 50)]);
    }

    #[test]
    fn pid_stat() {
        let text = "42 (sg hot) path) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 5 1 1";
        assert_eq!(parse_pid_stat(text), Some(281));
        assert_eq!(parse_pid_stat("garbage"), None);
        let own = std::fs::read_to_string(format!("/proc/{}/stat", std::process::id())).unwrap();
        assert!(parse_pid_stat(&own).is_some());
    }
}
