//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): HMAC-SHA256 over
//! `{id}.{timestamp}.{body}` keyed with the secret's decoded bytes, sent as
//! `webhook-signature: v1,<base64>` beside `webhook-id` and `webhook-timestamp`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::KeyInit;
use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::channels::WebhookSecret;

/// Header carrying the message id (the same for every retry of a message).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the signing time, in unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a timestamp may be from the verifier's clock, either way (5 minutes).
pub const TOLERANCE_SECS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

/// The three headers of a signed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, unix seconds.
    pub timestamp: i64,
    /// `webhook-signature`, `v1,<base64>`.
    pub signature: String,
}

/// SHA-256's block size: HMAC pads (or first hashes) its key to this length.
const BLOCK: usize = 64;

fn mac(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC's key preparation (RFC 2104): a key longer than a block is hashed, then the
    // key is zero-padded to a block. Done here so the key type is infallible.
    let key = secret.key();
    let mut block = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        let digest = Sha256::digest(key);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <HmacSha256 as KeyInit>::new(GenericArray::from_slice(&block[..]));
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value for a message: `v1,` and the standard base64 of
/// HMAC-SHA256(secret key, `{msg_id}.{timestamp}.{body}`).
#[must_use]
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, msg_id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// The headers for delivering `body` as message `msg_id` at `timestamp`.
#[must_use]
pub fn signed_headers(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> SignedHeaders {
    SignedHeaders {
        id: msg_id.to_owned(),
        timestamp,
        signature: sign(secret, msg_id, timestamp, body),
    }
}

/// Why a delivery's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not an integer.
    #[error("invalid webhook-timestamp")]
    InvalidTimestamp,
    /// The timestamp is more than [`TOLERANCE_SECS`] in the past.
    #[error("webhook-timestamp too old")]
    TooOld,
    /// The timestamp is more than [`TOLERANCE_SECS`] in the future.
    #[error("webhook-timestamp too far in the future")]
    TooNew,
    /// No `v1` signature in the header matches.
    #[error("no matching signature")]
    NoMatch,
}

/// Verifies a delivery as a receiver does: the timestamp within [`TOLERANCE_SECS`] of
/// `now` (unix seconds), and one of the space-separated `v1,<base64>` signatures
/// matching (compared in constant time). Other versions are ignored.
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    if now.saturating_sub(ts) > TOLERANCE_SECS {
        return Err(VerifyError::TooOld);
    }
    if ts.saturating_sub(now) > TOLERANCE_SECS {
        return Err(VerifyError::TooNew);
    }
    let expected = mac(secret, msg_id, ts, body);
    let matched = signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|sig| expected.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const MSG_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(SECRET).unwrap()
    }

    #[test]
    fn signs_the_published_test_vector() {
        assert_eq!(sign(&secret(), MSG_ID, TIMESTAMP, BODY), SIGNATURE);
        let headers = signed_headers(&secret(), MSG_ID, TIMESTAMP, BODY);
        assert_eq!(headers.signature, SIGNATURE);
        assert_eq!(headers.id, MSG_ID);
    }

    #[test]
    fn verifies_the_published_test_vector() {
        let ts = TIMESTAMP.to_string();
        verify(&secret(), MSG_ID, &ts, SIGNATURE, BODY, TIMESTAMP + 10).unwrap();
        // Among several signatures, and with other versions present.
        let several = format!(
            "v1a,abc v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= {SIGNATURE} v1,not-base64"
        );
        verify(&secret(), MSG_ID, &ts, &several, BODY, TIMESTAMP).unwrap();
    }

    #[test]
    fn refuses_tampering_and_stale_timestamps() {
        let ts = TIMESTAMP.to_string();
        let s = secret();
        assert_eq!(
            verify(&s, MSG_ID, &ts, SIGNATURE, b"{}", TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, "msg_other", &ts, SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        let later = (TIMESTAMP + 1).to_string();
        assert_eq!(
            verify(&s, MSG_ID, &later, SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, MSG_ID, &ts, "v1,", BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, MSG_ID, &ts, &SIGNATURE[..8], BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &s,
                MSG_ID,
                &ts,
                "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                BODY,
                TIMESTAMP
            ),
            Err(VerifyError::NoMatch)
        );
        let other = WebhookSecret::generate();
        assert_eq!(
            verify(&other, MSG_ID, &ts, SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &s,
                MSG_ID,
                &ts,
                SIGNATURE,
                BODY,
                TIMESTAMP + TOLERANCE_SECS + 1
            ),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            verify(
                &s,
                MSG_ID,
                &ts,
                SIGNATURE,
                BODY,
                TIMESTAMP - TOLERANCE_SECS - 1
            ),
            Err(VerifyError::TooNew)
        );
        assert_eq!(
            verify(&s, MSG_ID, "soon", SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::InvalidTimestamp)
        );
    }

    #[test]
    fn key_preparation_matches_the_hmac_crate() {
        use base64::Engine as _;
        for len in [24usize, 32, 63, 64] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let secret = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode(&key))).unwrap();
            let mut reference = <HmacSha256 as KeyInit>::new_from_slice(&key).unwrap();
            reference.update(b"m.1.{}");
            let expected = format!("v1,{}", STANDARD.encode(reference.finalize().into_bytes()));
            assert_eq!(sign(&secret, "m", 1, b"{}"), expected, "key of {len} bytes");
        }
    }

    #[test]
    fn round_trips_with_generated_secrets() {
        let s = WebhookSecret::generate();
        let body = br#"{"type":"key.ip_mismatch"}"#;
        let sig = sign(&s, "alrt_1", 1_700_000_000, body);
        verify(&s, "alrt_1", "1700000000", &sig, body, 1_700_000_100).unwrap();
    }
}
