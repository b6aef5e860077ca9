//! Outbound network policy: `allowed_outbound_hosts`, enforced on wasi:http requests and on
//! Postgres connections, as Spin does. A denied request is an error to the guest and a log line.
//! Allowed requests go out on kept-alive connections (`http_pool`).

use anyhow::{bail, Context, Result};
use std::sync::Arc;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// One allowed pattern: `scheme://host[:port]`, each part possibly a wildcard.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any subdomain, not the apex.
    Subdomain(String),
    /// `10.0.0.0/8`, `fd00::/8`: any address in the network.
    Network(std::net::IpAddr, u8),
}

/// Whether `ip` lies in `network`/`prefix`.
fn in_network(ip: std::net::IpAddr, network: std::net::IpAddr, prefix: u8) -> bool {
    use std::net::IpAddr;
    match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|v4| in_network(v4.into(), network, prefix)),
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

/// The default port of the schemes Spin knows.
pub fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "postgres" => 5432,
        "mysql" => 3306,
        "redis" => 6379,
        "mqtt" => 1883,
        _ => return None,
    })
}

impl AllowedHost {
    /// Parses one (already template-expanded) entry.
    pub fn parse(raw: &str) -> Result<Self> {
        let (scheme, rest) =
            raw.split_once("://").with_context(|| format!("'{raw}': expected scheme://host[:port]"))?;
        let rest = rest.trim_end_matches('/');
        let scheme = if scheme == "*" { None } else { Some(scheme.to_ascii_lowercase()) };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if (!h.ends_with(']') || rest.starts_with('[')) && !p.contains(']') => (h, Some(p)),
            _ => (rest, None),
        };
        // A network (`10.0.0.0/8`); any other `/` is a path, which has no place here.
        let network = host.split_once('/').map(|(ip, prefix)| {
            let ip: std::net::IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
            let prefix: u8 = prefix.trim_end_matches(']').parse().ok()?;
            (prefix <= if ip.is_ipv4() { 32 } else { 128 }).then_some((ip, prefix))
        });
        let host = if let Some(network) = network {
            let (ip, prefix) =
                network.with_context(|| format!("'{raw}': paths are not allowed in allowed_outbound_hosts"))?;
            HostPattern::Network(ip, prefix)
        } else if port.is_some_and(|p| p.contains('/')) {
            bail!("'{raw}': paths are not allowed in allowed_outbound_hosts");
        } else if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomain(suffix.to_ascii_lowercase())
        } else if host.is_empty() {
            bail!("'{raw}': missing host");
        } else {
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        let port = match port {
            Some("*") => PortPattern::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => PortPattern::Range(a.parse()?, b.parse::<u16>()?.saturating_sub(1)),
                None => {
                    let p: u16 = p.parse().with_context(|| format!("'{raw}': bad port"))?;
                    PortPattern::Range(p, p)
                }
            },
            None => {
                let p = scheme
                    .as_deref()
                    .and_then(default_port)
                    .with_context(|| format!("'{raw}': a port is required for this scheme"))?;
                PortPattern::Range(p, p)
            }
        };
        Ok(AllowedHost { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this pattern.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h.trim_start_matches('[').trim_end_matches(']') == host,
            HostPattern::Subdomain(suffix) => host.strip_suffix(suffix.as_str()).is_some_and(|p| p.ends_with('.')),
            HostPattern::Network(net, prefix) => host.parse().is_ok_and(|ip| in_network(ip, *net, *prefix)),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Range(a, b) => (a..=b).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

/// A component's whole outbound policy.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    /// Component id, for log lines.
    pub component: String,
    allowed: Vec<AllowedHost>,
}

impl OutboundPolicy {
    /// Parses every entry; one bad entry stops startup.
    pub fn new(component: &str, entries: &[String]) -> Result<Self> {
        let allowed = entries
            .iter()
            .map(|e| AllowedHost::parse(e).with_context(|| format!("component '{component}' allowed_outbound_hosts")))
            .collect::<Result<_>>()?;
        Ok(OutboundPolicy { component: component.to_owned(), allowed })
    }

    /// Checks one destination, logging a denial.
    pub fn check(&self, scheme: &str, host: &str, port: u16) -> bool {
        let ok = self.allowed.iter().any(|a| a.allows(scheme, host, port));
        if !ok {
            tracing::warn!(
                "component '{}': outbound request to {scheme}://{host}:{port} denied (not in allowed_outbound_hosts)",
                self.component
            );
        }
        ok
    }
}

/// The wasi:http hooks of one request: policy check, then the default sender.
pub struct OutboundHttp {
    /// The component's policy.
    pub policy: Arc<crate::runtime::ComponentRuntime>,
    /// The request's trace context: each call gets a client span under it (`telemetry`).
    pub trace: Option<opentelemetry::Context>,
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().or_else(|| default_port(&scheme)).unwrap_or(0);
        let origin = format!("{scheme}://{host}:{port}");
        let metrics = crate::metrics::metrics();
        if !self.policy.outbound.check(&scheme, &host, port) {
            metrics.outbound(&origin, "denied", None);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        // A client span until the response head (the query string stays out: it may hold keys).
        let mut request = request;
        // Only when tracing: no work per call otherwise.
        let mut span = self.trace.as_ref().and_then(|trace| {
            crate::telemetry::ChildSpan::start(
                Some(trace),
                request.method().as_str().to_owned(),
                vec![
                    opentelemetry::KeyValue::new("http.request.method", request.method().as_str().to_owned()),
                    opentelemetry::KeyValue::new("server.address", host.clone()),
                    opentelemetry::KeyValue::new("server.port", i64::from(port)),
                    opentelemetry::KeyValue::new("url.full", format!("{origin}{}", request.uri().path())),
                ],
            )
        });
        if let Some(span) = &span {
            span.inject(request.headers_mut());
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let started = std::time::Instant::now();
            // Kept-alive connections per origin (`http_pool`); their I/O runs in their own task.
            let res = match super::http_pool::send(request, options).await {
                Ok(r) => {
                    metrics.outbound(&origin, r.status().as_str(), Some(started.elapsed()));
                    if let Some(span) = span.as_mut() {
                        span.set(opentelemetry::KeyValue::new(
                            "http.response.status_code",
                            i64::from(r.status().as_u16()),
                        ));
                    }
                    r
                }
                Err(e) => {
                    metrics.outbound(&origin, "error", Some(started.elapsed()));
                    if let Some(span) = span.as_mut() {
                        span.fail(e.to_string());
                    }
                    return Err(e);
                }
            };
            drop(span);
            let io = async { Ok(()) };
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, scheme: &str, host: &str, port: u16) -> bool {
        AllowedHost::parse(pattern).unwrap().allows(scheme, host, port)
    }

    #[test]
    fn exact_hosts_use_default_ports() {
        assert!(allows("https://api.openai.com", "https", "api.openai.com", 443));
        assert!(!allows("https://api.openai.com", "https", "api.openai.com", 8443));
        assert!(!allows("https://api.openai.com", "http", "api.openai.com", 443));
        assert!(!allows("https://api.openai.com", "https", "evil.com", 443));
        assert!(allows("postgres://127.0.0.1:6543", "postgres", "127.0.0.1", 6543));
        assert!(allows("postgres://db.local", "postgres", "db.local", 5432));
    }

    #[test]
    fn wildcards() {
        assert!(allows("*://127.0.0.1:*", "http", "127.0.0.1", 9999));
        assert!(allows("https://*.supabase.co", "https", "x.supabase.co", 443));
        assert!(!allows("https://*.supabase.co", "https", "supabase.co", 443));
        assert!(!allows("https://*.supabase.co", "https", "xsupabase.co", 443));
        assert!(allows("http://localhost:3000..3010", "http", "localhost", 3005));
        assert!(!allows("http://localhost:3000..3010", "http", "localhost", 3010));
        assert!(allows("http://[::1]:8080", "http", "[::1]", 8080));
    }

    #[test]
    fn networks() {
        assert!(allows("*://127.0.0.0/24:7", "tcp", "127.0.0.1", 7));
        assert!(!allows("*://127.0.0.0/24:7", "tcp", "127.0.1.1", 7));
        assert!(!allows("*://127.0.0.0/24:7", "tcp", "127.0.0.1", 8));
        assert!(allows("tcp://10.0.0.0/8:*", "tcp", "10.200.3.4", 5432));
        assert!(allows("tcp://[fd00::]/8:443", "tcp", "fd12::1", 443));
        assert!(allows("tcp://127.0.0.1/32:9", "tcp", "127.0.0.1", 9));
        assert!(AllowedHost::parse("tcp://10.0.0.0/33:1").is_err());
        assert!(AllowedHost::parse("tcp://example.com/24:1").is_err());
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in ["api.openai.com", "https://", "https://x.com/path", "custom://x", "http://x:port"] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = OutboundPolicy::new("c", &[]).unwrap();
        assert!(!p.check("https", "example.com", 443));
    }
}
