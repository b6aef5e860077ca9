//! The exercise of adding a provider, kept as a test: Groq's OpenAI-shaped API in one file (an
//! OpenAI-shaped API needs only its names and defaults; the trait's defaults call it). To
//! ship it, this file would drop its `cfg(test)`, and `REGISTRY` in `mod.rs` would list
//! `Provider(&example::Groq)`; nothing else changes (settings, routing, fallbacks, `/v1/models`,
//! accounting and storage all go through the registry and the trait) except spin.toml, which
//! maps its three variables and allows its host.

use super::ProviderApi;

/// api.groq.com's OpenAI-compatible endpoint.
pub struct Groq;

impl ProviderApi for Groq {
    fn name(&self) -> &'static str {
        "groq"
    }
    fn variable_prefix(&self) -> &'static str {
        "groq"
    }
    fn official_base_url(&self) -> Option<&'static str> {
        Some("https://api.groq.com/openai/v1")
    }
    fn default_model(&self) -> &'static str {
        "llama-3.3-70b-versatile"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;
    use super::super::{upstream_request, Provider};
    use super::*;
    use crate::plan::provider_config;
    use crate::settings::Settings;
    use serde_json::json;

    #[test]
    fn a_provider_in_one_file_is_planned_called_and_decoded_like_the_others() {
        let groq = Provider(&Groq);
        let settings =
            Settings::for_providers(&[groq], |name: &str| (name == "groq_api_key").then(|| "gsk-test".into()));
        let config = provider_config(groq, &settings, None).unwrap();
        assert_eq!(config.base_url, "https://api.groq.com/openai/v1");
        assert_eq!(config.default_model, "llama-3.3-70b-versatile");
        let missing = provider_config(groq, &Settings::for_providers(&[groq], |_| None), None).unwrap_err();
        assert_eq!(missing.code.as_str(), "provider_not_configured");
        let up = upstream_request(groq, &config.base_url, &config.api_key, &json!({"messages": []}), true);
        assert_eq!(up.url, "https://api.groq.com/openai/v1/chat/completions");
        let (reply, _) = run(groq, include_str!("../../testdata/openai_stream.sse"));
        assert_eq!((reply.text.as_str(), reply.usage.map(|u| u.prompt_tokens)), ("Hello", Some(9)));
    }
}
