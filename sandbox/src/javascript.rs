//! JavaScript and TypeScript: the boa guest (`sandbox/js-guest`, a wasm32-wasip1 command) in a
//! fresh instance per execution, the program passed as its argument, the private scratch folder
//! as `/`. TypeScript has its types stripped by oxc inside the guest, so a program that breaks
//! the parser traps its own instance, never the host. The guest is snapshotted once per machine
//! after its `wizer.initialize` has built the engine's realm, so an execution starts with it
//! made: `1+1` costs ~0.1 M instructions instead of ~1.5 M.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Linker};
use wasmtime_wasi::FsPerms;

use crate::capture::{Capture, Channel, Tap};
use crate::engine::{self, Engines, GuestState};
use crate::limits::Limits;
use crate::{Outcome, SandboxError, Scratch, Status};

/// The guest's exit code after refusing TypeScript that does not compile (the guest's own
/// `ts_strip::COMPILE_ERROR_EXIT`; a unit test holds the two equal, so the host need not build
/// oxc natively).
const COMPILE_ERROR_EXIT: i32 = 65;

/// The loaded JavaScript runtime.
pub(crate) struct JavascriptRuntime {
    engines: Engines,
    pre: InstancePre<GuestState>,
}

impl JavascriptRuntime {
    /// Snapshots the boa guest (once per machine) and compiles the snapshot (or loads it from
    /// the cache).
    pub(crate) fn load(engines: &Engines, wasm_path: &Path, cache_dir: &Path) -> anyhow::Result<Self> {
        let wasm = std::fs::read(wasm_path)
            .with_context(|| format!("reading the JavaScript runtime {}", wasm_path.display()))?;
        let mut linker = Linker::new(&engines.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let snapshot_path = cache_dir
            .join("javascript")
            .join(format!("chatedge_js-{}.wasm", &engine::hex(&Sha256::digest(&wasm))[..16]));
        let snapshot = engine::stored_snapshot(engines, &snapshot_path, || {
            build_snapshot(engines, &wasm, &linker).context("snapshotting the JavaScript runtime")
        })?;
        let module = engines.module(&snapshot).context("compiling the JavaScript runtime")?;
        engine::add_write_budget(&mut linker)?;
        let pre = linker.instantiate_pre(&module).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(JavascriptRuntime { engines: engines.clone(), pre })
    }

    /// One execution of `source`; TypeScript has its types stripped inside the guest first.
    pub(crate) async fn run(
        &self,
        source: &str,
        typescript: bool,
        stdin: &[u8],
        limits: &Limits,
        scratch: &Scratch,
        tap: Option<&Tap>,
    ) -> Result<Outcome, SandboxError> {
        if source.contains('\0') {
            return Err(SandboxError::Invalid("code must not contain NUL characters".into()));
        }
        let started = Instant::now();
        let deadline = started + Duration::from_millis(limits.timeout_ms);
        let stdout = Capture::new(limits.output_bytes).tapped(tap, Channel::Stdout);
        let stderr = Capture::new(limits.output_bytes).tapped(tap, Channel::Stderr);
        let mode = if typescript { "--typescript" } else { "--javascript" };
        let wasi = wasi(&["chatedge_js", mode, source], scratch.root(), stdin, &stdout, &stderr)?;
        let mut store = engine::execution_store(&self.engines.engine, wasi, limits, deadline, scratch)?;
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await.map(|()| 0)
        };
        let result = engine::within_deadline(deadline, call).await;
        let mut outcome = engine::finish(&store, result, limits, &stdout, &stderr, started);
        if typescript && outcome.exit_code == Some(COMPILE_ERROR_EXIT) {
            // The guest's compiler refused the program before any of it ran.
            outcome.status = Status::CompileError;
            outcome.exit_code = None;
        }
        Ok(outcome)
    }
}

/// The guest's WASI context: the same single preopen at snapshot time and at every execution
/// (wasi-libc's preopen table may live in the snapshot).
fn wasi(
    args: &[&str],
    root: &Path,
    stdin: &[u8],
    stdout: &Capture,
    stderr: &Capture,
) -> anyhow::Result<wasmtime_wasi::p1::WasiP1Ctx> {
    let mut builder = engine::wasi_builder(args, stdin, stdout, stderr);
    builder.preopened_dir(root, "/", FsPerms::ReadWrite).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(builder.build_p1())
}

/// The guest after `wizer.initialize`: boa's realm and `console` made.
fn build_snapshot(engines: &Engines, wasm: &[u8], linker: &Linker<GuestState>) -> anyhow::Result<Vec<u8>> {
    let scratch = Scratch::new(&std::env::temp_dir())?;
    let stdout = Capture::new(1 << 16);
    let stderr = Capture::new(1 << 16);
    let wasi = wasi(&["chatedge_js"], scratch.root(), b"", &stdout, &stderr)?;
    engine::snapshot(engines, wasm, linker, wasi, async |store, instance| {
        let initialize = instance
            .get_typed_func::<(), ()>(&mut *store, "wizer.initialize")
            .map_err(|e| anyhow::anyhow!("the JavaScript runtime has no wizer.initialize: {e:?}"))?;
        initialize
            .call_async(&mut *store, ())
            .await
            .map_err(|e| anyhow::anyhow!("wizer.initialize: {e:?}\n{}", stderr.finish().0))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_compile_error_exit_code_is_the_guests() {
        assert_eq!(super::COMPILE_ERROR_EXIT, i32::from(ts_strip::COMPILE_ERROR_EXIT));
    }
}
