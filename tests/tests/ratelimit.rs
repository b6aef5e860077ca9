//! The Postgres rate-limit backend: exact under concurrency, and the same GCRA as `shared`.

use chatedge_tests::TestDb;
use shared::ratelimit::Limit;

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

const CHECK: &str =
    "select allowed, remaining, reset_after_ns, retry_after_ns from chatedge.rate_limit_check($1, $2, $3, $4)";

#[tokio::test]
async fn two_hundred_concurrent_checks_admit_exactly_the_burst() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    // 50 per hour with a burst of 50: inside one test run nothing replenishes noticeably.
    let limit = Limit::per_hour(50, 50);
    let (t, tau) = (limit.emission_ns() as i64, limit.tolerance_ns() as i64);
    // 40 connections as the functions' login role, 5 checks each, all racing.
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(std::sync::Arc::new(connect(&db.app_url()).await?));
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = clients[i % 40].clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let row = client.query_one(CHECK, &[&"user:racer", &t, &tau, &1i64]).await?;
            Ok::<_, anyhow::Error>((row.get::<_, bool>(0), row.get::<_, i64>(3)))
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        let (allowed, retry_after) = task.await??;
        if allowed {
            admitted += 1;
            assert_eq!(retry_after, 0);
        } else {
            assert!(retry_after > 0, "a refusal must say when to retry");
        }
    }
    assert_eq!(admitted, 50);
    Ok(())
}

#[tokio::test]
async fn the_database_function_agrees_with_the_pure_algorithm() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let client = connect(&db.app_url()).await?;
    // 3 per second, burst 2: the third immediate request waits one emission interval at most.
    let limit = Limit { rate: 3, period_ns: 1_000_000_000, burst: 2 };
    let (t, tau) = (limit.emission_ns() as i64, limit.tolerance_ns() as i64);
    let check = |key: &'static str| {
        let client = &client;
        async move {
            let r = client.query_one(CHECK, &[&key, &t, &tau, &1i64]).await?;
            Ok::<_, anyhow::Error>((r.get::<_, bool>(0), r.get::<_, i64>(1), r.get::<_, i64>(3)))
        }
    };
    let first = check("k").await?;
    assert_eq!((first.0, first.1), (true, 1));
    let second = check("k").await?;
    assert_eq!((second.0, second.1), (true, 0));
    let third = check("k").await?;
    assert!(!third.0);
    assert!(third.2 > 0 && third.2 <= t, "retry_after {} should be within one interval {t}", third.2);
    tokio::time::sleep(std::time::Duration::from_nanos(third.2 as u64)).await;
    assert!(check("k").await?.0, "admitted once retry_after has passed");
    // Keys are independent; the table itself is not reachable by the functions' role.
    assert!(check("other").await?.0);
    assert!(client.query("select * from chatedge.rate_limits", &[]).await.is_err());
    Ok(())
}
