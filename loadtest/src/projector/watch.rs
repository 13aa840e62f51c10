//! What the run watches: the projector's usage checkpoint as it moves (each move is a
//! committed batch), and the CPU time of this process, PostgreSQL and NATS.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sg_projector::ProjectorProgress;
use tokio::sync::watch;

/// Every move of the usage checkpoint, with when it was seen. The projector publishes
/// its progress right after each commit, so this is when events became visible in the
/// views (to within a task wake-up).
#[derive(Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<(Instant, u64)>>>);

impl Timeline {
    /// Follows `progress` until it closes.
    pub fn follow(&self, mut progress: watch::Receiver<ProjectorProgress>) {
        let points = self.0.clone();
        tokio::spawn(async move {
            loop {
                let seq = progress.borrow_and_update().usage_seq;
                let at = Instant::now();
                {
                    let mut points = points.lock().unwrap_or_else(PoisonError::into_inner);
                    if points.last().is_none_or(|(_, s)| *s != seq) {
                        points.push((at, seq));
                    }
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    pub fn points(&self) -> Vec<(Instant, u64)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The newest usage checkpoint seen.
    pub fn last_seq(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map_or(0, |(_, s)| *s)
    }

    /// Waits until the usage checkpoint reaches `seq`; `false` after `timeout`.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.last_seq() < seq {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

/// When `seq` was first seen applied, from a timeline sorted by time (checkpoints only
/// grow while the views keep their commits).
pub fn applied_at(points: &[(Instant, u64)], seq: u64) -> Option<Instant> {
    let i = points.partition_point(|(_, s)| *s < seq);
    points.get(i).map(|(at, _)| *at)
}

/// (ppid, utime + stime) of a process from `/proc/<pid>/stat`.
fn pid_stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Busy and total ticks of the whole machine (`cpu` line of `/proc/stat`).
fn machine() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The processes whose CPU time is read: this one, the PostgreSQL server (its
/// postmaster, found by its data directory, and every backend it forked) and
/// nats-server (found by its store directory).
pub struct Meter {
    me: u32,
    postmaster: Option<u32>,
    nats: Option<u32>,
    ticks: f64,
}

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    at: Instant,
    me: u64,
    postgres: u64,
    nats: u64,
    busy: u64,
    total: u64,
}

/// CPU used between two readings, in cores (CPU seconds per second).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub wall_secs: f64,
    /// This process: the projector, and the load generator (publishing).
    pub me: f64,
    pub postgres: f64,
    pub nats: f64,
    /// The whole machine, including whatever else runs on it.
    pub machine: f64,
}

impl Cpu {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "wall_secs": self.wall_secs,
            "cores_this_process": self.me,
            "cores_postgres": self.postgres,
            "cores_nats": self.nats,
            "cores_machine": self.machine,
        })
    }
}

impl Meter {
    pub fn new(pg_data_dir: &Path, nats_store_dir: &Path) -> Meter {
        let pg = pg_data_dir.display().to_string();
        let nats = nats_store_dir.display().to_string();
        let all = pids();
        let find = |needle: &str| all.iter().copied().find(|p| cmdline(*p).contains(needle));
        Meter {
            me: std::process::id(),
            postmaster: find(&pg),
            nats: find(&nats),
            ticks: sg_loadtest::clock_ticks(),
        }
    }

    pub fn found(&self) -> (bool, bool) {
        (self.postmaster.is_some(), self.nats.is_some())
    }

    /// This process, PostgreSQL's postmaster and its backends now, and nats-server.
    pub fn pids(&self) -> Vec<u32> {
        let mut out = vec![self.me];
        out.extend(self.nats);
        if let Some(master) = self.postmaster {
            out.push(master);
            out.extend(
                pids()
                    .into_iter()
                    .filter(|p| pid_stat(*p).is_some_and(|(ppid, _)| ppid == master)),
            );
        }
        out
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut postgres = 0;
        if let Some(master) = self.postmaster {
            for pid in pids() {
                if let Some((ppid, t)) = pid_stat(pid)
                    && (pid == master || ppid == master)
                {
                    postgres += t;
                }
            }
        }
        let (busy, total) = machine();
        Snapshot {
            at: Instant::now(),
            me: pid_stat(self.me).map_or(0, |(_, t)| t),
            postgres,
            nats: self.nats.and_then(pid_stat).map_or(0, |(_, t)| t),
            busy,
            total,
        }
    }

    pub fn between(&self, a: &Snapshot, b: &Snapshot) -> Cpu {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let cores = |x: u64, y: u64| y.saturating_sub(x) as f64 / self.ticks / wall;
        let cpus = sg_loadtest::cores() as f64;
        let total = b.total.saturating_sub(a.total).max(1) as f64;
        Cpu {
            wall_secs: wall,
            me: cores(a.me, b.me),
            postgres: cores(a.postgres, b.postgres),
            nats: cores(a.nats, b.nats),
            machine: b.busy.saturating_sub(a.busy) as f64 / total * cpus,
        }
    }
}
