//! `fermyon:spin/redis@2.0.0`: outbound Redis, as Spin provides it. `open` is checked against the
//! component's `allowed_outbound_hosts` (`redis://host:port`); one multiplexed connection per
//! address is shared by every request of the process.

use std::collections::HashMap;

use crate::bindings::fermyon::spin::redis as v2;
use crate::runtime::RequestState;
use redis::AsyncCommands;
use wasmtime::component::Resource;

/// Connections by address.
#[derive(Default)]
pub struct RedisClients {
    by_address: tokio::sync::Mutex<HashMap<String, redis::aio::MultiplexedConnection>>,
}

/// The guest's `connection` resource.
pub struct RedisConnection {
    conn: redis::aio::MultiplexedConnection,
}

fn other(e: impl std::fmt::Display) -> v2::Error {
    v2::Error::Other(e.to_string())
}

fn typed(e: redis::RedisError) -> v2::Error {
    if e.kind() == redis::ErrorKind::TypeError {
        v2::Error::TypeError
    } else {
        other(e)
    }
}

/// Every result of `execute`, flattened as Spin flattens arrays.
fn results(value: redis::Value, out: &mut Vec<v2::RedisResult>) {
    use redis::Value as R;
    match value {
        R::Nil => out.push(v2::RedisResult::Nil),
        R::Int(i) => out.push(v2::RedisResult::Int64(i)),
        R::BulkString(b) => out.push(v2::RedisResult::Binary(b)),
        R::SimpleString(s) => out.push(v2::RedisResult::Status(s)),
        R::Okay => out.push(v2::RedisResult::Status("OK".into())),
        R::Array(items) | R::Set(items) => items.into_iter().for_each(|v| results(v, out)),
        R::Double(d) => out.push(v2::RedisResult::Binary(d.to_string().into_bytes())),
        R::Boolean(b) => out.push(v2::RedisResult::Int64(i64::from(b))),
        R::VerbatimString { text, .. } => out.push(v2::RedisResult::Binary(text.into_bytes())),
        R::BigNumber(n) => out.push(v2::RedisResult::Binary(n.to_string().into_bytes())),
        R::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            results(k, out);
            results(v, out);
        }),
        R::Attribute { data, .. } => results(*data, out),
        R::Push { data, .. } => data.into_iter().for_each(|v| results(v, out)),
        R::ServerError(e) => out.push(v2::RedisResult::Status(format!("{e:?}"))),
    }
}

impl RequestState {
    fn redis(&self, c: &Resource<RedisConnection>) -> wasmtime::Result<redis::aio::MultiplexedConnection> {
        Ok(self.table.get(c)?.conn.clone())
    }
}

impl v2::Host for RequestState {}

impl v2::HostConnection for RequestState {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<RedisConnection>, v2::Error>> {
        let Ok(url) = address.parse::<http::Uri>() else { return Ok(Err(v2::Error::InvalidAddress)) };
        let (Some(host), scheme) = (url.host(), url.scheme_str().unwrap_or("redis")) else {
            return Ok(Err(v2::Error::InvalidAddress));
        };
        let port = url.port_u16().unwrap_or(6379);
        if !self.component.outbound.check(scheme, host, port) {
            // Spin's answer for an address the component may not reach (the denial is logged).
            return Ok(Err(v2::Error::InvalidAddress));
        }
        let mut clients = self.redis_clients.by_address.lock().await;
        let conn = match clients.get(&address) {
            Some(c) => c.clone(),
            None => {
                let client = match redis::Client::open(address.as_str()) {
                    Ok(c) => c,
                    Err(_) => return Ok(Err(v2::Error::InvalidAddress)),
                };
                match client.get_multiplexed_tokio_connection().await {
                    Ok(c) => {
                        clients.insert(address.clone(), c.clone());
                        c
                    }
                    Err(e) => return Ok(Err(other(e))),
                }
            }
        };
        drop(clients);
        Ok(Ok(self.table.push(RedisConnection { conn })?))
    }

    async fn publish(
        &mut self,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        Ok(self.redis(&c)?.publish::<_, _, i64>(channel, payload).await.map(|_| ()).map_err(other))
    }

    async fn get(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v2::Error>> {
        Ok(self.redis(&c)?.get(key).await.map_err(typed))
    }

    async fn set(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        Ok(self.redis(&c)?.set(key, value).await.map_err(other))
    }

    async fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> wasmtime::Result<Result<i64, v2::Error>> {
        Ok(self.redis(&c)?.incr(key, 1).await.map_err(typed))
    }

    async fn del(
        &mut self,
        c: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        Ok(self.redis(&c)?.del(keys).await.map_err(other))
    }

    async fn sadd(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        Ok(self.redis(&c)?.sadd(key, values).await.map_err(typed))
    }

    async fn smembers(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, v2::Error>> {
        Ok(self.redis(&c)?.smembers(key).await.map_err(typed))
    }

    async fn srem(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        Ok(self.redis(&c)?.srem(key, values).await.map_err(typed))
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<v2::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<v2::RedisResult>, v2::Error>> {
        let mut cmd = redis::cmd(&command);
        for a in arguments {
            match a {
                v2::RedisParameter::Int64(i) => cmd.arg(i),
                v2::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: Result<redis::Value, _> = cmd.query_async(&mut self.redis(&c)?).await;
        Ok(value.map_err(other).map(|v| {
            let mut out = Vec::new();
            results(v, &mut out);
            out
        }))
    }

    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}
