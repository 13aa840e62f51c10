//! A private HAProxy (Debian package `haproxy`) in TCP mode in front of one backend,
//! sending PROXY protocol v2 headers: the real network load balancer of the tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Finds the `haproxy` binary (Debian installs it in sbin, not on every PATH).
pub fn find_haproxy() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .context("haproxy was not found on PATH or in sbin: install it with `apt-get install -y haproxy`")
}

/// A running HAProxy; killed when dropped.
pub struct Haproxy {
    pub frontend: SocketAddr,
    child: Child,
    stderr_path: PathBuf,
}

impl Haproxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `backend` with a
    /// PROXY protocol v2 header; `health_path` (HTTP GET) is its health check, if any.
    pub async fn start(
        dir: &Path,
        backend: SocketAddr,
        health_path: Option<&str>,
    ) -> anyhow::Result<Self> {
        let binary = find_haproxy()?;
        let port = crate::try_free_port()?;
        let check = match health_path {
            Some(path) => format!(
                "    option httpchk GET {path}\n    server s1 {backend} send-proxy-v2 check inter 200ms\n"
            ),
            None => format!("    server s1 {backend} send-proxy-v2\n"),
        };
        let config = format!(
            "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\nbackend be\n{check}"
        );
        let cfg_path = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&cfg_path, config)?;
        let stderr_path = dir.join(format!("haproxy-{port}.stderr"));
        let child = Command::new(&binary)
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut haproxy = Haproxy {
            frontend: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = haproxy.child.try_wait()? {
                bail!("haproxy exited with {status}: {}", haproxy.stderr());
            }
            if tokio::net::TcpStream::connect(haproxy.frontend)
                .await
                .is_ok()
            {
                return Ok(haproxy);
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy frontend never accepted connections: {}",
                    haproxy.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What HAProxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}
