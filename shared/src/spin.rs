//! Glue between spin-sdk 5.2 and the pure logic: request context, responses with CORS, variables
//! and the per-request RLS transaction over `spin:postgres/postgres@4.0.0`.

use crate::auth::{AuthConfig, Principal};
use crate::db::{self, DbFailure};
use crate::error::ApiError;
use futures::SinkExt;
use serde_json::Value;
use spin_sdk::http::{Fields, Method, OutgoingResponse, Request, Response, ResponseOutparam};
use spin_sdk::pg4::{self, Connection, DbValue, ParameterValue, RowSet};
use std::pin::Pin;

/// Largest JSON body the CRUD routes accept.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// The parts of a request a handler reads.
pub struct Incoming {
    /// HTTP method.
    pub method: Method,
    /// Path below the matched route's prefix (Spin's `spin-path-info`), `/` at least.
    pub path_info: String,
    /// Raw query string without `?`.
    pub query: String,
    /// `Origin`, echoed in CORS headers.
    pub origin: Option<String>,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Incoming {
    fn from_request(req: Request) -> Self {
        let header = |n: &str| req.header(n).and_then(|v| v.as_str()).map(str::to_owned);
        let path_info = header("spin-path-info").filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
        Incoming {
            method: req.method().clone(),
            path_info,
            query: req.query().to_owned(),
            origin: header("origin"),
            authorization: header("authorization"),
            body: req.into_body(),
        }
    }

    /// The path segments below the route, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path_info.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Parses the body as JSON of type `T`; 413 past [`MAX_JSON_BODY`], 400 when malformed.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.len() > MAX_JSON_BODY {
            return Err(ApiError::payload_too_large(MAX_JSON_BODY));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            let code = if e.is_data() { "validation_failed" } else { "invalid_json" };
            ApiError::bad_request(code, format!("request body: {e}"))
        })
    }

    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::pagination::query_param(&self.query, name)
    }
}

/// Runs a handler: preflight, error envelope and CORS on every response.
pub fn serve(req: Request, handler: impl FnOnce(&Incoming) -> Result<Response, ApiError>) -> Response {
    let incoming = Incoming::from_request(req);
    let origin = incoming.origin.clone();
    let mut response = if incoming.method == Method::Options {
        Response::builder().status(204).build()
    } else {
        match handler(&incoming) {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    };
    for (name, value) in crate::cors::headers(origin.as_deref()) {
        response.set_header(name, value);
    }
    response
}

/// A response carrying the error envelope and the error's own headers.
pub fn error_response(e: &ApiError) -> Response {
    let mut b = Response::builder();
    b.status(e.status).header("content-type", "application/json");
    for (n, v) in &e.headers {
        b.header(n.as_str(), v.as_str());
    }
    b.body(e.body()).build()
}

/// A JSON response from already serialized JSON text (e.g. built by Postgres).
pub fn json_text(status: u16, json: String) -> Response {
    Response::builder().status(status).header("content-type", "application/json").body(json).build()
}

/// A JSON response from a serializable value.
pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
    json_text(status, serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
}

/// A component variable; `None` when undefined or empty (optional settings).
pub fn variable(name: &str) -> Option<String> {
    spin_sdk::variables::get(name).ok().filter(|v| !v.trim().is_empty())
}

/// A component variable that must be set; a 500 naming it otherwise.
pub fn required_variable(name: &str) -> Result<String, ApiError> {
    variable(name).ok_or_else(|| {
        ApiError::internal(format!("server misconfigured: variable '{name}' is not set")).with_detail("variable", name)
    })
}

/// How long a fetched JWKS is trusted before it is fetched again.
pub const JWKS_TTL_SECS: u64 = 600;
/// A token naming an unknown key refetches the JWKS (key rotation), at most this often.
pub const JWKS_REFRESH_MIN_SECS: u64 = 30;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the JWKS came from, so a miss on a cached set can refetch.
enum JwksSource {
    None,
    Inline,
    Url { fetched_at: u64 },
}

/// Verification settings from the component's variables (`supabase_jwt_secret`,
/// `supabase_jwks` / `supabase_jwks_url`, `supabase_jwt_audience`, `supabase_jwt_issuer`).
pub fn auth_config() -> Result<AuthConfig, ApiError> {
    Ok(auth_config_with_source(false)?.0)
}

fn auth_config_with_source(force_refresh: bool) -> Result<(AuthConfig, JwksSource), ApiError> {
    let (jwks_json, source) = match variable("supabase_jwks") {
        Some(inline) => (Some(inline.into_bytes()), JwksSource::Inline),
        None => match variable("supabase_jwks_url") {
            Some(url) => {
                let (body, fetched_at) = cached_jwks(&url, force_refresh)?;
                (Some(body), JwksSource::Url { fetched_at })
            }
            None => (None, JwksSource::None),
        },
    };
    let jwks = match jwks_json {
        Some(bytes) => Some(
            crate::auth::parse_jwks(&bytes)
                .map_err(|_| ApiError::unavailable("auth_keys_unavailable", "the JWKS document could not be parsed"))?,
        ),
        None => None,
    };
    let config = AuthConfig {
        hs256_secret: variable("supabase_jwt_secret").map(String::into_bytes),
        jwks,
        audiences: variable("supabase_jwt_audience")
            .unwrap_or_else(|| "authenticated".to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        issuer: variable("supabase_jwt_issuer"),
        leeway_secs: 30,
    };
    if !config.has_keys() {
        return Err(ApiError::internal("server misconfigured: set supabase_jwt_secret or supabase_jwks_url"));
    }
    Ok((config, source))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedJwks {
    fetched_at: u64,
    body: String,
}

/// The JWKS for `url`: from the app's `default` key-value store while fresh (instances are
/// per request, so the store is the only cache that outlives one), else fetched and stored.
/// Without a key-value store the document is fetched every time.
fn cached_jwks(url: &str, force_refresh: bool) -> Result<(Vec<u8>, u64), ApiError> {
    let store = spin_sdk::key_value::Store::open_default().ok();
    let key = format!("jwks:{url}");
    let now = now_secs();
    if let Some(store) = &store {
        if let Ok(Some(raw)) = store.get(&key) {
            if let Ok(c) = serde_json::from_slice::<CachedJwks>(&raw) {
                let age = now.saturating_sub(c.fetched_at);
                if age < JWKS_TTL_SECS && !(force_refresh && age >= JWKS_REFRESH_MIN_SECS) {
                    return Ok((c.body.into_bytes(), c.fetched_at));
                }
            }
        }
    }
    let body = fetch_jwks(url)?;
    if let (Some(store), Ok(text)) = (&store, String::from_utf8(body.clone())) {
        if let Ok(v) = serde_json::to_vec(&CachedJwks { fetched_at: now, body: text }) {
            let _ = store.set(&key, &v);
        }
    }
    Ok((body, now))
}

fn fetch_jwks(url: &str) -> Result<Vec<u8>, ApiError> {
    let unavailable = || ApiError::unavailable("auth_keys_unavailable", "could not fetch the JWKS");
    let request = Request::get(url).build();
    let response: Response = spin_sdk::http::run(spin_sdk::http::send(request)).map_err(|_| unavailable())?;
    if *response.status() != 200 {
        return Err(unavailable());
    }
    Ok(response.into_body())
}

/// Verifies the bearer token and requires a signed-in user. A token signed by a key the cached
/// JWKS does not hold triggers one refetch (the project may have rotated its keys).
pub fn require_user(incoming: &Incoming) -> Result<(String, Principal), ApiError> {
    let (config, source) = auth_config_with_source(false)?;
    match config.require_user(incoming.authorization.as_deref()) {
        Err(e) if e.message.starts_with("no key matches") => match source {
            JwksSource::Url { fetched_at, .. } if now_secs().saturating_sub(fetched_at) >= JWKS_REFRESH_MIN_SECS => {
                auth_config_with_source(true)?.0.require_user(incoming.authorization.as_deref())
            }
            JwksSource::Url { .. } | JwksSource::Inline | JwksSource::None => Err(e),
        },
        other => other,
    }
}

fn failure(e: pg4::PgError) -> DbFailure {
    match e {
        pg4::PgError::ConnectionFailed(m) => DbFailure::Unavailable(m),
        pg4::PgError::QueryFailed(pg4::QueryError::DbError(d)) => DbFailure::Sql { code: d.code, message: d.message },
        pg4::PgError::QueryFailed(pg4::QueryError::Text(m)) => {
            if m.contains("connection closed") || m.contains("connection reset") {
                DbFailure::Unavailable(m)
            } else {
                DbFailure::Other(m)
            }
        }
        pg4::PgError::BadParameter(m) | pg4::PgError::ValueConversionFailed(m) | pg4::PgError::Other(m) => {
            DbFailure::Other(m)
        }
    }
}

fn db_error(e: pg4::PgError) -> ApiError {
    let f = failure(e);
    eprintln!("database: {f:?}");
    db::api_error(&f)
}

/// One request's transaction, running as the caller under RLS. Rolled back unless committed.
pub struct RlsTransaction {
    conn: Connection,
    open: bool,
}

impl RlsTransaction {
    /// Opens a connection to `db_url` (variable) and begins a transaction as `principal`.
    pub fn begin(principal: &Principal) -> Result<Self, ApiError> {
        let url = required_variable("db_url")?;
        let conn = Connection::open(&url).map_err(db_error)?;
        conn.execute("begin", &[]).map_err(db_error)?;
        let mut tx = RlsTransaction { conn, open: true };
        let params: Vec<ParameterValue> =
            db::request_context_params(principal).into_iter().map(ParameterValue::Str).collect();
        tx.query(db::SET_REQUEST_CONTEXT, &params)?;
        Ok(tx)
    }

    /// A query returning rows.
    pub fn query(&mut self, sql: &str, params: &[ParameterValue]) -> Result<RowSet, ApiError> {
        self.conn.query(sql, params).map_err(db_error)
    }

    /// A statement returning the affected row count.
    pub fn execute(&mut self, sql: &str, params: &[ParameterValue]) -> Result<u64, ApiError> {
        self.conn.execute(sql, params).map_err(db_error)
    }

    /// A query whose single row and column is JSON text (`row_to_json(..)::text`); `None` when no
    /// row came back.
    pub fn query_json(&mut self, sql: &str, params: &[ParameterValue]) -> Result<Option<String>, ApiError> {
        let rows = self.query(sql, params)?;
        match rows.rows.first().and_then(|r| r.first()) {
            None | Some(pg4::DbValue::DbNull) => Ok(None),
            Some(pg4::DbValue::Str(s)) => Ok(Some(s.clone())),
            Some(pg4::DbValue::Jsonb(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
            Some(_) => Err(ApiError::internal("unexpected column type from the database")),
        }
    }

    /// Commits; the work is durable once this returns `Ok`.
    pub fn commit(mut self) -> Result<(), ApiError> {
        self.open = false;
        self.conn.execute("commit", &[]).map_err(db_error).map(|_| ())
    }
}

impl Drop for RlsTransaction {
    fn drop(&mut self) {
        if self.open {
            // Best effort: hosts that pool connections must not get one back mid-transaction.
            let _ = self.conn.execute("rollback", &[]);
        }
    }
}

impl RlsTransaction {
    /// Switches the rest of the transaction to `service_role`, for bookkeeping users may read but
    /// never write themselves (`api_usage`). Only after the caller's own statements.
    pub fn become_service_role(&mut self) -> Result<(), ApiError> {
        self.query("select set_config('role', 'service_role', true)", &[]).map(|_| ())
    }
}

/// A keyset page from rows of `(row_to_json text, created_at micros, id)`, fetched with
/// `limit + 1` to learn whether more follow: the JSON text `{"data": [...], "next_cursor", "has_more"}`.
pub fn page(rows: Vec<Vec<DbValue>>, limit: u32) -> Result<String, ApiError> {
    let has_more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(rows.len().min(limit as usize));
    let mut last = None;
    for row in rows.into_iter().take(limit as usize) {
        match row.as_slice() {
            [DbValue::Str(json), DbValue::Int64(micros), DbValue::Uuid(id)] => {
                items.push(json.clone());
                last = Some((*micros, id.clone()));
            }
            _ => return Err(ApiError::internal("unexpected row shape from the database")),
        }
    }
    let next_cursor = match (has_more, last) {
        (true, Some((micros, id))) => {
            let id = id.parse().map_err(|_| ApiError::internal("bad id from the database"))?;
            serde_json::Value::String(crate::pagination::Cursor { created_at_micros: micros, id }.encode())
        }
        _ => serde_json::Value::Null,
    };
    Ok(format!("{{\"data\":[{}],\"next_cursor\":{next_cursor},\"has_more\":{has_more}}}", items.join(",")))
}

/// The `cursor` query parameter as the two keyset parameters (`created_at` micros, id), both
/// NULL for the first page.
pub fn cursor_params(incoming: &Incoming) -> Result<(ParameterValue, ParameterValue), ApiError> {
    Ok(match incoming.query_param("cursor").filter(|c| !c.is_empty()) {
        Some(raw) => {
            let c = crate::pagination::Cursor::decode(&raw)?;
            (ParameterValue::Int64(c.created_at_micros), ParameterValue::Uuid(c.id.to_string()))
        }
        None => (ParameterValue::DbNull, ParameterValue::DbNull),
    })
}

/// The response side: sends once, with CORS on everything.
pub struct Responder {
    out: Option<ResponseOutparam>,
    origin: Option<String>,
    /// Headers every response of this request carries (the rate-limit state once admitted).
    pub extra: Vec<(String, String)>,
}

/// A response body being written.
pub type BodySink = Pin<Box<dyn futures::Sink<Vec<u8>, Error = crate::outbound::StreamError>>>;

impl Responder {
    /// A responder for `out`; `origin` is echoed in the CORS headers.
    pub fn new(out: ResponseOutparam, origin: Option<String>) -> Self {
        Responder { out: Some(out), origin, extra: Vec::new() }
    }

    /// Sends the head (status, `headers`, CORS, [`Responder::extra`]) and returns the body to
    /// stream into; `None` if a response was already sent.
    pub fn start(&mut self, status: u16, headers: &[(&str, String)]) -> Option<BodySink> {
        let out = self.out.take()?;
        let mut list: Vec<(String, Vec<u8>)> =
            headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        for (n, v) in crate::cors::headers(self.origin.as_deref()) {
            list.push((n.to_owned(), v.into_bytes()));
        }
        for (n, v) in &self.extra {
            if !list.iter().any(|(k, _)| k.eq_ignore_ascii_case(n)) {
                list.push((n.clone(), v.clone().into_bytes()));
            }
        }
        let fields = Fields::from_list(&list).unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(fields);
        let _ = response.set_status_code(status);
        let body: BodySink = Box::pin(response.take_body());
        out.set(response);
        Some(body)
    }

    /// A whole response.
    pub async fn send(&mut self, status: u16, headers: &[(&str, String)], body: Vec<u8>) {
        if let Some(mut sink) = self.start(status, headers) {
            if !body.is_empty() {
                let _ = sink.send(body).await;
            }
        }
    }

    /// A JSON response.
    pub async fn json(&mut self, status: u16, v: &Value, extra: &[(&str, String)]) {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        headers.extend(extra.iter().cloned());
        self.send(status, &headers, v.to_string().into_bytes()).await
    }

    /// The error envelope with the error's own headers.
    pub async fn error(&mut self, e: &ApiError) {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        for (n, v) in &e.headers {
            headers.push((n.as_str(), v.clone()));
        }
        self.send(e.status, &headers, e.body()).await
    }
}
