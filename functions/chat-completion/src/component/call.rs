//! One request's bookkeeping across its attempts, and how it is settled: the usage charged (see
//! `crate::accounting`), the assistant row and the `api_usage` rows written, the budget hold
//! settled, and what the client is told about the stored rows.

use super::store::{self, Attempt, Persisted};
use super::{ms_since, Target};
use crate::accounting;
use crate::failure::CallFailure;
use crate::plan::Resilience;
use crate::pricing::PriceTable;
use crate::providers::{Provider, Usage};
use serde_json::{json, Value};
use shared::budget;
use shared::outbound::{self, Timeouts};
use shared::ApiError;
use std::time::Duration;

/// One request's bookkeeping across attempts.
pub(crate) struct Call {
    pub(crate) user_id: String,
    pub(crate) principal: shared::auth::Principal,
    /// The spend reservation, when budgets are on.
    pub(crate) budget: Option<budget::Hold>,
    pub(crate) persisted: Option<Persisted>,
    pub(crate) prices: PriceTable,
    pub(crate) started_ns: u64,
    pub(crate) deadline_ns: u64,
    pub(crate) attempts: Vec<Attempt>,
    /// The most the first target's prompt can count ([`crate::plan::prompt_token_bound`]): what a call
    /// cut off before it reported usage is charged, so a disconnect never undercounts.
    pub(crate) prompt_bound: u64,
    /// The document chunks retrieved into the context (file, chunk, page, score), kept in the
    /// assistant row's metadata and told to the client.
    pub(crate) sources: Option<Value>,
    /// The stored answer's text once the call completed (for embedding the exchange).
    pub(crate) reply_text: Option<String>,
}

/// How the exchange ended.
pub(crate) struct Outcome {
    pub(crate) status: &'static str,
    pub(crate) text: String,
    pub(crate) tool_calls: Vec<Value>,
    pub(crate) provider: Provider,
    pub(crate) model: String,
    pub(crate) usage: Option<Usage>,
    pub(crate) error: Option<String>,
    pub(crate) ttft_ms: Option<i64>,
}

impl Outcome {
    /// A call that produced nothing: no text, no usage.
    pub(crate) fn failed(provider: Provider, model: &str, message: &str) -> Self {
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
    pub(crate) fn remaining(&self) -> Duration {
        Duration::from_nanos(self.deadline_ns.saturating_sub(outbound::now_ns()))
    }

    /// One attempt's timeouts, none past the total deadline.
    pub(crate) fn timeouts(&self, resilience: &Resilience) -> Timeouts {
        let remaining = self.remaining();
        Timeouts {
            connect: resilience.connect_timeout.min(remaining),
            first_byte: resilience.first_byte_timeout.min(remaining),
            between_bytes: resilience.idle_timeout.min(remaining),
        }
    }

    pub(crate) fn record_failure(&mut self, target: &Target, attempt_start: u64, failure: &CallFailure) {
        self.attempts.push(Attempt {
            provider: target.config.provider.name(),
            model: target.model.clone(),
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: ms_since(attempt_start),
            status: failure.usage_status(),
        });
    }

    pub(crate) fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.prices.cost_usd(model, usage)
    }

    /// Persists the assistant message and the usage rows; a failure here is logged (the client
    /// already has the answer) and leaves the pending row for inspection.
    pub(crate) fn finish(&mut self, outcome: Outcome) -> (Usage, f64, bool) {
        let produced_bytes = outcome.text.len() + outcome.tool_calls.iter().map(|t| t.to_string().len()).sum::<usize>();
        let charged = accounting::charged_usage(
            outcome.status,
            outcome.usage,
            produced_bytes,
            !outcome.text.is_empty(),
            self.prompt_bound,
        );
        let (usage, estimated) = (charged.usage, charged.estimated);
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
        let answered = self.attempts.len() > failed_attempts;
        for (i, a) in self.attempts.iter().enumerate() {
            let answering = answered && i + 1 == self.attempts.len();
            shared::metrics::emit(&shared::metrics::Event::ProviderCall {
                provider: a.provider.to_owned(),
                model: a.model.clone(),
                status: a.status.clone(),
                ttft_ms: outcome.ttft_ms.filter(|_| answering).map(|t| t as f64),
                total_ms: a.latency_ms as f64,
                input_tokens: a.usage.prompt_tokens,
                output_tokens: a.usage.completion_tokens,
                cost_usd: a.cost_usd,
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
        if let Some(sources) = &self.sources {
            metadata["sources"] = sources.clone();
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
        match &result {
            Err(e) => eprintln!("chat-completion: could not persist the outcome: {e}"),
            Ok(_) if outcome.status == "complete" && self.persisted.is_some() => self.reply_text = Some(outcome.text),
            Ok(_) => {}
        }
        (usage, cost, estimated)
    }

    /// Names the stored conversation and message in an error, so the client can retry.
    pub(crate) fn label_error(&self, e: ApiError) -> ApiError {
        match &self.persisted {
            Some(p) => e
                .with_detail("conversation_id", &p.conversation_id)
                .with_detail("user_message_id", &p.user_message_id)
                .with_detail("assistant_message_id", &p.assistant_message_id),
            None => e,
        }
    }

    pub(crate) fn extension(&self, cost: f64, estimated: bool, provider: Provider) -> Value {
        let mut v = json!({"cost_usd": cost, "provider": provider.name(), "usage_estimated": estimated});
        if let Some(p) = &self.persisted {
            v["conversation_id"] = json!(p.conversation_id);
            v["user_message_id"] = json!(p.user_message_id);
            v["assistant_message_id"] = json!(p.assistant_message_id);
        }
        if let Some(sources) = &self.sources {
            v["sources"] = sources.clone();
        }
        v
    }
}
