//! Pieces shared by the benchmark binaries of `sg-loadtest`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod passthrough;
