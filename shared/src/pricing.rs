//! Cost of a provider call from its usage: USD per million tokens per model, matched by the
//! longest model-name prefix, overridable by the `pricing_overrides` variable.

use crate::providers::Usage;
use serde::Deserialize;

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
}

const fn p(input: f64, cached: f64, output: f64) -> Price {
    Price { input, output, cached: Some(cached) }
}

/// List prices (USD / 1M tokens). Longer prefixes win, so `gpt-4o-mini` is not priced as
/// `gpt-4o`. Local and unknown models cost nothing.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    ("gpt-5-nano", p(0.05, 0.005, 0.40)),
    ("gpt-5-mini", p(0.25, 0.025, 2.00)),
    ("gpt-5", p(1.25, 0.125, 10.00)),
    ("gpt-4.1-nano", p(0.10, 0.025, 0.40)),
    ("gpt-4.1-mini", p(0.40, 0.10, 1.60)),
    ("gpt-4.1", p(2.00, 0.50, 8.00)),
    ("gpt-4o-mini", p(0.15, 0.075, 0.60)),
    ("gpt-4o", p(2.50, 1.25, 10.00)),
    ("o4-mini", p(1.10, 0.275, 4.40)),
    ("o3-mini", p(1.10, 0.55, 4.40)),
    ("o3", p(2.00, 0.50, 8.00)),
    ("claude-opus-4", p(15.00, 1.50, 75.00)),
    ("claude-sonnet-4", p(3.00, 0.30, 15.00)),
    ("claude-3-7-sonnet", p(3.00, 0.30, 15.00)),
    ("claude-3-5-sonnet", p(3.00, 0.30, 15.00)),
    ("claude-haiku-4", p(1.00, 0.10, 5.00)),
    ("claude-3-5-haiku", p(0.80, 0.08, 4.00)),
    ("mistral-large", p(2.00, 2.00, 6.00)),
    ("mistral-medium", p(0.40, 0.40, 2.00)),
    ("mistral-small", p(0.10, 0.10, 0.30)),
    ("codestral", p(0.30, 0.30, 0.90)),
];

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

    /// The price of `model`, if any prefix matches (overrides first, longest prefix wins).
    pub fn price(&self, model: &str) -> Option<Price> {
        let longest = |it: &mut dyn Iterator<Item = (&str, Price)>| -> Option<(usize, Price)> {
            it.filter(|(prefix, _)| model.starts_with(prefix))
                .map(|(prefix, p)| (prefix.len(), p))
                .max_by_key(|(l, _)| *l)
        };
        let from_overrides = longest(&mut self.overrides.iter().map(|(k, v)| (k.as_str(), *v)));
        let from_defaults = longest(&mut DEFAULT_PRICES.iter().map(|(k, v)| (*k, *v)));
        match (from_overrides, from_defaults) {
            (Some((lo, po)), Some((ld, _))) if lo >= ld => Some(po),
            (Some(_), Some((_, pd))) => Some(pd),
            (Some((_, po)), None) => Some(po),
            (None, d) => d.map(|(_, p)| p),
        }
    }

    /// USD for one call, rounded to 8 decimals (the `cost_usd numeric(14,8)` column).
    pub fn cost_usd(&self, model: &str, usage: Usage) -> f64 {
        let Some(price) = self.price(model) else { return 0.0 };
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let uncached = usage.prompt_tokens - cached;
        let micro = uncached as f64 * price.input
            + cached as f64 * price.cached.unwrap_or(price.input)
            + usage.completion_tokens as f64 * price.output;
        (micro / 1e6 * 1e8).round() / 1e8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let t = PriceTable::default();
        assert_eq!(t.price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(t.price("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert!(t.price("llama3.2").is_none());
    }

    #[test]
    fn cost_splits_cached_input() {
        let t = PriceTable::default();
        let u = Usage { prompt_tokens: 1_000_000, completion_tokens: 1_000_000, cached_tokens: 500_000 };
        // 0.5M * 0.15 + 0.5M * 0.075 + 1M * 0.60
        assert!((t.cost_usd("gpt-4o-mini", u) - (0.075 + 0.0375 + 0.60)).abs() < 1e-9);
        assert_eq!(t.cost_usd("local-model", u), 0.0);
        let small = Usage { prompt_tokens: 9, completion_tokens: 2, cached_tokens: 0 };
        assert_eq!(t.cost_usd("gpt-4o-mini", small), 0.00000255);
    }

    #[test]
    fn overrides_beat_defaults_of_equal_or_shorter_prefix() {
        let t = PriceTable::with_overrides(Some(
            r#"{"gpt-4o": {"input": 1.0, "output": 2.0}, "llama": {"input": 0.01, "output": 0.02}}"#,
        ))
        .unwrap();
        assert_eq!(t.price("gpt-4o-2024").unwrap().input, 1.0);
        assert_eq!(t.price("gpt-4o-mini").unwrap().input, 0.15, "a longer default prefix still wins");
        assert_eq!(t.price("llama3").unwrap().output, 0.02);
        assert!(PriceTable::with_overrides(Some("not json")).is_err());
        assert!(PriceTable::with_overrides(Some("")).is_ok());
    }
}
