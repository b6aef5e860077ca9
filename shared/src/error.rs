//! The one JSON error envelope every function answers with.

use serde::Serialize;

/// An error a client sees: an HTTP status plus `{"error": {"code", "message", ...}}`.
///
/// Every function maps its failures into this so that clients parse one shape everywhere.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status code of the response.
    pub status: u16,
    /// Stable snake_case code clients can branch on.
    pub code: &'static str,
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
    code: &'a str,
    message: &'a str,
    #[serde(flatten)]
    details: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    /// Any status and code; prefer the named constructors below.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, headers: Vec::new(), log: None }
    }

    /// 400: the request is malformed or fails validation.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 401: no usable credentials. Carries `WWW-Authenticate` as RFC 6750 asks.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let message = message.into();
        let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", message.replace('"', "'"));
        Self::new(401, "unauthorized", message).with_header("www-authenticate", challenge)
    }

    /// 404: absent, or not visible to this caller (never leak which).
    pub fn not_found(what: &str) -> Self {
        Self::new(404, "not_found", format!("{what} not found"))
    }

    /// 405 with the `Allow` header.
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(405, "method_not_allowed", format!("method not allowed; allowed: {allow}"))
            .with_header("allow", allow)
    }

    /// 413: body larger than the route accepts.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, "payload_too_large", format!("request body exceeds {limit} bytes"))
            .with_detail("limit_bytes", limit)
    }

    /// 500: a defect on our side. `detail` goes to the log with the request id; the client sees
    /// only that something failed and the id to quote.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, "internal_error", "internal error; quote the request_id when reporting it").logged(detail)
    }

    /// Keeps `detail` for the log line of this error (never sent).
    pub fn logged(mut self, detail: impl Into<String>) -> Self {
        self.log = Some(detail.into().into_boxed_str());
        self
    }

    /// 503: a dependency (database, provider, sandbox) is unavailable; retrying later can work.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    /// Adds one machine-readable field to the `error` object.
    pub fn with_detail(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.details.get_or_insert_with(Default::default).insert(key.to_owned(), value);
        self
    }

    /// Adds one response header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
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
        let err = ApiError::bad_request("validation_failed", "title too long").with_detail("field", "title");
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
        assert_eq!((err.status, err.code), (500, "internal_error"));
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let err = ApiError::unauthorized("token \"expired\"");
        let (name, value) = &err.headers[0];
        assert_eq!(name, "www-authenticate");
        assert!(value.starts_with("Bearer error=\"invalid_token\""));
        assert!(!value.contains("\"expired\""), "quotes in the message must not break the header");
    }
}
