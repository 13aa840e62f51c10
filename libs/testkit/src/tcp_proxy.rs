//! A TCP pass-through on loopback that a test can cut and restore: a network partition
//! between one process and a server, without touching the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from its own port to `target`. While cut, existing connections
/// are dropped and new ones are accepted and held silent (packets go nowhere, as in a
/// partition), until [`TcpProxy::restore`].
pub struct TcpProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding the TCP proxy")?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, watcher) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(listener, target, cut.clone(), watcher));
        Ok(TcpProxy {
            port,
            cut,
            generation,
            task,
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection and black-holes new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again (connections made while cut stay dead; clients reconnect).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Receiver<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let mut stop = generation.clone();
        stop.mark_unchanged();
        if cut.load(Ordering::SeqCst) {
            // Held open and silent until the partition ends, then dropped.
            tokio::spawn(async move {
                let _client = client;
                let _ = stop.changed().await;
            });
            continue;
        }
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            let mut client = client;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = stop.changed() => {}
            }
        });
    }
}
