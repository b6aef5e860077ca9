//! `POST /functions/v1/chat-completion`, `POST /v1/chat/completions`, `GET /v1/models`: chat
//! completions from any provider, streamed or whole, persisted and accounted.
//!
//! One file per step of a chat, each plain Rust tested natively: `request` (parse and validate
//! the native and OpenAI bodies), `plan` (provider, settings, fallbacks, timeouts, the budget
//! bound), `context` (what is sent upstream and stored), `providers` (one file per provider
//! behind one trait), `sse` (the event-stream codec), `retry` (backoff), `failure` (upstream
//! failures as the error envelope), `accounting` (what a call is charged), `pricing` (what
//! that costs) and `settings` (every variable, read once). `responses` is the Responses API
//! over the same steps, `anthropic_messages` Anthropic's Messages API over them, `embeddings` is `/v1/embeddings` in the same shape, `documents` retrieval over the user's
//! uploaded documents (embedding their chunks, searching, context and citations). `component` is the
//! Spin component that does the I/O around them (wasm32 only).

pub mod accounting;
pub mod anthropic_messages;
pub mod context;
pub mod documents;
pub mod embeddings;
pub mod failure;
pub mod plan;
pub mod pricing;
pub mod providers;
pub mod request;
pub mod responses;
pub mod retry;
pub mod settings;
pub mod sse;

/// Every variable the component reads (its settings, auth, database, the chat policies and the
/// budget): exactly what spin.toml's `[component.chat-completion.variables]` must map.
pub fn variables() -> Vec<String> {
    let mut names = shared::variables::signed_in(&["chat", "chat_anonymous", "chat_byok"]);
    names.extend(shared::variables::BUDGET.iter().map(|s| (*s).to_owned()));
    names.extend(settings::Settings::variables());
    names
}

#[cfg(target_arch = "wasm32")]
mod component;
