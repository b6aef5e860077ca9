//! The wasmtime side: one Engine (pooling allocator, epoch interruption), each component compiled
//! once (through an on-disk cache of precompiled artifacts) and pre-instantiated; a fresh Store
//! and instance per request.

use crate::capabilities::outbound::{OutboundHttp, OutboundPolicy};
use crate::capabilities::postgres::PgPools;
use crate::capabilities::variables::{AppVariables, ComponentVariables};
use crate::manifest::LoadedManifest;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Tuning knobs of the runtime, from `CHATEDGE_*` environment variables.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Instances the pooling allocator keeps slots for (concurrent requests).
    pub max_instances: u32,
    /// Linear memory limit per instance, bytes.
    pub max_memory_bytes: usize,
    /// Connections per Postgres address.
    pub pg_pool_size: usize,
    /// Directory of precompiled artifacts.
    pub cache_dir: PathBuf,
    /// Bytes of each memory / table slot kept resident between instances.
    pub keep_resident_bytes: usize,
    /// Key-value stores and SQLite databases (runtime config, defaults in the state folder).
    pub stores: crate::runtime_config::RuntimeConfig,
}

impl RuntimeOptions {
    /// Defaults, overridable by `CHATEDGE_MAX_INSTANCES`, `CHATEDGE_MAX_MEMORY_MB`,
    /// `CHATEDGE_PG_POOL_SIZE` and `CHATEDGE_CACHE_DIR`.
    pub fn from_env(default_cache: PathBuf) -> Self {
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        RuntimeOptions {
            max_instances: num("CHATEDGE_MAX_INSTANCES", 1000) as u32,
            max_memory_bytes: (num("CHATEDGE_MAX_MEMORY_MB", 256) as usize) << 20,
            pg_pool_size: num("CHATEDGE_PG_POOL_SIZE", 16) as usize,
            keep_resident_bytes: (num("CHATEDGE_KEEP_RESIDENT_KB", 2048) as usize) << 10,
            cache_dir: std::env::var_os("CHATEDGE_CACHE_DIR").map(PathBuf::from).unwrap_or(default_cache),
            stores: crate::runtime_config::RuntimeConfig::default(),
        }
    }
}

/// The per-request state behind a component instance.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// Resources handed to the guest (wasi, http, postgres connections).
    pub table: ResourceTable,
    limits: StoreLimits,
    hooks: OutboundHttp,
    /// The component being served.
    pub component: Arc<ComponentRuntime>,
    /// Postgres pools shared by all requests.
    pub pg: Arc<PgPools>,
    /// Key-value stores shared by all requests.
    pub kv: Arc<crate::capabilities::keyvalue::KvStores>,
    /// SQLite databases shared by all requests.
    pub sqlite: Arc<crate::capabilities::sqlite::SqliteDatabases>,
    /// Outbound Redis connections shared by all requests.
    pub redis_clients: Arc<crate::capabilities::redis_outbound::RedisClients>,
    /// The request's trace context, parent of the database spans (`None`: tracing is off).
    pub trace: Option<opentelemetry::Context>,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// A loaded component: pre-instantiated, with its resolved variables and outbound policy.
pub struct ComponentRuntime {
    /// Component id from the manifest.
    pub id: String,
    /// Resolved component variables.
    pub variables: ComponentVariables,
    /// Parsed `allowed_outbound_hosts`.
    pub outbound: OutboundPolicy,
    /// Stores the component may open (`key_value_stores`).
    pub key_value_stores: Vec<String>,
    /// SQLite databases the component may open (`sqlite_databases`).
    pub sqlite_databases: Vec<String>,
    environment: Vec<(String, String)>,
    pre: ProxyPre<RequestState>,
}

/// Everything needed to serve requests: engine, components, shared pools.
pub struct Runtime {
    engine: Engine,
    /// Components by id.
    pub components: BTreeMap<String, Arc<ComponentRuntime>>,
    pg: Arc<PgPools>,
    kv: Arc<crate::capabilities::keyvalue::KvStores>,
    sqlite: Arc<crate::capabilities::sqlite::SqliteDatabases>,
    redis_clients: Arc<crate::capabilities::redis_outbound::RedisClients>,
    options: RuntimeOptions,
}

fn engine(options: &RuntimeOptions) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(options.max_instances)
        .total_core_instances(options.max_instances * 4)
        .total_memories(options.max_instances * 2)
        .total_tables(options.max_instances * 4)
        .max_memory_size(options.max_memory_bytes)
        .max_core_instances_per_component(50)
        .max_memories_per_component(10)
        .max_tables_per_component(20)
        // Reuse a slot's pages instead of madvise-ing them away: a fresh instance then starts
        // without page faults on the memory the previous request touched.
        .linear_memory_keep_resident(options.keep_resident_bytes)
        .table_keep_resident(options.keep_resident_bytes)
        .decommit_batch_size(32)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut pooled = config.clone();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    match Engine::new(&pooled) {
        Ok(e) => Ok(e),
        Err(e) => {
            // Small virtual address spaces (some containers) cannot reserve the pool.
            tracing::warn!("pooling allocator unavailable ({e}); using on-demand allocation");
            Ok(Engine::new(&config)?)
        }
    }
}

/// Loads a component through the artifact cache: `<sha256(wasm)>-<engine hash>.cwasm`.
///
/// Deserializing is `unsafe` because artifacts are trusted machine code: only files in our own
/// cache directory, owned by us and writable by nobody else, are ever deserialized.
fn load_component(engine: &Engine, wasm_path: &Path, cache_dir: &Path) -> Result<Component> {
    let wasm = std::fs::read(wasm_path)
        .with_context(|| format!("reading component {} (build it first: ./dev build)", wasm_path.display()))?;
    let mut engine_hash = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut engine_hash);
    let key = format!(
        "{:x}-{:016x}-{}",
        Sha256::digest(&wasm),
        std::hash::Hasher::finish(&engine_hash),
        env!("CARGO_PKG_VERSION")
    );
    let artifact = cache_dir.join(format!("{key}.cwasm"));
    if trusted_cache_file(&artifact) {
        // SAFETY: the file is ours (checked above) and was written by `Component::serialize` of an
        // engine with the same compatibility hash; wasmtime still validates its header.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!("discarding cached artifact {}: {e}", artifact.display()),
        }
    }
    let component = Component::new(engine, &wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {}", wasm_path.display()))?;
    if let Err(e) = store_artifact(&component, cache_dir, &artifact) {
        tracing::warn!("could not cache {}: {e}", artifact.display());
    }
    Ok(component)
}

fn trusted_cache_file(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else { return false };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        meta.file_type().is_file() && meta.uid() == me && meta.mode() & 0o022 == 0
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

fn store_artifact(component: &Component, dir: &Path, artifact: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let bytes = component.serialize()?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, artifact)?;
    Ok(())
}

impl Runtime {
    /// Compiles (or loads from cache) and pre-instantiates every component of the manifest.
    pub fn load(manifest: &LoadedManifest, app_vars: &AppVariables, options: RuntimeOptions) -> Result<Self> {
        let engine = engine(&options)?;
        let mut linker: Linker<RequestState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::bindings::SpinHost::add_to_linker::<_, HasSelf<RequestState>>(&mut linker, |s| s)?;

        let kv = Arc::new(crate::capabilities::keyvalue::KvStores::new(options.stores.key_value_stores.clone()));
        let sqlite =
            Arc::new(crate::capabilities::sqlite::SqliteDatabases::new(options.stores.sqlite_databases.clone()));
        let mut components = BTreeMap::new();
        for (id, spec) in &manifest.manifest.component {
            for label in &spec.key_value_stores {
                if !kv.is_defined(label) {
                    bail!("component '{id}' uses key-value store '{label}', which the runtime config does not define (only 'default' exists without one)");
                }
            }
            for label in &spec.sqlite_databases {
                if !sqlite.is_defined(label) {
                    bail!("component '{id}' uses SQLite database '{label}', which the runtime config does not define");
                }
            }
            let path = manifest.source_path(spec);
            let component = load_component(&engine, &path, &options.cache_dir)?;
            // wasmtime names the first import it cannot satisfy ("component imports instance
            // `fermyon:spin/mqtt@2.0.0`, but a matching implementation was not found").
            let pre = linker.instantiate_pre(&component).map_err(|e| {
                anyhow::anyhow!("component '{id}' needs an interface chatedge does not provide (run it on Spin): {e}")
            })?;
            let pre = ProxyPre::new(pre)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component '{id}' does not export wasi:http/incoming-handler"))?;
            let allowed = spec
                .allowed_outbound_hosts
                .iter()
                .map(|h| app_vars.expand(h))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("component '{id}' allowed_outbound_hosts"))?;
            let environment = spec.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            components.insert(
                id.clone(),
                Arc::new(ComponentRuntime {
                    id: id.clone(),
                    variables: ComponentVariables::new(&spec.variables, app_vars)
                        .with_context(|| format!("component '{id}' variables"))?,
                    outbound: OutboundPolicy::new(id, &allowed)?,
                    key_value_stores: spec.key_value_stores.clone(),
                    sqlite_databases: spec.sqlite_databases.clone(),
                    environment,
                    pre,
                }),
            );
        }
        if components.is_empty() {
            bail!("the manifest has no components");
        }
        crate::metrics::metrics().instance_slots.set(i64::from(options.max_instances));
        let pg = Arc::new(PgPools::new(options.pg_pool_size));
        let redis_clients = Arc::default();
        Ok(Runtime { engine, components, pg, kv, sqlite, redis_clients, options })
    }

    /// Starts the epoch ticker that lets long-running guests yield to other requests.
    pub fn start_epoch_ticker(&self) {
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(10));
                engine.increment_epoch();
            })
            .ok();
    }

    /// A fresh store for one request to `component`.
    pub fn new_store(
        &self,
        component: &Arc<ComponentRuntime>,
        trace: Option<opentelemetry::Context>,
    ) -> Store<RequestState> {
        let mut wasi = WasiCtx::builder();
        // stderr through the metric-line splitter (`capabilities::stdio`).
        wasi.inherit_stdout().stderr(crate::capabilities::stdio::GuestStderr);
        for (k, v) in &component.environment {
            wasi.env(k, v);
        }
        // wasi:sockets as Spin allows them: a TCP connect (or a UDP datagram) only to an address
        // `allowed_outbound_hosts` names with the `tcp` (or `udp`) scheme, and no server
        // sockets. wasmtime 48 (unlike the wasmtime 44 in Spin 4.0.2) also asks about the
        // implicit bind a connect or send makes, as a bind of the unspecified address on port 0:
        // that one is allowed (it serves nothing: listening is refused); any other bind is not.
        let policy = component.clone();
        wasi.allow_ip_name_lookup(true).allow_tcp(true).allow_udp(true);
        wasi.socket_addr_check(move |addr, use_| {
            use wasmtime_wasi::sockets::SocketAddrUse;
            let policy = policy.clone();
            Box::pin(async move {
                let scheme = match use_ {
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                        return addr.ip().is_unspecified() && addr.port() == 0
                    }
                    SocketAddrUse::TcpConnect => "tcp",
                    // Datagrams go to, and come from, allowed addresses only.
                    SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => "udp",
                    // Listening and accepting: never.
                    _ => return false,
                };
                policy.outbound.check(scheme, &addr.ip().to_string(), addr.port())
            })
        });
        let state = RequestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(self.options.max_memory_bytes).instances(50).build(),
            hooks: OutboundHttp { policy: component.clone(), trace: trace.clone() },
            component: component.clone(),
            pg: self.pg.clone(),
            kv: self.kv.clone(),
            sqlite: self.sqlite.clone(),
            redis_clients: self.redis_clients.clone(),
            trace,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// The Postgres pools' connections: in use, idle, and their combined capacity.
    pub fn postgres_status(&self) -> (usize, usize, usize) {
        self.pg.status()
    }

    /// The pre-instantiated component.
    pub fn pre(component: &ComponentRuntime) -> &ProxyPre<RequestState> {
        &component.pre
    }
}
