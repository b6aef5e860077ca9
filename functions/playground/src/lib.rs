//! The playground: a static page served by the app itself at `/` (its scripts and styles under
//! `/playground/`), so it works wherever the app runs, Spin included, with nothing fetched from a
//! CDN. Spin's own static-file server is a separate download; three files compiled into the
//! component need none. `asset` (which file, which type) is plain Rust, tested natively;
//! `component` is the Spin component around it (wasm32 only).

/// One file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The `content-type` it is served with.
    pub content_type: &'static str,
    /// Its bytes, compiled in.
    pub body: &'static [u8],
}

const INDEX: Asset = Asset { content_type: "text/html; charset=utf-8", body: include_bytes!("../assets/index.html") };
const SCRIPT: Asset =
    Asset { content_type: "text/javascript; charset=utf-8", body: include_bytes!("../assets/app.js") };
const STYLE: Asset = Asset { content_type: "text/css; charset=utf-8", body: include_bytes!("../assets/style.css") };

/// What the page may load and talk to: its own files; any origin for `fetch` (the app, and the
/// Supabase project a visitor signs in to); images from anywhere (charts come as presigned
/// object-store links or data URLs). No inline scripts, no frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob: http: https:; connect-src *; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The file for a request path (as the host hands it over: the full path), if it is one of ours.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "" | "/index.html" | "/playground" | "/playground/" | "/playground/index.html" => Some(INDEX),
        "/playground/app.js" => Some(SCRIPT),
        "/playground/style.css" => Some(STYLE),
        _ => None,
    }
}

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_found_and_nothing_else() {
        assert_eq!(asset("/").map(|a| a.content_type), Some("text/html; charset=utf-8"));
        assert_eq!(asset("/playground/app.js").map(|a| a.content_type), Some("text/javascript; charset=utf-8"));
        assert_eq!(asset("/playground/style.css").map(|a| a.content_type), Some("text/css; charset=utf-8"));
        for path in ["/playground/../Cargo.toml", "/playground/%2e%2e/x", "/etc/passwd", "/playground/app.js/x"] {
            assert_eq!(asset(path), None, "{path}");
        }
    }

    #[test]
    fn the_page_loads_its_own_script_and_no_cdn() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        assert!(html.contains(r#"src="/playground/app.js""#) && html.contains(r#"href="/playground/style.css""#));
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "remote asset");
        let js = std::str::from_utf8(SCRIPT.body).unwrap();
        assert!(!js.contains("innerHTML"), "model and program output must be set as text, never as HTML");
    }
}
