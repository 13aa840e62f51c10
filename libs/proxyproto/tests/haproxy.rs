#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End to end behind a real HAProxy with `send-proxy-v2`, loopback only.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use axum::serve::IncomingStream;
use common::*;
use sg_proxyproto::{ProxyHeader, ProxyProtocolListener};
use tokio::net::TcpSocket;

/// What the app learns about each connection.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The listener's `Addr`: the client address from the header.
    client: SocketAddr,
    /// The TCP peer, i.e. HAProxy's own connection.
    peer: SocketAddr,
    local: bool,
}

impl Connected<IncomingStream<'_, ProxyProtocolListener>> for Seen {
    fn connect_info(stream: IncomingStream<'_, ProxyProtocolListener>) -> Self {
        Seen {
            client: *stream.remote_addr(),
            peer: stream.io().peer_addr(),
            local: *stream.io().header() == ProxyHeader::Local,
        }
    }
}

type Checks = Arc<Mutex<Vec<Seen>>>;

/// Kills HAProxy when the test ends, however it ends.
struct HaproxyGuard {
    child: Child,
    stderr_path: PathBuf,
}

impl HaproxyGuard {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_haproxy() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Debian installs it in sbin, which is not on every user's PATH.
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is required for this test and was not found on PATH or in sbin: \
                 install it with `apt-get install -y haproxy`"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_haproxy(dir: &Path, frontend_port: u16, backend: SocketAddr) -> HaproxyGuard {
    let config = format!(
        "global
    maxconn 100

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{frontend_port}
    default_backend be

backend be
    option httpchk GET /health
    server s1 {backend} send-proxy-v2 check inter 200ms
"
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, config).unwrap();
    let stderr_path = dir.join("haproxy.stderr");
    let binary = find_haproxy();
    let child = Command::new(&binary)
        .arg("-f")
        .arg(&cfg_path)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("haproxy.stdout")).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {}: {e}", binary.display()));
    HaproxyGuard { child, stderr_path }
}

async fn wait_until_listening(haproxy: &mut HaproxyGuard, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = haproxy.child.try_wait().unwrap() {
            panic!("haproxy exited with {status}: {}", haproxy.stderr());
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "haproxy frontend never accepted connections: {}",
            haproxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn haproxy_send_proxy_v2_delivers_the_true_client_address() {
    // The app behind HAProxy.
    let listener = ProxyProtocolListener::bind("127.0.0.1:0").await.unwrap();
    let backend = axum::serve::Listener::local_addr(&listener).unwrap();
    let checks: Checks = Arc::default();
    let app = Router::new()
        .route(
            "/",
            get(|ConnectInfo(seen): ConnectInfo<Seen>| async move {
                format!(
                    "client={} peer={} local={}",
                    seen.client, seen.peer, seen.local
                )
            }),
        )
        .route(
            "/health",
            get(
                |State(checks): State<Checks>, ConnectInfo(seen): ConnectInfo<Seen>| async move {
                    checks.lock().unwrap().push(seen);
                    "ok"
                },
            ),
        )
        .with_state(checks.clone());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<Seen>())
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let frontend_port = free_port();
    let mut haproxy = start_haproxy(dir.path(), frontend_port, backend);
    wait_until_listening(&mut haproxy, frontend_port).await;

    // Client from 127.0.0.2, so the address in the header differs from
    // HAProxy's own connection to the backend (127.0.0.1).
    let client_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(client_ip, 0)).unwrap();
    let mut stream = tokio::time::timeout(
        STEP,
        socket.connect(SocketAddr::from(([127, 0, 0, 1], frontend_port))),
    )
    .await
    .expect("connect to haproxy timed out")
    .unwrap();
    let client = stream.local_addr().unwrap();
    assert_eq!(client.ip(), client_ip);

    let resp = exchange(&mut stream, &get_request("/")).await;
    assert_eq!(resp.status, 200, "haproxy stderr: {}", haproxy.stderr());
    let expected_prefix = format!("client={client} peer=127.0.0.1:");
    assert!(
        resp.body.starts_with(&expected_prefix) && resp.body.ends_with(" local=false"),
        "app saw {:?}, expected the client {client} behind peer 127.0.0.1",
        resp.body
    );

    // HAProxy's health checks carry a LOCAL header; they must be served with
    // HAProxy's own address.
    let deadline = Instant::now() + STEP;
    let check = loop {
        if let Some(seen) = checks.lock().unwrap().first().copied() {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "no health check arrived: {}",
            haproxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(check.local, "health check was not LOCAL: {check:?}");
    assert_eq!(check.client, check.peer);
    assert_eq!(check.client.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    // A client that skips HAProxy gets nothing.
    let mut direct = tokio::net::TcpStream::connect(backend).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut direct, &get_request("/"))
        .await
        .unwrap();
    assert_closed_without_response(&mut direct).await;
}
