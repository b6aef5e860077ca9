//! Test databases. One Postgres server per test process, started on first use, with the
//! migrations applied once to a template database: every [`TestDb::start`] is a database of its
//! own cloned from that template (`CREATE DATABASE … TEMPLATE`, tens of milliseconds) instead of
//! a cluster of its own (initdb, start and migrate: seconds). Tests that stop the server,
//! reconfigure it (TLS) or change cluster-wide roles take a server of their own with
//! [`TestDb::dedicated`].
//!
//! The shared server is stopped and removed when the test process exits (an `atexit` hook, as
//! statics are never dropped); one left by a process that was killed is found by its
//! `owner.pid` file and removed by the next run.

use anyhow::{bail, Context, Result};
use chatedge_devstack::stack::{self as devstack, Cluster};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::OnceCell;

use crate::{repo_root, User, JWT_SECRET};

/// The `authenticator` role's password (the functions' login, as in production).
const AUTHENTICATOR_PASSWORD: &str = "0123456789abcdef";
/// The migrated database every shared test database is cloned from.
const TEMPLATE: &str = "chatedge_template";
/// Where test servers live: reachable by the `postgres` user wherever the clone is.
const CLUSTERS: &str = "/var/tmp/chatedge/test-clusters";
/// Throwaway servers need no durability: a crash loses a test's data, nothing else.
const THROWAWAY_OPTIONS: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off";
/// The shared server serves every test of the process at once.
const SHARED_OPTIONS: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=500";

/// What tests need of the shared server; the [`Cluster`] itself waits in [`SHARED_CLUSTER`]
/// for the exit hook.
struct SharedServer {
    port: u16,
    superuser_password: String,
}

static SHARED: OnceCell<SharedServer> = OnceCell::const_new();
static SHARED_CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

/// Runs from libc's `exit`: stops the shared server and removes its files. Never panics.
extern "C" fn remove_shared_server() {
    let cluster = SHARED_CLUSTER.lock().ok().and_then(|mut slot| slot.take());
    if let Some(cluster) = cluster {
        let root = cluster.root().to_owned();
        let _ = cluster.destroy();
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Where a [`TestDb`]'s database lives.
enum Server {
    /// The process's shared server, in a database cloned for this test.
    Shared,
    /// A server of this test's own, in its `postgres` database.
    Dedicated(Cluster),
}

/// A database with the repository's migrations applied, a bootstrap user and the
/// `authenticator` login, dropped (with its server, when dedicated) when the value is.
pub struct TestDb {
    server: Server,
    port: u16,
    superuser_password: String,
    database: String,
}

impl TestDb {
    /// A fresh database on the process's shared server, cloned from the migrated template.
    pub async fn start() -> Result<Self> {
        let shared = shared_server().await?;
        let database = format!("test_{}", devstack::random_hex(8));
        let admin = connect(shared.port, &shared.superuser_password, "postgres").await?;
        // The name is ours (hex), so it can be spelled in the statement.
        admin.batch_execute(&format!("create database {database} template {TEMPLATE}")).await?;
        Ok(TestDb {
            server: Server::Shared,
            port: shared.port,
            superuser_password: shared.superuser_password.clone(),
            database,
        })
    }

    /// A server of its own (initdb, start, migrate), for tests that stop it, reconfigure it
    /// or change cluster-wide roles.
    pub async fn dedicated() -> Result<Self> {
        Self::dedicated_with(None).await
    }

    /// A dedicated server run by the system's PostgreSQL (Debian's), which has no pgvector: the
    /// migrations still apply and the document routes answer 503 feature_unavailable.
    pub async fn without_vector() -> Result<Self> {
        Self::dedicated_with(Some(devstack::system_pg_bin_dir()?)).await
    }

    async fn dedicated_with(bin: Option<PathBuf>) -> Result<Self> {
        let mut cluster = new_cluster(THROWAWAY_OPTIONS, bin)?;
        cluster.start(devstack::free_port()?)?;
        let db = TestDb {
            port: cluster.port,
            superuser_password: cluster.superuser_password.clone(),
            server: Server::Dedicated(cluster),
            database: "postgres".to_owned(),
        };
        migrate_and_prepare(&db.superuser_url()).await?;
        Ok(db)
    }

    /// A superuser connection for setup and for checking what was written.
    pub async fn admin(&self) -> Result<tokio_postgres::Client> {
        chatedge::pgtls::connect(&self.superuser_url()).await
    }

    /// A connection acting as `user` exactly as PostgREST would for a request with their token:
    /// role `authenticated`, the claims published. What a user can do through Supabase's REST
    /// API directly, bypassing the functions.
    pub async fn as_user(&self, user: &User) -> Result<tokio_postgres::Client> {
        let client = self.admin().await?;
        client
            .batch_execute(&format!(
                "set role authenticated; select set_config('request.jwt.claims', '{{\"sub\":\"{}\",\"role\":\"authenticated\"}}', false)",
                user.id
            ))
            .await?;
        Ok(client)
    }

    /// Inserts a user into auth.users and returns an access token for them.
    pub async fn user(&self) -> Result<User> {
        let id = uuid::Uuid::new_v4();
        let email = format!("{id}@test.local");
        self.admin()
            .await?
            .execute(
                "insert into auth.users (id, aud, role, email) values ($1, 'authenticated', 'authenticated', $2)",
                &[&id, &email],
            )
            .await?;
        let token = chatedge_devstack::tokens::user_token(JWT_SECRET.as_bytes(), &id.to_string(), &email, 3600)?;
        Ok(User { id, token })
    }

    /// Like [`TestDb::dedicated`], with TLS on (a server certificate for 127.0.0.1 signed by a
    /// throwaway CA, both made with openssl) and plain TCP refused (`hostssl` only), so a
    /// connection that works is an encrypted one. Returns the CA certificate for `sslrootcert`.
    pub async fn start_tls() -> Result<(Self, PathBuf)> {
        // The pinned server is built without OpenSSL: TLS tests run the system's.
        let db = TestDb::without_vector().await?;
        let root = db.root()?.to_owned();
        let ca = crate::tls::make_server_certificate(&root)?;
        let (cert, key) = (root.join("server.crt"), root.join("server.key"));
        chatedge_devstack::stack::chown_for_cluster(&[&cert, &key])?;
        let hba = root.join("data/pg_hba.conf");
        let conf = std::fs::read_to_string(&hba)?;
        let tls_only: String = conf
            .lines()
            .map(|l| if l.starts_with("host ") { l.replacen("host ", "hostssl ", 1) } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&hba, tls_only)?;
        let admin = db.admin().await?;
        // One statement per call: a batch is one transaction, which ALTER SYSTEM refuses.
        for statement in [
            "alter system set ssl = on".to_owned(),
            format!("alter system set ssl_cert_file = '{}'", cert.display()),
            format!("alter system set ssl_key_file = '{}'", key.display()),
            "select pg_reload_conf()".to_owned(),
        ] {
            admin.batch_execute(&statement).await?;
        }
        Ok((db, ca))
    }

    /// A connection URL for `user` to this test's database.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{}", self.port, self.database)
    }

    /// The superuser's URL (setup, checks).
    pub fn superuser_url(&self) -> String {
        self.url("postgres", &self.superuser_password)
    }

    /// The URL the functions use (the `authenticator` role, as in production).
    pub fn app_url(&self) -> String {
        self.url("authenticator", AUTHENTICATOR_PASSWORD)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for `allowed_outbound_hosts`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops a dedicated server (a database outage); [`TestDb::restart`] brings it back.
    pub fn stop(&mut self) -> Result<()> {
        match &mut self.server {
            Server::Dedicated(cluster) => cluster.stop(),
            Server::Shared => bail!("the shared server cannot be stopped: use TestDb::dedicated()"),
        }
    }

    /// Starts a stopped dedicated server again on the port it had.
    pub fn restart(&mut self) -> Result<()> {
        let port = self.port;
        match &mut self.server {
            Server::Dedicated(cluster) => cluster.start(port),
            Server::Shared => bail!("the shared server cannot be restarted: use TestDb::dedicated()"),
        }
    }

    fn root(&self) -> Result<&Path> {
        match &self.server {
            Server::Dedicated(cluster) => Ok(cluster.root()),
            Server::Shared => bail!("the shared server's files are not a test's to change: use TestDb::dedicated()"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &mut self.server {
            Server::Dedicated(cluster) => {
                let _ = cluster.stop();
                // Stopped; remove the data directory (owned by postgres, removable by root or us).
                let _ = std::fs::remove_dir_all(cluster.root());
            }
            Server::Shared => {
                // Drop is synchronous and may run inside a runtime: a thread of its own with a
                // runtime of its own. FORCE ends connections a host still holds.
                let (port, password, database) = (self.port, self.superuser_password.clone(), self.database.clone());
                let dropped = std::thread::spawn(move || -> Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async {
                        let admin = connect(port, &password, "postgres").await?;
                        admin.batch_execute(&format!("drop database if exists {database} with (force)")).await?;
                        anyhow::Ok(())
                    })
                })
                .join();
                if let Ok(Err(e)) = dropped {
                    eprintln!("dropping test database {}: {e:#}", self.database);
                }
            }
        }
    }
}

async fn connect(port: u16, password: &str, database: &str) -> Result<tokio_postgres::Client> {
    chatedge::pgtls::connect(&format!("postgres://postgres:{password}@127.0.0.1:{port}/{database}")).await
}

/// The process's shared server with its template, started by the first test that asks.
async fn shared_server() -> Result<&'static SharedServer> {
    SHARED
        .get_or_try_init(|| async {
            remove_abandoned_servers();
            let mut cluster = new_cluster(SHARED_OPTIONS, None)?;
            cluster.start(devstack::free_port()?)?;
            let server = SharedServer { port: cluster.port, superuser_password: cluster.superuser_password.clone() };
            let first =
                SHARED_CLUSTER.lock().map_err(|_| anyhow::anyhow!("shared server lock poisoned"))?.replace(cluster);
            if first.is_none() {
                // SAFETY: registers a function of ours that takes no arguments and never unwinds.
                unsafe { atexit(remove_shared_server) };
            }
            let admin = connect(server.port, &server.superuser_password, "postgres").await?;
            admin.batch_execute(&format!("create database {TEMPLATE}")).await?;
            migrate_and_prepare(&format!(
                "postgres://postgres:{}@127.0.0.1:{}/{TEMPLATE}",
                server.superuser_password, server.port
            ))
            .await?;
            // Nobody may be connected to a template while it is cloned.
            admin
                .batch_execute(&format!(
                    "alter database {TEMPLATE} with is_template true allow_connections false; \
                     select pg_terminate_backend(pid) from pg_stat_activity where datname = '{TEMPLATE}'"
                ))
                .await?;
            anyhow::Ok(server)
        })
        .await
}

/// Migrations, the `authenticator` login and a bootstrap user, in the database at `url`.
async fn migrate_and_prepare(url: &str) -> Result<()> {
    chatedge::migrate::migrate(url, &repo_root().join("migrations")).await?;
    let admin = chatedge::pgtls::connect(url).await?;
    let bootstrap_user = uuid::Uuid::new_v4().to_string();
    devstack::prepare_database(&admin, AUTHENTICATOR_PASSWORD, &bootstrap_user, "bootstrap@test").await
}

/// A new cluster under [`CLUSTERS`], marked with this process's pid.
fn new_cluster(options: &str, bin: Option<PathBuf>) -> Result<Cluster> {
    let root = PathBuf::from(CLUSTERS).join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(CLUSTERS)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in ["/var/tmp/chatedge", CLUSTERS] {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    let cluster = Cluster::open_or_init_with(&root, &devstack::random_hex(12), true, bin)
        .with_context(|| format!("initialising a test cluster in {}", root.display()))?
        .with_server_options(options);
    std::fs::write(root.join("owner.pid"), std::process::id().to_string())?;
    Ok(cluster)
}

/// Servers whose test process is gone (killed before its exit hook ran): stopped and removed.
/// A folder without an `owner.pid`, or whose owner is alive, is left alone.
fn remove_abandoned_servers() {
    let Ok(entries) = std::fs::read_dir(CLUSTERS) else { return };
    for root in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let Ok(owner) = std::fs::read_to_string(root.join("owner.pid")) else { continue };
        let Ok(owner) = owner.trim().parse::<u32>() else { continue };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let postmaster = std::fs::read_to_string(root.join("data/postmaster.pid")).unwrap_or_default();
        let server_pid = postmaster.lines().next().and_then(|l| l.trim().parse::<u32>().ok());
        let running = server_pid.is_some_and(|pid| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .contains("postgres")
        });
        if running {
            // Adopts the running server (start sees it in postmaster.pid), then stops it.
            if let Ok(mut cluster) = Cluster::open_or_init(&root, "", true) {
                if cluster.start(0).is_ok() {
                    let _ = cluster.destroy();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
