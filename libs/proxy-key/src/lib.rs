//! The proxy-key format: `SG_` + 32 base62 characters of randomness (≈190.5 bits) +
//! 6 base62 characters of CRC32 checksum over the random part.
//!
//! The checksum lets the gateway reject a mistyped or truncated key before any lookup,
//! and lets secret scanners match leaked keys with few false positives. Only the SHA-256
//! of a key is ever stored ([`KeyHash`]); the plaintext lives in a zeroizing
//! [`ProxyKey`] whose `Debug` is redacted and is shown to its owner exactly once.
#![forbid(unsafe_code)]

use std::fmt;

use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every proxy key starts with this.
pub const PREFIX: &str = "SG_";
/// Base62 characters of randomness: 32 × log2(62) ≈ 190.5 bits.
pub const RANDOM_LEN: usize = 32;
/// Base62 characters of checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a proxy key. Says nothing about the key's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("a SecureGate key starts with \"SG_\"")]
    MissingPrefix,
    #[error("a SecureGate key is {KEY_LEN} characters long")]
    WrongLength,
    #[error("a SecureGate key contains only letters and digits after \"SG_\"")]
    InvalidCharacter,
    #[error("the key's checksum does not match: it was mistyped or truncated")]
    BadChecksum,
}

/// A plaintext proxy key. Zeroized on drop; `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyKey(Zeroizing<String>);

impl ProxyKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut s = Zeroizing::new(String::with_capacity(KEY_LEN));
        s.push_str(PREFIX);
        let mut rng = rand::rngs::OsRng;
        for _ in 0..RANDOM_LEN {
            s.push(char::from(rng.sample(Alphanumeric)));
        }
        let checksum = checksum(&s[PREFIX.len()..]);
        s.push_str(&checksum);
        ProxyKey(s)
    }

    /// Checks the format and the checksum; does no lookup.
    pub fn parse(candidate: &str) -> Result<Self, KeyFormatError> {
        let rest = candidate
            .strip_prefix(PREFIX)
            .ok_or(KeyFormatError::MissingPrefix)?;
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyFormatError::InvalidCharacter);
        }
        if rest.len() != RANDOM_LEN + CHECKSUM_LEN {
            return Err(KeyFormatError::WrongLength);
        }
        let (random, sum) = rest.split_at(RANDOM_LEN);
        if checksum(random) != sum {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(ProxyKey(Zeroizing::new(candidate.to_owned())))
    }

    /// The plaintext, for the one response that shows it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stored form.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }

    /// A display hint that reveals no randomness: the prefix and the last four checksum
    /// characters, e.g. `SG_…x9Qa`.
    pub fn hint(&self) -> String {
        let tail = &self.0[self.0.len() - 4..];
        format!("{PREFIX}…{tail}")
    }
}

impl fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyKey([REDACTED])")
    }
}

/// SHA-256 of a proxy key. Keys carry ≥190 bits of randomness, so a fast hash is
/// enough: there is nothing to brute-force.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Every admin API token starts with this.
pub const ADMIN_TOKEN_PREFIX: &str = "SGA_";

/// A plaintext admin API token: `SGA_` + the same random part and checksum as a proxy
/// key. Zeroized on drop; `Debug` never prints it. Stored only as its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Zeroizing<String>);

impl AdminToken {
    /// A fresh token from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let key = ProxyKey::generate();
        let mut s = Zeroizing::new(String::with_capacity(
            ADMIN_TOKEN_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN,
        ));
        s.push_str(ADMIN_TOKEN_PREFIX);
        s.push_str(&key.0[PREFIX.len()..]);
        AdminToken(s)
    }

    /// Checks the format and the checksum; does no lookup.
    pub fn parse(candidate: &str) -> Result<Self, KeyFormatError> {
        let rest = candidate
            .strip_prefix(ADMIN_TOKEN_PREFIX)
            .ok_or(KeyFormatError::MissingPrefix)?;
        // The same rules as a proxy key's part after its prefix.
        ProxyKey::parse(&format!("{PREFIX}{rest}"))?;
        Ok(AdminToken(Zeroizing::new(candidate.to_owned())))
    }

    /// The plaintext, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stored form: hex SHA-256.
    pub fn hash_hex(&self) -> String {
        KeyHash::of(&self.0).to_hex()
    }

    /// A display hint that reveals no randomness: `SGA_…` and four checksum characters.
    pub fn hint(&self) -> String {
        let tail = &self.0[self.0.len() - 4..];
        format!("{ADMIN_TOKEN_PREFIX}…{tail}")
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken([REDACTED])")
    }
}

fn checksum(random: &str) -> String {
    let mut n = crc32fast::hash(random.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_parse_and_have_the_documented_shape() {
        for _ in 0..200 {
            let key = ProxyKey::generate();
            assert_eq!(key.expose().len(), KEY_LEN);
            assert!(key.expose().starts_with(PREFIX));
            assert_eq!(ProxyKey::parse(key.expose()), Ok(key.clone()));
        }
    }

    #[test]
    fn keys_are_distinct_and_hash_stably() {
        let a = ProxyKey::generate();
        let b = ProxyKey::generate();
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), ProxyKey::parse(a.expose()).unwrap().hash());
        assert_eq!(KeyHash::from_hex(&a.hash().to_hex()), Some(a.hash()));
    }

    #[test]
    fn admin_tokens_have_their_own_prefix_and_the_same_checksum() {
        let token = AdminToken::generate();
        let t = token.expose();
        assert!(t.starts_with("SGA_") && t.len() == KEY_LEN + 1);
        assert_eq!(AdminToken::parse(t), Ok(token.clone()));
        assert!(ProxyKey::parse(t).is_err(), "a token is not a proxy key");
        assert!(AdminToken::parse(ProxyKey::generate().expose()).is_err());
        let typo = format!(
            "{}{}",
            &t[..t.len() - 1],
            if t.ends_with('A') { 'B' } else { 'A' }
        );
        assert_eq!(AdminToken::parse(&typo), Err(KeyFormatError::BadChecksum));
        assert_eq!(token.hash_hex().len(), 64);
        assert!(token.hint().starts_with("SGA_…"));
        assert!(!format!("{token:?}").contains(&t[4..]));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ProxyKey::generate();
        let printed = format!("{key:?} {:?}", key.hash());
        assert!(!printed.contains(&key.expose()[3..]));
        assert!(printed.contains("REDACTED"));
    }

    #[test]
    fn hint_reveals_only_checksum_characters() {
        let key = ProxyKey::generate();
        let hint = key.hint();
        assert!(hint.starts_with("SG_…"));
        assert_eq!(&hint["SG_…".len()..], &key.expose()[KEY_LEN - 4..]);
    }

    #[test]
    fn malformed_keys_are_rejected_with_the_right_reason() {
        let key = ProxyKey::generate();
        let k = key.expose();
        assert_eq!(ProxyKey::parse(""), Err(KeyFormatError::MissingPrefix));
        assert_eq!(ProxyKey::parse(&k[3..]), Err(KeyFormatError::MissingPrefix));
        assert_eq!(
            ProxyKey::parse(&k[..k.len() - 1]),
            Err(KeyFormatError::WrongLength)
        );
        assert_eq!(
            ProxyKey::parse(&format!("{k}A")),
            Err(KeyFormatError::WrongLength)
        );
        let with_dash = format!("{}-{}", &k[..10], &k[11..]);
        assert_eq!(
            ProxyKey::parse(&with_dash),
            Err(KeyFormatError::InvalidCharacter)
        );
        assert_eq!(
            ProxyKey::parse("SG_ünïcödé"),
            Err(KeyFormatError::InvalidCharacter)
        );
    }

    proptest! {
        #[test]
        fn any_single_character_typo_is_caught(pos in 3usize..KEY_LEN, replacement in 0usize..62) {
            let key = ProxyKey::generate();
            let mut bytes = key.expose().as_bytes().to_vec();
            let new = ALPHABET[replacement];
            prop_assume!(bytes[pos] != new);
            bytes[pos] = new;
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(ProxyKey::parse(&typo), Err(KeyFormatError::BadChecksum));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            let _ = ProxyKey::parse(&s);
        }

        #[test]
        fn near_keys_never_panic_and_only_valid_ones_parse(
            body in "[0-9A-Za-z]{30,40}",
            prefix in prop_oneof![Just("SG_"), Just("sg_"), Just("SG-"), Just("")],
        ) {
            let candidate = format!("{prefix}{body}");
            if let Ok(key) = ProxyKey::parse(&candidate) {
                // Whatever parses is canonical: it prints back to itself and hashes stably.
                prop_assert_eq!(key.expose(), candidate.as_str());
                prop_assert_eq!(key.hash(), ProxyKey::parse(key.expose()).unwrap().hash());
            }
        }

        #[test]
        fn generated_keys_round_trip(_seed in any::<u64>()) {
            let key = ProxyKey::generate();
            let parsed = ProxyKey::parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.expose(), key.expose());
            prop_assert_eq!(parsed.hash(), key.hash());
            prop_assert_eq!(KeyHash::from_hex(&key.hash().to_hex()), Some(key.hash()));
        }
    }
}
