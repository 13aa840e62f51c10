//! The bench: a mock upstream and an embedded SecureGate pointed at it, set up
//! through the real admin HTTP API, all on loopback addresses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use reqwest::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use sg_loadtest::admin::field;
use sg_loadtest::child::EmbeddedGateway;
use sg_testkit::{MockConfig, MockUpstream};
use tokio::task::JoinHandle;

/// How long the gateway may take to learn about a newly issued key.
const KEY_PROPAGATION: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

pub struct Bench {
    pub mock: MockUpstream,
    /// The embedded SecureGate and its admin API client.
    pub gateway: EmbeddedGateway,
    project_id: String,
    proxy_key: String,
    /// A second key with limits and a budget high enough never to refuse.
    limited_key: Option<String>,
    /// Successful requests sent through the gateway before the runs.
    pub probes: u64,
}

impl Bench {
    pub async fn start(
        mock_latency: Duration,
        probe_body: &[u8],
        with_limits: bool,
    ) -> anyhow::Result<Self> {
        let mock = MockUpstream::start(MockConfig {
            latency: mock_latency,
            ..Default::default()
        })
        .await?;
        let gateway = EmbeddedGateway::start().await?;
        let mut bench = Bench {
            mock,
            gateway,
            project_id: String::new(),
            proxy_key: String::new(),
            limited_key: None,
            probes: 0,
        };
        bench.provision(with_limits).await?;
        let key = bench.proxy_key.clone();
        bench.wait_for_key(&key, probe_body).await?;
        if let Some(key) = bench.limited_key.clone() {
            bench.wait_for_key(&key, probe_body).await?;
        }
        Ok(bench)
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions` on the mock.
    pub fn baseline_url(&self) -> String {
        format!("{}/chat/completions", self.mock.base_url())
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions` on the gateway.
    pub fn gateway_url(&self) -> String {
        format!(
            "http://{}/v1/chat/completions",
            self.gateway.embedded.gateway.http.addr
        )
    }

    pub fn proxy_key(&self) -> &str {
        &self.proxy_key
    }

    /// The key with limits, if the bench was started with them.
    pub fn limited_key(&self) -> Option<&str> {
        self.limited_key.as_deref()
    }

    /// Tenant, project, connection to the mock, proxy key (and one with limits).
    async fn provision(&mut self, with_limits: bool) -> anyhow::Result<()> {
        // A plan with every feature and no per-key request limits: the bench measures
        // the gateway, not a plan's caps.
        self.gateway.admin.put(
            "/plans/bench",
            json!({"features": ["ip", "model", "city", "country", "device", "signature", "geo_auto_bind"],
                   "max_connections": null, "key_rpm": null, "key_rpd": null}),
        )
        .await?;
        let tenant = self
            .gateway
            .admin
            .post("/tenants", json!({"name": "bench", "plan": "bench"}))
            .await?;
        let tenant_id = field(&tenant, "id")?;
        let project = self
            .gateway
            .admin
            .post(
                &format!("/tenants/{tenant_id}/projects"),
                json!({"name": "bench"}),
            )
            .await?;
        self.project_id = field(&project, "id")?;
        // Abuse detection off: thousands of requests a second on one key are what the
        // bench is for, and the sentinel would suspend it.
        self.gateway
            .admin
            .put(
                &format!("/projects/{}/abuse", self.project_id),
                json!({"enabled": false}),
            )
            .await?;
        let connection = self
            .gateway
            .admin.post(
                &format!("/projects/{}/connections", self.project_id),
                json!({"provider": "openai", "api_key": "sk-bench", "base_url": self.mock.base_url()}),
            )
            .await?;
        field(&connection, "id")?;
        let key = self
            .gateway
            .admin
            .post(
                &format!("/projects/{}/keys", self.project_id),
                json!({"name": "bench"}),
            )
            .await?;
        self.proxy_key = field(&key, "key")?;
        if with_limits {
            // Every kind of limit and a budget, each far above what a run can use: the
            // requests are checked and counted, never refused.
            let key = self
                .gateway
                .admin
                .post(
                    &format!("/projects/{}/keys", self.project_id),
                    json!({"name": "bench-limited", "limits": {
                        "rpm": 10_000_000u64, "rpd": 10_000_000_000u64, "tpm": 100_000_000_000u64,
                        "concurrent": 1_000_000u64, "budget": {"usd": 10_000_000, "period": "month"}
                    }}),
                )
                .await?;
            self.limited_key = Some(field(&key, "key")?);
        }
        Ok(())
    }

    /// Sends requests through the gateway until the new key works.
    async fn wait_for_key(&mut self, key: &str, body: &[u8]) -> anyhow::Result<()> {
        let client = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let deadline = Instant::now() + KEY_PROPAGATION;
        let mut last = String::new();
        while Instant::now() < deadline {
            let sent = client
                .post(self.gateway_url())
                .header(AUTHORIZATION, format!("Bearer {key}"))
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    r.bytes().await?;
                    self.probes += 1;
                    return Ok(());
                }
                Ok(r) => {
                    let status = r.status();
                    last = format!("{status}: {}", r.text().await.unwrap_or_default());
                    // 401 while the key propagates; anything else will not get better.
                    if status != reqwest::StatusCode::UNAUTHORIZED {
                        bail!("the gateway refused the benchmark request: {last}");
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "the gateway did not accept the new key within {KEY_PROPAGATION:?}; last answer: {last}"
        )
    }

    /// Usage events the gateway recorded but the event log has not acknowledged.
    pub fn usage_pending(&self) -> u64 {
        self.gateway.embedded.gateway.gateway.usage().pending()
    }

    /// Samples the usage backlog every `every` until stopped (at most `limit` samples).
    pub fn sample_backlog(&self, every: Duration, limit: u64) -> BacklogSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let gateway = self.gateway.embedded.gateway.gateway.clone();
        let (stop2, max2) = (stop.clone(), max.clone());
        let task = tokio::spawn(async move {
            for _ in 0..limit {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                max2.fetch_max(gateway.usage().pending(), Ordering::Relaxed);
                tokio::time::sleep(every).await;
            }
        });
        BacklogSampler { stop, max, task }
    }

    /// Waits (at most `limit`) for every usage event to be acknowledged by the
    /// log; returns how long it waited.
    pub async fn wait_usage_flushed(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        self.gateway
            .embedded
            .gateway
            .gateway
            .usage()
            .flush(limit)
            .await;
        started.elapsed()
    }

    /// Waits (at most `limit`) for the project's usage view to count `expected`
    /// requests; returns the last count seen and how long it took.
    pub async fn wait_usage_projected(
        &self,
        expected: u64,
        limit: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        let started = Instant::now();
        let path = format!("/projects/{}/usage", self.project_id);
        loop {
            let usage = self.gateway.admin.get(&path).await?;
            let requests = usage
                .get("totals")
                .and_then(|t| t.get("requests"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if requests >= expected || started.elapsed() >= limit {
                return Ok((requests, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(self) {
        let Bench {
            mut mock, gateway, ..
        } = self;
        gateway.stop().await;
        mock.stop().await;
    }
}

pub struct BacklogSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl BacklogSampler {
    /// Stops sampling; returns the largest backlog seen.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            eprintln!("warning: the usage backlog sampler did not stop in time");
        }
        self.max.load(Ordering::Relaxed)
    }
}
