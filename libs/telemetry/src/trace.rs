//! OpenTelemetry traces.
