//! The one JSON error envelope every function answers with.

use serde::Serialize;
use std::fmt;

/// Declares [`ErrorCode`] from one list: variant, wire name, meaning.
macro_rules! error_codes {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// The closed set of codes a client can branch on (`error.code` of the envelope). A new
        /// failure gets a variant here, never an ad-hoc string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, for documentation and exhaustive tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire name (snake_case).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// What the code means and its HTTP status, for the OpenAPI document.
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $doc,)*
                }
            }
        }
    };
}

error_codes! {
    AuthKeysUnavailable => "auth_keys_unavailable", "503: the JWKS that verifies tokens could not be fetched.";
    BadRequest => "bad_request", "400: the host could not read the request at all (malformed HTTP).";
    BodyReadFailed => "body_read_failed", "400: the request body could not be read to its end.";
    BudgetExceeded => "budget_exceeded", "429: today's spend budget is used up.";
    BudgetUnavailable => "budget_unavailable", "503: the spend budget could not be checked.";
    Conflict => "conflict", "409: the change collides with existing data.";
    DatabaseUnavailable => "database_unavailable", "503: Postgres is unreachable or refused the connection.";
    DocumentUnreadable => "document_unreadable", "422: the file's text could not be extracted (`processing_error` says why); upload it again.";
    EmptyFile => "empty_file", "400: an upload without bytes.";
    FeatureUnavailable => "feature_unavailable", "503: the server lacks what the route needs (document search without pgvector).";
    Forbidden => "forbidden", "403: authenticated, but not allowed to do this.";
    InternalError => "internal_error", "500: a defect on our side; the request id is in the log.";
    InvalidCursor => "invalid_cursor", "400: a pagination cursor that is not one of ours.";
    InvalidJson => "invalid_json", "400: the body is not JSON.";
    InvalidLimit => "invalid_limit", "400: a page size out of range.";
    InvalidMultipart => "invalid_multipart", "400: a multipart body that does not parse.";
    InvalidRequest => "invalid_request", "400: the sandbox service refused a request it cannot run.";
    LanguageUnavailable => "language_unavailable", "503: the sandbox has no runtime for the language (not installed or failed to load).";
    LengthRequired => "length_required", "411: a body without Content-Length where one is required.";
    MethodNotAllowed => "method_not_allowed", "405: the route exists; the method does not (see `Allow`).";
    ModelNotPriced => "model_not_priced", "400: a USD budget is on and the model has no price.";
    ModelRequired => "model_required", "400: no model named and no default configured.";
    NotFound => "not_found", "404: absent, or not the caller's.";
    NotSupported => "not_supported", "400: the provider chosen has no such API (Anthropic has no embeddings).";
    PayloadTooLarge => "payload_too_large", "413: the body (or a field of it) is over its cap.";
    ProviderAuthFailed => "provider_auth_failed", "502: the provider refused our API key.";
    ProviderError => "provider_error", "502: the provider failed or answered something unusable.";
    ProviderNotConfigured => "provider_not_configured", "503: the provider has no key or base URL configured.";
    ProviderRateLimited => "provider_rate_limited", "429: the provider is rate-limiting us.";
    ProviderRejectedRequest => "provider_rejected_request", "502: the provider refused the request as invalid.";
    ProviderTimeout => "provider_timeout", "504: the provider did not answer in time.";
    ProviderUnreachable => "provider_unreachable", "502: the provider could not be connected to.";
    RateLimited => "rate_limited", "429: a rate-limit policy refused the request.";
    RateLimiterUnavailable => "rate_limiter_unavailable", "503: the limiter's store is unreachable (fail closed).";
    RequestTimeout => "request_timeout", "504: the function ran past the host's request deadline.";
    RouteNotFound => "route_not_found", "404: no route of the manifest matches the path.";
    SandboxBusy => "sandbox_busy", "503: every sandbox slot is busy and its queue is full.";
    SandboxUnavailable => "sandbox_unavailable", "503: the sandbox service is unreachable or answered nonsense.";
    StorageUnavailable => "storage_unavailable", "503: the object store is unreachable.";
    TooManyFiles => "too_many_files", "400: more files in one upload than allowed.";
    Unauthorized => "unauthorized", "401: no usable credentials.";
    UnsupportedMediaType => "unsupported_media_type", "415: a content type the route does not take.";
    ValidationFailed => "validation_failed", "400: the body parsed but a field is wrong (`field` names it).";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error a client sees: an HTTP status plus `{"error": {"code", "message", ...}}`.
///
/// Every function maps its failures into this so that clients parse one shape everywhere.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status code of the response.
    pub status: u16,
    /// Stable code clients can branch on.
    pub code: ErrorCode,
    /// Sentence for a human.
    pub message: String,
    /// Extra machine-readable fields merged into the `error` object (e.g. `field`, `retry_after`).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extra response headers (e.g. `Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(String, String)>,
    /// What happened, for the log only: internal and database details never reach the client,
    /// who gets the request id to quote instead.
    pub log: Option<Box<str>>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(flatten)]
    details: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    /// Any status and code; prefer the named constructors below.
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, headers: Vec::new(), log: None }
    }

    /// 400: the request is malformed or fails validation.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 400 for a JSON body serde refused: `invalid_json` when it is not JSON at all,
    /// `validation_failed` when it is JSON of the wrong shape (serde's message says where).
    pub fn invalid_body(e: &serde_json::Error) -> Self {
        let code = if e.is_data() { ErrorCode::ValidationFailed } else { ErrorCode::InvalidJson };
        Self::bad_request(code, format!("request body: {e}"))
    }

    /// 401: no usable credentials. Carries `WWW-Authenticate` as RFC 6750 asks.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let message = message.into();
        let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", message.replace('"', "'"));
        Self::new(401, ErrorCode::Unauthorized, message).with_header("www-authenticate", challenge)
    }

    /// 404: absent, or not visible to this caller (never leak which).
    pub fn not_found(what: &str) -> Self {
        Self::new(404, ErrorCode::NotFound, format!("{what} not found"))
    }

    /// 405 with the `Allow` header.
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(405, ErrorCode::MethodNotAllowed, format!("method not allowed; allowed: {allow}"))
            .with_header("allow", allow)
    }

    /// 413: body larger than the route accepts.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, ErrorCode::PayloadTooLarge, format!("request body exceeds {limit} bytes"))
            .with_detail("limit_bytes", limit)
    }

    /// 500: a defect on our side. `detail` goes to the log with the request id; the client sees
    /// only that something failed and the id to quote.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, ErrorCode::InternalError, "internal error; quote the request_id when reporting it")
            .logged(detail)
    }

    /// Keeps `detail` for the log line of this error (never sent).
    pub fn logged(mut self, detail: impl Into<String>) -> Self {
        self.log = Some(detail.into().into_boxed_str());
        self
    }

    /// 503: a dependency (database, provider, sandbox) is unavailable; retrying later can work.
    /// Always carries `Retry-After` (1 s; [`ApiError::with_header`] sets another), so clients
    /// and SDKs back off instead of hammering.
    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(503, code, message).with_header("retry-after", "1")
    }

    /// Adds one machine-readable field to the `error` object.
    pub fn with_detail(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.details.get_or_insert_with(Default::default).insert(key.to_owned(), value);
        self
    }

    /// Sets one response header (replacing one of the same name).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The serialized envelope.
    pub fn body(&self) -> Vec<u8> {
        let envelope =
            Envelope { error: Body { code: self.code, message: &self.message, details: self.details.as_ref() } };
        // Serializing a struct of strings and JSON values cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_code_message_and_details() {
        let err = ApiError::bad_request(ErrorCode::ValidationFailed, "title too long").with_detail("field", "title");
        let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(v["error"]["code"], "validation_failed");
        assert_eq!(v["error"]["message"], "title too long");
        assert_eq!(v["error"]["field"], "title");
        assert_eq!(err.status, 400);
    }

    #[test]
    fn internal_details_stay_out_of_the_body() {
        let err = ApiError::internal("connection to 10.0.0.5:5432 refused; password for user x");
        let body = String::from_utf8(err.body()).unwrap();
        assert!(!body.contains("10.0.0.5") && !body.contains("password"), "{body}");
        assert_eq!(err.log.as_deref(), Some("connection to 10.0.0.5:5432 refused; password for user x"));
        assert_eq!((err.status, err.code.as_str()), (500, "internal_error"));
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let err = ApiError::unauthorized("token \"expired\"");
        let (name, value) = &err.headers[0];
        assert_eq!(name, "www-authenticate");
        assert!(value.starts_with("Bearer error=\"invalid_token\""));
        assert!(!value.contains("\"expired\""), "quotes in the message must not break the header");
    }

    #[test]
    fn codes_are_unique_snake_case_and_every_503_says_when_to_retry() {
        let names: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "two codes share a wire name");
        for name in names {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        }
        let busy = ApiError::unavailable(ErrorCode::SandboxBusy, "busy");
        assert_eq!(busy.headers, vec![("retry-after".to_owned(), "1".to_owned())]);
        let later = busy.with_header("Retry-After", "5");
        assert_eq!(later.headers, vec![("Retry-After".to_owned(), "5".to_owned())]);
    }
}
