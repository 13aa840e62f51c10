//! SKILL.md, followed as an agent would follow it, against a real `securegate dev`.
//!
//! The rule that turns the file into a test (SKILL.md's last section says it too):
//!
//! - **Commands**: every non-blank line of every fenced block whose info string is `sh`
//!   is a command, except lines starting with `#`. It must start with `securegate `,
//!   consist of plain words (no quotes, pipes, redirections or `$`), and may end with a
//!   ` # comment`. They run as real `securegate` processes, one after another, in the
//!   order of the file, with their own HOME and XDG_CONFIG_HOME.
//! - **Placeholders** `<NAME>` in a command are replaced from [`Vars`]: `<ADMIN_URL>` (the
//!   admin API), `<PROVIDER>` (`mock`), `<AGENT_IP>` (`127.0.0.1`), `<EXPIRES>` (a date in
//!   2099) and `<KEY_ID>` (the `id` of the latest `--output json` answer that issued a
//!   key, i.e. `keys create` or `keys rotate`). Any other placeholder fails the test.
//! - **Expected outcome**: `login` is the human's: it gets the owner token on standard
//!   input (`--token-stdin` is added when missing, because a human types the token at the
//!   prompt, which a test cannot). Before it (and after `logout`), a command that needs a
//!   login must fail with exit code 1 and the not-logged-in line, and SKILL.md must quote
//!   that line (the documented failure). Every other command must exit 0; one with
//!   `--output json` must print JSON. Only `keys create` and `keys rotate` may print a
//!   proxy key.
//! - **JSON examples**: a fenced `json` block documents the output of the command just
//!   before it, which must have run with `--output json`: every key the example shows must
//!   be in the output (arrays element by element; a non-null scalar must have the same
//!   type; values are illustrations). `usage` is re-run for a few seconds until it
//!   matches, as usage reports lag requests by design.
//! - **Python**: every fenced `python` block runs with `sg_testkit::python()` (which
//!   must have the official `openai` package), `securegate` on its PATH and the same
//!   login; it must exit 0 and print no proxy key.
//! - **Elsewhere**: no other fenced block may hold a line starting with `securegate `,
//!   and every inline `` `securegate …` `` span of the prose must name a command whose
//!   `--help` lists every `--flag` the span names.
//! - **Errors**: the errors SKILL.md lists (not logged in, no terminal for `login`, a
//!   revoked token, `role_required`, `plan_required`) are reproduced and each line must
//!   appear verbatim in SKILL.md.
//!
//! The test fails if SKILL.md names no command, or misses one of the steps an agent
//! needs (status, login, connect, keys create/lock/bind-device/rotate/revoke, env, usage).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio::io::AsyncWriteExt as _;

/// The file under test.
const SKILL: &str = include_str!("../../../SKILL.md");

/// What `securegate` says when there is no login.
const NOT_LOGGED_IN: &str = "securegate: not logged in";

/// The subcommands an agent needs; SKILL.md must run each of them.
const REQUIRED: &[&str] = &[
    "status",
    "login",
    "connect",
    "keys create",
    "keys lock",
    "keys bind-device",
    "keys rotate",
    "keys revoke",
    "env",
    "usage",
];

/// One runnable thing of SKILL.md, in the file's order.
#[derive(Debug)]
enum Item {
    /// A line of an `sh` block.
    Command { line: usize, text: String },
    /// A `python` block.
    Python { line: usize, code: String },
    /// A `json` block.
    Json { line: usize, example: Value },
}

/// SKILL.md, parsed.
struct Skill {
    items: Vec<Item>,
    /// Inline `securegate …` spans of the prose, with their line numbers.
    mentions: Vec<(usize, String)>,
}

/// A fenced block being read: its info string, the line of its opening fence, its lines.
struct Fence {
    info: String,
    start: usize,
    lines: Vec<(usize, String)>,
}

fn parse(md: &str) -> Skill {
    let mut items = Vec::new();
    let mut mentions = Vec::new();
    let mut block: Option<Fence> = None;
    for (i, raw) in md.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        match &mut block {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    block = Some(Fence {
                        info: info.trim().to_owned(),
                        start: n,
                        lines: Vec::new(),
                    });
                    continue;
                }
                for (k, span) in raw.split('`').enumerate() {
                    if k % 2 == 1 && span.starts_with("securegate ") {
                        mentions.push((n, span.to_owned()));
                    }
                }
            }
            Some(open) => {
                if trimmed != "```" {
                    open.lines.push((n, raw.to_owned()));
                    continue;
                }
                let Some(Fence { info, start, lines }) = block.take() else {
                    unreachable!()
                };
                match info.as_str() {
                    "sh" => {
                        for (n, l) in lines {
                            let l = l.trim();
                            if l.is_empty() || l.starts_with('#') {
                                continue;
                            }
                            assert!(
                                l.starts_with("securegate "),
                                "SKILL.md:{n}: an ```sh block holds only `securegate …` lines (the test runs each): {l:?}"
                            );
                            items.push(Item::Command {
                                line: n,
                                text: l.to_owned(),
                            });
                        }
                    }
                    "python" => items.push(Item::Python {
                        line: start,
                        code: lines
                            .iter()
                            .map(|(_, l)| format!("{l}\n"))
                            .collect::<String>(),
                    }),
                    "json" => {
                        let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
                        let example = serde_json::from_str(&text).unwrap_or_else(|e| {
                            panic!("SKILL.md:{start}: a ```json block that is not JSON ({e})")
                        });
                        items.push(Item::Json {
                            line: start,
                            example,
                        });
                    }
                    _ => {
                        for (n, l) in lines {
                            let l = l.trim().trim_start_matches("$ ");
                            assert!(
                                !l.starts_with("securegate "),
                                "SKILL.md:{n}: a command outside an ```sh block (```{info}), which the test would not run: {l:?}"
                            );
                        }
                    }
                }
            }
        }
    }
    if let Some(Fence { start, .. }) = block {
        panic!("SKILL.md:{start}: a fenced block that is never closed");
    }
    Skill { items, mentions }
}

/// The placeholder table.
struct Vars(BTreeMap<&'static str, Option<String>>);

impl Vars {
    fn new(admin_url: &str) -> Vars {
        Vars(BTreeMap::from([
            ("ADMIN_URL", Some(admin_url.to_owned())),
            ("PROVIDER", Some("mock".to_owned())),
            ("AGENT_IP", Some("127.0.0.1".to_owned())),
            ("EXPIRES", Some("2099-01-01T00:00:00Z".to_owned())),
            ("KEY_ID", None),
        ]))
    }

    /// `text` with every `<NAME>` replaced.
    fn substitute(&self, line: usize, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('>')
                .unwrap_or_else(|| panic!("SKILL.md:{line}: an unclosed `<` in {text:?}"));
            let name = &after[..close];
            let value = match self.0.get(name) {
                Some(Some(v)) => v,
                Some(None) => panic!(
                    "SKILL.md:{line}: <{name}> is used before any command gave it a value: {text:?}"
                ),
                None => panic!(
                    "SKILL.md:{line}: unknown placeholder <{name}> (the test knows {:?}): {text:?}",
                    self.0.keys().collect::<Vec<_>>()
                ),
            };
            out.push_str(value);
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `securegate` (and Python) as the agent: its own HOME and XDG_CONFIG_HOME.
struct Agent {
    home: tempfile::TempDir,
    config: PathBuf,
    transcript: String,
}

impl Agent {
    fn new() -> Agent {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("xdg-config");
        Agent {
            home,
            config,
            transcript: String::new(),
        }
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_securegate"))
            .parent()
            .unwrap()
            .to_owned();
        let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        let mut cmd = tokio::process::Command::new(program);
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", &self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn finish(
        &mut self,
        mut cmd: tokio::process::Command,
        what: &str,
        stdin: Option<&str>,
    ) -> Run {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within 120 s"))
            .unwrap();
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.transcript
            .push_str(&format!("$ {what}\n{}{}", run.stdout, run.stderr));
        run
    }

    async fn securegate(
        &mut self,
        args: &[String],
        stdin: Option<&str>,
        envs: &[(&str, &str)],
    ) -> Run {
        let mut cmd = self.command(Path::new(env!("CARGO_BIN_EXE_securegate")));
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.finish(cmd, &format!("securegate {}", args.join(" ")), stdin)
            .await
    }

    async fn python(&mut self, code: &str) -> Run {
        let mut cmd = self.command(&sg_testkit::python());
        cmd.arg("-c").arg(code);
        self.finish(cmd, "python3 <SKILL.md block>", None).await
    }
}

/// Whether `text` holds something shaped like a proxy key (`SG_` and 20 or more letters
/// or digits; a hint such as `SG_…abcd` is not one).
fn shows_a_key(text: &str) -> bool {
    text.match_indices("SG_").any(|(i, _)| {
        text[i + 3..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .count()
            >= 20
    })
}

/// Whether `actual` has everything `example` shows (see the module docs).
fn covers(actual: &Value, example: &Value, path: &str) -> Result<(), String> {
    match (example, actual) {
        (Value::Object(ex), Value::Object(act)) => {
            for (k, v) in ex {
                let Some(a) = act.get(k) else {
                    return Err(format!("{path}.{k} is not in the output"));
                };
                covers(a, v, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(ex), Value::Array(act)) => {
            if ex.len() > act.len() {
                return Err(format!(
                    "{path}: the example shows {} element(s), the output has {}",
                    ex.len(),
                    act.len()
                ));
            }
            for (i, v) in ex.iter().enumerate() {
                covers(&act[i], v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Null, _) => Ok(()),
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => Ok(()),
        (ex, act) => Err(format!("{path}: the example has {ex}, the output {act}")),
    }
}

/// The words of a command line (after `securegate`), without a trailing comment.
fn words(line: usize, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        if w.starts_with('#') {
            break;
        }
        assert!(
            !w.contains(['"', '\'', '|', '>', '<', ';', '&', '$', '`', '\\']),
            "SKILL.md:{line}: keep ```sh lines to plain words (no quotes, pipes, redirections, variables): {text:?}"
        );
        out.push(w.to_owned());
    }
    assert_eq!(
        out.first().map(String::as_str),
        Some("securegate"),
        "SKILL.md:{line}"
    );
    out.remove(0);
    out
}

/// The subcommand a command line names: `keys create`, `status`, ….
fn subcommand(args: &[String]) -> String {
    match args {
        [first, second, ..] if first == "keys" => format!("keys {second}"),
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

/// Whether `help` lists `flag` as a whole word.
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// `line` (an error `how` gives) must appear verbatim in SKILL.md.
fn documented(line: &str, how: &str) {
    assert!(
        SKILL.contains(line),
        "SKILL.md does not quote the error {how} gives; it is:\n{line}"
    );
}

/// A command that must fail with one line on stderr; returns the line.
fn one_line_failure(r: &Run, what: &str) -> String {
    assert_eq!(
        r.code,
        Some(1),
        "{what} should fail:\n{}{}",
        r.stdout,
        r.stderr
    );
    let line = r.stderr.trim_end();
    assert!(
        line.starts_with("securegate: ") && !line.contains('\n'),
        "{what}: not a one-line reason: {:?}",
        r.stderr
    );
    assert!(
        r.stdout.is_empty(),
        "{what} printed on failure: {}",
        r.stdout
    );
    line.to_owned()
}

async fn python_with_openai() {
    let mut probe = Agent::new();
    let r = probe.python("import openai").await;
    assert_eq!(
        r.code,
        Some(0),
        "SKILL.md's python blocks need Python ({}; SG_PYTHON or an active virtual environment picks it) with the official OpenAI SDK (`-m pip install openai`; .ci/run installs it):\n{}",
        sg_testkit::python().display(),
        r.stderr
    );
}

#[tokio::test]
async fn an_agent_can_follow_skill_md() {
    let skill = parse(SKILL);
    let commands = skill
        .items
        .iter()
        .filter(|i| matches!(i, Item::Command { .. }))
        .count();
    assert!(commands > 0, "SKILL.md names no `securegate` command");
    if skill.items.iter().any(|i| matches!(i, Item::Python { .. })) {
        python_with_openai().await;
    }

    let dev = Dev::start(&[], &[]).await;
    let admin_url = dev.admin.base.trim_end_matches("/admin/v1").to_owned();

    // The operator's part: a tenant with a project, a mock connection and an owner token,
    // which the human will type into `securegate login`.
    let tenant = dev.admin.tenant("acme").await;
    let project = dev.admin.project(&tenant, "agents").await;
    let (s, conn) = dev
        .admin
        .post(
            &format!("/projects/{project}/connections"),
            json!({"provider": "mock", "name": "preset"}),
        )
        .await;
    assert_eq!(s, 201, "{conn}");
    let (_, owner_token) = dev.admin.token(&tenant, "human", "owner").await;

    // Every prose mention names a real command and real flags.
    let mut checked = BTreeSet::new();
    let mut helper = Agent::new();
    for (line, span) in &skill.mentions {
        if !checked.insert(span.clone()) {
            continue;
        }
        let all: Vec<&str> = span.split_whitespace().skip(1).collect();
        // The subcommand: the leading words that are neither flags nor values.
        let path: Vec<String> = all
            .iter()
            .take_while(|w| {
                !w.starts_with('-') && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            })
            .map(|w| w.to_string())
            .collect();
        let mut args = path.clone();
        args.push("--help".into());
        let r = helper.securegate(&args, None, &[]).await;
        assert_eq!(
            r.code,
            Some(0),
            "SKILL.md:{line}: `{span}` names no command (`securegate {}` failed):\n{}",
            args.join(" "),
            r.stderr
        );
        for flag in all.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split(['=', '|', ',']).next().unwrap();
            assert!(
                lists_flag(&r.stdout, flag),
                "SKILL.md:{line}: `{span}`: `securegate {}` has no {flag}:\n{}",
                path.join(" "),
                r.stdout
            );
        }
    }

    // The walk: every item in the file's order.
    let mut agent = Agent::new();
    let mut vars = Vars::new(&admin_url);
    let mut logged_in = false;
    let mut last_json: Option<(usize, Vec<String>, Value)> = None;
    let mut ran = BTreeSet::new();
    let mut documented_failures = 0;
    let mut examples = 0;
    let mut issued_keys: Vec<String> = Vec::new();
    for item in &skill.items {
        match item {
            Item::Command { line, text } => {
                let text = vars.substitute(*line, text);
                let mut args = words(*line, &text);
                let sub = subcommand(&args);
                let mut stdin = None;
                if sub == "login" {
                    if !args.iter().any(|a| a == "--token-stdin") {
                        args.push("--token-stdin".into());
                    }
                    stdin = Some(format!("{owner_token}\n"));
                }
                if args.iter().any(|a| a == "--api-key-stdin") {
                    stdin = Some("not-needed-by-the-mock\n".into());
                }
                let json_output = args
                    .windows(2)
                    .any(|w| w[0] == "--output" && w[1] == "json");
                let r = agent.securegate(&args, stdin.as_deref(), &[]).await;
                ran.insert(sub.clone());
                last_json = None;
                let needs_login = !matches!(
                    sub.as_str(),
                    "login" | "logout" | "providers" | "completions"
                );
                if needs_login && !logged_in {
                    let err = one_line_failure(&r, &format!("SKILL.md:{line}: `{text}`"));
                    assert!(
                        err.starts_with(NOT_LOGGED_IN),
                        "SKILL.md:{line}: `{text}` before a login: {err}"
                    );
                    documented(&err, "a command before `securegate login`");
                    documented_failures += 1;
                    continue;
                }
                assert_eq!(
                    r.code,
                    Some(0),
                    "SKILL.md:{line}: `{text}` failed:\n{}{}\n{}",
                    r.stdout,
                    r.stderr,
                    dev.gateway.log()
                );
                if !matches!(sub.as_str(), "keys create" | "keys rotate") {
                    assert!(
                        !shows_a_key(&r.stdout) && !shows_a_key(&r.stderr),
                        "SKILL.md:{line}: `{text}` printed a proxy key:\n{}{}",
                        r.stdout,
                        r.stderr
                    );
                }
                match sub.as_str() {
                    "login" => logged_in = true,
                    "logout" => logged_in = false,
                    _ => {}
                }
                if json_output {
                    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
                        panic!(
                            "SKILL.md:{line}: `{text}` printed no JSON ({e}):\n{}",
                            r.stdout
                        )
                    });
                    if let (Some(key), Some(id)) = (v["key"].as_str(), v["id"].as_str())
                        && key.starts_with("SG_")
                    {
                        issued_keys.push(key.to_owned());
                        vars.0.insert("KEY_ID", Some(id.to_owned()));
                    }
                    last_json = Some((*line, args, v));
                }
            }
            Item::Json { line, example } => {
                let (cmd_line, args, mut actual) = last_json.take().unwrap_or_else(|| {
                    panic!(
                        "SKILL.md:{line}: a ```json example that does not follow a command run with --output json"
                    )
                });
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    match covers(&actual, example, "$") {
                        Ok(()) => break,
                        Err(_) if subcommand(&args) == "usage" && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let r = agent.securegate(&args, None, &[]).await;
                            assert_eq!(r.code, Some(0), "{}", r.stderr);
                            actual = serde_json::from_str(&r.stdout).unwrap();
                        }
                        Err(e) => panic!(
                            "SKILL.md:{line}: the example does not match what `securegate {}` (SKILL.md:{cmd_line}) printed: {e}\n{actual:#}",
                            args.join(" ")
                        ),
                    }
                }
                examples += 1;
            }
            Item::Python { line, code } => {
                last_json = None;
                let r = agent.python(code).await;
                assert_eq!(
                    r.code,
                    Some(0),
                    "SKILL.md:{line}: the python block failed:\n{}{}\n{}",
                    r.stdout,
                    r.stderr,
                    dev.gateway.log()
                );
                assert!(
                    !shows_a_key(&r.stdout) && !shows_a_key(&r.stderr),
                    "SKILL.md:{line}: the python block printed a proxy key:\n{}{}",
                    r.stdout,
                    r.stderr
                );
            }
        }
    }
    for need in REQUIRED {
        assert!(
            ran.contains(*need),
            "SKILL.md never runs `securegate {need}`"
        );
    }
    assert!(
        documented_failures > 0,
        "SKILL.md never shows `securegate status` failing before the human logs in"
    );
    assert!(examples > 0, "SKILL.md shows no JSON output");
    assert!(
        !agent.transcript.contains(&owner_token),
        "the human's admin token was printed:\n{}",
        agent.transcript
    );
    for key in &issued_keys {
        assert_eq!(
            agent.transcript.matches(key.as_str()).count(),
            1,
            "a proxy key was printed more than once"
        );
    }

    // The errors SKILL.md lists, reproduced.
    let mut other = Agent::new();
    let r = other
        .securegate(
            &["status".into(), "--output".into(), "json".into()],
            None,
            &[],
        )
        .await;
    documented(&one_line_failure(&r, "status"), "`status` with no login");

    let r = other
        .securegate(
            &["login".into(), "--url".into(), admin_url.clone()],
            None,
            &[],
        )
        .await;
    documented(
        &one_line_failure(&r, "login without a terminal"),
        "`login` run without a terminal",
    );

    let (gone_id, gone) = dev.admin.token(&tenant, "gone", "owner").await;
    let (s, b) = dev
        .admin
        .post(&format!("/tokens/{gone_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let env = [
        ("SECUREGATE_URL", admin_url.as_str()),
        ("SECUREGATE_TOKEN", gone.as_str()),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = other.securegate(&["status".into()], None, &env).await;
        if r.code != Some(0) || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    documented(&one_line_failure(&r, "a revoked token"), "a revoked token");

    let (_, viewer) = dev.admin.token(&tenant, "reader", "viewer").await;
    let env = [
        ("SECUREGATE_URL", admin_url.as_str()),
        ("SECUREGATE_TOKEN", viewer.as_str()),
    ];
    let r = other
        .securegate(
            &["keys".into(), "create".into(), "--name".into(), "x".into()],
            None,
            &env,
        )
        .await;
    documented(
        &one_line_failure(&r, "a viewer's keys create"),
        "a viewer's `keys create`",
    );

    // A tenant on the free plan, which has no device lock.
    let (s, small) = dev
        .admin
        .post("/tenants", json!({"name": "small", "plan": "free"}))
        .await;
    assert_eq!(s, 201, "{small}");
    let small = small["id"].as_str().unwrap().to_owned();
    let (s, p) = dev
        .admin
        .post(&format!("/tenants/{small}/projects"), json!({"name": "p"}))
        .await;
    assert_eq!(s, 201, "{p}");
    let p = p["id"].as_str().unwrap().to_owned();
    let (s, c) = dev
        .admin
        .post(
            &format!("/projects/{p}/connections"),
            json!({"provider": "mock"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, k) = dev
        .admin
        .post(&format!("/projects/{p}/keys"), json!({"name": "k"}))
        .await;
    assert_eq!(s, 201, "{k}");
    let (_, small_owner) = dev.admin.token(&small, "owner", "owner").await;
    let env = [
        ("SECUREGATE_URL", admin_url.as_str()),
        ("SECUREGATE_TOKEN", small_owner.as_str()),
    ];
    let r = other
        .securegate(
            &[
                "keys".into(),
                "bind-device".into(),
                k["id"].as_str().unwrap().into(),
            ],
            None,
            &env,
        )
        .await;
    documented(
        &one_line_failure(&r, "bind-device on the free plan"),
        "`keys bind-device` on the free plan",
    );
}
