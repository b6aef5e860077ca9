//! The admin listener's Prometheus endpoint, end to end: after a streamed chat, code runs and a
//! rate-limit refusal, one scrape holds every family with the counts those requests must leave,
//! and the functions' `chatedge-metric` lines never reach the log.

use crate::chat::start;
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::TestDb;
use serde_json::json;

/// Sum of the samples of `name` whose labels include every pair of `with`.
fn sample(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then_some((labels.trim_end_matches('}'), value))
        })
        .filter(|(labels, _)| with.iter().all(|(k, v)| labels.split(',').any(|p| p == format!("{k}=\"{v}\""))))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn one_scrape_counts_requests_providers_limits_and_executions() -> anyhow::Result<()> {
    let events = fake_llm::openai_stream("gpt-4o-mini", &["Hel", "lo"], 1200, 800);
    let fake = FakeProvider::start(vec![fake_llm::stream(events)], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[("SPIN_VARIABLE_RATELIMIT_CODE", "1/min:1")]).await?;
    let user = db.user().await?;

    let chat = host.json("POST", "/functions/v1/chat-completion", &user.token, json!({"message": "hi"})).await?;
    assert_eq!(chat.status, 200, "{}", String::from_utf8_lossy(&chat.body));
    let code = json!({"language": "javascript", "code": "console.log(1)"});
    let ran = host.json("POST", "/functions/v1/code-execution", &user.token, code.clone()).await?;
    assert_eq!(ran.status, 200, "{}", String::from_utf8_lossy(&ran.body));
    let refused = host.json("POST", "/functions/v1/code-execution", &user.token, code).await?;
    assert_eq!(refused.status, 429);
    let missing = host.get("/no/such/route", &user.token).await?;
    assert_eq!(missing.status, 404);
    // Not on the public port.
    assert_eq!(host.get("/metrics", &user.token).await?.status, 404);

    let url = host.metrics_url().expect("the host names its admin listener");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let res = client.get(url.parse()?).await?;
    assert_eq!(res.status(), 200);
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = String::from_utf8(http_body_util::BodyExt::collect(res.into_body()).await?.to_bytes().to_vec())?;
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    let m = |name: &str, with: &[(&str, &str)]| sample(&text, name, with);
    let chat_route = [("component", "chat-completion"), ("method", "POST"), ("status", "200")];
    assert_eq!(m("chatedge_http_requests_total", &chat_route), 1.0, "{text}");
    assert_eq!(m("chatedge_http_requests_total", &[("component", "code-execution"), ("status", "429")]), 1.0);
    assert_eq!(m("chatedge_http_requests_total", &[("component", "-"), ("status", "404")]), 2.0, "{text}");
    // The streamed answer's body ended before its last chunk reached the client.
    assert!(m("chatedge_http_request_duration_seconds_count", &[("component", "chat-completion")]) >= 1.0);
    assert_eq!(m("chatedge_instances_in_use", &[("component", "chat-completion")]), 0.0, "none left running");
    assert!(m("chatedge_instance_slots", &[]) > 0.0);
    assert!(m("chatedge_postgres_connections", &[]) >= 1.0, "{text}");
    assert!(m("chatedge_postgres_pool_max_connections", &[]) >= 1.0);
    assert_eq!(m("chatedge_outbound_requests_total", &[("origin", &fake.origin), ("status", "200")]), 1.0, "{text}");
    assert_eq!(m("chatedge_outbound_response_seconds_count", &[("origin", &fake.origin)]), 1.0);

    let model = [("provider", "openai"), ("model", "gpt-4o-mini")];
    assert_eq!(m("chatedge_provider_calls_total", &model), 1.0, "{text}");
    assert_eq!(m("chatedge_provider_ttft_seconds_count", &model), 1.0);
    assert_eq!(m("chatedge_provider_duration_seconds_count", &model), 1.0);
    assert_eq!(m("chatedge_provider_tokens_total", &[("model", "gpt-4o-mini"), ("kind", "input")]), 1200.0);
    assert_eq!(m("chatedge_provider_tokens_total", &[("model", "gpt-4o-mini"), ("kind", "output")]), 800.0);
    // gpt-4o-mini: $0.15 in, $0.60 out per million.
    let cost = m("chatedge_provider_cost_usd_total", &model);
    assert!((cost - 0.00066).abs() < 1e-9, "{cost}");

    assert!(m("chatedge_ratelimit_decisions_total", &[("policy", "chat"), ("verdict", "admitted")]) >= 1.0, "{text}");
    assert_eq!(m("chatedge_ratelimit_decisions_total", &[("policy", "code"), ("verdict", "admitted")]), 1.0);
    assert_eq!(m("chatedge_ratelimit_decisions_total", &[("policy", "code"), ("verdict", "refused")]), 1.0);
    assert_eq!(m("chatedge_sandbox_executions_total", &[("language", "javascript"), ("status", "ok")]), 1.0, "{text}");
    assert!(text.lines().any(|l| l.starts_with("chatedge_sandbox_queue_depth ")), "{text}");

    // Reported, not logged.
    assert!(!host.log().contains(shared::metrics::PREFIX.trim_end()), "{}", host.log());
    Ok(())
}
