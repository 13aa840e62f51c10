//! Usage events: extracted from provider answers, written to a durable local spool as the
//! answer completes, and published from there to the usage stream by a background task
//! that retries until the log acknowledges. A node killed during a log outage publishes
//! what it owed when it starts again. The event id is the log's idempotency id, so a
//! retried publish is stored once; the projector counts a request id once in any case.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sg_eventlog::{Append, Backoff, EventLog};
use sg_events::Envelope;
use sg_spool::{Spool, SpoolConfig, SpoolReader};

/// Token counts reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    /// Of the prompt, what the provider served from its cache.
    pub cached: u64,
    pub completion: u64,
    pub total: u64,
}

/// Reads an OpenAI `usage` object (chat, completions, embeddings, responses API).
pub fn tokens_from_usage(usage: &serde_json::Value) -> Option<Tokens> {
    let obj = usage.as_object()?;
    let get = |k: &str| obj.get(k).and_then(|v| v.as_u64());
    let prompt = get("prompt_tokens")
        .or_else(|| get("input_tokens"))
        .unwrap_or(0);
    let completion = get("completion_tokens")
        .or_else(|| get("output_tokens"))
        .unwrap_or(0);
    let total = get("total_tokens").unwrap_or(prompt + completion);
    let detail = |outer: &str| {
        obj.get(outer)
            .and_then(|d| d.get("cached_tokens"))
            .and_then(|v| v.as_u64())
    };
    let cached = detail("prompt_tokens_details")
        .or_else(|| detail("input_tokens_details"))
        .unwrap_or(0)
        .min(prompt);
    Some(Tokens {
        prompt,
        cached,
        completion,
        total,
    })
}

/// Where usage events wait to be published: a durable local spool ([`sg_spool`]).
/// Cheap to clone; never blocks on I/O.
#[derive(Clone)]
pub struct UsageSink {
    spool: Spool,
}

/// Settings of the usage spool.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Directory of the spool's files; it must survive a restart of the process (a
    /// volume, on Kubernetes) for usage owed at a crash to be published afterwards.
    pub dir: std::path::PathBuf,
    /// Unpublished bytes beyond which new requests are refused (503 `usage_spool_full`).
    pub max_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: std::env::temp_dir().join(format!("securegate-spool-{}", std::process::id())),
            max_bytes: SpoolConfig::default().max_bytes,
        }
    }
}

impl UsageSink {
    /// Writes an event to the spool; the publisher sends it to the log from there.
    pub fn record(&self, event: Envelope) {
        let record = frame(&event);
        if let Err(e) = self.spool.append(record) {
            // Only if the disk failed for good (the node then refuses requests) or the
            // node is stopping.
            tracing::error!(error = %e, event_id = %event.id, "usage event could not be spooled");
        }
    }

    /// Events recorded but not yet acknowledged by the log.
    pub fn pending(&self) -> u64 {
        self.spool.pending()
    }

    /// Bytes of events recorded but not yet acknowledged.
    pub fn pending_bytes(&self) -> u64 {
        self.spool.pending_bytes()
    }

    /// Whether the spool is full (or cannot write): new requests must be refused.
    pub fn is_full(&self) -> bool {
        self.spool.is_full()
    }

    /// Waits until every recorded event is acknowledged, for at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.spool.drained(timeout).await
    }

    /// Stops the spool's writer after it synced everything (what is unpublished stays
    /// on disk for the next start).
    pub fn close(&self) {
        self.spool.close();
    }
}

/// A spooled event: `[subject len: u16][subject][msg id len: u16][msg id][payload]`.
fn frame(event: &Envelope) -> Vec<u8> {
    let subject = event.subject();
    let id = event.id.to_string();
    let payload = sg_events::encode(event);
    let mut out = Vec::with_capacity(4 + subject.len() + id.len() + payload.len());
    for part in [subject.as_bytes(), id.as_bytes()] {
        out.extend_from_slice(&u16::try_from(part.len()).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&payload);
    out
}

fn unframe(record: &bytes::Bytes) -> Option<Append> {
    let mut at = 0usize;
    let mut part = || {
        let len = usize::from(u16::from_le_bytes([*record.get(at)?, *record.get(at + 1)?]));
        let text = std::str::from_utf8(record.get(at + 2..at + 2 + len)?)
            .ok()?
            .to_owned();
        at += 2 + len;
        Some(text)
    };
    let subject = part()?;
    let msg_id = part()?;
    Some(Append {
        subject,
        payload: record.slice(at..),
        expected_last_subject_seq: None,
        msg_id: Some(msg_id),
    })
}

/// Opens the spool and starts the publisher task; returns the sink that feeds it.
pub fn spawn_publisher(
    log: Arc<dyn EventLog>,
    settings: &SpoolSettings,
    publish_lag: prometheus_client::metrics::histogram::Histogram,
) -> Result<(UsageSink, tokio::task::JoinHandle<()>), sg_spool::SpoolError> {
    let config = SpoolConfig {
        max_bytes: settings.max_bytes,
        ..SpoolConfig::default()
    };
    let (spool, reader) = Spool::open(&settings.dir, config)?;
    let task = tokio::spawn(publish_loop(log, reader, publish_lag));
    Ok((UsageSink { spool }, task))
}

/// Publishes spooled events in order, acknowledging them to the spool once the log has
/// acknowledged them; failures are retried until they succeed.
async fn publish_loop(
    log: Arc<dyn EventLog>,
    mut reader: SpoolReader,
    publish_lag: prometheus_client::metrics::histogram::Histogram,
) {
    loop {
        let batch = match reader.next_batch(256).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "usage spool unreadable; publishing stopped");
                return;
            }
        };
        let Some(&(last, _)) = batch.last() else {
            continue;
        };
        let appends: Vec<Append> = batch
            .iter()
            .filter_map(|(index, record)| {
                let append = unframe(record);
                if append.is_none() {
                    tracing::error!(index, "a spooled usage record is not readable; skipped");
                }
                append
            })
            .collect();
        let appends_ids: Vec<Option<String>> = appends.iter().map(|a| a.msg_id.clone()).collect();
        // One batch append (one commit on the embedded log); what fails is retried alone.
        let results = log.append_batch(appends.clone()).await;
        let failed: Vec<Append> = appends
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|(a, _)| a)
            .collect();
        futures::stream::iter(failed)
            .for_each_concurrent(64, |append| {
                let log = log.clone();
                async move { publish_until_acked(&*log, append).await }
            })
            .await;
        // Event ids are UUIDv7: their time says how long each event waited.
        let now_ms = crate::unix_now_ms();
        for append in &appends_ids {
            if let Some(ms) = append.as_deref().and_then(event_time_ms) {
                publish_lag.observe(now_ms.saturating_sub(ms) as f64 / 1000.0);
            }
        }
        reader.ack_through(last);
    }
}

/// Milliseconds since the epoch at which a UUIDv7 event id was made.
fn event_time_ms(id: &str) -> Option<u64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos / 1_000_000))
}

async fn publish_until_acked(log: &dyn EventLog, append: Append) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        match log.append(append.clone()).await {
            Ok(_) => return,
            Err(e) => {
                let wait = backoff.failed();
                let attempts = backoff.failures();
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(error = %e, attempts, msg_id = ?append.msg_id, "usage publish failed; retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_shapes() {
        let chat =
            serde_json::json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8});
        assert_eq!(
            tokens_from_usage(&chat),
            Some(Tokens {
                prompt: 3,
                cached: 0,
                completion: 5,
                total: 8
            })
        );
        let emb = serde_json::json!({"prompt_tokens": 4, "total_tokens": 4});
        assert_eq!(
            tokens_from_usage(&emb),
            Some(Tokens {
                prompt: 4,
                cached: 0,
                completion: 0,
                total: 4
            })
        );
        let responses = serde_json::json!({"input_tokens": 2, "output_tokens": 7});
        assert_eq!(
            tokens_from_usage(&responses),
            Some(Tokens {
                prompt: 2,
                cached: 0,
                completion: 7,
                total: 9
            })
        );
        assert_eq!(tokens_from_usage(&serde_json::Value::Null), None);
        let cached = serde_json::json!({"prompt_tokens": 100, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 60}});
        assert_eq!(tokens_from_usage(&cached).unwrap().cached, 60);
    }
}
