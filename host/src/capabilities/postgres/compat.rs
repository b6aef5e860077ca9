//! `spin:postgres/postgres@3.0.0` on top of @4: the older interface's values converted with
//! `From` impls, everything else shared.

use super::pool::PgConnection;
use super::{v3, v4};
use crate::runtime::RequestState;
use wasmtime::component::Resource;

impl From<v4::Error> for v3::Error {
    fn from(e: v4::Error) -> Self {
        match e {
            v4::Error::ConnectionFailed(m) => v3::Error::ConnectionFailed(m),
            v4::Error::BadParameter(m) => v3::Error::BadParameter(m),
            v4::Error::QueryFailed(v4::QueryError::Text(m)) => v3::Error::QueryFailed(m),
            v4::Error::QueryFailed(v4::QueryError::DbError(d)) => v3::Error::QueryFailed(d.as_text),
            v4::Error::ValueConversionFailed(m) => v3::Error::ValueConversionFailed(m),
            v4::Error::Other(m) => v3::Error::Other(m),
        }
    }
}

impl From<v3::ParameterValue> for v4::ParameterValue {
    fn from(p: v3::ParameterValue) -> Self {
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
}

impl From<v4::DbValue> for v3::DbValue {
    fn from(v: v4::DbValue) -> Self {
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
}

impl From<v4::DbDataType> for v3::DbDataType {
    fn from(t: v4::DbDataType) -> Self {
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
}

impl v3::Host for RequestState {}

impl v3::HostConnection for RequestState {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<PgConnection>, v3::Error>> {
        Ok(self.pg_open(address).await?.map_err(v3::Error::from))
    }

    async fn query(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<v3::RowSet, v3::Error>> {
        let params = params.into_iter().map(v4::ParameterValue::from).collect();
        Ok(self.pg_run(&conn, statement, params, true).await?.map_err(v3::Error::from).map(|(rows, _)| v3::RowSet {
            columns: rows
                .columns
                .into_iter()
                .map(|c| v3::Column { name: c.name, data_type: c.data_type.into() })
                .collect(),
            rows: rows.rows.into_iter().map(|r| r.into_iter().map(v3::DbValue::from).collect()).collect(),
        }))
    }

    async fn execute(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v3::Error>> {
        let params = params.into_iter().map(v4::ParameterValue::from).collect();
        Ok(self.pg_run(&conn, statement, params, false).await?.map_err(v3::Error::from).map(|(_, n)| n))
    }

    async fn drop(&mut self, conn: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}
