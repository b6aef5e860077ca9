//! Metrics as log lines: a function reports what only it knows (a provider call's tokens and
//! cost, a rate-limit decision, a sandbox run's outcome) as one `chatedge-metric {json}` line on
//! stderr, the way AWS's embedded metric format does. The bundled host turns these lines into
//! Prometheus series on its admin listener; under Spin they are ordinary log lines, so the
//! functions need no import a Spin host lacks.

use serde::{Deserialize, Serialize};
use std::io::Write;

/// The prefix the host recognises; a line without it is a log line.
pub const PREFIX: &str = "chatedge-metric ";

/// Longest line the host parses as a metric (longer ones are logged, not counted).
pub const MAX_LINE: usize = 2048;

/// One reported fact. The host bounds the label values' length and the number of series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// One provider attempt: the call that answered, or one that failed before it.
    ProviderCall {
        provider: String,
        model: String,
        /// `ok`, `error`, `timeout`, ... as the usage row records it.
        status: String,
        /// Time to the first token, when the call produced one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttft_ms: Option<f64>,
        total_ms: f64,
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: f64,
    },
    /// One rate-limit decision.
    RateLimit { policy: String, admitted: bool },
    /// One code execution's end.
    SandboxExecution { language: String, status: String },
}

impl Event {
    /// The line as written: prefix, JSON, newline.
    pub fn line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{PREFIX}{json}\n")
    }

    /// Parses one line (without its newline); `None` when it is not a metric line.
    pub fn parse(line: &str) -> Option<Event> {
        if line.len() > MAX_LINE {
            return None;
        }
        serde_json::from_str(line.strip_prefix(PREFIX)?.trim_end()).ok()
    }
}

/// Reports `event`: one write of one whole line, so lines from concurrent writers never mix.
pub fn emit(event: &Event) {
    let _ = std::io::stderr().write_all(event.line().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips() {
        let e = Event::ProviderCall {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: "ok".into(),
            ttft_ms: Some(12.5),
            total_ms: 40.0,
            input_tokens: 10,
            output_tokens: 3,
            cost_usd: 0.0001,
        };
        let line = e.line();
        assert!(line.starts_with(PREFIX) && line.ends_with('\n'));
        assert_eq!(Event::parse(line.trim_end()), Some(e));
        let r = Event::RateLimit { policy: "chat".into(), admitted: false };
        assert_eq!(Event::parse(&r.line()), Some(r));
    }

    #[test]
    fn other_lines_are_not_metrics() {
        assert_eq!(Event::parse("chat-completion: could not persist"), None);
        assert_eq!(Event::parse("chatedge-metric {not json"), None);
        assert_eq!(Event::parse("chatedge-metric {\"kind\":\"unknown\"}"), None);
        let long =
            format!("{PREFIX}{{\"kind\":\"rate_limit\",\"policy\":\"{}\",\"admitted\":true}}", "x".repeat(MAX_LINE));
        assert_eq!(Event::parse(&long), None);
    }
}
