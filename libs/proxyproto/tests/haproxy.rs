#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End to end behind a real HAProxy with `send-proxy-v2`, loopback only.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    let haproxy = sg_testkit::haproxy::Haproxy::start(dir.path(), backend, Some("/health"))
        .await
        .unwrap();
    let frontend_port = haproxy.frontend.port();

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
