//! Mistral's chat API: OpenAI-shaped, but it refuses `stream_options` and puts the usage on its
//! last content chunk instead of a usage-only one (the pass-through moves it to the closing chunk).

use super::{ProviderApi, UpstreamRequest};
use crate::embeddings::EmbeddingsRequest;
use serde_json::json;

/// api.mistral.ai.
pub struct Mistral;

impl ProviderApi for Mistral {
    fn name(&self) -> &'static str {
        "mistral"
    }
    fn variable_prefix(&self) -> &'static str {
        "mistral"
    }
    fn official_base_url(&self) -> Option<&'static str> {
        Some("https://api.mistral.ai/v1")
    }
    fn default_model(&self) -> &'static str {
        "mistral-small-latest"
    }
    fn owns_model(&self, model: &str) -> bool {
        ["mistral", "open-mistral", "open-mixtral", "codestral", "ministral", "pixtral", "magistral", "devstral"]
            .iter()
            .any(|p| model.starts_with(p))
    }
    fn stream_usage_option(&self) -> bool {
        // Mistral refuses `stream_options`; its usage comes on the last content chunk anyway.
        false
    }
    fn embeddings_request(
        &self,
        base_url: &str,
        api_key: &str,
        request: &EmbeddingsRequest,
    ) -> Option<UpstreamRequest> {
        // Mistral's embeddings take `output_dimension` (codestral-embed), not `dimensions`,
        // and answer floats.
        let mut body = json!({"model": request.model, "input": request.input.to_json()});
        if let Some(d) = request.dimensions {
            body["output_dimension"] = json!(d);
        }
        let headers = vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {api_key}")),
        ];
        Some(UpstreamRequest { url: format!("{base_url}/embeddings"), headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{chunks, run};
    use super::super::{upstream_request, Provider, Usage};
    use serde_json::json;

    #[test]
    fn usage_on_the_last_content_chunk_moves_to_the_closing_chunk() {
        let (reply, items) = run(Provider::MISTRAL, include_str!("../../testdata/mistral_stream.sse"));
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            })
        );
        assert_eq!(reply.text, "Hi!");
        let chunks = chunks(&items);
        assert!(chunks[1].get("usage").is_none(), "usage moves to the closing chunk");
        assert_eq!(reply.usage_chunk()["usage"]["total_tokens"], 10);
    }

    #[test]
    fn embeddings_name_dimensions_as_mistral_does() {
        let req = crate::embeddings::parse(br#"{"model":"codestral-embed","input":["a"],"dimensions":256}"#).unwrap();
        let up = super::super::embeddings_request(Provider::MISTRAL, "https://api.mistral.ai/v1/", "k", &req).unwrap();
        assert_eq!(up.url, "https://api.mistral.ai/v1/embeddings");
        assert_eq!(up.body, json!({"model": "codestral-embed", "input": ["a"], "output_dimension": 256}));
    }

    #[test]
    fn requests_never_carry_stream_options() {
        let req = json!({"model": "mistral-small-latest", "messages": [], "stream_options": {"include_usage": true}});
        let up = upstream_request(Provider::MISTRAL, "https://api.mistral.ai/v1", "k", &req, true);
        assert_eq!(up.url, "https://api.mistral.ai/v1/chat/completions");
        assert!(up.body.get("stream_options").is_none(), "Mistral rejects stream_options");
        assert_eq!(up.body["stream"], true);
    }
}
