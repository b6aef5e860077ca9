//! `/functions/v1/file-upload`: streamed uploads into S3-protocol storage, metadata through RLS.
//! `multipart` (reading and validating files), `upload` (names, types, storage keys) and
//! `storage` (presigned S3 requests) are plain Rust, tested natively; `component` is the Spin
//! component around them (wasm32 only).

pub mod multipart;
pub mod storage;
pub mod upload;

#[cfg(target_arch = "wasm32")]
mod component;
