//! Shared helpers for the end-to-end tests: run `securegate` processes, call the admin
//! API and the gateway over real HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const TOKEN: &str = "sgadm_test_operator_token_0123456789";

/// A `securegate` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    /// The address `{addr}` stood for: the listener probed with `/readyz`.
    pub addr: SocketAddr,
    /// The address `{addr2}` stood for, when the arguments named one.
    pub addr2: Option<SocketAddr>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub log_path: std::path::PathBuf,
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], sg_testkit::free_port()))
}

/// How often [`Proc::start`] tries again when another process took a port between
/// `free_port` releasing it and the child binding it.
const PORT_ATTEMPTS: usize = 5;

impl Proc {
    /// Starts `securegate <args>`; `{addr}` in args is replaced by a free loopback address
    /// whose `/readyz` must answer, `{addr2}` by a second one the process must log that it
    /// listens on.
    /// When the child exits because one of them was taken meanwhile, it starts again on
    /// new addresses.
    pub async fn start(args: &[&str], envs: &[(&str, &str)], log_dir: &Path) -> Proc {
        for attempt in 1..=PORT_ATTEMPTS {
            let addr = free_addr();
            let addr2 = args.iter().any(|a| a.contains("{addr2}")).then(free_addr);
            let mut args: Vec<String> = args
                .iter()
                .map(|a| {
                    let a = a.replace("{addr}", &addr.to_string());
                    match addr2 {
                        Some(addr2) => a.replace("{addr2}", &addr2.to_string()),
                        None => a,
                    }
                })
                .collect();
            // Every gateway node gets its own usage spool, kept across restarts of the process.
            if args.len() >= 2
                && args[0] == "server"
                && args[1] == "gateway"
                && !args.iter().any(|a| a == "--spool-dir")
            {
                args.push("--spool-dir".into());
                args.push(
                    log_dir
                        .join(format!("spool-{}", addr.port()))
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            let envs: Vec<(String, String)> = envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let log_path = log_dir.join(format!("securegate-{}.log", addr.port()));
            let child = spawn(&args, &envs, &log_path);
            let mut p = Proc {
                child,
                addr,
                addr2,
                args,
                envs,
                log_path,
            };
            match p.ready_or_exited().await {
                Ok(()) => return p,
                Err(log) if log.contains("Address already in use") && attempt < PORT_ATTEMPTS => {
                    eprintln!("a port was taken before securegate bound it; starting again");
                }
                Err(log) => panic!("securegate exited before it was ready; its log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until `{addr}` answers `/readyz` and the process logged that it listens on
    /// `{addr}` and `{addr2}`; `Err(log)` when the process exited first. Panics with the
    /// log after 30 s.
    async fn ready_or_exited(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let base = self.url();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match client.get(format!("{base}/readyz")).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            // The process says it listens on each address itself: `/readyz` or a
            // connection could reach whoever took the port.
            let log = self.log();
            let listens = |addr: SocketAddr| {
                log.lines()
                    .any(|l| l.contains("listening") && l.contains(&addr.to_string()))
            };
            let own = listens(self.addr) && self.addr2.is_none_or(listens);
            // Both listeners up, and still running: one that bound later could have failed.
            if ready && own && matches!(self.child.try_wait(), Ok(None)) {
                return Ok(());
            }
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(self.log());
            }
            if Instant::now() > deadline {
                panic!("{base} not ready after 30 s; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait_ready(&self) {
        wait_ready(&self.url(), &self.log_path).await
    }

    /// Graceful stop (SIGTERM), then start the same command again on the same address.
    pub async fn restart(&mut self) {
        self.terminate().await;
        self.child = spawn(&self.args, &self.envs, &self.log_path);
        self.wait_ready().await;
    }

    /// SIGKILL: no graceful stop, nothing flushed.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the same command again on the same address (after [`Proc::kill`] or
    /// [`Proc::terminate`]) and waits until it is ready.
    pub async fn start_again(&mut self) {
        self.child = spawn(&self.args, &self.envs, &self.log_path);
        self.wait_ready().await;
    }

    /// Starts the same command again without waiting for it to be ready.
    pub fn spawn_again(&mut self) {
        self.child = spawn(&self.args, &self.envs, &self.log_path);
    }

    /// Its `/readyz` answer.
    pub async fn readyz(&self) -> Value {
        match reqwest::get(format!("{}/readyz", self.url())).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    pub async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = self.child.kill().await;
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn spawn(args: &[String], envs: &[(String, String)], log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_securegate"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        // Tenants the suites create are on the team plan (every lock, 1,000 requests a
        // minute per key) unless a test names another: they test features, not plans;
        // tests/owners.rs tests plans.
        .env("SECUREGATE_DEFAULT_PLAN", "team")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("cannot start the securegate binary")
}

pub async fn wait_ready(base: &str, log_path: &Path) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{base} not ready after 30 s; its log:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An admin API client.
#[derive(Clone)]
pub struct AdminClient {
    pub base: String,
    pub http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base: &str) -> Self {
        AdminClient {
            base: format!("{base}/admin/v1"),
            http: reqwest::Client::new(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, body, _) = self.post_seq(path, body).await;
        (status, body)
    }

    /// POSTs and also returns the write's control-stream sequence (`x-securegate-seq`).
    pub async fn post_seq(&self, path: &str, body: Value) -> (u16, Value, u64) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let seq = r
            .headers()
            .get("x-securegate-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (status, r.json().await.unwrap_or(Value::Null), seq)
    }

    /// Turns abuse detection off for `project`: for load tests, whose thousands of
    /// requests a minute on one key the sentinel would otherwise suspend.
    pub async fn without_abuse_detection(&self, project: &str) {
        let (s, settings) = self
            .put(
                &format!("/projects/{project}/abuse"),
                json!({"enabled": false}),
            )
            .await;
        assert_eq!(s, 200, "{settings}");
    }

    /// Moves the tenant of `project` to a plan with every lock and no per-key request
    /// caps (defined here by the operator), for tests that need more than a plan allows;
    /// turns abuse detection off for the project too (such tests are load tests).
    pub async fn unmetered(&self, project: &str) {
        self.without_abuse_detection(project).await;
        let (s, plan) = self
            .put(
                "/plans/unmetered",
                json!({"features": ["ip", "model", "city", "country", "device", "signature", "geo_auto_bind"],
                       "max_connections": null, "key_rpm": null, "key_rpd": null}),
            )
            .await;
        assert_eq!(s, 200, "{plan}");
        let (s, p) = self.get(&format!("/projects/{project}")).await;
        assert_eq!(s, 200, "{p}");
        let tenant = p["tenant_id"].as_str().unwrap();
        let (s, t) = self
            .put(
                &format!("/tenants/{tenant}/plan"),
                json!({"plan": "unmetered"}),
            )
            .await;
        assert_eq!(s, 200, "{t}");
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body), &[]).await
    }

    /// Any method, with extra headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            r = r.json(&body);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A new tenant (on the server's default plan); returns its id.
    pub async fn tenant(&self, name: &str) -> String {
        let (s, tenant) = self.post("/tenants", json!({"name": name})).await;
        assert_eq!(s, 201, "{tenant}");
        tenant["id"].as_str().unwrap().to_owned()
    }

    /// A new project of `tenant`; returns its id.
    pub async fn project(&self, tenant: &str, name: &str) -> String {
        let (s, project) = self
            .post(
                &format!("/tenants/{tenant}/projects"),
                json!({"name": name}),
            )
            .await;
        assert_eq!(s, 201, "{project}");
        project["id"].as_str().unwrap().to_owned()
    }

    /// A new connection of `project` (e.g. `{"provider": "mock"}`); returns its record.
    pub async fn connection(&self, project: &str, body: Value) -> Value {
        let (s, conn) = self
            .post(&format!("/projects/{project}/connections"), body)
            .await;
        assert_eq!(s, 201, "{conn}");
        assert!(conn.get("api_key").is_none(), "{conn}");
        conn
    }

    /// An admin API token of `tenant` with `role`; returns (id, token).
    pub async fn token(&self, tenant: &str, name: &str, role: &str) -> (String, String) {
        let (s, issued) = self
            .post(
                &format!("/tenants/{tenant}/tokens"),
                json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{issued}");
        let token = issued["token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("SGA_"), "{issued}");
        (issued["id"].as_str().unwrap().to_owned(), token)
    }

    /// tenant → project → connection → key; returns (project id, key id, key).
    pub async fn setup(&self, connection: Value) -> (String, String, String) {
        let tenant = self.tenant("acme").await;
        let project_id = self.project(&tenant, "agents").await;
        self.connection(&project_id, connection).await;
        let (s, key) = self
            .post(
                &format!("/projects/{project_id}/keys"),
                json!({"name": "ci"}),
            )
            .await;
        assert_eq!(s, 201, "{key}");
        let secret = key["key"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("SG_"));
        (project_id, key["id"].as_str().unwrap().to_owned(), secret)
    }

    /// Polls the project's usage until `requests >= n` or 1 s passes; returns it.
    pub async fn usage_within_a_second(&self, project: &str, n: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let (s, usage) = self.get(&format!("/projects/{project}/usage")).await;
            assert_eq!(s, 200, "{usage}");
            if usage["totals"]["requests"].as_u64().unwrap_or(0) >= n {
                return usage;
            }
            if Instant::now() > deadline {
                panic!("usage did not reach {n} requests within a second: {usage}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn chat_body(stream: bool) -> Value {
    json!({"model": "mock-gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hello from the end-to-end test"}]})
}

/// POSTs a chat completion through a gateway; returns (status, body text).
pub async fn chat(gateway: &str, key: &str, stream: bool) -> (u16, String) {
    // A client that follows no redirects, so what the gateway answered is what is seen.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(stream))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Asserts a response body is an OpenAI-shaped error with `code`.
pub fn assert_error(body: &str, code: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["error"]["code"], code, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(v["error"]["type"].is_string(), "{body}");
}

/// Checks a streamed chat answer: SSE chunks, content, `[DONE]`, and no usage chunk
/// (the client did not ask for one).
pub fn assert_stream(body: &str) {
    assert!(body.starts_with("data: "), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(
        !body.contains("\"choices\":[]"),
        "a usage chunk the client did not ask for leaked: {body}"
    );
}

/// Waits until at least `left` seconds remain in the current UTC minute, so that what a
/// test does next falls in one minute's window.
pub async fn wait_for_minute_left(left: u64) {
    loop {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60;
        if 60 - s >= left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `f` answers true, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The NATS a cluster runs on: one private server, or a private three-node cluster.
pub enum Nats {
    Single(sg_testkit::nats::NatsServer),
    Cluster(sg_testkit::NatsCluster),
}

impl Nats {
    /// The URL(s) processes connect to.
    pub fn url(&self) -> String {
        match self {
            Nats::Single(n) => n.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    pub fn single(&mut self) -> &mut sg_testkit::nats::NatsServer {
        match self {
            Nats::Single(n) => n,
            Nats::Cluster(_) => panic!("this cluster runs on a NATS cluster"),
        }
    }

    pub fn cluster(&mut self) -> &mut sg_testkit::NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::Single(_) => panic!("this cluster runs on a single NATS server"),
        }
    }
}

/// A cluster of real processes on private NATS and PostgreSQL: admin, projector,
/// sentinel, and one gateway per entry of `gateways` (extra arguments each).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: Nats,
    pub pg: sg_testkit::postgres::PostgresServer,
    pub admin: Proc,
    pub projector: Proc,
    /// Abuse detection (`securegate server sentinel`).
    pub sentinel: Proc,
    pub gateways: Vec<Proc>,
    pub client: AdminClient,
    /// The arguments every process was given, for more processes of the same cluster.
    common: Vec<String>,
}

impl Cluster {
    pub async fn start(gateways: &[&[&str]]) -> Cluster {
        let nats = sg_testkit::nats::NatsServer::start().await.unwrap();
        Self::start_with(Nats::Single(nats), gateways, &[]).await
    }

    /// On the given NATS, with `common` arguments for every process (e.g.
    /// `--stream-replicas 3`).
    pub async fn start_with(nats: Nats, gateways: &[&[&str]], common: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pg = sg_testkit::postgres::PostgresServer::start().await.unwrap();
        let db = pg.create_database("securegate").await.unwrap();
        let master_key = dir.path().join("master.key");
        sg_crypto::generate_master_key_file(&master_key).unwrap();
        let key_file = master_key.to_str().unwrap().to_owned();
        let nats_url = nats.url();
        let env = [
            ("SECUREGATE_ADMIN_TOKEN", TOKEN),
            ("SECUREGATE_NATS_URL", nats_url.as_str()),
        ];
        let with_common = |args: &[&str]| {
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            all.extend(common.iter().map(|a| a.to_string()));
            all
        };
        let admin_args = with_common(&[
            "server",
            "admin",
            "--listen",
            "{addr}",
            "--database-url",
            &db,
            "--master-key-file",
            &key_file,
            "--allow-private-upstreams",
        ]);
        let admin = Proc::start(&strs(&admin_args), &env, dir.path()).await;
        let projector_args = with_common(&[
            "server",
            "projector",
            "--listen",
            "{addr}",
            "--database-url",
            &db,
        ]);
        let projector = Proc::start(&strs(&projector_args), &env, dir.path()).await;
        let sentinel_args = with_common(&[
            "server",
            "sentinel",
            "--listen",
            "{addr}",
            "--master-key-file",
            &key_file,
            "--allow-private-upstreams",
        ]);
        let sentinel = Proc::start(&strs(&sentinel_args), &env, dir.path()).await;
        let mut procs = Vec::new();
        for extra in gateways {
            let mut args = vec![
                "server",
                "gateway",
                "--listen",
                "{addr}",
                "--master-key-file",
                &key_file,
                "--allow-private-upstreams",
            ];
            args.extend_from_slice(extra);
            let args = with_common(&args);
            procs.push(Proc::start(&strs(&args), &env, dir.path()).await);
        }
        let client = AdminClient::new(&admin.url());
        Cluster {
            dir,
            nats,
            pg,
            admin,
            projector,
            sentinel,
            gateways: procs,
            client,
            common: common.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// An egress node and an edge in front of it (`--role egress` with the cluster's
    /// master key, `--role edge` with none), with a new attestation key pair, on this
    /// cluster's NATS; `envs` and the extra arguments go to both / to each. Returns
    /// (edge, egress, the edge's signing key file), both ready.
    pub async fn edge_and_egress(
        &self,
        envs: &[(&str, &str)],
        edge_extra: &[&str],
        egress_extra: &[&str],
    ) -> (Proc, Proc, String) {
        let dir = self.dir.path();
        let prefix = dir.join(format!("attest-{}", sg_testkit::free_port()));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_securegate"))
            .args(["keygen", "--out", prefix.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let signing_file = format!("{}.key", prefix.display());
        // The egress reads the public key from the file keygen wrote (as in compose).
        let public_file = format!("{}.pub", prefix.display());
        let master_key = dir.join("master.key");
        let nats_url = self.nats.url();
        let mut env = vec![("SECUREGATE_NATS_URL", nats_url.as_str())];
        env.extend_from_slice(envs);
        let mut args = vec![
            "server",
            "gateway",
            "--role",
            "egress",
            "--listen",
            "{addr}",
            "--master-key-file",
            master_key.to_str().unwrap(),
            "--attestation-public-keys-file",
            &public_file,
            "--allow-private-upstreams",
        ];
        args.extend_from_slice(egress_extra);
        let egress = Proc::start(&args, &env, dir).await;
        let egress_url = egress.url();
        let mut args = vec![
            "server",
            "gateway",
            "--role",
            "edge",
            "--listen",
            "{addr}",
            "--egress-url",
            &egress_url,
            "--attestation-key-file",
            &signing_file,
        ];
        args.extend_from_slice(edge_extra);
        let edge = Proc::start(&args, &env, dir).await;
        (edge, egress, signing_file)
    }

    /// Another sentinel on the same cluster (several may run at once), once ready.
    pub async fn another_sentinel(&self) -> Proc {
        self.another_sentinel_with(&[]).await
    }

    /// Another sentinel with `extra` arguments (e.g. `--smtp-url`), once ready.
    pub async fn another_sentinel_with(&self, extra: &[&str]) -> Proc {
        let nats_url = self.nats.url();
        let env = [
            ("SECUREGATE_ADMIN_TOKEN", TOKEN),
            ("SECUREGATE_NATS_URL", nats_url.as_str()),
        ];
        let mut args: Vec<String> = ["server", "sentinel", "--listen", "{addr}"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        args.extend(self.common.iter().cloned());
        Proc::start(&strs(&args), &env, self.dir.path()).await
    }

    /// The control stream's events, in order, with their sequences.
    pub async fn control_events(&self) -> Vec<(u64, sg_events::Envelope)> {
        self.events(sg_eventlog::StreamName::Control).await
    }

    /// A stream's events, in order, with their sequences.
    pub async fn events(&self, stream: sg_eventlog::StreamName) -> Vec<(u64, sg_events::Envelope)> {
        use sg_eventlog::EventLog;
        let log =
            sg_eventlog::jetstream::JetStreamLog::connect(&self.nats.url(), Default::default())
                .await
                .unwrap();
        let bounds = log.bounds(stream).await.unwrap();
        let mut events = Vec::new();
        for seq in bounds.first_seq.max(1)..=bounds.last_seq {
            if let Some(m) = log.get(stream, seq).await.unwrap() {
                events.push((seq, sg_events::decode(&m.payload).unwrap()));
            }
        }
        events
    }

    /// Whether the projector has applied `stream` up to the log's head (`field`: the
    /// projector's `/readyz` member for that stream).
    async fn projected(
        &self,
        log: &sg_eventlog::jetstream::JetStreamLog,
        stream: sg_eventlog::StreamName,
        field: &str,
    ) -> bool {
        use sg_eventlog::EventLog;
        let Ok(bounds) = log.bounds(stream).await else {
            return false;
        };
        self.projector.readyz().await[field]
            .as_u64()
            .is_some_and(|seq| seq >= bounds.last_seq)
    }

    async fn log(&self) -> sg_eventlog::jetstream::JetStreamLog {
        sg_eventlog::jetstream::JetStreamLog::connect(&self.nats.url(), Default::default())
            .await
            .unwrap()
    }

    /// Waits (at most 60 s) until every gateway has published what it owes and the
    /// projector has applied the whole usage stream: the views are final.
    pub async fn usage_settled(&self) {
        let log = self.log().await;
        let settled = eventually(Duration::from_secs(60), || async {
            for gw in &self.gateways {
                if gw.readyz().await["usage_pending"].as_u64() != Some(0) {
                    return false;
                }
            }
            self.projected(&log, sg_eventlog::StreamName::Usage, "usage_seq")
                .await
        })
        .await;
        assert!(settled, "usage did not settle within 60 s");
    }

    /// Waits (at most 60 s) until the projector has applied the control stream up to its
    /// head.
    pub async fn control_projected(&self) {
        let log = self.log().await;
        let projected = eventually(Duration::from_secs(60), || {
            self.projected(&log, sg_eventlog::StreamName::Control, "control_seq")
        })
        .await;
        assert!(
            projected,
            "the projector did not reach the control stream's head within 60 s: {}",
            self.projector.readyz().await
        );
    }

    /// A tenant, project and mock-provider connection; returns the project id.
    pub async fn project(&self) -> String {
        let (_, tenant) = self.client.post("/tenants", json!({"name": "acme"})).await;
        let (_, project) = self
            .client
            .post(
                &format!("/tenants/{}/projects", tenant["id"].as_str().unwrap()),
                json!({"name": "p"}),
            )
            .await;
        let project = project["id"].as_str().unwrap().to_owned();
        let (s, _) = self
            .client
            .post(
                &format!("/projects/{project}/connections"),
                json!({"provider": "mock"}),
            )
            .await;
        assert_eq!(s, 201);
        project
    }

    /// Issues a key with `locks`; returns (key id, key) once every gateway knows it.
    pub async fn key(&self, project: &str, locks: Value) -> (String, String) {
        let r = self
            .client
            .http
            .post(format!("{}/projects/{project}/keys", self.client.base))
            .bearer_auth(TOKEN)
            .json(&json!({"name": "k", "locks": locks}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let seq: u64 = r.headers()["x-securegate-seq"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let key: Value = r.json().await.unwrap();
        self.wait_for_seq(seq).await;
        (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Waits until every gateway has folded the control stream up to `seq`.
    pub async fn wait_for_seq(&self, seq: u64) {
        self.wait_for_seq_within(seq, Duration::from_secs(2)).await
    }

    /// Like [`Cluster::wait_for_seq`], within `within`.
    pub async fn wait_for_seq_within(&self, seq: u64, within: Duration) {
        for gw in &self.gateways {
            let url = gw.url();
            assert!(
                eventually(within, || {
                    let url = url.clone();
                    async move {
                        match reqwest::get(format!("{url}/readyz")).await {
                            Ok(r) => {
                                r.json::<Value>()
                                    .await
                                    .ok()
                                    .and_then(|v| v["control_seq"].as_u64())
                                    .unwrap_or(0)
                                    >= seq
                            }
                            Err(_) => false,
                        }
                    }
                })
                .await,
                "{url} did not reach control sequence {seq}"
            );
        }
    }

    /// The key's locks and bindings as the admin API shows them.
    pub async fn locks(&self, key_id: &str) -> Value {
        let (s, locks) = self.client.get(&format!("/keys/{key_id}/locks")).await;
        assert_eq!(s, 200, "{locks}");
        locks
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address works on Linux).
pub fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// POSTs a chat completion with extra headers; returns (status, body).
pub async fn chat_with(
    client: &reqwest::Client,
    gateway: &str,
    key: &str,
    body: Value,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut r = client
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap())
}

/// Sends `request` as raw bytes (so nothing normalises it) and reads until the server
/// closes the connection or 10 s pass; returns (status, everything after the headers).
/// The request should carry `Connection: close`.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `securegate dev` in a temporary directory, with extra arguments and environment.
pub struct Dev {
    pub gateway: Proc,
    pub admin: AdminClient,
    pub dir: tempfile::TempDir,
}

impl Dev {
    pub async fn start(extra: &[&str], envs: &[(&str, &str)]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args = vec![
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--gateway-listen",
            "{addr}",
            "--admin-listen",
            "{addr2}",
        ];
        args.extend_from_slice(extra);
        let mut env = vec![("SECUREGATE_ADMIN_TOKEN", TOKEN)];
        env.extend_from_slice(envs);
        let gateway = Proc::start(&args, &env, dir.path()).await;
        let admin_base = format!(
            "http://{}",
            gateway.addr2.expect("{addr2} is in the arguments")
        );
        wait_ready(&admin_base, &gateway.log_path).await;
        Dev {
            gateway,
            admin: AdminClient::new(&admin_base),
            dir,
        }
    }
}

/// Installs the Node packages pinned in `dir` (`npm ci`) unless `packages` are all there
/// already; fails loudly, saying what to install, without npm. `what` names the test.
pub async fn npm_packages(dir: &Path, packages: &[&str], what: &str) {
    let npm = Command::new("npm").arg("--version").output().await;
    assert!(
        npm.is_ok_and(|o| o.status.success()),
        "Node.js and npm are needed for {what}: `apt-get install nodejs npm` (.ci/run installs them)"
    );
    let installed = packages.iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .is_file()
    });
    if installed {
        return;
    }
    let command = if dir.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    let out = Command::new("npm")
        .args([command, "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "`npm {command}` in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
