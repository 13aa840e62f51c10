//! `AwsKms` against a scripted HTTP endpoint answering exactly what AWS KMS answers on the
//! wire (AWS JSON 1.1): the error mapping, the retries, the timeouts, and the checks of
//! the answers, including cases a local KMS emulator does not produce (disabled keys,
//! throttling, 5xx, a `Decrypt` answer naming another key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sg_crypto::{CryptoError, Kms};
use sg_kms_aws::AwsKms;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const OTHER_ARN: &str =
    "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";

/// What the endpoint answers: `None` never answers.
type Script = dyn Fn(&Request) -> Option<(u16, String)> + Send + Sync;

#[derive(Debug, Clone)]
struct Request {
    target: String,
    body: serde_json::Value,
}

struct FakeKms {
    endpoint: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeKms {
    async fn start(
        script: impl Fn(&Request) -> Option<(u16, String)> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let script = Arc::clone(&script);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let Some(request) = read_request(&mut read).await else {
                            return;
                        };
                        seen.lock().unwrap().push(request.clone());
                        let Some((status, body)) = script(&request) else {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        };
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\n\
                             x-amzn-requestid: 00000000-0000-0000-0000-000000000000\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if write.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeKms { endpoint, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Option<Request> {
    let mut length = 0usize;
    let mut target = String::new();
    let mut first = true;
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if first {
                continue;
            }
            break;
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("x-amz-target") {
                target = value.to_owned();
            }
        }
    }
    let mut body = vec![0u8; length];
    read.read_exact(&mut body).await.ok()?;
    Some(Request {
        target,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    })
}

fn error(code: &str, message: &str) -> Option<(u16, String)> {
    Some((
        400,
        serde_json::json!({ "__type": code, "message": message }).to_string(),
    ))
}

fn kind(err: &CryptoError) -> &'static str {
    match err {
        CryptoError::Integrity => "integrity",
        CryptoError::KmsRefused(_) => "refused",
        CryptoError::KmsUnavailable(_) => "unavailable",
        CryptoError::Malformed(_) => "malformed",
        CryptoError::Config(_) => "config",
    }
}

fn kms_for(fake: &FakeKms) -> AwsKms {
    AwsKms::new(common::impatient_client(&fake.endpoint), KEY_ARN)
}

async fn decrypt(kms: &AwsKms) -> Result<zeroize::Zeroizing<[u8; 32]>, CryptoError> {
    kms.decrypt_data_key(KEY_ARN, b"wrapped-data-key", &common::context("t1", "c1"))
        .await
}

#[tokio::test]
async fn generate_data_key_asks_for_aes_256_under_the_context() {
    let fake = FakeKms::start(|_| {
        Some((
            200,
            serde_json::json!({
                "CiphertextBlob": B64.encode(b"wrapped"),
                "Plaintext": B64.encode([9u8; 32]),
                "KeyId": KEY_ARN,
            })
            .to_string(),
        ))
    })
    .await;
    let kms = AwsKms::new(common::impatient_client(&fake.endpoint), "alias/securegate");
    let key = kms
        .generate_data_key(&common::context("t1", "c1"))
        .await
        .unwrap();
    assert_eq!(key.kek_id, KEY_ARN);
    assert_eq!(key.wrapped, b"wrapped");
    assert!(*key.plaintext == [9u8; 32]);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.target, "TrentService.GenerateDataKey");
    assert_eq!(request.body["KeyId"], "alias/securegate");
    assert_eq!(request.body["KeySpec"], "AES_256");
    assert_eq!(
        request.body["EncryptionContext"],
        serde_json::json!({ "tenant": "t1", "project": "p1", "connection": "c1" })
    );
}

#[tokio::test]
async fn decrypt_sends_the_key_id_and_the_context() {
    let fake = FakeKms::start(|_| {
        Some((
            200,
            serde_json::json!({ "Plaintext": B64.encode([5u8; 32]), "KeyId": KEY_ARN }).to_string(),
        ))
    })
    .await;
    let key = decrypt(&kms_for(&fake)).await.unwrap();
    assert!(*key == [5u8; 32]);
    let request = &fake.requests()[0];
    assert_eq!(request.target, "TrentService.Decrypt");
    assert_eq!(request.body["KeyId"], KEY_ARN);
    assert_eq!(
        request.body["CiphertextBlob"],
        B64.encode(b"wrapped-data-key")
    );
    assert_eq!(request.body["EncryptionContext"]["tenant"], "t1");
}

#[tokio::test]
async fn a_decrypt_answer_naming_another_key_is_refused() {
    let fake = FakeKms::start(|_| {
        Some((
            200,
            serde_json::json!({ "Plaintext": B64.encode([5u8; 32]), "KeyId": OTHER_ARN })
                .to_string(),
        ))
    })
    .await;
    let err = decrypt(&kms_for(&fake)).await.unwrap_err();
    assert!(matches!(err, CryptoError::Integrity), "{err:?}");
}

#[tokio::test]
async fn a_data_key_of_the_wrong_size_is_malformed() {
    let fake = FakeKms::start(|_| {
        Some((
            200,
            serde_json::json!({ "Plaintext": B64.encode([5u8; 16]), "KeyId": KEY_ARN }).to_string(),
        ))
    })
    .await;
    let err = decrypt(&kms_for(&fake)).await.unwrap_err();
    assert!(matches!(err, CryptoError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn refusals_and_integrity_errors_are_not_retried() {
    let cases = [
        ("InvalidCiphertextException", "integrity"),
        ("IncorrectKeyException", "integrity"),
        ("AccessDeniedException", "refused"),
        ("DisabledException", "refused"),
        ("NotFoundException", "refused"),
        ("KMSInvalidStateException", "refused"),
        ("InvalidKeyUsageException", "refused"),
        ("InvalidGrantTokenException", "refused"),
        ("UnrecognizedClientException", "refused"),
    ];
    for (code, expected) in cases {
        let fake = FakeKms::start(move |_| error(code, "refused by the test endpoint")).await;
        let err = decrypt(&kms_for(&fake)).await.unwrap_err();
        assert_eq!(kind(&err), expected, "{code}: {err:?}");
        assert_eq!(fake.requests().len(), 1, "{code} must not be retried");
        if let CryptoError::KmsRefused(message) = &err {
            assert!(message.contains(code), "{message}");
        }
    }
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_then_unavailable() {
    let cases: [(u16, &str); 4] = [
        (400, "ThrottlingException"),
        (400, "LimitExceededException"),
        (500, "KMSInternalException"),
        (503, "ServiceUnavailableException"),
    ];
    for (status, code) in cases {
        let fake = FakeKms::start(move |_| {
            Some((
                status,
                serde_json::json!({ "__type": code, "message": "slow down" }).to_string(),
            ))
        })
        .await;
        let err = decrypt(&kms_for(&fake)).await.unwrap_err();
        assert!(
            matches!(err, CryptoError::KmsUnavailable(_)),
            "{code}: {err:?}"
        );
        let attempts = fake.requests().len();
        assert_eq!(
            attempts,
            sg_kms_aws::MAX_ATTEMPTS as usize,
            "{code} is retried with backoff"
        );
    }
}

#[tokio::test]
async fn a_transient_throttle_is_absorbed_by_the_retries() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = Arc::clone(&calls);
    let fake = FakeKms::start(move |_| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        if *n <= 2 {
            error("ThrottlingException", "Rate exceeded")
        } else {
            Some((
                200,
                serde_json::json!({ "Plaintext": B64.encode([3u8; 32]), "KeyId": KEY_ARN })
                    .to_string(),
            ))
        }
    })
    .await;
    let key = decrypt(&kms_for(&fake)).await.unwrap();
    assert!(*key == [3u8; 32]);
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn a_kms_that_never_answers_times_out() {
    let fake = FakeKms::start(|_| None).await;
    let started = Instant::now();
    let err = decrypt(&kms_for(&fake)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CryptoError::KmsUnavailable(_)), "{err:?}");
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    assert!(fake.requests().len() >= 2, "a timed-out attempt is retried");
}

#[tokio::test]
async fn a_closed_port_is_unavailable() {
    let port = sg_testkit::free_port();
    let kms = AwsKms::new(
        common::impatient_client(&format!("http://127.0.0.1:{port}")),
        KEY_ARN,
    );
    let started = Instant::now();
    let err = decrypt(&kms).await.unwrap_err();
    assert!(matches!(err, CryptoError::KmsUnavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn rewrap_uses_re_encrypt_with_both_contexts() {
    let fake = FakeKms::start(|_| {
        Some((
            200,
            serde_json::json!({
                "CiphertextBlob": B64.encode(b"rewrapped"),
                "KeyId": OTHER_ARN,
                "SourceKeyId": KEY_ARN,
            })
            .to_string(),
        ))
    })
    .await;
    let kms = kms_for(&fake);
    let ctx = common::context("t1", "c1");
    let (wrapped, kek) = kms
        .rewrap(KEY_ARN, b"wrapped-data-key", &ctx, OTHER_ARN)
        .await
        .unwrap();
    assert_eq!(wrapped, b"rewrapped");
    assert_eq!(kek, OTHER_ARN);
    let request = &fake.requests()[0];
    assert_eq!(request.target, "TrentService.ReEncrypt");
    assert_eq!(request.body["SourceKeyId"], KEY_ARN);
    assert_eq!(request.body["DestinationKeyId"], OTHER_ARN);
    assert_eq!(request.body["SourceEncryptionContext"]["connection"], "c1");
    assert_eq!(
        request.body["DestinationEncryptionContext"]["connection"],
        "c1"
    );
}
