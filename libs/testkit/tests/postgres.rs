//! The PostgreSQL launcher against a real cluster.
// A panic in a test helper is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sg_testkit::PostgresServer;
use tokio::net::TcpStream;
use tokio::process::Command;

async fn refuses(port: u16) -> bool {
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `psql <url> -c <sql>`, as any client would connect.
async fn psql_url(pg: &PostgresServer, url: &str, sql: &str) -> String {
    let out = Command::new(pg.bindir().join("psql"))
        .args(["-X", "-A", "-t"])
        .arg(url)
        .arg("-c")
        .arg(sql)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn postgres_starts_answers_stops_and_restarts_with_its_data() {
    sg_testkit::init_tracing();
    let mut pg = PostgresServer::start().await.unwrap();
    let port = pg.port();
    assert_ne!(port, 5432, "must never be the machine's shared server");
    assert!(pg.is_running());

    let url = pg.create_database("app").await.unwrap();
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}/app"));
    assert_eq!(url, pg.url("app"));
    assert_eq!(psql_url(&pg, &url, "select 1").await, "1");
    assert_eq!(
        pg.psql("app", "show fsync").await.unwrap(),
        "off",
        "the test cluster runs without fsync"
    );
    pg.psql("app", "create table t (x int); insert into t values (42)")
        .await
        .unwrap();

    let err = pg.create_database("app").await.unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    assert!(pg.create_database("bad name; drop").await.is_err());

    pg.stop().await;
    assert!(!pg.is_running());
    assert!(refuses(port).await, "port {port} still open after stop");
    assert!(pg.data_dir().join("PG_VERSION").is_file());

    pg.restart().await.unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(psql_url(&pg, &url, "select x from t").await, "42");

    // A crash keeps the data directory; recovery runs on the next start.
    pg.crash().await;
    assert!(refuses(port).await, "port {port} still open after crash");
    pg.restart().await.unwrap();
    assert_eq!(psql_url(&pg, &url, "select count(*) from t").await, "1");

    let data = pg.data_dir();
    drop(pg);
    assert!(refuses(port).await, "port {port} still open after drop");
    assert!(!data.exists(), "data directory left behind");
}

#[tokio::test]
async fn two_clusters_run_side_by_side() {
    let (a, b) = tokio::join!(PostgresServer::start(), PostgresServer::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    let (ua, ub) = (
        a.create_database("one").await.unwrap(),
        b.create_database("one").await.unwrap(),
    );
    assert_eq!(psql_url(&a, &ua, "select 1").await, "1");
    assert_eq!(psql_url(&b, &ub, "select 2").await, "2");
}
