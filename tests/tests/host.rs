//! Host behaviour: routing, CORS preflight, a database outage, a trapping guest, shutdown.

use chatedge_tests::{Host, TestDb};
use serde_json::json;

const PATH: &str = "/functions/v1/conversations";

#[tokio::test]
async fn unknown_routes_preflight_and_health() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = Host::start(&db, &[]).await?;
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
    let user = db.user().await?;
    let deep = host.get(&format!("{PATH}/a/b/c"), &user.token).await?;
    assert_eq!((deep.status, deep.error_code()), (404, "not_found".to_owned()));
    // One log line per request: method, path, component, status, duration.
    let log = host.log();
    assert!(log.lines().any(|l| l.contains("GET /functions/v1/health health 200") && l.ends_with("ms")), "{log}");
    Ok(())
}

#[tokio::test]
async fn database_down_is_503_and_the_host_recovers() -> anyhow::Result<()> {
    let mut db = TestDb::start().await?;
    let host = Host::start(&db, &[]).await?;
    let user = db.user().await?;
    assert_eq!(host.get(PATH, &user.token).await?.status, 200);

    let port = db.cluster.port;
    db.cluster.stop()?;
    let down = host.json("POST", PATH, &user.token, json!({"title": "during outage"})).await?;
    assert_eq!((down.status, down.error_code()), (503, "database_unavailable".to_owned()));
    assert!(down.header("retry-after").is_some());
    // The host itself keeps answering.
    assert_eq!(host.send("GET", "/functions/v1/health", None, None, &[]).await?.status, 200);

    db.cluster.start(port)?;
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
    // 8 MiB of linear memory: reading a 12 MB body makes the guest's allocator fail, which traps.
    let host = Host::start(&db, &[("CHATEDGE_MAX_MEMORY_MB", "8")]).await?;
    let user = db.user().await?;
    let big = vec![b'a'; 12 << 20];
    let trapped = host.send("POST", PATH, Some(&user.token), Some(big), &[]).await?;
    assert_eq!((trapped.status, trapped.error_code()), (500, "internal_error".to_owned()));
    assert!(host.log().contains("trapped"), "{}", host.log());
    let ok = host.json("POST", PATH, &user.token, json!({"title": "still here"})).await?;
    assert_eq!(ok.status, 201);
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = Host::start(&db, &[]).await?;
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
