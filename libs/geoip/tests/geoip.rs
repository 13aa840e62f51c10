#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sg_geoip::testdb::{city_db_bytes, replace_file, write_city_db, write_db};
use sg_geoip::{Geo, GeoIp, GeoIpError};

const ENTRIES: &[(&str, &str, &str)] = &[
    ("81.2.69.0/24", "GB", "London"),
    ("2a02:dd8::/32", "DE", "Berlin"),
    ("89.160.20.0/24", "SE", ""),
    ("175.16.199.0/24", "CN", "Changchun"),
];

const POLL: Duration = Duration::from_millis(50);
const WAIT_LIMIT: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn geo(country: &str, city: &str) -> Option<Geo> {
    Some(Geo {
        country: (!country.is_empty()).then(|| country.to_owned()),
        city: (!city.is_empty()).then(|| city.to_owned()),
    })
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("city.mmdb")
}

/// Waits until the reload statistics satisfy `done`, or fails at the wait limit.
async fn wait_stats(geo_ip: &GeoIp, done: impl Fn(&sg_geoip::ReloadStats) -> bool) {
    let start = Instant::now();
    while !done(&geo_ip.reload_stats()) {
        assert!(
            start.elapsed() < WAIT_LIMIT,
            "the watcher did not get there: {:?}",
            geo_ip.reload_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `lookup` until it gives `want` or the wait limit passes.
async fn wait_for(geo_ip: &GeoIp, addr: &str, want: Option<Geo>) {
    let start = Instant::now();
    loop {
        let got = geo_ip.lookup(ip(addr));
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < WAIT_LIMIT,
            "{addr}: still {got:?} after {WAIT_LIMIT:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn looks_up_ipv4_and_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let geo_ip = GeoIp::open(&path).unwrap();

    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("GB", "London"));
    assert_eq!(geo_ip.lookup(ip("81.2.69.0")), geo("GB", "London"));
    assert_eq!(geo_ip.lookup(ip("81.2.69.255")), geo("GB", "London"));
    assert_eq!(geo_ip.lookup(ip("175.16.199.1")), geo("CN", "Changchun"));
    assert_eq!(geo_ip.lookup(ip("2a02:dd8::1")), geo("DE", "Berlin"));
    assert_eq!(
        geo_ip.lookup(ip("2a02:dd8:ffff:ffff::1")),
        geo("DE", "Berlin")
    );
    // A record with a country and no city.
    assert_eq!(geo_ip.lookup(ip("89.160.20.112")), geo("SE", ""));
    // IPv4-mapped IPv6 resolves as the IPv4 address.
    assert_eq!(geo_ip.lookup(ip("::ffff:81.2.69.142")), geo("GB", "London"));

    let info = geo_ip.info();
    assert!(info.database_type.contains("City"));
    assert_eq!(info.ip_version, 6);
    assert_eq!(geo_ip.path(), path.as_path());
}

#[test]
fn unknown_address_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let geo_ip = GeoIp::open(&path).unwrap();

    for addr in [
        "81.2.70.1",
        "8.8.8.8",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "2a02:dd9::1",
        "2001:db8::1",
        "::1",
        "::",
    ] {
        assert_eq!(geo_ip.lookup(ip(addr)), None, "{addr}");
    }
}

#[test]
fn clones_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let geo_ip = GeoIp::open(&path).unwrap();
    let clone = geo_ip.clone();

    write_city_db(&path, &[("81.2.69.0/24", "FR", "Paris")]).unwrap();
    geo_ip.reload().unwrap();
    assert_eq!(clone.lookup(ip("81.2.69.142")), geo("FR", "Paris"));
    assert_eq!(clone.lookup(ip("2a02:dd8::1")), None);
}

#[test]
fn non_city_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_db(&path, "GeoLite2-Country", ENTRIES).unwrap();
    let err = GeoIp::open(&path).unwrap_err();
    assert!(
        matches!(&err, GeoIpError::NotCity { database_type, .. } if database_type == "GeoLite2-Country"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("GeoLite2-Country"), "{message}");
    assert!(message.contains("City database is required"), "{message}");
}

#[test]
fn broken_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = city_db_bytes(ENTRIES).unwrap();
    let mut garbage = Vec::new();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        garbage.push(x.to_le_bytes()[0]);
    }
    let cases: [(&str, &[u8]); 4] = [
        ("empty", &[]),
        ("text", b"this is not a maxmind database\n"),
        ("garbage", &garbage),
        ("truncated", &good[..good.len() / 2]),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.mmdb"));
        std::fs::write(&path, bytes).unwrap();
        let err = GeoIp::open(&path).unwrap_err();
        assert!(matches!(err, GeoIpError::Invalid { .. }), "{name}: {err:?}");
        let message = err.to_string();
        assert!(
            message.contains("not a valid MaxMind database")
                && message.contains(&format!("{name}.mmdb")),
            "{name}: {message}"
        );
    }

    // The tail of a database (metadata intact) with its tree and data section cut away.
    let marker = b"\xab\xcd\xefMaxMind.com";
    let meta_at = good
        .windows(marker.len())
        .rposition(|w| w == marker)
        .unwrap();
    let mut corrupt = good.clone();
    for byte in &mut corrupt[..meta_at] {
        *byte = 0xff;
    }
    let path = dir.path().join("corrupt.mmdb");
    std::fs::write(&path, &corrupt).unwrap();
    let err = GeoIp::open(&path).unwrap_err();
    assert!(
        matches!(err, GeoIpError::Invalid { .. }),
        "corrupt: {err:?}"
    );

    let err = GeoIp::open(&dir.path().join("missing.mmdb")).unwrap_err();
    assert!(matches!(err, GeoIpError::Io { .. }), "missing: {err:?}");
    assert!(err.to_string().contains("missing.mmdb"), "{err}");
}

#[test]
fn explicit_reload_of_broken_file_keeps_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let geo_ip = GeoIp::open(&path).unwrap();

    replace_file(&path, b"not a database").unwrap();
    assert!(matches!(geo_ip.reload(), Err(GeoIpError::Invalid { .. })));
    write_db(&path, "GeoLite2-Country", ENTRIES).unwrap();
    assert!(matches!(geo_ip.reload(), Err(GeoIpError::NotCity { .. })));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(geo_ip.reload(), Err(GeoIpError::Io { .. })));
    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("GB", "London"));

    write_city_db(&path, &[("81.2.69.0/24", "FR", "Paris")]).unwrap();
    geo_ip.reload().unwrap();
    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("FR", "Paris"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_after_atomic_replace() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let (geo_ip, task) = GeoIp::watch(&path, POLL).unwrap();
    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("GB", "London"));

    write_city_db(
        &path,
        &[
            ("81.2.69.0/24", "FR", "Paris"),
            ("2a02:dd8::/32", "AT", "Vienna"),
        ],
    )
    .unwrap();
    wait_for(&geo_ip, "81.2.69.142", geo("FR", "Paris")).await;
    assert_eq!(geo_ip.lookup(ip("2a02:dd8::1")), geo("AT", "Vienna"));
    assert_eq!(geo_ip.lookup(ip("175.16.199.1")), None);

    // A second replacement of the same size is picked up as well.
    write_city_db(
        &path,
        &[
            ("81.2.69.0/24", "FR", "Lyon"),
            ("2a02:dd8::/32", "AT", "Graz"),
        ],
    )
    .unwrap();
    wait_for(&geo_ip, "81.2.69.142", geo("FR", "Lyon")).await;

    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_old_data_when_replacement_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let (geo_ip, task) = GeoIp::watch(&path, POLL).unwrap();

    let good = city_db_bytes(&[("81.2.69.0/24", "FR", "Paris")]).unwrap();
    // Half a database, as an in-place copy would leave it midway: the watcher tries it,
    // refuses it, and keeps serving the old data.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    wait_stats(&geo_ip, |s| s.failures >= 1).await;
    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("GB", "London"));

    replace_file(&path, b"garbage").unwrap();
    wait_stats(&geo_ip, |s| s.failures >= 2).await;
    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("GB", "London"));

    std::fs::remove_file(&path).unwrap();
    wait_stats(&geo_ip, |s| s.unreadable >= 1).await;
    assert_eq!(geo_ip.lookup(ip("81.2.69.142")), geo("GB", "London"));
    assert!(!task.is_finished());
    assert_eq!(geo_ip.reload_stats().reloads, 0, "nothing was swapped in");

    // A later good file is served.
    replace_file(&path, &good).unwrap();
    wait_for(&geo_ip, "81.2.69.142", geo("FR", "Paris")).await;

    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_task_ends_when_last_clone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    let (geo_ip, task) = GeoIp::watch(&path, POLL).unwrap();
    let clone = geo_ip.clone();
    drop(geo_ip);
    tokio::time::sleep(POLL * 3).await;
    assert!(!task.is_finished());
    drop(clone);
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("watch task did not end")
        .unwrap();
}

#[tokio::test]
async fn watch_rejects_zero_interval_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    assert!(matches!(
        GeoIp::watch(&path, Duration::ZERO),
        Err(GeoIpError::ZeroInterval)
    ));
    let broken = dir.path().join("broken.mmdb");
    std::fs::write(&broken, b"broken").unwrap();
    assert!(matches!(
        GeoIp::watch(&broken, POLL),
        Err(GeoIpError::Invalid { .. })
    ));
}

#[test]
fn watch_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    write_city_db(&path, ENTRIES).unwrap();
    assert!(matches!(
        GeoIp::watch(&path, POLL),
        Err(GeoIpError::NoRuntime)
    ));
}

#[test]
fn lookups_during_reloads_always_see_a_whole_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let london = city_db_bytes(&[("81.2.69.0/24", "GB", "London")]).unwrap();
    let paris = city_db_bytes(&[("81.2.69.0/24", "FR", "Paris")]).unwrap();
    replace_file(&path, &london).unwrap();
    let geo_ip = GeoIp::open(&path).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);

    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut seen = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = geo_ip.lookup(ip("81.2.69.142"));
                assert!(
                    got == geo("GB", "London") || got == geo("FR", "Paris"),
                    "{got:?}"
                );
                seen += 1;
            }
            seen
        });
        for i in 0..40 {
            replace_file(&path, if i % 2 == 0 { &paris } else { &london }).unwrap();
            geo_ip.reload().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
}

/// The MaxMind reference test database, when a checkout has it next to the workspace.
fn shared_test_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/geoip")
}

#[test]
fn reference_city_test_database_if_present() {
    let dir = shared_test_dir();
    let path = dir.join("GeoIP2-City-Test.mmdb");
    if !path.exists() {
        println!(
            "reference database {} not found; skipping these extra checks",
            path.display()
        );
        return;
    }
    let geo_ip = GeoIp::open(&path).unwrap();
    for (addr, country, city) in [
        ("81.2.69.142", "GB", "London"),
        ("2.125.160.216", "GB", "Boxford"),
        ("89.160.20.112", "SE", "Linköping"),
        ("216.160.83.56", "US", "Milton"),
        ("175.16.199.1", "CN", "Changchun"),
    ] {
        assert_eq!(geo_ip.lookup(ip(addr)), geo(country, city), "{addr}");
    }
    assert_eq!(geo_ip.lookup(ip("10.0.0.1")), None);

    for broken in [
        "GeoIP2-City-Test-Broken-Double-Format.mmdb",
        "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
    ] {
        let path = dir.join(broken);
        let err = GeoIp::open(&path).unwrap_err();
        assert!(
            matches!(err, GeoIpError::Invalid { .. }),
            "{broken}: {err:?}"
        );
        println!("{broken}: {err}");
    }
}
