//! chat-completion end to end: the real host and component, a real Postgres under RLS, and
//! protocol-faithful fake providers on real sockets.

use chatedge_tests::fake_llm::{self, Answer, End, FakeProvider};
use chatedge_tests::{sse_data, sse_json, TestApp, TestDb, User};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;

const CHAT: &str = "/functions/v1/chat-completion";

/// Variables pointing `provider` at `fake`, with short timeouts so failure tests stay quick.
pub(crate) fn provider_env(provider: &str, fake: &FakeProvider) -> Vec<(String, String)> {
    let base = match provider {
        "anthropic" => fake.origin.clone(),
        _ => format!("{}/v1", fake.origin),
    };
    let prefix = if provider == "openai_compatible" { "compatible" } else { provider };
    let up = prefix.to_ascii_uppercase();
    vec![
        (format!("SPIN_VARIABLE_{up}_BASE_URL"), base),
        (format!("SPIN_VARIABLE_{up}_ALLOWED_HOST"), fake.origin.clone()),
        (format!("SPIN_VARIABLE_{up}_API_KEY"), format!("sk-test-{provider}")),
    ]
}

pub(crate) async fn start(
    db: &TestDb,
    providers: &[(&str, &FakeProvider)],
    extra: &[(&str, &str)],
) -> anyhow::Result<TestApp> {
    let mut env: Vec<(String, String)> = vec![
        ("SPIN_VARIABLE_PROVIDER_RETRY_BASE_MS".into(), "20".into()),
        ("SPIN_VARIABLE_PROVIDER_IDLE_TIMEOUT_MS".into(), "3000".into()),
        ("SPIN_VARIABLE_PROVIDER_FIRST_BYTE_TIMEOUT_MS".into(), "3000".into()),
    ];
    if let Some((first, _)) = providers.first() {
        env.push(("SPIN_VARIABLE_DEFAULT_PROVIDER".into(), (*first).into()));
    }
    for (p, fake) in providers {
        env.extend(provider_env(p, fake));
    }
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push(((*k).into(), (*v).into()));
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestApp::spawn(db, &refs).await
}

/// A host whose OpenAI fake streams `words` words (`<prefix><i> `), one every `delay_ms`.
async fn slow_stream(db: &TestDb, prefix: &str, words: u64, delay_ms: u64) -> anyhow::Result<(FakeProvider, TestApp)> {
    let pieces: Vec<String> = (0..words).map(|i| format!("{prefix}{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let events = fake_llm::openai_stream("gpt-4o-mini", &refs, 5, words);
    let answer = Answer::Stream { events, delay: Duration::from_millis(delay_ms), end: End::Finish };
    let fake = FakeProvider::start(vec![answer], None).await?;
    let host = start(db, &[("openai", &fake)], &[]).await?;
    Ok((fake, host))
}

async fn chat(host: &TestApp, user: &User, body: Value) -> anyhow::Result<chatedge_tests::Reply> {
    host.json("POST", CHAT, &user.token, body).await
}

/// The messages of a conversation as (role, content, status), oldest first.
async fn messages(db: &TestDb, conversation: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let id: uuid::Uuid = conversation.parse()?;
    let rows = db
        .admin()
        .await?
        .query("select role, content, status from messages where conversation_id = $1 order by created_at, id", &[&id])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// api_usage rows of a user as (provider, model, prompt, completion, cost text, status), oldest first.
pub(crate) async fn usage(db: &TestDb, user: &User) -> anyhow::Result<Vec<(String, String, i32, i32, String, String)>> {
    let rows = db
        .admin()
        .await?
        .query(
            "select provider, model, prompt_tokens, completion_tokens, cost_usd::text, status from api_usage \
             where user_id = $1 order by created_at, id",
            &[&user.id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect())
}

fn content_deltas(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

#[tokio::test]
async fn openai_stream_reaches_the_client_chunk_for_chunk_and_is_persisted() -> anyhow::Result<()> {
    let events = fake_llm::openai_stream("gpt-4o-mini-2024-07-18", &["Hel", "lo", " there"], 1200, 800);
    let fake = FakeProvider::start(vec![fake_llm::stream(events.clone())], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let alice = db.user().await?;

    let reply = chat(&host, &alice, json!({"message": "Say hello", "system_prompt": "Be kind"})).await?;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.header("content-type"), Some("text/event-stream; charset=utf-8"));
    let conversation = reply.header("x-chatedge-conversation-id").expect("conversation header").to_owned();

    // Every upstream chunk but the usage-only one, verbatim, then our usage chunk, then [DONE].
    let upstream: Vec<Value> = events[..events.len() - 2]
        .iter()
        .map(|e| serde_json::from_str(e.trim_start_matches("data: ").trim()).unwrap())
        .map(|mut v: Value| {
            v.as_object_mut().unwrap().remove("usage");
            v
        })
        .collect();
    let data = sse_data(&reply.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let received = sse_json(&reply.body);
    assert_eq!(received.len(), upstream.len() + 1, "{data:#?}");
    assert_eq!(&received[..upstream.len()], &upstream[..]);
    let last = received.last().unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 1200);
    assert_eq!(last["usage"]["completion_tokens"], 800);
    assert_eq!(last["usage"]["total_tokens"], 2000);
    // gpt-4o-mini: $0.15 in, $0.60 out per 1M tokens.
    let cost = 1200.0 * 0.15 / 1e6 + 800.0 * 0.60 / 1e6;
    assert!((last["chatedge"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9, "{last}");
    assert_eq!(last["chatedge"]["conversation_id"], conversation);

    // What went upstream: the key, usage forced on, the system prompt and the message.
    let sent = &fake.received()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-openai"));
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Say hello"}])
    );

    // What was stored, through RLS, and accounted as the service role.
    assert_eq!(
        messages(&db, &conversation).await?,
        vec![
            ("user".into(), "Say hello".into(), "complete".into()),
            ("assistant".into(), "Hello there".into(), "complete".into())
        ]
    );
    let admin = db.admin().await?;
    let row = admin
        .query_one(
            "select provider, model, prompt_tokens, completion_tokens, cost_usd::text, latency_ms, metadata \
             from messages where conversation_id = $1 and role = 'assistant'",
            &[&conversation.parse::<uuid::Uuid>()?],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "openai");
    assert_eq!(row.get::<_, String>(1), "gpt-4o-mini-2024-07-18");
    assert_eq!((row.get::<_, i32>(2), row.get::<_, i32>(3)), (1200, 800));
    assert_eq!(row.get::<_, String>(4), "0.00066000");
    assert!(row.get::<_, i32>(5) >= 0);
    assert!(row.get::<_, Value>(6)["ttft_ms"].is_number());
    let title: String = admin
        .query_one("select title from conversations where id = $1", &[&conversation.parse::<uuid::Uuid>()?])
        .await?
        .get(0);
    assert_eq!(title, "Say hello");
    assert_eq!(
        usage(&db, &alice).await?,
        vec![("openai".into(), "gpt-4o-mini-2024-07-18".into(), 1200, 800, "0.00066000".into(), "complete".into())]
    );
    Ok(())
}

#[tokio::test]
async fn non_streaming_answers_for_each_provider() -> anyhow::Result<()> {
    let openai =
        FakeProvider::start(vec![fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "Hi!", 10, 3))], None)
            .await?;
    let anthropic = FakeProvider::start(
        vec![fake_llm::ok_json(fake_llm::anthropic_message("claude-3-5-haiku-20241022", "Bonjour", 20, 5))],
        None,
    )
    .await?;
    let mistral = FakeProvider::start(
        vec![fake_llm::ok_json(fake_llm::mistral_completion("mistral-small-latest", "Hola", 7, 2))],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &openai), ("anthropic", &anthropic), ("mistral", &mistral)], &[]).await?;
    let bob = db.user().await?;

    let cases = [
        (json!({"message": "a", "stream": false}), "Hi!", 10, 3, "openai"),
        (json!({"message": "b", "stream": false, "model": "claude-3-5-haiku-20241022"}), "Bonjour", 20, 5, "anthropic"),
        (json!({"message": "c", "stream": false, "provider": "mistral"}), "Hola", 7, 2, "mistral"),
    ];
    for (body, text, prompt, completion, provider) in cases {
        let reply = chat(&host, &bob, body).await?;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let v = reply.json();
        assert_eq!(v["object"], "chat.completion", "{v}");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], text);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            (v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()),
            (Some(prompt), Some(completion))
        );
        assert_eq!(v["chatedge"]["provider"], provider);
        let conversation = v["chatedge"]["conversation_id"].as_str().unwrap();
        assert_eq!(messages(&db, conversation).await?[1], ("assistant".into(), text.into(), "complete".into()));
    }
    let sent = &anthropic.received()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-test-anthropic"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.body["max_tokens"], 4096);
    assert_eq!(sent.body["stream"], false);
    assert!(mistral.received()[0].body.get("stream_options").is_none());
    let rows = usage(&db, &bob).await?;
    assert_eq!(rows.len(), 3);
    // claude-3-5-haiku: $0.80 in, $4.00 out; mistral-small: $0.10 in, $0.30 out.
    assert_eq!(rows[1].4, "0.00003600");
    assert_eq!(rows[2].4, "0.00000130");
    Ok(())
}

#[tokio::test]
async fn anthropic_and_mistral_streams_become_openai_chunks_with_usage_counted_once() -> anyhow::Result<()> {
    let anthropic = FakeProvider::start(
        vec![fake_llm::stream(fake_llm::anthropic_stream("claude-sonnet-4-5-20250929", &["Bon", "jour"], 30, 12))],
        None,
    )
    .await?;
    let mistral = FakeProvider::start(
        vec![fake_llm::stream(fake_llm::mistral_stream("mistral-small-latest", &["Ho", "la"], 9, 4))],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("anthropic", &anthropic), ("mistral", &mistral)], &[]).await?;
    let carol = db.user().await?;

    let reply = chat(&host, &carol, json!({"message": "hi", "system_prompt": "Be French"})).await?;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let chunks = sse_json(&reply.body);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"));
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(content_deltas(&chunks), "Bonjour");
    let finish: Vec<&Value> = chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let last = chunks.last().unwrap();
    // message_start's input (30) plus message_delta's cumulative output (12), not 1 + 12.
    assert_eq!(
        (last["usage"]["prompt_tokens"].as_u64(), last["usage"]["completion_tokens"].as_u64()),
        (Some(30), Some(12))
    );
    assert_eq!(sse_data(&reply.body).last().map(String::as_str), Some("[DONE]"));
    let sent = &anthropic.received()[0];
    assert_eq!(sent.body["system"], "Be French");
    assert_eq!(sent.body["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(sent.body["stream"], true);

    let reply = chat(&host, &carol, json!({"message": "hola", "provider": "mistral"})).await?;
    let chunks = sse_json(&reply.body);
    assert_eq!(content_deltas(&chunks), "Hola");
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.get("usage").is_none()), "usage only on the final chunk");
    let last = chunks.last().unwrap();
    assert_eq!(
        (last["usage"]["prompt_tokens"].as_u64(), last["usage"]["completion_tokens"].as_u64()),
        (Some(9), Some(4))
    );
    assert!(mistral.received()[0].body.get("stream_options").is_none(), "Mistral refuses stream_options");

    let rows = usage(&db, &carol).await?;
    assert_eq!((rows[0].2, rows[0].3, rows[0].5.as_str()), (30, 12, "complete"));
    assert_eq!((rows[1].2, rows[1].3, rows[1].5.as_str()), (9, 4, "complete"));
    // claude-sonnet-4: $3 in, $15 out per 1M.
    assert_eq!(rows[0].4, "0.00027000");
    Ok(())
}

#[tokio::test]
async fn tool_call_deltas_pass_through_intact() -> anyhow::Result<()> {
    let id = "chatcmpl-tools";
    let m = "gpt-4o-mini";
    let deltas = [
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}], "refusal": null}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"loc"}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "ation\":\"Paris\"}"}}]}),
    ];
    let mut events: Vec<String> =
        deltas.iter().map(|d| fake_llm::data(&fake_llm::openai_chunk(id, m, d.clone(), None))).collect();
    events.push(fake_llm::data(&fake_llm::openai_chunk(id, m, json!({}), Some("tool_calls"))));
    events.push(fake_llm::DONE.to_owned());
    let fake = FakeProvider::start(vec![fake_llm::stream(events)], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let dave = db.user().await?;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let reply = chat(&host, &dave, json!({"message": "weather?", "tools": tools})).await?;
    let chunks = sse_json(&reply.body);
    for (i, d) in deltas.iter().enumerate() {
        assert_eq!(&chunks[i]["choices"][0]["delta"], d);
    }
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(fake.received()[0].body["tools"], tools);
    let conversation: uuid::Uuid = reply.header("x-chatedge-conversation-id").unwrap().parse()?;
    let stored: Value = db
        .admin()
        .await?
        .query_one(
            "select tool_calls from messages where conversation_id = $1 and role = 'assistant'",
            &[&conversation],
        )
        .await?
        .get(0);
    assert_eq!(
        stored,
        json!([{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}])
    );
    Ok(())
}

#[tokio::test]
async fn rate_limited_then_answered_honours_retry_after() -> anyhow::Result<()> {
    let limited = Answer::Json {
        status: 429,
        headers: vec![("retry-after".into(), "1".into())],
        body: fake_llm::openai_error("Rate limit reached for gpt-4o-mini", "requests", Some("rate_limit_exceeded")),
    };
    let fake = FakeProvider::start(
        vec![limited, fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &["ok"], 5, 1))],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let erin = db.user().await?;
    let reply = chat(&host, &erin, json!({"message": "hi"})).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(content_deltas(&sse_json(&reply.body)), "ok");
    let got = fake.received();
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}, before the 1 s Retry-After");
    let rows = usage(&db, &erin).await?;
    assert_eq!(rows.iter().map(|r| r.5.as_str()).collect::<Vec<_>>(), vec!["http_429", "complete"]);
    Ok(())
}

#[tokio::test]
async fn repeated_server_errors_end_in_a_clear_error_with_the_user_message_kept() -> anyhow::Result<()> {
    let failing = Answer::Json {
        status: 500,
        headers: Vec::new(),
        body: fake_llm::openai_error(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
    };
    let fake = FakeProvider::start(Vec::new(), Some(failing)).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let frank = db.user().await?;
    let reply = chat(&host, &frank, json!({"message": "are you there?"})).await?;
    assert_eq!(reply.status, 502, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.error_code(), "provider_error");
    let err = reply.json();
    assert!(err["error"]["message"].as_str().unwrap().contains("Sorry about that"));
    assert_eq!(err["error"]["upstream_status"], 500);
    assert_eq!(fake.received().len(), 3, "three attempts");
    let conversation = err["error"]["conversation_id"].as_str().expect("conversation named in the error");
    let stored = messages(&db, conversation).await?;
    assert_eq!(stored[0], ("user".into(), "are you there?".into(), "complete".into()));
    assert_eq!((stored[1].0.as_str(), stored[1].2.as_str()), ("assistant", "error"));
    let rows = usage(&db, &frank).await?;
    assert_eq!(rows.iter().map(|r| r.5.as_str()).collect::<Vec<_>>(), vec!["http_500"; 3]);
    Ok(())
}

#[tokio::test]
async fn fallback_provider_answers_when_the_first_keeps_failing() -> anyhow::Result<()> {
    let overloaded = Answer::Json {
        status: 529,
        headers: Vec::new(),
        body: fake_llm::anthropic_error("overloaded_error", "Overloaded"),
    };
    let anthropic = FakeProvider::start(Vec::new(), Some(overloaded)).await?;
    let openai =
        FakeProvider::start(vec![fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &["saved"], 3, 1))], None)
            .await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[("anthropic", &anthropic), ("openai", &openai)],
        &[("SPIN_VARIABLE_FALLBACK_PROVIDERS", "openai"), ("SPIN_VARIABLE_PROVIDER_MAX_ATTEMPTS", "2")],
    )
    .await?;
    let gina = db.user().await?;
    let reply = chat(&host, &gina, json!({"message": "hi"})).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-chatedge-provider"), Some("openai"));
    assert_eq!(content_deltas(&sse_json(&reply.body)), "saved");
    assert_eq!(anthropic.received().len(), 2);
    let rows = usage(&db, &gina).await?;
    assert_eq!(
        rows.iter().map(|r| (r.0.as_str(), r.5.as_str())).collect::<Vec<_>>(),
        vec![("anthropic", "http_529"), ("anthropic", "http_529"), ("openai", "complete")]
    );
    Ok(())
}

#[tokio::test]
async fn mid_stream_error_becomes_an_openai_error_event_and_the_partial_is_kept() -> anyhow::Result<()> {
    let mut events = fake_llm::anthropic_stream("claude-sonnet-4-5", &["Part", "ial"], 11, 0);
    events.truncate(5); // message_start, block start, ping, two deltas
    events.push(fake_llm::named(
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let fake = FakeProvider::start(vec![fake_llm::stream(events)], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("anthropic", &fake)], &[]).await?;
    let hank = db.user().await?;
    let reply = chat(&host, &hank, json!({"message": "go"})).await?;
    assert_eq!(reply.status, 200);
    let chunks = sse_json(&reply.body);
    assert_eq!(content_deltas(&chunks), "Partial");
    let error = chunks.iter().find(|c| c.get("error").is_some()).expect("an error event");
    assert_eq!(
        error,
        &json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
    );
    assert_eq!(sse_data(&reply.body).last().map(String::as_str), Some("[DONE]"), "the stream ends cleanly");
    let conversation = reply.header("x-chatedge-conversation-id").unwrap();
    let stored = messages(&db, conversation).await?;
    assert_eq!(stored[1], ("assistant".into(), "Partial".into(), "error".into()));
    Ok(())
}

#[tokio::test]
async fn a_stall_past_the_idle_timeout_ends_the_stream_and_keeps_the_partial() -> anyhow::Result<()> {
    let mut events = fake_llm::openai_stream("gpt-4o-mini", &["slow", " and"], 5, 5);
    events.truncate(3);
    let fake =
        FakeProvider::start(vec![Answer::Stream { events, delay: Duration::ZERO, end: End::Stall }], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[("SPIN_VARIABLE_PROVIDER_IDLE_TIMEOUT_MS", "400")]).await?;
    let ivy = db.user().await?;
    let reply = chat(&host, &ivy, json!({"message": "go"})).await?;
    assert_eq!(reply.status, 200);
    let chunks = sse_json(&reply.body);
    assert_eq!(content_deltas(&chunks), "slow and");
    let error = chunks.iter().find(|c| c.get("error").is_some()).expect("an error event");
    assert_eq!(error["error"]["code"], "provider_timeout");
    assert_eq!(sse_data(&reply.body).last().map(String::as_str), Some("[DONE]"));
    assert!(fake.wait_hung_up(1, Duration::from_secs(5)).await, "the stalled upstream connection was closed");
    let stored = messages(&db, reply.header("x-chatedge-conversation-id").unwrap()).await?;
    assert_eq!(stored[1], ("assistant".into(), "slow and".into(), "incomplete".into()));
    Ok(())
}

#[tokio::test]
async fn a_first_byte_stall_times_out_with_504() -> anyhow::Result<()> {
    let fake = FakeProvider::start(Vec::new(), Some(Answer::Hang)).await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[("openai", &fake)],
        &[("SPIN_VARIABLE_PROVIDER_FIRST_BYTE_TIMEOUT_MS", "300"), ("SPIN_VARIABLE_PROVIDER_MAX_ATTEMPTS", "2")],
    )
    .await?;
    let jo = db.user().await?;
    let reply = chat(&host, &jo, json!({"message": "hello?"})).await?;
    assert_eq!(reply.status, 504, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.error_code(), "provider_timeout");
    assert_eq!(fake.received().len(), 2);
    let rows = usage(&db, &jo).await?;
    assert_eq!(rows.iter().map(|r| r.5.as_str()).collect::<Vec<_>>(), vec!["timeout", "timeout"]);
    Ok(())
}

#[tokio::test]
async fn client_disconnect_mid_stream_keeps_the_partial_and_closes_the_upstream() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let (fake, host) = slow_stream(&db, "w", 200, 20).await?;
    let kim = db.user().await?;
    let response = host.open(CHAT, &kim.token, &json!({"message": "long story please"})).await?;
    assert_eq!(response.status(), 200);
    let conversation = response.headers()["x-chatedge-conversation-id"].to_str()?.to_owned();
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while sse_json(&seen).len() < 5 {
        let frame = body.frame().await.expect("stream open")?;
        if let Some(d) = frame.data_ref() {
            seen.extend_from_slice(d);
        }
    }
    drop(body); // the client goes away mid-answer
    assert!(fake.wait_hung_up(1, Duration::from_secs(10)).await, "upstream stream not closed after the client left");
    assert_eq!(fake.finished(), 0);
    // The partial answer is stored as incomplete.
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = messages(&db, &conversation).await?;
        if stored.get(1).is_some_and(|m| m.2 != "pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (role, text, status) = &stored[1];
    assert_eq!((role.as_str(), status.as_str()), ("assistant", "incomplete"));
    assert!(text.starts_with("w0 w1 w2 "), "{text}");
    assert!(!text.contains("w199 "), "the whole story arrived: {text}");
    let rows = usage(&db, &kim).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].5, "incomplete");
    // Never fewer tokens than bytes received, nor a prompt below what the upstream request
    // could hold: a disconnect cannot make a call cheaper than it was.
    assert!(rows[0].3 as usize >= text.len(), "completion tokens {} for {} bytes", rows[0].3, text.len());
    let sent = fake.received()[0].body.to_string().len();
    assert!(rows[0].2 as usize >= sent, "prompt tokens {} for a {sent}-byte request", rows[0].2);
    Ok(())
}

#[tokio::test]
async fn conversation_context_and_isolation() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "noted", 4, 1))),
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[("SPIN_VARIABLE_CHAT_CONTEXT_MESSAGES", "3")]).await?;
    let alice = db.user().await?;
    let mallory = db.user().await?;

    let first =
        chat(&host, &alice, json!({"message": "one", "stream": false, "system_prompt": "You are terse"})).await?;
    let conversation = first.json()["chatedge"]["conversation_id"].as_str().unwrap().to_owned();
    for text in ["two", "three"] {
        let r = chat(&host, &alice, json!({"message": text, "stream": false, "conversation_id": conversation})).await?;
        assert_eq!(r.status, 200);
    }
    // The third call sent the stored system prompt, the last 3 stored messages and the new one.
    let sent = &fake.received()[2].body["messages"];
    assert_eq!(
        sent,
        &json!([
            {"role": "system", "content": "You are terse"},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "three"},
        ])
    );

    // Mallory cannot write into Alice's conversation: the same 404 as a missing one, nothing
    // stored, nothing sent upstream.
    let before = messages(&db, &conversation).await?.len();
    let calls = fake.received().len();
    let r = chat(&host, &mallory, json!({"message": "injected", "conversation_id": conversation})).await?;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    assert_eq!(messages(&db, &conversation).await?.len(), before);
    assert_eq!(fake.received().len(), calls);
    let mallory_rows: i64 =
        db.admin().await?.query_one("select count(*) from messages where user_id = $1", &[&mallory.id]).await?.get(0);
    assert_eq!(mallory_rows, 0);
    Ok(())
}

#[tokio::test]
async fn unconfigured_provider_bad_input_and_byo_keys() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "byo", 1, 1))),
    )
    .await?;
    // OpenAI on its official URL with no key; Mistral pointed at the fake without a key.
    let host = start(
        &db,
        &[],
        &[("SPIN_VARIABLE_MISTRAL_ALLOWED_HOST", &fake.origin), ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST", &fake.origin)],
    )
    .await?;
    let lee = db.user().await?;

    let r = chat(&host, &lee, json!({"message": "hi"})).await?;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "provider_not_configured");
    let v = r.json();
    assert_eq!(v["error"]["variable"], "openai_api_key");
    assert!(v["error"]["message"].as_str().unwrap().contains("SPIN_VARIABLE_OPENAI_API_KEY"));

    for (body, status) in [
        (json!({}), 400),
        (json!({"message": ""}), 400),
        (json!({"message": "x", "temperature": 9}), 400),
        (json!({"message": "x", "conversation_id": "not-a-uuid"}), 400),
        (json!({"message": "x", "provider": "acme"}), 400),
    ] {
        let r = chat(&host, &lee, body.clone()).await?;
        assert_eq!(r.status, status, "{body}");
        assert_eq!(r.error_code(), "validation_failed");
    }
    let r = host.send("POST", CHAT, Some(&lee.token), Some(b"{not json".to_vec()), &[]).await?;
    assert_eq!((r.status, r.error_code()), (400, "invalid_json".to_owned()));
    let r = host.send("POST", CHAT, Some(&lee.token), Some(vec![b' '; 1_100_000]), &[]).await?;
    assert_eq!(r.status, 413);
    let r = host.json("POST", CHAT, "not-a-token", json!({"message": "hi"})).await?;
    assert_eq!(r.status, 401);
    let r = host.get(CHAT, &lee.token).await?;
    assert_eq!(r.status, 405);
    let conversations: i64 =
        db.admin().await?.query_one("select count(*) from conversations where user_id = $1", &[&lee.id]).await?.get(0);
    assert_eq!(conversations, 0, "refused requests write nothing");

    // A caller's own key, pointed at the official URL's stand-in: used, never logged.
    let host2 = start(
        &db,
        &[],
        &[
            ("SPIN_VARIABLE_OPENAI_BASE_URL", &format!("{}/v1", fake.origin)),
            ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST", &fake.origin),
        ],
    )
    .await?;
    let byo = host2
        .send(
            "POST",
            CHAT,
            Some(&lee.token),
            Some(serde_json::to_vec(&json!({"message": "mine", "stream": false}))?),
            &[("x-provider-api-key", "sk-user-own-key-123")],
        )
        .await?;
    assert_eq!(byo.status, 200, "{}", String::from_utf8_lossy(&byo.body));
    assert_eq!(fake.received().last().unwrap().header("authorization"), Some("Bearer sk-user-own-key-123"));
    assert!(!host2.log().contains("sk-user-own-key-123"), "the caller's key reached the log");
    let stored: i64 = db
        .admin()
        .await?
        .query_one(
            "select count(*) from messages m join conversations c on c.id = m.conversation_id \
             where c.user_id = $1 and (m.content like '%sk-user%' or m.metadata::text like '%sk-user%')",
            &[&lee.id],
        )
        .await?
        .get(0);
    assert_eq!(stored, 0);
    Ok(())
}

#[tokio::test]
async fn openai_compatible_routes() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        vec![
            fake_llm::ok_json(fake_llm::openai_completion("llama3.2", "compat", 6, 2)),
            fake_llm::stream(fake_llm::openai_stream("llama3.2", &["a", "b"], 6, 2)),
        ],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[],
        &[
            ("SPIN_VARIABLE_DEFAULT_PROVIDER", "openai_compatible"),
            ("SPIN_VARIABLE_COMPATIBLE_BASE_URL", &format!("{}/v1", fake.origin)),
            ("SPIN_VARIABLE_COMPATIBLE_ALLOWED_HOST", &fake.origin),
            ("SPIN_VARIABLE_COMPATIBLE_DEFAULT_MODEL", "llama3.2"),
        ],
    )
    .await?;
    let max = db.user().await?;

    let models = host.get("/v1/models", &max.token).await?;
    assert_eq!(models.status, 200);
    let ids: Vec<String> =
        models.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, vec!["llama3.2"]);

    let body = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]});
    let r = host.json("POST", "/v1/chat/completions", &max.token, body.clone()).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "compat");
    assert!(fake.received()[0].header("authorization").is_none(), "keyless server gets no key");
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let r = host.json("POST", "/v1/chat/completions", &max.token, streaming).await?;
    assert_eq!(content_deltas(&sse_json(&r.body)), "ab");
    // Without store / conversation_id nothing is stored but the usage.
    let conversations: i64 =
        db.admin().await?.query_one("select count(*) from conversations where user_id = $1", &[&max.id]).await?.get(0);
    assert_eq!(conversations, 0);
    assert_eq!(usage(&db, &max).await?.len(), 2);
    let r = host.json("POST", "/v1/chat/completions", &max.token, json!({"messages": []})).await?;
    assert_eq!(r.status, 400);
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let (_fake, host) = slow_stream(&db, "p", 30, 30).await?;
    let whole: String = (0..30).map(|i| format!("p{i} ")).collect();
    let user = db.user().await?;
    let response = host.open(CHAT, &user.token, &json!({"message": "keep going"})).await?;
    assert_eq!(response.status(), 200);
    let conversation = response.headers()["x-chatedge-conversation-id"].to_str()?.to_owned();
    let reader = tokio::spawn(async move { response.into_body().collect().await.map(|b| b.to_bytes()) });
    tokio::time::sleep(Duration::from_millis(200)).await; // mid-stream
    let status = host.terminate().await?;
    assert!(status.success(), "exit status {status:?}");
    let body = reader.await??;
    assert_eq!(content_deltas(&sse_json(&body)), whole, "the stream was cut by the shutdown");
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    let stored = messages(&db, &conversation).await?;
    assert_eq!(stored[1], ("assistant".into(), whole, "complete".into()));
    Ok(())
}

#[tokio::test]
async fn provider_requests_carry_their_length_not_chunks() -> anyhow::Result<()> {
    // The fake refuses a chunked request body with 411, as Python's http.server does.
    let fake =
        FakeProvider::start(vec![fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "ok", 3, 1))], None)
            .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let user = db.user().await?;
    let r = chat(&host, &user, json!({"message": "hi", "stream": false})).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sent = &fake.received()[0];
    let length: usize = sent.header("content-length").expect("content-length").parse()?;
    assert_eq!(length, sent.body.to_string().len());
    assert!(sent.header("transfer-encoding").is_none());
    Ok(())
}

#[tokio::test]
async fn a_fresh_provider_key_per_request_buys_no_fresh_bucket() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "ok", 1, 1))),
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[("openai", &fake)],
        &[("SPIN_VARIABLE_RATELIMIT_CHAT", "2/min:2"), ("SPIN_VARIABLE_RATELIMIT_CHAT_BYOK", "100/min:100")],
    )
    .await?;
    let user = db.user().await?;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = host
            .send(
                "POST",
                CHAT,
                Some(&user.token),
                Some(serde_json::to_vec(&json!({"message": "hi", "stream": false}))?),
                &[("x-provider-api-key", &format!("sk-random-{i}-{}", uuid::Uuid::new_v4()))],
            )
            .await?;
        statuses.push((r.status, r.json()["error"]["policy"].clone()));
    }
    assert_eq!(statuses[..2], [(200, Value::Null), (200, Value::Null)]);
    assert_eq!(statuses[2], (429, json!("chat")), "the caller's own limit still applies");
    Ok(())
}

#[tokio::test]
async fn nul_bytes_from_the_provider_are_stored_and_the_call_is_counted() -> anyhow::Result<()> {
    let events = fake_llm::openai_stream("gpt-4o-mini", &["before\u{0}after", " end"], 7, 3);
    let fake = FakeProvider::start(vec![fake_llm::stream(events)], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let user = db.user().await?;
    let r = chat(&host, &user, json!({"message": "hi"})).await?;
    assert_eq!(r.status, 200);
    let conversation = r.header("x-chatedge-conversation-id").expect("conversation").to_owned();
    let stored = messages(&db, &conversation).await?;
    assert_eq!((stored[1].1.as_str(), stored[1].2.as_str()), ("before\u{FFFD}after end", "complete"));
    let rows = usage(&db, &user).await?;
    assert_eq!((rows.len(), rows[0].2, rows[0].3, rows[0].5.as_str()), (1, 7, 3, "complete"));
    Ok(())
}

#[tokio::test]
async fn a_refused_key_is_never_quoted_to_clients_or_rows() -> anyhow::Result<()> {
    let refusal = fake_llm::openai_error(
        "Incorrect API key provided: sk-proj-********************wxyz. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        Some("invalid_api_key"),
    );
    let fake =
        FakeProvider::start(Vec::new(), Some(Answer::Json { status: 401, headers: vec![], body: refusal })).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let user = db.user().await?;
    for byo in [None, Some("sk-user-secret-abcdwxyz")] {
        let headers: Vec<(&str, &str)> = byo.map(|k| vec![("x-provider-api-key", k)]).unwrap_or_default();
        let r = host
            .send(
                "POST",
                CHAT,
                Some(&user.token),
                Some(serde_json::to_vec(&json!({"message": "hi", "stream": false}))?),
                &headers,
            )
            .await?;
        assert_eq!((r.status, r.error_code()), (502, "provider_auth_failed".to_owned()));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!body.contains("wxyz") && !body.contains("sk-"), "{body}");
    }
    let leaked: i64 = db
        .admin()
        .await?
        .query_one(
            "select count(*) from messages where user_id = $1 and (metadata::text like '%wxyz%' or metadata::text like '%sk-%')",
            &[&user.id],
        )
        .await?
        .get(0);
    assert_eq!(leaked, 0);
    Ok(())
}

#[tokio::test]
async fn an_unconfigured_compatible_server_is_not_guessed() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = start(&db, &[], &[]).await?;
    let user = db.user().await?;
    let r = chat(&host, &user, json!({"message": "hi", "provider": "openai_compatible", "model": "llama3.2"})).await?;
    assert_eq!((r.status, r.error_code()), (503, "provider_not_configured".to_owned()));
    assert_eq!(r.json()["error"]["variable"], "compatible_base_url");
    Ok(())
}

#[tokio::test]
async fn budgets_price_every_model_images_and_tools_honestly() -> anyhow::Result<()> {
    let fake =
        FakeProvider::start(Vec::new(), Some(fake_llm::ok_json(fake_llm::openai_completion("o3", "ok", 5, 5)))).await?;
    let db = TestDb::start().await?;
    // $0.005 a day: 100 output tokens of o3 ($8 per 1M) reserve $0.0008, of o3-pro ($80) $0.008.
    let host = start(&db, &[("openai", &fake)], &[("SPIN_VARIABLE_BUDGET_DAILY_USD", "0.005")]).await?;
    let user = db.user().await?;
    // A model without a price cannot run under a USD cap.
    let r = chat(&host, &user, json!({"message": "hi", "model": "o3-deep-research", "stream": false})).await?;
    assert_eq!((r.status, r.error_code()), (400, "model_not_priced".to_owned()));
    // o3-pro is not priced as o3: 100 output tokens fit the cap at o3's price, not at o3-pro's.
    let r = chat(&host, &user, json!({"message": "hi", "model": "o3", "max_tokens": 100, "stream": false})).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = chat(&host, &user, json!({"message": "hi", "model": "o3-pro", "max_tokens": 100, "stream": false})).await?;
    assert_eq!((r.status, r.error_code()), (429, "budget_exceeded".to_owned()));
    assert_eq!(fake.received().len(), 1, "refused calls reach no provider");

    // Images count at their token cost, whatever their bytes: a token cap that fits the text
    // alone refuses the same request with two images.
    let tokens = start(&db, &[("openai", &fake)], &[("SPIN_VARIABLE_BUDGET_DAILY_TOKENS", "3000")]).await?;
    let other = db.user().await?;
    let text = json!({"role": "user", "content": [{"type": "text", "text": "what is this?"}]});
    let r =
        chat(&tokens, &other, json!({"messages": [text], "model": "gpt-4o-mini", "max_tokens": 10, "stream": false}))
            .await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let images = json!({"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]});
    let r =
        chat(&tokens, &other, json!({"messages": [images], "model": "gpt-4o-mini", "max_tokens": 10, "stream": false}))
            .await?;
    assert_eq!((r.status, r.error_code()), (429, "budget_exceeded".to_owned()));
    Ok(())
}

#[tokio::test]
async fn stale_pending_rows_and_holds_are_swept() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let user = db.user().await?;
    let admin = db.admin().await?;
    // What a host that died mid-stream leaves: a pending assistant row and a budget hold.
    let conversation: uuid::Uuid =
        admin.query_one("insert into conversations (user_id) values ($1) returning id", &[&user.id]).await?.get(0);
    admin
        .execute(
            "insert into messages (conversation_id, user_id, role, status, created_at) \
             values ($1, $2, 'assistant', 'pending', now() - interval '2 hours')",
            &[&conversation, &user.id],
        )
        .await?;
    admin
        .batch_execute(&format!(
            "insert into chatedge.budget_days (user_id, day, tokens_reserved, usd_reserved) values ('{0}', (now() at time zone 'utc')::date, 500, 0.5);
             insert into chatedge.budget_holds (user_id, day, tokens, usd, created_at) values ('{0}', (now() at time zone 'utc')::date, 500, 0.5, now() - interval '2 hours');",
            user.id
        ))
        .await?;
    // The host runs the sweep on its timer (every second here).
    let _host = TestApp::spawn(&db, &[("CHATEDGE_MAINTENANCE_SECS", "1")]).await?;
    let mut swept = (String::new(), -1i64);
    for _ in 0..600 {
        let status: String =
            admin.query_one("select status from messages where conversation_id = $1", &[&conversation]).await?.get(0);
        let reserved: i64 = admin
            .query_one("select tokens_reserved from chatedge.budget_days where user_id = $1", &[&user.id])
            .await?
            .get(0);
        swept = (status, reserved);
        if swept == ("incomplete".to_owned(), 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(swept, ("incomplete".to_owned(), 0));
    let holds: i64 = admin.query_one("select count(*) from chatedge.budget_holds", &[]).await?.get(0);
    assert_eq!(holds, 0);
    // Callable as plain SQL too (what a Spin deployment schedules).
    let summary: String = admin.query_one("select chatedge.maintain(360000)::text", &[]).await?.get(0);
    assert!(summary.contains("stale_messages"), "{summary}");
    Ok(())
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_move_an_anonymous_bucket() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "ok", 1, 1))),
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[("openai", &fake)],
        &[("SPIN_VARIABLE_RATELIMIT_CHAT_ANONYMOUS", "2/min:2"), ("SPIN_VARIABLE_RATELIMIT_TRUSTED_PROXIES", "1")],
    )
    .await?;
    let mut statuses = Vec::new();
    for i in 0..3 {
        // A new anonymous sign-in each time, and a made-up first hop: only the hop the one
        // trusted proxy appended (the last) counts.
        let anonymous = db.user().await?;
        let token = chatedge_tests::token_with(json!({
            "sub": anonymous.id.to_string(), "role": "authenticated", "aud": "authenticated",
            "is_anonymous": true, "exp": chrono_now() + 600,
        }));
        let r = host
            .send(
                "POST",
                CHAT,
                Some(&token),
                Some(serde_json::to_vec(&json!({"message": "hi", "stream": false}))?),
                &[("x-forwarded-for", &format!("10.9.{i}.{i}, 203.0.113.7"))],
            )
            .await?;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    Ok(())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[tokio::test]
async fn prompt_cache_writes_and_reasoning_tokens_are_counted_and_priced_apart() -> anyhow::Result<()> {
    let cached_reply = json!({"id": "msg_01Cache", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "From the cache."}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 5, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 300, "output_tokens": 7}});
    let anthropic = FakeProvider::start(vec![fake_llm::ok_json(cached_reply.to_string())], None).await?;
    let events: Vec<String> = fake_llm::openai_stream("gpt-4o-mini", &["thought ", "through"], 10, 40)
        .into_iter()
        .map(|e| e.replace("\"reasoning_tokens\":0", "\"reasoning_tokens\":12"))
        .collect();
    let openai = FakeProvider::start(vec![fake_llm::stream(events)], None).await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("anthropic", &anthropic), ("openai", &openai)], &[]).await?;
    let hana = db.user().await?;

    let body = json!({"model": "claude-sonnet-4-20250514", "messages": [{"role": "user", "content": "again"}]});
    let r = host.json("POST", "/v1/chat/completions", &hana.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["usage"]["prompt_tokens_details"], json!({"cached_tokens": 300, "cache_write_tokens": 1200}));
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "think"}]});
    let r = host.json("POST", "/v1/chat/completions", &hana.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let last = sse_json(&r.body).pop().unwrap_or_default();
    assert_eq!(last["usage"]["completion_tokens_details"]["reasoning_tokens"], 12);

    let rows = db
        .admin()
        .await?
        .query(
            "select provider, prompt_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd::text \
             from api_usage where user_id = $1 order by created_at, id",
            &[&hana.id],
        )
        .await?;
    let rows: Vec<(String, i32, i32, i32, i32, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect();
    // claude-sonnet-4: 5 plain input at $3, 300 cache reads at $0.30, 1200 cache writes at $3.75,
    // 7 output at $15 per 1M; gpt-4o-mini: 10 in at $0.15, 40 out (12 of them reasoning) at $0.60.
    assert_eq!(
        rows,
        vec![
            ("anthropic".into(), 1505, 300, 1200, 0, "0.00471000".into()),
            ("openai".into(), 10, 0, 0, 12, "0.00002550".into()),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn provider_connections_are_kept_alive_and_a_cut_one_is_not_reused() -> anyhow::Result<()> {
    let stream = fake_llm::openai_stream("gpt-4o-mini", &["kept ", "alive"], 5, 2);
    let whole = fake_llm::openai_completion("gpt-4o-mini", "kept alive", 5, 2);
    let fake = FakeProvider::start_by_kind(stream, whole).await?;
    let db = TestDb::start().await?;
    // One worker thread: idle connections are kept per thread.
    let host = start(
        &db,
        &[("openai", &fake)],
        &[("CHATEDGE_THREADS", "1"), ("SPIN_VARIABLE_RATELIMIT_CHAT", "1000/min:1000")],
    )
    .await?;
    let ivan = db.user().await?;
    for i in 0..6 {
        let body =
            json!({"model": "gpt-4o-mini", "stream": i % 2 == 0, "messages": [{"role": "user", "content": "hi"}]});
        let r = host.json("POST", "/v1/chat/completions", &ivan.token, body).await?;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(fake.received().len(), 6);
    assert_eq!(fake.connections(), 1, "six chats, streamed and whole, on one kept connection");

    // A stream the client leaves mid-way closes its upstream connection; the next chat opens a
    // new one and is answered in full.
    let slow = fake_llm::openai_stream("gpt-4o-mini", &["a ", "b ", "c ", "d ", "e "], 5, 5);
    let answer = Answer::Stream { events: slow, delay: Duration::from_millis(200), end: End::Finish };
    let cut = FakeProvider::start(
        vec![answer],
        Some(fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &["whole"], 5, 1))),
    )
    .await?;
    let host = start(
        &db,
        &[("openai", &cut)],
        &[("CHATEDGE_THREADS", "1"), ("SPIN_VARIABLE_RATELIMIT_CHAT", "1000/min:1000")],
    )
    .await?;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "slow"}]});
    let mut response = host.open("/v1/chat/completions", &ivan.token, &body).await?;
    assert_eq!(response.status(), 200);
    // The first frame, then the client goes away.
    let _ = response.body_mut().frame().await;
    drop(response);
    assert!(cut.wait_hung_up(1, Duration::from_secs(10)).await, "the upstream stream was closed");
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "again"}]});
    let r = host.json("POST", "/v1/chat/completions", &ivan.token, body).await?;
    assert_eq!(r.status, 200);
    assert_eq!(content_deltas(&sse_json(&r.body)), "whole");
    assert_eq!(cut.connections(), 2, "the cut connection was not reused");
    Ok(())
}
