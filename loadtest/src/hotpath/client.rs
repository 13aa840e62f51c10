//! The load generator: bare hyper 1 HTTP/1.1 connections, one per worker, kept alive
//! for the whole phase, so that the client costs as little as an HTTP client can.
//!
//! Two phases: a closed loop (each worker sends its next request as soon as the
//! previous answer has been read whole) and a streamed one (one request at a time,
//! timing the first byte and each content event of the SSE answer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::upstream::{MODEL, PATH};

/// Longest a request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Highest latency the histograms track, µs (values above are clamped).
const MAX_TRACKED_US: u64 = 60_000_000;
/// Characters of an error kept for the report.
const DETAIL_CHARS: usize = 300;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
}

impl Target {
    /// `url` is `http://127.0.0.1:PORT`.
    pub fn new(name: &'static str, url: &str, bearer: &str) -> anyhow::Result<Self> {
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("{url} is not an http:// URL"))?;
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("{url} is not an IP address and port"))?;
        Ok(Self {
            name,
            addr,
            host: HeaderValue::from_str(authority)?,
            authorization: HeaderValue::from_str(&format!("Bearer {bearer}"))?,
        })
    }
}

/// The request body: the same for every target.
pub fn chat_body(stream: bool) -> Bytes {
    let stream = if stream { r#","stream":true"# } else { "" };
    Bytes::from(format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hello world"}}]{stream}}}"#
    ))
}

pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn clip(text: &str) -> String {
    text.chars().take(DETAIL_CHARS).collect()
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// What one request gave.
struct Answer {
    /// The status was 2xx (the gateway accounts for these).
    success: bool,
    /// `Err(reason)` when it does not count as ok.
    outcome: Result<(), String>,
    /// The connection cannot be used again.
    broken: bool,
}

fn request(target: &Target, body: &Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(Method::POST)
        .uri(PATH)
        .header(HOST, target.host.clone())
        .header(AUTHORIZATION, target.authorization.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(body.clone()))?)
}

/// Sends one request and reads its body whole; ok when 2xx and holding `expect`.
async fn send_one(sender: &mut Sender, target: &Target, body: &Bytes, expect: &[u8]) -> Answer {
    let failed = |reason: String| Answer {
        success: false,
        outcome: Err(reason),
        broken: true,
    };
    if let Err(e) = sender.ready().await {
        return failed(format!("connection closed: {e}"));
    }
    let request = match request(target, body) {
        Ok(r) => r,
        Err(e) => return failed(format!("building the request: {e}")),
    };
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return failed(format!("transport error: {e}")),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return failed(format!("body error: {e}")),
    };
    let outcome = if !status.is_success() {
        Err(format!(
            "HTTP {status}: {}",
            clip(&String::from_utf8_lossy(&body))
        ))
    } else if !contains(&body, expect) {
        Err(format!(
            "HTTP {status} without {:?}: {}",
            String::from_utf8_lossy(expect),
            clip(&String::from_utf8_lossy(&body))
        ))
    } else {
        Ok(())
    };
    Answer {
        success: status.is_success(),
        outcome,
        broken: false,
    }
}

/// One closed-loop phase's figures.
#[derive(Debug)]
pub struct LoopRun {
    /// Requests that ended ok in the measured window.
    pub ok: u64,
    /// Requests that failed in the measured window.
    pub errors: u64,
    pub first_error: Option<String>,
    /// 2xx answers over the whole phase, warm-up included.
    pub success_total: u64,
    /// Requests sent over the whole phase, warm-up included.
    pub sent_total: u64,
    /// Latency of the measured ok requests, µs.
    pub latency: Histogram<u64>,
    /// From the start of the measured window to its last answer.
    pub elapsed: Duration,
}

impl LoopRun {
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

struct WorkerRun {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    success_total: u64,
    sent_total: u64,
    latency: Histogram<u64>,
    last_end: Option<Instant>,
}

async fn worker(
    target: Arc<Target>,
    body: Bytes,
    expect: &'static [u8],
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<WorkerRun> {
    let mut run = WorkerRun {
        ok: 0,
        errors: 0,
        first_error: None,
        success_total: 0,
        sent_total: 0,
        latency: histogram()?,
        last_end: None,
    };
    let mut sender: Option<Sender> = None;
    loop {
        if Instant::now() >= end {
            break;
        }
        let mut live = match sender.take() {
            Some(s) => s,
            None => match connect(target.addr).await {
                Ok(s) => s,
                Err(e) => {
                    if Instant::now() >= measure_from {
                        run.errors += 1;
                        run.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, send_one(&mut live, &target, &body, expect))
                .await
                .unwrap_or_else(|_| Answer {
                    success: false,
                    outcome: Err(format!("timeout after {REQUEST_TIMEOUT:?}")),
                    broken: true,
                });
        let done = Instant::now();
        run.sent_total += 1;
        if answer.success {
            run.success_total += 1;
        }
        if !answer.broken {
            sender = Some(live);
        }
        if sent >= measure_from && sent < end {
            run.last_end = Some(done);
            match answer.outcome {
                Ok(()) => {
                    run.ok += 1;
                    run.latency.saturating_record(micros(done - sent));
                }
                Err(reason) => {
                    run.errors += 1;
                    run.first_error.get_or_insert(reason);
                }
            }
        }
    }
    Ok(run)
}

/// What happens at the edges of the measured window (CPU readings, a profiler).
pub trait Window {
    fn opened(&mut self);
    fn closed(&mut self);
}

/// `concurrency` workers, each on its own kept-alive connection, sending back to back
/// for `warmup` (not recorded) then `duration`.
pub async fn closed_loop(
    target: &Target,
    stream: bool,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    window: &mut dyn Window,
) -> anyhow::Result<LoopRun> {
    let target = Arc::new(target.clone());
    let body = chat_body(stream);
    let expect: &'static [u8] = if stream {
        b"data: [DONE]"
    } else {
        b"\"choices\""
    };
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(worker(
            target.clone(),
            body.clone(),
            expect,
            measure_from,
            end,
        ));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    window.opened();
    tokio::time::sleep_until(end.into()).await;
    window.closed();
    let mut run = LoopRun {
        ok: 0,
        errors: 0,
        first_error: None,
        success_total: 0,
        sent_total: 0,
        latency: histogram()?,
        elapsed: Duration::ZERO,
    };
    let mut last_end = end;
    while let Some(joined) = workers.join_next().await {
        let w = joined.context("a load worker stopped abnormally")??;
        run.ok += w.ok;
        run.errors += w.errors;
        run.success_total += w.success_total;
        run.sent_total += w.sent_total;
        if run.first_error.is_none() {
            run.first_error = w.first_error;
        }
        run.latency.add(&w.latency)?;
        if let Some(t) = w.last_end {
            last_end = last_end.max(t);
        }
    }
    run.elapsed = last_end - measure_from;
    Ok(run)
}

/// One streamed phase's figures.
#[derive(Debug)]
pub struct StreamRun {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub success_total: u64,
    pub sent_total: u64,
    /// From the send to the first byte of the body, µs.
    pub first_byte: Histogram<u64>,
    /// Between two consecutive content events, µs.
    pub gaps: Histogram<u64>,
    /// From the send to the end of the body, µs.
    pub total: Histogram<u64>,
}

/// The timing of one streamed answer.
struct Timing {
    first_byte: Duration,
    /// When each content event was complete, from the send.
    content: Vec<Duration>,
    total: Duration,
}

/// Sends one streamed request, timing its body frame by frame.
async fn stream_one(
    sender: &mut Sender,
    target: &Target,
    body: &Bytes,
    chunks: u32,
) -> (Answer, Option<Timing>) {
    let failed = |reason: String| {
        (
            Answer {
                success: false,
                outcome: Err(reason),
                broken: true,
            },
            None,
        )
    };
    if let Err(e) = sender.ready().await {
        return failed(format!("connection closed: {e}"));
    }
    let request = match request(target, body) {
        Ok(r) => r,
        Err(e) => return failed(format!("building the request: {e}")),
    };
    let sent = Instant::now();
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return failed(format!("transport error: {e}")),
    };
    let status = response.status();
    let mut incoming = response.into_body();
    let mut first_byte = None;
    let mut content = Vec::with_capacity(chunks as usize);
    let mut pending = BytesMut::new();
    let mut done = false;
    let mut kept = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return failed(format!("body error: {e}")),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = sent.elapsed();
        first_byte.get_or_insert(now);
        if kept.len() < DETAIL_CHARS {
            kept.extend_from_slice(&data);
        }
        pending.extend_from_slice(&data);
        while let Some(at) = pending.windows(2).position(|w| w == b"\n\n") {
            let event = pending.split_to(at + 2);
            if contains(&event, b"\"delta\"") {
                content.push(now);
            } else if contains(&event, b"data: [DONE]") {
                done = true;
            }
        }
    }
    let total = sent.elapsed();
    let outcome = if !status.is_success() {
        Err(format!(
            "HTTP {status}: {}",
            clip(&String::from_utf8_lossy(&kept))
        ))
    } else if !done || content.len() != chunks as usize {
        Err(format!(
            "HTTP {status}: {} content events of {chunks}, [DONE] {}: {}",
            content.len(),
            if done { "seen" } else { "missing" },
            clip(&String::from_utf8_lossy(&kept))
        ))
    } else {
        Ok(())
    };
    let timing = outcome.is_ok().then(|| Timing {
        first_byte: first_byte.unwrap_or(total),
        content,
        total,
    });
    (
        Answer {
            success: status.is_success(),
            outcome,
            broken: false,
        },
        timing,
    )
}

/// `warmup + requests` streamed requests one after the other on one connection; the
/// last `requests` are measured.
pub async fn streamed(
    target: &Target,
    chunks: u32,
    warmup: u32,
    requests: u32,
) -> anyhow::Result<StreamRun> {
    let body = chat_body(true);
    let mut run = StreamRun {
        ok: 0,
        errors: 0,
        first_error: None,
        success_total: 0,
        sent_total: 0,
        first_byte: histogram()?,
        gaps: histogram()?,
        total: histogram()?,
    };
    let mut sender: Option<Sender> = None;
    for i in 0..warmup + requests {
        let measured = i >= warmup;
        let mut live = match sender.take() {
            Some(s) => s,
            None => connect(target.addr).await?,
        };
        let (answer, timing) = tokio::time::timeout(
            REQUEST_TIMEOUT,
            stream_one(&mut live, target, &body, chunks),
        )
        .await
        .unwrap_or_else(|_| {
            (
                Answer {
                    success: false,
                    outcome: Err(format!("timeout after {REQUEST_TIMEOUT:?}")),
                    broken: true,
                },
                None,
            )
        });
        run.sent_total += 1;
        if answer.success {
            run.success_total += 1;
        }
        if !answer.broken {
            sender = Some(live);
        }
        if !measured {
            continue;
        }
        match (answer.outcome, timing) {
            (Ok(()), Some(t)) => {
                run.ok += 1;
                run.first_byte.saturating_record(micros(t.first_byte));
                run.total.saturating_record(micros(t.total));
                for pair in t.content.windows(2) {
                    if let [a, b] = pair {
                        run.gaps.saturating_record(micros(b.saturating_sub(*a)));
                    }
                }
            }
            (Err(reason), _) => {
                run.errors += 1;
                run.first_error.get_or_insert(reason);
            }
            (Ok(()), None) => run.errors += 1,
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{self, StreamShape};

    struct Nothing;
    impl Window for Nothing {
        fn opened(&mut self) {}
        fn closed(&mut self) {}
    }

    #[test]
    fn bodies() {
        let plain: serde_json::Value = serde_json::from_slice(&chat_body(false)).unwrap();
        assert_eq!(plain["model"], MODEL);
        assert!(plain.get("stream").is_none());
        assert!(upstream::wants_stream(&chat_body(true)));
        assert!(!upstream::wants_stream(&chat_body(false)));
    }

    #[tokio::test]
    async fn loops_and_streams_against_the_upstream() {
        let (addr, task) = upstream::start(&StreamShape {
            chunks: 4,
            gap: Duration::from_millis(2),
        })
        .await
        .unwrap();
        let target = Target::new("direct", &format!("http://{addr}"), "sk-x").unwrap();
        let run = closed_loop(
            &target,
            false,
            2,
            Duration::from_millis(50),
            Duration::from_millis(200),
            &mut Nothing,
        )
        .await
        .unwrap();
        assert!(run.ok > 10, "{run:?}");
        assert_eq!(run.errors, 0, "{run:?}");
        assert_eq!(run.success_total, run.sent_total);
        let s = streamed(&target, 4, 2, 5).await.unwrap();
        assert_eq!((s.ok, s.errors, s.sent_total), (5, 0, 7), "{s:?}");
        assert_eq!(s.gaps.len(), 15);
        assert!(s.gaps.min() >= 1500, "{}", s.gaps.min());
        task.abort();
    }
}
