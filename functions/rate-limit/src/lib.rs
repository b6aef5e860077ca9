//! `/functions/v1/rate-limit`: the caller's limits (GET) and checks of named limits for trusted
//! backends (POST, service role). `policies` (which policies a caller is shown, how a verdict
//! reads, the check body) is plain Rust, tested natively; `component` is the Spin component
//! around it (wasm32 only).

pub mod policies;

#[cfg(target_arch = "wasm32")]
mod component;
