//! Spin variables: `fermyon:spin/variables@2.0.0` and `spin:variables/variables@3.0.0`.
//!
//! Resolution follows Spin: a component variable is a template over application variables; an
//! application variable takes the first value among the providers (the `SPIN_VARIABLE_<NAME>`
//! environment, then values the dev stack generated), then its manifest default; a required
//! variable with none of these stops startup.

use crate::manifest::{AppVariable, Manifest};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};

/// Spin's rule for variable names: lower-case ASCII letters, digits and underscores, starting with
/// a letter.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("invalid variable name '{name}': use lower-case letters, digits and '_', starting with a letter");
    }
    Ok(())
}

/// Where application variable values come from, in priority order.
#[derive(Clone, Default)]
pub struct Providers {
    /// Values from the process environment (`SPIN_VARIABLE_*`), read once at startup.
    pub env: HashMap<String, String>,
    /// Values the dev stack generated (database URL, JWT secret), below the environment.
    pub dev: HashMap<String, String>,
}

impl Providers {
    /// Reads `SPIN_VARIABLE_*` from the environment.
    pub fn from_env() -> Self {
        let env = std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix("SPIN_VARIABLE_").map(|n| (n.to_ascii_lowercase(), v)))
            .collect();
        Providers { env, dev: HashMap::new() }
    }

    /// True when a provider (not a default) supplies `name`.
    pub fn provides(&self, name: &str) -> bool {
        self.env.contains_key(name) || self.dev.contains_key(name)
    }
}

/// Resolved application variables.
pub struct AppVariables {
    values: BTreeMap<String, Option<String>>,
    secret: Vec<String>,
}

impl AppVariables {
    /// Resolves every application variable; fails naming each required one without a value.
    pub fn resolve(manifest: &Manifest, providers: &Providers) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, AppVariable { default, required, .. }) in &manifest.variables {
            let value =
                providers.env.get(name).or_else(|| providers.dev.get(name)).cloned().or_else(|| default.clone());
            if value.is_none() && *required {
                missing.push(format!("{name} (set SPIN_VARIABLE_{})", name.to_ascii_uppercase()));
            }
            values.insert(name.clone(), value);
        }
        if !missing.is_empty() {
            bail!("required variables have no value: {}", missing.join(", "));
        }
        let secret = manifest.variables.iter().filter(|(_, v)| v.secret).map(|(k, _)| k.clone()).collect();
        Ok(AppVariables { values, secret })
    }

    /// The value of an application variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.as_deref())
    }

    /// Whether the variable is marked secret (never printed).
    pub fn is_secret(&self, name: &str) -> bool {
        self.secret.iter().any(|s| s == name)
    }

    /// Expands `{{ name }}` templates; an unknown or unset variable is an error.
    pub fn expand(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { bail!("unterminated '{{{{' in template '{template}'") };
            let name = after[..end].trim();
            check_name(name)?;
            if !self.values.contains_key(name) {
                bail!("template '{template}' names undeclared application variable '{name}'");
            }
            match self.get(name) {
                Some(v) => out.push_str(v),
                None => bail!("application variable '{name}' has no value"),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// One component's variables after expansion; looked up by the guest per call.
#[derive(Debug, Default)]
pub struct ComponentVariables {
    values: HashMap<String, Result<String, String>>,
}

/// A `variables.get` failure, as both WIT versions spell it.
#[derive(Debug, PartialEq)]
pub enum GetError {
    /// Not a valid variable name.
    InvalidName(String),
    /// Not declared for this component.
    Undefined(String),
    /// Declared but its template could not be resolved.
    Provider(String),
}

impl ComponentVariables {
    /// Expands each of a component's variable templates. Failures are kept per variable and
    /// surface to the guest on `get`, as Spin does.
    pub fn new(templates: &BTreeMap<String, String>, app: &AppVariables) -> Result<Self> {
        let mut values = HashMap::new();
        for (name, template) in templates {
            check_name(name)?;
            values.insert(name.clone(), app.expand(template).map_err(|e| e.to_string()));
        }
        Ok(ComponentVariables { values })
    }

    /// What the guest's `get(name)` returns.
    pub fn get(&self, name: &str) -> Result<String, GetError> {
        if check_name(name).is_err() {
            return Err(GetError::InvalidName(name.to_owned()));
        }
        match self.values.get(name) {
            None => Err(GetError::Undefined(format!("no variable for \"{name}\""))),
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(GetError::Provider(e.clone())),
        }
    }
}

mod bindings_impl {
    use super::GetError;
    use crate::bindings::fermyon::spin::variables as v2;
    use crate::bindings::spin::variables::variables as v3;
    use crate::runtime::RequestState;

    impl v2::Host for RequestState {
        async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, v2::Error>> {
            Ok(self.component.variables.get(&name).map_err(|e| match e {
                GetError::InvalidName(m) => v2::Error::InvalidName(m),
                GetError::Undefined(m) => v2::Error::Undefined(m),
                GetError::Provider(m) => v2::Error::Provider(m),
            }))
        }
    }

    impl v3::Host for RequestState {
        async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, v3::Error>> {
            Ok(self.component.variables.get(&name).map_err(|e| match e {
                GetError::InvalidName(m) => v3::Error::InvalidName(m),
                GetError::Undefined(m) => v3::Error::Undefined(m),
                GetError::Provider(m) => v3::Error::Provider(m),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(vars: &str) -> Manifest {
        toml::from_str(&format!("spin_manifest_version = 2\n[application]\nname='x'\n[variables]\n{vars}")).unwrap()
    }

    #[test]
    fn environment_beats_dev_beats_default() {
        let m = manifest("a = { default = 'd' }\nb = { default = 'd' }\nc = { default = 'd' }");
        let mut p = Providers::default();
        p.env.insert("a".into(), "env".into());
        p.dev.insert("a".into(), "dev".into());
        p.dev.insert("b".into(), "dev".into());
        let vars = AppVariables::resolve(&m, &p).unwrap();
        assert_eq!((vars.get("a"), vars.get("b"), vars.get("c")), (Some("env"), Some("dev"), Some("d")));
    }

    #[test]
    fn required_without_value_fails_naming_the_env_var() {
        let m = manifest("key = { required = true, secret = true }");
        let err = AppVariables::resolve(&m, &Providers::default()).err().unwrap().to_string();
        assert!(err.contains("SPIN_VARIABLE_KEY"), "{err}");
    }

    #[test]
    fn templates_expand_and_component_gets_follow_spin() {
        let m = manifest("host = { default = 'db' }\nport = { default = '5432' }\nunset = { required = false }");
        let vars = AppVariables::resolve(&m, &Providers::default()).unwrap();
        assert_eq!(vars.expand("postgres://{{host}}:{{ port }}/x").unwrap(), "postgres://db:5432/x");
        assert!(vars.expand("{{ nope }}").is_err());
        let templates = BTreeMap::from([
            ("url".to_owned(), "x-{{ host }}".to_owned()),
            ("broken".to_owned(), "{{ unset }}".to_owned()),
        ]);
        let cv = ComponentVariables::new(&templates, &vars).unwrap();
        assert_eq!(cv.get("url"), Ok("x-db".into()));
        assert!(matches!(cv.get("missing"), Err(GetError::Undefined(_))));
        assert!(matches!(cv.get("Bad-Name"), Err(GetError::InvalidName(_))));
        assert!(matches!(cv.get("broken"), Err(GetError::Provider(_))));
    }

    #[test]
    fn names() {
        assert!(check_name("db_url2").is_ok());
        for bad in ["", "2a", "A", "a-b", "_a"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
