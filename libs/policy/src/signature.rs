//! Ed25519 request signatures.
//!
//! # Wire format (public contract for client SDKs)
//!
//! A signed request carries two headers:
//!
//! * `x-sg-timestamp: <unix seconds>` — ASCII decimal digits, no sign, no
//!   leading zeros (`0` itself is allowed), at most 200 characters.
//! * `x-sg-signature: <base64>` — standard base64 alphabet (`+`, `/`),
//!   padding optional, of the 64-byte Ed25519 signature; at most 200
//!   characters.
//!
//! The signed message is the UTF-8 string
//!
//! ```text
//! "SG1\n" + timestamp + "\n" + METHOD + "\n" + path_and_query + "\n" + hex(sha256(body))
//! ```
//!
//! where
//!
//! * `timestamp` is exactly the `x-sg-timestamp` value;
//! * `METHOD` is the HTTP method, ASCII upper-case (`POST`);
//! * `path_and_query` is the request target as sent on the wire: the path,
//!   plus `?` and the query if there is one, without scheme or host, not
//!   percent-decoded or otherwise normalized (`/v1/chat/completions`,
//!   `/v1/models?limit=5`);
//! * `hex(sha256(body))` is the lower-case hex SHA-256 of the exact body
//!   bytes sent (for an empty body
//!   `e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`).
//!
//! There is no trailing newline. The signature is accepted while the server
//! time is within 300 seconds of the timestamp, in either direction, and each
//! signature is accepted only once.
//!
//! [`sign`] is the reference implementation. In Python, with the
//! `cryptography` package:
//!
//! ```python
//! import base64, hashlib, time
//! from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
//!
//! def sg_signature_headers(key: Ed25519PrivateKey, method: str,
//!                          path_and_query: str, body: bytes) -> dict:
//!     ts = str(int(time.time()))
//!     message = "\n".join([
//!         "SG1", ts, method.upper(), path_and_query,
//!         hashlib.sha256(body).hexdigest(),
//!     ])
//!     signature = key.sign(message.encode("utf-8"))
//!     return {
//!         "x-sg-timestamp": ts,
//!         "x-sg-signature": base64.b64encode(signature).decode("ascii"),
//!     }
//!
//! # key = Ed25519PrivateKey.from_private_bytes(seed_32_bytes)
//! # headers = sg_signature_headers(key, "POST", "/v1/chat/completions", body)
//! ```
//!
//! The owner registers the matching public key (32 bytes, base64) on the
//! proxy key's signature lock.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::lock::SignatureLock;

/// Header carrying the signing timestamp.
pub const TIMESTAMP_HEADER: &str = "x-sg-timestamp";
/// Header carrying the base64 signature.
pub const SIGNATURE_HEADER: &str = "x-sg-signature";
/// Longest accepted value of either header, in characters.
pub const MAX_HEADER_LEN: usize = 200;

/// Standard alphabet; padding optional; canonical trailing bits required.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed signature and the request facts it must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedRequest<'a> {
    /// Value of `x-sg-timestamp`.
    pub timestamp: i64,
    /// Decoded `x-sg-signature`.
    pub signature: [u8; 64],
    /// HTTP method as received (upper-cased when signing).
    pub method: &'a str,
    /// Request target path and query, exactly as received.
    pub path_and_query: &'a str,
    /// SHA-256 of the exact body bytes.
    pub body_sha256: [u8; 32],
}

/// Why the signature headers could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureParseError {
    /// `x-sg-signature` was sent without `x-sg-timestamp`.
    #[error("x-sg-signature was sent without x-sg-timestamp")]
    MissingTimestamp,
    /// `x-sg-timestamp` was sent without `x-sg-signature`.
    #[error("x-sg-timestamp was sent without x-sg-signature")]
    MissingSignature,
    /// A header is longer than [`MAX_HEADER_LEN`].
    #[error("a request-signature header is longer than 200 characters")]
    TooLong,
    /// The timestamp is not canonical decimal unix seconds that fit an i64.
    #[error("x-sg-timestamp must be unix seconds in decimal digits")]
    InvalidTimestamp,
    /// The signature is not valid standard base64.
    #[error("x-sg-signature must be standard base64")]
    InvalidEncoding,
    /// The signature does not decode to 64 bytes.
    #[error("x-sg-signature must decode to a 64-byte Ed25519 signature")]
    InvalidLength,
}

/// Why a public key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// Not base64, or not 32 bytes.
    #[error("public key must be 32 bytes in standard base64")]
    Encoding,
    /// Not a valid Ed25519 point, or a weak (small-order) key.
    #[error("public key is not a usable Ed25519 public key")]
    Invalid,
}

/// Reads the two signature headers. Both absent → `Ok(None)`. Surrounding
/// ASCII whitespace is ignored.
///
/// # Errors
///
/// One header without the other, either longer than [`MAX_HEADER_LEN`],
/// a timestamp that is not canonical decimal digits fitting an `i64`, bad
/// base64, or a signature that is not 64 bytes.
pub fn parse_signature_headers(
    timestamp: Option<&str>,
    signature: Option<&str>,
) -> Result<Option<(i64, [u8; 64])>, SignatureParseError> {
    let (ts, sig) = match (timestamp, signature) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(SignatureParseError::MissingSignature),
        (None, Some(_)) => return Err(SignatureParseError::MissingTimestamp),
        (Some(ts), Some(sig)) => (ts, sig),
    };
    if ts.len() > MAX_HEADER_LEN || sig.len() > MAX_HEADER_LEN {
        return Err(SignatureParseError::TooLong);
    }
    let ts = ts.trim_ascii();
    let sig = sig.trim_ascii();
    let canonical = !ts.is_empty()
        && ts.bytes().all(|b| b.is_ascii_digit())
        && (ts == "0" || !ts.starts_with('0'));
    if !canonical {
        return Err(SignatureParseError::InvalidTimestamp);
    }
    let ts: i64 = ts
        .parse()
        .map_err(|_| SignatureParseError::InvalidTimestamp)?;
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = B64.decode_slice(sig, &mut buf).map_err(|e| match e {
        base64::DecodeSliceError::OutputSliceTooSmall => SignatureParseError::InvalidLength,
        base64::DecodeSliceError::DecodeError(_) => SignatureParseError::InvalidEncoding,
    })?;
    let bytes: [u8; 64] = buf
        .get(..n)
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureParseError::InvalidLength)?;
    Ok(Some((ts, bytes)))
}

/// The exact message a client signs; see the [module docs](self).
#[must_use]
pub fn signing_message(
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    body_sha256: &[u8; 32],
) -> String {
    let mut msg = String::with_capacity(4 + 20 + 1 + method.len() + 1 + path_and_query.len() + 65);
    // Writing to a String cannot fail.
    let _ = write!(msg, "SG1\n{timestamp}\n");
    msg.extend(method.chars().map(|c| c.to_ascii_uppercase()));
    msg.push('\n');
    msg.push_str(path_and_query);
    msg.push('\n');
    for b in body_sha256 {
        let _ = write!(msg, "{b:02x}");
    }
    msg
}

/// SHA-256 of a request body, as [`SignedRequest::body_sha256`] expects.
#[must_use]
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Whether `req.signature` is a valid Ed25519 signature (strict
/// verification: canonical encodings, no weak keys) by the lock's key over
/// the request's signing message. Does not check the timestamp's freshness.
#[must_use]
pub fn verify(lock: &SignatureLock, req: &SignedRequest<'_>) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&lock.public_key) else {
        return false;
    };
    let msg = signing_message(
        req.timestamp,
        req.method,
        req.path_and_query,
        &req.body_sha256,
    );
    key.verify_strict(msg.as_bytes(), &Signature::from_bytes(&req.signature))
        .is_ok()
}

/// Reference client implementation: signs a request with the Ed25519
/// private key whose 32-byte seed is `signing_key_seed`.
#[must_use]
pub fn sign(
    signing_key_seed: &[u8; 32],
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    body_sha256: &[u8; 32],
) -> [u8; 64] {
    let key = SigningKey::from_bytes(signing_key_seed);
    let msg = signing_message(timestamp, method, path_and_query, body_sha256);
    key.sign(msg.as_bytes()).to_bytes()
}

/// The public key for a 32-byte private-key seed.
#[must_use]
pub fn public_key_from_seed(signing_key_seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(signing_key_seed)
        .verifying_key()
        .to_bytes()
}

/// Decodes and checks a base64 Ed25519 public key (standard alphabet,
/// padding optional).
///
/// # Errors
///
/// Not 32 bytes of base64, not a valid point, or a weak key.
pub fn decode_public_key(b64: &str) -> Result<[u8; 32], PublicKeyError> {
    if b64.len() > 64 {
        return Err(PublicKeyError::Encoding);
    }
    let mut buf = [0u8; 64];
    let n = B64
        .decode_slice(b64.trim_ascii(), &mut buf)
        .map_err(|_| PublicKeyError::Encoding)?;
    let key: [u8; 32] = buf
        .get(..n)
        .and_then(|b| b.try_into().ok())
        .ok_or(PublicKeyError::Encoding)?;
    let point = VerifyingKey::from_bytes(&key).map_err(|_| PublicKeyError::Invalid)?;
    if point.is_weak() {
        return Err(PublicKeyError::Invalid);
    }
    Ok(key)
}

/// Standard padded base64 of a signature, as clients send it.
#[must_use]
pub fn encode_signature(signature: &[u8; 64]) -> String {
    general_purpose::STANDARD.encode(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = signing_message(1_700_000_000, "post", "/v1/chat?x=1", &body_sha256(b""));
        assert_eq!(
            m,
            "SG1\n1700000000\nPOST\n/v1/chat?x=1\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_round_trip() {
        let sig = [7u8; 64];
        let b64 = encode_signature(&sig);
        assert_eq!(
            parse_signature_headers(Some("1700000000"), Some(&b64)),
            Ok(Some((1_700_000_000, sig)))
        );
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(
            parse_signature_headers(Some(" 0 "), Some(unpadded)),
            Ok(Some((0, sig)))
        );
    }

    #[test]
    fn parse_errors() {
        use SignatureParseError as E;
        let good = encode_signature(&[1u8; 64]);
        assert_eq!(parse_signature_headers(None, None), Ok(None));
        assert_eq!(
            parse_signature_headers(Some("1"), None),
            Err(E::MissingSignature)
        );
        assert_eq!(
            parse_signature_headers(None, Some(&good)),
            Err(E::MissingTimestamp)
        );
        for ts in [
            "",
            "-1",
            "+1",
            "01",
            "1.5",
            "abc",
            "9223372036854775808",
            "1 2",
        ] {
            assert_eq!(
                parse_signature_headers(Some(ts), Some(&good)),
                Err(E::InvalidTimestamp),
                "{ts:?}"
            );
        }
        assert_eq!(
            parse_signature_headers(Some("9223372036854775807"), Some(&good)),
            Ok(Some((i64::MAX, [1u8; 64])))
        );
        assert_eq!(
            parse_signature_headers(Some("1"), Some("not base64!")),
            Err(E::InvalidEncoding)
        );
        let short = encode_signature(&[1u8; 64]);
        let short = &short[..40];
        assert_eq!(
            parse_signature_headers(Some("1"), Some(short)),
            Err(E::InvalidLength)
        );
        let long = general_purpose::STANDARD.encode([1u8; 120]);
        assert_eq!(
            parse_signature_headers(Some("1"), Some(&long)),
            Err(E::InvalidLength)
        );
        let huge = "A".repeat(201);
        assert_eq!(
            parse_signature_headers(Some("1"), Some(&huge)),
            Err(E::TooLong)
        );
        assert_eq!(
            parse_signature_headers(Some(&huge), Some(&good)),
            Err(E::TooLong)
        );
        // URL-safe alphabet is not accepted.
        let url = good.replace('+', "-").replace('/', "_");
        if url != good {
            assert_eq!(
                parse_signature_headers(Some("1"), Some(&url)),
                Err(E::InvalidEncoding)
            );
        }
    }

    #[test]
    fn public_key_checks() {
        let pk = public_key_from_seed(&[9u8; 32]);
        let b64 = general_purpose::STANDARD.encode(pk);
        assert_eq!(decode_public_key(&b64), Ok(pk));
        assert_eq!(decode_public_key(b64.trim_end_matches('=')), Ok(pk));
        assert_eq!(decode_public_key("AAAA"), Err(PublicKeyError::Encoding));
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let b64 = general_purpose::STANDARD.encode(identity);
        assert_eq!(decode_public_key(&b64), Err(PublicKeyError::Invalid));
    }
}
