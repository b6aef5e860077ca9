//! The bundled host's `spin:postgres` refuses a parameter whose type differs from what the
//! statement expects exactly as Spin 4.0.2 does (the same error, byte for byte), and accepts
//! the correctly typed ones. A test-only component (tests/probe) runs each statement on both
//! runtimes against the same database.

use chatedge_tests::{repo_root, Runtime, TestApp, TestDb};
use serde_json::{json, Value};

/// Each statement, its parameters, and whether Spin accepts them.
fn cases() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("select $1::bigint as n", json!([{"int32": 5}]), false),
        ("select $1::bigint as n", json!([{"int64": 5}]), true),
        ("select $1::uuid as id", json!([{"str": "8b0b6a52-3f61-4d6c-9a1e-0c2f4d5e6a7b"}]), false),
        ("select ($1::text)::uuid as id", json!([{"str": "8b0b6a52-3f61-4d6c-9a1e-0c2f4d5e6a7b"}]), true),
        ("select $1::numeric as usd", json!([{"str": "0.25"}]), false),
        ("select $1::int as n", json!([{"int64": 5}]), false),
        ("select $1::int as n", json!([{"int32": 5}]), true),
    ]
}

async fn answers(runtime: Runtime, db: &TestDb) -> anyhow::Result<Option<Vec<Value>>> {
    let (url, host) = (db.app_url(), db.host_port());
    let env = [("SPIN_VARIABLE_DB_URL", url.as_str()), ("SPIN_VARIABLE_DB_HOST", host.as_str())];
    let Some(app) = TestApp::serve_app(runtime, &repo_root().join("tests/probe/spin.toml"), &env).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (sql, params, _) in cases() {
        let body = serde_json::to_vec(&json!({"sql": sql, "params": params}))?;
        let reply = app.send("POST", "/probe", None, Some(body), &[]).await?;
        anyhow::ensure!(
            reply.status == 200,
            "{runtime:?} {sql}: {} {}\n{}",
            reply.status,
            String::from_utf8_lossy(&reply.body),
            app.log()
        );
        out.push(reply.json());
    }
    Ok(Some(out))
}

#[tokio::test]
async fn a_mistyped_parameter_is_refused_as_spin_refuses_it() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let ours = answers(Runtime::Chatedge, &db).await?.expect("the bundled host always runs");
    for ((sql, params, accepted), answer) in cases().into_iter().zip(&ours) {
        if accepted {
            assert_eq!(answer, &json!({"rows": 1}), "{sql} with {params}");
        } else {
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains("WrongType"), "{sql} with {params} must be refused: {answer}");
        }
    }
    assert!(
        ours[0]["error"].as_str().is_some_and(|e| e.contains(r#"WrongType { postgres: Int8, rust: \"i32\" }"#)),
        "{}",
        ours[0]
    );
    // Real Spin answers every case the same, error text included.
    if let Some(spins) = answers(Runtime::Spin, &db).await? {
        for ((sql, params, _), (theirs, ours)) in cases().into_iter().zip(spins.iter().zip(&ours)) {
            assert_eq!(ours, theirs, "{sql} with {params}: chatedge and Spin differ");
        }
    }
    Ok(())
}
