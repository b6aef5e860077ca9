//! OpenTelemetry traces, as Spin exports them: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OTLP over HTTP/protobuf to it. One server span
//! per request (continuing the caller's W3C `traceparent`), and a client span for each database
//! statement and each outbound HTTP call (provider, sandbox, object store) the guest makes, whose
//! `traceparent` goes along so the sandbox's own work joins the trace. Off, nothing is made.

use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;

static ENABLED: OnceLock<bool> = OnceLock::new();

const TRACER: &str = "chatedge";

/// Whether spans are being made (decided once, by [`init`]).
pub fn enabled() -> bool {
    ENABLED.get().copied().unwrap_or(false)
}

/// Starts the exporter when the environment asks for one; keep the provider for [`shutdown`].
pub fn init() -> anyhow::Result<Option<SdkTracerProvider>> {
    let wanted = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    let _ = ENABLED.set(wanted);
    if !wanted {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "chatedge".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Some(provider))
}

/// Sends what is buffered and stops the exporter (at shutdown, so the last spans are not lost).
pub fn shutdown(provider: Option<SdkTracerProvider>) {
    if let Some(p) = provider {
        let _ = p.force_flush();
        let _ = p.shutdown();
    }
}

/// Reads `traceparent` / `tracestate` from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The server span of one request, ended when dropped (when the response body ends).
#[derive(Default)]
pub struct RequestSpan {
    cx: Option<Context>,
}

impl RequestSpan {
    /// Starts it under the caller's `traceparent`, if any. `request_id` ties it to log lines.
    pub fn start(method: &http::Method, path: &str, headers: &http::HeaderMap, request_id: &str) -> Self {
        if !enabled() {
            return Self::default();
        }
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let span = global::tracer(TRACER)
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("chatedge.request_id", request_id.to_owned()),
            ])
            .start_with_context(&global::tracer(TRACER), &parent);
        Self { cx: Some(parent.with_span(span)) }
    }

    /// What the router decided and the status answered: the span's name becomes `METHOD route`.
    pub fn routed(&self, method: &http::Method, component: &str, route: &str, status: u16) {
        if let Some(cx) = &self.cx {
            let span = cx.span();
            if route != "-" {
                span.update_name(format!("{} {route}", method.as_str()));
                span.set_attribute(KeyValue::new("http.route", route.to_owned()));
            }
            span.set_attribute(KeyValue::new("chatedge.component", component.to_owned()));
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
            if status >= 500 {
                span.set_status(Status::error(format!("status {status}")));
            }
        }
    }

    /// The context child spans start under (empty when tracing is off).
    pub fn context(&self) -> Option<Context> {
        self.cx.clone()
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.span().end();
        }
    }
}

/// A client span under a request (a database statement, an outbound call), ended when dropped.
pub struct ChildSpan {
    span: opentelemetry::global::BoxedSpan,
}

impl ChildSpan {
    /// Starts one under `parent`; `None` when tracing is off or the request has no span.
    pub fn start(parent: Option<&Context>, name: String, attributes: Vec<KeyValue>) -> Option<Self> {
        let parent = parent?;
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&tracer, parent);
        Some(Self { span })
    }

    /// Puts this span's `traceparent` on an outgoing request, so the callee joins the trace.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
    }

    /// Records an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// Marks the span failed.
    pub fn fail(&mut self, message: String) {
        self.span.set_status(Status::error(message));
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.span.end();
    }
}

/// The operation of a SQL statement (its first keyword), as `db.operation.name` wants it.
pub fn sql_operation(statement: &str) -> String {
    let word: String = statement.trim_start().chars().take_while(|c| c.is_ascii_alphabetic()).take(16).collect();
    if word.is_empty() {
        "SQL".to_owned()
    } else {
        word.to_ascii_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_operations_are_the_first_keyword() {
        assert_eq!(sql_operation("  select 1"), "SELECT");
        assert_eq!(sql_operation("with x as (select 1) select * from x"), "WITH");
        assert_eq!(sql_operation("(select 1)"), "SQL");
        assert_eq!(sql_operation(&"a".repeat(100)), "A".repeat(16));
    }

    #[test]
    fn nothing_is_made_while_tracing_is_off() {
        let span = RequestSpan::start(&http::Method::GET, "/x", &http::HeaderMap::new(), "id");
        assert!(span.context().is_none());
        assert!(ChildSpan::start(None, "q".into(), Vec::new()).is_none());
    }
}
