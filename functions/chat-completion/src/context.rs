//! What is sent upstream and stored: the context messages (system prompt, history or the
//! client's own messages, the new user text), the OpenAI-format body before provider
//! translation, and a new conversation's title.

use crate::request::ChatRequest;
use serde_json::{json, Value};

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
    /// `user`, `assistant` or `tool`.
    pub role: String,
    /// Text.
    pub content: String,
    /// Assistant tool calls, OpenAI-shaped.
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// The stored history as OpenAI messages. A window that starts inside a tool exchange (tool
/// results whose assistant call fell outside it) starts after it: providers refuse a tool
/// result with no call before it.
fn history_messages(history: &[StoredMessage]) -> impl Iterator<Item = Value> + '_ {
    history.iter().skip_while(|m| m.role == "tool").map(|m| {
        let mut v = json!({"role": m.role, "content": m.content});
        if let Some(tc) = m.tool_calls.as_ref().filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
            v["tool_calls"] = tc.clone();
        }
        if let Some(id) = &m.tool_call_id {
            v["tool_call_id"] = json!(id);
        }
        v
    })
}

/// The OpenAI-format messages sent upstream: the system prompt, then either the client's own
/// context or the stored history (oldest first) followed by the new user text (or, for the
/// Responses API, by the client's new turns).
pub fn context_messages(req: &ChatRequest, system_prompt: Option<&str>, history: &[StoredMessage]) -> Vec<Value> {
    let mut out = Vec::new();
    if let (true, Some(list)) = (req.history_then_messages, &req.client_messages) {
        let has_system = list.iter().any(|m| m["role"] == "system" || m["role"] == "developer");
        if let Some(sp) = system_prompt.filter(|_| !has_system) {
            out.push(json!({"role": "system", "content": sp}));
        }
        out.extend(history_messages(history));
        out.extend(list.iter().cloned());
        return out;
    }
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
    out.extend(history_messages(history));
    out.push(json!({"role": "user", "content": req.user_text}));
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_native;

    #[test]
    fn context_is_system_history_then_new_message() {
        let r = parse_native(br#"{"message":"third"}"#, 1 << 20).unwrap();
        let history = vec![
            StoredMessage { role: "user".into(), content: "first".into(), tool_calls: None, tool_call_id: None },
            StoredMessage {
                role: "assistant".into(),
                content: "second".into(),
                tool_calls: Some(json!([])),
                tool_call_id: None,
            },
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
    fn responses_turns_follow_the_history_and_an_orphaned_tool_result_is_dropped() {
        let r = crate::responses::parse(
            br#"{"model":"m","input":[{"type":"function_call_output","call_id":"c2","output":"42"}]}"#,
            1 << 20,
        )
        .unwrap()
        .chat;
        let stored = |role: &str, content: &str, calls: Option<Value>, id: Option<&str>| StoredMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: calls,
            tool_call_id: id.map(str::to_owned),
        };
        let call = json!([{"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
        let history = vec![
            stored("tool", "orphan", None, Some("c1")),
            stored("user", "q", None, None),
            stored("assistant", "", Some(call.clone()), None),
        ];
        let msgs = context_messages(&r, Some("sys"), &history);
        assert_eq!(
            Value::Array(msgs),
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": call},
                {"role": "tool", "tool_call_id": "c2", "content": "42"},
            ])
        );
    }

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(title_from("\n  Hello there\nsecond"), "Hello there");
        assert_eq!(title_from(&"é".repeat(100)).chars().count(), 81);
        assert_eq!(title_from("   "), "New conversation");
    }
}
