//! What a provider call is charged. A call that completed is charged the usage the provider
//! reported. One that ended early (client gone, stream cut, error after some output) may have
//! reported part of its usage (Anthropic's input tokens come first) or none: what is missing is
//! charged at its upper bound, so a disconnect never undercounts a budget — the prompt at the
//! reservation's bound, the output at one token per byte received (no tokenizer makes more
//! tokens than bytes).

use crate::providers::Usage;

/// The usage to record and settle, and whether any of it is an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// Tokens charged.
    pub usage: Usage,
    /// Some of it is an upper bound, not the provider's report.
    pub estimated: bool,
}

/// The charge for a call that ended with `status` (`complete`, `incomplete` or `error`), the
/// provider's `reported` usage, `produced_bytes` of text and tool calls received (`produced_text`
/// when any of it was text) and the reservation's `prompt_bound`.
pub fn charged_usage(
    status: &str,
    reported: Option<Usage>,
    produced_bytes: usize,
    produced_text: bool,
    prompt_bound: u64,
) -> Charged {
    let produced = status != "error" || produced_text;
    let ended_early = status != "complete" && produced;
    let estimated = ended_early || (reported.is_none() && produced);
    let usage = match (reported, estimated) {
        (Some(u), false) => u,
        (reported, true) => {
            let reported = reported.unwrap_or_default();
            Usage {
                prompt_tokens: if reported.prompt_tokens > 0 { reported.prompt_tokens } else { prompt_bound },
                completion_tokens: reported.completion_tokens.max(produced_bytes as u64),
                cached_tokens: reported.cached_tokens,
                cache_write_tokens: reported.cache_write_tokens,
                reasoning_tokens: reported.reasoning_tokens,
            }
        }
        (None, false) => Usage::default(),
    };
    Charged { usage, estimated }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORTED: Usage =
        Usage { prompt_tokens: 12, completion_tokens: 3, cached_tokens: 4, cache_write_tokens: 0, reasoning_tokens: 0 };

    #[test]
    fn a_completed_call_is_charged_what_the_provider_reported() {
        assert_eq!(
            charged_usage("complete", Some(REPORTED), 10, true, 900),
            Charged { usage: REPORTED, estimated: false }
        );
    }

    #[test]
    fn a_call_cut_short_is_charged_at_least_its_upper_bounds() {
        // Nothing reported: the prompt at the reservation's bound, a token per byte received.
        let c = charged_usage("incomplete", None, 40, true, 900);
        assert_eq!(
            c,
            Charged {
                usage: Usage {
                    prompt_tokens: 900,
                    completion_tokens: 40,
                    cached_tokens: 0,
                    cache_write_tokens: 0,
                    reasoning_tokens: 0
                },
                estimated: true
            }
        );
        // Anthropic reported its input first: that is kept, the output is bounded by the bytes.
        let partial = Usage {
            prompt_tokens: 25,
            completion_tokens: 0,
            cached_tokens: 10,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        };
        let c = charged_usage("incomplete", Some(partial), 40, true, 900);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 25,
                completion_tokens: 40,
                cached_tokens: 10,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            }
        );
        // A report larger than the bytes received wins.
        let c = charged_usage("incomplete", Some(Usage { completion_tokens: 90, ..partial }), 40, true, 900);
        assert_eq!(c.usage.completion_tokens, 90);
    }

    #[test]
    fn a_completed_call_without_a_report_is_estimated() {
        let c = charged_usage("complete", None, 7, true, 50);
        assert_eq!(
            c,
            Charged {
                usage: Usage {
                    prompt_tokens: 50,
                    completion_tokens: 7,
                    cached_tokens: 0,
                    cache_write_tokens: 0,
                    reasoning_tokens: 0
                },
                estimated: true
            }
        );
    }

    #[test]
    fn a_call_that_failed_before_any_output_costs_nothing_unless_it_reported_usage() {
        assert_eq!(charged_usage("error", None, 0, false, 900), Charged { usage: Usage::default(), estimated: false });
        assert_eq!(
            charged_usage("error", Some(REPORTED), 0, false, 900),
            Charged { usage: REPORTED, estimated: false }
        );
        // An error after some text: that text was generated and is paid for.
        assert!(charged_usage("error", None, 5, true, 900).estimated);
    }
}
