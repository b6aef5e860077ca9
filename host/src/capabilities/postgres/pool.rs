//! The connection pools: one per database address and server thread, TLS as `sslmode` says,
//! every destination (hostaddr included) checked against the component's allowed hosts, and a
//! connection dropped mid-transaction rolled back before it returns to the pool.

use crate::capabilities::outbound::default_port;
use anyhow::Result;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::v4;

/// The pools of every database address components opened.
///
/// One pool per address *per server thread*: a connection's I/O task runs on the runtime that
/// opened it, so sharing it with another thread's runtime would make each thread's queries
/// depend on the other staying alive and unblocked (and a thread that finishes draining at
/// shutdown would take its connections down under the other's in-flight requests).
pub struct PgPools {
    pools: Mutex<HashMap<(std::thread::ThreadId, String), Pool>>,
    max_size: usize,
}

impl PgPools {
    /// `max_size` connections per address and server thread.
    pub fn new(max_size: usize) -> Self {
        PgPools { pools: Mutex::new(HashMap::new()), max_size }
    }

    /// Connections in use, idle, and the capacity, over every pool (for the metrics).
    pub fn status(&self) -> (usize, usize, usize) {
        let Ok(pools) = self.pools.lock() else { return (0, 0, 0) };
        pools
            .values()
            .map(Pool::status)
            .fold((0, 0, 0), |(u, i, m), s| (u + s.size.saturating_sub(s.available), i + s.available, m + s.max_size))
    }

    pub(super) fn pool(&self, address: &str) -> Result<Pool, v4::Error> {
        let mut pools = self.pools.lock().map_err(|_| v4::Error::Other("pool registry poisoned".into()))?;
        let key = (std::thread::current().id(), address.to_owned());
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let target = crate::pgtls::Target::parse(address)
            .map_err(|e| v4::Error::ConnectionFailed(format!("invalid address: {e:#}")))?;
        let connector = target.connector().map_err(|e| v4::Error::ConnectionFailed(format!("TLS: {e:#}")))?;
        let mut config = target.config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager =
            Manager::from_config(config, connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(self.max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| v4::Error::ConnectionFailed(e.to_string()))?;
        pools.insert(key, pool.clone());
        Ok(pool)
    }
}

/// Every `(host, port)` an address names, for the outbound policy: each host name, and each
/// `hostaddr` (the address actually dialled when given, so it must be allowed as well, or a URL
/// could name an allowed host and connect elsewhere).
pub fn destinations(address: &str) -> Result<Vec<(String, u16)>> {
    let config = crate::pgtls::Target::parse(address)?.config;
    let ports = config.get_ports();
    let default = default_port("postgres").unwrap_or(5432);
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(default);
    let mut out: Vec<(String, u16)> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            (host, port(i))
        })
        .collect();
    out.extend(config.get_hostaddrs().iter().enumerate().map(|(i, ip)| (ip.to_string(), port(i))));
    Ok(out)
}

/// The guest's `connection` resource: one pooled client for its whole life.
pub struct PgConnection {
    pub(super) client: Option<Object>,
    pub(super) in_transaction: bool,
}

impl PgConnection {
    pub(super) fn client(&self) -> Result<&Object, v4::Error> {
        self.client.as_ref().ok_or_else(|| v4::Error::ConnectionFailed("connection closed".into()))
    }

    /// Tracks BEGIN / COMMIT so that a drop mid-transaction can roll back.
    pub(super) fn note_statement(&mut self, statement: &str) {
        let head = statement.trim_start().get(..8).unwrap_or(statement.trim_start()).to_ascii_lowercase();
        if head.starts_with("begin") || head.starts_with("start") {
            self.in_transaction = true;
        } else if ["commit", "rollback", "end", "abort"].iter().any(|k| head.starts_with(k)) {
            self.in_transaction = false;
        }
    }
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        if let (Some(client), true) = (self.client.take(), self.in_transaction) {
            // Off the request's path: the connection rejoins the pool once the rollback is done,
            // or is discarded with the client if the rollback fails.
            tokio::spawn(async move {
                if client.simple_query("rollback").await.is_err() {
                    drop(deadpool_postgres::Object::take(client));
                }
            });
        }
    }
}
