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
    assert_eq!(stored, vec![("user".into(), "Stream hi".into()), ("assistant".into(), "streamed".into())]);
    Ok(())
}
