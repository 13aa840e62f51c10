//! The upload benchmark's figures and their presentation: a side-by-side table
//! (pass-through, gateway, difference) and its JSON twin.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// Width of the label column.
const LABEL: usize = 40;
/// Width of each value column.
const COLUMN: usize = 14;
const KIB_PER_MIB: f64 = 1024.0;
const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Everything needed to reproduce a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupInfo {
    pub upload_mib: u64,
    pub uploads: usize,
    pub concurrency: usize,
    pub piece_kib: usize,
    pub timeout_secs: u64,
    pub profile: &'static str,
    /// Cores this process may run on (its CPU affinity, e.g. under `taskset`).
    pub cores: usize,
    /// Cores the machine has online.
    pub online_cores: Option<usize>,
    pub cpu: String,
}

impl SetupInfo {
    /// Uploads in flight at once: the concurrency, unless there are fewer uploads.
    pub fn in_flight(&self) -> usize {
        self.concurrency.min(self.uploads)
    }

    /// What a target holding every in-flight upload whole would need above its idle
    /// size, in MiB.
    pub fn whole_uploads_mib(&self) -> u64 {
        self.in_flight() as u64 * self.upload_mib
    }
}

/// What one target's child process did during the measured uploads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetFigures {
    pub name: String,
    /// `VmRSS` after the warm-up, right before the uploads, kB.
    pub rss_before_kb: u64,
    /// `VmHWM` after the uploads, kB: the peak since the reset (or since start).
    pub peak_kb: u64,
    /// Whether the peak was reset before the uploads (else it is the lifetime peak).
    pub peak_reset: bool,
    /// Why it could not be reset.
    pub reset_error: Option<String>,
    /// The largest `VmRSS` sampled during the uploads, kB.
    pub sampled_max_kb: u64,
    /// `VmRSS` when the last answer had arrived, kB.
    pub rss_after_kb: u64,
    /// Whole request bodies sent (and checked), bytes.
    pub uploaded_bytes: u64,
    /// From the first upload's start to the last answer's end, seconds.
    pub elapsed_secs: f64,
    /// Each upload, from its send to the end of its answer, seconds.
    pub per_upload_secs: Vec<f64>,
}

impl TargetFigures {
    /// Peak minus the size before the uploads, kB (negative when the process shrank).
    pub fn peak_growth_kb(&self) -> i64 {
        self.peak_kb as i64 - self.rss_before_kb as i64
    }

    pub fn uploaded_mib(&self) -> f64 {
        self.uploaded_bytes as f64 / BYTES_PER_MIB
    }

    pub fn throughput_mib_s(&self) -> Option<f64> {
        (self.elapsed_secs > 0.0).then(|| self.uploaded_mib() / self.elapsed_secs)
    }

    pub fn p50_secs(&self) -> Option<f64> {
        percentile(&self.per_upload_secs, 0.5)
    }

    pub fn max_secs(&self) -> Option<f64> {
        percentile(&self.per_upload_secs, 1.0)
    }

    fn to_json(&self) -> Value {
        json!({
            "rss_before_kib": self.rss_before_kb,
            "peak_rss_kib": self.peak_kb,
            "peak_reset_before_uploads": self.peak_reset,
            "peak_reset_error": self.reset_error,
            "peak_growth_kib": self.peak_growth_kb(),
            "sampled_max_rss_kib": self.sampled_max_kb,
            "rss_after_kib": self.rss_after_kb,
            "uploads": self.per_upload_secs.len(),
            "uploaded_bytes": self.uploaded_bytes,
            "elapsed_s": self.elapsed_secs,
            "throughput_mib_s": self.throughput_mib_s(),
            "per_upload_p50_s": self.p50_secs(),
            "per_upload_max_s": self.max_secs(),
        })
    }
}

/// The `q` quantile (0 < q ≤ 1) of `values`, nearest rank: the smallest value with at
/// least `q` of the values at or below it. `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || !(q > 0.0 && q <= 1.0) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / KIB_PER_MIB)
}

fn signed_mib(kb: i64) -> String {
    format!("{:+.1}", kb as f64 / KIB_PER_MIB)
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn diff(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.decimals$}", b - a),
        _ => "-".into(),
    }
}

fn row(out: &mut String, label: &str, a: &str, b: &str, d: &str) {
    let _ = writeln!(out, "{label:<LABEL$}{a:>COLUMN$}{b:>COLUMN$}{d:>COLUMN$}");
}

/// The lines describing the setup, printed before the results.
pub fn render_setup(s: &SetupInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "uploads:   {} × {} MiB multipart transcription forms per target, at most {} in flight, \
         sent streamed in {} KiB pieces",
        s.uploads, s.upload_mib, s.concurrency, s.piece_kib
    );
    let _ = writeln!(
        out,
        "           POST /v1/audio/transcriptions, every answer checked (200, file and body \
         SHA-256); request timeout {} s",
        s.timeout_secs
    );
    let _ = writeln!(
        out,
        "upstream:  media stand-in on 127.0.0.1 in the parent process, reads multipart as it arrives"
    );
    let _ = writeln!(
        out,
        "targets:   each in its own child process, measured alone, one after the other: \
         pass-through (bare hyper hop), gateway (SecureGate embedded)"
    );
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let online = s
        .online_cores
        .filter(|&n| n != s.cores)
        .map_or_else(String::new, |n| format!(" of {n} online"));
    let _ = writeln!(
        out,
        "machine:   {}{online} ({}), shared by the client, the upstream and the child; \
         each child serves on {}",
        plural(s.cores, "core"),
        s.cpu,
        plural(s.cores, "runtime thread")
    );
    let _ = writeln!(out, "build:     {}", s.profile);
    if s.profile != "release" {
        let _ = writeln!(
            out,
            "warning:   this is a debug build; its figures are not representative (use --release)"
        );
    }
    let _ = writeln!(
        out,
        "note:      a gateway that held each upload whole would need at least {} × {} MiB = {} MiB \
         above its idle RSS",
        s.in_flight(),
        s.upload_mib,
        s.whole_uploads_mib()
    );
    out
}

/// The side-by-side table, with a difference column (`b − a`).
pub fn render_table(a: &TargetFigures, b: &TargetFigures) -> String {
    let mut out = String::new();
    row(&mut out, "", &a.name, &b.name, "difference");
    row(
        &mut out,
        "RSS before uploads (MiB)",
        &mib(a.rss_before_kb),
        &mib(b.rss_before_kb),
        &signed_mib(b.rss_before_kb as i64 - a.rss_before_kb as i64),
    );
    row(
        &mut out,
        "peak RSS during uploads (MiB)",
        &mib(a.peak_kb),
        &mib(b.peak_kb),
        &signed_mib(b.peak_kb as i64 - a.peak_kb as i64),
    );
    row(
        &mut out,
        "peak - before (MiB)",
        &signed_mib(a.peak_growth_kb()),
        &signed_mib(b.peak_growth_kb()),
        &signed_mib(b.peak_growth_kb() - a.peak_growth_kb()),
    );
    row(
        &mut out,
        "largest RSS sampled every 50 ms (MiB)",
        &mib(a.sampled_max_kb),
        &mib(b.sampled_max_kb),
        &signed_mib(b.sampled_max_kb as i64 - a.sampled_max_kb as i64),
    );
    row(
        &mut out,
        "RSS after uploads (MiB)",
        &mib(a.rss_after_kb),
        &mib(b.rss_after_kb),
        &signed_mib(b.rss_after_kb as i64 - a.rss_after_kb as i64),
    );
    row(
        &mut out,
        "MiB uploaded",
        &format!("{:.1}", a.uploaded_mib()),
        &format!("{:.1}", b.uploaded_mib()),
        &format!("{:+.1}", b.uploaded_mib() - a.uploaded_mib()),
    );
    row(
        &mut out,
        "throughput (MiB/s)",
        &opt(a.throughput_mib_s(), 1),
        &opt(b.throughput_mib_s(), 1),
        &diff(a.throughput_mib_s(), b.throughput_mib_s(), 1),
    );
    row(
        &mut out,
        "per upload, p50 (s)",
        &opt(a.p50_secs(), 2),
        &opt(b.p50_secs(), 2),
        &diff(a.p50_secs(), b.p50_secs(), 2),
    );
    row(
        &mut out,
        "per upload, max (s)",
        &opt(a.max_secs(), 2),
        &opt(b.max_secs(), 2),
        &diff(a.max_secs(), b.max_secs(), 2),
    );
    out
}

/// A target's peak growth as a share of what holding its in-flight uploads whole needs.
pub fn share_of_whole(f: &TargetFigures, s: &SetupInfo) -> f64 {
    let whole_kb = s.whole_uploads_mib() as f64 * KIB_PER_MIB;
    if whole_kb > 0.0 {
        f.peak_growth_kb() as f64 / whole_kb * 100.0
    } else {
        0.0
    }
}

/// The lines read after the table: each peak growth against the bound, and the caveats
/// about the peaks.
pub fn render_verdict(s: &SetupInfo, a: &TargetFigures, b: &TargetFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "peak growth against {} MiB (every in-flight upload held whole): {} {} MiB ({:.1}%), {} {} MiB ({:.1}%)",
        s.whole_uploads_mib(),
        a.name,
        signed_mib(a.peak_growth_kb()),
        share_of_whole(a, s),
        b.name,
        signed_mib(b.peak_growth_kb()),
        share_of_whole(b, s),
    );
    for f in [a, b] {
        if share_of_whole(f, s) >= 50.0 {
            let _ = writeln!(
                out,
                "warning: the {} grew by at least half of what holding every in-flight upload whole needs: \
                 it looks like it buffers uploads",
                f.name
            );
        }
        if !f.peak_reset {
            let _ = writeln!(
                out,
                "note: the peak RSS of the {} could not be reset before the uploads ({}): its peak \
                 is the process's lifetime peak; read the sampled row instead",
                f.name,
                f.reset_error.as_deref().unwrap_or("no reason given")
            );
        }
    }
    out
}

/// The results as JSON.
pub fn to_json(s: &SetupInfo, a: &TargetFigures, b: &TargetFigures) -> Value {
    let growth_diff = b.peak_growth_kb() - a.peak_growth_kb();
    json!({
        "setup": {
            "upload_mib": s.upload_mib,
            "uploads": s.uploads,
            "concurrency": s.concurrency,
            "in_flight": s.in_flight(),
            "piece_kib": s.piece_kib,
            "timeout_s": s.timeout_secs,
            "profile": s.profile,
            "cores": s.cores,
            "online_cores": s.online_cores,
            "cpu": s.cpu,
            "whole_uploads_mib": s.whole_uploads_mib(),
        },
        "passthrough": a.to_json(),
        "gateway": b.to_json(),
        "difference": {
            "rss_before_kib": b.rss_before_kb as i64 - a.rss_before_kb as i64,
            "peak_rss_kib": b.peak_kb as i64 - a.peak_kb as i64,
            "peak_growth_kib": growth_diff,
            "rss_after_kib": b.rss_after_kb as i64 - a.rss_after_kb as i64,
            "throughput_mib_s": match (a.throughput_mib_s(), b.throughput_mib_s()) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            },
        },
        "peak_growth_share_of_whole_uploads_pct": {
            "passthrough": share_of_whole(a, s),
            "gateway": share_of_whole(b, s),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(profile: &'static str) -> SetupInfo {
        SetupInfo {
            upload_mib: 50,
            uploads: 8,
            concurrency: 4,
            piece_kib: 64,
            timeout_secs: 120,
            profile,
            cores: 2,
            online_cores: Some(2),
            cpu: "test cpu".into(),
        }
    }

    fn figures(name: &str, before_mib: u64, peak_mib: u64, secs: &[f64]) -> TargetFigures {
        TargetFigures {
            name: name.into(),
            rss_before_kb: before_mib * 1024,
            peak_kb: peak_mib * 1024,
            peak_reset: true,
            reset_error: None,
            sampled_max_kb: peak_mib * 1024 - 512,
            rss_after_kb: before_mib * 1024 + 2048,
            uploaded_bytes: 8 * 50 * 1024 * 1024,
            elapsed_secs: 4.0,
            per_upload_secs: secs.to_vec(),
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.5), Some(2.0));
        assert_eq!(percentile(&v, 0.75), Some(3.0));
        assert_eq!(percentile(&v, 0.76), Some(4.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert_eq!(percentile(&v, 0.01), Some(1.0));
        assert_eq!(percentile(&[7.5], 0.5), Some(7.5));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&v, 0.0), None);
        assert_eq!(percentile(&v, 1.5), None);
        assert_eq!(percentile(&v, f64::NAN), None);
    }

    #[test]
    fn the_table_is_side_by_side_with_a_difference() {
        let a = figures("pass-through", 6, 10, &[1.0, 2.0, 3.0, 4.0]);
        let b = figures("gateway", 40, 52, &[1.5, 2.5, 3.0, 5.0]);
        let text = render_table(&a, &b);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(
            lines[0].trim_start(),
            "pass-through       gateway    difference"
        );
        assert_eq!(lines[0].chars().count(), LABEL + 3 * COLUMN);
        let expected = [
            "RSS before uploads (MiB)                           6.0          40.0         +34.0",
            "peak RSS during uploads (MiB)                     10.0          52.0         +42.0",
            "peak - before (MiB)                               +4.0         +12.0          +8.0",
            "largest RSS sampled every 50 ms (MiB)              9.5          51.5         +42.0",
            "RSS after uploads (MiB)                            8.0          42.0         +34.0",
            "MiB uploaded                                     400.0         400.0          +0.0",
            "throughput (MiB/s)                               100.0         100.0          +0.0",
            "per upload, p50 (s)                               2.00          2.50         +0.50",
            "per upload, max (s)                               4.00          5.00         +1.00",
        ];
        assert_eq!(&lines[1..], expected);
    }

    #[test]
    fn an_empty_run_prints_dashes() {
        let a = TargetFigures {
            name: "pass-through".into(),
            ..TargetFigures::default()
        };
        let b = figures("gateway", 40, 52, &[1.0]);
        let text = render_table(&a, &b);
        assert!(text.contains(
            "per upload, p50 (s)                                  -          1.00             -"
        ));
        assert!(text.contains(
            "throughput (MiB/s)                                   -         100.0             -"
        ));
    }

    #[test]
    fn setup_names_the_bound_and_warns_about_debug_builds() {
        let text = render_setup(&setup("debug"));
        assert!(
            text.contains(
                "8 × 50 MiB multipart transcription forms per target, at most 4 in flight"
            )
        );
        assert!(text.contains(
            "a gateway that held each upload whole would need at least 4 × 50 MiB = 200 MiB above its idle RSS"
        ));
        assert!(text.contains("not representative"));
        assert!(text.contains("machine:   2 cores (test cpu), shared by"));
        assert!(text.contains("each child serves on 2 runtime threads"));
        let mut s = setup("release");
        s.uploads = 2;
        s.cores = 1;
        let text = render_setup(&s);
        assert!(!text.contains("not representative"));
        assert!(text.contains("machine:   1 core of 2 online (test cpu)"));
        assert!(text.contains("each child serves on 1 runtime thread\n"));
        assert!(text.contains("at least 2 × 50 MiB = 100 MiB"));
    }

    #[test]
    fn the_verdict_flags_buffering_and_unreset_peaks() {
        let s = setup("release");
        let a = figures("pass-through", 6, 10, &[1.0]);
        let b = figures("gateway", 40, 52, &[1.0]);
        let text = render_verdict(&s, &a, &b);
        assert!(text.contains(
            "peak growth against 200 MiB (every in-flight upload held whole): pass-through +4.0 MiB (2.0%), gateway +12.0 MiB (6.0%)"
        ), "{text}");
        assert!(!text.contains("warning") && !text.contains("note"));
        let mut buffering = figures("gateway", 40, 250, &[1.0]);
        buffering.peak_reset = false;
        buffering.reset_error = Some("permission denied".into());
        let text = render_verdict(&s, &a, &buffering);
        assert!(text.contains("warning: the gateway grew by at least half"));
        assert!(text.contains("could not be reset before the uploads (permission denied)"));
        assert!((share_of_whole(&buffering, &s) - 105.0).abs() < 1e-9);
    }

    #[test]
    fn json_carries_both_targets_and_the_difference() {
        let s = setup("release");
        let v = to_json(
            &s,
            &figures("pass-through", 6, 10, &[1.0, 3.0]),
            &figures("gateway", 40, 52, &[2.0, 4.0]),
        );
        assert_eq!(v["setup"]["whole_uploads_mib"], 200);
        assert_eq!(v["passthrough"]["peak_growth_kib"], 4 * 1024);
        assert_eq!(v["gateway"]["per_upload_max_s"], 4.0);
        assert_eq!(v["gateway"]["throughput_mib_s"], 100.0);
        assert_eq!(v["difference"]["peak_growth_kib"], 8 * 1024);
        assert_eq!(v["peak_growth_share_of_whole_uploads_pct"]["gateway"], 6.0);
    }
}
