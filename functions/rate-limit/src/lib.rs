//! `/functions/v1/rate-limit`: the caller's limits (GET) and checks of named limits for trusted
//! backends (POST, service role). `policies` (which policies a caller is shown, how a verdict
//! reads, the check body) is plain Rust, tested natively; `component` is the Spin component
//! around it (wasm32 only).

pub mod policies;

/// Every variable the component reads (auth, database, every policy it shows, the budget):
/// exactly what spin.toml's `[component.rate-limit.variables]` must map.
pub fn variables() -> Vec<String> {
    let policies: Vec<&str> = shared::ratelimit::DEFAULT_POLICIES.iter().map(|(name, _)| *name).collect();
    let mut names = shared::variables::signed_in(&policies);
    names.extend(shared::variables::BUDGET.iter().map(|s| (*s).to_owned()));
    names
}

#[cfg(target_arch = "wasm32")]
mod component;
