//! `POST /functions/v1/code-execution`: `{language, code, stdin?, timeout_ms?, conversation_id?}`
//! -> `{id, status, exit_code, stdout, stderr, truncated, duration_ms, fuel_used, artifacts[]}`.
//!
//! Authenticates, applies the `code` rate-limit policy, validates, calls the sandbox service over
//! outbound HTTP with an HMAC-signed body (`shared::signing`), then records the execution in
//! `code_executions` through RLS. Refused requests record nothing; an execution the sandbox ran
//! is answered only once its row is committed.

use crate::execution::{
    clamp, parse, passthrough, sandbox_unavailable, Answer, CodeExecutionRequest, Limits, Outcome,
    DEFAULT_MAX_TIMEOUT_MS,
};
use serde_json::Value;
use shared::outbound::{self, Timeouts};
use shared::ratelimit::Subject;
use shared::spin::{read_body, require_user, required_variable, serve, variable, Incoming, Reply, RlsTransaction};
use shared::{limiter, signing, ApiError};
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::pg4::ParameterValue;
use std::time::Duration;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    serve(req, out, route).await
}

async fn route(incoming: &Incoming, req: IncomingRequest) -> Result<Reply, ApiError> {
    if !incoming.segments().is_empty() {
        return Err(ApiError::not_found("route"));
    }
    if incoming.method != Method::Post {
        return Err(ApiError::method_not_allowed("POST, OPTIONS"));
    }
    let (user_id, principal) = require_user(incoming)?;
    let verdict = limiter::enforce("code", &Subject::user(&user_id), 1)?;
    let limits = Limits::from_variables(variable);
    let body = read_body(req, incoming.content_length, limits.max_body_bytes()).await?;
    let request = parse(&body, &limits)?;
    let sandbox_body = serde_json::to_vec(&request.to_sandbox()).map_err(|e| ApiError::internal(e.to_string()))?;
    let outcome = call_sandbox(&sandbox_body, request.timeout_ms, incoming.request_id.as_deref()).await?;
    let id = record(&principal, &user_id, &request, &outcome)?;
    let mut response = Reply::json(200, &Answer { id, language: request.language, outcome: &outcome });
    response.headers.extend(verdict.map(|v| v.headers()).unwrap_or_default());
    Ok(response)
}

/// POSTs the signed body to `<sandbox_url>/v1/execute`; the sandbox's own 4xx and 503 answers
/// reach the caller as they are.
async fn call_sandbox(body: &[u8], timeout_ms: Option<u64>, request_id: Option<&str>) -> Result<Outcome, ApiError> {
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
    // The sandbox may queue the execution, then runs it up to its deadline.
    let deadline = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_MAX_TIMEOUT_MS)) + Duration::from_secs(60);
    let timeouts =
        Timeouts { connect: Duration::from_secs(5), first_byte: deadline, between_bytes: Duration::from_secs(30) };
    let url = format!("{}/v1/execute", base.trim_end_matches('/'));
    let mut response = outbound::post(&url, &headers, body, timeouts).await.map_err(|e| match e {
        outbound::SendError::Timeout(_) => sandbox_unavailable("timed out"),
        outbound::SendError::Denied(_) => {
            ApiError::internal("server misconfigured: sandbox_url is not an allowed outbound host")
        }
        _ => sandbox_unavailable("unreachable"),
    })?;
    let status = response.status;
    let bytes = response.read_to_end(64 << 20).await.map_err(|_| sandbox_unavailable("answer cut short"))?;
    if status == 200 {
        return serde_json::from_slice(&bytes).map_err(|_| sandbox_unavailable("unreadable answer"));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| sandbox_unavailable("unreadable answer"))?;
    match status {
        401 => Err(ApiError::internal(format!(
            "server misconfigured: the sandbox refused our signature (check sandbox_secret): {}",
            value["error"]["message"]
        ))),
        400 | 413 | 503 => Err(passthrough(status, &value)),
        _ => Err(sandbox_unavailable(&format!("status {status}"))),
    }
}

/// Inserts the `code_executions` row as the caller (RLS checks it is theirs).
fn record(
    principal: &shared::auth::Principal,
    user_id: &str,
    request: &CodeExecutionRequest,
    outcome: &Outcome,
) -> Result<String, ApiError> {
    let mut tx = RlsTransaction::begin(principal)?;
    if let Some(c) = &request.conversation_id {
        // A foreign key does not see RLS: check the conversation is the caller's.
        if !tx.exists("select count(*) from public.conversations where id = $1", &[ParameterValue::Uuid(c.clone())])? {
            return Err(ApiError::not_found("conversation"));
        }
    }
    let conversation = request.conversation_id.clone().map_or(ParameterValue::DbNull, ParameterValue::Uuid);
    let exit_code = outcome.exit_code.map_or(ParameterValue::DbNull, ParameterValue::Int32);
    let id = tx
        .query_json(
            "insert into public.code_executions (user_id, conversation_id, language, code, status, exit_code, \
             stdout_bytes, stderr_bytes, duration_ms) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning to_json(id)::text",
            &[
                ParameterValue::Uuid(user_id.to_owned()),
                conversation,
                ParameterValue::Str(request.language.as_str().to_owned()),
                ParameterValue::Str(request.code.clone()),
                ParameterValue::Str(outcome.status.as_str().to_owned()),
                exit_code,
                ParameterValue::Int32(clamp(outcome.stdout_bytes)),
                ParameterValue::Int32(clamp(outcome.stderr_bytes)),
                ParameterValue::Int32(outcome.duration_ms.round() as i32),
            ],
        )?
        .ok_or_else(|| ApiError::internal("insert returned no id"))?;
    tx.commit()?;
    serde_json::from_str(&id).map_err(|_| ApiError::internal("bad id JSON"))
}
