//! A live follower whose consumer's server dies while the follower's own connection
//! survives resumes and delivers what was written meanwhile. It prints how long that
//! took (`--nocapture`): about 20 s when only the library's missed heartbeats noticed,
//! about 7 s since the follower asks the stream after 2 s without a message (2 s, plus
//! a consumer creation that times out once while the cluster still places consumers on
//! the dead server).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sg_eventlog::jetstream::{JetStreamLog, JetStreamOptions};
use sg_eventlog::{Append, EventLog, StreamName};

fn options() -> JetStreamOptions {
    JetStreamOptions {
        replicas: 3,
        ..Default::default()
    }
}

fn append(n: u64) -> Append {
    Append {
        subject: format!("sg.control.ten_x.key.key_{n}"),
        payload: Bytes::from(format!("{n}")),
        expected_last_subject_seq: None,
        msg_id: None,
    }
}

/// The server that holds the stream's newest consumer (the follower's latest; earlier
/// attempts' consumers linger until they expire).
async fn consumer_server(url: &str) -> Option<String> {
    let client = async_nats::connect(url).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("SG_CONTROL").await.ok()?;
    let mut consumers = stream.consumers();
    let mut newest: Option<(time::OffsetDateTime, Option<String>)> = None;
    while let Some(Ok(info)) = consumers.next().await {
        if newest.as_ref().is_none_or(|(at, _)| info.created > *at) {
            newest = Some((info.created, info.cluster.and_then(|c| c.leader)));
        }
    }
    newest.and_then(|(_, leader)| leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_consumer_node_dies_resumes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = sg_testkit::NatsCluster::start().await.unwrap();
    // The follower's connection goes to node 1 (n1) only.
    let reader = JetStreamLog::connect(&cluster.url(0), options())
        .await
        .unwrap();
    reader.append(append(0)).await.unwrap();
    let mut found = None;
    for _ in 0..20 {
        let mut follow = reader.follow(StreamName::Control, 1).await.unwrap();
        follow.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        match consumer_server(&cluster.url(0)).await.as_deref() {
            Some("n2") => found = Some((1, follow)),
            Some("n3") => found = Some((2, follow)),
            _ => {}
        }
        if found.is_some() {
            break;
        }
    }
    let (node, mut follow) = found.expect("the consumer never landed on another node");
    let writer_node = if node == 1 { 2 } else { 1 };
    let writer = JetStreamLog::connect(&cluster.url(writer_node), options())
        .await
        .unwrap();
    cluster.kill(node).await;
    let killed = Instant::now();
    // Writes keep coming (they land once the stream has a leader again).
    let mut n = 1;
    let mut landed = None;
    let got = loop {
        if writer.append(append(n)).await.is_ok() && landed.is_none() {
            landed = Some(killed.elapsed());
        }
        n += 1;
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(200), follow.next()).await
        {
            break m;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no resume in 60 s"
        );
    };
    // Nothing was skipped: the first message after the one read before the kill.
    assert_eq!(
        got.seq, 2,
        "the follower resumed past the first write after the kill"
    );
    println!(
        "FOLLOWER resumed {:?} after its consumer's node died (seq {}); the first write after the kill was stored at {landed:?}",
        killed.elapsed(),
        got.seq
    );
}
