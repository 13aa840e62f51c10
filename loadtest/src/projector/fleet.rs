//! A made-up installation (one tenant, a few projects with keys and budgets) and usage
//! events for it, built as the gateway builds them (`sg_gateway::proxy`: a
//! `usage.recorded` v4 in an envelope from `Envelope::new`, actor `node:<name>`) and
//! appended as its usage publisher appends them (`sg_gateway::usage`: the envelope's
//! subject, its encoding, the event id as the message id).

use std::net::{IpAddr, Ipv4Addr};

use sg_eventlog::Append;
use sg_events::wire::{BudgetData, PeriodData};
use sg_events::{
    Actor, ConnectionId, Envelope, Event, KeyId, KeyIssuedV4, LimitsData, LocksV2,
    ProjectCreatedV1, ProjectId, ProjectLimitsSetV1, Provider, TenantCreatedV2, TenantId,
    UsageRecordedV4,
};
use time::OffsetDateTime;
use uuid::Uuid;

/// Models requests name: (name, endpoint, micro-dollars per 1M prompt tokens, per 1M
/// completion tokens; `None`: unpriced), with a weight.
type Model = (&'static str, &'static str, Option<(u64, u64)>, u32);

const MODELS: [Model; 5] = [
    (
        "gpt-4o-mini",
        "/v1/chat/completions",
        Some((150_000, 600_000)),
        50,
    ),
    (
        "gpt-4o",
        "/v1/chat/completions",
        Some((2_500_000, 10_000_000)),
        20,
    ),
    (
        "claude-3-5-haiku",
        "/v1/chat/completions",
        Some((800_000, 4_000_000)),
        15,
    ),
    (
        "text-embedding-3-small",
        "/v1/embeddings",
        Some((20_000, 0)),
        12,
    ),
    ("my-finetune", "/v1/chat/completions", None, 3),
];

const NODES: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
const COUNTRIES: [&str; 5] = ["DE", "US", "FR", "GB", "JP"];

/// A small, fast, deterministic generator (xorshift64*): the same seed gives the same
/// events' values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// `true` with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What was published, as the usage views should count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_micros: u64,
    pub unpriced_requests: u64,
}

impl Totals {
    fn add(&mut self, d: &UsageRecordedV4) {
        self.requests += 1;
        self.errors += u64::from(d.status >= 400);
        self.prompt_tokens += d.prompt_tokens;
        self.cached_prompt_tokens += d.cached_prompt_tokens;
        self.completion_tokens += d.completion_tokens;
        self.total_tokens += d.total_tokens;
        self.cost_micros += d.cost_micros;
        self.unpriced_requests += u64::from(!d.priced);
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_micros": self.cost_micros,
            "unpriced_requests": self.unpriced_requests,
        })
    }

    pub fn merge(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cost_micros += other.cost_micros;
        self.unpriced_requests += other.unpriced_requests;
    }
}

struct Project {
    id: ProjectId,
    connection: ConnectionId,
    keys: Vec<KeyId>,
}

/// One tenant, its projects and keys.
pub struct Fleet {
    tenant: TenantId,
    projects: Vec<Project>,
}

impl Fleet {
    pub fn new(projects: usize, keys_per_project: usize) -> Self {
        Fleet {
            tenant: TenantId::generate(),
            projects: (0..projects)
                .map(|_| Project {
                    id: ProjectId::generate(),
                    connection: ConnectionId::generate(Provider::Openai),
                    keys: (0..keys_per_project).map(|_| KeyId::generate()).collect(),
                })
                .collect(),
        }
    }

    pub fn project_ids(&self) -> impl Iterator<Item = &ProjectId> {
        self.projects.iter().map(|p| &p.id)
    }

    pub fn keys(&self) -> usize {
        self.projects.iter().map(|p| p.keys.len()).sum()
    }

    /// The control events that make the fleet exist: the tenant, each project with a
    /// monthly budget far above what the run spends (so every usage batch checks it, as
    /// a budgeted project's would, without crossing a threshold), each key.
    pub fn control_events(&self) -> Vec<Append> {
        let operator = |event| Envelope::new(self.tenant.clone(), Actor::operator(), event);
        let mut events = vec![operator(Event::TenantCreated(TenantCreatedV2 {
            name: "bench".into(),
            plan: None,
        }))];
        for (i, p) in self.projects.iter().enumerate() {
            events.push(operator(Event::ProjectCreated(ProjectCreatedV1 {
                project_id: p.id.clone(),
                name: format!("project-{i}"),
            })));
            events.push(operator(Event::ProjectLimitsSet(ProjectLimitsSetV1 {
                project_id: p.id.clone(),
                limits: LimitsData {
                    budget: Some(BudgetData {
                        micros: 1_000_000_000_000_000,
                        period: PeriodData::Month,
                    }),
                    ..LimitsData::default()
                },
            })));
            for (k, key) in p.keys.iter().enumerate() {
                events.push(operator(Event::KeyIssued(KeyIssuedV4 {
                    key_id: key.clone(),
                    project_id: p.id.clone(),
                    name: format!("key-{k}"),
                    key_hash: format!("{:064x}", (i * 1000 + k) as u128 + 1),
                    hint: "SG_…bench".into(),
                    connection_ids: vec![p.connection.clone()],
                    locks: LocksV2::default(),
                    limits: LimitsData::default(),
                })));
            }
        }
        events.iter().map(append_of).collect()
    }

    /// One request's usage event with varied, plausible values, and what it adds to the
    /// totals. Projects and keys are skewed (the first ones busier), as real traffic is.
    pub fn usage(&self, rng: &mut Rng, totals: &mut Totals) -> Append {
        // Skew: project i with weight (n - i).
        let n = self.projects.len() as u64;
        let mut pick = rng.range(0, n * (n + 1) / 2 - 1);
        let mut pi = 0;
        while pick >= n - pi as u64 {
            pick -= n - pi as u64;
            pi += 1;
        }
        let project = &self.projects[pi];
        // Keys skewed too: the smaller of two uniform picks.
        let len = project.keys.len() as u64;
        let ki = (rng.next() % len).min(rng.next() % len);
        let key = &project.keys[usize::try_from(ki).unwrap_or(0)];
        let weights: u64 = MODELS.iter().map(|m| u64::from(m.3)).sum();
        let mut w = rng.range(0, weights - 1);
        let model = MODELS
            .iter()
            .find(|m| {
                let hit = w < u64::from(m.3);
                w = w.saturating_sub(u64::from(m.3));
                hit
            })
            .unwrap_or(&MODELS[0]);
        let (name, endpoint, price, _) = *model;
        let embedding = endpoint == "/v1/embeddings";
        let status: u16 = match rng.range(0, 999) {
            0..=969 => 200,
            970..=984 => 429,
            985..=994 => 400,
            _ => 502,
        };
        let ok = status == 200;
        let prompt = if ok { rng.range(8, 4_000) } else { 0 };
        let cached = if ok && !embedding && rng.chance(30) {
            prompt / 2
        } else {
            0
        };
        let completion = if ok && !embedding {
            rng.range(1, 1_200)
        } else {
            0
        };
        let cost = price.map_or(0, |(input, output)| {
            (prompt * input + completion * output) / 1_000_000
        });
        let streamed = !embedding && rng.chance(40);
        let latency_us = if ok {
            // Mostly 0.2–3 s, a tail to 30 s.
            if rng.chance(5) {
                rng.range(3_000_000, 30_000_000)
            } else {
                rng.range(200_000, 3_000_000)
            }
        } else {
            rng.range(2_000, 80_000)
        };
        let started_at = OffsetDateTime::now_utc()
            - time::Duration::microseconds(i64::try_from(latency_us).unwrap_or(0));
        let node = NODES[usize::try_from(rng.next() % NODES.len() as u64).unwrap_or(0)];
        let d = UsageRecordedV4 {
            request_id: Uuid::now_v7(),
            project_id: project.id.clone(),
            key_id: key.clone(),
            connection_id: Some(project.connection.clone()),
            provider: Some(Provider::Openai),
            model: Some(name.to_owned()),
            endpoint: endpoint.to_owned(),
            status,
            streamed,
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cost_micros: cost,
            priced: price.is_some(),
            request_bytes: 200 + prompt * 4,
            response_bytes: if ok { 300 + completion * 4 } else { 120 },
            latency_us,
            started_at,
            node: node.to_owned(),
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(
                203,
                0,
                113,
                u8::try_from(rng.range(1, 254)).unwrap_or(1),
            ))),
            country: Some(
                COUNTRIES[usize::try_from(rng.next() % COUNTRIES.len() as u64).unwrap_or(0)]
                    .to_owned(),
            ),
        };
        totals.add(&d);
        let envelope = Envelope::new(
            self.tenant.clone(),
            Actor::node(node),
            Event::UsageRecorded(d),
        );
        append_of(&envelope)
    }
}

/// What the gateway's publisher appends for an envelope: its subject, its encoding, and
/// its id as the message id (the log's idempotency id).
fn append_of(envelope: &Envelope) -> Append {
    Append {
        subject: envelope.subject(),
        payload: sg_events::encode(envelope).into(),
        expected_last_subject_seq: None,
        msg_id: Some(envelope.id.to_string()),
    }
}
