//! CORS for browsers calling the functions directly (supabase-js, fetch).

/// Headers a browser may send: what supabase-js and the OpenAI SDKs set.
pub const ALLOW_HEADERS: &str = "authorization, x-client-info, apikey, content-type, x-provider-api-key, x-file-name, openai-organization, openai-project, x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout";

/// Headers a browser script may read from our responses (rate-limit state, request id).
pub const EXPOSE_HEADERS: &str = "retry-after, ratelimit, ratelimit-policy, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, x-request-id, x-chatedge-conversation-id, x-chatedge-message-id, x-chatedge-user-message-id, x-chatedge-provider";

/// The CORS headers for every response. `origin` is echoed when given so that credentials work;
/// otherwise `*`.
pub fn headers(origin: Option<&str>) -> Vec<(&'static str, String)> {
    let allow_origin = match origin {
        Some(o) if !o.is_empty() && o.len() < 512 && o.bytes().all(|b| b.is_ascii_graphic()) => o.to_owned(),
        _ => "*".to_owned(),
    };
    let mut h = vec![
        ("access-control-allow-origin", allow_origin.clone()),
        ("access-control-allow-headers", ALLOW_HEADERS.to_owned()),
        ("access-control-allow-methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS".to_owned()),
        ("access-control-expose-headers", EXPOSE_HEADERS.to_owned()),
        ("access-control-max-age", "86400".to_owned()),
    ];
    if allow_origin != "*" {
        h.push(("vary", "Origin".to_owned()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn echoes_a_sane_origin_and_varies_on_it() {
        let h = headers(Some("https://app.example.com"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
    }

    #[test]
    fn falls_back_to_star_for_missing_or_odd_origins() {
        assert_eq!(get(&headers(None), "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&headers(Some("a\r\nb")), "access-control-allow-origin"), Some("*"));
        assert!(get(&headers(None), "vary").is_none());
        assert!(ALLOW_HEADERS.contains("apikey") && ALLOW_HEADERS.contains("authorization"));
    }
}
