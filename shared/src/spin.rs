//! Glue between spin-sdk 5.2 and the pure logic: request context, responses with CORS, variables
//! and the per-request RLS transaction over `spin:postgres/postgres@4.0.0`.

use crate::auth::{AuthConfig, Principal};
use crate::db::{self, DbFailure};
use crate::error::ApiError;
use crate::ErrorCode;
use futures::SinkExt;
use serde_json::Value;
use spin_sdk::http::{Fields, IncomingRequest, Method, OutgoingResponse, Request, Response, ResponseOutparam};
use spin_sdk::pg4::{self, Connection, DbValue, ParameterValue, RowSet};
use std::pin::Pin;

/// Largest JSON body the CRUD routes accept.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// The parts of a request a handler reads, taken from its head: nothing of the body is read
/// until the handler has authenticated the caller and asks for it with a cap ([`read_body`]).
#[derive(Clone)]
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
    /// `x-request-id` as the host set it, for error envelopes and log lines.
    pub request_id: Option<String>,
    /// The whole body, once read (empty until then).
    pub body: Vec<u8>,
    /// `Content-Length`, when declared.
    pub content_length: Option<u64>,
}

/// The first value of header `name` of `req`, as text.
pub fn header(req: &IncomingRequest, name: &str) -> Option<String> {
    req.headers().get(name).into_iter().next().map(|v| String::from_utf8_lossy(&v).into_owned())
}

impl Incoming {
    /// The request's head.
    pub fn from_head(req: &IncomingRequest) -> Self {
        let header = |n: &str| header(req, n);
        let path_info = header("spin-path-info").filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
        // Spin passes the query in the full URL (and the path-with-query).
        let query = req
            .path_with_query()
            .and_then(|p| p.split_once('?').map(|(_, q)| q.to_owned()))
            .or_else(|| header("spin-full-url").and_then(|u| u.split_once('?').map(|(_, q)| q.to_owned())))
            .unwrap_or_default();
        Incoming {
            method: req.method(),
            path_info,
            query,
            origin: header("origin"),
            authorization: header("authorization"),
            request_id: header("x-request-id"),
            body: Vec::new(),
            content_length: header("content-length").and_then(|v| v.trim().parse().ok()),
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
        serde_json::from_slice(&self.body).map_err(|e| ApiError::invalid_body(&e))
    }

    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::pagination::query_param(&self.query, name)
    }
}

/// Reads the rest of `req`'s body, at most `max` bytes: a declared `Content-Length` past it is
/// a 413 before anything is read, and a body that keeps coming is cut off the moment it passes
/// the cap (also a 413).
pub async fn read_body(req: IncomingRequest, declared: Option<u64>, max: usize) -> Result<Vec<u8>, ApiError> {
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::payload_too_large(max));
    }
    let unreadable = || ApiError::bad_request(ErrorCode::BodyReadFailed, "the request body could not be read");
    let body = req.consume().map_err(|()| unreadable())?;
    let stream = body.stream().map_err(|()| unreadable())?;
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(max));
    while let Some(chunk) = crate::outbound::read_chunk(&stream, 1 << 20).await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if out.len() + chunk.len() > max {
            return Err(ApiError::payload_too_large(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A whole response a handler returns.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers besides CORS.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON response from already serialized JSON text (e.g. built by Postgres).
    pub fn json_text(status: u16, json: String) -> Self {
        Reply { status, headers: vec![("content-type".into(), "application/json".into())], body: json.into_bytes() }
    }

    /// A JSON response from a serializable value.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        Reply::json_text(status, serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
    }

    /// A response without a body (204).
    pub fn empty(status: u16) -> Self {
        Reply { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// What a handler that may stream answers.
pub enum Answered {
    /// A whole response for [`serve_streaming`] to send.
    Reply(Reply),
    /// The handler sent its own response through the [`Responder`] (a stream).
    Streamed,
}

/// [`serve`] for a handler that may stream: it gets the [`Responder`] too, and answers
/// [`Answered::Streamed`] once it has responded itself. An error it returns before starting a
/// response gets the envelope as usual.
pub async fn serve_streaming(
    req: IncomingRequest,
    out: ResponseOutparam,
    handler: impl AsyncFnOnce(&Incoming, IncomingRequest, &mut Responder) -> Result<Answered, ApiError>,
) {
    let incoming = Incoming::from_head(&req);
    let mut responder = Responder::new(out, incoming.origin.clone());
    responder.request_id = incoming.request_id.clone();
    if incoming.method == Method::Options {
        responder.send(204, &[], Vec::new()).await;
        return;
    }
    match handler(&incoming, req, &mut responder).await {
        Ok(Answered::Reply(reply)) => {
            let headers: Vec<(&str, String)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
            responder.send(reply.status, &headers, reply.body).await
        }
        Ok(Answered::Streamed) => {}
        Err(e) => responder.error(&e).await,
    }
}

/// Runs a handler: preflight, the error envelope (with the request id; internal details to the
/// log) and CORS on every response. The handler gets the request's head and the request itself,
/// whose body it reads with [`read_body`] once it knows who is calling.
pub async fn serve(
    req: IncomingRequest,
    out: ResponseOutparam,
    handler: impl AsyncFnOnce(&Incoming, IncomingRequest) -> Result<Reply, ApiError>,
) {
    serve_streaming(req, out, async |incoming, req, _| handler(incoming, req).await.map(Answered::Reply)).await
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
        Some(bytes) => Some(crate::auth::parse_jwks(&bytes).map_err(|_| {
            ApiError::unavailable(ErrorCode::AuthKeysUnavailable, "the JWKS document could not be parsed")
        })?),
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
    let unavailable = || ApiError::unavailable(ErrorCode::AuthKeysUnavailable, "could not fetch the JWKS");
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
        Err(e) if config.lacks_key_for(incoming.authorization.as_deref()) => match source {
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
    db::api_error(&f).logged(format!("database: {f:?}"))
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

    /// A query whose single row and column is JSON text (`row_to_json(..)::text`); `None` when
    /// it is NULL. Write it to return one row always (`select (select ... )`, an aggregate): a
    /// query with no rows never returns under Spin 4.0.2 (its `spin:postgres@4` waits for the
    /// column list, which is sent with the first row).
    pub fn query_json(&mut self, sql: &str, params: &[ParameterValue]) -> Result<Option<String>, ApiError> {
        let rows = self.query(sql, params)?;
        match rows.rows.first().and_then(|r| r.first()) {
            None | Some(pg4::DbValue::DbNull) => Ok(None),
            Some(pg4::DbValue::Str(s)) => Ok(Some(s.clone())),
            Some(pg4::DbValue::Jsonb(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
            Some(_) => Err(ApiError::internal("unexpected column type from the database")),
        }
    }

    /// Whether a `select count(*) ...` counts anything (an aggregate: one row always, see
    /// [`RlsTransaction::query_json`]).
    pub fn exists(&mut self, count_sql: &str, params: &[ParameterValue]) -> Result<bool, ApiError> {
        let rows = self.query(count_sql, params)?;
        match rows.rows.first().and_then(|r| r.first()) {
            Some(DbValue::Int64(n)) => Ok(*n > 0),
            _ => Err(ApiError::internal("a count returned no number")),
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

/// The select list that folds a page query's rows (a subquery aliased `p`, with `created_at`
/// and `id` columns, newest first) into one row: a JSON array of `[row, created_at micros, id]`.
/// One row whatever the page holds, because a query with no rows never returns under Spin 4.0.2
/// (its `spin:postgres@4` waits for the columns, which come with the first row).
pub const PAGE_ROWS_DESC: &str = "coalesce(json_agg(json_build_array(row_to_json(p), \
     (extract(epoch from p.created_at) * 1000000)::int8, p.id) order by p.created_at desc, p.id desc), '[]')::text";

/// [`PAGE_ROWS_DESC`], oldest first.
pub const PAGE_ROWS_ASC: &str = "coalesce(json_agg(json_build_array(row_to_json(p), \
     (extract(epoch from p.created_at) * 1000000)::int8, p.id) order by p.created_at, p.id), '[]')::text";

/// A keyset page from a [`PAGE_ROWS_DESC`] row fetched with `limit + 1` rows, to learn whether
/// more follow: the JSON text `{"data": [...], "next_cursor", "has_more"}`.
pub fn page(rows: Option<&str>, limit: u32) -> Result<String, ApiError> {
    crate::pagination::page(rows.unwrap_or("[]"), limit)
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
    /// The request's id, put in every error envelope and log line.
    pub request_id: Option<String>,
}

/// A response body being written.
pub type BodySink = Pin<Box<dyn futures::Sink<Vec<u8>, Error = crate::outbound::StreamError>>>;

impl Responder {
    /// A responder for `out`; `origin` is echoed in the CORS headers.
    pub fn new(out: ResponseOutparam, origin: Option<String>) -> Self {
        Responder { out: Some(out), origin, extra: Vec::new(), request_id: None }
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
        // The request's id, so a client can quote it (the same id is in the host's log line).
        if let Some(id) = &self.request_id {
            list.push(("x-request-id".to_owned(), id.clone().into_bytes()));
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

    /// The error envelope with the error's own headers and the request id; what the error
    /// keeps for the log is logged here, with the same id.
    pub async fn error(&mut self, e: &ApiError) {
        let id = self.request_id.clone().unwrap_or_else(|| "-".to_owned());
        if let Some(detail) = &e.log {
            eprintln!("request_id={id} {} {}: {detail}", e.status, e.code);
        }
        let e = match &self.request_id {
            Some(id) => e.clone().with_detail("request_id", id),
            None => e.clone(),
        };
        let mut headers = vec![("content-type", "application/json".to_owned())];
        for (n, v) in &e.headers {
            headers.push((n.as_str(), v.clone()));
        }
        self.send(e.status, &headers, e.body()).await
    }
}
