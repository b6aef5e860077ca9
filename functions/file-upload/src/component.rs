//! `/functions/v1/file-upload`: `POST` (multipart/form-data with one or more files and an
//! optional `conversation_id`, or a raw body with `Content-Type` + `x-file-name`), `GET` (list,
//! cursor), `GET /:id` (metadata + presigned download URL), `DELETE /:id` (object + row).
//!
//! The body is read as it streams and refused the moment it passes the cap; each file's type is
//! decided by its bytes; objects go to S3-protocol storage under `<user>/<uuid>/<safe name>`;
//! rows are written through RLS only after the objects are stored, and the objects are deleted
//! again if the rows cannot be written.

use crate::documents;
use crate::multipart::{hex, read_multipart, validate, Received};
use crate::settings::Settings;
use crate::upload;
use serde_json::{json, Value};
use sha2::Digest;
use shared::outbound::{self, Timeouts};
use shared::pagination::parse_limit;
use shared::ratelimit::Subject;
use shared::spin::{cursor_params, require_user, variable, Incoming, Responder, RlsTransaction};
use shared::storage::StorageConfig;
use shared::ApiError;
use shared::ErrorCode;
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::pg4::{DbValue, ParameterValue};
use std::time::Duration;

/// Room for multipart boundaries and part headers on top of the file cap.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// How long a presigned URL used by the function itself stays valid.
const INTERNAL_URL_TTL: Duration = Duration::from_secs(300);

const COLUMNS: &str = "id, conversation_id, original_name, storage_key, mime_type, size_bytes, sha256, status, \
                       processing_status, chunk_count, processing_error, created_at";

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let header =
        |name: &str| req.headers().get(name).into_iter().next().map(|v| String::from_utf8_lossy(&v).into_owned());
    let incoming = Incoming::from_head(&req);
    let mut responder = Responder::new(out, incoming.origin.clone());
    responder.request_id = incoming.request_id.clone();
    if incoming.method == Method::Options {
        responder.send(204, &[], Vec::new()).await;
        return;
    }
    let upload_headers = UploadHeaders {
        content_type: header("content-type"),
        content_length: header("content-length").and_then(|v| v.trim().parse::<u64>().ok()),
        // Header values are ASCII: clients percent-encode other names (as encodeURIComponent does).
        file_name: header("x-file-name")
            .map(|n| percent_encoding::percent_decode_str(&n).decode_utf8_lossy().into_owned()),
    };
    // Every variable this component reads (besides auth, database and limiter), read once.
    let settings = Settings::from_variables(variable);
    let segments: Vec<String> = incoming.segments().into_iter().map(str::to_owned).collect();
    let result = match (&incoming.method, segments.as_slice()) {
        (Method::Post, []) => upload(req, &incoming, &settings, upload_headers, &mut responder).await,
        (Method::Get, []) => list(&incoming, &mut responder),
        (Method::Get, [id]) => get_one(&incoming, &settings, id, &mut responder),
        (Method::Delete, [id]) => delete(&incoming, &settings, id, &mut responder).await,
        (_, []) => Err(ApiError::method_not_allowed("GET, POST, OPTIONS")),
        (_, [_]) => Err(ApiError::method_not_allowed("GET, DELETE, OPTIONS")),
        _ => Err(ApiError::not_found("route")),
    };
    match result {
        Ok((204, _)) => responder.send(204, &[], Vec::new()).await,
        Ok((status, body)) => responder.json(status, &body, &[]).await,
        Err(e) => responder.error(&e).await,
    }
}

struct UploadHeaders {
    content_type: Option<String>,
    content_length: Option<u64>,
    file_name: Option<String>,
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10),
        first_byte: Duration::from_secs(60),
        between_bytes: Duration::from_secs(60),
    }
}

fn storage_unavailable(what: &str) -> ApiError {
    ApiError::unavailable(
        ErrorCode::StorageUnavailable,
        format!("object storage is unavailable ({what}); retry shortly"),
    )
}

/// Authenticates and applies the `upload` policy (listing and reading count against `api`).
fn admit(
    incoming: &Incoming,
    policy: &str,
    responder: &mut Responder,
) -> Result<(String, shared::auth::Principal), ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    if let Some(v) = shared::limiter::enforce(policy, &Subject::user(&user_id), 1)? {
        responder.extra = v.headers();
    }
    Ok((user_id, principal))
}

async fn upload(
    req: IncomingRequest,
    incoming: &Incoming,
    settings: &Settings,
    headers: UploadHeaders,
    responder: &mut Responder,
) -> Result<(u16, Value), ApiError> {
    let (user_id, principal) = admit(incoming, "upload", responder)?;
    let cap = settings.max_bytes;
    let content_type = headers.content_type.unwrap_or_default();
    let multipart = content_type.to_ascii_lowercase().starts_with("multipart/form-data");
    let limit = if multipart { cap + MULTIPART_OVERHEAD } else { cap };
    // A declared length past the cap is refused before a byte is read.
    if headers.content_length.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(cap));
    }
    let allowed = upload::allowed_types(settings.allowed_types.as_deref());
    let (files, conversation_id) = if multipart {
        read_multipart(req.into_body_stream(), &content_type, cap, limit, &user_id, &allowed).await?
    } else {
        let name = headers.file_name.ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::ValidationFailed,
                "a raw upload needs an x-file-name header (or send multipart/form-data)",
            )
        })?;
        let declared = Some(content_type.as_str()).filter(|c| !c.is_empty());
        match headers.content_length.filter(|n| *n > 0) {
            // Length known: straight through to storage, never whole in memory.
            Some(len) => {
                let storage = settings.storage()?;
                (vec![stream_raw(req, &storage, &user_id, &name, declared, len as usize, &allowed).await?], None)
            }
            // Chunked: buffered up to the cap (S3 wants the length before the body).
            None => {
                let (bytes, digest) = read_capped(req, cap).await?;
                (vec![validate(&user_id, &name, declared, bytes, Some(digest), &allowed)?], None)
            }
        }
    };
    let storage = settings.storage()?;
    store_all(&storage, &files).await?;
    // Documents are split into chunks now (pure, fast) and embedded later by chat-completion.
    let indexes: Vec<Option<Index>> = files.iter().map(|f| index(f, settings.chunk_plan)).collect();
    match write_rows(&principal, &user_id, &files, &indexes, conversation_id.as_deref()) {
        Ok(rows) => Ok((201, json!({"files": rows}))),
        Err(e) => {
            // No orphans: the rows did not land, so neither may the objects.
            remove_objects(&storage, &files).await;
            Err(e)
        }
    }
}

/// Bytes read before deciding the type (magic numbers, and whether text is UTF-8).
const SNIFF_BYTES: usize = 8192;

/// A raw upload of known length piped straight into a streaming PUT: the first bytes decide
/// the type, the rest is hashed and forwarded as it arrives, so memory holds one chunk. A body
/// that ends early or a storage failure abandons the PUT (no object is created).
async fn stream_raw(
    req: IncomingRequest,
    storage: &StorageConfig,
    user_id: &str,
    name: &str,
    declared: Option<&str>,
    len: usize,
    allowed: &[String],
) -> Result<Received, ApiError> {
    let unreadable = || ApiError::bad_request(ErrorCode::BodyReadFailed, "the request body could not be read");
    let body = req.consume().map_err(|()| unreadable())?;
    let stream = body.stream().map_err(|()| unreadable())?;
    let mut head = Vec::with_capacity(SNIFF_BYTES.min(len));
    while head.len() < SNIFF_BYTES.min(len) {
        match outbound::read_chunk(&stream, 1 << 20).await {
            None => break,
            Some(Err(_)) => return Err(unreadable()),
            Some(Ok(c)) => head.extend_from_slice(&c),
        }
    }
    if head.is_empty() {
        return Err(ApiError::bad_request(ErrorCode::EmptyFile, format!("'{name}' is empty")));
    }
    let (safe_name, display_name) = upload::sanitize_name(name)?;
    let mime = upload::check_type(declared, &head, allowed)?;
    let id = uuid::Uuid::new_v4().to_string();
    let key = upload::storage_key(user_id, &id, &safe_name);
    let put_headers = vec![("content-type".to_owned(), mime.clone()), ("content-length".to_owned(), len.to_string())];
    let (pending, mut writer) =
        outbound::start_streaming("PUT", &storage.put_url(&key, INTERNAL_URL_TTL), &put_headers, timeouts())
            .map_err(|_| storage_unavailable("unreachable"))?;
    let mut hasher = sha2::Sha256::new();
    let mut total = head.len();
    hasher.update(&head);
    if let Err(e) = writer.write(&head).await {
        eprintln!("file-upload: streaming PUT {key}, first bytes: {e:?}");
        return Err(storage_unavailable("write failed"));
    }
    // A document is also kept (up to the upload cap) to be indexed after it is stored.
    let mut kept = if documents::is_document(&mime) { head.clone() } else { Vec::new() };
    drop(head);
    while let Some(chunk) = outbound::read_chunk(&stream, 1 << 20).await {
        let chunk = chunk.map_err(|_| unreadable())?;
        total += chunk.len();
        if total > len {
            return Err(ApiError::bad_request(ErrorCode::BodyReadFailed, "the body is longer than its Content-Length"));
        }
        hasher.update(&chunk);
        if !kept.is_empty() {
            kept.extend_from_slice(&chunk);
        }
        if let Err(e) = writer.write(&chunk).await {
            eprintln!("file-upload: streaming PUT {key} after {total} bytes: {e:?}");
            drop(writer);
            if let Ok(r) = pending.response().await {
                eprintln!("file-upload: storage answered {}", r.status);
            }
            return Err(storage_unavailable("write failed"));
        }
    }
    if total != len {
        return Err(ApiError::bad_request(ErrorCode::BodyReadFailed, "the body ended before its Content-Length"));
    }
    if let Err(e) = writer.finish() {
        eprintln!("file-upload: streaming PUT {key}, finishing: {e:?}");
        return Err(storage_unavailable("write failed"));
    }
    match pending.response().await {
        Ok(mut r) if (200..300).contains(&r.status) => {
            let _ = r.read_to_end(64 * 1024).await;
        }
        Ok(r) => {
            eprintln!("file-upload: streaming PUT {key} -> {}", r.status);
            return Err(storage_unavailable(&format!("HTTP {}", r.status)));
        }
        Err(e) => {
            eprintln!("file-upload: streaming PUT {key}: {e:?}");
            return Err(storage_unavailable("unreachable"));
        }
    }
    Ok(Received {
        display_name,
        safe_name,
        mime,
        bytes: kept,
        size: total,
        stored: true,
        sha256: hex(&hasher.finalize()),
        id,
        key,
    })
}

/// Reads a raw body of unknown length, stopping the moment it passes `cap` (a chunked body
/// cannot push more through), hashing it as it arrives. Reads up to 1 MiB at a time.
async fn read_capped(req: IncomingRequest, cap: usize) -> Result<(Vec<u8>, String), ApiError> {
    let unreadable = || ApiError::bad_request(ErrorCode::BodyReadFailed, "the request body could not be read");
    let body = req.consume().map_err(|()| unreadable())?;
    let stream = body.stream().map_err(|()| unreadable())?;
    let mut bytes = Vec::new();
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = outbound::read_chunk(&stream, 1 << 20).await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if bytes.len() + chunk.len() > cap {
            return Err(ApiError::payload_too_large(cap));
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    drop(stream);
    drop(body);
    Ok((bytes, hex(&hasher.finalize())))
}

async fn store_all(storage: &StorageConfig, files: &[Received]) -> Result<(), ApiError> {
    for (i, f) in files.iter().enumerate().filter(|(_, f)| !f.stored) {
        let url = storage.put_url(&f.key, INTERNAL_URL_TTL);
        let headers =
            vec![("content-type".to_owned(), f.mime.clone()), ("content-length".to_owned(), f.bytes.len().to_string())];
        let stored = match outbound::send("PUT", &url, &headers, &f.bytes, timeouts()).await {
            Ok(mut r) if (200..300).contains(&r.status) => {
                let _ = r.read_to_end(64 * 1024).await;
                Ok(())
            }
            Ok(mut r) => {
                let body = r.read_to_end(4096).await.unwrap_or_default();
                eprintln!("file-upload: PUT {} -> {}: {}", f.key, r.status, String::from_utf8_lossy(&body));
                Err(storage_unavailable(&format!("HTTP {}", r.status)))
            }
            Err(e) => {
                eprintln!("file-upload: PUT {}: {e:?}", f.key);
                Err(storage_unavailable("unreachable"))
            }
        };
        if let Err(e) = stored {
            remove_objects(storage, &files[..i]).await;
            return Err(e);
        }
    }
    Ok(())
}

async fn delete_object(storage: &StorageConfig, key: &str) -> bool {
    match outbound::send("DELETE", &storage.delete_url(key, INTERNAL_URL_TTL), &[], &[], timeouts()).await {
        Ok(r) => (200..300).contains(&r.status) || r.status == 404,
        Err(_) => false,
    }
}

async fn remove_objects(storage: &StorageConfig, files: &[Received]) {
    for f in files {
        if !delete_object(storage, &f.key).await {
            eprintln!("file-upload: could not remove {} after a failed upload", f.key);
        }
    }
}

/// What indexing made of one uploaded document: its chunks (status `pending`, to be embedded)
/// or why it could not be read (status `failed`).
struct Index {
    text: Option<String>,
    chunks: Vec<documents::Chunk>,
    error: Option<String>,
}

fn index(file: &Received, plan: documents::ChunkPlan) -> Option<Index> {
    if !documents::is_document(&file.mime) || file.bytes.is_empty() {
        return None;
    }
    Some(match documents::extract(&file.mime, &file.bytes, plan) {
        Ok(doc) => Index { text: Some(doc.text), chunks: doc.chunks, error: None },
        Err(e) => Index { text: None, chunks: Vec::new(), error: Some(e.to_string()) },
    })
}

fn write_rows(
    principal: &shared::auth::Principal,
    user_id: &str,
    files: &[Received],
    indexes: &[Option<Index>],
    conversation_id: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    if let Some(c) = conversation_id {
        // A foreign key does not see RLS: check the conversation is the caller's, as the caller.
        if !tx
            .exists("select count(*) from public.conversations where id = $1", &[ParameterValue::Uuid(c.to_owned())])?
        {
            return Err(ApiError::not_found("conversation"));
        }
    }
    // The columns this function vouches for (key, size, hash, type) are not writable by users
    // (migrations/0006): the rows go in as service_role, owned by the verified caller.
    tx.become_service_role()?;
    let mut rows = Vec::new();
    for (f, index) in files.iter().zip(indexes) {
        let (status, text, count, error) = match index {
            None => (ParameterValue::DbNull, ParameterValue::DbNull, 0, ParameterValue::DbNull),
            Some(ix) => (
                ParameterValue::Str(if ix.error.is_some() { "failed" } else { "pending" }.to_owned()),
                ix.text.clone().map(ParameterValue::Str).unwrap_or(ParameterValue::DbNull),
                ix.chunks.len() as i32,
                ix.error.clone().map(ParameterValue::Str).unwrap_or(ParameterValue::DbNull),
            ),
        };
        let row = tx
            .query_json(
                &format!(
                    "with f as (insert into public.file_uploads (id, user_id, conversation_id, original_name, storage_key, \
                       mime_type, size_bytes, sha256, processing_status, extracted_text, chunk_count, processing_error) \
                       values ($1, $8, $2, $3, $4, $5, $6, $7, $9::text, $10::text, $11::int4, $12::text) returning *) \
                     select row_to_json(x)::text from (select {COLUMNS} from f) x"
                ),
                &[
                    ParameterValue::Uuid(f.id.clone()),
                    conversation_id.map(|c| ParameterValue::Uuid(c.to_owned())).unwrap_or(ParameterValue::DbNull),
                    ParameterValue::Str(f.display_name.clone()),
                    ParameterValue::Str(f.key.clone()),
                    ParameterValue::Str(f.mime.clone()),
                    ParameterValue::Int64(f.size as i64),
                    ParameterValue::Str(f.sha256.clone()),
                    ParameterValue::Uuid(user_id.to_owned()),
                    status,
                    text,
                    ParameterValue::Int32(count),
                    error,
                ],
            )?
            .ok_or_else(|| ApiError::internal("insert returned nothing"))?;
        if let Some(ix) = index.as_ref().filter(|ix| !ix.chunks.is_empty()) {
            insert_chunks(&mut tx, &f.id, user_id, &ix.chunks)?;
        }
        let mut v: Value = serde_json::from_str(&row).map_err(|_| ApiError::internal("bad JSON from the database"))?;
        v["safe_name"] = json!(f.safe_name);
        rows.push(v);
    }
    tx.commit()?;
    Ok(rows)
}

/// Most chunks sent to the database in one statement.
const CHUNKS_PER_STATEMENT: usize = 500;

/// A document's chunks, in statements of [`CHUNKS_PER_STATEMENT`] rows.
fn insert_chunks(
    tx: &mut RlsTransaction,
    file_id: &str,
    user_id: &str,
    chunks: &[documents::Chunk],
) -> Result<(), ApiError> {
    for (batch_no, batch) in chunks.chunks(CHUNKS_PER_STATEMENT).enumerate() {
        let rows: Vec<Value> = batch
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({"chunk_index": batch_no * CHUNKS_PER_STATEMENT + i, "content": c.content,
                       "heading": c.heading, "page_number": c.page_number, "token_count": c.token_count})
            })
            .collect();
        tx.query(
            "with c as (insert into public.document_chunks (file_id, user_id, chunk_index, content, heading, \
                          page_number, token_count) \
                        select $1, $2, x.chunk_index, x.content, x.heading, x.page_number, x.token_count \
                          from jsonb_to_recordset($3::text::jsonb) as x(chunk_index int, content text, heading text, \
                                                                       page_number int, token_count int) \
                        returning 1) \
             select count(*) from c",
            &[
                ParameterValue::Uuid(file_id.to_owned()),
                ParameterValue::Uuid(user_id.to_owned()),
                ParameterValue::Str(Value::Array(rows).to_string()),
            ],
        )?;
    }
    Ok(())
}

/// The row's storage key, if it is one this function could have made for this caller and row
/// (a tampered key is never presigned or deleted: the file is simply not there).
fn trusted_key(key: &str, user_id: &str, file_id: &str) -> Result<String, ApiError> {
    upload::checked_key(key, user_id, file_id).map(str::to_owned).ok_or_else(|| {
        eprintln!("file-upload: refusing file {file_id}: its storage key is not of the expected shape");
        ApiError::not_found("file")
    })
}

fn file_id(raw: &str) -> Result<ParameterValue, ApiError> {
    if shared::is_uuid(raw) {
        Ok(ParameterValue::Uuid(raw.to_ascii_lowercase()))
    } else {
        Err(ApiError::not_found("file"))
    }
}

fn list(incoming: &Incoming, responder: &mut Responder) -> Result<(u16, Value), ApiError> {
    let (_, principal) = admit(incoming, "api", responder)?;
    let limit = parse_limit(incoming.query_param("limit").as_deref())?;
    let (cursor_ts, cursor_id) = cursor_params(incoming)?;
    let mut tx = RlsTransaction::begin(&principal)?;
    let rows = tx.query_json(
        &format!(
            "select {} from (
               select {COLUMNS} from public.file_uploads
               where user_id = (select auth.uid()) and status = 'stored'
                 and ($2::int8 is null or (created_at, id) < (timestamptz 'epoch' + $2::int8 * interval '1 microsecond', $3::uuid))
               order by created_at desc, id desc limit $1) p",
            shared::spin::PAGE_ROWS_DESC
        ),
        &[ParameterValue::Int64(i64::from(limit) + 1), cursor_ts, cursor_id],
    )?;
    tx.commit()?;
    let page = shared::spin::page(rows.as_deref(), limit)?;
    Ok((200, serde_json::from_str(&page).map_err(|_| ApiError::internal("bad page JSON"))?))
}

fn get_one(
    incoming: &Incoming,
    settings: &Settings,
    raw_id: &str,
    responder: &mut Responder,
) -> Result<(u16, Value), ApiError> {
    let (user_id, principal) = admit(incoming, "api", responder)?;
    let id = file_id(raw_id)?;
    let mut tx = RlsTransaction::begin(&principal)?;
    let row = tx
        .query_json(
            &format!("select (select row_to_json(x)::text from (select {COLUMNS} from public.file_uploads where id = $1 and status = 'stored') x)"),
            &[id],
        )?
        .ok_or_else(|| ApiError::not_found("file"))?;
    tx.commit()?;
    let mut v: Value = serde_json::from_str(&row).map_err(|_| ApiError::internal("bad JSON from the database"))?;
    let ttl = settings.url_expiry_secs;
    let key = trusted_key(v["storage_key"].as_str().unwrap_or_default(), &user_id, &raw_id.to_ascii_lowercase())?;
    let name = v["original_name"].as_str().unwrap_or("file").to_owned();
    v["download_url"] = json!(settings.storage()?.download_url(&key, &name, Duration::from_secs(ttl)));
    v["expires_in"] = json!(ttl);
    Ok((200, v))
}

async fn delete(
    incoming: &Incoming,
    settings: &Settings,
    raw_id: &str,
    responder: &mut Responder,
) -> Result<(u16, Value), ApiError> {
    let (user_id, principal) = admit(incoming, "api", responder)?;
    let id = file_id(raw_id)?;
    let key = {
        let mut tx = RlsTransaction::begin(&principal)?;
        // One row always (a scalar subquery), NULL when not the caller's.
        let rows =
            tx.query("select (select storage_key from public.file_uploads where id = $1)", std::slice::from_ref(&id))?;
        tx.commit()?;
        match rows.rows.first().and_then(|r| r.first()) {
            Some(DbValue::Str(k)) => trusted_key(k, &user_id, &raw_id.to_ascii_lowercase())?,
            _ => return Err(ApiError::not_found("file")),
        }
    };
    // The object first: if storage is down the row stays, so nothing is left unreachable.
    if !delete_object(&settings.storage()?, &key).await {
        return Err(storage_unavailable("delete failed"));
    }
    let mut tx = RlsTransaction::begin(&principal)?;
    tx.execute("delete from public.file_uploads where id = $1", &[id])?;
    tx.commit()?;
    Ok((204, Value::Null))
}
