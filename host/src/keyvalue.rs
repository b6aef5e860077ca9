//! Key-value stores: `fermyon:spin/key-value@2.0.0` and `wasi:keyvalue` (store, atomics, batch)
//! over the same in-memory stores, shared by every instance of the app in this process. A
//! component may open only the stores its manifest lists in `key_value_stores`, as in Spin.
//!
//! In-memory means per process: state does not survive a restart and is not shared between
//! two `chatedge up` processes. Anything that must be exact across instances (the rate limiter's
//! default backend) lives in Postgres; a Spin host with a Redis-backed store gives the KV backend
//! the same reach.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bindings::fermyon::spin::key_value as spin_kv;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::runtime::RequestState;
use wasmtime::component::Resource;

type Map = HashMap<String, Vec<u8>>;

/// All stores of the app, by label, created on first open.
#[derive(Default)]
pub struct KvStores {
    stores: Mutex<HashMap<String, Arc<Mutex<Map>>>>,
}

impl KvStores {
    fn open(&self, label: &str) -> Arc<Mutex<Map>> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.entry(label.to_owned()).or_default().clone()
    }
}

/// An open store (`store` / `bucket` resources).
pub struct Bucket {
    map: Arc<Mutex<Map>>,
}

impl Bucket {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A poisoned lock only means another request panicked mid-update of a plain map.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    // The operations both interfaces share; each interface only maps the error type.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().get(key).cloned()
    }

    fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        check(&key, Some(&value))?;
        self.lock().insert(key, value);
        Ok(())
    }

    fn delete(&self, key: &str) {
        self.lock().remove(key);
    }

    fn exists(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    fn sorted_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().keys().cloned().collect();
        keys.sort();
        keys
    }
}

/// A compare-and-swap handle: the value seen when it was created.
pub struct Cas {
    map: Arc<Mutex<Map>>,
    key: String,
    seen: Option<Vec<u8>>,
}

/// Longest key, as Spin limits it.
const MAX_KEY_BYTES: usize = 255;
/// Largest value.
const MAX_VALUE_BYTES: usize = 1 << 20;

impl RequestState {
    fn kv_allowed(&self, label: &str) -> bool {
        let ok = self.component.key_value_stores.iter().any(|s| s == label);
        if !ok {
            tracing::warn!("component '{}': key-value store '{label}' is not in key_value_stores", self.component.id);
        }
        ok
    }

    fn kv_open(&mut self, label: &str) -> wasmtime::Result<Option<Resource<Bucket>>> {
        if !self.kv_allowed(label) {
            return Ok(None);
        }
        let map = self.kv.open(label);
        Ok(Some(self.table.push(Bucket { map })?))
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
        Ok(self.kv_open(&label)?.ok_or(spin_kv::Error::AccessDenied))
    }

    async fn get(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        Ok(Ok(self.table.get(&b)?.get(&key)))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(self.table.get(&b)?.set(key, value).map_err(spin_kv::Error::Other))
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        self.table.get(&b)?.delete(&key);
        Ok(Ok(()))
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        Ok(Ok(self.table.get(&b)?.exists(&key)))
    }

    async fn get_keys(&mut self, b: Resource<Bucket>) -> wasmtime::Result<Result<Vec<String>, spin_kv::Error>> {
        Ok(Ok(self.table.get(&b)?.sorted_keys()))
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl store::Host for RequestState {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        Ok(self.kv_open(&identifier)?.ok_or(store::Error::AccessDenied))
    }
}

impl store::HostBucket for RequestState {
    async fn get(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self.table.get(&b)?.get(&key)))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self.table.get(&b)?.set(key, value).map_err(store::Error::Other))
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), store::Error>> {
        self.table.get(&b)?.delete(&key);
        Ok(Ok(()))
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, store::Error>> {
        Ok(Ok(self.table.get(&b)?.exists(&key)))
    }

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        // One page, in key order, starting after `cursor`.
        let mut keys = self.table.get(&b)?.sorted_keys();
        if let Some(c) = cursor {
            keys.retain(|k| *k > c);
        }
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
        let bucket = self.table.get(&b)?;
        let mut map = bucket.lock();
        let current = match map.get(&key) {
            None => 0,
            Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                Ok(bytes) => i64::from_le_bytes(bytes),
                Err(_) => return Ok(Err(store::Error::Other("value is not a 64-bit counter".into()))),
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return Ok(Err(store::Error::Other("counter overflow".into())));
        };
        map.insert(key, next.to_le_bytes().to_vec());
        Ok(Ok(next))
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        if let Err(e) = check(&cas.key, Some(&value)) {
            return Ok(Err(atomics::CasError::StoreError(store::Error::Other(e))));
        }
        let mut map = cas.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = map.get(&cas.key).cloned();
        if now == cas.seen {
            map.insert(cas.key, value);
            return Ok(Ok(()));
        }
        drop(map);
        let retry = self.table.push(Cas { map: cas.map, key: cas.key, seen: now })?;
        Ok(Err(atomics::CasError::CasFailed(retry)))
    }
}

impl atomics::HostCas for RequestState {
    async fn new(&mut self, b: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let bucket = self.table.get(&b)?;
        let seen = bucket.lock().get(&key).cloned();
        let map = bucket.map.clone();
        Ok(Ok(self.table.push(Cas { map, key, seen })?))
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
        let bucket = self.table.get(&b)?;
        let map = bucket.lock();
        Ok(Ok(keys
            .into_iter()
            .map(|k| {
                let v = map.get(&k).cloned();
                (k, v)
            })
            .collect()))
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
        self.table.get(&b)?.lock().extend(key_values);
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.table.get(&b)?;
        let mut map = bucket.lock();
        for k in keys {
            map.remove(&k);
        }
        Ok(Ok(()))
    }
}
