//! The wasmtime side shared by every language: one Engine (async, fuel, epoch interruption,
//! pooling allocator with copy-on-write memory images), a signed on-disk cache of compiled
//! modules, and [`execute`], which runs one guest call under the limits and names how it ended.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, Instance, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::capture::Capture;
use crate::limits::{Limits, Policy};
use crate::{Outcome, Status};

/// Part of every compiled-module cache key: the wasmtime release (pinned in the workspace) and
/// our own layout version. A change to either misses the cache instead of loading stale code.
pub const CACHE_FORMAT: &str = "wasmtime-48.0.8/chatedge-1";

/// How often the epoch advances; the deadline check runs at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The engine every runtime compiles into, and the module cache.
#[derive(Clone)]
pub(crate) struct Engines {
    pub(crate) engine: Engine,
    cache: Arc<ModuleCache>,
}

impl Engines {
    pub(crate) fn new(cache_dir: &Path, policy: &Policy) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        // Python's deep recursion must end as a RecursionError or a clean stack-overflow trap,
        // never by exhausting the host thread.
        config.max_wasm_stack(8 << 20);
        config.async_stack_size(16 << 20);
        let slots = u32::try_from(policy.max_concurrent * 2 + 2).unwrap_or(u32::MAX);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .total_stacks(slots)
            .max_memory_size(usize::try_from(policy.max_memory_bytes).unwrap_or(usize::MAX))
            .table_elements(200_000)
            .max_core_instance_size(8 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config.memory_init_cow(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        start_epoch_ticker(&engine);
        let cache = ModuleCache::open(&cache_dir.join("modules"), &engine)?;
        Ok(Engines { engine, cache: Arc::new(cache) })
    }

    /// `wasm` compiled for this engine, from the cache when an entry we signed exists.
    pub(crate) fn module(&self, wasm: &[u8]) -> anyhow::Result<Module> {
        self.cache.module(&self.engine, wasm)
    }

    /// Removes compiled modules this process did not load: older snapshots and runtimes, or
    /// another wasmtime's. Called once every runtime is loaded.
    pub(crate) fn prune_cache(&self) {
        let Ok(used) = self.cache.used.lock() else { return };
        let Ok(entries) = std::fs::read_dir(&self.cache.dir) else { return };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cwasm") && !used.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The snapshot stored at `path` (named `<kind>-<key>.wasm`), made by `build` and stored there
/// when this machine has none yet. Older ones of its kind are removed: nothing loads them any
/// more (each is 7-150 MB).
pub(crate) fn stored_snapshot(path: &Path, build: impl FnOnce() -> anyhow::Result<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    let snapshot = match std::fs::read(path) {
        Ok(stored) => stored,
        Err(_) => {
            let snapshot = build()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, &snapshot)?;
            std::fs::rename(&tmp, path)?;
            snapshot
        }
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let (Some(dir), Some((kind, _))) = (path.parent(), name.rsplit_once('-')) {
        let older = std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).filter(|entry| {
            let other = entry.file_name().to_string_lossy().into_owned();
            other != name && other.ends_with(".wasm") && other.rsplit_once('-').is_some_and(|(k, _)| k == kind)
        });
        for entry in older {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(snapshot)
}

/// wizer's two phases on `wasm`: instrument it, instantiate it with `wasi` under set-up limits
/// (ten minutes, no fuel cap, 2 GiB), let `initialize` run the guest's own set-up, snapshot the
/// result. On its own thread and runtime, since runtimes are loaded from inside other runtimes.
/// The instrumented module is compiled but not cached: it is used once.
pub(crate) fn snapshot(
    engines: &Engines,
    wasm: &[u8],
    linker: &Linker<GuestState>,
    wasi: WasiP1Ctx,
    initialize: impl AsyncFnOnce(&mut Store<GuestState>, &Instance) -> anyhow::Result<()> + Send,
) -> anyhow::Result<Vec<u8>> {
    let build = async move || {
        let mut wizer = wasmtime_wizer::Wizer::new();
        wizer.init_func("wizer.initialize");
        let (context, instrumented) = wizer.instrument(wasm).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let module = Module::new(&engines.engine, &instrumented)
            .map_err(|e| anyhow::anyhow!("compiling the instrumented module: {e:?}"))?;
        let limits = Limits {
            timeout_ms: 600_000,
            fuel: u64::MAX,
            memory_bytes: 2 << 30,
            output_bytes: 1 << 20,
            scratch_bytes: u64::MAX,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut store = store(&engines.engine, wasi, &limits, deadline, None);
        let instance = linker
            .instantiate_async(&mut store, &module)
            .await
            .map_err(|e| anyhow::anyhow!("instantiating the instrumented module: {e:?}"))?;
        initialize(&mut store, &instance).await?;
        wizer
            .snapshot(&context, &mut wasmtime_wizer::WasmtimeWizer { store: &mut store, instance })
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(build())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the snapshot builder panicked"))?
    })
}

/// Advances the engine's epoch from a background thread for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sandbox-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .ok();
}

/// Compiled modules on disk, keyed by the wasm's SHA-256, [`CACHE_FORMAT`] and the engine's
/// compatibility hash. Loading compiled code runs it natively, so each file carries an
/// HMAC-SHA256 made with a key only this cache holds (mode 0600): a file we did not write (or one
/// changed since) is refused and recompiled, never deserialized.
struct ModuleCache {
    dir: PathBuf,
    key: Vec<u8>,
    engine_tag: String,
    /// The entries this process loaded or wrote; [`Engines::prune_cache`] keeps only these.
    used: std::sync::Mutex<Vec<PathBuf>>,
}

impl ModuleCache {
    fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = load_or_create_key(&dir.join("cache.key"))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CACHE_FORMAT.hash(&mut hasher);
        Ok(ModuleCache {
            dir: dir.to_owned(),
            key,
            engine_tag: format!("{:016x}", hasher.finish()),
            used: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn module(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<Module> {
        let digest = hex(&Sha256::digest(wasm));
        let path = self.dir.join(format!("{digest}-{}.cwasm", self.engine_tag));
        if let Ok(mut used) = self.used.lock() {
            used.push(path.clone());
        }
        if let Ok(stored) = std::fs::read(&path) {
            if let Some((tag, code)) = stored.split_at_checked(32) {
                if self.mac(code).as_slice() == tag {
                    // SAFETY: the bytes carry our HMAC, so this cache wrote them from
                    // `Module::serialize` of this engine configuration.
                    if let Ok(module) = unsafe { Module::deserialize(engine, code) } {
                        return Ok(module);
                    }
                }
            }
            tracing::warn!(path = %path.display(), "refusing a compiled module this cache did not sign");
        }
        let module = Module::new(engine, wasm).map_err(|e| anyhow::anyhow!("compiling: {e:?}"))?;
        let code = module.serialize().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let tmp = self.dir.join(format!(".{digest}.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&self.mac(&code))?;
        file.write_all(&code)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(module)
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Ok(key) = std::fs::read(path) {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if key.len() == 32 && mode & 0o077 == 0 {
            return Ok(key);
        }
        anyhow::bail!("{} is not a 32-byte key readable by its owner only", path.display());
    }
    let key: [u8; 32] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&key)?;
    Ok(key.to_vec())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A store's data: the guest's WASI context, its memory limiter and its scratch-disk watch.
pub(crate) struct GuestState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryCap,
    disk: Option<DiskWatch>,
}

/// How often the scratch folder's size is checked while the guest runs.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(25);

/// The scratch folder's disk use against its cap. WASI offers no quota, so the folder is measured
/// (allocated blocks, so sparse files count for what they occupy) from the epoch callback.
struct DiskWatch {
    root: PathBuf,
    cap: u64,
    next_check: Instant,
    exceeded: bool,
}

impl DiskWatch {
    /// Whether the folder is over its cap, measured at most once per [`DISK_CHECK_EVERY`].
    fn over(&mut self, now: Instant) -> bool {
        if now < self.next_check {
            return false;
        }
        self.exceeded = disk_use_over(&self.root, self.cap);
        // A folder of thousands of files takes milliseconds to measure: keep that under ~20%
        // of the guest's time.
        self.next_check = Instant::now() + DISK_CHECK_EVERY.max(now.elapsed() * 4);
        self.exceeded
    }
}

/// Whether the files below `root` occupy more than `cap` bytes; stops counting once they do.
fn disk_use_over(root: &Path, cap: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut used = 0u64;
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            // Each entry costs at least 32 KiB, so a flood of empty files counts (and the walk
            // stays short: 256 MiB allows 8,192 entries).
            used = used.saturating_add((meta.blocks().saturating_mul(512)).max(32 << 10));
            if used > cap {
                return true;
            }
            if meta.is_dir() {
                folders.push(entry.path());
            }
        }
    }
    false
}

/// Refuses linear-memory growth past the cap (the guest's allocator then fails: Python raises
/// MemoryError) and remembers that it did, so the outcome can say `memory_limit`.
pub(crate) struct MemoryCap {
    pub(crate) cap: usize,
    pub(crate) refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 200_000)
    }
}

/// A store for one execution: fuel, memory cap, a deadline that traps a busy guest at the next
/// epoch tick after `deadline`, and, given the scratch folder, its disk cap.
pub(crate) fn store(
    engine: &Engine,
    wasi: WasiP1Ctx,
    limits: &Limits,
    deadline: Instant,
    scratch: Option<&Path>,
) -> Store<GuestState> {
    let cap = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    let disk = scratch.map(|root| DiskWatch {
        root: root.to_owned(),
        cap: limits.scratch_bytes,
        next_check: Instant::now() + DISK_CHECK_EVERY,
        exceeded: false,
    });
    let mut store = Store::new(engine, GuestState { wasi, limiter: MemoryCap { cap, refused: false }, disk });
    store.limiter(|state| &mut state.limiter);
    // Set before instantiation too: the snapshot's memory image counts against the cap.
    let _ = store.set_fuel(limits.fuel);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut context| {
        let now = Instant::now();
        let disk_full = context.data_mut().disk.as_mut().is_some_and(|disk| disk.over(now));
        if now >= deadline || disk_full {
            Err(Trap::Interrupt.into())
        } else {
            // Yield at each tick so other executions on this thread's runtime make progress.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// A guest's WASI context to complete: its arguments and the three streams, nothing else yet (no
/// environment, no preopens, no network).
pub(crate) fn wasi_builder(args: &[&str], stdin: &[u8], stdout: &Capture, stderr: &Capture) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder.args(args).stdin(MemoryInputPipe::new(stdin.to_vec())).stdout(stdout.clone()).stderr(stderr.clone());
    builder
}

/// The outcome of a finished guest call on `store`: how it ended, its output and its meters.
pub(crate) fn finish(
    store: &Store<GuestState>,
    result: wasmtime::Result<i32>,
    limits: &Limits,
    stdout: &Capture,
    stderr: &Capture,
    started: Instant,
) -> Outcome {
    let refused = store.data().limiter.refused;
    let disk_full = store.data().disk.as_ref().is_some_and(|disk| disk.exceeded);
    let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    outcome(ended(result, refused, disk_full), refused, stdout, stderr, started, fuel_used)
}

/// How a guest call ended, before output is attached.
pub(crate) enum Ended {
    /// Returned or exited with this code.
    Exited(i32),
    /// Stopped by a limit or a trap.
    Stopped(Status, String),
}

/// Classifies a guest call's result.
fn ended(result: wasmtime::Result<i32>, memory_refused: bool, disk_full: bool) -> Ended {
    let error = match result {
        Ok(code) => return Ended::Exited(code),
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Ended::Exited(exit.0);
    }
    let status = match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Status::OutOfFuel,
        Some(Trap::Interrupt) if disk_full => Status::DiskLimit,
        Some(Trap::Interrupt) => Status::Timeout,
        Some(Trap::StackOverflow) => Status::StackOverflow,
        _ if memory_refused => Status::MemoryLimit,
        _ => Status::Crashed,
    };
    Ended::Stopped(status, format!("{error:?}"))
}

/// Runs `call` against `store` under the wall deadline: the epoch callback stops busy guests,
/// and the timeout here drops a guest blocked in a host call (a sleep, a read) at the deadline.
pub(crate) async fn within_deadline<F>(deadline: Instant, call: F) -> wasmtime::Result<i32>
where
    F: std::future::Future<Output = wasmtime::Result<i32>>,
{
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, call).await {
        Ok(result) => result,
        Err(_) => Err(Trap::Interrupt.into()),
    }
}

/// The outcome of an execution from how it ended, the captured streams and the store's meters.
fn outcome(
    ended: Ended,
    memory_refused: bool,
    stdout: &Capture,
    stderr: &Capture,
    started: Instant,
    fuel_used: u64,
) -> Outcome {
    let (stdout_text, stdout_bytes, stdout_cut) = stdout.finish();
    let (mut stderr_text, stderr_bytes, stderr_cut) = stderr.finish();
    let (status, exit_code) = match ended {
        Ended::Exited(0) => (Status::Ok, Some(0)),
        Ended::Exited(code) if memory_refused => (Status::MemoryLimit, Some(code)),
        Ended::Exited(code) => (Status::Error, Some(code)),
        Ended::Stopped(status, detail) => {
            if !stderr_text.is_empty() && !stderr_text.ends_with('\n') {
                stderr_text.push('\n');
            }
            let note = match status {
                Status::Timeout => "execution stopped: the time limit was reached".to_owned(),
                Status::OutOfFuel => "execution stopped: the fuel limit was reached".to_owned(),
                Status::MemoryLimit => "execution stopped: the memory limit was reached".to_owned(),
                Status::DiskLimit => "execution stopped: the scratch disk limit was reached".to_owned(),
                Status::StackOverflow => "execution stopped: the call stack overflowed".to_owned(),
                _ => format!("execution stopped: the runtime trapped: {}", first_line(&detail)),
            };
            stderr_text.push_str(&note);
            (status, None)
        }
    };
    Outcome {
        status,
        exit_code,
        stdout: stdout_text,
        stderr: stderr_text,
        truncated: stdout_cut || stderr_cut,
        stdout_bytes,
        stderr_bytes,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        fuel_used,
        artifacts: Vec::new(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_snapshot_is_reused_and_replaces_older_ones_of_its_kind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        for (name, body) in [("stack-old.wasm", "old"), ("stack-new.wasm", "new"), ("chatedge_js-1.wasm", "js")] {
            std::fs::write(dir.path().join(name), body)?;
        }
        let stored = stored_snapshot(&dir.path().join("stack-new.wasm"), || anyhow::bail!("must not rebuild"))?;
        assert_eq!(stored, b"new");
        assert!(!dir.path().join("stack-old.wasm").exists());
        assert!(dir.path().join("chatedge_js-1.wasm").exists(), "another kind is kept");

        let built = stored_snapshot(&dir.path().join("stack-next.wasm"), || Ok(b"next".to_vec()))?;
        assert_eq!(built, b"next");
        assert_eq!(std::fs::read(dir.path().join("stack-next.wasm"))?, b"next");
        assert!(!dir.path().join("stack-new.wasm").exists());
        let failed = stored_snapshot(&dir.path().join("stack-broken.wasm"), || anyhow::bail!("guest trapped"));
        assert!(failed.is_err());
        assert!(dir.path().join("stack-next.wasm").exists(), "a failed build removes nothing");
        Ok(())
    }
}
