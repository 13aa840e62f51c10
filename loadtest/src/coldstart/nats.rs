//! The private NATS JetStream server: `sg_testkit::NatsServer` in a temporary directory,
//! or, with `--store DIR`, the same binary on a store directory kept across runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How long a server may take to recover a large store and become ready.
const READY: Duration = Duration::from_secs(180);

pub enum Nats {
    Temporary(sg_testkit::NatsServer),
    Kept(KeptServer),
}

impl Nats {
    pub fn url(&self) -> String {
        match self {
            Nats::Temporary(s) => s.url(),
            Nats::Kept(s) => format!("nats://127.0.0.1:{}", s.port),
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        match self {
            Nats::Temporary(s) => s.store_dir(),
            Nats::Kept(s) => s.store.clone(),
        }
    }

    pub async fn stop(self) {
        match self {
            Nats::Temporary(mut s) => s.stop().await,
            Nats::Kept(mut s) => {
                let _ = s.child.kill().await;
            }
        }
    }
}

/// A nats-server on `DIR/nats`, killed when dropped (its store stays).
pub struct KeptServer {
    child: Child,
    port: u16,
    store: PathBuf,
}

/// Starts sg_testkit's nats-server on `dir/nats` and waits until JetStream is ready.
pub async fn start_kept(dir: &Path) -> anyhow::Result<KeptServer> {
    let binary = sg_testkit::nats::nats_server_binary().await?;
    let store = dir.join("nats");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let port = sg_testkit::try_free_port()?;
    let monitor = loop {
        let p = sg_testkit::try_free_port()?;
        if p != port {
            break p;
        }
    };
    let log = std::fs::File::create(dir.join("nats-server.log"))
        .context("creating the nats-server log")?;
    let mut child = Command::new(&binary)
        .arg("-js")
        .arg("-sd")
        .arg(&store)
        .args(["-a", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-m")
        .arg(monitor.to_string())
        .args(["--server_name", "sg-coldstart"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "nats-server exited with {status}; see {}",
                dir.join("nats-server.log").display()
            );
        }
        let url = format!("http://127.0.0.1:{monitor}/healthz");
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(KeptServer { child, port, store });
        }
        if started.elapsed() > READY {
            let _ = child.kill().await;
            bail!(
                "nats-server on {} was not ready within {READY:?}",
                store.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes of the files under `dir`.
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
