//! The small commands that container images and demos rely on: `mock-provider` (a
//! stand-in provider process) and `healthcheck` (a probe for images without a shell).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_securegate");

/// `securegate healthcheck <url>`'s exit code.
fn healthcheck(url: &str) -> i32 {
    Command::new(BIN)
        .args(["healthcheck", url, "--timeout", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap()
}

#[tokio::test]
async fn mock_provider_serves_and_healthcheck_tells_up_from_down() {
    // Another process may take the port between free_port and the bind: then the child
    // exits at once, and it starts again on a new port.
    let mut started = None;
    for _ in 0..5 {
        let port = sg_testkit::free_port();
        let base = format!("http://127.0.0.1:{port}");
        // Nothing listens yet: the probe fails.
        assert_eq!(healthcheck(&format!("{base}/healthz")), 1);
        let mut child = Command::new(BIN)
            .args(["mock-provider", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while healthcheck(&format!("{base}/healthz")) != 0 {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the mock provider never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !exited && child.try_wait().unwrap().is_none() {
            started = Some((child, base));
            break;
        }
    }
    let (mut child, base) = started.expect("the mock provider exited at start 5 times");
    // A 404 is not healthy.
    assert_eq!(healthcheck(&format!("{base}/nothing-here")), 1);

    // It speaks the OpenAI API: models, and a chat completion with usage.
    let models: serde_json::Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "mock-gpt-4o-mini"),
        "{models}"
    );
    let reply: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "mock-gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reply["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{reply}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthcheck(&format!("{base}/healthz")) != 1 {
        assert!(Instant::now() < deadline, "still healthy after the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
