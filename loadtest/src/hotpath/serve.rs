//! The children's side: `serve-upstream`, `serve-passthrough`, `serve-gateway`
//! (embedded), and for cluster mode `serve-control` (admin API + projector) and
//! `serve-gateway-cluster` (a gateway node). Each starts its server, announces itself
//! with one JSON line on stdout, and serves until its stdin closes.

use std::path::Path;

use anyhow::Context as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::json;
use sg_loadtest::child::{EmbeddedGateway, announce, wait_for_parent};

use crate::client::chat_body;
use crate::upstream::{self, PATH, StreamShape};

/// The upstream's API key, for the hop's requests and the gateway's connection. The
/// upstream does not check it: not a secret.
pub const UPSTREAM_KEY: &str = "sk-hotpath";
/// `serve-upstream`: the fixed-answer upstream.
pub async fn serve_upstream(shape: StreamShape) -> anyhow::Result<()> {
    let (addr, task) = upstream::start(&shape).await?;
    announce(&json!({ "url": format!("http://{addr}") }))?;
    wait_for_parent().await;
    task.abort();
    Ok(())
}

/// `serve-gateway`: SecureGate embedded (usage accounting on: SQLite event log and
/// views), with an `openai` connection to `upstream` (`http://127.0.0.1:PORT/v1`) and a
/// proxy key without limits. Announces its URL, the key, and what the parent needs to
/// read the usage view (admin API URL and operator token, project id, and the number of
/// requests it sent itself while waiting for the key).
pub async fn serve_gateway(upstream: &str) -> anyhow::Result<()> {
    let gateway = EmbeddedGateway::start().await?;
    let served = async {
        let provisioned = gateway.provision("hotpath", upstream, UPSTREAM_KEY).await?;
        let url = gateway.url();
        let probes = wait_for_key(&url, &provisioned.key).await?;
        announce(&json!({
            "url": url,
            "key": provisioned.key,
            "admin": gateway.admin_base,
            "admin_token": gateway.admin_token,
            "project_id": provisioned.project_id,
            "probes": probes,
        }))?;
        wait_for_parent().await;
        Ok(())
    }
    .await;
    gateway.stop().await;
    served
}

/// `serve-gateway-cluster`: a gateway node in cluster mode (see
/// [`sg_loadtest::child::serve_cluster_gateway`]) with its spool in a temporary
/// directory.
pub async fn serve_gateway_cluster(nats_url: &str, master_key_file: &Path) -> anyhow::Result<()> {
    let spool = tempfile::Builder::new()
        .prefix("sg-hotpath-spool-")
        .tempdir()
        .context("creating a temporary spool directory")?;
    let served = sg_loadtest::child::serve_cluster_gateway(
        nats_url,
        master_key_file,
        "hotpath-cluster",
        spool.path(),
    )
    .await;
    drop(spool);
    served
}

/// Sends a chat completion through the gateway until the new key works; returns how
/// many requests reached the upstream (the successful one).
pub async fn wait_for_key(gateway: &str, key: &str) -> anyhow::Result<u64> {
    let url = format!("{gateway}{PATH}");
    sg_loadtest::child::until_key_works("request", |client| {
        client
            .post(&url)
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(CONTENT_TYPE, "application/json")
            .body(chat_body(false))
    })
    .await?;
    Ok(1)
}
