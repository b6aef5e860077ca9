//! `/functions/v1/conversations/...`: conversations and their messages, through RLS.
//! `fields` (validating create and update bodies) is plain Rust, tested natively; `component` is
//! the Spin component around it (wasm32 only).

pub mod fields;

#[cfg(target_arch = "wasm32")]
mod component;
