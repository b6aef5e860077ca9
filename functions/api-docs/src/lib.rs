//! `GET /functions/v1/openapi.json`: the OpenAPI 3.1 contract of every route, so clients and
//! generators (and schemathesis, in `./dev test`) read what the API takes and answers instead of
//! the README's curl lines. `document` builds it as plain Rust (the error codes come from
//! [`shared::ErrorCode::ALL`], so the closed set cannot drift), tested natively; `component` is
//! the Spin component around it (wasm32 only).

pub mod document;

pub use document::document;

#[cfg(target_arch = "wasm32")]
mod component;
