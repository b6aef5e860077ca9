//! `/functions/v1/conversations/...`: conversations and their messages, through RLS.
//! `fields` (validating create and update bodies) is plain Rust, tested natively; `component` is
//! the Spin component around it (wasm32 only).

pub mod fields;

/// Every variable the component reads (auth, database, the `api` policy): exactly what
/// spin.toml's `[component.conversations.variables]` must map.
pub fn variables() -> Vec<String> {
    shared::variables::signed_in(&["api"])
}

#[cfg(target_arch = "wasm32")]
mod component;
