//! The runtime config file (`chatedge up --runtime-config-file`), in Spin's format, for the
//! parts chatedge implements: where key-value stores and SQLite databases live.
//!
//! ```toml
//! [key_value_store.default]
//! type = "spin"                      # a SQLite file
//! path = ".spin/sqlite_key_value.db"
//!
//! [key_value_store.shared]
//! type = "redis"
//! url = "redis://localhost:6379"
//!
//! [sqlite_database.default]
//! type = "spin"
//! path = ".spin/sqlite_db.db"
//! ```
//!
//! Relative paths are taken from the config file's folder. Without a file (or for labels it
//! does not name), the `default` store and database are SQLite files in the state folder, as
//! Spin keeps them in `.spin/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::capabilities::keyvalue::StoreConfig;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    key_value_store: HashMap<String, Entry>,
    #[serde(default)]
    sqlite_database: HashMap<String, Entry>,
    /// Everything else Spin reads (llm_compute, variables_provider, ...): not for us to judge.
    #[serde(flatten)]
    _other: HashMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
    url: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Key-value stores by label.
    pub key_value_stores: HashMap<String, StoreConfig>,
    /// SQLite databases by label: the file each lives in (`None`: in memory).
    pub sqlite_databases: HashMap<String, Option<PathBuf>>,
}

impl RuntimeConfig {
    /// Reads `file` (if any) and fills in the defaults under `state_dir`.
    pub fn load(file: Option<&Path>, state_dir: &Path) -> Result<Self> {
        let mut config = RuntimeConfig::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let parsed: File = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
            for (label, entry) in parsed.key_value_store {
                let store = match entry.kind.as_str() {
                    "spin" => StoreConfig::Spin {
                        path: entry
                            .path
                            .as_deref()
                            .map(resolve)
                            .unwrap_or_else(|| state_dir.join("sqlite_key_value.db")),
                    },
                    "redis" => StoreConfig::Redis {
                        url: entry.url.with_context(|| format!("key_value_store.{label}: a redis store needs url"))?,
                    },
                    "memory" => StoreConfig::Memory,
                    other => bail!(
                        "key_value_store.{label}: type '{other}' is not one chatedge provides (spin, redis, memory)"
                    ),
                };
                config.key_value_stores.insert(label, store);
            }
            for (label, entry) in parsed.sqlite_database {
                let db = match entry.kind.as_str() {
                    "spin" => {
                        Some(entry.path.as_deref().map(resolve).unwrap_or_else(|| state_dir.join("sqlite_db.db")))
                    }
                    "memory" => None,
                    other => bail!("sqlite_database.{label}: type '{other}' is not one chatedge provides (spin)"),
                };
                config.sqlite_databases.insert(label, db);
            }
        }
        config
            .key_value_stores
            .entry("default".into())
            .or_insert_with(|| StoreConfig::Spin { path: state_dir.join("sqlite_key_value.db") });
        config.sqlite_databases.entry("default".into()).or_insert_with(|| Some(state_dir.join("sqlite_db.db")));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_format_with_defaults_in_the_state_folder() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("runtime-config.toml");
        std::fs::write(
            &file,
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://localhost:6379\"\n\
             [key_value_store.cache]\ntype = \"spin\"\npath = \"data/cache.db\"\n\
             [llm_compute]\ntype = \"spin\"\n",
        )?;
        let config = RuntimeConfig::load(Some(&file), Path::new("/state"))?;
        assert_eq!(config.key_value_stores["default"], StoreConfig::Redis { url: "redis://localhost:6379".into() });
        assert_eq!(config.key_value_stores["cache"], StoreConfig::Spin { path: dir.path().join("data/cache.db") });
        assert_eq!(config.sqlite_databases["default"], Some(PathBuf::from("/state/sqlite_db.db")));
        let none = RuntimeConfig::load(None, Path::new("/state"))?;
        assert_eq!(none.key_value_stores["default"], StoreConfig::Spin { path: "/state/sqlite_key_value.db".into() });
        std::fs::write(&file, "[key_value_store.x]\ntype = \"azure_cosmos\"\n")?;
        assert!(RuntimeConfig::load(Some(&file), Path::new("/state")).is_err());
        Ok(())
    }
}
