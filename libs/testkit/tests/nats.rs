//! The NATS launcher against a real nats-server.
// A panic in a test helper is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::Value;
use sg_testkit::NatsServer;
use sg_testkit::nats::MIN_NATS_SERVER_VERSION;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(port: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    BufReader::new(stream)
}

async fn read_line(conn: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let n = tokio::time::timeout(IO_TIMEOUT, conn.read_line(&mut line))
        .await
        .expect("timed out reading from nats-server")
        .unwrap();
    assert!(n > 0, "nats-server closed the connection");
    line
}

/// Connects and returns the server's `INFO` JSON.
async fn read_info(port: u16) -> Value {
    let mut conn = connect(port).await;
    let line = read_line(&mut conn).await;
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("expected INFO, got {line:?}"));
    serde_json::from_str(json.trim()).unwrap()
}

/// A request/reply over the raw client protocol.
async fn request(port: u16, subject: &str, payload: &str) -> Value {
    let mut conn = connect(port).await;
    read_line(&mut conn).await; // INFO
    let commands = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\n\
         SUB _INBOX.testkit 1\r\n\
         PUB {subject} _INBOX.testkit {}\r\n{payload}\r\n\
         PING\r\n",
        payload.len()
    );
    conn.get_mut().write_all(commands.as_bytes()).await.unwrap();
    loop {
        let line = read_line(&mut conn).await;
        if line.starts_with("PING") {
            conn.get_mut().write_all(b"PONG\r\n").await.unwrap();
            continue;
        }
        if line.starts_with("PONG") || line.starts_with("+OK") {
            continue;
        }
        assert!(!line.starts_with("-ERR"), "nats-server said {line:?}");
        if line.starts_with("MSG ") {
            let len: usize = line.split_whitespace().last().unwrap().parse().unwrap();
            let mut body = vec![0u8; len + 2];
            tokio::time::timeout(IO_TIMEOUT, conn.read_exact(&mut body))
                .await
                .unwrap()
                .unwrap();
            return serde_json::from_slice(&body[..len]).unwrap();
        }
    }
}

async fn refuses(port: u16) -> bool {
    // The kernel may need a moment to tear the listener down after a kill.
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn version_of(info: &Value) -> (u32, u32, u32) {
    let v: Vec<u32> = info["version"]
        .as_str()
        .unwrap()
        .split(['.', '-'])
        .take(3)
        .map(|p| p.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

#[tokio::test]
async fn nats_starts_answers_stops_and_restarts_with_its_data() {
    sg_testkit::init_tracing();
    let mut nats = NatsServer::start().await.unwrap();
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    assert_ne!(port, 4222, "must never be the machine's shared server");

    let info = read_info(port).await;
    assert_eq!(info["jetstream"], true, "{info}");
    assert!(version_of(&info) >= MIN_NATS_SERVER_VERSION, "{info}");

    let created = request(
        port,
        "$JS.API.STREAM.CREATE.TESTKIT",
        r#"{"name":"TESTKIT","subjects":["testkit.>"],"storage":"file"}"#,
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let ack = request(port, "testkit.one", r#"{"hello":"world"}"#).await;
    assert_eq!(ack["stream"], "TESTKIT", "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");

    nats.stop().await;
    assert!(!nats.is_running());
    assert!(refuses(port).await, "port {port} still open after stop");
    assert!(nats.store_dir().join("jetstream").is_dir());

    nats.restart().await.unwrap();
    assert!(nats.is_running());
    assert_eq!(nats.port(), port);
    let info = read_info(port).await;
    assert_eq!(info["jetstream"], true);
    let stream = request(port, "$JS.API.STREAM.INFO.TESTKIT", "").await;
    assert_eq!(stream["state"]["messages"], 1, "{stream}");

    // Restarting a running server works too.
    nats.restart().await.unwrap();
    read_info(port).await;

    let store = nats.store_dir();
    drop(nats);
    assert!(refuses(port).await, "port {port} still open after drop");
    assert!(!store.exists(), "store directory left behind");
}

#[tokio::test]
async fn two_servers_run_side_by_side() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    let (ia, ib) = (read_info(a.port()).await, read_info(b.port()).await);
    assert_ne!(ia["server_name"], ib["server_name"]);
    assert_ne!(a.store_dir(), b.store_dir());
}
