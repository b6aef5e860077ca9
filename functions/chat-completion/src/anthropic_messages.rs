//! `POST /v1/messages` (Anthropic's Messages API as the front door), in pure form: an Anthropic
//! body becomes the chat path's [`ChatRequest`] (content blocks as chat messages, `tool_use`
//! blocks as tool calls with their input as JSON text, `tool_result` blocks as `tool` turns,
//! `system` as the system prompt), so any provider serves it; the chat reply comes back as an
//! Anthropic `message` ([`from_completion`]) or as Anthropic's event stream ([`StreamWriter`],
//! fed the chat chunks). This is the inverse of `providers/anthropic.rs`, which speaks the same
//! format outward.

use crate::providers::Usage;
use crate::request::{ChatRequest, Dialect, MAX_MESSAGES, MAX_MESSAGE_CHARS};
use serde_json::{json, Map, Value};
use shared::{ApiError, ErrorCode};

/// Keys of the Messages body this route reads; any other is refused, as Anthropic refuses an
/// extra input. `top_k` and `service_tier` are accepted and not passed on (chat completions
/// have no such knob); `conversation_id` and `provider` are chatedge's own.
const KEYS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "service_tier",
    "conversation_id",
    "provider",
];

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::ValidationFailed, message).with_detail("field", field)
}

fn unsupported(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::NotSupported, message).with_detail("field", field)
}

/// Parses and checks a Messages body into the chat request it runs as. Nothing is stored
/// unless the body names a `conversation_id` (Anthropic clients send the whole context).
pub fn parse(body: &[u8], max_body: usize) -> Result<ChatRequest, ApiError> {
    let m = crate::request::object_with_known_keys(body, max_body, KEYS, |k| {
        format!("{k}: extra inputs are not permitted")
    })?;
    let get = |k: &str| m.get(k).filter(|v| !v.is_null());
    if get("thinking").is_some_and(|t| t["type"] != "disabled") {
        return Err(unsupported("thinking", "extended thinking is not supported on this route"));
    }
    let mut shared_fields = Map::new();
    for k in ["model", "max_tokens", "temperature", "stream", "provider", "conversation_id"] {
        if let Some(v) = get(k) {
            shared_fields.insert(k.to_owned(), v.clone());
        }
    }
    let mut chat = ChatRequest::from_shared_fields(Dialect::Messages, &shared_fields)?;
    if chat.model.is_none() {
        return Err(invalid("model", "model: field required"));
    }
    if chat.max_tokens.is_none() {
        return Err(invalid("max_tokens", "max_tokens: field required"));
    }
    // Anthropic's range, narrower than OpenAI's 0-2 the shared parser allows.
    if chat.temperature.is_some_and(|t| t > 1.0) {
        return Err(invalid("temperature", "temperature: Input should be less than or equal to 1"));
    }
    chat.persist = chat.conversation_id.is_some();
    chat.system_prompt = match get("system") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(blocks)) if blocks.iter().all(|b| b["type"] == "text") => {
            Some(crate::providers::text_of(&Value::Array(blocks.clone())))
        }
        Some(_) => return Err(invalid("system", "system must be a string or text blocks")),
    }
    .filter(|s| !s.trim().is_empty());
    if chat.system_prompt.as_ref().is_some_and(|s| s.chars().count() > MAX_MESSAGE_CHARS) {
        return Err(invalid("system", format!("system must be at most {MAX_MESSAGE_CHARS} characters")));
    }
    let Some(Value::Array(list)) = get("messages") else {
        return Err(invalid("messages", "messages: an array is required"));
    };
    let messages = chat_messages(list)?;
    chat.user_text = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| crate::providers::text_of(&m["content"]))
        .unwrap_or_default();
    chat.client_messages = Some(messages);

    if let Some(tools) = get("tools") {
        let converted = chat_tools(tools)?;
        if !converted.is_empty() {
            chat.passthrough.insert("tools".into(), Value::Array(converted));
        }
    }
    if let Some(choice) = get("tool_choice") {
        let (converted, no_parallel) = chat_tool_choice(choice)?;
        chat.passthrough.insert("tool_choice".into(), converted);
        if no_parallel && chat.passthrough.contains_key("tools") {
            chat.passthrough.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    match get("top_p") {
        None => {}
        Some(v) if v.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)) => {
            chat.passthrough.insert("top_p".into(), v.clone());
        }
        Some(_) => return Err(invalid("top_p", "top_p must be a number between 0 and 1")),
    }
    match get("stop_sequences") {
        None => {}
        Some(Value::Array(s)) if s.is_empty() => {}
        Some(Value::Array(s)) if s.len() <= 4 && s.iter().all(Value::is_string) => {
            chat.passthrough.insert("stop".into(), Value::Array(s.clone()));
        }
        Some(_) => return Err(invalid("stop_sequences", "stop_sequences must be at most 4 strings")),
    }
    if let Some(user) = get("metadata").and_then(|m| m["user_id"].as_str()) {
        chat.passthrough.insert("user".into(), json!(user));
    }
    Ok(chat)
}

/// Anthropic turns as chat messages: a user turn's `tool_result` blocks become `tool` messages
/// (before the rest of the turn), an assistant turn's `tool_use` blocks its tool calls.
fn chat_messages(list: &[Value]) -> Result<Vec<Value>, ApiError> {
    if list.is_empty() {
        return Err(invalid("messages", "messages: at least one message is required"));
    }
    if list.len() > MAX_MESSAGES {
        return Err(invalid("messages", format!("messages: at most {MAX_MESSAGES}")));
    }
    let mut out = Vec::new();
    for (i, message) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = message["role"].as_str().unwrap_or_default();
        if !matches!(role, "user" | "assistant") {
            return Err(invalid(&at, format!("{at}.role must be user or assistant")));
        }
        let blocks = match &message["content"] {
            Value::String(s) if s.chars().count() <= MAX_MESSAGE_CHARS => {
                out.push(json!({"role": role, "content": s}));
                continue;
            }
            Value::Array(blocks) => blocks,
            _ => return Err(invalid(&at, format!("{at}.content must be a string or content blocks"))),
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        let mut chars = 0usize;
        for block in blocks {
            match (role, block["type"].as_str().unwrap_or_default()) {
                (_, "text") => {
                    let text = block["text"].as_str().unwrap_or_default();
                    chars += text.chars().count();
                    parts.push(json!({"type": "text", "text": text}));
                }
                ("user", "image") => parts.push(image_part(&block["source"], &at)?),
                ("user", "tool_result") => {
                    let Some(id) = block["tool_use_id"].as_str() else {
                        return Err(invalid(&at, format!("{at}: a tool_result needs tool_use_id")));
                    };
                    let content = match &block["content"] {
                        Value::String(s) => s.clone(),
                        Value::Array(b) => crate::providers::text_of(&Value::Array(b.clone())),
                        Value::Null => String::new(),
                        _ => return Err(invalid(&at, format!("{at}: tool_result content must be text"))),
                    };
                    chars += content.chars().count();
                    out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
                }
                ("assistant", "tool_use") => {
                    let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else {
                        return Err(invalid(&at, format!("{at}: a tool_use needs id and name")));
                    };
                    let input = if block["input"].is_null() { json!({}) } else { block["input"].clone() };
                    calls.push(json!({"id": id, "type": "function",
                                      "function": {"name": name, "arguments": input.to_string()}}));
                }
                // The model's own reasoning is not sent back through chat completions.
                ("assistant", "thinking" | "redacted_thinking") => {}
                (_, other) => {
                    return Err(unsupported(
                        &at,
                        format!("{at}: content blocks of type '{other}' are not supported here"),
                    ))
                }
            }
        }
        if chars > MAX_MESSAGE_CHARS {
            return Err(invalid(&at, format!("{at}: at most {MAX_MESSAGE_CHARS} characters")));
        }
        if role == "assistant" {
            let text = crate::providers::text_of(&Value::Array(parts));
            let mut turn = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                turn["tool_calls"] = Value::Array(calls);
            }
            out.push(turn);
        } else if !parts.is_empty() {
            out.push(json!({"role": "user", "content": parts}));
        }
    }
    if !out.iter().any(|m| m["role"] == "user" || m["role"] == "tool") {
        return Err(invalid("messages", "messages must hold a user turn"));
    }
    Ok(out)
}

fn image_part(source: &Value, at: &str) -> Result<Value, ApiError> {
    let url = match source["type"].as_str() {
        Some("base64") => match (source["media_type"].as_str(), source["data"].as_str()) {
            (Some(media), Some(data)) if media.starts_with("image/") => format!("data:{media};base64,{data}"),
            _ => return Err(invalid(at, format!("{at}: a base64 image needs media_type and data"))),
        },
        Some("url") => match source["url"].as_str() {
            Some(u) => u.to_owned(),
            None => return Err(invalid(at, format!("{at}: a url image needs url"))),
        },
        _ => return Err(unsupported(at, format!("{at}: images must be base64 or url sources"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Anthropic's client tools (`{name, description, input_schema}`) as chat function tools;
/// server tools (web search, code execution, ...) are refused.
fn chat_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = tools else { return Err(invalid("tools", "tools must be an array")) };
    if list.len() > 128 {
        return Err(invalid("tools", "at most 128 tools"));
    }
    list.iter()
        .map(|t| {
            if let Some(kind) = t["type"].as_str().filter(|k| *k != "custom") {
                return Err(unsupported("tools", format!("tools of type '{kind}' are not supported")));
            }
            let Some(name) = t["name"].as_str().filter(|n| !n.is_empty()) else {
                return Err(invalid("tools", "every tool needs a name"));
            };
            let mut function = json!({"name": name, "parameters": t["input_schema"]});
            if let Some(d) = t["description"].as_str() {
                function["description"] = json!(d);
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// Anthropic's tool choice as chat completions': `auto`, `any` (required), `tool` (that
/// function), `none`; and whether parallel calls are off.
fn chat_tool_choice(choice: &Value) -> Result<(Value, bool), ApiError> {
    let no_parallel = choice["disable_parallel_tool_use"] == Value::Bool(true);
    let converted = match choice["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice["name"].as_str() {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(invalid("tool_choice", "a tool choice of type tool needs a name")),
        },
        _ => return Err(invalid("tool_choice", "tool_choice.type must be auto, any, tool or none")),
    };
    Ok((converted, no_parallel))
}

/// A chat finish reason as Anthropic's stop reason.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Usage as Anthropic reports it: input tokens exclude the ones read from and written to the
/// cache.
pub fn usage_json(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(usage.cached_tokens).saturating_sub(usage.cache_write_tokens),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    })
}

/// A tool call's arguments as a `tool_use` input: the JSON object they spell, `{}` when empty,
/// and the text kept under `_raw` when a model produced something that is not JSON.
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw": arguments}),
    }
}

/// A `chat.completion` as an Anthropic `message`.
pub fn from_completion(id: &str, completion: &Value, usage: Usage) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    let text = crate::providers::text_of(&message["content"]);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                            "input": tool_input(arguments)}));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

fn named_event(out: &mut Vec<u8>, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(data["type"].as_str().unwrap_or("message").as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The content block open in the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OpenBlock {
    Text,
    ToolUse { chat_index: u64 },
}

/// Anthropic's event stream, written from the chat chunks the providers' translators produce:
/// `message_start`, `ping`, per content block `content_block_start`, its deltas (`text_delta`
/// or `input_json_delta`) and `content_block_stop`, then `message_delta` with the stop reason
/// and the usage, and `message_stop`.
pub struct StreamWriter {
    id: String,
    model: String,
    open: Option<(usize, OpenBlock)>,
    next_index: usize,
    finish_reason: Option<String>,
}

impl StreamWriter {
    /// A writer for message `id` of `model`.
    pub fn new(id: &str, model: &str) -> Self {
        StreamWriter { id: id.to_owned(), model: model.to_owned(), open: None, next_index: 0, finish_reason: None }
    }

    /// `message_start` (usage zero: chat completions report it at the end) and a `ping`.
    pub fn start(&self) -> Vec<u8> {
        let mut out = Vec::new();
        named_event(
            &mut out,
            &json!({"type": "message_start", "message": {"id": self.id, "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": usage_json(Usage::default())}}),
        );
        named_event(&mut out, &json!({"type": "ping"}));
        out
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            named_event(out, &json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, block: OpenBlock, content_block: Value) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        named_event(out, &json!({"type": "content_block_start", "index": index, "content_block": content_block}));
        self.open = Some((index, block));
        index
    }

    /// The events for one chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(choice) = chunk["choices"].get(0) else { return out };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some((i, OpenBlock::Text)) => i,
                _ => self.open_block(&mut out, OpenBlock::Text, json!({"type": "text", "text": ""})),
            };
            named_event(
                &mut out,
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let chat_index = call["index"].as_u64().unwrap_or(0);
            let index = match self.open {
                Some((i, OpenBlock::ToolUse { chat_index: c })) if c == chat_index => i,
                _ => self.open_block(
                    &mut out,
                    OpenBlock::ToolUse { chat_index },
                    json!({"type": "tool_use", "id": call["id"].as_str().unwrap_or_default(),
                           "name": call["function"]["name"].as_str().unwrap_or_default(), "input": {}}),
                ),
            };
            if let Some(partial) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                named_event(
                    &mut out,
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": partial}}),
                );
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        out
    }

    /// Closes the open block, then `message_delta` (stop reason, usage, chatedge's extension)
    /// and `message_stop`.
    pub fn finish(&mut self, usage: Usage, extension: Value) -> Vec<u8> {
        let mut out = Vec::new();
        self.close(&mut out);
        named_event(
            &mut out,
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
                    "usage": usage_json(usage), "chatedge": extension}),
        );
        named_event(&mut out, &json!({"type": "message_stop"}));
        out
    }

    /// An error mid-stream, as Anthropic sends one (the stream ends with it).
    pub fn error(&mut self, kind: &str, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        named_event(&mut out, &json!({"type": "error", "error": {"type": kind, "message": message}}));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse;

    fn parse_v(v: Value) -> Result<ChatRequest, ApiError> {
        parse(v.to_string().as_bytes(), 1 << 20)
    }

    #[test]
    fn turns_blocks_and_tools_become_the_chat_request() {
        let r = parse_v(json!({
            "model": "claude-sonnet-4-20250514", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}, "top_k": 5,
            "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "3C"}]},
                    {"type": "text", "text": "Thanks"}]}
            ]
        }))
        .unwrap();
        assert_eq!((r.dialect, r.persist, r.stream, r.max_tokens), (Dialect::Messages, false, false, Some(100)));
        assert_eq!((r.system_prompt.as_deref(), r.user_text.as_str()), (Some("Be brief."), "Thanks"));
        let m = r.client_messages.clone().unwrap();
        assert_eq!(
            m[0]["content"],
            json!([{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}])
        );
        assert_eq!(m[1]["content"], "Checking.");
        assert_eq!(
            m[1]["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}])
        );
        assert_eq!(m[2], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "3C"}));
        assert_eq!(m[3], json!({"role": "user", "content": [{"type": "text", "text": "Thanks"}]}));
        let p = &r.passthrough;
        assert_eq!(
            p["tools"][0],
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}, "description": "d"}})
        );
        assert_eq!((&p["tool_choice"], &p["parallel_tool_calls"]), (&json!("required"), &json!(false)));
        assert_eq!((&p["stop"], &p["user"]), (&json!(["END"]), &json!("u-1")));
        assert!(!p.contains_key("top_k"));
        let stored =
            parse_v(json!({"model": "m", "max_tokens": 1, "conversation_id": "0b6f3c2e-1d2a-4c1b-9e8f-0123456789ab",
                                    "messages": [{"role": "user", "content": "x"}]}))
            .unwrap();
        assert!(stored.persist, "a named conversation is continued and stored");
    }

    #[test]
    fn bad_and_unsupported_bodies_name_their_field() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases: &[(Value, &str, &str)] = &[
            (json!({"max_tokens": 1, "messages": user}), "validation_failed", "model"),
            (json!({"model": "m", "messages": user}), "validation_failed", "max_tokens"),
            (json!({"model": "m", "max_tokens": 1}), "validation_failed", "messages"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": user, "temperature": 1.5}),
                "validation_failed",
                "temperature",
            ),
            (json!({"model": "m", "max_tokens": 1, "messages": []}), "validation_failed", "messages"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "validation_failed",
                "messages[0]",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": "x"}]}),
                "validation_failed",
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "document"}]}]}),
                "not_supported",
                "messages[0]",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": user, "tools": [{"type": "web_search_20250305", "name": "w"}]}),
                "not_supported",
                "tools",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": user, "tool_choice": {"type": "sometimes"}}),
                "validation_failed",
                "tool_choice",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": user, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
                "not_supported",
                "thinking",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": user, "stop_sequences": "END"}),
                "validation_failed",
                "stop_sequences",
            ),
            (json!({"model": "m", "max_tokens": 1, "messages": user, "n": 2}), "validation_failed", "n"),
        ];
        for (b, code, field) in cases {
            let e = parse_v(b.clone()).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, *code), "{b}");
            let named = e.details.as_ref().and_then(|d| d.get("field")).and_then(Value::as_str);
            assert_eq!(named, Some(*field), "{b}");
        }
        assert_eq!(parse(b"{", 1 << 20).unwrap_err().code.as_str(), "invalid_json");
    }

    #[test]
    fn a_completion_becomes_a_message_with_tool_use_inputs_as_objects() {
        let completion = json!({"model": "gpt-4o-mini", "choices": [{"finish_reason": "tool_calls", "message": {"content": "Checking.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                           {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}}]}}]});
        let m = from_completion(
            "msg_1",
            &completion,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 3,
                cached_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
            },
        );
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                   {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}])
        );
        assert_eq!((m["stop_reason"].as_str(), m["type"].as_str()), (Some("tool_use"), Some("message")));
        assert_eq!(
            m["usage"],
            json!({"input_tokens": 6, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 3})
        );
        assert_eq!(tool_input("not json"), json!({"_raw": "not json"}));
    }

    #[test]
    fn chat_chunks_stream_as_anthropic_events() {
        let chunk = |delta: Value, finish: Option<&str>| json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let mut w = StreamWriter::new("msg_k", "gpt-4o-mini");
        let mut bytes = w.start();
        bytes.extend(w.chunk(&chunk(json!({"role": "assistant", "content": ""}), None)));
        bytes.extend(w.chunk(&chunk(json!({"content": "Let me "}), None)));
        bytes.extend(w.chunk(&chunk(json!({"content": "check."}), None)));
        bytes.extend(w.chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                               "function": {"name": "f", "arguments": ""}}]}),
            None,
        )));
        bytes
            .extend(w.chunk(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), None)));
        bytes.extend(w.chunk(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), None)));
        bytes.extend(w.chunk(&chunk(json!({}), Some("tool_calls"))));
        bytes.extend(w.finish(
            Usage {
                prompt_tokens: 9,
                completion_tokens: 5,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
            },
            json!({"cost_usd": 0.0}),
        ));
        let events: Vec<(String, Value)> = sse::Parser::new()
            .feed(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| (e.event.unwrap_or_default(), serde_json::from_str(&e.data).unwrap()))
            .collect();
        for (name, data) in &events {
            assert_eq!(data["type"].as_str(), Some(name.as_str()));
        }
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_k");
        assert_eq!(
            events[6].1,
            json!({"type": "content_block_start", "index": 1,
                                       "content_block": {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}})
        );
        let json_text: String = events[7..9].iter().filter_map(|(_, d)| d["delta"]["partial_json"].as_str()).collect();
        assert_eq!(json_text, "{\"a\":1}");
        assert_eq!(events[10].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[10].1["usage"]["output_tokens"], 5);
        let err = w.error("overloaded_error", "busy");
        assert!(String::from_utf8_lossy(&err).starts_with("event: error\ndata: {"));
    }
}
