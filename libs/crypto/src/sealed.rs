use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{CryptoError, EncryptionContext, Kms, SecretString};

/// The sealed format's version.
pub const SEALED_VERSION: u8 = 1;

/// A provider secret sealed under its own data key. Safe to store and to log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// Format version ([`SEALED_VERSION`]).
    pub v: u8,
    /// Which KMS wrapped the data key: `local` or `aws`.
    pub kms: String,
    /// The key-encryption key's id.
    pub kek_id: String,
    /// The wrapped data key, base64.
    pub wrapped_key: String,
    /// The 96-bit AES-GCM nonce, base64.
    pub nonce: String,
    /// AES-256-GCM ciphertext with its tag, base64.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("v", &self.v)
            .field("kms", &self.kms)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// Seals `plaintext` for `context`.
pub async fn seal(
    kms: &dyn Kms,
    context: &EncryptionContext,
    plaintext: &SecretString,
) -> Result<SealedSecret, CryptoError> {
    let data_key = kms.generate_data_key(context).await?;
    let cipher = Aes256Gcm::new_from_slice(data_key.plaintext.as_slice())
        .map_err(|_| CryptoError::Config("data key is not 256 bits".into()))?;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = context.canonical_bytes();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext.expose().as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Integrity)?;
    Ok(SealedSecret {
        v: SEALED_VERSION,
        kms: kms.kind().to_owned(),
        kek_id: data_key.kek_id,
        wrapped_key: B64.encode(&data_key.wrapped),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ciphertext),
    })
}

/// Opens a sealed secret; fails if the context differs from the one it was sealed for.
pub async fn open(
    kms: &dyn Kms,
    context: &EncryptionContext,
    sealed: &SealedSecret,
) -> Result<SecretString, CryptoError> {
    if sealed.v != SEALED_VERSION {
        return Err(CryptoError::Malformed(format!(
            "unsupported sealed format version {}",
            sealed.v
        )));
    }
    if sealed.kms != kms.kind() {
        return Err(CryptoError::Malformed(format!(
            "sealed by a {} kms, opened with a {} kms",
            sealed.kms,
            kms.kind()
        )));
    }
    let decode = |what: &str, s: &str| {
        B64.decode(s)
            .map_err(|_| CryptoError::Malformed(format!("{what} is not base64")))
    };
    let wrapped = decode("wrapped_key", &sealed.wrapped_key)?;
    let nonce = decode("nonce", &sealed.nonce)?;
    let ciphertext = decode("ciphertext", &sealed.ciphertext)?;
    if nonce.len() != 12 {
        return Err(CryptoError::Malformed("nonce is not 96 bits".into()));
    }
    let data_key = kms
        .decrypt_data_key(&sealed.kek_id, &wrapped, context)
        .await?;
    let cipher = Aes256Gcm::new_from_slice(data_key.as_slice())
        .map_err(|_| CryptoError::Config("data key is not 256 bits".into()))?;
    let aad = context.canonical_bytes();
    let plaintext = zeroize::Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Integrity)?,
    );
    let text = std::str::from_utf8(&plaintext).map_err(|_| CryptoError::Integrity)?;
    Ok(SecretString::new(text.to_owned()))
}
