//! The tables and the goals, as printed.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::client::{LoopRun, StreamRun};
use crate::cpu::Usage;

const LABEL: usize = 48;
const COLUMN: usize = 11;

/// Goals from the issue.
pub const GOAL_THROUGHPUT_RATIO: f64 = 0.6;
pub const GOAL_ADDED_RATIO: f64 = 1.3;
pub const GOAL_STREAM_MS: f64 = 1.0;

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn q(h: &Histogram<u64>, quantile: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(quantile))
}

fn cell(v: Option<String>) -> String {
    format!("{:>COLUMN$}", v.unwrap_or_else(|| "–".into()))
}

fn row(out: &mut String, label: &str, values: Vec<Option<String>>) {
    let _ = write!(out, "{label:<LABEL$}");
    for v in values {
        let _ = write!(out, " {}", cell(v));
    }
    out.push('\n');
}

/// The column names, `direct` first.
fn header(out: &mut String, names: &[&str]) {
    let _ = write!(out, "{:<LABEL$}", "");
    for name in names {
        let _ = write!(out, " {name:>COLUMN$}");
    }
    out.push('\n');
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

fn signed(v: f64) -> String {
    format!("{v:+.3}")
}

/// One target's throughput phase.
pub struct Throughput<'a> {
    pub run: &'a LoopRun,
    pub usage: &'a Usage,
    /// CPU seconds of the server under test (none for direct).
    pub server_cpu: Option<f64>,
    /// CPU seconds of cluster mode's control plane (NATS, PostgreSQL, admin API and
    /// projector), for the cluster target only.
    pub control_cpu: Option<f64>,
    pub upstream_cpu: Option<f64>,
    pub client_cpu: Option<f64>,
}

impl Throughput<'_> {
    /// Requests answered ok per CPU-second of the server under test.
    pub fn per_core(&self) -> Option<f64> {
        self.server_cpu
            .filter(|s| *s > 0.0)
            .map(|s| self.run.ok as f64 / s)
    }
}

fn cores_used(cpu: Option<f64>, wall: f64) -> Option<String> {
    cpu.filter(|_| wall > 0.0)
        .map(|c| format!("{:.2}", c / wall))
}

/// Where things run, for the table's labels.
pub struct Cores {
    pub server: usize,
    pub client: usize,
    pub upstream: usize,
    /// Cluster mode's control plane runs (on the upstream core).
    pub control_plane: bool,
}

pub fn render_throughput(names: &[&str], t: &[Throughput<'_>], cores: &Cores) -> String {
    let (server_core, client_core, upstream_core) = (cores.server, cores.client, cores.upstream);
    let mut out = String::new();
    header(&mut out, names);
    let each = |f: &dyn Fn(&Throughput<'_>) -> Option<String>| t.iter().map(f).collect::<Vec<_>>();
    row(
        &mut out,
        "ok requests",
        each(&|x| Some(x.run.ok.to_string())),
    );
    row(
        &mut out,
        "errors",
        each(&|x| Some(x.run.errors.to_string())),
    );
    row(
        &mut out,
        "throughput (req/s)",
        each(&|x| Some(format!("{:.0}", x.run.throughput()))),
    );
    row(
        &mut out,
        "latency p50 (ms)",
        each(&|x| q(&x.run.latency, 0.5).map(|v| f3(ms(v)))),
    );
    row(
        &mut out,
        "latency p99 (ms)",
        each(&|x| q(&x.run.latency, 0.99).map(|v| f3(ms(v)))),
    );
    row(
        &mut out,
        &format!("core {server_core} busy, % (server under test)"),
        each(&|x| {
            x.usage
                .core(server_core)
                .map(|b| format!("{:.0}", b * 100.0))
        }),
    );
    let control = if cores.control_plane {
        " + control"
    } else {
        ""
    };
    let label = if upstream_core == client_core {
        format!("core {client_core} busy, % (load gen + upstream{control})")
    } else {
        format!("core {client_core} busy, % (load generator)")
    };
    row(
        &mut out,
        &label,
        each(&|x| {
            x.usage
                .core(client_core)
                .map(|b| format!("{:.0}", b * 100.0))
        }),
    );
    if upstream_core != client_core && upstream_core != server_core {
        row(
            &mut out,
            &format!("core {upstream_core} busy, % (upstream{control})"),
            each(&|x| {
                x.usage
                    .core(upstream_core)
                    .map(|b| format!("{:.0}", b * 100.0))
            }),
        );
    }
    row(
        &mut out,
        "server under test CPU (cores)",
        each(&|x| cores_used(x.server_cpu, x.usage.wall_secs)),
    );
    row(
        &mut out,
        "upstream CPU (cores)",
        each(&|x| cores_used(x.upstream_cpu, x.usage.wall_secs)),
    );
    row(
        &mut out,
        "load generator CPU (cores)",
        each(&|x| cores_used(x.client_cpu, x.usage.wall_secs)),
    );
    if cores.control_plane {
        row(
            &mut out,
            "control plane CPU (cores): NATS, PG, admin",
            each(&|x| cores_used(x.control_cpu, x.usage.wall_secs)),
        );
    }
    row(
        &mut out,
        "req per CPU-second of the server under test",
        each(&|x| x.per_core().map(|v| format!("{v:.0}"))),
    );
    out
}

/// `r[0]` is direct.
pub fn render_latency(names: &[&str], r: &[&LoopRun]) -> String {
    let mut out = String::new();
    header(&mut out, names);
    let each = |f: &dyn Fn(&LoopRun) -> Option<String>| r.iter().map(|x| f(x)).collect::<Vec<_>>();
    row(&mut out, "ok requests", each(&|x| Some(x.ok.to_string())));
    row(&mut out, "errors", each(&|x| Some(x.errors.to_string())));
    row(
        &mut out,
        "throughput (req/s)",
        each(&|x| Some(format!("{:.0}", x.throughput()))),
    );
    for (label, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        row(
            &mut out,
            &format!("latency {label} (ms)"),
            each(&|x| q(&x.latency, quantile).map(|v| f3(ms(v)))),
        );
    }
    for (label, quantile) in [("p50", 0.5), ("p99", 0.99)] {
        let direct = q(&r[0].latency, quantile);
        let added = |x: &LoopRun| match (direct, q(&x.latency, quantile)) {
            (Some(d), Some(v)) => Some(signed(ms(v) - ms(d))),
            _ => None,
        };
        row(
            &mut out,
            &format!("added {label} vs direct (ms)"),
            std::iter::once(None)
                .chain(r[1..].iter().map(|x| added(x)))
                .collect(),
        );
    }
    out
}

pub fn mean_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.mean() / 1000.0)
}

/// `r[0]` is direct.
pub fn render_stream(names: &[&str], r: &[&StreamRun]) -> String {
    let mut out = String::new();
    header(&mut out, names);
    let each =
        |f: &dyn Fn(&StreamRun) -> Option<String>| r.iter().map(|x| f(x)).collect::<Vec<_>>();
    row(&mut out, "ok answers", each(&|x| Some(x.ok.to_string())));
    row(&mut out, "errors", each(&|x| Some(x.errors.to_string())));
    row(
        &mut out,
        "first byte p50 (ms)",
        each(&|x| q(&x.first_byte, 0.5).map(|v| f3(ms(v)))),
    );
    row(
        &mut out,
        "first byte p99 (ms)",
        each(&|x| q(&x.first_byte, 0.99).map(|v| f3(ms(v)))),
    );
    row(
        &mut out,
        "chunk gap mean (ms)",
        each(&|x| mean_ms(&x.gaps).map(f3)),
    );
    row(
        &mut out,
        "chunk gap p99 (ms)",
        each(&|x| q(&x.gaps, 0.99).map(|v| f3(ms(v)))),
    );
    row(
        &mut out,
        "chunk gap max (ms)",
        each(&|x| q(&x.gaps, 1.0).map(|v| f3(ms(v)))),
    );
    row(
        &mut out,
        "whole answer p50 (ms)",
        each(&|x| q(&x.total, 0.5).map(|v| f3(ms(v)))),
    );
    let vs = |f: &dyn Fn(&StreamRun) -> Option<f64>| {
        let d = f(r[0]);
        let diff = |x: &StreamRun| match (d, f(x)) {
            (Some(d), Some(v)) => Some(signed(v - d)),
            _ => None,
        };
        std::iter::once(None)
            .chain(r[1..].iter().map(|x| diff(x)))
            .collect::<Vec<_>>()
    };
    row(
        &mut out,
        "first byte p50 vs direct (ms)",
        vs(&|x| q(&x.first_byte, 0.5).map(ms)),
    );
    row(
        &mut out,
        "first byte p99 vs direct (ms)",
        vs(&|x| q(&x.first_byte, 0.99).map(ms)),
    );
    row(
        &mut out,
        "chunk gap mean vs direct (ms)",
        vs(&|x| mean_ms(&x.gaps)),
    );
    row(
        &mut out,
        "chunk gap p99 vs direct (ms)",
        vs(&|x| q(&x.gaps, 0.99).map(ms)),
    );
    out
}

/// One goal's line: the figure, the goal, and whether it is met (`None`: cannot tell).
pub struct Goal {
    pub name: String,
    pub figure: String,
    pub goal: String,
    pub met: Option<bool>,
}

pub fn render_goals(goals: &[Goal]) -> String {
    let mut out = String::new();
    for g in goals {
        let mark = match g.met {
            Some(true) => "✓",
            Some(false) => "✗",
            None => "?",
        };
        let _ = writeln!(
            out,
            "{mark} {:<62} {:<34} goal {}",
            g.name, g.figure, g.goal
        );
    }
    out
}

/// gateway-added / hop-added at `quantile` of the concurrency-1 runs; `gateway_name`
/// as in the goal's line (`embedded gateway`).
pub fn added_ratio(
    gateway_name: &str,
    direct: &LoopRun,
    hop: &LoopRun,
    gateway: &LoopRun,
    quantile: f64,
) -> Goal {
    let label = if quantile >= 0.99 { "p99" } else { "p50" };
    let name = format!("added latency at concurrency 1, {label}: {gateway_name} / hop");
    match (
        q(&direct.latency, quantile),
        q(&hop.latency, quantile),
        q(&gateway.latency, quantile),
    ) {
        (Some(d), Some(h), Some(g)) => {
            let hop_added = ms(h) - ms(d);
            let gw_added = ms(g) - ms(d);
            let (figure, met) = if hop_added > 0.0 {
                let ratio = gw_added / hop_added;
                (
                    format!("{gw_added:+.3} / {hop_added:+.3} ms = {ratio:.2}"),
                    Some(ratio <= GOAL_ADDED_RATIO),
                )
            } else {
                (format!("{gw_added:+.3} / {hop_added:+.3} ms = n/a"), None)
            };
            Goal {
                name,
                figure,
                goal: format!("≤ {GOAL_ADDED_RATIO:.1}"),
                met,
            }
        }
        _ => Goal {
            name,
            figure: "no figures".into(),
            goal: format!("≤ {GOAL_ADDED_RATIO:.1}"),
            met: None,
        },
    }
}

/// gateway − direct of a streaming figure, against the 1 ms goal.
pub fn stream_goal(
    gateway_name: &str,
    name: &str,
    direct: Option<f64>,
    gateway: Option<f64>,
) -> Goal {
    let (figure, met) = match (direct, gateway) {
        (Some(d), Some(g)) => {
            let diff = g - d;
            (
                format!("{g:.3} − {d:.3} = {diff:+.3} ms"),
                Some(diff <= GOAL_STREAM_MS),
            )
        }
        _ => ("no figures".into(), None),
    };
    Goal {
        name: format!("streaming {name}: {gateway_name} − direct"),
        figure,
        goal: format!("≤ {GOAL_STREAM_MS:.0} ms"),
        met,
    }
}

pub fn quantile_ms(h: &Histogram<u64>, quantile: f64) -> Option<f64> {
    q(h, quantile).map(ms)
}
