//! `AwsKms` against a real KMS API endpoint: a private `moto_server`.
//!
//! Where moto differs from AWS KMS, the test says so; the exact AWS error responses for
//! those cases are covered in `wire_errors.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{MotoServer, client, context, create_key, start_moto};
use sg_crypto::{
    CryptoError, DataKeyCache, DataKeyCacheConfig, Kms, SealedSecret, SecretString, open, seal,
};
use sg_kms_aws::AwsKms;

/// One server for the tests of this binary that do not stop it.
fn shared_moto() -> &'static str {
    static MOTO: OnceLock<MotoServer> = OnceLock::new();
    &MOTO.get_or_init(start_moto).endpoint
}

async fn kms_with_new_key() -> (AwsKms, String) {
    let client = client(shared_moto());
    let arn = create_key(&client).await;
    (AwsKms::new(client, arn.clone()), arn)
}

fn secret() -> SecretString {
    SecretString::new("sk-live-0123456789abcdef".into())
}

fn flip_last_byte(b64: &str) -> String {
    let mut bytes = B64.decode(b64).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    B64.encode(bytes)
}

#[tokio::test]
async fn seal_and_open_round_trip() {
    let (kms, arn) = kms_with_new_key().await;
    assert_eq!(kms.kind(), "aws");
    let ctx = context("t1", "c1");
    let sealed = seal(&kms, &ctx, &secret()).await.unwrap();
    assert_eq!(sealed.kms, "aws");
    assert_eq!(sealed.kek_id, arn, "kek_id is the key ARN KMS answered");
    let opened = open(&kms, &ctx, &sealed).await.unwrap();
    assert_eq!(opened.expose(), secret().expose());

    // Each seal gets its own data key.
    let again = seal(&kms, &ctx, &secret()).await.unwrap();
    assert_ne!(again.wrapped_key, sealed.wrapped_key);
}

#[tokio::test]
async fn data_keys_are_256_bits_and_unwrap_to_the_same_bytes() {
    let (kms, _) = kms_with_new_key().await;
    let ctx = context("t1", "c1");
    let key = kms.generate_data_key(&ctx).await.unwrap();
    assert_eq!(key.plaintext.len(), 32);
    let unwrapped = kms
        .decrypt_data_key(&key.kek_id, &key.wrapped, &ctx)
        .await
        .unwrap();
    assert!(*unwrapped == *key.plaintext);
    assert!(!format!("{key:?}").contains(&format!("{:?}", key.plaintext.as_slice())));
}

/// KMS binds the data key to the encryption context: another context is refused by KMS
/// itself (`InvalidCiphertextException`), which maps to `Integrity`.
#[tokio::test]
async fn another_encryption_context_is_an_integrity_error() {
    let (kms, _) = kms_with_new_key().await;
    let sealed = seal(&kms, &context("t1", "c1"), &secret()).await.unwrap();
    for other in [
        context("t2", "c1"),
        context("t1", "c2"),
        sg_crypto::EncryptionContext::new(),
    ] {
        let err = open(&kms, &other, &sealed).await.unwrap_err();
        assert!(matches!(err, CryptoError::Integrity), "{err:?}");
    }
    // The KMS call alone refuses it, before any AEAD check.
    let wrapped = B64.decode(&sealed.wrapped_key).unwrap();
    let err = kms
        .decrypt_data_key(&sealed.kek_id, &wrapped, &context("t2", "c1"))
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Integrity), "{err:?}");
}

#[tokio::test]
async fn tampered_ciphertext_is_an_integrity_error() {
    let (kms, _) = kms_with_new_key().await;
    let ctx = context("t1", "c1");
    let sealed = seal(&kms, &ctx, &secret()).await.unwrap();
    let tampered = SealedSecret {
        ciphertext: flip_last_byte(&sealed.ciphertext),
        ..sealed.clone()
    };
    let err = open(&kms, &ctx, &tampered).await.unwrap_err();
    assert!(matches!(err, CryptoError::Integrity), "{err:?}");
}

#[tokio::test]
async fn tampered_wrapped_key_is_an_integrity_error() {
    let (kms, _) = kms_with_new_key().await;
    let ctx = context("t1", "c1");
    let sealed = seal(&kms, &ctx, &secret()).await.unwrap();
    let tampered = SealedSecret {
        wrapped_key: flip_last_byte(&sealed.wrapped_key),
        ..sealed.clone()
    };
    let err = open(&kms, &ctx, &tampered).await.unwrap_err();
    assert!(matches!(err, CryptoError::Integrity), "{err:?}");
}

/// `Decrypt` is pinned to the recorded key. AWS KMS answers `IncorrectKeyException`
/// (→ `Integrity`); moto answers `AccessDeniedException` (→ `KmsRefused`).
#[tokio::test]
async fn decrypt_is_pinned_to_the_recorded_key() {
    let (kms, _) = kms_with_new_key().await;
    let other = create_key(kms.client()).await;
    let ctx = context("t1", "c1");
    let sealed = seal(&kms, &ctx, &secret()).await.unwrap();
    let moved = SealedSecret {
        kek_id: other,
        ..sealed.clone()
    };
    let err = open(&kms, &ctx, &moved).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Integrity | CryptoError::KmsRefused(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unknown_key_is_refused() {
    let (kms, arn) = kms_with_new_key().await;
    let ctx = context("t1", "c1");
    let sealed = seal(&kms, &ctx, &secret()).await.unwrap();
    let (prefix, _) = arn.rsplit_once('/').unwrap();
    let missing = SealedSecret {
        kek_id: format!("{prefix}/00000000-0000-4000-8000-000000000000"),
        ..sealed
    };
    let err = open(&kms, &ctx, &missing).await.unwrap_err();
    assert!(matches!(err, CryptoError::KmsRefused(_)), "{err:?}");

    let unknown = AwsKms::new(
        kms.client().clone(),
        format!("{prefix}/00000000-0000-4000-8000-000000000000"),
    );
    let err = seal(&unknown, &ctx, &secret()).await.unwrap_err();
    assert!(matches!(err, CryptoError::KmsRefused(_)), "{err:?}");
}

/// moto does not enforce key states on cryptographic operations (a disabled key still
/// decrypts there); what AWS KMS answers for a disabled key, `DisabledException`, is
/// mapped to `KmsRefused` in `wire_errors.rs`. Here: disabling is visible to the API, and
/// a key rotated away from with `rewrap` can be disabled without losing the secret.
#[tokio::test]
async fn rewrap_moves_a_secret_to_a_new_key_and_the_old_one_can_be_disabled() {
    let (kms, old_arn) = kms_with_new_key().await;
    let new_arn = create_key(kms.client()).await;
    let ctx = context("t1", "c1");
    let sealed = seal(&kms, &ctx, &secret()).await.unwrap();
    let wrapped = B64.decode(&sealed.wrapped_key).unwrap();

    let (new_wrapped, new_kek) = kms
        .rewrap(&sealed.kek_id, &wrapped, &ctx, &new_arn)
        .await
        .unwrap();
    assert_eq!(new_kek, new_arn);
    assert_ne!(new_wrapped, wrapped);
    let rewrapped = SealedSecret {
        kek_id: new_kek.clone(),
        wrapped_key: B64.encode(&new_wrapped),
        ..sealed.clone()
    };

    // moto's DisableKey takes the bare key id (AWS KMS also takes the ARN).
    let (_, old_key_id) = old_arn.rsplit_once('/').unwrap();
    kms.client()
        .disable_key()
        .key_id(old_key_id)
        .send()
        .await
        .unwrap();
    let state = kms
        .client()
        .describe_key()
        .key_id(&old_arn)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_state;
    assert_eq!(state, Some(aws_sdk_kms::types::KeyState::Disabled));

    // Opened with a KMS configured for the new key, or any other: decrypt is pinned
    // to the recorded kek_id, not to the configured key.
    let opened = open(&kms, &ctx, &rewrapped).await.unwrap();
    assert_eq!(opened.expose(), secret().expose());
    let under_new = AwsKms::new(kms.client().clone(), new_arn.clone());
    let opened = open(&under_new, &ctx, &rewrapped).await.unwrap();
    assert_eq!(opened.expose(), secret().expose());

    // The rewrapped key is still bound to the context.
    let err = open(&kms, &context("t2", "c1"), &rewrapped)
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Integrity), "{err:?}");
}

#[tokio::test]
async fn rewrap_with_another_context_fails() {
    let (kms, _) = kms_with_new_key().await;
    let new_arn = create_key(kms.client()).await;
    let sealed = seal(&kms, &context("t1", "c1"), &secret()).await.unwrap();
    let wrapped = B64.decode(&sealed.wrapped_key).unwrap();
    let err = kms
        .rewrap(&sealed.kek_id, &wrapped, &context("t2", "c1"), &new_arn)
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Integrity), "{err:?}");
}

/// The cache over AwsKms: a second open makes no KMS call, and when the KMS goes away
/// cached keys keep working while an uncached one fails fast with `KmsUnavailable`.
#[tokio::test]
async fn cached_keys_survive_a_kms_outage() {
    let mut moto = start_moto();
    let client = client(&moto.endpoint);
    let arn = create_key(&client).await;
    let aws = Arc::new(AwsKms::new(client, arn));
    let cache = DataKeyCache::new(aws, DataKeyCacheConfig::default());
    let ctx = context("t1", "c1");
    let cached = seal(&cache, &ctx, &secret()).await.unwrap();
    let uncached = seal(&cache, &ctx, &secret()).await.unwrap();

    assert_eq!(
        open(&cache, &ctx, &cached).await.unwrap().expose(),
        secret().expose()
    );
    assert_eq!(cache.stats().kms_calls, 1);
    assert_eq!(
        open(&cache, &ctx, &cached).await.unwrap().expose(),
        secret().expose()
    );
    assert_eq!(
        cache.stats().kms_calls,
        1,
        "the second open is served from the cache"
    );
    assert_eq!(cache.stats().hits, 1);

    moto.stop();

    for _ in 0..3 {
        let opened = open(&cache, &ctx, &cached).await.unwrap();
        assert_eq!(opened.expose(), secret().expose());
    }
    assert_eq!(cache.stats().kms_calls, 1);

    let started = Instant::now();
    let err = open(&cache, &ctx, &uncached).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CryptoError::KmsUnavailable(_)), "{err:?}");
    assert!(
        took <= sg_kms_aws::OPERATION_TIMEOUT + Duration::from_secs(2),
        "an unreachable KMS failed after {took:?}"
    );
    eprintln!("unreachable KMS: after {took:?}: {err}");
}
