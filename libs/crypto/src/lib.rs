//! Envelope encryption of provider secrets.
//!
//! Each secret is sealed with AES-256-GCM under its own data key; the data key is
//! wrapped by a key-encryption key held by a [`Kms`]. The [`EncryptionContext`]
//! (tenant, project, connection) is bound twice: the KMS wraps the data key under it and
//! the same canonical bytes are the AEAD associated data of the secret, so a sealed
//! secret copied to another tenant or connection cannot be opened.
//!
//! **Architecture invariant:** plaintext secrets exist only inside this crate's
//! zeroizing types ([`SecretString`], data keys); their `Debug` is redacted.
#![forbid(unsafe_code)]

mod cache;
mod local;
mod sealed;
mod secret;

use std::collections::BTreeMap;

use async_trait::async_trait;
use zeroize::Zeroizing;

pub use cache::{DataKeyCache, DataKeyCacheConfig, DataKeyCacheStats};
pub use local::{LocalKms, generate_master_key_file};
pub use sealed::{SEALED_VERSION, SealedSecret, open, seal};
pub use secret::SecretString;

/// Who a secret belongs to. Bound into the KMS wrap and the AEAD associated data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.0.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The pairs, sorted by key (as AWS KMS expects them).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Canonical bytes: `key=value` lines, sorted by key, each value length-prefixed so
    /// that no two contexts share an encoding.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(format!("{}:{k}={}:{v}\n", k.len(), v.len()).as_bytes());
        }
        out
    }
}

/// A fresh data key: the plaintext (zeroized on drop) and its wrapped form.
pub struct DataKey {
    pub plaintext: Zeroizing<[u8; 32]>,
    pub wrapped: Vec<u8>,
    /// The key-encryption key that wrapped it (KMS key id / ARN, or the local key's id).
    pub kek_id: String,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"[REDACTED]")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// What can go wrong sealing or opening.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext, the wrapped key or the context do not match: tampered, moved to
    /// another tenant/connection, or wrapped by another key.
    #[error("the sealed secret cannot be opened: wrong key, wrong context or tampered data")]
    Integrity,
    /// The sealed value is not in a format this version understands.
    #[error("malformed sealed secret: {0}")]
    Malformed(String),
    /// The KMS refused (permissions, disabled key, wrong context).
    #[error("kms refused: {0}")]
    KmsRefused(String),
    /// The KMS is unreachable or throttling; retry later.
    #[error("kms unavailable: {0}")]
    KmsUnavailable(String),
    /// Configuration problem (unreadable master key file, bad key length).
    #[error("crypto configuration: {0}")]
    Config(String),
}

/// A key-management service that wraps and unwraps data keys.
///
/// Least privilege: sealing needs only [`Kms::generate_data_key`]; opening needs only
/// [`Kms::decrypt_data_key`].
#[async_trait]
pub trait Kms: Send + Sync + 'static {
    /// `"local"` or `"aws"`; recorded in sealed secrets.
    fn kind(&self) -> &'static str;

    /// A new 256-bit data key, wrapped under `context`.
    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError>;

    /// Unwraps a data key wrapped by `kek_id` under `context`.
    async fn decrypt_data_key(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError>;

    /// Re-wraps a data key under `new_kek_id` without its plaintext leaving the KMS;
    /// returns the new wrapped key and the new key's id. Not every KMS can.
    async fn rewrap(
        &self,
        _kek_id: &str,
        _wrapped: &[u8],
        _context: &EncryptionContext,
        _new_kek_id: &str,
    ) -> Result<(Vec<u8>, String), CryptoError> {
        Err(CryptoError::KmsRefused(format!(
            "the {} KMS cannot re-wrap data keys",
            self.kind()
        )))
    }
}
