//! Edge → egress attestations.
//!
//! In a split deployment the edge authenticates and authorises a request, then hands it
//! to an egress node (the only role that can open provider credentials) with an
//! attestation: Ed25519-signed claims saying which edge node authorised it, for which
//! key, connection and model, for which exact request (method, path, SHA-256 of the
//! body), and until when. The egress trusts only the public keys it is configured with,
//! refuses anything unsigned, tampered, expired, for another request, or replayed.
//!
//! Pure: the caller supplies the time and keeps the replay cache.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The request header carrying the attestation.
pub const HEADER: &str = "x-securegate-attestation";
/// How long an attestation is valid after it is issued.
pub const DEFAULT_TTL_SECS: u64 = 30;
/// Clock difference tolerated between edge and egress.
pub const CLOCK_SKEW_SECS: u64 = 5;
/// The claims' format version.
pub const VERSION: u8 = 1;

/// What the edge vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub v: u8,
    /// The edge node that authorised the request.
    pub iss: String,
    /// A unique id for this request (replay protection).
    pub jti: String,
    pub tenant_id: String,
    pub project_id: String,
    pub key_id: String,
    pub connection_id: String,
    /// The model the provider runs (after the project's model registry).
    pub model: Option<String>,
    pub method: String,
    /// Path and query as sent to the egress.
    pub path: String,
    /// Hex SHA-256 of the request body as sent to the egress.
    pub body_sha256: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Why an attestation was refused. Deliberately coarse towards the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("no attestation")]
    Missing,
    #[error("malformed attestation")]
    Malformed,
    #[error("attestation signed by an untrusted key")]
    UntrustedSigner,
    #[error("attestation signature invalid")]
    BadSignature,
    #[error("attestation expired or not yet valid")]
    Expired,
    #[error("attestation is for another request")]
    WrongRequest,
    #[error("attestation format version not supported")]
    Version,
    #[error("malformed key: {0}")]
    Key(String),
}

/// Hex SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// An edge node's signing key. `Debug` is redacted.
pub struct EdgeSigner {
    key: SigningKey,
}

impl std::fmt::Debug for EdgeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSigner")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl EdgeSigner {
    /// A new random signing key.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut_slice());
        EdgeSigner {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// From the base64 of a 32-byte seed (the signing key file's content).
    pub fn from_base64(text: &str) -> Result<Self, AttestError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| AttestError::Key("signing key is not base64".into()))?,
        );
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| AttestError::Key("signing key must be 32 bytes".into()))?;
        let seed = Zeroizing::new(seed);
        Ok(EdgeSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The seed, base64, for writing the key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.to_bytes()))
    }

    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// Signs claims into a header value: `base64url(claims).base64url(signature)`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signature = self.key.sign(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// The egress side: the edge public keys it trusts.
#[derive(Debug, Clone)]
pub struct Verifier {
    trusted: Vec<VerifyingKey>,
}

/// The request the egress actually received, which the claims must match.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

impl Verifier {
    /// From base64 public keys (one per edge signing key).
    pub fn from_base64<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Self, AttestError> {
        let mut trusted = Vec::new();
        for k in keys {
            let k = k.trim();
            if k.is_empty() {
                continue;
            }
            let bytes: [u8; 32] = STANDARD
                .decode(k)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| AttestError::Key("public key must be 32 bytes, base64".into()))?;
            trusted.push(
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| AttestError::Key("not an Ed25519 public key".into()))?,
            );
        }
        if trusted.is_empty() {
            return Err(AttestError::Key("no trusted edge public key".into()));
        }
        Ok(Verifier { trusted })
    }

    /// Checks an attestation against the request received at `now` (Unix seconds).
    /// The caller must still reject a `jti` it has seen before (until `exp`).
    pub fn verify(
        &self,
        token: &str,
        received: Received<'_>,
        now: u64,
    ) -> Result<Claims, AttestError> {
        let (payload_b64, sig_b64) = token.split_once('.').ok_or(AttestError::Malformed)?;
        if payload_b64.len() > 8192 {
            return Err(AttestError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AttestError::Malformed)?;
        let sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AttestError::Malformed)?;
        let signature = Signature::from_bytes(&sig);
        let mut signed_by_trusted = false;
        for key in &self.trusted {
            if key.verify_strict(&payload, &signature).is_ok() {
                signed_by_trusted = true;
                break;
            }
        }
        if !signed_by_trusted {
            return Err(AttestError::BadSignature);
        }
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| AttestError::Malformed)?;
        if claims.v != VERSION {
            return Err(AttestError::Version);
        }
        if now + CLOCK_SKEW_SECS < claims.iat
            || now > claims.exp + CLOCK_SKEW_SECS
            || claims.exp < claims.iat
        {
            return Err(AttestError::Expired);
        }
        if !claims.method.eq_ignore_ascii_case(received.method)
            || claims.path != received.path
            || claims.body_sha256 != body_sha256(received.body)
        {
            return Err(AttestError::WrongRequest);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64, body: &[u8]) -> Claims {
        Claims {
            v: VERSION,
            iss: "edge-1".into(),
            jti: "req-1".into(),
            tenant_id: "ten_a".into(),
            project_id: "prj_a".into(),
            key_id: "key_a".into(),
            connection_id: "openai_a".into(),
            model: Some("gpt-4o".into()),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            body_sha256: body_sha256(body),
            iat: now,
            exp: now + DEFAULT_TTL_SECS,
        }
    }

    fn received(body: &[u8]) -> Received<'_> {
        Received {
            method: "POST",
            path: "/v1/chat/completions",
            body,
        }
    }

    #[test]
    fn a_valid_attestation_verifies() {
        let signer = EdgeSigner::generate();
        let verifier = Verifier::from_base64([signer.public_key_base64().as_str()]).unwrap();
        let token = signer.sign(&claims(1000, b"{}"));
        assert_eq!(
            verifier
                .verify(&token, received(b"{}"), 1010)
                .unwrap()
                .key_id,
            "key_a"
        );
    }

    #[test]
    fn forged_expired_or_misused_attestations_are_refused() {
        let signer = EdgeSigner::generate();
        let verifier = Verifier::from_base64([signer.public_key_base64().as_str()]).unwrap();
        let token = signer.sign(&claims(1000, b"{}"));
        // Another signer.
        let other = EdgeSigner::generate().sign(&claims(1000, b"{}"));
        assert_eq!(
            verifier.verify(&other, received(b"{}"), 1000),
            Err(AttestError::BadSignature)
        );
        // Tampered claims keep the old signature.
        let (_, sig) = token.split_once('.').unwrap();
        let mut forged = claims(1000, b"{}");
        forged.key_id = "key_other".into();
        let forged = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap())
        );
        assert_eq!(
            verifier.verify(&forged, received(b"{}"), 1000),
            Err(AttestError::BadSignature)
        );
        // Expired, and from the future.
        assert_eq!(
            verifier.verify(
                &token,
                received(b"{}"),
                1000 + DEFAULT_TTL_SECS + CLOCK_SKEW_SECS + 1
            ),
            Err(AttestError::Expired)
        );
        assert_eq!(
            verifier.verify(&token, received(b"{}"), 1000 - CLOCK_SKEW_SECS - 1),
            Err(AttestError::Expired)
        );
        // Another body, path or method.
        assert_eq!(
            verifier.verify(&token, received(b"{\"x\":1}"), 1000),
            Err(AttestError::WrongRequest)
        );
        let other_path = Received {
            path: "/v1/embeddings",
            ..received(b"{}")
        };
        assert_eq!(
            verifier.verify(&token, other_path, 1000),
            Err(AttestError::WrongRequest)
        );
        // Garbage.
        for junk in ["", ".", "abc", "a.b", &"x".repeat(10_000)] {
            assert!(verifier.verify(junk, received(b"{}"), 1000).is_err());
        }
    }

    #[test]
    fn keys_round_trip_and_debug_is_redacted() {
        let signer = EdgeSigner::generate();
        let again = EdgeSigner::from_base64(&signer.to_base64()).unwrap();
        assert_eq!(signer.public_key_base64(), again.public_key_base64());
        assert!(!format!("{signer:?}").contains(signer.to_base64().as_str()));
        assert!(Verifier::from_base64(["nope"]).is_err());
        assert!(Verifier::from_base64([""]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_verify(s in ".{0,300}") {
            let signer = EdgeSigner::generate();
            let verifier = Verifier::from_base64([signer.public_key_base64().as_str()]).unwrap();
            proptest::prop_assert!(verifier.verify(&s, received(b""), 0).is_err());
        }
    }
}
