//! LLM providers as units. Whatever the upstream, clients receive OpenAI's format:
//! `chat.completion.chunk` deltas, a final usage chunk, `data: [DONE]`, or a `chat.completion`.
//!
//! Each provider is one file behind [`ProviderApi`]: its settings' names and defaults, how an
//! OpenAI-format request becomes its request, how its stream and its whole reply become OpenAI's.
//! Adding one is a new file, its `mod` line and an entry in [`REGISTRY`]. What every provider
//! shares lives here: the handle, usage, the reply being assembled (bounded), error bodies.
//!
//! Pure functions over JSON, so the translation is tested natively; the component does the I/O.

mod anthropic;
mod compatible;
#[cfg(test)]
mod example;
mod mistral;
mod openai;

use crate::embeddings::EmbeddingsRequest;
use serde_json::{json, Value};
use std::fmt;

/// One provider's API: everything chatedge needs to know to call it.
pub trait ProviderApi: Sync {
    /// The name used in requests, rows and responses.
    fn name(&self) -> &'static str;
    /// Other spellings a request may use.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// Prefix of its variables: `<prefix>_api_key`, `<prefix>_base_url`, `<prefix>_default_model`.
    fn variable_prefix(&self) -> &'static str;
    /// Its official base URL, or `None` when there is none and `<prefix>_base_url` must be set.
    fn official_base_url(&self) -> Option<&'static str>;
    /// The model used when neither the request nor `<prefix>_default_model` names one.
    fn default_model(&self) -> &'static str;
    /// Whether a bare model name is this provider's (for requests that name no provider).
    fn owns_model(&self, _model: &str) -> bool {
        false
    }
    /// Whether a stream may ask for the closing usage chunk (`stream_options.include_usage`);
    /// only for the OpenAI-shaped default of [`ProviderApi::request`].
    fn stream_usage_option(&self) -> bool {
        true
    }
    /// The upstream request for an OpenAI-format chat body (`messages`, `model`, `temperature`,
    /// `max_tokens`, `tools`, `tool_choice`, `stop`, ...). By default OpenAI's Chat Completions
    /// shape, passed through (`openai.rs`); a provider with its own API overrides this and the
    /// two below.
    fn request(&self, base_url: &str, api_key: &str, body: &Value, stream: bool) -> UpstreamRequest {
        openai::chat_completions_request(base_url, api_key, body, stream, self.stream_usage_option())
    }
    /// A decoder for one streamed response.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(openai::PassThrough)
    }
    /// A whole (non-streamed) response as OpenAI's `chat.completion`, with its usage. Error
    /// bodies were already taken out by [`completion`].
    fn completion(&self, body: &Value, _created: i64) -> (Value, Usage) {
        openai::pass_through_completion(body)
    }
    /// The upstream request for `POST /v1/embeddings`, or `None` when the provider has no
    /// embeddings API. By default OpenAI's `/embeddings` asking for floats (`openai.rs`); the
    /// reply is read by [`crate::embeddings::read_reply`] whichever encoding comes back.
    fn embeddings_request(
        &self,
        base_url: &str,
        api_key: &str,
        request: &EmbeddingsRequest,
    ) -> Option<UpstreamRequest> {
        Some(openai::embeddings_request(base_url, api_key, request, "float"))
    }
}

/// Turns one provider's stream events into OpenAI chunks, keeping what it needs between events.
pub trait StreamDecoder {
    /// One upstream event, parsed and known not to be an error, into what the client gets; the
    /// reply's text, tool calls, finish reason and usage are updated through `reply`.
    fn event(&mut self, reply: &mut Reply, event: Value) -> Vec<StreamItem>;
}

/// Every provider, in the order a bare model name is tried against them.
pub const REGISTRY: &[Provider] = &[Provider::OPENAI, Provider::ANTHROPIC, Provider::MISTRAL, Provider::COMPATIBLE];

/// A provider: a cheap handle on its [`ProviderApi`], compared by name.
#[derive(Clone, Copy)]
pub struct Provider(&'static dyn ProviderApi);

impl Provider {
    /// api.openai.com.
    pub const OPENAI: Provider = Provider(&openai::OpenAi);
    /// Anthropic's Messages API.
    pub const ANTHROPIC: Provider = Provider(&anthropic::Anthropic);
    /// api.mistral.ai (OpenAI-shaped, usage in the last chunk, no `stream_options`).
    pub const MISTRAL: Provider = Provider(&mistral::Mistral);
    /// Any OpenAI-compatible server: Ollama, vLLM, llama.cpp, OpenRouter.
    pub const COMPATIBLE: Provider = Provider(&compatible::Compatible);

    /// The provider a request or a variable names.
    pub fn parse(name: &str) -> Option<Self> {
        REGISTRY.iter().copied().find(|p| p.name() == name || p.0.aliases().contains(&name))
    }

    /// The provider a bare model name belongs to, by its well-known prefixes.
    pub fn owning(model: &str) -> Option<Self> {
        let model = model.to_ascii_lowercase();
        REGISTRY.iter().copied().find(|p| p.0.owns_model(&model))
    }

    /// Its API.
    pub fn api(self) -> &'static dyn ProviderApi {
        self.0
    }

    /// The name used in rows and responses.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The official base URL (the `*_base_url` variables override it); empty when there is none.
    pub fn default_base_url(self) -> &'static str {
        self.0.official_base_url().unwrap_or("")
    }
}

impl PartialEq for Provider {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Provider {}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Token usage of one provider call, in OpenAI's terms (`prompt_tokens` includes cached ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`, priced above plain input), part of `prompt_tokens`.
    pub cache_write_tokens: u64,
    /// Output tokens the model spent reasoning (OpenAI's `reasoning_tokens`), part of
    /// `completion_tokens`.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

/// An upstream HTTP request, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    /// Full URL.
    pub url: String,
    /// Headers (the API key among them: never log these).
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Value,
}

/// Builds `provider`'s upstream request for an OpenAI-format chat body.
pub fn upstream_request(
    provider: Provider,
    base_url: &str,
    api_key: &str,
    request: &Value,
    stream: bool,
) -> UpstreamRequest {
    provider.0.request(base_url.trim_end_matches('/'), api_key, request, stream)
}

/// Builds `provider`'s embeddings request; `None` when it has no embeddings API.
pub fn embeddings_request(
    provider: Provider,
    base_url: &str,
    api_key: &str,
    request: &EmbeddingsRequest,
) -> Option<UpstreamRequest> {
    provider.0.embeddings_request(base_url.trim_end_matches('/'), api_key, request)
}

/// Text of OpenAI message content (a string, or the text parts of an array), for providers
/// that take text where OpenAI takes parts.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// An error the upstream reported (status, or an error event inside the stream), in OpenAI's
/// error shape: `{"error": {"message", "type", "code", "param"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamError {
    /// `error.message`.
    pub message: String,
    /// `error.type`, e.g. `server_error`, `rate_limit_error`, `overloaded_error`.
    pub kind: String,
    /// `error.code`, when given.
    pub code: Option<String>,
}

impl UpstreamError {
    /// OpenAI's error object.
    pub fn to_json(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// Reads an error body of any of the providers (`{"error": {...}}`, Anthropic's
    /// `{"type":"error","error":{...}}`, Mistral's `{"message": ...}`); `None` if not one. The
    /// message has credentials masked (`failure::redact_secrets`).
    pub fn from_body(body: &Value) -> Option<Self> {
        Self::from_body_raw(body).map(|mut e| {
            e.message = crate::failure::redact_secrets(&e.message);
            e
        })
    }

    fn from_body_raw(body: &Value) -> Option<Self> {
        let e = &body["error"];
        if e.is_object() {
            return Some(UpstreamError {
                message: e["message"].as_str().unwrap_or("upstream error").to_owned(),
                kind: e["type"].as_str().unwrap_or("server_error").to_owned(),
                code: e["code"].as_str().map(str::to_owned).or_else(|| e["code"].as_u64().map(|c| c.to_string())),
            });
        }
        if let Some(m) = body["message"].as_str().or(body["detail"].as_str()).or(e.as_str()) {
            return Some(UpstreamError {
                message: m.to_owned(),
                kind: body["type"].as_str().unwrap_or("server_error").to_owned(),
                code: body["code"].as_str().map(str::to_owned),
            });
        }
        None
    }
}

/// What one upstream event means for the client.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A `chat.completion.chunk` to forward.
    Chunk(Value),
    /// The upstream reported an error; forward it and end the stream.
    Error(UpstreamError),
    /// The upstream finished.
    Done,
}

/// Most tool calls one reply may make (OpenAI allows 128 tools per request).
pub const MAX_TOOL_CALLS: usize = 128;
/// Most bytes of text and tool-call arguments one reply may carry; a provider that sends more
/// ends the stream with a `provider_error` instead of growing this instance's memory. Equal to
/// the `messages_content_size` check of migration 0006, so a reply within it is always storable.
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// One tool call being assembled from deltas (arguments appended in place: linear, not the
/// quadratic re-concatenation of a JSON string per delta).
#[derive(Debug, Default, Clone)]
struct ToolCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// The stream error that ends a reply past one of the bounds.
fn too_much(what: &str) -> StreamItem {
    StreamItem::Error(UpstreamError {
        message: format!("the provider's reply exceeded the limit of {what}"),
        kind: "provider_error".into(),
        code: Some("reply_too_large".into()),
    })
}

/// The reply as it arrives, whichever the provider: what is stored and accounted once the
/// stream ends, every part of it bounded.
#[derive(Debug)]
pub struct Reply {
    /// Response id (`chatcmpl-...`, or the provider's own once it names one).
    pub id: String,
    /// Model as the upstream named it.
    pub model: String,
    created: i64,
    /// The assistant text so far.
    pub text: String,
    calls: Vec<ToolCall>,
    /// Bytes of text and tool-call arguments so far, against [`MAX_REPLY_BYTES`].
    reply_bytes: usize,
    /// Why it stopped, once known.
    pub finish_reason: Option<String>,
    /// Usage, once known.
    pub usage: Option<Usage>,
}

impl Reply {
    /// Counts `n` more reply bytes; the stream's end once past [`MAX_REPLY_BYTES`].
    fn grow(&mut self, n: usize) -> Result<(), StreamItem> {
        self.reply_bytes = self.reply_bytes.saturating_add(n);
        if self.reply_bytes <= MAX_REPLY_BYTES {
            Ok(())
        } else {
            Err(too_much(&format!("{MAX_REPLY_BYTES} bytes")))
        }
    }

    /// Appends assistant text.
    pub(crate) fn push_text(&mut self, text: &str) -> Result<(), StreamItem> {
        self.grow(text.len())?;
        self.text.push_str(text);
        Ok(())
    }

    /// Number of tool calls so far.
    pub(crate) fn tool_call_count(&self) -> usize {
        self.calls.len()
    }

    /// A delta of tool call `index`: its id and name when first seen, arguments appended.
    pub(crate) fn tool_call_delta(
        &mut self,
        index: u64,
        id: Option<&str>,
        name: &str,
        arguments: &str,
    ) -> Result<(), StreamItem> {
        if index >= MAX_TOOL_CALLS as u64 {
            return Err(too_much(&format!("{MAX_TOOL_CALLS} tool calls")));
        }
        let index = index as usize;
        self.grow(arguments.len() + name.len())?;
        if self.calls.len() <= index {
            self.calls.resize_with(index + 1, ToolCall::default);
        }
        let slot = &mut self.calls[index];
        if let Some(id) = id {
            slot.id = Some(id.to_owned());
        }
        if !name.is_empty() {
            slot.name = name.to_owned();
        }
        slot.arguments.push_str(arguments);
        Ok(())
    }

    /// The tool calls so far, OpenAI-shaped (`{id, type, function: {name, arguments}}`).
    pub fn tool_calls(&self) -> Vec<Value> {
        self.calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect()
    }

    /// One chunk in our labels.
    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    /// The closing usage chunk (`choices: []`), as OpenAI sends with `include_usage`.
    pub fn usage_chunk(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage.unwrap_or_default().to_json(),
        })
    }
}

/// Translates one provider's event stream into OpenAI chunks and keeps the reply.
pub struct StreamTranslator {
    /// The reply so far.
    pub reply: Reply,
    decoder: Box<dyn StreamDecoder>,
}

impl StreamTranslator {
    /// A translator for `provider`; `id`, `model` and `created` label our chunks until the
    /// upstream names its own.
    pub fn new(provider: Provider, id: String, model: String, created: i64) -> Self {
        StreamTranslator {
            reply: Reply {
                id,
                model,
                created,
                text: String::new(),
                calls: Vec::new(),
                reply_bytes: 0,
                finish_reason: None,
                usage: None,
            },
            decoder: provider.0.stream_decoder(),
        }
    }

    /// Handles one SSE event from the upstream. Errors are recognised in any provider's shape
    /// (an `error` event, `"type": "error"`, an `error` object without `choices`).
    pub fn event(&mut self, event: Option<&str>, data: &str) -> Vec<StreamItem> {
        if data == "[DONE]" {
            return vec![StreamItem::Done];
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return Vec::new(); // keep-alives and non-JSON noise are not forwarded
        };
        if event == Some("error") || v["type"] == "error" || (v["error"].is_object() && v.get("choices").is_none()) {
            return vec![StreamItem::Error(UpstreamError::from_body(&v).unwrap_or(UpstreamError {
                message: "upstream stream error".into(),
                kind: "server_error".into(),
                code: None,
            }))];
        }
        self.decoder.event(&mut self.reply, v)
    }
}

/// A non-streaming upstream response as OpenAI's `chat.completion`, with its usage; an error
/// body (in any provider's shape) as the error.
pub fn completion(provider: Provider, body: &Value, created: i64) -> Result<(Value, Usage), UpstreamError> {
    if let Some(e) =
        UpstreamError::from_body(body).filter(|_| body.get("choices").is_none() && body.get("content").is_none())
    {
        return Err(e);
    }
    Ok(provider.0.completion(body, created))
}

/// Test helpers for the provider files: a recorded stream run through a translator.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::sse::Parser;

    /// Every event of `wire` through a fresh translator for `provider`.
    pub fn run(provider: Provider, wire: &str) -> (Reply, Vec<StreamItem>) {
        let mut t = StreamTranslator::new(provider, "chatcmpl-local".into(), "m".into(), 1);
        let mut items = Vec::new();
        for e in Parser::new().feed(wire.as_bytes()).unwrap() {
            items.extend(t.event(e.event.as_deref(), &e.data));
        }
        (t.reply, items)
    }

    /// The chunks among `items`.
    pub fn chunks(items: &[StreamItem]) -> Vec<&Value> {
        items.iter().filter_map(|i| if let StreamItem::Chunk(c) = i { Some(c) } else { None }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::run;
    use super::*;

    #[test]
    fn the_registry_names_every_provider_once() {
        for p in REGISTRY {
            assert_eq!(Provider::parse(p.name()), Some(*p));
            assert_eq!(REGISTRY.iter().filter(|q| q.name() == p.name()).count(), 1);
        }
        assert_eq!(Provider::parse("openai-compatible"), Some(Provider::COMPATIBLE));
        assert_eq!(Provider::parse("bogus"), None);
        assert_eq!(Provider::owning("claude-sonnet-4-5"), Some(Provider::ANTHROPIC));
        assert_eq!(Provider::owning("mistral-small-latest"), Some(Provider::MISTRAL));
        assert_eq!(Provider::owning("GPT-4o-mini"), Some(Provider::OPENAI));
        assert_eq!(Provider::owning("llama3.2"), None);
    }

    #[test]
    fn mid_stream_errors_surface_in_openai_shape() {
        let (_, items) = run(
            Provider::ANTHROPIC,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let StreamItem::Error(e) = &items[0] else { panic!("{items:?}") };
        assert_eq!(e.to_json()["error"]["type"], "overloaded_error");
        let (_, items) = run(
            Provider::OPENAI,
            "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":null}}\n\n",
        );
        assert!(matches!(&items[0], StreamItem::Error(e) if e.message == "boom"));
    }

    #[test]
    fn provider_output_is_bounded() {
        let chunk =
            |delta: Value| format!("data: {}\n\n", json!({"id": "c", "choices": [{"index": 0, "delta": delta}]}));
        // A huge tool-call index allocates nothing: the stream ends with a provider error.
        let (reply, items) = run(
            Provider::OPENAI,
            &chunk(json!({"tool_calls": [{"index": 4_000_000_000u64, "function": {"arguments": "{}"}}]})),
        );
        assert!(matches!(&items[0], StreamItem::Error(e) if e.kind == "provider_error"), "{items:?}");
        assert!(reply.tool_calls().is_empty());
        // Arguments past the reply cap end it too.
        let mut wire = String::new();
        let piece = "x".repeat(1 << 20);
        for _ in 0..9 {
            wire.push_str(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})));
        }
        let (reply, items) = run(Provider::OPENAI, &wire);
        assert!(items.iter().any(|i| matches!(i, StreamItem::Error(_))), "the reply cap stops the stream");
        assert!(reply.tool_calls()[0]["function"]["arguments"].as_str().unwrap().len() <= MAX_REPLY_BYTES);
        // Appends are linear: many small deltas assemble one argument string.
        let small: String = (0..2000)
            .map(|i| chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": format!("{}", i % 10)}}]})))
            .collect();
        let (reply, _) = run(Provider::OPENAI, &small);
        assert_eq!(reply.tool_calls()[0]["function"]["arguments"].as_str().unwrap().len(), 2000);
        // The same bounds hold for Anthropic's tool blocks.
        let mut wire = String::new();
        for i in 0..=MAX_TOOL_CALLS {
            wire.push_str(&format!(
                "event: content_block_start\ndata: {}\n\n",
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": format!("t{i}"), "name": "f", "input": {}}})
            ));
        }
        let (reply, items) = run(Provider::ANTHROPIC, &wire);
        assert!(matches!(items.last(), Some(StreamItem::Error(e)) if e.kind == "provider_error"), "{:?}", items.last());
        assert_eq!(reply.tool_calls().len(), MAX_TOOL_CALLS);
    }

    #[test]
    fn error_bodies_of_every_provider() {
        let openai = json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
        assert_eq!(UpstreamError::from_body(&openai).unwrap().code.as_deref(), Some("rate_limit_exceeded"));
        let mistral =
            json!({"object": "error", "message": "Unauthorized", "type": "invalid_request_error", "code": "1000"});
        assert_eq!(UpstreamError::from_body(&mistral).unwrap().message, "Unauthorized");
        assert!(UpstreamError::from_body(&json!({"choices": []})).is_none());
        let anthropic = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}});
        assert_eq!(completion(Provider::ANTHROPIC, &anthropic, 0).unwrap_err().kind, "rate_limit_error");
    }
}
