//! The guarantees under faults, on real processes, loopback only, each bounded in time:
//! a NATS outage under load (with a gateway SIGKILLed during it), a node of a three-node
//! NATS cluster killed under load, the projector killed and PostgreSQL stopped, a gateway
//! partitioned from NATS past its staleness bound, and fifty concurrent writers on one
//! key. Counts are checked against what the clients were actually answered, once every
//! node reports that nothing is owed — never against timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sg_testkit::mock_upstream::MockUpstream;
use support::*;
use tokio::sync::watch;

/// Requests answered by a gateway, by status.
#[derive(Default, Debug)]
struct Answers {
    by_status: std::collections::BTreeMap<u16, u64>,
    /// When each answer came, and its status.
    timeline: Vec<(Instant, u16)>,
    /// Transport errors (a node killed mid-request): no answer, nothing to count.
    unanswered: u64,
}

impl Answers {
    fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// Sends chat requests with `key`, round robin over `gateways`, one every `every`,
/// until `stop` turns true.
fn load(
    gateways: Vec<String>,
    key: String,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> (Arc<Mutex<Answers>>, tokio::task::JoinHandle<()>) {
    let answers = Arc::new(Mutex::new(Answers::default()));
    let out = answers.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut i = 0usize;
        let mut tick = tokio::time::interval(every);
        while !*stop.borrow() {
            tick.tick().await;
            let url = &gateways[i % gateways.len()];
            i += 1;
            let sent = http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat_body(false))
                .send()
                .await;
            let mut a = out.lock().unwrap();
            match sent {
                Ok(r) => {
                    let s = r.status().as_u16();
                    *a.by_status.entry(s).or_default() += 1;
                    a.timeline.push((Instant::now(), s));
                }
                Err(_) => a.unanswered += 1,
            }
        }
    });
    (answers, task)
}

/// A project with an `openai` connection to a mock provider, and a key with every lock
/// off and no request limits (it keeps working when a node loses the control stream, or
/// the event log its limits would need). Returns (project, key).
async fn open_key(cluster: &Cluster, upstream: &MockUpstream) -> (String, String) {
    let (project, _, _) = cluster
        .client
        .setup(
            json!({"provider": "openai", "api_key": "sk-faults", "base_url": upstream.base_url()}),
        )
        .await;
    cluster.client.unmetered(&project).await;
    let (_, key, seq) = cluster
        .client
        .post_seq(
            &format!("/projects/{project}/keys"),
            json!({"name": "open", "locks": {"ip": {"mode": "off"}}}),
        )
        .await;
    cluster.wait_for_seq(seq).await;
    (project, key["key"].as_str().unwrap().to_owned())
}

/// A key with the default lock (IP auto-bind), bound by one request through `gateway`.
async fn bound_key(cluster: &Cluster, project: &str, gateway: &str) -> String {
    let (_, key, seq) = cluster
        .client
        .post_seq(
            &format!("/projects/{project}/keys"),
            json!({"name": "locked"}),
        )
        .await;
    cluster.wait_for_seq(seq).await;
    let key = key["key"].as_str().unwrap().to_owned();
    assert_eq!(chat(gateway, &key, false).await.0, 200);
    key
}

async fn usage(cluster: &Cluster, project: &str) -> Value {
    let (s, usage) = cluster
        .client
        .get(&format!("/projects/{project}/usage"))
        .await;
    assert_eq!(s, 200, "{usage}");
    usage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_under_load_loses_nothing_even_with_a_gateway_killed_during_it() {
    sg_testkit::init_tracing();
    let mut cluster = Cluster::start(&[
        &["--node-id", "gw-a", "--max-staleness", "2s"],
        &["--node-id", "gw-b", "--max-staleness", "2s"],
    ])
    .await;
    let upstream = MockUpstream::start(Default::default()).await.unwrap();
    let (project, key) = open_key(&cluster, &upstream).await;
    // A key with a lock (IP auto-bind), bound before the outage.
    let gw_a = cluster.gateways[0].url();
    let locked = bound_key(&cluster, &project, &gw_a).await;

    let (stop, stopped) = watch::channel(false);
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.url()).collect();
    let (answers, loader) = load(urls, key.clone(), Duration::from_millis(25), stopped);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // NATS goes away for 30 s.
    cluster.nats.single().stop().await;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Past the staleness bound: not ready, keys with locks refused, open keys served.
    let ready = cluster.gateways[0].readyz().await;
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["stale"], true, "{ready}");
    let (s, body) = chat(&gw_a, &locked, false).await;
    assert_eq!(s, 503, "{body}");
    assert_error(&body, "control_plane_unavailable");
    assert_eq!(chat(&gw_a, &key, false).await.0, 200);
    // gw-b dies (SIGKILL) in the middle of the outage, owing usage it could not publish.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let owed = cluster.gateways[1].readyz().await["usage_pending"]
        .as_u64()
        .unwrap();
    assert!(owed > 0, "gw-b had nothing to lose: {owed}");
    cluster.gateways[1].kill().await;
    tokio::time::sleep(outage_left(outage)).await;
    cluster.nats.single().restart().await.unwrap();
    // gw-b starts again on its spool and publishes what it owed.
    cluster.gateways[1].start_again().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    loader.await.unwrap();

    cluster.usage_settled().await;
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    // Every answer during the outage was served from the cached key (gw-b's requests
    // failed only while it was dead).
    let outage_end = outage + Duration::from_secs(30);
    let refused_in_outage = answers
        .timeline
        .iter()
        .filter(|(at, s)| *at > outage && *at < outage_end && *s != 200)
        .count();
    assert_eq!(refused_in_outage, 0, "{answers:?}");
    assert!(
        answers.unanswered > 0,
        "gw-b was never found dead: {answers:?}"
    );
    // Exactly the answers served are counted: the load's 200s, the 200 that bound the
    // locked key and the one during the outage (refusals at the door leave no usage).
    let served = answers.count(200) + 2;
    let usage = usage(&cluster, &project).await;
    assert_eq!(
        usage["totals"]["requests"].as_u64(),
        Some(served),
        "{usage} vs {answers:?}"
    );
    assert_eq!(usage["totals"]["errors"].as_u64(), Some(0), "{usage}");
}

/// An admin write: when it was sent, its status, the key id if it was acknowledged.
type AdminWrite = (Instant, u16, Option<String>);

fn outage_left(outage: Instant) -> Duration {
    Duration::from_secs(30).saturating_sub(outage.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_under_load_loses_no_acknowledged_write() {
    sg_testkit::init_tracing();
    let nats = sg_testkit::NatsCluster::start().await.unwrap();
    let mut cluster = Cluster::start_with(
        Nats::Cluster(nats),
        &[&["--node-id", "gw-a"]],
        &["--stream-replicas", "3"],
    )
    .await;
    let upstream = MockUpstream::start(Default::default()).await.unwrap();
    let (project, key) = open_key(&cluster, &upstream).await;
    let (stop, stopped) = watch::channel(false);
    let (answers, loader) = load(
        vec![cluster.gateways[0].url()],
        key,
        Duration::from_millis(20),
        stopped.clone(),
    );
    // Admin writes alongside: every key the admin acknowledged must survive. Each write
    // is recorded with the instant it was sent and its status.
    let writes: Arc<Mutex<Vec<AdminWrite>>> = Arc::default();
    let client = cluster.client.clone();
    let writer_project = project.clone();
    let mut writer_stop = stopped;
    let writer_writes = writes.clone();
    let writer = tokio::spawn(async move {
        while !*writer_stop.borrow() {
            let sent = Instant::now();
            let (s, k) = client
                .post(
                    &format!("/projects/{writer_project}/keys"),
                    json!({"name": "w"}),
                )
                .await;
            let id = (s == 201).then(|| k["id"].as_str().unwrap().to_owned());
            writer_writes.lock().unwrap().push((sent, s, id));
            let _ = tokio::time::timeout(Duration::from_millis(100), writer_stop.changed()).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nats.cluster().kill(0).await;
    let killed = Instant::now();
    // The node stays down until an admin write sent after the kill is acknowledged (the
    // streams elected leaders among the two left), for at most 40 s.
    let deadline = killed + Duration::from_secs(40);
    let written_while_down = loop {
        let found = writes
            .lock()
            .unwrap()
            .iter()
            .any(|(sent, s, _)| *sent > killed && *s == 201);
        if found || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Some more load with the node down, then it comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats.cluster().restart(0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    loader.await.unwrap();
    writer.await.unwrap();
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let refused: Vec<u16> = writes
        .iter()
        .filter(|(sent, _, id)| *sent > killed && id.is_none())
        .map(|(_, s, _)| *s)
        .collect();
    assert!(
        written_while_down,
        "no admin write succeeded in 40 s with a node down; refused after the kill: {refused:?}"
    );
    // Refusals while leaders moved are 503s, never another error.
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    let acknowledged: Vec<&String> = writes.iter().filter_map(|(_, _, id)| id.as_ref()).collect();
    // No acknowledged write lost: every key the admin answered 201 for is in the log...
    let logged: std::collections::BTreeSet<String> = cluster
        .control_events()
        .await
        .into_iter()
        .filter_map(|(_, env)| match env.event {
            sg_events::Event::KeyIssued(k) => Some(k.key_id.to_string()),
            _ => None,
        })
        .collect();
    for id in &acknowledged {
        assert!(
            logged.contains(id.as_str()),
            "acknowledged key {id} is not in the control stream"
        );
    }
    // ...and, once the projector has caught up with the log (it may have been reading
    // from the killed node), in the views.
    cluster.usage_settled().await;
    cluster.control_projected().await;
    let (_, keys) = cluster
        .client
        .get(&format!("/projects/{project}/keys"))
        .await;
    let listed: std::collections::BTreeSet<&str> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(
            listed.contains(id.as_str()),
            "acknowledged key {id} is in the log but not in the views"
        );
    }
    // Usage exact: one per request served.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let served = answers.count(200);
    assert!(served > 100, "{answers:?}");
    let usage = usage(&cluster, &project).await;
    assert_eq!(
        usage["totals"]["requests"].as_u64(),
        Some(served),
        "{usage} vs {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_survive_a_projector_crash_and_a_database_outage_and_equal_a_rebuild() {
    sg_testkit::init_tracing();
    let mut cluster = Cluster::start(&[&["--node-id", "gw-a"]]).await;
    let upstream = MockUpstream::start(Default::default()).await.unwrap();
    let (project, key) = open_key(&cluster, &upstream).await;
    let (stop, stopped) = watch::channel(false);
    let (answers, loader) = load(
        vec![cluster.gateways[0].url()],
        key,
        Duration::from_millis(20),
        stopped,
    );
    // The projector dies (SIGKILL) while it applies batches, and comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.projector.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.projector.start_again().await;
    // Then PostgreSQL is down for 30 s under the same load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pg.stop().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.pg.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    loader.await.unwrap();
    cluster.usage_settled().await;
    let served = answers.lock().unwrap().count(200);
    let usage = usage(&cluster, &project).await;
    assert_eq!(
        usage["totals"]["requests"].as_u64(),
        Some(served),
        "{usage}"
    );

    // A projector on a fresh database, reading the log from the start, ends equal.
    let fresh = cluster.pg.create_database("rebuild").await.unwrap();
    let mut rebuild = Proc::start(
        &[
            "server",
            "projector",
            "--listen",
            "{addr}",
            "--database-url",
            &fresh,
        ],
        &[("SECUREGATE_NATS_URL", &cluster.nats.url())],
        cluster.dir.path(),
    )
    .await;
    let live_progress = cluster.projector.readyz().await;
    let caught_up = eventually(Duration::from_secs(60), || async {
        let p = rebuild.readyz().await;
        p["control_seq"] == live_progress["control_seq"]
            && p["usage_seq"] == live_progress["usage_seq"]
    })
    .await;
    assert!(caught_up, "the rebuild did not catch up");
    let live = sg_views::Views::connect(&cluster.pg.url("securegate"))
        .await
        .unwrap();
    let rebuilt = sg_views::Views::connect(&fresh).await.unwrap();
    let (a, b) = (live.dump().await.unwrap(), rebuilt.dump().await.unwrap());
    assert_eq!(a, b, "the live views differ from a rebuild from the log");
    rebuild.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_gateway_fails_closed_for_locked_keys_and_recovers() {
    sg_testkit::init_tracing();
    let nats = sg_testkit::nats::NatsServer::start().await.unwrap();
    let proxy =
        sg_testkit::TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], nats.port())))
            .await
            .unwrap();
    let through_proxy = format!("nats://127.0.0.1:{}", proxy.port());
    let cluster = Cluster::start_with(
        Nats::Single(nats),
        &[&["--nats-url", &through_proxy, "--max-staleness", "2s"]],
        &[],
    )
    .await;
    let upstream = MockUpstream::start(Default::default()).await.unwrap();
    let (project, open) = open_key(&cluster, &upstream).await;
    let gw = cluster.gateways[0].url();
    let locked = bound_key(&cluster, &project, &gw).await;

    proxy.cut();
    let cut = Instant::now();
    let stale = eventually(Duration::from_secs(10), || async {
        cluster.gateways[0].readyz().await["ready"] == false
    })
    .await;
    assert!(stale, "the partitioned gateway stayed ready");
    // Freshness is confirmed every fifth of the bound, so the node turns stale between
    // 1.6 s and 2 s after its last confirmation.
    let ready_for = cut.elapsed();
    assert!(
        ready_for >= Duration::from_millis(1500),
        "not ready after {ready_for:?}, before the bound: {}",
        cluster.gateways[0].readyz().await
    );
    let (s, body) = chat(&gw, &locked, false).await;
    assert_eq!(s, 503, "{body}");
    assert_error(&body, "control_plane_unavailable");
    let (s, body) = chat(&gw, &open, false).await;
    assert_eq!(s, 200, "{body}");

    proxy.restore();
    let back = eventually(Duration::from_secs(30), || async {
        cluster.gateways[0].readyz().await["ready"] == true
    })
    .await;
    assert!(back, "the gateway did not recover after the partition");
    let (s, body) = chat(&gw, &locked, false).await;
    assert_eq!(s, 200, "{body}");
    // What it served while cut off is accounted for once it is back.
    cluster.usage_settled().await;
    assert_eq!(
        usage(&cluster, &project).await["totals"]["requests"].as_u64(),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_writers_on_one_key_one_wins_per_version() {
    sg_testkit::init_tracing();
    let cluster = Cluster::start(&[]).await;
    let (_, key_id, _) = cluster.client.setup(json!({"provider": "mock"})).await;
    let writers = (0..50).map(|i| {
        let client = cluster.client.clone();
        let path = format!("/keys/{key_id}/locks");
        async move {
            let r = client
                .http
                .put(format!("{}{path}", client.base))
                .bearer_auth(TOKEN)
                .json(&json!({"ip": {"mode": "off"}, "models": [format!("m-{i}")]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let seq: Option<u64> = r
                .headers()
                .get("x-securegate-seq")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            (i, status, seq)
        }
    });
    let results = futures::future::join_all(writers).await;
    let won: Vec<&(usize, u16, Option<u64>)> = results.iter().filter(|r| r.1 == 200).collect();
    assert!(
        results.iter().all(|r| r.1 == 200 || r.1 == 409),
        "{results:?}"
    );
    assert!(!won.is_empty(), "{results:?}");
    // One winner per version: the winners' sequences are distinct.
    let mut seqs: Vec<u64> = won.iter().map(|r| r.2.unwrap()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        won.len(),
        "two writers won the same version: {won:?}"
    );
    // No lost update: the log holds exactly the winners' writes after the key's issue,
    // and the key's locks are the last winner's.
    use sg_eventlog::EventLog;
    let log =
        sg_eventlog::jetstream::JetStreamLog::connect(&cluster.nats.url(), Default::default())
            .await
            .unwrap();
    let bounds = log.bounds(sg_eventlog::StreamName::Control).await.unwrap();
    let mut lock_writes = 0;
    for seq in 1..=bounds.last_seq {
        let m = log
            .get(sg_eventlog::StreamName::Control, seq)
            .await
            .unwrap()
            .unwrap();
        if m.subject.ends_with(&format!(".key.{key_id}"))
            && sg_events::decode(&m.payload).unwrap().event.type_name() == "key.locks_set"
        {
            lock_writes += 1;
            assert!(seqs.contains(&seq), "a write nobody was told about: {seq}");
        }
    }
    assert_eq!(lock_writes, won.len());
    let last = won.iter().max_by_key(|r| r.2).unwrap();
    let locks = cluster.locks(&key_id).await;
    assert_eq!(
        locks["locks"]["models"],
        json!([format!("m-{}", last.0)]),
        "{locks}"
    );
}
