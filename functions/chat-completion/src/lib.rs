//! `POST /functions/v1/chat-completion`, `POST /v1/chat/completions`, `GET /v1/models`.
//!
//! parse -> authenticate -> choose provider -> persist the user message (and a pending assistant
//! row) -> call the provider with timeouts, retries and fallbacks -> stream OpenAI-format chunks
//! -> persist the assistant message and one `api_usage` row per provider call. The logic lives in
//! `shared::{chat, providers, sse, pricing, retry}`; this crate does the I/O.

mod store;

use futures::SinkExt;
use serde_json::{json, Value};
use shared::budget;
use shared::chat::{self, CallFailure, ChatRequest, Dialect, ProviderConfig, Resilience};
use shared::limiter;
use shared::outbound::{self, SendError, Timeouts};
use shared::pricing::PriceTable;
use shared::providers::{self, Provider, StreamItem, StreamTranslator, Usage};
use shared::ratelimit::Subject;
use shared::spin::{require_user, variable, Incoming, Responder};
use shared::sse;
use shared::ApiError;
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;
use std::time::Duration;
use store::{Attempt, Persisted};

/// Largest upstream error body read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest non-streaming upstream body read.
const MAX_COMPLETION_BODY: usize = 16 << 20;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let header =
        |name: &str| req.headers().get(name).into_iter().next().map(|v| String::from_utf8_lossy(&v).into_owned());
    let origin = header("origin");
    let matched = header("spin-matched-route").unwrap_or_default();
    let path_info = header("spin-path-info").filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
    let byo_key = header("x-provider-api-key");
    let client_ip = shared::ratelimit::client_ip(
        header("spin-client-addr").as_deref(),
        header("x-forwarded-for").as_deref(),
        shared::ratelimit::trusted_proxies(
            var("ratelimit_trusted_proxies").as_deref(),
            var("ratelimit_trust_forwarded_for").as_deref(),
        ),
    );
    let method = req.method();
    let incoming = Incoming::from_head(&req);
    let mut responder = Responder::new(out, origin);
    responder.request_id = incoming.request_id.clone();
    if method == Method::Options {
        responder.send(204, &[], Vec::new()).await;
        return;
    }
    let openai_route = matched.starts_with("/v1");
    let result = match (openai_route, path_info.trim_end_matches('/'), &method) {
        (true, "/models", Method::Get) => list_models(&incoming).await.map(|v| Some((200, v))),
        (true, "/chat/completions", Method::Post) => {
            chat_route(req, incoming, Dialect::OpenAi, byo_key.as_deref(), client_ip.as_deref(), &mut responder).await
        }
        (false, "" | "/", Method::Post) => {
            chat_route(req, incoming, Dialect::Native, byo_key.as_deref(), client_ip.as_deref(), &mut responder).await
        }
        (true, "/models", _) => Err(ApiError::method_not_allowed("GET, OPTIONS")),
        (true, "/chat/completions", _) | (false, "" | "/", _) => Err(ApiError::method_not_allowed("POST, OPTIONS")),
        _ => Err(ApiError::not_found("route")),
    };
    match result {
        Ok(Some((status, body))) => responder.json(status, &body, &[]).await,
        Ok(None) => {}
        Err(e) => responder.error(&e).await,
    }
}

fn var(name: &str) -> Option<String> {
    variable(name)
}

async fn list_models(incoming: &Incoming) -> Result<Value, ApiError> {
    require_user(incoming)?;
    let mut data: Vec<Value> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for provider in [Provider::OpenAi, Provider::Anthropic, Provider::Mistral, Provider::OpenAiCompatible] {
        let Ok(config) = chat::provider_config(provider, &var, None) else { continue };
        if provider == Provider::OpenAiCompatible && var("compatible_base_url").is_none() {
            continue;
        }
        let mut ids: Vec<String> = shared::pricing::DEFAULT_PRICES
            .iter()
            .map(|(m, _)| (*m).to_owned())
            .filter(|m| chat::infer_provider(m) == Some(provider))
            .collect();
        if !config.default_model.is_empty() {
            ids.insert(0, config.default_model.clone());
        }
        for id in ids {
            if seen.insert(id.clone()) {
                data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": provider.name()}));
            }
        }
    }
    Ok(json!({"object": "list", "data": data}))
}

/// One provider to try, with the model it is asked for.
struct Target {
    config: ProviderConfig,
    model: String,
}

fn targets(req: &ChatRequest, byo_key: Option<&str>) -> Result<Vec<Target>, ApiError> {
    let primary = chat::choose_provider(req, &var)?;
    let config = chat::provider_config(primary, &var, byo_key)?;
    let model = req.model.clone().unwrap_or_else(|| config.default_model.clone());
    if model.is_empty() {
        return Err(ApiError::bad_request(
            "model_required",
            format!("name a model, or set '{}_default_model'", chat::variable_prefix(primary)),
        ));
    }
    let mut out = vec![Target { config, model }];
    // A caller's own key pays for their provider only: no fallback onto ours.
    if byo_key.is_none() {
        for p in chat::fallback_providers(primary, &var) {
            if let Ok(config) = chat::provider_config(p, &var, None) {
                if !config.default_model.is_empty() {
                    let model = config.default_model.clone();
                    out.push(Target { config, model });
                }
            }
        }
    }
    Ok(out)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn ms_since(start_ns: u64) -> i64 {
    (outbound::now_ns().saturating_sub(start_ns) / 1_000_000) as i64
}

async fn chat_route(
    req: IncomingRequest,
    mut incoming: Incoming,
    dialect: Dialect,
    byo_key: Option<&str>,
    client_ip: Option<&str>,
    responder: &mut Responder,
) -> Result<Option<(u16, Value)>, ApiError> {
    let max_body = var("chat_max_body_bytes").and_then(|v| v.parse().ok()).unwrap_or(chat::DEFAULT_MAX_BODY_BYTES);
    // Who is calling first, from the head alone; only then the body, capped.
    let (user_id, principal) = require_user(&incoming)?;
    incoming.body = shared::spin::read_body(req, incoming.content_length, max_body).await?;
    let mut request = match dialect {
        Dialect::Native => chat::parse_native(&incoming.body, max_body)?,
        Dialect::OpenAi => chat::parse_openai(&incoming.body, max_body)?,
    };
    // The caller's policy, before any work: anonymous sign-ins by address (they can mint new
    // sessions at will), everyone else by user. A caller paying with their own key is also
    // held to that key's bucket; the key adds a limit, never replaces the caller's (a fresh
    // random key per request must not buy a fresh bucket).
    let (policy, subject) = match (principal.is_anonymous, client_ip) {
        (true, Some(ip)) => ("chat_anonymous", Subject::ip(ip)),
        (true, None) => ("chat_anonymous", Subject::user(&user_id)),
        (false, _) => ("chat", Subject::user(&user_id)),
    };
    if let Some(verdict) = limiter::enforce(policy, &subject, 1)? {
        responder.extra = verdict.headers();
    }
    if let Some(key) = byo_key.filter(|k| !k.trim().is_empty()) {
        if let Some(verdict) = limiter::enforce("chat_byok", &Subject::provider_key(key), 1)? {
            if responder.extra.is_empty() {
                responder.extra = verdict.headers();
            }
        }
    }
    // With a spend budget every call needs an output cap, so that its cost has an upper bound.
    let caps = budget::caps()?;
    if caps.is_some() && request.max_tokens.is_none() {
        let default = var("budget_default_max_tokens").and_then(|v| v.parse().ok()).unwrap_or(4096);
        request.max_tokens = Some(default);
    }
    let mut targets = targets(&request, byo_key)?;
    let prices = PriceTable::with_overrides(var("model_prices").as_deref())
        .map_err(|e| ApiError::internal(format!("server misconfigured: model_prices is not valid JSON: {e}")))?;
    // With a USD cap, a call's cost must be bounded before it is made: an unpriced model is
    // refused (and an unpriced fallback skipped), never run at an assumed price of zero.
    if caps.is_some_and(|c| c.usd.is_some()) {
        prices.require(&targets[0].model)?;
        targets.retain(|t| prices.price(&t.model).is_some());
    }
    let resilience = Resilience::from_variables(&var);
    let context_len = var("chat_context_messages")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(chat::DEFAULT_CONTEXT_MESSAGES)
        .min(200);

    let (mut open, system_prompt, history) = if request.persist {
        let first = &targets[0];
        let (open, sp, h) =
            store::open_exchange(&principal, &request, first.config.provider, &first.model, context_len)?;
        (Some(open), sp, h)
    } else {
        (None, request.system_prompt.clone(), Vec::new())
    };
    let messages = chat::context_messages(&request, system_prompt.as_deref(), &history);
    let has_tools = request.passthrough.get("tools").is_some_and(|t| !t.is_null());

    // Reserve the most this call can cost (every request byte a prompt token, plus the output
    // cap) on the dearest target; settled with the real usage, released on failure. With a
    // conversation the reservation joins its open transaction (one pooled connection per
    // request), and counts once that commits.
    let upstreams: Vec<Upstream> = targets.iter().map(|t| upstream_for(&request, t, &messages)).collect();
    let mut reserved = None;
    let mut budget_hold = None;
    if let Some(caps) = caps {
        let max_out = request.max_tokens.unwrap_or(0);
        let (mut tokens, mut usd) = (0u64, 0f64);
        for (target, upstream) in targets.iter().zip(&upstreams) {
            let bound = chat::prompt_token_bound(upstream.payload.len(), &messages, has_tools);
            let usage = Usage { prompt_tokens: bound, completion_tokens: max_out, cached_tokens: 0 };
            tokens = tokens.max(bound + max_out);
            usd = usd.max(prices.cost_usd(&target.model, usage));
        }
        match open.as_mut() {
            Some(open) => reserved = Some(open.reserve_budget(&user_id, caps, tokens, usd)?),
            None => budget_hold = Some(budget::reserve(&user_id, caps, tokens, usd)?),
        }
    }
    let mut call = Call {
        user_id,
        principal,
        budget: budget_hold,
        persisted: None,
        prices,
        started_ns: outbound::now_ns(),
        deadline_ns: outbound::now_ns().saturating_add(resilience.total_timeout.as_nanos() as u64),
        attempts: Vec::new(),
        prompt_bound: chat::prompt_token_bound(upstreams[0].payload.len(), &messages, has_tools),
    };

    // The first attempt starts now and the commit of the user's message overlaps it; nothing
    // the provider says is read, let alone forwarded, before that message is durable. If the
    // commit fails the started request is dropped, which closes it.
    let first = &upstreams[0];
    let first_attempt =
        (outbound::now_ns(), outbound::start(&first.url, &first.headers, &first.payload, call.timeouts(&resilience)));
    if let Some(open) = open {
        let first = &targets[0];
        call.persisted = Some(open.store_messages(&request, first.config.provider, &first.model)?);
        call.budget = reserved.map(budget::Reserved::committed);
    }

    let connected = connect(&mut call, &targets, &upstreams, &resilience, Some(first_attempt)).await;
    let (target, response) = match connected {
        Ok(v) => v,
        Err((provider, failure)) => {
            let error = failure.to_api_error(provider);
            call.finish(Outcome::failed(provider, &targets[0].model, &error.message));
            return Err(call.label_error(error));
        }
    };
    if request.stream {
        stream_reply(&mut call, target, response, responder).await;
        Ok(None)
    } else {
        whole_reply(&mut call, target, response).await.map(Some)
    }
}

/// One request's bookkeeping across attempts.
struct Call {
    user_id: String,
    principal: shared::auth::Principal,
    /// The spend reservation, when budgets are on.
    budget: Option<budget::Hold>,
    persisted: Option<Persisted>,
    prices: PriceTable,
    started_ns: u64,
    deadline_ns: u64,
    attempts: Vec<Attempt>,
    /// The most the first target's prompt can count ([`chat::prompt_token_bound`]): what a call
    /// cut off before it reported usage is charged, so a disconnect never undercounts.
    prompt_bound: u64,
}

/// How the exchange ended.
struct Outcome {
    status: &'static str,
    text: String,
    tool_calls: Vec<Value>,
    provider: Provider,
    model: String,
    usage: Option<Usage>,
    error: Option<String>,
    ttft_ms: Option<i64>,
}

impl Outcome {
    /// A call that produced nothing: no text, no usage.
    fn failed(provider: Provider, model: &str, message: &str) -> Self {
        Outcome {
            status: "error",
            text: String::new(),
            tool_calls: Vec::new(),
            provider,
            model: model.to_owned(),
            usage: None,
            error: Some(message.to_owned()),
            ttft_ms: None,
        }
    }
}

impl Call {
    fn remaining(&self) -> Duration {
        Duration::from_nanos(self.deadline_ns.saturating_sub(outbound::now_ns()))
    }

    /// One attempt's timeouts, none past the total deadline.
    fn timeouts(&self, resilience: &Resilience) -> Timeouts {
        let remaining = self.remaining();
        Timeouts {
            connect: resilience.connect_timeout.min(remaining),
            first_byte: resilience.first_byte_timeout.min(remaining),
            between_bytes: resilience.idle_timeout.min(remaining),
        }
    }

    fn record_failure(&mut self, target: &Target, attempt_start: u64, failure: &CallFailure) {
        self.attempts.push(Attempt {
            provider: target.config.provider.name(),
            model: target.model.clone(),
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: ms_since(attempt_start),
            status: failure.usage_status(),
        });
    }

    fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.prices.cost_usd(model, usage)
    }

    /// Persists the assistant message and the usage rows; a failure here is logged (the client
    /// already has the answer) and leaves the pending row for inspection.
    fn finish(&mut self, outcome: Outcome) -> (Usage, f64, bool) {
        // A call that ended early (client gone, stream cut) may have reported part of its usage
        // (Anthropic's input tokens come first) or none: what is missing is charged at its upper
        // bound, the prompt at the reservation's bound and the output at one token per byte
        // received (no tokenizer makes more tokens than bytes).
        let produced = outcome.status != "error" || !outcome.text.is_empty();
        let ended_early = outcome.status != "complete" && produced;
        let estimated = ended_early || (outcome.usage.is_none() && produced);
        let usage = match (outcome.usage, estimated) {
            (Some(u), false) => u,
            (reported, true) => {
                let reported = reported.unwrap_or_default();
                Usage {
                    prompt_tokens: if reported.prompt_tokens > 0 { reported.prompt_tokens } else { self.prompt_bound },
                    completion_tokens: reported.completion_tokens.max(
                        (outcome.text.len() + outcome.tool_calls.iter().map(|t| t.to_string().len()).sum::<usize>())
                            as u64,
                    ),
                    cached_tokens: reported.cached_tokens,
                }
            }
            (None, false) => Usage::default(),
        };
        let cost = self.cost(&outcome.model, usage);
        let latency = ms_since(self.started_ns);
        let failed_attempts = self.attempts.len();
        // The call that produced the answer (the last attempt) is recorded with its usage.
        if outcome.status != "error" || !outcome.text.is_empty() || outcome.usage.is_some() {
            self.attempts.push(Attempt {
                provider: outcome.provider.name(),
                model: outcome.model.clone(),
                usage,
                cost_usd: cost,
                latency_ms: latency,
                status: outcome.status.to_owned(),
            });
        }
        let mut metadata = json!({});
        if let Some(e) = &outcome.error {
            metadata["error"] = json!(e);
        }
        if let Some(t) = outcome.ttft_ms {
            metadata["ttft_ms"] = json!(t);
        }
        if estimated {
            metadata["usage_estimated"] = json!(true);
        }
        if failed_attempts > 0 {
            metadata["failed_attempts"] = json!(failed_attempts);
        }
        let spent_tokens: u64 = self.attempts.iter().map(|a| a.usage.prompt_tokens + a.usage.completion_tokens).sum();
        let spent_usd: f64 = self.attempts.iter().map(|a| a.cost_usd).sum();
        let result = store::finish_exchange(
            &self.principal,
            &self.user_id,
            self.budget.as_mut().map(|h| (h, spent_tokens, spent_usd)),
            self.persisted.as_ref(),
            &store::Assistant {
                content: &outcome.text,
                status: outcome.status,
                provider: outcome.provider.name(),
                model: &outcome.model,
                usage,
                cost_usd: cost,
                latency_ms: latency,
                tool_calls: &outcome.tool_calls,
                metadata,
            },
            &self.attempts,
        );
        if let Err(e) = &result {
            eprintln!("chat-completion: could not persist the outcome: {e}");
        }
        (usage, cost, estimated)
    }

    /// Names the stored conversation and message in an error, so the client can retry.
    fn label_error(&self, e: ApiError) -> ApiError {
        match &self.persisted {
            Some(p) => e
                .with_detail("conversation_id", &p.conversation_id)
                .with_detail("user_message_id", &p.user_message_id)
                .with_detail("assistant_message_id", &p.assistant_message_id),
            None => e,
        }
    }

    fn extension(&self, cost: f64, estimated: bool, provider: Provider) -> Value {
        let mut v = json!({"cost_usd": cost, "provider": provider.name(), "usage_estimated": estimated});
        if let Some(p) = &self.persisted {
            v["conversation_id"] = json!(p.conversation_id);
            v["user_message_id"] = json!(p.user_message_id);
            v["assistant_message_id"] = json!(p.assistant_message_id);
        }
        v
    }
}

/// One target's request, serialized once and reused by every attempt (and the budget bound).
struct Upstream {
    url: String,
    /// The API key is among these: never logged.
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

/// The upstream request for `target`.
fn upstream_for(request: &ChatRequest, target: &Target, messages: &[Value]) -> Upstream {
    let body = chat::openai_body(request, &target.model, messages.to_vec());
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
async fn connect<'t>(
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
                    let retry_after = shared::retry::parse_retry_after(
                        response.header("retry-after"),
                        response.header("retry-after-ms"),
                    );
                    CallFailure::Status {
                        status: response.status,
                        message: chat::upstream_error_message(&body),
                        retry_after,
                    }
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
        targets.first().map(|t| t.config.provider).unwrap_or(Provider::OpenAi),
        CallFailure::Other("no provider to call".into()),
    )))
}

async fn whole_reply(
    call: &mut Call,
    target: &Target,
    mut response: outbound::Response,
) -> Result<(u16, Value), ApiError> {
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
            let (_, cost, estimated) = call.finish(Outcome {
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
            Ok((200, completion))
        }
        Err(e) => {
            let error = ApiError::new(502, "provider_error", format!("{}: {}", provider.name(), e.message))
                .with_detail("provider", provider.name());
            call.finish(Outcome::failed(provider, &target.model, &error.message));
            Err(call.label_error(error))
        }
    }
}

/// Why the stream stopped.
enum StreamEnd {
    Done,
    ClientGone,
    UpstreamError(providers::UpstreamError),
    Cut(String),
}

async fn stream_reply(call: &mut Call, target: &Target, mut response: outbound::Response, responder: &mut Responder) {
    let provider = target.config.provider;
    let mut headers = vec![
        ("content-type", "text/event-stream; charset=utf-8".to_owned()),
        ("cache-control", "no-cache".to_owned()),
        ("x-accel-buffering", "no".to_owned()),
        ("x-chatedge-provider", provider.name().to_owned()),
    ];
    if let Some(p) = &call.persisted {
        headers.push(("x-chatedge-conversation-id", p.conversation_id.clone()));
        headers.push(("x-chatedge-user-message-id", p.user_message_id.clone()));
        headers.push(("x-chatedge-message-id", p.assistant_message_id.clone()));
    }
    let Some(mut sink) = responder.start(200, &headers) else { return };
    let id = format!("chatcmpl-{}", outbound::random_id());
    let mut translator = StreamTranslator::new(provider, id, target.model.clone(), now_unix());
    let mut parser = sse::Parser::new();
    let mut ttft: Option<i64> = None;
    let end = loop {
        if call.remaining().is_zero() {
            break StreamEnd::Cut("the total deadline passed".into());
        }
        let chunk = match response.chunk().await {
            None => {
                // Some servers close without a terminator once the finish reason is out.
                if translator.finish_reason.is_some() {
                    break StreamEnd::Done;
                }
                break StreamEnd::Cut("the provider closed the stream early".into());
            }
            Some(Err(e)) => break StreamEnd::Cut(format!("the provider stream failed: {e}")),
            Some(Ok(c)) => c,
        };
        let events = match parser.feed(&chunk) {
            Ok(ev) => ev,
            Err(e) => break StreamEnd::Cut(format!("malformed event stream: {e}")),
        };
        // Everything one upstream read produced goes out as one write (one flush through the host).
        let mut out = Vec::new();
        let mut stop = None;
        'events: for event in events {
            for item in translator.event(event.event.as_deref(), &event.data) {
                match item {
                    StreamItem::Chunk(v) => {
                        if ttft.is_none() {
                            ttft = Some(ms_since(call.started_ns));
                        }
                        out.extend(sse::data_event(&v.to_string()));
                    }
                    StreamItem::Error(e) => {
                        stop = Some(StreamEnd::UpstreamError(e));
                        break 'events;
                    }
                    StreamItem::Done => {
                        stop = Some(StreamEnd::Done);
                        break 'events;
                    }
                }
            }
        }
        if !out.is_empty() && sink.send(out).await.is_err() {
            break StreamEnd::ClientGone;
        }
        if let Some(stop) = stop {
            break stop;
        }
    };
    // Closes the upstream connection whatever happened (a disconnected client stops the spend).
    drop(response);
    let (status, error) = match &end {
        StreamEnd::Done => ("complete", None),
        StreamEnd::ClientGone => ("incomplete", Some("the client disconnected".to_owned())),
        StreamEnd::UpstreamError(e) => ("error", Some(e.message.clone())),
        StreamEnd::Cut(m) => ("incomplete", Some(m.clone())),
    };
    let (usage, cost, estimated) = call.finish(Outcome {
        status,
        text: translator.text.clone(),
        tool_calls: translator.tool_calls(),
        provider,
        model: translator.model.clone(),
        usage: translator.usage,
        error,
        ttft_ms: ttft,
    });
    if matches!(end, StreamEnd::ClientGone) {
        return;
    }
    let mut tail = Vec::new();
    match &end {
        StreamEnd::UpstreamError(e) => {
            tail.extend(sse::data_event(&e.to_json().to_string()));
        }
        StreamEnd::Cut(m) => {
            let code =
                if m.contains("deadline") || m.contains("imeout") { "provider_timeout" } else { "provider_stream_cut" };
            let message = format!("{} stream interrupted: {m}", provider.name());
            tail.extend(sse::data_event(&chat::stream_error_event(&message, "server_error", code).to_string()));
        }
        StreamEnd::Done | StreamEnd::ClientGone => {}
    }
    let mut final_chunk = translator.usage_chunk();
    final_chunk["usage"] = usage.to_json();
    final_chunk["chatedge"] = call.extension(cost, estimated, provider);
    tail.extend(sse::data_event(&final_chunk.to_string()));
    tail.extend_from_slice(sse::DONE);
    let _ = sink.send(tail).await;
}
