//! A runner for Spin's conformance suite (`fermyon/conformance-tests`, built in the team kit's
//! `../shared/conformance`), written for this project: for each test it starts the services the
//! test asks for (the suite's own echo servers, Redis, Postgres with the suite's init SQL),
//! writes the manifest with the templates filled, starts a runtime on a free port, sends every
//! invocation and compares the answer as the suite does (status, body, then every header,
//! lower-cased; each actual header must be expected, optional ones may be missing).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Where the suite is: `CHATEDGE_CONFORMANCE_DIR`, else the team kit beside the repository.
pub fn suite_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CHATEDGE_CONFORMANCE_DIR") {
        return Ok(dir.into());
    }
    for candidate in [crate::repo_root().join("../shared/conformance"), PathBuf::from("/work/shared/conformance")] {
        if candidate.join("tests").is_dir() {
            return Ok(candidate);
        }
    }
    bail!("Spin's conformance suite was not found: set CHATEDGE_CONFORMANCE_DIR")
}

#[derive(Debug, Deserialize)]
struct TestConfig {
    invocations: Vec<Invocation>,
    #[serde(default)]
    preconditions: Vec<Precondition>,
}

#[derive(Debug, Deserialize)]
struct Invocation {
    request: Request,
    response: Response,
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default)]
    body: Option<String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: Vec<ExpectedHeader>,
    #[serde(default)]
    body: Option<String>,
}

fn ok() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct ExpectedHeader {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Precondition {
    HttpEcho,
    TcpEcho,
    Redis,
    Mqtt,
    Postgres,
    KeyValueStore {
        #[allow(dead_code)]
        label: String,
    },
    Sqlite,
}

/// The runtime under test.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// `chatedge up`.
    Chatedge(PathBuf),
    /// `spin up`.
    Spin(PathBuf),
}

/// How one test went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every invocation answered as expected.
    Passed,
    /// The runtime refused to start the app (chatedge's answer for what it does not provide).
    Refused(String),
    /// An invocation answered otherwise, or the test could not run.
    Failed(String),
}

/// Services started for one test; stopped when dropped.
#[derive(Default)]
struct Services {
    ports: HashMap<u16, u16>,
    children: Vec<tokio::process::Child>,
    db: Option<crate::TestDb>,
}

async fn python_service(script: &Path, services: &mut Services) -> Result<()> {
    let mut child = tokio::process::Command::new("python3")
        .arg("-u")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            // `PORT=(80,34567)`: the guest's well-known port and the real one.
            if let Some(pair) = line.strip_prefix("PORT=(").and_then(|r| r.strip_suffix(')')) {
                if let Some((guest, real)) = pair.split_once(',') {
                    services.ports.insert(guest.trim().parse()?, real.trim().parse()?);
                }
            }
            if line.trim() == "READY" {
                return Ok(());
            }
        }
        bail!("{} exited before it was ready", script.display())
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    services.children.push(child);
    Ok(())
}

async fn redis(services: &mut Services) -> Result<()> {
    let port = chatedge_devstack::stack::free_port()?;
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (Debian: apt-get install redis-server)")?;
    // Up when it answers PING.
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"PING\r\n").await?;
            let mut buf = [0u8; 16];
            if s.read(&mut buf).await.is_ok_and(|n| buf[..n].starts_with(b"+PONG")) {
                services.ports.insert(6379, port);
                services.children.push(child);
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not come up")
}

/// A broker for the MQTT tests when `mosquitto` is installed (Spin's side of the table needs
/// one); otherwise the port is only named. chatedge refuses those tests at start either way.
async fn mqtt(services: &mut Services) -> Result<()> {
    let port = chatedge_devstack::stack::free_port()?;
    services.ports.insert(1883, port);
    let Some(bin) = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].into_iter().map(PathBuf::from).find(|p| p.is_file())
    else {
        return Ok(());
    };
    let config = tempfile::Builder::new().suffix(".conf").tempfile()?;
    std::fs::write(config.path(), format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))?;
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(config.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting mosquitto")?;
    services.children.push(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            // The broker has read its config; the file may go.
            drop(config);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("mosquitto did not come up")
}

async fn postgres(suite: &Path, services: &mut Services) -> Result<()> {
    // The suite's password for role postgres is cluster-wide: a server of its own.
    let db = crate::TestDb::dedicated().await?;
    let admin = db.admin().await?;
    // The suite's set-up: user postgres / password postgres, database spin_dev, its init SQL.
    // One statement per call: a multi-statement batch is one transaction, which CREATE DATABASE refuses.
    admin.batch_execute("alter role postgres password 'postgres'").await?;
    admin.batch_execute("create database spin_dev").await?;
    let url = format!("postgres://postgres:postgres@127.0.0.1:{}/spin_dev", db.port());
    let spin_dev = chatedge::pgtls::connect(&url).await?;
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(suite.join("services/postgres-init"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    scripts.sort();
    for script in scripts {
        spin_dev
            .batch_execute(&std::fs::read_to_string(&script)?)
            .await
            .with_context(|| format!("{}", script.display()))?;
    }
    services.ports.insert(5432, db.port());
    services.db = Some(db);
    Ok(())
}

/// `text` with `%{source=name}` and `%{port=N}` filled in.
fn fill(text: &str, components: &Path, ports: &HashMap<u16, u16>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("%{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').context("unterminated %{ template")?;
        let (key, value) = after[..end].split_once('=').context("template without =")?;
        match key {
            "source" => out.push_str(&components.join(format!("{value}.wasm")).display().to_string()),
            "port" => {
                let guest: u16 = value.parse()?;
                let real = ports.get(&guest).with_context(|| format!("no service for port {guest}"))?;
                out.push_str(&real.to_string());
            }
            other => bail!("unknown template key {other}"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Starts `runtime` on the test's manifest; `Err(Refused)` when it will not start the app.
async fn start(runtime: &Runtime, dir: &Path) -> Result<Result<(tokio::process::Child, String), String>> {
    let port = chatedge_devstack::stack::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = match runtime {
        Runtime::Chatedge(bin) => {
            let mut c = tokio::process::Command::new(bin);
            c.arg("up")
                .arg("--manifest")
                .arg(dir.join("spin.toml"))
                .arg("--listen")
                .arg(&listen)
                .arg("--state-dir")
                .arg(dir.join("state"));
            c.env(
                "CHATEDGE_CACHE_DIR",
                std::env::var("CHATEDGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp/chatedge/cache".into()),
            );
            c
        }
        Runtime::Spin(bin) => {
            let mut c = tokio::process::Command::new(bin);
            c.arg("up")
                .arg("--from")
                .arg(dir.join("spin.toml"))
                .arg("--listen")
                .arg(&listen)
                .arg("--state-dir")
                .arg(dir.join("state"));
            c
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut said = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(180), async {
        let mut stderr_open = true;
        loop {
            tokio::select! {
                line = stdout.next_line() => match line? {
                    Some(l) if l.starts_with("Serving ") => return anyhow::Ok(true),
                    Some(l) => { said.push_str(&l); said.push('\n'); }
                    None => return Ok(false),
                },
                line = stderr.next_line(), if stderr_open => {
                    if let Some(l) = line? {
                        said.push_str(&l);
                        said.push('\n');
                    } else {
                        stderr_open = false;
                    }
                }
            }
        }
    })
    .await;
    match ready {
        Ok(Ok(true)) => {
            tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
            tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
            Ok(Ok((child, format!("http://{listen}"))))
        }
        Ok(_) => Ok(Err(said.trim().to_owned())),
        Err(_) => bail!("the runtime did not start within three minutes: {said}"),
    }
}

/// Runs the test in `test_dir` against `runtime`.
pub async fn run(runtime: &Runtime, suite: &Path, test_dir: &Path) -> Result<Outcome> {
    let config: TestConfig = json5::from_str(&std::fs::read_to_string(test_dir.join("test.json5"))?)?;
    let mut services = Services::default();
    for p in &config.preconditions {
        match p {
            Precondition::HttpEcho => python_service(&suite.join("services/http-echo.py"), &mut services).await?,
            Precondition::TcpEcho => python_service(&suite.join("services/tcp-echo.py"), &mut services).await?,
            Precondition::Redis => redis(&mut services).await?,
            Precondition::Postgres => postgres(suite, &mut services).await?,
            Precondition::Mqtt => mqtt(&mut services).await?,
            Precondition::KeyValueStore { .. } | Precondition::Sqlite => {}
        }
    }
    let work = tempfile::tempdir_in("/var/tmp")?;
    let components = suite.join("components");
    let manifest = fill(&std::fs::read_to_string(test_dir.join("spin.toml"))?, &components, &services.ports)?;
    std::fs::write(work.path().join("spin.toml"), manifest)?;
    let (mut child, base) = match start(runtime, work.path()).await? {
        Ok(v) => v,
        Err(said) => return Ok(Outcome::Refused(said)),
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    for (i, invocation) in config.invocations.iter().enumerate() {
        let mut req = http::Request::builder()
            .method(invocation.request.method.as_str())
            .uri(format!("{base}{}", fill(&invocation.request.path, &components, &services.ports)?));
        for h in &invocation.request.headers {
            req = req.header(h.name.as_str(), fill(&h.value, &components, &services.ports)?);
        }
        let body = invocation.request.body.clone().unwrap_or_default();
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let res = tokio::time::timeout(Duration::from_secs(60), client.request(req)).await??;
        let status = res.status().as_u16();
        let headers: HashMap<String, String> = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase()))
            .collect();
        use http_body_util::BodyExt;
        let text = String::from_utf8_lossy(&res.into_body().collect().await?.to_bytes()).into_owned();
        if let Err(why) = compare(&invocation.response, status, &text, headers) {
            let _ = child.kill().await;
            return Ok(Outcome::Failed(format!("invocation {i}: {why}")));
        }
    }
    let _ = child.kill().await;
    Ok(Outcome::Passed)
}

fn compare(expected: &Response, status: u16, body: &str, mut headers: HashMap<String, String>) -> Result<(), String> {
    if status != expected.status {
        return Err(format!("status {status}, expected {}; body: {body}", expected.status));
    }
    let want = expected.body.as_deref().unwrap_or_default();
    if body != want {
        return Err(format!("body {body:?}, expected {want:?}"));
    }
    for h in &expected.headers {
        match headers.remove(&h.name.to_ascii_lowercase()) {
            None if h.optional => {}
            None => return Err(format!("header {} missing", h.name)),
            Some(v) => {
                if let Some(want) = &h.value {
                    if v != want.to_ascii_lowercase() {
                        return Err(format!("header {} is {v:?}, expected {want:?}", h.name));
                    }
                }
            }
        }
    }
    if !headers.is_empty() {
        return Err(format!("unexpected headers {headers:?}"));
    }
    Ok(())
}

/// Every test of the suite, by name.
pub fn tests(suite: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(suite.join("tests"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("test.json5").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    Ok(out)
}
