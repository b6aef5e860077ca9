//! What the rate-limit function answers, in pure form: the policies that key on a caller, a
//! verdict as JSON, and the body of a backend's check.

use serde::Deserialize;
use serde_json::{json, Value};
use shared::ratelimit::{ceil_secs, Limit, Verdict};
use shared::ApiError;
use shared::ErrorCode;

/// Longest key a backend may name.
pub const MAX_KEY_CHARS: usize = 200;
/// Largest cost one check may consume.
pub const MAX_COST: u64 = 1000;

/// Whether policy `name` keys on a caller who is (or is not) an anonymous sign-in: chat is
/// per user for accounts and per address for anonymous sign-ins, and `chat_byok` keys on a
/// provider key, so only its configuration is shown.
pub fn keys_on_caller(name: &str, anonymous: bool) -> bool {
    match name {
        "chat" => !anonymous,
        "chat_anonymous" => anonymous,
        "chat_byok" => false,
        _ => true,
    }
}

/// A verdict as the GET answer and the POST answer show it.
pub fn describe(v: &Verdict) -> Value {
    json!({
        "policy": v.policy,
        "rate": v.limit.rate,
        "window_seconds": v.limit.window_secs(),
        "burst": v.limit.burst,
        "remaining": v.remaining,
        "reset_seconds": ceil_secs(v.reset_after_ns),
    })
}

/// `POST` body: `{"key": "...", "limit": "10/min:2", "cost": 1}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    key: String,
    limit: String,
    #[serde(default = "one")]
    cost: u64,
}

fn one() -> u64 {
    1
}

/// A backend's check, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The backend's own key (the bucket is `custom:<key>`).
    pub key: String,
    /// The limit to hold it to.
    pub limit: Limit,
    /// How much this call consumes.
    pub cost: u64,
}

impl Check {
    /// Parses a check body: 400 `invalid_json` / `validation_failed` naming what is wrong.
    pub fn parse(body: &[u8]) -> Result<Check, ApiError> {
        let body: CheckBody = serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(&e))?;
        if body.key.trim().is_empty()
            || body.key.chars().count() > MAX_KEY_CHARS
            || body.key.chars().any(char::is_control)
        {
            return Err(ApiError::bad_request(
                ErrorCode::ValidationFailed,
                format!("key must be 1 to {MAX_KEY_CHARS} printable characters"),
            ));
        }
        let limit = Limit::parse(&body.limit).map_err(|e| ApiError::bad_request(ErrorCode::ValidationFailed, e))?;
        if body.cost > MAX_COST {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, format!("cost must be at most {MAX_COST}")));
        }
        Ok(Check { key: body.key, limit, cost: body.cost })
    }

    /// The bucket it consumes from: never one of the functions' own policies.
    pub fn bucket(&self) -> String {
        format!("custom:{}", self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_callers_see_their_own_chat_policy_only() {
        assert!(keys_on_caller("chat", false) && !keys_on_caller("chat", true));
        assert!(keys_on_caller("chat_anonymous", true) && !keys_on_caller("chat_anonymous", false));
        assert!(!keys_on_caller("chat_byok", false) && !keys_on_caller("chat_byok", true));
        assert!(keys_on_caller("api", true) && keys_on_caller("upload", false));
    }

    #[test]
    fn checks_are_validated() {
        let c = Check::parse(br#"{"key":"tenant-1","limit":"10/min:2"}"#).unwrap();
        assert_eq!((c.cost, c.bucket().as_str()), (1, "custom:tenant-1"));
        assert_eq!(c.limit, Limit::parse("10/min:2").unwrap());
        let long = format!(r#"{{"key":"{}","limit":"1/s"}}"#, "k".repeat(MAX_KEY_CHARS + 1));
        for body in [
            &b"["[..],
            br#"{"key":"","limit":"1/s"}"#,
            br#"{"key":"a\u0007","limit":"1/s"}"#,
            long.as_bytes(),
            br#"{"key":"a","limit":"often"}"#,
            br#"{"key":"a","limit":"1/s","cost":1001}"#,
            br#"{"key":"a","limit":"1/s","extra":true}"#,
        ] {
            let e = Check::parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
        }
    }
}
