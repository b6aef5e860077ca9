//! Step 2: the plan of a call, from the request and the component's variables: which provider
//! (asked for, implied by the model, or the default), its base URL, key and default model, the
//! fallbacks, the timeouts and retries, and the token bound a budget reserves.

use crate::providers::Provider;
use crate::request::ChatRequest;
use crate::retry::RetryPolicy;
use crate::settings::Settings;
use serde_json::Value;
use shared::ApiError;
use shared::ErrorCode;
use std::time::Duration;

/// Tokens an image part may cost, at most, whatever its size in the request: OpenAI's
/// high-detail tiling tops out near 1,500 tokens for a 2048 px image, Anthropic's at about
/// 1,600 (1.15 megapixels / 750). A URL or a small data URL would otherwise count as its bytes.
pub const IMAGE_PART_TOKENS: u64 = 2_000;
/// What tool use adds to a prompt beyond the tool definitions' own bytes (Anthropic's tool-use
/// system prompt is 300-350 tokens; OpenAI's is smaller).
pub const TOOLS_OVERHEAD_TOKENS: u64 = 500;

/// An upper bound on a request's prompt tokens, for budget reservations: every byte of the
/// upstream payload a token (no tokenizer makes more tokens than bytes of text), each non-text
/// content part (an image, audio or a file) at [`IMAGE_PART_TOKENS`], plus
/// [`TOOLS_OVERHEAD_TOKENS`] when tools are offered.
pub fn prompt_token_bound(payload_bytes: usize, messages: &[Value], tools: bool) -> u64 {
    let media_parts = messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|part| part["type"].as_str().is_some_and(|t| t != "text"))
        .count() as u64;
    (payload_bytes as u64).saturating_add(media_parts.saturating_mul(IMAGE_PART_TOKENS)).saturating_add(if tools {
        TOOLS_OVERHEAD_TOKENS
    } else {
        0
    })
}

/// Everything needed to call one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Which API.
    pub provider: Provider,
    /// Base URL (`.../v1` for the OpenAI family, the host root for Anthropic).
    pub base_url: String,
    /// API key; empty for keyless OpenAI-compatible servers.
    pub api_key: String,
    /// Model used when the request names none.
    pub default_model: String,
}

/// Resolves a provider's settings. A key is required when the base URL is the provider's official one; a base URL pointing
/// elsewhere (Ollama, vLLM, a proxy) may be keyless. `byo_key` (the `x-provider-api-key`
/// header) replaces the configured key.
pub fn provider_config(
    provider: Provider,
    settings: &Settings,
    byo_key: Option<&str>,
) -> Result<ProviderConfig, ApiError> {
    let prefix = provider.api().variable_prefix();
    let variables = settings.provider(provider);
    let set_base_url = variables.and_then(|v| v.base_url.clone());
    let base_url_variable = format!("{prefix}_base_url");
    // A provider without an official URL (an OpenAI-compatible server) is not configured until
    // its base URL is set: never a guessed local address.
    if provider.api().official_base_url().is_none() && set_base_url.is_none() {
        return Err(ApiError::unavailable(
            ErrorCode::ProviderNotConfigured,
            format!(
                "provider '{}' is not configured: set the variable '{base_url_variable}' (SPIN_VARIABLE_{}) \
                 to the server's /v1 URL",
                provider.name(),
                base_url_variable.to_ascii_uppercase()
            ),
        )
        .with_detail("provider", provider.name())
        .with_detail("variable", base_url_variable));
    }
    let official_url = provider.api().official_base_url();
    let base_url = set_base_url.unwrap_or_else(|| official_url.unwrap_or_default().to_owned());
    let official = official_url.is_some_and(|url| base_url.trim_end_matches('/') == url);
    let api_key = match byo_key.map(str::trim).filter(|k| !k.is_empty()) {
        Some(k) => k.to_owned(),
        None => match variables.and_then(|v| v.api_key.clone()) {
            Some(k) => k,
            None if official => {
                let variable = format!("{prefix}_api_key");
                return Err(ApiError::unavailable(
                    ErrorCode::ProviderNotConfigured,
                    format!(
                        "provider '{}' is not configured: set the variable '{variable}' (SPIN_VARIABLE_{}), \
                         point '{prefix}_base_url' at an OpenAI-compatible server, or send x-provider-api-key",
                        provider.name(),
                        variable.to_ascii_uppercase()
                    ),
                )
                .with_detail("provider", provider.name())
                .with_detail("variable", variable));
            }
            None => String::new(),
        },
    };
    let default_model =
        variables.and_then(|v| v.default_model.clone()).unwrap_or_else(|| provider.api().default_model().to_owned());
    Ok(ProviderConfig { provider, base_url, api_key, default_model })
}

/// Picks the provider: asked for, implied by the model, else `default_provider`.
pub fn choose_provider(req: &ChatRequest, settings: &Settings) -> Result<Provider, ApiError> {
    if let Some(p) = req.provider {
        return Ok(p);
    }
    if let Some(p) = req.model.as_deref().and_then(Provider::owning) {
        return Ok(p);
    }
    let name = &settings.default_provider;
    Provider::parse(name.trim())
        .ok_or_else(|| ApiError::internal(format!("server misconfigured: default_provider '{name}' is unknown")))
}

/// The fallback providers (`fallback_providers`), without `primary` or repeats.
pub fn fallback_providers(primary: Provider, settings: &Settings) -> Vec<Provider> {
    let mut out = Vec::new();
    for &p in &settings.fallback_providers {
        if p != primary && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Timeouts and retries of provider calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resilience {
    /// TCP (and TLS) connect, per attempt.
    pub connect_timeout: Duration,
    /// From sending to the response head, per attempt.
    pub first_byte_timeout: Duration,
    /// Longest silence inside a streaming body.
    pub idle_timeout: Duration,
    /// The whole call: attempts, waits and the stream.
    pub total_timeout: Duration,
    /// Attempts per provider and backoff.
    pub retry: RetryPolicy,
}

impl Resilience {
    /// From variables (milliseconds): `provider_connect_timeout_ms` (10 s),
    /// `provider_first_byte_timeout_ms` (60 s), `provider_idle_timeout_ms` (60 s),
    /// `provider_total_timeout_ms` (300 s), `provider_max_attempts` (3), `provider_retry_base_ms`
    /// (250).
    pub(crate) fn from_variables(var: &dyn Fn(&str) -> Option<String>) -> Self {
        let ms = |name: &str, default: u64| {
            Duration::from_millis(var(name).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default))
        };
        let retry = RetryPolicy {
            max_attempts: var("provider_max_attempts")
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(3)
                .clamp(1, 10),
            base: ms("provider_retry_base_ms", 250),
            max_delay: Duration::from_secs(8),
        };
        Resilience {
            connect_timeout: ms("provider_connect_timeout_ms", 10_000),
            first_byte_timeout: ms("provider_first_byte_timeout_ms", 60_000),
            idle_timeout: ms("provider_idle_timeout_ms", 60_000),
            total_timeout: ms("provider_total_timeout_ms", 300_000),
            retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_native;
    use serde_json::json;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_variables(vars(pairs))
    }

    #[test]
    fn missing_key_names_the_variable() {
        let e = provider_config(Provider::OPENAI, &settings(&[]), None).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (503, "provider_not_configured"));
        assert!(e.message.contains("openai_api_key") && e.message.contains("SPIN_VARIABLE_OPENAI_API_KEY"));
        let e = provider_config(Provider::ANTHROPIC, &settings(&[]), None).unwrap_err();
        assert!(e.message.contains("anthropic_api_key"));
    }

    #[test]
    fn a_custom_base_url_needs_no_key_and_byo_key_wins() {
        let c = provider_config(Provider::OPENAI, &settings(&[("openai_base_url", "http://127.0.0.1:11434/v1")]), None)
            .unwrap();
        assert_eq!(c.api_key, "");
        let c =
            provider_config(Provider::OPENAI, &settings(&[("openai_api_key", "sk-server")]), Some("sk-user")).unwrap();
        assert_eq!(c.api_key, "sk-user");
        assert_eq!(c.default_model, "gpt-4o-mini");
        // An OpenAI-compatible server with no URL is not configured: 503, no guessed address.
        let e = provider_config(Provider::COMPATIBLE, &settings(&[]), None).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (503, "provider_not_configured"));
        let c = provider_config(
            Provider::COMPATIBLE,
            &settings(&[("compatible_base_url", "http://10.0.0.2:8000/v1")]),
            None,
        )
        .unwrap();
        assert_eq!(c.base_url, "http://10.0.0.2:8000/v1");
    }

    #[test]
    fn provider_choice_order() {
        let r = parse_native(br#"{"message":"a","model":"claude-haiku-4-5"}"#, 1 << 20).unwrap();
        assert_eq!(choose_provider(&r, &settings(&[("default_provider", "mistral")])).unwrap(), Provider::ANTHROPIC);
        let r = parse_native(br#"{"message":"a"}"#, 1 << 20).unwrap();
        assert_eq!(choose_provider(&r, &settings(&[("default_provider", "mistral")])).unwrap(), Provider::MISTRAL);
        assert_eq!(choose_provider(&r, &settings(&[])).unwrap(), Provider::OPENAI);
        assert_eq!(
            fallback_providers(
                Provider::OPENAI,
                &settings(&[("fallback_providers", "openai, anthropic,bogus,mistral")])
            ),
            vec![Provider::ANTHROPIC, Provider::MISTRAL]
        );
    }

    #[test]
    fn images_and_tools_count_at_their_documented_cost() {
        let text = vec![json!({"role": "user", "content": "hi"})];
        assert_eq!(prompt_token_bound(100, &text, false), 100);
        let image = vec![json!({"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        ]})];
        // ~100 bytes of request, but two images of up to ~1,600 tokens each.
        assert_eq!(prompt_token_bound(100, &image, false), 100 + 2 * IMAGE_PART_TOKENS);
        assert_eq!(prompt_token_bound(100, &text, true), 100 + TOOLS_OVERHEAD_TOKENS);
    }

    #[test]
    fn resilience_defaults_and_overrides() {
        let r =
            Resilience::from_variables(&vars(&[("provider_idle_timeout_ms", "500"), ("provider_max_attempts", "0")]));
        assert_eq!(r.idle_timeout, Duration::from_millis(500));
        assert_eq!(r.retry.max_attempts, 1);
        assert_eq!(r.total_timeout, Duration::from_secs(300));
    }
}
