//! Test helpers: a private `moto_server` (a local server speaking the AWS KMS API) and
//! SDK clients pointed at a local endpoint.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use sg_crypto::EncryptionContext;

/// Fails loudly when `moto_server` is missing: these tests never skip.
pub fn require_moto_server() {
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`moto_server` is not on PATH; these tests need a local KMS API server: \
         pip install 'moto[server]'"
    );
}

/// A private `moto_server` on a free loopback port.
///
/// It runs under a small shell that holds the read end of a pipe whose write end this
/// guard owns: dropping the guard, or the test process ending in any way, closes the
/// pipe and the shell stops the server.
pub struct MotoServer {
    pub endpoint: String,
    shell: Child,
    stdin: Option<ChildStdin>,
}

const SUPERVISOR: &str = r#"moto_server -H 127.0.0.1 -p "$1" >"$2" 2>&1 &
m=$!
read -r _ || true
kill "$m" 2>/dev/null
wait "$m" 2>/dev/null
exit 0"#;

impl MotoServer {
    pub fn start() -> Self {
        require_moto_server();
        for _ in 0..3 {
            let port = free_port();
            let log = format!("{}/moto-{port}.log", env!("CARGO_TARGET_TMPDIR"));
            let mut shell = Command::new("sh")
                .arg("-c")
                .arg(SUPERVISOR)
                .arg("sh")
                .arg(port.to_string())
                .arg(&log)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot run sh");
            let stdin = shell.stdin.take();
            let mut server = MotoServer {
                endpoint: format!("http://127.0.0.1:{port}"),
                shell,
                stdin,
            };
            if wait_until_http_answers(port, Duration::from_secs(30)) {
                return server;
            }
            server.stop();
        }
        panic!(
            "moto_server did not start (logs in {})",
            env!("CARGO_TARGET_TMPDIR")
        );
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn wait_until_http_answers(port: u16, limit: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = [0u8; 12];
            if stream
                .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .is_ok()
                && stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
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
