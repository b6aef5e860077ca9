//! Host behaviour: routing, CORS preflight, a database outage, a trapping guest, shutdown.

use chatedge_tests::{TestApp, TestDb};
use serde_json::json;

const PATH: &str = "/functions/v1/conversations";

#[tokio::test]
async fn unknown_routes_preflight_and_health() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let user = db.user().await?;
    let missing = host.send("GET", "/functions/v1/nope", None, None, &[]).await?;
    assert_eq!((missing.status, missing.error_code()), (404, "route_not_found".to_owned()));

    let preflight = host
        .send(
            "OPTIONS",
            PATH,
            None,
            None,
            &[("origin", "https://app.example.com"), ("access-control-request-method", "POST")],
        )
        .await?;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert!(preflight.header("access-control-allow-headers").unwrap_or_default().contains("apikey"));
    assert!(preflight.header("access-control-allow-methods").unwrap_or_default().contains("PATCH"));

    let health = host.send("GET", "/functions/v1/health", None, None, &[]).await?;
    assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})));
    // Trailing path below a wildcard route reaches the component (and its own 404).
    let deep = host.get(&format!("{PATH}/a/b/c"), &user.token).await?;
    assert_eq!((deep.status, deep.error_code()), (404, "not_found".to_owned()));
    // One log line per request: method, path, component, status, duration.
    let log = host.log();
    assert!(
        log.lines().any(|l| l.contains("GET /functions/v1/health health 200") && l.contains("request_id=")),
        "{log}"
    );
    // The functions' responses carry the request's id; a sane one from the client is kept.
    let listed = host.get(PATH, &user.token).await?;
    assert!(listed.header("x-request-id").is_some_and(|id| id.len() >= 16));
    let tagged = host.send("GET", PATH, Some(&user.token), None, &[("x-request-id", "client-req-42")]).await?;
    assert_eq!(tagged.header("x-request-id"), Some("client-req-42"));
    let odd = host.send("GET", PATH, Some(&user.token), None, &[("x-request-id", "has spaces")]).await?;
    assert_ne!(odd.header("x-request-id"), Some("has spaces"));
    assert!(missing.header("x-request-id").is_some(), "the host's own errors carry it too");
    Ok(())
}

#[tokio::test]
async fn database_down_is_503_and_the_host_recovers() -> anyhow::Result<()> {
    // The outage stops the server: one of this test's own.
    let mut db = TestDb::dedicated().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let user = db.user().await?;
    assert_eq!(host.get(PATH, &user.token).await?.status, 200);

    db.stop()?;
    let down = host.json("POST", PATH, &user.token, json!({"title": "during outage"})).await?;
    assert_eq!((down.status, down.error_code()), (503, "database_unavailable".to_owned()));
    assert!(down.header("retry-after").is_some());
    // The host itself keeps answering.
    assert_eq!(host.send("GET", "/functions/v1/health", None, None, &[]).await?.status, 200);

    db.restart()?;
    let back = host.json("POST", PATH, &user.token, json!({"title": "after outage"})).await?;
    assert_eq!(back.status, 201, "{:?}", back.json());
    let list = host.get(PATH, &user.token).await?.json();
    let titles: Vec<_> = list["data"].as_array().unwrap().iter().map(|c| c["title"].clone()).collect();
    assert_eq!(titles, [json!("after outage")], "the failed create must not have written anything");
    Ok(())
}

#[tokio::test]
async fn a_trapping_guest_gets_a_json_500_and_the_host_keeps_serving() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    // 8 MiB of linear memory: reading a 12 MB chat body (the cap raised for this) makes the
    // guest's allocator fail, which traps.
    let host =
        TestApp::spawn(&db, &[("CHATEDGE_MAX_MEMORY_MB", "8"), ("SPIN_VARIABLE_CHAT_MAX_BODY_BYTES", "20000000")])
            .await?;
    let user = db.user().await?;
    let big = vec![b'a'; 12 << 20];
    let trapped = host.send("POST", "/functions/v1/chat-completion", Some(&user.token), Some(big), &[]).await?;
    assert_eq!((trapped.status, trapped.error_code()), (500, "internal_error".to_owned()));
    assert!(host.log().contains("trapped"), "{}", host.log());
    let ok = host.json("POST", PATH, &user.token, json!({"title": "still here"})).await?;
    assert_eq!(ok.status, 201);
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let user = db.user().await?;
    // A request in flight while the signal arrives still completes.
    let base = host.base_url.clone();
    let token = user.token.clone();
    let inflight = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let req = http::Request::get(format!("{base}{PATH}"))
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            match client.request(req).await {
                Ok(r) => statuses.push(r.status().as_u16()),
                Err(_) => break,
            }
        }
        statuses
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let status = host.terminate().await?;
    assert!(status.success(), "exit status {status}");
    let statuses = inflight.await?;
    assert!(statuses.iter().all(|s| *s == 200), "a request was cut off: {statuses:?}");
    Ok(())
}

/// Opens a raw TCP connection to the host.
async fn connect(host: &TestApp) -> anyhow::Result<tokio::net::TcpStream> {
    let addr = host.base_url.trim_start_matches("http://").to_owned();
    Ok(tokio::net::TcpStream::connect(addr).await?)
}

/// Sends `head` on a new connection and reads the first response line (the rest is dropped).
async fn status_line(host: &TestApp, head: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect(host).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn bodies_are_read_only_for_a_known_caller_and_within_caps() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let user = db.user().await?;
    // No token, 50 MB declared and not one byte sent: the answer comes without waiting for
    // the body (a function that read first would wait here until the test's own timeout).
    let unauthenticated = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        status_line(
            &host,
            &format!(
                "POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 52428800\r\n\r\n"
            ),
        ),
    )
    .await??;
    // 50 MB is past the host's own cap (32 MiB): refused before any function runs.
    assert!(unauthenticated.contains(" 413 "), "{unauthenticated}");
    // Within the host's cap but past the route's (64 KiB of JSON): 401 without a token, 413 with.
    for (token, expected) in [(String::new(), " 401 "), (format!("authorization: Bearer {}\r\n", user.token), " 413 ")]
    {
        let line = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            status_line(&host, &format!("POST {PATH} HTTP/1.1\r\nhost: x\r\n{token}content-type: application/json\r\ncontent-length: 1048576\r\n\r\n")),
        )
        .await??;
        assert!(line.contains(expected), "{expected}: {line}");
    }
    for path in ["/functions/v1/rate-limit", "/functions/v1/code-execution", "/functions/v1/chat-completion"] {
        let r = host.send("POST", path, None, Some(vec![b'{'; 2 << 20]), &[]).await?;
        assert_eq!(r.status, 401, "{path}: the body of an unknown caller is not read");
    }
    // Too many headers: refused by the server itself.
    let many: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let line = status_line(&host, &format!("GET /functions/v1/health HTTP/1.1\r\nhost: x\r\n{many}\r\n")).await?;
    assert!(line.contains(" 431 ") || line.is_empty(), "{line}");
    // Still serving.
    assert_eq!(host.send("GET", "/functions/v1/health", None, None, &[]).await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_second_host_on_the_same_port_refuses_to_start() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let first = TestApp::spawn(&db, &[]).await?;
    let addr = first.base_url.trim_start_matches("http://").to_owned();
    let output = tokio::process::Command::new(chatedge_tests::chatedge_bin()?)
        .args(["up", "--listen", &addr, "--manifest"])
        .arg(chatedge_tests::repo_root().join("spin.toml"))
        .env("SPIN_VARIABLE_DB_URL", db.app_url())
        .env("SPIN_VARIABLE_DB_HOST", db.host_port())
        .env("SPIN_VARIABLE_SUPABASE_JWT_SECRET", chatedge_tests::JWT_SECRET)
        .env("SPIN_VARIABLE_SANDBOX_URL", "http://127.0.0.1:9")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output).await??;
    assert!(!output.status.success(), "a second host started on {addr}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    // The first one still answers every request itself.
    let user = db.user().await?;
    for _ in 0..20 {
        assert_eq!(first.get(PATH, &user.token).await?.status, 200);
    }
    Ok(())
}

#[tokio::test]
async fn thousands_of_slow_clients_do_not_stop_a_normal_request() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("CHATEDGE_HEADER_TIMEOUT_MS", "2000")]).await?;
    // 1,000 that connect and say nothing, 1,000 that trickle a request head.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect(&host).await?);
    }
    let mut trickling = Vec::new();
    for _ in 0..1000 {
        let mut s = connect(&host).await?;
        s.write_all(b"GET /functions/v1/health HTTP/1.1\r\nx-slow: ").await?;
        trickling.push(s);
    }
    for s in trickling.iter_mut().take(200) {
        s.write_all(b"a").await?;
    }
    let normal = host.send("GET", "/functions/v1/health", None, None, &[]).await?;
    assert_eq!(normal.status, 200);
    // The header deadline closes the tricklers and the silent ones (a read sees the end). A
    // server without one would keep them open forever: the bound here is only a safety net.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        let mut closed = 0;
        for s in idle.iter_mut().take(50).chain(trickling.iter_mut().take(50)) {
            let mut buf = [0u8; 512];
            if s.read(&mut buf).await.is_ok() {
                closed += 1;
            }
        }
        closed
    })
    .await;
    assert_eq!(closed.ok(), Some(100), "slow connections are closed by the header deadline");
    assert_eq!(host.send("GET", "/functions/v1/health", None, None, &[]).await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn postgres_is_reached_over_tls_in_every_mode_that_asks_for_it() -> anyhow::Result<()> {
    let (db, ca) = chatedge_tests::TestDb::start_tls().await?;
    let admin = db.admin().await?;
    let encrypted = |url: String| async move {
        let client = chatedge::pgtls::connect(&url).await?;
        let ssl: bool = client.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[]).await?.get(0);
        anyhow::Ok(ssl)
    };
    let url = db.superuser_url();
    // Plain TCP is refused by this cluster (hostssl only): what connects is encrypted.
    assert!(encrypted(format!("{url}?sslmode=disable")).await.is_err(), "disable cannot connect to a TLS-only server");
    assert!(encrypted(format!("{url}?sslmode=prefer")).await?, "prefer encrypts when the server offers TLS");
    assert!(encrypted(format!("{url}?sslmode=require")).await?);
    assert!(encrypted(url.clone()).await?, "loopback default (prefer) encrypts too");
    let ca_param = ca.display().to_string().replace('/', "%2F");
    assert!(encrypted(format!("{url}?sslmode=verify-full&sslrootcert={ca_param}")).await?);
    assert!(encrypted(format!("{url}?sslmode=verify-ca&sslrootcert={ca_param}")).await?);
    // verify-* against roots that did not sign the server's certificate fail; verify-full to a
    // name not on the certificate fails, verify-ca does not check the name.
    assert!(encrypted(format!("{url}?sslmode=verify-full")).await.is_err(), "self-signed is not in the Mozilla roots");
    drop(admin);
    // The functions' connections (spin:postgres in the host) use TLS as well.
    let host =
        TestApp::spawn_with_database(&db, &format!("{}?sslmode=require", db.app_url()), &db.host_port(), &[]).await?;
    let user = db.user().await?;
    assert_eq!(host.json("POST", PATH, &user.token, json!({"title": "over tls"})).await?.status, 201);
    let plain: i64 = db
        .admin()
        .await?
        .query_one(
            "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.usename = 'authenticator' and not s.ssl",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(plain, 0, "every connection of the functions is encrypted");
    Ok(())
}

#[tokio::test]
async fn a_hostaddr_cannot_slip_past_the_outbound_allow_list() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    // Only `db.example.invalid:<port>` is allowed; the URL names it but dials 127.0.0.1, where
    // the database really is. Checking the host name alone would let it through.
    let port = db.port();
    let url = db.app_url().replace("@127.0.0.1:", "@db.example.invalid:") + "?hostaddr=127.0.0.1";
    let host = TestApp::spawn_with_database(&db, &url, &format!("db.example.invalid:{port}"), &[]).await?;
    let user = db.user().await?;
    let r = host.get(PATH, &user.token).await?;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(host.log().contains("127.0.0.1") && host.log().contains("allowed_outbound_hosts"), "{}", host.log());
    Ok(())
}

/// `chatedge up` on a manifest of its own (just the health component, and a database the dev
/// stack must provide), in `dir`, until it serves.
async fn dev_up(
    dir: &std::path::Path,
) -> anyhow::Result<(tokio::process::Child, std::sync::Arc<std::sync::Mutex<String>>)> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(chatedge_tests::chatedge_bin()?);
    cmd.args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(dir.join("spin.toml"))
        .env_remove("SPIN_VARIABLE_DB_URL")
        .env_remove("SPIN_VARIABLE_DB_HOST")
        .env(
            "CHATEDGE_CACHE_DIR",
            std::env::var("CHATEDGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp/chatedge/cache".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
    }
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        // The banner's last line comes after dev.env is written (the first, "Serving", before).
        while let Some(line) = lines.next_line().await? {
            if line.trim_start().starts_with("(also in ") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("exited before its banner was done: {}", log.lock().map(|l| l.clone()).unwrap_or_default())
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, log))
}

#[tokio::test]
async fn a_dev_stack_left_running_by_a_killed_host_is_reused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let health = chatedge_tests::repo_root().join("target/wasm32-wasip2/release/health.wasm");
    std::fs::write(
        dir.path().join("spin.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"orphan\"\n[variables]\ndb_url = {{ required = true, secret = true }}\n\
             db_host = {{ required = true }}\nsupabase_jwt_secret = {{ default = \"\", secret = true }}\n\
             [[trigger.http]]\nroute = \"/health\"\ncomponent = \"health\"\n[component.health]\nsource = \"{}\"\n",
            health.display()
        ),
    )?;
    std::os::unix::fs::symlink(chatedge_tests::repo_root().join("migrations"), dir.path().join("migrations"))?;
    let (first, _) = dev_up(dir.path()).await?;
    // What the dev stack wrote is its owner's alone, from the start.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&dir.path().join(".chatedge"))?, 0o700);
    assert_eq!(mode(&dir.path().join(".chatedge/secrets.json"))?, 0o600);
    assert_eq!(mode(&dir.path().join(".chatedge/dev.env"))?, 0o600);
    // Killed outright: its Postgres keeps running, orphaned.
    let pid = first.id().expect("pid");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    drop(first);
    let (mut second, log) = dev_up(dir.path()).await?;
    let log_text = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(log_text.contains("reusing the Postgres server"), "{log_text}");
    // Stop it properly: its cluster goes with it.
    std::process::Command::new("kill").args(["-TERM", &second.id().unwrap_or(0).to_string()]).status()?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), second.wait()).await;
    if let Ok(cluster) = std::fs::read_link(dir.path().join(".chatedge/postgres")) {
        let _ = std::fs::remove_dir_all(cluster);
    }
    Ok(())
}
