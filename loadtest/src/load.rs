//! The load generators: open loop at a constant rate, and closed loop at a fixed
//! concurrency. Both stop by themselves: the number of requests and the time are
//! bounded, every request has a timeout, and the tail is abandoned after a limit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::report::{Latency, TargetReport};
use crate::schedule::{Schedule, per_second};

/// Highest latency the histograms track, in microseconds (longer ones are clamped).
const MAX_TRACKED_US: u64 = 3_600_000_000;
/// Requests one closed-loop client may send at most.
const MAX_PER_CLIENT: u64 = 100_000_000;
/// Characters of an error body kept for the report.
const DETAIL_CHARS: usize = 300;

/// Where requests go and what they carry.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    /// The full URL of the chat completions endpoint.
    pub url: String,
    /// The `Authorization` header value.
    pub authorization: String,
    pub body: Vec<u8>,
    /// Whether the request asks for a streamed (SSE) answer.
    pub stream: bool,
}

/// The request body both targets receive.
pub fn chat_body(stream: bool) -> Vec<u8> {
    let mut body = serde_json::json!({
        "model": "mock-gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello world"}],
    });
    if stream {
        body["stream"] = serde_json::Value::Bool(true);
    }
    body.to_string().into_bytes()
}

/// One shared, pooled HTTP/1.1 client for one target.
pub fn client(pool: usize, timeout: Duration) -> reqwest::Result<Client> {
    Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(timeout)
        .build()
}

/// Why a request did not count as ok.
#[derive(Debug)]
struct Failure {
    kind: String,
    detail: String,
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "transport error"
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Failure {
        kind: kind.into(),
        detail,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends one request and reads its whole body.
async fn send_one(client: &Client, target: &Target) -> Result<(), Failure> {
    let response = client
        .post(&target.url)
        .header(AUTHORIZATION, &target.authorization)
        .header(CONTENT_TYPE, "application/json")
        .body(target.body.clone())
        .send()
        .await
        .map_err(|e| transport_failure(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| transport_failure(&e))?;
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .take(DETAIL_CHARS)
            .collect();
        return Err(Failure {
            kind: format!("HTTP {}", status.as_u16()),
            detail: format!("HTTP {status}: {text}"),
        });
    }
    let expected: &[u8] = if target.stream {
        b"data: [DONE]"
    } else {
        b"\"choices\""
    };
    if !contains(&body, expected) {
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .take(DETAIL_CHARS)
            .collect();
        return Err(Failure {
            kind: "unexpected body".into(),
            detail: format!(
                "HTTP {status} without {:?}: {text}",
                String::from_utf8_lossy(expected)
            ),
        });
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What one target's measured requests did.
struct Recorder {
    name: &'static str,
    intended: Histogram<u64>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: u64,
    dropped: u64,
    error_kinds: BTreeMap<String, u64>,
    first_error: Option<String>,
    last_end: Option<Instant>,
}

impl Recorder {
    fn new(name: &'static str) -> anyhow::Result<Self> {
        let histogram = || Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, 3);
        Ok(Recorder {
            name,
            intended: histogram()?,
            service: histogram()?,
            lag: histogram()?,
            sent: 0,
            ok: 0,
            errors: 0,
            dropped: 0,
            error_kinds: BTreeMap::new(),
            first_error: None,
            last_end: None,
        })
    }

    fn record(
        &mut self,
        intended: Instant,
        sent: Instant,
        done: Instant,
        result: Result<(), Failure>,
    ) {
        self.sent += 1;
        self.lag
            .saturating_record(micros(sent.saturating_duration_since(intended)));
        self.last_end = Some(self.last_end.map_or(done, |t| t.max(done)));
        match result {
            Ok(()) => {
                self.ok += 1;
                self.intended
                    .saturating_record(micros(done.saturating_duration_since(intended)));
                self.service
                    .saturating_record(micros(done.saturating_duration_since(sent)));
            }
            Err(f) => self.error(f),
        }
    }

    fn error(&mut self, f: Failure) {
        self.errors += 1;
        *self.error_kinds.entry(f.kind).or_insert(0) += 1;
        if self.first_error.is_none() {
            self.first_error = Some(f.detail);
        }
    }

    fn report(&self, measure_from: Instant) -> TargetReport {
        let elapsed = self.last_end.map_or(Duration::ZERO, |end| {
            end.saturating_duration_since(measure_from)
        });
        TargetReport {
            name: self.name.into(),
            sent: self.sent,
            ok: self.ok,
            errors: self.errors,
            dropped: self.dropped,
            elapsed_secs: elapsed.as_secs_f64(),
            throughput: per_second(self.ok, elapsed),
            intended: Latency::from_histogram(&self.intended),
            service: Latency::from_histogram(&self.service),
            lag: Latency::from_histogram(&self.lag),
            error_kinds: self.error_kinds.clone(),
            first_error: self.first_error.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for the tasks for at most `limit`, then abandons the rest; returns how
/// many were abandoned.
async fn drain(tasks: &mut JoinSet<()>, limit: Duration) -> u64 {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(limit, all).await.is_ok() {
        return 0;
    }
    let left = tasks.len() as u64;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    left
}

fn abandoned(rec: &Mutex<Recorder>, count: u64) {
    let mut rec = lock(rec);
    for _ in 0..count {
        rec.sent += 1;
        rec.error(Failure {
            kind: "unfinished at the end of the run".into(),
            detail: "the request was still running when the run ended".into(),
        });
    }
}

/// Sends requests on the schedule's timeline, each in its own task, whatever
/// the earlier ones are doing. A request finding `max_in_flight` requests still
/// running is not sent and counts as dropped.
///
/// The timeline is kept by a dedicated thread sleeping with the operating
/// system's timer (finer than the runtime's millisecond timer); it hands each
/// request to the current runtime when it is due.
pub async fn open_loop(
    client: Client,
    target: Arc<Target>,
    schedule: Schedule,
    max_in_flight: usize,
    drain_limit: Duration,
) -> anyhow::Result<TargetReport> {
    let rec = Arc::new(Mutex::new(Recorder::new(target.name)?));
    let runtime = Handle::current();
    let dispatch_rec = rec.clone();
    let (measure_from, mut tasks) = tokio::task::spawn_blocking(move || {
        dispatch(
            &runtime,
            &client,
            &target,
            schedule,
            max_in_flight,
            &dispatch_rec,
        )
    })
    .await?;
    let left = drain(&mut tasks, drain_limit).await;
    abandoned(&rec, left);
    let report = lock(&rec).report(measure_from);
    Ok(report)
}

/// Keeps the timeline; returns when the first measured request was due, and
/// the requests still running.
fn dispatch(
    runtime: &Handle,
    client: &Client,
    target: &Arc<Target>,
    schedule: Schedule,
    max_in_flight: usize,
    rec: &Arc<Mutex<Recorder>>,
) -> (Instant, JoinSet<()>) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    let start = Instant::now() + Duration::from_millis(5);
    for index in 0..schedule.total() {
        let intended = start + schedule.offset(index);
        let wait = intended.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        while tasks.try_join_next().is_some() {}
        let measured = schedule.is_measured(index);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if measured {
                lock(rec).dropped += 1;
            }
            continue;
        };
        let (client, target, rec) = (client.clone(), target.clone(), rec.clone());
        tasks.spawn_on(
            async move {
                let sent = Instant::now();
                let result = send_one(&client, &target).await;
                let done = Instant::now();
                if measured {
                    lock(&rec).record(intended, sent, done, result);
                }
                drop(permit);
            },
            runtime,
        );
    }
    (start + schedule.measure_start(), tasks)
}

/// `concurrency` clients, each sending its next request as soon as the previous
/// answer ended, for `warmup` (unrecorded) then `duration`.
pub async fn closed_loop(
    client: Client,
    target: Arc<Target>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    drain_limit: Duration,
) -> anyhow::Result<TargetReport> {
    let rec = Arc::new(Mutex::new(Recorder::new(target.name)?));
    let mut tasks = JoinSet::new();
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    for _ in 0..concurrency {
        let (client, target, rec) = (client.clone(), target.clone(), rec.clone());
        tasks.spawn(async move {
            for _ in 0..MAX_PER_CLIENT {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = send_one(&client, &target).await;
                let done = Instant::now();
                if sent >= measure_from {
                    lock(&rec).record(sent, sent, done, result);
                }
            }
        });
    }
    let left = drain(&mut tasks, warmup + duration + drain_limit).await;
    abandoned(&rec, left);
    let report = lock(&rec).report(measure_from);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let plain: serde_json::Value = serde_json::from_slice(&chat_body(false)).unwrap();
        assert_eq!(plain["model"], "mock-gpt-4o-mini");
        assert_eq!(plain["messages"][0]["content"], "hello world");
        assert!(plain.get("stream").is_none());
        let streamed: serde_json::Value = serde_json::from_slice(&chat_body(true)).unwrap();
        assert_eq!(streamed["stream"], true);
    }

    #[test]
    fn recorder_separates_ok_and_errors() {
        let mut rec = Recorder::new("t").unwrap();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        rec.record(t0, t0 + ms(1), t0 + ms(4), Ok(()));
        rec.record(
            t0 + ms(2),
            t0 + ms(2),
            t0 + ms(3),
            Err(Failure {
                kind: "HTTP 502".into(),
                detail: "first".into(),
            }),
        );
        rec.record(
            t0 + ms(2),
            t0 + ms(2),
            t0 + ms(10),
            Err(Failure {
                kind: "HTTP 502".into(),
                detail: "second".into(),
            }),
        );
        let r = rec.report(t0);
        assert_eq!((r.sent, r.ok, r.errors), (3, 1, 2));
        assert_eq!(r.error_kinds.get("HTTP 502"), Some(&2));
        assert_eq!(r.first_error.as_deref(), Some("first"));
        // Three significant digits: values above 2048 µs share 2 µs buckets.
        assert!((4000..=4001).contains(&r.intended.max));
        assert!((3000..=3001).contains(&r.service.max));
        assert_eq!(r.lag.max, 1000);
        assert!((r.elapsed_secs - 0.010).abs() < 1e-9);
        assert!((r.throughput - 100.0).abs() < 1e-6);
    }
}
