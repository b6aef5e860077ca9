//! How a provider call fails, and what the client is told: the closed mapping from upstream
//! statuses and transport errors to the error envelope, and the scrubbing of anything that looks
//! like a key from the provider's words before a client, a log or a row sees them.

use crate::providers::Provider;
use serde_json::{json, Value};
use shared::ApiError;
use shared::ErrorCode;
use std::time::Duration;

/// Why a provider call failed before a usable response arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum CallFailure {
    /// The upstream answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// Its error, parsed from the body when possible.
        message: String,
        /// Retry-After, when sent.
        retry_after: Option<Duration>,
    },
    /// No connection (refused, DNS, TLS).
    Connect(String),
    /// Connect or first byte took too long, or the total deadline passed.
    Timeout(String),
    /// The host refused the outbound request (not in `allowed_outbound_hosts`).
    Denied(String),
    /// Anything else.
    Other(String),
}

impl CallFailure {
    /// Worth another attempt (same or fallback provider).
    pub fn retryable(&self) -> bool {
        match self {
            CallFailure::Status { status, .. } => crate::retry::is_retryable_status(*status),
            CallFailure::Connect(_) | CallFailure::Timeout(_) => true,
            CallFailure::Denied(_) | CallFailure::Other(_) => false,
        }
    }

    /// The `api_usage.status` of an attempt that failed this way.
    pub fn usage_status(&self) -> String {
        match self {
            CallFailure::Status { status, .. } => format!("http_{status}"),
            CallFailure::Connect(_) => "connect_error".into(),
            CallFailure::Timeout(_) => "timeout".into(),
            CallFailure::Denied(_) => "denied".into(),
            CallFailure::Other(_) => "error".into(),
        }
    }

    /// What the client is told once no attempt is left.
    pub fn to_api_error(&self, provider: Provider) -> ApiError {
        let name = provider.name();
        let e = match self {
            CallFailure::Status { status: 429, message, retry_after } => {
                let secs = retry_after.map(|d| d.as_secs_f64().ceil() as u64).unwrap_or(1).max(1);
                ApiError::new(429, ErrorCode::ProviderRateLimited, format!("{name} is rate limiting requests: {message}"))
                    .with_header("retry-after", secs.to_string())
            }
            CallFailure::Status { status: 400 | 404 | 413 | 422, message, .. } => {
                ApiError::bad_request(ErrorCode::ProviderRejectedRequest, format!("{name} rejected the request: {message}"))
            }
            // The provider's own words would quote (part of) the key: never passed on.
            CallFailure::Status { status: 401 | 403, .. } => {
                ApiError::new(502, ErrorCode::ProviderAuthFailed, format!("{name} refused the API key"))
            }
            CallFailure::Status { status, message, .. } => {
                ApiError::new(502, ErrorCode::ProviderError, format!("{name} failed with HTTP {status}: {message}"))
            }
            CallFailure::Connect(m) => ApiError::new(502, ErrorCode::ProviderUnreachable, format!("{name} is unreachable: {m}")),
            CallFailure::Timeout(m) => ApiError::new(504, ErrorCode::ProviderTimeout, format!("{name} timed out: {m}")),
            CallFailure::Denied(m) => ApiError::internal(format!(
                "server misconfigured: outbound requests to {name} are not allowed ({m}); check the *_allowed_host variables"
            )),
            CallFailure::Other(m) => ApiError::new(502, ErrorCode::ProviderError, format!("{name}: {m}")),
        };
        let e = e.with_detail("provider", name);
        match self {
            CallFailure::Status { status, .. } => e.with_detail("upstream_status", status),
            _ => e,
        }
    }
}

/// The message of an upstream error body (any provider's shape), or its first bytes, with
/// anything that looks like a credential masked ([`redact_secrets`]).
pub fn upstream_error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| crate::providers::UpstreamError::from_body(&v))
        .map(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned());
    redact_secrets(&message)
}

/// `text` with every word that looks like an API key or a masked one replaced by
/// `[redacted]`: key prefixes (`sk-`, `sk_`, `pk-`, `rk-`, `key-`, `sess-`), runs of `*` (the
/// providers' "sk-proj-****abcd" echo), and long unbroken letter-digit runs. Provider error
/// messages quote the key they refused; neither clients nor stored rows may ever see it.
pub fn redact_secrets(text: &str) -> String {
    let looks_secret = |word: &str| {
        let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '*');
        let lower = w.to_ascii_lowercase();
        let prefixed =
            ["sk-", "sk_", "pk-", "pk_", "rk-", "key-", "sess-", "sk-ant-"].iter().any(|p| lower.starts_with(p));
        let masked = w.contains("***");
        let long_mixed = w.len() >= 24
            && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && w.bytes().any(|b| b.is_ascii_digit())
            && w.bytes().any(|b| b.is_ascii_alphabetic());
        prefixed || masked || long_mixed
    };
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if looks_secret(word) {
            out.push_str("[redacted]");
            // Keep the sentence's punctuation.
            if let Some(p) = word.chars().last().filter(|c| matches!(c, '.' | ',' | ';' | ')')) {
                out.push(p);
            }
        } else {
            out.push_str(word);
        }
    }
    out
}

/// The OpenAI-shaped error event sent inside a stream that fails after it began.
pub fn stream_error_event(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_clear_statuses() {
        let rl = CallFailure::Status {
            status: 429,
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(1500)),
        };
        let e = rl.to_api_error(Provider::OPENAI);
        assert_eq!((e.status, e.code.as_str()), (429, "provider_rate_limited"));
        assert!(e.headers.contains(&("retry-after".to_owned(), "2".to_owned())));
        assert!(rl.retryable());
        let e = CallFailure::Status { status: 500, message: "boom".into(), retry_after: None }
            .to_api_error(Provider::MISTRAL);
        assert_eq!((e.status, e.code.as_str()), (502, "provider_error"));
        assert_eq!(CallFailure::Timeout("x".into()).to_api_error(Provider::OPENAI).status, 504);
        assert!(!CallFailure::Status { status: 400, message: String::new(), retry_after: None }.retryable());
        assert_eq!(
            upstream_error_message(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            "Overloaded"
        );
    }

    #[test]
    fn key_fragments_never_survive_an_error_message() {
        let openai = br#"{"error":{"message":"Incorrect API key provided: sk-proj-********************abcd. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let m = upstream_error_message(openai);
        assert!(!m.contains("abcd") && !m.contains("sk-proj"), "{m}");
        assert!(m.starts_with("Incorrect API key provided: [redacted]."), "{m}");
        let raw = redact_secrets("key sk-ant-api03-AbCdEf123456 rejected; token 8f3a9c1b2d4e5f60718293a4b5c6d7e8 bad");
        assert!(!raw.contains("AbCdEf") && !raw.contains("8f3a9c1b"), "{raw}");
        assert_eq!(redact_secrets("The model `gpt-4o` does not exist"), "The model `gpt-4o` does not exist");
        // A 401's message is never passed on at all.
        let e = CallFailure::Status {
            status: 401,
            message: "Incorrect API key provided: sk-...abcd".into(),
            retry_after: None,
        }
        .to_api_error(Provider::OPENAI);
        assert_eq!(
            (e.status, e.code.as_str(), e.message.as_str()),
            (502, "provider_auth_failed", "openai refused the API key")
        );
    }
}
