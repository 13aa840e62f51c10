//! Pieces shared by the benchmark binaries of `sg-loadtest`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod child;
pub mod passthrough;

/// The CPU's model name, as the kernel reports it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
