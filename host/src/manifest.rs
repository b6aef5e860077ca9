//! spin.toml (manifest v2): the parts chatedge serves — application variables, HTTP triggers,
//! components with their sources, variables and allowed outbound hosts.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest as written.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    /// Must be 2.
    pub spin_manifest_version: u32,
    /// `[application]`.
    pub application: Application,
    /// `[variables]`: the application variables users set.
    #[serde(default)]
    pub variables: BTreeMap<String, AppVariable>,
    /// `[[trigger.http]]` and friends.
    #[serde(default)]
    pub trigger: Triggers,
    /// `[component.<id>]`.
    #[serde(default)]
    pub component: BTreeMap<String, ComponentSpec>,
}

/// `[application]`.
#[derive(Debug, Deserialize)]
pub struct Application {
    /// Application name, shown on start.
    pub name: String,
    /// Version, shown on start.
    #[serde(default)]
    pub version: Option<String>,
    /// `[application.trigger.http] base` (Spin 2 keeps it for compatibility).
    #[serde(default)]
    pub trigger: Option<ApplicationTriggers>,
}

/// `[application.trigger]`.
#[derive(Debug, Default, Deserialize)]
pub struct ApplicationTriggers {
    /// `[application.trigger.http]`.
    pub http: Option<ApplicationHttp>,
}

/// `[application.trigger.http]`.
#[derive(Debug, Default, Deserialize)]
pub struct ApplicationHttp {
    /// Prefix of every route.
    pub base: Option<String>,
}

/// One application variable: either a default or required, optionally secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppVariable {
    /// Value used when no provider has one.
    pub default: Option<String>,
    /// Startup fails when no provider has a value.
    #[serde(default)]
    pub required: bool,
    /// Never printed.
    #[serde(default)]
    pub secret: bool,
    /// Human description (ignored).
    #[serde(default)]
    pub description: Option<String>,
}

/// `[trigger]`.
#[derive(Debug, Default, Deserialize)]
pub struct Triggers {
    /// `[[trigger.http]]`.
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

/// One `[[trigger.http]]`.
#[derive(Debug, Deserialize)]
pub struct HttpTrigger {
    /// Route pattern: `/exact`, `/prefix/...`, `/users/:id`.
    pub route: RouteSpec,
    /// Component id that serves it.
    pub component: String,
    /// Spin's executor setting; only the default wasi-http executor is supported.
    #[serde(default)]
    pub executor: Option<toml::Value>,
}

/// A route, or `{ private = true }` (reachable only from other components: not served here).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RouteSpec {
    /// A public route.
    Path(String),
    /// `{ private = true }`.
    Private {
        /// Always true.
        private: bool,
    },
}

/// `[component.<id>]`.
#[derive(Debug, Deserialize)]
pub struct ComponentSpec {
    /// Path to the component's .wasm, relative to the manifest.
    pub source: String,
    /// Hosts this component may reach; templates allowed.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variables: name -> template over application variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Key-value stores the component may open.
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    /// SQLite databases the component may open.
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    /// Environment variables handed to the guest.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `[component.<id>.build]` (used by `spin build`; informational here).
    #[serde(default)]
    pub build: Option<toml::Value>,
    /// Description (ignored).
    #[serde(default)]
    pub description: Option<String>,
}

/// A manifest plus the directory its relative paths start from.
pub struct LoadedManifest {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Directory of spin.toml.
    pub dir: PathBuf,
}

impl LoadedManifest {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let manifest: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if manifest.spin_manifest_version != 2 {
            bail!("only spin_manifest_version = 2 is supported");
        }
        for (name, var) in &manifest.variables {
            crate::capabilities::variables::check_name(name)
                .with_context(|| format!("application variable '{name}'"))?;
            if var.required && var.default.is_some() {
                bail!("variable '{name}' cannot be both required and have a default");
            }
        }
        for trigger in &manifest.trigger.http {
            if !manifest.component.contains_key(&trigger.component) {
                bail!("trigger route {:?} names unknown component '{}'", trigger.route, trigger.component);
            }
            if trigger.executor.is_some() {
                tracing::warn!("component '{}': executor settings are ignored (wasi-http only)", trigger.component);
            }
        }
        let dir = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(LoadedManifest { manifest, dir })
    }

    /// The HTTP base path (default `/`).
    pub fn base(&self) -> String {
        self.manifest
            .application
            .trigger
            .as_ref()
            .and_then(|t| t.http.as_ref())
            .and_then(|h| h.base.clone())
            .unwrap_or_else(|| "/".to_owned())
    }

    /// Absolute path of a component's source.
    pub fn source_path(&self, component: &ComponentSpec) -> PathBuf {
        let p = Path::new(&component.source);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Manifest> {
        Ok(toml::from_str(s)?)
    }

    #[test]
    fn parses_a_v2_manifest() {
        let m = parse(
            r#"
spin_manifest_version = 2
[application]
name = "x"
[variables]
db_url = { default = "postgres://a" }
secret = { required = true, secret = true }
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = { private = true }
component = "a"
[component.a]
source = "a.wasm"
allowed_outbound_hosts = ["postgres://{{ db_host }}"]
[component.a.variables]
db_url = "{{ db_url }}"
"#,
        )
        .unwrap();
        assert_eq!(m.trigger.http.len(), 2);
        assert!(matches!(m.trigger.http[1].route, RouteSpec::Private { private: true }));
        assert!(m.variables["secret"].required);
        assert_eq!(m.component["a"].variables["db_url"], "{{ db_url }}");
    }
}
