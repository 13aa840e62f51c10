//! Every subject of SecureGate's event log, named in one place: the log creates its
//! streams over these prefixes, and everything that writes builds its subjects here.
//!
//! Tokens (tenant, project and object ids, replay ids) are well-formed ids: lower-case
//! letters, digits and `_`, never `.`, `*` or `>`.
#![forbid(unsafe_code)]

/// Tenants, projects, connections, keys, policies: `sg.control.<tenant>.<kind>.<id>`.
pub const CONTROL: &str = "sg.control";
/// One event per proxied request: `sg.usage.<tenant>.<project>`.
pub const USAGE: &str = "sg.usage";
/// Lock violations and other security signals: `sg.signals.<tenant>.<project>`.
pub const SIGNALS: &str = "sg.signals";
/// Used request-signature ids: `sg.nonce.<tenant>.<replay id>`.
pub const NONCES: &str = "sg.nonce";

/// Quota ledgers of limits and budgets: `sg.quota.<tenant>.<scope>.<id>.<counter>`.
pub const QUOTA: &str = "sg.quota";

/// The subject of one quota ledger: `scope` is `key` or `project`, `counter` one of
/// `rpm`, `rpd`, `tpm`, `concurrent`, `budget`.
pub fn quota(tenant: &str, scope: &str, id: &str, counter: &str) -> String {
    format!("{QUOTA}.{tenant}.{scope}.{id}.{counter}")
}

/// The control subject of one aggregate.
pub fn control(tenant: &str, kind: &str, id: &str) -> String {
    format!("{CONTROL}.{tenant}.{kind}.{id}")
}

/// The usage subject of a project.
pub fn usage(tenant: &str, project: &str) -> String {
    format!("{USAGE}.{tenant}.{project}")
}

/// The signals subject of a project.
pub fn signals(tenant: &str, project: &str) -> String {
    format!("{SIGNALS}.{tenant}.{project}")
}

/// The subject a request signature's replay id is claimed on.
pub fn nonce(tenant: &str, replay_id: &str) -> String {
    format!("{NONCES}.{tenant}.{replay_id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn shapes() {
        assert_eq!(
            super::control("ten_a", "key", "key_b"),
            "sg.control.ten_a.key.key_b"
        );
        assert_eq!(super::usage("ten_a", "prj_b"), "sg.usage.ten_a.prj_b");
        assert_eq!(super::signals("ten_a", "prj_b"), "sg.signals.ten_a.prj_b");
        assert_eq!(super::nonce("ten_a", "ab12"), "sg.nonce.ten_a.ab12");
        assert_eq!(
            super::quota("ten_a", "key", "key_b", "rpm"),
            "sg.quota.ten_a.key.key_b.rpm"
        );
    }
}
