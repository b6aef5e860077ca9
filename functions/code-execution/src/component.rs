//! `POST /functions/v1/code-execution`: `{language, code, stdin?, timeout_ms?, conversation_id?,
//! file_ids?}` -> `{id, status, exit_code, stdout, stderr, truncated, duration_ms, fuel_used,
//! artifacts[], visualizations[]}`; `GET /functions/v1/code-execution/visualizations/{id}`.
//!
//! Authenticates, applies the `code` rate-limit policy, validates, reads the named uploads (the
//! caller's own, through RLS) from storage, calls the sandbox service over outbound HTTP with an
//! HMAC-signed body (`shared::signing`), stores each image the program left as an object under
//! the caller's prefix, then records the execution and its visualizations in one transaction
//! through RLS. Refused requests record nothing; an execution the sandbox ran is answered only
//! once its rows are committed, and objects whose rows did not commit are removed.

use crate::artifacts;
use crate::execution::{
    clamp, parse, passthrough, sandbox_unavailable, Answer, CodeExecutionRequest, Limits, Outcome,
    DEFAULT_MAX_TIMEOUT_MS,
};
use futures::SinkExt as _;
use serde_json::{json, Value};
use shared::outbound::{self, Timeouts};
use shared::ratelimit::Subject;
use shared::spin::{
    read_body, require_user, required_variable, serve_streaming, variable, Answered, Incoming, Reply, Responder,
    RlsTransaction,
};
use shared::storage::{StorageConfig, StorageSettings};
use shared::{limiter, signing, ApiError, ErrorCode};
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::pg4::ParameterValue;
use std::time::Duration;

/// Lifetime of the presigned URLs this function uses itself.
const INTERNAL_URL_TTL: Duration = Duration::from_secs(300);
/// Lifetime of the download links in answers.
const LINK_TTL_SECS: u64 = 3600;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    serve_streaming(req, out, route).await
}

async fn route(incoming: &Incoming, req: IncomingRequest, responder: &mut Responder) -> Result<Answered, ApiError> {
    let reply = match (incoming.segments().as_slice(), &incoming.method) {
        ([], Method::Post) => return execute(incoming, req, responder).await,
        ([], _) => Err(ApiError::method_not_allowed("POST, OPTIONS")),
        (["visualizations", id], Method::Get) => visualization(incoming, id),
        (["visualizations", _], _) => Err(ApiError::method_not_allowed("GET, OPTIONS")),
        (["sessions", id], Method::Delete) => end_session(incoming, id).await,
        (["sessions", _], _) => Err(ApiError::method_not_allowed("DELETE, OPTIONS")),
        _ => Err(ApiError::not_found("route")),
    };
    reply.map(Answered::Reply)
}

async fn execute(incoming: &Incoming, req: IncomingRequest, responder: &mut Responder) -> Result<Answered, ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    let verdict = limiter::enforce("code", &Subject::user(&user_id), 1)?;
    let limits = Limits::from_variables(variable);
    let body = read_body(req, incoming.content_length, limits.max_body_bytes()).await?;
    let request = parse(&body, &limits)?;
    // Everything the caller named is checked before anything runs.
    let inputs = check_named(&principal, &user_id, &request, &limits)?;
    let files = if inputs.is_empty() { Vec::new() } else { read_inputs(&storage_settings().config()?, inputs).await? };
    let sandbox_body =
        serde_json::to_vec(&request.to_sandbox(files, &user_id)).map_err(|e| ApiError::internal(e.to_string()))?;
    let rate_headers = verdict.map(|v| v.headers()).unwrap_or_default();
    let caller = Caller { principal: &principal, user_id: &user_id, request: &request };
    if request.stream {
        return stream(&caller, &sandbox_body, incoming.request_id.as_deref(), rate_headers, responder).await;
    }
    let outcome = call_sandbox(&sandbox_body, request.timeout_ms, incoming.request_id.as_deref()).await?;
    drop(sandbox_body);
    let answer = keep(&caller, &outcome).await?;
    let mut response = Reply::json(200, &answer);
    response.headers.extend(rate_headers);
    Ok(Answered::Reply(response))
}

/// Read only when used: a plain execution pays no variable lookups for storage.
fn storage_settings() -> StorageSettings {
    StorageSettings::from_variables(variable)
}

/// Who asked for an execution, and what.
struct Caller<'a> {
    principal: &'a shared::auth::Principal,
    user_id: &'a str,
    request: &'a CodeExecutionRequest,
}

/// What is kept of an execution the sandbox ran: its images stored (when storage is
/// configured), its rows written; answers the response body.
async fn keep(caller: &Caller<'_>, outcome: &Outcome) -> Result<Value, ApiError> {
    let execution_id = uuid::Uuid::new_v4().to_string();
    // Without storage configured, images come back inline only.
    let drew = outcome.artifacts.iter().any(|a| artifacts::image_extension(&a.mime_type).is_some());
    let settings = drew.then(storage_settings).filter(|s| s.endpoint.is_some());
    let (storage, images) = match settings {
        Some(settings) => {
            let storage = settings.config()?;
            let images = store_images(&storage, caller.user_id, &execution_id, outcome).await?;
            (Some(storage), images)
        }
        None => (None, Vec::new()),
    };
    let recorded = record(caller.principal, caller.user_id, &execution_id, caller.request, outcome, &images);
    let (id, rows) = match (recorded, &storage) {
        (Ok(done), _) => done,
        (Err(e), Some(storage)) => {
            remove_objects(storage, images.iter().map(|i| i.key.as_str())).await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let visualizations = match &storage {
        Some(storage) => links(storage, &images, &rows),
        None => Vec::new(),
    };
    serde_json::to_value(Answer { id, language: caller.request.language, outcome, visualizations })
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Largest line of the sandbox's stream (the outcome line, with its inline artifacts).
const MAX_STREAM_LINE: usize = 64 << 20;

/// `stream: true`: the sandbox's NDJSON events become server-sent events (`stdout`, `stderr`
/// as written, then `outcome` with the stored row's id, or `error`). The rows are written when
/// the outcome arrives, before it is sent; a client that leaves early does not stop that.
async fn stream(
    caller: &Caller<'_>,
    body: &[u8],
    request_id: Option<&str>,
    rate_headers: Vec<(String, String)>,
    responder: &mut Responder,
) -> Result<Answered, ApiError> {
    let timeouts = execute_timeouts(caller.request.timeout_ms);
    let mut response = signed_start("/v1/execute", body, timeouts, request_id).await?;
    if response.status != 200 {
        let status = response.status;
        let bytes = response.read_to_end(1 << 20).await.map_err(|_| sandbox_unavailable("answer cut short"))?;
        return Err(sandbox_refusal(status, &bytes));
    }
    let mut headers: Vec<(&str, String)> =
        vec![("content-type", "text/event-stream".to_owned()), ("cache-control", "no-cache".to_owned())];
    headers.extend(rate_headers.iter().map(|(n, v)| (n.as_str(), v.clone())));
    let Some(mut sink) = responder.start(200, &headers) else { return Ok(Answered::Streamed) };
    let mut client_here = true;
    let mut send = async |event: &str, data: &Value| {
        if client_here {
            let frame = format!("event: {event}\ndata: {data}\n\n");
            client_here = sink.send(frame.into_bytes()).await.is_ok();
        }
    };
    let mut buffer: Vec<u8> = Vec::new();
    let mut ended = false;
    'read: loop {
        let chunk = match response.chunk().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) | None => break,
        };
        buffer.extend_from_slice(&chunk);
        while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=at).collect();
            match serde_json::from_slice::<wire::StreamEvent>(&line) {
                Ok(wire::StreamEvent::Stdout { data }) => send("stdout", &json!({ "data": data })).await,
                Ok(wire::StreamEvent::Stderr { data }) => send("stderr", &json!({ "data": data })).await,
                Ok(wire::StreamEvent::Outcome { outcome }) => {
                    match keep(caller, &outcome).await {
                        Ok(answer) => send("outcome", &answer).await,
                        Err(e) => send("error", &error_event(&e, request_id)).await,
                    }
                    ended = true;
                    break 'read;
                }
                Ok(wire::StreamEvent::Error { status, error }) => {
                    let e = passthrough(status, &json!({ "error": error }));
                    send("error", &error_event(&e, request_id)).await;
                    ended = true;
                    break 'read;
                }
                Err(_) => break 'read,
            }
        }
        if buffer.len() > MAX_STREAM_LINE {
            break;
        }
    }
    if !ended {
        send("error", &error_event(&sandbox_unavailable("the stream was cut short"), request_id)).await;
    }
    Ok(Answered::Streamed)
}

/// An error as an `error` event's data: the envelope, with the request id.
fn error_event(e: &ApiError, request_id: Option<&str>) -> Value {
    if let Some(detail) = &e.log {
        eprintln!("request_id={} {} {}: {detail}", request_id.unwrap_or("-"), e.status, e.code);
    }
    let e = match request_id {
        Some(id) => e.clone().with_detail("request_id", id),
        None => e.clone(),
    };
    serde_json::from_slice(&e.body()).unwrap_or(Value::Null)
}

/// An upload to read: its row's id, key and size, and its name under `/data`.
struct Input {
    key: String,
    size: u64,
    name: String,
}

/// Checks, as the caller, that the conversation and every named upload are theirs (a 404
/// naming the first that is not) and that the uploads fit the input cap (413).
fn check_named(
    principal: &shared::auth::Principal,
    user_id: &str,
    request: &CodeExecutionRequest,
    limits: &Limits,
) -> Result<Vec<Input>, ApiError> {
    if request.conversation_id.is_none() && request.file_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = RlsTransaction::begin(principal)?;
    if let Some(c) = &request.conversation_id {
        if !tx.exists("select count(*) from public.conversations where id = $1", &[ParameterValue::Uuid(c.clone())])? {
            return Err(ApiError::not_found("conversation"));
        }
    }
    let mut found = Vec::new();
    for raw in &request.file_ids {
        let id = raw.to_ascii_lowercase();
        // One row always (a scalar subquery), NULL when the file is not the caller's.
        let row = tx
            .query_json(
                "select (select json_build_object('key', storage_key, 'size', size_bytes)::text \
                 from public.file_uploads where id = $1 and status = 'stored')",
                &[ParameterValue::Uuid(id.clone())],
            )?
            .ok_or_else(|| ApiError::not_found("file").with_detail("file_id", raw.as_str()))?;
        let row: Value = serde_json::from_str(&row).map_err(|_| ApiError::internal("bad JSON from the database"))?;
        let key = row["key"].as_str().unwrap_or_default().to_owned();
        if !shared::storage::is_upload_key(&key, user_id, &id) {
            eprintln!("code-execution: refusing file {id}: its storage key is not of the expected shape");
            return Err(ApiError::not_found("file").with_detail("file_id", raw.as_str()));
        }
        found.push((id, key, row["size"].as_u64().unwrap_or(0)));
    }
    tx.commit()?;
    let total: u64 = found.iter().map(|(_, _, size)| size).sum();
    if total > limits.max_input_bytes {
        return Err(ApiError::new(
            413,
            ErrorCode::PayloadTooLarge,
            format!("the files named are {total} bytes together; the limit is {}", limits.max_input_bytes),
        )
        .with_detail("field", "file_ids")
        .with_detail("limit_bytes", limits.max_input_bytes));
    }
    let names = artifacts::input_names(
        found.iter().map(|(id, key, _)| (id.as_str(), key.rsplit('/').next().unwrap_or_default())),
    );
    Ok(found.into_iter().zip(names).map(|((_, key, size), name)| Input { key, size, name }).collect())
}

fn storage_unavailable(what: &str) -> ApiError {
    ApiError::unavailable(
        ErrorCode::StorageUnavailable,
        format!("object storage is unavailable ({what}); retry shortly"),
    )
}

fn storage_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10),
        first_byte: Duration::from_secs(60),
        between_bytes: Duration::from_secs(60),
    }
}

/// Reads each upload's bytes, no more than its row says it holds.
async fn read_inputs(storage: &StorageConfig, inputs: Vec<Input>) -> Result<Vec<wire::InputFile>, ApiError> {
    let mut files = Vec::with_capacity(inputs.len());
    for input in inputs {
        let url = storage.get_url(&input.key, INTERNAL_URL_TTL);
        let mut response = outbound::send("GET", &url, &[], &[], storage_timeouts()).await.map_err(|e| {
            eprintln!("code-execution: GET {}: {e:?}", input.key);
            storage_unavailable("unreachable")
        })?;
        if response.status != 200 {
            eprintln!("code-execution: GET {} -> {}", input.key, response.status);
            return Err(storage_unavailable(&format!("HTTP {}", response.status)));
        }
        let limit = usize::try_from(input.size).unwrap_or(usize::MAX);
        let data = response.read_to_end(limit).await.map_err(|_| storage_unavailable("read cut short"))?;
        files.push(wire::InputFile { name: input.name, data });
    }
    Ok(files)
}

/// An image the program drew, stored.
struct StoredImage {
    key: String,
    artifact: String,
    mime_type: String,
    size: usize,
    chart: Option<Value>,
}

/// PUTs every image artifact under the caller's prefix; on any failure removes those already
/// stored and answers 503.
async fn store_images(
    storage: &StorageConfig,
    user_id: &str,
    execution_id: &str,
    outcome: &Outcome,
) -> Result<Vec<StoredImage>, ApiError> {
    let mut stored: Vec<StoredImage> = Vec::new();
    for (index, artifact) in outcome.artifacts.iter().enumerate() {
        let Some(extension) = artifacts::image_extension(&artifact.mime_type) else { continue };
        let key = artifacts::visualization_key(user_id, execution_id, index, extension);
        let headers = vec![
            ("content-type".to_owned(), artifact.mime_type.clone()),
            ("content-length".to_owned(), artifact.data.len().to_string()),
        ];
        let url = storage.put_url(&key, INTERNAL_URL_TTL);
        let ok = match outbound::send("PUT", &url, &headers, &artifact.data, storage_timeouts()).await {
            Ok(mut r) => {
                let _ = r.read_to_end(64 * 1024).await;
                (200..300).contains(&r.status)
            }
            Err(e) => {
                eprintln!("code-execution: PUT {key}: {e:?}");
                false
            }
        };
        if !ok {
            remove_objects(storage, stored.iter().map(|s| s.key.as_str())).await;
            return Err(storage_unavailable("the chart could not be stored"));
        }
        let chart = (extension == "png").then(|| artifacts::chart_data(&artifact.data)).flatten();
        stored.push(StoredImage {
            key,
            artifact: artifact.name.clone(),
            mime_type: artifact.mime_type.clone(),
            size: artifact.data.len(),
            chart,
        });
    }
    Ok(stored)
}

/// Best effort: objects whose rows did not commit.
async fn remove_objects<'a>(storage: &StorageConfig, keys: impl Iterator<Item = &'a str>) {
    for key in keys {
        let url = storage.delete_url(key, INTERNAL_URL_TTL);
        match outbound::send("DELETE", &url, &[], &[], storage_timeouts()).await {
            Ok(mut r) => {
                let _ = r.read_to_end(64 * 1024).await;
            }
            Err(e) => eprintln!("code-execution: DELETE {key} (an orphaned object): {e:?}"),
        }
    }
}

/// The answer's `visualizations`: each stored row with a download link.
fn links(storage: &StorageConfig, images: &[StoredImage], rows: &[Value]) -> Vec<Value> {
    images
        .iter()
        .zip(rows)
        .map(|(image, row)| {
            json!({
                "id": row["id"],
                "artifact": image.artifact,
                "kind": row["kind"],
                "mime_type": image.mime_type,
                "size_bytes": image.size,
                "chart": image.chart,
                "url": storage.download_url(&image.key, &image.artifact, Duration::from_secs(LINK_TTL_SECS)),
                "expires_in": LINK_TTL_SECS,
            })
        })
        .collect()
}

/// `GET /functions/v1/code-execution/visualizations/{id}`: the caller's row with a fresh link.
fn visualization(incoming: &Incoming, raw_id: &str) -> Result<Reply, ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    limiter::enforce("api", &Subject::user(&user_id), 1)?;
    if !shared::is_uuid(raw_id) {
        return Err(ApiError::not_found("visualization"));
    }
    let mut tx = RlsTransaction::begin(&principal)?;
    let row = tx
        .query_json(
            "select (select row_to_json(v)::text from (select id, execution_id, conversation_id, message_id, kind, \
             spec, storage_key, mime_type, size_bytes, created_at from public.visualizations where id = $1) v)",
            &[ParameterValue::Uuid(raw_id.to_ascii_lowercase())],
        )?
        .ok_or_else(|| ApiError::not_found("visualization"))?;
    tx.commit()?;
    let mut v: Value = serde_json::from_str(&row).map_err(|_| ApiError::internal("bad JSON from the database"))?;
    if let Some(key) = v["storage_key"].as_str().map(str::to_owned) {
        if !artifacts::is_visualization_key(&key, &user_id) {
            eprintln!("code-execution: refusing visualization {raw_id}: its storage key is not of the expected shape");
            return Err(ApiError::not_found("visualization"));
        }
        let name = v["spec"]["artifact"].as_str().unwrap_or("chart").to_owned();
        let storage = StorageSettings::from_variables(variable).config()?;
        v["url"] = json!(storage.download_url(&key, &name, Duration::from_secs(LINK_TTL_SECS)));
        v["expires_in"] = json!(LINK_TTL_SECS);
    }
    if let Some(object) = v.as_object_mut() {
        object.remove("storage_key");
    }
    Ok(Reply::json(200, &v))
}

/// `DELETE /functions/v1/code-execution/sessions/{id}`: ends the caller's session (204), or 404.
async fn end_session(incoming: &Incoming, id: &str) -> Result<Reply, ApiError> {
    let (user_id, _) = require_user(incoming)?;
    limiter::enforce("api", &Subject::user(&user_id), 1)?;
    if !wire::is_session_id(id) {
        return Err(ApiError::not_found("session"));
    }
    let body = serde_json::to_vec(&wire::EndSession { owner: user_id, id: id.to_owned() })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(30),
        between_bytes: Duration::from_secs(30),
    };
    let (status, bytes) = signed_post("/v1/sessions/end", &body, timeouts, incoming.request_id.as_deref()).await?;
    match status {
        204 => Ok(Reply::empty(204)),
        _ => Err(sandbox_refusal(status, &bytes)),
    }
}

/// POSTs `body`, signed, to `<sandbox_url><path>` and waits for the answer's head.
async fn signed_start(
    path: &str,
    body: &[u8],
    timeouts: Timeouts,
    request_id: Option<&str>,
) -> Result<outbound::Response, ApiError> {
    let base = required_variable("sandbox_url")?;
    let secret = required_variable("sandbox_secret")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let timestamp = now as i64;
    // A fresh nonce per call: the sandbox refuses any (nonce, signature) it has seen.
    let nonce = outbound::random_id();
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (signing::TIMESTAMP_HEADER.to_owned(), timestamp.to_string()),
        (signing::NONCE_HEADER.to_owned(), nonce.clone()),
        (signing::SIGNATURE_HEADER.to_owned(), signing::sign(secret.as_bytes(), timestamp, &nonce, body)),
    ];
    if let Some(id) = request_id {
        headers.push(("x-request-id".to_owned(), id.to_owned()));
    }
    let url = format!("{}{path}", base.trim_end_matches('/'));
    outbound::post(&url, &headers, body, timeouts).await.map_err(|e| match e {
        outbound::SendError::Timeout(_) => sandbox_unavailable("timed out"),
        outbound::SendError::Denied(_) => {
            ApiError::internal("server misconfigured: sandbox_url is not an allowed outbound host")
        }
        _ => sandbox_unavailable("unreachable"),
    })
}

/// [`signed_start`], then the whole answer: its status and bytes.
async fn signed_post(
    path: &str,
    body: &[u8],
    timeouts: Timeouts,
    request_id: Option<&str>,
) -> Result<(u16, Vec<u8>), ApiError> {
    let mut response = signed_start(path, body, timeouts, request_id).await?;
    let status = response.status;
    let bytes = response.read_to_end(64 << 20).await.map_err(|_| sandbox_unavailable("answer cut short"))?;
    Ok((status, bytes))
}

/// The sandbox may queue an execution, then runs it up to its deadline.
fn execute_timeouts(timeout_ms: Option<u64>) -> Timeouts {
    let deadline = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_MAX_TIMEOUT_MS)) + Duration::from_secs(60);
    Timeouts { connect: Duration::from_secs(5), first_byte: deadline, between_bytes: deadline }
}

/// POSTs the signed body to `<sandbox_url>/v1/execute`; the sandbox's own 4xx and 503 answers
/// reach the caller as they are.
async fn call_sandbox(body: &[u8], timeout_ms: Option<u64>, request_id: Option<&str>) -> Result<Outcome, ApiError> {
    let (status, bytes) = signed_post("/v1/execute", body, execute_timeouts(timeout_ms), request_id).await?;
    if status == 200 {
        return serde_json::from_slice(&bytes).map_err(|_| sandbox_unavailable("unreadable answer"));
    }
    Err(sandbox_refusal(status, &bytes))
}

/// The sandbox's non-success answer as this function's error.
fn sandbox_refusal(status: u16, bytes: &[u8]) -> ApiError {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return sandbox_unavailable("unreadable answer");
    };
    match status {
        401 => ApiError::internal(format!(
            "server misconfigured: the sandbox refused our signature (check sandbox_secret): {}",
            value["error"]["message"]
        )),
        400 | 404 | 409 | 413 | 503 => passthrough(status, &value),
        _ => sandbox_unavailable(&format!("status {status}")),
    }
}

/// Inserts the `code_executions` row and its visualizations as the caller (RLS checks they are
/// theirs), in one transaction; answers the execution's id and the visualization rows.
fn record(
    principal: &shared::auth::Principal,
    user_id: &str,
    execution_id: &str,
    request: &CodeExecutionRequest,
    outcome: &Outcome,
    images: &[StoredImage],
) -> Result<(String, Vec<Value>), ApiError> {
    shared::metrics::emit(&shared::metrics::Event::SandboxExecution {
        language: request.language.as_str().to_owned(),
        status: outcome.status.as_str().to_owned(),
    });
    let mut tx = RlsTransaction::begin(principal)?;
    if let Some(c) = &request.conversation_id {
        // A foreign key does not see RLS: check the conversation is the caller's.
        if !tx.exists("select count(*) from public.conversations where id = $1", &[ParameterValue::Uuid(c.clone())])? {
            return Err(ApiError::not_found("conversation"));
        }
    }
    let conversation = request.conversation_id.clone().map_or(ParameterValue::DbNull, ParameterValue::Uuid);
    let exit_code = outcome.exit_code.map_or(ParameterValue::DbNull, ParameterValue::Int32);
    let session = outcome.session_id.clone().map_or(ParameterValue::DbNull, ParameterValue::Str);
    let id = tx
        .query_json(
            "insert into public.code_executions (id, user_id, conversation_id, language, code, status, exit_code, \
             stdout_bytes, stderr_bytes, duration_ms, session_id) values ($10, $1, $2, $3, $4, $5, $6, $7, $8, $9, $11) \
             returning to_json(id)::text",
            &[
                ParameterValue::Uuid(user_id.to_owned()),
                conversation.clone(),
                ParameterValue::Str(request.language.as_str().to_owned()),
                ParameterValue::Str(request.code.clone()),
                ParameterValue::Str(outcome.status.as_str().to_owned()),
                exit_code,
                ParameterValue::Int32(clamp(outcome.stdout_bytes)),
                ParameterValue::Int32(clamp(outcome.stderr_bytes)),
                ParameterValue::Int32(outcome.duration_ms.round() as i32),
                ParameterValue::Uuid(execution_id.to_owned()),
                session,
            ],
        )?
        .ok_or_else(|| ApiError::internal("insert returned no id"))?;
    let mut rows = Vec::new();
    if !images.is_empty() {
        let items: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(ord, image)| {
                json!({
                    "ord": ord,
                    "kind": if image.chart.is_some() { "matplotlib" } else { "image" },
                    "spec": {"artifact": image.artifact, "chart": image.chart},
                    "storage_key": image.key,
                    "mime_type": image.mime_type,
                    "size_bytes": image.size,
                })
            })
            .collect();
        let inserted = tx
            .query_json(
                "with v as (insert into public.visualizations (user_id, conversation_id, execution_id, kind, spec, \
                 storage_key, mime_type, size_bytes) \
                 select $1, $2, $3, x.kind, x.spec, x.storage_key, x.mime_type, x.size_bytes \
                 from jsonb_to_recordset($4::text::jsonb) as x(ord int, kind text, spec jsonb, storage_key text, \
                 mime_type text, size_bytes bigint) order by x.ord returning id, kind, storage_key) \
                 select coalesce(json_agg(json_build_object('id', id, 'kind', kind, 'storage_key', storage_key)), '[]')::text from v",
                &[
                    ParameterValue::Uuid(user_id.to_owned()),
                    conversation,
                    ParameterValue::Uuid(execution_id.to_owned()),
                    ParameterValue::Str(Value::Array(items).to_string()),
                ],
            )?
            .ok_or_else(|| ApiError::internal("insert returned no rows"))?;
        let mut by_key: Vec<Value> =
            serde_json::from_str(&inserted).map_err(|_| ApiError::internal("bad JSON from the database"))?;
        // `returning` order is not the insert's: match rows to images by key.
        for image in images {
            let at = by_key.iter().position(|r| r["storage_key"] == image.key.as_str());
            rows.push(
                at.map(|i| by_key.swap_remove(i))
                    .ok_or_else(|| ApiError::internal("a visualization row is missing"))?,
            );
        }
    }
    tx.commit()?;
    let id = serde_json::from_str(&id).map_err(|_| ApiError::internal("bad id JSON"))?;
    Ok((id, rows))
}
