//! AWS KMS as the [`Kms`] of SecureGate's envelope encryption.
//!
//! Data keys come from `GenerateDataKey` (AES-256) under one KMS key, bound to the
//! secret's [`EncryptionContext`]; opening a secret calls `Decrypt` pinned to the key
//! that wrapped it. [`AwsKms::rewrap`] moves a wrapped data key to another KMS key with
//! `ReEncrypt`, so the plaintext data key never leaves KMS.
//!
//! Every call uses the SDK's standard retry mode (exponential backoff with jitter,
//! [`MAX_ATTEMPTS`] attempts) and bounded timeouts ([`CONNECT_TIMEOUT`],
//! [`ATTEMPT_TIMEOUT`], [`OPERATION_TIMEOUT`]), so a throttled or unreachable KMS
//! slows a request down but never hangs it.
//!
//! Error mapping (what [`CryptoError`] a failed KMS call becomes):
//!
//! | KMS says | error |
//! | --- | --- |
//! | `InvalidCiphertextException`, `IncorrectKeyException`, or a `Decrypt` answer naming another key | [`CryptoError::Integrity`] |
//! | `AccessDeniedException`, `DisabledException`, `NotFoundException`, `KMSInvalidStateException`, `InvalidKeyUsageException`, `InvalidGrantTokenException`, bad or expired credentials, any other 4xx | [`CryptoError::KmsRefused`] |
//! | throttling (`ThrottlingException`, `LimitExceededException`, HTTP 429), `KMSInternalException`, `DependencyTimeoutException`, `KeyUnavailableException`, 5xx, timeouts, connection and dispatch failures, unparseable answers | [`CryptoError::KmsUnavailable`] |
//!
//! A wrong encryption context is indistinguishable from a tampered wrapped key for
//! KMS: it answers `InvalidCiphertextException`, hence [`CryptoError::Integrity`].
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kms::config::SharedHttpClient;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use sg_crypto::{CryptoError, DataKey, EncryptionContext, Kms};
use zeroize::Zeroizing;

/// Attempts per KMS call, the first included (standard retry mode).
pub const MAX_ATTEMPTS: u32 = 4;
/// Time allowed to open a TCP + TLS connection to KMS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for one attempt of a KMS call.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole KMS call, retries and backoff included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// The retry policy [`AwsKms::from_env`] uses: standard mode, [`MAX_ATTEMPTS`]
/// attempts, exponential backoff with jitter.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// The timeouts [`AwsKms::from_env`] uses.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The HTTP client [`AwsKms::from_env`] uses: hyper with rustls on `ring`, trusting the
/// platform's root certificates. Plain `http://` endpoints work too (local KMS-compatible
/// servers).
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Data keys wrapped by one AWS KMS symmetric key.
#[derive(Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// New data keys are generated under `key_id` (key id, key ARN, alias name or alias
    /// ARN). The client's own retry and timeout settings apply; see [`retry_config`]
    /// and [`timeout_config`] for the recommended ones.
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        AwsKms {
            client,
            key_id: key_id.into(),
        }
    }

    /// From the standard AWS configuration: region (`AWS_REGION`, profile, IMDS),
    /// the default credentials chain (environment, web identity, profile, ECS, IMDS),
    /// and an endpoint override from `AWS_ENDPOINT_URL_KMS` or `AWS_ENDPOINT_URL` (or
    /// `endpoint_url` in the profile) for a KMS-compatible server. Retries and timeouts
    /// are [`retry_config`] and [`timeout_config`].
    ///
    /// Fails with [`CryptoError::Config`] when no region is configured or `key_id` is
    /// empty. Credentials are resolved lazily, on the first call.
    pub async fn from_env(key_id: String) -> Result<Self, CryptoError> {
        if key_id.trim().is_empty() {
            return Err(CryptoError::Config("the AWS KMS key id is empty".into()));
        }
        Self::load(key_id).await
    }

    /// Like [`AwsKms::from_env`], for nodes that only open secrets (egress): no key id,
    /// since every sealed secret names the key that wrapped it. Generating data keys
    /// fails with [`CryptoError::Config`].
    pub async fn decrypt_only_from_env() -> Result<Self, CryptoError> {
        Self::load(String::new()).await
    }

    async fn load(key_id: String) -> Result<Self, CryptoError> {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(retry_config())
            .timeout_config(timeout_config())
            .load()
            .await;
        if shared.region().is_none() {
            return Err(CryptoError::Config(
                "no AWS region configured for KMS (set AWS_REGION or a profile region)".into(),
            ));
        }
        Ok(Self::new(aws_sdk_kms::Client::new(&shared), key_id))
    }

    /// The key new data keys are generated under, as configured.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// Re-wraps a data key wrapped by `kek_id` under `context` so that it is wrapped by
    /// `new_key_id` under the same context, with `ReEncrypt`: the plaintext data key
    /// never leaves KMS. Returns the new wrapped key and the new key's ARN (the new
    /// `kek_id`). The caller needs `kms:ReEncryptFrom` on the old key and
    /// `kms:ReEncryptTo` on the new one.
    pub async fn rewrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        new_key_id: &str,
    ) -> Result<(Vec<u8>, String), CryptoError> {
        let mut request = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .source_key_id(kek_id)
            .destination_key_id(new_key_id);
        for (k, v) in context.pairs() {
            request = request
                .source_encryption_context(k, v)
                .destination_encryption_context(k, v);
        }
        let out = request
            .send()
            .await
            .map_err(|e| map_sdk_error("ReEncrypt", e))?;
        if let Some(source) = out.source_key_id.as_deref()
            && !same_key(kek_id, source)
        {
            return Err(CryptoError::Integrity);
        }
        let new_wrapped = out
            .ciphertext_blob
            .ok_or_else(|| missing("ReEncrypt", "CiphertextBlob"))?
            .into_inner();
        let new_kek_id = out.key_id.ok_or_else(|| missing("ReEncrypt", "KeyId"))?;
        Ok((new_wrapped, new_kek_id))
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError> {
        if self.key_id.is_empty() {
            return Err(CryptoError::Config(
                "this node has no AWS KMS key id to generate data keys under (--kms-key-id)".into(),
            ));
        }
        let mut request = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256);
        for (k, v) in context.pairs() {
            request = request.encryption_context(k, v);
        }
        let mut out = request
            .send()
            .await
            .map_err(|e| map_sdk_error("GenerateDataKey", e))?;
        let plaintext = take_key(out.plaintext.take(), "GenerateDataKey")?;
        let wrapped = out
            .ciphertext_blob
            .take()
            .ok_or_else(|| missing("GenerateDataKey", "CiphertextBlob"))?
            .into_inner();
        let kek_id = out
            .key_id
            .take()
            .ok_or_else(|| missing("GenerateDataKey", "KeyId"))?;
        Ok(DataKey {
            plaintext,
            wrapped,
            kek_id,
        })
    }

    async fn rewrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        new_kek_id: &str,
    ) -> Result<(Vec<u8>, String), CryptoError> {
        AwsKms::rewrap(self, kek_id, wrapped, context, new_kek_id).await
    }

    async fn decrypt_data_key(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let mut request = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .key_id(kek_id);
        for (k, v) in context.pairs() {
            request = request.encryption_context(k, v);
        }
        let mut out = request
            .send()
            .await
            .map_err(|e| map_sdk_error("Decrypt", e))?;
        let plaintext = take_key(out.plaintext.take(), "Decrypt")?;
        if let Some(answered) = out.key_id.as_deref()
            && !same_key(kek_id, answered)
        {
            return Err(CryptoError::Integrity);
        }
        Ok(plaintext)
    }
}

/// Moves a 32-byte key out of the SDK's blob into a zeroizing array, wiping the blob's
/// buffer. (Copies made while the HTTP response was parsed are out of reach.)
fn take_key(blob: Option<Blob>, op: &str) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let bytes = Zeroizing::new(blob.ok_or_else(|| missing(op, "Plaintext"))?.into_inner());
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(CryptoError::Malformed(format!(
            "{op} returned a {}-byte data key, expected 32",
            bytes.len()
        )));
    }
    key.copy_from_slice(&bytes);
    drop(bytes);
    Ok(key)
}

fn missing(op: &str, field: &str) -> CryptoError {
    CryptoError::Malformed(format!("{op} answer has no {field}"))
}

/// Whether the key KMS names (always a key ARN) is the key asked for. Only a key ARN can
/// be compared; a bare key id is compared with the ARN's last part; an alias cannot be
/// resolved here, so it is trusted to KMS's own `KeyId` check.
fn same_key(asked: &str, answered: &str) -> bool {
    if asked == answered {
        return true;
    }
    if asked.contains(":alias/") || asked.starts_with("alias/") {
        return true;
    }
    if asked.starts_with("arn:") {
        return false;
    }
    answered
        .rsplit_once(":key/")
        .is_some_and(|(_, id)| id == asked)
}

/// Maps an SDK error to a [`CryptoError`] (see the table in the crate docs).
fn map_sdk_error<E>(
    op: &str,
    err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> CryptoError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_owned();
            let message = service.err().message().unwrap_or("").to_owned();
            let what = format!("{op}: {code} (HTTP {status}) {message}");
            let what = what.trim_end().to_owned();
            classify_service_error(&code, status, what)
        }
        SdkError::TimeoutError(_) => {
            CryptoError::KmsUnavailable(format!("{op}: timed out: {}", DisplayErrorContext(&err)))
        }
        SdkError::DispatchFailure(failure) if failure.is_user() => CryptoError::Config(format!(
            "{op}: cannot send the request: {}",
            DisplayErrorContext(&err)
        )),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            CryptoError::KmsUnavailable(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ConstructionFailure(_) => CryptoError::Config(format!(
            "{op}: cannot build the request: {}",
            DisplayErrorContext(&err)
        )),
        _ => CryptoError::KmsUnavailable(format!("{op}: {}", DisplayErrorContext(&err))),
    }
}

fn classify_service_error(code: &str, status: u16, what: String) -> CryptoError {
    match code {
        "InvalidCiphertextException" | "IncorrectKeyException" => {
            tracing::debug!(error = %what, "kms rejected the wrapped key");
            CryptoError::Integrity
        }
        "AccessDeniedException"
        | "DisabledException"
        | "NotFoundException"
        | "KMSInvalidStateException"
        | "InvalidKeyUsageException"
        | "InvalidGrantTokenException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "ExpiredTokenException"
        | "ValidationException" => CryptoError::KmsRefused(what),
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "LimitExceededException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalFailure" => CryptoError::KmsUnavailable(what),
        _ if status == 429 || status >= 500 => CryptoError::KmsUnavailable(what),
        _ => CryptoError::KmsRefused(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_codes_map_to_the_documented_errors() {
        let cases = [
            ("InvalidCiphertextException", 400, "integrity"),
            ("IncorrectKeyException", 400, "integrity"),
            ("AccessDeniedException", 400, "refused"),
            ("DisabledException", 400, "refused"),
            ("NotFoundException", 400, "refused"),
            ("KMSInvalidStateException", 400, "refused"),
            ("InvalidKeyUsageException", 400, "refused"),
            ("ThrottlingException", 400, "unavailable"),
            ("LimitExceededException", 400, "unavailable"),
            ("KMSInternalException", 500, "unavailable"),
            ("SomethingNew", 503, "unavailable"),
            ("SomethingNew", 429, "unavailable"),
            ("SomethingNew", 400, "refused"),
        ];
        for (code, status, want) in cases {
            let got = match classify_service_error(code, status, code.to_owned()) {
                CryptoError::Integrity => "integrity",
                CryptoError::KmsRefused(_) => "refused",
                CryptoError::KmsUnavailable(_) => "unavailable",
                _ => "other",
            };
            assert_eq!(got, want, "{code} {status}");
        }
    }

    #[test]
    fn same_key_pins_arns_and_key_ids() {
        let arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(same_key(arn, arn));
        assert!(same_key("1234abcd-12ab-34cd-56ef-1234567890ab", arn));
        assert!(!same_key("ffffffff-12ab-34cd-56ef-1234567890ab", arn));
        assert!(!same_key(
            "arn:aws:kms:us-east-1:123456789012:key/ffffffff-12ab-34cd-56ef-1234567890ab",
            arn
        ));
        assert!(same_key("alias/securegate", arn));
    }

    #[test]
    fn take_key_rejects_wrong_lengths() {
        assert!(matches!(
            take_key(Some(Blob::new(vec![1u8; 16])), "Decrypt"),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            take_key(None, "Decrypt"),
            Err(CryptoError::Malformed(_))
        ));
        let key = take_key(Some(Blob::new(vec![7u8; 32])), "Decrypt");
        assert!(matches!(key, Ok(k) if *k == [7u8; 32]));
    }

    #[test]
    fn debug_does_not_show_the_client() {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .build();
        let kms = AwsKms::new(aws_sdk_kms::Client::from_conf(conf), "alias/x");
        assert_eq!(format!("{kms:?}"), "AwsKms { key_id: \"alias/x\", .. }");
    }
}
