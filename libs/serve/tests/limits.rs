//! The server's limits against real sockets: slow headers, idle connections, the
//! connection bound, and long responses that must not be cut.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use sg_serve::{Limits, Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn router() -> Router {
    Router::new().route("/ok", get(|| async { "ok" })).route(
        "/slow-stream",
        get(|| async {
            let chunks = futures::stream::unfold(0u32, |i| async move {
                if i == 6 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                Some((Ok::<_, std::io::Error>(format!("chunk{i}\n")), i + 1))
            });
            Body::from_stream(chunks)
        }),
    )
}

async fn start(limits: Limits) -> Server {
    Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        router(),
        "test",
        Options {
            limits,
            proxy_protocol: false,
        },
    )
    .await
    .unwrap()
}

const REQUEST: &[u8] = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n";

/// Reads until the peer closes; returns what came and how long it took.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server did not close the connection within {within:?}"
    );
    (out, start.elapsed())
}

/// Reads one HTTP/1.1 response with a short body ("ok").
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("ok") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let server = start(limits).await;
    // Half a request, then a byte now and then: closed at the header timeout.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let dripping = tokio::spawn({
        let mut s2 = TcpStream::connect(server.addr).await.unwrap();
        async move {
            for _ in 0..20 {
                if s2.write_all(b"X").await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    });
    let (out, took) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        dripping.await.unwrap(),
        "a dripping client kept its connection"
    );
    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    read_to_close(&mut silent, Duration::from_secs(5)).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout_not_the_header_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1200),
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Idle longer than the header timeout: still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Then idle past the idle timeout: closed.
    let (out, took) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(out.is_empty());
    assert!(
        took >= Duration::from_millis(1000),
        "closed too early: {took:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn long_responses_are_not_cut() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /slow-stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, took) = read_to_close(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("chunk5"), "{text}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_bound_wait() {
    let limits = Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    };
    let server = start(limits).await;
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The kernel completes the handshake, but the server does not take the connection.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(REQUEST).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond the bound"
    );
    // One slot frees: the waiting connection is served.
    drop(held.pop());
    assert!(read_response(&mut third).await.starts_with("HTTP/1.1 200"));
    server.stop().await;
}
