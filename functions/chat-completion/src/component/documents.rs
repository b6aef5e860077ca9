//! Documents' I/O: embedding a file's chunks (`POST /functions/v1/documents/{id}/process`, or
//! inline at a chat's first use of the file), retrieval into a chat's context, and
//! `GET /functions/v1/search`. Chunking happened at upload (file-upload has the bytes); the pure
//! parts (batches, vector literals, context, citations) are `crate::documents`.
//!
//! Spin has no background jobs and a component instance lives for one request, so embedding runs
//! inside a request: the processing route's, or the first chat that names a pending file. Each
//! batch is its own short transaction, so a cut request leaves finished batches stored and the
//! next run embeds only what is left.

use super::admit;
use super::call::Call;
use super::embed::{self, Embeddings};
use crate::documents::{self, Hit, Scope, SearchScope, BATCH_INPUTS, VECTOR_DIMENSIONS};
use crate::embeddings::{EmbeddingsRequest, Encoding, Input};
use crate::plan::ProviderConfig;
use crate::providers::Provider;
use crate::settings::Settings;
use serde_json::{json, Value};
use shared::auth::Principal;
use shared::spin::{require_user, Incoming, Responder, RlsTransaction};
use shared::{ApiError, ErrorCode};
use spin_sdk::pg4::{DbValue, ParameterValue};

/// Longest `processing_error` kept (the column's check allows 2,000 characters).
const MAX_ERROR_CHARS: usize = 1_000;
/// Most pending files a `use_documents` chat embeds before it answers.
const MAX_INLINE_FILES: usize = 20;

/// `POST /functions/v1/documents/{id}/process`: embeds what of the file is not embedded yet
/// (a pending file, a failed one again, or one embedded by another model) and answers its row.
pub(super) async fn process_route(
    incoming: &Incoming,
    raw_id: &str,
    settings: &Settings,
    byo_key: Option<&str>,
    client_ip: Option<&str>,
    responder: &mut Responder,
) -> Result<(u16, Value), ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    admit(&user_id, &principal, client_ip, byo_key, responder)?;
    let file_id = file_id(raw_id)?;
    let schema = vector_schema(&principal)?;
    let row = process_file(&user_id, &principal, settings, byo_key, &schema, &file_id).await?;
    Ok((200, row))
}

/// `GET /functions/v1/search?q=&scope=&hybrid=&limit=&conversation_id=`: the caller's document
/// chunks and messages nearest to `q` (at least `rag_min_similarity`; hybrid also takes
/// full-text matches), best first.
pub(super) async fn search_route(
    incoming: &Incoming,
    settings: &Settings,
    byo_key: Option<&str>,
    client_ip: Option<&str>,
    responder: &mut Responder,
) -> Result<(u16, Value), ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    let query = documents::search_query(|name| incoming.query_param(name))?;
    admit(&user_id, &principal, client_ip, byo_key, responder)?;
    let schema = vector_schema(&principal)?;
    let vector = embed_query(&user_id, &principal, settings, byo_key, &query.q).await?;
    let model = &settings.retrieval.embedding_model;
    let mut hits: Vec<Value> = Vec::new();
    let mut tx = RlsTransaction::begin(&principal)?;
    tune_vector_search(&mut tx, settings)?;
    if query.scope != SearchScope::Messages {
        let mut params = vec![
            ParameterValue::Str(vector.clone()),
            ParameterValue::Uuid(user_id.clone()),
            ParameterValue::Int32(query.limit as i32),
            ParameterValue::Str(model.clone()),
        ];
        let threshold = settings.retrieval.min_similarity;
        let (function, score) = if query.hybrid {
            params.push(ParameterValue::Str(query.q.clone()));
            (format!("search_hybrid_chunks($1::text::{schema}.vector, $5, $2, $3, null, $4)"), "s.score")
        } else {
            params.push(ParameterValue::Floating64(threshold));
            (format!("search_similar_chunks($1::text::{schema}.vector, $2, $5, $3, null, $4)"), "s.similarity")
        };
        let sql = format!(
            "select coalesce(json_agg(row_to_json(h) order by h.score desc), '[]')::text from (
               select 'document' as kind, s.file_id, f.original_name as file_name, s.chunk_index, s.page_number,
                      s.heading, s.content, s.similarity, {score} as score
                 from public.{function} s
                 join public.file_uploads f on f.id = s.file_id and f.status = 'stored') h"
        );
        let rows = tx.query_json(&sql, &params)?;
        hits.extend(json_rows(rows.as_deref())?);
    }
    if query.scope != SearchScope::Documents {
        let sql = format!(
            "select coalesce(json_agg(row_to_json(h) order by h.score desc), '[]')::text from (
               select 'message' as kind, s.id as message_id, s.conversation_id, c.title as conversation_title,
                      s.role, s.content, s.created_at, s.similarity, s.similarity as score
                 from public.search_similar_messages($1::text::{schema}.vector, $2, $3::text::uuid, $6, $4, $5) s
                 join public.conversations c on c.id = s.conversation_id) h"
        );
        let rows = tx.query_json(
            &sql,
            &[
                ParameterValue::Str(vector),
                ParameterValue::Uuid(user_id.clone()),
                query.conversation_id.clone().map(ParameterValue::Str).unwrap_or(ParameterValue::DbNull),
                ParameterValue::Int32(query.limit as i32),
                ParameterValue::Str(model.clone()),
                ParameterValue::Floating64(settings.retrieval.min_similarity),
            ],
        )?;
        hits.extend(json_rows(rows.as_deref())?);
    }
    tx.commit()?;
    // Both kinds merged by score (hybrid document scores are fused ranks, not similarities: with
    // scope=all they are ordered by similarity instead).
    if query.scope == SearchScope::All {
        hits.sort_by(|a, b| {
            let s = |v: &Value| v["similarity"].as_f64().unwrap_or(f64::MIN);
            s(b).total_cmp(&s(a))
        });
    }
    hits.truncate(query.limit);
    for hit in &mut hits {
        if let Some(content) = hit.get("content").and_then(Value::as_str) {
            hit["snippet"] = json!(documents::snippet(content, &query.q));
        }
    }
    Ok((200, json!({"object": "list", "query": query.q, "data": hits})))
}

/// What retrieval added to a chat: the context block and the citations.
pub(super) struct Retrieved {
    /// Text for the system message (`None` when nothing was similar enough).
    pub(super) block: Option<String>,
    /// One citation per chunk used, in context order.
    pub(super) sources: Value,
}

/// Retrieval for a chat whose body asked for documents: files still pending are embedded first,
/// then the user's message is embedded and the nearest chunks above the threshold are taken.
pub(super) async fn retrieve(
    user_id: &str,
    principal: &Principal,
    settings: &Settings,
    byo_key: Option<&str>,
    scope: &Scope,
    question: &str,
) -> Result<Retrieved, ApiError> {
    let schema = vector_schema(principal)?;
    let model = &settings.retrieval.embedding_model;
    // Which files still need embedding, and (for named files) that each is the caller's document.
    let files: Vec<Value> = {
        let mut tx = RlsTransaction::begin(principal)?;
        let (filter, ids) = match scope {
            Scope::Files(ids) => ("id = any ($1::text::uuid[])", ParameterValue::Str(format!("{{{}}}", ids.join(",")))),
            Scope::All => ("processing_status is not null and $1::text is null", ParameterValue::DbNull),
        };
        let rows = tx.query_json(
            &format!(
                "select coalesce(json_agg(json_build_object('id', id, 'name', original_name, 'status', processing_status,
                          'chunk_count', chunk_count, 'error', processing_error,
                          'stale', exists (select 1 from public.document_chunks c where c.file_id = f.id
                                             and c.embedding_model is distinct from $2))), '[]')::text
                   from (select * from public.file_uploads where {filter} and status = 'stored'
                          order by created_at desc limit 1000) f"
            ),
            &[ids, ParameterValue::Str(model.clone())],
        )?;
        tx.commit()?;
        json_rows(rows.as_deref())?
    };
    if let Scope::Files(ids) = scope {
        for id in ids {
            let Some(file) = files.iter().find(|f| f["id"].as_str() == Some(id.as_str())) else {
                return Err(ApiError::not_found("file").with_detail("file_id", id.as_str()));
            };
            if file["status"].is_null() {
                return Err(ApiError::bad_request(
                    ErrorCode::ValidationFailed,
                    format!("file {id} is not a document (text, Markdown, CSV, JSON or PDF)"),
                )
                .with_detail("field", "file_ids"));
            }
        }
    }
    let mut inline = 0;
    for file in &files {
        let (Some(id), Some(count)) = (file["id"].as_str(), file["chunk_count"].as_i64()) else { continue };
        let unreadable = file["status"] == "failed" && count == 0;
        if unreadable {
            if matches!(scope, Scope::Files(_)) {
                return Err(unreadable_error(id, file["error"].as_str()));
            }
            continue;
        }
        let needs_embedding = file["stale"] == true || file["status"] == "pending";
        if needs_embedding && inline < MAX_INLINE_FILES {
            inline += 1;
            let processed = process_file(user_id, principal, settings, byo_key, &schema, id).await;
            // A named file must be searchable; among all the user's files a failing one is left
            // `failed` (with the reason) and the others still answer.
            if let (Err(e), Scope::Files(_)) = (processed, scope) {
                return Err(e);
            }
        }
    }

    if question.trim().is_empty() {
        // Nothing to search with (a message of images only).
        return Ok(Retrieved { block: None, sources: json!([]) });
    }
    let vector = embed_query(user_id, principal, settings, byo_key, question).await?;
    let file_ids = match scope {
        Scope::Files(ids) => ParameterValue::Str(format!("{{{}}}", ids.join(","))),
        Scope::All => ParameterValue::DbNull,
    };
    let mut tx = RlsTransaction::begin(principal)?;
    tune_vector_search(&mut tx, settings)?;
    let rows = tx.query_json(
        &format!(
            "select coalesce(json_agg(row_to_json(h) order by h.similarity desc), '[]')::text from (
               select s.file_id, f.original_name as file_name, s.chunk_index, s.page_number, s.heading, s.content,
                      s.similarity
                 from public.search_similar_chunks($1::text::{schema}.vector, $2, $3, $4, $5::text::uuid[], $6) s
                 join public.file_uploads f on f.id = s.file_id and f.status = 'stored') h"
        ),
        &[
            ParameterValue::Str(vector),
            ParameterValue::Uuid(user_id.to_owned()),
            ParameterValue::Floating64(settings.retrieval.min_similarity),
            ParameterValue::Int32(settings.retrieval.top_k as i32),
            file_ids,
            ParameterValue::Str(model.clone()),
        ],
    )?;
    tx.commit()?;
    let hits: Vec<Hit> = json_rows(rows.as_deref())?.iter().filter_map(Hit::from_row).collect();
    let sources = Value::Array(hits.iter().map(Hit::citation).collect());
    let block = (!hits.is_empty()).then(|| documents::context_block(&hits));
    Ok(Retrieved { block, sources })
}

/// Embeds a stored exchange (the user's message and the answer) for search, after the client has
/// its answer. Best effort: a failure is logged and the messages stay unembedded (search skips
/// them); the call is an `api_usage` row like any other.
pub(super) async fn embed_exchange(call: &Call, settings: &Settings, byo_key: Option<&str>, user_text: &str) {
    let (Some(persisted), Some(reply)) = (&call.persisted, &call.reply_text) else { return };
    let Ok(schema) = vector_schema(&call.principal) else { return };
    let bounded = |t: &str| -> String { t.chars().take(documents::MAX_QUESTION_CHARS).collect() };
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for (id, text) in [(&persisted.user_message_id, user_text), (&persisted.assistant_message_id, reply.as_str())] {
        if !text.trim().is_empty() {
            ids.push(id.clone());
            texts.push(bounded(text));
        }
    }
    if texts.is_empty() {
        return;
    }
    let result = async {
        let done = embed_texts(&call.user_id, &call.principal, settings, byo_key, texts).await?;
        let mut rows = Vec::new();
        for (id, vector) in ids.iter().zip(&done.embedded.vectors) {
            let literal = documents::vector_literal(vector).map_err(|why| embedding_unusable(&done.model, &why))?;
            rows.push(json!({"id": id, "v": literal}));
        }
        let mut tx = RlsTransaction::begin(&call.principal)?;
        tx.become_service_role()?;
        tx.query(
            &format!(
                "with u as (update public.messages m set embedding = (x.v)::{schema}.vector, embedding_model = $2
                              from jsonb_to_recordset($1::text::jsonb) as x(id uuid, v text)
                             where m.id = x.id and m.user_id = $3 returning 1)
                 select count(*) from u"
            ),
            &[
                ParameterValue::Str(Value::Array(rows).to_string()),
                ParameterValue::Str(settings.retrieval.embedding_model.clone()),
                ParameterValue::Uuid(call.user_id.clone()),
            ],
        )?;
        tx.commit()
    }
    .await;
    if let Err(e) = result {
        eprintln!("chat-completion: the exchange was not embedded for search: {}", e.message);
    }
}

/// Embeds a file's chunks that lack an embedding of the configured model, batch by batch, and
/// moves the file to `completed`; on a failure the file is `failed` with the reason, and the
/// error is returned. Answers the file's row.
async fn process_file(
    user_id: &str,
    principal: &Principal,
    settings: &Settings,
    byo_key: Option<&str>,
    schema: &str,
    file_id: &str,
) -> Result<Value, ApiError> {
    let model = settings.retrieval.embedding_model.clone();
    let file = {
        let mut tx = RlsTransaction::begin(principal)?;
        let row = tx.query_json(
            "select (select row_to_json(f)::text from (select id, processing_status, chunk_count, processing_error
                       from public.file_uploads where id = $1 and status = 'stored') f)",
            &[ParameterValue::Uuid(file_id.to_owned())],
        )?;
        tx.commit()?;
        let row = row.ok_or_else(|| ApiError::not_found("file"))?;
        serde_json::from_str::<Value>(&row).map_err(|_| ApiError::internal("bad JSON from the database"))?
    };
    if file["processing_status"].is_null() {
        return Err(ApiError::bad_request(
            ErrorCode::ValidationFailed,
            "the file is not a document (text, Markdown, CSV, JSON or PDF)",
        ));
    }
    if file["processing_status"] == "failed" && file["chunk_count"].as_i64() == Some(0) {
        return Err(unreadable_error(file_id, file["processing_error"].as_str()));
    }
    set_status(principal, user_id, file_id, "processing", None)?;
    match embed_chunks(user_id, principal, settings, byo_key, schema, file_id, &model).await {
        Ok(()) => {
            set_status(principal, user_id, file_id, "completed", None)?;
        }
        Err(e) => {
            let reason: String = e.message.chars().take(MAX_ERROR_CHARS).collect();
            // The failure is recorded when the database still answers; the call's own error wins.
            let _ = set_status(principal, user_id, file_id, "failed", Some(&reason));
            return Err(e);
        }
    }
    file_row(principal, file_id)
}

async fn embed_chunks(
    user_id: &str,
    principal: &Principal,
    settings: &Settings,
    byo_key: Option<&str>,
    schema: &str,
    file_id: &str,
    model: &str,
) -> Result<(), ApiError> {
    // Each round embeds at least one chunk or fails, so the rounds are bounded by the chunks;
    // the guard is for a database that keeps answering the same rows.
    for _round in 0..=(documents::MAX_CHUNKS / BATCH_INPUTS + 1) {
        let pending: Vec<Value> = {
            let mut tx = RlsTransaction::begin(principal)?;
            let rows = tx.query_json(
                "select coalesce(json_agg(json_build_array(c.chunk_index, c.content, c.token_count)
                                          order by c.chunk_index), '[]')::text
                   from (select chunk_index, content, token_count from public.document_chunks
                          where file_id = $1 and (embedding is null or embedding_model is distinct from $2)
                          order by chunk_index limit $3) c",
                &[
                    ParameterValue::Uuid(file_id.to_owned()),
                    ParameterValue::Str(model.to_owned()),
                    ParameterValue::Int64(BATCH_INPUTS as i64),
                ],
            )?;
            tx.commit()?;
            json_rows(rows.as_deref())?
        };
        if pending.is_empty() {
            return Ok(());
        }
        let tokens: Vec<usize> = pending.iter().map(|c| c[2].as_u64().unwrap_or(0) as usize).collect();
        for range in documents::batches(&tokens) {
            let batch = &pending[range];
            let texts: Vec<String> = batch.iter().map(|c| c[1].as_str().unwrap_or_default().to_owned()).collect();
            let done = embed_texts(user_id, principal, settings, byo_key, texts).await?;
            let mut rows = Vec::with_capacity(batch.len());
            for (chunk, vector) in batch.iter().zip(&done.embedded.vectors) {
                let literal = documents::vector_literal(vector).map_err(|why| embedding_unusable(&done.model, &why))?;
                rows.push(json!({"i": chunk[0], "v": literal}));
            }
            let mut tx = RlsTransaction::begin(principal)?;
            tx.become_service_role()?;
            tx.query(
                &format!(
                    "with u as (update public.document_chunks c set embedding = (x.v)::{schema}.vector,
                                       embedding_model = $3
                                  from jsonb_to_recordset($2::text::jsonb) as x(i int, v text)
                                 where c.file_id = $1 and c.user_id = $4 and c.chunk_index = x.i returning 1)
                     select count(*) from u"
                ),
                &[
                    ParameterValue::Uuid(file_id.to_owned()),
                    ParameterValue::Str(Value::Array(rows).to_string()),
                    ParameterValue::Str(model.to_owned()),
                    ParameterValue::Uuid(user_id.to_owned()),
                ],
            )?;
            tx.commit()?;
        }
    }
    Err(ApiError::internal("embedding a document did not finish"))
}

/// Sets, for this transaction, how wide the HNSW search is (`rag_ef_search`) and that it keeps
/// going past rows the filters drop (another user's, another file's: pgvector 0.8's iterative
/// scan), so a filtered search still finds its `limit` nearest. A server that has never loaded
/// pgvector keeps them as placeholders, which it reads when it does.
fn tune_vector_search(tx: &mut RlsTransaction, settings: &Settings) -> Result<(), ApiError> {
    tx.query(
        "select set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
        &[ParameterValue::Str(settings.retrieval.ef_search.to_string())],
    )
    .map(|_| ())
}

/// Embeds one query, as a vector literal.
async fn embed_query(
    user_id: &str,
    principal: &Principal,
    settings: &Settings,
    byo_key: Option<&str>,
    text: &str,
) -> Result<String, ApiError> {
    let done = embed_texts(user_id, principal, settings, byo_key, vec![text.to_owned()]).await?;
    let vector = done.embedded.vectors.first().ok_or_else(|| embedding_unusable(&done.model, "no vector"))?;
    documents::vector_literal(vector).map_err(|why| embedding_unusable(&done.model, &why))
}

async fn embed_texts(
    user_id: &str,
    principal: &Principal,
    settings: &Settings,
    byo_key: Option<&str>,
    texts: Vec<String>,
) -> Result<Embeddings, ApiError> {
    let model = settings.retrieval.embedding_model.clone();
    // OpenAI's text-embedding-3 models shorten to the column's width; others are padded.
    let dimensions = model.starts_with("text-embedding-3").then_some(VECTOR_DIMENSIONS as u64);
    let request = EmbeddingsRequest {
        model,
        input: Input::Texts(texts),
        encoding_format: Encoding::Base64,
        dimensions,
        user: None,
        provider: settings.retrieval.embedding_provider.clone(),
    };
    // A dedicated embeddings server, when configured, is used with its own key.
    let endpoint = settings.retrieval.embedding_base_url.as_ref().map(|url| ProviderConfig {
        provider: Provider::COMPATIBLE,
        base_url: url.trim_end_matches('/').to_owned(),
        api_key: settings.retrieval.embedding_api_key.clone().unwrap_or_default(),
        default_model: String::new(),
    });
    let byo_key = if endpoint.is_some() { None } else { byo_key };
    embed::embed(user_id.to_owned(), principal.clone(), settings, byo_key, endpoint, request).await
}

fn embedding_unusable(model: &str, why: &str) -> ApiError {
    ApiError::new(
        502,
        ErrorCode::ProviderError,
        format!("the embedding model '{model}' answered an unusable vector: {why}"),
    )
}

fn unreadable_error(file_id: &str, reason: Option<&str>) -> ApiError {
    ApiError::new(
        422,
        ErrorCode::DocumentUnreadable,
        format!("the text of file {file_id} could not be extracted ({}); upload it again", reason.unwrap_or("unknown")),
    )
    .with_detail("file_id", file_id)
}

/// The schema of pgvector's types, or 503 when the database has no pgvector.
fn vector_schema(principal: &Principal) -> Result<String, ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    let rows = tx.query("select chatedge.vector_schema()", &[])?;
    tx.commit()?;
    match rows.rows.first().and_then(|r| r.first()) {
        // Quoted as an identifier; a schema name is the database's, checked all the same.
        Some(DbValue::Str(s)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Ok(format!("\"{s}\""))
        }
        _ => Err(ApiError::new(
            503,
            ErrorCode::FeatureUnavailable,
            "document search needs the pgvector extension, which this database does not have",
        )),
    }
}

fn set_status(
    principal: &Principal,
    user_id: &str,
    file_id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    tx.become_service_role()?;
    tx.query(
        "with u as (update public.file_uploads set processing_status = $3, processing_error = $4::text
                     where id = $1 and user_id = $2 returning 1)
         select count(*) from u",
        &[
            ParameterValue::Uuid(file_id.to_owned()),
            ParameterValue::Uuid(user_id.to_owned()),
            ParameterValue::Str(status.to_owned()),
            error.map(|e| ParameterValue::Str(e.to_owned())).unwrap_or(ParameterValue::DbNull),
        ],
    )?;
    tx.commit()
}

fn file_row(principal: &Principal, file_id: &str) -> Result<Value, ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    let row = tx.query_json(
        "select (select row_to_json(f)::text from (
            select id, original_name, mime_type, size_bytes, processing_status, chunk_count, processing_error,
                   (select count(*) from public.document_chunks c where c.file_id = u.id and c.embedding is not null)
                     as embedded_chunks
              from public.file_uploads u where id = $1) f)",
        &[ParameterValue::Uuid(file_id.to_owned())],
    )?;
    tx.commit()?;
    let row = row.ok_or_else(|| ApiError::not_found("file"))?;
    serde_json::from_str(&row).map_err(|_| ApiError::internal("bad JSON from the database"))
}

fn json_rows(text: Option<&str>) -> Result<Vec<Value>, ApiError> {
    match serde_json::from_str::<Value>(text.unwrap_or("[]")) {
        Ok(Value::Array(rows)) => Ok(rows),
        _ => Err(ApiError::internal("bad JSON from the database")),
    }
}

fn file_id(raw: &str) -> Result<String, ApiError> {
    if shared::is_uuid(raw) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::not_found("file"))
    }
}
