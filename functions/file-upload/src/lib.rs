//! `/functions/v1/file-upload`: streamed uploads into S3-protocol storage, metadata through RLS.
//! `multipart` (reading and validating files), `upload` (names, types, storage keys) and
//! `storage` (presigned S3 requests) are plain Rust, tested natively; `component` is the Spin
//! component around them (wasm32 only).

pub mod multipart;
pub mod storage;
pub mod upload;

/// Every variable the component reads (auth, database, the `upload` and `api` policies,
/// storage, upload limits): exactly what spin.toml's `[component.file-upload.variables]` must
/// map (the storage and upload ones are read in `component.rs`).
pub fn variables() -> Vec<String> {
    let mut names = shared::variables::signed_in(&["upload", "api"]);
    names.extend(
        [
            "storage_endpoint",
            "storage_public_endpoint",
            "storage_bucket",
            "storage_region",
            "storage_access_key_id",
            "storage_secret_access_key",
            "storage_path_style",
            "upload_max_bytes",
            "upload_allowed_types",
            "upload_url_expiry_secs",
        ]
        .map(str::to_owned),
    );
    names
}

#[cfg(target_arch = "wasm32")]
mod component;
