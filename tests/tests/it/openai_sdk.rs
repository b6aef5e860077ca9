//! The official OpenAI Python SDK works against chatedge unmodified (base_url + the user's JWT as
//! the API key): models, completions, streams with usage, and typed errors. `./dev test`
//! installs the pinned SDK into a virtualenv (CHATEDGE_PY_VENV).

use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::{repo_root, TestApp, TestDb};
use serde_json::Value;

fn python() -> anyhow::Result<std::path::PathBuf> {
    let venv = std::env::var("CHATEDGE_PY_VENV").unwrap_or_else(|_| "/var/tmp/chatedge/py".into());
    let py = std::path::PathBuf::from(venv).join("bin/python");
    anyhow::ensure!(py.exists(), "{} missing: run ./dev test, which installs the openai SDK", py.display());
    Ok(py)
}

#[tokio::test]
async fn official_openai_python_sdk_works_unmodified() -> anyhow::Result<()> {
    let python = python()?;
    let fake = FakeProvider::start(
        vec![
            fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "Hi from the SDK", 8, 4)),
            fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &["str", "eam", "ed"], 9, 3)),
            fake_llm::ok_json(fake_llm::openai_embeddings(
                "text-embedding-3-small",
                &fake_llm::test_vectors(2, 3),
                2,
                true,
            )),
            fake_llm::ok_json(fake_llm::openai_embeddings(
                "text-embedding-3-small",
                &fake_llm::test_vectors(1, 4),
                1,
                true,
            )),
            fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &["Res", "ponse"], 11, 2)),
            fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &["Once ", "more"], 17, 2)),
        ],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let base = format!("{}/v1", fake.origin);
    let host = TestApp::spawn(
        &db,
        &[
            ("SPIN_VARIABLE_OPENAI_BASE_URL", &base),
            ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST", &fake.origin),
            ("SPIN_VARIABLE_OPENAI_API_KEY", "sk-test"),
            // The script makes seven admitted calls; the default policy's burst is five.
            ("SPIN_VARIABLE_RATELIMIT_CHAT", "600/min:20"),
        ],
    )
    .await?;
    let user = db.user().await?;
    let output = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/sdk/openai_client.py"))
        .arg(format!("{}/v1", host.base_url))
        .arg(&user.token)
        .output()
        .await?;
    assert!(output.status.success(), "SDK script failed: {}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout)?;

    assert!(out["models"].as_array().unwrap().iter().any(|m| m == "gpt-4o-mini"), "{out}");
    assert_eq!(out["completion"]["content"], "Hi from the SDK");
    assert_eq!(out["completion"]["finish_reason"], "stop");
    assert_eq!(
        (out["completion"]["prompt_tokens"].as_u64(), out["completion"]["completion_tokens"].as_u64()),
        (Some(8), Some(4))
    );
    assert_eq!(out["stream"]["text"], "streamed");
    assert_eq!(out["stream"]["completion_tokens"], 3);
    assert_eq!(out["bad_request"]["status"], 400);
    assert_eq!(out["bad_request"]["code"], "validation_failed");
    assert_eq!(out["unauthorized"]["status"], 401);

    // Embeddings: the SDK's default (base64) and float both decode to the provider's vectors.
    let expected = fake_llm::test_vectors(2, 3);
    let vectors: Vec<Vec<f32>> = serde_json::from_value(out["embeddings"]["vectors"].clone())?;
    assert_eq!(vectors, expected);
    assert_eq!(out["embeddings"]["indexes"], serde_json::json!([0, 1]));
    assert_eq!(out["embeddings"]["prompt_tokens"], 2);
    let floats: Vec<f32> = serde_json::from_value(out["embeddings_float"].clone())?;
    assert_eq!(floats, fake_llm::test_vectors(1, 4)[0]);
    let asked: Vec<Value> =
        fake.received().iter().filter(|r| r.path == "/v1/embeddings").map(|r| r.body.clone()).collect();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0]["dimensions"], 3);
    assert_eq!(asked[0]["input"], serde_json::json!(["first", "second"]));

    // `store: true` (extra_body) persisted the streamed exchange in a new conversation.
    let stored: Vec<(String, String)> = db
        .admin()
        .await?
        .query(
            "select m.role, m.content from messages m join conversations c on c.id = m.conversation_id \
             where c.user_id = $1 order by m.created_at",
            &[&user.id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Responses are stored by default, continued in the same conversation.
    assert_eq!(
        stored,
        vec![
            ("user".into(), "Stream hi".into()),
            ("assistant".into(), "streamed".into()),
            ("user".into(), "Stream a response".into()),
            ("assistant".into(), "Response".into()),
            ("user".into(), "Again".into()),
            ("assistant".into(), "Once more".into()),
        ]
    );

    // Responses: the SDK's typed stream, its accumulating helper, and retrieve.
    let streamed = &out["responses_stream"];
    let kinds: Vec<&str> = streamed["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    assert_eq!(kinds.iter().filter(|k| **k == "response.output_text.delta").count(), 2);
    assert_eq!((streamed["text"].as_str(), streamed["output_text"].as_str()), (Some("Response"), Some("Response")));
    assert_eq!((streamed["input_tokens"].as_u64(), streamed["output_tokens"].as_u64()), (Some(11), Some(2)));
    assert_eq!(out["responses_helper"]["output_text"], "Once more");
    assert_eq!(out["responses_helper"]["previous_response_id"], streamed["id"]);
    assert_eq!(out["responses_retrieve"]["id"], out["responses_helper"]["id"]);
    assert_eq!(out["responses_retrieve"]["output_text"], "Once more");
    assert_eq!(out["responses_retrieve"]["status"], "completed");
    let asked: Vec<Value> =
        fake.received().iter().filter(|r| r.path == "/v1/chat/completions").map(|r| r.body.clone()).collect();
    assert_eq!(
        asked[asked.len() - 1]["messages"],
        serde_json::json!([{"role": "user", "content": "Stream a response"}, {"role": "assistant", "content": "Response"},
                           {"role": "user", "content": "Again"}])
    );
    Ok(())
}
