//! `./dev bench`: each chatedge measurement printed beside its baseline, measured in the same run
//! on the same machine. Load comes from this process over loopback keep-alive connections; every
//! loop is bounded by a request count and a time limit.

mod code;
mod rag;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chatedge::capabilities::variables::{AppVariables, Providers};
use chatedge::manifest::LoadedManifest;
use chatedge::runtime::{Runtime, RuntimeOptions};
use http_body_util::{BodyExt, Empty, Full};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const HEALTH_BODY: &str = r#"{"status":"ok"}"#;
const REQUESTS_PER_RUN: usize = 20_000;
const TIME_LIMIT: Duration = Duration::from_secs(8);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The baseline: a plain hyper server returning the health component's exact bytes and headers.
async fn plain_hyper() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = http::Response::new(Full::new(Bytes::from_static(HEALTH_BODY.as_bytes())));
                    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                    r.headers_mut().insert("access-control-allow-origin", http::HeaderValue::from_static("*"));
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// `chatedge up` as users run it, on a free port; the health route needs no database.
async fn chatedge_up() -> Result<(tokio::process::Child, String)> {
    let bin = std::env::current_exe()?.parent().context("bin dir")?.join("chatedge");
    let mut child = tokio::process::Command::new(&bin)
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(repo_root().join("spin.toml"))
        .env("SPIN_VARIABLE_DB_URL", "postgres://bench@127.0.0.1:9/bench")
        .env("SPIN_VARIABLE_DB_HOST", "127.0.0.1:9")
        .env("SPIN_VARIABLE_SUPABASE_JWT_SECRET", "bench-secret-bench-secret-bench-secret")
        .env("CHATEDGE_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("Serving ") {
            let url = url.trim().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url));
        }
    }
    bail!("chatedge exited before serving")
}

struct Stats {
    p50: Duration,
    p99: Duration,
    rps: f64,
    n: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

/// One keep-alive HTTP/1 connection to `authority`, driven in the background.
async fn keep_alive<B>(authority: &str) -> Result<hyper::client::conn::http1::SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `concurrency` keep-alive connections issuing GETs back to back.
async fn load(url: &str, concurrency: usize) -> Result<Stats> {
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("authority")?.clone();
    let per_worker = REQUESTS_PER_RUN / concurrency;
    let deadline = Instant::now() + TIME_LIMIT;
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let uri = uri.clone();
        let authority = authority.clone();
        workers.push(tokio::spawn(async move {
            let mut sender = keep_alive(authority.as_str()).await?;
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                if Instant::now() > deadline {
                    break;
                }
                let req =
                    http::Request::get(uri.clone()).header("host", authority.as_str()).body(Empty::<Bytes>::new())?;
                let t = Instant::now();
                let res = sender.send_request(req).await?;
                let status = res.status();
                let body = res.into_body().collect().await?.to_bytes();
                latencies.push(t.elapsed());
                if status != 200 || body != HEALTH_BODY.as_bytes() {
                    bail!("unexpected response {status}: {body:?}");
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok(Stats {
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        n: all.len(),
    })
}

/// Store + instance creation for the health component, through the host's own runtime.
async fn instantiation() -> Result<(Duration, Duration, usize)> {
    let manifest = LoadedManifest::load(&repo_root().join("spin.toml"))?;
    let mut providers = Providers::default();
    for (k, v) in [("db_url", "postgres://x@127.0.0.1:9/x"), ("db_host", "127.0.0.1:9")] {
        providers.dev.insert(k.into(), v.into());
    }
    let vars = AppVariables::resolve(&manifest.manifest, &providers)?;
    let runtime = Runtime::load(&manifest, &vars, RuntimeOptions::from_env(manifest.dir.join(".chatedge/cache")))?;
    let component = runtime.components.get("health").context("health component")?.clone();
    let mut handled = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        let mut store = runtime.new_store(&component, None);
        let req = http::Request::get("http://localhost/functions/v1/health").body(Empty::<Bytes>::new())?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let wasi_req = {
            use wasmtime_wasi_http::WasiHttpView;
            let r = store.data_mut().http().new_incoming_request(
                wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
                req.map(|b| {
                    b.map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
                }),
            );
            r.map_err(anyhow::Error::from)?
        };
        let out = {
            use wasmtime_wasi_http::WasiHttpView;
            store.data_mut().http().new_response_outparam(sender).map_err(anyhow::Error::from)?
        };
        let proxy = Runtime::pre(&component).instantiate_async(&mut store).await.map_err(anyhow::Error::from)?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, wasi_req, out).await.map_err(anyhow::Error::from)?;
        let response = receiver.await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let body = response.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e:?}"))?.to_bytes();
        handled.push(t.elapsed());
        if body != HEALTH_BODY.as_bytes() {
            bail!("unexpected body {body:?}");
        }
    }
    handled.sort();
    println!(
        "in-process instantiate + handle + read body: p50 {:.1} us, p99 {:.1} us over {}",
        percentile(&handled, 0.5).as_secs_f64() * 1e6,
        percentile(&handled, 0.99).as_secs_f64() * 1e6,
        handled.len()
    );
    let mut samples = Vec::new();
    for _ in 0..5_000 {
        let t = Instant::now();
        let mut store = runtime.new_store(&component, None);
        Runtime::pre(&component).instantiate_async(&mut store).await.map_err(anyhow::Error::from)?;
        samples.push(t.elapsed());
    }
    samples.sort();
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), samples.len()))
}

/// Pure GCRA decisions on one core against the `governor` crate's GCRA, same limit, same loop.
fn rate_limiter_pure() -> (f64, f64, f64) {
    use shared::ratelimit::{decide, Limit};
    const N: u64 = 20_000_000;
    let limit = Limit::per_minute(1_000_000, 1_000);
    // The algorithm alone: a synthetic clock advancing 50 ns per request.
    let mut tat = None;
    let mut admitted = 0u64;
    let start = Instant::now();
    for i in 0..N {
        let d = decide(tat, std::hint::black_box(i * 50), &limit, 1);
        if d.allowed {
            admitted += 1;
            tat = Some(d.tat_ns);
        }
    }
    let algorithm = N as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(admitted);
    let mut tat = None;
    let mut admitted = 0u64;
    let start = Instant::now();
    for _ in 0..N {
        // The real clock each time, as governor reads it.
        let now = start.elapsed().as_nanos() as u64;
        let d = decide(tat, now, &limit, 1);
        if d.allowed {
            admitted += 1;
            tat = Some(d.tat_ns);
        }
    }
    let ours = N as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(admitted);

    let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(1_000_000).unwrap_or(std::num::NonZeroU32::MIN))
        .allow_burst(std::num::NonZeroU32::new(1_000).unwrap_or(std::num::NonZeroU32::MIN));
    let limiter = governor::RateLimiter::direct(quota);
    let mut ok = 0u64;
    let start = Instant::now();
    for _ in 0..N {
        if limiter.check().is_ok() {
            ok += 1;
        }
    }
    let theirs = N as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(ok);
    (algorithm, ours, theirs)
}

/// p50/p99 of one Postgres-backed decision (one statement, as the functions issue it), on a
/// throwaway local cluster.
async fn rate_limiter_postgres() -> Result<(Duration, Duration, usize)> {
    use chatedge_devstack::stack::{self as devstack, Cluster};
    let root = PathBuf::from("/var/tmp/chatedge/bench-cluster");
    let _ = std::fs::remove_dir_all(&root);
    let mut cluster = Cluster::open_or_init(&root, &devstack::random_hex(12), true)?;
    cluster.start(devstack::free_port()?)?;
    chatedge::migrate::migrate(&cluster.superuser_url(), &repo_root().join("migrations")).await?;
    let (client, conn) = tokio_postgres::connect(&cluster.superuser_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let limit = shared::ratelimit::Limit::per_minute(1_000_000, 1_000);
    let (t, tau) = (limit.emission_ns() as i64, limit.tolerance_ns() as i64);
    let stmt = client
        .prepare(
            "select allowed, remaining, reset_after_ns, retry_after_ns from chatedge.rate_limit_check($1, $2, $3, $4)",
        )
        .await?;
    let mut samples = Vec::new();
    for i in 0..5_000 {
        let key = format!("user:{}", i % 100);
        let start = Instant::now();
        client.query_one(&stmt, &[&key, &t, &tau, &1i64]).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    cluster.destroy()?;
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), samples.len()))
}

/// One streamed request's timings.
struct StreamTimes {
    first_token: Duration,
    whole: Duration,
}

/// Which stream a route answers with: how its first content and its end look on the wire.
#[derive(Clone, Copy)]
enum Wire {
    /// Chat completion chunks, ending `[DONE]`.
    Chat,
    /// The Responses API's typed events, ending `response.completed`.
    Responses,
    /// Anthropic's Messages events, ending `message_stop`.
    Messages,
}

impl Wire {
    fn first_content(self) -> &'static [u8] {
        match self {
            Wire::Chat => b"\"content\":\"tok",
            Wire::Responses => b"\"delta\":\"tok",
            Wire::Messages => b"\"text\":\"tok",
        }
    }

    fn ended(self, seen: &[u8]) -> bool {
        match self {
            Wire::Chat => seen.ends_with(b"data: [DONE]\n\n"),
            Wire::Responses => seen.windows(35).any(|w| w == b"event: response.completed\ndata: {\"r"),
            Wire::Messages => seen.ends_with(b"{\"type\":\"message_stop\"}\n\n"),
        }
    }
}

/// `concurrency` keep-alive connections POSTing `body` to `url` back to back, reading each SSE
/// answer to its end: time to the first frame that carries content, and to the end.
async fn stream_load(
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
    wire: Wire,
    concurrency: usize,
    total: usize,
) -> Result<(Vec<StreamTimes>, Duration)> {
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("authority")?.clone();
    let payload = Bytes::from(serde_json::to_vec(body)?);
    let deadline = Instant::now() + TIME_LIMIT;
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (uri, authority, payload) = (uri.clone(), authority.clone(), payload.clone());
        let token = token.map(str::to_owned);
        workers.push(tokio::spawn(async move {
            let mut sender = keep_alive(authority.as_str()).await?;
            let mut times = Vec::new();
            for _ in 0..total / concurrency {
                if Instant::now() > deadline {
                    break;
                }
                let mut req = http::Request::post(uri.clone())
                    .header("host", authority.as_str())
                    .header("content-type", "application/json");
                if let Some(t) = &token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let req = req.body(Full::new(payload.clone()))?;
                let t = Instant::now();
                let res = sender.send_request(req).await?;
                if res.status() != 200 {
                    let status = res.status();
                    let body = res.into_body().collect().await?.to_bytes();
                    bail!("unexpected {status}: {body:?}");
                }
                let mut body = res.into_body();
                let mut first = None;
                let mut seen = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Some(d) = frame?.data_ref() {
                        seen.extend_from_slice(d);
                        let marker = wire.first_content();
                        if first.is_none() && seen.windows(marker.len()).any(|w| w == marker) {
                            first = Some(t.elapsed());
                        }
                    }
                }
                let whole = t.elapsed();
                if !wire.ended(&seen) {
                    bail!("stream did not end as its API ends one: {:?}", String::from_utf8_lossy(&seen));
                }
                times.push(StreamTimes { first_token: first.unwrap_or(whole), whole });
            }
            Ok::<_, anyhow::Error>(times)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    Ok((all, start.elapsed()))
}

/// The variables that point file-upload at the bench's S3 server (`bench` / `bench-secret`).
pub(crate) fn storage_vars(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SPIN_VARIABLE_STORAGE_ENDPOINT", endpoint.to_owned()),
        ("SPIN_VARIABLE_STORAGE_ALLOWED_HOST", endpoint.to_owned()),
        ("SPIN_VARIABLE_STORAGE_ACCESS_KEY_ID", "bench".to_owned()),
        ("SPIN_VARIABLE_STORAGE_SECRET_ACCESS_KEY", "bench-secret".to_owned()),
        ("SPIN_VARIABLE_RATELIMIT_UPLOAD", "100000/min:100000".to_owned()),
        ("CHATEDGE_LOG", "warn".to_owned()),
    ]
}

/// `chatedge up` on `db` with `vars`, from the `chatedge` binary built beside this one.
pub(crate) async fn host_under_bench(
    db: &chatedge_tests::TestDb,
    vars: &[(&str, &str)],
) -> Result<chatedge_tests::TestApp> {
    let bin = std::env::current_exe()?.parent().context("bin dir")?.join("chatedge");
    std::env::set_var("CHATEDGE_BIN", &bin);
    chatedge_tests::TestApp::spawn(db, vars).await
}

/// Chat streams through `chatedge up` (real component, real Postgres, fake OpenAI on loopback)
/// against the same fake provider called directly.
async fn chat_streams() -> Result<()> {
    use chatedge_tests::fake_llm::{self, FakeProvider};
    let pieces: Vec<String> = (0..20).map(|i| format!("tok{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let fake =
        FakeProvider::start(Vec::new(), Some(fake_llm::stream(fake_llm::openai_stream("gpt-4o-mini", &refs, 50, 20))))
            .await?;
    let db = chatedge_tests::TestDb::start().await?;
    let base = format!("{}/v1", fake.origin);
    let host = host_under_bench(
        &db,
        &[
            ("SPIN_VARIABLE_OPENAI_BASE_URL", &base),
            ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST", &fake.origin),
            ("SPIN_VARIABLE_OPENAI_API_KEY", "sk-bench"),
            // Checked on every request (one statement), set high enough never to refuse.
            ("SPIN_VARIABLE_RATELIMIT_CHAT", "100000000/min:100000000"),
            ("CHATEDGE_LOG", "warn"),
        ],
    )
    .await?;
    let user = db.user().await?;
    let openai_body = serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "Tell me a story"}]});
    let native_body = serde_json::json!({"message": "Tell me a story"});
    // Unstored, as the chat completions row is: the same work but the shape of the answer.
    let responses_body =
        serde_json::json!({"model": "gpt-4o-mini", "stream": true, "store": false, "input": "Tell me a story"});
    let messages_body = serde_json::json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Tell me a story"}]});
    println!("## Chat stream: 20 content chunks + usage from a fake OpenAI on loopback");
    println!(
        "{:<44} {:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>9}",
        "path", "conc", "ttft p50", "ttft p99", "all p50", "all p99", "req/s", "n", "conns/1k"
    );
    println!("(conns/1k: new TCP connections the fake provider accepted per 1,000 chats of the row)");
    for (concurrency, total) in [(1usize, 400usize), (32, 3200)] {
        let runs: [(&str, String, Option<&str>, &serde_json::Value, Wire); 5] = [
            (
                "direct to the fake provider (baseline)",
                format!("{base}/chat/completions"),
                None,
                &openai_body,
                Wire::Chat,
            ),
            (
                "chatedge /v1/chat/completions (usage row)",
                format!("{}/v1/chat/completions", host.base_url),
                Some(&user.token),
                &openai_body,
                Wire::Chat,
            ),
            (
                "chatedge /v1/responses (usage row)",
                format!("{}/v1/responses", host.base_url),
                Some(&user.token),
                &responses_body,
                Wire::Responses,
            ),
            (
                "chatedge /v1/messages (usage row)",
                format!("{}/v1/messages", host.base_url),
                Some(&user.token),
                &messages_body,
                Wire::Messages,
            ),
            (
                "chatedge chat-completion (persisted)",
                format!("{}/functions/v1/chat-completion", host.base_url),
                Some(&user.token),
                &native_body,
                Wire::Chat,
            ),
        ];
        let mut baseline: Option<(Duration, Duration)> = None;
        for (name, url, token, body, wire) in runs {
            stream_load(&url, token, body, wire, concurrency, concurrency * 4).await?; // warm-up
            let opened_before = fake.connections();
            let (times, elapsed) = stream_load(&url, token, body, wire, concurrency, total).await?;
            let opened = fake.connections() - opened_before;
            let mut ttft: Vec<Duration> = times.iter().map(|t| t.first_token).collect();
            let mut whole: Vec<Duration> = times.iter().map(|t| t.whole).collect();
            ttft.sort();
            whole.sort();
            let (t50, t99) = (percentile(&ttft, 0.5), percentile(&ttft, 0.99));
            println!(
                "{name:<44} {concurrency:>5} {:>9} {:>9} {:>9} {:>9} {:>8.0} {:>6} {:>9.1}",
                ms(t50),
                ms(t99),
                ms(percentile(&whole, 0.5)),
                ms(percentile(&whole, 0.99)),
                times.len() as f64 / elapsed.as_secs_f64(),
                times.len(),
                opened as f64 * 1000.0 / times.len().max(1) as f64
            );
            match baseline {
                None => baseline = Some((t50, t99)),
                Some((b50, b99)) => println!(
                    "{:<44} {:>5} ttft overhead p50 {} ms, p99 {} ms (goals <= 1 ms, <= 5 ms)",
                    "",
                    "",
                    ms(t50.saturating_sub(b50)),
                    ms(t99.saturating_sub(b99))
                ),
            }
        }
    }
    println!();
    Ok(())
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A 10 MB upload through `chatedge up` (file-upload: stream, sniff, hash, PUT to storage, row
/// through RLS) against a direct presigned PUT of the same bytes to the same embedded S3 server;
/// and the host's peak resident set during one upload.
async fn uploads() -> Result<()> {
    const SIZE: usize = 10_000_000;
    const RUNS: usize = 10;
    let root = PathBuf::from("/var/tmp/chatedge/bench-s3");
    let _ = std::fs::remove_dir_all(&root);
    let s3 = chatedge_devstack::s3::start(&root, "uploads", "127.0.0.1:0", "bench", "bench-secret").await?;
    let db = chatedge_tests::TestDb::start().await?;
    let vars = storage_vars(&s3.endpoint);
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = host_under_bench(&db, &refs).await?;
    let user = db.user().await?;
    let pid = host.pid().context("host pid")?;
    // A PNG signature then pseudo-random bytes: the type check passes, nothing compresses.
    let mut file = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while file.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        file.extend_from_slice(&x.to_le_bytes());
    }
    file.truncate(SIZE);
    let body = Bytes::from(file);
    let storage =
        shared::storage::StorageConfig::new(&s3.endpoint, None, "uploads", "us-east-1", "bench", "bench-secret", true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let upload = |name: String| {
        http::Request::post(format!("{}/functions/v1/file-upload", host.base_url))
            .header("authorization", format!("Bearer {}", user.token))
            .header("content-type", "image/png")
            .header("x-file-name", name)
            .body(Full::new(body.clone()))
    };
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..=RUNS {
        // Run 0 warms both paths up.
        let url = storage.put_url(&format!("direct/{i}.png"), Duration::from_secs(300));
        let t = Instant::now();
        let res = client.request(http::Request::put(url).body(Full::new(body.clone()))?).await?;
        let status = res.status();
        res.into_body().collect().await?;
        if !status.is_success() {
            bail!("direct PUT: {status}");
        }
        if i > 0 {
            direct.push(t.elapsed());
        }
        let t = Instant::now();
        let res = client.request(upload(format!("bench-{i}.png"))?).await?;
        let status = res.status();
        let text = res.into_body().collect().await?.to_bytes();
        if status != 201 {
            bail!("upload through chatedge: {status} {text:?}\n{}", host.log());
        }
        if i > 0 {
            through.push(t.elapsed());
        }
    }
    let rss_before = proc_kib(pid, "VmRSS:");
    let res = client.request(upload("bench-rss.png".into())?).await?;
    res.into_body().collect().await?;
    let hwm_after = proc_kib(pid, "VmHWM:");
    direct.sort();
    through.sort();
    let mbps = |d: Duration| SIZE as f64 / 1e6 / d.as_secs_f64();
    println!("## 10 MB upload ({RUNS} runs each, loopback, embedded S3 server)");
    println!("{:<46} {:>10} {:>10}", "path", "p50 ms", "MB/s");
    let (d, t) = (percentile(&direct, 0.5), percentile(&through, 0.5));
    println!("{:<46} {:>10} {:>10.0}", "direct presigned PUT to S3 (baseline)", ms(d), mbps(d));
    println!("{:<46} {:>10} {:>10.0}", "chatedge file-upload (goal >= 200 MB/s)", ms(t), mbps(t));
    // VmHWM is the process's all-time peak: it exceeds the pre-upload RSS by at least the
    // upload's own growth (an upper bound if an earlier moment peaked higher).
    let growth_kib = hwm_after.saturating_sub(rss_before);
    println!(
        "host resident set: {:.1} MB before one more upload, peak {:.1} MB: growth <= {:.1} MB = {:.2}x the file (goal < 2x)",
        rss_before as f64 / 1024.0,
        hwm_after as f64 / 1024.0,
        growth_kib as f64 / 1024.0,
        growth_kib as f64 * 1024.0 / SIZE as f64
    );
    println!();
    drop(s3);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    // `./dev bench chat` / `./dev bench upload` run one section alone.
    match std::env::args().nth(1).as_deref() {
        Some("chat") => return chat_streams().await,
        Some("upload") => return uploads().await,
        Some("code") => return code::bench().await,
        Some("rag") => return rag::bench().await,
        _ => {}
    }
    let baseline = plain_hyper().await?;
    let (_child, host) = chatedge_up().await?;
    let health = "/functions/v1/health";
    println!(
        "# chatedge bench ({} cores; client, server and baseline share them)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!();
    println!("## Trivial component request: GET {health}, keep-alive, loopback");
    println!("{:<28} {:>5} {:>10} {:>10} {:>10} {:>7}", "server", "conc", "p50 ms", "p99 ms", "req/s", "n");
    let mut p50s = Vec::new();
    for concurrency in [1, 32] {
        for (name, base) in [("plain hyper (baseline)", &baseline), ("chatedge up (wasm)", &host)] {
            // Warm-up: connections, caches, pool slots.
            load(&format!("{base}{health}"), concurrency).await?;
            let s = load(&format!("{base}{health}"), concurrency).await?;
            println!("{name:<28} {concurrency:>5} {:>10} {:>10} {:>10.0} {:>7}", ms(s.p50), ms(s.p99), s.rps, s.n);
            p50s.push((concurrency, name, s.p50));
        }
    }
    for c in [1, 32] {
        let pair: Vec<_> = p50s.iter().filter(|(cc, _, _)| *cc == c).collect();
        if let [base, ours] = pair.as_slice() {
            println!("p50 overhead at concurrency {c}: {} ms (goal <= 1 ms)", ms(ours.2.saturating_sub(base.2)));
        }
    }
    println!();
    chat_streams().await?;
    uploads().await?;
    code::bench().await?;
    rag::bench().await?;
    println!();
    let (p50, p99, n) = instantiation().await?;
    println!("## Per-request instantiation (fresh Store + instance of the health component, pooling allocator)");
    println!(
        "p50 {:.1} us, p99 {:.1} us over {n} instantiations (goal <= 50 us)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    println!();
    println!("## Rate limiter");
    let (algorithm, ours, governor) = rate_limiter_pure();
    println!(
        "pure GCRA decisions/s, one core: chatedge {:.1} M/s with a std clock read per decision \
         ({:.1} M/s for the algorithm alone), governor crate {:.1} M/s (TSC clock) (goal >= 10 M/s)",
        ours / 1e6,
        algorithm / 1e6,
        governor / 1e6
    );
    let (p50, p99, n) = rate_limiter_postgres().await?;
    println!(
        "Postgres-backed decision (one statement, local cluster): p50 {:.3} ms, p99 {:.3} ms over {n} (goal p50 <= 0.5 ms)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}
