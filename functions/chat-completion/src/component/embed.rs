//! `POST /v1/embeddings`: authenticate, read the capped body, parse (`crate::embeddings`), apply
//! the chat rate policy, bound the cost under a budget, call the provider with the chat path's
//! retries (`attempts::connect`), then settle: one `api_usage` row and the budget, as for a chat
//! without a conversation (`call::Call::finish`). Nothing else is stored.

use super::attempts::{connect, Upstream};
use super::call::{Call, Outcome};
use super::{admit, ms_since, Target};
use crate::embeddings::{self, MAX_REPLY_BYTES};
use crate::failure::CallFailure;
use crate::plan;
use crate::pricing::PriceTable;
use crate::providers::{self, Provider, Usage};
use crate::settings::Settings;
use serde_json::Value;
use shared::budget;
use shared::outbound;
use shared::spin::{require_user, Incoming, Responder};
use shared::{ApiError, ErrorCode};
use spin_sdk::http::IncomingRequest;

pub(super) async fn embeddings_route(
    req: IncomingRequest,
    incoming: Incoming,
    settings: &Settings,
    byo_key: Option<&str>,
    client_ip: Option<&str>,
    responder: &mut Responder,
) -> Result<(u16, Value), ApiError> {
    let (user_id, principal) = require_user(&incoming)?;
    let body = shared::spin::read_body(req, incoming.content_length, settings.max_body_bytes).await?;
    let request = embeddings::parse(&body)?;
    admit(&user_id, &principal, client_ip, byo_key, responder)?;
    let encoding = request.encoding_format;
    let done = embed(user_id, principal, settings, byo_key, None, request).await?;
    Ok((200, embeddings::answer(&done.embedded, &done.model, encoding, done.extension)))
}

/// What one embeddings call returned, settled.
pub(crate) struct Embeddings {
    /// The vectors in input order, with the usage charged.
    pub(crate) embedded: embeddings::Embedded,
    /// The model as the provider named it.
    pub(crate) model: String,
    /// The answer's `chatedge` object (cost, provider).
    pub(crate) extension: Value,
}

/// One embeddings call for `user_id`, admitted already: the provider chosen, the cost bounded
/// under a budget, the call made with the chat path's retries, and settled with one
/// `api_usage` row. The embeddings route and document retrieval (`documents`) both use it;
/// `endpoint`, when given, is the server to call instead of a provider's (`embedding_base_url`).
pub(crate) async fn embed(
    user_id: String,
    principal: shared::auth::Principal,
    settings: &Settings,
    byo_key: Option<&str>,
    endpoint: Option<plan::ProviderConfig>,
    request: embeddings::EmbeddingsRequest,
) -> Result<Embeddings, ApiError> {
    let provider = match (&endpoint, request.provider.as_deref().and_then(Provider::parse)) {
        (Some(config), _) => config.provider,
        (None, Some(p)) => p,
        (None, None) => match Provider::owning(&request.model) {
            Some(p) => p,
            None => Provider::parse(settings.default_provider.trim()).ok_or_else(|| {
                ApiError::internal(format!(
                    "server misconfigured: default_provider '{}' is unknown",
                    settings.default_provider
                ))
            })?,
        },
    };
    let config = match endpoint {
        Some(config) => config,
        None => plan::provider_config(provider, settings, byo_key)?,
    };
    let upstream =
        providers::embeddings_request(provider, &config.base_url, &config.api_key, &request).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::NotSupported,
                format!("provider '{}' has no embeddings API", provider.name()),
            )
            .with_detail("provider", provider.name())
        })?;
    let upstream =
        Upstream { url: upstream.url, headers: upstream.headers, payload: upstream.body.to_string().into_bytes() };
    let target = Target { config, model: request.model.clone() };

    let prices = PriceTable::with_overrides(settings.model_prices.as_deref())
        .map_err(|e| ApiError::internal(format!("server misconfigured: model_prices is not valid JSON: {e}")))?;
    // Under a budget the most this call can cost is reserved first: every input token at the
    // model's price (an unpriced model is refused under a USD cap).
    let bound = request.input.token_bound();
    let mut hold = None;
    if let Some(caps) = budget::caps()? {
        if caps.usd.is_some() {
            prices.require(&target.model)?;
        }
        let usd = prices.cost_usd(&target.model, Usage { prompt_tokens: bound, ..Usage::default() });
        hold = Some(budget::reserve(&user_id, caps, bound, usd)?);
    }
    let resilience = settings.resilience;
    let mut call = Call {
        user_id,
        principal,
        budget: hold,
        persisted: None,
        prices,
        started_ns: outbound::now_ns(),
        deadline_ns: outbound::now_ns().saturating_add(resilience.total_timeout.as_nanos() as u64),
        attempts: Vec::new(),
        prompt_bound: bound,
        sources: None,
        reply_text: None,
    };
    let targets = [target];
    let (target, mut response) = match connect(&mut call, &targets, &[upstream], &resilience, None).await {
        Ok(v) => v,
        Err((provider, failure)) => {
            let error = failure.to_api_error(provider);
            call.finish(Outcome::failed(provider, &targets[0].model, &error.message));
            return Err(error);
        }
    };
    let read = response.read_to_end(MAX_REPLY_BYTES).await;
    drop(response);
    let value: Value = match read {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(e) => {
            let error = CallFailure::Timeout(e).to_api_error(provider);
            call.finish(Outcome::failed(provider, &target.model, &error.message));
            return Err(error);
        }
    };
    let mut embedded = match embeddings::read_reply(&value, request.input.count()) {
        Ok(e) => e,
        Err(why) => {
            let error = ApiError::new(502, ErrorCode::ProviderError, format!("{}: {why}", provider.name()))
                .with_detail("provider", provider.name());
            // An unusable answer the provider still counted is recorded with its usage.
            let mut outcome = Outcome::failed(provider, &target.model, &error.message);
            outcome.usage = embeddings::reported_usage(&value);
            call.finish(outcome);
            return Err(error);
        }
    };
    let model = embedded.model.clone().unwrap_or_else(|| target.model.clone());
    let (charged, cost, estimated) = call.finish(Outcome {
        status: "complete",
        text: String::new(),
        tool_calls: Vec::new(),
        provider,
        model: model.clone(),
        // A server that reports no usage is charged the input's token bound (and the row says
        // the usage is estimated).
        usage: embedded.usage,
        error: None,
        ttft_ms: Some(ms_since(call.started_ns)),
    });
    // The answer reports what was charged.
    embedded.usage = Some(charged);
    let extension = call.extension(cost, estimated, provider);
    Ok(Embeddings { embedded, model, extension })
}
