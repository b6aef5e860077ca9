//! `POST /v1/responses` and `GET /v1/responses/{id}` end to end: the real host and component, a
//! real Postgres under RLS, and fake OpenAI and Anthropic servers speaking their own wire
//! formats (the Responses API is served through chat completions and by translation).

use super::chat::{start, usage};
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::{TestDb, User};
use serde_json::{json, Value};

const RESPONSES: &str = "/v1/responses";

/// The events of a Responses stream as (event name, data); the name must match `type`.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let mut parser = chat_completion::sse::Parser::new();
    parser
        .feed(body)
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
            let name = e.event.unwrap_or_default();
            assert_eq!(data["type"].as_str(), Some(name.as_str()), "{data}");
            (name, data)
        })
        .collect()
}

/// A conversation's rows as (role, content, status, tool_calls, metadata.tool_call_id), oldest first.
async fn rows(
    db: &TestDb,
    user: &User,
) -> anyhow::Result<Vec<(String, String, String, Option<Value>, Option<String>)>> {
    let rows = db
        .admin()
        .await?
        .query(
            "select role, content, status, tool_calls, metadata->>'tool_call_id' from messages \
             where user_id = $1 order by created_at, id",
            &[&user.id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect())
}

#[tokio::test]
async fn a_streamed_response_is_stored_continued_by_id_and_read_back() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        vec![
            fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini-2024-07-18", &["Hel", "lo"], 12, 3)),
            fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini-2024-07-18", "Hello again", 20, 4)),
        ],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let alice = db.user().await?;
    let bob = db.user().await?;

    let body = json!({"model": "gpt-4o-mini", "input": "Say hello", "instructions": "Be kind", "stream": true,
                      "metadata": {"tag": "t1"}});
    let r = host.json("POST", RESPONSES, &alice.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("text/event-stream; charset=utf-8"));
    let evs = events(&r.body);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let sequence: Vec<u64> = evs.iter().filter_map(|(_, d)| d["sequence_number"].as_u64()).collect();
    assert_eq!(sequence, (0..10).collect::<Vec<u64>>());
    let deltas: String = evs.iter().filter_map(|(_, d)| d["delta"].as_str()).collect();
    assert_eq!(deltas, "Hello");
    let done = &evs[9].1["response"];
    let first_id = done["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(evs[0].1["response"]["id"], first_id.as_str(), "the id is known from the first event");
    assert!(first_id.starts_with("resp_") && first_id.len() == 37, "{first_id}");
    assert_eq!((done["status"].as_str(), done["object"].as_str()), (Some("completed"), Some("response")));
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!((done["instructions"].as_str(), &done["metadata"]), (Some("Be kind"), &json!({"tag": "t1"})));
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15})
    );
    assert_eq!(
        done["chatedge"]["assistant_message_id"].as_str().map(|m| m.replace('-', "")),
        Some(first_id[5..].to_owned())
    );
    // Upstream: chat completions with the instructions as the system message.
    let asked = fake.received();
    assert_eq!(asked[0].path, "/v1/chat/completions");
    assert_eq!(
        asked[0].body["messages"],
        json!([{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Say hello"}])
    );
    assert_eq!(asked[0].body["stream"], true);

    // Continued by id: the stored turns are the context, the first instructions do not carry over.
    let body = json!({"model": "gpt-4o-mini", "input": "And again?", "previous_response_id": first_id});
    let r = host.json("POST", RESPONSES, &alice.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let second = r.json();
    assert_eq!(
        (second["status"].as_str(), second["previous_response_id"].as_str()),
        (Some("completed"), Some(first_id.as_str()))
    );
    assert_eq!(second["output"][0]["type"], "message");
    assert_eq!(second["output"][0]["content"][0]["text"], "Hello again");
    assert_eq!(second["usage"]["total_tokens"], 24);
    assert_eq!(
        fake.received()[1].body["messages"],
        json!([{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "And again?"}])
    );
    assert_eq!(second["chatedge"]["conversation_id"], done["chatedge"]["conversation_id"]);
    let second_id = second["id"].as_str().unwrap_or_default().to_owned();

    // Read back as stored, with the chain of ids; another user sees nothing of it.
    let got = host.get(&format!("{RESPONSES}/{second_id}"), &alice.token).await?;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let got = got.json();
    assert_eq!((got["id"].as_str(), got["status"].as_str()), (Some(second_id.as_str()), Some("completed")));
    assert_eq!(got["output"], second["output"]);
    assert_eq!(got["previous_response_id"], first_id.as_str());
    assert_eq!(
        (got["usage"]["input_tokens"].as_u64(), got["model"].as_str()),
        (Some(20), Some("gpt-4o-mini-2024-07-18"))
    );
    for (path, token) in [
        (format!("{RESPONSES}/{second_id}"), &bob.token),
        (format!("{RESPONSES}/resp_nope"), &alice.token),
        (format!("{RESPONSES}/resp_{}", "0".repeat(32)), &alice.token),
    ] {
        let r = host.get(&path, token).await?;
        assert_eq!((r.status, r.error_code()), (404, "not_found".to_owned()), "{path}");
    }
    // Bob cannot continue Alice's conversation either, and nothing of his is stored.
    let body = json!({"model": "gpt-4o-mini", "input": "mine now", "previous_response_id": first_id});
    let r = host.json("POST", RESPONSES, &bob.token, body).await?;
    assert_eq!((r.status, r.error_code()), (404, "not_found".to_owned()));
    assert!(rows(&db, &bob).await?.is_empty());
    assert_eq!(fake.received().len(), 2, "the refused call never reached the provider");

    let stored = rows(&db, &alice).await?;
    let brief: Vec<(&str, &str, &str)> = stored.iter().map(|r| (r.0.as_str(), r.1.as_str(), r.2.as_str())).collect();
    assert_eq!(
        brief,
        [
            ("user", "Say hello", "complete"),
            ("assistant", "Hello", "complete"),
            ("user", "And again?", "complete"),
            ("assistant", "Hello again", "complete")
        ]
    );
    let spent = usage(&db, &alice).await?;
    assert_eq!(spent.iter().map(|u| (u.2, u.3)).collect::<Vec<_>>(), [(12, 3), (20, 4)]);
    Ok(())
}

/// Anthropic's stream for a turn that says a few words and calls one tool.
fn anthropic_tool_stream() -> Vec<String> {
    let model = "claude-sonnet-4-20250514";
    let n = fake_llm::named;
    vec![
        n(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_01Tool", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        ),
        n(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        n(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
        ),
        n("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
        n(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}}),
        ),
        n(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        n(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        ),
        n(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
        ),
        n("content_block_stop", &json!({"type": "content_block_stop", "index": 1})),
        n(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 22}}),
        ),
        n("message_stop", &json!({"type": "message_stop"})),
    ]
}

#[tokio::test]
async fn function_calls_round_trip_through_anthropic_with_every_turn_stored() -> anyhow::Result<()> {
    let anthropic = FakeProvider::start(
        vec![
            fake_llm::stream(anthropic_tool_stream()),
            fake_llm::ok_json(fake_llm::anthropic_message(
                "claude-sonnet-4-20250514",
                "It is 3 degrees in Oslo.",
                70,
                9,
            )),
        ],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("anthropic", &anthropic)], &[]).await?;
    let carol = db.user().await?;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather by city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);

    let body = json!({"model": "claude-sonnet-4-20250514", "input": [{"role": "user", "content": "Weather in Oslo?"}],
                      "tools": tools, "stream": true});
    let r = host.json("POST", RESPONSES, &carol.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let evs = events(&r.body);
    let added: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "response.output_item.added")
        .filter_map(|(_, d)| d["item"]["type"].as_str())
        .collect();
    assert_eq!(added, ["message", "function_call"]);
    let arguments_done = evs.iter().find(|(n, _)| n == "response.function_call_arguments.done").map(|(_, d)| d.clone());
    let arguments_done = arguments_done.expect("function_call_arguments.done");
    assert_eq!(
        (arguments_done["name"].as_str(), arguments_done["output_index"].as_u64()),
        (Some("get_weather"), Some(1))
    );
    let arguments: Value = serde_json::from_str(arguments_done["arguments"].as_str().unwrap_or_default())?;
    assert_eq!(arguments, json!({"city": "Oslo"}), "the arguments survive the translation");
    let done = &evs.last().map(|(_, d)| d.clone()).unwrap_or_default()["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Checking.");
    let call = &done["output"][1];
    assert_eq!(
        (call["type"].as_str(), call["call_id"].as_str(), call["name"].as_str()),
        (Some("function_call"), Some("toolu_01A"), Some("get_weather"))
    );
    assert_eq!((done["usage"]["input_tokens"].as_u64(), done["usage"]["output_tokens"].as_u64()), (Some(40), Some(22)));
    // Anthropic was asked with its own tool shape.
    let first = &anthropic.received()[0].body;
    assert_eq!(first["tools"][0]["name"], "get_weather");
    assert_eq!(first["tools"][0]["input_schema"]["required"], json!(["city"]));
    let first_id = done["id"].as_str().unwrap_or_default().to_owned();

    // The tool's output goes back by id; Anthropic sees its tool_use and our tool_result.
    let body = json!({"model": "claude-sonnet-4-20250514", "previous_response_id": first_id, "tools": tools,
                      "input": [{"type": "function_call_output", "call_id": "toolu_01A", "output": "{\"celsius\":3}"}]});
    let r = host.json("POST", RESPONSES, &carol.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!(answer["output"][0]["content"][0]["text"], "It is 3 degrees in Oslo.");
    let second = &anthropic.received()[1].body;
    let messages = second["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 3, "{second}");
    assert_eq!(messages[1]["role"], "assistant");
    let blocks = messages[1]["content"].as_array().cloned().unwrap_or_default();
    let tool_use = blocks.iter().find(|b| b["type"] == "tool_use").cloned().unwrap_or_default();
    assert_eq!((tool_use["id"].as_str(), &tool_use["input"]), (Some("toolu_01A"), &json!({"city": "Oslo"})));
    assert_eq!(
        messages[2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_01A", "content": "{\"celsius\":3}"})
    );

    // Every turn is a row: user, assistant with its call, the tool result, the answer.
    let stored = rows(&db, &carol).await?;
    let roles: Vec<&str> = stored.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(stored[1].3.as_ref().map(|c| c[0]["function"]["name"].clone()), Some(json!("get_weather")));
    assert_eq!((stored[2].1.as_str(), stored[2].4.as_deref()), ("{\"celsius\":3}", Some("toolu_01A")));
    assert_eq!(stored[3].1, "It is 3 degrees in Oslo.");
    Ok(())
}

#[tokio::test]
async fn unstored_responses_leave_only_usage_and_bad_bodies_are_refused_up_front() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        vec![fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "{\"n\":1}", 5, 2))],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let dave = db.user().await?;

    let body = json!({"model": "gpt-4o-mini", "input": "json please", "store": false, "max_output_tokens": 20,
                      "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": true}}});
    let r = host.json("POST", RESPONSES, &dave.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!((answer["store"].as_bool(), answer["max_output_tokens"].as_u64()), (Some(false), Some(20)));
    assert_eq!(answer["output"][0]["content"][0]["text"], "{\"n\":1}");
    let asked = &fake.received()[0].body;
    assert_eq!(asked["response_format"]["json_schema"]["name"], "n");
    assert_eq!(asked["max_tokens"], 20);
    assert!(rows(&db, &dave).await?.is_empty(), "store: false writes no messages");
    assert_eq!(usage(&db, &dave).await?.len(), 1, "but the call is accounted");
    // Not stored, so not readable.
    let id = answer["id"].as_str().unwrap_or_default();
    assert_eq!(host.get(&format!("{RESPONSES}/{id}"), &dave.token).await?.status, 404);

    let cases = [
        (json!({"input": "x"}), 400, "validation_failed"),
        (json!({"model": "gpt-4o-mini", "input": []}), 400, "validation_failed"),
        (
            json!({"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "web_search_preview"}]}),
            400,
            "not_supported",
        ),
        (json!({"model": "gpt-4o-mini", "input": "x", "background": true}), 400, "not_supported"),
        (json!({"model": "gpt-4o-mini", "input": "x", "frobnicate": 1}), 400, "validation_failed"),
    ];
    for (body, status, code) in cases {
        let r = host.json("POST", RESPONSES, &dave.token, body.clone()).await?;
        assert_eq!((r.status, r.error_code()), (status, code.to_owned()), "{body}");
        assert!(r.json()["error"]["field"].is_string(), "{body}");
    }
    let r = host.send("POST", RESPONSES, None, Some(br#"{"model":"gpt-4o-mini","input":"x"}"#.to_vec()), &[]).await?;
    assert_eq!(r.status, 401);
    let r = host.get(RESPONSES, &dave.token).await?;
    assert_eq!(r.status, 405);
    assert_eq!(fake.received().len(), 1, "no refused body reached the provider");
    Ok(())
}

#[tokio::test]
async fn structured_output_through_anthropic_is_a_forced_tool_answered_as_text() -> anyhow::Result<()> {
    let reply = json!({"id": "msg_01S", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "tool_use", "id": "toolu_01S", "name": "chatedge_structured_output", "input": {"city": "Oslo", "celsius": 3}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 12}});
    let anthropic = FakeProvider::start(vec![fake_llm::ok_json(reply.to_string())], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("anthropic", &anthropic)], &[]).await?;
    let gina = db.user().await?;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
                        "required": ["city", "celsius"], "additionalProperties": false});
    let body = json!({"model": "claude-haiku-4-5", "input": "Weather in Oslo as JSON", "store": false,
                      "text": {"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": true}}});
    let r = host.json("POST", RESPONSES, &gina.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!(answer["status"], "completed");
    let text = answer["output"][0]["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(serde_json::from_str::<Value>(text)?, json!({"city": "Oslo", "celsius": 3}));
    assert_eq!(answer["output"].as_array().map(Vec::len), Some(1), "no function call item for the schema tool");
    let asked = &anthropic.received()[0].body;
    assert_eq!(asked["tools"][0]["input_schema"], schema);
    assert_eq!(asked["tool_choice"], json!({"type": "tool", "name": "chatedge_structured_output"}));
    Ok(())
}
