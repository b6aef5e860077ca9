//! `POST /functions/v1/chat-completion`, `POST /v1/chat/completions`, `GET /v1/models`: chat
//! completions from any provider, streamed or whole, persisted and accounted.
//!
//! One file per step of a chat, each plain Rust tested natively: `request` (parse and validate
//! the native and OpenAI bodies), `plan` (provider, settings, fallbacks, timeouts, the budget
//! bound), `context` (what is sent upstream and stored), `providers` (one file per provider
//! behind one trait), `sse` (the event-stream codec), `retry` (backoff), `failure` (upstream
//! failures as the error envelope), `accounting` (what a call is charged) and `pricing` (what
//! that costs). `component` is the Spin component that does the I/O around them (wasm32 only).

pub mod accounting;
pub mod context;
pub mod failure;
pub mod plan;
pub mod pricing;
pub mod providers;
pub mod request;
pub mod retry;
pub mod sse;

#[cfg(target_arch = "wasm32")]
mod component;
