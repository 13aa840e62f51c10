//! A child process's memory, from `/proc/<pid>/status`: resident set size now (`VmRSS`)
//! and its peak (`VmHWM`), which `/proc/<pid>/clear_refs` can reset to the current size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::task::JoinHandle;

/// The figures read from `/proc/<pid>/status`, in kB (KiB, as the kernel counts them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// `VmRSS`: resident set size now.
    pub rss_kb: u64,
    /// `VmHWM`: the largest resident set size since start, or since the last reset.
    pub hwm_kb: u64,
}

/// The value of the `name:  N kB` line of a status text, in kB.
pub fn field_kb(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key != name {
            return None;
        }
        let mut words = value.split_whitespace();
        let number = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => Some(number),
            _ => None,
        }
    })
}

/// Reads `VmRSS` and `VmHWM` from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> anyhow::Result<Status> {
    let rss_kb = field_kb(text, "VmRSS").context("no `VmRSS: N kB` line")?;
    let hwm_kb = field_kb(text, "VmHWM").context("no `VmHWM: N kB` line")?;
    if hwm_kb < rss_kb {
        // The kernel updates the peak lazily; the present size is a peak too.
        return Ok(Status {
            rss_kb,
            hwm_kb: rss_kb,
        });
    }
    Ok(Status { rss_kb, hwm_kb })
}

pub fn read_status(pid: u32) -> anyhow::Result<Status> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status(&text).with_context(|| format!("reading {path}"))
}

/// Resets the process's peak resident set size (`VmHWM`) to its present size.
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("writing 5 to {path}"))
}

/// Checks that the peak was reset: right after a reset, `VmHWM` is close to `VmRSS`.
pub fn peak_was_reset(status: Status) -> bool {
    // The process keeps running between the reset and the reading.
    status.hwm_kb <= status.rss_kb + 1024
}

/// Reads `VmRSS` every interval in the background and keeps the largest value: a
/// cross-check of `VmHWM` (which it can only undershoot, by missing short peaks).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kb = Arc::new(AtomicU64::new(0));
        let (stop2, max2) = (stop.clone(), max_kb.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop2.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(status) = read_status(pid) {
                    max2.fetch_max(status.rss_kb, Ordering::Relaxed);
                }
            }
        });
        Self { stop, max_kb, task }
    }

    /// Stops sampling; the largest `VmRSS` seen, in kB.
    pub async fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            bail!("the memory sampler did not stop");
        }
        Ok(self.max_kb.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tsg-upload-bench\n\
        Umask:\t0022\n\
        State:\tS (sleeping)\n\
        Tgid:\t4242\n\
        Pid:\t4242\n\
        VmPeak:\t  812344 kB\n\
        VmSize:\t  745128 kB\n\
        VmLck:\t       0 kB\n\
        VmHWM:\t   61240 kB\n\
        VmRSS:\t   48116 kB\n\
        RssAnon:\t   30124 kB\n\
        RssFile:\t   17992 kB\n\
        VmData:\t  102400 kB\n\
        Threads:\t3\n\
        voluntary_ctxt_switches:\t150\n";

    #[test]
    fn reads_the_status_text() {
        assert_eq!(
            parse_status(SAMPLE).unwrap(),
            Status {
                rss_kb: 48116,
                hwm_kb: 61240
            }
        );
        assert_eq!(field_kb(SAMPLE, "VmPeak"), Some(812_344));
        assert_eq!(field_kb(SAMPLE, "RssAnon"), Some(30124));
        // Not a kB figure, absent, or a prefix of another name.
        assert_eq!(field_kb(SAMPLE, "Threads"), None);
        assert_eq!(field_kb(SAMPLE, "VmSwap"), None);
        assert_eq!(field_kb(SAMPLE, "Vm"), None);
        assert_eq!(field_kb(SAMPLE, "Rss"), None);
    }

    #[test]
    fn a_status_without_the_figures_is_an_error() {
        assert!(parse_status("Name:\tkthreadd\nThreads:\t1\n").is_err());
        assert!(parse_status("VmRSS:\t 10 kB\n").is_err());
        assert!(parse_status("VmRSS:\t ten kB\nVmHWM:\t 10 kB\n").is_err());
    }

    #[test]
    fn the_peak_is_never_below_the_present() {
        let s = parse_status("VmHWM:\t 100 kB\nVmRSS:\t 120 kB\n").unwrap();
        assert_eq!(s.hwm_kb, 120);
        assert!(peak_was_reset(s));
        assert!(!peak_was_reset(Status {
            rss_kb: 40_000,
            hwm_kb: 90_000
        }));
    }

    #[tokio::test]
    async fn reads_this_process() {
        let status = read_status(std::process::id()).unwrap();
        assert!(status.rss_kb > 0 && status.hwm_kb >= status.rss_kb);
        let sampler = Sampler::start(std::process::id(), Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(sampler.finish().await.unwrap() > 0);
    }
}
