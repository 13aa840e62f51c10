//! The sentinel's loop on a real (SQLite) event log: several sentinels at once write one
//! suspension per verdict, write its end when it is over, and a sentinel started after an
//! owner lifted a suspension early does not write it again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sg_abuse::AbuseSettings;
use sg_eventlog::sqlite::SqliteLog;
use sg_eventlog::{Append, EventLog, StreamName};
use sg_events::{
    AbuseSettingsData, Actor, Envelope, Event, KeyId, KeyIssuedV1, KeyResumedV1, ProjectAbuseSetV1,
    ProjectCreatedV1, ProjectId, TenantCreatedV2, TenantId, UsageRecordedV4,
};
use sg_replica::Replica;
use sg_sentinel::{SentinelConfig, SentinelProgress};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct World {
    log: Arc<dyn EventLog>,
    tenant: TenantId,
    project: ProjectId,
}

impl World {
    async fn new(suspend_seconds: u64) -> World {
        let log: Arc<dyn EventLog> = Arc::new(SqliteLog::open_in_memory().await.unwrap());
        let w = World {
            log,
            tenant: TenantId::generate(),
            project: ProjectId::generate(),
        };
        w.append(Event::TenantCreated(TenantCreatedV2 {
            name: "t".into(),
            plan: None,
        }))
        .await;
        w.append(Event::ProjectCreated(ProjectCreatedV1 {
            project_id: w.project.clone(),
            name: "p".into(),
        }))
        .await;
        let mut settings = AbuseSettings::default();
        settings.velocity.requests = Some(5);
        settings.suspend_seconds = suspend_seconds;
        w.append(Event::ProjectAbuseSet(ProjectAbuseSetV1 {
            project_id: w.project.clone(),
            settings: AbuseSettingsData::from(&settings),
        }))
        .await;
        w
    }

    async fn append(&self, event: Event) -> u64 {
        let env = Envelope::new(self.tenant.clone(), Actor::operator(), event);
        self.log
            .append(Append {
                subject: env.subject(),
                payload: sg_events::encode(&env).into(),
                expected_last_subject_seq: None,
                msg_id: None,
            })
            .await
            .unwrap()
            .seq
    }

    async fn key(&self) -> KeyId {
        let k = KeyId::generate();
        self.append(Event::KeyIssued(
            KeyIssuedV1 {
                key_id: k.clone(),
                project_id: self.project.clone(),
                name: "k".into(),
                key_hash: format!("hash-{k}"),
                hint: "SG_…abcd".into(),
                connection_ids: vec![],
                allowed_models: None,
            }
            .into(),
        ))
        .await;
        k
    }

    /// `n` requests with `key`, now.
    async fn requests(&self, key: &KeyId, n: usize) {
        for _ in 0..n {
            self.append(Event::UsageRecorded(UsageRecordedV4 {
                request_id: uuid::Uuid::now_v7(),
                project_id: self.project.clone(),
                key_id: key.clone(),
                connection_id: None,
                provider: None,
                model: Some("gpt-4o".into()),
                endpoint: "/v1/chat/completions".into(),
                status: 200,
                streamed: false,
                prompt_tokens: 1,
                cached_prompt_tokens: 0,
                completion_tokens: 1,
                total_tokens: 2,
                cost_micros: 0,
                priced: false,
                request_bytes: 1,
                response_bytes: 1,
                latency_us: 1,
                started_at: OffsetDateTime::now_utc(),
                node: "gw".into(),
                client_ip: Some([127, 0, 0, 1].into()),
                country: None,
            }))
            .await;
        }
    }

    /// The control stream's suspensions and ends of `key`: (verdict id, resumed early?).
    async fn history(&self, key: &KeyId) -> (Vec<String>, Vec<(String, bool)>) {
        let last = self.log.bounds(StreamName::Control).await.unwrap().last_seq;
        let (mut suspended, mut resumed) = (Vec::new(), Vec::new());
        for seq in 1..=last {
            let Some(m) = self.log.get(StreamName::Control, seq).await.unwrap() else {
                continue;
            };
            match sg_events::decode(&m.payload).unwrap().event {
                Event::KeySuspended(d) if &d.key_id == key => suspended.push(d.verdict_id),
                Event::KeyResumed(d) if &d.key_id == key => resumed.push((d.verdict_id, d.early)),
                _ => {}
            }
        }
        (suspended, resumed)
    }

    /// A sentinel with its own replica; stops when the token is cancelled.
    fn sentinel(&self, name: &str) -> (CancellationToken, watch::Receiver<SentinelProgress>) {
        let (replica, _) = Replica::spawn(self.log.clone(), None);
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(SentinelProgress::default());
        let config = SentinelConfig {
            node_id: name.into(),
            tick: Duration::from_millis(100),
            ..SentinelConfig::default()
        };
        tokio::spawn(sg_sentinel::run_with_progress(
            self.log.clone(),
            replica,
            config,
            stop.clone(),
            tx,
        ));
        (stop, rx)
    }
}

async fn until<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(mut f: F) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("not within 10 s");
}

async fn ready(progress: &mut watch::Receiver<SentinelProgress>) {
    tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|p| p.ready))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sentinels_write_one_suspension_and_one_end() {
    let w = World::new(2).await;
    let key = w.key().await;
    let mut sentinels: Vec<_> = (0..3).map(|i| w.sentinel(&format!("s{i}"))).collect();
    for (_, p) in &mut sentinels {
        ready(p).await;
    }
    // The window must not end mid-burst (it would split the count).
    while 60 - OffsetDateTime::now_utc().unix_timestamp() % 60 < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.requests(&key, 8).await;
    until(|| async { w.history(&key).await.1.len() == 1 }).await;
    let (suspended, resumed) = w.history(&key).await;
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    assert_eq!(resumed, vec![(suspended[0].clone(), false)]);
    let written: u64 = sentinels.iter().map(|(_, p)| p.borrow().suspended).sum();
    assert_eq!(written, 1);
    let ended: u64 = sentinels.iter().map(|(_, p)| p.borrow().resumed).sum();
    assert_eq!(ended, 1);
    for (stop, _) in &sentinels {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_started_after_an_early_resume_leaves_the_key_alone() {
    let w = World::new(600).await;
    let key = w.key().await;
    while 60 - OffsetDateTime::now_utc().unix_timestamp() % 60 < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop, mut progress) = w.sentinel("first");
    ready(&mut progress).await;
    w.requests(&key, 8).await;
    until(|| async { w.history(&key).await.0.len() == 1 }).await;
    stop.cancel();
    // The owner lifts it.
    let verdict = w.history(&key).await.0.remove(0);
    w.append(Event::KeyResumed(KeyResumedV1 {
        key_id: key.clone(),
        project_id: w.project.clone(),
        verdict_id: verdict.clone(),
        early: true,
    }))
    .await;
    // A new sentinel replays the storm, reaches the same verdict, and writes nothing.
    let (stop, mut progress) = w.sentinel("second");
    ready(&mut progress).await;
    w.requests(&key, 2).await;
    let usage = w.log.bounds(StreamName::Usage).await.unwrap().last_seq;
    until(|| async { progress.borrow().usage_seq >= usage }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.history(&key).await,
        (vec![verdict.clone()], vec![(verdict, true)])
    );
    assert_eq!(progress.borrow().suspended, 0);
    stop.cancel();
}
