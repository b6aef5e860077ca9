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

    /// `data` with this cache's HMAC-SHA256 tag in front (32 bytes), for files that must come
    /// back unchanged (snapshots, runtime manifests).
    pub(crate) fn seal(&self, data: &[u8]) -> Vec<u8> {
        let mut out = self.cache.mac(data);
        out.extend_from_slice(data);
        out
    }

    /// The data of a [`Engines::seal`]ed file, or `None` if it was not sealed by this cache (or
    /// changed since).
    pub(crate) fn unseal<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let (tag, data) = sealed.split_at_checked(32)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.cache.key).ok()?;
        mac.update(data);
        mac.verify_slice(tag).ok().map(|()| data)
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
/// when this machine has none yet, sealed with the cache's key: a file changed since (or not
/// ours) is rebuilt, never loaded. Older ones of its kind are removed: nothing loads them any
/// more (each is 7-150 MB).
pub(crate) fn stored_snapshot(
    engines: &Engines,
    path: &Path,
    build: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let stored = std::fs::read(path).ok().and_then(|sealed| {
        let data = engines.unseal(&sealed).map(<[u8]>::to_vec);
        if data.is_none() {
            tracing::warn!(path = %path.display(), "refusing a snapshot this cache did not seal; rebuilding it");
        }
        data
    });
    let snapshot = match stored {
        Some(snapshot) => snapshot,
        None => {
            let snapshot = build()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, engines.seal(&snapshot))?;
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
    /// When the current execution must end (a session's store sees one per execution).
    deadline: Instant,
}

/// How often the scratch folder's size is measured while the guest runs.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(25);

/// The scratch folder's disk use against its cap. WASI offers no quota, so two things bound it:
/// every write to a file is refused *before* it lands once the last measurement plus what was
/// written since would pass the cap, and the folder is measured again (allocated blocks, so
/// sparse files count for what they occupy; every entry at least 32 KiB, so floods of empty
/// files count) from the epoch callback. Measured through a capability on the root, without
/// following links.
struct DiskWatch {
    root: cap_std::fs::Dir,
    cap: u64,
    /// Bytes the folder held at the last measurement.
    measured: u64,
    /// Bytes written to files since then.
    written: u64,
    next_check: Instant,
    exceeded: bool,
}

impl DiskWatch {
    /// Whether the folder is over its cap, measured at most once per [`DISK_CHECK_EVERY`].
    fn over(&mut self, now: Instant) -> bool {
        if self.exceeded {
            return true;
        }
        if now < self.next_check {
            return false;
        }
        match disk_use(&self.root, self.cap) {
            Some(used) => {
                self.measured = used;
                self.written = 0;
            }
            None => self.exceeded = true,
        }
        // A folder of thousands of files takes milliseconds to measure: keep that under ~20%
        // of the guest's time.
        self.next_check = Instant::now() + DISK_CHECK_EVERY.max(now.elapsed() * 4);
        self.exceeded
    }

    /// Admits a write of `len` bytes, or marks the cap reached and refuses it.
    fn admit(&mut self, len: u64) -> bool {
        let after = self.measured.saturating_add(self.written).saturating_add(len);
        if self.exceeded || after > self.cap {
            self.exceeded = true;
            return false;
        }
        self.written += len;
        true
    }
}

/// What the files below `root` occupy, or `None` once that passes `cap` (the walk stops there).
fn disk_use(root: &cap_std::fs::Dir, cap: u64) -> Option<u64> {
    use cap_fs_ext::DirExt;
    let mut used = 0u64;
    let mut folders = vec![root.try_clone().ok()?];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = folder.entries() else { continue };
        for entry in entries.filter_map(Result::ok) {
            // The entry itself (a link is a link, not what it names), by its allocated blocks.
            let name = entry.file_name();
            let Ok(stat) = rustix::fs::statat(&folder, name.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let blocks = u64::try_from(stat.st_blocks).unwrap_or(0);
            used = used.saturating_add(blocks.saturating_mul(512).max(32 << 10));
            if used > cap {
                return None;
            }
            if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
                if let Ok(sub) = folder.open_dir_nofollow(&name) {
                    folders.push(sub);
                }
            }
        }
    }
    Some(used)
}

/// The `(fd, iovs, iovs_len, ...)` parameters of WASIp1's write calls.
const FIRST_FILE_FD: i32 = 3;

/// Puts WASIp1's `fd_write` and `fd_pwrite` in `linker` behind a check: a write to a file (not
/// stdout or stderr, which are captured under their own cap) that would take the scratch folder
/// past its cap is refused before it lands (the call traps and the execution ends as
/// `disk_limit`); one that fits goes to WASI's own implementation. `linker` must already hold
/// WASI's functions (they are shadowed here).
pub(crate) fn add_write_budget(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
    linker.allow_shadowing(true);
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "fd_write",
            |mut caller: wasmtime::Caller<'_, GuestState>, (fd, iovs, iovs_len, nwritten): (i32, i32, i32, i32)| {
                Box::new(async move {
                    check_write(&mut caller, fd, iovs, iovs_len)?;
                    let memory = guest_memory(&mut caller)?;
                    let fuel = hostcall_fuel(&mut caller);
                    let (data, state) = memory.data_and_store_mut(&mut caller);
                    p1::WasiSnapshotPreview1::set_hostcall_fuel(&mut state.wasi, fuel);
                    p1::fd_write(
                        &mut state.wasi,
                        &mut wiggle::GuestMemory::Unshared(data),
                        fd,
                        iovs,
                        iovs_len,
                        nwritten,
                    )
                    .await
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "fd_pwrite",
            |mut caller: wasmtime::Caller<'_, GuestState>,
             (fd, iovs, iovs_len, offset, nwritten): (i32, i32, i32, i64, i32)| {
                Box::new(async move {
                    check_write(&mut caller, fd, iovs, iovs_len)?;
                    let memory = guest_memory(&mut caller)?;
                    let fuel = hostcall_fuel(&mut caller);
                    let (data, state) = memory.data_and_store_mut(&mut caller);
                    p1::WasiSnapshotPreview1::set_hostcall_fuel(&mut state.wasi, fuel);
                    p1::fd_pwrite(
                        &mut state.wasi,
                        &mut wiggle::GuestMemory::Unshared(data),
                        fd,
                        iovs,
                        iovs_len,
                        offset,
                        nwritten,
                    )
                    .await
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// How much a host call may copy out of guest memory, as the store allows; wiggle's own
/// wrappers hand it to WASI before every call, and so must these (WASI refuses a copy past it
/// with `ENOMEM`).
fn hostcall_fuel(caller: &mut wasmtime::Caller<'_, GuestState>) -> usize {
    wasmtime::AsContextMut::as_context_mut(caller).hostcall_fuel()
}

fn guest_memory(caller: &mut wasmtime::Caller<'_, GuestState>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(wasmtime::Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::format_err!("the guest exports no memory")),
    }
}

/// Refuses (as a trap) a file write of the iovecs at `iovs` that would pass the disk budget.
fn check_write(
    caller: &mut wasmtime::Caller<'_, GuestState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
) -> wasmtime::Result<()> {
    if fd < FIRST_FILE_FD || caller.data().disk.is_none() {
        return Ok(());
    }
    let Some(wasmtime::Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(()); // WASI itself will refuse the call
    };
    let data = memory.data(&*caller);
    let mut total = 0u64;
    let count = usize::try_from(iovs_len).unwrap_or(0);
    let base = iovs as u32 as usize;
    for i in 0..count {
        // Each iovec is (buf: u32, buf_len: u32); a bad pointer is WASI's to refuse.
        let at = base.saturating_add(i.saturating_mul(8)).saturating_add(4);
        let Some(len) = data.get(at..at + 4) else { break };
        total = total.saturating_add(u64::from(u32::from_le_bytes([len[0], len[1], len[2], len[3]])));
    }
    let admitted = caller.data_mut().disk.as_mut().is_none_or(|disk| disk.admit(total));
    if admitted {
        Ok(())
    } else {
        Err(Trap::Interrupt.into())
    }
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
    scratch: Option<cap_std::fs::Dir>,
) -> Store<GuestState> {
    let cap = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    let disk = scratch.map(|root| DiskWatch {
        root,
        cap: limits.scratch_bytes,
        measured: 0,
        written: 0,
        next_check: Instant::now() + DISK_CHECK_EVERY,
        exceeded: false,
    });
    let mut store = Store::new(engine, GuestState { wasi, limiter: MemoryCap { cap, refused: false }, disk, deadline });
    store.limiter(|state| &mut state.limiter);
    // Set before instantiation too: the snapshot's memory image counts against the cap.
    let _ = store.set_fuel(limits.fuel);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut context| {
        let now = Instant::now();
        let disk_full = context.data_mut().disk.as_mut().is_some_and(|disk| disk.over(now));
        if now >= context.data().deadline || disk_full {
            Err(Trap::Interrupt.into())
        } else {
            // Yield at each tick so other executions on this thread's runtime make progress.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// [`store`] for an execution in `scratch`, whose disk cap it watches.
pub(crate) fn execution_store(
    engine: &Engine,
    wasi: WasiP1Ctx,
    limits: &Limits,
    deadline: Instant,
    scratch: &crate::Scratch,
) -> Result<Store<GuestState>, crate::SandboxError> {
    let root = scratch.dir().map_err(anyhow::Error::from)?;
    Ok(store(engine, wasi, limits, deadline, Some(root)))
}

/// Readies a session's store for its next execution: that execution's fuel, memory cap and
/// deadline, and no memory refusal carried over from the last one.
pub(crate) fn rearm(store: &mut Store<GuestState>, limits: &Limits, deadline: Instant) {
    let _ = store.set_fuel(limits.fuel);
    store.set_epoch_deadline(1);
    let state = store.data_mut();
    state.deadline = deadline;
    state.limiter = MemoryCap { cap: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX), refused: false };
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
        Some(Trap::MemoryOutOfBounds) if shadow_stack_overflow(&error) => Status::StackOverflow,
        _ if memory_refused => Status::MemoryLimit,
        _ => Status::Crashed,
    };
    Ended::Stopped(status, format!("{error:?}"))
}

/// Whether an out-of-bounds trap is the guest's own stack running out. The guests (wasi-sdk's
/// CPython, Rust's boa) keep their call stack in linear memory, placed first, growing down
/// from its top toward address 0; one frame too many wraps below 0 to an address just under
/// 4 GiB, which no guest data can be at (the memory cap is far below it).
fn shadow_stack_overflow(error: &wasmtime::Error) -> bool {
    const WRAPPED_BELOW: u64 = 0xFFFF_0000;
    error.chain().any(|cause| {
        let text = cause.to_string();
        text.strip_prefix("memory fault at wasm address 0x")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|address| address >= WRAPPED_BELOW)
    })
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
                _ => {
                    tracing::debug!("guest trapped: {detail}");
                    format!("execution stopped: the runtime trapped: {}", first_line(&detail))
                }
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
        session_id: None,
        session_ended: false,
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
        let cache = tempfile::tempdir()?;
        let engines = Engines::new(cache.path(), &Policy { max_concurrent: 1, ..Policy::default() })?;
        let dir = tempfile::tempdir()?;
        for (name, body) in [("stack-old.wasm", "old"), ("stack-new.wasm", "new"), ("chatedge_js-1.wasm", "js")] {
            std::fs::write(dir.path().join(name), engines.seal(body.as_bytes()))?;
        }
        let stored =
            stored_snapshot(&engines, &dir.path().join("stack-new.wasm"), || anyhow::bail!("must not rebuild"))?;
        assert_eq!(stored, b"new");
        assert!(!dir.path().join("stack-old.wasm").exists());
        assert!(dir.path().join("chatedge_js-1.wasm").exists(), "another kind is kept");

        let built = stored_snapshot(&engines, &dir.path().join("stack-next.wasm"), || Ok(b"next".to_vec()))?;
        assert_eq!(built, b"next");
        assert_eq!(engines.unseal(&std::fs::read(dir.path().join("stack-next.wasm"))?), Some(&b"next"[..]));
        assert!(!dir.path().join("stack-new.wasm").exists());
        let failed =
            stored_snapshot(&engines, &dir.path().join("stack-broken.wasm"), || anyhow::bail!("guest trapped"));
        assert!(failed.is_err());
        assert!(dir.path().join("stack-next.wasm").exists(), "a failed build removes nothing");
        Ok(())
    }

    #[test]
    fn a_changed_snapshot_is_rebuilt_not_loaded() -> anyhow::Result<()> {
        let cache = tempfile::tempdir()?;
        let engines = Engines::new(cache.path(), &Policy { max_concurrent: 1, ..Policy::default() })?;
        let path = cache.path().join("stack-a.wasm");
        let mut sealed = engines.seal(b"good");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        std::fs::write(&path, &sealed)?;
        assert_eq!(stored_snapshot(&engines, &path, || Ok(b"rebuilt".to_vec()))?, b"rebuilt");
        // Nor is one without a seal at all (written by something else).
        std::fs::write(&path, b"plain wasm")?;
        assert_eq!(stored_snapshot(&engines, &path, || Ok(b"rebuilt again".to_vec()))?, b"rebuilt again");
        Ok(())
    }
}
