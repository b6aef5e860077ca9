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

/// Creates (or replaces) `path` with `contents`, readable by its owner only from the first
/// byte: the file is made 0600 before anything is written, never chmod'ed after.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Makes sure `dir` is a folder of ours (not a link, not another user's) that nobody else may
/// write in, creating it with `mode` if missing. Shared places such as /var/tmp are where
/// another local user could plant a folder or a link for us to write secrets into.
pub fn private_dir(dir: &Path, mode: u32) -> Result<()> {
    private_dir_of(dir, mode, &[euid()])
}

/// A cluster's folder: as [`private_dir`], but it may also belong to the cluster's owner (the
/// `postgres` user when we run as root, who was handed it on creation).
fn cluster_dir(dir: &Path) -> Result<()> {
    let mut owners = vec![euid()];
    owners.extend(cluster_owner_uid());
    private_dir_of(dir, 0o700, &owners)
}

/// The `postgres` user's uid when clusters run as it.
fn cluster_owner_uid() -> Option<u32> {
    if !as_postgres() {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn private_dir_of(dir: &Path, mode: u32, owners: &[u32]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        bail!("{} is not a folder (a link or a file is in its place); remove it", dir.display());
    }
    if !owners.contains(&meta.uid()) {
        bail!("{} belongs to another user (uid {}); remove it or choose another place", dir.display(), meta.uid());
    }
    if meta.mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
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

/// Directory of `initdb`, `pg_ctl` and `postgres`: `CHATEDGE_PG_BIN` (`./dev` points it at the
/// pinned PostgreSQL with pgvector), then the system's ([`system_pg_bin_dir`]).
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CHATEDGE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    system_pg_bin_dir()
}

/// The system's PostgreSQL server binaries: the newest `/usr/lib/postgresql/*/bin`, then
/// `pg_config --bindir`. Tests that need what the pinned server lacks (TLS: it is built
/// without OpenSSL) or a server without pgvector use these.
pub fn system_pg_bin_dir() -> Result<PathBuf> {
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

/// Hands files a cluster reads (certificates, keys) to its owner, readable by it alone.
pub fn chown_for_cluster(paths: &[&Path]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for path in paths {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        chown_to_postgres(path)?;
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

/// What a previous run left behind in a cluster's data folder.
enum Orphan {
    /// Nothing: a clean start.
    None,
    /// A server still running.
    Running { pid: u32, port: u16 },
    /// A lock file whose server is gone.
    StaleLock,
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
    /// Extra `postgres` options (`-c name=value …`) for the next start.
    server_options: String,
}

impl Cluster {
    /// Opens the cluster under `preferred` (initialising it on first use). When we run as root and
    /// the `postgres` user cannot reach that path (e.g. under /root), the cluster lives under
    /// /var/tmp/chatedge/ instead and `preferred` becomes a symlink to it.
    pub fn open_or_init(preferred: &Path, superuser_password: &str, throwaway: bool) -> Result<Cluster> {
        Self::open_or_init_with(preferred, superuser_password, throwaway, None)
    }

    /// [`Cluster::open_or_init`] with the server binaries named (`None`: [`pg_bin_dir`]). An
    /// existing cluster keeps the binaries that made it (recorded in its `pg_bin` file; one made
    /// before that file existed by the system's server of its major version), so a data folder
    /// is never opened by a server of another major version.
    pub fn open_or_init_with(
        preferred: &Path,
        superuser_password: &str,
        throwaway: bool,
        bin: Option<PathBuf>,
    ) -> Result<Cluster> {
        let root = Self::usable_root(preferred)?;
        let data = root.join("data");
        let recorded = std::fs::read_to_string(root.join("pg_bin")).ok().map(|s| PathBuf::from(s.trim()));
        let bin = match (recorded, data.join("PG_VERSION").exists()) {
            (Some(dir), true) if dir.join("pg_ctl").exists() => dir,
            (_, true) => {
                let major = std::fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default().trim().to_owned();
                let system = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
                if system.join("pg_ctl").exists() {
                    system
                } else {
                    bin.map(Ok).unwrap_or_else(pg_bin_dir)?
                }
            }
            (_, false) => bin.map(Ok).unwrap_or_else(pg_bin_dir)?,
        };
        if !data.join("PG_VERSION").exists() {
            std::fs::write(root.join("pg_bin"), bin.to_string_lossy().as_bytes())?;
            cluster_dir(&root)?;
            let pwfile = root.join("pwfile");
            write_private(&pwfile, format!("{superuser_password}\n").as_bytes())?;
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
        Ok(Cluster {
            root,
            bin,
            port: 0,
            superuser_password: superuser_password.to_owned(),
            running: false,
            server_options: String::new(),
        })
    }

    /// Extra server options for its starts, e.g. `-c fsync=off` for a throwaway test server
    /// (settings a crash may lose everything under: never for the dev stack's own data).
    pub fn with_server_options(mut self, options: &str) -> Self {
        self.server_options = options.to_owned();
        self
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
        // Ours, and traversable (not listable) so the postgres user can reach its folder below.
        private_dir(Path::new("/var/tmp/chatedge"), 0o711)?;
        private_dir(Path::new("/var/tmp/chatedge/clusters"), 0o711)?;
        cluster_dir(&fallback)?;
        chown_to_postgres(&fallback)?;
        std::fs::remove_dir(preferred).ok();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&fallback, preferred).ok();
        tracing::info!("postgres user cannot reach {}; cluster lives in {}", preferred.display(), fallback.display());
        Ok(fallback)
    }

    /// Starts the server on 127.0.0.1:`port` and waits until it accepts connections. A server
    /// left running on this cluster by a run that did not stop it (the host was killed) is
    /// adopted as it is, on its own port; a lock file left by a server that is gone is removed.
    pub fn start(&mut self, port: u16) -> Result<()> {
        match self.orphan()? {
            Orphan::Running { pid, port } => {
                tracing::info!("reusing the Postgres server a previous run left running (pid {pid}, port {port})");
                self.port = port;
                self.running = true;
                return Ok(());
            }
            Orphan::StaleLock => {
                tracing::info!("removing a stale Postgres lock file left by a previous run");
                std::fs::remove_file(self.root.join("data/postmaster.pid"))?;
            }
            Orphan::None => {}
        }
        let mut cmd = owner_command(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.root.join("data"));
        cmd.arg("-l").arg(self.root.join("postgres.log"));
        cmd.args(["-w", "-t", "60", "-o"]);
        cmd.arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 {}",
            self.root.display(),
            self.server_options
        ));
        cmd.arg("start");
        if let Err(e) = run(cmd, "pg_ctl start") {
            let log = std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "starting postgres: {e:#}\nlast lines of {}:\n{}",
                self.root.join("postgres.log").display(),
                tail.join("\n")
            );
        }
        self.port = port;
        self.running = true;
        Ok(())
    }

    /// What a previous run left: `postmaster.pid` names the server's pid (line 1) and port
    /// (line 4).
    fn orphan(&self) -> Result<Orphan> {
        let Ok(lock) = std::fs::read_to_string(self.root.join("data/postmaster.pid")) else {
            return Ok(Orphan::None);
        };
        let mut lines = lock.lines();
        let pid: Option<u32> = lines.next().and_then(|l| l.trim().parse().ok());
        let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());
        let Some(pid) = pid else { return Ok(Orphan::StaleLock) };
        // Alive and a postgres server (a recycled pid belonging to something else is not ours).
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_postgres = String::from_utf8_lossy(&command).contains("postgres");
        match (is_postgres, port) {
            (true, Some(port)) => Ok(Orphan::Running { pid, port }),
            (true, None) => bail!(
                "a Postgres server (pid {pid}) is running on {} with no port in its lock file",
                self.root.display()
            ),
            (false, _) => Ok(Orphan::StaleLock),
        }
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
        private_dir(state_dir, 0o700)?;
        let secrets = DevSecrets {
            jwt_secret: random_hex(32),
            postgres_password: random_hex(16),
            authenticator_password: random_hex(16),
            demo_user_id: uuid::Uuid::new_v4().to_string(),
        };
        write_private(&path, &serde_json::to_vec_pretty(&secrets)?)?;
        Ok(secrets)
    }
}

/// Email of the dev stack's demo user.
pub const DEMO_EMAIL: &str = "demo@chatedge.local";

/// After migrations, over a superuser connection: lets `authenticator` log in with `password`
/// and makes sure a user exists.
pub async fn prepare_database(
    client: &tokio_postgres::Client,
    authenticator_password: &str,
    user_id: &str,
    email: &str,
) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_private_from_the_first_byte() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secrets.json");
        write_private(&path, b"{\"k\": 1}")?;
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        // Replacing keeps it private (a new file renamed over the old one).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        write_private(&path, b"{}")?;
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path)?, b"{}");
        Ok(())
    }

    #[test]
    fn private_dirs_refuse_links_and_tighten_modes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        private_dir(&state, 0o700)?;
        assert_eq!(std::fs::metadata(&state)?.permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777))?;
        private_dir(&state, 0o700)?;
        assert_eq!(std::fs::metadata(&state)?.permissions().mode() & 0o777, 0o700, "world-writable is tightened");
        // A link planted where the folder should be is refused, not followed.
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(dir.path(), &planted)?;
        assert!(private_dir(&planted, 0o700).is_err());
        if euid() == 0 {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs)?;
            std::process::Command::new("chown").arg("nobody").arg(&theirs).status()?;
            assert!(private_dir(&theirs, 0o700).is_err(), "another user's folder is refused");
        }
        Ok(())
    }
}
