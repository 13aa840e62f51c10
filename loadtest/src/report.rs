//! Figures and their presentation: percentile summaries, the gateway's added
//! latency, and the side-by-side table printed for people (plus its JSON twin).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Width of the label column of the table.
const LABEL: usize = 44;
/// Width of each value column of the table.
const COLUMN: usize = 12;

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    /// Reads the percentiles of a histogram recorded in microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn to_json(self) -> Value {
        if self.count == 0 {
            return Value::Null;
        }
        json!({
            "count": self.count,
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "p99_9_ms": ms(self.p999),
            "max_ms": ms(self.max),
        })
    }
}

/// What one target did during the measured period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetReport {
    pub name: String,
    /// Requests sent (dropped ones excluded).
    pub sent: u64,
    /// 2xx answers whose body was read whole and looked right.
    pub ok: u64,
    /// Non-2xx answers, transport failures, timeouts and malformed bodies.
    pub errors: u64,
    /// Requests not sent because the in-flight cap was reached (open loop only).
    pub dropped: u64,
    /// Seconds over which `throughput` was computed.
    pub elapsed_secs: f64,
    /// `ok` per second.
    pub throughput: f64,
    /// From the intended start (open loop) or the send (closed loop) to the end of the body.
    pub intended: Latency,
    /// From the actual send to the end of the body.
    pub service: Latency,
    /// How late each request was sent compared to its intended start.
    pub lag: Latency,
    /// Errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// The first error in full.
    pub first_error: Option<String>,
}

impl TargetReport {
    fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "elapsed_s": self.elapsed_secs,
            "throughput_ok_per_s": self.throughput,
            "latency_from_intended_start": self.intended.to_json(),
            "latency_from_send": self.service.to_json(),
            "send_lag": self.lag.to_json(),
            "error_kinds": self.error_kinds,
            "first_error": self.first_error,
        })
    }
}

/// How the load was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Constant rate on a fixed timeline.
    OpenLoop,
    /// A fixed number of clients, each sending as soon as its previous answer ended.
    ClosedLoop,
}

/// Everything needed to reproduce a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupInfo {
    pub mode: Mode,
    pub rate: f64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub concurrency: usize,
    pub max_in_flight: usize,
    pub timeout_secs: f64,
    pub mock_latency_ms: u64,
    pub stream: bool,
    pub profile: &'static str,
    pub cores: usize,
    pub cpu: String,
    pub client_threads: usize,
    pub server_threads: usize,
}

/// The gateway compared with the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Added latency from the intended start, ms.
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Added latency from the actual send, ms.
    pub added_service_p50_ms: f64,
    pub added_service_p99_ms: f64,
    /// Gateway ok/s ÷ baseline ok/s.
    pub throughput_ratio: Option<f64>,
}

/// Microseconds as milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The gateway's latency minus the baseline's at the same percentile, in ms.
///
/// This is a difference of percentiles, not a percentile of differences: the two
/// runs are separate samples, so no request has a "baseline twin".
pub fn added_ms(baseline_us: u64, gateway_us: u64) -> f64 {
    (gateway_us as f64 - baseline_us as f64) / 1000.0
}

/// Gateway throughput ÷ baseline throughput; `None` when the baseline did nothing.
pub fn throughput_ratio(baseline: f64, gateway: f64) -> Option<f64> {
    (baseline > 0.0 && baseline.is_finite() && gateway.is_finite()).then(|| gateway / baseline)
}

pub fn compare(baseline: &TargetReport, gateway: &TargetReport) -> Comparison {
    Comparison {
        added_p50_ms: added_ms(baseline.intended.p50, gateway.intended.p50),
        added_p99_ms: added_ms(baseline.intended.p99, gateway.intended.p99),
        added_service_p50_ms: added_ms(baseline.service.p50, gateway.service.p50),
        added_service_p99_ms: added_ms(baseline.service.p99, gateway.service.p99),
        throughput_ratio: throughput_ratio(baseline.throughput, gateway.throughput),
    }
}

fn fmt_ms(us: u64, count: u64) -> String {
    if count == 0 {
        "-".into()
    } else {
        format!("{:.3}", ms(us))
    }
}

fn fmt_signed(value: f64) -> String {
    format!("{value:+.3} ms")
}

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(
        || "n/a (baseline had no ok answers)".into(),
        |r| format!("{r:.3}"),
    )
}

fn row(out: &mut String, label: &str, a: &str, b: &str) {
    let _ = writeln!(out, "{label:<LABEL$}{a:>COLUMN$}{b:>COLUMN$}");
}

fn latency_rows(out: &mut String, a: &Latency, b: &Latency) {
    let values = |l: &Latency| [l.p50, l.p90, l.p99, l.p999, l.max];
    let labels = ["  p50", "  p90", "  p99", "  p99.9", "  max"];
    for ((label, x), y) in labels.iter().zip(values(a)).zip(values(b)) {
        row(out, label, &fmt_ms(x, a.count), &fmt_ms(y, b.count));
    }
}

/// The lines describing the setup, printed before the results.
pub fn render_setup(s: &SetupInfo) -> String {
    let mut out = String::new();
    let body = if s.stream {
        "chat completion, stream: true (whole SSE body read)"
    } else {
        "chat completion, stream: false"
    };
    match s.mode {
        Mode::OpenLoop => {
            let _ = writeln!(
                out,
                "mode:      open loop, {} req/s constant rate, {} s warm-up + {} s measured per target",
                s.rate, s.warmup_secs, s.duration_secs
            );
            let _ = writeln!(
                out,
                "           in-flight cap {} per target, request timeout {} s",
                s.max_in_flight, s.timeout_secs
            );
        }
        Mode::ClosedLoop => {
            let _ = writeln!(
                out,
                "mode:      closed loop (max throughput), {} concurrent clients, {} s warm-up + {} s measured per target",
                s.concurrency, s.warmup_secs, s.duration_secs
            );
            let _ = writeln!(out, "           request timeout {} s", s.timeout_secs);
        }
    }
    let _ = writeln!(out, "request:   {body}");
    let _ = writeln!(
        out,
        "upstream:  in-process mock on 127.0.0.1, latency {} ms",
        s.mock_latency_ms
    );
    let _ = writeln!(
        out,
        "machine:   {} cores ({}); servers on {} runtime threads, load generator on {}, one process",
        s.cores, s.cpu, s.server_threads, s.client_threads
    );
    let _ = writeln!(out, "build:     {}", s.profile);
    if s.profile != "release" {
        let _ = writeln!(
            out,
            "note:      this is a debug build; its figures are not representative (use --release)"
        );
    }
    out
}

fn error_lines(out: &mut String, r: &TargetReport) {
    if r.error_kinds.is_empty() {
        return;
    }
    let kinds: Vec<String> = r
        .error_kinds
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    let _ = writeln!(out, "{} errors: {}", r.name, kinds.join(", "));
    if let Some(first) = &r.first_error {
        let _ = writeln!(out, "  first: {first}");
    }
}

/// The side-by-side results table.
pub fn render_results(mode: Mode, baseline: &TargetReport, gateway: &TargetReport) -> String {
    let cmp = compare(baseline, gateway);
    let mut out = String::new();
    row(&mut out, "", &baseline.name, &gateway.name);
    row(
        &mut out,
        "requests sent",
        &baseline.sent.to_string(),
        &gateway.sent.to_string(),
    );
    row(
        &mut out,
        "ok",
        &baseline.ok.to_string(),
        &gateway.ok.to_string(),
    );
    row(
        &mut out,
        "errors (non-2xx or transport)",
        &baseline.errors.to_string(),
        &gateway.errors.to_string(),
    );
    if mode == Mode::OpenLoop {
        row(
            &mut out,
            "dropped (in-flight cap reached)",
            &baseline.dropped.to_string(),
            &gateway.dropped.to_string(),
        );
    }
    row(
        &mut out,
        "throughput (ok/s)",
        &format!("{:.1}", baseline.throughput),
        &format!("{:.1}", gateway.throughput),
    );
    match mode {
        Mode::OpenLoop => {
            let _ = writeln!(
                out,
                "latency from intended start, ms (corrected for coordinated omission)"
            );
            latency_rows(&mut out, &baseline.intended, &gateway.intended);
            let _ = writeln!(out, "latency from actual send, ms");
            latency_rows(&mut out, &baseline.service, &gateway.service);
            let _ = writeln!(out, "send lag behind the schedule, ms");
            row(
                &mut out,
                "  p50",
                &fmt_ms(baseline.lag.p50, baseline.lag.count),
                &fmt_ms(gateway.lag.p50, gateway.lag.count),
            );
            row(
                &mut out,
                "  p99",
                &fmt_ms(baseline.lag.p99, baseline.lag.count),
                &fmt_ms(gateway.lag.p99, gateway.lag.count),
            );
            row(
                &mut out,
                "  max",
                &fmt_ms(baseline.lag.max, baseline.lag.count),
                &fmt_ms(gateway.lag.max, gateway.lag.count),
            );
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{} added latency, from intended start:  p50 {}   p99 {}",
                gateway.name,
                fmt_signed(cmp.added_p50_ms),
                fmt_signed(cmp.added_p99_ms)
            );
            let _ = writeln!(
                out,
                "{} added latency, from actual send:     p50 {}   p99 {}",
                gateway.name,
                fmt_signed(cmp.added_service_p50_ms),
                fmt_signed(cmp.added_service_p99_ms)
            );
        }
        Mode::ClosedLoop => {
            let _ = writeln!(out, "latency per request, ms");
            latency_rows(&mut out, &baseline.service, &gateway.service);
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{} added latency at this load:  p50 {}   p99 {}",
                gateway.name,
                fmt_signed(cmp.added_service_p50_ms),
                fmt_signed(cmp.added_service_p99_ms)
            );
        }
    }
    let _ = writeln!(
        out,
        "throughput ratio ({} ok/s / {} ok/s): {}",
        gateway.name,
        baseline.name,
        fmt_ratio(cmp.throughput_ratio)
    );
    error_lines(&mut out, baseline);
    error_lines(&mut out, gateway);
    out
}

/// The results as JSON.
/// The cost of limits and budgets, from two runs with and two without (alternating):
/// the difference of the means, and the run-to-run noise it must be read against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsEffect {
    /// Throughput with limits ÷ without, minus 1, in percent.
    pub throughput_pct: f64,
    /// Largest relative difference between two runs of the same key, in percent.
    pub throughput_noise_pct: f64,
    /// p99 with limits minus without, ms (from the intended start in open loop).
    pub p99_ms: f64,
    /// Largest difference of p99 between two runs of the same key, ms.
    pub p99_noise_ms: f64,
}

impl LimitsEffect {
    pub fn within_noise(&self) -> bool {
        self.throughput_pct.abs() <= self.throughput_noise_pct
            && self.p99_ms.abs() <= self.p99_noise_ms
    }
}

fn p99_of(mode: Mode, r: &TargetReport) -> f64 {
    match mode {
        Mode::OpenLoop => ms(r.intended.p99),
        Mode::ClosedLoop => ms(r.service.p99),
    }
}

pub fn limits_effect(
    mode: Mode,
    without: [&TargetReport; 2],
    with: [&TargetReport; 2],
) -> LimitsEffect {
    let mean =
        |rs: [&TargetReport; 2], f: &dyn Fn(&TargetReport) -> f64| (f(rs[0]) + f(rs[1])) / 2.0;
    let spread =
        |rs: [&TargetReport; 2], f: &dyn Fn(&TargetReport) -> f64| (f(rs[0]) - f(rs[1])).abs();
    let tp = |r: &TargetReport| r.throughput;
    let p99 = |r: &TargetReport| p99_of(mode, r);
    let (t0, t1) = (mean(without, &tp), mean(with, &tp));
    let rel = |rs: [&TargetReport; 2]| {
        let m = mean(rs, &tp);
        if m > 0.0 {
            spread(rs, &tp) / m * 100.0
        } else {
            0.0
        }
    };
    LimitsEffect {
        throughput_pct: if t0 > 0.0 {
            (t1 / t0 - 1.0) * 100.0
        } else {
            0.0
        },
        throughput_noise_pct: rel(without).max(rel(with)),
        p99_ms: mean(with, &p99) - mean(without, &p99),
        p99_noise_ms: spread(without, &p99).max(spread(with, &p99)),
    }
}

pub fn render_limits(mode: Mode, without: [&TargetReport; 2], with: [&TargetReport; 2]) -> String {
    let e = limits_effect(mode, without, with);
    let mut out = String::new();
    let _ = writeln!(out, "limits and budgets, two alternating runs each:");
    row(&mut out, "", "no limits", "limits");
    for i in 0..2 {
        row(
            &mut out,
            &format!("  run {} throughput (ok/s)", i + 1),
            &format!("{:.1}", without[i].throughput),
            &format!("{:.1}", with[i].throughput),
        );
        row(
            &mut out,
            &format!("  run {} p99 (ms)", i + 1),
            &format!("{:.3}", p99_of(mode, without[i])),
            &format!("{:.3}", p99_of(mode, with[i])),
        );
    }
    let _ = writeln!(
        out,
        "effect of limits: throughput {:+.1}% (run-to-run noise ±{:.1}%), p99 {:+.3} ms (noise ±{:.3} ms): {}",
        e.throughput_pct,
        e.throughput_noise_pct,
        e.p99_ms,
        e.p99_noise_ms,
        if e.within_noise() {
            "within the noise"
        } else {
            "beyond the noise"
        }
    );
    out
}

pub fn to_json(
    setup: &SetupInfo,
    baseline: &TargetReport,
    gateway: &TargetReport,
    extra: Value,
) -> Value {
    let cmp = compare(baseline, gateway);
    json!({
        "setup": {
            "mode": match setup.mode { Mode::OpenLoop => "open_loop", Mode::ClosedLoop => "closed_loop" },
            "rate_per_s": setup.rate,
            "warmup_s": setup.warmup_secs,
            "duration_s": setup.duration_secs,
            "concurrency": setup.concurrency,
            "max_in_flight": setup.max_in_flight,
            "timeout_s": setup.timeout_secs,
            "mock_latency_ms": setup.mock_latency_ms,
            "stream": setup.stream,
            "profile": setup.profile,
            "cores": setup.cores,
            "cpu": setup.cpu,
            "client_threads": setup.client_threads,
            "server_threads": setup.server_threads,
        },
        "baseline": baseline.to_json(),
        "gateway": gateway.to_json(),
        "comparison": {
            "added_latency_from_intended_start_p50_ms": cmp.added_p50_ms,
            "added_latency_from_intended_start_p99_ms": cmp.added_p99_ms,
            "added_latency_from_send_p50_ms": cmp.added_service_p50_ms,
            "added_latency_from_send_p99_ms": cmp.added_service_p99_ms,
            "throughput_ratio": cmp.throughput_ratio,
        },
        "gateway_checks": extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p50: u64, p99: u64) -> Latency {
        Latency {
            count: 100,
            p50,
            p90: p50 + 10,
            p99,
            p999: p99 + 10,
            max: p99 + 100,
        }
    }

    fn target(name: &str, throughput: f64, p50: u64, p99: u64) -> TargetReport {
        TargetReport {
            name: name.into(),
            sent: 5000,
            ok: 5000,
            throughput,
            intended: latency(p50, p99),
            service: latency(p50 - 100, p99 - 100),
            lag: latency(50, 900),
            ..TargetReport::default()
        }
    }

    #[test]
    fn limits_effect_is_read_against_the_noise() {
        let runs = [
            target("gateway", 1000.0, 1000, 4000),
            target("gateway", 1040.0, 1000, 4400),
        ];
        let with = [
            target("gateway+limits", 1010.0, 1000, 4200),
            target("gateway+limits", 990.0, 1000, 4100),
        ];
        let e = limits_effect(Mode::OpenLoop, [&runs[0], &runs[1]], [&with[0], &with[1]]);
        assert!((e.throughput_pct - (1000.0 / 1020.0 - 1.0) * 100.0).abs() < 1e-9);
        assert!((e.throughput_noise_pct - 40.0 / 1020.0 * 100.0).abs() < 1e-9);
        assert!((e.p99_ms - (4.15 - 4.2)).abs() < 1e-9);
        assert!((e.p99_noise_ms - 0.4).abs() < 1e-9);
        assert!(e.within_noise());
        let text = render_limits(Mode::OpenLoop, [&runs[0], &runs[1]], [&with[0], &with[1]]);
        assert!(text.contains("within the noise"), "{text}");
        let slow = [
            target("gateway+limits", 500.0, 1000, 9000),
            target("gateway+limits", 510.0, 1000, 9100),
        ];
        let e = limits_effect(Mode::OpenLoop, [&runs[0], &runs[1]], [&slow[0], &slow[1]]);
        assert!(!e.within_noise());
    }

    #[test]
    fn percentiles_from_a_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, 500);
        assert_eq!(l.p90, 900);
        assert_eq!(l.p99, 990);
        assert_eq!(l.p999, 999);
        assert_eq!(l.max, 1000);
        let empty = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        assert_eq!(Latency::from_histogram(&empty), Latency::default());
    }

    #[test]
    fn added_latency_is_gateway_minus_baseline() {
        assert_eq!(added_ms(400, 1150), 0.75);
        assert_eq!(added_ms(1000, 900), -0.1);
        let cmp = compare(
            &target("baseline", 500.0, 400, 2000),
            &target("gateway", 450.0, 900, 3500),
        );
        assert_eq!(cmp.added_p50_ms, 0.5);
        assert_eq!(cmp.added_p99_ms, 1.5);
        assert_eq!(cmp.added_service_p50_ms, 0.5);
        assert_eq!(cmp.added_service_p99_ms, 1.5);
        assert_eq!(cmp.throughput_ratio, Some(0.9));
    }

    #[test]
    fn ratio_needs_a_baseline() {
        assert_eq!(throughput_ratio(0.0, 10.0), None);
        assert_eq!(throughput_ratio(f64::NAN, 10.0), None);
        assert_eq!(throughput_ratio(200.0, 100.0), Some(0.5));
    }

    #[test]
    fn open_loop_table_is_side_by_side() {
        let mut gw = target("gateway", 499.5, 900, 3500);
        gw.errors = 2;
        gw.error_kinds.insert("HTTP 502".into(), 2);
        gw.first_error = Some("HTTP 502: upstream_unavailable".into());
        let text = render_results(Mode::OpenLoop, &target("baseline", 499.9, 400, 2000), &gw);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].trim_start(), "baseline     gateway");
        assert_eq!(lines[0].len(), LABEL + 2 * COLUMN);
        assert!(
            lines.contains(&"  p50                                              0.400       0.900")
        );
        assert!(
            lines.contains(&"  p99.9                                            2.010       3.510")
        );
        assert!(
            lines.contains(&"throughput (ok/s)                                  499.9       499.5")
        );
        assert!(
            lines.contains(&"dropped (in-flight cap reached)                        0           0")
        );
        assert!(text.contains("from intended start:  p50 +0.500 ms   p99 +1.500 ms"));
        assert!(text.contains("throughput ratio (gateway ok/s / baseline ok/s): 0.999"));
        assert!(
            text.contains("gateway errors: HTTP 502 x2\n  first: HTTP 502: upstream_unavailable")
        );
        assert!(!text.contains("baseline errors"));
    }

    #[test]
    fn closed_loop_table_has_no_schedule_rows() {
        let text = render_results(
            Mode::ClosedLoop,
            &target("baseline", 4000.0, 400, 2000),
            &target("gateway", 1000.0, 900, 3500),
        );
        assert!(!text.contains("intended"));
        assert!(!text.contains("dropped"));
        assert!(text.contains("throughput ratio (gateway ok/s / baseline ok/s): 0.250"));
        assert!(text.contains("at this load:  p50 +0.500 ms"));
    }

    #[test]
    fn empty_histograms_print_dashes() {
        let empty = TargetReport {
            name: "baseline".into(),
            ..TargetReport::default()
        };
        let text = render_results(Mode::OpenLoop, &empty, &target("gateway", 1.0, 900, 3500));
        assert!(
            text.contains("  max                                                  -       3.600")
        );
        assert!(text.contains("n/a (baseline had no ok answers)"));
    }

    #[test]
    fn setup_warns_about_debug_builds() {
        let mut s = SetupInfo {
            mode: Mode::OpenLoop,
            rate: 500.0,
            warmup_secs: 2.0,
            duration_secs: 10.0,
            concurrency: 32,
            max_in_flight: 2000,
            timeout_secs: 30.0,
            mock_latency_ms: 0,
            stream: false,
            profile: "debug",
            cores: 2,
            cpu: "test cpu".into(),
            client_threads: 1,
            server_threads: 2,
        };
        let text = render_setup(&s);
        assert!(text.contains("500 req/s constant rate, 2 s warm-up + 10 s measured"));
        assert!(text.contains("not representative"));
        s.profile = "release";
        s.mode = Mode::ClosedLoop;
        let text = render_setup(&s);
        assert!(!text.contains("not representative"));
        assert!(text.contains("32 concurrent clients"));
    }

    #[test]
    fn json_carries_the_comparison() {
        let s = SetupInfo {
            mode: Mode::ClosedLoop,
            rate: 500.0,
            warmup_secs: 2.0,
            duration_secs: 10.0,
            concurrency: 8,
            max_in_flight: 2000,
            timeout_secs: 30.0,
            mock_latency_ms: 5,
            stream: true,
            profile: "release",
            cores: 2,
            cpu: "x".into(),
            client_threads: 1,
            server_threads: 2,
        };
        let v = to_json(
            &s,
            &target("baseline", 400.0, 400, 2000),
            &target("gateway", 100.0, 900, 3500),
            Value::Null,
        );
        assert_eq!(v["setup"]["mode"], "closed_loop");
        assert_eq!(v["comparison"]["throughput_ratio"], 0.25);
        assert_eq!(v["gateway"]["latency_from_send"]["p50_ms"], 0.8);
    }
}
