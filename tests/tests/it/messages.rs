//! `POST /v1/messages` end to end: Anthropic's Messages format in, another provider out (a fake
//! OpenAI speaking its own wire format), through the real host and component and a real
//! Postgres; tool use and tool results translated both ways.

use super::chat::{start, usage};
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::TestDb;
use serde_json::{json, Value};

const MESSAGES: &str = "/v1/messages";

fn tools() -> Value {
    json!([{"name": "get_weather", "description": "Weather by city",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}])
}

/// A fake OpenAI that first streams "Let me check." and a `get_weather` call (call_W1, 31 + 18
/// tokens) whose arguments arrive in `pieces`, then answers `answer` whole (60 + 9 tokens).
pub(crate) async fn weather_tool_provider(pieces: &[&str], answer: &str) -> anyhow::Result<FakeProvider> {
    FakeProvider::start(
        vec![
            fake_llm::stream(fake_llm::openai_tool_stream(
                "gpt-4o-mini",
                "Let me check.",
                "call_W1",
                "get_weather",
                pieces,
                31,
                18,
            )),
            fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", answer, 60, 9)),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn anthropic_clients_stream_tool_use_from_openai_and_send_the_result_back() -> anyhow::Result<()> {
    let fake = weather_tool_provider(&["{\"loc", "ation\":\"Paris\"}"], "It is 12 degrees in Paris.").await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let erin = db.user().await?;

    // The key in `x-api-key`, as Anthropic's SDKs send it.
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 256, "system": "Be brief.", "stream": true, "tools": tools(),
                      "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let headers =
        [("x-api-key", erin.token.as_str()), ("anthropic-version", "2023-06-01"), ("content-type", "application/json")];
    let r = host.send("POST", MESSAGES, None, Some(body.to_string().into_bytes()), &headers).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut parser = chat_completion::sse::Parser::new();
    let events: Vec<(String, Value)> = parser
        .feed(&r.body)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.event.unwrap_or_default(), serde_json::from_str(&e.data).unwrap_or(Value::Null)))
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(events.iter().all(|(n, d)| d["type"].as_str() == Some(n.as_str())));
    assert_eq!(events[3].1["delta"], json!({"type": "text_delta", "text": "Let me check."}));
    assert_eq!(
        events[5].1["content_block"],
        json!({"type": "tool_use", "id": "call_W1", "name": "get_weather", "input": {}})
    );
    let partial: String = events[6..8].iter().filter_map(|(_, d)| d["delta"]["partial_json"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&partial)?, json!({"location": "Paris"}), "the arguments survive");
    let delta = &events[9].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        (delta["usage"]["input_tokens"].as_u64(), delta["usage"]["output_tokens"].as_u64()),
        (Some(31), Some(18))
    );
    // OpenAI was asked in its own format.
    let asked = &fake.received()[0].body;
    assert_eq!(
        asked["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}])
    );
    assert_eq!(asked["tools"][0]["function"]["parameters"]["required"], json!(["location"]));
    assert_eq!((asked["max_tokens"].as_u64(), asked["stream"].as_bool()), (Some(256), Some(true)));

    // The tool result goes back in a user turn; OpenAI sees the call and a tool message.
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 256, "tools": tools(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_W1", "name": "get_weather", "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_W1", "content": "12C"}]}
    ]});
    let r = host.send("POST", MESSAGES, None, Some(body.to_string().into_bytes()), &headers).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let message = r.json();
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(message["content"], json!([{"type": "text", "text": "It is 12 degrees in Paris."}]));
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(
        (message["usage"]["input_tokens"].as_u64(), message["usage"]["output_tokens"].as_u64()),
        (Some(60), Some(9))
    );
    let asked = &fake.received()[1].body;
    let sent = asked["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[1]["tool_calls"][0]["id"], "call_W1");
    let arguments: Value =
        serde_json::from_str(sent[1]["tool_calls"][0]["function"]["arguments"].as_str().unwrap_or_default())?;
    assert_eq!(arguments, json!({"location": "Paris"}));
    assert_eq!(sent[2], json!({"role": "tool", "tool_call_id": "call_W1", "content": "12C"}));

    // Accounted, not stored (Anthropic clients send their whole context).
    assert_eq!(usage(&db, &erin).await?.iter().map(|u| (u.2, u.3)).collect::<Vec<_>>(), [(31, 18), (60, 9)]);
    let stored: i64 = db.admin().await?.query_one("select count(*) from messages", &[]).await?.get(0);
    assert_eq!(stored, 0);
    Ok(())
}

#[tokio::test]
async fn bad_messages_bodies_and_keys_are_refused_before_any_provider_call() -> anyhow::Result<()> {
    let fake = FakeProvider::start(Vec::new(), None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let frank = db.user().await?;
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (json!({"model": "gpt-4o-mini", "messages": user}), "validation_failed", "max_tokens"),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            "validation_failed",
            "messages[0]",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": user, "tools": [{"type": "bash_20250124", "name": "bash"}]}),
            "not_supported",
            "tools",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": user, "extra": true}),
            "validation_failed",
            "extra",
        ),
    ];
    for (body, code, field) in cases {
        let r = host.json("POST", MESSAGES, &frank.token, body.clone()).await?;
        assert_eq!((r.status, r.error_code()), (400, code.to_owned()), "{body}");
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": user}).to_string().into_bytes();
    let r = host.send("POST", MESSAGES, None, Some(body.clone()), &[("x-api-key", "not-a-jwt")]).await?;
    assert_eq!(r.status, 401);
    let r = host.send("POST", MESSAGES, None, Some(body), &[]).await?;
    assert_eq!(r.status, 401);
    assert_eq!(host.get(MESSAGES, &frank.token).await?.status, 405);
    assert!(fake.received().is_empty());
    Ok(())
}
