//! The common crate of the chatedge functions: one error envelope, JWT verification, CORS,
//! pagination and the per-request RLS transaction. Pure logic is tested natively; the spin-sdk
//! glue exists only when building the wasm32 components.

pub mod auth;
#[cfg(target_arch = "wasm32")]
pub mod budget;
pub mod chat;
pub mod conversations;
pub mod cors;
pub mod db;
pub mod error;
#[cfg(target_arch = "wasm32")]
pub mod limiter;
#[cfg(target_arch = "wasm32")]
pub mod outbound;
pub mod pagination;
pub mod pricing;
pub mod providers;
pub mod ratelimit;
pub mod retry;
#[cfg(target_arch = "wasm32")]
pub mod spin;
pub mod sse;
pub mod storage;
pub mod upload;

pub use error::ApiError;
