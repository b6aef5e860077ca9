//! Anthropic's Messages API (`POST /v1/messages`, version 2023-06-01), translated both ways:
//! OpenAI-format requests become Messages requests (system prompts lifted out, tool calls as
//! `tool_use` blocks, tool results grouped into one user turn, `max_tokens` always set), and
//! Messages replies and their named stream events become OpenAI chunks and completions.
//!
//! What Anthropic sends is read through the typed wire structs below; fields it may leave out
//! default, and event or block types chatedge does not translate (ping, thinking) are skipped.

use super::{text_of, ProviderApi, Reply, StreamDecoder, StreamItem, UpstreamRequest, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Anthropic requires `max_tokens`; this is used when the client set none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The Messages API version spoken.
pub const VERSION: &str = "2023-06-01";
/// The tool a `response_format` becomes: Anthropic has no JSON mode, so a JSON answer is asked
/// for as this tool's input (forced when the client has no tools of its own) and its input comes
/// back to the client as the reply's text.
pub const STRUCTURED_OUTPUT_TOOL: &str = "chatedge_structured_output";

/// api.anthropic.com.
pub struct Anthropic;

impl ProviderApi for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }
    fn variable_prefix(&self) -> &'static str {
        "anthropic"
    }
    fn official_base_url(&self) -> Option<&'static str> {
        Some("https://api.anthropic.com")
    }
    fn default_model(&self) -> &'static str {
        "claude-sonnet-4-5"
    }
    fn owns_model(&self, model: &str) -> bool {
        model.starts_with("claude")
    }
    fn request(&self, base_url: &str, api_key: &str, body: &Value, stream: bool) -> UpstreamRequest {
        UpstreamRequest {
            url: format!("{base_url}/v1/messages"),
            headers: vec![
                ("x-api-key".into(), api_key.into()),
                ("anthropic-version".into(), VERSION.into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: messages_body(body, stream),
        }
    }
    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(Decoder::default())
    }
    fn embeddings_request(
        &self,
        _base_url: &str,
        _api_key: &str,
        _request: &crate::embeddings::EmbeddingsRequest,
    ) -> Option<UpstreamRequest> {
        // Anthropic has no embeddings API (it points to Voyage AI).
        None
    }
    fn completion(&self, body: &Value, created: i64) -> (Value, Usage) {
        let message = Message::deserialize(body).unwrap_or_default();
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in &message.content {
            match block {
                Block::Text { text: t } => text.push_str(t),
                Block::ToolUse { name, input, .. } if name == STRUCTURED_OUTPUT_TOOL => {
                    text.push_str(&input.to_string())
                }
                Block::ToolUse { id, name, input } => tool_calls.push(json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                })),
                Block::Other => {}
            }
        }
        let usage = message.usage.to_usage();
        let mut finish = finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn"));
        if finish == "tool_calls" && tool_calls.is_empty() {
            // Only the structured-output tool was used: to the client that is a finished answer.
            finish = "stop";
        }
        let mut reply = json!({"role": "assistant", "content": text, "refusal": null});
        if !tool_calls.is_empty() {
            reply["tool_calls"] = Value::Array(tool_calls);
        }
        let completion = json!({
            "id": message.id, "object": "chat.completion", "created": created, "model": message.model,
            "choices": [{"index": 0, "message": reply, "logprobs": null, "finish_reason": finish}],
            "usage": usage.to_json(),
        });
        (completion, usage)
    }
}

/// A Messages reply (non-streamed), or the `message` of `message_start`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message {
    id: Option<String>,
    model: Option<String>,
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: WireUsage,
}

/// A content block.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Anthropic's usage: input excludes cache reads and writes, which are counted separately.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl WireUsage {
    /// In OpenAI's terms: every input token (cached and cache-written ones too) is a prompt token.
    fn to_usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens,
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
            reasoning_tokens: 0,
        }
    }
}

/// A stream event, by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: Message,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u64,
        content_block: Block,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u64,
        delta: Delta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDelta,
        #[serde(default)]
        usage: WireUsage,
    },
    MessageStop,
    /// ping, content_block_stop, and types added later.
    #[serde(other)]
    Other,
}

/// A content block delta.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text {
        #[serde(default)]
        text: String,
    },
    #[serde(rename = "input_json_delta")]
    InputJson {
        #[serde(default)]
        partial_json: String,
    },
    /// thinking and signature deltas: not part of OpenAI's chat format.
    #[serde(other)]
    Other,
}

/// `message_delta`'s own delta.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MessageDelta {
    stop_reason: Option<String>,
}

/// OpenAI's finish reason for Anthropic's stop reason.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// One stream's state: which content block is which tool call.
#[derive(Default)]
struct Decoder {
    /// Content block index -> tool call index.
    tool_blocks: Vec<(u64, usize)>,
    /// Content blocks of the structured-output tool, whose input is the reply's text.
    structured_blocks: Vec<u64>,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, reply: &mut Reply, event: Value) -> Vec<StreamItem> {
        // An event of a known type with an unreadable body is skipped, as unknown ones are.
        let Ok(event) = Event::deserialize(event) else { return Vec::new() };
        match event {
            Event::MessageStart { message } => {
                if let Some(id) = message.id {
                    reply.id = id;
                }
                if let Some(model) = message.model {
                    reply.model = model;
                }
                // message_start's output_tokens is a placeholder; message_delta carries the total.
                reply.usage = Some(Usage { completion_tokens: 0, ..message.usage.to_usage() });
                vec![StreamItem::Chunk(reply.chunk(json!({"role": "assistant", "content": ""}), None))]
            }
            Event::ContentBlockStart { index, content_block: Block::ToolUse { name, .. } }
                if name == STRUCTURED_OUTPUT_TOOL =>
            {
                self.structured_blocks.push(index);
                Vec::new()
            }
            Event::ContentBlockDelta { index, delta: Delta::InputJson { partial_json } }
                if self.structured_blocks.contains(&index) =>
            {
                if partial_json.is_empty() {
                    return Vec::new();
                }
                if let Err(end) = reply.push_text(&partial_json) {
                    return vec![end];
                }
                vec![StreamItem::Chunk(reply.chunk(json!({"content": partial_json}), None))]
            }
            Event::ContentBlockStart { index, content_block: Block::ToolUse { id, name, .. } } => {
                let tool_index = reply.tool_call_count();
                if let Err(end) = reply.tool_call_delta(tool_index as u64, id.as_deref(), &name, "") {
                    return vec![end];
                }
                self.tool_blocks.push((index, tool_index));
                let delta = json!({"tool_calls": [{"index": tool_index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]});
                vec![StreamItem::Chunk(reply.chunk(delta, None))]
            }
            Event::ContentBlockDelta { delta: Delta::Text { text }, .. } => {
                if let Err(end) = reply.push_text(&text) {
                    return vec![end];
                }
                vec![StreamItem::Chunk(reply.chunk(json!({"content": text}), None))]
            }
            Event::ContentBlockDelta { index, delta: Delta::InputJson { partial_json } } => {
                let Some(&(_, tool_index)) = self.tool_blocks.iter().find(|(block, _)| *block == index) else {
                    return Vec::new();
                };
                if let Err(end) = reply.tool_call_delta(tool_index as u64, None, "", &partial_json) {
                    return vec![end];
                }
                let delta = json!({"tool_calls": [{"index": tool_index, "function": {"arguments": partial_json}}]});
                vec![StreamItem::Chunk(reply.chunk(delta, None))]
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(out) = usage.output_tokens {
                    // Cumulative: replace, never add.
                    reply.usage.get_or_insert_with(Usage::default).completion_tokens = out;
                }
                match delta.stop_reason {
                    Some(r) => {
                        let mut reason = finish_reason(&r);
                        if reason == "tool_calls" && self.tool_blocks.is_empty() {
                            // Only the structured-output tool was used: a finished answer.
                            reason = "stop";
                        }
                        reply.finish_reason = Some(reason.to_owned());
                        vec![StreamItem::Chunk(reply.chunk(json!({}), Some(reason)))]
                    }
                    None => Vec::new(),
                }
            }
            Event::MessageStop => vec![StreamItem::Done],
            Event::ContentBlockStart { .. } | Event::ContentBlockDelta { .. } | Event::Other => Vec::new(),
        }
    }
}

/// OpenAI content (string or parts) as Anthropic content blocks.
fn content_blocks(content: &Value) -> Value {
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

/// The Messages request body for an OpenAI-format chat body.
fn messages_body(request: &Value, stream: bool) -> Value {
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
            _ => messages.push(json!({"role": "user", "content": content_blocks(&m["content"])})),
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
            .unwrap_or(DEFAULT_MAX_TOKENS)),
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
    let client_tools = request["tools"].as_array().filter(|t| !t.is_empty());
    let mut tools: Vec<Value> = client_tools
        .into_iter()
        .flatten()
        .map(|t| json!({"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]}))
        .collect();
    let mut tool_choice = match &request["tool_choice"] {
        _ if client_tools.is_none() => None,
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::Object(o) => Some(json!({"type": "tool", "name": o.get("function").map(|f| f["name"].clone())})),
        _ => None,
    };
    if let Some(tool) = structured_output_tool(&request["response_format"]) {
        tools.push(tool);
        // Forced when it is the only tool; beside the client's tools the model may answer
        // either way, as OpenAI's structured outputs allow.
        if client_tools.is_none() {
            tool_choice = Some(json!({"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}));
        }
    }
    if request["parallel_tool_calls"] == Value::Bool(false) && !tools.is_empty() {
        let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = request["user"].as_str() {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    body.insert("stream".into(), Value::Bool(stream));
    Value::Object(body)
}

/// The tool an OpenAI `response_format` asks for: `json_schema` with its schema, `json_object`
/// with any object; `None` for text.
fn structured_output_tool(format: &Value) -> Option<Value> {
    let (schema, about) = match format["type"].as_str()? {
        "json_schema" => {
            let spec = &format["json_schema"];
            let name = spec["name"].as_str().unwrap_or("output");
            let about = match spec["description"].as_str() {
                Some(d) => format!("Answer with JSON matching the schema '{name}': {d}"),
                None => format!("Answer with JSON matching the schema '{name}'."),
            };
            (spec["schema"].clone(), about)
        }
        "json_object" => (json!({"type": "object"}), "Answer with a JSON object.".to_owned()),
        _ => return None,
    };
    let schema = if schema.is_object() { schema } else { json!({"type": "object"}) };
    Some(json!({"name": STRUCTURED_OUTPUT_TOOL, "description": about, "input_schema": schema}))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{chunks, run};
    use super::super::{completion, upstream_request, Provider};
    use super::*;

    #[test]
    fn a_recorded_stream_becomes_openai_chunks() {
        let (reply, items) = run(Provider::ANTHROPIC, include_str!("../../testdata/anthropic_stream.sse"));
        assert_eq!(reply.text, "Hello");
        // input + cache reads as prompt; output from message_delta, not added to message_start's 1.
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 35,
                completion_tokens: 15,
                cached_tokens: 10,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            })
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(reply.tool_calls()[0]["function"]["arguments"], "{\"city\": \"Paris\"}");
        assert_eq!(reply.tool_calls()[0]["id"], "toolu_1");
        let chunks = chunks(&items);
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
    fn unknown_and_malformed_events_are_skipped() {
        let wire = concat!(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n",
            "event: something_new\ndata: {\"type\":\"something_new\"}\n\n",
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":\"not an object\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ok\"}}\n\n",
        );
        let (reply, items) = run(Provider::ANTHROPIC, wire);
        assert_eq!(reply.text, "ok");
        assert_eq!(chunks(&items).len(), 1);
    }

    #[test]
    fn requests_are_translated_to_messages() {
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
        let up = upstream_request(Provider::ANTHROPIC, "https://api.anthropic.com/", "sk-ant", &req, true);
        assert_eq!(up.url, "https://api.anthropic.com/v1/messages");
        assert!(up.headers.contains(&("x-api-key".into(), "sk-ant".into())));
        assert!(up.headers.contains(&("anthropic-version".into(), VERSION.into())));
        let b = &up.body;
        assert_eq!(b["system"], "Be brief");
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(b["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(b["messages"][1]["content"][0]["input"]["city"], "Paris");
        assert_eq!(b["messages"][2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(b["stream"], true);
    }

    #[test]
    fn a_whole_reply_becomes_a_chat_completion() {
        let body = json!({"id": "msg_1", "type": "message", "model": "claude-haiku-4-5",
                          "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}],
                          "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 5, "cache_read_input_tokens": 2}});
        let (c, u) = completion(Provider::ANTHROPIC, &body, 9).unwrap();
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["choices"][0]["message"]["content"], "Hi");
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 5,
                completion_tokens: 5,
                cached_tokens: 2,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn structured_outputs_are_a_tool_whose_input_comes_back_as_the_text() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        let req = json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "n?"}], "user": "u-7",
                         "response_format": {"type": "json_schema", "json_schema": {"name": "count", "schema": schema}}});
        let b = upstream_request(Provider::ANTHROPIC, "https://a", "k", &req, true).body;
        assert_eq!(b["tools"][0]["name"], STRUCTURED_OUTPUT_TOOL);
        assert_eq!(b["tools"][0]["input_schema"], schema);
        assert_eq!(
            b["tool_choice"],
            json!({"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}),
            "forced when it is the only tool"
        );
        assert_eq!(b["metadata"], json!({"user_id": "u-7"}));
        // Beside the client's tools it is offered, not forced; parallel calls off as asked.
        let with_tools = json!({"model": "m", "messages": [], "parallel_tool_calls": false,
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_object"}});
        let b = upstream_request(Provider::ANTHROPIC, "https://a", "k", &with_tools, false).body;
        assert_eq!(b["tools"].as_array().map(Vec::len), Some(2));
        assert_eq!(b["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
        assert!(upstream_request(Provider::ANTHROPIC, "https://a", "k", &json!({"messages": []}), false)
            .body
            .get("tools")
            .is_none());

        // The stream: the tool's input arrives as content, and the answer ends as a stop.
        let named = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or_default());
        let wire = [
            named(json!({"type": "message_start", "message": {"id": "msg_s", "model": "claude-haiku-4-5", "content": [], "usage": {"input_tokens": 20, "output_tokens": 1}}})),
            named(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_s", "name": STRUCTURED_OUTPUT_TOOL, "input": {}}})),
            named(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}})),
            named(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"n\": "}})),
            named(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "3}"}})),
            named(json!({"type": "content_block_stop", "index": 0})),
            named(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}})),
            named(json!({"type": "message_stop"})),
        ]
        .concat();
        let (reply, items) = run(Provider::ANTHROPIC, &wire);
        assert_eq!(reply.text, "{\"n\": 3}");
        assert!(reply.tool_calls().is_empty());
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        let texts: Vec<&str> = chunks(&items)
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>();
        assert_eq!(texts, ["{\"n\": ", "3}"]);

        // The whole reply: the input as the message's text.
        let body = json!({"id": "msg_w", "model": "claude-haiku-4-5", "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1},
                          "content": [{"type": "tool_use", "id": "toolu_w", "name": STRUCTURED_OUTPUT_TOOL, "input": {"n": 3}}]});
        let (c, _) = completion(Provider::ANTHROPIC, &body, 0).unwrap();
        assert_eq!(
            (c["choices"][0]["message"]["content"].as_str(), c["choices"][0]["finish_reason"].as_str()),
            (Some("{\"n\":3}"), Some("stop"))
        );
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn cache_writes_are_counted_apart_from_plain_input() {
        let body = json!({"id": "msg_c", "model": "claude-sonnet-4-5", "stop_reason": "end_turn", "content": [{"type": "text", "text": "ok"}],
                          "usage": {"input_tokens": 5, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 300, "output_tokens": 7}});
        let (c, u) = completion(Provider::ANTHROPIC, &body, 0).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 1505,
                completion_tokens: 7,
                cached_tokens: 300,
                cache_write_tokens: 1200,
                reasoning_tokens: 0
            }
        );
        assert_eq!(c["usage"]["prompt_tokens_details"], json!({"cached_tokens": 300, "cache_write_tokens": 1200}));
    }
}
