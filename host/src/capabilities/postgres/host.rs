//! `spin:postgres/postgres@4.0.0` for a request: open, query and execute as Spin runs them
//! (prepared, cached per connection, parameters checked against the server's types, results
//! bounded), and the zero-row policy that catches what hangs under Spin 4.0.2.

use super::pool::{destinations, PgConnection};
use super::types::*;
use super::v4;
use crate::runtime::RequestState;
use futures::StreamExt;
use postgres_types::ToSql;
use wasmtime::component::Resource;

/// What to do about a `query` that returns no rows, which never returns under Spin 4.0.2 (its
/// `spin:postgres@4` waits for the column list, sent with the first row):
/// `CHATEDGE_PG_ZERO_ROWS` = `allow` (default: answer, as a fixed Spin would), `warn` (answer
/// and log the statement) or `error` (refuse it, so a test suite catches every such statement
/// on this host too).
pub(super) fn zero_rows_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| std::env::var("CHATEDGE_PG_ZERO_ROWS").unwrap_or_else(|_| "allow".into()))
}

/// Runs one statement as Spin does: prepared (cached per connection), parameters checked
/// against the types the server inferred. `query` returns the rows; `execute` the count.
pub(super) async fn run(
    conn: &mut PgConnection,
    statement: &str,
    params: Vec<v4::ParameterValue>,
    want_rows: bool,
) -> Result<(v4::RowSet, u64), v4::Error> {
    let params = params.into_iter().map(param).collect::<Result<Vec<_>, _>>()?;
    conn.note_statement(statement);
    let client = conn.client()?;
    let prepared = client.prepare_cached(statement).await.map_err(query_error)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
    if !want_rows {
        let n = client.execute(&prepared, &refs).await.map_err(query_error)?;
        return Ok((v4::RowSet { columns: Vec::new(), rows: Vec::new() }, n));
    }
    let stream = client.query_raw(&prepared, refs).await.map_err(query_error)?;
    futures::pin_mut!(stream);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = stream.next().await {
        let row = row.map_err(query_error)?;
        let values = (0..row.len())
            .map(|i| value(&row, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| v4::Error::QueryFailed(v4::QueryError::Text(format!("{e:?}"))))?;
        bytes = bytes.saturating_add(values.iter().map(value_bytes).sum::<usize>());
        if bytes > MAX_RESULT_BYTES {
            return Err(v4::Error::QueryFailed(v4::QueryError::Text(format!(
                "query result exceeds limit of {MAX_RESULT_BYTES} bytes"
            ))));
        }
        rows.push(values);
    }
    if rows.is_empty() {
        match zero_rows_policy() {
            "error" => {
                return Err(v4::Error::QueryFailed(v4::QueryError::Text(format!(
                    "query returned no rows, which never returns under Spin 4.0.2 (CHATEDGE_PG_ZERO_ROWS=error): {statement}"
                ))))
            }
            "warn" => tracing::warn!("query returned no rows (never returns under Spin 4.0.2): {statement}"),
            _ => {}
        }
    }
    let columns = prepared
        .columns()
        .iter()
        .map(|c| v4::Column { name: c.name().to_owned(), data_type: data_type(c.type_()) })
        .collect();
    let affected = stream.rows_affected().unwrap_or(0);
    Ok((v4::RowSet { columns, rows }, affected))
}

impl RequestState {
    pub(super) async fn pg_open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, v4::Error>> {
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

    pub(super) async fn pg_run(
        &mut self,
        conn: &Resource<PgConnection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
        want_rows: bool,
    ) -> wasmtime::Result<Result<(v4::RowSet, u64), v4::Error>> {
        // Only when tracing: no work per statement otherwise.
        let mut span = self.trace.as_ref().and_then(|trace| {
            let operation = crate::telemetry::sql_operation(&statement);
            crate::telemetry::ChildSpan::start(
                Some(trace),
                format!("{operation} postgresql"),
                vec![
                    opentelemetry::KeyValue::new("db.system.name", "postgresql"),
                    opentelemetry::KeyValue::new("db.operation.name", operation),
                ],
            )
        });
        let conn = self.table.get_mut(conn)?;
        let result = run(conn, &statement, params, want_rows).await;
        if let (Some(span), Err(e)) = (span.as_mut(), &result) {
            span.fail(format!("{e:?}"));
        }
        Ok(result)
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
        Ok(self.pg_run(&conn, statement, params, true).await?.map(|(rows, _)| rows))
    }

    async fn execute(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v4::Error>> {
        Ok(self.pg_run(&conn, statement, params, false).await?.map(|(_, n)| n))
    }

    async fn drop(&mut self, conn: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}
