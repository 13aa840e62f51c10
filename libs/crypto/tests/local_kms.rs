//! Sealing and opening with the local master-key KMS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use sg_crypto::{
    CryptoError, EncryptionContext, LocalKms, SecretString, generate_master_key_file, open, seal,
};

fn ctx(tenant: &str, connection: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("tenant", tenant)
        .with("project", "prj_1")
        .with("connection", connection)
}

fn kms() -> LocalKms {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    generate_master_key_file(&path).unwrap();
    LocalKms::from_file(&path).unwrap()
}

#[tokio::test]
async fn seal_open_round_trip_and_no_plaintext_in_sealed_form() {
    let kms = kms();
    let secret = SecretString::new("sk-live-very-secret-provider-key".into());
    let sealed = seal(&kms, &ctx("t1", "c1"), &secret).await.unwrap();
    let json = serde_json::to_string(&sealed).unwrap();
    assert!(!json.contains("very-secret"));
    assert!(!format!("{sealed:?}{secret:?}").contains("very-secret"));
    let opened = open(&kms, &ctx("t1", "c1"), &sealed).await.unwrap();
    assert_eq!(opened.expose(), secret.expose());
}

#[tokio::test]
async fn another_context_cannot_open() {
    let kms = kms();
    let secret = SecretString::new("sk-abc".into());
    let sealed = seal(&kms, &ctx("t1", "c1"), &secret).await.unwrap();
    for other in [ctx("t2", "c1"), ctx("t1", "c2"), EncryptionContext::new()] {
        assert!(matches!(
            open(&kms, &other, &sealed).await,
            Err(CryptoError::Integrity)
        ));
    }
}

#[tokio::test]
async fn tampering_is_detected() {
    let kms = kms();
    let sealed = seal(&kms, &ctx("t", "c"), &SecretString::new("sk-abc".into()))
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let flip = |s: &str| {
        let mut bytes = b64.decode(s).unwrap();
        bytes[0] ^= 1;
        b64.encode(bytes)
    };
    let mut bad_ct = sealed.clone();
    bad_ct.ciphertext = flip(&sealed.ciphertext);
    let mut bad_key = sealed.clone();
    bad_key.wrapped_key = flip(&sealed.wrapped_key);
    let mut bad_nonce = sealed.clone();
    bad_nonce.nonce = flip(&sealed.nonce);
    for bad in [bad_ct, bad_key, bad_nonce] {
        assert!(matches!(
            open(&kms, &ctx("t", "c"), &bad).await,
            Err(CryptoError::Integrity)
        ));
    }
    let mut garbage = sealed.clone();
    garbage.nonce = "not base64!".into();
    assert!(matches!(
        open(&kms, &ctx("t", "c"), &garbage).await,
        Err(CryptoError::Malformed(_))
    ));
}

#[tokio::test]
async fn another_master_key_is_refused() {
    let sealed = seal(&kms(), &ctx("t", "c"), &SecretString::new("sk".into()))
        .await
        .unwrap();
    assert!(matches!(
        open(&kms(), &ctx("t", "c"), &sealed).await,
        Err(CryptoError::KmsRefused(_))
    ));
}

#[test]
fn broken_master_key_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = LocalKms::from_file(&dir.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("cannot read"));
    let short = dir.path().join("short");
    std::fs::write(&short, "c2hvcnQ=\n").unwrap();
    assert!(
        LocalKms::from_file(&short)
            .unwrap_err()
            .to_string()
            .contains("32 bytes")
    );
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "%%%").unwrap();
    assert!(
        LocalKms::from_file(&junk)
            .unwrap_err()
            .to_string()
            .contains("base64")
    );
    let existing = dir.path().join("existing");
    std::fs::write(&existing, "x").unwrap();
    assert!(generate_master_key_file(&existing).is_err());
}
