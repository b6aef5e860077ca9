//! `GET /v1/responses/{id}`: a stored response read back as the caller (RLS: another user's is
//! simply absent, the same 404 as a missing one).

use crate::responses;
use serde_json::Value;
use shared::spin::{require_user, Incoming, RlsTransaction};
use shared::ApiError;
use spin_sdk::pg4::ParameterValue;

pub(super) fn get_response(incoming: &Incoming, id: &str) -> Result<Value, ApiError> {
    let (_, principal) = require_user(incoming)?;
    let Some(message_id) = responses::message_id_of(id) else { return Err(ApiError::not_found("response")) };
    let mut tx = RlsTransaction::begin(&principal)?;
    let id_param = ParameterValue::Uuid(message_id.clone());
    // A scalar subquery: one row always, NULL for a response that is not there. The previous
    // response is the assistant message before it in the same conversation.
    let row = tx
        .query_json(
            "select (select json_build_object('status', m.status, 'content', m.content, 'model', m.model, \
               'created_at', extract(epoch from m.created_at)::bigint, 'prompt_tokens', m.prompt_tokens, \
               'completion_tokens', m.completion_tokens, 'tool_calls', m.tool_calls, 'metadata', m.metadata, \
               'previous_message_id', (select p.id from public.messages p where p.conversation_id = m.conversation_id \
                  and p.role = 'assistant' and (p.created_at, p.id) < (m.created_at, m.id) \
                  order by p.created_at desc, p.id desc limit 1))::text \
             from public.messages m where m.id = $1 and m.role = 'assistant')",
            &[id_param],
        )?
        .ok_or_else(|| ApiError::not_found("response"))?;
    tx.commit()?;
    let row: Value =
        serde_json::from_str(&row).map_err(|e| ApiError::internal(format!("database returned bad JSON: {e}")))?;
    Ok(responses::from_stored(&responses::response_id(&message_id), &row))
}
