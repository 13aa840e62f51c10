#![forbid(unsafe_code)]
//! Private, real servers for tests and benchmarks.
//!
//! Every launcher starts its own server on a free loopback port, in its own
//! temporary directory, and kills it when its handle is dropped. A launcher
//! that cannot find what it needs fails with an error that says what is
//! missing and how to install it; nothing is ever skipped silently.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context as _, Result, bail};

pub mod anthropic_upstream;
pub mod haproxy;
pub mod media_upstream;
pub mod mock_upstream;
pub mod moto;
pub mod nats;
pub mod nats_cluster;
pub mod postgres;
mod process;
pub mod pyserver;
pub mod tcp_proxy;

pub use anthropic_upstream::AnthropicUpstream;
pub use media_upstream::{MediaRequest, MediaUpstream};
pub use mock_upstream::{MockUpstream, Recorded};
pub use nats::NatsServer;
pub use nats_cluster::NatsCluster;
pub use postgres::PostgresServer;
pub use sg_mock_provider::MockConfig;
pub use tcp_proxy::TcpProxy;

/// A TCP port on 127.0.0.1 that was free when this returned.
///
/// The port is released before returning, so another process may take it in
/// the meantime; the launchers retry with a new port when that happens.
/// Returns 0 only if no loopback port at all could be bound.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or(0)
}

/// Like [`free_port`], with the reason when no port could be found.
pub fn try_free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Installs a `tracing` subscriber writing through the test harness.
///
/// The filter comes from `RUST_LOG` (default `warn`). Calling it again, or
/// after another subscriber was installed, does nothing.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// The workspace's Cargo target directory: `CARGO_TARGET_DIR` when set, else
/// `target/` beside the `Cargo.lock` found above the crate being tested.
pub fn workspace_target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return Ok(dir);
        }
        let cwd = std::env::current_dir().context("reading the current directory")?;
        return Ok(cwd.join(dir));
    }
    Ok(workspace_root()?.join("target"))
}

/// The directory holding the workspace's `Cargo.lock`.
pub fn workspace_root() -> Result<PathBuf> {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::current_dir() {
        starts.push(dir);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in &starts {
        if let Some(root) = start
            .ancestors()
            .find(|dir| dir.join("Cargo.lock").is_file())
        {
            return Ok(root.to_path_buf());
        }
    }
    bail!(
        "could not find the workspace root (a directory with Cargo.lock) above any of {}; \
         run from inside the workspace or set CARGO_TARGET_DIR",
        starts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The Python interpreter tests run, found the way users expect: `SG_PYTHON` when set,
/// else the active virtual environment's (`$VIRTUAL_ENV/bin/python`), else `python3`
/// from `PATH`. So `pip install openai` in a venv, activated, is what the SDK tests see.
pub fn python() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(python) = set("SG_PYTHON") {
        return PathBuf::from(python);
    }
    if let Some(venv) = set("VIRTUAL_ENV") {
        let python = PathBuf::from(venv).join("bin").join("python");
        if is_executable(&python) {
            return python;
        }
    }
    PathBuf::from("python3")
}

/// Finds an executable named `name` in `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
