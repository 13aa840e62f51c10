//! Helpers shared by the launchers.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::process::Command;

/// Runs `cmd` to completion and returns its stdout; a failure to start or a
/// non-zero exit becomes an error naming `what` with the command's output.
pub(crate) async fn run(cmd: &mut Command, what: &str) -> Result<String> {
    cmd.kill_on_drop(true);
    let output = cmd.output().await.map_err(|e| {
        anyhow!(
            "{what}: could not run {:?}: {e}",
            cmd.as_std().get_program()
        )
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what}: {:?} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            cmd.as_std().get_program(),
            output.status,
            stdout.trim_end(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(stdout)
}

/// The last few kilobytes of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    const MAX: u64 = 6 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = file.seek(SeekFrom::Start(len - MAX));
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if text.trim().is_empty() {
        format!("(empty log at {})", path.display())
    } else {
        text
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn tcp_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Whether a server log says its port was taken.
pub(crate) fn looks_like_port_clash(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("could not bind")
}
