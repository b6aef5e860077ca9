//! Execution limits: what a request may ask for, the operator's defaults and ceilings, and the
//! resolved values one execution runs under.

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// Per-request limits; each absent field takes the policy default, each present one must lie
/// within the policy ceiling.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Wall-clock deadline in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Wasm fuel (roughly, wasm instructions).
    pub fuel: Option<u64>,
    /// Linear memory cap in bytes.
    pub memory_bytes: Option<u64>,
    /// Cap per output stream in bytes.
    pub output_bytes: Option<u64>,
}

/// The limits one execution runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline in milliseconds.
    pub timeout_ms: u64,
    /// Wasm fuel.
    pub fuel: u64,
    /// Linear memory cap in bytes.
    pub memory_bytes: u64,
    /// Cap per output stream in bytes.
    pub output_bytes: u64,
    /// Bytes of disk the scratch folder may hold (the operator's, not the request's).
    pub scratch_bytes: u64,
}

/// The operator's policy: defaults, ceilings, sizes and concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// Limits used when a request names none.
    pub default_timeout_ms: u64,
    /// Ceiling on a requested deadline.
    pub max_timeout_ms: u64,
    /// Fuel when a request names none.
    pub default_fuel: u64,
    /// Ceiling on requested fuel.
    pub max_fuel: u64,
    /// Memory cap when a request names none.
    pub default_memory_bytes: u64,
    /// Ceiling on a requested memory cap; also sizes the pooling allocator's slots.
    pub max_memory_bytes: u64,
    /// Output cap per stream when a request names none.
    pub default_output_bytes: u64,
    /// Ceiling on a requested output cap.
    pub max_output_bytes: u64,
    /// Largest accepted source, refused before instantiating.
    pub max_code_bytes: usize,
    /// Largest accepted stdin, refused before instantiating.
    pub max_stdin_bytes: usize,
    /// Executions running at once.
    pub max_concurrent: usize,
    /// Executions waiting for a slot before new ones are refused as busy.
    pub max_queued: usize,
    /// Files taken from `/out`.
    pub max_artifacts: usize,
    /// Total bytes taken from `/out`.
    pub max_artifact_bytes: usize,
    /// A session idle this long is ended.
    pub session_idle_ms: u64,
    /// Live sessions one owner may hold.
    pub max_sessions_per_owner: usize,
    /// Linear memory all sessions together may hold; past it the least recently used end.
    pub session_memory_budget: usize,
    /// Input files mounted under `/data` in one execution.
    pub max_input_files: usize,
    /// Their total size.
    pub max_input_bytes: usize,
    /// Disk an execution's scratch folder may hold (`/tmp`, `/out`), each file or folder counting
    /// at least 32 KiB; checked every 25 ms while the guest runs, so a fast writer may overshoot
    /// by what it writes in that time.
    pub max_scratch_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Policy {
            default_timeout_ms: 10_000,
            max_timeout_ms: 60_000,
            default_fuel: 20_000_000_000,
            max_fuel: 200_000_000_000,
            default_memory_bytes: 512 << 20,
            max_memory_bytes: 2 << 30,
            default_output_bytes: 1 << 20,
            max_output_bytes: 8 << 20,
            max_code_bytes: 1 << 20,
            max_stdin_bytes: 1 << 20,
            max_concurrent: cores,
            max_queued: 64,
            max_artifacts: 16,
            max_artifact_bytes: 16 << 20,
            max_scratch_bytes: 256 << 20,
            max_input_files: 16,
            session_idle_ms: 20 * 60 * 1000,
            max_sessions_per_owner: 4,
            session_memory_budget: 4 << 30,
            max_input_bytes: 32 << 20,
        }
    }
}

impl Policy {
    /// Input files within count and size, each with a safe, distinct name.
    pub fn check_files(&self, files: &[wire::InputFile]) -> Result<(), SandboxError> {
        if files.len() > self.max_input_files {
            return Err(SandboxError::TooLarge(format!(
                "{} input files; the limit is {}",
                files.len(),
                self.max_input_files
            )));
        }
        let total = files.iter().map(|f| f.data.len()).fold(0usize, usize::saturating_add);
        if total > self.max_input_bytes {
            return Err(SandboxError::TooLarge(format!(
                "input files are {total} bytes; the limit is {}",
                self.max_input_bytes
            )));
        }
        let mut names = std::collections::HashSet::new();
        for file in files {
            if !wire::is_safe_file_name(&file.name) {
                return Err(SandboxError::Invalid(format!(
                    "input file name {:?} must be one path component of letters, digits, '.', '_' and '-'",
                    file.name
                )));
            }
            if !names.insert(file.name.as_str()) {
                return Err(SandboxError::Invalid(format!("input file name {:?} is given twice", file.name)));
            }
        }
        Ok(())
    }

    /// The largest `POST /v1/execute` body a valid request can have: code and stdin with JSON
    /// escaping (up to 6 bytes per byte), input files as base64 (4 per 3) with their names.
    pub fn max_request_bytes(&self) -> usize {
        let text = self.max_code_bytes.saturating_add(self.max_stdin_bytes).saturating_mul(6);
        let files = (self.max_input_bytes / 3 + 1)
            .saturating_mul(4)
            .saturating_add(self.max_input_files.saturating_mul(wire::MAX_FILE_NAME_LEN + 64));
        text.saturating_add(files).saturating_add(4096)
    }

    /// The limits for one request, or why the request asks for too much.
    pub fn resolve(&self, request: &LimitsRequest) -> Result<Limits, SandboxError> {
        let pick = |name: &str, asked: Option<u64>, default: u64, max: u64| match asked {
            None => Ok(default),
            Some(0) => Err(SandboxError::Invalid(format!("{name} must be positive"))),
            Some(v) if v > max => Err(SandboxError::Invalid(format!("{name} is {v}; the most allowed is {max}"))),
            Some(v) => Ok(v),
        };
        Ok(Limits {
            timeout_ms: pick("timeout_ms", request.timeout_ms, self.default_timeout_ms, self.max_timeout_ms)?,
            fuel: pick("fuel", request.fuel, self.default_fuel, self.max_fuel)?,
            memory_bytes: pick("memory_bytes", request.memory_bytes, self.default_memory_bytes, self.max_memory_bytes)?,
            output_bytes: pick("output_bytes", request.output_bytes, self.default_output_bytes, self.max_output_bytes)?,
            scratch_bytes: self.max_scratch_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_limits_take_defaults_and_excess_is_refused() {
        let policy = Policy::default();
        let limits = policy.resolve(&LimitsRequest::default()).expect("defaults resolve");
        assert_eq!(limits.timeout_ms, policy.default_timeout_ms);
        assert_eq!(limits.memory_bytes, policy.default_memory_bytes);
        let asked = LimitsRequest { timeout_ms: Some(250), ..Default::default() };
        assert_eq!(policy.resolve(&asked).expect("in range").timeout_ms, 250);
        let too_long = LimitsRequest { timeout_ms: Some(policy.max_timeout_ms + 1), ..Default::default() };
        assert!(matches!(policy.resolve(&too_long), Err(SandboxError::Invalid(_))));
        let zero = LimitsRequest { fuel: Some(0), ..Default::default() };
        assert!(matches!(policy.resolve(&zero), Err(SandboxError::Invalid(_))));
    }

    #[test]
    fn input_files_are_checked_for_count_size_and_names() {
        let file = |name: &str, len: usize| wire::InputFile { name: name.into(), data: vec![b'x'; len] };
        let policy = Policy { max_input_files: 2, max_input_bytes: 10, ..Policy::default() };
        assert!(policy.check_files(&[file("a.csv", 5), file("b.csv", 5)]).is_ok());
        assert!(matches!(
            policy.check_files(&[file("a", 1), file("b", 1), file("c", 1)]),
            Err(SandboxError::TooLarge(_))
        ));
        assert!(matches!(policy.check_files(&[file("a", 11)]), Err(SandboxError::TooLarge(_))));
        assert!(matches!(policy.check_files(&[file("../x", 1)]), Err(SandboxError::Invalid(_))));
        assert!(matches!(policy.check_files(&[file("a", 1), file("a", 1)]), Err(SandboxError::Invalid(_))));
        let base64_of_the_cap = policy.max_input_bytes.div_ceil(3) * 4;
        assert!(policy.max_request_bytes() > (policy.max_code_bytes + policy.max_stdin_bytes) * 6 + base64_of_the_cap);
    }
}
