//! The embedded dev stack: a local Postgres cluster (started as the `postgres` user when we are
//! root, since Postgres refuses root), generated secrets, and the demo user. Tests use the same
//! cluster code for their throwaway databases.

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Effective user id of this process.
pub fn euid() -> u32 {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}

/// A random token of `n` bytes, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n).map(|_| format!("{:02x}", rng.gen::<u8>())).collect()
}

/// A free TCP port on 127.0.0.1 at the time of the call.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Directory of `initdb`, `pg_ctl` and `postgres`: `CHATEDGE_PG_BIN`, then `pg_config --bindir`,
/// then the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CHATEDGE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect())
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    if let Some(dir) = candidates.into_iter().rev().find(|p| p.join("initdb").exists()) {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    bail!("PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) or set CHATEDGE_PG_BIN")
}

fn as_postgres() -> bool {
    euid() == 0
}

/// A command run as the cluster's owner: `runuser -u postgres --` when we are root.
fn owner_command(program: &Path) -> Command {
    if as_postgres() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn chown_to_postgres(path: &Path) -> Result<()> {
    if as_postgres() {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("-R").arg("postgres:postgres").arg(path);
                c
            },
            "chown",
        )?;
    }
    Ok(())
}

/// Whether the cluster owner can write in `dir` (every parent must be traversable).
fn owner_can_use(dir: &Path) -> bool {
    if !as_postgres() {
        return true;
    }
    Command::new("runuser").args(["-u", "postgres", "--", "test", "-w"]).arg(dir).status().is_ok_and(|s| s.success())
}

/// A Postgres cluster in a directory of its own.
pub struct Cluster {
    root: PathBuf,
    bin: PathBuf,
    /// TCP port on 127.0.0.1 while running.
    pub port: u16,
    /// Password of the `postgres` superuser.
    pub superuser_password: String,
    running: bool,
}

impl Cluster {
    /// Opens the cluster under `preferred` (initialising it on first use). When we run as root and
    /// the `postgres` user cannot reach that path (e.g. under /root), the cluster lives under
    /// /var/tmp/chatedge/ instead and `preferred` becomes a symlink to it.
    pub fn open_or_init(preferred: &Path, superuser_password: &str, throwaway: bool) -> Result<Cluster> {
        let bin = pg_bin_dir()?;
        let root = Self::usable_root(preferred)?;
        let data = root.join("data");
        if !data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&root)?;
            let pwfile = root.join("pwfile");
            std::fs::write(&pwfile, format!("{superuser_password}\n"))?;
            chown_to_postgres(&root)?;
            let mut cmd = owner_command(&bin.join("initdb"));
            cmd.arg("-D").arg(&data).args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8", "--no-locale"]);
            cmd.arg(format!("--pwfile={}", pwfile.display()));
            if throwaway {
                cmd.arg("--no-sync");
            }
            let result = run(cmd, "initdb");
            let _ = std::fs::remove_file(&pwfile);
            result?;
        }
        Ok(Cluster { root, bin, port: 0, superuser_password: superuser_password.to_owned(), running: false })
    }

    fn usable_root(preferred: &Path) -> Result<PathBuf> {
        if let Ok(target) = std::fs::read_link(preferred) {
            return Ok(target);
        }
        std::fs::create_dir_all(preferred)?;
        chown_to_postgres(preferred)?;
        if owner_can_use(preferred) {
            return Ok(preferred.to_path_buf());
        }
        let canonical = preferred.canonicalize()?;
        let tag: String =
            format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(canonical.to_string_lossy().as_bytes()))
                .chars()
                .take(16)
                .collect();
        let fallback = PathBuf::from("/var/tmp/chatedge/clusters").join(tag);
        std::fs::create_dir_all(&fallback)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Traversable so the postgres user can reach its own directory below.
            let _ = std::fs::set_permissions("/var/tmp/chatedge", std::fs::Permissions::from_mode(0o755));
            let _ = std::fs::set_permissions("/var/tmp/chatedge/clusters", std::fs::Permissions::from_mode(0o755));
        }
        chown_to_postgres(&fallback)?;
        std::fs::remove_dir(preferred).ok();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&fallback, preferred).ok();
        tracing::info!("postgres user cannot reach {}; cluster lives in {}", preferred.display(), fallback.display());
        Ok(fallback)
    }

    /// Starts the server on 127.0.0.1:`port` and waits until it accepts connections.
    pub fn start(&mut self, port: u16) -> Result<()> {
        let mut cmd = owner_command(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.root.join("data"));
        cmd.arg("-l").arg(self.root.join("postgres.log"));
        cmd.args(["-w", "-t", "60", "-o"]);
        cmd.arg(format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200", self.root.display()));
        cmd.arg("start");
        run(cmd, "pg_ctl start")
            .with_context(|| format!("starting postgres (log: {})", self.root.join("postgres.log").display()))?;
        self.port = port;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast mode: in-flight transactions are rolled back).
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = owner_command(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.root.join("data")).args(["-m", "fast", "-w", "stop"]);
        run(cmd, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// The directory holding the data directory, log and socket.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A connection URL for `user`.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/postgres", self.port)
    }

    /// The superuser's URL (migrations, test setup).
    pub fn superuser_url(&self) -> String {
        self.url("postgres", &self.superuser_password)
    }

    /// `host:port`, for `allowed_outbound_hosts`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Removes the cluster's files (throwaway clusters).
    pub fn destroy(mut self) -> Result<()> {
        self.stop()?;
        std::fs::remove_dir_all(&self.root)?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping postgres: {e}");
        }
    }
}

/// Secrets the dev stack generates once and keeps in `.chatedge/secrets.json` (mode 0600).
#[derive(Serialize, Deserialize)]
pub struct DevSecrets {
    /// HS256 secret, as Supabase's `JWT_SECRET`.
    pub jwt_secret: String,
    /// Password of the cluster's `postgres` superuser.
    pub postgres_password: String,
    /// Password of the `authenticator` role the functions connect as.
    pub authenticator_password: String,
    /// The demo user's id.
    pub demo_user_id: String,
}

impl DevSecrets {
    /// Reads the secrets file, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("secrets.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()));
        }
        std::fs::create_dir_all(state_dir)?;
        let secrets = DevSecrets {
            jwt_secret: random_hex(32),
            postgres_password: random_hex(16),
            authenticator_password: random_hex(16),
            demo_user_id: uuid::Uuid::new_v4().to_string(),
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&secrets)?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(secrets)
    }
}

/// Email of the dev stack's demo user.
pub const DEMO_EMAIL: &str = "demo@chatedge.local";

/// After migrations: lets `authenticator` log in with `password` and makes sure a user exists.
pub async fn prepare_database(
    superuser_url: &str,
    authenticator_password: &str,
    user_id: &str,
    email: &str,
) -> Result<()> {
    let (client, connection) = tokio_postgres::connect(superuser_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // Passwords cannot be bind parameters in ALTER ROLE; this one is our own hex string.
    if !authenticator_password.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("authenticator password must be hex");
    }
    client.batch_execute(&format!("alter role authenticator with login password '{authenticator_password}'")).await?;
    let id: uuid::Uuid = user_id.parse()?;
    client
        .execute(
            "insert into auth.users (id, aud, role, email, email_confirmed_at) values ($1, 'authenticated', 'authenticated', $2, now()) on conflict (id) do nothing",
            &[&id, &email],
        )
        .await?;
    Ok(())
}
