//! What several chatedge functions use, and only that: one error envelope, JWT verification,
//! CORS, pagination, rate limits and budgets, request signing, outbound I/O and the per-request
//! RLS transaction. A feature's own logic lives in its function crate. Pure logic is tested
//! natively; the spin-sdk glue exists only when building the wasm32 components.

pub mod auth;
#[cfg(target_arch = "wasm32")]
pub mod budget;
pub mod cors;
pub mod db;
pub mod error;
#[cfg(target_arch = "wasm32")]
pub mod limiter;
pub mod metrics;
#[cfg(target_arch = "wasm32")]
pub mod outbound;
pub mod pagination;
pub mod ratelimit;
pub mod signing;
#[cfg(target_arch = "wasm32")]
pub mod spin;
pub mod storage;
pub mod variables;

pub use error::{ApiError, ErrorCode};

/// Whether `s` is a UUID in canonical text form (ids in paths and bodies; anything else names
/// nothing, so callers answer 404 or 400 without asking the database).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
