//! `POST /functions/v1/chat-completion`, `POST /v1/chat/completions`, `POST /v1/responses`,
//! `GET /v1/responses/{id}`, `POST /v1/messages`, `POST /v1/embeddings`, `GET /v1/models`.
//!
//! parse -> authenticate -> choose provider -> persist the user message (and a pending assistant
//! row) -> call the provider with timeouts, retries and fallbacks -> stream OpenAI-format chunks
//! -> persist the assistant message and one `api_usage` row per provider call. This module is
//! the I/O around the crate's pure steps (`request`, `plan`, `context`, `providers`, `failure`,
//! `accounting`, `pricing`): `attempts` (the retry and fallback loop), `whole` and `stream`
//! (the two reply shapes), `call` (bookkeeping and settlement) and `store` (the rows).

mod attempts;
mod call;
mod documents;
mod embed;
mod responses_get;
mod store;
mod stream;
mod whole;

use crate::plan::{self, ProviderConfig};
use crate::pricing::PriceTable;
use crate::providers::{self, Provider, Usage};
use crate::request::{self, ChatRequest, Dialect};
use crate::settings::Settings;
use attempts::{connect, upstream_for, Upstream};
use call::{Call, Outcome};
use serde_json::{json, Value};
use shared::budget;
use shared::limiter;
use shared::outbound;
use shared::ratelimit::Subject;
use shared::spin::{require_user, variable, Incoming, Responder};
use shared::ApiError;
use shared::ErrorCode;
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;

/// Largest upstream error body read for its message.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest non-streaming upstream body read.
pub(crate) const MAX_COMPLETION_BODY: usize = 16 << 20;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let header =
        |name: &str| req.headers().get(name).into_iter().next().map(|v| String::from_utf8_lossy(&v).into_owned());
    let origin = header("origin");
    let matched = header("spin-matched-route").unwrap_or_default();
    let path_info = header("spin-path-info").filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
    let byo_key = header("x-provider-api-key");
    let method = req.method();
    let mut incoming = Incoming::from_head(&req);
    // Anthropic's SDKs send their key as `x-api-key`: on the Messages route that is the JWT.
    if matched.starts_with("/v1") && path_info.trim_end_matches('/') == "/messages" && incoming.authorization.is_none()
    {
        incoming.authorization = header("x-api-key").map(|k| format!("Bearer {}", k.trim()));
    }
    let mut responder = Responder::new(out, origin);
    responder.request_id = incoming.request_id.clone();
    // A preflight needs no settings.
    if method == Method::Options {
        responder.send(204, &[], Vec::new()).await;
        return;
    }
    // Every variable this component reads, read once.
    let settings = Settings::from_variables(variable);
    let client_ip = shared::ratelimit::client_ip(
        header("spin-client-addr").as_deref(),
        header("x-forwarded-for").as_deref(),
        shared::ratelimit::trusted_proxies(
            settings.trusted_proxies.as_deref(),
            settings.trust_forwarded_for.as_deref(),
        ),
    );
    let openai_route = matched.starts_with("/v1");
    let documents_route = matched.starts_with("/functions/v1/documents");
    let search_route = matched.starts_with("/functions/v1/search");
    let segments: Vec<&str> = path_info.split('/').filter(|s| !s.is_empty()).collect();
    let result = if documents_route {
        match (segments.as_slice(), &method) {
            ([id, "process"], Method::Post) => documents::process_route(
                &incoming,
                id,
                &settings,
                byo_key.as_deref(),
                client_ip.as_deref(),
                &mut responder,
            )
            .await
            .map(Some),
            ([_, "process"], _) => Err(ApiError::method_not_allowed("POST, OPTIONS")),
            _ => Err(ApiError::not_found("route")),
        }
    } else if search_route {
        match (segments.as_slice(), &method) {
            ([], Method::Get) => {
                documents::search_route(&incoming, &settings, byo_key.as_deref(), client_ip.as_deref(), &mut responder)
                    .await
                    .map(Some)
            }
            ([], _) => Err(ApiError::method_not_allowed("GET, OPTIONS")),
            _ => Err(ApiError::not_found("route")),
        }
    } else {
        match (openai_route, path_info.trim_end_matches('/'), &method) {
            (true, "/models", Method::Get) => list_models(&incoming, &settings).await.map(|v| Some((200, v))),
            (true, "/chat/completions", Method::Post) => {
                chat_route(
                    req,
                    incoming,
                    &settings,
                    Dialect::OpenAi,
                    byo_key.as_deref(),
                    client_ip.as_deref(),
                    &mut responder,
                )
                .await
            }
            (false, "" | "/", Method::Post) => {
                chat_route(
                    req,
                    incoming,
                    &settings,
                    Dialect::Native,
                    byo_key.as_deref(),
                    client_ip.as_deref(),
                    &mut responder,
                )
                .await
            }
            (true, "/responses", Method::Post) => {
                chat_route(
                    req,
                    incoming,
                    &settings,
                    Dialect::Responses,
                    byo_key.as_deref(),
                    client_ip.as_deref(),
                    &mut responder,
                )
                .await
            }
            (true, path, Method::Get) if path.starts_with("/responses/") => {
                responses_get::get_response(&incoming, &path["/responses/".len()..]).map(|v| Some((200, v)))
            }
            (true, path, _) if path.starts_with("/responses/") => Err(ApiError::method_not_allowed("GET, OPTIONS")),
            (true, "/messages", Method::Post) => {
                chat_route(
                    req,
                    incoming,
                    &settings,
                    Dialect::Messages,
                    byo_key.as_deref(),
                    client_ip.as_deref(),
                    &mut responder,
                )
                .await
            }
            (true, "/embeddings", Method::Post) => embed::embeddings_route(
                req,
                incoming,
                &settings,
                byo_key.as_deref(),
                client_ip.as_deref(),
                &mut responder,
            )
            .await
            .map(Some),
            (true, "/models", _) => Err(ApiError::method_not_allowed("GET, OPTIONS")),
            (true, "/chat/completions" | "/embeddings" | "/responses" | "/messages", _) | (false, "" | "/", _) => {
                Err(ApiError::method_not_allowed("POST, OPTIONS"))
            }
            _ => Err(ApiError::not_found("route")),
        }
    };
    match result {
        Ok(Some((status, body))) => responder.json(status, &body, &[]).await,
        Ok(None) => {}
        Err(e) => responder.error(&e).await,
    }
}

async fn list_models(incoming: &Incoming, settings: &Settings) -> Result<Value, ApiError> {
    require_user(incoming)?;
    let mut data: Vec<Value> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for &provider in providers::REGISTRY {
        // Unconfigured providers (no key, or no base URL where there is no official one) list nothing.
        let Ok(config) = plan::provider_config(provider, settings, None) else { continue };
        let mut ids: Vec<String> = crate::pricing::DEFAULT_PRICES
            .iter()
            .map(|(m, _)| (*m).to_owned())
            .filter(|m| Provider::owning(m) == Some(provider))
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
pub(crate) struct Target {
    pub(crate) config: ProviderConfig,
    pub(crate) model: String,
}

fn targets(req: &ChatRequest, settings: &Settings, byo_key: Option<&str>) -> Result<Vec<Target>, ApiError> {
    let primary = plan::choose_provider(req, settings)?;
    let config = plan::provider_config(primary, settings, byo_key)?;
    let model = req.model.clone().unwrap_or_else(|| config.default_model.clone());
    if model.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::ModelRequired,
            format!("name a model, or set '{}_default_model'", primary.api().variable_prefix()),
        ));
    }
    let mut out = vec![Target { config, model }];
    // A caller's own key pays for their provider only: no fallback onto ours.
    if byo_key.is_none() {
        for p in plan::fallback_providers(primary, settings) {
            if let Ok(config) = plan::provider_config(p, settings, None) {
                if !config.default_model.is_empty() {
                    let model = config.default_model.clone();
                    out.push(Target { config, model });
                }
            }
        }
    }
    Ok(out)
}

/// The caller's rate policy, before any work: anonymous sign-ins by address (they can mint new
/// sessions at will), everyone else by user. A caller paying with their own key is also held
/// to that key's bucket; the key adds a limit, never replaces the caller's (a fresh random key
/// per request must not buy a fresh bucket). The verdict's headers go on the response.
fn admit(
    user_id: &str,
    principal: &shared::auth::Principal,
    client_ip: Option<&str>,
    byo_key: Option<&str>,
    responder: &mut Responder,
) -> Result<(), ApiError> {
    let (policy, subject) = match (principal.is_anonymous, client_ip) {
        (true, Some(ip)) => ("chat_anonymous", Subject::ip(ip)),
        (true, None) => ("chat_anonymous", Subject::user(user_id)),
        (false, _) => ("chat", Subject::user(user_id)),
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
    Ok(())
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn ms_since(start_ns: u64) -> i64 {
    (outbound::now_ns().saturating_sub(start_ns) / 1_000_000) as i64
}

async fn chat_route(
    req: IncomingRequest,
    mut incoming: Incoming,
    settings: &Settings,
    dialect: Dialect,
    byo_key: Option<&str>,
    client_ip: Option<&str>,
    responder: &mut Responder,
) -> Result<Option<(u16, Value)>, ApiError> {
    let max_body = settings.max_body_bytes;
    // Who is calling first, from the head alone; only then the body, capped.
    let (user_id, principal) = require_user(&incoming)?;
    incoming.body = shared::spin::read_body(req, incoming.content_length, max_body).await?;
    let (mut request, echo) = match dialect {
        Dialect::Native => (request::parse_native(&incoming.body, max_body)?, None),
        Dialect::OpenAi => (request::parse_openai(&incoming.body, max_body)?, None),
        Dialect::Responses => {
            let parsed = crate::responses::parse(&incoming.body, max_body)?;
            (parsed.chat, Some(parsed.echo))
        }
        Dialect::Messages => (crate::anthropic_messages::parse(&incoming.body, max_body)?, None),
    };
    admit(&user_id, &principal, client_ip, byo_key, responder)?;
    // With a spend budget every call needs an output cap, so that its cost has an upper bound.
    let caps = budget::caps()?;
    if caps.is_some() && request.max_tokens.is_none() {
        request.max_tokens = Some(settings.budget_default_max_tokens);
    }
    let mut targets = targets(&request, settings, byo_key)?;
    let prices = PriceTable::with_overrides(settings.model_prices.as_deref())
        .map_err(|e| ApiError::internal(format!("server misconfigured: model_prices is not valid JSON: {e}")))?;
    // With a USD cap, a call's cost must be bounded before it is made: an unpriced model is
    // refused (and an unpriced fallback skipped), never run at an assumed price of zero.
    if caps.is_some_and(|c| c.usd.is_some()) {
        prices.require(&targets[0].model)?;
        targets.retain(|t| prices.price(&t.model).is_some());
    }
    let resilience = settings.resilience;
    let context_len = settings.context_messages;
    // Retrieval first, before the conversation's transaction opens: it makes its own calls.
    let retrieved = match &request.documents {
        Some(scope) => {
            // The question as asked, bounded (the embedding model's input is).
            let question: String = request.user_text.chars().take(crate::documents::MAX_QUESTION_CHARS).collect();
            Some(documents::retrieve(&user_id, &principal, settings, byo_key, scope, &question).await?)
        }
        None => None,
    };

    let (mut open, system_prompt, history) = if request.persist {
        let first = &targets[0];
        let (open, sp, h) =
            store::open_exchange(&principal, &request, first.config.provider, &first.model, context_len)?;
        // A response's instructions are its own: a previous response's do not carry over.
        let sp = if dialect == Dialect::Responses { request.system_prompt.clone() } else { sp };
        (Some(open), sp, h)
    } else {
        (None, request.system_prompt.clone(), Vec::new())
    };
    let messages = crate::context::context_messages(&request, system_prompt.as_deref(), &history);
    let (messages, sources) = match retrieved {
        Some(r) => (
            match &r.block {
                Some(block) => crate::documents::with_context(messages, block),
                None => messages,
            },
            Some(r.sources),
        ),
        None => (messages, None),
    };
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
            let bound = plan::prompt_token_bound(upstream.payload.len(), &messages, has_tools);
            let usage = Usage {
                prompt_tokens: bound,
                completion_tokens: max_out,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
            };
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
        prompt_bound: plan::prompt_token_bound(upstreams[0].payload.len(), &messages, has_tools),
        sources,
        reply_text: None,
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
    // A response is named by its stored assistant message (how `previous_response_id` finds it).
    let response_id = match &call.persisted {
        Some(p) => crate::responses::response_id(&p.assistant_message_id),
        None => format!("resp_{}", outbound::random_id()),
    };
    let reply = answer(&mut call, &request, dialect, echo, &response_id, target, response, responder).await;
    if !settings.retrieval.embed_messages {
        return reply;
    }
    // The exchange is embedded for search after the client has its answer.
    let reply = match reply {
        Ok(Some((status, body))) => {
            responder.json(status, &body, &[]).await;
            Ok(None)
        }
        other => other,
    };
    documents::embed_exchange(&call, settings, byo_key, &request.user_text).await;
    reply
}

/// Streams or returns the provider's answer in the dialect asked for.
#[allow(clippy::too_many_arguments)]
async fn answer(
    call: &mut Call,
    request: &ChatRequest,
    dialect: Dialect,
    echo: Option<crate::responses::Echo>,
    response_id: &str,
    target: &Target,
    response: outbound::Response,
    responder: &mut Responder,
) -> Result<Option<(u16, Value)>, ApiError> {
    if dialect == Dialect::Messages {
        let id = match &call.persisted {
            Some(p) => format!("msg_{}", p.assistant_message_id.replace('-', "")),
            None => format!("msg_{}", outbound::random_id()),
        };
        if request.stream {
            let writer = crate::anthropic_messages::StreamWriter::new(&id, &target.model);
            stream::stream_reply(call, target, response, responder, stream::Shape::Anthropic(Box::new(writer))).await;
            return Ok(None);
        }
        let (completion, usage) = whole::whole_reply(call, target, response).await?;
        let mut out = crate::anthropic_messages::from_completion(&id, &completion, usage);
        out["chatedge"] = completion["chatedge"].clone();
        return Ok(Some((200, out)));
    }
    match (request.stream, echo) {
        (true, None) => {
            stream::stream_reply(call, target, response, responder, stream::Shape::Chat).await;
            Ok(None)
        }
        (true, Some(echo)) => {
            let writer = crate::responses::StreamWriter::new(response_id, now_unix(), &target.model, &echo);
            stream::stream_reply(call, target, response, responder, stream::Shape::Responses(Box::new(writer))).await;
            Ok(None)
        }
        (false, None) => whole::whole_reply(call, target, response).await.map(|(c, _)| Some((200, c))),
        (false, Some(echo)) => {
            let (completion, usage) = whole::whole_reply(call, target, response).await?;
            let mut out = crate::responses::from_completion(response_id, now_unix(), &echo, &completion, usage);
            out["chatedge"] = completion["chatedge"].clone();
            Ok(Some((200, out)))
        }
    }
}
