//! Route matching as Spin does it: exact routes, `:name` parameters and trailing `/...`
//! wildcards, the most specific route winning.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// One `[[trigger.http]]` route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route as written in the manifest (with the base prepended).
    pub raw: String,
    /// Component id.
    pub component: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

/// A matched request.
#[derive(Debug, PartialEq)]
pub struct RouteMatch<'a> {
    /// Component id.
    pub component: &'a str,
    /// The route pattern (`spin-matched-route`, `spin-raw-component-route`).
    pub raw: &'a str,
    /// The pattern without `/...` (`spin-component-route`).
    pub component_route: String,
    /// The path below the route (`spin-path-info`): empty for exact routes.
    pub path_info: String,
    /// `:name` parameters (`spin-path-match-<name>`).
    pub params: Vec<(String, String)>,
}

fn split(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl Route {
    /// Parses a route pattern under `base`.
    pub fn new(base: &str, route: &str, component: &str) -> Result<Self> {
        if !route.starts_with('/') {
            bail!("route '{route}' must start with '/'");
        }
        let full = format!("{}/{}", base.trim_end_matches('/'), route.trim_start_matches('/'));
        let (pattern, wildcard) = match full.strip_suffix("/...") {
            Some(p) => (p.to_owned(), true),
            None if full == "/..." => (String::new(), true),
            None => (full.clone(), false),
        };
        if pattern.contains("...") {
            bail!("route '{route}': '...' is only allowed as the last segment");
        }
        let segments = split(&pattern)
            .into_iter()
            .map(|s| match s.strip_prefix(':') {
                Some(name) if !name.is_empty() => Segment::Param(name.to_owned()),
                _ => Segment::Literal(s.to_owned()),
            })
            .collect();
        Ok(Route { raw: full, component: component.to_owned(), segments, wildcard })
    }

    /// Specificity: literals beat parameters beat the wildcard, segment by segment; exact beats
    /// wildcard at equal depth.
    fn rank(&self) -> (Vec<u8>, bool) {
        let segs = self.segments.iter().map(|s| if matches!(s, Segment::Literal(_)) { 2 } else { 1 }).collect();
        (segs, !self.wildcard)
    }

    fn matches<'a>(&'a self, path: &str) -> Option<RouteMatch<'a>> {
        let parts = split(path);
        if parts.len() < self.segments.len() || (!self.wildcard && parts.len() != self.segments.len()) {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), (*part).to_owned())),
            }
        }
        let path_info = if self.wildcard {
            let rest = &parts[self.segments.len()..];
            if rest.is_empty() {
                String::new()
            } else {
                let trailing = if path.ends_with('/') { "/" } else { "" };
                format!("/{}{trailing}", rest.join("/"))
            }
        } else {
            String::new()
        };
        Some(RouteMatch {
            component: &self.component,
            raw: &self.raw,
            component_route: self.raw.strip_suffix("/...").unwrap_or(&self.raw).to_owned(),
            path_info,
            params,
        })
    }
}

/// All routes of the application.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table; two routes with the same pattern are an error, as in Spin.
    pub fn new(routes: Vec<Route>) -> Result<Self> {
        for (i, a) in routes.iter().enumerate() {
            if let Some(b) = routes[..i].iter().find(|b| b.segments == a.segments && b.wildcard == a.wildcard) {
                bail!("duplicate route '{}' (components '{}' and '{}')", a.raw, b.component, a.component);
            }
        }
        Ok(Router { routes })
    }

    /// The routes in manifest order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route matching `path`.
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.routes
            .iter()
            .filter_map(|r| r.matches(path).map(|m| (r.rank(), m)))
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::new(routes.iter().map(|(r, c)| Route::new("/", r, c).unwrap()).collect()).unwrap()
    }

    #[test]
    fn exact_and_wildcard() {
        let r = router(&[("/functions/v1/conversations/...", "conv"), ("/v1/models", "models")]);
        let m = r.route("/functions/v1/conversations").unwrap();
        assert_eq!((m.component, m.path_info.as_str()), ("conv", ""));
        let m = r.route("/functions/v1/conversations/abc/messages").unwrap();
        assert_eq!(m.path_info, "/abc/messages");
        assert_eq!(m.component_route, "/functions/v1/conversations");
        assert_eq!(r.route("/v1/models").unwrap().component, "models");
        assert!(r.route("/v1/models/x").is_none());
        assert!(r.route("/functions/v1/conversationsX").is_none());
        assert!(r.route("/").is_none());
    }

    #[test]
    fn most_specific_wins() {
        let r = router(&[("/...", "catchall"), ("/a/...", "a"), ("/a/b", "ab"), ("/a/:id", "param")]);
        assert_eq!(r.route("/a/b").unwrap().component, "ab");
        assert_eq!(r.route("/a/c").unwrap().component, "param");
        assert_eq!(r.route("/a/c/d").unwrap().component, "a");
        assert_eq!(r.route("/z").unwrap().component, "catchall");
        assert_eq!(r.route("/a/c").unwrap().params, vec![("id".to_owned(), "c".to_owned())]);
    }

    #[test]
    fn base_is_prepended() {
        let route = Route::new("/api", "/x/...", "c").unwrap();
        let r = Router::new(vec![route]).unwrap();
        assert_eq!(r.route("/api/x/y").unwrap().path_info, "/y");
        assert!(r.route("/x/y").is_none());
    }

    #[test]
    fn duplicates_are_refused() {
        let routes = vec![Route::new("/", "/a", "x").unwrap(), Route::new("/", "/a", "y").unwrap()];
        assert!(Router::new(routes).is_err());
        assert!(Route::new("/", "a", "x").is_err());
        assert!(Route::new("/", "/a/.../b", "x").is_err());
    }
}
