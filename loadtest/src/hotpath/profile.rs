//! `--profile-gateway`: `perf record` attached to the gateway's child during its
//! throughput phase, then the top of `perf report`. Best effort: when perf is missing
//! or not permitted, the run says so and goes on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Lines of `perf report` printed.
const TOP_LINES: usize = 60;

/// A `perf record` running against one process.
pub struct Recording {
    child: Child,
    pub file: PathBuf,
    seconds: u64,
}

/// Starts `perf record -F 999 --call-graph <fp|dwarf> -p <pid> -o <file> -- sleep <seconds>`.
pub fn start(pid: u32, seconds: u64, file: &Path, call_graph: &str) -> Result<Recording, String> {
    let child = Command::new("perf")
        .args(["record", "-F", "999", "--call-graph", call_graph, "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(file)
        .args(["--", "sleep"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `perf` ({e}); is it installed?"))?;
    Ok(Recording {
        child,
        file: file.to_path_buf(),
        seconds,
    })
}

impl Recording {
    /// Waits for the recording to end; returns the top of its report, or why there is none.
    pub async fn finish(self) -> Result<String, String> {
        let limit = Duration::from_secs(self.seconds + 30);
        let output = match tokio::time::timeout(limit, self.child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(format!("waiting for perf record: {e}")),
            Err(_) => return Err("perf record did not end in time".into()),
        };
        if !output.status.success() || !self.file.is_file() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect();
            return Err(format!(
                "perf record failed ({}): {}",
                output.status,
                reason.join(" / ")
            ));
        }
        let report = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&self.file)
            .args([
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run perf report: {e}"))?;
        if !report.status.success() {
            return Err(format!(
                "perf report failed ({}): {}",
                report.status,
                String::from_utf8_lossy(&report.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&report.stdout);
        let top: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .take(TOP_LINES)
            .collect();
        Ok(top.join("\n"))
    }
}
