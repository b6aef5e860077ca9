//! What the host counts, for the admin listener's Prometheus endpoint (`crate::admin`).
//!
//! One process-wide registry: requests by component, route and status with their duration;
//! instances in use; Postgres pool use (read at scrape time); outbound calls by origin; and what
//! the functions report as `chatedge-metric` lines ([`shared::metrics`]): provider calls, rate
//! limit decisions, sandbox executions. Every label value is bounded in length, and the number of
//! series each family may grow to is capped: past it, new label sets count under `other`, so no
//! client (a random model name, a wildcard outbound port) can grow the registry without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use shared::metrics::Event;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Most distinct label sets one family keeps before folding new ones into `other`.
pub const MAX_SERIES_PER_FAMILY: usize = 500;

/// Longest label value kept (longer ones are cut).
const MAX_LABEL_CHARS: usize = 64;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

fn request_buckets() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn provider_buckets() -> Histogram {
    // 5 ms .. ~160 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The host's series.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_seconds: HistogramFamily,
    instances_in_use: Family<ComponentLabels, Gauge>,
    /// Instance slots the pooling allocator keeps (set once at load).
    pub instance_slots: Gauge,
    pg_connections: Family<StateLabels, Gauge>,
    pg_max_connections: Gauge,
    outbound_requests: Family<Labels, Counter>,
    outbound_seconds: HistogramFamily,
    provider_calls: Family<Labels, Counter>,
    provider_ttft_seconds: HistogramFamily,
    provider_seconds: HistogramFamily,
    provider_tokens: Family<Labels, Counter>,
    provider_cost_usd: Family<Labels, Counter<f64, AtomicU64>>,
    ratelimit_decisions: Family<Labels, Counter>,
    sandbox_executions: Family<Labels, Counter>,
    sandbox_queue_depth: Gauge,
    /// Label sets seen, per family name: the cardinality cap.
    seen: Mutex<HashSet<(&'static str, Labels)>>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Cuts `v` to [`MAX_LABEL_CHARS`] and replaces anything outside a safe set, so a label value is
/// always short printable text.
fn label(v: &str) -> String {
    v.chars()
        .take(MAX_LABEL_CHARS)
        .map(|c| if c.is_ascii_alphanumeric() || "-_.:/@+ ".contains(c) { c } else { '_' })
        .collect()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("chatedge");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_buckets as fn() -> Histogram),
            instances_in_use: Family::default(),
            instance_slots: Gauge::default(),
            pg_connections: Family::default(),
            pg_max_connections: Gauge::default(),
            outbound_requests: Family::default(),
            outbound_seconds: Family::new_with_constructor(request_buckets as fn() -> Histogram),
            provider_calls: Family::default(),
            provider_ttft_seconds: Family::new_with_constructor(provider_buckets as fn() -> Histogram),
            provider_seconds: Family::new_with_constructor(provider_buckets as fn() -> Histogram),
            provider_tokens: Family::default(),
            provider_cost_usd: Family::default(),
            ratelimit_decisions: Family::default(),
            sandbox_executions: Family::default(),
            sandbox_queue_depth: Gauge::default(),
            seen: Mutex::new(HashSet::new()),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "Requests served, by component, route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "From the request's head to the end of its response body (or the client leaving)",
            m.request_seconds.clone(),
        );
        registry.register("instances_in_use", "Guest instances serving a request now", m.instances_in_use.clone());
        registry.register(
            "instance_slots",
            "Instances the pooling allocator keeps slots for",
            m.instance_slots.clone(),
        );
        registry.register(
            "postgres_connections",
            "Connections of the Postgres pools, in use or idle (read at scrape time)",
            m.pg_connections.clone(),
        );
        registry.register(
            "postgres_pool_max_connections",
            "The pools' combined capacity",
            m.pg_max_connections.clone(),
        );
        registry.register(
            "outbound_requests",
            "Outbound HTTP requests of the functions, by origin and status (`denied`, `error`)",
            m.outbound_requests.clone(),
        );
        registry.register(
            "outbound_response_seconds",
            "Outbound HTTP: from sending to the response's head",
            m.outbound_seconds.clone(),
        );
        registry.register(
            "provider_calls",
            "LLM provider attempts, by provider, model and status",
            m.provider_calls.clone(),
        );
        registry.register(
            "provider_ttft_seconds",
            "Time to a provider call's first token",
            m.provider_ttft_seconds.clone(),
        );
        registry.register("provider_duration_seconds", "A provider call's whole duration", m.provider_seconds.clone());
        registry.register("provider_tokens", "Tokens charged, by provider, model and kind", m.provider_tokens.clone());
        registry.register(
            "provider_cost_usd",
            "Cost charged in USD, by provider and model",
            m.provider_cost_usd.clone(),
        );
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions by policy and verdict",
            m.ratelimit_decisions.clone(),
        );
        registry.register("sandbox_executions", "Code executions by language and status", m.sandbox_executions.clone());
        registry.register(
            "sandbox_queue_depth",
            "Executions waiting for a sandbox slot (read from the sandbox at scrape time)",
            m.sandbox_queue_depth.clone(),
        );
        Metrics { registry, ..m }
    }

    /// `labels` as given while the family has room, else every value `other`.
    fn bounded(&self, family: &'static str, labels: Labels) -> Labels {
        let Ok(mut seen) = self.seen.lock() else { return labels };
        let key = (family, labels);
        if seen.contains(&key) {
            return key.1;
        }
        let in_family = seen.iter().filter(|(f, _)| *f == family).count();
        if in_family < MAX_SERIES_PER_FAMILY {
            seen.insert(key.clone());
            return key.1;
        }
        key.1.into_iter().map(|(k, _)| (k, "other".to_owned())).collect()
    }

    /// One request's response head: counted as soon as its status is known, so the count never
    /// waits on a long stream.
    pub fn request(&self, component: &str, route: &str, method: &http::Method, status: u16) {
        let method = match *method {
            http::Method::GET
            | http::Method::POST
            | http::Method::PUT
            | http::Method::PATCH
            | http::Method::DELETE
            | http::Method::HEAD
            | http::Method::OPTIONS => method.as_str(),
            _ => "other",
        };
        let labels = self.bounded(
            "http_requests",
            vec![
                ("component", label(component)),
                ("route", label(route)),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ],
        );
        self.requests.get_or_create(&labels).inc();
    }

    /// One request's end (its body's last byte, or the client leaving), `elapsed` after its head
    /// arrived.
    pub fn request_ended(&self, component: &str, route: &str, elapsed: Duration) {
        let timing =
            self.bounded("http_request_duration", vec![("component", label(component)), ("route", label(route))]);
        self.request_seconds.get_or_create(&timing).observe(elapsed.as_secs_f64());
    }

    /// One more (`+1`) or one fewer (`-1`) instance of `component` serving.
    pub fn instance(&self, component: &str, delta: i64) {
        self.instances_in_use.get_or_create(&ComponentLabels { component: label(component) }).inc_by(delta);
    }

    /// One outbound request's end: its response head after `elapsed`, or `status` `denied` or
    /// `error`.
    pub fn outbound(&self, origin: &str, status: &str, elapsed: Option<Duration>) {
        let labels = self.bounded("outbound_requests", vec![("origin", label(origin)), ("status", label(status))]);
        self.outbound_requests.get_or_create(&labels).inc();
        if let Some(e) = elapsed {
            let timing = self.bounded("outbound_response", vec![("origin", label(origin))]);
            self.outbound_seconds.get_or_create(&timing).observe(e.as_secs_f64());
        }
    }

    /// The Postgres pools' state, just before a scrape.
    pub fn set_postgres(&self, in_use: i64, idle: i64, max: i64) {
        self.pg_connections.get_or_create(&StateLabels { state: "in_use" }).set(in_use);
        self.pg_connections.get_or_create(&StateLabels { state: "idle" }).set(idle);
        self.pg_max_connections.set(max);
    }

    /// The sandbox's queue, just before a scrape.
    pub fn set_sandbox_queue(&self, queued: i64) {
        self.sandbox_queue_depth.set(queued);
    }

    /// What a function reported.
    pub fn event(&self, event: &Event) {
        match event {
            Event::ProviderCall {
                provider,
                model,
                status,
                ttft_ms,
                total_ms,
                input_tokens,
                output_tokens,
                cost_usd,
            } => {
                let calls = self.bounded(
                    "provider_calls",
                    vec![("provider", label(provider)), ("model", label(model)), ("status", label(status))],
                );
                self.provider_calls.get_or_create(&calls).inc();
                let pm = self.bounded("provider_model", vec![("provider", label(provider)), ("model", label(model))]);
                if let Some(t) = ttft_ms.filter(|t| t.is_finite() && *t >= 0.0) {
                    self.provider_ttft_seconds.get_or_create(&pm).observe(t / 1000.0);
                }
                if total_ms.is_finite() && *total_ms >= 0.0 {
                    self.provider_seconds.get_or_create(&pm).observe(total_ms / 1000.0);
                }
                for (kind, n) in [("input", input_tokens), ("output", output_tokens)] {
                    let mut labels = pm.clone();
                    labels.push(("kind", kind.to_owned()));
                    self.provider_tokens.get_or_create(&labels).inc_by(*n);
                }
                if cost_usd.is_finite() && *cost_usd > 0.0 {
                    self.provider_cost_usd.get_or_create(&pm).inc_by(*cost_usd);
                }
            }
            Event::RateLimit { policy, admitted } => {
                let verdict = if *admitted { "admitted" } else { "refused" };
                let labels = self
                    .bounded("ratelimit_decisions", vec![("policy", label(policy)), ("verdict", verdict.to_owned())]);
                self.ratelimit_decisions.get_or_create(&labels).inc();
            }
            Event::SandboxExecution { language, status } => {
                let labels =
                    self.bounded("sandbox_executions", vec![("language", label(language)), ("status", label(status))]);
                self.sandbox_executions.get_or_create(&labels).inc();
            }
        }
    }

    /// The exposition, in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_events_become_series() {
        let m = Metrics::new();
        m.event(&Event::ProviderCall {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: "ok".into(),
            ttft_ms: Some(20.0),
            total_ms: 90.0,
            input_tokens: 12,
            output_tokens: 5,
            cost_usd: 0.25,
        });
        m.event(&Event::RateLimit { policy: "chat".into(), admitted: false });
        m.event(&Event::SandboxExecution { language: "python".into(), status: "completed".into() });
        let text = m.encode();
        for line in [
            r#"chatedge_provider_calls_total{provider="openai",model="gpt-4o-mini",status="ok"} 1"#,
            r#"chatedge_provider_tokens_total{provider="openai",model="gpt-4o-mini",kind="input"} 12"#,
            r#"chatedge_provider_tokens_total{provider="openai",model="gpt-4o-mini",kind="output"} 5"#,
            r#"chatedge_provider_cost_usd_total{provider="openai",model="gpt-4o-mini"} 0.25"#,
            r#"chatedge_provider_ttft_seconds_count{provider="openai",model="gpt-4o-mini"} 1"#,
            r#"chatedge_ratelimit_decisions_total{policy="chat",verdict="refused"} 1"#,
            r#"chatedge_sandbox_executions_total{language="python",status="completed"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn series_are_capped_and_labels_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_SERIES_PER_FAMILY + 50 {
            m.event(&Event::RateLimit { policy: format!("p{i}"), admitted: true });
        }
        m.event(&Event::RateLimit { policy: "x\"}\n".repeat(100), admitted: true });
        let text = m.encode();
        let series = text.lines().filter(|l| l.starts_with("chatedge_ratelimit_decisions_total{")).count();
        assert_eq!(series, MAX_SERIES_PER_FAMILY + 1, "capped, plus the `other` series");
        assert!(text.contains(r#"chatedge_ratelimit_decisions_total{policy="other",verdict="other"} 51"#), "{text}");
        assert!(
            label(&"é\"\n".repeat(100)).chars().all(|c| c == '_') && label(&"a".repeat(500)).len() == MAX_LABEL_CHARS
        );
    }

    #[test]
    fn requests_count_by_route_and_status() {
        let m = Metrics::new();
        m.request("health", "/functions/v1/health", &http::Method::GET, 200);
        m.request("health", "/functions/v1/health", &http::Method::from_bytes(b"BREW").unwrap(), 404);
        m.request_ended("health", "/functions/v1/health", Duration::from_millis(2));
        m.request_ended("health", "/functions/v1/health", Duration::ZERO);
        let text = m.encode();
        assert!(text.contains(
            r#"chatedge_http_requests_total{component="health",route="/functions/v1/health",method="GET",status="200"} 1"#
        ));
        assert!(text.contains(r#"method="other",status="404"} 1"#), "{text}");
        assert!(text.contains(
            r#"chatedge_http_request_duration_seconds_count{component="health",route="/functions/v1/health"} 2"#
        ));
    }
}
