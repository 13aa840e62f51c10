use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{CryptoError, DataKey, EncryptionContext, Kms};

/// A KMS backed by one local 256-bit master key: for embedded mode and development.
///
/// The master key file holds the key base64-encoded (`head -c 32 /dev/urandom | base64`).
/// Anyone who can read that file can open every secret sealed under it.
pub struct LocalKms {
    master: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// From raw key bytes.
    pub fn from_bytes(master: Zeroizing<[u8; 32]>) -> Self {
        let digest = Sha256::digest(master.as_slice());
        let id = format!("local:{}", hex::encode(&digest[..8]));
        LocalKms { master, id }
    }

    /// Reads a base64-encoded 32-byte key from `path`.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CryptoError::Config(format!(
                "cannot read master key file {}: {e}",
                path.display()
            ))
        })?);
        let bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|_| {
            CryptoError::Config(format!(
                "master key file {} is not base64 (create one with `head -c 32 /dev/urandom | base64`)",
                path.display()
            ))
        })?);
        let master: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            CryptoError::Config(format!(
                "master key file {} must hold exactly 32 bytes, base64-encoded; it holds {}",
                path.display(),
                bytes.len()
            ))
        })?;
        Ok(Self::from_bytes(Zeroizing::new(master)))
    }

    /// The key's public id (a truncated SHA-256 of the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Result<Aes256Gcm, CryptoError> {
        Aes256Gcm::new_from_slice(self.master.as_slice())
            .map_err(|_| CryptoError::Config("master key is not 256 bits".into()))
    }
}

/// Writes a new random master key to `path` (mode 0600), failing if the file exists.
pub fn generate_master_key_file(path: &Path) -> Result<(), CryptoError> {
    use std::io::Write;
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut_slice());
    let encoded = Zeroizing::new(B64.encode(key.as_slice()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        CryptoError::Config(format!(
            "cannot create master key file {}: {e}",
            path.display()
        ))
    })?;
    file.write_all(encoded.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| CryptoError::Config(format!("cannot write {}: {e}", path.display())))
}

#[async_trait]
impl Kms for LocalKms {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let mut plaintext = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(plaintext.as_mut_slice());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = context.canonical_bytes();
        let ct = self
            .cipher()?
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_slice(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Integrity)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&ct);
        Ok(DataKey {
            plaintext,
            wrapped,
            kek_id: self.id.clone(),
        })
    }

    async fn decrypt_data_key(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        if kek_id != self.id {
            return Err(CryptoError::KmsRefused(format!(
                "sealed under master key {kek_id}, this node holds {}",
                self.id
            )));
        }
        if wrapped.len() < 12 {
            return Err(CryptoError::Malformed("wrapped key too short".into()));
        }
        let (nonce, ct) = wrapped.split_at(12);
        let aad = context.canonical_bytes();
        let pt = Zeroizing::new(
            self.cipher()?
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| CryptoError::Integrity)?,
        );
        let key: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("data key is not 256 bits".into()))?;
        Ok(Zeroizing::new(key))
    }
}
