//! A private three-node NATS cluster with JetStream on loopback, for tests that kill a
//! node under load.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::nats::nats_server_binary;
use crate::process::{log_tail, tcp_accepts};
use crate::try_free_port;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// Three nats-server nodes routed into one JetStream cluster (with `sync_interval:
/// always`, as production should run), each with its own store; killed when dropped.
pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    dir: TempDir,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("urls", &self.urls())
            .finish_non_exhaustive()
    }
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader on all of them.
    pub async fn start() -> Result<Self> {
        let binary = nats_server_binary().await?;
        let dir = tempfile::Builder::new()
            .prefix("sg-testkit-nats-cluster-")
            .tempdir()
            .context("creating a temporary directory for the NATS cluster")?;
        let mut ports = Vec::new();
        while ports.len() < 9 {
            let p = try_free_port().context("finding free ports for the NATS cluster")?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                client_port: ports[i * 3],
                cluster_port: ports[i * 3 + 1],
                monitor_port: ports[i * 3 + 2],
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { binary, nodes, dir };
        for i in 0..3 {
            cluster.write_config(i)?;
            cluster.spawn(i)?;
        }
        for i in 0..3 {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (what clients are given).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's client URL.
    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].client_port)
    }

    /// One node's log.
    pub fn log(&self, node: usize) -> String {
        log_tail(&self.log_path(node))
    }

    /// Kills a node (like a crash); its store is kept.
    pub async fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts a killed node again with its store, and waits until it is ready.
    pub async fn restart(&mut self, node: usize) -> Result<()> {
        self.kill(node).await;
        self.spawn(node)?;
        self.wait_ready(node).await
    }

    fn log_path(&self, node: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.nodes[node].name))
    }

    fn config_path(&self, node: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.conf", self.nodes[node].name))
    }

    fn write_config(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let store = self.dir.path().join(format!("{}-store", node.name));
        std::fs::create_dir_all(&store).context("creating a NATS store directory")?;
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect();
        let config = format!(
            "server_name: {name}\n\
             listen: 127.0.0.1:{client}\n\
             http: 127.0.0.1:{monitor}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
             cluster {{\n  name: sg-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{routes}]\n}}\n",
            name = node.name,
            client = node.client_port,
            monitor = node.monitor_port,
            store = store.display(),
            cluster = node.cluster_port,
            routes = routes.join(", "),
        );
        std::fs::write(self.config_path(i), config).context("writing a NATS node config")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .context("opening a NATS node log")?;
        let log_err = log.try_clone().context("opening a NATS node log")?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .context("building an HTTP client")?;
        let url = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.nodes[i].monitor_port
        );
        let full = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.nodes[i].child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "NATS node {} exited with {status}\n{}",
                    self.nodes[i].name,
                    self.log(i)
                );
            }
            let ok =
                |r: reqwest::Result<reqwest::Response>| r.is_ok_and(|r| r.status().is_success());
            if ok(http.get(&url).send().await)
                && ok(http.get(&full).send().await)
                && tcp_accepts(self.nodes[i].client_port).await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "NATS node {} not ready after {}s\n{}",
                    self.nodes[i].name,
                    READY_TIMEOUT.as_secs(),
                    self.log(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
                let deadline = Instant::now() + Duration::from_secs(2);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}
