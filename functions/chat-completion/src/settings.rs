//! Every variable chat-completion reads, read in this one place into one typed struct, with
//! the defaults here and nowhere else (spin.toml declares them empty: unset means the default
//! below). The shared code's own variables (auth, database, limiter, budget) are named in
//! `shared::variables`; [`crate::variables`] is the whole list a manifest must map.

use crate::documents::RetrievalSettings;
use crate::plan::Resilience;
use crate::providers::{Provider, REGISTRY};
use crate::request::{DEFAULT_CONTEXT_MESSAGES, DEFAULT_MAX_BODY_BYTES};

/// Most stored messages ever sent as context, whatever `chat_context_messages` says.
pub const MAX_CONTEXT_MESSAGES: usize = 200;
/// Output cap given to a call without one when a spend budget is on.
pub const DEFAULT_BUDGET_MAX_TOKENS: u64 = 4096;
/// The provider of requests that name neither a provider nor a model it owns.
pub const DEFAULT_PROVIDER: &str = "openai";

/// The variables of the component's own settings, besides each provider's three.
const OWN: &[&str] = &[
    "default_provider",
    "fallback_providers",
    "chat_max_body_bytes",
    "chat_context_messages",
    "model_prices",
    "budget_default_max_tokens",
    "ratelimit_trusted_proxies",
    "ratelimit_trust_forwarded_for",
    "provider_connect_timeout_ms",
    "provider_first_byte_timeout_ms",
    "provider_idle_timeout_ms",
    "provider_total_timeout_ms",
    "provider_max_attempts",
    "provider_retry_base_ms",
];

/// One provider's variables as set (`None` when unset or empty).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderVariables {
    /// The provider they belong to.
    pub provider: Provider,
    /// `<prefix>_api_key`.
    pub api_key: Option<String>,
    /// `<prefix>_base_url`.
    pub base_url: Option<String>,
    /// `<prefix>_default_model`.
    pub default_model: Option<String>,
}

/// The component's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Each known provider's variables.
    pub providers: Vec<ProviderVariables>,
    /// `default_provider` (checked when it is needed: a bad name is the operator's 500).
    pub default_provider: String,
    /// `fallback_providers`, comma separated; unknown names are dropped.
    pub fallback_providers: Vec<Provider>,
    /// `chat_max_body_bytes`.
    pub max_body_bytes: usize,
    /// `chat_context_messages`, at most [`MAX_CONTEXT_MESSAGES`].
    pub context_messages: usize,
    /// `model_prices` (JSON overrides of the price table), as set.
    pub model_prices: Option<String>,
    /// `budget_default_max_tokens`.
    pub budget_default_max_tokens: u64,
    /// `ratelimit_trusted_proxies`, as `shared::ratelimit::trusted_proxies` reads it.
    pub trusted_proxies: Option<String>,
    /// `ratelimit_trust_forwarded_for`, the older spelling of the same.
    pub trust_forwarded_for: Option<String>,
    /// The `provider_*` timeouts and retries.
    pub resilience: Resilience,
    /// Document retrieval: the embedding model and how many chunks a chat gets.
    pub retrieval: RetrievalSettings,
}

impl Settings {
    /// Reads every setting; `var` answers `None` for unset or empty variables, and a value that
    /// does not parse keeps the default.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Self {
        Self::for_providers(REGISTRY, var)
    }

    /// As [`Settings::from_variables`], with `providers` instead of the registry's.
    pub fn for_providers(providers: &[Provider], var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let parsed = |name: &str| var(name).and_then(|v| v.trim().parse::<u64>().ok());
        Settings {
            providers: providers
                .iter()
                .map(|&provider| {
                    let prefix = provider.api().variable_prefix();
                    ProviderVariables {
                        provider,
                        api_key: var(&format!("{prefix}_api_key")),
                        base_url: var(&format!("{prefix}_base_url")),
                        default_model: var(&format!("{prefix}_default_model")),
                    }
                })
                .collect(),
            default_provider: var("default_provider").unwrap_or_else(|| DEFAULT_PROVIDER.to_owned()),
            fallback_providers: var("fallback_providers")
                .unwrap_or_default()
                .split(',')
                .filter_map(|name| Provider::parse(name.trim()))
                .collect(),
            max_body_bytes: parsed("chat_max_body_bytes").map_or(DEFAULT_MAX_BODY_BYTES, |n| n as usize),
            context_messages: parsed("chat_context_messages")
                .map_or(DEFAULT_CONTEXT_MESSAGES, |n| n as usize)
                .min(MAX_CONTEXT_MESSAGES),
            model_prices: var("model_prices"),
            budget_default_max_tokens: parsed("budget_default_max_tokens").unwrap_or(DEFAULT_BUDGET_MAX_TOKENS),
            trusted_proxies: var("ratelimit_trusted_proxies"),
            trust_forwarded_for: var("ratelimit_trust_forwarded_for"),
            resilience: Resilience::from_variables(&var),
            retrieval: RetrievalSettings::from_variables(var),
        }
    }

    /// The variables of `provider`, when it is one of those read.
    pub fn provider(&self, provider: Provider) -> Option<&ProviderVariables> {
        self.providers.iter().find(|p| p.provider == provider)
    }

    /// Every variable [`Settings::from_variables`] reads.
    pub fn variables() -> Vec<String> {
        let mut names: Vec<String> = REGISTRY
            .iter()
            .flat_map(|p| {
                let prefix = p.api().variable_prefix();
                ["api_key", "base_url", "default_model"].map(|suffix| format!("{prefix}_{suffix}"))
            })
            .collect();
        names.extend(OWN.iter().map(|s| (*s).to_owned()));
        names.extend(RetrievalSettings::VARIABLES.iter().map(|s| (*s).to_owned()));
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    #[test]
    fn the_declared_list_is_exactly_what_is_read() {
        let read = shared::variables::names_read(|var| {
            Settings::from_variables(var);
        });
        assert_eq!(read, Settings::variables().into_iter().collect::<BTreeSet<_>>());
    }

    #[test]
    fn defaults_live_here_and_bad_values_keep_them() {
        let s = Settings::from_variables(|name: &str| match name {
            "chat_context_messages" => Some("100000".into()),
            "chat_max_body_bytes" => Some("lots".into()),
            "fallback_providers" => Some("anthropic, bogus ,mistral".into()),
            "openai_api_key" => Some("   ".into()),
            "provider_idle_timeout_ms" => Some("500".into()),
            _ => None,
        });
        assert_eq!(s.context_messages, MAX_CONTEXT_MESSAGES);
        assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(s.fallback_providers, vec![Provider::ANTHROPIC, Provider::MISTRAL]);
        assert_eq!(s.provider(Provider::OPENAI).and_then(|p| p.api_key.clone()), None, "blank is unset");
        assert_eq!(s.default_provider, DEFAULT_PROVIDER);
        assert_eq!(s.budget_default_max_tokens, DEFAULT_BUDGET_MAX_TOKENS);
        assert_eq!(s.resilience.idle_timeout, Duration::from_millis(500));
        assert_eq!(s.resilience.total_timeout, Duration::from_secs(300));
    }
}
