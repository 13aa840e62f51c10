//! An [`axum::serve::Listener`] that requires a PROXY protocol v2 header on
//! every connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener, ListenerExt, TapIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::header::{
    HeaderError, MIN_HEADER_LIMIT, PROTOCOL_MAX_HEADER_LEN, ParseStatus, ProxyHeader, parse_v2,
};
use crate::stream::ProxiedStream;

/// Default time allowed for the complete header to arrive.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default upper bound on the header size, TLVs included.
pub const DEFAULT_MAX_HEADER_LEN: usize = 4096;
/// Default number of connections whose header may be in flight at once.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;

/// How many finished connections may wait for the server to take them.
const READY_QUEUE: usize = 64;
/// Largest single read while waiting for the header.
const READ_CHUNK: usize = 1024;

/// Limits applied while reading the header of each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    header_timeout: Duration,
    max_header_len: usize,
    max_pending_handshakes: usize,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_len: DEFAULT_MAX_HEADER_LEN,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }
}

impl ProxyProtocolConfig {
    /// Time from accept until the whole header must have arrived; a
    /// connection that is slower is closed.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Upper bound on the header size including TLVs. Clamped to the range
    /// `52..=65551` (an IPv6 header without TLVs up to the protocol maximum).
    pub fn max_header_len(mut self, len: usize) -> Self {
        self.max_header_len = len.clamp(MIN_HEADER_LIMIT, PROTOCOL_MAX_HEADER_LEN);
        self
    }

    /// Number of connections whose header may be outstanding at once. When
    /// reached, new connections stay in the kernel's accept queue until a
    /// slot frees up. At least 1.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.max(1);
        self
    }

    /// The configured header timeout.
    pub fn get_header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The configured header size bound.
    pub fn get_max_header_len(&self) -> usize {
        self.max_header_len
    }

    /// The configured bound on concurrent header reads.
    pub fn get_max_pending_handshakes(&self) -> usize {
        self.max_pending_handshakes
    }
}

/// A TCP listener for use behind a load balancer that speaks PROXY protocol
/// version 2 (HAProxy `send-proxy-v2`, AWS NLB with proxy protocol v2).
///
/// Connections are accepted in a background task; each one gets its own task
/// that reads the header under the configured limits, so a slow or silent
/// client never delays other connections. Only connections with a valid
/// header reach [`Listener::accept`], which yields the stream together with
/// the client address from the header (or the TCP peer for a `LOCAL`
/// header). Everything else is closed and logged at debug level.
///
/// The accept task and all header reads in flight stop when the listener is
/// dropped.
pub struct ProxyProtocolListener {
    ready: mpsc::Receiver<ProxiedStream>,
    local_addr: SocketAddr,
    config: ProxyProtocolConfig,
    task: JoinHandle<()>,
}

impl ProxyProtocolListener {
    /// Binds a TCP listener and wraps it with the default limits.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::new(TcpListener::bind(addr).await?)
    }

    /// Wraps `listener` with the default limits.
    ///
    /// Must be called from within a Tokio runtime.
    pub fn new(listener: TcpListener) -> io::Result<Self> {
        Self::with_config(listener, ProxyProtocolConfig::default())
    }

    /// Wraps `listener` with the given limits.
    ///
    /// Must be called from within a Tokio runtime.
    pub fn with_config(listener: TcpListener, config: ProxyProtocolConfig) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let task = runtime.spawn(accept_loop(listener, config, tx));
        Ok(Self {
            ready,
            local_addr,
            config,
            task,
        })
    }

    /// The limits in effect.
    pub fn config(&self) -> &ProxyProtocolConfig {
        &self.config
    }

    /// Adapts the listener so that `ConnectInfo<SocketAddr>` works with
    /// `Router::into_make_service_with_connect_info::<SocketAddr>()`; the
    /// extracted address is the client address from the header.
    ///
    /// Without this adapter, use `ConnectInfo<ClientAddr>` instead.
    pub fn with_socket_addr_connect_info(self) -> SocketAddrConnectInfo {
        self.tap_io(keep_stream as fn(&mut ProxiedStream))
    }
}

/// [`ProxyProtocolListener`] adapted by
/// [`ProxyProtocolListener::with_socket_addr_connect_info`]. It implements
/// [`Listener`] with the same `Io` and `Addr`, and axum provides
/// `Connected` for `SocketAddr` on it.
pub type SocketAddrConnectInfo = TapIo<ProxyProtocolListener, fn(&mut ProxiedStream)>;

fn keep_stream(_: &mut ProxiedStream) {}

impl Drop for ProxyProtocolListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for ProxyProtocolListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyProtocolListener")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Listener for ProxyProtocolListener {
    type Io = ProxiedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(stream) => {
                let client = stream.client_addr();
                (stream, client)
            }
            None => {
                // Only reachable if the accept task died unexpectedly; no
                // further connection can arrive.
                tracing::error!(
                    local_addr = %self.local_addr,
                    "PROXY protocol accept task stopped; no more connections will be accepted"
                );
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// The original client address of a connection accepted by
/// [`ProxyProtocolListener`], for use as `ConnectInfo<ClientAddr>` with
/// `Router::into_make_service_with_connect_info::<ClientAddr>()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<ClientAddr> for SocketAddr {
    fn from(addr: ClientAddr) -> Self {
        addr.0
    }
}

impl Connected<IncomingStream<'_, ProxyProtocolListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, ProxyProtocolListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, SocketAddrConnectInfo>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, SocketAddrConnectInfo>) -> Self {
        Self(*stream.remote_addr())
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("connection closed before the header was complete")]
    Closed,
    #[error("header not complete within {0:?}")]
    Timeout(Duration),
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

async fn accept_loop(
    listener: TcpListener,
    config: ProxyProtocolConfig,
    ready: mpsc::Sender<ProxiedStream>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = ready.closed() => return,
            done = handshakes.join_next(), if !handshakes.is_empty() => {
                if let Some(Err(e)) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "PROXY protocol header task panicked");
                }
            }
            accepted = listener.accept(), if handshakes.len() < config.max_pending_handshakes => {
                match accepted {
                    Ok((tcp, peer)) => {
                        // Small writes (a stream's events) must not wait for the peer's
                        // delayed ACK.
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                        handshakes.spawn(handshake(tcp, peer, config, ready.clone()));
                    }
                    Err(e) => handle_accept_error(e).await,
                }
            }
        }
    }
}

async fn handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    config: ProxyProtocolConfig,
    ready: mpsc::Sender<ProxiedStream>,
) {
    let read = read_header(&mut tcp, config.max_header_len);
    let outcome = match tokio::time::timeout(config.header_timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout(config.header_timeout)),
    };
    match outcome {
        Ok((header, rest)) => {
            tracing::trace!(%peer, ?header, "PROXY protocol header accepted");
            let stream = ProxiedStream::new(tcp, rest, header, peer);
            // Fails only when the listener is gone; the connection is then
            // dropped along with it.
            let _ = ready.send(stream).await;
        }
        Err(error) => {
            tracing::debug!(
                %peer,
                %error,
                "closing connection without a valid PROXY protocol v2 header"
            );
        }
    }
}

/// Reads until a complete header is buffered. Returns the header and the
/// bytes received after it.
async fn read_header(
    tcp: &mut TcpStream,
    max_header_len: usize,
) -> Result<(ProxyHeader, Vec<u8>), HandshakeError> {
    let limit = max_header_len.clamp(MIN_HEADER_LIMIT, PROTOCOL_MAX_HEADER_LEN);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let want = limit.saturating_sub(buf.len()).min(READ_CHUNK);
        if want == 0 {
            return Err(HeaderError::TooLong {
                len: buf.len(),
                limit,
            }
            .into());
        }
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = tcp.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        match parse_v2(&buf, limit)? {
            ParseStatus::Complete { header, header_len } => {
                buf.drain(..header_len);
                return Ok((header, buf));
            }
            ParseStatus::Incomplete => {}
        }
    }
}

async fn handle_accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Typically out of file descriptors: back off instead of spinning.
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
