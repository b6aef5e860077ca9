//! `/functions/v1/rate-limit`.
//!
//! - `GET`: the caller's policies and where they stand, and today's spend budget, without
//!   consuming anything.
//! - `POST` (service role only): check and consume a named limit for a trusted backend,
//!   `{"key": "...", "limit": "10/min:2", "cost": 1}` -> 200 or 429 with the same headers the
//!   functions send.

use serde::Deserialize;
use serde_json::{json, Value};
use shared::auth::bearer_token;
use shared::limiter;
use shared::ratelimit::{ceil_secs, Limit, Subject, Verdict, DEFAULT_POLICIES};
use shared::spin::{auth_config, json as json_response, require_user, serve, Incoming};
use shared::ApiError;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

/// Longest key a backend may name.
const MAX_KEY_CHARS: usize = 200;

#[http_component]
fn handle(req: Request) -> Response {
    serve(req, route)
}

fn route(incoming: &Incoming) -> Result<Response, ApiError> {
    if !incoming.segments().is_empty() {
        return Err(ApiError::not_found("route"));
    }
    match incoming.method {
        Method::Get => show(incoming),
        Method::Post => consume(incoming),
        _ => Err(ApiError::method_not_allowed("GET, POST, OPTIONS")),
    }
}

fn describe(v: &Verdict) -> Value {
    json!({
        "policy": v.policy,
        "rate": v.limit.rate,
        "window_seconds": v.limit.window_secs(),
        "burst": v.limit.burst,
        "remaining": v.remaining,
        "reset_seconds": ceil_secs(v.reset_after_ns),
    })
}

fn show(incoming: &Incoming) -> Result<Response, ApiError> {
    let (user_id, principal) = require_user(incoming)?;
    let subject = Subject::user(&user_id);
    let mut limits = Vec::new();
    for (name, _) in DEFAULT_POLICIES {
        // The policies that key on the user; chat_byok keys on a provider key, so only its
        // configuration is shown.
        let applies = match *name {
            "chat" => !principal.is_anonymous,
            "chat_anonymous" => principal.is_anonymous,
            "chat_byok" => false,
            _ => true,
        };
        if applies {
            limits.push(describe(&limiter::peek(name, &subject)?));
        } else {
            let limit = limiter::policy_limit(name)?;
            limits.push(json!({"policy": name, "rate": limit.rate, "window_seconds": limit.window_secs(), "burst": limit.burst}));
        }
    }
    let budget = match shared::budget::caps()? {
        Some(_) => shared::budget::status(&user_id)?,
        None => Value::Null,
    };
    Ok(json_response(
        200,
        &json!({"user_id": user_id, "anonymous": principal.is_anonymous, "limits": limits, "budget": budget}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    key: String,
    limit: String,
    #[serde(default = "one")]
    cost: u64,
}

fn one() -> u64 {
    1
}

fn consume(incoming: &Incoming) -> Result<Response, ApiError> {
    let principal = auth_config()?.verify(bearer_token(incoming.authorization.as_deref())?)?;
    if principal.role != "service_role" {
        return Err(ApiError::new(403, "forbidden", "checking named limits needs the service role key"));
    }
    let body: CheckRequest = incoming.json()?;
    if body.key.trim().is_empty() || body.key.chars().count() > MAX_KEY_CHARS || body.key.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "validation_failed",
            format!("key must be 1 to {MAX_KEY_CHARS} printable characters"),
        ));
    }
    let limit = Limit::parse(&body.limit).map_err(|e| ApiError::bad_request("validation_failed", e))?;
    if body.cost > 1000 {
        return Err(ApiError::bad_request("validation_failed", "cost must be at most 1000"));
    }
    let verdict = limiter::check("custom", limit, &format!("custom:{}", body.key), body.cost).map_err(|_| {
        ApiError::unavailable("rate_limiter_unavailable", "the rate limiter is unavailable")
            .with_header("retry-after", "1")
    })?;
    if !verdict.allowed {
        return Err(verdict.rejection());
    }
    let mut response = json_response(200, &json!({"allowed": true, "limit": describe(&verdict)}));
    for (n, v) in verdict.headers() {
        response.set_header(n, v);
    }
    Ok(response)
}
