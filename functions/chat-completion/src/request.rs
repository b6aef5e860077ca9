//! Step 1 of a chat: the request as clients send it, parsed and validated. The native body of
//! `POST /functions/v1/chat-completion` and OpenAI's of `POST /v1/chat/completions` become one
//! [`ChatRequest`]; every refusal is a 400 envelope naming the field.

use crate::providers::Provider;
use serde_json::{Map, Value};
use shared::is_uuid;
use shared::ApiError;
use shared::ErrorCode;

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
    /// `POST /v1/responses`: OpenAI's Responses API; stored unless `store: false`, continued
    /// with `previous_response_id` (`crate::responses`).
    Responses,
    /// `POST /v1/messages`: Anthropic's Messages API; persisted when a conversation is named
    /// (`crate::anthropic_messages`).
    Messages,
}

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The route it came in on.
    pub dialect: Dialect,
    /// Conversation to continue (lowercase UUID).
    pub conversation_id: Option<String>,
    /// Continue the conversation holding this assistant message (a Responses API
    /// `previous_response_id`), found under RLS.
    pub after_message: Option<String>,
    /// The messages stored before the reply, OpenAI-shaped (user, assistant and tool turns);
    /// `None` stores `user_text` as the one user message.
    pub turn: Option<Vec<Value>>,
    /// Whether `client_messages` follow the stored history (the Responses API sends only the
    /// new turns) instead of replacing it (chat completions send the whole context).
    pub history_then_messages: bool,
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
    /// The documents to retrieve context from (native `file_ids` / `use_documents`).
    pub documents: Option<crate::documents::Scope>,
}

impl ChatRequest {
    /// Nothing asked for yet, with the route's defaults: the native route streams and
    /// persists, the OpenAI one does neither unless asked.
    fn empty(dialect: Dialect) -> Self {
        let native = dialect == Dialect::Native;
        ChatRequest {
            dialect,
            conversation_id: None,
            after_message: None,
            turn: None,
            history_then_messages: false,
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
            documents: None,
        }
    }

    /// A request for `dialect` with the fields every chat body shares (model, provider,
    /// temperature, max_tokens, stream, ...) read from `fields` and checked as the chat routes
    /// check them.
    pub fn from_shared_fields(dialect: Dialect, fields: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut req = ChatRequest::empty(dialect);
        common_fields(fields, &mut req)?;
        Ok(req)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::ValidationFailed, message)
}

/// A body that must be a JSON object whose keys are all `known` (the Responses and Messages
/// routes refuse an unknown parameter, as OpenAI and Anthropic do): 413 past `max`, 400
/// `invalid_json`, or 400 naming the first unknown key, worded by `refusal`.
pub(crate) fn object_with_known_keys(
    body: &[u8],
    max: usize,
    known: &[&str],
    refusal: impl Fn(&str) -> String,
) -> Result<Map<String, Value>, ApiError> {
    let m = parse_json(body, max)?;
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(ErrorCode::ValidationFailed, refusal(k)).with_detail("field", k.as_str()));
    }
    Ok(m)
}

fn parse_json(body: &[u8], max: usize) -> Result<Map<String, Value>, ApiError> {
    if body.len() > max {
        return Err(ApiError::payload_too_large(max));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(ErrorCode::InvalidJson, format!("request body: {e}"))),
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
    "file_ids",
    "use_documents",
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
    req.documents = crate::documents::scope(&m)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{context_messages, openai_body};

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
        assert_eq!(parse_native(b"{", 100).unwrap_err().code.as_str(), "invalid_json");
        assert_eq!(parse_native(&[b' '; 101], 100).unwrap_err().status, 413);
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(MAX_MESSAGE_CHARS + 1));
        assert_eq!(parse_native(long.as_bytes(), 1 << 20).unwrap_err().status, 400);
    }

    #[test]
    fn model_prefix_names_the_provider() {
        let r = parse_native(br#"{"message":"a","model":"anthropic/claude-3-5-haiku"}"#, 1 << 20).unwrap();
        assert_eq!(r.provider, Some(Provider::ANTHROPIC));
        assert_eq!(r.model.as_deref(), Some("claude-3-5-haiku"));
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
    fn deeply_nested_json_is_a_400_not_a_stack_overflow() {
        let deep = format!("{{\"message\":\"a\",\"tools\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_native(deep.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "invalid_json"));
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
                        let anthropic = crate::providers::upstream_request(Provider::ANTHROPIC, "https://a", "k", &up, r.stream);
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
}
