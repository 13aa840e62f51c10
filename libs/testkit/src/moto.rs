//! A private `moto_server`: a local server speaking the AWS KMS API (PyPI `moto[server]`).
//!
//! It runs under a small shell that holds the read end of a pipe whose write end this
//! handle owns: dropping the handle, or the test process ending in any way, closes the
//! pipe and the shell stops the server — no orphans.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Fails with a clear message when `moto_server` is missing.
pub fn require_moto_server() -> anyhow::Result<()> {
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        bail!(
            "`moto_server` is not on PATH; the KMS tests need a local KMS API server: pip install 'moto[server]'"
        );
    }
    Ok(())
}

pub struct MotoServer {
    /// `http://127.0.0.1:PORT`: the value for `AWS_ENDPOINT_URL_KMS`.
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
    /// Starts a private server on a free loopback port (blocking, up to ~30 s).
    pub fn start() -> anyhow::Result<Self> {
        require_moto_server()?;
        let log_dir = std::env::temp_dir();
        for _ in 0..3 {
            let port = crate::try_free_port()?;
            let log = log_dir.join(format!("sg-moto-{port}.log"));
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
                .context("cannot run sh")?;
            let stdin = shell.stdin.take();
            let mut server = MotoServer {
                endpoint: format!("http://127.0.0.1:{port}"),
                shell,
                stdin,
            };
            if wait_until_http_answers(port, Duration::from_secs(30)) {
                return Ok(server);
            }
            server.stop();
        }
        bail!("moto_server did not start (logs in {})", log_dir.display())
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }

    /// Creates a symmetric KMS key and returns its id (the KMS JSON API, unsigned:
    /// moto does not check signatures).
    pub async fn create_kms_key(&self) -> anyhow::Result<String> {
        let text = reqwest::Client::new()
            .post(&self.endpoint)
            .header("x-amz-target", "TrentService.CreateKey")
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body("{}")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let response: serde_json::Value = serde_json::from_str(&text)?;
        response["KeyMetadata"]["KeyId"]
            .as_str()
            .map(str::to_owned)
            .context("CreateKey answered without a key id")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
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
