//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single network step in a test.
pub const STEP: Duration = Duration::from_secs(10);

/// The PROXY v2 signature, spelled out independently of the crate.
pub const SIG: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";

/// Hand-built PROXY v2 header: PROXY command, TCP over IPv4.
pub fn v2_tcp4(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 addresses expected");
    };
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// Hand-built PROXY v2 header: PROXY command, TCP over IPv6, with one TLV.
pub fn v2_tcp6_with_tlv(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 addresses expected");
    };
    let tlv: &[u8] = &[0xEA, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e'];
    let len = u16::try_from(36 + tlv.len()).unwrap();
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x21]);
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h.extend_from_slice(tlv);
    h
}

/// Hand-built PROXY v2 header: LOCAL command, AF_UNSPEC.
pub fn v2_local() -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Reads everything until the server closes, bounded by [`STEP`].
pub async fn read_all(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut out))
        .await
        .expect("server neither answered nor closed in time")?;
    Ok(out)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    Response {
        status,
        body: body.to_owned(),
    }
}

/// Writes `bytes` and reads the whole response.
pub async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Response {
    tokio::time::timeout(STEP, stream.write_all(bytes))
        .await
        .expect("write timed out")
        .unwrap();
    parse_response(&read_all(stream).await.unwrap())
}

/// Asserts that the server closes `stream` without sending a single byte.
pub async fn assert_closed_without_response(stream: &mut TcpStream) {
    match read_all(stream).await {
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "expected no response, got {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        // Closing with unread data in the receive queue resets the connection.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}
