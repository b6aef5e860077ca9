//! The per-request RLS transaction, as PostgREST runs it, in pure form.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::ErrorCode;

/// Run right after `BEGIN`: switches to the caller's role and publishes the verified claims, so that
/// RLS policies written with `auth.uid()` / `auth.jwt()` hold exactly as under PostgREST. All
/// settings are transaction-local (`is_local = true`) and vanish at commit or rollback.
pub const SET_REQUEST_CONTEXT: &str = "select set_config('role', $1, true), \
     set_config('request.jwt.claims', $2, true), \
     set_config('request.jwt.claim.sub', $3, true), \
     set_config('TimeZone', 'UTC', true)";

/// The three text parameters of [`SET_REQUEST_CONTEXT`] for a principal.
pub fn request_context_params(principal: &Principal) -> [String; 3] {
    [principal.role.clone(), principal.claims.to_string(), principal.user_id.clone().unwrap_or_default()]
}

/// A Postgres error as the host reports it, classified for the client.
#[derive(Debug, Clone, PartialEq)]
pub enum DbFailure {
    /// No connection could be made, or it broke: the database is down or unreachable.
    Unavailable(String),
    /// The server rejected a statement with this SQLSTATE.
    Sql { code: String, message: String },
    /// Anything else (bad parameter, conversion).
    Other(String),
}

/// Maps a database failure to the envelope: 503 when the database is away, 4xx for constraint
/// violations the client caused, 500 otherwise (details stay in the host log, not the response).
pub fn api_error(failure: &DbFailure) -> ApiError {
    match failure {
        DbFailure::Unavailable(_) => {
            ApiError::unavailable(ErrorCode::DatabaseUnavailable, "the database is unavailable; retry shortly")
        }
        DbFailure::Sql { code, message } => match code.as_str() {
            // RLS `with check` refusal: the row belongs to someone else or does not exist for you.
            "42501" => ApiError::not_found("resource"),
            "23505" => ApiError::new(409, ErrorCode::Conflict, "a resource with that identity already exists"),
            "23503" => ApiError::not_found("referenced resource"),
            "23514" | "22001" | "22P02" | "22003" | "22021" | "54000" => {
                ApiError::bad_request(ErrorCode::ValidationFailed, "a value is out of range, too long or malformed")
                    .logged(format!("{code}: {message}"))
            }
            // admin_shutdown, crash_shutdown, cannot_connect_now, connection_exception class
            c if c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03" => {
                api_error(&DbFailure::Unavailable(message.clone()))
            }
            _ => ApiError::internal(format!("database error {code}: {message}")),
        },
        DbFailure::Other(m) => ApiError::internal(format!("database error: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(api_error(&DbFailure::Unavailable("refused".into())).status, 503);
        let sql = |c: &str| DbFailure::Sql { code: c.into(), message: "m".into() };
        assert_eq!(api_error(&sql("42501")).status, 404);
        assert_eq!(api_error(&sql("23514")).status, 400);
        assert!(!String::from_utf8(api_error(&sql("23514")).body()).unwrap().contains("\"m\""), "no database text");
        assert_eq!(api_error(&sql("57P01")).status, 503);
        assert_eq!(api_error(&sql("XX000")).status, 500);
    }

    #[test]
    fn params_carry_role_claims_and_sub() {
        let p = Principal {
            user_id: Some("u".into()),
            role: "authenticated".into(),
            is_anonymous: false,
            claims: serde_json::json!({"sub": "u"}),
        };
        let [role, claims, sub] = request_context_params(&p);
        assert_eq!((role.as_str(), sub.as_str()), ("authenticated", "u"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&claims).unwrap()["sub"], "u");
    }
}
