//! The chat-completion request in pure form: parsing and validating the native and the
//! OpenAI-compatible bodies, choosing the provider and its settings from variables, building the
//! upstream context, and mapping upstream failures to the error envelope.

use crate::error::ApiError;
use crate::is_uuid;
use crate::providers::Provider;
use crate::retry::RetryPolicy;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Longest single message text accepted (characters).
pub const MAX_MESSAGE_CHARS: usize = 100_000;
/// Most messages a client may send in one `messages` array.
pub const MAX_MESSAGES: usize = 500;
/// Default number of stored messages sent as context.
pub const DEFAULT_CONTEXT_MESSAGES: usize = 10;
/// Largest request body the chat routes read, unless `chat_max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Which route the request came in on: it decides defaults (stream) and what is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST /functions/v1/chat-completion`: streams by default, always persisted.
    Native,
    /// `POST /v1/chat/completions`: OpenAI's contract; persisted when a conversation is named or
    /// `store: true` is set.
    OpenAi,
}

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The route it came in on.
    pub dialect: Dialect,
    /// Conversation to continue (lowercase UUID).
    pub conversation_id: Option<String>,
    /// Whether messages are written to a conversation (one is created when none is named).
    pub persist: bool,
    /// The user text that is stored as the new user message.
    pub user_text: String,
    /// The full context when the client sent one (`messages`); `None` means the context is the
    /// conversation's stored history plus `user_text`.
    pub client_messages: Option<Vec<Value>>,
    /// Provider asked for.
    pub provider: Option<Provider>,
    /// Model asked for (provider prefix such as `anthropic/` removed).
    pub model: Option<String>,
    /// Sampling temperature, 0..=2.
    pub temperature: Option<f64>,
    /// Output token cap.
    pub max_tokens: Option<u64>,
    /// System prompt for a new conversation, or for this call.
    pub system_prompt: Option<String>,
    /// SSE or one JSON body.
    pub stream: bool,
    /// OpenAI parameters passed through to the upstream untouched (tools, tool_choice, stop,
    /// top_p, response_format, seed, ...).
    pub passthrough: Map<String, Value>,
}

impl ChatRequest {
    /// Nothing asked for yet, with the route's defaults: the native route streams and
    /// persists, the OpenAI one does neither unless asked.
    fn empty(dialect: Dialect) -> Self {
        let native = dialect == Dialect::Native;
        ChatRequest {
            dialect,
            conversation_id: None,
            persist: native,
            user_text: String::new(),
            client_messages: None,
            provider: None,
            model: None,
            temperature: None,
            max_tokens: None,
            system_prompt: None,
            stream: native,
            passthrough: Map::new(),
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("validation_failed", message)
}

fn parse_json(body: &[u8], max: usize) -> Result<Map<String, Value>, ApiError> {
    if body.len() > max {
        return Err(ApiError::payload_too_large(max));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request("invalid_json", format!("request body: {e}"))),
    }
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")),
        _ => None,
    }
}

fn validate_messages(messages: &[Value]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(invalid(format!("at most {MAX_MESSAGES} messages")));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(invalid(format!("messages[{i}].role must be system, developer, user, assistant or tool")));
        }
        let content = &m["content"];
        let ok = match content {
            Value::String(s) => s.chars().count() <= MAX_MESSAGE_CHARS,
            Value::Array(parts) => parts.iter().all(|p| p.is_object() && p["type"].is_string()),
            Value::Null => role == "assistant" && m["tool_calls"].is_array(),
            _ => false,
        };
        if !ok {
            return Err(invalid(format!("messages[{i}].content must be a string or an array of content parts")));
        }
    }
    Ok(())
}

/// Keys of the native body; anything else is refused, so typos do not pass silently.
const NATIVE_KEYS: &[&str] = &[
    "conversation_id",
    "message",
    "messages",
    "provider",
    "model",
    "temperature",
    "max_tokens",
    "system_prompt",
    "stream",
    "tools",
    "tool_choice",
    "stop",
    "top_p",
    "response_format",
    "seed",
];

/// Parameters the function sets itself and never passes through from an OpenAI body.
const OWN_KEYS: &[&str] = &[
    "conversation_id",
    "messages",
    "provider",
    "model",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "store",
    "system_prompt",
    "n",
];

fn common_fields(m: &Map<String, Value>, req: &mut ChatRequest) -> Result<(), ApiError> {
    match m.get("conversation_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_uuid(s) => req.conversation_id = Some(s.to_ascii_lowercase()),
        Some(_) => return Err(invalid("conversation_id must be a UUID")),
    }
    match m.get("provider") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            req.provider = Some(
                Provider::parse(s)
                    .ok_or_else(|| invalid("provider must be one of openai, anthropic, mistral, openai_compatible"))?,
            )
        }
        Some(_) => return Err(invalid("provider must be a string")),
    }
    match m.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 128 => {
            // `anthropic/claude-...` names the provider too, as LiteLLM and OpenRouter spell it.
            match s.split_once('/').and_then(|(p, rest)| Provider::parse(p).map(|p| (p, rest))) {
                Some((p, rest)) if !rest.is_empty() => {
                    if req.provider.is_some_and(|asked| asked != p) {
                        return Err(invalid("model names a different provider than provider"));
                    }
                    req.provider = Some(p);
                    req.model = Some(rest.to_owned());
                }
                _ => req.model = Some(s.trim().to_owned()),
            }
        }
        Some(_) => return Err(invalid("model must be a non-empty string of at most 128 characters")),
    }
    match m.get("temperature") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => req.temperature = Some(t),
            _ => return Err(invalid("temperature must be a number between 0 and 2")),
        },
    }
    let max = m.get("max_completion_tokens").filter(|v| !v.is_null()).or(m.get("max_tokens"));
    match max {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => req.max_tokens = Some(n),
            _ => return Err(invalid("max_tokens must be an integer between 1 and 1000000")),
        },
    }
    match m.get("system_prompt") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.chars().count() <= 32_000 => {
            req.system_prompt = Some(s.clone()).filter(|s| !s.trim().is_empty())
        }
        Some(_) => return Err(invalid("system_prompt must be a string of at most 32000 characters")),
    }
    match m.get("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => req.stream = *b,
        Some(_) => return Err(invalid("stream must be a boolean")),
    }
    Ok(())
}

fn last_user_text(messages: &[Value]) -> Result<String, ApiError> {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| text_of(&m["content"]))
        .ok_or_else(|| invalid("messages must contain a user message"))
}

/// Parses the body of `POST /functions/v1/chat-completion`.
pub fn parse_native(body: &[u8], max_body: usize) -> Result<ChatRequest, ApiError> {
    let m = parse_json(body, max_body)?;
    if let Some(k) = m.keys().find(|k| !NATIVE_KEYS.contains(&k.as_str())) {
        return Err(invalid(format!("unknown field '{k}'")));
    }
    let mut req = ChatRequest::empty(Dialect::Native);
    common_fields(&m, &mut req)?;
    match (m.get("message"), m.get("messages")) {
        (Some(Value::String(s)), None) => {
            if s.trim().is_empty() {
                return Err(invalid("message must not be empty"));
            }
            if s.chars().count() > MAX_MESSAGE_CHARS {
                return Err(invalid(format!("message must be at most {MAX_MESSAGE_CHARS} characters")));
            }
            req.user_text = s.clone();
        }
        (None, Some(Value::Array(list))) => {
            validate_messages(list)?;
            req.user_text = last_user_text(list)?;
            req.client_messages = Some(list.clone());
        }
        (Some(_), Some(_)) => return Err(invalid("send either message or messages, not both")),
        (Some(_), None) => return Err(invalid("message must be a string")),
        (None, Some(_)) => return Err(invalid("messages must be an array")),
        (None, None) => return Err(invalid("message is required")),
    }
    for k in ["tools", "tool_choice", "stop", "top_p", "response_format", "seed"] {
        if let Some(v) = m.get(k).filter(|v| !v.is_null()) {
            req.passthrough.insert(k.to_owned(), v.clone());
        }
    }
    Ok(req)
}

/// Parses the body of `POST /v1/chat/completions` (OpenAI's contract: `model` and `messages`
/// required, `stream` false by default). `conversation_id` (via the SDKs' `extra_body`) or
/// `store: true` persists the exchange.
pub fn parse_openai(body: &[u8], max_body: usize) -> Result<ChatRequest, ApiError> {
    let m = parse_json(body, max_body)?;
    let mut req = ChatRequest::empty(Dialect::OpenAi);
    common_fields(&m, &mut req)?;
    if req.model.is_none() {
        return Err(invalid("model is required"));
    }
    if m.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(invalid("only n = 1 is supported"));
    }
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(invalid("messages must be an array"));
    };
    validate_messages(list)?;
    req.user_text = last_user_text(list)?;
    req.client_messages = Some(list.clone());
    req.persist = req.conversation_id.is_some() || m.get("store") == Some(&Value::Bool(true));
    for (k, v) in &m {
        if !OWN_KEYS.contains(&k.as_str()) && !v.is_null() {
            req.passthrough.insert(k.clone(), v.clone());
        }
    }
    Ok(req)
}

/// The provider a bare model name belongs to, by its well-known prefixes.
pub fn infer_provider(model: &str) -> Option<Provider> {
    let m = model.to_ascii_lowercase();
    if m.starts_with("claude") {
        Some(Provider::Anthropic)
    } else if ["mistral", "open-mistral", "open-mixtral", "codestral", "ministral", "pixtral", "magistral", "devstral"]
        .iter()
        .any(|p| m.starts_with(p))
    {
        Some(Provider::Mistral)
    } else if ["gpt-", "o1", "o3", "o4", "chatgpt-"].iter().any(|p| m.starts_with(p)) {
        Some(Provider::OpenAi)
    } else {
        None
    }
}

/// A new conversation's title: the first line of the first message, at most 80 characters.
pub fn title_from(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("New conversation");
    let clean: String = line.chars().filter(|c| !c.is_control()).collect();
    let mut title: String = clean.chars().take(80).collect();
    if clean.chars().count() > 80 {
        title.push('…');
    }
    if title.trim().is_empty() {
        "New conversation".to_owned()
    } else {
        title
    }
}

/// A stored message used as context.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
    /// Assistant tool calls, OpenAI-shaped.
    pub tool_calls: Option<Value>,
}

/// The OpenAI-format messages sent upstream: the system prompt, then either the client's own
/// context or the stored history (oldest first) followed by the new user text.
pub fn context_messages(req: &ChatRequest, system_prompt: Option<&str>, history: &[StoredMessage]) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(list) = &req.client_messages {
        let has_system = list.iter().any(|m| m["role"] == "system" || m["role"] == "developer");
        if let Some(sp) = system_prompt.filter(|_| !has_system) {
            out.push(json!({"role": "system", "content": sp}));
        }
        out.extend(list.iter().cloned());
        return out;
    }
    if let Some(sp) = system_prompt {
        out.push(json!({"role": "system", "content": sp}));
    }
    for m in history {
        let mut v = json!({"role": m.role, "content": m.content});
        if let Some(tc) = m.tool_calls.as_ref().filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
            v["tool_calls"] = tc.clone();
        }
        out.push(v);
    }
    out.push(json!({"role": "user", "content": req.user_text}));
    out
}

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

/// The OpenAI-format request body before provider translation.
pub fn openai_body(req: &ChatRequest, model: &str, messages: Vec<Value>) -> Value {
    let mut body = req.passthrough.clone();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(n) = req.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    Value::Object(body)
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

/// The variable prefix of a provider's settings (`openai_api_key`, `compatible_base_url`, ...).
pub fn variable_prefix(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "openai",
        Provider::Anthropic => "anthropic",
        Provider::Mistral => "mistral",
        Provider::OpenAiCompatible => "compatible",
    }
}

fn builtin_default_model(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "gpt-4o-mini",
        Provider::Anthropic => "claude-sonnet-4-5",
        Provider::Mistral => "mistral-small-latest",
        Provider::OpenAiCompatible => "",
    }
}

/// Resolves a provider's settings from variables (`var` returns `None` for unset or empty).
/// A key is required when the base URL is the provider's official one; a base URL pointing
/// elsewhere (Ollama, vLLM, a proxy) may be keyless. `byo_key` (the `x-provider-api-key`
/// header) replaces the configured key.
pub fn provider_config(
    provider: Provider,
    var: &dyn Fn(&str) -> Option<String>,
    byo_key: Option<&str>,
) -> Result<ProviderConfig, ApiError> {
    let prefix = variable_prefix(provider);
    // An OpenAI-compatible server has no official URL: unset means not configured (never a
    // guessed local address).
    if provider == Provider::OpenAiCompatible && var("compatible_base_url").is_none() {
        return Err(ApiError::unavailable(
            "provider_not_configured",
            "provider 'openai_compatible' is not configured: set the variable 'compatible_base_url' \
             (SPIN_VARIABLE_COMPATIBLE_BASE_URL) to the server's /v1 URL",
        )
        .with_detail("provider", provider.name())
        .with_detail("variable", "compatible_base_url"));
    }
    let base_url = var(&format!("{prefix}_base_url")).unwrap_or_else(|| provider.default_base_url().to_owned());
    let official = base_url.trim_end_matches('/') == provider.default_base_url();
    let api_key = match byo_key.map(str::trim).filter(|k| !k.is_empty()) {
        Some(k) => k.to_owned(),
        None => match var(&format!("{prefix}_api_key")) {
            Some(k) => k,
            None if official && provider != Provider::OpenAiCompatible => {
                let variable = format!("{prefix}_api_key");
                return Err(ApiError::unavailable(
                    "provider_not_configured",
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
        var(&format!("{prefix}_default_model")).unwrap_or_else(|| builtin_default_model(provider).to_owned());
    Ok(ProviderConfig { provider, base_url, api_key, default_model })
}

/// Picks the provider: asked for, implied by the model, else `default_provider`.
pub fn choose_provider(req: &ChatRequest, var: &dyn Fn(&str) -> Option<String>) -> Result<Provider, ApiError> {
    if let Some(p) = req.provider {
        return Ok(p);
    }
    if let Some(p) = req.model.as_deref().and_then(infer_provider) {
        return Ok(p);
    }
    let name = var("default_provider").unwrap_or_else(|| "openai".to_owned());
    Provider::parse(name.trim())
        .ok_or_else(|| ApiError::internal(format!("server misconfigured: default_provider '{name}' is unknown")))
}

/// The fallback providers (`fallback_providers`, comma separated), without `primary`.
pub fn fallback_providers(primary: Provider, var: &dyn Fn(&str) -> Option<String>) -> Vec<Provider> {
    let mut out = Vec::new();
    for name in var("fallback_providers").unwrap_or_default().split(',') {
        if let Some(p) = Provider::parse(name.trim()) {
            if p != primary && !out.contains(&p) {
                out.push(p);
            }
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
    pub fn from_variables(var: &dyn Fn(&str) -> Option<String>) -> Self {
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

/// Why a provider call failed before a usable response arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum CallFailure {
    /// The upstream answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// Its error, parsed from the body when possible.
        message: String,
        /// Retry-After, when sent.
        retry_after: Option<Duration>,
    },
    /// No connection (refused, DNS, TLS).
    Connect(String),
    /// Connect or first byte took too long, or the total deadline passed.
    Timeout(String),
    /// The host refused the outbound request (not in `allowed_outbound_hosts`).
    Denied(String),
    /// Anything else.
    Other(String),
}

impl CallFailure {
    /// Worth another attempt (same or fallback provider).
    pub fn retryable(&self) -> bool {
        match self {
            CallFailure::Status { status, .. } => crate::retry::is_retryable_status(*status),
            CallFailure::Connect(_) | CallFailure::Timeout(_) => true,
            CallFailure::Denied(_) | CallFailure::Other(_) => false,
        }
    }

    /// The `api_usage.status` of an attempt that failed this way.
    pub fn usage_status(&self) -> String {
        match self {
            CallFailure::Status { status, .. } => format!("http_{status}"),
            CallFailure::Connect(_) => "connect_error".into(),
            CallFailure::Timeout(_) => "timeout".into(),
            CallFailure::Denied(_) => "denied".into(),
            CallFailure::Other(_) => "error".into(),
        }
    }

    /// What the client is told once no attempt is left.
    pub fn to_api_error(&self, provider: Provider) -> ApiError {
        let name = provider.name();
        let e = match self {
            CallFailure::Status { status: 429, message, retry_after } => {
                let secs = retry_after.map(|d| d.as_secs_f64().ceil() as u64).unwrap_or(1).max(1);
                ApiError::new(429, "provider_rate_limited", format!("{name} is rate limiting requests: {message}"))
                    .with_header("retry-after", secs.to_string())
            }
            CallFailure::Status { status: 400 | 404 | 413 | 422, message, .. } => {
                ApiError::bad_request("provider_rejected_request", format!("{name} rejected the request: {message}"))
            }
            // The provider's own words would quote (part of) the key: never passed on.
            CallFailure::Status { status: 401 | 403, .. } => {
                ApiError::new(502, "provider_auth_failed", format!("{name} refused the API key"))
            }
            CallFailure::Status { status, message, .. } => {
                ApiError::new(502, "provider_error", format!("{name} failed with HTTP {status}: {message}"))
            }
            CallFailure::Connect(m) => ApiError::new(502, "provider_unreachable", format!("{name} is unreachable: {m}")),
            CallFailure::Timeout(m) => ApiError::new(504, "provider_timeout", format!("{name} timed out: {m}")),
            CallFailure::Denied(m) => ApiError::internal(format!(
                "server misconfigured: outbound requests to {name} are not allowed ({m}); check the *_allowed_host variables"
            )),
            CallFailure::Other(m) => ApiError::new(502, "provider_error", format!("{name}: {m}")),
        };
        let e = e.with_detail("provider", name);
        match self {
            CallFailure::Status { status, .. } => e.with_detail("upstream_status", status),
            _ => e,
        }
    }
}

/// The message of an upstream error body (any provider's shape), or its first bytes, with
/// anything that looks like a credential masked ([`redact_secrets`]).
pub fn upstream_error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| crate::providers::UpstreamError::from_body(&v))
        .map(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned());
    redact_secrets(&message)
}

/// `text` with every word that looks like an API key or a masked one replaced by
/// `[redacted]`: key prefixes (`sk-`, `sk_`, `pk-`, `rk-`, `key-`, `sess-`), runs of `*` (the
/// providers' "sk-proj-****abcd" echo), and long unbroken letter-digit runs. Provider error
/// messages quote the key they refused; neither clients nor stored rows may ever see it.
pub fn redact_secrets(text: &str) -> String {
    let looks_secret = |word: &str| {
        let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '*');
        let lower = w.to_ascii_lowercase();
        let prefixed =
            ["sk-", "sk_", "pk-", "pk_", "rk-", "key-", "sess-", "sk-ant-"].iter().any(|p| lower.starts_with(p));
        let masked = w.contains("***");
        let long_mixed = w.len() >= 24
            && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && w.bytes().any(|b| b.is_ascii_digit())
            && w.bytes().any(|b| b.is_ascii_alphabetic());
        prefixed || masked || long_mixed
    };
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if looks_secret(word) {
            out.push_str("[redacted]");
            // Keep the sentence's punctuation.
            if let Some(p) = word.chars().last().filter(|c| matches!(c, '.' | ',' | ';' | ')')) {
                out.push(p);
            }
        } else {
            out.push_str(word);
        }
    }
    out
}

/// The OpenAI-shaped error event sent inside a stream that fails after it began.
pub fn stream_error_event(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn native_message_defaults_to_streaming_and_persisting() {
        let r = parse_native(br#"{"message":"hi"}"#, DEFAULT_MAX_BODY_BYTES).unwrap();
        assert!(r.stream && r.persist);
        assert_eq!(r.user_text, "hi");
        assert_eq!(r.client_messages, None);
        assert_eq!(r.dialect, Dialect::Native);
    }

    #[test]
    fn native_validation_refuses_bad_fields() {
        let cases: &[&[u8]] = &[
            br#"{}"#,
            br#"{"message":""}"#,
            br#"{"message":"  "}"#,
            br#"{"message":1}"#,
            br#"{"message":"a","messages":[]}"#,
            br#"{"messages":[]}"#,
            br#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            br#"{"messages":[{"role":"assistant","content":"x"}]}"#,
            br#"{"message":"a","temperature":3}"#,
            br#"{"message":"a","max_tokens":0}"#,
            br#"{"message":"a","provider":"acme"}"#,
            br#"{"message":"a","conversation_id":"nope"}"#,
            br#"{"message":"a","stream":"yes"}"#,
            br#"{"message":"a","modle":"gpt-4o"}"#,
            br#"{"message":"a","provider":"openai","model":"anthropic/claude-x"}"#,
            br#"[1]"#,
        ];
        for body in cases {
            let e = parse_native(body, DEFAULT_MAX_BODY_BYTES).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(parse_native(b"{", 100).unwrap_err().code, "invalid_json");
        assert_eq!(parse_native(&[b' '; 101], 100).unwrap_err().status, 413);
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(MAX_MESSAGE_CHARS + 1));
        assert_eq!(parse_native(long.as_bytes(), 1 << 20).unwrap_err().status, 400);
    }

    #[test]
    fn model_prefix_names_the_provider() {
        let r = parse_native(br#"{"message":"a","model":"anthropic/claude-3-5-haiku"}"#, 1 << 20).unwrap();
        assert_eq!(r.provider, Some(Provider::Anthropic));
        assert_eq!(r.model.as_deref(), Some("claude-3-5-haiku"));
        assert_eq!(infer_provider("claude-sonnet-4-5"), Some(Provider::Anthropic));
        assert_eq!(infer_provider("mistral-small-latest"), Some(Provider::Mistral));
        assert_eq!(infer_provider("gpt-4o-mini"), Some(Provider::OpenAi));
        assert_eq!(infer_provider("llama3.2"), None);
    }

    #[test]
    fn openai_body_requires_model_and_passes_unknown_parameters_through() {
        let r = parse_openai(
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"q"}],"tools":[{"type":"function"}],
                 "stream_options":{"include_usage":false},"store":true,"user":"u1","max_completion_tokens":9}"#,
            1 << 20,
        )
        .unwrap();
        assert!(!r.stream);
        assert!(r.persist, "store: true persists");
        assert_eq!(r.max_tokens, Some(9));
        assert!(r.passthrough.contains_key("tools") && r.passthrough.contains_key("user"));
        assert!(!r.passthrough.contains_key("stream_options") && !r.passthrough.contains_key("store"));
        assert_eq!(parse_openai(br#"{"messages":[{"role":"user","content":"q"}]}"#, 1 << 20).unwrap_err().status, 400);
        let no_store = parse_openai(br#"{"model":"m","messages":[{"role":"user","content":"q"}]}"#, 1 << 20).unwrap();
        assert!(!no_store.persist);
    }

    #[test]
    fn context_is_system_history_then_new_message() {
        let r = parse_native(br#"{"message":"third"}"#, 1 << 20).unwrap();
        let history = vec![
            StoredMessage { role: "user".into(), content: "first".into(), tool_calls: None },
            StoredMessage { role: "assistant".into(), content: "second".into(), tool_calls: Some(json!([])) },
        ];
        let msgs = context_messages(&r, Some("be brief"), &history);
        assert_eq!(
            Value::Array(msgs),
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "second"},
                {"role": "user", "content": "third"},
            ])
        );
    }

    #[test]
    fn client_context_keeps_its_own_system_message() {
        let r =
            parse_native(br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]}"#, 1 << 20)
                .unwrap();
        let msgs = context_messages(&r, Some("stored"), &[]);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0]["content"], "s");
        assert_eq!(r.user_text, "u");
    }

    #[test]
    fn missing_key_names_the_variable() {
        let e = provider_config(Provider::OpenAi, &vars(&[]), None).unwrap_err();
        assert_eq!((e.status, e.code), (503, "provider_not_configured"));
        assert!(e.message.contains("openai_api_key") && e.message.contains("SPIN_VARIABLE_OPENAI_API_KEY"));
        let e = provider_config(Provider::Anthropic, &vars(&[]), None).unwrap_err();
        assert!(e.message.contains("anthropic_api_key"));
    }

    #[test]
    fn a_custom_base_url_needs_no_key_and_byo_key_wins() {
        let c = provider_config(Provider::OpenAi, &vars(&[("openai_base_url", "http://127.0.0.1:11434/v1")]), None)
            .unwrap();
        assert_eq!(c.api_key, "");
        let c = provider_config(Provider::OpenAi, &vars(&[("openai_api_key", "sk-server")]), Some("sk-user")).unwrap();
        assert_eq!(c.api_key, "sk-user");
        assert_eq!(c.default_model, "gpt-4o-mini");
        // An OpenAI-compatible server with no URL is not configured: 503, no guessed address.
        let e = provider_config(Provider::OpenAiCompatible, &vars(&[]), None).unwrap_err();
        assert_eq!((e.status, e.code), (503, "provider_not_configured"));
        let c = provider_config(
            Provider::OpenAiCompatible,
            &vars(&[("compatible_base_url", "http://10.0.0.2:8000/v1")]),
            None,
        )
        .unwrap();
        assert_eq!(c.base_url, "http://10.0.0.2:8000/v1");
    }

    #[test]
    fn provider_choice_order() {
        let r = parse_native(br#"{"message":"a","model":"claude-haiku-4-5"}"#, 1 << 20).unwrap();
        assert_eq!(choose_provider(&r, &vars(&[("default_provider", "mistral")])).unwrap(), Provider::Anthropic);
        let r = parse_native(br#"{"message":"a"}"#, 1 << 20).unwrap();
        assert_eq!(choose_provider(&r, &vars(&[("default_provider", "mistral")])).unwrap(), Provider::Mistral);
        assert_eq!(choose_provider(&r, &vars(&[])).unwrap(), Provider::OpenAi);
        assert_eq!(
            fallback_providers(Provider::OpenAi, &vars(&[("fallback_providers", "openai, anthropic,bogus,mistral")])),
            vec![Provider::Anthropic, Provider::Mistral]
        );
    }

    #[test]
    fn failures_map_to_clear_statuses() {
        let rl = CallFailure::Status {
            status: 429,
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(1500)),
        };
        let e = rl.to_api_error(Provider::OpenAi);
        assert_eq!((e.status, e.code), (429, "provider_rate_limited"));
        assert!(e.headers.contains(&("retry-after".to_owned(), "2".to_owned())));
        assert!(rl.retryable());
        let e = CallFailure::Status { status: 500, message: "boom".into(), retry_after: None }
            .to_api_error(Provider::Mistral);
        assert_eq!((e.status, e.code), (502, "provider_error"));
        assert_eq!(CallFailure::Timeout("x".into()).to_api_error(Provider::OpenAi).status, 504);
        assert!(!CallFailure::Status { status: 400, message: String::new(), retry_after: None }.retryable());
        assert_eq!(
            upstream_error_message(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            "Overloaded"
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
    fn key_fragments_never_survive_an_error_message() {
        let openai = br#"{"error":{"message":"Incorrect API key provided: sk-proj-********************abcd. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let m = upstream_error_message(openai);
        assert!(!m.contains("abcd") && !m.contains("sk-proj"), "{m}");
        assert!(m.starts_with("Incorrect API key provided: [redacted]."), "{m}");
        let raw = redact_secrets("key sk-ant-api03-AbCdEf123456 rejected; token 8f3a9c1b2d4e5f60718293a4b5c6d7e8 bad");
        assert!(!raw.contains("AbCdEf") && !raw.contains("8f3a9c1b"), "{raw}");
        assert_eq!(redact_secrets("The model `gpt-4o` does not exist"), "The model `gpt-4o` does not exist");
        // A 401's message is never passed on at all.
        let e = CallFailure::Status {
            status: 401,
            message: "Incorrect API key provided: sk-...abcd".into(),
            retry_after: None,
        }
        .to_api_error(Provider::OpenAi);
        assert_eq!((e.status, e.code, e.message.as_str()), (502, "provider_auth_failed", "openai refused the API key"));
    }

    #[test]
    fn deeply_nested_json_is_a_400_not_a_stack_overflow() {
        let deep = format!("{{\"message\":\"a\",\"tools\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_native(deep.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_json"));
        let e = parse_openai(deep.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(e.status, 400);
    }

    /// Arbitrary JSON, nested and flat, for the body fuzzers.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            prop_oneof![Just("user"), Just("assistant"), Just("system"), Just("tool"), Just("text"), Just("image_url")]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("message".to_owned()),
                        Just("messages".to_owned()),
                        Just("model".to_owned()),
                        Just("role".to_owned()),
                        Just("content".to_owned()),
                        Just("stream".to_owned()),
                        Just("max_tokens".to_owned()),
                        Just("temperature".to_owned()),
                        Just("tools".to_owned()),
                        Just("conversation_id".to_owned()),
                        Just("provider".to_owned()),
                        "[a-z_]{1,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]

        /// Fuzz: any JSON body (and any bytes) is a request or a 4xx on both chat routes; the
        /// upstream body of an accepted one serializes. `./dev fuzz` runs this with more cases.
        #[test]
        fn any_json_body_is_a_request_or_a_4xx(body in any_json()) {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            for parsed in [parse_native(&bytes, DEFAULT_MAX_BODY_BYTES), parse_openai(&bytes, DEFAULT_MAX_BODY_BYTES)] {
                match parsed {
                    Ok(r) => {
                        let msgs = context_messages(&r, r.system_prompt.as_deref(), &[]);
                        let up = openai_body(&r, r.model.as_deref().unwrap_or("m"), msgs);
                        proptest::prop_assert!(serde_json::to_vec(&up).is_ok());
                        let anthropic = crate::providers::upstream_request(Provider::Anthropic, "https://a", "k", &up, r.stream);
                        proptest::prop_assert!(anthropic.body.is_object());
                    }
                    Err(e) => proptest::prop_assert!((400..500).contains(&e.status), "{e:?}"),
                }
            }
        }

        #[test]
        fn any_bytes_are_a_request_or_a_4xx(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            for parsed in [parse_native(&bytes, 256), parse_openai(&bytes, 256)] {
                if let Err(e) = parsed {
                    proptest::prop_assert!((400..500).contains(&e.status));
                }
            }
        }
    }

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(title_from("\n  Hello there\nsecond"), "Hello there");
        assert_eq!(title_from(&"é".repeat(100)).chars().count(), 81);
        assert_eq!(title_from("   "), "New conversation");
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
