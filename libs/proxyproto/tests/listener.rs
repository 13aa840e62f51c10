#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The listener under a real axum server on loopback, driven by raw TCP
//! clients that write PROXY v2 headers by hand.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use common::*;
use sg_proxyproto::{ClientAddr, ProxyProtocolConfig, ProxyProtocolListener};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn app() -> Router {
    Router::new()
        .route(
            "/",
            get(|ConnectInfo(addr): ConnectInfo<SocketAddr>| async move { addr.to_string() }),
        )
        .route(
            "/echo-len",
            post(
                |ConnectInfo(addr): ConnectInfo<SocketAddr>, body: axum::body::Bytes| async move {
                    format!("{addr} {}", body.len())
                },
            ),
        )
}

/// Serves [`app`] with `ConnectInfo<SocketAddr>` on a fresh listener.
async fn start(config: ProxyProtocolConfig) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = ProxyProtocolListener::with_config(tcp, config).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener.with_socket_addr_connect_info(),
            app().into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .unwrap()
}

#[tokio::test]
async fn header_client_address_reaches_connect_info() {
    let server = start(ProxyProtocolConfig::default()).await;
    let mut c = connect(server).await;
    let mut bytes = v2_tcp4("203.0.113.7:5555".parse().unwrap(), server);
    bytes.extend(get_request("/"));
    let resp = exchange(&mut c, &bytes).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "203.0.113.7:5555");
}

#[tokio::test]
async fn header_split_across_writes_and_ipv6_with_tlv() {
    let server = start(ProxyProtocolConfig::default()).await;
    let mut c = connect(server).await;
    let header = v2_tcp6_with_tlv(
        "[2001:db8::7]:40001".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    // Signature only, then the rest of the fixed part, then the addresses,
    // each arriving in its own segment.
    for part in [&header[..12], &header[12..16], &header[16..]] {
        c.write_all(part).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = exchange(&mut c, &get_request("/")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "[2001:db8::7]:40001");
}

#[tokio::test]
async fn bytes_after_header_are_replayed_to_the_app() {
    let server = start(ProxyProtocolConfig::default()).await;
    let mut c = connect(server).await;
    let body = vec![b'x'; 200_000];
    let mut bytes = v2_tcp4("198.51.100.20:1000".parse().unwrap(), server);
    bytes.extend_from_slice(
        format!(
            "POST /echo-len HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&body);
    let resp = exchange(&mut c, &bytes).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "198.51.100.20:1000 200000");
}

#[tokio::test]
async fn local_command_yields_the_tcp_peer() {
    let server = start(ProxyProtocolConfig::default()).await;
    let mut c = connect(server).await;
    let me = c.local_addr().unwrap();
    let mut bytes = v2_local();
    bytes.extend(get_request("/"));
    let resp = exchange(&mut c, &bytes).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, me.to_string());
}

#[tokio::test]
async fn client_addr_connect_info_without_adapter() {
    let listener = ProxyProtocolListener::bind("127.0.0.1:0").await.unwrap();
    let server = axum::serve::Listener::local_addr(&listener).unwrap();
    let app = Router::new().route(
        "/",
        get(|ConnectInfo(ClientAddr(addr)): ConnectInfo<ClientAddr>| async move { addr.to_string() }),
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<ClientAddr>(),
        )
        .await
        .unwrap();
    });
    let mut c = connect(server).await;
    let mut bytes = v2_tcp4("192.0.2.55:65535".parse().unwrap(), server);
    bytes.extend(get_request("/"));
    let resp = exchange(&mut c, &bytes).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "192.0.2.55:65535");
}

#[tokio::test]
async fn connections_without_v2_header_are_closed_unanswered() {
    let server = start(ProxyProtocolConfig::default()).await;

    // Plain HTTP.
    let mut c = connect(server).await;
    c.write_all(&get_request("/")).await.unwrap();
    assert_closed_without_response(&mut c).await;

    // PROXY protocol v1 text header.
    let mut c = connect(server).await;
    let mut bytes = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 5555 {}\r\n",
        server.port()
    )
    .into_bytes();
    bytes.extend(get_request("/"));
    c.write_all(&bytes).await.unwrap();
    assert_closed_without_response(&mut c).await;

    // Header that announces more than the size limit.
    let mut c = connect(server).await;
    let mut bytes = SIG.to_vec();
    bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    c.write_all(&bytes).await.unwrap();
    assert_closed_without_response(&mut c).await;

    // Client that closes its side mid-header.
    let mut c = connect(server).await;
    c.write_all(&SIG[..8]).await.unwrap();
    c.shutdown().await.unwrap();
    assert_closed_without_response(&mut c).await;

    // The server still serves proper connections afterwards.
    let mut c = connect(server).await;
    let mut bytes = v2_tcp4("203.0.113.8:1".parse().unwrap(), server);
    bytes.extend(get_request("/"));
    assert_eq!(exchange(&mut c, &bytes).await.body, "203.0.113.8:1");
}

#[tokio::test]
async fn stalled_half_header_is_dropped_after_timeout_without_blocking_others() {
    let timeout = Duration::from_millis(1500);
    let server = start(ProxyProtocolConfig::default().header_timeout(timeout)).await;

    let stalled_since = Instant::now();
    let mut stalled = connect(server).await;
    let header = v2_tcp4("203.0.113.66:6666".parse().unwrap(), server);
    stalled.write_all(&header[..10]).await.unwrap();

    // A well-behaved client is served while the stalled one is pending.
    let started = Instant::now();
    let mut good = connect(server).await;
    let mut bytes = v2_tcp4("203.0.113.7:5555".parse().unwrap(), server);
    bytes.extend(get_request("/"));
    let resp = exchange(&mut good, &bytes).await;
    assert_eq!(resp.body, "203.0.113.7:5555");
    assert!(
        started.elapsed() < timeout,
        "good client waited {:?}, behind the stalled one",
        started.elapsed()
    );

    // The stalled client is cut off once the header timeout has passed.
    assert_closed_without_response(&mut stalled).await;
    let waited = stalled_since.elapsed();
    assert!(waited >= timeout, "closed too early: {waited:?}");
    assert!(
        waited < timeout + Duration::from_secs(3),
        "closed too late: {waited:?}"
    );
}

#[tokio::test]
async fn pending_handshake_bound_defers_but_does_not_drop() {
    let timeout = Duration::from_millis(600);
    let server = start(
        ProxyProtocolConfig::default()
            .header_timeout(timeout)
            .max_pending_handshakes(2),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(connect(server).await);
    }
    // Give the accept task time to take both silent connections.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The third connection sits in the kernel queue until a slot frees up,
    // then is served normally.
    let started = Instant::now();
    let mut c = connect(server).await;
    let mut bytes = v2_tcp4("203.0.113.9:9".parse().unwrap(), server);
    bytes.extend(get_request("/"));
    let resp = exchange(&mut c, &bytes).await;
    assert_eq!(resp.body, "203.0.113.9:9");
    assert!(
        started.elapsed() >= timeout / 2,
        "served after {:?}, the bound was not applied",
        started.elapsed()
    );
    for mut s in silent {
        assert_closed_without_response(&mut s).await;
    }
}

#[tokio::test]
async fn dropping_the_listener_stops_accepting() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = ProxyProtocolListener::new(tcp).unwrap();
    drop(listener);
    // The accept task is aborted asynchronously; the port closes shortly.
    let deadline = Instant::now() + STEP;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // Still open, or torn down while this connect was in flight.
            other if Instant::now() < deadline => {
                drop(other);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("listener still open after drop: {other:?}"),
        }
    }
}
