//! The mock OpenAI-compatible upstream as a real HTTP server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use sg_mock_provider::MockConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Stats {
    /// Keep every request whole (tests); off for load (it would grow without bound).
    recording: std::sync::atomic::AtomicBool,
    requests: AtomicU64,
    last_authorization: Mutex<Option<String>>,
    recorded: Mutex<Vec<Recorded>>,
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, exactly as received.
    pub path_and_query: String,
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Recorded {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// [`sg_mock_provider::router`] served over HTTP on 127.0.0.1, stopped when
/// dropped. It counts the requests it receives and remembers the last
/// `Authorization` header.
pub struct MockUpstream {
    config: MockConfig,
    port: u16,
    stats: Arc<Stats>,
    running: Option<Running>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("base_url", &self.base_url())
            .field("running", &self.running.is_some())
            .field("requests", &self.request_count())
            .finish()
    }
}

impl MockUpstream {
    /// Serves the mock on a free port.
    pub async fn start(config: MockConfig) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding the mock upstream to 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("reading the mock upstream's port")?
            .port();
        let mut upstream = Self {
            config,
            port,
            stats: Arc::new(Stats::default()),
            running: None,
        };
        upstream.serve(listener);
        Ok(upstream)
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The TCP port, the same across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is serving (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Requests received since start (or the last [`reset_stats`](Self::reset_stats)).
    pub fn request_count(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of the last request received, if it had one.
    pub fn last_authorization(&self) -> Option<String> {
        self.stats
            .last_authorization
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Serves the mock like [`start`](Self::start) and keeps every request it receives
    /// whole (method, path, headers, body) for [`recorded`](Self::recorded).
    pub async fn start_recording(config: MockConfig) -> Result<Self> {
        let upstream = Self::start(config).await?;
        upstream.stats.recording.store(true, Ordering::SeqCst);
        Ok(upstream)
    }

    /// Every request received since start (or the last reset), in order; empty unless
    /// started with [`start_recording`](Self::start_recording).
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.stats.recorded).clone()
    }

    /// Forgets the counted and recorded requests and the last `Authorization` header.
    pub fn reset_stats(&self) {
        self.stats.requests.store(0, Ordering::SeqCst);
        *lock(&self.stats.last_authorization) = None;
        lock(&self.stats.recorded).clear();
    }

    /// Stops serving: once this returns the port refuses connections, which
    /// is how tests simulate an upstream that is down. Connections still
    /// streaming get a short grace period, then are cut.
    pub async fn stop(&mut self) {
        let Some(Running { shutdown, mut task }) = self.running.take() else {
            return;
        };
        let _ = shutdown.send(());
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same port after [`stop`](Self::stop).
    pub async fn start_again(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("binding the mock upstream again on {addr}"));
                }
            }
        };
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = sg_mock_provider::router(self.config.clone())
            .layer(middleware::from_fn_with_state(self.stats.clone(), record));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let port = self.port;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("mock upstream on port {port} failed: {e}");
            }
        });
        self.running = Some(Running { shutdown, task });
    }
}

/// Largest body kept for a recorded request.
const MAX_RECORDED_BODY: usize = 128 * 1024 * 1024;

async fn record(State(stats): State<Arc<Stats>>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    *lock(&stats.last_authorization) = authorization;
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if !stats.recording.load(Ordering::SeqCst) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_RECORDED_BODY)
        .await
        .unwrap_or_default();
    lock(&stats.recorded).push(Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(Running { shutdown, task }) = self.running.take() {
            let _ = shutdown.send(());
            task.abort();
        }
    }
}
