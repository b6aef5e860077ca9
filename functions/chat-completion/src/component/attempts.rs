//! The attempt loop: each target in turn (the primary, then the fallbacks), each with retries,
//! backoff and the server's Retry-After, all inside the call's total deadline, until one answers
//! 2xx.

use super::call::Call;
use super::{Target, MAX_ERROR_BODY};
use crate::context::openai_body;
use crate::failure::{upstream_error_message, CallFailure};
use crate::plan::Resilience;
use crate::providers::{self, Provider};
use crate::request::ChatRequest;
use serde_json::Value;
use shared::outbound::{self, SendError};

/// One target's request, serialized once and reused by every attempt (and the budget bound).
pub(crate) struct Upstream {
    pub(crate) url: String,
    /// The API key is among these: never logged.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
}

/// The upstream request for `target`.
pub(crate) fn upstream_for(request: &ChatRequest, target: &Target, messages: &[Value]) -> Upstream {
    let body = openai_body(request, &target.model, messages.to_vec());
    let upstream = providers::upstream_request(
        target.config.provider,
        &target.config.base_url,
        &target.config.api_key,
        &body,
        request.stream,
    );
    Upstream { url: upstream.url, headers: upstream.headers, payload: upstream.body.to_string().into_bytes() }
}

/// Tries each target with retries until one answers 2xx, beginning with the attempt already
/// `started`, if any. On failure returns the provider whose failure the client should hear about.
pub(crate) async fn connect<'t>(
    call: &mut Call,
    targets: &'t [Target],
    upstreams: &[Upstream],
    resilience: &Resilience,
    mut started: Option<(u64, Result<outbound::Pending, SendError>)>,
) -> Result<(&'t Target, outbound::Response), (Provider, CallFailure)> {
    let mut last: Option<(Provider, CallFailure)> = None;
    'targets: for (target, upstream) in targets.iter().zip(upstreams) {
        for attempt in 0..resilience.retry.max_attempts {
            let remaining = call.remaining();
            if remaining.is_zero() {
                last = Some((target.config.provider, CallFailure::Timeout("the total deadline passed".into())));
                break 'targets;
            }
            let (attempt_start, sent) = match started.take() {
                Some((at, Ok(pending))) => (at, pending.response().await),
                Some((at, Err(e))) => (at, Err(e)),
                None => {
                    let at = outbound::now_ns();
                    (
                        at,
                        outbound::post(&upstream.url, &upstream.headers, &upstream.payload, call.timeouts(resilience))
                            .await,
                    )
                }
            };
            let failure = match sent {
                Ok(response) if (200..300).contains(&response.status) => return Ok((target, response)),
                Ok(mut response) => {
                    let body = response.read_to_end(MAX_ERROR_BODY).await.unwrap_or_default();
                    let retry_after = crate::retry::parse_retry_after(
                        response.header("retry-after"),
                        response.header("retry-after-ms"),
                    );
                    CallFailure::Status { status: response.status, message: upstream_error_message(&body), retry_after }
                }
                Err(SendError::Connect(m)) => CallFailure::Connect(m),
                Err(SendError::Timeout(m)) => CallFailure::Timeout(m),
                Err(SendError::Denied(m)) => CallFailure::Denied(m),
                Err(SendError::Other(m)) => CallFailure::Other(m),
            };
            call.record_failure(target, attempt_start, &failure);
            eprintln!(
                "chat-completion: {} attempt {} failed: {}",
                target.config.provider.name(),
                attempt + 1,
                failure.usage_status()
            );
            let retryable = failure.retryable();
            let retry_after = match &failure {
                CallFailure::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            last = Some((target.config.provider, failure));
            if !retryable {
                break 'targets;
            }
            if !resilience.retry.should_retry(attempt) {
                continue 'targets;
            }
            let wait = resilience.retry.delay(attempt, retry_after, outbound::random_unit());
            if wait >= call.remaining() {
                // The server asks for longer than we have: the next provider, if any, instead.
                continue 'targets;
            }
            outbound::sleep(wait).await;
        }
    }
    Err(last.unwrap_or((
        targets.first().map(|t| t.config.provider).unwrap_or(Provider::OPENAI),
        CallFailure::Other("no provider to call".into()),
    )))
}
