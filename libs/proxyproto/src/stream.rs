//! The connection type handed to the server once the header is consumed.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::header::ProxyHeader;

/// A TCP connection whose PROXY protocol header has been read and validated.
///
/// Bytes that arrived in the same reads as the header but belong to the
/// proxied stream are returned first by [`AsyncRead`], so the application
/// protocol sees exactly what the client sent after the header.
pub struct ProxiedStream {
    inner: TcpStream,
    pending: Vec<u8>,
    pending_pos: usize,
    header: ProxyHeader,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
}

impl ProxiedStream {
    pub(crate) fn new(
        inner: TcpStream,
        pending: Vec<u8>,
        header: ProxyHeader,
        peer_addr: SocketAddr,
    ) -> Self {
        let client_addr = match header {
            ProxyHeader::Proxy { source, .. } => source,
            ProxyHeader::Local => peer_addr,
        };
        Self {
            inner,
            pending,
            pending_pos: 0,
            header,
            peer_addr,
            client_addr,
        }
    }

    /// The original client address: the header's source for a `PROXY`
    /// command, the TCP peer (the balancer itself) for a `LOCAL` command.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The address of the TCP peer, i.e. the load balancer's side of the
    /// connection, not the client.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The decoded header.
    pub fn header(&self) -> &ProxyHeader {
        &self.header
    }

    /// The underlying TCP stream, e.g. to set socket options.
    ///
    /// Reading from it directly would skip bytes that are still buffered here.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl fmt::Debug for ProxiedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxiedStream")
            .field("client_addr", &self.client_addr)
            .field("peer_addr", &self.peer_addr)
            .field("header", &self.header)
            .field("buffered", &(self.pending.len() - self.pending_pos))
            .finish_non_exhaustive()
    }
}

impl AsyncRead for ProxiedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending_pos < this.pending.len() {
            let n = buf.remaining().min(this.pending.len() - this.pending_pos);
            buf.put_slice(&this.pending[this.pending_pos..this.pending_pos + n]);
            this.pending_pos += n;
            if this.pending_pos == this.pending.len() {
                this.pending = Vec::new();
                this.pending_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxiedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn buffered_bytes_come_first_then_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b" world").await.unwrap();
            let mut echo = Vec::new();
            c.shutdown().await.unwrap();
            c.read_to_end(&mut echo).await.unwrap();
            echo
        });
        let (tcp, peer) = listener.accept().await.unwrap();
        let mut s = ProxiedStream::new(tcp, b"hello".to_vec(), ProxyHeader::Local, peer);
        assert_eq!(s.client_addr(), peer);

        // Tiny reads drain the buffer piecewise.
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"he");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"llo world");

        s.write_all(b"ok").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), b"ok");
    }
}
