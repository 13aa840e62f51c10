//! Where to start reading a stream: the first event written at or after a given time,
//! found by binary search over [`EventLog::get`].

use sg_eventlog::{EventLog, LogError, StreamName};

/// How many consecutive missing (or unreadable) sequences a probe skips before it gives
/// up on finding a time there; the search then starts earlier, which only replays more.
const MAX_PROBE: u64 = 1_000;

/// The first sequence of `stream` whose envelope `time` is at or after `since` (unix
/// seconds); the sequence after the last when every event is older; 1 for an empty
/// stream. Assumes times roughly follow sequences (writers stamp events as they write
/// them). Sequences that are missing (deleted, never written) or do not decode are
/// stepped over; where too many in a row are, the answer errs earlier.
pub async fn first_seq_since(
    log: &dyn EventLog,
    stream: StreamName,
    since: i64,
) -> Result<u64, LogError> {
    let bounds = log.bounds(stream).await?;
    if bounds.last_seq == 0 {
        return Ok(1);
    }
    // Invariant: every readable event before `lo` is older than `since`, and the answer
    // is at most `hi` (the events from `hi` on are recent enough, or there are none).
    let mut lo = bounds.first_seq.max(1);
    let mut hi = bounds.last_seq.saturating_add(1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe(log, stream, mid, hi).await? {
            Some((seq, at)) if at < since => lo = seq + 1,
            // Recent enough, with nothing readable between `mid` and it; or nothing
            // readable from `mid` on: starting at `mid` misses nothing.
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The first readable event at or after `from` and before `to`: its sequence and time.
async fn probe(
    log: &dyn EventLog,
    stream: StreamName,
    from: u64,
    to: u64,
) -> Result<Option<(u64, i64)>, LogError> {
    let end = to.min(from.saturating_add(MAX_PROBE));
    for seq in from..end {
        if let Some(msg) = log.get(stream, seq).await?
            && let Ok(env) = sg_events::decode(&msg.payload)
        {
            return Ok(Some((seq, env.time.unix_timestamp())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use sg_eventlog::Append;
    use sg_eventlog::sqlite::SqliteLog;
    use sg_events::{Actor, Envelope, Event, LockViolatedV1, ProjectId, TenantId};
    use time::OffsetDateTime;

    /// A `lock.violated` stamped at `at` (unix seconds), encoded.
    fn event_at(tenant: &TenantId, project: &ProjectId, at: i64) -> (String, Vec<u8>) {
        let mut env = Envelope::new(
            tenant.clone(),
            Actor::node("test"),
            Event::LockViolated(LockViolatedV1 {
                request_id: uuid_v7(),
                project_id: project.clone(),
                key_id: sg_events::KeyId::generate(),
                code: "ip_not_allowed".into(),
                client_ip: [127, 0, 0, 3].into(),
                country: None,
                city: None,
                device_hash: None,
                model: None,
                endpoint: "/v1/chat/completions".into(),
                node: "test".into(),
            }),
        );
        env.time = OffsetDateTime::from_unix_timestamp(at).unwrap();
        (env.subject(), sg_events::encode(&env))
    }

    fn uuid_v7() -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }

    async fn append(log: &SqliteLog, subject: &str, payload: Vec<u8>) -> u64 {
        log.append(Append {
            subject: subject.to_owned(),
            payload: payload.into(),
            expected_last_subject_seq: None,
            msg_id: None,
        })
        .await
        .unwrap()
        .seq
    }

    /// A log in a file (so that a second connection can delete messages), with events at
    /// the given times on the signals stream.
    async fn log_with(times: &[i64]) -> (tempfile::TempDir, SqliteLog, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(&dir.path().join("events.db"))
            .await
            .unwrap();
        let (t, p) = (TenantId::generate(), ProjectId::generate());
        let mut seqs = Vec::new();
        for &at in times {
            let (subject, payload) = event_at(&t, &p, at);
            seqs.push(append(&log, &subject, payload).await);
        }
        (dir, log, seqs)
    }

    async fn delete(dir: &tempfile::TempDir, seqs: &[u64]) {
        use sqlx::ConnectOptions as _;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("events.db"))
            .connect()
            .await
            .unwrap();
        for seq in seqs {
            sqlx::query("DELETE FROM sg_log_messages WHERE stream = 'SG_SIGNALS' AND seq = ?")
                .bind(i64::try_from(*seq).unwrap())
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    const S: StreamName = StreamName::Signals;

    #[tokio::test]
    async fn finds_the_first_event_at_or_after_the_time() {
        let times: Vec<i64> = (0..100).map(|i| 1_000 + i * 10).collect();
        let (_dir, log, seqs) = log_with(&times).await;
        for (i, &at) in times.iter().enumerate() {
            // Exactly at an event's time: that event; just after: the next.
            assert_eq!(first_seq_since(&log, S, at).await.unwrap(), seqs[i]);
            assert_eq!(
                first_seq_since(&log, S, at + 1).await.unwrap(),
                seqs[i] + 1,
                "after {at}"
            );
        }
        // Everything is recent: the first; nothing is: after the last.
        assert_eq!(first_seq_since(&log, S, 0).await.unwrap(), seqs[0]);
        assert_eq!(
            first_seq_since(&log, S, 99_999).await.unwrap(),
            seqs[99] + 1
        );
    }

    #[tokio::test]
    async fn an_empty_stream_starts_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(&dir.path().join("events.db"))
            .await
            .unwrap();
        assert_eq!(first_seq_since(&log, S, 0).await.unwrap(), 1);
        assert_eq!(
            first_seq_since(&log, StreamName::Usage, 5).await.unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn steps_over_missing_and_unreadable_sequences() {
        // Events at 1000, 1010, … 1990; some deleted, some not events at all.
        let times: Vec<i64> = (0..100).map(|i| 1_000 + i * 10).collect();
        let (dir, log, seqs) = log_with(&times).await;
        let gone: Vec<u64> = seqs[40..60].to_vec();
        delete(&dir, &gone).await;
        let junk = append(&log, "sg.signals.t_x.p_x", b"not an event".to_vec()).await;
        // Before the gap: exact.
        assert_eq!(first_seq_since(&log, S, 1_300).await.unwrap(), seqs[30]);
        // Inside the gap: the first event after it, or a deleted sequence just before it
        // (following from there yields the same events).
        let start = first_seq_since(&log, S, 1_450).await.unwrap();
        assert!(
            (seqs[40]..=seqs[60]).contains(&start),
            "{start} not in {}..={}",
            seqs[40],
            seqs[60]
        );
        let start = first_seq_since(&log, S, 1_600).await.unwrap();
        assert!((seqs[40]..=seqs[60]).contains(&start), "{start}");
        assert_eq!(first_seq_since(&log, S, 1_601).await.unwrap(), seqs[61]);
        // Newer than every event: past the last event (the junk counts as nothing).
        let start = first_seq_since(&log, S, 5_000).await.unwrap();
        assert!(start == seqs[99] + 1 || start == junk + 1, "{start}");
        // The oldest events deleted (retention): never before what is left.
        delete(&dir, &seqs[..10]).await;
        let first = log.bounds(S).await.unwrap().first_seq;
        assert_eq!(first, seqs[10]);
        assert_eq!(first_seq_since(&log, S, 0).await.unwrap(), seqs[10]);
        assert_eq!(first_seq_since(&log, S, 1_200).await.unwrap(), seqs[20]);
    }
}
