//! OpenAI's Chat Completions API, and the OpenAI-shaped family built on it (Mistral, compatible
//! servers). The request and the reply are OpenAI's own format, so both pass through as JSON on
//! purpose: parameters chatedge does not know (new ones OpenAI adds) reach the upstream and the
//! client untouched. Only what is accounted (text, tool calls, finish reason, usage) is read.
//! These are the defaults of [`ProviderApi`]'s request and reply methods, so an OpenAI-shaped
//! provider names itself and nothing more.

use super::{ProviderApi, Reply, StreamDecoder, StreamItem, UpstreamRequest, Usage};
use crate::embeddings::EmbeddingsRequest;
use serde_json::{json, Value};

/// api.openai.com.
pub struct OpenAi;

impl ProviderApi for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }
    fn variable_prefix(&self) -> &'static str {
        "openai"
    }
    fn official_base_url(&self) -> Option<&'static str> {
        Some("https://api.openai.com/v1")
    }
    fn default_model(&self) -> &'static str {
        "gpt-4o-mini"
    }
    fn owns_model(&self, model: &str) -> bool {
        ["gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"].iter().any(|p| model.starts_with(p))
    }
    fn embeddings_request(
        &self,
        base_url: &str,
        api_key: &str,
        request: &EmbeddingsRequest,
    ) -> Option<UpstreamRequest> {
        // OpenAI's base64 is a quarter of the bytes of its JSON floats, and faster to read.
        Some(embeddings_request(base_url, api_key, request, "base64"))
    }
}

/// `POST {base}/embeddings`: model, input, dimensions and user as given, vectors in `encoding`.
pub(super) fn embeddings_request(
    base_url: &str,
    api_key: &str,
    request: &EmbeddingsRequest,
    encoding: &str,
) -> UpstreamRequest {
    let mut body = json!({"model": request.model, "input": request.input.to_json(), "encoding_format": encoding});
    if let Some(d) = request.dimensions {
        body["dimensions"] = json!(d);
    }
    if let Some(user) = &request.user {
        body["user"] = json!(user);
    }
    UpstreamRequest { url: format!("{base_url}/embeddings"), headers: bearer_headers(api_key), body }
}

fn bearer_headers(api_key: &str) -> Vec<(String, String)> {
    let mut headers = vec![("content-type".into(), "application/json".into())];
    if !api_key.is_empty() {
        headers.push(("authorization".into(), format!("Bearer {api_key}")));
    }
    headers
}

/// `POST {base}/chat/completions` with the body as given plus `stream`; `include_usage` asks for
/// the closing usage chunk (`stream_options`), which OpenAI needs and Mistral refuses. A keyless
/// server gets no `authorization` header.
pub(super) fn chat_completions_request(
    base_url: &str,
    api_key: &str,
    body: &Value,
    stream: bool,
    include_usage: bool,
) -> UpstreamRequest {
    let mut body = body.as_object().cloned().unwrap_or_default();
    body.insert("stream".into(), Value::Bool(stream));
    if stream && include_usage {
        // Without this OpenAI streams carry no usage at all.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    } else {
        body.remove("stream_options");
    }
    UpstreamRequest {
        url: format!("{base_url}/chat/completions"),
        headers: bearer_headers(api_key),
        body: Value::Object(body),
    }
}

/// OpenAI's `usage` object, when the value is one.
pub(super) fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.as_object()?;
    Some(Usage {
        prompt_tokens: u.get("prompt_tokens")?.as_u64()?,
        completion_tokens: u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        cached_tokens: v["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: v["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0),
    })
}

/// A whole OpenAI-shaped reply: forwarded as it came, its usage read.
pub(super) fn pass_through_completion(body: &Value) -> (Value, Usage) {
    (body.clone(), usage_of(&body["usage"]).unwrap_or_default())
}

/// Chunks of an OpenAI-shaped stream, forwarded as they came (usage moved to the closing chunk).
pub(super) struct PassThrough;

impl StreamDecoder for PassThrough {
    fn event(&mut self, reply: &mut Reply, mut v: Value) -> Vec<StreamItem> {
        if let Some(id) = v["id"].as_str() {
            reply.id = id.to_owned();
        }
        if let Some(m) = v["model"].as_str() {
            reply.model = m.to_owned();
        }
        if let Some(u) = usage_of(&v["usage"]) {
            reply.usage = Some(u);
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            if let Some(t) = choice["delta"]["content"].as_str() {
                if let Err(end) = reply.push_text(t) {
                    return vec![end];
                }
            }
            for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap_or(0);
                let name = call["function"]["name"].as_str().unwrap_or_default();
                let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                if let Err(end) = reply.tool_call_delta(index, call["id"].as_str(), name, arguments) {
                    return vec![end];
                }
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                reply.finish_reason = Some(r.to_owned());
            }
        }
        // Mistral puts usage on its last content chunk: forward the chunk without it and let
        // the closing usage chunk carry it, so every upstream ends the same way.
        if let Some(obj) = v.as_object_mut() {
            obj.remove("usage");
        }
        let usage_only = v["choices"].as_array().is_some_and(|c| c.is_empty());
        if usage_only {
            Vec::new()
        } else {
            vec![StreamItem::Chunk(v)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{chunks, run};
    use super::super::{upstream_request, Provider};
    use super::*;

    #[test]
    fn a_recorded_stream_passes_through_with_usage() {
        let (reply, items) = run(Provider::OPENAI, include_str!("../../testdata/openai_stream.sse"));
        assert_eq!(reply.text, "Hello");
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                cached_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            })
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        assert_eq!(reply.id, "chatcmpl-1");
        assert_eq!(chunks(&items).len(), 4, "the usage-only chunk is re-emitted by usage_chunk(), not forwarded");
        assert_eq!(items.last(), Some(&StreamItem::Done));
        assert_eq!(reply.usage_chunk()["usage"]["total_tokens"], 11);
    }

    #[test]
    fn requests_ask_for_usage_and_pass_unknown_parameters() {
        let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "seed": 7});
        let up = upstream_request(Provider::OPENAI, "https://api.openai.com/v1/", "sk", &req, true);
        assert_eq!(up.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(up.body["stream_options"]["include_usage"], true);
        assert_eq!(up.body["seed"], 7);
        assert!(up.headers.contains(&("authorization".into(), "Bearer sk".into())));
        let whole = upstream_request(Provider::OPENAI, "https://api.openai.com/v1", "sk", &req, false);
        assert!(whole.body.get("stream_options").is_none());
    }

    #[test]
    fn a_whole_reply_is_forwarded_with_its_usage() {
        let body = json!({"id": "chatcmpl-9", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
        let (c, u) = super::super::completion(Provider::OPENAI, &body, 0).unwrap();
        assert_eq!(c, body);
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn reasoning_tokens_are_read_from_the_usage_details() {
        let usage = json!({"prompt_tokens": 20, "completion_tokens": 90, "total_tokens": 110,
                           "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 64}});
        let u = super::usage_of(&usage).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens), (20, 90, 8, 64));
        assert_eq!(u.to_json()["completion_tokens_details"]["reasoning_tokens"], 64);
    }
}
