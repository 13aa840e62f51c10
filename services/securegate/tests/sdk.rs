//! The drop-in promise: the official OpenAI Python SDK, unchanged but for `base_url` and
//! `api_key`, against a real `securegate dev` process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn official_openai_python_sdk_works_unchanged() {
    let probe = tokio::process::Command::new(sg_testkit::python())
        .args(["-c", "import openai"])
        .output()
        .await
        .expect("Python is needed for the SDK test (sg_testkit::python(): SG_PYTHON, the active virtual environment, else python3)");
    assert!(
        probe.status.success(),
        "the official OpenAI Python SDK is missing from {}: `{} -m pip install openai` (.ci/run installs it; SG_PYTHON or an active virtual environment picks the interpreter)",
        sg_testkit::python().display(),
        sg_testkit::python().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = Proc::start(
        &[
            "dev",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--gateway-listen",
            "{addr}",
            "--admin-listen",
            "{addr2}",
        ],
        &[("SECUREGATE_ADMIN_TOKEN", TOKEN)],
        dir.path(),
    )
    .await;
    let admin_base = format!(
        "http://{}",
        gateway.addr2.expect("{addr2} is in the arguments")
    );
    wait_ready(&admin_base, &gateway.log_path).await;
    let admin = AdminClient::new(&admin_base);
    let (project, _, key) = admin.setup(json!({"provider": "mock"})).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let out = tokio::process::Command::new(sg_testkit::python())
        .arg(script)
        .env("SG_BASE_URL", format!("{}/v1", gateway.url()))
        .env("SG_KEY", &key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gateway.log()
    );
    assert!(stdout.contains("sdk checks passed"), "{stdout}");
    // chat, stream, stream with usage, embeddings, the refused body: five authenticated requests.
    let usage = admin.usage_within_a_second(&project, 5).await;
    assert_eq!(usage["totals"]["requests"], 5, "{usage}");
}
