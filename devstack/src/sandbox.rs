//! The code sandbox for `chatedge up` (and the integration tests): the `sandbox serve` binary as
//! a supervised child process, never inside the host's address space, so that a bug in a native
//! parser or in wasmtime can neither take the API down nor read the host's memory.
//!
//! The host binds the sandbox's listening socket itself and hands it to each child as fd 3, so
//! the URL the functions were given stays valid across restarts (connections wait in the
//! socket's backlog while a child starts). The child's environment is emptied and refilled with
//! only what the sandbox reads (its `SANDBOX_*` settings and the signing secret): none of the
//! host's `SPIN_VARIABLE_*` secrets. A child that dies is started again, after a pause that
//! grows while it keeps dying.
//!
//! Configuration: `CHATEDGE_SANDBOX_BIN` (default: `sandbox` beside the `chatedge` binary),
//! `SANDBOX_CACHE_DIR` (default `$CHATEDGE_CACHE_DIR/sandbox`, else `.chatedge/cache/sandbox`),
//! `SANDBOX_PYTHON_WHEEL`, `SANDBOX_JS_WASM` (default
//! `target/wasm32-wasip1/release/chatedge_js.wasm`, as `./dev build` leaves it),
//! `SANDBOX_SCRATCH_DIR`, `SANDBOX_MAX_CONCURRENT` and the session bounds.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The fd number the child finds its listening socket at.
const LISTEN_FD: i32 = 3;

/// A running, supervised sandbox. Dropping it stops the child for good.
pub struct SandboxChild {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Supervised>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Supervised {
    stopping: AtomicBool,
    /// The current child's pid (0 between children).
    pid: AtomicU32,
    child: Mutex<Option<Child>>,
    restarts: AtomicU32,
}

impl SandboxChild {
    /// The current child's process id, if one is running.
    pub fn pid(&self) -> Option<u32> {
        Some(self.state.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// How many times a dead child was replaced.
    pub fn restarts(&self) -> u32 {
        self.state.restarts.load(Ordering::SeqCst)
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut child) = self.state.child.lock() {
            if let Some(child) = child.as_mut() {
                let _ = child.kill();
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The settings handed to the child, resolved once.
#[derive(Clone)]
struct ChildConfig {
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Load the runtimes at start (`CHATEDGE_SANDBOX_WARM=1`, as `./dev up` sets it) rather than
    /// on the first execution.
    warm: bool,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

impl ChildConfig {
    fn resolve(binary: Option<PathBuf>, manifest_dir: &Path, secret: &str) -> Result<Self> {
        let binary = match binary.or_else(|| env_path("CHATEDGE_SANDBOX_BIN")) {
            Some(path) => path,
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("sandbox"))
                .context("locating the sandbox binary beside chatedge")?,
        };
        if !binary.is_file() {
            anyhow::bail!(
                "the sandbox binary {} was not found: build it (./dev build), set CHATEDGE_SANDBOX_BIN, or set sandbox_url",
                binary.display()
            );
        }
        let cache_dir = env_path("SANDBOX_CACHE_DIR")
            .or_else(|| env_path("CHATEDGE_CACHE_DIR").map(|c| c.join("sandbox")))
            .unwrap_or_else(|| manifest_dir.join(".chatedge/cache/sandbox"));
        let js = env_path("SANDBOX_JS_WASM")
            .or_else(|| Some(manifest_dir.join("target/wasm32-wasip1/release/chatedge_js.wasm")))
            .filter(|p| p.exists());
        let mut env = vec![
            ("SANDBOX_SECRET".to_owned(), secret.to_owned()),
            ("SANDBOX_CACHE_DIR".to_owned(), cache_dir.display().to_string()),
        ];
        if let Some(js) = js {
            env.push(("SANDBOX_JS_WASM".to_owned(), js.display().to_string()));
        }
        for name in [
            "SANDBOX_PYTHON_WHEEL",
            "SANDBOX_SCRATCH_DIR",
            "SANDBOX_MAX_CONCURRENT",
            "SANDBOX_SESSION_IDLE_MS",
            "SANDBOX_MAX_SESSIONS_PER_OWNER",
            "SANDBOX_SESSION_MEMORY_MIB",
            "TMPDIR",
        ] {
            if let Ok(value) = std::env::var(name) {
                env.push((name.to_owned(), value));
            }
        }
        // The host's log filter, for the sandbox's own log lines.
        if let Ok(filter) = std::env::var("CHATEDGE_LOG") {
            env.push(("RUST_LOG".to_owned(), filter));
        }
        let warm = std::env::var("CHATEDGE_SANDBOX_WARM").is_ok_and(|v| v == "1");
        Ok(ChildConfig { binary, env, warm })
    }

    fn spawn(&self, listener: &OwnedFd) -> std::io::Result<Child> {
        let mut command = Command::new(&self.binary);
        command
            .args(["serve", "--listen-fd", &LISTEN_FD.to_string()])
            .args(self.warm.then_some("--warm"))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let fd = listener.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 (which clears
        // close-on-exec on the copy) and prctl.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, LISTEN_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The child goes with its supervisor thread (and so with the host), even when
                // the host is killed outright.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// Starts the sandbox on `listen` as a supervised child signing with `secret`; returns once
/// the first child is running (it loads its runtimes in the background and serves once they
/// are ready).
pub fn start(manifest_dir: &Path, listen: &str, secret: &str) -> Result<SandboxChild> {
    start_binary(None, manifest_dir, listen, secret)
}

/// [`start`] with the `sandbox` binary named (tests, whose own executable has none beside it).
pub fn start_binary(binary: Option<PathBuf>, manifest_dir: &Path, listen: &str, secret: &str) -> Result<SandboxChild> {
    let config = ChildConfig::resolve(binary, manifest_dir, secret)?;
    let addr: std::net::SocketAddr = listen.parse().context("sandbox listen address")?;
    let listener = netserve::bind(addr).with_context(|| format!("binding the sandbox on {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let listener: OwnedFd = listener.into();
    let state = Arc::new(Supervised {
        stopping: AtomicBool::new(false),
        pid: AtomicU32::new(0),
        child: Mutex::new(None),
        restarts: AtomicU32::new(0),
    });
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let supervised = state.clone();
    let binary = config.binary.clone();
    // Every child is forked by this one thread, which lives as long as the supervisor: the
    // children's parent-death signal is tied to it.
    let thread = std::thread::Builder::new()
        .name("sandbox-supervisor".into())
        .spawn(move || supervise(&config, &listener, &supervised, first_tx))?;
    let pid = first_rx
        .recv()
        .context("the sandbox supervisor stopped")?
        .with_context(|| format!("starting {}", binary.display()))?;
    tracing::info!("sandbox child started (pid {pid}) on {url}");
    Ok(SandboxChild { url, state, thread: Some(thread) })
}

/// Starts a child, waits on it, and starts a new one whenever it dies, until told to stop.
fn supervise(
    config: &ChildConfig,
    listener: &OwnedFd,
    state: &Supervised,
    first: std::sync::mpsc::Sender<std::io::Result<u32>>,
) {
    let mut first = Some(first);
    let mut pause = Duration::from_millis(200);
    loop {
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        match config.spawn(listener) {
            Ok(child) => {
                let pid = child.id();
                state.pid.store(pid, Ordering::SeqCst);
                if let Ok(mut slot) = state.child.lock() {
                    *slot = Some(child);
                }
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(Ok(pid));
                    }
                    None => {
                        state.restarts.fetch_add(1, Ordering::SeqCst);
                        tracing::info!("sandbox child started again (pid {pid})");
                    }
                }
            }
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::error!("could not start the sandbox child: {e}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        }
        let started = Instant::now();
        let status = loop {
            // Polled rather than `wait()`ed, so that `Drop` can take the lock to kill it.
            let polled = state.child.lock().ok().and_then(|mut c| c.as_mut().map(|c| c.try_wait()));
            match polled {
                Some(Ok(Some(status))) => break Some(status),
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(50)),
                Some(Err(_)) | None => break None,
            }
        };
        state.pid.store(0, Ordering::SeqCst);
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::error!("the sandbox child exited ({status:?}); starting another");
        // A child that ran a while earns a quick restart; one that keeps dying, a longer pause.
        pause = if started.elapsed() > Duration::from_secs(60) {
            Duration::from_millis(200)
        } else {
            (pause * 2).min(Duration::from_secs(10))
        };
        std::thread::sleep(pause);
    }
}
