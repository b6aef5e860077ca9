//! When and how long to wait before retrying a provider call.

use std::time::Duration;

/// The longest server-requested wait we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Retry settings of the chat path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff base: attempt n waits up to `base * 2^n`.
    pub base: Duration,
    /// Cap of one wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, base: Duration::from_millis(250), max_delay: Duration::from_secs(8) }
    }
}

/// Statuses worth another attempt: rate limited, or the upstream failing (529 is Anthropic's
/// "overloaded").
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// `Retry-After` as seconds (or `retry-after-ms`, which OpenAI also sends). HTTP-dates are not
/// honoured: providers send seconds.
pub fn parse_retry_after(retry_after: Option<&str>, retry_after_ms: Option<&str>) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    retry_after
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 0): the server's Retry-After
    /// when given, else full jitter over the exponential bound. `unit` is a random number in [0, 1).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        if let Some(ra) = retry_after {
            // Honoured as sent, up to a minute (the total deadline bounds it further).
            return ra.min(MAX_RETRY_AFTER);
        }
        let bound = self.base.saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX)).min(self.max_delay);
        bound.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Whether another attempt is allowed after `attempt` failed.
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt + 1 < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        let p = RetryPolicy::default();
        let ra = parse_retry_after(Some("2"), None);
        assert_eq!(p.delay(0, ra, 0.5), Duration::from_secs(2));
        assert_eq!(parse_retry_after(Some("1"), Some("150")), Some(Duration::from_millis(150)));
        assert_eq!(parse_retry_after(Some("soon"), None), None);
        assert_eq!(parse_retry_after(Some("-3"), None), None);
        // An absurd Retry-After is capped at a minute.
        assert_eq!(p.delay(0, Some(Duration::from_secs(3600)), 0.5), Duration::from_secs(60));
    }

    #[test]
    fn jittered_exponential_backoff_is_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, None, 0.999_999).as_millis(), 249);
        assert_eq!(p.delay(2, None, 0.5), Duration::from_millis(500));
        assert_eq!(p.delay(20, None, 1.0), p.max_delay);
        assert_eq!(p.delay(40, None, 1.0), p.max_delay, "no overflow on huge attempt numbers");
        assert!(p.should_retry(0) && p.should_retry(1) && !p.should_retry(2));
    }
}
