//! `/functions/v1/file-upload`: streamed uploads into S3-protocol storage, metadata through RLS.
//! `multipart` (reading and validating files) is plain Rust, tested natively; `component` is
//! the Spin component around it (wasm32 only).

pub mod multipart;

#[cfg(target_arch = "wasm32")]
mod component;
