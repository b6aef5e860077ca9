//! `/functions/v1/conversations/...`: list, get, create, rename, archive and delete conversations,
//! and list their messages. Every statement runs as the caller under RLS, so a conversation of
//! another user is simply not there (404, no existence leak).

use crate::fields::{CreateConversation, UpdateConversation};
use shared::pagination::parse_limit;
use shared::ratelimit::Subject;
use shared::spin::{
    cursor_params, page, read_body, require_user, serve, Incoming, Reply, RlsTransaction, MAX_JSON_BODY,
};
use shared::ApiError;
use shared::ErrorCode;
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::pg4::ParameterValue;

const CONVERSATION_COLUMNS: &str = "id, title, provider, model, temperature, max_tokens, system_prompt, \
     archived_at is not null as archived, archived_at, created_at, updated_at";

const MESSAGE_COLUMNS: &str = "id, conversation_id, role, content, status, provider, model, prompt_tokens, \
     completion_tokens, cost_usd, latency_ms, tool_calls, metadata, created_at";

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    serve(req, out, route).await
}

async fn route(head: &Incoming, req: IncomingRequest) -> Result<Reply, ApiError> {
    let segments = head.segments();
    let (user_id, principal) = require_user(head)?;
    let verdict = shared::limiter::enforce("api", &Subject::user(&user_id), 1)?;
    // The body only now, for a known caller, and at most what a JSON body may be.
    let mut incoming = Incoming { body: Vec::new(), ..head.clone() };
    if matches!(head.method, Method::Post | Method::Patch) {
        incoming.body = read_body(req, head.content_length, MAX_JSON_BODY).await?;
    }
    let incoming = &incoming;
    let mut tx = RlsTransaction::begin(&principal)?;
    let response = match (&incoming.method, segments.as_slice()) {
        (Method::Get, []) => list_conversations(&mut tx, incoming)?,
        (Method::Post, []) => create_conversation(&mut tx, incoming)?,
        (Method::Get, [id]) => get_conversation(&mut tx, id)?,
        (Method::Patch, [id]) => update_conversation(&mut tx, id, incoming)?,
        (Method::Delete, [id]) => delete_conversation(&mut tx, id)?,
        (Method::Get, [id, "messages"]) => list_messages(&mut tx, id, incoming)?,
        (_, []) => return Err(ApiError::method_not_allowed("GET, POST, OPTIONS")),
        (_, [_]) => return Err(ApiError::method_not_allowed("GET, PATCH, DELETE, OPTIONS")),
        (_, [_, "messages"]) => return Err(ApiError::method_not_allowed("GET, OPTIONS")),
        _ => return Err(ApiError::not_found("route")),
    };
    tx.commit()?;
    let mut response = response;
    response.headers.extend(verdict.map(|v| v.headers()).unwrap_or_default());
    Ok(response)
}

/// Path ids that are not UUIDs cannot name anything: the same 404 as a missing row.
fn conversation_id(raw: &str) -> Result<ParameterValue, ApiError> {
    if shared::is_uuid(raw) {
        Ok(ParameterValue::Uuid(raw.to_ascii_lowercase()))
    } else {
        Err(ApiError::not_found("conversation"))
    }
}

fn text(v: Option<String>) -> ParameterValue {
    v.map(ParameterValue::Str).unwrap_or(ParameterValue::DbNull)
}

/// A page of the caller's conversations, newest first: `{"data": [...], "next_cursor", "has_more"}`.
fn list_conversations(tx: &mut RlsTransaction, incoming: &Incoming) -> Result<Reply, ApiError> {
    let limit = parse_limit(incoming.query_param("limit").as_deref())?;
    let archived = match incoming.query_param("archived").as_deref() {
        None | Some("false") => "false",
        Some("true") => "true",
        Some("all") => "all",
        Some(_) => {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "archived must be true, false or all")
                .with_detail("field", "archived"))
        }
    };
    let (cursor_ts, cursor_id) = cursor_params(incoming)?;
    let sql = format!(
        "select {} from (
           select {CONVERSATION_COLUMNS} from public.conversations
           where user_id = (select auth.uid())
             and ($2::int8 is null or (created_at, id) < (timestamptz 'epoch' + $2::int8 * interval '1 microsecond', $3::uuid))
             and case $4::text when 'all' then true when 'true' then archived_at is not null else archived_at is null end
           order by created_at desc, id desc
           limit $1) p",
        shared::spin::PAGE_ROWS_DESC
    );
    let rows = tx.query_json(
        &sql,
        &[ParameterValue::Int64(i64::from(limit) + 1), cursor_ts, cursor_id, ParameterValue::Str(archived.into())],
    )?;
    Ok(Reply::json_text(200, page(rows.as_deref(), limit)?))
}

fn create_conversation(tx: &mut RlsTransaction, incoming: &Incoming) -> Result<Reply, ApiError> {
    let body: CreateConversation =
        if incoming.body.is_empty() { CreateConversation::default() } else { incoming.json()? };
    let c = body.validate()?;
    let sql = format!(
        "with c as (
           insert into public.conversations (user_id, title, provider, model, temperature, max_tokens, system_prompt)
           values ((select auth.uid()), $1, $2, $3, $4, $5, $6) returning *)
         select row_to_json(x)::text from (select {CONVERSATION_COLUMNS} from c) x"
    );
    let json = tx
        .query_json(
            &sql,
            &[
                ParameterValue::Str(c.title),
                text(c.provider),
                text(c.model),
                c.temperature.map(ParameterValue::Floating64).unwrap_or(ParameterValue::DbNull),
                c.max_tokens.map(ParameterValue::Int32).unwrap_or(ParameterValue::DbNull),
                text(c.system_prompt),
            ],
        )?
        .ok_or_else(|| ApiError::internal("insert returned no row"))?;
    let id = serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Reply::json_text(201, json).with_header("location", format!("/functions/v1/conversations/{id}")))
}

fn get_conversation(tx: &mut RlsTransaction, id: &str) -> Result<Reply, ApiError> {
    // One row always, NULL when there is nothing to see (see `RlsTransaction::query_json`).
    let sql = format!(
        "select (select row_to_json(x)::text from (select {CONVERSATION_COLUMNS} from public.conversations where id = $1) x)"
    );
    let json = tx.query_json(&sql, &[conversation_id(id)?])?.ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(Reply::json_text(200, json))
}

fn update_conversation(tx: &mut RlsTransaction, id: &str, incoming: &Incoming) -> Result<Reply, ApiError> {
    let id = conversation_id(id)?;
    let (title, archived) = incoming.json::<UpdateConversation>()?.validate()?;
    let sql = format!(
        "with c as (
           update public.conversations set
             title = coalesce($2, title),
             archived_at = case when $3::bool is null then archived_at when $3::bool then coalesce(archived_at, now()) else null end,
             updated_at = now()
           where id = $1 returning *)
         select (select row_to_json(x)::text from (select {CONVERSATION_COLUMNS} from c) x)"
    );
    let archived = archived.map(ParameterValue::Boolean).unwrap_or(ParameterValue::DbNull);
    let json = tx.query_json(&sql, &[id, text(title), archived])?.ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(Reply::json_text(200, json))
}

fn delete_conversation(tx: &mut RlsTransaction, id: &str) -> Result<Reply, ApiError> {
    // Messages go with it: `messages.conversation_id ... on delete cascade`.
    let deleted = tx.execute("delete from public.conversations where id = $1", &[conversation_id(id)?])?;
    if deleted == 0 {
        return Err(ApiError::not_found("conversation"));
    }
    Ok(Reply::empty(204))
}

fn list_messages(tx: &mut RlsTransaction, id: &str, incoming: &Incoming) -> Result<Reply, ApiError> {
    let id = conversation_id(id)?;
    let limit = parse_limit(incoming.query_param("limit").as_deref())?;
    let descending = match incoming.query_param("order").as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "order must be asc or desc")
                .with_detail("field", "order"))
        }
    };
    let (cursor_ts, cursor_id) = cursor_params(incoming)?;
    if !tx.exists("select count(*) from public.conversations where id = $1", std::slice::from_ref(&id))? {
        return Err(ApiError::not_found("conversation"));
    }
    let (cmp, dir) = if descending { ("<", "desc") } else { (">", "asc") };
    let order = if descending { shared::spin::PAGE_ROWS_DESC } else { shared::spin::PAGE_ROWS_ASC };
    let sql = format!(
        "select {order} from (
           select {MESSAGE_COLUMNS} from public.messages
           where conversation_id = $1
             and ($3::int8 is null or (created_at, id) {cmp} (timestamptz 'epoch' + $3::int8 * interval '1 microsecond', $4::uuid))
           order by created_at {dir}, id {dir}
           limit $2) p"
    );
    let rows = tx.query_json(&sql, &[id, ParameterValue::Int64(i64::from(limit) + 1), cursor_ts, cursor_id])?;
    Ok(Reply::json_text(200, page(rows.as_deref(), limit)?))
}
