//! `chatedge`: serve spin.toml (`up`), apply migrations (`migrate`), mint dev tokens (`token`).

use anyhow::{Context, Result};
use chatedge::capabilities::variables::{AppVariables, Providers};
use chatedge::manifest::LoadedManifest;
use chatedge::migrate;
use chatedge::runtime::{Runtime, RuntimeOptions};
use chatedge::server::{self, App, ServerLimits};
use chatedge_devstack::stack::{self as devstack, Cluster, DevSecrets};
use chatedge_devstack::tokens;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "chatedge", version, about = "Serves chatedge's Spin app without Spin installed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app. With no database configured, starts the embedded dev stack.
    Up {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, env = "CHATEDGE_LISTEN", default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// The Spin manifest.
        #[arg(long, short = 'f', default_value = "spin.toml")]
        manifest: PathBuf,
        /// A runtime config file in Spin's format (key-value stores, SQLite databases).
        #[arg(long, env = "CHATEDGE_RUNTIME_CONFIG_FILE")]
        runtime_config_file: Option<PathBuf>,
        /// Where the dev stack and the default stores keep their state (default: `.chatedge`
        /// beside the manifest), as Spin's `--state-dir`.
        #[arg(long, env = "CHATEDGE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Where the admin listener serves Prometheus metrics at /metrics (port 0 picks a free
        /// one; `off` for none). Loopback by default: it is for the operator, not the public.
        #[arg(long, env = "CHATEDGE_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
        admin_listen: String,
    },
    /// Apply migrations/ to a database, in order, once each.
    Migrate {
        /// Database URL of a role that owns the schema (e.g. postgres).
        #[arg(long, env = "DATABASE_URL")]
        db_url: String,
        /// Directory of NNNN_name.sql files.
        #[arg(long, default_value = "migrations")]
        dir: PathBuf,
    },
    /// Print a fresh access token for the dev stack's demo user.
    Token {
        /// The Spin manifest (its directory holds .chatedge/).
        #[arg(long, short = 'f', default_value = "spin.toml")]
        manifest: PathBuf,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: i64,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHATEDGE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn,tokio_postgres=warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Up { listen, manifest, runtime_config_file, state_dir, admin_listen } => {
            let admin = match admin_listen.trim() {
                "off" | "" => None,
                a => Some(a.parse::<SocketAddr>().with_context(|| format!("--admin-listen {a}"))?),
            };
            up(listen, &manifest, runtime_config_file.as_deref(), state_dir, admin).await
        }
        Command::Migrate { db_url, dir } => {
            let applied = migrate::migrate(&db_url, &dir).await?;
            println!("{} migration(s) applied", applied.len());
            Ok(())
        }
        Command::Token { manifest, ttl } => {
            let manifest = LoadedManifest::load(&manifest)?;
            let secrets = DevSecrets::load_or_create(&manifest.dir.join(".chatedge"))?;
            println!(
                "{}",
                tokens::user_token(secrets.jwt_secret.as_bytes(), &secrets.demo_user_id, devstack::DEMO_EMAIL, ttl)?
            );
            Ok(())
        }
    }
}

/// What the dev stack set up, for the banner.
struct DevStack {
    cluster: Option<Cluster>,
    /// Present only when the dev stack supplied something (database or JWT secret).
    secrets: Option<DevSecrets>,
    generated_jwt: bool,
    /// The embedded S3 server, when the dev stack started one.
    s3: Option<chatedge_devstack::s3::S3Dev>,
    /// The supervised sandbox child, when the dev stack started one.
    sandbox: Option<chatedge_devstack::sandbox::SandboxChild>,
    /// The local embedding model's server, when no embedding provider is configured.
    embedder: Option<chatedge_devstack::embedder::EmbedServer>,
    /// Where it keeps its files.
    state_dir: PathBuf,
}

async fn dev_stack(manifest: &LoadedManifest, state_dir: &Path, providers: &mut Providers) -> Result<DevStack> {
    let state_dir = state_dir.to_owned();
    devstack::private_dir(&state_dir, 0o700)?;
    let declares = |name: &str| manifest.manifest.variables.contains_key(name);
    let need_db = declares("db_url") && !providers.provides("db_url");
    let has_keys = ["supabase_jwt_secret", "supabase_jwks_url", "supabase_jwks"].iter().any(|v| providers.provides(v));
    let generated_jwt = declares("supabase_jwt_secret") && !has_keys;
    let need_s3 = declares("storage_endpoint") && !providers.provides("storage_endpoint");
    let mut s3 = None;
    if need_s3 {
        // Objects under .chatedge/s3/<bucket>/...; a key pair for this run only.
        let bucket = providers.env.get("storage_bucket").cloned().unwrap_or_else(|| "uploads".to_owned());
        let (access, secret) = ("chatedge-dev".to_owned(), devstack::random_hex(20));
        let server =
            chatedge_devstack::s3::start(&state_dir.join("s3"), &bucket, "127.0.0.1:0", &access, &secret).await?;
        providers.dev.insert("storage_endpoint".into(), server.endpoint.clone());
        providers.dev.insert("storage_allowed_host".into(), server.endpoint.clone());
        providers.dev.insert("storage_access_key_id".into(), access);
        providers.dev.insert("storage_secret_access_key".into(), secret);
        s3 = Some(server);
    }
    let mut sandbox = None;
    if declares("sandbox_url") && !providers.provides("sandbox_url") {
        let secret = devstack::random_hex(32);
        let child = chatedge_devstack::sandbox::start(&manifest.dir, "127.0.0.1:0", &secret)?;
        providers.dev.insert("sandbox_url".into(), child.url.clone());
        providers.dev.insert("sandbox_allowed_host".into(), child.url.clone());
        providers.dev.insert("sandbox_secret".into(), secret);
        sandbox = Some(child);
    }
    let embedder = local_embedder(&declares, providers).await?;
    if !need_db && !generated_jwt {
        return Ok(DevStack { cluster: None, secrets: None, generated_jwt, s3, sandbox, embedder, state_dir });
    }
    let secrets = DevSecrets::load_or_create(&state_dir)?;
    let mut cluster = None;
    if need_db {
        let mut c = Cluster::open_or_init(&state_dir.join("postgres"), &secrets.postgres_password, false)?;
        c.start(devstack::free_port()?)?;
        let applied = migrate::migrate(&c.superuser_url(), &manifest.dir.join("migrations")).await?;
        if !applied.is_empty() {
            tracing::info!("applied {} migration(s)", applied.len());
        }
        devstack::prepare_database(
            &chatedge::pgtls::connect(&c.superuser_url()).await?,
            &secrets.authenticator_password,
            &secrets.demo_user_id,
            devstack::DEMO_EMAIL,
        )
        .await?;
        providers.dev.insert("db_url".into(), c.url("authenticator", &secrets.authenticator_password));
        providers.dev.insert("db_host".into(), c.host_port());
        cluster = Some(c);
    }
    if generated_jwt {
        providers.dev.insert("supabase_jwt_secret".into(), secrets.jwt_secret.clone());
    }
    Ok(DevStack { cluster, secrets: Some(secrets), generated_jwt, s3, sandbox, embedder, state_dir })
}

/// With no embedding provider configured (no `embedding_base_url`, `embedding_provider` or
/// OpenAI key) and WordLlama unpacked (`CHATEDGE_WORDLLAMA_DIR`, set by `./dev`), serves the local
/// model and points retrieval at it, so documents and search work with no key.
async fn local_embedder(
    declares: &dyn Fn(&str) -> bool,
    providers: &mut Providers,
) -> Result<Option<chatedge_devstack::embedder::EmbedServer>> {
    use chatedge_devstack::embedder;
    let configured =
        ["embedding_base_url", "embedding_provider", "openai_api_key"].iter().any(|v| providers.provides(v));
    if !declares("embedding_base_url") || configured {
        return Ok(None);
    }
    let Some(dir) = embedder::model_dir() else {
        tracing::info!("no embedding provider and no local model (CHATEDGE_WORDLLAMA_DIR): document search is off");
        return Ok(None);
    };
    let server = embedder::serve(dir, "127.0.0.1:0").await?;
    providers.dev.insert("embedding_base_url".into(), format!("{}/v1", server.origin));
    providers.dev.insert("embedding_allowed_host".into(), server.origin.clone());
    if !providers.provides("embedding_model") {
        providers.dev.insert("embedding_model".into(), embedder::MODEL_NAME.into());
    }
    Ok(Some(server))
}

fn banner(app: &App, manifest: &LoadedManifest, base_url: &str, dev: &DevStack) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let version = manifest.manifest.application.version.as_deref().unwrap_or("");
    writeln!(out, "Serving {base_url}")?;
    writeln!(out, "Application: {} {version}", manifest.manifest.application.name)?;
    writeln!(out, "Available Routes:")?;
    for line in app.route_lines(base_url) {
        writeln!(out, "{line}")?;
    }
    if let Some(secrets) = dev.secrets.as_ref().filter(|_| dev.generated_jwt) {
        let secret = secrets.jwt_secret.as_bytes();
        let anon = tokens::api_key(secret, "anon")?;
        let service = tokens::api_key(secret, "service_role")?;
        let token = tokens::user_token(secret, &secrets.demo_user_id, devstack::DEMO_EMAIL, 86_400)?;
        writeln!(out, "\nDev stack (like `supabase start`):")?;
        writeln!(out, "  API URL:           {base_url}")?;
        if let Some(c) = &dev.cluster {
            writeln!(out, "  DB URL:            {}", c.superuser_url())?;
        }
        if let Some(s3) = &dev.s3 {
            writeln!(out, "  Storage (S3):      {} (objects under .chatedge/s3)", s3.endpoint)?;
        }
        if let Some(child) = &dev.sandbox {
            let pid = child.pid().map(|p| format!("pid {p}")).unwrap_or_else(|| "restarting".into());
            writeln!(out, "  Code sandbox:      {} (supervised child process, {pid}, signed requests)", child.url)?;
        }
        if let Some(e) = &dev.embedder {
            let model = chatedge_devstack::embedder::MODEL_NAME;
            writeln!(out, "  Embeddings:        {}/v1 (local {model}, for documents and search)", e.origin)?;
        }
        writeln!(out, "  JWT secret:        {}", secrets.jwt_secret)?;
        writeln!(out, "  anon key:          {anon}")?;
        writeln!(out, "  service_role key:  {service}")?;
        writeln!(out, "  demo user:         {} ({})", devstack::DEMO_EMAIL, secrets.demo_user_id)?;
        writeln!(out, "  demo access token: {token}")?;
        if app.route_lines(base_url).iter().any(|l| l.contains("playground")) {
            // The token rides in the fragment, which the browser never sends to a server.
            writeln!(out, "  playground:        {base_url}/#token={token}")?;
        }
        let env_file = dev.state_dir.join("dev.env");
        let contents = format!(
            "CHATEDGE_URL={base_url}\nCHATEDGE_ANON_KEY={anon}\nCHATEDGE_SERVICE_ROLE_KEY={service}\nCHATEDGE_TOKEN={token}\n{}",
            dev.cluster.as_ref().map(|c| format!("CHATEDGE_DB_URL={}\n", c.superuser_url())).unwrap_or_default()
        );
        devstack::write_private(&env_file, contents.as_bytes())?;
        writeln!(out, "  (also in {}; a fresh token: chatedge token)", display_rel(&env_file, &manifest.dir))?;
    }
    out.flush()?;
    Ok(())
}

fn display_rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

async fn up(
    listen: SocketAddr,
    manifest_path: &Path,
    runtime_config_file: Option<&Path>,
    state_dir: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
) -> Result<()> {
    let manifest = LoadedManifest::load(manifest_path)?;
    let state_dir = state_dir.unwrap_or_else(|| manifest.dir.join(".chatedge"));
    let mut providers = Providers::from_env();
    let dev = dev_stack(&manifest, &state_dir, &mut providers).await?;
    let app_vars = AppVariables::resolve(&manifest.manifest, &providers)?;
    let mut options = RuntimeOptions::from_env(state_dir.join("cache"));
    options.stores = chatedge::runtime_config::RuntimeConfig::load(runtime_config_file, &state_dir)?;
    let runtime = Runtime::load(&manifest, &app_vars, options)?;
    runtime.start_epoch_ticker();
    let mut limits = ServerLimits::from_env();
    // The drain and the instance limit must outlast the app's longest chat stream.
    let stream_deadline = app_vars
        .get("provider_total_timeout_ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(300));
    limits.cover(stream_deadline);
    let drain = limits.drain;
    let app = Arc::new(App::new(&manifest, runtime, limits)?);
    // Bookkeeping no request finishes by itself: stale pending rows and budget holds, idle
    // limiter keys (migrations/0006). Needs the app's database; nothing to do without one.
    let maintenance = app_vars.get("db_url").map(|url| chatedge::maintenance::start(url.to_owned(), stream_deadline));
    let threads = std::env::var("CHATEDGE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // The admin listener is the operator's: when its port is taken the app still serves.
    let admin =
        admin_listen.and_then(|addr| match chatedge::admin::start(addr, app.clone(), app_vars.get("sandbox_url")) {
            Ok(a) => {
                println!("Admin listener: http://{}/metrics", a.local_addr);
                Some(a)
            }
            Err(e) => {
                tracing::warn!("no admin listener: {e:#}");
                None
            }
        });
    // Traces, when OTEL_EXPORTER_OTLP_ENDPOINT asks for them (as Spin reads it).
    let traces = chatedge::telemetry::init().context("starting the OTLP trace exporter")?;
    if traces.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    let running = server::start(listen, app.clone(), threads).with_context(|| format!("serving on {listen}"))?;
    let base_url = format!("http://{}", running.local_addr);
    banner(&app, &manifest, &base_url, &dev)?;
    server::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests (up to {}s)", drain.as_secs());
    tokio::task::spawn_blocking(move || running.shutdown()).await??;
    tokio::task::spawn_blocking(move || chatedge::telemetry::shutdown(traces)).await?;
    drop(admin);
    drop(maintenance);
    drop(dev);
    Ok(())
}
