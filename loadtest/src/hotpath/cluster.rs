//! The cluster target: SecureGate in cluster mode. A private NATS JetStream server and a
//! private PostgreSQL (`sg_testkit`, never the shared ones), the control plane child
//! (`serve-control`: admin API + projector) and a gateway node child
//! (`serve-gateway-cluster`). The control plane runs on the upstream core, the gateway
//! node on the server core.

use std::path::Path;

use anyhow::{Context as _, bail};
use sg_loadtest::admin::AdminApi;
use sg_loadtest::child::{ChildProcess, taskset};
use sg_testkit::{NatsServer, PostgresServer};

use crate::serve::UPSTREAM_KEY;

/// Everything the cluster target runs, as the parent holds it.
pub struct ClusterStack {
    pub gateway: ChildProcess,
    pub control: ChildProcess,
    nats: NatsServer,
    postgres: PostgresServer,
    /// The proxy key (never printed).
    pub key: String,
    pub project_id: String,
    /// nats-server's pid.
    pub nats_pid: Option<u32>,
    /// The postmaster's and its children's pids (backends included, as of the start).
    pub postgres_pids: Vec<u32>,
    /// The master key file's directory.
    _dir: tempfile::TempDir,
}

impl ClusterStack {
    /// Starts NATS and PostgreSQL (pinned to `control_core`), the control plane child on
    /// `control_core`, the gateway node child on `server_core`; provisions a key with a
    /// connection to `upstream` (an OpenAI base URL) and waits until the node accepts it.
    pub async fn start(
        upstream: &str,
        server_core: usize,
        control_core: usize,
    ) -> anyhow::Result<Self> {
        let nats = NatsServer::start()
            .await
            .context("starting a private nats-server (sg_testkit)")?;
        let nats_pid = children_of(std::process::id())
            .into_iter()
            .find(|(_, comm)| comm.starts_with("nats-server"))
            .map(|(pid, _)| pid);
        if let Some(pid) = nats_pid {
            pin(pid, control_core).context("pinning nats-server")?;
        }
        let postgres = PostgresServer::start()
            .await
            .context("starting a private PostgreSQL (sg_testkit)")?;
        for pid in postgres_pids(&postgres.data_dir()) {
            pin(pid, control_core).context("pinning PostgreSQL")?;
        }
        let database_url = postgres
            .create_database("securegate")
            .await
            .context("creating the views database")?;
        let dir = tempfile::Builder::new()
            .prefix("sg-hotpath-cluster-")
            .tempdir()
            .context("creating a temporary directory")?;
        let master_key = dir.path().join("master.key");
        sg_crypto::generate_master_key_file(&master_key)
            .context("writing a master key file for the cluster")?;
        let master_key = path_arg(&master_key)?;
        let control = ChildProcess::spawn(
            "serve-control",
            &[
                "--nats-url".into(),
                nats.url(),
                "--database-url".into(),
                database_url,
                "--master-key-file".into(),
                master_key.clone(),
            ],
            Some(control_core),
        )
        .await
        .context("starting the control plane (admin API + projector)")?;
        let gateway = ChildProcess::spawn(
            "serve-gateway-cluster",
            &[
                "--nats-url".into(),
                nats.url(),
                "--master-key-file".into(),
                master_key,
            ],
            Some(server_core),
        )
        .await
        .context("starting the cluster gateway node")?;
        let gateway_url = gateway.url()?;
        let admin = admin_of(&control)?;
        let provisioned =
            sg_loadtest::child::provision(&admin, "hotpath-cluster", upstream, UPSTREAM_KEY)
                .await
                .context("provisioning through the cluster's admin API")?;
        crate::serve::wait_for_key(&gateway_url, &provisioned.key).await?;
        // Backends opened by the admin API and the projector are forked by the
        // postmaster and inherit its core; listed now for the CPU readings.
        let postgres_pids = postgres_pids(&postgres.data_dir());
        Ok(Self {
            gateway,
            control,
            nats,
            postgres,
            key: provisioned.key,
            project_id: provisioned.project_id,
            nats_pid,
            postgres_pids,
            _dir: dir,
        })
    }

    /// The control plane's processes: the admin/projector child, NATS, PostgreSQL.
    pub fn control_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.control.pid];
        pids.extend(self.nats_pid);
        pids.extend(&self.postgres_pids);
        pids
    }

    /// The gateway node first (it flushes its spool to NATS), then the rest.
    pub async fn stop(mut self) {
        self.gateway.stop().await;
        self.control.stop().await;
        self.postgres.stop().await;
        self.nats.stop().await;
    }
}

/// The control child's admin API, as the operator.
pub fn admin_of(control: &ChildProcess) -> anyhow::Result<AdminApi> {
    let url = control
        .field("url")
        .context("the control plane announced no admin URL")?;
    let token = control
        .field("admin_token")
        .context("the control plane announced no admin token")?;
    AdminApi::new(url.to_owned(), token.to_owned())
}

fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Pins every thread of process `pid` to `core` (`taskset -a -p -c`).
pub fn pin(pid: u32, core: usize) -> anyhow::Result<()> {
    let taskset = taskset()?;
    let output = std::process::Command::new(&taskset)
        .args(["-a", "-p", "-c"])
        .arg(core.to_string())
        .arg(pid.to_string())
        .output()
        .with_context(|| format!("running {}", taskset.display()))?;
    if !output.status.success() {
        bail!(
            "taskset could not pin process {pid} to core {core}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// `(pid, command name)` of the processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (comm, ppid) = parse_comm_ppid(&stat)?;
            (ppid == parent).then_some((pid, comm))
        })
        .collect()
}

/// The command name and the parent pid from the text of `/proc/<pid>/stat`.
fn parse_comm_ppid(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// The postmaster (first line of `postmaster.pid`) and its children.
fn postgres_pids(data_dir: &Path) -> Vec<u32> {
    let Some(postmaster) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
    else {
        eprintln!("warning: PostgreSQL's postmaster.pid is unreadable; it stays unpinned");
        return Vec::new();
    };
    let mut pids = vec![postmaster];
    pids.extend(children_of(postmaster).into_iter().map(|(pid, _)| pid));
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_and_ppid() {
        let text = "42 (nats server) x) S 7 42 42 0 -1";
        assert_eq!(parse_comm_ppid(text), Some(("nats server) x".into(), 7)));
        assert_eq!(parse_comm_ppid("garbage"), None);
    }
}
