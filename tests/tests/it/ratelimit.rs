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

// ------------------------------------------------------------------ through the functions

use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::{Reply, TestApp, JWT_SECRET};
use serde_json::{json, Value};

fn chat_env(fake: &FakeProvider) -> Vec<(&'static str, String)> {
    vec![
        ("SPIN_VARIABLE_OPENAI_BASE_URL", format!("{}/v1", fake.origin)),
        ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST", fake.origin.clone()),
        ("SPIN_VARIABLE_OPENAI_API_KEY", "sk-test".into()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)], extra: &[(&'static str, &'static str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    v.extend(extra.iter().copied());
    v
}

fn assert_limit_headers(r: &Reply, policy: &str, rate: u64, window: u64) {
    assert_eq!(r.header("ratelimit-policy"), Some(format!("\"{policy}\";q={rate};w={window}").as_str()));
    let state = r.header("ratelimit").expect("RateLimit header");
    assert!(state.starts_with(&format!("\"{policy}\";r=")), "{state}");
    assert_eq!(r.header("x-ratelimit-limit"), Some(rate.to_string().as_str()));
    assert!(r.header("x-ratelimit-remaining").is_some() && r.header("x-ratelimit-reset").is_some());
}

#[tokio::test]
async fn two_hosts_one_database_admit_exactly_fifty_of_two_hundred_chats() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "ok", 3, 1))),
    )
    .await?;
    let db = TestDb::start().await?;
    let env = chat_env(&fake);
    let extra = [("SPIN_VARIABLE_RATELIMIT_CHAT", "50/h:50")];
    let hosts = [TestApp::spawn(&db, &refs(&env, &extra)).await?, TestApp::spawn(&db, &refs(&env, &extra)).await?];
    let user = db.user().await?;
    let hosts = std::sync::Arc::new(hosts);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (hosts, start, token) = (hosts.clone(), start.clone(), user.token.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            hosts[i % 2]
                .json(
                    "POST",
                    "/functions/v1/chat-completion",
                    &token,
                    json!({"message": format!("m{i}"), "stream": false}),
                )
                .await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let r = task.await??;
        match r.status {
            200 => {
                admitted += 1;
                assert_limit_headers(&r, "chat", 50, 3600);
            }
            429 => {
                refused += 1;
                assert_eq!(r.error_code(), "rate_limited");
                assert_limit_headers(&r, "chat", 50, 3600);
                assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
                let retry: u64 = r.header("retry-after").expect("Retry-After").parse()?;
                assert!((1..=72).contains(&retry), "retry-after {retry}");
                assert_eq!(r.header("access-control-allow-origin"), Some("*"));
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!((admitted, refused), (50, 150));
    // Refused requests did no work: 50 provider calls, 50 stored user messages.
    assert_eq!(fake.received().len(), 50);
    let stored: i64 = db
        .admin()
        .await?
        .query_one("select count(*) from messages where user_id = $1 and role = 'user'", &[&user.id])
        .await?
        .get(0);
    assert_eq!(stored, 50);
    Ok(())
}

#[tokio::test]
async fn key_value_backend_is_exact_under_concurrency_via_compare_and_swap() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_BACKEND", "kv")]).await?;
    let service = chatedge_devstack::tokens::api_key(JWT_SECRET.as_bytes(), "service_role")?;
    let host = std::sync::Arc::new(host);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (host, service) = (host.clone(), service.clone());
        tasks.push(tokio::spawn(async move {
            host.json("POST", "/functions/v1/rate-limit", &service, json!({"key": "export:acme", "limit": "7/h:7"}))
                .await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        let r = t.await??;
        match r.status {
            200 => admitted += 1,
            429 => assert_limit_headers(&r, "custom", 7, 3600),
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(admitted, 7);
    // Nothing went to Postgres.
    let rows: i64 = db.admin().await?.query_one("select count(*) from chatedge.rate_limits", &[]).await?.get(0);
    assert_eq!(rows, 0);
    Ok(())
}

#[tokio::test]
async fn rate_limit_function_anonymous_policy_and_fail_closed() -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "ok", 3, 1))),
    )
    .await?;
    // The outage stops the server: one of this test's own.
    let mut db = TestDb::dedicated().await?;
    let env = chat_env(&fake);
    let host = TestApp::spawn(&db, &refs(&env, &[])).await?;
    let user = db.user().await?;

    // GET: the caller's policies, nothing consumed.
    let r = host.get("/functions/v1/rate-limit", &user.token).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let limits = r.json()["limits"].as_array().cloned().unwrap_or_default();
    let chat = limits.iter().find(|l| l["policy"] == "chat").expect("chat policy");
    assert_eq!(
        (chat["rate"].as_u64(), chat["window_seconds"].as_u64(), chat["burst"].as_u64()),
        (Some(20), Some(60), Some(5))
    );
    assert_eq!(chat["remaining"], 5);
    // Looking consumes nothing but the look itself, which counts against `api`.
    let again = host.get("/functions/v1/rate-limit", &user.token).await?.json()["limits"].clone();
    let without_api = |l: &Value| -> Vec<Value> {
        l.as_array().into_iter().flatten().filter(|p| p["policy"] != "api").cloned().collect()
    };
    assert_eq!(without_api(&again), without_api(&json!(limits)));
    let api =
        |l: &Value| l.as_array().and_then(|a| a.iter().find(|p| p["policy"] == "api")).map(|p| p["remaining"].clone());
    assert_ne!(api(&again), api(&json!(limits)), "a look is one api call");

    // POST needs the service role; bad bodies are 400.
    let r = host.json("POST", "/functions/v1/rate-limit", &user.token, json!({"key": "k", "limit": "1/min"})).await?;
    assert_eq!((r.status, r.error_code()), (403, "forbidden".to_owned()));
    let service = chatedge_devstack::tokens::api_key(JWT_SECRET.as_bytes(), "service_role")?;
    for body in [json!({"key": "", "limit": "1/min"}), json!({"key": "k", "limit": "lots"}), json!({"key": "k"})] {
        let r = host.json("POST", "/functions/v1/rate-limit", &service, body.clone()).await?;
        assert_eq!(r.status, 400, "{body}");
    }
    let first = host.json("POST", "/functions/v1/rate-limit", &service, json!({"key": "k", "limit": "1/min"})).await?;
    assert_eq!(first.status, 200);
    let second = host.json("POST", "/functions/v1/rate-limit", &service, json!({"key": "k", "limit": "1/min"})).await?;
    assert_eq!((second.status, second.header("retry-after")), (429, Some("60")));

    // Anonymous sign-ins get the stricter policy (5/min, burst 2), keyed by address.
    let anon_id = uuid::Uuid::new_v4().to_string();
    db.admin()
        .await?
        .execute(
            "insert into auth.users (id, aud, role, is_anonymous) values ($1::text::uuid, 'authenticated', 'authenticated', true)",
            &[&anon_id],
        )
        .await?;
    let anon = chatedge_tests::token_with(json!({
        "sub": anon_id, "role": "authenticated", "aud": "authenticated", "is_anonymous": true,
        "exp": chatedge_devstack::tokens::now() + 600,
    }));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = host
            .json("POST", "/functions/v1/chat-completion", &anon, json!({"message": "hi", "stream": false}))
            .await?;
        if r.status == 429 {
            assert_eq!(r.json()["error"]["policy"], "chat_anonymous");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 429]);

    // The limiter's store goes away: chat fails closed with 503, and comes back with it.
    db.stop()?;
    let r = host
        .json("POST", "/functions/v1/chat-completion", &user.token, json!({"message": "hi", "stream": false}))
        .await?;
    assert_eq!((r.status, r.error_code()), (503, "rate_limiter_unavailable".to_owned()));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(fake.received().len(), 2, "nothing reached the provider");
    db.restart()?;
    let mut ok = false;
    for _ in 0..50 {
        let r = host
            .json("POST", "/functions/v1/chat-completion", &user.token, json!({"message": "back", "stream": false}))
            .await?;
        if r.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "chat recovered after the database came back");
    Ok(())
}

#[tokio::test]
async fn concurrent_chats_never_spend_past_the_daily_budget() -> anyhow::Result<()> {
    // Every answer reports 10 + 90 tokens; the cap allows at most 30 of the 40 racing chats.
    let fake = FakeProvider::start(
        Vec::new(),
        Some(fake_llm::ok_json(fake_llm::openai_completion("gpt-4o-mini", "ok", 10, 90))),
    )
    .await?;
    let db = TestDb::start().await?;
    let env = chat_env(&fake);
    let host = TestApp::spawn(
        &db,
        &refs(
            &env,
            &[("SPIN_VARIABLE_BUDGET_DAILY_TOKENS", "3000"), ("SPIN_VARIABLE_RATELIMIT_CHAT", "1000/min:1000")],
        ),
    )
    .await?;
    let user = db.user().await?;
    let host = std::sync::Arc::new(host);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (host, start, token) = (host.clone(), start.clone(), user.token.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            host.json(
                "POST",
                "/functions/v1/chat-completion",
                &token,
                json!({"message": format!("q{i}"), "stream": false, "max_tokens": 100}),
            )
            .await
        }));
    }
    let (mut admitted, mut refused) = (0usize, 0usize);
    for t in tasks {
        let r = t.await??;
        match r.status {
            200 => admitted += 1,
            429 => {
                assert_eq!(r.error_code(), "budget_exceeded");
                assert_eq!(r.json()["error"]["tokens_cap"], 3000);
                assert!(r.header("retry-after").is_some());
                refused += 1;
            }
            other => panic!("unexpected {other}: {}\n{}", String::from_utf8_lossy(&r.body), host.log()),
        }
    }
    assert_eq!(admitted + refused, 40);
    assert!(refused >= 10, "40 x 100 tokens cannot fit in 3000");
    assert_eq!(fake.received().len(), admitted, "refused chats never reached the provider");
    let admin = db.admin().await?;
    let row = admin
        .query_one("select tokens_used, tokens_reserved from chatedge.budget_days where user_id = $1", &[&user.id])
        .await?;
    let (used, reserved): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(reserved, 0, "every reservation settled or released");
    assert_eq!(used, admitted as i64 * 100);
    assert!(used <= 3000, "spent {used} of 3000");
    let usage_total: i64 = admin
        .query_one(
            "select coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint from api_usage where user_id = $1",
            &[&user.id],
        )
        .await?
        .get(0);
    assert_eq!(usage_total, used, "the budget counts exactly the recorded usage");

    // The caller sees the budget. A request without max_tokens gets the 4096-token default cap,
    // whose reservation alone exceeds the 3000-token budget.
    let status = host.get("/functions/v1/rate-limit", &user.token).await?.json();
    assert_eq!(status["budget"]["tokens_cap"], 3000);
    assert_eq!(status["budget"]["tokens_used"], used);
    let r = host
        .json("POST", "/functions/v1/chat-completion", &user.token, json!({"message": "big", "stream": false}))
        .await?;
    assert_eq!(
        (r.status, r.error_code()),
        (429, "budget_exceeded".to_owned()),
        "4096 default output tokens cannot fit"
    );
    Ok(())
}

#[tokio::test]
async fn looking_at_limits_is_itself_limited() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_RATELIMIT_API", "3/min:3")]).await?;
    let user = db.user().await?;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = host.get("/functions/v1/rate-limit", &user.token).await?;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.json()["error"]["policy"], "api");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    Ok(())
}
