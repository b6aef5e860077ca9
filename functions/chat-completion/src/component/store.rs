//! What the chat path writes: the conversation, the user message and a pending assistant row
//! before the provider is called (one transaction, as the caller under RLS), then the assistant
//! message and the `api_usage` rows after (one transaction; usage as `service_role`).

use crate::context::{title_from, StoredMessage};
use crate::providers::{Provider, Usage};
use crate::request::ChatRequest;
use serde_json::{json, Value};
use shared::auth::Principal;
use shared::spin::RlsTransaction;
use shared::ApiError;
use spin_sdk::pg4::ParameterValue;

/// The rows an exchange lives in.
pub struct Persisted {
    /// Conversation (created when the request named none).
    pub conversation_id: String,
    /// The stored user message.
    pub user_message_id: String,
    /// The assistant row, `pending` until the call ends.
    pub assistant_message_id: String,
}

/// One provider call for `api_usage`.
pub struct Attempt {
    /// Provider name.
    pub provider: &'static str,
    /// Model asked for or reported.
    pub model: String,
    /// Tokens.
    pub usage: Usage,
    /// USD.
    pub cost_usd: f64,
    /// Duration of the call.
    pub latency_ms: i64,
    /// `complete`, `incomplete`, `error`, `http_429`, `timeout`, ...
    pub status: String,
}

/// The assistant message as it ended.
pub struct Assistant<'a> {
    /// Text (partial when the call was cut).
    pub content: &'a str,
    /// `complete`, `incomplete` or `error`.
    pub status: &'a str,
    /// Provider name.
    pub provider: &'a str,
    /// Model.
    pub model: &'a str,
    /// Tokens.
    pub usage: Usage,
    /// USD.
    pub cost_usd: f64,
    /// From the request's start to the end of the answer.
    pub latency_ms: i64,
    /// OpenAI-shaped tool calls.
    pub tool_calls: &'a [Value],
    /// Error, time to first token, estimation flags.
    pub metadata: Value,
}

fn uuid(s: &str) -> ParameterValue {
    ParameterValue::Uuid(s.to_owned())
}

fn opt_text(s: Option<&str>) -> ParameterValue {
    s.map(|s| ParameterValue::Str(s.to_owned())).unwrap_or(ParameterValue::DbNull)
}

fn field(v: &Value, key: &str) -> Result<String, ApiError> {
    v[key].as_str().map(str::to_owned).ok_or_else(|| ApiError::internal(format!("database returned no {key}")))
}

const HISTORY: &str = "coalesce((select json_agg(json_build_object('role', h.role, 'content', h.content, \
     'tool_calls', h.tool_calls, 'tool_call_id', h.tool_call_id) order by h.created_at, h.id) \
     from (select m.role, m.content, m.tool_calls, m.metadata->>'tool_call_id' as tool_call_id, m.created_at, m.id \
           from public.messages m \
           where m.conversation_id = c.id and m.role in ('user', 'assistant', 'tool') \
             and m.status in ('complete', 'incomplete') and (m.content <> '' or m.tool_calls is not null) \
           order by m.created_at desc, m.id desc limit $2) h), '[]'::json)";

/// The first transaction of an exchange, open between reading the context and storing the
/// messages (the provider call is started in between, so the commit overlaps it).
pub struct OpenExchange {
    tx: RlsTransaction,
    conversation_id: String,
}

/// Opens or creates the conversation and reads its system prompt and last `context_len`
/// messages, in a transaction left open for [`OpenExchange::store_messages`].
pub fn open_exchange(
    principal: &Principal,
    request: &ChatRequest,
    provider: Provider,
    model: &str,
    context_len: usize,
) -> Result<(OpenExchange, Option<String>, Vec<StoredMessage>), ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    let conversation = match &request.conversation_id {
        // Under RLS another user's conversation is simply absent: the same 404 as a missing one.
        Some(id) => tx
            .query_json(
                // A scalar subquery: one row always, NULL for a conversation that is not there.
                &format!(
                    "select (select json_build_object('id', c.id, 'system_prompt', c.system_prompt, 'history', {HISTORY})::text \
                     from public.conversations c where c.id = $1)"
                ),
                &[uuid(id), ParameterValue::Int64(context_len as i64)],
            )?
            .ok_or_else(|| ApiError::not_found("conversation"))?,
        // The conversation of a previous response (an assistant message the caller can see).
        None if request.after_message.is_some() => tx
            .query_json(
                &format!(
                    "select (select json_build_object('id', c.id, 'system_prompt', c.system_prompt, 'history', {HISTORY})::text \
                     from public.conversations c where c.id = \
                       (select m.conversation_id from public.messages m where m.id = $1 and m.role = 'assistant'))"
                ),
                &[uuid(request.after_message.as_deref().unwrap_or_default()), ParameterValue::Int64(context_len as i64)],
            )?
            .ok_or_else(|| ApiError::not_found("response"))?,
        None => tx
            .query_json(
                "insert into public.conversations (user_id, title, provider, model, temperature, max_tokens, system_prompt) \
                 values (auth.uid(), $1, $2, $3, $4, $5, $6) \
                 returning json_build_object('id', id, 'system_prompt', system_prompt, 'history', '[]'::json)::text",
                &[
                    ParameterValue::Str(title_from(&request.user_text)),
                    ParameterValue::Str(provider.name().to_owned()),
                    ParameterValue::Str(model.to_owned()),
                    request.temperature.map(ParameterValue::Floating64).unwrap_or(ParameterValue::DbNull),
                    request.max_tokens.map(|n| ParameterValue::Int32(n.min(i32::MAX as u64) as i32)).unwrap_or(ParameterValue::DbNull),
                    opt_text(request.system_prompt.as_deref()),
                ],
            )?
            .ok_or_else(|| ApiError::internal("conversation insert returned nothing"))?,
    };
    let conversation: Value = serde_json::from_str(&conversation)
        .map_err(|e| ApiError::internal(format!("database returned bad JSON: {e}")))?;
    let conversation_id = field(&conversation, "id")?;
    let system_prompt =
        request.system_prompt.clone().or_else(|| conversation["system_prompt"].as_str().map(str::to_owned));
    let history = conversation["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| StoredMessage {
            role: m["role"].as_str().unwrap_or("user").to_owned(),
            content: m["content"].as_str().unwrap_or_default().to_owned(),
            tool_calls: Some(m["tool_calls"].clone()).filter(|t| !t.is_null()),
            tool_call_id: m["tool_call_id"].as_str().map(str::to_owned),
        })
        .collect();
    Ok((OpenExchange { tx, conversation_id }, system_prompt, history))
}

impl OpenExchange {
    /// Reserves budget inside this transaction (as `service_role`, which may call the budget
    /// functions; back to the caller's role after), on the connection already held.
    pub fn reserve_budget(
        &mut self,
        user_id: &str,
        caps: shared::budget::Caps,
        tokens: u64,
        usd: f64,
    ) -> Result<shared::budget::Reserved, ApiError> {
        let tx = &mut self.tx;
        tx.become_service_role()?;
        let reserved =
            shared::budget::reserve_with(&mut |sql, params| tx.query(sql, params), user_id, caps, tokens, usd)?;
        tx.query("select set_config('role', 'authenticated', true)", &[])?;
        Ok(reserved)
    }

    /// Stores the turn (the user message, or the Responses API's new turns) and a pending
    /// assistant row, and commits: once this returns the user's message is durable.
    pub fn store_messages(self, request: &ChatRequest, provider: Provider, model: &str) -> Result<Persisted, ApiError> {
        let conversation_id = self.conversation_id;
        let mut tx = self.tx;
        let rows = turn_rows(request);
        // One clock reading, each row a microsecond after the one before and the assistant row
        // last: rows of one transaction would all tie under now().
        let ids = tx
        .query_json(
            "with t0 as (select clock_timestamp() as ts), \
                  r as (select x.role, x.content, x.tool_calls, x.metadata, e.n \
                        from jsonb_array_elements($2) with ordinality as e(row, n), \
                             jsonb_to_record(e.row) as x(role text, content text, tool_calls jsonb, metadata jsonb)), \
                  u as (insert into public.messages (conversation_id, user_id, role, content, tool_calls, metadata, created_at) \
                        select $1, auth.uid(), r.role, r.content, r.tool_calls, r.metadata, t0.ts + r.n * interval '1 microsecond' \
                        from r, t0 returning id, created_at), \
                  a as (insert into public.messages (conversation_id, user_id, role, content, status, provider, model, created_at) \
                        select $1, auth.uid(), 'assistant', '', 'pending', $3, $4, \
                          t0.ts + ((select count(*) from r) + 1) * interval '1 microsecond' from t0 returning id), \
                  t as (update public.conversations set updated_at = now() where id = $1 returning id) \
             select json_build_object('user_message_id', (select id from u order by created_at desc limit 1), \
                                      'assistant_message_id', (select id from a))::text",
            &[
                uuid(&conversation_id),
                ParameterValue::Jsonb(storable_json(Value::Array(rows)).to_string().into_bytes()),
                ParameterValue::Str(provider.name().to_owned()),
                ParameterValue::Str(model.to_owned()),
            ],
        )?
        .ok_or_else(|| ApiError::internal("message insert returned nothing"))?;
        let ids: Value =
            serde_json::from_str(&ids).map_err(|e| ApiError::internal(format!("database returned bad JSON: {e}")))?;
        let persisted = Persisted {
            conversation_id,
            user_message_id: field(&ids, "user_message_id")?,
            assistant_message_id: field(&ids, "assistant_message_id")?,
        };
        tx.commit()?;
        Ok(persisted)
    }
}

/// The rows of a turn as `store_messages` inserts them: role, text, tool calls, and for a
/// tool result the call it answers (in `metadata.tool_call_id`, which the history reads back).
fn turn_rows(request: &ChatRequest) -> Vec<Value> {
    let Some(turn) = &request.turn else {
        return vec![json!({"role": "user", "content": request.user_text, "tool_calls": null, "metadata": null})];
    };
    turn.iter()
        .map(|m| {
            let calls = m["tool_calls"].as_array().filter(|c| !c.is_empty()).map(|c| Value::Array(c.clone()));
            let metadata = m["tool_call_id"].as_str().map(|id| json!({"tool_call_id": id}));
            json!({
                "role": m["role"],
                "content": crate::providers::text_of(&m["content"]),
                "tool_calls": calls,
                "metadata": metadata,
            })
        })
        .collect()
}

/// A USD amount as the `numeric(14, 8)` columns take it (a decimal, typed as Spin's driver
/// requires for `numeric` parameters).
fn cost_decimal(usd: f64) -> ParameterValue {
    ParameterValue::Decimal(format!("{:.8}", if usd.is_finite() { usd.max(0.0) } else { 0.0 }))
}

/// Text as Postgres stores it: `text` and `jsonb` refuse NUL, which a provider may well send.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// `v` with NUL taken out of every string (jsonb refuses `\u0000`).
fn storable_json(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) if s.contains('\0') => *s = storable(s),
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Writes the assistant message's final state and the usage rows (in attempt order) in one
/// transaction. The usage rows and the budget settlement are written even when the message
/// update is refused (a savepoint keeps them apart): what was spent is always counted. Text
/// Postgres cannot hold (NUL) is replaced, never the reason a row stays `pending`.
pub fn finish_exchange(
    principal: &Principal,
    user_id: &str,
    budget: Option<(&mut shared::budget::Hold, u64, f64)>,
    persisted: Option<&Persisted>,
    assistant: &Assistant<'_>,
    attempts: &[Attempt],
) -> Result<(), ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    if let Some(p) = persisted {
        let tool_calls = if assistant.tool_calls.is_empty() {
            ParameterValue::DbNull
        } else {
            ParameterValue::Jsonb(storable_json(Value::Array(assistant.tool_calls.to_vec())).to_string().into_bytes())
        };
        tx.execute("savepoint assistant_row", &[])?;
        let updated = tx.execute(
            "update public.messages set content = $2, status = $3, provider = $4, model = $5, prompt_tokens = $6, \
             completion_tokens = $7, cost_usd = $8, latency_ms = $9, tool_calls = $10, \
             metadata = $11 where id = $1",
            &[
                uuid(&p.assistant_message_id),
                ParameterValue::Str(storable(assistant.content)),
                ParameterValue::Str(assistant.status.to_owned()),
                ParameterValue::Str(storable(assistant.provider)),
                ParameterValue::Str(storable(assistant.model)),
                ParameterValue::Int32(assistant.usage.prompt_tokens.min(i32::MAX as u64) as i32),
                ParameterValue::Int32(assistant.usage.completion_tokens.min(i32::MAX as u64) as i32),
                cost_decimal(assistant.cost_usd),
                ParameterValue::Int32(assistant.latency_ms.clamp(0, i32::MAX as i64) as i32),
                tool_calls,
                ParameterValue::Jsonb(storable_json(assistant.metadata.clone()).to_string().into_bytes()),
            ],
        );
        match updated {
            Ok(_) => {
                tx.execute("release savepoint assistant_row", &[])?;
            }
            Err(e) => {
                // The reply itself could not be stored: the row still ends, with its status and
                // why, and the usage below is written regardless.
                eprintln!(
                    "chat-completion: storing the assistant message failed: {:?}",
                    e.log.as_deref().unwrap_or(&e.message)
                );
                tx.execute("rollback to savepoint assistant_row", &[])?;
                tx.execute(
                    "update public.messages set status = $2, metadata = $3 where id = $1",
                    &[
                        uuid(&p.assistant_message_id),
                        ParameterValue::Str(
                            if assistant.status == "complete" { "incomplete" } else { assistant.status }.to_owned(),
                        ),
                        ParameterValue::Jsonb(br#"{"error":"the reply could not be stored"}"#.to_vec()),
                    ],
                )?;
            }
        }
    }
    let settle = budget.as_ref().map(|(hold, tokens, usd)| hold.settle_statement(*tokens, *usd));
    if !attempts.is_empty() || settle.is_some() {
        let rows: Vec<Value> = attempts
            .iter()
            .map(|a| {
                json!({
                    "provider": a.provider, "model": storable(&a.model),
                    "prompt_tokens": a.usage.prompt_tokens.min(i32::MAX as u64), "completion_tokens": a.usage.completion_tokens.min(i32::MAX as u64),
                    "cached_tokens": a.usage.cached_tokens.min(i32::MAX as u64), "cost_usd": format!("{:.8}", a.cost_usd.max(0.0)),
                    "cache_write_tokens": a.usage.cache_write_tokens.min(i32::MAX as u64),
                    "reasoning_tokens": a.usage.reasoning_tokens.min(i32::MAX as u64),
                    "latency_ms": a.latency_ms.clamp(0, i32::MAX as i64), "status": a.status,
                })
            })
            .collect();
        tx.become_service_role()?;
        tx.execute(
            "insert into public.api_usage (user_id, conversation_id, message_id, provider, model, prompt_tokens, \
               completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd, latency_ms, status, created_at) \
             select $1, $2, $3, r.provider, r.model, r.prompt_tokens, r.completion_tokens, \
               r.cached_tokens, r.cache_write_tokens, r.reasoning_tokens, r.cost_usd, r.latency_ms, r.status, \
               now() + (n - 1) * interval '1 microsecond' \
             from jsonb_array_elements($4) with ordinality as e(row, n), \
               jsonb_to_record(e.row) as r(provider text, model text, prompt_tokens int, \
               completion_tokens int, cached_tokens int, cache_write_tokens int, reasoning_tokens int, \
               cost_usd numeric, latency_ms int, status text)",
            &[
                uuid(user_id),
                persisted.map(|p| uuid(&p.conversation_id)).unwrap_or(ParameterValue::DbNull),
                persisted.map(|p| uuid(&p.assistant_message_id)).unwrap_or(ParameterValue::DbNull),
                ParameterValue::Jsonb(Value::Array(rows).to_string().into_bytes()),
            ],
        )?;
        // The budget settles in the same transaction as the usage rows it counts.
        if let Some((sql, params)) = &settle {
            tx.execute(sql, params)?;
        }
    }
    tx.commit()?;
    if let Some((hold, _, _)) = budget {
        hold.settled();
    }
    Ok(())
}
