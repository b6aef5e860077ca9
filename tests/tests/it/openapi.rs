//! The OpenAPI document is the contract: served by the app, covering every route of spin.toml,
//! and held to the running app by schemathesis (pinned in `./dev test`'s virtualenv): generated
//! requests for every operation, positive and negative, and every answer must be no 5xx, a
//! documented status, the documented content type and a body matching its schema.

use crate::chat::start;
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::{repo_root, TestApp, TestDb};

const DOC: &str = "/functions/v1/openapi.json";

/// Every route prefix of spin.toml (`/...` wildcards cut off).
fn manifest_routes() -> anyhow::Result<Vec<String>> {
    let manifest: toml::Table = std::fs::read_to_string(repo_root().join("spin.toml"))?.parse()?;
    let triggers = manifest["trigger"]["http"].as_array().cloned().unwrap_or_default();
    Ok(triggers
        .iter()
        .filter_map(|t| t.get("route").and_then(|r| r.as_str()))
        .map(|r| r.trim_end_matches("/...").to_owned())
        .collect())
}

/// Concrete paths of the documented ones: path parameters become a fresh UUID.
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-4000-8000-000000000000")
}

async fn stack(db: &TestDb) -> anyhow::Result<(Vec<FakeProvider>, TestApp)> {
    let openai = FakeProvider::start_by_kind(
        fake_llm::openai_stream("gpt-4o-mini", &["con", "tract"], 5, 2),
        fake_llm::openai_completion("gpt-4o-mini", "contract", 5, 1),
    )
    .await?;
    openai.embed_by_content();
    let anthropic = FakeProvider::start_by_kind(
        fake_llm::anthropic_stream("claude-sonnet-4-5", &["con", "tract"], 5, 2),
        fake_llm::anthropic_message("claude-sonnet-4-5", "contract", 5, 1),
    )
    .await?;
    let mistral = FakeProvider::start_by_kind(
        fake_llm::mistral_stream("mistral-small-latest", &["con", "tract"], 5, 2),
        fake_llm::mistral_completion("mistral-small-latest", "contract", 5, 1),
    )
    .await?;
    let compatible = FakeProvider::start_by_kind(
        fake_llm::openai_stream("llama3", &["con", "tract"], 5, 2),
        fake_llm::openai_completion("llama3", "contract", 5, 1),
    )
    .await?;
    compatible.embed_by_content();
    // Generous limits: schemathesis sends hundreds of requests; a 429 is documented, but a run
    // of nothing but 429s would test nothing.
    let limits = [
        ("SPIN_VARIABLE_RATELIMIT_CHAT", "100000/min:100000"),
        ("SPIN_VARIABLE_RATELIMIT_CODE", "100000/min:100000"),
        ("SPIN_VARIABLE_RATELIMIT_UPLOAD", "100000/min:100000"),
        ("SPIN_VARIABLE_RATELIMIT_API", "100000/min:100000"),
    ];
    let host = start(
        db,
        &[("openai", &openai), ("anthropic", &anthropic), ("mistral", &mistral), ("openai_compatible", &compatible)],
        &limits,
    )
    .await?;
    Ok((vec![openai, anthropic, mistral, compatible], host))
}

#[tokio::test]
async fn the_document_covers_every_route_and_the_app_keeps_to_it() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let (_fakes, host) = stack(&db).await?;
    let user = db.user().await?;

    // Served, public, and the same document the crate builds.
    let served = host.send("GET", DOC, None, None, &[]).await?;
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));
    assert_eq!(served.header("content-type"), Some("application/json"));
    let doc = served.json();
    assert_eq!(doc, api_docs::document());
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<String> = doc["paths"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();

    // Every manifest route of the API is documented (the playground's page is not API)…
    for route in manifest_routes()?.into_iter().filter(|r| r != "/" && r != "/playground") {
        assert!(
            paths.iter().any(|p| p == &route || p.starts_with(&format!("{route}/"))),
            "spin.toml route {route} has no documented path"
        );
    }
    // …and every documented operation is one the app routes (no `route_not_found`, no 405).
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m).filter(|m| *m != "parameters") {
            let reply = host.send(&method.to_ascii_uppercase(), &concrete(path), Some(&user.token), None, &[]).await?;
            assert!(
                reply.status != 405 && reply.json()["error"]["code"] != "route_not_found",
                "{method} {path} is documented but not routed: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }

    // schemathesis against the running app, the caller signed in; seeded, bounded examples.
    let venv = std::env::var("CHATEDGE_PY_VENV").unwrap_or_else(|_| "/var/tmp/chatedge/py".into());
    let schemathesis = std::path::Path::new(&venv).join("bin/schemathesis");
    anyhow::ensure!(schemathesis.exists(), "{} missing: run ./dev test, which installs it", schemathesis.display());
    let reports = chatedge_tests::artifacts_dir("schemathesis")?;
    // Seeded, so a run is repeatable; CHATEDGE_SCHEMATHESIS_SEED explores others.
    let seed = std::env::var("CHATEDGE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261206".into());
    let output = tokio::process::Command::new(schemathesis)
        .arg("--config-file")
        .arg(repo_root().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}{DOC}", host.base_url))
        .args(["--url", &host.base_url])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,\
             negative_data_rejection,ignored_auth",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--seed", &seed, "--workers", "1", "--request-timeout", "60"])
        .args(["--generation-database", "none"])
        .args(["--suppress-health-check", "all", "--warnings", "off"])
        .args(["--report", "junit,ndjson", "--report-dir"])
        .arg(&reports)
        .current_dir(&reports)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found contract failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It really ran every operation.
    let operations: usize = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, item)| item.as_object().map_or(0, |m| m.keys().filter(|k| *k != "parameters").count()))
        .sum();
    // (All but the document itself, which schemathesis leaves out as the schema's own URL.)
    let mut junit = String::new();
    for entry in std::fs::read_dir(&reports)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "xml") {
            junit.push_str(&std::fs::read_to_string(path)?);
        }
    }
    assert_eq!(junit.matches("<testcase ").count(), operations - 1, "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");

    // Which documented statuses the run met, per operation (from schemathesis' NDJSON events).
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> = Default::default();
    for entry in std::fs::read_dir(&reports)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(path)?.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let recorder = &event["ScenarioFinished"]["recorder"];
            let Some(label) = recorder["label"].as_str() else { continue };
            for interaction in recorder["interactions"].as_object().into_iter().flatten().map(|(_, i)| i) {
                if let Some(status) = interaction["response"]["status_code"].as_u64() {
                    seen.entry(label.to_owned()).or_default().insert(status);
                }
            }
        }
    }
    let mut unmet = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten().filter(|(p, _)| *p != DOC) {
        for (method, operation) in item.as_object().into_iter().flatten().filter(|(m, _)| *m != "parameters") {
            let label = format!("{} {path}", method.to_ascii_uppercase());
            let statuses = seen.get(&label).cloned().unwrap_or_default();
            let documented: Vec<u64> =
                operation["responses"].as_object().into_iter().flatten().filter_map(|(s, _)| s.parse().ok()).collect();
            // Without a token every signed-in operation says 401; an id that names nothing is a 404.
            if documented.contains(&401) {
                assert!(statuses.contains(&401), "{label} never answered 401: {statuses:?}");
            }
            if path.contains("{id}") {
                assert!(statuses.contains(&404), "{label} never answered 404: {statuses:?}");
            }
            unmet.extend(documented.iter().filter(|s| !statuses.contains(s)).map(|s| format!("{label} {s}")));
        }
    }
    // The rest (provider, sandbox and database faults; rate limits) are reached by the fault tests.
    println!("documented statuses this run did not meet:\n  {}", unmet.join("\n  "));
    Ok(())
}
