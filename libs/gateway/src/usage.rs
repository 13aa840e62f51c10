//! Usage events: extracted from provider answers, recorded without adding latency, and
//! published to the usage stream by a background task that retries until the log
//! acknowledges. The event id is the log's idempotency id, so a retried publish is
//! stored once; the projector counts a request id once in any case.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use sg_eventlog::{Append, EventLog};
use sg_events::Envelope;
use tokio::sync::{Notify, mpsc};

/// Token counts reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
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
    Some(Tokens {
        prompt,
        completion,
        total,
    })
}

/// Hands usage events to the publisher. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::UnboundedSender<Envelope>,
    pending: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    count: AtomicU64,
    drained: Notify,
}

impl UsageSink {
    /// Queues an event for publishing.
    pub fn record(&self, event: Envelope) {
        self.pending.count.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(event).is_err() {
            // Only after the publisher stopped, i.e. during shutdown.
            self.pending.count.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("usage publisher stopped; usage event not recorded");
        }
    }

    /// Events recorded but not yet acknowledged by the log.
    pub fn pending(&self) -> u64 {
        self.pending.count.load(Ordering::SeqCst)
    }

    /// Waits until every recorded event is acknowledged, for at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.pending.drained.notified();
                if self.pending() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// Starts the publisher task; returns the sink that feeds it.
pub fn spawn_publisher(log: Arc<dyn EventLog>) -> (UsageSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(Pending::default());
    let task = tokio::spawn(publish_loop(log, rx, pending.clone()));
    (UsageSink { tx, pending }, task)
}

async fn publish_loop(
    log: Arc<dyn EventLog>,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    pending: Arc<Pending>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let events: Vec<Envelope> = std::mem::take(&mut batch);
        // One batch append (one commit on the embedded log); what fails is retried alone.
        let results = log
            .append_batch(events.iter().map(to_append).collect())
            .await;
        let failed: Vec<&Envelope> = events
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|(e, _)| e)
            .collect();
        let done = events.len() - failed.len();
        futures::stream::iter(failed)
            .for_each_concurrent(64, |event| {
                let log = log.clone();
                let pending = pending.clone();
                async move {
                    publish_until_acked(&*log, event).await;
                    settle(&pending, 1);
                }
            })
            .await;
        settle(&pending, done as u64);
    }
}

fn settle(pending: &Pending, n: u64) {
    if n > 0 && pending.count.fetch_sub(n, Ordering::SeqCst) == n {
        pending.drained.notify_waiters();
    }
}

fn to_append(event: &Envelope) -> Append {
    Append {
        subject: event.subject(),
        payload: sg_events::encode(event).into(),
        expected_last_subject_seq: None,
        msg_id: Some(event.id.to_string()),
    }
}

async fn publish_until_acked(log: &dyn EventLog, event: &Envelope) {
    let append = to_append(event);
    let mut backoff = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        match log.append(append.clone()).await {
            Ok(_) => return,
            Err(e) => {
                attempts += 1;
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(error = %e, attempts, event_id = %event.id, "usage publish failed; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
                completion: 5,
                total: 8
            })
        );
        let emb = serde_json::json!({"prompt_tokens": 4, "total_tokens": 4});
        assert_eq!(
            tokens_from_usage(&emb),
            Some(Tokens {
                prompt: 4,
                completion: 0,
                total: 4
            })
        );
        let responses = serde_json::json!({"input_tokens": 2, "output_tokens": 7});
        assert_eq!(
            tokens_from_usage(&responses),
            Some(Tokens {
                prompt: 2,
                completion: 7,
                total: 9
            })
        );
        assert_eq!(tokens_from_usage(&serde_json::Value::Null), None);
    }
}
