//! `AwsKms::from_env` reads the standard AWS environment.
//!
//! Environment variables are process-wide, so the scenarios run in child processes of
//! this test binary, each with its own environment (`SG_KMS_AWS_CHILD` selects one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{client, context, create_key, start_moto};
use sg_crypto::{CryptoError, SecretString, open, seal};
use sg_kms_aws::AwsKms;

const CHILD: &str = "SG_KMS_AWS_CHILD";
const KEY: &str = "SG_KMS_AWS_TEST_KEY";
const TEST_NAME: &str = "from_env_reads_region_credentials_and_endpoint";

/// Runs this test again in a child process with a clean AWS environment plus `vars`.
fn run_child(scenario: &str, vars: &[(&str, &str)]) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario);
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("AWS_CONFIG_FILE", "/nonexistent/sg-kms-aws/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/sg-kms-aws/credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (name, value) in vars {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "child scenario {scenario} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn from_env_reads_region_credentials_and_endpoint() {
    match std::env::var(CHILD).as_deref() {
        Ok("round-trip") => return child_round_trip(),
        Ok("no-region") => return child_no_region(),
        Ok(other) => panic!("unknown child scenario {other}"),
        Err(_) => {}
    }
    let moto = start_moto();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let arn = runtime.block_on(create_key(&client(&moto.endpoint)));

    // The KMS-specific endpoint variable, not the global one.
    run_child(
        "round-trip",
        &[
            ("AWS_ENDPOINT_URL_KMS", moto.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            (KEY, arn.as_str()),
        ],
    );
    // The global endpoint variable.
    run_child(
        "round-trip",
        &[
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            (KEY, arn.as_str()),
        ],
    );
    run_child(
        "no-region",
        &[
            ("AWS_ENDPOINT_URL_KMS", moto.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
}

fn child_round_trip() {
    let arn = std::env::var(KEY).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kms = AwsKms::from_env(arn.clone()).await.unwrap();
        let ctx = context("t1", "c1");
        let secret = SecretString::new("sk-from-env".into());
        let sealed = seal(&kms, &ctx, &secret).await.unwrap();
        assert_eq!(sealed.kek_id, arn);
        assert_eq!(
            open(&kms, &ctx, &sealed).await.unwrap().expose(),
            "sk-from-env"
        );
    });
}

fn child_no_region() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let err = AwsKms::from_env("alias/securegate".into())
            .await
            .unwrap_err();
        assert!(matches!(err, CryptoError::Config(_)), "{err:?}");
        let err = AwsKms::from_env(" ".into()).await.unwrap_err();
        assert!(matches!(err, CryptoError::Config(_)), "{err:?}");
    });
}
