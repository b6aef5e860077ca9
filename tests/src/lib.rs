//! Harness for the integration tests: a database of each test's own cloned from a migrated
//! template ([`TestDb`]), the real `chatedge` binary or real Spin serving the real spin.toml over
//! it ([`TestApp`]), tokens, fake servers and an HTTP client.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chatedge_devstack::stack as devstack;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

pub mod conformance;
mod db;
pub mod documents;
pub mod fake_llm;
pub mod flows;
mod tls;

pub use db::TestDb;

/// GETs `url` (a presigned download link, say): status and body.
pub async fn fetch(url: &str) -> Result<(u16, Vec<u8>)> {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let res = client.get(url.parse()?).await?;
    let status = res.status().as_u16();
    Ok((status, res.into_body().collect().await?.to_bytes().to_vec()))
}

/// The HS256 secret every test host is configured with.
pub const JWT_SECRET: &str = "test-secret-with-at-least-32-characters-0123456789";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh directory for what a test keeps for people to look at (reports, screenshots), under
/// the build's target directory so CI keeps it with the other artifacts:
/// `$CARGO_TARGET_DIR/test-artifacts/<name>`.
pub fn artifacts_dir(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("test-artifacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The `chatedge` binary: `CHATEDGE_BIN`, else beside the test executable's `deps/` directory.
pub fn chatedge_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHATEDGE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin =
        exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("chatedge")).context("locating target dir")?;
    if !bin.exists() {
        bail!("{} not found: build it first (./dev test does)", bin.display());
    }
    Ok(bin)
}

/// A signed-in user.
#[derive(Clone)]
pub struct User {
    /// auth.users id.
    pub id: uuid::Uuid,
    /// HS256 access token.
    pub token: String,
}

/// Which runtime a [`TestApp`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `chatedge up`, the bundled host.
    Chatedge,
    /// `spin up`, the real Spin.
    Spin,
}

/// The Spin binary for the real-Spin suite: `SPIN_BIN`, else `spin` on `PATH`, else the team
/// kit's `../shared/bin/spin` beside the repository. `None` only when `./dev test` said loudly
/// that none was found (`CHATEDGE_NO_SPIN=1`); otherwise a missing binary fails the test.
pub fn spin_bin() -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("SPIN_BIN").filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(p)));
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path).map(|d| d.join("spin")).find(|p| p.is_file()) {
            return Ok(Some(found));
        }
    }
    let kit = repo_root().join("../shared/bin/spin");
    if kit.is_file() {
        return Ok(Some(kit));
    }
    if std::env::var("CHATEDGE_NO_SPIN").is_ok_and(|v| v == "1") {
        return Ok(None);
    }
    bail!("no Spin binary: set SPIN_BIN (./dev test finds ../shared/bin/spin), or CHATEDGE_NO_SPIN=1 to leave the real-Spin suite out")
}

/// A running `chatedge up` or `spin up`.
pub struct TestApp {
    child: tokio::process::Child,
    /// The host's own state folder (key-value and SQLite files, dev-stack objects).
    _state: tempfile::TempDir,
    /// Services started for this host (for Spin, which has no dev stack: S3, the sandbox).
    _services: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// Which runtime this is.
    pub runtime: Runtime,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    client: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for TestApp {
    /// Ends the runtime's whole process group; `kill_on_drop` then reaps the runtime itself.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child's process group; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The envelope's `error.code`, checking the envelope's shape on the way.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "not an error envelope: {v}");
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

impl TestApp {
    /// Starts the host on a free port against `db`, with extra environment (e.g. variables).
    pub async fn spawn(db: &TestDb, env: &[(&str, &str)]) -> Result<Self> {
        TestApp::spawn_with_database(db, &db.app_url(), &db.host_port(), env).await
    }

    /// Like [`TestApp::spawn`], with the functions given `db_url` and `db_host` as written.
    pub async fn spawn_with_database(_db: &TestDb, db_url: &str, db_host: &str, env: &[(&str, &str)]) -> Result<Self> {
        let state = tempfile::tempdir_in("/var/tmp")?;
        let mut cmd = tokio::process::Command::new(chatedge_bin()?);
        cmd.arg("up")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--manifest")
            .arg(repo_root().join("spin.toml"))
            .arg("--state-dir")
            .arg(state.path())
            .env("CHATEDGE_PG_ZERO_ROWS", "error")
            .env("SPIN_VARIABLE_DB_URL", db_url)
            .env("SPIN_VARIABLE_DB_HOST", db_host)
            .env("SPIN_VARIABLE_SUPABASE_JWT_SECRET", JWT_SECRET)
            .env(
                "CHATEDGE_CACHE_DIR",
                std::env::var("CHATEDGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp/chatedge/cache".into()),
            )
            .env_remove("CHATEDGE_LISTEN")
            // Many hosts run at once: each its own admin port.
            .env("CHATEDGE_ADMIN_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, base_url, log) = TestApp::wait_serving(cmd).await?;
        let client = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(TestApp { child, _state: state, _services: Vec::new(), runtime: Runtime::Chatedge, base_url, client, log })
    }

    /// `spin up --from spin.toml` against `db`, with what the dev stack would have given it
    /// started here: the embedded S3 server, the sandbox service (signed, as a supervised child)
    /// and the JWT secret. `None` when there is no Spin binary and `./dev test` said so.
    pub async fn spawn_spin(db: &TestDb, env: &[(&str, &str)]) -> Result<Option<Self>> {
        let Some(spin) = spin_bin()? else {
            eprintln!("!!! no Spin binary: the real-Spin check is left out (CHATEDGE_NO_SPIN=1)");
            return Ok(None);
        };
        let state = tempfile::tempdir_in("/var/tmp")?;
        let s3 = chatedge_devstack::s3::start(
            &state.path().join("s3"),
            "uploads",
            "127.0.0.1:0",
            "spin-s3",
            "spin-s3-secret",
        )
        .await?;
        let sandbox_secret = devstack::random_hex(32);
        let sandbox = chatedge_devstack::sandbox::start_binary(
            Some(chatedge_bin()?.with_file_name("sandbox")),
            &repo_root(),
            "127.0.0.1:0",
            &sandbox_secret,
        )?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = devstack::free_port()?;
            let mut cmd = tokio::process::Command::new(&spin);
            cmd.arg("up")
                .arg("--from")
                .arg(repo_root().join("spin.toml"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--state-dir")
                .arg(state.path())
                .env("SPIN_VARIABLE_DB_URL", db.app_url())
                .env("SPIN_VARIABLE_DB_HOST", db.host_port())
                .env("SPIN_VARIABLE_SUPABASE_JWT_SECRET", JWT_SECRET)
                .env("SPIN_VARIABLE_STORAGE_ENDPOINT", &s3.endpoint)
                .env("SPIN_VARIABLE_STORAGE_ALLOWED_HOST", &s3.endpoint)
                .env("SPIN_VARIABLE_STORAGE_ACCESS_KEY_ID", "spin-s3")
                .env("SPIN_VARIABLE_STORAGE_SECRET_ACCESS_KEY", "spin-s3-secret")
                .env("SPIN_VARIABLE_SANDBOX_URL", &sandbox.url)
                .env("SPIN_VARIABLE_SANDBOX_ALLOWED_HOST", &sandbox.url)
                .env("SPIN_VARIABLE_SANDBOX_SECRET", &sandbox_secret)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            for (k, v) in env {
                cmd.env(k, v);
            }
            match TestApp::wait_serving(cmd).await {
                Ok((child, base_url, log)) => {
                    let client = HyperClient::builder(TokioExecutor::new()).build_http();
                    return Ok(Some(TestApp {
                        child,
                        _state: state,
                        _services: vec![Box::new(s3), Box::new(sandbox)],
                        runtime: Runtime::Spin,
                        base_url,
                        client,
                        log,
                    }));
                }
                // Another process took the port between the probe and the bind: try another.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("spin up did not start")))
    }

    /// Serves another app (`manifest`, e.g. a test-only component) on `runtime`, with `env` as
    /// its whole configuration and nothing else started. `None` for Spin when there is no Spin
    /// binary and `./dev test` said so.
    pub async fn serve_app(runtime: Runtime, manifest: &std::path::Path, env: &[(&str, &str)]) -> Result<Option<Self>> {
        let state = tempfile::tempdir_in("/var/tmp")?;
        let mut last_error = None;
        for _ in 0..5 {
            let mut cmd = match runtime {
                Runtime::Chatedge => {
                    let mut c = tokio::process::Command::new(chatedge_bin()?);
                    c.arg("up").arg("--manifest").arg(manifest).arg("--listen").arg("127.0.0.1:0");
                    c.env(
                        "CHATEDGE_CACHE_DIR",
                        std::env::var("CHATEDGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp/chatedge/cache".into()),
                    );
                    c.env_remove("CHATEDGE_LISTEN");
                    c.env("CHATEDGE_ADMIN_LISTEN", "127.0.0.1:0");
                    c
                }
                Runtime::Spin => {
                    let Some(spin) = spin_bin()? else {
                        eprintln!("!!! no Spin binary: the real-Spin check is left out (CHATEDGE_NO_SPIN=1)");
                        return Ok(None);
                    };
                    let mut c = tokio::process::Command::new(spin);
                    c.arg("up")
                        .arg("--from")
                        .arg(manifest)
                        .arg("--listen")
                        .arg(format!("127.0.0.1:{}", devstack::free_port()?));
                    c
                }
            };
            cmd.arg("--state-dir").arg(state.path()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
            for (k, v) in env {
                cmd.env(k, v);
            }
            match TestApp::wait_serving(cmd).await {
                Ok((child, base_url, log)) => {
                    let client = HyperClient::builder(TokioExecutor::new()).build_http();
                    return Ok(Some(TestApp {
                        child,
                        _state: state,
                        _services: Vec::new(),
                        runtime,
                        base_url,
                        client,
                        log,
                    }));
                }
                // Spin's port was taken between the probe and its bind: try another.
                Err(e) if runtime == Runtime::Spin => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("spin up did not start")))
    }

    /// The bundled host's admin listener (`Admin listener: http://ADDR/metrics` in its log).
    pub fn metrics_url(&self) -> Option<String> {
        self.log().lines().find_map(|l| l.strip_prefix("Admin listener: ").map(|u| u.trim().to_owned()))
    }

    /// Starts `cmd` and waits for its "Serving http://..." line (both runtimes print it).
    async fn wait_serving(
        mut cmd: tokio::process::Command,
    ) -> Result<(tokio::process::Child, String, std::sync::Arc<std::sync::Mutex<String>>)> {
        // Its own process group, so dropping the app also ends what it started (`spin up` runs
        // `spin trigger http` as a child, which outlives a kill of its parent alone).
        cmd.process_group(0);
        let mut child = cmd.spawn().context("spawning the runtime")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let log_for_stdout = log.clone();
        let base_url = tokio::time::timeout(Duration::from_secs(300), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("Serving ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_owned());
                }
                if let Ok(mut l) = log_for_stdout.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
            bail!("the runtime exited before serving: {}", log_for_stdout.lock().map(|l| l.clone()).unwrap_or_default())
        })
        .await
        .context("waiting for the runtime to serve")??;
        let log_rest = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut l) = log_rest.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        Ok((child, base_url, log))
    }

    /// The host process id (for resource measurements).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What the host logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends a request; `token` becomes `Authorization: Bearer`.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let mut req = http::Request::builder().method(method).uri(format!("{}{path}", self.base_url));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let res = self.client.request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status.as_u16(), headers: parts.headers, body })
    }

    /// Sends a JSON POST and returns the response head with its body unread, for streams read
    /// piece by piece (or abandoned).
    pub async fn open(&self, path: &str, token: &str, body: &Value) -> Result<http::Response<hyper::body::Incoming>> {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("{}{path}", self.base_url))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        Ok(self.client.request(req).await?)
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> Result<Reply> {
        self.send("GET", path, Some(token), None, &[]).await
    }

    /// A JSON request with a token.
    pub async fn json(&self, method: &str, path: &str, token: &str, body: Value) -> Result<Reply> {
        self.send(method, path, Some(token), Some(serde_json::to_vec(&body)?), &[]).await
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
        }
        Ok(tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await??)
    }
}

/// Mints a token with arbitrary claims and the test secret.
pub fn token_with(claims: Value) -> String {
    chatedge_devstack::tokens::sign(JWT_SECRET.as_bytes(), &claims).unwrap_or_default()
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included as text).
pub fn sse_data(body: &[u8]) -> Vec<String> {
    let mut parser = chat_completion::sse::Parser::new();
    parser.feed(body).map(|events| events.into_iter().map(|e| e.data).collect()).unwrap_or_default()
}

/// The `data:` payloads of an SSE body parsed as JSON, `[DONE]` left out.
pub fn sse_json(body: &[u8]) -> Vec<Value> {
    sse_data(body).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap_or(Value::Null)).collect()
}

/// Serves HTTP/1 on a fresh loopback port, every request answered by `handle`, until the
/// returned task is aborted: the one accept loop of the tests' fake servers. Small frames go out
/// at once (no Nagle), as a provider flushing each event does.
pub async fn serve_http<F, Fut, B>(handle: F) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_http_counting(handle, Arc::default()).await
}

/// [`serve_http`], counting the connections it accepts into `accepted` (how a test sees whether
/// its client kept a connection alive).
pub async fn serve_http_counting<F, Fut, B>(
    handle: F,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}
