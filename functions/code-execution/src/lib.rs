//! `POST /functions/v1/code-execution`: untrusted Python, JavaScript or TypeScript run in the
//! sandbox service, each execution recorded through RLS. `execution` (settings, the body, the
//! sandbox's errors) is plain Rust, tested natively; `component` is the Spin component around it
//! (wasm32 only): the signed call to the sandbox and the row.

pub mod artifacts;
pub mod execution;

/// Every variable the component reads (auth, database, the `code` and `api` policies, the
/// sandbox, the limits, storage): exactly what spin.toml's `[component.code-execution.variables]` must map.
pub fn variables() -> Vec<String> {
    let mut names = shared::variables::signed_in(&["code", "api"]);
    names.extend(["sandbox_url", "sandbox_secret"].map(str::to_owned));
    names.extend(execution::Limits::VARIABLES.iter().chain(shared::storage::VARIABLES).map(|s| (*s).to_owned()));
    names
}

#[cfg(target_arch = "wasm32")]
mod component;
