//! JavaScript: the boa guest (`sandbox/js-guest`, a wasm32-wasip1 command) in a fresh instance per
//! execution, the program passed as its argument, the private scratch folder as `/`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::{InstancePre, Linker};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::capture::Capture;
use crate::engine::{self, Engines, GuestState};
use crate::limits::Limits;
use crate::{Outcome, SandboxError, Scratch};

/// The loaded JavaScript runtime.
pub(crate) struct JavascriptRuntime {
    engines: Engines,
    pre: InstancePre<GuestState>,
}

impl JavascriptRuntime {
    /// Compiles (or loads from the cache) the boa guest.
    pub(crate) fn load(engines: &Engines, wasm_path: &Path) -> anyhow::Result<Self> {
        let wasm = std::fs::read(wasm_path)
            .with_context(|| format!("reading the JavaScript runtime {}", wasm_path.display()))?;
        let module = engines.module(&wasm).context("compiling the JavaScript runtime")?;
        let mut linker = Linker::new(&engines.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let pre = linker.instantiate_pre(&module).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(JavascriptRuntime { engines: engines.clone(), pre })
    }

    /// One execution of `source` (already JavaScript).
    pub(crate) async fn run(
        &self,
        source: &str,
        stdin: &[u8],
        limits: &Limits,
        scratch: &Scratch,
    ) -> Result<Outcome, SandboxError> {
        if source.contains('\0') {
            return Err(SandboxError::Invalid("code must not contain NUL characters".into()));
        }
        let started = Instant::now();
        let deadline = started + Duration::from_millis(limits.timeout_ms);
        let stdout = Capture::new(limits.output_bytes);
        let stderr = Capture::new(limits.output_bytes);
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(&["chatedge_js", source])
            .stdin(MemoryInputPipe::new(stdin.to_vec()))
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        builder
            .preopened_dir(scratch.root(), "/", FsPerms::ReadWrite)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut store = engine::store(&self.engines.engine, builder.build_p1(), limits, deadline);
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await.map(|()| 0)
        };
        let result = engine::within_deadline(deadline, call).await;
        let refused = store.data().limiter.refused;
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let ended = engine::ended(result, refused);
        Ok(engine::outcome(ended, refused, &stdout, &stderr, started, fuel_used))
    }
}
