//! Every variable file-upload reads (besides the shared auth, database and limiter ones), read
//! in this one place, with the defaults here and nowhere else.

use crate::documents::ChunkPlan;
use crate::upload::DEFAULT_MAX_BYTES;
use shared::storage::{StorageConfig, StorageSettings};
use shared::ApiError;

/// Lifetime of download links when `upload_url_expiry_secs` is unset.
pub const DEFAULT_URL_EXPIRY_SECS: u64 = 3600;
/// Longest lifetime of a download link (SigV4 allows a week).
pub const MAX_URL_EXPIRY_SECS: u64 = 7 * 86_400;

/// The variables [`Settings::from_variables`] reads besides [`shared::storage::VARIABLES`].
pub const VARIABLES: &[&str] = &[
    "upload_max_bytes",
    "upload_allowed_types",
    "upload_url_expiry_secs",
    "document_chunk_tokens",
    "document_chunk_overlap_tokens",
];

/// The component's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where objects go.
    pub storage: StorageSettings,
    /// `upload_max_bytes`.
    pub max_bytes: usize,
    /// `upload_allowed_types`, as `upload::allowed_types` reads it.
    pub allowed_types: Option<String>,
    /// `upload_url_expiry_secs`, within 1 s and a week.
    pub url_expiry_secs: u64,
    /// How documents are cut for retrieval: `document_chunk_tokens` (50-4,000) and
    /// `document_chunk_overlap_tokens` (at most a quarter of a chunk).
    pub chunk_plan: ChunkPlan,
}

impl Settings {
    /// Reads every setting; `var` answers `None` for unset or empty variables, and a value that
    /// does not parse keeps the default.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        Settings {
            storage: StorageSettings::from_variables(var),
            max_bytes: var("upload_max_bytes").and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_BYTES),
            allowed_types: var("upload_allowed_types"),
            url_expiry_secs: var("upload_url_expiry_secs")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(DEFAULT_URL_EXPIRY_SECS)
                .clamp(1, MAX_URL_EXPIRY_SECS),
            chunk_plan: {
                let default = ChunkPlan::default();
                let max_tokens = var("document_chunk_tokens")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(default.max_tokens)
                    .clamp(50, 4000);
                let overlap_tokens = var("document_chunk_overlap_tokens")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(default.overlap_tokens)
                    .min(max_tokens / 4);
                ChunkPlan { max_tokens, overlap_tokens, ..default }
            },
        }
    }

    /// The storage to use: a 500 naming the first required variable that is not set.
    pub fn storage(&self) -> Result<StorageConfig, ApiError> {
        self.storage.config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_declared_list_is_exactly_what_is_read() {
        let read = shared::variables::names_read(|var| {
            Settings::from_variables(var);
        });
        let declared = VARIABLES.iter().chain(shared::storage::VARIABLES).map(|s| (*s).to_owned());
        assert_eq!(read, declared.collect::<BTreeSet<_>>());
    }

    #[test]
    fn defaults_live_here_and_storage_needs_its_keys() {
        let s = Settings::from_variables(|name: &str| match name {
            "upload_url_expiry_secs" => Some("99999999".into()),
            "upload_max_bytes" => Some("big".into()),
            _ => None,
        });
        assert_eq!((s.url_expiry_secs, s.max_bytes), (MAX_URL_EXPIRY_SECS, DEFAULT_MAX_BYTES));
        let e = s.storage().unwrap_err();
        assert_eq!((e.status, format!("{e:?}").contains("storage_endpoint")), (500, true));
    }
}
