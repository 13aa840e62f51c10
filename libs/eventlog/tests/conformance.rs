//! One conformance suite for every [`EventLog`] implementation: the cases in `cases` are
//! written once against `Arc<dyn EventLog>` and instantiated per backend by `conformance!`.
//! Backend-specific tests (server restarts, reopening a database file) follow at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sg_eventlog::jetstream::{JetStreamLog, JetStreamOptions};
use sg_eventlog::sqlite::{SqliteLog, SqliteOptions};
use sg_eventlog::{
    Append, Appended, EventLog, LogError, LogMessage, Retention, StreamBounds, StreamName,
};

use support::NatsServer;

/// Bound of every single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

pub struct Fixture {
    log: Arc<dyn EventLog>,
    _keep: Box<dyn Any + Send>,
}

fn jetstream_options() -> JetStreamOptions {
    JetStreamOptions {
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Logs of the code under test, shown for failing tests; filter with `RUST_LOG`.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sg_eventlog=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn jetstream(retention: Retention) -> Fixture {
    init_tracing();
    let server = NatsServer::start()
        .await
        .expect("a private nats-server is required for the JetStream conformance tests");
    let opts = JetStreamOptions {
        retention,
        ..jetstream_options()
    };
    let log = JetStreamLog::connect(&server.url(), opts)
        .await
        .expect("connecting to the private nats-server");
    Fixture {
        log: Arc::new(log),
        _keep: Box::new(server),
    }
}

async fn sqlite_file(retention: Retention) -> Fixture {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("log.db");
    let log = SqliteLog::open_with(&path, SqliteOptions { retention })
        .await
        .unwrap();
    Fixture {
        log: Arc::new(log),
        _keep: Box::new(dir),
    }
}

async fn sqlite_memory(retention: Retention) -> Fixture {
    init_tracing();
    let log = SqliteLog::open_in_memory_with(SqliteOptions { retention })
        .await
        .unwrap();
    Fixture {
        log: Arc::new(log),
        _keep: Box::new(()),
    }
}

fn append(subject: &str, payload: &str) -> Append {
    Append {
        subject: subject.to_owned(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        expected_last_subject_seq: None,
        msg_id: None,
    }
}

fn expecting(subject: &str, payload: &str, expected: u64) -> Append {
    Append {
        expected_last_subject_seq: Some(expected),
        ..append(subject, payload)
    }
}

fn with_id(subject: &str, payload: &str, id: &str) -> Append {
    Append {
        msg_id: Some(id.to_owned()),
        ..append(subject, payload)
    }
}

async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

async fn next_item<T>(stream: &mut BoxStream<'static, Result<T, LogError>>, what: &str) -> T {
    match bounded(what, stream.next()).await {
        Some(Ok(item)) => item,
        Some(Err(err)) => panic!("{what}: stream yielded an error: {err}"),
        None => panic!("{what}: stream ended"),
    }
}

async fn append_ok(log: &dyn EventLog, append: Append) -> Appended {
    let subject = append.subject.clone();
    bounded("append", log.append(append))
        .await
        .unwrap_or_else(|err| panic!("append to {subject}: {err}"))
}

mod cases {
    use super::*;

    pub async fn append_batch_results_per_append(f: &Fixture) {
        let log = f.log.as_ref();
        append_ok(log, append("sg.control.t1.key.taken", "c")).await;
        let mut dup = append("sg.usage.t1.p", "first");
        dup.msg_id = Some("batch-dup".into());
        let first = append_ok(log, dup.clone()).await;
        let mut conflicting = append("sg.control.t1.key.taken", "c");
        conflicting.expected_last_subject_seq = Some(0);
        let batch = vec![
            append("sg.usage.t1.p", "a"),
            dup,
            conflicting,
            append("nowhere.at.all", "x"),
            append("sg.usage.t1.p", "b"),
        ];
        let results = bounded("append_batch", log.append_batch(batch)).await;
        assert_eq!(results.len(), 5);
        assert_eq!(results[0].as_ref().unwrap().seq, first.seq + 1);
        assert_eq!(
            results[1].as_ref().unwrap(),
            &Appended {
                seq: first.seq,
                duplicate: true
            }
        );
        assert!(
            matches!(results[2], Err(LogError::WrongLastSequence { .. })),
            "{:?}",
            results[2]
        );
        assert!(
            matches!(results[3], Err(LogError::UnknownSubject(_))),
            "{:?}",
            results[3]
        );
        let last = results[4].as_ref().unwrap().seq;
        assert!(last > first.seq + 1);
        // What the batch stored is readable, in order.
        assert_eq!(
            log.get(StreamName::Usage, last)
                .await
                .unwrap()
                .unwrap()
                .payload
                .as_ref(),
            b"b"
        );

        // The same id twice in one batch is stored once; a stream that keeps the newest
        // message of a subject keeps the batch's last; sequences run on across streams.
        let mut once = append("sg.usage.t1.p", "once");
        once.msg_id = Some("in-batch".into());
        let quota = "sg.quota.t1.key.batch.rpm";
        let batch = vec![
            once.clone(),
            append(quota, "q1"),
            once,
            append(quota, "q2"),
            append("sg.usage.t1.p", "after"),
        ];
        let results = bounded("append_batch", log.append_batch(batch)).await;
        let results: Vec<Appended> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(results[0].seq, last + 1);
        assert!(!results[0].duplicate);
        assert_eq!(
            results[2],
            Appended {
                seq: results[0].seq,
                duplicate: true
            }
        );
        assert_eq!(results[4].seq, last + 2);
        assert_eq!(results[3].seq, results[1].seq + 1);
        let kept = log.last(quota).await.unwrap().unwrap();
        assert_eq!(kept.payload.as_ref(), b"q2");
        assert!(
            log.get(StreamName::Quota, results[1].seq)
                .await
                .unwrap()
                .is_none(),
            "the subject's older message is gone"
        );
        for (seq, payload) in [(last + 1, &b"once"[..]), (last + 2, b"after")] {
            let got = log.get(StreamName::Usage, seq).await.unwrap().unwrap();
            assert_eq!(got.payload.as_ref(), payload);
        }
    }

    pub async fn sequences_per_stream(f: &Fixture) {
        let log = f.log.as_ref();
        for (i, subject) in [
            "sg.control.t1.key.a",
            "sg.control.t1.key.b",
            "sg.control.t2.tenant",
        ]
        .into_iter()
        .enumerate()
        {
            let appended = append_ok(log, append(subject, "c")).await;
            assert_eq!(
                appended,
                Appended {
                    seq: i as u64 + 1,
                    duplicate: false
                }
            );
        }
        for i in 1..=2 {
            let appended = append_ok(log, append("sg.usage.t1.req", "u")).await;
            assert_eq!(
                appended,
                Appended {
                    seq: i,
                    duplicate: false
                }
            );
        }
        let appended = append_ok(log, append("sg.control.t1.key.a", "c")).await;
        assert_eq!(appended.seq, 4);
    }

    pub async fn unknown_subject_rejected(f: &Fixture) {
        let log = f.log.as_ref();
        for subject in [
            "foo.bar",
            "sg",
            "sg.control",
            "sg.control.",
            "sg.controlx.a",
            "sg.usage",
            "sg.control.a..b",
            "sg.control.*",
            "sg.control.>",
            "sg.usage.a b",
            "",
        ] {
            let result = bounded("append", log.append(append(subject, "x"))).await;
            assert!(
                matches!(&result, Err(LogError::UnknownSubject(s)) if s == subject),
                "{subject:?}: {result:?}"
            );
        }
        for stream in StreamName::ALL {
            let bounds = log.bounds(stream).await.unwrap();
            assert_eq!(
                bounds,
                StreamBounds::default(),
                "{stream:?} must stay empty"
            );
        }
    }

    pub async fn invalid_names_rejected(f: &Fixture) {
        let log = f.log.as_ref();
        for id in ["", "a b", "a\r\nb"] {
            let result = bounded("append", log.append(with_id("sg.control.t1.x", "x", id))).await;
            assert!(
                matches!(result, Err(LogError::Other(_))),
                "msg id {id:?}: {result:?}"
            );
        }
        assert_eq!(
            log.bounds(StreamName::Control).await.unwrap(),
            StreamBounds::default()
        );
    }

    pub async fn expected_last_subject_seq(f: &Fixture) {
        let log = f.log.as_ref();
        let a = "sg.control.t1.key.a";
        let b = "sg.control.t1.key.b";
        assert_eq!(append_ok(log, expecting(a, "a1", 0)).await.seq, 1);

        let second = bounded("append", log.append(expecting(a, "a1'", 0))).await;
        match second {
            Err(LogError::WrongLastSequence { subject, expected }) => {
                assert_eq!(subject, a);
                assert_eq!(expected, 0);
            }
            other => panic!("second Some(0) must be rejected, got {other:?}"),
        }

        assert_eq!(append_ok(log, expecting(a, "a2", 1)).await.seq, 2);
        let stale = bounded("append", log.append(expecting(a, "a3", 1))).await;
        assert!(
            matches!(stale, Err(LogError::WrongLastSequence { expected: 1, .. })),
            "{stale:?}"
        );

        // The check is per subject: other subjects move the stream, not this subject.
        assert_eq!(append_ok(log, expecting(b, "b1", 0)).await.seq, 3);
        assert_eq!(append_ok(log, append(b, "b2")).await.seq, 4);
        assert_eq!(append_ok(log, expecting(a, "a3", 2)).await.seq, 5);
        let wrong = bounded("append", log.append(expecting(a, "a4", 4))).await;
        assert!(
            matches!(wrong, Err(LogError::WrongLastSequence { expected: 4, .. })),
            "{wrong:?}"
        );

        // Rejected appends stored nothing.
        assert_eq!(log.bounds(StreamName::Control).await.unwrap().last_seq, 5);
        assert_eq!(
            log.get(StreamName::Control, 2)
                .await
                .unwrap()
                .unwrap()
                .payload,
            "a2"
        );
    }

    pub async fn last_on_subject_and_quota_keeps_last_only(f: &Fixture) {
        let log = f.log.as_ref();
        let a = "sg.quota.t1.key.k1.rpm";
        let b = "sg.quota.t1.key.k1.tpm";
        assert_eq!(log.last(a).await.unwrap(), None);
        assert!(matches!(
            log.last("sg.nowhere.x").await,
            Err(LogError::UnknownSubject(_))
        ));
        assert_eq!(append_ok(log, expecting(a, "a1", 0)).await.seq, 1);
        assert_eq!(append_ok(log, expecting(b, "b1", 0)).await.seq, 2);
        assert_eq!(append_ok(log, expecting(a, "a2", 1)).await.seq, 3);
        let last = log.last(a).await.unwrap().unwrap();
        assert_eq!((last.seq, last.payload), (3, Bytes::from_static(b"a2")));
        assert_eq!(log.last(b).await.unwrap().unwrap().seq, 2);
        // The older ledger of `a` is gone; the expected-sequence check still holds.
        assert_eq!(log.get(StreamName::Quota, 1).await.unwrap(), None);
        let stale = bounded("append", log.append(expecting(a, "a3", 1))).await;
        assert!(
            matches!(stale, Err(LogError::WrongLastSequence { .. })),
            "{stale:?}"
        );
        assert_eq!(append_ok(log, expecting(a, "a3", 3)).await.seq, 4);
        // Other streams keep every message.
        let c = "sg.control.t1.key.a";
        append_ok(log, append(c, "c1")).await;
        append_ok(log, append(c, "c2")).await;
        let bounds = log.bounds(StreamName::Control).await.unwrap();
        assert_eq!((bounds.first_seq, bounds.last_seq), (1, 2));
        assert_eq!(log.last(c).await.unwrap().unwrap().payload, "c2");
    }

    pub async fn concurrent_expected_seq_single_winner(f: &Fixture) {
        const ROUNDS: usize = 20;
        const WRITERS: usize = 8;
        for round in 0..ROUNDS {
            let subject = format!("sg.control.t1.race.r{round}");
            // Round 0 of each subject expects an empty subject, then the winner's sequence.
            let mut expected = 0;
            for phase in 0..2 {
                let mut tasks = Vec::new();
                for writer in 0..WRITERS {
                    let log = f.log.clone();
                    let subject = subject.clone();
                    tasks.push(tokio::spawn(async move {
                        log.append(expecting(&subject, &format!("{phase}-{writer}"), expected))
                            .await
                    }));
                }
                let mut winners = Vec::new();
                for task in tasks {
                    match bounded("concurrent append", task).await.unwrap() {
                        Ok(appended) => {
                            assert!(!appended.duplicate);
                            winners.push(appended.seq);
                        }
                        Err(LogError::WrongLastSequence { .. }) => {}
                        Err(err) => panic!("round {round}: unexpected error {err}"),
                    }
                }
                assert_eq!(
                    winners.len(),
                    1,
                    "round {round} phase {phase}: winners {winners:?}"
                );
                expected = winners[0];
            }
        }
        let bounds = f.log.bounds(StreamName::Control).await.unwrap();
        assert_eq!(bounds.last_seq, (ROUNDS * 2) as u64);
    }

    pub async fn msg_id_dedupe(f: &Fixture) {
        let log = f.log.as_ref();
        let s = "sg.control.t1.key.a";
        assert_eq!(
            append_ok(log, with_id(s, "first", "m-1")).await,
            Appended {
                seq: 1,
                duplicate: false
            }
        );
        assert_eq!(
            append_ok(log, with_id(s, "second", "m-1")).await,
            Appended {
                seq: 1,
                duplicate: true
            }
        );
        assert_eq!(
            log.get(StreamName::Control, 1)
                .await
                .unwrap()
                .unwrap()
                .payload,
            "first"
        );
        assert_eq!(log.bounds(StreamName::Control).await.unwrap().last_seq, 1);
        assert_eq!(
            append_ok(log, with_id(s, "other", "m-2")).await,
            Appended {
                seq: 2,
                duplicate: false
            }
        );

        // A retried conditional append (same id, same expectation) is answered as a
        // duplicate, not as a concurrency conflict.
        let conditional = Append {
            expected_last_subject_seq: Some(2),
            ..with_id(s, "third", "m-3")
        };
        assert_eq!(
            append_ok(log, conditional.clone()).await,
            Appended {
                seq: 3,
                duplicate: false
            }
        );
        assert_eq!(
            append_ok(log, conditional).await,
            Appended {
                seq: 3,
                duplicate: true
            }
        );

        // Ids are per stream.
        assert_eq!(
            append_ok(log, with_id("sg.usage.t1.req", "u", "m-1")).await,
            Appended {
                seq: 1,
                duplicate: false
            }
        );
        assert_eq!(log.bounds(StreamName::Control).await.unwrap().last_seq, 3);
    }

    pub async fn bounds(f: &Fixture) {
        let log = f.log.as_ref();
        for stream in StreamName::ALL {
            assert_eq!(
                log.bounds(stream).await.unwrap(),
                StreamBounds {
                    first_seq: 0,
                    last_seq: 0
                }
            );
        }
        for _ in 0..3 {
            append_ok(log, append("sg.control.t1.key.a", "x")).await;
        }
        assert_eq!(
            log.bounds(StreamName::Control).await.unwrap(),
            StreamBounds {
                first_seq: 1,
                last_seq: 3
            }
        );
        assert_eq!(
            log.bounds(StreamName::Usage).await.unwrap(),
            StreamBounds::default()
        );
    }

    pub async fn get(f: &Fixture) {
        let log = f.log.as_ref();
        append_ok(log, append("sg.control.t1.key.a", "one")).await;
        append_ok(log, append("sg.control.t1.key.b", "two")).await;
        assert_eq!(
            log.get(StreamName::Control, 2).await.unwrap(),
            Some(LogMessage {
                seq: 2,
                subject: "sg.control.t1.key.b".to_owned(),
                payload: Bytes::from_static(b"two"),
            })
        );
        assert_eq!(
            log.get(StreamName::Control, 1)
                .await
                .unwrap()
                .unwrap()
                .payload,
            "one"
        );
        assert_eq!(log.get(StreamName::Control, 0).await.unwrap(), None);
        assert_eq!(log.get(StreamName::Control, 3).await.unwrap(), None);
        assert_eq!(log.get(StreamName::Control, 1_000_000).await.unwrap(), None);
        assert_eq!(log.get(StreamName::Usage, 1).await.unwrap(), None);
    }

    pub async fn follow_history_then_live(f: &Fixture) {
        let log = f.log.as_ref();
        for i in 1..=5 {
            append_ok(
                log,
                append(&format!("sg.control.t1.key.k{i}"), &format!("p{i}")),
            )
            .await;
        }
        // Usage messages must not show up in a control follower.
        append_ok(log, append("sg.usage.t1.req", "u")).await;

        let mut from_start = log.follow(StreamName::Control, 1).await.unwrap();
        let mut from_zero = log.follow(StreamName::Control, 0).await.unwrap();
        let mut from_middle = log.follow(StreamName::Control, 3).await.unwrap();
        let mut ahead = log.follow(StreamName::Control, 8).await.unwrap();
        for seq in 1..=5 {
            let m = next_item(&mut from_start, "follow from 1").await;
            assert_eq!(
                (m.seq, m.subject.as_str()),
                (seq, format!("sg.control.t1.key.k{seq}").as_str())
            );
            assert_eq!(m.payload, format!("p{seq}"));
            assert_eq!(next_item(&mut from_zero, "follow from 0").await.seq, seq);
        }
        for seq in 3..=5 {
            assert_eq!(next_item(&mut from_middle, "follow from 3").await.seq, seq);
        }

        // Live appends, including concurrent ones, arrive in order without gaps.
        let writer = {
            let log = f.log.clone();
            tokio::spawn(async move {
                for i in 6..=40 {
                    log.append(append("sg.control.t1.live", &format!("p{i}")))
                        .await
                        .unwrap();
                }
            })
        };
        for seq in 6..=40 {
            let m = next_item(&mut from_start, "live follow from 1").await;
            assert_eq!(m.seq, seq);
            assert_eq!(m.payload, format!("p{seq}"));
            assert_eq!(
                next_item(&mut from_middle, "live follow from 3").await.seq,
                seq
            );
            assert_eq!(
                next_item(&mut from_zero, "live follow from 0").await.seq,
                seq
            );
            if seq >= 8 {
                assert_eq!(next_item(&mut ahead, "follow from 8").await.seq, seq);
            }
        }
        bounded("writer", writer).await.unwrap();

        let mut usage = log.follow(StreamName::Usage, 1).await.unwrap();
        let m = next_item(&mut usage, "usage follow").await;
        assert_eq!((m.seq, m.subject.as_str()), (1, "sg.usage.t1.req"));
    }

    /// The usage retention `retention_expires_old_messages` runs with: short enough to see
    /// messages expire within the test, long enough that messages appended after the wait
    /// are still stored when they are read back.
    pub fn short_retention() -> Retention {
        Retention {
            usage: Duration::from_secs(3),
            ..Retention::default()
        }
    }

    /// Bound of the wait for expiry: the retention plus the SQLite sweep interval (1 s) or
    /// JetStream's expiry check (about once per second), with room to spare.
    const EXPIRY_WAIT: Duration = Duration::from_secs(15);

    pub async fn retention_expires_old_messages(f: &Fixture) {
        let log = f.log.as_ref();
        let max_age = short_retention().usage;
        let usage = "sg.usage.t1.req";
        // Older than every usage message, and kept: the control stream keeps everything.
        let control = append_ok(log, append("sg.control.t1.key.a", "c1")).await;
        let appended_at = tokio::time::Instant::now();
        for seq in 1..=3 {
            let appended = append_ok(log, append(usage, &format!("u{seq}"))).await;
            assert_eq!(appended.seq, seq);
        }
        assert_eq!(
            log.bounds(StreamName::Usage).await.unwrap(),
            StreamBounds {
                first_seq: 1,
                last_seq: 3
            },
            "usage messages must be kept until their max age"
        );

        // Wait (bounded) until all three are gone.
        let deadline = appended_at + EXPIRY_WAIT;
        let expired = loop {
            let bounds = log.bounds(StreamName::Usage).await.unwrap();
            let mut stored = Vec::new();
            for seq in 1..=3 {
                if log.get(StreamName::Usage, seq).await.unwrap().is_some() {
                    stored.push(seq);
                }
            }
            if stored.is_empty() && (bounds.first_seq == 0 || bounds.first_seq > 3) {
                break bounds;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "usage messages {stored:?} still stored (bounds {bounds:?}) {:?} after \
                 appending them with a max age of {max_age:?}",
                appended_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Not before their max age (a little slack for the server's clock).
        let elapsed = appended_at.elapsed();
        assert!(
            elapsed >= max_age.mul_f32(0.9),
            "usage messages expired after {elapsed:?}, before their max age {max_age:?}"
        );
        // The stream's sequence did not go back.
        assert_eq!(expired.last_seq, 3, "{expired:?}");

        // The control message is still there.
        assert_eq!(
            log.get(StreamName::Control, control.seq).await.unwrap(),
            Some(LogMessage {
                seq: control.seq,
                subject: "sg.control.t1.key.a".to_owned(),
                payload: Bytes::from_static(b"c1"),
            })
        );
        assert_eq!(
            log.bounds(StreamName::Control).await.unwrap(),
            StreamBounds {
                first_seq: 1,
                last_seq: 1
            }
        );

        // New appends continue the sequence: expired sequences are never reused.
        for seq in 4..=5 {
            let appended = append_ok(log, append(usage, &format!("u{seq}"))).await;
            assert_eq!(
                appended,
                Appended {
                    seq,
                    duplicate: false
                }
            );
        }
        assert_eq!(
            log.bounds(StreamName::Usage).await.unwrap(),
            StreamBounds {
                first_seq: 4,
                last_seq: 5
            }
        );

        // Followers see only what is still stored, in order, from any start at or before it.
        let mut from_start = log.follow(StreamName::Usage, 1).await.unwrap();
        let mut from_expired = log.follow(StreamName::Usage, 2).await.unwrap();
        for seq in 4..=5 {
            let m = next_item(&mut from_start, "follow usage from 1").await;
            assert_eq!(
                (m.seq, m.subject.as_str(), m.payload),
                (seq, usage, Bytes::from(format!("u{seq}")))
            );
            assert_eq!(
                next_item(&mut from_expired, "follow usage from 2")
                    .await
                    .seq,
                seq
            );
        }
        let sixth = append_ok(log, append(usage, "u6")).await;
        assert_eq!(sixth.seq, 6);
        let m = next_item(&mut from_start, "live follow usage from 1").await;
        assert_eq!((m.seq, m.payload), (6, Bytes::from_static(b"u6")));
        assert_eq!(
            next_item(&mut from_expired, "live follow usage from 2")
                .await
                .seq,
            6
        );
    }
}

/// The retention a case's log is built with: the default unless the case names one.
macro_rules! retention {
    () => {
        sg_eventlog::Retention::default()
    };
    ($retention:expr) => {
        $retention
    };
}

macro_rules! conformance {
    ($backend:ident, $make:ident; $($case:ident $(with $retention:expr)?),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::$make(retention!($($retention)?)).await;
                    super::cases::$case(&fixture).await;
                }
            )*
        }
    };
}

macro_rules! conformance_suite {
    ($backend:ident, $make:ident) => {
        conformance!($backend, $make;
            append_batch_results_per_append,
            sequences_per_stream,
            unknown_subject_rejected,
            invalid_names_rejected,
            expected_last_subject_seq,
            concurrent_expected_seq_single_winner,
            last_on_subject_and_quota_keeps_last_only,
            msg_id_dedupe,
            bounds,
            get,
            follow_history_then_live,
            retention_expires_old_messages with super::cases::short_retention(),
        );
    };
}

conformance_suite!(jetstream_conformance, jetstream);
conformance_suite!(sqlite_file_conformance, sqlite_file);
conformance_suite!(sqlite_memory_conformance, sqlite_memory);

// ---------------------------------------------------------------------------------------
// JetStream only

/// Retries an append until the log takes it (the client reconnects in the background).
async fn append_eventually(log: &dyn EventLog, append: Append) -> Appended {
    bounded("append after restart", async {
        loop {
            match log.append(append.clone()).await {
                Ok(appended) => return appended,
                Err(err) if err.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("append after restart: {err}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_follow_survives_server_restart() {
    init_tracing();
    let mut server = NatsServer::start()
        .await
        .expect("a private nats-server is required");
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::connect(&server.url(), jetstream_options())
            .await
            .unwrap(),
    );
    let subject = "sg.control.t1.key.a";
    append_ok(log.as_ref(), with_id(subject, "p1", "id-1")).await;
    append_ok(log.as_ref(), with_id(subject, "p2", "id-2")).await;

    let mut follower = log.follow(StreamName::Control, 1).await.unwrap();
    for seq in 1..=2 {
        assert_eq!(
            next_item(&mut follower, "follow before restart").await.seq,
            seq
        );
    }

    // Clean shutdown: appends fail fast (no hang) while it is down.
    tracing::info!("stopping the server");
    server.stop_gracefully().await.unwrap();
    let during = bounded(
        "append while the server is down",
        log.append(with_id(subject, "p3", "id-3")),
    )
    .await;
    match &during {
        Err(LogError::Unavailable(_)) => {}
        other => panic!("append while the server is down must be Unavailable, got {other:?}"),
    }
    let bounds = bounded("bounds while down", log.bounds(StreamName::Control)).await;
    assert!(bounds.unwrap_err().is_transient());
    let get = bounded("get while down", log.get(StreamName::Control, 1)).await;
    assert!(get.unwrap_err().is_transient());

    server.restart().await.unwrap();
    tracing::info!("server restarted");
    // The append that failed may still have reached the server; retrying with the same id
    // stores it exactly once.
    let third = append_eventually(log.as_ref(), with_id(subject, "p3", "id-3")).await;
    assert_eq!(third.seq, 3);
    let fourth = append_ok(log.as_ref(), with_id(subject, "p4", "id-4")).await;
    assert_eq!(
        fourth,
        Appended {
            seq: 4,
            duplicate: false
        }
    );

    tracing::info!("appended after restart");
    for seq in 3..=4 {
        let m = next_item(&mut follower, "follow after restart").await;
        assert_eq!((m.seq, m.payload), (seq, Bytes::from(format!("p{seq}"))));
    }

    // A crash while the follower is idle: it resumes after the last message it yielded.
    tracing::info!("follower caught up after restart; crashing the server");
    server.restart().await.unwrap();
    tracing::info!("server restarted after crash");
    let fifth = append_eventually(log.as_ref(), with_id(subject, "p5", "id-5")).await;
    assert_eq!(fifth.seq, 5);
    tracing::info!("appended after crash");
    let m = next_item(&mut follower, "follow after crash").await;
    assert_eq!((m.seq, m.payload), (5, Bytes::from_static(b"p5")));
    tracing::info!("follower caught up after crash");
    // The follower yields nothing twice and nothing out of order.
    let sixth = append_ok(log.as_ref(), with_id(subject, "p6", "id-6")).await;
    assert_eq!(
        next_item(&mut follower, "follow after crash").await.seq,
        sixth.seq
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_streams_are_configured_idempotently() {
    let server = NatsServer::start()
        .await
        .expect("a private nats-server is required");
    let log = JetStreamLog::connect(&server.url(), jetstream_options())
        .await
        .unwrap();
    append_ok(&log, append("sg.control.t1.key.a", "x")).await;

    let js = async_nats::jetstream::new(log.client().clone());
    let control = js
        .get_stream("SG_CONTROL")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(control.config.subjects, vec!["sg.control.>".to_owned()]);
    assert_eq!(control.config.max_age, Duration::ZERO);
    assert_eq!(
        control.config.duplicate_window,
        Duration::from_secs(24 * 3600)
    );
    assert_eq!(
        control.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(
        control.config.retention,
        async_nats::jetstream::stream::RetentionPolicy::Limits
    );
    assert_eq!(control.config.num_replicas, 1);
    let usage = js
        .get_stream("SG_USAGE")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(usage.config.subjects, vec!["sg.usage.>".to_owned()]);
    assert_eq!(usage.config.max_age, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(usage.config.duplicate_window, Duration::from_secs(600));

    // Starting again keeps the data and applies a changed usage retention.
    let again = JetStreamLog::connect(
        &server.url(),
        JetStreamOptions {
            retention: Retention {
                usage: Duration::from_secs(7 * 24 * 3600),
                ..Retention::default()
            },
            ..jetstream_options()
        },
    )
    .await
    .unwrap();
    assert_eq!(again.bounds(StreamName::Control).await.unwrap().last_seq, 1);
    let usage = js
        .get_stream("SG_USAGE")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(usage.config.max_age, Duration::from_secs(7 * 24 * 3600));
}

#[tokio::test]
async fn jetstream_connect_without_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = bounded(
        "connect",
        JetStreamLog::connect(&format!("nats://127.0.0.1:{port}"), jetstream_options()),
    )
    .await;
    assert!(
        matches!(result, Err(LogError::Unavailable(_))),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------
// SQLite only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("embedded").join("log.db");
    let subject = "sg.control.t1.key.a";
    {
        let log = SqliteLog::open(&path).await.unwrap();
        append_ok(&log, with_id(subject, "p1", "id-1")).await;
        append_ok(&log, expecting(subject, "p2", 1)).await;
        append_ok(&log, append("sg.usage.t1.req", "u1")).await;
        let mut follower = log.follow(StreamName::Control, 1).await.unwrap();
        assert_eq!(
            next_item(&mut follower, "follow before reopen").await.seq,
            1
        );
        drop(follower);
        log.close().await;
    }
    assert!(path.is_file());

    let log = SqliteLog::open(&path).await.unwrap();
    assert_eq!(
        log.bounds(StreamName::Control).await.unwrap(),
        StreamBounds {
            first_seq: 1,
            last_seq: 2
        }
    );
    assert_eq!(
        log.bounds(StreamName::Usage).await.unwrap(),
        StreamBounds {
            first_seq: 1,
            last_seq: 1
        }
    );
    assert_eq!(
        log.get(StreamName::Control, 2)
            .await
            .unwrap()
            .unwrap()
            .payload,
        "p2"
    );
    // Message ids and subject sequences survive.
    assert_eq!(
        append_ok(&log, with_id(subject, "again", "id-1")).await,
        Appended {
            seq: 1,
            duplicate: true
        }
    );
    let stale = log.append(expecting(subject, "p3", 1)).await;
    assert!(
        matches!(stale, Err(LogError::WrongLastSequence { .. })),
        "{stale:?}"
    );
    assert_eq!(append_ok(&log, expecting(subject, "p3", 2)).await.seq, 3);

    let mut follower = log.follow(StreamName::Control, 1).await.unwrap();
    for seq in 1..=3 {
        assert_eq!(
            next_item(&mut follower, "follow after reopen").await.seq,
            seq
        );
    }
    // A follower from a later sequence yields the rest, then new appends.
    let mut rest = log.follow(StreamName::Control, 2).await.unwrap();
    for seq in 2..=3 {
        let m = next_item(&mut rest, "follow from 2 after reopen").await;
        assert_eq!((m.seq, m.payload), (seq, Bytes::from(format!("p{seq}"))));
    }
    assert_eq!(append_ok(&log, append(subject, "p4")).await.seq, 4);
    assert_eq!(
        next_item(&mut rest, "live follow after reopen").await.seq,
        4
    );
    assert_eq!(
        next_item(&mut follower, "live follow after reopen")
            .await
            .seq,
        4
    );
}
