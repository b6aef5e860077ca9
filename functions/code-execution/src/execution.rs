//! The code-execution request and what the sandbox answers, in pure form: the function's
//! settings (read once, defaults here), the body parsed and checked against them, and the
//! sandbox's errors mapped onto this function's envelope.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::ApiError;
use shared::ErrorCode;

/// Largest program accepted when `code_max_bytes` is unset (the sandbox's own default).
pub const DEFAULT_MAX_CODE_BYTES: usize = 1 << 20;
/// Largest stdin accepted when `code_max_stdin_bytes` is unset.
pub const DEFAULT_MAX_STDIN_BYTES: usize = 1 << 20;
/// Longest deadline a caller may ask for when `code_max_timeout_ms` is unset.
pub const DEFAULT_MAX_TIMEOUT_MS: u64 = 60_000;
/// Total size of the uploads one execution may read when `code_max_input_bytes` is unset (the
/// sandbox's own default cap).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 32 << 20;
/// Most uploads one execution may read (the sandbox's own cap).
pub const MAX_INPUT_FILES: usize = 16;

/// The function's limits, from its variables (`var` answers `None` for unset or empty; a value
/// that does not parse keeps the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `code_max_bytes`.
    pub max_code_bytes: usize,
    /// `code_max_stdin_bytes`.
    pub max_stdin_bytes: usize,
    /// `code_max_timeout_ms`.
    pub max_timeout_ms: u64,
    /// `code_max_input_bytes`: the uploads named in `file_ids`, together.
    pub max_input_bytes: u64,
}

impl Limits {
    /// The variables these limits are read from.
    pub const VARIABLES: &'static [&'static str] =
        &["code_max_bytes", "code_max_stdin_bytes", "code_max_timeout_ms", "code_max_input_bytes"];

    /// Reads the limits.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Self {
        fn parsed<T: std::str::FromStr>(value: Option<String>, default: T) -> T {
            value.and_then(|v| v.trim().parse().ok()).unwrap_or(default)
        }
        Limits {
            max_code_bytes: parsed(var("code_max_bytes"), DEFAULT_MAX_CODE_BYTES),
            max_stdin_bytes: parsed(var("code_max_stdin_bytes"), DEFAULT_MAX_STDIN_BYTES),
            max_timeout_ms: parsed(var("code_max_timeout_ms"), DEFAULT_MAX_TIMEOUT_MS),
            max_input_bytes: parsed(var("code_max_input_bytes"), DEFAULT_MAX_INPUT_BYTES),
        }
    }

    /// The largest body worth reading: code and stdin at their caps, JSON escaping growing text
    /// up to six times, plus room for the other fields.
    pub fn max_body_bytes(&self) -> usize {
        self.max_code_bytes.saturating_add(self.max_stdin_bytes).saturating_mul(6).saturating_add(4096)
    }
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeExecutionRequest {
    /// What runs it.
    pub language: Language,
    /// The program.
    pub code: String,
    /// Its standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Its deadline, within [`Limits::max_timeout_ms`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The caller's conversation it belongs to.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The caller's uploads to read, found read-only under `/data/<name>` (Python).
    #[serde(default)]
    pub file_ids: Vec<String>,
    /// Start a session (Python): the answer's `session_id` continues it.
    #[serde(default)]
    pub session: bool,
    /// Continue a live session of the caller's.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Answer as server-sent events: output as the program writes it, the outcome last.
    #[serde(default)]
    pub stream: bool,
}

/// The request body's `language`, the sandbox's outcome: the sandbox's own wire types.
pub use wire::{Language, Outcome, Status};

impl CodeExecutionRequest {
    /// What the sandbox is asked to run (its own limits apply beyond the deadline).
    pub fn to_sandbox(&self, files: Vec<wire::InputFile>, user_id: &str) -> wire::ExecuteRequest {
        let session = (self.session || self.session_id.is_some())
            .then(|| wire::SessionRequest { owner: user_id.to_owned(), id: self.session_id.clone() });
        wire::ExecuteRequest {
            language: self.language,
            code: self.code.clone(),
            stdin: self.stdin.clone(),
            timeout_ms: self.timeout_ms,
            fuel: None,
            memory_bytes: None,
            output_bytes: None,
            files,
            session,
            stream: self.stream,
        }
    }
}

/// The answer: the sandbox's outcome with the stored row's id and the language.
#[derive(Debug, Serialize)]
pub struct Answer<'a> {
    /// The `code_executions` row.
    pub id: String,
    /// As asked.
    pub language: Language,
    /// Everything the sandbox reported (images inline as base64 too).
    #[serde(flatten)]
    pub outcome: &'a Outcome,
    /// The images kept: each a `visualizations` row with a download link.
    pub visualizations: Vec<Value>,
}

/// Parses and checks a body against `limits`: a 400 naming the field, or a 413 past a size cap.
pub fn parse(body: &[u8], limits: &Limits) -> Result<CodeExecutionRequest, ApiError> {
    let request: CodeExecutionRequest = serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(&e))?;
    validate(&request, limits)?;
    Ok(request)
}

fn validate(request: &CodeExecutionRequest, limits: &Limits) -> Result<(), ApiError> {
    let (max_code, max_stdin, max_timeout) = (limits.max_code_bytes, limits.max_stdin_bytes, limits.max_timeout_ms);
    if request.code.trim().is_empty() {
        return Err(
            ApiError::bad_request(ErrorCode::ValidationFailed, "code must not be empty").with_detail("field", "code")
        );
    }
    if request.code.len() > max_code {
        return Err(ApiError::new(413, ErrorCode::PayloadTooLarge, format!("code exceeds {max_code} bytes"))
            .with_detail("field", "code")
            .with_detail("limit_bytes", max_code));
    }
    if request.stdin.as_deref().map_or(0, str::len) > max_stdin {
        return Err(ApiError::new(413, ErrorCode::PayloadTooLarge, format!("stdin exceeds {max_stdin} bytes"))
            .with_detail("field", "stdin")
            .with_detail("limit_bytes", max_stdin));
    }
    if let Some(t) = request.timeout_ms {
        if t == 0 || t > max_timeout {
            return Err(ApiError::bad_request(
                ErrorCode::ValidationFailed,
                format!("timeout_ms must be between 1 and {max_timeout}"),
            )
            .with_detail("field", "timeout_ms"));
        }
    }
    if request.file_ids.len() > MAX_INPUT_FILES {
        return Err(ApiError::bad_request(
            ErrorCode::ValidationFailed,
            format!("file_ids names at most {MAX_INPUT_FILES} files"),
        )
        .with_detail("field", "file_ids"));
    }
    for (i, id) in request.file_ids.iter().enumerate() {
        if !shared::is_uuid(id) {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "file_ids must be UUIDs")
                .with_detail("field", "file_ids"));
        }
        if request.file_ids[..i].iter().any(|other| other.eq_ignore_ascii_case(id)) {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "file_ids names a file twice")
                .with_detail("field", "file_ids"));
        }
    }
    if !request.file_ids.is_empty() && request.language != Language::Python {
        return Err(ApiError::bad_request(
            ErrorCode::ValidationFailed,
            "file_ids: only Python can read files (the JavaScript runtime has no file API)",
        )
        .with_detail("field", "file_ids"));
    }
    let in_session = request.session || request.session_id.is_some();
    if request.session && request.session_id.is_some() {
        return Err(ApiError::bad_request(
            ErrorCode::ValidationFailed,
            "give session: true to start a session, or session_id to continue one, not both",
        )
        .with_detail("field", "session"));
    }
    if request.session_id.as_deref().is_some_and(|id| !wire::is_session_id(id)) {
        return Err(ApiError::not_found("session"));
    }
    if in_session && request.language != Language::Python {
        return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "sessions are Python only for now")
            .with_detail("field", "session"));
    }
    if in_session && request.stdin.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "stdin is not available in a session")
            .with_detail("field", "stdin"));
    }
    if let Some(c) = &request.conversation_id {
        if !shared::is_uuid(c) {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "conversation_id must be a UUID")
                .with_detail("field", "conversation_id"));
        }
    }
    Ok(())
}

/// The 503 a caller gets when the sandbox cannot be reached or answers nonsense.
pub fn sandbox_unavailable(why: &str) -> ApiError {
    ApiError::unavailable(
        ErrorCode::SandboxUnavailable,
        format!("the code sandbox is unavailable ({why}); retry shortly"),
    )
}

/// The sandbox's own 4xx / 503 envelope as this function's (its closed set of codes only).
pub fn passthrough(status: u16, value: &Value) -> ApiError {
    let error = &value["error"];
    let message = error["message"].as_str().unwrap_or("the sandbox refused the execution").to_owned();
    let code = match error["code"].as_str() {
        Some("payload_too_large") => ErrorCode::PayloadTooLarge,
        Some("sandbox_busy") => ErrorCode::SandboxBusy,
        Some("language_unavailable") => ErrorCode::LanguageUnavailable,
        Some("not_found") => ErrorCode::NotFound,
        Some("conflict") => ErrorCode::Conflict,
        _ if status == 503 => ErrorCode::SandboxUnavailable,
        _ => ErrorCode::ValidationFailed,
    };
    if status == 503 {
        ApiError::unavailable(code, message)
    } else {
        ApiError::new(status, code, message)
    }
}

/// A byte count as the `int4` column holds it.
pub fn clamp(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits::from_variables(|_| None)
    }

    #[test]
    fn the_declared_list_is_exactly_what_is_read() {
        let read = shared::variables::names_read(|var| {
            Limits::from_variables(var);
        });
        assert_eq!(read, Limits::VARIABLES.iter().map(|s| (*s).to_owned()).collect());
    }

    #[test]
    fn limits_default_here_and_bad_values_keep_the_default() {
        assert_eq!(
            limits(),
            Limits {
                max_code_bytes: DEFAULT_MAX_CODE_BYTES,
                max_stdin_bytes: DEFAULT_MAX_STDIN_BYTES,
                max_timeout_ms: DEFAULT_MAX_TIMEOUT_MS,
                max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            }
        );
        let set = Limits::from_variables(|name| match name {
            "code_max_bytes" => Some(" 100 ".into()),
            "code_max_timeout_ms" => Some("soon".into()),
            _ => None,
        });
        assert_eq!((set.max_code_bytes, set.max_timeout_ms), (100, DEFAULT_MAX_TIMEOUT_MS));
        assert_eq!(set.max_body_bytes(), (100 + DEFAULT_MAX_STDIN_BYTES) * 6 + 4096);
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = parse(br#"{"language":"python","code":"print(1)","timeout_ms":500}"#, &limits()).unwrap();
        assert_eq!((ok.language, ok.timeout_ms), (Language::Python, Some(500)));
        let cases: &[(&[u8], u16, &str)] = &[
            (b"{", 400, "invalid_json"),
            (br#"{"language":"cobol","code":"x"}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","extra":1}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"  "}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","timeout_ms":0}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","timeout_ms":60001}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","conversation_id":"nope"}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","file_ids":["nope"]}"#, 400, "validation_failed"),
            (br#"{"language":"javascript","code":"x","session":true}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","session":true,"stdin":"a"}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","session":true,"session_id":"abcdefgh-abcdefghijklmnopqrstuvwx"}"#, 400, "validation_failed"),
            (br#"{"language":"python","code":"x","session_id":"../etc"}"#, 404, "not_found"),
            (br#"{"language":"javascript","code":"x","file_ids":["6f1c1e0e-8c3a-4d7e-9a57-0d6b5c0f3a11"]}"#, 400, "validation_failed"),
            (
                br#"{"language":"python","code":"x","file_ids":["6f1c1e0e-8c3a-4d7e-9a57-0d6b5c0f3a11","6F1C1E0E-8C3A-4D7E-9A57-0D6B5C0F3A11"]}"#,
                400,
                "validation_failed",
            ),
        ];
        for (body, status, code) in cases {
            let e = parse(body, &limits()).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (*status, *code), "{}", String::from_utf8_lossy(body));
        }
        let small = Limits { max_code_bytes: 4, max_stdin_bytes: 2, ..limits() };
        let many: Vec<String> =
            (0..=MAX_INPUT_FILES).map(|i| format!("6f1c1e0e-8c3a-4d7e-9a57-0d6b5c0f3a{i:02}")).collect();
        let body = serde_json::json!({"language": "python", "code": "1", "file_ids": many}).to_string();
        assert_eq!(parse(body.as_bytes(), &limits()).unwrap_err().status, 400);
        let two = r#"{"language":"python","code":"1","file_ids":["6f1c1e0e-8c3a-4d7e-9a57-0d6b5c0f3a11","6f1c1e0e-8c3a-4d7e-9a57-0d6b5c0f3a12"]}"#;
        assert_eq!(parse(two.as_bytes(), &limits()).unwrap().file_ids.len(), 2);
        let e = parse(br#"{"language":"python","code":"print(1)"}"#, &small).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (413, "payload_too_large"));
        let e = parse(br#"{"language":"python","code":"1","stdin":"abc"}"#, &small).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (413, "payload_too_large"));
    }

    #[test]
    fn the_sandboxs_errors_keep_only_known_codes() {
        let busy = passthrough(503, &json!({"error": {"code": "sandbox_busy", "message": "busy"}}));
        assert_eq!((busy.status, busy.code.as_str()), (503, "sandbox_busy"));
        let odd = passthrough(503, &json!({"error": {"code": "something_internal"}}));
        assert_eq!(odd.code.as_str(), "sandbox_unavailable");
        let bad = passthrough(400, &json!({}));
        assert_eq!(
            (bad.code.as_str(), bad.message.as_str()),
            ("validation_failed", "the sandbox refused the execution")
        );
        assert_eq!(clamp(u64::MAX), i32::MAX);
    }
}
