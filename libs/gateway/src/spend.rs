//! Limits and budgets on the request path: what a request may use (its estimate), the
//! admission against the key's and the project's counters (served from what this node
//! holds, see `sg_quota`), the 429/503 answers, the rate-limit headers, and the
//! settlement to what the provider reported.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use sg_api_error::{ApiError, ErrorType};
use sg_quota::{Admission, CounterId, Demand, Refusal, Scope};
use sg_spend::{Counter, Limits, Price, TokenUsage};
use sg_state::KeyView;

use crate::tap::TapOutcome;

/// Output tokens reserved for a request that sets no `max_tokens` (or its kin), on the
/// endpoints that generate text. Settled to what the provider reports.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;

/// What a request may use at most, before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Prompt tokens, estimated as a quarter of the body's bytes (generous for text).
    pub(crate) prompt: u64,
    /// The request's output limit, or [`DEFAULT_OUTPUT_TOKENS`] where text is generated.
    pub(crate) output: u64,
    /// Their worst-case cost at the model's price (0 if unpriced).
    pub(crate) cost_micros: u64,
}

impl Estimate {
    pub(crate) fn of(
        path: &str,
        body_len: usize,
        output_limit: Option<u64>,
        price: Option<&Price>,
    ) -> Estimate {
        let prompt = (body_len as u64).div_ceil(4);
        let generates = matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/v1/responses" | "/v1/messages"
        );
        let output = output_limit.unwrap_or(if generates { DEFAULT_OUTPUT_TOKENS } else { 0 });
        let cost_micros = price.map_or(0, |p| {
            sg_spend::cost_micros(
                p,
                &TokenUsage {
                    prompt,
                    cached_prompt: 0,
                    completion: output,
                },
            )
        });
        Estimate {
            prompt,
            output,
            cost_micros,
        }
    }

    fn tokens(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }
}

fn demands_of(
    out: &mut Vec<Demand>,
    tenant: &str,
    scope: Scope,
    id: &str,
    limits: &Limits,
    estimate: &Estimate,
) {
    let mut add = |counter: Counter, limit: Option<u64>, units: u64| {
        if let Some(limit) = limit {
            out.push(Demand {
                counter: CounterId {
                    tenant: tenant.to_owned(),
                    scope,
                    id: id.to_owned(),
                    counter,
                },
                limit,
                units,
            });
        }
    };
    add(Counter::Rpm, limits.rpm, 1);
    add(Counter::Rpd, limits.rpd, 1);
    add(Counter::Tpm, limits.tpm, estimate.tokens().max(1));
    add(Counter::Concurrent, limits.concurrent, 1);
    if let Some(b) = limits.budget {
        // At least one micro-dollar: a spent budget stops unpriced models too.
        add(
            Counter::Budget(b.period),
            Some(b.micros),
            estimate.cost_micros.max(1),
        );
    }
}

/// What a request needs of each counter of its key and its project.
pub(crate) fn demands(key: &KeyView, estimate: &Estimate) -> Vec<Demand> {
    let mut out = Vec::new();
    let tenant = key.tenant_id.as_str();
    demands_of(
        &mut out,
        tenant,
        Scope::Key,
        key.key_id.as_str(),
        &key.limits,
        estimate,
    );
    demands_of(
        &mut out,
        tenant,
        Scope::Project,
        key.project_id.as_str(),
        &key.project_limits,
        estimate,
    );
    out
}

fn describe(counter: &CounterId, limit: u64) -> String {
    let whose = match counter.scope {
        Scope::Key => "this key",
        Scope::Project => "this key's project",
    };
    match counter.counter {
        Counter::Rpm => format!("{whose} may make {limit} requests per minute"),
        Counter::Rpd => format!("{whose} may make {limit} requests per day"),
        Counter::Tpm => format!("{whose} may use {limit} tokens per minute"),
        Counter::Concurrent => format!("{whose} may have {limit} requests in flight at once"),
        Counter::Budget(p) => format!(
            "{whose} has a budget of ${} per {}",
            sg_spend::micros_to_usd(limit),
            match p {
                sg_spend::Period::Day => "day",
                sg_spend::Period::Month => "month",
                sg_spend::Period::Total => "lifetime",
            }
        ),
    }
}

/// `Retry-After` seconds: until the window ends, at least 1; a slot frees up soon.
fn retry_after(counter: Counter, window_end_ms: Option<u64>, now_ms: u64) -> Option<u64> {
    match counter {
        Counter::Concurrent => Some(1),
        Counter::Budget(sg_spend::Period::Total) => None,
        _ => window_end_ms.map(|end| end.saturating_sub(now_ms).div_ceil(1000).max(1)),
    }
}

/// The answer to a refused request.
pub(crate) fn refused(refusal: Refusal, now_ms: u64) -> ApiError {
    match refusal {
        Refusal::Exhausted {
            counter,
            limit,
            window_end_ms,
        } => {
            let after = retry_after(counter.counter, window_end_ms, now_ms);
            let when = after.map_or_else(
                || "it does not renew; ask the project owner to raise it".to_owned(),
                |s| format!("retry in {}", duration_text(s * 1000)),
            );
            let mut error = if let Counter::Budget(_) = counter.counter {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorType::InsufficientQuota,
                    "insufficient_quota",
                    format!(
                        "budget spent: {}, and this request's worst-case cost does not fit in what is left; {when}",
                        describe(&counter, limit)
                    ),
                )
            } else {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorType::RateLimit,
                    "rate_limit_exceeded",
                    format!("rate limit reached: {}; {when}", describe(&counter, limit)),
                )
            };
            match after {
                Some(s) => {
                    error
                        .headers
                        .push((HeaderName::from_static("retry-after"), HeaderValue::from(s)));
                    // A budget renews at the end of its period: clients should not retry
                    // before then.
                    if matches!(counter.counter, Counter::Budget(_)) && s > 60 {
                        error.headers.push((
                            HeaderName::from_static("x-should-retry"),
                            HeaderValue::from_static("false"),
                        ));
                    }
                }
                None => error.headers.push((
                    HeaderName::from_static("x-should-retry"),
                    HeaderValue::from_static("false"),
                )),
            }
            error
        }
        Refusal::TooLarge {
            counter,
            limit,
            units,
        } => {
            let (what, code, error_type) = match counter.counter {
                Counter::Budget(_) => (
                    format!("its worst-case cost, ${}", sg_spend::micros_to_usd(units)),
                    "insufficient_quota",
                    ErrorType::InsufficientQuota,
                ),
                _ => (
                    format!("{units} tokens (its prompt estimate plus its output limit)"),
                    "rate_limit_exceeded",
                    ErrorType::RateLimit,
                ),
            };
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                error_type,
                code,
                format!(
                    "request too large: it needs {what}, but {}; lower max_tokens or send less",
                    describe(&counter, limit)
                ),
            );
            error.headers.push((
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            ));
            error
        }
        Refusal::Unavailable { .. } => ApiError::unavailable(
            "limit_unavailable",
            "this gateway node cannot reach the event log to check this key's limits; retry shortly",
        ),
    }
}

/// Milliseconds as OpenAI writes durations in its rate-limit headers: `17ms`, `6s`,
/// `1m30s`, `2h0m0s`.
pub(crate) fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// `x-ratelimit-*` headers: for requests, the tightest of the per-minute and per-day
/// counters; for tokens, the tokens-per-minute counters.
pub(crate) fn headers(
    quotas: &sg_quota::Quotas,
    demands: &[Demand],
    now_ms: u64,
) -> Vec<(HeaderName, HeaderValue)> {
    let tightest = |wanted: &dyn Fn(Counter) -> bool| {
        demands
            .iter()
            .filter(|d| wanted(d.counter.counter))
            .map(|d| quotas.status(&d.counter, d.limit))
            .min_by_key(|s| s.remaining)
    };
    let mut out = Vec::new();
    for (kind, status) in [
        (
            "requests",
            tightest(&|c| matches!(c, Counter::Rpm | Counter::Rpd)),
        ),
        ("tokens", tightest(&|c| c == Counter::Tpm)),
    ] {
        let Some(s) = status else { continue };
        let reset = s.window_end_ms.map_or(0, |end| end.saturating_sub(now_ms));
        for (name, value) in [
            (format!("x-ratelimit-limit-{kind}"), s.limit.to_string()),
            (
                format!("x-ratelimit-remaining-{kind}"),
                s.remaining.to_string(),
            ),
            (format!("x-ratelimit-reset-{kind}"), duration_text(reset)),
        ] {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                out.push((n, v));
            }
        }
    }
    out
}

/// Settles an admitted request to what it used: the tokens and the cost the provider
/// reported; where it reported nothing, a failed request used nothing and a successful
/// one keeps its reservation (the provider may have charged for it).
pub(crate) fn settle(
    admission: Admission,
    status: u16,
    outcome: Option<&TapOutcome>,
    cost_micros: u64,
) {
    let reported = outcome.is_some_and(|o| o.reported);
    let total = outcome.map_or(0, |o| o.tokens.total);
    let known = reported || status >= 400;
    admission.settle(|counter| match counter {
        Counter::Tpm if known => Some(total),
        Counter::Budget(_) if known => Some(cost_micros),
        _ => None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai_headers() {
        assert_eq!(duration_text(17), "17ms");
        assert_eq!(duration_text(6_000), "6s");
        assert_eq!(duration_text(5_001), "6s");
        assert_eq!(duration_text(90_000), "1m30s");
        assert_eq!(duration_text(7_200_000), "2h0m0s");
    }

    #[test]
    fn estimates_reserve_the_worst_case() {
        let price = Price {
            input: 1_000_000,
            output: 2_000_000,
            cached_input: None,
        };
        let e = Estimate::of("/v1/chat/completions", 400, Some(50), Some(&price));
        assert_eq!((e.prompt, e.output), (100, 50));
        // 100 × $1/M + 50 × $2/M = 200 µ$.
        assert_eq!(e.cost_micros, 200);
        let e = Estimate::of("/v1/chat/completions", 4, None, None);
        assert_eq!((e.output, e.cost_micros), (DEFAULT_OUTPUT_TOKENS, 0));
        let e = Estimate::of("/v1/embeddings", 8, None, Some(&price));
        assert_eq!((e.prompt, e.output, e.cost_micros), (2, 0, 2));
    }

    #[test]
    fn budgets_say_when_they_renew() {
        let c = |counter| CounterId {
            tenant: "t".into(),
            scope: Scope::Key,
            id: "k".into(),
            counter,
        };
        let e = refused(
            Refusal::Exhausted {
                counter: c(Counter::Rpm),
                limit: 100,
                window_end_ms: Some(60_000),
            },
            48_500,
        );
        assert_eq!((e.status.as_u16(), e.code), (429, "rate_limit_exceeded"));
        assert!(
            e.headers
                .iter()
                .any(|(n, v)| n == "retry-after" && v == "12")
        );
        let e = refused(
            Refusal::Exhausted {
                counter: c(Counter::Budget(sg_spend::Period::Total)),
                limit: 1_000_000,
                window_end_ms: None,
            },
            0,
        );
        assert_eq!(e.code, "insufficient_quota");
        assert_eq!(e.error_type.as_str(), "insufficient_quota");
        assert!(
            e.headers
                .iter()
                .any(|(n, v)| n == "x-should-retry" && v == "false")
        );
        let e = refused(
            Refusal::Unavailable {
                counter: c(Counter::Rpm),
            },
            0,
        );
        assert_eq!((e.status.as_u16(), e.code), (503, "limit_unavailable"));
    }
}
