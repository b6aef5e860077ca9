//! `/functions/v1/file-upload`: streamed uploads into S3-protocol storage, metadata through RLS.
//! `documents` (a document's text in chunks for retrieval, `pdf` its PDF text layer), `multipart` (reading and validating files), `upload` (names, types, storage keys) and
//! `storage` (presigned S3 requests) and `settings` (its variables, read once) are plain Rust, tested natively; `component` is the Spin
//! component around them (wasm32 only).

pub mod documents;
pub mod multipart;
pub mod pdf;
pub mod settings;
pub mod upload;

/// Every variable the component reads (auth, database, the `upload` and `api` policies,
/// storage, upload limits): exactly what spin.toml's `[component.file-upload.variables]` must
/// map.
pub fn variables() -> Vec<String> {
    let mut names = shared::variables::signed_in(&["upload", "api"]);
    names.extend(settings::VARIABLES.iter().chain(shared::storage::VARIABLES).map(|s| (*s).to_owned()));
    names
}

#[cfg(target_arch = "wasm32")]
mod component;
