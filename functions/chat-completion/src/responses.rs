//! `POST /v1/responses` (OpenAI's Responses API), in pure form. A Responses body becomes the
//! chat path's [`ChatRequest`] (input items as chat messages, `instructions` as the system
//! prompt, function tools re-shaped, `text.format` as `response_format`), so every provider
//! serves it through the one attempt loop; the chat reply comes back as a `response` object
//! ([`from_completion`]) or as Responses' typed event stream ([`StreamWriter`], fed the chat
//! chunks). A response's id is its stored assistant message (`resp_<uuid hex>`), which is how
//! `previous_response_id` finds the conversation to continue.

use crate::providers::Usage;
use crate::request::{ChatRequest, Dialect, MAX_MESSAGES, MAX_MESSAGE_CHARS};
use serde_json::{json, Map, Value};
use shared::{ApiError, ErrorCode};

/// Keys of the Responses body this route reads; any other is refused, as OpenAI refuses an
/// unknown parameter. `metadata`, `reasoning`, `truncation`, `include`, `service_tier`,
/// `prompt_cache_key` and `safety_identifier` are accepted and do not change the call.
const KEYS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "store",
    "previous_response_id",
    "text",
    "user",
    "metadata",
    "reasoning",
    "truncation",
    "include",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "background",
    "provider",
];

/// What a response echoes of its request (OpenAI's response object repeats these).
#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    /// `instructions` as given.
    pub instructions: Value,
    /// `tools` as given (Responses' shape).
    pub tools: Value,
    /// `tool_choice` as given, `"auto"` by default.
    pub tool_choice: Value,
    /// `max_output_tokens`.
    pub max_output_tokens: Value,
    /// `temperature`, 1 by default.
    pub temperature: Value,
    /// `top_p`, 1 by default.
    pub top_p: Value,
    /// `parallel_tool_calls`, true by default.
    pub parallel_tool_calls: Value,
    /// `previous_response_id`.
    pub previous_response_id: Value,
    /// `store`, true by default.
    pub store: bool,
    /// `text`, `{"format":{"type":"text"}}` by default.
    pub text: Value,
    /// `user`.
    pub user: Value,
    /// `metadata`, `{}` by default.
    pub metadata: Value,
}

/// A parsed Responses body: the chat request it runs as, and what the response repeats.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    /// The call, in the chat path's terms.
    pub chat: ChatRequest,
    /// The request fields the response object echoes.
    pub echo: Echo,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::ValidationFailed, message).with_detail("field", field)
}

fn unsupported(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::NotSupported, message).with_detail("field", field)
}

/// `resp_` + the 32 hex digits of a message UUID.
pub fn response_id(message_id: &str) -> String {
    format!("resp_{}", message_id.replace('-', ""))
}

/// The message UUID a response id names, or `None` when it is not one of ours.
pub fn message_id_of(response_id: &str) -> Option<String> {
    let hex = response_id.strip_prefix("resp_")?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Parses and checks a Responses body into the chat request it runs as.
pub fn parse(body: &[u8], max_body: usize) -> Result<ResponsesRequest, ApiError> {
    let m = crate::request::object_with_known_keys(body, max_body, KEYS, |k| format!("unknown parameter '{k}'"))?;
    let get = |k: &str| m.get(k).filter(|v| !v.is_null());
    if get("background") == Some(&Value::Bool(true)) {
        return Err(unsupported("background", "background responses are not supported: stream instead"));
    }
    // The chat path's own checks for the fields the two share.
    let mut shared_fields = Map::new();
    for k in ["model", "temperature", "stream", "provider"] {
        if let Some(v) = get(k) {
            shared_fields.insert(k.to_owned(), v.clone());
        }
    }
    if let Some(v) = get("max_output_tokens") {
        shared_fields.insert("max_tokens".into(), v.clone());
    }
    let mut chat = ChatRequest::from_shared_fields(Dialect::Responses, &shared_fields)?;
    if chat.model.is_none() {
        return Err(invalid("model", "model is required"));
    }
    let store = match get("store") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("store", "store must be a boolean")),
    };
    chat.persist = store;
    let previous = match get("previous_response_id") {
        None => None,
        Some(Value::String(s)) => Some(
            message_id_of(s)
                .ok_or_else(|| invalid("previous_response_id", "previous_response_id is not a response id"))?,
        ),
        Some(_) => return Err(invalid("previous_response_id", "previous_response_id must be a string")),
    };
    if previous.is_some() && !store {
        return Err(unsupported(
            "store",
            "previous_response_id needs store: true here (the conversation is read and continued in one transaction)",
        ));
    }
    chat.after_message = previous.clone();
    let instructions = match get("instructions") {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= 32_000 => Some(s.clone()).filter(|s| !s.trim().is_empty()),
        Some(_) => return Err(invalid("instructions", "instructions must be a string of at most 32000 characters")),
    };
    chat.system_prompt = instructions;

    let messages = match get("input") {
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                return Err(invalid("input", "input must not be empty"));
            }
            if s.chars().count() > MAX_MESSAGE_CHARS {
                return Err(invalid("input", format!("input must be at most {MAX_MESSAGE_CHARS} characters")));
            }
            vec![json!({"role": "user", "content": s})]
        }
        Some(Value::Array(items)) => chat_messages(items)?,
        Some(_) => return Err(invalid("input", "input must be a string or an array of items")),
        None => return Err(invalid("input", "input is required")),
    };
    chat.user_text = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| crate::providers::text_of(&m["content"]))
        .unwrap_or_default();
    // What is stored before the reply: the input's turns, the system ones aside (they are
    // sent, as `instructions` is, but a conversation's history holds only its dialogue).
    chat.turn = Some(messages.iter().filter(|m| m["role"] != "system" && m["role"] != "developer").cloned().collect());
    chat.client_messages = Some(messages);
    chat.history_then_messages = true;

    if let Some(tools) = get("tools") {
        let converted = chat_tools(tools)?;
        if !converted.is_empty() {
            chat.passthrough.insert("tools".into(), Value::Array(converted));
        }
    }
    if let Some(choice) = get("tool_choice") {
        chat.passthrough.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(v) = get("parallel_tool_calls") {
        if !v.is_boolean() {
            return Err(invalid("parallel_tool_calls", "parallel_tool_calls must be a boolean"));
        }
        if chat.passthrough.contains_key("tools") {
            chat.passthrough.insert("parallel_tool_calls".into(), v.clone());
        }
    }
    match get("top_p") {
        None => {}
        Some(v) if v.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)) => {
            chat.passthrough.insert("top_p".into(), v.clone());
        }
        Some(_) => return Err(invalid("top_p", "top_p must be a number between 0 and 1")),
    }
    match get("user") {
        None => {}
        Some(Value::String(u)) => {
            chat.passthrough.insert("user".into(), json!(u));
        }
        Some(_) => return Err(invalid("user", "user must be a string")),
    }
    if let Some(text) = get("text") {
        if let Some(format) = response_format(text)? {
            chat.passthrough.insert("response_format".into(), format);
        }
    }

    let echo = Echo {
        instructions: get("instructions").cloned().unwrap_or(Value::Null),
        tools: get("tools").cloned().unwrap_or_else(|| json!([])),
        tool_choice: get("tool_choice").cloned().unwrap_or_else(|| json!("auto")),
        max_output_tokens: get("max_output_tokens").cloned().unwrap_or(Value::Null),
        temperature: get("temperature").cloned().unwrap_or_else(|| json!(1.0)),
        top_p: get("top_p").cloned().unwrap_or_else(|| json!(1.0)),
        parallel_tool_calls: get("parallel_tool_calls").cloned().unwrap_or(Value::Bool(true)),
        previous_response_id: get("previous_response_id").cloned().unwrap_or(Value::Null),
        store,
        text: get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}})),
        user: get("user").cloned().unwrap_or(Value::Null),
        metadata: get("metadata").cloned().unwrap_or_else(|| json!({})),
    };
    Ok(ResponsesRequest { chat, echo })
}

/// Input items as chat messages: messages (easy or typed form), the model's function calls
/// (merged into one assistant message, as chat completions carry them) and their outputs (role
/// `tool`). Reasoning items are the model's own and are dropped.
fn chat_messages(items: &[Value]) -> Result<Vec<Value>, ApiError> {
    if items.is_empty() {
        return Err(invalid("input", "input must not be empty"));
    }
    if items.len() > MAX_MESSAGES {
        return Err(invalid("input", format!("input may hold at most {MAX_MESSAGES} items")));
    }
    let mut out: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item["type"].as_str().unwrap_or(if item["role"].is_string() { "message" } else { "" });
        match kind {
            "message" => {
                let role = item["role"].as_str().unwrap_or_default();
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(invalid(&at, format!("{at}.role must be user, assistant, system or developer")));
                }
                let content = message_content(&item["content"], role, &at)?;
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (item["call_id"].as_str(), item["name"].as_str()) else {
                    return Err(invalid(&at, format!("{at} needs call_id and name")));
                };
                let arguments = item["arguments"].as_str().unwrap_or("{}");
                let call =
                    json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                match out.last_mut() {
                    // Calls after an assistant turn are that turn's calls.
                    Some(last) if last["role"] == "assistant" => {
                        if !last["tool_calls"].is_array() {
                            last["tool_calls"] = json!([]);
                        }
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let Some(call_id) = item["call_id"].as_str() else {
                    return Err(invalid(&at, format!("{at} needs call_id")));
                };
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => crate::providers::text_of(&Value::Array(parts.clone())),
                    _ => return Err(invalid(&at, format!("{at}.output must be a string"))),
                };
                if output.chars().count() > MAX_MESSAGE_CHARS {
                    return Err(invalid(&at, format!("{at}.output must be at most {MAX_MESSAGE_CHARS} characters")));
                }
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            "reasoning" => {}
            "" => return Err(invalid(&at, format!("{at} needs a type"))),
            other => return Err(unsupported(&at, format!("input items of type '{other}' are not supported"))),
        }
    }
    if !out.iter().any(|m| m["role"] == "user" || m["role"] == "tool") {
        return Err(invalid("input", "input must hold a user message or a function call output"));
    }
    Ok(out)
}

/// A message's content as chat completions take it: a string, or parts (`input_text` /
/// `output_text` as text, `input_image` as `image_url`).
fn message_content(content: &Value, role: &str, at: &str) -> Result<Value, ApiError> {
    match content {
        Value::String(s) if s.chars().count() <= MAX_MESSAGE_CHARS => Ok(json!(s)),
        Value::String(_) => Err(invalid(at, format!("{at}.content must be at most {MAX_MESSAGE_CHARS} characters"))),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for part in parts {
                match part["type"].as_str().unwrap_or_default() {
                    "input_text" | "output_text" | "text" | "refusal" => {
                        let text = part["text"].as_str().or(part["refusal"].as_str()).unwrap_or_default();
                        out.push(json!({"type": "text", "text": text}));
                    }
                    "input_image" if role == "user" => match part["image_url"].as_str() {
                        Some(url) => {
                            let detail = part["detail"].as_str().unwrap_or("auto");
                            out.push(json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}));
                        }
                        None => return Err(unsupported(at, format!("{at}: images by file_id are not supported"))),
                    },
                    other => {
                        return Err(unsupported(at, format!("{at}: content parts of type '{other}' are not supported")))
                    }
                }
            }
            let total: usize = out.iter().filter_map(|p| p["text"].as_str()).map(|t| t.chars().count()).sum();
            if total > MAX_MESSAGE_CHARS {
                return Err(invalid(at, format!("{at}.content must be at most {MAX_MESSAGE_CHARS} characters")));
            }
            // An assistant turn is text (chat completions take no image from the assistant).
            if role != "user" {
                return Ok(json!(crate::providers::text_of(&Value::Array(out))));
            }
            Ok(Value::Array(out))
        }
        _ => Err(invalid(at, format!("{at}.content must be a string or an array of content parts"))),
    }
}

/// Responses' function tools (`{type, name, description, parameters, strict}`) in chat
/// completions' shape; built-in tools (web search, file search, ...) are refused.
fn chat_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = tools else { return Err(invalid("tools", "tools must be an array")) };
    if list.len() > 128 {
        return Err(invalid("tools", "at most 128 tools"));
    }
    list.iter()
        .map(|t| match t["type"].as_str() {
            Some("function") => {
                let Some(name) = t["name"].as_str().filter(|n| !n.is_empty()) else {
                    return Err(invalid("tools", "a function tool needs a name"));
                };
                let mut function = json!({"name": name});
                for k in ["description", "parameters", "strict"] {
                    if !t[k].is_null() {
                        function[k] = t[k].clone();
                    }
                }
                Ok(json!({"type": "function", "function": function}))
            }
            Some(other) => Err(unsupported("tools", format!("tools of type '{other}' are not supported"))),
            None => Err(invalid("tools", "every tool needs a type")),
        })
        .collect()
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        Value::Object(o) if o.get("type") == Some(&json!("function")) => match o.get("name").and_then(Value::as_str) {
            Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
            None => Err(invalid("tool_choice", "a function tool_choice needs a name")),
        },
        Value::Object(_) => Err(unsupported("tool_choice", "only function tool choices are supported")),
        _ => Err(invalid("tool_choice", "tool_choice must be auto, none, required or a function")),
    }
}

/// `text.format` as chat completions' `response_format`; `None` for plain text.
fn response_format(text: &Value) -> Result<Option<Value>, ApiError> {
    let format = &text["format"];
    match format["type"].as_str() {
        None if format.is_null() => Ok(None),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let (Some(name), true) = (format["name"].as_str(), format["schema"].is_object()) else {
                return Err(invalid("text", "a json_schema format needs a name and a schema"));
            };
            let mut schema = json!({"name": name, "schema": format["schema"]});
            for k in ["strict", "description"] {
                if !format[k].is_null() {
                    schema[k] = format[k].clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid("text", "text.format.type must be text, json_object or json_schema")),
    }
}

/// Usage as Responses reports it.
pub fn usage_json(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// How a response ended, in Responses' terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// `completed`.
    Completed,
    /// `incomplete`, with the reason (`max_output_tokens`, `content_filter`, or ours).
    Incomplete(String),
    /// `failed`, with an error code and message.
    Failed { code: String, message: String },
}

impl Ending {
    /// From the chat finish reason of a reply that ended normally.
    pub fn from_finish_reason(reason: Option<&str>) -> Self {
        match reason {
            Some("length") => Ending::Incomplete("max_output_tokens".into()),
            Some("content_filter") => Ending::Incomplete("content_filter".into()),
            _ => Ending::Completed,
        }
    }

    fn status(&self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Incomplete(_) => "incomplete",
            Ending::Failed { .. } => "failed",
        }
    }
}

/// The response object around an output: every field OpenAI's has, with the request's echo.
pub fn response_object(id: &str, created_at: i64, model: &str, echo: &Echo, output: Vec<Value>) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": echo.previous_response_id,
        "reasoning": {"effort": null, "summary": null},
        "store": echo.store,
        "temperature": echo.temperature,
        "text": echo.text,
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": null,
        "user": echo.user,
        "metadata": echo.metadata,
    })
}

/// Marks a response as ended: status, error or incomplete details, usage.
fn conclude(response: &mut Value, ending: &Ending, usage: Option<Usage>) {
    response["status"] = json!(ending.status());
    match ending {
        Ending::Completed => {}
        Ending::Incomplete(reason) => response["incomplete_details"] = json!({"reason": reason}),
        Ending::Failed { code, message } => response["error"] = json!({"code": code, "message": message}),
    }
    if let Some(u) = usage {
        response["usage"] = usage_json(u);
    }
}

fn message_item(id: &str, status: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

/// The output items of an assistant turn: its text as one message, then its tool calls.
/// `key` (the response id's hex) makes the item ids stable, so a stored response reads back
/// with the ids it was answered with.
pub fn output_items(key: &str, text: &str, tool_calls: &[Value], status: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if !text.is_empty() || tool_calls.is_empty() {
        out.push(message_item(&format!("msg_{key}"), status, text));
    }
    for (n, call) in tool_calls.iter().enumerate() {
        let call_id = call["id"].as_str().unwrap_or_default();
        let name = call["function"]["name"].as_str().unwrap_or_default();
        let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
        out.push(call_item(&format!("fc_{key}_{n}"), status, call_id, name, arguments));
    }
    out
}

/// A `chat.completion` as a finished response.
pub fn from_completion(id: &str, created_at: i64, echo: &Echo, completion: &Value, usage: Usage) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let text = crate::providers::text_of(&message["content"]);
    let calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
    let ending = Ending::from_finish_reason(choice["finish_reason"].as_str());
    let item_status = if ending == Ending::Completed { "completed" } else { "incomplete" };
    let key = id.trim_start_matches("resp_");
    let model = completion["model"].as_str().unwrap_or_default();
    let mut response = response_object(id, created_at, model, echo, output_items(key, &text, &calls, item_status));
    conclude(&mut response, &ending, Some(usage));
    response
}

/// A stored assistant message (as `GET /v1/responses/{id}` reads it) as a response.
pub fn from_stored(id: &str, row: &Value) -> Value {
    let status = match row["status"].as_str() {
        Some("complete") => "completed",
        Some("pending") => "in_progress",
        Some("error") => "failed",
        _ => "incomplete",
    };
    let echo = Echo {
        instructions: row["instructions"].clone(),
        tools: json!([]),
        tool_choice: json!("auto"),
        max_output_tokens: Value::Null,
        temperature: json!(1.0),
        top_p: json!(1.0),
        parallel_tool_calls: Value::Bool(true),
        previous_response_id: row["previous_message_id"].as_str().map_or(Value::Null, |m| json!(response_id(m))),
        store: true,
        text: json!({"format": {"type": "text"}}),
        user: Value::Null,
        metadata: json!({}),
    };
    let text = row["content"].as_str().unwrap_or_default();
    let calls = row["tool_calls"].as_array().cloned().unwrap_or_default();
    let key = id.trim_start_matches("resp_");
    let item_status = if status == "completed" { "completed" } else { "incomplete" };
    let model = row["model"].as_str().unwrap_or_default();
    let created = row["created_at"].as_i64().unwrap_or(0);
    let mut response = response_object(id, created, model, &echo, output_items(key, text, &calls, item_status));
    let usage = Usage {
        prompt_tokens: row["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: row["completion_tokens"].as_u64().unwrap_or(0),
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
    };
    let ending = match status {
        "completed" => Ending::Completed,
        "failed" => Ending::Failed {
            code: "server_error".into(),
            message: row["metadata"]["error"].as_str().unwrap_or("the response failed").to_owned(),
        },
        "in_progress" => {
            response["status"] = json!("in_progress");
            return response;
        }
        _ => Ending::Incomplete(row["metadata"]["error"].as_str().unwrap_or("interrupted").to_owned()),
    };
    conclude(&mut response, &ending, Some(usage));
    response
}

/// One `event:` / `data:` pair of Responses' stream.
fn named_event(out: &mut Vec<u8>, kind: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// An output item open in the stream.
#[derive(Debug)]
enum OpenItem {
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String, chat_index: u64 },
}

/// Responses' typed event stream, written from the chat chunks the providers' translators
/// produce: `response.created`, `response.in_progress`, then per output item `output_item.added`,
/// its content (`content_part.added`, `output_text.delta`s, `output_text.done`,
/// `content_part.done`; or `function_call_arguments.delta`s and `.done`), `output_item.done`,
/// and last `response.completed` (or `.incomplete`, `.failed`) with the usage. Every event
/// carries its `sequence_number`.
pub struct StreamWriter {
    response: Value,
    key: String,
    sequence: u64,
    done_items: Vec<Value>,
    open: Option<(usize, OpenItem)>,
    finish_reason: Option<String>,
}

impl StreamWriter {
    /// A writer for response `id` (its hex names the items too).
    pub fn new(id: &str, created_at: i64, model: &str, echo: &Echo) -> Self {
        StreamWriter {
            response: response_object(id, created_at, model, echo, Vec::new()),
            key: id.trim_start_matches("resp_").to_owned(),
            sequence: 0,
            done_items: Vec::new(),
            open: None,
            finish_reason: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        named_event(out, kind, &data);
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let response = self.response.clone();
        self.emit(&mut out, "response.created", json!({"response": response}));
        self.emit(&mut out, "response.in_progress", json!({"response": response}));
        out
    }

    fn output_index(&self) -> usize {
        self.done_items.len()
    }

    /// Closes the open item, if any: its `.done` events.
    fn close(&mut self, out: &mut Vec<u8>, status: &str) {
        let Some((index, item)) = self.open.take() else { return };
        let done = match item {
            OpenItem::Message { id, text } => {
                let base = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut text_done = base.clone();
                text_done["text"] = json!(text);
                text_done["logprobs"] = json!([]);
                self.emit(out, "response.output_text.done", text_done);
                let mut part_done = base;
                part_done["part"] = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(out, "response.content_part.done", part_done);
                message_item(&id, status, &text)
            }
            OpenItem::Call { id, call_id, name, arguments, .. } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                );
                call_item(&id, status, &call_id, &name, &arguments)
            }
        };
        self.emit(out, "response.output_item.done", json!({"output_index": index, "item": done}));
        self.done_items.push(done);
    }

    fn text_delta(&mut self, out: &mut Vec<u8>, delta: &str) {
        if !matches!(self.open, Some((_, OpenItem::Message { .. }))) {
            self.close(out, "completed");
            let index = self.output_index();
            let id = format!("msg_{}", self.key);
            let mut added = message_item(&id, "in_progress", "");
            added["content"] = json!([]);
            self.emit(out, "response.output_item.added", json!({"output_index": index, "item": added}));
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
            self.open = Some((index, OpenItem::Message { id, text: String::new() }));
        }
        let Some((index, OpenItem::Message { id, text })) = &mut self.open else { return };
        text.push_str(delta);
        let data = json!({"item_id": id, "output_index": *index, "content_index": 0, "delta": delta, "logprobs": []});
        self.emit(out, "response.output_text.delta", data);
    }

    fn call_delta(&mut self, out: &mut Vec<u8>, call: &Value) {
        let chat_index = call["index"].as_u64().unwrap_or(0);
        let same = matches!(&self.open, Some((_, OpenItem::Call { chat_index: c, .. })) if *c == chat_index);
        if !same {
            self.close(out, "completed");
            let index = self.output_index();
            let n = self.done_items.iter().filter(|i| i["type"] == "function_call").count();
            let id = format!("fc_{}_{n}", self.key);
            let call_id = call["id"].as_str().unwrap_or_default().to_owned();
            let name = call["function"]["name"].as_str().unwrap_or_default().to_owned();
            let added = call_item(&id, "in_progress", &call_id, &name, "");
            self.emit(out, "response.output_item.added", json!({"output_index": index, "item": added}));
            self.open = Some((index, OpenItem::Call { id, call_id, name, arguments: String::new(), chat_index }));
        }
        let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
        if arguments.is_empty() {
            return;
        }
        let Some((index, OpenItem::Call { id, arguments: so_far, .. })) = &mut self.open else { return };
        so_far.push_str(arguments);
        let data = json!({"item_id": id, "output_index": *index, "delta": arguments});
        self.emit(out, "response.function_call_arguments.delta", data);
    }

    /// The events for one chat chunk (text and tool-call deltas; the finish reason is kept).
    pub fn chunk(&mut self, chunk: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(choice) = chunk["choices"].get(0) else { return out };
        if let Some(model) = chunk["model"].as_str().filter(|m| !m.is_empty()) {
            self.response["model"] = json!(model);
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.text_delta(&mut out, text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.call_delta(&mut out, call);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        out
    }

    /// How the stream ended when the provider finished it.
    pub fn natural_ending(&self) -> Ending {
        Ending::from_finish_reason(self.finish_reason.as_deref())
    }

    /// Closes the open item and writes the last event: `response.completed`, `.incomplete` or
    /// `.failed`, with the usage charged and chatedge's extension.
    pub fn finish(&mut self, ending: &Ending, usage: Usage, extension: Value) -> Vec<u8> {
        let mut out = Vec::new();
        let item_status = if *ending == Ending::Completed { "completed" } else { "incomplete" };
        self.close(&mut out, item_status);
        let mut response = self.response.clone();
        response["output"] = Value::Array(self.done_items.clone());
        conclude(&mut response, ending, Some(usage));
        response["chatedge"] = extension;
        let kind = match ending {
            Ending::Completed => "response.completed",
            Ending::Incomplete(_) => "response.incomplete",
            Ending::Failed { .. } => "response.failed",
        };
        self.emit(&mut out, kind, json!({"response": response}));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse;

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn a_string_input_is_one_user_turn_stored_by_default() {
        let r =
            parse(&body(json!({"model": "gpt-4o-mini", "input": "hi", "instructions": "Be brief."})), 1 << 20).unwrap();
        let c = &r.chat;
        assert_eq!((c.dialect, c.persist, c.stream, c.user_text.as_str()), (Dialect::Responses, true, false, "hi"));
        assert_eq!(c.system_prompt.as_deref(), Some("Be brief."));
        assert_eq!(c.client_messages, Some(vec![json!({"role": "user", "content": "hi"})]));
        assert_eq!(c.turn, c.client_messages);
        assert!(c.history_then_messages);
        assert_eq!(r.echo.instructions, json!("Be brief."));
        let unstored =
            parse(&body(json!({"model": "m", "input": "hi", "store": false, "stream": true})), 1 << 20).unwrap();
        assert!(!unstored.chat.persist && unstored.chat.stream && !unstored.echo.store);
    }

    #[test]
    fn items_become_chat_messages_with_calls_merged_and_outputs_as_tool_turns() {
        let input = json!([
            {"role": "developer", "content": "sys"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "weather?"},
                {"type": "input_image", "image_url": "https://x/y.png"}
            ]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"c\":3}"},
            {"type": "function_call_output", "call_id": "call_2", "output": "noon"}
        ]);
        let r = parse(&body(json!({"model": "m", "input": input})), 1 << 20).unwrap();
        let msgs = r.chat.client_messages.clone().unwrap();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0], json!({"role": "developer", "content": "sys"}));
        assert_eq!(
            msgs[1]["content"],
            json!([{"type": "text", "text": "weather?"},
                   {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}])
        );
        assert_eq!(msgs[2]["content"], json!("checking"));
        let calls = msgs[2]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"], json!({"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}));
        assert_eq!(msgs[3], json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"c\":3}"}));
        assert_eq!(r.chat.user_text, "weather?");
        assert_eq!(r.chat.turn.as_ref().unwrap().len(), 4, "the developer turn is sent, not stored");
        // A call with no assistant text before it is an assistant turn of its own.
        let bare = json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c", "output": "1"}]);
        let r = parse(&body(json!({"model": "m", "input": bare})), 1 << 20).unwrap();
        assert_eq!(r.chat.client_messages.unwrap()[0]["content"], Value::Null);
    }

    #[test]
    fn tools_choices_and_formats_are_reshaped_for_chat_completions() {
        let r = parse(
            &body(json!({
                "model": "m", "input": "x", "max_output_tokens": 50, "top_p": 0.5, "user": "u",
                "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}],
                "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
                "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}}
            })),
            1 << 20,
        )
        .unwrap();
        let p = &r.chat.passthrough;
        assert_eq!(
            p["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(p["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
        assert_eq!(p["parallel_tool_calls"], json!(false));
        assert_eq!(
            p["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!((r.chat.max_tokens, &p["top_p"], &p["user"]), (Some(50), &json!(0.5), &json!("u")));
        assert_eq!(r.echo.tools[0]["name"], "f", "the response echoes the tools as given");
    }

    #[test]
    fn bad_or_unsupported_bodies_name_their_field() {
        let cases: &[(Value, &str, &str)] = &[
            (json!({"input": "x"}), "validation_failed", "model"),
            (json!({"model": "m"}), "validation_failed", "input"),
            (json!({"model": "m", "input": ""}), "validation_failed", "input"),
            (json!({"model": "m", "input": []}), "validation_failed", "input"),
            (json!({"model": "m", "input": 3}), "validation_failed", "input"),
            (json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}), "validation_failed", "input[0]"),
            (json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}), "not_supported", "input[0]"),
            (json!({"model": "m", "input": [{"role": "assistant", "content": "x"}]}), "validation_failed", "input"),
            (json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}), "not_supported", "tools"),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}),
                "not_supported",
                "tool_choice",
            ),
            (json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}), "validation_failed", "text"),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "chatcmpl-1"}),
                "validation_failed",
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": "x", "store": false, "previous_response_id": format!("resp_{}", "a".repeat(32))}),
                "not_supported",
                "store",
            ),
            (json!({"model": "m", "input": "x", "background": true}), "not_supported", "background"),
            (json!({"model": "m", "input": "x", "temprature": 1}), "validation_failed", "temprature"),
            (json!({"model": "m", "input": "x", "top_p": 3}), "validation_failed", "top_p"),
        ];
        for (b, code, field) in cases {
            let e = parse(&body(b.clone()), 1 << 20).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, *code), "{b}");
            let named = e.details.as_ref().and_then(|d| d.get("field")).and_then(Value::as_str);
            assert_eq!(named, Some(*field), "{b}");
        }
        assert_eq!(parse(b"{", 1 << 20).unwrap_err().code.as_str(), "invalid_json");
        assert_eq!(parse(&[b' '; 11], 10).unwrap_err().status, 413);
        assert_eq!(
            parse(&body(json!({"model": "m", "input": "x", "temperature": 9})), 1 << 20).unwrap_err().status,
            400
        );
    }

    #[test]
    fn response_ids_name_their_message_and_nothing_else() {
        let id = response_id("0b6f3c2e-1d2a-4c1b-9e8f-0123456789ab");
        assert_eq!(id, "resp_0b6f3c2e1d2a4c1b9e8f0123456789ab");
        assert_eq!(message_id_of(&id).as_deref(), Some("0b6f3c2e-1d2a-4c1b-9e8f-0123456789ab"));
        assert_eq!(
            parse(&body(json!({"model": "m", "input": "x", "previous_response_id": id})), 1 << 20)
                .unwrap()
                .chat
                .after_message,
            message_id_of(&id)
        );
        for bad in
            ["resp_", "resp_xyz", "msg_0b6f3c2e1d2a4c1b9e8f0123456789ab", "resp_0b6f3c2e1d2a4c1b9e8f0123456789ab00"]
        {
            assert_eq!(message_id_of(bad), None, "{bad}");
        }
    }

    fn echo() -> Echo {
        parse(&body(json!({"model": "m", "input": "x"})), 1 << 20).unwrap().echo
    }

    #[test]
    fn a_completion_becomes_a_response_with_message_and_call_items() {
        let completion = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]
        });
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
            cached_tokens: 2,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        };
        let r = from_completion("resp_ab", 7, &echo(), &completion, usage);
        assert_eq!(
            (r["status"].as_str(), r["model"].as_str(), r["created_at"].as_i64()),
            (Some("completed"), Some("gpt-4o-mini-2024"), Some(7))
        );
        assert_eq!(r["output"][0], message_item("msg_ab", "completed", "Let me check."));
        assert_eq!(r["output"][1], call_item("fc_ab_0", "completed", "call_9", "f", "{\"a\":1}"));
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 4,
                   "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}, "total_tokens": 14})
        );
        let cut = json!({"model": "m", "choices": [{"finish_reason": "length", "message": {"content": "abc"}}]});
        let r = from_completion("resp_ab", 7, &echo(), &cut, usage);
        assert_eq!(
            (r["status"].as_str(), &r["incomplete_details"]),
            (Some("incomplete"), &json!({"reason": "max_output_tokens"}))
        );
    }

    /// The events of a byte stream, as (event name, data) with the name checked against `type`.
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut parser = sse::Parser::new();
        parser
            .feed(bytes)
            .unwrap()
            .into_iter()
            .map(|e| {
                let data: Value = serde_json::from_str(&e.data).unwrap();
                let name = e.event.unwrap();
                assert_eq!(data["type"].as_str(), Some(name.as_str()));
                (name, data)
            })
            .collect()
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"object": "chat.completion.chunk", "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn a_text_stream_is_the_typed_event_sequence_with_usage_last() {
        let mut w = StreamWriter::new("resp_k", 5, "m", &echo());
        let mut bytes = w.start();
        bytes.extend(w.chunk(&chunk(json!({"role": "assistant", "content": ""}), None)));
        bytes.extend(w.chunk(&chunk(json!({"content": "Hel"}), None)));
        bytes.extend(w.chunk(&chunk(json!({"content": "lo"}), None)));
        bytes.extend(w.chunk(&chunk(json!({}), Some("stop"))));
        let ending = w.natural_ending();
        bytes.extend(w.finish(
            &ending,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
            },
            json!({"cost_usd": 0.1}),
        ));
        let evs = events(&bytes);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let seq: Vec<u64> = evs.iter().map(|(_, d)| d["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(seq, (0..10).collect::<Vec<_>>());
        assert_eq!(evs[0].1["response"]["status"], "in_progress");
        assert_eq!((evs[4].1["delta"].as_str(), evs[4].1["item_id"].as_str()), (Some("Hel"), Some("msg_k")));
        assert_eq!(evs[6].1["text"], "Hello");
        let done = &evs[9].1["response"];
        assert_eq!((done["status"].as_str(), done["model"].as_str()), (Some("completed"), Some("gpt-x")));
        assert_eq!(done["output"], json!([message_item("msg_k", "completed", "Hello")]));
        assert_eq!(
            (done["usage"]["total_tokens"].as_u64(), done["chatedge"]["cost_usd"].as_f64()),
            (Some(5), Some(0.1))
        );
    }

    #[test]
    fn tool_calls_stream_as_function_call_items_with_their_arguments() {
        let mut w = StreamWriter::new("resp_k", 5, "m", &echo());
        let mut bytes = w.start();
        let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
            let mut c = json!({"index": index, "function": {"arguments": args}});
            if let Some(id) = id {
                c["id"] = json!(id);
                c["type"] = json!("function");
            }
            if let Some(n) = name {
                c["function"]["name"] = json!(n);
            }
            chunk(json!({"tool_calls": [c]}), None)
        };
        bytes.extend(w.chunk(&chunk(json!({"content": "Checking."}), None)));
        bytes.extend(w.chunk(&call(0, Some("call_a"), Some("get_weather"), "")));
        bytes.extend(w.chunk(&call(0, None, None, "{\"city\":")));
        bytes.extend(w.chunk(&call(0, None, None, "\"Oslo\"}")));
        bytes.extend(w.chunk(&call(1, Some("call_b"), Some("get_time"), "{}")));
        bytes.extend(w.chunk(&chunk(json!({}), Some("tool_calls"))));
        let ending = w.natural_ending();
        bytes.extend(w.finish(&ending, Usage::default(), json!({})));
        let evs = events(&bytes);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert_eq!(evs[8].1["item"], call_item("fc_k_0", "in_progress", "call_a", "get_weather", ""));
        assert_eq!(evs[8].1["output_index"], 1);
        assert_eq!(evs[11].1["arguments"], "{\"city\":\"Oslo\"}");
        let output = &evs[17].1["response"]["output"];
        assert_eq!(output[1], call_item("fc_k_0", "completed", "call_a", "get_weather", "{\"city\":\"Oslo\"}"));
        assert_eq!(output[2], call_item("fc_k_1", "completed", "call_b", "get_time", "{}"));
    }

    #[test]
    fn a_cut_or_capped_stream_ends_incomplete_or_failed() {
        let mut w = StreamWriter::new("resp_k", 5, "m", &echo());
        let _ = w.start();
        let _ = w.chunk(&chunk(json!({"content": "par"}), Some("length")));
        assert_eq!(w.natural_ending(), Ending::Incomplete("max_output_tokens".into()));
        let evs = events(&w.finish(&w.natural_ending(), Usage::default(), json!({})));
        let last = &evs.last().unwrap().1;
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(last["response"]["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
        let mut w = StreamWriter::new("resp_k", 5, "m", &echo());
        let failed = Ending::Failed { code: "server_error".into(), message: "upstream said no".into() };
        let evs = events(&w.finish(&failed, Usage::default(), json!({})));
        assert_eq!(evs[0].1["type"], "response.failed");
        assert_eq!(evs[0].1["response"]["error"], json!({"code": "server_error", "message": "upstream said no"}));
    }

    #[test]
    fn a_stored_row_reads_back_as_the_response_it_was() {
        let row = json!({"status": "complete", "content": "hi", "model": "m", "created_at": 9, "prompt_tokens": 1,
                         "completion_tokens": 2, "tool_calls": null, "previous_message_id": "0b6f3c2e-1d2a-4c1b-9e8f-0123456789ab"});
        let r = from_stored("resp_k", &row);
        assert_eq!((r["status"].as_str(), r["usage"]["total_tokens"].as_u64()), (Some("completed"), Some(3)));
        assert_eq!(r["output"], json!([message_item("msg_k", "completed", "hi")]));
        assert_eq!(r["previous_response_id"], "resp_0b6f3c2e1d2a4c1b9e8f0123456789ab");
        let failed = from_stored("resp_k", &json!({"status": "error", "metadata": {"error": "boom"}}));
        assert_eq!((failed["status"].as_str(), failed["error"]["message"].as_str()), (Some("failed"), Some("boom")));
        assert_eq!(from_stored("resp_k", &json!({"status": "pending"}))["status"], "in_progress");
    }
}
