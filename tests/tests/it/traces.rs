//! OTLP traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local receiver (a real HTTP
//! server decoding the collector's protobuf messages), each request is a server span continuing
//! the caller's `traceparent`, with client spans for its database statements and its provider and
//! sandbox calls, and the provider sees the trace in its own `traceparent`.

use crate::chat::start;
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::TestDb;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

/// Spans the receiver has got so far.
fn spans(received: &Mutex<Vec<Span>>) -> Vec<Span> {
    received.lock().map(|s| s.clone()).unwrap_or_default()
}

#[tokio::test]
async fn requests_are_traced_with_database_provider_and_sandbox_spans() -> anyhow::Result<()> {
    let received: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = received.clone();
    let (collector, _task) = chatedge_tests::serve_http(move |req: hyper::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if path == "/v1/traces" {
                if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                    let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                    for resource in export.resource_spans {
                        for scope in resource.scope_spans {
                            all.extend(scope.spans);
                        }
                    }
                }
            }
            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()))
        }
    })
    .await?;
    let fake = FakeProvider::start_by_kind(
        fake_llm::openai_stream("gpt-4o-mini", &["tr", "aced"], 5, 2),
        fake_llm::openai_completion("gpt-4o-mini", "traced", 5, 1),
    )
    .await?;
    let db = TestDb::start().await?;
    let endpoint = format!("http://{collector}");
    let host = start(
        &db,
        &[("openai", &fake)],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000"),
        ],
    )
    .await?;
    let user = db.user().await?;

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let chat = host
        .send(
            "POST",
            "/functions/v1/chat-completion",
            Some(&user.token),
            Some(json!({"message": "trace me", "stream": false}).to_string().into_bytes()),
            &[("traceparent", &traceparent)],
        )
        .await?;
    assert_eq!(chat.status, 200, "{}", String::from_utf8_lossy(&chat.body));
    let code = host
        .json("POST", "/functions/v1/code-execution", &user.token, json!({"language": "python", "code": "print(1)"}))
        .await?;
    assert_eq!(code.status, 200, "{}", String::from_utf8_lossy(&code.body));

    // The exporter sends in batches; wait for both requests' spans (a condition, not a time).
    let provider_port = fake.origin.rsplit(':').next().unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (chat_span, code_span) = loop {
        let all = spans(&received);
        let server = |prefix: &str| {
            all.iter().find(|s| s.kind == SpanKind::Server as i32 && s.name.starts_with(prefix)).cloned()
        };
        let children_done = |parent: &Span| all.iter().filter(|s| s.parent_span_id == parent.span_id).count() >= 2;
        if let (Some(c), Some(x)) =
            (server("POST /functions/v1/chat-completion"), server("POST /functions/v1/code-execution"))
        {
            if children_done(&c) && children_done(&x) {
                break (c, x);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans never arrived: {:#?}",
            all.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all = spans(&received);
    let children =
        |parent: &Span| -> Vec<Span> { all.iter().filter(|s| s.parent_span_id == parent.span_id).cloned().collect() };

    // The chat: the caller's trace continued, its statements and its provider call under it.
    assert_eq!(hex(&chat_span.trace_id), TRACE_ID);
    assert_eq!(hex(&chat_span.parent_span_id), CALLER_SPAN);
    assert_eq!(attribute(&chat_span, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(&chat_span, "chatedge.component").as_deref(), Some("chat-completion"));
    let under_chat = children(&chat_span);
    assert!(under_chat.iter().all(|s| s.trace_id == chat_span.trace_id && s.kind == SpanKind::Client as i32));
    let statements: Vec<&Span> =
        under_chat.iter().filter(|s| attribute(s, "db.system.name").as_deref() == Some("postgresql")).collect();
    assert!(statements.len() >= 2, "{under_chat:#?}");
    assert!(
        statements.iter().any(|s| attribute(s, "db.operation.name").as_deref() == Some("INSERT")),
        "{statements:#?}"
    );
    let provider_call = under_chat
        .iter()
        .find(|s| attribute(s, "server.port").as_deref() == Some(provider_port.as_str()))
        .unwrap_or_else(|| panic!("no provider span: {under_chat:#?}"));
    assert_eq!(attribute(provider_call, "http.response.status_code").as_deref(), Some("200"));
    assert!(attribute(provider_call, "url.full").unwrap_or_default().ends_with("/v1/chat/completions"));
    // The provider got the trace, naming the client span as its parent.
    let sent = fake.chat_requests();
    let propagated = sent[0].header("traceparent").unwrap_or_default().to_owned();
    assert_eq!(propagated, format!("00-{TRACE_ID}-{}-01", hex(&provider_call.span_id)));

    // The code run: a trace of its own (no traceparent given), the sandbox call under it.
    assert_ne!(code_span.trace_id, chat_span.trace_id);
    assert!(code_span.parent_span_id.is_empty());
    let under_code = children(&code_span);
    assert!(
        under_code.iter().any(|s| attribute(s, "url.full").unwrap_or_default().ends_with("/v1/execute")),
        "{under_code:#?}"
    );
    assert!(under_code.iter().any(|s| attribute(s, "db.system.name").is_some()), "{under_code:#?}");
    Ok(())
}
