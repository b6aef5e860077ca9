//! Key-value stores: `fermyon:spin/key-value@2.0.0` and `wasi:keyvalue` (store, atomics, batch),
//! each label backed as the runtime config says, as Spin backs them:
//!
//! - `spin`: a SQLite file (Spin's own table layout, `spin_key_value`), so state survives a
//!   restart; the `default` store is one of these at `<state dir>/sqlite_key_value.db` unless
//!   the runtime config says otherwise;
//! - `redis`: a Redis server, shared by every host pointed at it (the `kv` rate-limit backend is
//!   exact across instances there; compare-and-swap is one Lua script);
//! - `memory`: this process alone, bounded ([`MAX_KEYS`], [`MAX_STORE_BYTES`]).
//!
//! A component may open only the stores its manifest lists in `key_value_stores`, and a store
//! must be `default` or configured, or the host refuses to start, as Spin does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::bindings::fermyon::spin::key_value as spin_kv;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::runtime::RequestState;
use wasmtime::component::Resource;

/// Most keys one in-memory store holds.
const MAX_KEYS: usize = 100_000;
/// Most bytes (keys and values) one in-memory store holds.
const MAX_STORE_BYTES: usize = 64 << 20;
/// Longest key, as Spin limits it.
const MAX_KEY_BYTES: usize = 255;
/// Largest value.
const MAX_VALUE_BYTES: usize = 1 << 20;

/// One in-memory store: the map and what it holds, bounded by [`MAX_KEYS`] and
/// [`MAX_STORE_BYTES`] (a set past either is refused; deleting makes room again).
#[derive(Default)]
pub struct Map {
    entries: HashMap<String, Vec<u8>>,
    bytes: usize,
}

impl Map {
    fn insert(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let old = self.entries.get(&key).map(|v| key.len() + v.len()).unwrap_or(0);
        let bytes = self.bytes - old + key.len() + value.len();
        if bytes > MAX_STORE_BYTES || (old == 0 && self.entries.len() >= MAX_KEYS) {
            return Err(format!("the store is full ({MAX_KEYS} keys or {MAX_STORE_BYTES} bytes)"));
        }
        self.bytes = bytes;
        self.entries.insert(key, value);
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        if let Some(v) = self.entries.remove(key) {
            self.bytes -= key.len() + v.len();
        }
    }
}

/// How one store label is backed (`[key_value_store.<label>]` of the runtime config).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// In this process only.
    Memory,
    /// A SQLite file.
    Spin {
        /// The database file.
        path: PathBuf,
    },
    /// A Redis server.
    Redis {
        /// `redis://host:port[/db]`.
        url: String,
    },
}

/// An opened store.
#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<Map>>),
    Sqlite(Arc<Mutex<rusqlite::Connection>>, String),
    Redis(redis::aio::MultiplexedConnection),
}

/// All stores of the app, by label, opened on first use.
pub struct KvStores {
    configs: HashMap<String, StoreConfig>,
    opened: tokio::sync::Mutex<HashMap<String, Backend>>,
}

impl Default for KvStores {
    fn default() -> Self {
        KvStores::new(HashMap::new())
    }
}

fn other(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `compare-and-swap` on Redis: set `KEYS[1]` to `ARGV[2]` when it holds `ARGV[1]` (or is absent
/// and `ARGV[3]` is "absent"); 1 when swapped.
const REDIS_CAS: &str = r#"
local now = redis.call('GET', KEYS[1])
if (ARGV[3] == 'absent' and now == false) or (ARGV[3] == 'present' and now == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

impl KvStores {
    /// Stores backed as `configs` says; a label not in it (only `default` may be used so) is kept
    /// in memory.
    pub fn new(configs: HashMap<String, StoreConfig>) -> Self {
        KvStores { configs, opened: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Whether `label` can be opened (it is `default` or configured).
    pub fn is_defined(&self, label: &str) -> bool {
        label == "default" || self.configs.contains_key(label)
    }

    /// What backs `label`, for the start-up summary.
    pub fn describe(&self, label: &str) -> String {
        match self.configs.get(label).unwrap_or(&StoreConfig::Memory) {
            StoreConfig::Memory => "in memory".to_owned(),
            StoreConfig::Spin { path } => format!("SQLite at {}", path.display()),
            StoreConfig::Redis { url } => format!("Redis at {}", redact_url(url)),
        }
    }

    async fn open(&self, label: &str) -> Result<Backend, String> {
        let mut opened = self.opened.lock().await;
        if let Some(b) = opened.get(label) {
            return Ok(b.clone());
        }
        let backend = match self.configs.get(label).cloned().unwrap_or(StoreConfig::Memory) {
            StoreConfig::Memory => Backend::Memory(Arc::default()),
            StoreConfig::Spin { path } => {
                let label = label.to_owned();
                let conn = tokio::task::spawn_blocking(move || -> Result<rusqlite::Connection, String> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(other)?;
                    }
                    let conn = rusqlite::Connection::open(&path).map_err(other)?;
                    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(other)?;
                    conn.execute_batch(
                        "pragma journal_mode = wal;
                         create table if not exists spin_key_value (
                           store text not null, key text not null, value blob not null,
                           primary key (store, key));",
                    )
                    .map_err(other)?;
                    Ok(conn)
                })
                .await
                .map_err(other)??;
                Backend::Sqlite(Arc::new(Mutex::new(conn)), label)
            }
            StoreConfig::Redis { url } => {
                let client = redis::Client::open(url.as_str()).map_err(other)?;
                Backend::Redis(client.get_multiplexed_tokio_connection().await.map_err(other)?)
            }
        };
        opened.insert(label.to_owned(), backend.clone());
        Ok(backend)
    }
}

/// A Redis URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Runs `f` on a SQLite store's connection, off the async threads.
async fn sqlite<T: Send + 'static>(
    conn: &Arc<Mutex<rusqlite::Connection>>,
    f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard).map_err(other)
    })
    .await
    .map_err(other)?
}

impl Backend {
    fn memory(map: &Arc<Mutex<Map>>) -> std::sync::MutexGuard<'_, Map> {
        // A poisoned lock only means another request panicked mid-update of a plain map.
        map.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Backend::Memory(m) => Ok(Self::memory(m).entries.get(key).cloned()),
            Backend::Sqlite(c, store) => {
                let (store, key) = (store.clone(), key.to_owned());
                sqlite(c, move |c| {
                    use rusqlite::OptionalExtension;
                    c.query_row("select value from spin_key_value where store = ?1 and key = ?2", (store, key), |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .await
            }
            Backend::Redis(r) => redis::cmd("GET").arg(key).query_async(&mut r.clone()).await.map_err(other),
        }
    }

    async fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        check(&key, Some(&value))?;
        match self {
            Backend::Memory(m) => Self::memory(m).insert(key, value),
            Backend::Sqlite(c, store) => {
                let store = store.clone();
                sqlite(c, move |c| {
                    c.execute(
                        "insert into spin_key_value (store, key, value) values (?1, ?2, ?3) \
                         on conflict (store, key) do update set value = excluded.value",
                        (store, key, value),
                    )
                    .map(|_| ())
                })
                .await
            }
            Backend::Redis(r) => redis::cmd("SET").arg(key).arg(value).query_async(&mut r.clone()).await.map_err(other),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        match self {
            Backend::Memory(m) => {
                Self::memory(m).remove(key);
                Ok(())
            }
            Backend::Sqlite(c, store) => {
                let (store, key) = (store.clone(), key.to_owned());
                sqlite(c, move |c| {
                    c.execute("delete from spin_key_value where store = ?1 and key = ?2", (store, key)).map(|_| ())
                })
                .await
            }
            Backend::Redis(r) => {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut r.clone()).await.map(|_| ()).map_err(other)
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, String> {
        match self {
            Backend::Memory(m) => Ok(Self::memory(m).entries.contains_key(key)),
            _ => Ok(self.get(key).await?.is_some()),
        }
    }

    async fn sorted_keys(&self) -> Result<Vec<String>, String> {
        let mut keys: Vec<String> = match self {
            Backend::Memory(m) => Self::memory(m).entries.keys().cloned().collect(),
            Backend::Sqlite(c, store) => {
                let store = store.clone();
                sqlite(c, move |c| {
                    let mut stmt = c.prepare("select key from spin_key_value where store = ?1")?;
                    let keys = stmt.query_map([store], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>();
                    keys
                })
                .await?
            }
            Backend::Redis(r) => redis::cmd("KEYS").arg("*").query_async(&mut r.clone()).await.map_err(other)?,
        };
        keys.sort();
        Ok(keys)
    }

    async fn increment(&self, key: String, delta: i64) -> Result<i64, String> {
        let parse = |v: Option<Vec<u8>>| -> Result<i64, String> {
            match v {
                None => Ok(0),
                Some(v) => <[u8; 8]>::try_from(v.as_slice())
                    .map(i64::from_le_bytes)
                    .map_err(|_| "value is not a 64-bit counter".to_owned()),
            }
        };
        match self {
            Backend::Memory(m) => {
                let mut map = Self::memory(m);
                let next = parse(map.entries.get(&key).cloned())?.checked_add(delta).ok_or("counter overflow")?;
                map.insert(key, next.to_le_bytes().to_vec())?;
                Ok(next)
            }
            Backend::Sqlite(c, store) => {
                let store = store.clone();
                let next = sqlite(c, move |c| {
                    use rusqlite::OptionalExtension;
                    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let current: Option<Vec<u8>> = tx
                        .query_row(
                            "select value from spin_key_value where store = ?1 and key = ?2",
                            (&store, &key),
                            |r| r.get(0),
                        )
                        .optional()?;
                    let next = match parse(current).map(|n| n.checked_add(delta)) {
                        Ok(Some(n)) => n,
                        Ok(None) => return Ok(Err("counter overflow".to_owned())),
                        Err(e) => return Ok(Err(e)),
                    };
                    tx.execute(
                        "insert into spin_key_value (store, key, value) values (?1, ?2, ?3) \
                         on conflict (store, key) do update set value = excluded.value",
                        (&store, &key, next.to_le_bytes().to_vec()),
                    )?;
                    tx.commit()?;
                    Ok(Ok(next))
                })
                .await??;
                Ok(next)
            }
            Backend::Redis(r) => {
                redis::cmd("INCRBY").arg(key).arg(delta).query_async(&mut r.clone()).await.map_err(other)
            }
        }
    }

    /// Sets `key` to `value` if it still holds `seen`; `Ok(false)` when it moved on.
    async fn swap(&self, key: String, seen: Option<Vec<u8>>, value: Vec<u8>) -> Result<bool, String> {
        check(&key, Some(&value))?;
        match self {
            Backend::Memory(m) => {
                let mut map = Self::memory(m);
                if map.entries.get(&key) != seen.as_ref() {
                    return Ok(false);
                }
                map.insert(key, value)?;
                Ok(true)
            }
            Backend::Sqlite(c, store) => {
                let store = store.clone();
                sqlite(c, move |c| {
                    use rusqlite::OptionalExtension;
                    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let now: Option<Vec<u8>> = tx
                        .query_row(
                            "select value from spin_key_value where store = ?1 and key = ?2",
                            (&store, &key),
                            |r| r.get(0),
                        )
                        .optional()?;
                    if now != seen {
                        return Ok(false);
                    }
                    tx.execute(
                        "insert into spin_key_value (store, key, value) values (?1, ?2, ?3) \
                         on conflict (store, key) do update set value = excluded.value",
                        (&store, &key, value),
                    )?;
                    tx.commit()?;
                    Ok(true)
                })
                .await
            }
            Backend::Redis(r) => {
                let (expected, mode) = match seen {
                    Some(v) => (v, "present"),
                    None => (Vec::new(), "absent"),
                };
                let swapped: i64 = redis::Script::new(REDIS_CAS)
                    .key(key)
                    .arg(expected)
                    .arg(value)
                    .arg(mode)
                    .invoke_async(&mut r.clone())
                    .await
                    .map_err(other)?;
                Ok(swapped == 1)
            }
        }
    }
}

/// An open store (`store` / `bucket` resources).
pub struct Bucket {
    backend: Backend,
}

/// A compare-and-swap handle: the value seen when it was created.
pub struct Cas {
    backend: Backend,
    key: String,
    seen: Option<Vec<u8>>,
}

impl RequestState {
    fn kv_allowed(&self, label: &str) -> bool {
        let ok = self.component.key_value_stores.iter().any(|s| s == label);
        if !ok {
            tracing::warn!("component '{}': key-value store '{label}' is not in key_value_stores", self.component.id);
        }
        ok
    }

    /// `Ok(None)`: access denied; `Err`: the store could not be opened.
    async fn kv_open(&mut self, label: &str) -> wasmtime::Result<Result<Option<Resource<Bucket>>, String>> {
        if !self.kv_allowed(label) {
            return Ok(Ok(None));
        }
        match self.kv.open(label).await {
            Ok(backend) => Ok(Ok(Some(self.table.push(Bucket { backend })?))),
            Err(e) => {
                tracing::error!("component '{}': key-value store '{label}': {e}", self.component.id);
                Ok(Err(e))
            }
        }
    }

    fn bucket(&self, b: &Resource<Bucket>) -> wasmtime::Result<Backend> {
        Ok(self.table.get(b)?.backend.clone())
    }
}

fn check(key: &str, value: Option<&[u8]>) -> Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("key longer than {MAX_KEY_BYTES} bytes"));
    }
    if value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
        return Err(format!("value larger than {MAX_VALUE_BYTES} bytes"));
    }
    Ok(())
}

impl spin_kv::Host for RequestState {}

impl spin_kv::HostStore for RequestState {
    async fn open(&mut self, label: String) -> wasmtime::Result<Result<Resource<Bucket>, spin_kv::Error>> {
        Ok(match self.kv_open(&label).await? {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(spin_kv::Error::AccessDenied),
            Err(e) => Err(spin_kv::Error::Other(e)),
        })
    }

    async fn get(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        Ok(self.bucket(&b)?.get(&key).await.map_err(spin_kv::Error::Other))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(self.bucket(&b)?.set(key, value).await.map_err(spin_kv::Error::Other))
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(self.bucket(&b)?.delete(&key).await.map_err(spin_kv::Error::Other))
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        Ok(self.bucket(&b)?.exists(&key).await.map_err(spin_kv::Error::Other))
    }

    async fn get_keys(&mut self, b: Resource<Bucket>) -> wasmtime::Result<Result<Vec<String>, spin_kv::Error>> {
        Ok(self.bucket(&b)?.sorted_keys().await.map_err(spin_kv::Error::Other))
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl store::Host for RequestState {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        Ok(match self.kv_open(&identifier).await? {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(store::Error::AccessDenied),
            Err(e) => Err(store::Error::Other(e)),
        })
    }
}

impl store::HostBucket for RequestState {
    async fn get(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self.bucket(&b)?.get(&key).await.map_err(store::Error::Other))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self.bucket(&b)?.set(key, value).await.map_err(store::Error::Other))
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self.bucket(&b)?.delete(&key).await.map_err(store::Error::Other))
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, store::Error>> {
        Ok(self.bucket(&b)?.exists(&key).await.map_err(store::Error::Other))
    }

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        // One page, in key order, starting after `cursor`.
        let keys = match self.bucket(&b)?.sorted_keys().await {
            Ok(mut keys) => {
                if let Some(c) = cursor {
                    keys.retain(|k| *k > c);
                }
                keys
            }
            Err(e) => return Ok(Err(store::Error::Other(e))),
        };
        Ok(Ok(store::KeyResponse { keys, cursor: None }))
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for RequestState {
    async fn increment(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        Ok(self.bucket(&b)?.increment(key, delta).await.map_err(store::Error::Other))
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        match cas.backend.swap(cas.key.clone(), cas.seen.clone(), value).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Someone else moved the value: a handle on what it is now, to decide again.
                let now = match cas.backend.get(&cas.key).await {
                    Ok(now) => now,
                    Err(e) => return Ok(Err(atomics::CasError::StoreError(store::Error::Other(e)))),
                };
                let retry = self.table.push(Cas { backend: cas.backend, key: cas.key, seen: now })?;
                Ok(Err(atomics::CasError::CasFailed(retry)))
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(store::Error::Other(e)))),
        }
    }
}

impl atomics::HostCas for RequestState {
    async fn new(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let backend = self.bucket(&b)?;
        let seen = match backend.get(&key).await {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(store::Error::Other(e))),
        };
        Ok(Ok(self.table.push(Cas { backend, key, seen })?))
    }

    async fn current(&mut self, cas: Resource<Cas>) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for RequestState {
    async fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let backend = self.bucket(&b)?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            match backend.get(&k).await {
                Ok(v) => out.push((k, v)),
                Err(e) => return Ok(Err(store::Error::Other(e))),
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        b: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        for (k, v) in &key_values {
            if let Err(e) = check(k, Some(v)) {
                return Ok(Err(store::Error::Other(e)));
            }
        }
        let backend = self.bucket(&b)?;
        for (k, v) in key_values {
            if let Err(e) = backend.set(k, v).await {
                return Ok(Err(store::Error::Other(e)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let backend = self.bucket(&b)?;
        for k in keys {
            if let Err(e) = backend.delete(&k).await {
                return Ok(Err(store::Error::Other(e)));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_memory_store_is_bounded() {
        let mut map = Map::default();
        let value = vec![0u8; 1 << 20];
        let mut stored = 0;
        while map.insert(format!("k{stored}"), value.clone()).is_ok() {
            stored += 1;
            assert!(stored <= 64, "more than {MAX_STORE_BYTES} bytes accepted");
        }
        assert!(stored >= 60);
        // Replacing a key within the budget still works; deleting makes room.
        assert!(map.insert("k0".into(), vec![1]).is_ok());
        map.remove("k1");
        assert!(map.insert("again".into(), value).is_ok());
        let mut keys = Map::default();
        for i in 0..MAX_KEYS {
            keys.insert(i.to_string(), Vec::new()).expect("within the key cap");
        }
        assert!(keys.insert("one more".into(), Vec::new()).is_err());
        assert!(keys.insert("0".into(), vec![1]).is_ok(), "an existing key may change");
    }

    #[tokio::test]
    async fn a_spin_store_keeps_its_data_in_spins_table_across_opens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kv.db");
        let configs = HashMap::from([("default".to_owned(), StoreConfig::Spin { path: path.clone() })]);
        let first = KvStores::new(configs.clone()).open("default").await.expect("opens");
        first.set("a".into(), b"1".to_vec()).await.expect("set");
        assert_eq!(first.increment("n".into(), 5).await, Ok(5));
        assert!(first.swap("a".into(), Some(b"1".to_vec()), b"2".to_vec()).await.expect("swap"));
        assert!(!first.swap("a".into(), Some(b"1".to_vec()), b"3".to_vec()).await.expect("stale swap"));
        assert!(first.swap("new".into(), None, b"x".to_vec()).await.expect("swap into nothing"));
        drop(first);
        // Another process (here: another set of stores) sees it all.
        let again = KvStores::new(configs).open("default").await.expect("opens again");
        assert_eq!(again.get("a").await, Ok(Some(b"2".to_vec())));
        assert_eq!(again.sorted_keys().await, Ok(vec!["a".to_owned(), "n".to_owned(), "new".to_owned()]));
        let rows: i64 = rusqlite::Connection::open(&path)
            .and_then(|c| c.query_row("select count(*) from spin_key_value where store = 'default'", [], |r| r.get(0)))
            .expect("Spin's table");
        assert_eq!(rows, 3);
    }

    #[test]
    fn redis_urls_are_logged_without_passwords() {
        assert_eq!(redact_url("redis://:hunter2@cache.internal:6379/0"), "redis://***@cache.internal:6379/0");
        assert_eq!(redact_url("redis://localhost:6379"), "redis://localhost:6379");
    }
}
