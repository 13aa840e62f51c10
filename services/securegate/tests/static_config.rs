//! A gateway run without the admin API: connections and keys from a static
//! configuration file, with provider keys inline, from the environment, from a file and
//! from a mounted Kubernetes secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use sg_testkit::mock_upstream::MockUpstream;
use sg_testkit::nats::NatsServer;
use support::*;

#[tokio::test]
async fn static_connections_from_four_secret_sources() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let upstream = MockUpstream::start(sg_testkit::MockConfig::default())
        .await
        .unwrap();
    let master_key = dir.path().join("master.key");
    sg_crypto::generate_master_key_file(&master_key).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("openai")).unwrap();
    std::fs::write(
        secrets.join("openai").join("api-key"),
        "sk-from-k8s-secret\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("provider.key"), "sk-from-file\n").unwrap();
    let by_hash = sg_proxy_key::ProxyKey::generate();
    let from_env = sg_proxy_key::ProxyKey::generate();
    let base = upstream.base_url();
    let config = format!(
        r#"
tenant = "ten_ops"
project = "prj_ops"

[[connections]]
id = "openai_inline"
provider = "openai"
base_url = "{base}"
api_key = {{ value = "sk-inline-value" }}

[[connections]]
id = "openai_env"
provider = "openai"
base_url = "{base}"
api_key = {{ env = "SG_TEST_PROVIDER_KEY" }}

[[connections]]
id = "openai_file"
provider = "openai"
base_url = "{base}"
api_key = {{ file = "{file}" }}

[[connections]]
id = "openai_k8s"
provider = "openai"
base_url = "{base}"
api_key = {{ secret = "openai/api-key" }}

[[keys]]
id = "key_by_hash"
key_sha256 = "{hash}"
connections = ["openai_inline", "openai_env", "openai_file", "openai_k8s"]
locks = {{ ip = {{ mode = "off" }} }}

[[keys]]
id = "key_from_env"
key = {{ env = "SG_TEST_PROXY_KEY" }}
connections = ["openai_env"]
locks = {{ models = ["mock-gpt-4o-mini"] }}
limits = {{ rpm = 3 }}
"#,
        file = dir.path().join("provider.key").display(),
        hash = by_hash.hash().to_hex(),
    );
    let config_path = dir.path().join("static.toml");
    std::fs::write(&config_path, config).unwrap();
    let nats_url = nats.url();
    let env = [
        ("SECUREGATE_NATS_URL", nats_url.as_str()),
        ("SG_TEST_PROVIDER_KEY", "sk-from-env"),
        ("SG_TEST_PROXY_KEY", from_env.expose()),
    ];
    let gateway = Proc::start(
        &[
            "server",
            "gateway",
            "--listen",
            "{addr}",
            "--master-key-file",
            master_key.to_str().unwrap(),
            "--allow-private-upstreams",
            "--static-config",
            config_path.to_str().unwrap(),
            "--secrets-dir",
            secrets.to_str().unwrap(),
        ],
        &env,
        dir.path(),
    )
    .await;
    let client = reqwest::Client::new();
    for (connection, expected) in [
        ("openai_inline", "sk-inline-value"),
        ("openai_env", "sk-from-env"),
        ("openai_file", "sk-from-file"),
        ("openai_k8s", "sk-from-k8s-secret"),
    ] {
        let r = client
            .post(format!("{}/v1/chat/completions", gateway.url()))
            .bearer_auth(by_hash.expose())
            .header("x-connection-id", connection)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{connection}: {}", r.text().await.unwrap());
        assert_eq!(
            upstream.last_authorization().unwrap(),
            format!("Bearer {expected}"),
            "{connection}"
        );
    }
    let (s, body) = chat(&gateway.url(), from_env.expose(), false).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(upstream.last_authorization().unwrap(), "Bearer sk-from-env");
    let r = client
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .bearer_auth(from_env.expose())
        .json(&serde_json::json!({"model": "gpt-5", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the static key's locks apply");
    // And its limits: at most 3 per minute (5 over a minute boundary) of 8.
    let mut refused = 0;
    for _ in 0..8 {
        let r = client
            .post(format!("{}/v1/chat/completions", gateway.url()))
            .bearer_auth(from_env.expose())
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        if r.status() == 429 {
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "the static key's limits apply: {refused} refused"
    );
    for log_secret in [
        "sk-inline-value",
        "sk-from-env",
        "sk-from-file",
        "sk-from-k8s-secret",
        from_env.expose(),
    ] {
        assert!(
            !gateway.log().contains(log_secret),
            "a secret is in the log"
        );
    }

    // A broken configuration stops the gateway at start with a clear message.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_securegate"))
        .args([
            "server",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--master-key-file",
            master_key.to_str().unwrap(),
            "--static-config",
            config_path.to_str().unwrap(),
            "--secrets-dir",
            secrets.to_str().unwrap(),
        ])
        .env_clear()
        .env("SECUREGATE_NATS_URL", &nats_url)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SG_TEST_PROVIDER_KEY"), "{stderr}");
    // So does a limit that cannot be right.
    let bad_limits = dir.path().join("bad-limits.toml");
    std::fs::write(
        &bad_limits,
        "[[keys]]\nid = \"key_bad\"\nkey_sha256 = \"".to_owned()
            + &by_hash.hash().to_hex()
            + "\"\nlimits = { rpm = 0 }\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_securegate"))
        .args([
            "server",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--master-key-file",
            master_key.to_str().unwrap(),
            "--static-config",
            bad_limits.to_str().unwrap(),
        ])
        .env_clear()
        .env("SECUREGATE_NATS_URL", &nats_url)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rpm"), "{stderr}");
    // The edge role cannot open provider keys, so it cannot use static connections.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_securegate"))
        .args([
            "server",
            "gateway",
            "--role",
            "edge",
            "--egress-url",
            "http://127.0.0.1:9",
            "--attestation-key-file",
            master_key.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--static-config",
            config_path.to_str().unwrap(),
        ])
        .env_clear()
        .env("SECUREGATE_NATS_URL", &nats_url)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--role all"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
