//! Harness for the integration tests: a throwaway Postgres cluster with the migrations applied,
//! the real `chatedge` binary serving the real spin.toml over it, tokens, and an HTTP client.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chatedge::devstack::{self, Cluster};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

pub mod fake_llm;

/// The HS256 secret every test host is configured with.
pub const JWT_SECRET: &str = "test-secret-with-at-least-32-characters-0123456789";
const AUTHENTICATOR_PASSWORD: &str = "0123456789abcdef";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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

/// A throwaway cluster with the repository's migrations applied.
pub struct TestDb {
    /// The running cluster.
    pub cluster: Cluster,
}

impl TestDb {
    /// initdb + start on a free port + migrate. The cluster lives under /var/tmp so the
    /// `postgres` user can reach it wherever the repository is cloned.
    pub async fn start() -> Result<Self> {
        let root = PathBuf::from("/var/tmp/chatedge/test-clusters").join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(root.parent().context("parent")?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for dir in ["/var/tmp/chatedge", "/var/tmp/chatedge/test-clusters"] {
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            }
        }
        let mut cluster = Cluster::open_or_init(&root, &devstack::random_hex(12), true)?;
        cluster.start(devstack::free_port()?)?;
        chatedge::migrate::migrate(&cluster.superuser_url(), &repo_root().join("migrations")).await?;
        let db = TestDb { cluster };
        let bootstrap_user = uuid::Uuid::new_v4().to_string();
        devstack::prepare_database(
            &db.cluster.superuser_url(),
            AUTHENTICATOR_PASSWORD,
            &bootstrap_user,
            "bootstrap@test",
        )
        .await?;
        Ok(db)
    }

    /// A superuser connection for setup and for checking what was written.
    pub async fn admin(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.cluster.superuser_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Inserts a user into auth.users and returns an access token for them.
    pub async fn user(&self) -> Result<User> {
        let id = uuid::Uuid::new_v4();
        let email = format!("{id}@test.local");
        self.admin()
            .await?
            .execute(
                "insert into auth.users (id, aud, role, email) values ($1, 'authenticated', 'authenticated', $2)",
                &[&id, &email],
            )
            .await?;
        let token = chatedge::tokens::user_token(JWT_SECRET.as_bytes(), &id.to_string(), &email, 3600)?;
        Ok(User { id, token })
    }

    /// The URL the functions use (the `authenticator` role, as in production).
    pub fn app_url(&self) -> String {
        self.cluster.url("authenticator", AUTHENTICATOR_PASSWORD)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
        // Stopped; remove the data directory (owned by postgres, removable by root or us).
        let _ = std::fs::remove_dir_all(self.cluster.root());
    }
}

/// A signed-in user.
#[derive(Clone)]
pub struct User {
    /// auth.users id.
    pub id: uuid::Uuid,
    /// HS256 access token.
    pub token: String,
}

/// A running `chatedge up`.
pub struct Host {
    child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    client: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
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

impl Host {
    /// Starts the host on a free port against `db`, with extra environment (e.g. variables).
    pub async fn start(db: &TestDb, env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(chatedge_bin()?);
        cmd.arg("up")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--manifest")
            .arg(repo_root().join("spin.toml"))
            .env("SPIN_VARIABLE_DB_URL", db.app_url())
            .env("SPIN_VARIABLE_DB_HOST", db.cluster.host_port())
            .env("SPIN_VARIABLE_SUPABASE_JWT_SECRET", JWT_SECRET)
            .env(
                "CHATEDGE_CACHE_DIR",
                std::env::var("CHATEDGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp/chatedge/cache".into()),
            )
            .env_remove("CHATEDGE_LISTEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning chatedge")?;
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
        let base_url = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("Serving ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_owned());
                }
            }
            bail!("chatedge exited before serving")
        })
        .await
        .context("waiting for chatedge to serve")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Host { child, base_url, client, log })
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
    chatedge::tokens::sign(JWT_SECRET.as_bytes(), &claims).unwrap_or_default()
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included as text).
pub fn sse_data(body: &[u8]) -> Vec<String> {
    let mut parser = shared::sse::Parser::new();
    parser.feed(body).map(|events| events.into_iter().map(|e| e.data).collect()).unwrap_or_default()
}

/// The `data:` payloads of an SSE body parsed as JSON, `[DONE]` left out.
pub fn sse_json(body: &[u8]) -> Vec<Value> {
    sse_data(body).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap_or(Value::Null)).collect()
}
