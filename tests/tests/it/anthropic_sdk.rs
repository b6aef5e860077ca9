//! The official Anthropic Python SDK works against chatedge's `/v1/messages` unmodified
//! (base_url + the user's JWT as the key): `messages.stream` with tool use, `messages.create`
//! with the tool result, typed errors, served here by an OpenAI fake. `./dev test` installs the
//! pinned SDK into the tests' virtualenv (CHATEDGE_PY_VENV).

use super::chat::start;
use super::messages::weather_tool_provider;
use chatedge_tests::{repo_root, TestDb};
use serde_json::{json, Value};

#[tokio::test]
async fn official_anthropic_python_sdk_works_unmodified() -> anyhow::Result<()> {
    let venv = std::env::var("CHATEDGE_PY_VENV").unwrap_or_else(|_| "/var/tmp/chatedge/py".into());
    let python = std::path::PathBuf::from(venv).join("bin/python");
    anyhow::ensure!(python.exists(), "{} missing: run ./dev test, which installs the SDKs", python.display());
    let fake = weather_tool_provider(&["{\"location\":", "\"Paris\"}"], "12 degrees.").await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let user = db.user().await?;
    let output = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/sdk/anthropic_client.py"))
        .arg(&host.base_url)
        .arg(&user.token)
        .output()
        .await?;
    assert!(output.status.success(), "SDK script failed: {}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout)?;

    assert_eq!(out["stream"]["texts"], json!(["Let me check."]));
    assert_eq!(out["stream"]["stop_reason"], "tool_use");
    assert_eq!(
        out["stream"]["tool_use"],
        json!({"id": "call_W1", "name": "get_weather", "input": {"location": "Paris"}})
    );
    assert_eq!(out["stream"]["output_tokens"], 18);
    assert_eq!(out["create"], json!({"text": "12 degrees.", "stop_reason": "end_turn", "input_tokens": 60}));
    assert_eq!(out["bad_request"]["status"], 400);
    assert_eq!(out["unauthorized"]["status"], 401);
    // The SDK sent the accumulated message back; OpenAI got the call and the tool message.
    let asked = &fake.received()[1].body;
    assert_eq!(asked["messages"][1]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(asked["messages"][2], json!({"role": "tool", "tool_call_id": "call_W1", "content": "12C"}));
    Ok(())
}
