//! Token counts: Anthropic's counters, kept as reported, and their OpenAI reading.
//!
//! Anthropic reports `input_tokens` (not counting the cache), `cache_read_input_tokens`,
//! `cache_creation_input_tokens` and `output_tokens`. In a stream every counter in a
//! `message_delta` is cumulative: the newest value replaces the older one, never adds to it.

use serde_json::{Value, json};

/// Token usage of one answer, in OpenAI terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens: uncached input, cache reads and cache writes.
    pub prompt: u64,
    /// Of [`Usage::prompt`], the tokens read from the provider's cache (billed below input).
    pub cached_prompt: u64,
    /// Of [`Usage::prompt`], the tokens written to the provider's cache (billed above input).
    pub cache_creation: u64,
    /// Generated tokens.
    pub completion: u64,
    /// `prompt + completion`.
    pub total: u64,
}

/// Anthropic's counters as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub input: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    pub output: u64,
}

impl Counts {
    /// Takes every counter present in an Anthropic `usage` object, replacing the value
    /// held. Returns whether the object held any counter.
    pub fn update(&mut self, usage: &Value) -> bool {
        let mut any = false;
        let mut take = |key: &str, slot: &mut u64| {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *slot = n;
                any = true;
            }
        };
        take("input_tokens", &mut self.input);
        take("cache_read_input_tokens", &mut self.cache_read);
        take("cache_creation_input_tokens", &mut self.cache_creation);
        take("output_tokens", &mut self.output);
        any
    }

    pub fn usage(&self) -> Usage {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation);
        Usage {
            prompt,
            cached_prompt: self.cache_read,
            cache_creation: self.cache_creation,
            completion: self.output,
            total: prompt.saturating_add(self.output),
        }
    }

    /// The OpenAI `usage` object. The Anthropic cache counters are repeated as extra
    /// fields when either is non-zero, since cache writes are billed apart.
    pub fn openai_json(&self) -> Value {
        let u = self.usage();
        let mut out = json!({
            "prompt_tokens": u.prompt,
            "completion_tokens": u.completion,
            "total_tokens": u.total,
            "prompt_tokens_details": {"cached_tokens": u.cached_prompt},
        });
        if (self.cache_read > 0 || self.cache_creation > 0)
            && let Some(obj) = out.as_object_mut()
        {
            obj.insert(
                "cache_read_input_tokens".into(),
                Value::from(self.cache_read),
            );
            obj.insert(
                "cache_creation_input_tokens".into(),
                Value::from(self.cache_creation),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_counts_cache_reads_and_writes() {
        let mut c = Counts::default();
        assert!(c.update(
            &json!({"input_tokens": 558, "cache_creation_input_tokens": 1,
            "cache_read_input_tokens": 2, "output_tokens": 48})
        ));
        assert_eq!(
            c.usage(),
            Usage {
                prompt: 561,
                cached_prompt: 2,
                cache_creation: 1,
                completion: 48,
                total: 609
            }
        );
    }

    #[test]
    fn later_counters_replace_earlier_ones_and_absent_ones_stay() {
        let mut c = Counts::default();
        c.update(&json!({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}));
        c.update(&json!({"output_tokens": 7}));
        c.update(&json!({"output_tokens": 9}));
        assert_eq!(
            c,
            Counts {
                input: 10,
                cache_read: 5,
                cache_creation: 0,
                output: 9
            }
        );
        assert!(!c.update(&json!({"service_tier": "standard"})));
    }

    #[test]
    fn huge_counters_saturate() {
        let mut c = Counts::default();
        c.update(&json!({"input_tokens": u64::MAX, "cache_read_input_tokens": u64::MAX, "output_tokens": u64::MAX}));
        assert_eq!(c.usage().total, u64::MAX);
    }
}
