//! This machine's device fingerprint: what a key's device lock compares with the
//! `x-device-fingerprint` header.
//!
//! It is derived from the machine id and nothing else (no user name, host name or
//! hardware address): `sgd_` + the first 32 hex characters of
//! SHA-256(`securegate-device-v1\n` + the machine id). The machine id is the content of
//! `/etc/machine-id` (or `/var/lib/dbus/machine-id`), without surrounding whitespace.
//! The domain string keeps the fingerprint from equalling any other hash of the
//! machine id, and the hash keeps the machine id itself from leaving the machine.

use std::path::Path;

use anyhow::bail;
use sha2::{Digest, Sha256};

/// Where the machine id is read from, in order.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

const DOMAIN: &str = "securegate-device-v1\n";

/// The fingerprint of a machine id (the file's content; surrounding whitespace is
/// ignored).
pub fn fingerprint_of(machine_id: &str) -> anyhow::Result<String> {
    let id = machine_id.trim();
    if id.is_empty() {
        bail!("the machine id is empty");
    }
    let digest = Sha256::new()
        .chain_update(DOMAIN.as_bytes())
        .chain_update(id.as_bytes())
        .finalize();
    let hex = hex::encode(digest);
    Ok(format!("sgd_{}", &hex[..32]))
}

/// This machine's fingerprint, from the first of `files` that exists.
pub fn fingerprint_from(files: &[&str]) -> anyhow::Result<String> {
    for file in files {
        match std::fs::read_to_string(Path::new(file)) {
            Ok(text) if !text.trim().is_empty() => return fingerprint_of(&text),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => bail!("cannot read {file}: {e}"),
        }
    }
    bail!(
        "this machine has no machine id ({}), which the device fingerprint is derived from: create one with `systemd-machine-id-setup` or `dbus-uuidgen --ensure`",
        files.join(", ")
    )
}

/// This machine's fingerprint.
pub fn fingerprint() -> anyhow::Result<String> {
    fingerprint_from(&MACHINE_ID_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // python3 -c 'import hashlib; print(hashlib.sha256(
        //     b"securegate-device-v1\n3d1219c7c4c5404aaa1f6d2a48adfda4").hexdigest()[:32])'
        let fp = fingerprint_of("3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        assert_eq!(fp, "sgd_2e24609e995ebdb9262704234be7ad9f");
        assert_eq!(fp.len(), 4 + 32);
        assert!(
            fp[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn stable_and_distinct() {
        let a = fingerprint_of("aaaa").unwrap();
        assert_eq!(a, fingerprint_of("  aaaa\n").unwrap());
        assert_ne!(a, fingerprint_of("aaab").unwrap());
        // Not a bare hash of the machine id.
        assert!(!hex::encode(Sha256::digest(b"aaaa")).starts_with(&a[4..]));
    }

    #[test]
    fn empty_machine_id_is_an_error() {
        assert!(fingerprint_of(" \n").is_err());
    }

    #[test]
    fn reads_the_first_file_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        let second = dir.path().join("second");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::write(&second, "abcd\n").unwrap();
        let files = [
            missing.to_str().unwrap(),
            empty.to_str().unwrap(),
            second.to_str().unwrap(),
        ];
        assert_eq!(
            fingerprint_from(&files).unwrap(),
            fingerprint_of("abcd").unwrap()
        );
        let err = fingerprint_from(&files[..2]).unwrap_err().to_string();
        assert!(err.contains("no machine id"), "{err}");
    }
}
