//! Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio, OpenRouter): OpenAI's
//! format at a base URL the operator names. There is no official one, so the provider is
//! refused until `compatible_base_url` is set, and a keyless server is called without a key.
//! llama.cpp, vLLM and Ollama accept `stream_options` and send the usage chunk, so the
//! OpenAI-shaped defaults of [`ProviderApi`] serve it as they are.

use super::ProviderApi;

/// A server at `compatible_base_url`.
pub struct Compatible;

impl ProviderApi for Compatible {
    fn name(&self) -> &'static str {
        "openai_compatible"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["openai-compatible", "compatible"]
    }
    fn variable_prefix(&self) -> &'static str {
        "compatible"
    }
    fn official_base_url(&self) -> Option<&'static str> {
        None
    }
    fn default_model(&self) -> &'static str {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::super::{upstream_request, Provider};
    use serde_json::json;

    #[test]
    fn a_keyless_server_gets_no_authorization_header() {
        let req = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]});
        let local = upstream_request(Provider::COMPATIBLE, "http://127.0.0.1:11434/v1", "", &req, false);
        assert_eq!(local.url, "http://127.0.0.1:11434/v1/chat/completions");
        assert!(!local.headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(local.body["stream"], false);
        let keyed = upstream_request(Provider::COMPATIBLE, "https://openrouter.ai/api/v1", "or-key", &req, true);
        assert!(keyed.headers.contains(&("authorization".into(), "Bearer or-key".into())));
    }
}
