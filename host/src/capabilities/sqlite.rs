//! `fermyon:spin/sqlite@2.0.0`: SQLite databases by label, as Spin provides them. A component
//! opens only the databases its manifest lists in `sqlite_databases`; `default` and every
//! database of the runtime config exist (`default` is a file in the state folder unless the
//! config says otherwise). Statements run on a blocking thread; results are bounded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::bindings::fermyon::spin::sqlite as v2;
use crate::runtime::RequestState;
use wasmtime::component::Resource;

/// Most bytes one statement's result may hold.
const MAX_RESULT_BYTES: usize = 128 << 20;

/// Every database of the app, opened on first use.
#[derive(Default)]
pub struct SqliteDatabases {
    configs: HashMap<String, Option<PathBuf>>,
    opened: Mutex<HashMap<String, Arc<Mutex<rusqlite::Connection>>>>,
}

impl SqliteDatabases {
    /// Databases by label: a file, or `None` for one in memory.
    pub fn new(configs: HashMap<String, Option<PathBuf>>) -> Self {
        SqliteDatabases { configs, opened: Mutex::default() }
    }

    /// Whether `label` exists.
    pub fn is_defined(&self, label: &str) -> bool {
        self.configs.contains_key(label)
    }

    fn open(&self, label: &str) -> Result<Arc<Mutex<rusqlite::Connection>>, v2::Error> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = opened.get(label) {
            return Ok(c.clone());
        }
        let path = self.configs.get(label).ok_or(v2::Error::NoSuchDatabase)?;
        let io = |e: rusqlite::Error| v2::Error::Io(e.to_string());
        let conn = match path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| v2::Error::Io(e.to_string()))?;
                }
                rusqlite::Connection::open(path).map_err(io)?
            }
            None => rusqlite::Connection::open_in_memory().map_err(io)?,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(io)?;
        let conn = Arc::new(Mutex::new(conn));
        opened.insert(label.to_owned(), conn.clone());
        Ok(conn)
    }
}

/// The guest's `connection` resource.
pub struct SqliteConnection {
    db: Arc<Mutex<rusqlite::Connection>>,
}

fn execute(
    conn: &mut rusqlite::Connection,
    statement: &str,
    parameters: Vec<v2::Value>,
) -> Result<v2::QueryResult, v2::Error> {
    use rusqlite::types::{Value, ValueRef};
    let io = |e: rusqlite::Error| v2::Error::Io(e.to_string());
    let mut stmt = conn.prepare_cached(statement).map_err(io)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let params: Vec<Value> = parameters
        .into_iter()
        .map(|v| match v {
            v2::Value::Integer(i) => Value::Integer(i),
            v2::Value::Real(f) => Value::Real(f),
            v2::Value::Text(t) => Value::Text(t),
            v2::Value::Blob(b) => Value::Blob(b),
            v2::Value::Null => Value::Null,
        })
        .collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(io)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(io)? {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let value = match row.get_ref(i).map_err(io)? {
                ValueRef::Null => v2::Value::Null,
                ValueRef::Integer(i) => v2::Value::Integer(i),
                ValueRef::Real(f) => v2::Value::Real(f),
                ValueRef::Text(t) => v2::Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => v2::Value::Blob(b.to_vec()),
            };
            bytes += match &value {
                v2::Value::Text(t) => t.len(),
                v2::Value::Blob(b) => b.len(),
                _ => 8,
            };
            values.push(value);
        }
        if bytes > MAX_RESULT_BYTES {
            return Err(v2::Error::Io(format!("query result exceeds limit of {MAX_RESULT_BYTES} bytes")));
        }
        out.push(v2::RowResult { values });
    }
    Ok(v2::QueryResult { columns, rows: out })
}

impl v2::Host for RequestState {}

impl v2::HostConnection for RequestState {
    async fn open(&mut self, database: String) -> wasmtime::Result<Result<Resource<SqliteConnection>, v2::Error>> {
        if !self.component.sqlite_databases.contains(&database) {
            tracing::warn!(
                "component '{}': sqlite database '{database}' is not in sqlite_databases",
                self.component.id
            );
            return Ok(Err(v2::Error::AccessDenied));
        }
        let db = match self.sqlite.open(&database) {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(SqliteConnection { db })?))
    }

    async fn execute(
        &mut self,
        conn: Resource<SqliteConnection>,
        statement: String,
        parameters: Vec<v2::Value>,
    ) -> wasmtime::Result<Result<v2::QueryResult, v2::Error>> {
        let db = self.table.get(&conn)?.db.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            execute(&mut conn, &statement, parameters)
        })
        .await;
        Ok(result.unwrap_or_else(|e| Err(v2::Error::Io(e.to_string()))))
    }

    async fn drop(&mut self, conn: Resource<SqliteConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}
