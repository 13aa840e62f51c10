//! Test helpers: a private `moto_server` (a local server speaking the AWS KMS API) and
//! SDK clients pointed at a local endpoint.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use sg_crypto::EncryptionContext;

pub use sg_testkit::moto::MotoServer;

/// A private `moto_server`; panics with what is missing if it cannot start.
pub fn start_moto() -> MotoServer {
    MotoServer::start().expect("a private moto_server")
}

/// SDK configuration for a local endpoint: region `us-east-1`, static dummy credentials,
/// the crate's HTTP client, retry policy and timeouts.
pub fn config_builder(endpoint: &str) -> aws_sdk_kms::config::Builder {
    aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .http_client(sg_kms_aws::http_client())
        .retry_config(sg_kms_aws::retry_config())
        .timeout_config(sg_kms_aws::timeout_config())
}

pub fn client(endpoint: &str) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::from_conf(config_builder(endpoint).build())
}

/// A client that retries fast and gives up fast (for fault-injection tests).
pub fn impatient_client(endpoint: &str) -> aws_sdk_kms::Client {
    let conf = config_builder(endpoint)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(sg_kms_aws::MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(10))
                .with_max_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .operation_attempt_timeout(Duration::from_millis(300))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// Creates a symmetric encryption key and returns its ARN.
pub async fn create_key(client: &aws_sdk_kms::Client) -> String {
    let out = client
        .create_key()
        .description("sg-kms-aws test key")
        .send()
        .await
        .expect("CreateKey");
    out.key_metadata.expect("KeyMetadata").arn.expect("key ARN")
}

pub fn context(tenant: &str, connection: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("tenant", tenant)
        .with("project", "p1")
        .with("connection", connection)
}
