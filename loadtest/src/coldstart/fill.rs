//! The control stream's history: a tenant, a project, a connection with a sealed
//! credential, and N `key.issued` events, written the way the admin API writes them
//! (`sg_events::encode`, the envelope's subject, the JetStream expected-stream,
//! expected-last-subject-sequence and message-id headers) but pipelined: thousands of
//! publishes in flight instead of one HTTP command each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use sg_crypto::{Kms, LocalKms, SecretString};
use sg_eventlog::{Append, EventLog, StreamName};
use sg_events::{
    Actor, ConnectionCreatedV3, ConnectionId, Envelope, Event, KeyId, KeyIssuedV4, LimitsData,
    LocksV2, ProjectCreatedV1, ProjectId, Provider, TenantCreatedV2, TenantId,
};
use sg_proxy_key::ProxyKey;

/// Keys per batch handed from the generator thread to the publisher.
const BATCH: usize = 1024;
/// Bound of the whole fill.
const FILL_TIMEOUT: Duration = Duration::from_secs(900);
/// The file in a `--store` directory describing what it holds.
const META: &str = "coldstart.json";

/// What a filled control stream holds (also written to a reused store directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    pub tenant: TenantId,
    pub project: ProjectId,
    pub connection: ConnectionId,
    /// `key.issued` events in the stream.
    pub keys: u64,
}

/// How the fill went.
#[derive(Debug, Clone, Copy)]
pub struct FillStats {
    /// Keys published by this run (0 when a filled store was reused).
    pub published: u64,
    pub elapsed: Duration,
    /// Bytes of the published payloads.
    pub payload_bytes: u64,
}

impl FillStats {
    pub fn rate(&self) -> f64 {
        self.published as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The local master key a store's connection is sealed under (the gateway opens it
/// with the same file).
pub fn master_key(dir: &Path) -> anyhow::Result<(PathBuf, Arc<dyn Kms>)> {
    let path = dir.join("master.key");
    if !path.exists() {
        sg_crypto::generate_master_key_file(&path)
            .with_context(|| format!("writing a master key to {}", path.display()))?;
    }
    let kms = LocalKms::from_file(&path)
        .with_context(|| format!("reading the master key {}", path.display()))?;
    Ok((path, Arc::new(kms)))
}

/// What a reused store directory says it holds, if it was filled before.
pub fn read_meta(dir: &Path) -> anyhow::Result<Option<History>> {
    let path = dir.join(META);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a cold-start description", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn write_meta(dir: &Path, history: &History) -> anyhow::Result<()> {
    let path = dir.join(META);
    std::fs::write(&path, serde_json::to_vec_pretty(history)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Appends one event through the real event log (expected sequence 0: a new aggregate).
async fn append_new(log: &dyn EventLog, env: &Envelope) -> anyhow::Result<u64> {
    let appended = log
        .append(Append {
            subject: env.subject(),
            payload: sg_events::encode(env).into(),
            expected_last_subject_seq: Some(0),
            msg_id: Some(env.id.to_string()),
        })
        .await
        .with_context(|| format!("appending {}", env.event.type_name()))?;
    Ok(appended.seq)
}

/// Tenant (on the `team` plan), project and a `mock` connection whose provider key is
/// sealed with `kms`, appended through the event log.
pub async fn create_parents(log: &dyn EventLog, kms: &dyn Kms) -> anyhow::Result<History> {
    let (history, events) = parent_events(kms).await?;
    for env in &events {
        append_new(log, env).await?;
    }
    Ok(history)
}

/// The events of [`create_parents`].
pub async fn parent_events(kms: &dyn Kms) -> anyhow::Result<(History, Vec<Envelope>)> {
    let tenant = TenantId::generate();
    let project = ProjectId::generate();
    let connection = ConnectionId::generate(Provider::Mock);
    let actor = Actor::operator();
    // What the admin API seals for a `mock` connection created without a key.
    let secret = SecretString::new("mock-provider-key".into());
    let sealed = sg_crypto::seal(
        kms,
        &connection.encryption_context(&tenant, &project),
        &secret,
    )
    .await
    .context("sealing the connection's provider key")?;
    let events = vec![
        Envelope::new(
            tenant.clone(),
            actor.clone(),
            Event::TenantCreated(TenantCreatedV2 {
                name: "Acme Corporation".into(),
                plan: Some("team".into()),
            }),
        ),
        Envelope::new(
            tenant.clone(),
            actor.clone(),
            Event::ProjectCreated(ProjectCreatedV1 {
                project_id: project.clone(),
                name: "customer-facing assistants".into(),
            }),
        ),
        Envelope::new(
            tenant.clone(),
            actor,
            Event::ConnectionCreated(ConnectionCreatedV3 {
                connection_id: connection.clone(),
                project_id: project.clone(),
                provider: Provider::Mock,
                name: "primary".into(),
                base_url: None,
                api_key: sealed.into(),
                openai_organization: None,
                openai_project: None,
                api_version: None,
            }),
        ),
    ];
    Ok((
        History {
            tenant,
            project,
            connection,
            keys: 0,
        },
        events,
    ))
}

const TEAMS: [&str; 12] = [
    "checkout", "search", "support", "billing", "growth", "mobile", "data", "infra", "ml", "docs",
    "sales", "security",
];
const USES: [&str; 8] = [
    "chatbot",
    "summarizer",
    "classifier",
    "agent",
    "batch",
    "copilot",
    "evals",
    "ingest",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

/// A realistic key name: `checkout-chatbot-prod-000123`.
fn key_name(i: u64) -> String {
    let i_us = i as usize;
    format!(
        "{}-{}-{}-{i:06}",
        TEAMS[i_us % TEAMS.len()],
        USES[(i_us / TEAMS.len()) % USES.len()],
        ENVS[(i_us / 7) % ENVS.len()]
    )
}

/// One `key.issued` event as the admin API writes it for a key without locks or
/// limits given (the defaults: IP auto-bind, nothing else), and the key.
pub fn key_issued(history: &History, name: String) -> (Envelope, ProxyKey) {
    let key = ProxyKey::generate();
    let env = Envelope::new(
        history.tenant.clone(),
        Actor::operator(),
        Event::KeyIssued(KeyIssuedV4 {
            key_id: KeyId::generate(),
            project_id: history.project.clone(),
            name,
            key_hash: key.hash().to_hex(),
            hint: key.hint(),
            connection_ids: vec![history.connection.clone()],
            locks: LocksV2::default(),
            limits: LimitsData::default(),
        }),
    );
    (env, key)
}

/// Issues one more key through the event log; returns the key (never printed).
pub async fn issue_one(
    log: &dyn EventLog,
    history: &History,
    name: &str,
) -> anyhow::Result<ProxyKey> {
    let (env, key) = key_issued(history, name.to_owned());
    append_new(log, &env).await?;
    Ok(key)
}

struct Msg {
    subject: String,
    payload: Bytes,
    id: String,
}

/// Publishes `keys` `key.issued` events with up to `window` PubAcks in flight, from a
/// generator thread (key generation, SHA-256, JSON) feeding the publisher. Returns the
/// key issued at index `keys / 2` (kept in memory only) and the statistics.
pub async fn publish_keys(
    nats_url: &str,
    history: &History,
    keys: u64,
    window: usize,
) -> anyhow::Result<(Option<ProxyKey>, FillStats)> {
    let client = async_nats::ConnectOptions::new()
        .name("sg-coldstart-fill")
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let context = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(window.saturating_mul(2).max(16))
        .backpressure_on_inflight(true)
        .build(client.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Msg>>(16);
    let (known_tx, known_rx) = tokio::sync::oneshot::channel::<ProxyKey>();
    let generator_history = history.clone();
    let start_index = history.keys;
    let generator = std::thread::Builder::new()
        .name("coldstart-gen".into())
        .spawn(move || {
            let mut known_tx = Some(known_tx);
            let mut batch = Vec::with_capacity(BATCH);
            for i in 0..keys {
                let (env, key) = key_issued(&generator_history, key_name(start_index + i));
                if i == keys / 2
                    && let Some(tx) = known_tx.take()
                {
                    let _ = tx.send(key);
                }
                batch.push(Msg {
                    subject: env.subject(),
                    payload: sg_events::encode(&env).into(),
                    id: env.id.to_string(),
                });
                if batch.len() == BATCH
                    && tx
                        .blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    return;
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
        })
        .context("starting the generator thread")?;

    let started = Instant::now();
    let stream_name = StreamName::Control.stream_name();
    let publish = async {
        let mut in_flight: FuturesUnordered<
            <PublishAckFuture as std::future::IntoFuture>::IntoFuture,
        > = FuturesUnordered::new();
        let mut sent = 0u64;
        let mut acked = 0u64;
        let mut bytes = 0u64;
        let mut next_report = 100_000u64;
        let check = |ack: Result<
            jetstream::publish::PublishAck,
            jetstream::context::PublishError,
        >|
         -> anyhow::Result<()> {
            let ack = ack.context("publishing a key.issued event")?;
            if ack.stream != stream_name {
                bail!("a key.issued event was stored by stream {}", ack.stream);
            }
            if ack.duplicate {
                bail!("the server took a key.issued event for a duplicate");
            }
            Ok(())
        };
        while let Some(batch) = rx.recv().await {
            for msg in batch {
                bytes += msg.payload.len() as u64;
                let message = PublishMessage::build()
                    .payload(msg.payload)
                    .expected_stream(stream_name)
                    .expected_last_subject_sequence(0)
                    .message_id(msg.id);
                let ack = context
                    .send_publish(msg.subject, message)
                    .await
                    .context("publishing a key.issued event")?;
                in_flight.push(std::future::IntoFuture::into_future(ack));
                sent += 1;
                while in_flight.len() >= window {
                    if let Some(ack) = in_flight.next().await {
                        check(ack)?;
                        acked += 1;
                    }
                }
                if acked >= next_report {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "  {acked:>9} keys stored  {secs:6.1} s  {:>7.0} keys/s",
                        acked as f64 / secs
                    );
                    next_report += 100_000;
                }
            }
        }
        while let Some(ack) = in_flight.next().await {
            check(ack)?;
            acked += 1;
        }
        anyhow::ensure!(
            sent == keys && acked == keys,
            "only {acked} of {keys} keys were stored"
        );
        anyhow::Ok(bytes)
    };
    let bytes = tokio::time::timeout(FILL_TIMEOUT, publish)
        .await
        .map_err(|_| {
            anyhow::anyhow!("filling the control stream took more than {FILL_TIMEOUT:?}")
        })??;
    let elapsed = started.elapsed();
    let _ = generator.join();
    client.flush().await.ok();
    let known = known_rx.await.ok();
    Ok((
        known,
        FillStats {
            published: keys,
            elapsed,
            payload_bytes: bytes,
        },
    ))
}
