//! The owner CLI as a real process against a real `securegate dev`: login, status,
//! connect, keys (create, lock, bind-device, update, rotate, revoke), env, usage,
//! completions and logout, with the official OpenAI Python SDK using what it printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::AsyncWriteExt as _;

/// The provider key typed into `connect`: it must never come back out.
const PROVIDER_KEY: &str = "sk-cli-test-provider-key-4f1c9e0b7a";

/// Runs the CLI with its own HOME and XDG_CONFIG_HOME, keeping everything it printed.
struct Cli {
    home: tempfile::TempDir,
    config: PathBuf,
    transcript: Mutex<String>,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn new() -> Cli {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("xdg-config");
        Cli {
            home,
            config,
            transcript: Mutex::new(String::new()),
        }
    }

    fn credentials(&self) -> PathBuf {
        self.config.join("securegate").join("credentials.toml")
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Run {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_securegate"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", &self.config)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("securegate {args:?} did not finish within 60 s"))
            .unwrap();
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        };
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&format!(
            "$ securegate {}\n{}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        ));
        run
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let r = self.run(args, stdin, &[]).await;
        assert_eq!(
            r.code,
            Some(0),
            "securegate {args:?} failed:\n{}{}",
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Runs a command with `--output json` that must succeed; returns the parsed JSON.
    async fn json(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.ok(&all, stdin).await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("securegate {all:?} printed no JSON ({e}):\n{out}"))
    }

    /// Runs a command that must fail with a one-line reason on stderr; returns it.
    async fn fails(&self, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> String {
        let r = self.run(args, stdin, envs).await;
        assert_eq!(
            r.code,
            Some(1),
            "securegate {args:?} should fail:\n{}{}",
            r.stdout,
            r.stderr
        );
        let line = r.stderr.trim_end();
        assert!(
            line.starts_with("securegate: ") && !line.contains('\n'),
            "not a one-line reason: {:?}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "printed on failure: {}", r.stdout);
        line.to_owned()
    }

    fn transcript(&self) -> String {
        self.transcript.lock().unwrap().clone()
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs Python code; returns (success, stdout, stderr).
async fn python(code: &str, envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(sg_testkit::python());
    cmd.arg("-c").arg(code);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .expect("Python is needed for the CLI test (sg_testkit::python(): SG_PYTHON, the active virtual environment, else python3)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `KEY=value` lines of a dotenv file.
fn dotenv(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .to_owned()
}

/// Polls a chat request until it answers `status` (and `code`, if given); panics after
/// `within`, showing the last answer.
async fn until(
    within: Duration,
    what: &str,
    status: u16,
    code: Option<&str>,
    send: impl AsyncFn() -> (u16, String),
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (s, body) = send().await;
        let code_ok = code.is_none_or(|c| {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| v["error"]["code"] == c)
        });
        if s == status && code_ok {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: wanted {status} {code:?} within {within:?}, last answer {s}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const SDK_CHAT: &str = r#"
import os
from openai import OpenAI
client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["SG_KEY"], max_retries=0)
reply = client.chat.completions.create(
    model="mock-gpt-4o-mini", messages=[{"role": "user", "content": "hello from the cli test"}])
print(reply.choices[0].message.content)
"#;

#[tokio::test]
async fn the_owner_cli_drives_a_real_gateway() {
    let (ok, _, _) = python("import openai", &[]).await;
    assert!(
        ok,
        "the official OpenAI Python SDK is missing from {}: `{} -m pip install openai` (.ci/run installs it; SG_PYTHON or an active virtual environment picks the interpreter)",
        sg_testkit::python().display(),
        sg_testkit::python().display()
    );
    let upstream = sg_testkit::MockUpstream::start(sg_testkit::MockConfig {
        expected_api_key: Some(PROVIDER_KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dev = Dev::start(&[], &[]).await;
    let admin_url = dev.admin.base.trim_end_matches("/admin/v1").to_owned();
    let gw = dev.gateway.url();

    // The operator makes a tenant with a project and an owner token for it.
    let tenant = dev.admin.tenant("acme").await;
    let project = dev.admin.project(&tenant, "agents").await;
    // The test provokes lock refusals on purpose and polls refused keys; abuse
    // detection would suspend them, and a suspension hides why a key is refused.
    dev.admin.without_abuse_detection(&project).await;
    let (_, token) = dev.admin.token(&tenant, "cli", "owner").await;

    let cli = Cli::new();

    // Not logged in yet.
    let err = cli.fails(&["status"], None, &[]).await;
    assert_eq!(
        err,
        "securegate: not logged in: run `securegate login --url <admin URL>` (or set SECUREGATE_URL and SECUREGATE_TOKEN)"
    );

    // Login: the token from stdin, checked with /me, stored privately.
    let login = cli
        .json(
            &["login", "--url", &admin_url, "--token-stdin"],
            Some(&format!("{token}\n")),
        )
        .await;
    assert_eq!(login["url"], admin_url.as_str(), "{login}");
    assert_eq!(login["me"]["role"], "owner", "{login}");
    assert_eq!(login["me"]["tenant"]["id"], tenant.as_str(), "{login}");
    assert_eq!(
        login["credentials_file"],
        cli.credentials().to_str().unwrap(),
        "{login}"
    );
    let creds = std::fs::read_to_string(cli.credentials()).unwrap();
    assert!(
        creds.contains(&token) && creds.contains(&admin_url),
        "{creds}"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&cli.credentials()), 0o600);
        assert_eq!(mode(cli.credentials().parent().unwrap()), 0o700);
        // A file others can read is refused, saying how to fix it.
        chmod(&cli.credentials(), 0o644);
        let err = cli.fails(&["status"], None, &[]).await;
        assert!(
            err.contains(&format!("chmod 600 {}", cli.credentials().display())),
            "{err}"
        );
        chmod(&cli.credentials(), 0o600);
    }
    // The human form says who you are.
    let text = cli
        .ok(
            &["login", "--url", &admin_url, "--token-stdin"],
            Some(&token),
        )
        .await;
    assert!(
        text.contains("as token \"cli\" (owner) of tenant acme") && text.contains("plan team"),
        "{text}"
    );

    // Status: the tenant, its plan, its one project, nothing in it yet.
    let status = cli.json(&["status"], None).await;
    assert_eq!(status["me"]["caller"], "token", "{status}");
    assert_eq!(status["me"]["token"]["name"], "cli", "{status}");
    assert_eq!(status["me"]["plan"]["name"], "team", "{status}");
    assert_eq!(status["me"]["gateway_url"], gw.as_str(), "{status}");
    assert_eq!(
        status["projects"],
        json!([{"id": project, "name": "agents", "connections": 0, "keys": 0, "active_keys": 0}]),
        "{status}"
    );

    // Connect: the mock provider, and an OpenAI connection whose key is piped in.
    let mock = cli
        .json(
            &["connect", "--provider", "mock", "--api-key-stdin"],
            Some("not-needed-by-the-mock\n"),
        )
        .await;
    assert!(mock["id"].as_str().unwrap().starts_with("mock_"), "{mock}");
    assert_eq!(mock["project_id"], project.as_str(), "{mock}");
    let openai = cli
        .json(
            &[
                "connect",
                "--provider",
                "openai",
                "--name",
                "upstream",
                "--base-url",
                &upstream.base_url(),
                "--api-key-stdin",
            ],
            Some(&format!("{PROVIDER_KEY}\n")),
        )
        .await;
    let connection = openai["id"].as_str().unwrap().to_owned();
    assert!(connection.starts_with("openai_"), "{openai}");
    assert_eq!(openai["name"], "upstream", "{openai}");
    assert!(openai.get("api_key").is_none(), "{openai}");
    let err = cli
        .fails(&["connect", "--provider", "openai"], None, &[])
        .await;
    assert!(err.contains("--api-key-stdin"), "{err}");
    let status = cli.json(&["status"], None).await;
    assert_eq!(status["projects"][0]["connections"], 2, "{status}");

    // A key on the OpenAI connection, shown once.
    let key = cli
        .json(
            &[
                "keys",
                "create",
                "--name",
                "agent",
                "--connection",
                &connection,
            ],
            None,
        )
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let secret = key["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("SG_"), "{key}");
    assert_eq!(key["connection_ids"], json!([connection]), "{key}");
    let text = cli
        .ok(
            &["keys", "create", "--name", "spare", "--models", "a,b"],
            None,
        )
        .await;
    let spare_secret = text
        .lines()
        .find(|l| l.starts_with("SG_"))
        .unwrap_or_else(|| panic!("no key printed:\n{text}"));
    assert!(text.contains("only time the key is shown"), "{text}");
    assert!(text.contains("Models       a,b"), "{text}");
    let list = cli.json(&["keys", "list"], None).await;
    let listed = list["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{list}");
    assert!(
        !list.to_string().contains(&secret) && !list.to_string().contains(spare_secret),
        "a key list shows a key: {list}"
    );

    // env: the base URL and this machine's fingerprint.
    let env_file = cli.ok(&["env", "--lang", "dotenv"], None).await;
    let base_url = dotenv(&env_file, "OPENAI_BASE_URL");
    assert_eq!(base_url, format!("{gw}/v1"));
    assert_eq!(dotenv(&env_file, "OPENAI_API_KEY"), "");
    let fingerprint = dotenv(&env_file, "SECUREGATE_DEVICE_FINGERPRINT");
    assert!(
        fingerprint.len() == 36
            && fingerprint.starts_with("sgd_")
            && fingerprint[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{fingerprint}"
    );
    // The documented derivation, computed independently.
    let (ok, expected, err) = python(
        "import hashlib,pathlib\n\
         p = next(f for f in ['/etc/machine-id', '/var/lib/dbus/machine-id'] if pathlib.Path(f).exists())\n\
         mid = pathlib.Path(p).read_text().strip()\n\
         print('sgd_' + hashlib.sha256(('securegate-device-v1\\n' + mid).encode()).hexdigest()[:32])",
        &[],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(fingerprint, expected.trim());
    let env_json = cli.json(&["env", "--key", &key_id], None).await;
    assert_eq!(env_json["base_url"], base_url.as_str(), "{env_json}");
    assert_eq!(env_json["connection_id"], connection.as_str(), "{env_json}");
    assert_eq!(
        env_json["device_fingerprint"],
        fingerprint.as_str(),
        "{env_json}"
    );

    // The official OpenAI Python SDK with the printed key and base URL; the provider
    // sees the provider key that was piped into `connect`.
    let (ok, out, err) = python(
        SDK_CHAT,
        &[("OPENAI_BASE_URL", &base_url), ("SG_KEY", &secret)],
    )
    .await;
    assert!(
        ok,
        "SDK request failed:\n{out}\n{err}\n{}",
        dev.gateway.log()
    );
    assert!(out.contains("hello from the cli test"), "{out}");
    assert_eq!(
        upstream.last_authorization().as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );

    let body = chat_body(false);
    let local = client_from("127.0.0.1");

    // keys lock: only 127.0.0.1.
    let locks = cli
        .json(&["keys", "lock", &key_id, "--ip", "127.0.0.1"], None)
        .await;
    assert_eq!(
        locks["locks"]["ip"],
        json!({"mode": "allow", "cidrs": ["127.0.0.1/32"]}),
        "{locks}"
    );
    let other = client_from("127.0.0.2");
    until(
        Duration::from_secs(3),
        "another address",
        403,
        Some("ip_not_allowed"),
        async || chat_with(&other, &gw, &secret, body.clone(), &[]).await,
    )
    .await;
    let (s, b) = chat_with(&local, &gw, &secret, body.clone(), &[]).await;
    assert_eq!(s, 200, "{b}");

    // keys bind-device: this machine's fingerprint, as `env` prints it.
    let locks = cli.json(&["keys", "bind-device", &key_id], None).await;
    assert_eq!(
        locks["locks"]["device"],
        json!({"mode": "fixed", "fingerprint": fingerprint}),
        "{locks}"
    );
    assert_eq!(
        locks["locks"]["ip"]["mode"], "allow",
        "the IP lock was kept: {locks}"
    );
    let with_device = [("x-device-fingerprint", fingerprint.clone())];
    until(
        Duration::from_secs(3),
        "no device fingerprint",
        403,
        Some("device_required"),
        async || chat_with(&local, &gw, &secret, body.clone(), &[]).await,
    )
    .await;
    let (s, b) = chat_with(&local, &gw, &secret, body.clone(), &with_device).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = chat_with(
        &local,
        &gw,
        &secret,
        body.clone(),
        &[("x-device-fingerprint", "sgd_someone_else".into())],
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_error(&b, "device_not_allowed");

    // The Python snippet `env` prints works as printed (it sends the fingerprint and the
    // key's connection).
    let snippet = cli
        .ok(&["env", "--lang", "python", "--key", &key_id], None)
        .await;
    assert!(snippet.contains("x-device-fingerprint"), "{snippet}");
    let program = format!(
        "{snippet}\nreply = client.chat.completions.create(model=\"mock-gpt-4o-mini\", messages=[{{\"role\": \"user\", \"content\": \"snippet works\"}}])\nprint(reply.choices[0].message.content)\n"
    );
    let (ok, out, err) = python(&program, &[("SECUREGATE_KEY", &secret)]).await;
    assert!(ok, "the printed snippet failed:\n{program}\n{out}\n{err}");
    assert!(out.contains("snippet works"), "{out}");
    let curl = cli.ok(&["env", "--lang", "curl"], None).await;
    assert!(
        curl.contains(&format!("-H 'x-device-fingerprint: {fingerprint}'")),
        "{curl}"
    );

    // keys update: changes only what was given.
    let locks = cli
        .json(
            &[
                "keys",
                "update",
                &key_id,
                "--models",
                "mock-gpt-4o-mini",
                "--expires",
                "2030-01-01T00:00:00Z",
            ],
            None,
        )
        .await;
    assert_eq!(
        locks["locks"]["models"],
        json!(["mock-gpt-4o-mini"]),
        "{locks}"
    );
    assert_eq!(locks["locks"]["expires_at"], 1_893_456_000, "{locks}");
    assert_eq!(locks["locks"]["ip"]["mode"], "allow", "{locks}");
    assert_eq!(locks["locks"]["device"]["mode"], "fixed", "{locks}");
    let locks = cli
        .json(&["keys", "update", &key_id, "--models", "any"], None)
        .await;
    assert_eq!(locks["locks"]["models"], Value::Null, "{locks}");
    assert_eq!(locks["locks"]["expires_at"], 1_893_456_000, "{locks}");
    let err = cli.fails(&["keys", "update", &key_id], None, &[]).await;
    assert!(err.contains("nothing to change"), "{err}");
    let (s, b) = chat_with(&local, &gw, &secret, body.clone(), &with_device).await;
    assert_eq!(s, 200, "{b}");

    // keys rotate: a new key now; the old one until the grace ends, then key_expired.
    let rotated = cli
        .json(&["keys", "rotate", &key_id, "--grace", "2s"], None)
        .await;
    let (s, b) = chat_with(&local, &gw, &secret, body.clone(), &with_device).await;
    assert_eq!(s, 200, "the old key stopped before its grace ended: {b}");
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    assert!(
        new_secret.starts_with("SG_") && new_secret != secret,
        "{rotated}"
    );
    assert_eq!(rotated["replaces"], key_id.as_str(), "{rotated}");
    assert!(rotated["replaced_key_retires_at"].is_string(), "{rotated}");
    until(
        Duration::from_secs(3),
        "the new key",
        200,
        None,
        async || chat_with(&local, &gw, &new_secret, body.clone(), &with_device).await,
    )
    .await;
    until(
        Duration::from_secs(6),
        "the old key after its grace",
        403,
        Some("key_expired"),
        async || chat_with(&local, &gw, &secret, body.clone(), &with_device).await,
    )
    .await;
    // The new key kept the locks.
    let (s, b) = chat_with(&local, &gw, &new_secret, body.clone(), &[]).await;
    assert_eq!(s, 403, "{b}");
    assert_error(&b, "device_required");
    let text = cli
        .ok(&["keys", "rotate", &new_id, "--grace", "1h"], None)
        .await;
    assert!(
        text.contains("Old key stops") && text.contains("(in 1h"),
        "{text}"
    );
    assert!(text.contains("only time the key is shown"), "{text}");

    // usage: the requests made above.
    let mut report = Value::Null;
    for _ in 0..100 {
        report = cli.json(&["usage", "--group-by", "key"], None).await;
        if report["totals"]["requests"].as_u64().unwrap_or(0) >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        report["totals"]["requests"].as_u64().unwrap() >= 6,
        "{report}"
    );
    assert!(
        report["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == key_id.as_str()),
        "{report}"
    );
    let key_report = cli.json(&["usage", "--key", &key_id], None).await;
    assert!(
        key_report["totals"]["requests"].as_u64().unwrap() >= 1,
        "{key_report}"
    );
    let table = cli.ok(&["usage", "--group-by", "model"], None).await;
    assert!(
        table.contains("MODEL") && table.contains("mock-gpt-4o-mini") && table.contains("TOTAL"),
        "{table}"
    );

    // keys revoke.
    let revoked = cli
        .json(&["keys", "revoke", &new_id, "--reason", "done"], None)
        .await;
    assert_eq!(revoked, json!({"id": new_id, "status": "revoked"}));
    until(
        Duration::from_secs(3),
        "a revoked key",
        401,
        Some("key_revoked"),
        async || chat_with(&local, &gw, &new_secret, body.clone(), &with_device).await,
    )
    .await;
    let err = cli
        .fails(&["keys", "revoke", "key_doesnotexist"], None, &[])
        .await;
    assert!(err.contains("HTTP 404"), "{err}");
    let list = cli.json(&["keys", "list"], None).await;
    let status_of = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["status"].clone())
    };
    assert_eq!(status_of(&new_id), Some(json!("revoked")), "{list}");
    assert_eq!(status_of(&key_id), Some(json!("active")), "{list}");

    // Completions.
    for shell in ["bash", "zsh", "fish"] {
        let script = cli.ok(&["completions", shell], None).await;
        assert!(
            script.contains("securegate") && script.contains("bind-device"),
            "{shell}: {script}"
        );
    }

    // Logout: the file goes, and so does the login.
    let creds = std::fs::read_to_string(cli.credentials()).unwrap();
    assert!(!creds.contains(PROVIDER_KEY), "{creds}");
    let out = cli.json(&["logout"], None).await;
    assert_eq!(out["deleted"], true, "{out}");
    assert!(!cli.credentials().exists());
    let text = cli.ok(&["logout"], None).await;
    assert!(text.contains("Not logged in"), "{text}");
    let err = cli.fails(&["keys", "list"], None, &[]).await;
    assert!(err.contains("not logged in"), "{err}");

    // SECUREGATE_URL and SECUREGATE_TOKEN work without a login.
    let env = [
        ("SECUREGATE_URL", admin_url.as_str()),
        ("SECUREGATE_TOKEN", token.as_str()),
    ];
    let r = cli.run(&["status", "--output", "json"], None, &env).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let status: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status["projects"][0]["keys"], 4, "{status}");
    assert_eq!(status["projects"][0]["active_keys"], 3, "{status}");
    assert!(status["tenants"].is_null(), "{status}");
    // The operator sees the tenants instead of projects.
    let op_env = [
        ("SECUREGATE_URL", admin_url.as_str()),
        ("SECUREGATE_TOKEN", TOKEN),
    ];
    let r = cli
        .run(&["status", "--output", "json"], None, &op_env)
        .await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let status: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status["me"]["caller"], "operator", "{status}");
    assert_eq!(status["tenants"][0]["id"], tenant.as_str(), "{status}");
    let r = cli.run(&["status"], None, &op_env).await;
    assert!(
        r.stdout.contains(&tenant) && r.stdout.contains("team"),
        "{}",
        r.stdout
    );
    // A refused token, and an admin API that is not there.
    let err = cli
        .fails(
            &["status"],
            None,
            &[
                ("SECUREGATE_URL", &admin_url),
                ("SECUREGATE_TOKEN", "SGA_not_a_real_token"),
            ],
        )
        .await;
    assert!(err.contains("invalid, expired or revoked"), "{err}");
    let nowhere = format!("http://127.0.0.1:{}", sg_testkit::free_port());
    let err = cli
        .fails(
            &["status"],
            None,
            &[("SECUREGATE_URL", &nowhere), ("SECUREGATE_TOKEN", &token)],
        )
        .await;
    assert!(
        err.contains(&format!("cannot reach the admin API at {nowhere}")),
        "{err}"
    );

    // The provider key never came back out.
    let transcript = cli.transcript();
    assert!(
        !transcript.contains(PROVIDER_KEY),
        "the provider key was printed:\n{transcript}"
    );
    assert!(
        transcript.contains(&secret),
        "the issued key was printed once"
    );
}
