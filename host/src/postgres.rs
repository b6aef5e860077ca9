//! `spin:postgres/postgres@4.0.0` (and @3.0.0) over tokio-postgres, one pool per address.
//!
//! Each statement runs as one typed, unnamed-statement round trip (`query_typed_raw`): parameter
//! types come from the WIT variants, so nothing is prepared and Supavisor's transaction mode
//! cannot break it. A connection dropped by the guest in the middle of a transaction is rolled
//! back before it returns to the pool.

use crate::outbound::default_port;
use anyhow::{Context, Result};
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use postgres_types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use crate::bindings::spin::postgres3_0_0::postgres as v3;
use crate::bindings::spin::postgres4_0_0::postgres as v4;

/// The pools of every database address components opened, shared by all requests.
pub struct PgPools {
    pools: Mutex<HashMap<String, Pool>>,
    max_size: usize,
}

impl PgPools {
    /// `max_size` connections per address.
    pub fn new(max_size: usize) -> Self {
        PgPools { pools: Mutex::new(HashMap::new()), max_size }
    }

    fn pool(&self, address: &str) -> Result<Pool, v4::Error> {
        let mut pools = self.pools.lock().map_err(|_| v4::Error::Other("pool registry poisoned".into()))?;
        if let Some(p) = pools.get(address) {
            return Ok(p.clone());
        }
        let mut config = tokio_postgres::Config::from_str(address)
            .map_err(|e| v4::Error::ConnectionFailed(format!("invalid address: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(self.max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| v4::Error::ConnectionFailed(e.to_string()))?;
        pools.insert(address.to_owned(), pool.clone());
        Ok(pool)
    }
}

/// Every `(host, port)` an address names, for the outbound policy.
pub fn destinations(address: &str) -> Result<Vec<(String, u16)>> {
    let config = tokio_postgres::Config::from_str(address).context("invalid postgres address")?;
    let ports = config.get_ports();
    let default = default_port("postgres").unwrap_or(5432);
    Ok(config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(default);
            (host, port)
        })
        .collect())
}

/// The guest's `connection` resource: one pooled client for its whole life.
pub struct PgConnection {
    client: Option<Object>,
    in_transaction: bool,
}

impl PgConnection {
    fn client(&self) -> Result<&Object, v4::Error> {
        self.client.as_ref().ok_or_else(|| v4::Error::ConnectionFailed("connection closed".into()))
    }

    /// Tracks BEGIN / COMMIT so that a drop mid-transaction can roll back.
    fn note_statement(&mut self, statement: &str) {
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

/// One parameter with the Postgres type its WIT variant implies.
enum Param {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Date(chrono::NaiveDate),
    Time(chrono::NaiveTime),
    Timestamp(chrono::NaiveDateTime),
    TimestampTz(chrono::DateTime<chrono::Utc>),
    Uuid(uuid::Uuid),
    Json(serde_json::Value),
    Decimal(rust_decimal::Decimal),
    I32s(Vec<Option<i32>>),
    I64s(Vec<Option<i64>>),
    Decimals(Vec<Option<rust_decimal::Decimal>>),
    Texts(Vec<Option<String>>),
    Interval(v4::Interval),
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Param") // values may be secrets: never printed
    }
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Text(v) => v.to_sql(ty, out),
            Param::Bytes(v) => v.to_sql(ty, out),
            Param::Date(v) => v.to_sql(ty, out),
            Param::Time(v) => v.to_sql(ty, out),
            Param::Timestamp(v) => v.to_sql(ty, out),
            Param::TimestampTz(v) => v.to_sql(ty, out),
            Param::Uuid(v) => v.to_sql(ty, out),
            Param::Json(v) => v.to_sql(ty, out),
            Param::Decimal(v) => v.to_sql(ty, out),
            Param::I32s(v) => v.to_sql(ty, out),
            Param::I64s(v) => v.to_sql(ty, out),
            Param::Decimals(v) => v.to_sql(ty, out),
            Param::Texts(v) => v.to_sql(ty, out),
            Param::Interval(i) => {
                use bytes::BufMut;
                out.put_i64(i.micros);
                out.put_i32(i.days);
                out.put_i32(i.months);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true // the type is chosen from the variant in `param`, not inferred
    }

    to_sql_checked!();
}

fn bad(what: &str) -> v4::Error {
    v4::Error::BadParameter(what.to_owned())
}

fn date(y: i32, m: u8, d: u8) -> Result<chrono::NaiveDate, v4::Error> {
    chrono::NaiveDate::from_ymd_opt(y, m.into(), d.into()).ok_or_else(|| bad("invalid date"))
}

fn time(h: u8, m: u8, s: u8, ns: u32) -> Result<chrono::NaiveTime, v4::Error> {
    chrono::NaiveTime::from_hms_nano_opt(h.into(), m.into(), s.into(), ns).ok_or_else(|| bad("invalid time"))
}

fn decimal(s: &str) -> Result<rust_decimal::Decimal, v4::Error> {
    rust_decimal::Decimal::from_str_exact(s).map_err(|_| bad("invalid decimal"))
}

fn param(value: v4::ParameterValue) -> Result<(Param, Type), v4::Error> {
    use v4::ParameterValue as P;
    Ok(match value {
        P::DbNull => (Param::Null, Type::UNKNOWN),
        P::Boolean(v) => (Param::Bool(v), Type::BOOL),
        P::Int8(v) => (Param::I16(v.into()), Type::INT2),
        P::Int16(v) => (Param::I16(v), Type::INT2),
        P::Int32(v) => (Param::I32(v), Type::INT4),
        P::Int64(v) => (Param::I64(v), Type::INT8),
        P::Floating32(v) => (Param::F32(v), Type::FLOAT4),
        P::Floating64(v) => (Param::F64(v), Type::FLOAT8),
        P::Str(v) => (Param::Text(v), Type::TEXT),
        P::Binary(v) => (Param::Bytes(v), Type::BYTEA),
        P::Date((y, m, d)) => (Param::Date(date(y, m, d)?), Type::DATE),
        P::Time((h, mi, s, ns)) => (Param::Time(time(h, mi, s, ns)?), Type::TIME),
        P::Datetime((y, mo, d, h, mi, s, ns)) => {
            (Param::Timestamp(date(y, mo, d)?.and_time(time(h, mi, s, ns)?)), Type::TIMESTAMP)
        }
        P::Timestamp(secs) => (
            Param::TimestampTz(chrono::DateTime::from_timestamp(secs, 0).ok_or_else(|| bad("timestamp out of range"))?),
            Type::TIMESTAMPTZ,
        ),
        P::Uuid(s) => (Param::Uuid(uuid::Uuid::parse_str(&s).map_err(|_| bad("invalid uuid"))?), Type::UUID),
        P::Jsonb(b) => (Param::Json(serde_json::from_slice(&b).map_err(|_| bad("invalid jsonb"))?), Type::JSONB),
        P::Decimal(s) => (Param::Decimal(decimal(&s)?), Type::NUMERIC),
        P::ArrayInt32(v) => (Param::I32s(v), Type::INT4_ARRAY),
        P::ArrayInt64(v) => (Param::I64s(v), Type::INT8_ARRAY),
        P::ArrayDecimal(v) => (
            Param::Decimals(v.iter().map(|d| d.as_deref().map(decimal).transpose()).collect::<Result<_, _>>()?),
            Type::NUMERIC_ARRAY,
        ),
        P::ArrayStr(v) => (Param::Texts(v), Type::TEXT_ARRAY),
        P::Interval(i) => (Param::Interval(i), Type::INTERVAL),
        P::RangeInt32(_) | P::RangeInt64(_) | P::RangeDecimal(_) => {
            return Err(bad("range parameters are not supported by this host"))
        }
    })
}

/// Any column's raw bytes, for types without a mapping (`unsupported(list<u8>)`).
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// `interval` in binary form.
struct Interval(v4::Interval);

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw: [u8; 16] = raw.try_into()?;
        let micros = i64::from_be_bytes(raw[0..8].try_into()?);
        let days = i32::from_be_bytes(raw[8..12].try_into()?);
        let months = i32::from_be_bytes(raw[12..16].try_into()?);
        Ok(Interval(v4::Interval { micros, days, months }))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

fn data_type(ty: &Type) -> v4::DbDataType {
    use v4::DbDataType as D;
    match *ty {
        Type::BOOL => D::Boolean,
        Type::CHAR => D::Int8,
        Type::INT2 => D::Int16,
        Type::INT4 => D::Int32,
        Type::INT8 => D::Int64,
        Type::FLOAT4 => D::Floating32,
        Type::FLOAT8 => D::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => D::Str,
        Type::BYTEA => D::Binary,
        Type::DATE => D::Date,
        Type::TIME => D::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => D::Datetime,
        Type::UUID => D::Uuid,
        Type::JSON | Type::JSONB => D::Jsonb,
        Type::NUMERIC => D::Decimal,
        Type::INT4_RANGE => D::RangeInt32,
        Type::INT8_RANGE => D::RangeInt64,
        Type::NUM_RANGE => D::RangeDecimal,
        Type::INT4_ARRAY => D::ArrayInt32,
        Type::INT8_ARRAY => D::ArrayInt64,
        Type::NUMERIC_ARRAY => D::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => D::ArrayStr,
        Type::INTERVAL => D::Interval,
        _ => D::Other(ty.name().to_owned()),
    }
}

fn datetime(dt: chrono::NaiveDateTime) -> v4::DbValue {
    use chrono::{Datelike, Timelike};
    v4::DbValue::Datetime((
        dt.year(),
        dt.month() as u8,
        dt.day() as u8,
        dt.hour() as u8,
        dt.minute() as u8,
        dt.second() as u8,
        dt.nanosecond(),
    ))
}

fn value(row: &tokio_postgres::Row, i: usize) -> Result<v4::DbValue, tokio_postgres::Error> {
    use chrono::{Datelike, Timelike};
    use v4::DbValue as V;
    let ty = row.columns()[i].type_().clone();
    macro_rules! get {
        ($t:ty, $f:expr) => {
            row.try_get::<_, Option<$t>>(i)?.map($f).unwrap_or(V::DbNull)
        };
    }
    Ok(match ty {
        Type::BOOL => get!(bool, V::Boolean),
        Type::CHAR => get!(i8, V::Int8),
        Type::INT2 => get!(i16, V::Int16),
        Type::INT4 => get!(i32, V::Int32),
        Type::INT8 => get!(i64, V::Int64),
        Type::FLOAT4 => get!(f32, V::Floating32),
        Type::FLOAT8 => get!(f64, V::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => get!(String, V::Str),
        Type::BYTEA => get!(Vec<u8>, V::Binary),
        Type::DATE => get!(chrono::NaiveDate, |d| V::Date((d.year(), d.month() as u8, d.day() as u8))),
        Type::TIME => get!(chrono::NaiveTime, |t| V::Time((
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.nanosecond()
        ))),
        Type::TIMESTAMP => get!(chrono::NaiveDateTime, datetime),
        Type::TIMESTAMPTZ => get!(chrono::DateTime<chrono::Utc>, |t| datetime(t.naive_utc())),
        Type::UUID => get!(uuid::Uuid, |u| V::Uuid(u.to_string())),
        Type::JSON | Type::JSONB => get!(serde_json::Value, |j| V::Jsonb(j.to_string().into_bytes())),
        Type::NUMERIC => match row.try_get::<_, Option<rust_decimal::Decimal>>(i) {
            Ok(d) => d.map(|d| V::Decimal(d.to_string())).unwrap_or(V::DbNull),
            // NaN, infinities and values past 28 digits have no rust_decimal form.
            Err(_) => get!(Raw, |r| V::Unsupported(r.0)),
        },
        Type::INT4_ARRAY => get!(Vec<Option<i32>>, V::ArrayInt32),
        Type::INT8_ARRAY => get!(Vec<Option<i64>>, V::ArrayInt64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => get!(Vec<Option<String>>, V::ArrayStr),
        Type::NUMERIC_ARRAY => get!(Vec<Option<rust_decimal::Decimal>>, |v| V::ArrayDecimal(
            v.into_iter().map(|d| d.map(|d| d.to_string())).collect()
        )),
        Type::INTERVAL => get!(Interval, |i| V::Interval(i.0)),
        _ => get!(Raw, |r| V::Unsupported(r.0)),
    })
}

fn query_error(e: tokio_postgres::Error) -> v4::Error {
    match e.as_db_error() {
        Some(db) => {
            let mut extras = Vec::new();
            let mut push = |k: &str, v: Option<&str>| {
                if let Some(v) = v {
                    extras.push((k.to_owned(), v.to_owned()));
                }
            };
            push("hint", db.hint());
            push("schema", db.schema());
            push("table", db.table());
            push("column", db.column());
            push("constraint", db.constraint());
            v4::Error::QueryFailed(v4::QueryError::DbError(v4::DbError {
                as_text: db.to_string(),
                severity: db.severity().to_owned(),
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                extras,
            }))
        }
        None if e.is_closed() => v4::Error::QueryFailed(v4::QueryError::Text(format!("connection closed: {e}"))),
        None => v4::Error::QueryFailed(v4::QueryError::Text(e.to_string())),
    }
}

/// Runs one statement; returns the row set and the affected-row count.
async fn run(
    conn: &mut PgConnection,
    statement: &str,
    params: Vec<v4::ParameterValue>,
) -> Result<(v4::RowSet, u64), v4::Error> {
    let typed = params.into_iter().map(param).collect::<Result<Vec<_>, _>>()?;
    conn.note_statement(statement);
    let client = conn.client()?;
    let stream = client
        .query_typed_raw(statement, typed.iter().map(|(p, t)| (p as &(dyn ToSql + Sync), t.clone())))
        .await
        .map_err(query_error)?;
    futures::pin_mut!(stream);
    let mut columns = None;
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        let row = row.map_err(query_error)?;
        if columns.is_none() {
            columns = Some(
                row.columns()
                    .iter()
                    .map(|c| v4::Column { name: c.name().to_owned(), data_type: data_type(c.type_()) })
                    .collect::<Vec<_>>(),
            );
        }
        let values = (0..row.len())
            .map(|i| value(&row, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| v4::Error::ValueConversionFailed(e.to_string()))?;
        rows.push(values);
    }
    let affected = stream.rows_affected().unwrap_or(0);
    Ok((v4::RowSet { columns: columns.unwrap_or_default(), rows }, affected))
}

use crate::runtime::RequestState;
use wasmtime::component::Resource;

impl RequestState {
    async fn pg_open(&mut self, address: String) -> wasmtime::Result<Result<Resource<PgConnection>, v4::Error>> {
        let destinations = match destinations(&address) {
            Ok(d) => d,
            Err(e) => return Ok(Err(v4::Error::ConnectionFailed(e.to_string()))),
        };
        for (host, port) in &destinations {
            if !self.component.outbound.check("postgres", host, *port) {
                return Ok(Err(v4::Error::ConnectionFailed(format!(
                    "access to postgres://{host}:{port} is not allowed by allowed_outbound_hosts"
                ))));
            }
        }
        let pool = match self.pg.pool(&address) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("component '{}': postgres connection failed: {e}", self.component.id);
                return Ok(Err(v4::Error::ConnectionFailed(e.to_string())));
            }
        };
        Ok(Ok(self.table.push(PgConnection { client: Some(client), in_transaction: false })?))
    }

    async fn pg_run(
        &mut self,
        conn: &Resource<PgConnection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<Result<(v4::RowSet, u64), v4::Error>> {
        let conn = self.table.get_mut(conn)?;
        Ok(run(conn, &statement, params).await)
    }
}

impl v4::Host for RequestState {}

impl v4::HostConnection for RequestState {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<PgConnection>, v4::Error>> {
        self.pg_open(address).await
    }

    async fn query(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<Result<v4::RowSet, v4::Error>> {
        Ok(self.pg_run(&conn, statement, params).await?.map(|(rows, _)| rows))
    }

    async fn execute(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v4::Error>> {
        Ok(self.pg_run(&conn, statement, params).await?.map(|(_, n)| n))
    }

    async fn drop(&mut self, conn: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

fn error_v3(e: v4::Error) -> v3::Error {
    match e {
        v4::Error::ConnectionFailed(m) => v3::Error::ConnectionFailed(m),
        v4::Error::BadParameter(m) => v3::Error::BadParameter(m),
        v4::Error::QueryFailed(v4::QueryError::Text(m)) => v3::Error::QueryFailed(m),
        v4::Error::QueryFailed(v4::QueryError::DbError(d)) => v3::Error::QueryFailed(d.as_text),
        v4::Error::ValueConversionFailed(m) => v3::Error::ValueConversionFailed(m),
        v4::Error::Other(m) => v3::Error::Other(m),
    }
}

fn param_v3(p: v3::ParameterValue) -> v4::ParameterValue {
    use v3::ParameterValue as A;
    use v4::ParameterValue as B;
    match p {
        A::Boolean(v) => B::Boolean(v),
        A::Int8(v) => B::Int8(v),
        A::Int16(v) => B::Int16(v),
        A::Int32(v) => B::Int32(v),
        A::Int64(v) => B::Int64(v),
        A::Floating32(v) => B::Floating32(v),
        A::Floating64(v) => B::Floating64(v),
        A::Str(v) => B::Str(v),
        A::Binary(v) => B::Binary(v),
        A::Date(v) => B::Date(v),
        A::Time(v) => B::Time(v),
        A::Datetime(v) => B::Datetime(v),
        A::Timestamp(v) => B::Timestamp(v),
        A::DbNull => B::DbNull,
    }
}

fn value_v3(v: v4::DbValue) -> v3::DbValue {
    use v3::DbValue as A;
    use v4::DbValue as B;
    match v {
        B::Boolean(v) => A::Boolean(v),
        B::Int8(v) => A::Int8(v),
        B::Int16(v) => A::Int16(v),
        B::Int32(v) => A::Int32(v),
        B::Int64(v) => A::Int64(v),
        B::Floating32(v) => A::Floating32(v),
        B::Floating64(v) => A::Floating64(v),
        B::Str(v) => A::Str(v),
        B::Binary(v) => A::Binary(v),
        B::Date(v) => A::Date(v),
        B::Time(v) => A::Time(v),
        B::Datetime(v) => A::Datetime(v),
        B::Timestamp(v) => A::Timestamp(v),
        B::DbNull => A::DbNull,
        _ => A::Unsupported,
    }
}

fn data_type_v3(t: v4::DbDataType) -> v3::DbDataType {
    use v3::DbDataType as A;
    use v4::DbDataType as B;
    match t {
        B::Boolean => A::Boolean,
        B::Int8 => A::Int8,
        B::Int16 => A::Int16,
        B::Int32 => A::Int32,
        B::Int64 => A::Int64,
        B::Floating32 => A::Floating32,
        B::Floating64 => A::Floating64,
        B::Str => A::Str,
        B::Binary => A::Binary,
        B::Date => A::Date,
        B::Time => A::Time,
        B::Datetime => A::Datetime,
        _ => A::Other,
    }
}

impl v3::Host for RequestState {}

impl v3::HostConnection for RequestState {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<PgConnection>, v3::Error>> {
        Ok(self.pg_open(address).await?.map_err(error_v3))
    }

    async fn query(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<v3::RowSet, v3::Error>> {
        let params = params.into_iter().map(param_v3).collect();
        Ok(self.pg_run(&conn, statement, params).await?.map_err(error_v3).map(|(rows, _)| v3::RowSet {
            columns: rows
                .columns
                .into_iter()
                .map(|c| v3::Column { name: c.name, data_type: data_type_v3(c.data_type) })
                .collect(),
            rows: rows.rows.into_iter().map(|r| r.into_iter().map(value_v3).collect()).collect(),
        }))
    }

    async fn execute(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v3::Error>> {
        let params = params.into_iter().map(param_v3).collect();
        Ok(self.pg_run(&conn, statement, params).await?.map_err(error_v3).map(|(_, n)| n))
    }

    async fn drop(&mut self, conn: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_cover_every_host() {
        assert_eq!(destinations("postgres://u:p@db.example.com:6543/x").unwrap(), vec![("db.example.com".into(), 6543)]);
        assert_eq!(destinations("postgres://u@localhost/x").unwrap(), vec![("localhost".into(), 5432)]);
        assert_eq!(destinations("host=a,b port=1,2 user=u").unwrap(), vec![("a".into(), 1), ("b".into(), 2)]);
    }

    #[test]
    fn transaction_tracking() {
        let mut c = PgConnection { client: None, in_transaction: false };
        c.note_statement("  BEGIN");
        assert!(c.in_transaction);
        c.note_statement("select 1");
        assert!(c.in_transaction);
        c.note_statement("commit");
        assert!(!c.in_transaction);
        c.note_statement("start transaction isolation level serializable");
        assert!(c.in_transaction);
        c.note_statement("rollback");
        assert!(!c.in_transaction);
    }

    #[test]
    fn parameters_get_types_from_their_variant() {
        use v4::ParameterValue as P;
        assert_eq!(param(P::Uuid("6f1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11".into())).unwrap().1, Type::UUID);
        assert!(param(P::Uuid("nope".into())).is_err());
        assert_eq!(param(P::DbNull).unwrap().1, Type::UNKNOWN);
        assert_eq!(param(P::Jsonb(b"{\"a\":1}".to_vec())).unwrap().1, Type::JSONB);
        assert!(param(P::Date((2026, 2, 30))).is_err());
        assert_eq!(param(P::Decimal("1.50".into())).unwrap().1, Type::NUMERIC);
    }
}
