//! Prices and what a request costs.
//!
//! A price is micro-dollars per million tokens, for input, output and (where the provider
//! reports it) cached input. A request's cost is computed once, at the gateway, from the
//! tokens the provider reported, and travels in its usage event as integer micro-dollars.

use serde::{Deserialize, Serialize};

/// One model's price, in micro-dollars (µ$) per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Cached input tokens; `None`: charged as input.
    pub cached_input: Option<u64>,
}

/// The tokens of one request as its provider reported them. `prompt` includes the cached
/// part, as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u64,
    pub cached_prompt: u64,
    pub completion: u64,
}

/// What `usage` costs at `price`, in micro-dollars, rounded to the nearest.
pub fn cost_micros(price: &Price, usage: &TokenUsage) -> u64 {
    let cached = usage.cached_prompt.min(usage.prompt);
    let uncached = usage.prompt - cached;
    let cached_price = price.cached_input.unwrap_or(price.input);
    // µ$ per million tokens × tokens = µ$ × 10⁶.
    let scaled = u128::from(uncached) * u128::from(price.input)
        + u128::from(cached) * u128::from(cached_price)
        + u128::from(usage.completion) * u128::from(price.output);
    u64::try_from((scaled + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

/// Most a price may be: $1,000,000 per million tokens (anything more is a typo).
pub const MAX_USD_PER_MTOK: f64 = 1_000_000.0;

/// `usd` as whole micro-dollars, if it is a finite, non-negative amount no larger than
/// `max_usd`.
pub fn usd_to_micros(usd: f64, max_usd: f64) -> Option<u64> {
    if !usd.is_finite() || usd < 0.0 || usd > max_usd {
        return None;
    }
    // Exact for every amount with up to six decimals below 2^53 µ$.
    Some((usd * 1_000_000.0).round() as u64)
}

/// µ$ as dollars, for answers.
pub fn micros_to_usd(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

const fn p(input: u64, output: u64, cached: Option<u64>) -> Price {
    Price {
        input,
        output,
        cached_input: cached,
    }
}

/// Built-in prices of well-known models, µ$ per million tokens (list prices; operators
/// override them with `PUT /admin/v1/prices`). The mock provider's models are priced like
/// the models they imitate, so the quickstart shows costs.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    ("gpt-5", p(1_250_000, 10_000_000, Some(125_000))),
    ("gpt-5-mini", p(250_000, 2_000_000, Some(25_000))),
    ("gpt-5-nano", p(50_000, 400_000, Some(5_000))),
    ("gpt-4.1", p(2_000_000, 8_000_000, Some(500_000))),
    ("gpt-4.1-mini", p(400_000, 1_600_000, Some(100_000))),
    ("gpt-4.1-nano", p(100_000, 400_000, Some(25_000))),
    ("gpt-4o", p(2_500_000, 10_000_000, Some(1_250_000))),
    ("gpt-4o-mini", p(150_000, 600_000, Some(75_000))),
    ("o3", p(2_000_000, 8_000_000, Some(500_000))),
    ("o3-mini", p(1_100_000, 4_400_000, Some(550_000))),
    ("o4-mini", p(1_100_000, 4_400_000, Some(275_000))),
    ("text-embedding-3-small", p(20_000, 0, None)),
    ("text-embedding-3-large", p(130_000, 0, None)),
    (
        "claude-opus-4-1",
        p(15_000_000, 75_000_000, Some(1_500_000)),
    ),
    ("claude-opus-4", p(15_000_000, 75_000_000, Some(1_500_000))),
    ("claude-sonnet-4-5", p(3_000_000, 15_000_000, Some(300_000))),
    ("claude-sonnet-4", p(3_000_000, 15_000_000, Some(300_000))),
    ("claude-3-7-sonnet", p(3_000_000, 15_000_000, Some(300_000))),
    ("claude-3-5-sonnet", p(3_000_000, 15_000_000, Some(300_000))),
    ("claude-haiku-4-5", p(1_000_000, 5_000_000, Some(100_000))),
    ("claude-3-5-haiku", p(800_000, 4_000_000, Some(80_000))),
    ("mock-gpt-4o", p(2_500_000, 10_000_000, Some(1_250_000))),
    ("mock-gpt-4o-mini", p(150_000, 600_000, Some(75_000))),
    ("mock-embedding", p(20_000, 0, None)),
];

/// The model a dated or versioned name belongs to: `gpt-4o-mini-2024-07-18` →
/// `gpt-4o-mini`, `claude-3-5-haiku-20241022` → `claude-3-5-haiku`,
/// `claude-sonnet-4-5@20250929` → `claude-sonnet-4-5`.
pub fn base_model(model: &str) -> &str {
    let model = model.split('@').next().unwrap_or(model);
    let bytes = model.as_bytes();
    // -YYYY-MM-DD
    if bytes.len() > 11 {
        let tail = &model[model.len() - 11..];
        let t = tail.as_bytes();
        if t[0] == b'-'
            && t[5] == b'-'
            && t[8] == b'-'
            && [1, 2, 3, 4, 6, 7, 9, 10]
                .iter()
                .all(|&i| t[i].is_ascii_digit())
        {
            return &model[..model.len() - 11];
        }
    }
    // -YYYYMMDD
    if bytes.len() > 9 {
        let tail = &model[model.len() - 9..];
        if tail.starts_with('-') && tail[1..].bytes().all(|b| b.is_ascii_digit()) {
            return &model[..model.len() - 9];
        }
    }
    model
}

/// The built-in price of `model` (exact name, else its undated base name).
pub fn default_price(model: &str) -> Option<Price> {
    let find = |m: &str| {
        DEFAULT_PRICES
            .iter()
            .find(|(n, _)| *n == m)
            .map(|(_, p)| *p)
    };
    find(model).or_else(|| find(base_model(model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_round_to_the_nearest_micro_dollar() {
        let mini = default_price("gpt-4o-mini").unwrap();
        // 1,000 in + 500 out: 1000 × 0.15 + 500 × 0.60 = 450 µ$.
        let usage = TokenUsage {
            prompt: 1000,
            cached_prompt: 0,
            completion: 500,
        };
        assert_eq!(cost_micros(&mini, &usage), 450);
        // Cached input at its own price: 600 × 0.15 + 400 × 0.075 = 120 µ$.
        let cached = TokenUsage {
            prompt: 1000,
            cached_prompt: 400,
            completion: 0,
        };
        assert_eq!(cost_micros(&mini, &cached), 120);
        // 3 tokens × 0.15 = 0.45 µ$ → 0; 4 × 0.15 = 0.6 → 1.
        assert_eq!(
            cost_micros(
                &mini,
                &TokenUsage {
                    prompt: 3,
                    ..TokenUsage::default()
                }
            ),
            0
        );
        assert_eq!(
            cost_micros(
                &mini,
                &TokenUsage {
                    prompt: 4,
                    ..TokenUsage::default()
                }
            ),
            1
        );
        // No overflow at absurd counts.
        let huge = TokenUsage {
            prompt: u64::MAX,
            cached_prompt: 0,
            completion: u64::MAX,
        };
        assert!(cost_micros(&default_price("claude-opus-4").unwrap(), &huge) > 0);
    }

    #[test]
    fn dated_names_find_their_model() {
        assert_eq!(base_model("gpt-4o-mini-2024-07-18"), "gpt-4o-mini");
        assert_eq!(base_model("claude-3-5-haiku-20241022"), "claude-3-5-haiku");
        assert_eq!(
            base_model("claude-sonnet-4-5@20250929"),
            "claude-sonnet-4-5"
        );
        assert_eq!(base_model("gpt-4o"), "gpt-4o");
        assert!(default_price("gpt-4o-2024-08-06").is_some());
        assert_eq!(default_price("my-finetune"), None);
    }

    #[test]
    fn dollars_to_micros() {
        assert_eq!(usd_to_micros(2.5, MAX_USD_PER_MTOK), Some(2_500_000));
        assert_eq!(usd_to_micros(0.075, MAX_USD_PER_MTOK), Some(75_000));
        assert_eq!(usd_to_micros(0.0, MAX_USD_PER_MTOK), Some(0));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 2_000_000.0] {
            assert_eq!(usd_to_micros(bad, MAX_USD_PER_MTOK), None, "{bad}");
        }
    }
}
