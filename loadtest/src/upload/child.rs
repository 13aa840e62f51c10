//! The targets' child processes: this binary run again with a hidden subcommand, so
//! that each target's memory is its own process's.
//!
//! A child starts its target, writes one JSON line on stdout (`{"url": …}`, plus `"key"`
//! for the gateway: the proxy key travels only through this pipe), and serves until its
//! stdin closes. The parent holds the child's stdin, and kills the child when its
//! handle is dropped (on errors too).

use anyhow::bail;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::json;
use sg_loadtest::child::{ChildProcess, EmbeddedGateway, announce, wait_for_parent};
use sg_testkit::media_upstream::GeneratedForm;

use crate::send::{ENDPOINT, MODEL};

/// The upstream's API key, known to the parent's media stand-in and to the gateway's
/// connection. A stand-in's key, not a secret.
pub const UPSTREAM_KEY: &str = "sk-bench";

/// Which target a child serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Passthrough,
    Gateway,
}

impl Kind {
    pub fn subcommand(self) -> &'static str {
        match self {
            Kind::Passthrough => "serve-passthrough",
            Kind::Gateway => "serve-gateway",
        }
    }
}

// ---- in the child ---------------------------------------------------------------------

/// `serve-gateway`: SecureGate embedded in a temporary data directory, provisioned
/// through its admin API with a connection to `upstream` (an OpenAI base URL).
pub async fn serve_gateway(upstream: &str) -> anyhow::Result<()> {
    let gateway = EmbeddedGateway::start().await?;
    let served = async {
        let key = gateway
            .provision("upload-bench", upstream, UPSTREAM_KEY)
            .await?
            .key;
        let url = gateway.url();
        wait_for_key(&url, &key).await?;
        announce(&json!({ "url": url, "key": key }))?;
        wait_for_parent().await;
        Ok(())
    }
    .await;
    gateway.stop().await;
    served
}

/// Sends a small upload through the gateway until the new key works.
async fn wait_for_key(gateway: &str, key: &str) -> anyhow::Result<()> {
    let url = format!("{gateway}{ENDPOINT}");
    sg_loadtest::child::until_key_works("upload", |client| {
        let form = GeneratedForm::new(MODEL, 4096, 0, 4096);
        client
            .post(&url)
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(CONTENT_TYPE, form.content_type())
            .header(CONTENT_LENGTH, form.len())
            .body(form.into_reqwest_body())
    })
    .await
}

// ---- in the parent --------------------------------------------------------------------

/// A running target's child process; killed if dropped before [`stop`](Self::stop).
pub struct ChildTarget {
    process: ChildProcess,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The gateway's proxy key (never printed).
    pub key: Option<String>,
}

impl ChildTarget {
    /// Runs this binary again as `kind`'s server for `upstream`, and waits for its line.
    pub async fn spawn(kind: Kind, upstream: &str) -> anyhow::Result<Self> {
        let process = ChildProcess::spawn(
            kind.subcommand(),
            &["--upstream".into(), upstream.into()],
            None,
        )
        .await?;
        let url = process.url()?;
        let key = process.field("key").map(str::to_owned);
        if kind == Kind::Gateway && key.is_none() {
            bail!("the gateway announced no proxy key");
        }
        Ok(Self {
            pid: process.pid,
            process,
            url,
            key,
        })
    }

    /// Closes the child's stdin and waits for it to stop (killing it if it takes too long).
    pub async fn stop(self) {
        self.process.stop().await;
    }
}
