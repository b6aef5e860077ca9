//! LLM provider wire formats. Whatever the upstream, clients receive OpenAI's format:
//! `chat.completion.chunk` deltas, a final usage chunk, `data: [DONE]`, or a `chat.completion`.
//!
//! Pure functions over JSON, so the translation is tested natively; the chat-completion function
//! does the I/O.

use serde_json::{json, Map, Value};

/// The upstream API family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// api.openai.com.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// api.mistral.ai (OpenAI-shaped, usage in the last chunk, no `stream_options`).
    Mistral,
    /// Any OpenAI-compatible server: Ollama, vLLM, llama.cpp, OpenRouter.
    OpenAiCompatible,
}

impl Provider {
    /// Parses the name clients and variables use.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "openai" => Provider::OpenAi,
            "anthropic" => Provider::Anthropic,
            "mistral" => Provider::Mistral,
            "openai_compatible" | "openai-compatible" | "compatible" => Provider::OpenAiCompatible,
            _ => return None,
        })
    }

    /// The name used in rows and responses.
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Mistral => "mistral",
            Provider::OpenAiCompatible => "openai_compatible",
        }
    }

    /// Default base URL (the `*_base_url` variables override it).
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::OpenAi => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Mistral => "https://api.mistral.ai/v1",
            // No such thing: `compatible_base_url` must be set (chat::provider_config refuses
            // the provider until it is).
            Provider::OpenAiCompatible => "",
        }
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
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    fn from_openai(v: &Value) -> Option<Self> {
        let u = v.as_object()?;
        Some(Usage {
            prompt_tokens: u.get("prompt_tokens")?.as_u64()?,
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
            cached_tokens: v["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
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

/// Anthropic requires `max_tokens`; this is used when the client set none.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u64 = 4096;
/// The Messages API version we speak.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Builds the upstream request for an OpenAI-format chat request (`messages`, `model`,
/// `temperature`, `max_tokens`, `tools`, `tool_choice`, `stop`, ...).
pub fn upstream_request(
    provider: Provider,
    base_url: &str,
    api_key: &str,
    request: &Value,
    stream: bool,
) -> UpstreamRequest {
    let base = base_url.trim_end_matches('/');
    match provider {
        Provider::Anthropic => UpstreamRequest {
            url: format!("{base}/v1/messages"),
            headers: vec![
                ("x-api-key".into(), api_key.into()),
                ("anthropic-version".into(), ANTHROPIC_VERSION.into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: anthropic_body(request, stream),
        },
        _ => {
            let mut body = request.as_object().cloned().unwrap_or_default();
            body.insert("stream".into(), Value::Bool(stream));
            if stream && provider != Provider::Mistral {
                // Without this OpenAI streams carry no usage at all.
                body.insert("stream_options".into(), json!({"include_usage": true}));
            } else {
                body.remove("stream_options");
            }
            let mut headers = vec![("content-type".into(), "application/json".into())];
            if !api_key.is_empty() {
                headers.push(("authorization".into(), format!("Bearer {api_key}")));
            }
            UpstreamRequest { url: format!("{base}/chat/completions"), headers, body: Value::Object(body) }
        }
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// OpenAI content (string or parts) as Anthropic content blocks.
fn anthropic_content(content: &Value) -> Value {
    match content {
        Value::Array(parts) => Value::Array(
            parts
                .iter()
                .filter_map(|p| match p["type"].as_str() {
                    Some("text") => Some(json!({"type": "text", "text": p["text"]})),
                    Some("image_url") => {
                        let url = p["image_url"]["url"].as_str().unwrap_or_default();
                        match url.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
                            Some((media, data)) => Some(json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})),
                            None => Some(json!({"type": "image", "source": {"type": "url", "url": url}})),
                        }
                    }
                    _ => None,
                })
                .collect(),
        ),
        other => json!(text_of(other)),
    }
}

fn anthropic_body(request: &Value, stream: bool) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in request["messages"].as_array().into_iter().flatten() {
        match m["role"].as_str() {
            Some("system") | Some("developer") => system.push(text_of(&m["content"])),
            Some("tool") => {
                let block =
                    json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": text_of(&m["content"])});
                // Consecutive tool results share one user turn, as Anthropic requires.
                match messages.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"]
                                .as_array()
                                .is_some_and(|c| c.iter().all(|b| b["type"] == "tool_result")) =>
                    {
                        if let Some(c) = last["content"].as_array_mut() {
                            c.push(block);
                        }
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
            Some("assistant") => {
                let mut blocks = Vec::new();
                let text = text_of(&m["content"]);
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let input: Value = call["function"]["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or_else(|| json!({}));
                    blocks.push(
                        json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}),
                    );
                }
                messages.push(json!({"role": "assistant", "content": blocks}));
            }
            _ => messages.push(json!({"role": "user", "content": anthropic_content(&m["content"])})),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), request["model"].clone());
    body.insert("messages".into(), Value::Array(messages));
    body.insert(
        "max_tokens".into(),
        json!(request["max_completion_tokens"]
            .as_u64()
            .or(request["max_tokens"].as_u64())
            .unwrap_or(ANTHROPIC_DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    for key in ["temperature", "top_p"] {
        if !request[key].is_null() {
            body.insert(key.into(), request[key].clone());
        }
    }
    match &request["stop"] {
        Value::String(s) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Value::Array(a) => {
            body.insert("stop_sequences".into(), json!(a));
        }
        _ => {}
    }
    if let Some(tools) = request["tools"].as_array() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| json!({"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]}))
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        match &request["tool_choice"] {
            Value::String(s) if s == "required" => {
                body.insert("tool_choice".into(), json!({"type": "any"}));
            }
            Value::String(s) if s == "none" => {
                body.insert("tool_choice".into(), json!({"type": "none"}));
            }
            Value::Object(o) => {
                body.insert(
                    "tool_choice".into(),
                    json!({"type": "tool", "name": o.get("function").map(|f| f["name"].clone())}),
                );
            }
            _ => {}
        }
    }
    body.insert("stream".into(), Value::Bool(stream));
    Value::Object(body)
}

fn finish_reason(anthropic: &str) -> &'static str {
    match anthropic {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
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
    /// message has credentials masked (`chat::redact_secrets`).
    pub fn from_body(body: &Value) -> Option<Self> {
        Self::from_body_raw(body).map(|mut e| {
            e.message = crate::chat::redact_secrets(&e.message);
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

fn too_much(what: &str) -> StreamItem {
    StreamItem::Error(UpstreamError {
        message: format!("the provider's reply exceeded the limit of {what}"),
        kind: "provider_error".into(),
        code: Some("reply_too_large".into()),
    })
}

/// Translates one provider's event stream into OpenAI chunks and keeps the accounting: the
/// assistant's text, tool calls, finish reason and usage, each bounded.
#[derive(Debug)]
pub struct StreamTranslator {
    provider: Provider,
    /// Response id (`chatcmpl-...`).
    pub id: String,
    /// Model as the upstream named it.
    pub model: String,
    created: i64,
    /// The assistant text so far.
    pub text: String,
    /// Tool calls so far (see [`StreamTranslator::tool_calls`]).
    calls: Vec<ToolCall>,
    /// Bytes of text and tool-call arguments so far, against [`MAX_REPLY_BYTES`].
    reply_bytes: usize,
    /// Why it stopped, once known.
    pub finish_reason: Option<String>,
    /// Usage, once known.
    pub usage: Option<Usage>,
    /// Anthropic: content block index -> tool call index.
    anthropic_tools: Vec<(u64, usize)>,
}

impl StreamTranslator {
    /// A translator for `provider`; `id`, `model` and `created` label our chunks until the
    /// upstream names its own.
    pub fn new(provider: Provider, id: String, model: String, created: i64) -> Self {
        StreamTranslator {
            provider,
            id,
            model,
            created,
            text: String::new(),
            calls: Vec::new(),
            reply_bytes: 0,
            finish_reason: None,
            usage: None,
            anthropic_tools: Vec::new(),
        }
    }

    /// Counts `n` more reply bytes; `false` once past [`MAX_REPLY_BYTES`].
    fn grow(&mut self, n: usize) -> bool {
        self.reply_bytes = self.reply_bytes.saturating_add(n);
        self.reply_bytes <= MAX_REPLY_BYTES
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

    /// Handles one SSE event from the upstream.
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
        match self.provider {
            Provider::Anthropic => self.anthropic(&v),
            _ => self.openai(v),
        }
    }

    fn openai(&mut self, mut v: Value) -> Vec<StreamItem> {
        if let Some(id) = v["id"].as_str() {
            self.id = id.to_owned();
        }
        if let Some(m) = v["model"].as_str() {
            self.model = m.to_owned();
        }
        if let Some(u) = Usage::from_openai(&v["usage"]) {
            self.usage = Some(u);
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            if let Some(t) = choice["delta"]["content"].as_str() {
                if !self.grow(t.len()) {
                    return vec![too_much(&format!("{MAX_REPLY_BYTES} bytes"))];
                }
                self.text.push_str(t);
            }
            for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap_or(0);
                if index >= MAX_TOOL_CALLS as u64 {
                    return vec![too_much(&format!("{MAX_TOOL_CALLS} tool calls"))];
                }
                let index = index as usize;
                if self.calls.len() <= index {
                    self.calls.resize_with(index + 1, ToolCall::default);
                }
                let args = call["function"]["arguments"].as_str().unwrap_or_default();
                let name = call["function"]["name"].as_str().unwrap_or_default();
                if !self.grow(args.len() + name.len()) {
                    return vec![too_much(&format!("{MAX_REPLY_BYTES} bytes"))];
                }
                let slot = &mut self.calls[index];
                if let Some(id) = call["id"].as_str() {
                    slot.id = Some(id.to_owned());
                }
                if !name.is_empty() {
                    slot.name = name.to_owned();
                }
                slot.arguments.push_str(args);
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(r.to_owned());
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

    fn anthropic(&mut self, v: &Value) -> Vec<StreamItem> {
        match v["type"].as_str() {
            Some("message_start") => {
                let m = &v["message"];
                if let Some(id) = m["id"].as_str() {
                    self.id = id.to_owned();
                }
                if let Some(model) = m["model"].as_str() {
                    self.model = model.to_owned();
                }
                let u = &m["usage"];
                let cache_read = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
                let cache_write = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
                self.usage = Some(Usage {
                    prompt_tokens: u["input_tokens"].as_u64().unwrap_or(0) + cache_read + cache_write,
                    // message_start's output_tokens is a placeholder; message_delta carries the total.
                    completion_tokens: 0,
                    cached_tokens: cache_read,
                });
                vec![StreamItem::Chunk(self.chunk(json!({"role": "assistant", "content": ""}), None))]
            }
            Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
                let tool_index = self.calls.len();
                if tool_index >= MAX_TOOL_CALLS {
                    return vec![too_much(&format!("{MAX_TOOL_CALLS} tool calls"))];
                }
                self.anthropic_tools.push((v["index"].as_u64().unwrap_or(0), tool_index));
                let b = &v["content_block"];
                self.calls.push(ToolCall {
                    id: b["id"].as_str().map(str::to_owned),
                    name: b["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: String::new(),
                });
                let delta = json!({"tool_calls": [{"index": tool_index, "id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": ""}}]});
                vec![StreamItem::Chunk(self.chunk(delta, None))]
            }
            Some("content_block_delta") => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        let t = d["text"].as_str().unwrap_or_default();
                        if !self.grow(t.len()) {
                            return vec![too_much(&format!("{MAX_REPLY_BYTES} bytes"))];
                        }
                        self.text.push_str(t);
                        vec![StreamItem::Chunk(self.chunk(json!({"content": t}), None))]
                    }
                    Some("input_json_delta") => {
                        let block = v["index"].as_u64().unwrap_or(0);
                        let Some(&(_, tool_index)) = self.anthropic_tools.iter().find(|(b, _)| *b == block) else {
                            return Vec::new();
                        };
                        let part = d["partial_json"].as_str().unwrap_or_default();
                        if !self.grow(part.len()) {
                            return vec![too_much(&format!("{MAX_REPLY_BYTES} bytes"))];
                        }
                        let Some(call) = self.calls.get_mut(tool_index) else { return Vec::new() };
                        call.arguments.push_str(part);
                        let delta = json!({"tool_calls": [{"index": tool_index, "function": {"arguments": part}}]});
                        vec![StreamItem::Chunk(self.chunk(delta, None))]
                    }
                    _ => Vec::new(), // thinking / signature deltas are not part of OpenAI's format
                }
            }
            Some("message_delta") => {
                if let Some(out) = v["usage"]["output_tokens"].as_u64() {
                    // Cumulative: replace, never add.
                    let u = self.usage.get_or_insert_with(Usage::default);
                    u.completion_tokens = out;
                }
                match v["delta"]["stop_reason"].as_str() {
                    Some(r) => {
                        let reason = finish_reason(r);
                        self.finish_reason = Some(reason.to_owned());
                        vec![StreamItem::Chunk(self.chunk(json!({}), Some(reason)))]
                    }
                    None => Vec::new(),
                }
            }
            Some("message_stop") => vec![StreamItem::Done],
            _ => Vec::new(), // ping, content_block_stop, text block starts
        }
    }
}

/// A non-streaming upstream response as OpenAI's `chat.completion`, with its usage.
pub fn completion(provider: Provider, body: &Value, created: i64) -> Result<(Value, Usage), UpstreamError> {
    if let Some(e) =
        UpstreamError::from_body(body).filter(|_| body.get("choices").is_none() && body.get("content").is_none())
    {
        return Err(e);
    }
    match provider {
        Provider::Anthropic => {
            let mut text = String::new();
            let mut tool_calls = Vec::new();
            for block in body["content"].as_array().into_iter().flatten() {
                match block["type"].as_str() {
                    Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
                    Some("tool_use") => tool_calls.push(json!({
                        "id": block["id"], "type": "function",
                        "function": {"name": block["name"], "arguments": block["input"].to_string()},
                    })),
                    _ => {}
                }
            }
            let u = &body["usage"];
            let cache_read = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
            let usage = Usage {
                prompt_tokens: u["input_tokens"].as_u64().unwrap_or(0)
                    + cache_read
                    + u["cache_creation_input_tokens"].as_u64().unwrap_or(0),
                completion_tokens: u["output_tokens"].as_u64().unwrap_or(0),
                cached_tokens: cache_read,
            };
            let mut message = json!({"role": "assistant", "content": text, "refusal": null});
            if !tool_calls.is_empty() {
                message["tool_calls"] = Value::Array(tool_calls);
            }
            Ok((
                json!({
                    "id": body["id"], "object": "chat.completion", "created": created, "model": body["model"],
                    "choices": [{"index": 0, "message": message, "logprobs": null,
                                 "finish_reason": finish_reason(body["stop_reason"].as_str().unwrap_or("end_turn"))}],
                    "usage": usage.to_json(),
                }),
                usage,
            ))
        }
        _ => {
            let usage = Usage::from_openai(&body["usage"]).unwrap_or_default();
            Ok((body.clone(), usage))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Parser;

    fn run(provider: Provider, wire: &str) -> (StreamTranslator, Vec<StreamItem>) {
        let mut t = StreamTranslator::new(provider, "chatcmpl-local".into(), "m".into(), 1);
        let mut items = Vec::new();
        for e in Parser::new().feed(wire.as_bytes()).unwrap() {
            items.extend(t.event(e.event.as_deref(), &e.data));
        }
        (t, items)
    }

    const OPENAI: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn openai_stream_passes_through_with_usage() {
        let (t, items) = run(Provider::OpenAi, OPENAI);
        assert_eq!(t.text, "Hello");
        assert_eq!(t.usage, Some(Usage { prompt_tokens: 9, completion_tokens: 2, cached_tokens: 4 }));
        assert_eq!(t.finish_reason.as_deref(), Some("stop"));
        assert_eq!(t.id, "chatcmpl-1");
        let chunks = items.iter().filter(|i| matches!(i, StreamItem::Chunk(_))).count();
        assert_eq!(chunks, 4, "the usage-only chunk is re-emitted by usage_chunk(), not forwarded");
        assert_eq!(items.last(), Some(&StreamItem::Done));
        assert_eq!(t.usage_chunk()["usage"]["total_tokens"], 11);
    }

    #[test]
    fn mistral_usage_on_the_last_content_chunk() {
        let wire = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":10,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        let (t, items) = run(Provider::Mistral, wire);
        assert_eq!(t.usage, Some(Usage { prompt_tokens: 7, completion_tokens: 3, cached_tokens: 0 }));
        match &items[1] {
            StreamItem::Chunk(c) => assert!(c.get("usage").is_none(), "usage moves to the closing chunk"),
            other => panic!("{other:?}"),
        }
    }

    const ANTHROPIC: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn anthropic_stream_becomes_openai_chunks() {
        let (t, items) = run(Provider::Anthropic, ANTHROPIC);
        assert_eq!(t.text, "Hello");
        // input + cache reads as prompt; output from message_delta, not added to message_start's 1.
        assert_eq!(t.usage, Some(Usage { prompt_tokens: 35, completion_tokens: 15, cached_tokens: 10 }));
        assert_eq!(t.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(t.tool_calls()[0]["function"]["arguments"], "{\"city\": \"Paris\"}");
        assert_eq!(t.tool_calls()[0]["id"], "toolu_1");
        let chunks: Vec<&Value> =
            items.iter().filter_map(|i| if let StreamItem::Chunk(c) = i { Some(c) } else { None }).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        assert_eq!(chunks[0]["id"], "msg_1");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello");
        assert_eq!(chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(chunks[3]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(items.last(), Some(&StreamItem::Done));
    }

    #[test]
    fn mid_stream_errors_surface_in_openai_shape() {
        let (_, items) = run(
            Provider::Anthropic,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let StreamItem::Error(e) = &items[0] else { panic!("{items:?}") };
        assert_eq!(e.to_json()["error"]["type"], "overloaded_error");
        let (_, items) = run(
            Provider::OpenAi,
            "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":null}}\n\n",
        );
        assert!(matches!(&items[0], StreamItem::Error(e) if e.message == "boom"));
    }

    #[test]
    fn provider_output_is_bounded() {
        let chunk =
            |delta: Value| format!("data: {}\n\n", json!({"id": "c", "choices": [{"index": 0, "delta": delta}]}));
        // A huge tool-call index allocates nothing: the stream ends with a provider error.
        let (t, items) = run(
            Provider::OpenAi,
            &chunk(json!({"tool_calls": [{"index": 4_000_000_000u64, "function": {"arguments": "{}"}}]})),
        );
        assert!(matches!(&items[0], StreamItem::Error(e) if e.kind == "provider_error"), "{items:?}");
        assert!(t.tool_calls().is_empty());
        // Arguments past the reply cap end it too.
        let mut wire = String::new();
        let piece = "x".repeat(1 << 20);
        for _ in 0..9 {
            wire.push_str(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})));
        }
        let (t, items) = run(Provider::OpenAi, &wire);
        assert!(items.iter().any(|i| matches!(i, StreamItem::Error(_))), "the reply cap stops the stream");
        assert!(t.tool_calls()[0]["function"]["arguments"].as_str().unwrap().len() <= MAX_REPLY_BYTES);
        // Appends are linear: many small deltas assemble one argument string.
        let small: String = (0..2000)
            .map(|i| chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": format!("{}", i % 10)}}]})))
            .collect();
        let (t, _) = run(Provider::OpenAi, &small);
        assert_eq!(t.tool_calls()[0]["function"]["arguments"].as_str().unwrap().len(), 2000);
    }

    #[test]
    fn anthropic_request_translation() {
        let req = json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            ],
            "temperature": 0.2,
            "stop": "END",
            "tools": [{"type": "function", "function": {"name": "w", "description": "d", "parameters": {"type": "object"}}}],
        });
        let up = upstream_request(Provider::Anthropic, "https://api.anthropic.com/", "sk-ant", &req, true);
        assert_eq!(up.url, "https://api.anthropic.com/v1/messages");
        assert!(up.headers.contains(&("x-api-key".into(), "sk-ant".into())));
        let b = &up.body;
        assert_eq!(b["system"], "Be brief");
        assert_eq!(b["max_tokens"], ANTHROPIC_DEFAULT_MAX_TOKENS);
        assert_eq!(b["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(b["messages"][1]["content"][0]["input"]["city"], "Paris");
        assert_eq!(b["messages"][2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(b["stream"], true);
    }

    #[test]
    fn openai_family_requests() {
        let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        let up = upstream_request(Provider::OpenAi, "https://api.openai.com/v1", "sk", &req, true);
        assert_eq!(up.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(up.body["stream_options"]["include_usage"], true);
        let m = upstream_request(Provider::Mistral, "https://api.mistral.ai/v1", "k", &req, true);
        assert!(m.body.get("stream_options").is_none(), "Mistral rejects stream_options");
        let local = upstream_request(Provider::OpenAiCompatible, "http://127.0.0.1:11434/v1", "", &req, false);
        assert!(!local.headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(local.body["stream"], false);
    }

    #[test]
    fn non_streaming_anthropic_completion() {
        let body = json!({"id": "msg_1", "type": "message", "model": "claude-haiku-4-5", "content": [{"type": "text", "text": "Hi"}],
                          "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 5}});
        let (c, u) = completion(Provider::Anthropic, &body, 9).unwrap();
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["choices"][0]["message"]["content"], "Hi");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(u, Usage { prompt_tokens: 3, completion_tokens: 5, cached_tokens: 0 });
        let err = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}});
        assert_eq!(completion(Provider::Anthropic, &err, 0).unwrap_err().kind, "rate_limit_error");
    }

    #[test]
    fn error_bodies_of_every_provider() {
        let openai = json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
        assert_eq!(UpstreamError::from_body(&openai).unwrap().code.as_deref(), Some("rate_limit_exceeded"));
        let mistral =
            json!({"object": "error", "message": "Unauthorized", "type": "invalid_request_error", "code": "1000"});
        assert_eq!(UpstreamError::from_body(&mistral).unwrap().message, "Unauthorized");
        assert!(UpstreamError::from_body(&json!({"choices": []})).is_none());
    }
}
