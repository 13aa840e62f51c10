//! The README's five-minute walk-through, run as a newcomer pastes it.
//!
//! - The fenced ```` ```sh ```` and ```` ```python ```` blocks between the `## A
//!   five-minute walk-through` heading and the next `## ` heading are the walk-through
//!   (other fences there, such as ```` ```json ````, are shown, not run). They run in
//!   order in one `bash -euo pipefail` process, so variables carry from block to block;
//!   each Python block runs with `sg_testkit::python()` (which must have the official
//!   `openai` package) through a here-document in that same process, with its exported
//!   environment.
//! - `securegate dev` runs as the README starts it: without `SECUREGATE_ADMIN_TOKEN`, in
//!   a fresh directory that is also the blocks' working directory (they read
//!   `.securegate/admin.token`), on free ports given to the blocks as `GW` and `ADMIN`.
//!   A directory with `securegate` in it comes first on the blocks' `PATH`.
//! - After the blocks, the key they revoked is refused (401 `key_revoked`) within a
//!   few seconds.
//! - The operator token carries over: `dev` stopped with SIGTERM and started again on
//!   the same data directory, still without `SECUREGATE_ADMIN_TOKEN`, accepts the stored
//!   token; the file is mode 0600; the token is never in the logs, and the banner shows
//!   it only when it was generated.
//!
//! Needs `jq` and curl ≥ 7.82 (`--json`): a missing one fails the test with the package
//! to install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{assert_error, wait_ready};
use tokio::process::{Child, Command};

const HEADING: &str = "## A five-minute walk-through";
const TOKEN_FILE: &str = ".securegate/admin.token";

/// A fenced block of the walk-through: its info string and its text.
struct Block {
    lang: String,
    code: String,
}

/// The `sh` and `python` blocks of the README's walk-through section, in order.
fn walkthrough_blocks(readme: &str) -> Vec<Block> {
    let start = readme
        .find(&format!("\n{HEADING}\n"))
        .unwrap_or_else(|| panic!("README.md has no `{HEADING}` section"));
    let section = &readme[start + 1..];
    let end = section[HEADING.len()..]
        .find("\n## ")
        .map_or(section.len(), |i| HEADING.len() + i);
    let section = &section[..end];
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in section.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_owned(),
                    code: String::new(),
                })
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => {
                let block = open.take().unwrap();
                if block.lang == "sh" || block.lang == "python" {
                    blocks.push(block);
                }
            }
            (Some(block), _) => {
                block.code.push_str(line);
                block.code.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code fence in {HEADING}");
    blocks
}

/// What a newcomer cannot paste: a `<placeholder>` (the shell reads `<` as a
/// redirection) or an ellipsis (`SG_…`) outside a comment.
fn unpasteable(blocks: &[Block]) -> Vec<String> {
    let mut found = Vec::new();
    for block in blocks {
        for line in block.code.lines() {
            let code = match line.trim_start().starts_with('#') {
                true => "",
                false => line.split(" #").next().unwrap_or(line),
            };
            let placeholder = code
                .match_indices('<')
                .any(|(i, _)| code[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic()));
            if placeholder || code.contains('…') {
                found.push(line.to_owned());
            }
        }
    }
    found
}

/// Fails loudly unless `jq` runs and curl is ≥ 7.82 (for `--json`).
fn require_tools() {
    let jq = std::process::Command::new("jq").arg("--version").output();
    assert!(
        jq.is_ok_and(|o| o.status.success()),
        "the walk-through needs jq: apt-get install jq curl (macOS: brew install jq)"
    );
    let curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .expect("the walk-through needs curl >= 7.82: apt-get install jq curl");
    let text = String::from_utf8_lossy(&curl.stdout);
    let version: Vec<u32> = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    assert!(
        version.as_slice() >= [7, 82].as_slice(),
        "the walk-through needs curl >= 7.82 (for --json), found {}: apt-get install jq curl",
        text.lines().next().unwrap_or_default()
    );
}

/// Fails loudly unless Python can import the official OpenAI SDK.
fn require_openai_sdk() -> PathBuf {
    let python = sg_testkit::python();
    let ok = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the walk-through's Python block needs the official OpenAI SDK in {}: `{} -m pip \
         install openai` (.ci/run installs it; SG_PYTHON or an active virtual environment \
         picks the interpreter)",
        python.display(),
        python.display()
    );
    python
}

/// `securegate dev` with no token in its environment, in `dir`, on the given ports;
/// stdout and stderr in separate files.
struct DevProc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl DevProc {
    /// The first start, on free ports; again on new ones when another process took one
    /// before `dev` bound it. Returns the gateway's and the admin API's ports.
    async fn first(dir: &Path) -> (DevProc, u16, u16) {
        for _ in 0..5 {
            let (gateway, admin) = (sg_testkit::free_port(), sg_testkit::free_port());
            let mut dev = DevProc::spawn(dir, gateway, admin, 1);
            match dev.ready(gateway, admin).await {
                Ok(()) => return (dev, gateway, admin),
                Err(out) if out.contains("Address already in use") => {
                    eprintln!("a port was taken before dev bound it; starting again");
                }
                Err(out) => panic!("dev exited before it was ready:\n{out}"),
            }
        }
        panic!("dev found no free ports in 5 attempts");
    }

    /// Starts `dev` again on the ports it had.
    async fn start(dir: &Path, gateway: u16, admin: u16, run: u32) -> DevProc {
        let mut dev = DevProc::spawn(dir, gateway, admin, run);
        if let Err(out) = dev.ready(gateway, admin).await {
            panic!("dev exited before it was ready:\n{out}");
        }
        dev
    }

    fn spawn(dir: &Path, gateway: u16, admin: u16, run: u32) -> DevProc {
        let stdout = dir.join(format!("dev-{run}.out"));
        let stderr = dir.join(format!("dev-{run}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_securegate"))
            .args([
                "dev",
                "--gateway-listen",
                &format!("127.0.0.1:{gateway}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the securegate binary");
        DevProc {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the banner, which comes after both listeners are up, then for both to
    /// answer `/readyz`; `Err(output)` when the process exited first.
    async fn ready(&mut self, gateway: u16, admin: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.banner().contains("Data directory") {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no banner on stdout after 30 s:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_ready(&format!("http://127.0.0.1:{gateway}"), &self.stderr).await;
        wait_ready(&format!("http://127.0.0.1:{admin}"), &self.stderr).await;
        Ok(())
    }

    fn banner(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.banner(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// SIGTERM, and the process exits 0 within 20 s.
    async fn stop(&mut self) {
        let pid = self.child.id().expect("dev already exited");
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("dev did not stop within 20 s of SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "dev exited with {status}:\n{}",
            self.output()
        );
    }
}

/// Runs `script` in `bash -euo pipefail` in `dir`; returns (success, stdout, stderr).
async fn bash(dir: &Path, script: &str, envs: &[(&str, &str)]) -> (bool, String, String) {
    let path = dir.join("walkthrough.sh");
    std::fs::write(&path, script).unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-x"])
        .arg(&path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // Nothing of the caller's session decides what the blocks do.
    for var in [
        "SECUREGATE_ADMIN_TOKEN",
        "SECUREGATE_DATA_DIR",
        "SECUREGATE_URL",
        "SECUREGATE_TOKEN",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "GW",
        "ADMIN",
        "A",
        "AUTH",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the walk-through did not finish within 120 s")
        .expect("cannot run bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (status, body) of `GET {admin}/admin/v1/tenants` with `token`.
async fn list_tenants(admin: u16, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin}/admin/v1/tenants"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_pasted() {
    require_tools();
    let python = require_openai_sdk();
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let blocks = walkthrough_blocks(&readme);
    assert!(
        blocks.iter().any(|b| b.lang == "sh") && blocks.iter().any(|b| b.lang == "python"),
        "{HEADING} must have ```sh blocks and a ```python block"
    );
    assert!(
        blocks
            .iter()
            .any(|b| b.lang == "sh" && b.code.contains("/revoke")),
        "{HEADING} must revoke the key in a ```sh block"
    );
    let bad = unpasteable(&blocks);
    assert!(
        bad.is_empty(),
        "lines of {HEADING} that fail when pasted (placeholder or ellipsis):\n{}",
        bad.join("\n")
    );

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_securegate"), bin.join("securegate")).unwrap();
    let (mut dev, gateway_port, admin_port) = DevProc::first(&work).await;

    // A new token, generated, printed once with where it is kept, stored 0600.
    let token_path = work.join(TOKEN_FILE);
    let token = std::fs::read_to_string(&token_path)
        .unwrap_or_else(|e| {
            panic!(
                "no {TOKEN_FILE} after the first start ({e}):\n{}",
                dev.output()
            )
        })
        .trim()
        .to_owned();
    assert!(
        token.starts_with("sgadm_"),
        "{token_path:?} holds {token:?}"
    );
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "{TOKEN_FILE} is mode {:o}",
        mode & 0o777
    );
    let banner = dev.banner();
    assert_eq!(banner.matches(&token).count(), 1, "{banner}");
    assert!(banner.contains(TOKEN_FILE), "{banner}");

    // The blocks, in order, in one shell; the test reads what they made afterwards.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut script = String::new();
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("# ---- block {i} ({})\n", block.lang));
        match block.lang.as_str() {
            "python" => {
                script.push_str("\"$SG_WALKTHROUGH_PYTHON\" - <<'SG_WALKTHROUGH_PY'\n");
                script.push_str(&block.code);
                script.push_str("SG_WALKTHROUGH_PY\n");
            }
            _ => script.push_str(&block.code),
        }
    }
    script.push_str(
        "# ---- after the blocks\n\
         printf '%s\\n' \"$KEY\" > \"$SG_WALKTHROUGH_OUT/key\"\n\
         printf '%s\\n' \"$KEY_ID\" > \"$SG_WALKTHROUGH_OUT/key_id\"\n",
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let gw = format!("http://127.0.0.1:{gateway_port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let (ok, stdout, stderr) = bash(
        &work,
        &script,
        &[
            ("PATH", &path),
            ("GW", &gw),
            ("ADMIN", &admin),
            ("SG_WALKTHROUGH_PYTHON", python.to_str().unwrap()),
            ("SG_WALKTHROUGH_OUT", out.to_str().unwrap()),
        ],
    )
    .await;
    let report = format!(
        "the walk-through:\n{script}\nits stdout:\n{stdout}\nits stderr (bash -x):\n{stderr}\ndev:\n{}",
        dev.output()
    );
    assert!(ok, "the walk-through failed.\n{report}");
    // The chat answered, and so did the SDK, plainly and streamed.
    assert!(
        stdout.contains("\"chat.completion\""),
        "no chat completion.\n{report}"
    );
    assert!(
        stdout.contains("This is a mock reply to: Hello!")
            && stdout.contains("This is a mock reply to: Stream, please"),
        "the Python SDK's answers are missing.\n{report}"
    );
    assert!(
        stdout.contains("\"data\":["),
        "no {{\"data\": […]}} list.\n{report}"
    );
    let key = std::fs::read_to_string(out.join("key"))
        .unwrap()
        .trim()
        .to_owned();
    let key_id = std::fs::read_to_string(out.join("key_id"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("SG_"), "KEY is {key:?}.\n{report}");
    assert!(
        key_id.starts_with("key_"),
        "KEY_ID is {key_id:?}.\n{report}"
    );

    // The revocation took: the key is refused with 401 key_revoked within a few seconds.
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let last = loop {
        let r = client
            .post(format!("{gw}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&support::chat_body(false))
            .send()
            .await
            .unwrap();
        let last = (r.status().as_u16(), r.text().await.unwrap());
        if (last.0 == 401 && last.1.contains("key_revoked")) || std::time::Instant::now() > deadline
        {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        last.0, 401,
        "after the walk-through's revoke the key still gets {} {}.\n{report}",
        last.0, last.1
    );
    assert_error(&last.1, "key_revoked");

    // The token carries over a restart without SECUREGATE_ADMIN_TOKEN.
    dev.stop().await;
    let first = dev.output();
    let mut dev = DevProc::start(&work, gateway_port, admin_port, 2).await;
    let (status, tenants) = list_tenants(admin_port, &token).await;
    assert_eq!(status, 200, "{tenants}\n{}", dev.output());
    assert!(
        tenants["data"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "acme")),
        "the operator's GET /tenants misses the walk-through's tenant: {tenants}"
    );
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap().trim(),
        token,
        "the restart replaced the stored token"
    );
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let banner = dev.banner();
    assert!(
        !banner.contains(&token) && banner.contains(TOKEN_FILE),
        "a restart names the token file and does not print the token again:\n{banner}"
    );
    dev.stop().await;
    for (run, output) in [(1, first), (2, dev.output())] {
        let logs = output.split("\nstderr:\n").nth(1).unwrap_or_default();
        assert!(
            !logs.contains(&token),
            "run {run} logged the operator token:\n{logs}"
        );
    }
}

/// What the pasting check catches: the old walk-through's placeholder and literal key.
#[test]
fn placeholders_and_ellipses_are_caught() {
    let readme = "# x\n\n## A five-minute walk-through\n\n```sh\n\
                  curl -s -X POST $A/keys/<key id>/revoke\n\
                  KEY=$(jq -r .key <<<\"$KEY_JSON\")  # SG_… is fine in a comment\n\
                  ```\n\n```json\n<not run>\n```\n\n```python\n\
                  client = OpenAI(api_key=\"SG_…\")\n```\n\n## Next\n\n```sh\nnot <this>\n```\n";
    let blocks = walkthrough_blocks(readme);
    assert_eq!(
        blocks.iter().map(|b| b.lang.as_str()).collect::<Vec<_>>(),
        ["sh", "python"]
    );
    assert_eq!(
        unpasteable(&blocks),
        [
            "curl -s -X POST $A/keys/<key id>/revoke",
            "client = OpenAI(api_key=\"SG_…\")"
        ]
    );
}
