#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> SpoolConfig {
    SpoolConfig {
        max_bytes: 1 << 30,
        segment_bytes: 256,
    }
}

async fn read_n(reader: &mut SpoolReader, n: usize) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(WAIT, reader.next_batch(n - out.len()))
            .await
            .expect("records did not arrive")
            .unwrap();
        out.extend(batch);
    }
    out
}

fn payloads(records: &[(u64, Bytes)]) -> Vec<String> {
    records
        .iter()
        .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn records_come_back_in_order_and_survive_a_crash_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader) = Spool::open(dir.path(), config()).unwrap();
    for i in 0..50 {
        spool.append(format!("record-{i}").into_bytes()).unwrap();
    }
    let first = read_n(&mut reader, 20).await;
    assert_eq!(first[0].0, 1);
    assert_eq!(payloads(&first)[19], "record-19");
    reader.ack_through(first[19].0);
    assert_eq!(spool.pending(), 30);
    assert!(spool.synced(WAIT).await);
    // A crash: nothing but the files survives (the acknowledged mark is persisted when
    // the writer closes, as it is every 100 ms while running).
    spool.close();
    drop(reader);

    let (spool, mut reader) = Spool::open(dir.path(), config()).unwrap();
    assert_eq!(spool.pending(), 30);
    let again = read_n(&mut reader, 30).await;
    assert_eq!(again[0].0, 21);
    assert_eq!(payloads(&again)[29], "record-49");
    // New records continue the numbering.
    assert_eq!(spool.append(b"next".to_vec()).unwrap(), 51);
    let last = read_n(&mut reader, 1).await;
    reader.ack_through(last[0].0);
    assert!(spool.drained(WAIT).await);
    spool.close();
    // Everything acknowledged: only the segment being written remains.
    let segments = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert_eq!(segments, 1);
    let (spool, _reader) = Spool::open(dir.path(), config()).unwrap();
    assert_eq!(spool.pending(), 0);
}

#[tokio::test]
async fn unacknowledged_records_are_read_again_after_a_restart_without_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, mut reader) = Spool::open(dir.path(), config()).unwrap();
        for i in 0..5 {
            spool.append(format!("r{i}").into_bytes()).unwrap();
        }
        let records = read_n(&mut reader, 5).await;
        assert_eq!(records.len(), 5);
        // Read but never acknowledged, then the process dies (no close).
        assert!(spool.synced(WAIT).await);
    }
    let (_spool, mut reader) = Spool::open(dir.path(), config()).unwrap();
    assert_eq!(
        payloads(&read_n(&mut reader, 5).await),
        ["r0", "r1", "r2", "r3", "r4"]
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_came_before_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _reader) = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    for i in 0..3 {
        spool.append(format!("r{i}").into_bytes()).unwrap();
    }
    spool.close();
    let segment = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    // Half a record: a header promising 100 bytes, and 3 of them.
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&100u32.to_le_bytes()).unwrap();
    file.write_all(&0u32.to_le_bytes()).unwrap();
    file.write_all(b"abc").unwrap();
    drop(file);
    let (spool, mut reader) = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    assert_eq!(payloads(&read_n(&mut reader, 3).await), ["r0", "r1", "r2"]);
    assert_eq!(spool.append(b"r3".to_vec()).unwrap(), 4);
    assert_eq!(payloads(&read_n(&mut reader, 1).await), ["r3"]);
}

#[tokio::test]
async fn a_full_spool_says_so_but_keeps_what_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader) = Spool::open(
        dir.path(),
        SpoolConfig {
            max_bytes: 100,
            segment_bytes: 1 << 20,
        },
    )
    .unwrap();
    for _ in 0..10 {
        spool.append(vec![b'x'; 20]).unwrap();
    }
    assert!(spool.is_full());
    let records = read_n(&mut reader, 10).await;
    reader.ack_through(records[9].0);
    assert!(!spool.is_full());
    assert_eq!(spool.pending_bytes(), 0);
}

#[tokio::test]
async fn many_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader) = Spool::open(dir.path(), config()).unwrap();
    let mut handles = Vec::new();
    for t in 0..8 {
        let spool = spool.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..250 {
                spool.append(format!("{t}-{i}").into_bytes()).unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let records = read_n(&mut reader, 2000).await;
    let indices: Vec<u64> = records.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (1..=2000).collect::<Vec<_>>());
    let mut seen: Vec<String> = payloads(&records);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2000);
}
