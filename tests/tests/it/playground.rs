//! The playground at `/`: served by the app with its own files and a strict CSP, and used for
//! real in headless Chromium (tests/browser/playground.py, selenium from `./dev test`'s
//! virtualenv): sign in by the dev link, stream a chat from the fake provider, run Python that
//! draws a chart and see the image, upload a file and see it listed. The screenshots are kept
//! under `$CARGO_TARGET_DIR/test-artifacts/playground`.

use crate::chat::start;
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::{repo_root, TestDb};
use serde_json::Value;

const ANSWER: [&str; 3] = ["Hello ", "from the ", "fake provider"];

#[tokio::test]
async fn the_playground_chats_runs_code_and_uploads_in_a_real_browser() -> anyhow::Result<()> {
    let fake = FakeProvider::start_by_kind(
        fake_llm::openai_stream("gpt-4o-mini", &ANSWER, 7, 3),
        fake_llm::openai_completion("gpt-4o-mini", "unused", 7, 1),
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[("openai", &fake)],
        &[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000"), ("SPIN_VARIABLE_RATELIMIT_UPLOAD", "1000/min:1000")],
    )
    .await?;
    let user = db.user().await?;

    // The page and its files, nothing else.
    let page = host.send("GET", "/", None, None, &[]).await?;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(String::from_utf8_lossy(&page.body).contains("/playground/app.js"));
    let script = host.send("GET", "/playground/app.js", None, None, &[]).await?;
    assert_eq!((script.status, script.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    for path in ["/playground/../spin.toml", "/playground/nope.js", "/playground/app.js/x"] {
        assert_eq!(host.send("GET", path, None, None, &[]).await?.status, 404, "{path}");
    }

    // The browser.
    let venv = std::env::var("CHATEDGE_PY_VENV").unwrap_or_else(|_| "/var/tmp/chatedge/py".into());
    let python = std::path::Path::new(&venv).join("bin/python");
    anyhow::ensure!(python.exists(), "{} missing: run ./dev test", python.display());
    let shots = chatedge_tests::artifacts_dir("playground")?;
    let upload = tempfile::tempdir()?;
    let upload_file = upload.path().join("notes-from-the-browser.txt");
    std::fs::write(&upload_file, "uploaded through the playground\n")?;
    let output = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/browser/playground.py"))
        .arg(&host.base_url)
        .arg(&user.token)
        .arg(&shots)
        .arg(&upload_file)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser run failed: {stdout}\n{}\nhost log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        host.log()
    );
    let seen: Value = serde_json::from_str(stdout.trim())?;

    // Signed in as the token's user, and the token left the address bar.
    assert_eq!(seen["who"], format!("signed in as {}@test.local", user.id), "{seen}");
    assert!(!seen["address_after_sign_in"].as_str().unwrap_or_default().contains("token"), "{seen}");
    // The chat streamed the fake's words into the assistant's bubble, usage shown after.
    let messages = seen["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 2, "{seen}");
    assert_eq!(messages[0]["text"], "Hello from the browser");
    assert_eq!(messages[1]["class"], "message assistant");
    assert_eq!(messages[1]["text"], ANSWER.concat());
    assert!(seen["usage"].as_str().unwrap_or_default().contains("7 in / 3 out"), "{seen}");
    assert_eq!(seen["conversations"].as_array().map(Vec::len), Some(1), "{seen}");
    let asked = fake.chat_requests();
    assert!(asked.iter().any(|r| r.body.to_string().contains("Hello from the browser")));
    // The chart was drawn by matplotlib in the sandbox, kept, and shown from its stored copy.
    assert_eq!(seen["code"]["stdout"], "drawn", "{seen}");
    assert!(seen["code"]["status"].as_str().unwrap_or_default().starts_with("ok"), "{seen}");
    assert!(seen["code"]["image_width"].as_u64().unwrap_or(0) >= 100, "{seen}");
    assert_eq!(seen["code"]["image_alt"], "Squares");
    assert!(seen["code"]["image_src"].as_str().unwrap_or_default().contains("/visualizations/"), "{seen}");
    // The upload is listed, and it is the user's row.
    assert!(
        seen["files"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f.as_str().unwrap_or_default().contains("notes-from-the-browser.txt")),
        "{seen}"
    );
    let listed = host.get("/functions/v1/file-upload", &user.token).await?.json();
    assert_eq!(listed["data"][0]["original_name"], "notes-from-the-browser.txt");
    assert_eq!(listed["data"][0]["size_bytes"], 32);

    for shot in ["chat.png", "code.png", "files.png"] {
        let bytes = std::fs::read(shots.join(shot))?;
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{shot}: {} bytes", bytes.len());
    }
    Ok(())
}
