//! SecureGate's HTTP servers, built so that slow, idle or numerous clients cannot take a
//! node down.
//!
//! - **A bound on connections** ([`Limits::max_connections`]): past it, new connections
//!   wait in the kernel's accept queue instead of taking file descriptors.
//! - **A header timeout** ([`Limits::header_read_timeout`]): from accept (or from the
//!   first byte of a request on a kept-alive connection) to the end of the request's
//!   headers. A client that trickles headers is cut off.
//! - **An idle timeout** ([`Limits::idle_timeout`]): a kept-alive connection with no
//!   request in flight is closed gracefully. It is separate from the header timeout so it
//!   can be longer than a load balancer's own idle timeout (a backend that closes first
//!   makes the balancer send requests into closing connections).
//! - Request bodies are bounded by the handlers (the gateway reads bodies with a gap
//!   timeout and a minimum rate); responses may stream for as long as they need.
//!
//! Handlers see the client's address as axum's `ConnectInfo<SocketAddr>` — the TCP peer,
//! or the PROXY protocol header's client behind a network load balancer.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::{Listener, ListenerExt};
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How many connections a server holds, and for how long a quiet one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// From accept, or from a kept-alive request's first byte, to the end of its headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// How a server listens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub limits: Limits,
    /// Every connection must start with a PROXY protocol v2 header, whose client address
    /// the handlers see.
    pub proxy_protocol: bool,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `listen` and serves `router` until [`Server::stop`].
    pub async fn bind(
        listen: SocketAddr,
        router: Router,
        name: &'static str,
        options: Options,
    ) -> io::Result<Server> {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let limits = options.limits;
        let (addr, task) = if options.proxy_protocol {
            let listener = sg_proxyproto::ProxyProtocolListener::bind(listen).await?;
            let addr = listener.local_addr()?;
            (
                addr,
                tokio::spawn(run(listener, router, limits, stop, name)),
            )
        } else {
            let listener = TcpListener::bind(listen).await?;
            let addr = listener.local_addr()?;
            // Small writes (a stream's events) must not wait for the peer's delayed ACK.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            (
                addr,
                tokio::spawn(run(listener, router, limits, stop, name)),
            )
        };
        tracing::info!(server = name, %addr, max_connections = limits.max_connections, "listening");
        Ok(Server { addr, cancel, task })
    }

    /// Stops accepting, lets requests in flight finish (at most 30 s), then closes.
    pub async fn stop(self) {
        self.cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .is_err()
        {
            tracing::warn!(addr = %self.addr, "requests still in flight after 30 s; closing");
        }
    }
}

async fn run<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
    name: &'static str,
) where
    L: Listener<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Said at most every ten seconds: under a flood this would be the flood.
                if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(10)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        server = name,
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait"
                    );
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let (io, remote) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        tracker.spawn(connection(
            io,
            remote,
            router.clone(),
            limits,
            cancel.clone(),
            permit,
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// What a connection is doing, for its timeouts. Times are milliseconds since the
/// connection was accepted.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// When the connection last became idle (0 at accept).
    idle_since: AtomicU64,
    /// When, since becoming idle, the first byte of a new request arrived (+1; 0: none).
    head_since: AtomicU64,
    /// A request has been served (or is being served) on this connection.
    used: AtomicBool,
    http2: AtomicBool,
}

enum Verdict {
    Fine,
    /// Headers too slow: close at once.
    HeaderTimeout,
    /// Idle too long: close gracefully.
    Idle,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            used: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
        }
    }

    fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        self.used.store(true, Ordering::Release);
        if http2 {
            self.http2.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// The decision now, and when to look again.
    fn verdict(&self, limits: &Limits) -> (Verdict, Instant) {
        let now = self.now_ms();
        let at = |ms: u64| self.start + Duration::from_millis(ms);
        let header = u64::try_from(limits.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (Verdict::Fine, at(now.saturating_add(header.min(idle))));
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        let head = self.head_since.load(Ordering::Acquire);
        // A fresh connection has its header timeout from accept; a kept-alive one from
        // its next request's first byte (HTTP/2 clients send pings and settings while
        // idle, so only the idle rule applies to them).
        let header_from = if !self.used.load(Ordering::Acquire) {
            Some(idle_since)
        } else if head > 0 && !self.http2.load(Ordering::Acquire) {
            Some(head - 1)
        } else {
            None
        };
        if let Some(from) = header_from {
            let deadline = from.saturating_add(header);
            if now >= deadline {
                return (Verdict::HeaderTimeout, at(now));
            }
            return (
                Verdict::Fine,
                at(deadline.min(idle_since.saturating_add(idle))),
            );
        }
        let deadline = idle_since.saturating_add(idle);
        if now >= deadline {
            return (Verdict::Idle, at(now));
        }
        (Verdict::Fine, at(deadline))
    }
}

/// One request in flight; it ends when its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.head_since.store(0, Ordering::Release);
            self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        }
    }
}

/// A response body that ends its request's [`InFlight`] when it is done.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O, noting when bytes arrive.
struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn connection<I>(
    io: I,
    remote: SocketAddr,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo {
        inner: io,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let in_flight = service_activity.begin(request.version() == http::Version::HTTP_2);
        let router = router.clone();
        async move {
            let response = match router.oneshot(request.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, std::convert::Infallible>(response.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header and idle timeouts are kept here, not by hyper (whose header timer also runs
    // while a kept-alive connection is idle).
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let (verdict, next) = activity.verdict(&limits);
        match verdict {
            Verdict::Fine => {}
            Verdict::HeaderTimeout => {
                tracing::debug!(%remote, "request headers too slow; connection closed");
                return;
            }
            Verdict::Idle if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            Verdict::Idle => {}
        }
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(next), if !closing => {}
            _ = cancel.cancelled(), if !closing => {
                // Stopping: a connection with nothing in flight (idle, or still sending
                // headers) is closed now; one serving a request finishes it.
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
