//! Object identifiers: a type prefix and random lowercase base36, safe as NATS subject
//! tokens, URL path segments and SQL text.

use std::fmt;

use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const ID_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Random part of an id: `len` characters of base36.
pub fn random_suffix(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
        .collect()
}

/// Whether `s` is a well-formed id: 3–64 characters of `[a-z0-9_]`, starting with a letter.
pub fn is_valid_id(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An id was not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} id")]
pub struct IdError {
    pub kind: &'static str,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schemars(with = "String")]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                $name(format!(concat!($prefix, "_{}"), random_suffix($len)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                if is_valid_id(&s) { Ok($name(s)) } else { Err(IdError { kind: $kind }) }
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A tenant: `ten_` + 16 base36.
    TenantId, "tenant", "ten", 16
);
impl TenantId {
    /// The operator's pseudo-tenant: where installation-wide objects (the price table)
    /// live. Generated tenant ids have 16 characters after `ten_`, so no tenant can be it.
    pub fn operator() -> TenantId {
        TenantId("ten_operator".to_owned())
    }

    /// Whether this is the operator's pseudo-tenant.
    pub fn is_operator(&self) -> bool {
        self.0 == "ten_operator"
    }
}

id_type!(
    /// A project: `prj_` + 16 base36.
    ProjectId, "project", "prj", 16
);
id_type!(
    /// A proxy key's public id (not the secret): `key_` + 16 base36.
    KeyId, "key", "key", 16
);
id_type!(
    /// An admin API token's public id (not the secret): `tok_` + 16 base36.
    TokenId, "token", "tok", 16
);

/// A connection (provider credential): the provider's name + `_` + 10 base36, e.g.
/// `openai_x8z92a0k1q`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct ConnectionId(String);

impl ConnectionId {
    pub fn generate(provider: crate::Provider) -> Self {
        ConnectionId(format!("{}_{}", provider.as_str(), random_suffix(10)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConnectionId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        if is_valid_id(&s) {
            Ok(ConnectionId(s))
        } else {
            Err(IdError { kind: "connection" })
        }
    }
}

impl std::str::FromStr for ConnectionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::try_from(s.to_owned())
    }
}

impl From<ConnectionId> for String {
    fn from(id: ConnectionId) -> String {
        id.0
    }
}

impl ConnectionId {
    /// The encryption context a connection's provider key is sealed under: bound into
    /// the KMS wrap of its data key and into the AEAD associated data, so a sealed key
    /// moved to another tenant, project or connection cannot be opened.
    pub fn encryption_context(
        &self,
        tenant: &TenantId,
        project: &ProjectId,
    ) -> sg_crypto::EncryptionContext {
        sg_crypto::EncryptionContext::new()
            .with("tenant", tenant.as_str())
            .with("project", project.as_str())
            .with("connection", self.as_str())
    }
}

/// The context a project's webhook signing secret is sealed for.
pub fn webhook_encryption_context(
    tenant: &TenantId,
    project: &ProjectId,
    webhook_id: &str,
) -> sg_crypto::EncryptionContext {
    sg_crypto::EncryptionContext::new()
        .with("tenant", tenant.as_str())
        .with("project", project.as_str())
        .with("webhook", webhook_id)
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = TenantId::generate();
        assert!(a.as_str().starts_with("ten_"));
        assert!(is_valid_id(a.as_str()));
        assert_ne!(a, TenantId::generate());
        let c = ConnectionId::generate(crate::Provider::Openai);
        assert!(c.as_str().starts_with("openai_"));
    }

    #[test]
    fn hostile_ids_are_rejected() {
        for bad in [
            "", "a", "ten_>", "ten_a.b", "ten_*", "Ten_abc", "1abc", "ten abc", "ten_ä",
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<KeyId>("\"sg.control.>\"").is_err());
    }
}
