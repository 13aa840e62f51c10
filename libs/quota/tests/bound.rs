//! The cluster-wide bound, on real logs: three quota engines ("nodes") share one ledger
//! through a private nats-server (JetStream) or one SQLite log, and however requests are
//! spread over them, a window never admits more than its limit — and, while every node
//! keeps asking, admits all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sg_eventlog::EventLog;
use sg_eventlog::jetstream::{JetStreamLog, JetStreamOptions};
use sg_eventlog::sqlite::SqliteLog;
use sg_quota::{Clock, CounterId, Demand, QuotaConfig, Quotas, Refusal, Scope};
use sg_spend::{Counter, Period};
use sg_testkit::{NatsServer, TcpProxy};

/// A clock the test moves: unix ms.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// 10:00:30 UTC on some day: mid-minute, so nothing rolls over unless the test says.
    fn new() -> TestClock {
        TestClock(Arc::new(AtomicU64::new(
            1_800_000_000_000 / 60_000 * 60_000 + 30_000,
        )))
    }
    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || t.load(Ordering::SeqCst))
    }
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

fn config(node: &str) -> QuotaConfig {
    QuotaConfig {
        tick: Duration::from_millis(50),
        idle_give_back: Duration::from_millis(300),
        ..QuotaConfig::for_node(node)
    }
}

fn counter(counter: Counter) -> CounterId {
    CounterId {
        tenant: "ten_test".into(),
        scope: Scope::Key,
        id: "key_test".into(),
        counter,
    }
}

fn demand(c: Counter, limit: u64, units: u64) -> Demand {
    Demand {
        counter: counter(c),
        limit,
        units,
    }
}

struct Nodes {
    nodes: Vec<Quotas>,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

async fn jetstream_nodes(clock: &TestClock) -> Nodes {
    let server = NatsServer::start()
        .await
        .expect("a private nats-server is required for the quota tests");
    let mut nodes = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for i in 0..3 {
        // One connection per node, as in a cluster.
        let log: Arc<dyn EventLog> = Arc::new(
            JetStreamLog::connect(&server.url(), JetStreamOptions::default())
                .await
                .unwrap(),
        );
        let (q, task) = Quotas::start(log, config(&format!("node-{i}")), clock.clock());
        nodes.push(q);
        keep.push(Box::new(task));
    }
    keep.push(Box::new(server));
    Nodes { nodes, _keep: keep }
}

async fn sqlite_nodes(clock: &TestClock) -> Nodes {
    let log: Arc<dyn EventLog> = Arc::new(SqliteLog::open_in_memory().await.unwrap());
    let mut nodes = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for i in 0..3 {
        let (q, task) = Quotas::start(log.clone(), config(&format!("node-{i}")), clock.clock());
        nodes.push(q);
        keep.push(Box::new(task));
    }
    Nodes { nodes, _keep: keep }
}

/// `per_node` requests at each node from `workers` concurrent clients; returns how many
/// were admitted, and checks every refusal is `Exhausted`.
async fn hammer(nodes: &Nodes, per_node: usize, workers: usize, d: Demand) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for node in &nodes.nodes {
        for w in 0..workers {
            let node = node.clone();
            let d = d.clone();
            let admitted = admitted.clone();
            let n = per_node / workers + usize::from(w < per_node % workers);
            tasks.push(tokio::spawn(async move {
                for _ in 0..n {
                    match node.admit(std::slice::from_ref(&d)).await {
                        Ok(a) => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                            a.settle(|_| Some(d.units));
                        }
                        Err(Refusal::Exhausted { .. }) => {}
                        Err(other) => panic!("unexpected refusal {other:?}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::SeqCst)
}

async fn rate_limit_is_exact(nodes: Nodes) {
    let admitted = hammer(&nodes, 700, 8, demand(Counter::Rpm, 100, 1)).await;
    assert_eq!(admitted, 100, "a limit of 100 per minute on three nodes");
}

async fn budget_is_never_overspent(nodes: Nodes) {
    // $1 and requests reserving (and costing) $0.05 each.
    let d = demand(Counter::Budget(Period::Month), 1_000_000, 50_000);
    let admitted = hammer(&nodes, 70, 70, d).await;
    assert_eq!(
        admitted, 20,
        "a $1 budget serves exactly twenty $0.05 requests"
    );
}

async fn a_new_window_starts_afresh(nodes: Nodes, clock: TestClock) {
    let d = demand(Counter::Rpm, 10, 1);
    assert_eq!(hammer(&nodes, 20, 2, d.clone()).await, 10);
    match nodes.nodes[0].admit(std::slice::from_ref(&d)).await {
        Err(Refusal::Exhausted {
            window_end_ms: Some(end),
            ..
        }) => assert!(end > (clock.clock())()),
        other => panic!(
            "the eleventh request must be refused, got {:?}",
            other.is_ok()
        ),
    }
    clock.advance(60_000);
    assert_eq!(hammer(&nodes, 20, 2, d).await, 10, "the next minute");
}

async fn slots_hold_across_nodes(nodes: Nodes) {
    let limit = 5;
    let in_flight = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for node in &nodes.nodes {
        for _ in 0..6 {
            let (node, in_flight, peak, served) = (
                node.clone(),
                in_flight.clone(),
                peak.clone(),
                served.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..15 {
                    match node.admit(&[demand(Counter::Concurrent, limit, 1)]).await {
                        Ok(a) => {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            served.fetch_add(1, Ordering::SeqCst);
                            drop(a);
                        }
                        Err(Refusal::Exhausted { .. }) => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(other) => panic!("unexpected refusal {other:?}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        peak.load(Ordering::SeqCst) <= limit,
        "{} in flight at once over a limit of {limit}",
        peak.load(Ordering::SeqCst)
    );
    assert!(served.load(Ordering::SeqCst) > 0);
}

async fn idle_nodes_give_back(nodes: Nodes, clock: TestClock) {
    let d = demand(Counter::Rpm, 1_000, 1);
    // Node 0 is busy for a moment: it takes slices larger than it uses.
    for _ in 0..50 {
        nodes.nodes[0]
            .admit(std::slice::from_ref(&d))
            .await
            .unwrap()
            .settle(|_| None);
    }
    // Once it is idle, what it held comes back, and node 1 can use all that is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        while nodes.nodes[1].admit(std::slice::from_ref(&d)).await.is_ok() {
            n += 1;
        }
        if n == 950 {
            break;
        }
        assert!(n < 950, "node 1 got {n}, more than the 950 left");
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 got {n} of the 950 left; node 0 did not give back"
        );
        // Time passes: node 0 is idle, and node 1 may ask again.
        clock.advance(500);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn limit_change_applies_at_once(nodes: Nodes) {
    let node = &nodes.nodes[0];
    for _ in 0..10 {
        node.admit(&[demand(Counter::Rpm, 1_000, 1)]).await.unwrap();
    }
    // Lowered to 10: the ten served already count, so nothing more this minute.
    assert!(matches!(
        node.admit(&[demand(Counter::Rpm, 10, 1)]).await,
        Err(Refusal::Exhausted { limit: 10, .. })
    ));
    // Raised again: what node 0 held under the old limit came back.
    let mut n = 10;
    while node.admit(&[demand(Counter::Rpm, 100, 1)]).await.is_ok() {
        n += 1;
    }
    assert_eq!(n, 100);
}

async fn a_refused_demand_takes_nothing(nodes: Nodes) {
    let node = &nodes.nodes[0];
    let rpm = demand(Counter::Rpm, 100, 1);
    let budget = demand(Counter::Budget(Period::Total), 100_000, 60_000);
    node.admit(&[rpm.clone(), budget.clone()])
        .await
        .unwrap()
        .settle(|_| Some(60_000));
    // The budget refuses the second request; its request is not counted.
    assert!(matches!(
        node.admit(&[rpm.clone(), budget]).await,
        Err(Refusal::Exhausted { .. })
    ));
    let mut n = 1;
    while node.admit(std::slice::from_ref(&rpm)).await.is_ok() {
        n += 1;
    }
    assert_eq!(n, 100);
    // A request larger than the whole limit is refused as such, at once.
    assert!(matches!(
        node.admit(&[demand(Counter::Tpm, 1_000, 1_001)]).await,
        Err(Refusal::TooLarge {
            limit: 1_000,
            units: 1_001,
            ..
        })
    ));
}

async fn settling_above_the_reservation_is_owed(nodes: Nodes) {
    let node = &nodes.nodes[0];
    let tpm = |units| demand(Counter::Tpm, 1_000, units);
    // Reserved 100, used 700: the 600 beyond are counted too.
    node.admit(&[tpm(100)]).await.unwrap().settle(|_| Some(700));
    let mut n = 0;
    while node.admit(&[tpm(100)]).await.is_ok() {
        n += 1;
    }
    assert_eq!(n, 3, "1000 - 700 leaves three requests of 100");
}

macro_rules! suite {
    ($name:ident, $make:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rate_limit_is_exact() {
                let clock = TestClock::new();
                super::rate_limit_is_exact($make(&clock).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn budget_is_never_overspent() {
                let clock = TestClock::new();
                super::budget_is_never_overspent($make(&clock).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_new_window_starts_afresh() {
                let clock = TestClock::new();
                let nodes = $make(&clock).await;
                super::a_new_window_starts_afresh(nodes, clock).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn slots_hold_across_nodes() {
                let clock = TestClock::new();
                super::slots_hold_across_nodes($make(&clock).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn idle_nodes_give_back() {
                let clock = TestClock::new();
                let nodes = $make(&clock).await;
                super::idle_nodes_give_back(nodes, clock).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn limit_change_applies_at_once() {
                let clock = TestClock::new();
                super::limit_change_applies_at_once($make(&clock).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_refused_demand_takes_nothing() {
                let clock = TestClock::new();
                super::a_refused_demand_takes_nothing($make(&clock).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn settling_above_the_reservation_is_owed() {
                let clock = TestClock::new();
                super::settling_above_the_reservation_is_owed($make(&clock).await).await;
            }
        }
    };
}

suite!(jetstream, jetstream_nodes);
suite!(sqlite, sqlite_nodes);

/// A node cut off from the log serves what it holds, then refuses with `Unavailable` —
/// never unlimited — and takes again once the log is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_fails_closed() {
    let server = NatsServer::start()
        .await
        .expect("a private nats-server is required for the quota tests");
    let proxy = TcpProxy::start(([127, 0, 0, 1], server.port()).into())
        .await
        .unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::connect(
            &format!("nats://127.0.0.1:{}", proxy.port()),
            JetStreamOptions {
                request_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let clock = TestClock::new();
    let (node, _task) = Quotas::start(
        log,
        QuotaConfig {
            op_timeout: Duration::from_millis(800),
            ..config("node-cut")
        },
        clock.clock(),
    );
    let d = demand(Counter::Rpm, 1_000, 1);
    // Busy enough to hold a slice.
    for _ in 0..30 {
        node.admit(std::slice::from_ref(&d)).await.unwrap();
    }
    proxy.cut();
    let mut served = 0;
    let refusal = loop {
        match node.admit(std::slice::from_ref(&d)).await {
            Ok(_) => served += 1,
            Err(r) => break r,
        }
        assert!(served <= 1_000, "served without limit while cut off");
    };
    assert!(
        matches!(refusal, Refusal::Unavailable { .. }),
        "{refusal:?}"
    );
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.admit(std::slice::from_ref(&d)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no quota after the log came back"
        );
        clock.advance(200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
