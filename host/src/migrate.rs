//! `chatedge migrate`: applies `migrations/*.sql` in order, once each, recorded in
//! `chatedge.schema_migrations` with a checksum so that an edited, already-applied file is caught.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Earlier texts of migrations changed in a way that leaves a database they made as it is
/// (version, SHA-256 of the earlier text): a database that applied one is not refused. 0002
/// created pgcrypto unconditionally; it now does so only on Postgres < 13 (where
/// gen_random_uuid() needs it), so that servers without pgcrypto can be migrated.
const COMPATIBLE_REVISIONS: &[(&str, &str)] =
    &[("0002", "d3b229234e1d6bf5feba89851b13e17896aaa1552874fe6e47d5b0b5025e907c")];

/// Whether a recorded checksum is this migration's, or an earlier text's it replaced compatibly.
fn same_migration(version: &str, recorded: &str, current: &str) -> bool {
    recorded == current || COMPATIBLE_REVISIONS.iter().any(|(v, c)| *v == version && *c == recorded)
}

/// One migration file.
#[derive(Debug)]
pub struct Migration {
    /// Sort key and identity: the file name's leading number (`0001`).
    pub version: String,
    /// File name.
    pub name: String,
    sql: String,
    checksum: String,
}

/// Reads `dir` in name order; every file must be `<digits>_<name>.sql`.
pub fn read_dir(dir: &Path) -> Result<Vec<Migration>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    paths.sort();
    let mut out: Vec<Migration> = Vec::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let version = name.split('_').next().unwrap_or_default().to_owned();
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            bail!("migration file '{name}' must be named <number>_<name>.sql");
        }
        if out.iter().any(|m| m.version == version) {
            bail!("two migrations share version {version}");
        }
        let sql = std::fs::read_to_string(&path)?;
        let checksum = format!("{:x}", Sha256::digest(sql.as_bytes()));
        out.push(Migration { version, name, sql, checksum });
    }
    Ok(out)
}

/// Connects with `db_url` (a role that may create schemas and roles) and applies what is missing.
/// Returns the names applied now.
pub async fn migrate(db_url: &str, dir: &Path) -> Result<Vec<String>> {
    let migrations = read_dir(dir)?;
    let mut client = crate::pgtls::connect(db_url).await.context("connecting to the database for migrations")?;
    client
        .batch_execute(
            "create schema if not exists chatedge;
             create table if not exists chatedge.schema_migrations (
               version text primary key,
               name text not null,
               checksum text not null,
               applied_at timestamptz not null default now());
             select pg_advisory_lock(hashtext('chatedge.schema_migrations'));",
        )
        .await
        .context("preparing the migrations table")?;
    let result = apply(&mut client, &migrations).await;
    let _ = client.batch_execute("select pg_advisory_unlock(hashtext('chatedge.schema_migrations'))").await;
    result
}

async fn apply(client: &mut tokio_postgres::Client, migrations: &[Migration]) -> Result<Vec<String>> {
    let applied: Vec<(String, String, String)> = client
        .query("select version, name, checksum from chatedge.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut done = Vec::new();
    for m in migrations {
        if let Some((_, name, checksum)) = applied.iter().find(|(v, _, _)| *v == m.version) {
            if !same_migration(&m.version, checksum, &m.checksum) {
                bail!("migration {} was changed after it was applied (as {name}); add a new migration instead", m.name);
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(&m.sql).await.with_context(|| format!("applying {}", m.name))?;
        tx.execute(
            "insert into chatedge.schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!("applied migration {}", m.name);
        done.push(m.name.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_rejects_bad_names() {
        let dir = std::env::temp_dir().join(format!("chatedge-migrate-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0002_b.sql"), "select 2").unwrap();
        std::fs::write(dir.join("0001_a.sql"), "select 1").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let m = read_dir(&dir).unwrap();
        assert_eq!(m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["0001_a.sql", "0002_b.sql"]);
        std::fs::write(dir.join("x_bad.sql"), "").unwrap();
        assert!(read_dir(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_repository_migrations_are_well_formed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let m = read_dir(&dir).unwrap();
        assert!(m.len() >= 3);
        assert_eq!(m[0].name, "0001_auth_stub.sql");
    }

    #[test]
    fn an_edited_migration_is_refused_unless_its_earlier_text_is_listed() {
        assert!(same_migration("0003", "abc", "abc"));
        assert!(!same_migration("0003", "abc", "def"));
        let (version, earlier) = COMPATIBLE_REVISIONS[0];
        assert!(same_migration(version, earlier, "anything-now"));
        assert!(!same_migration("0001", earlier, "anything-now"));
    }
}
