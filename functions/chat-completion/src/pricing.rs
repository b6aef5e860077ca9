//! Cost of a provider call from its usage: USD per million tokens per model, overridable by the
//! `model_prices` variable.
//!
//! A model matches a price by its exact name, or by that name plus a snapshot suffix only
//! (`-2024-08-06`, `-20250514`, `-2411`, `@20250514`, `-latest`): never by a bare prefix, which
//! would price `o3-pro` as `o3` or `gpt-4o-mini-realtime` as `gpt-4o-mini` and let a dearer
//! model through a budget at a cheaper model's price. A model with no price costs 0 unless a
//! USD budget is on, in which case it is refused ([`PriceTable::require`]).

use crate::providers::Usage;
use serde::Deserialize;
use shared::ErrorCode;

/// Prices of one model, USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// Input read from the prompt cache (defaults to `input`).
    #[serde(default)]
    pub cached: Option<f64>,
    /// Input written to the prompt cache (defaults to `input`; Anthropic charges 1.25x input for
    /// its 5-minute cache).
    #[serde(default)]
    pub cache_write: Option<f64>,
}

const fn p(input: f64, cached: f64, output: f64) -> Price {
    Price { input, output, cached: Some(cached), cache_write: None }
}

/// An Anthropic price: cache writes at 1.25x input (the 5-minute cache's rate).
const fn anthropic(input: f64, cached: f64, output: f64) -> Price {
    Price { input, output, cached: Some(cached), cache_write: Some(input * 1.25) }
}

/// List prices (USD / 1M tokens: input, cached input, output) by model name; dated snapshots
/// of a name take its price. Local and unknown models have none.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    ("gpt-5-pro", p(15.00, 15.00, 120.00)),
    ("gpt-5", p(1.25, 0.125, 10.00)),
    ("gpt-5-chat-latest", p(1.25, 0.125, 10.00)),
    ("gpt-5-mini", p(0.25, 0.025, 2.00)),
    ("gpt-5-nano", p(0.05, 0.005, 0.40)),
    ("gpt-4.1", p(2.00, 0.50, 8.00)),
    ("gpt-4.1-mini", p(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", p(0.10, 0.025, 0.40)),
    ("gpt-4o", p(2.50, 1.25, 10.00)),
    ("chatgpt-4o-latest", p(5.00, 5.00, 15.00)),
    ("gpt-4o-mini", p(0.15, 0.075, 0.60)),
    ("gpt-4-turbo", p(10.00, 10.00, 30.00)),
    ("gpt-4", p(30.00, 30.00, 60.00)),
    ("gpt-3.5-turbo", p(0.50, 0.50, 1.50)),
    ("o1", p(15.00, 7.50, 60.00)),
    ("o1-pro", p(150.00, 150.00, 600.00)),
    ("o1-mini", p(1.10, 0.55, 4.40)),
    ("o3", p(2.00, 0.50, 8.00)),
    ("o3-pro", p(20.00, 20.00, 80.00)),
    ("o3-mini", p(1.10, 0.55, 4.40)),
    ("o4-mini", p(1.10, 0.275, 4.40)),
    ("claude-opus-4-5", anthropic(5.00, 0.50, 25.00)),
    ("claude-opus-4-1", anthropic(15.00, 1.50, 75.00)),
    ("claude-opus-4-0", anthropic(15.00, 1.50, 75.00)),
    ("claude-opus-4", anthropic(15.00, 1.50, 75.00)),
    ("claude-sonnet-4-5", anthropic(3.00, 0.30, 15.00)),
    ("claude-sonnet-4-0", anthropic(3.00, 0.30, 15.00)),
    ("claude-sonnet-4", anthropic(3.00, 0.30, 15.00)),
    ("claude-3-7-sonnet", anthropic(3.00, 0.30, 15.00)),
    ("claude-3-5-sonnet", anthropic(3.00, 0.30, 15.00)),
    ("claude-haiku-4-5", anthropic(1.00, 0.10, 5.00)),
    ("claude-3-5-haiku", anthropic(0.80, 0.08, 4.00)),
    ("claude-3-haiku", anthropic(0.25, 0.03, 1.25)),
    ("claude-3-opus", anthropic(15.00, 1.50, 75.00)),
    ("mistral-large", p(2.00, 2.00, 6.00)),
    ("mistral-medium", p(0.40, 0.40, 2.00)),
    ("mistral-small", p(0.10, 0.10, 0.30)),
    ("ministral-8b", p(0.10, 0.10, 0.10)),
    ("ministral-3b", p(0.04, 0.04, 0.04)),
    ("open-mistral-nemo", p(0.15, 0.15, 0.15)),
    ("pixtral-large", p(2.00, 2.00, 6.00)),
    ("codestral", p(0.30, 0.30, 0.90)),
    // Embedding models: input only.
    ("text-embedding-3-small", p(0.02, 0.02, 0.0)),
    ("text-embedding-3-large", p(0.13, 0.13, 0.0)),
    ("text-embedding-ada-002", p(0.10, 0.10, 0.0)),
    ("mistral-embed", p(0.10, 0.10, 0.0)),
    ("codestral-embed", p(0.15, 0.15, 0.0)),
];

/// Whether `model` is `name` itself or `name` with a snapshot suffix: `-YYYY-MM-DD`,
/// `-YYYYMMDD`, `-MMYY`/`-MMDD` (four digits), `@YYYYMMDD`, or `-latest`.
pub fn names_snapshot_of(model: &str, name: &str) -> bool {
    let Some(suffix) = model.strip_prefix(name) else { return false };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    match suffix.as_bytes().first() {
        None => true,
        Some(b'@') => digits(&suffix[1..], 8),
        Some(b'-') => {
            let rest = &suffix[1..];
            rest == "latest"
                || digits(rest, 8)
                || digits(rest, 4)
                || matches!(rest.split('-').collect::<Vec<_>>().as_slice(), [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2))
        }
        Some(_) => false,
    }
}

/// The price table in force: defaults plus overrides.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    overrides: Vec<(String, Price)>,
}

impl PriceTable {
    /// Parses `{"model-prefix": {"input": 1.0, "output": 2.0, "cached": 0.5}, ...}`.
    pub fn with_overrides(json: Option<&str>) -> Result<Self, serde_json::Error> {
        let overrides = match json.map(str::trim).filter(|s| !s.is_empty()) {
            None => Vec::new(),
            Some(s) => serde_json::from_str::<std::collections::BTreeMap<String, Price>>(s)?.into_iter().collect(),
        };
        Ok(PriceTable { overrides })
    }

    /// The price of `model`: an override first, then the list, each by exact name or a
    /// snapshot of it ([`names_snapshot_of`]).
    pub fn price(&self, model: &str) -> Option<Price> {
        let find = |entries: &mut dyn Iterator<Item = (&str, Price)>| {
            entries
                .filter(|(name, _)| names_snapshot_of(model, name))
                .max_by_key(|(name, _)| name.len())
                .map(|(_, p)| p)
        };
        find(&mut self.overrides.iter().map(|(k, v)| (k.as_str(), *v)))
            .or_else(|| find(&mut DEFAULT_PRICES.iter().map(|(k, v)| (*k, *v))))
    }

    /// `Ok` when `model` has a price; with a USD budget on, a model without one is a 400
    /// `model_not_priced` (its cost could not be bounded, so it could spend without limit).
    pub fn require(&self, model: &str) -> Result<Price, shared::ApiError> {
        self.price(model).ok_or_else(|| {
            shared::ApiError::bad_request(
                ErrorCode::ModelNotPriced,
                format!("'{model}' has no price and a spend budget is on; set its price in model_prices"),
            )
            .with_detail("model", model)
        })
    }

    /// USD for one call, rounded to 8 decimals (the `cost_usd numeric(14,8)` column).
    pub fn cost_usd(&self, model: &str, usage: Usage) -> f64 {
        let Some(price) = self.price(model) else { return 0.0 };
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let uncached = usage.prompt_tokens - cached - written;
        let micro = uncached as f64 * price.input
            + cached as f64 * price.cached.unwrap_or(price.input)
            + written as f64 * price.cache_write.unwrap_or(price.input)
            + usage.completion_tokens as f64 * price.output;
        (micro / 1e6 * 1e8).round() / 1e8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reads_and_writes_are_priced_at_their_own_rates() {
        let table = PriceTable::with_overrides(None).unwrap();
        // claude-sonnet-4: $3 in, $0.30 cache read, $3.75 cache write, $15 out per 1M.
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 200,
            cache_write_tokens: 300,
            reasoning_tokens: 0,
        };
        assert_eq!(table.cost_usd("claude-sonnet-4-20250514", usage), 0.004185);
        // OpenAI has no write rate: a write is plain input; reasoning is output like any other.
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 0,
            cache_write_tokens: 300,
            reasoning_tokens: 60,
        };
        assert_eq!(table.cost_usd("gpt-4o-mini", usage), 0.00021);
        let over =
            PriceTable::with_overrides(Some(r#"{"my-model": {"input": 1.0, "output": 2.0, "cache_write": 4.0}}"#))
                .unwrap();
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 0,
            cached_tokens: 0,
            cache_write_tokens: 10,
            reasoning_tokens: 0,
        };
        assert_eq!(over.cost_usd("my-model", usage), 0.00004);
    }

    #[test]
    fn names_and_their_snapshots_match_nothing_else() {
        let t = PriceTable::default();
        assert_eq!(t.price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(t.price("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(t.price("claude-sonnet-4-5-20250929").unwrap().input, 3.00);
        assert_eq!(t.price("claude-3-5-haiku-latest").unwrap().input, 0.80);
        assert_eq!(t.price("mistral-large-2411").unwrap().input, 2.00);
        assert_eq!(t.price("o3-pro").unwrap().input, 20.00, "o3-pro is not o3");
        assert_eq!(t.price("o1-pro-2025-03-19").unwrap().output, 600.00);
        assert_eq!(t.price("gpt-4-turbo").unwrap().input, 10.00);
        // Not snapshots: unknown, so unpriced (and refused under a USD budget).
        for unknown in
            ["gpt-4o-mini-realtime-preview", "o3-deep-research", "llama3.2", "gpt-4o-mini-x", "claude-opus-4-6"]
        {
            assert!(t.price(unknown).is_none(), "{unknown}");
            assert_eq!(t.require(unknown).unwrap_err().code.as_str(), "model_not_priced");
        }
        assert!(names_snapshot_of("claude-sonnet-4@20250514", "claude-sonnet-4"));
        assert!(!names_snapshot_of("claude-sonnet-4-5", "claude-sonnet-4"));
    }

    #[test]
    fn no_listed_snapshot_is_priced_below_its_family() {
        // Every list entry that a shorter entry's name starts with is at least as dear, or has
        // a distinct suffix that is not a snapshot: the exact-name rule keeps them apart.
        for (name, price) in DEFAULT_PRICES {
            for (other, other_price) in DEFAULT_PRICES {
                if name != other && names_snapshot_of(name, other) {
                    assert!(price.output >= other_price.output, "{name} priced below {other}");
                }
            }
        }
    }

    #[test]
    fn cost_splits_cached_input() {
        let t = PriceTable::default();
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            cached_tokens: 500_000,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        };
        // 0.5M * 0.15 + 0.5M * 0.075 + 1M * 0.60
        assert!((t.cost_usd("gpt-4o-mini", u) - (0.075 + 0.0375 + 0.60)).abs() < 1e-9);
        assert_eq!(t.cost_usd("local-model", u), 0.0);
        let small = Usage {
            prompt_tokens: 9,
            completion_tokens: 2,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        };
        assert_eq!(t.cost_usd("gpt-4o-mini", small), 0.00000255);
    }

    #[test]
    fn overrides_beat_defaults_of_equal_or_shorter_prefix() {
        let t = PriceTable::with_overrides(Some(
            r#"{"gpt-4o": {"input": 1.0, "output": 2.0}, "llama": {"input": 0.01, "output": 0.02}}"#,
        ))
        .unwrap();
        assert_eq!(t.price("gpt-4o-2024-05-13").unwrap().input, 1.0);
        assert_eq!(t.price("gpt-4o-mini").unwrap().input, 0.15, "another model keeps its own price");
        assert_eq!(t.price("llama").unwrap().output, 0.02);
        assert!(t.price("llama3").is_none(), "overrides name models too, not prefixes");
        assert!(PriceTable::with_overrides(Some("not json")).is_err());
        assert!(PriceTable::with_overrides(Some("")).is_ok());
    }
}
