//! `/functions/v1/rate-limit`.
//!
//! - `GET`: the caller's policies and where they stand (one statement for all of them), and
//!   today's spend budget; the look itself counts against the caller's `api` limit.
//! - `POST` (service role only): check and consume a named limit for a trusted backend,
//!   `{"key": "...", "limit": "10/min:2", "cost": 1}` -> 200 or 429 with the same headers the
//!   functions send.

use crate::policies::{describe, keys_on_caller, Check};
use serde_json::{json, Value};
use shared::auth::bearer_token;
use shared::limiter;
use shared::ratelimit::{Subject, DEFAULT_POLICIES};
use shared::spin::{auth_config, read_body, require_user, serve, Incoming, Reply, MAX_JSON_BODY};
use shared::ApiError;
use shared::ErrorCode;
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    serve(req, out, route).await
}

async fn route(incoming: &Incoming, req: IncomingRequest) -> Result<Reply, ApiError> {
    if !incoming.segments().is_empty() {
        return Err(ApiError::not_found("route"));
    }
    match incoming.method {
        Method::Get => show(incoming),
        Method::Post => consume(incoming, req).await,
        _ => Err(ApiError::method_not_allowed("GET, POST, OPTIONS")),
    }
}

fn show(incoming: &Incoming) -> Result<Reply, ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    let subject = Subject::user(&user_id);
    // Looking counts against the caller's `api` limit like any other call.
    let verdict = limiter::enforce("api", &subject, 1)?;
    // The policies that key on the caller, read in one round trip.
    let names: Vec<&str> =
        DEFAULT_POLICIES.iter().map(|(n, _)| *n).filter(|n| keys_on_caller(n, principal.is_anonymous)).collect();
    let states = limiter::peek_many(&names, &subject)?;
    let mut limits = Vec::new();
    for (name, _) in DEFAULT_POLICIES {
        match states.iter().find(|v| v.policy == *name) {
            Some(state) => limits.push(describe(state)),
            None => {
                let limit = limiter::policy_limit(name)?;
                limits.push(json!({"policy": name, "rate": limit.rate, "window_seconds": limit.window_secs(), "burst": limit.burst}));
            }
        }
    }
    let budget = match shared::budget::caps()? {
        Some(_) => shared::budget::status(&user_id)?,
        None => Value::Null,
    };
    let mut reply = Reply::json(
        200,
        &json!({"user_id": user_id, "anonymous": principal.is_anonymous, "limits": limits, "budget": budget}),
    );
    reply.headers.extend(verdict.map(|v| v.headers()).unwrap_or_default());
    Ok(reply)
}

async fn consume(incoming: &Incoming, req: IncomingRequest) -> Result<Reply, ApiError> {
    let principal = auth_config()?.verify(bearer_token(incoming.authorization.as_deref())?)?;
    if principal.role != "service_role" {
        return Err(ApiError::new(403, ErrorCode::Forbidden, "checking named limits needs the service role key"));
    }
    let body = read_body(req, incoming.content_length, MAX_JSON_BODY).await?;
    let check = Check::parse(&body)?;
    let verdict = limiter::check("custom", check.limit, &check.bucket(), check.cost)
        .map_err(|_| ApiError::unavailable(ErrorCode::RateLimiterUnavailable, "the rate limiter is unavailable"))?;
    if !verdict.allowed {
        return Err(verdict.rejection());
    }
    let mut response = Reply::json(200, &json!({"allowed": true, "limit": describe(&verdict)}));
    response.headers.extend(verdict.headers());
    Ok(response)
}
