//! Telemetry shared by every SecureGate service: Prometheus metrics ([`metrics`]) and
//! OpenTelemetry traces exported over OTLP ([`trace`]).
#![forbid(unsafe_code)]

pub mod metrics;
pub mod trace;
