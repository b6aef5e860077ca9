//! `POST /functions/v1/code-execution`: untrusted Python, JavaScript or TypeScript run in the
//! sandbox service, each execution recorded through RLS. `execution` (settings, the body, the
//! sandbox's errors) is plain Rust, tested natively; `component` is the Spin component around it
//! (wasm32 only): the signed call to the sandbox and the row.

pub mod execution;

#[cfg(target_arch = "wasm32")]
mod component;
