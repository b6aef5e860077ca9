//! The reply as one JSON body (`stream: false`): a `chat.completion` plus the `chatedge`
//! extension naming the stored rows and the cost.

use super::call::{Call, Outcome};
use super::{ms_since, now_unix, Target, MAX_COMPLETION_BODY};
use crate::failure::CallFailure;
use crate::providers::{self, Usage};
use serde_json::Value;
use shared::outbound;
use shared::ApiError;
use shared::ErrorCode;

pub(crate) async fn whole_reply(
    call: &mut Call,
    target: &Target,
    mut response: outbound::Response,
) -> Result<(Value, Usage), ApiError> {
    let provider = target.config.provider;
    let body = match response.read_to_end(MAX_COMPLETION_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let error = CallFailure::Timeout(e).to_api_error(provider);
            call.finish(Outcome::failed(provider, &target.model, &error.message));
            return Err(call.label_error(error));
        }
    };
    drop(response);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match providers::completion(provider, &parsed, now_unix()) {
        Ok((mut completion, usage)) => {
            let message = &completion["choices"][0]["message"];
            let text = message["content"].as_str().unwrap_or_default().to_owned();
            let tool_calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
            let model = completion["model"].as_str().unwrap_or(&target.model).to_owned();
            let ttft = ms_since(call.started_ns);
            let (charged, cost, estimated) = call.finish(Outcome {
                status: "complete",
                text,
                tool_calls,
                provider,
                model,
                usage: Some(usage),
                error: None,
                ttft_ms: Some(ttft),
            });
            completion["chatedge"] = call.extension(cost, estimated, provider);
            Ok((completion, charged))
        }
        Err(e) => {
            let error = ApiError::new(502, ErrorCode::ProviderError, format!("{}: {}", provider.name(), e.message))
                .with_detail("provider", provider.name());
            call.finish(Outcome::failed(provider, &target.model, &error.message));
            Err(call.label_error(error))
        }
    }
}
