//! The sandbox over HTTP: `POST /v1/execute` (HMAC-signed, see `shared::signing`) and
//! `GET /health`. Errors use the platform's JSON envelope; a busy sandbox answers 503 with
//! `Retry-After`.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use shared::signing;
use shared::ApiError;
use tokio::net::TcpListener;

use std::sync::Arc;
use tokio::sync::OnceCell;

use crate::{Config, Language, LimitsRequest, Sandbox, SandboxError};

/// The body of `POST /v1/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// python, javascript or typescript.
    pub language: Language,
    /// The program.
    pub code: String,
    /// Standard input, as text.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Wall deadline, ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Fuel budget.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Memory cap, bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Output cap per stream, bytes.
    #[serde(default)]
    pub output_bytes: Option<u64>,
}

/// A sandbox to serve: loaded already, or loaded on first use (or at once in the background,
/// with [`Loader::warm`]), so a host that embeds it pays nothing until code runs.
#[derive(Clone)]
pub struct Loader {
    config: Arc<Config>,
    cell: Arc<OnceCell<Result<Sandbox, String>>>,
}

impl Loader {
    /// A loader for `config`; nothing happens until [`Loader::get`] or [`Loader::warm`].
    pub fn new(config: Config) -> Self {
        Loader { config: Arc::new(config), cell: Arc::new(OnceCell::new()) }
    }

    /// A loader around an already loaded sandbox.
    pub fn ready(sandbox: Sandbox, config: Config) -> Self {
        Loader { config: Arc::new(config), cell: Arc::new(OnceCell::new_with(Some(Ok(sandbox)))) }
    }

    /// Starts loading now, in the background.
    pub fn warm(&self) {
        let loader = self.clone();
        tokio::spawn(async move {
            if let Err(e) = loader.get().await {
                tracing::error!("sandbox failed to load: {e}");
            }
        });
    }

    /// The sandbox, loading it (once, on a blocking thread) if needed; concurrent callers wait
    /// for the same load.
    pub async fn get(&self) -> Result<Sandbox, String> {
        let config = self.config.clone();
        self.cell
            .get_or_init(|| async move {
                match tokio::task::spawn_blocking(move || Sandbox::load(&config)).await {
                    Ok(Ok(sandbox)) => Ok(sandbox),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(e) => Err(format!("the loader panicked: {e}")),
                }
            })
            .await
            .clone()
    }
}

/// Serves the sandbox on `listener`, requiring requests signed with `secret`, until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sandbox: Loader,
    secret: Vec<u8>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let secret: std::sync::Arc<[u8]> = secret.into();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("sandbox accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let sandbox = sandbox.clone();
                let secret = secret.clone();
                let service = hyper::service::service_fn(move |req| {
                    let sandbox = sandbox.clone();
                    let secret = secret.clone();
                    async move { Ok::<_, Infallible>(handle(&sandbox, &secret, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("sandbox connection: {e}");
                    }
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn handle(loader: &Loader, secret: &[u8], req: Request<Incoming>) -> Response<Full<Bytes>> {
    let sandbox = match loader.get().await {
        Ok(sandbox) => sandbox,
        Err(e) => {
            tracing::error!("sandbox unavailable: {e}");
            return error_response(&ApiError::unavailable(
                "sandbox_unavailable",
                "the sandbox failed to load its runtimes",
            ));
        }
    };
    match route(&sandbox, secret, req).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn route(sandbox: &Sandbox, secret: &[u8], req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            let body = serde_json::json!({"status": "ok", "languages": sandbox.languages()});
            Ok(json(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()))
        }
        (&Method::POST, "/v1/execute") => execute(sandbox, secret, req).await,
        (_, "/health") => Err(ApiError::method_not_allowed("GET")),
        (_, "/v1/execute") => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found("route")),
    }
}

async fn execute(sandbox: &Sandbox, secret: &[u8], req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let policy = sandbox.policy();
    // Room for the code, stdin and JSON escaping (up to 6 bytes per byte in the worst case).
    let body_limit = (policy.max_code_bytes + policy.max_stdin_bytes) * 6 + 4096;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (timestamp, signature) = (header(signing::TIMESTAMP_HEADER), header(signing::SIGNATURE_HEADER));
    let body = Limited::new(req.into_body(), body_limit)
        .collect()
        .await
        .map_err(|_| ApiError::payload_too_large(body_limit))?
        .to_bytes();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    signing::verify(secret, now, timestamp.as_deref(), signature.as_deref(), &body)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let request: ExecuteRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid execute request: {e}")))?;
    let limits = LimitsRequest {
        timeout_ms: request.timeout_ms,
        fuel: request.fuel,
        memory_bytes: request.memory_bytes,
        output_bytes: request.output_bytes,
    };
    let stdin = request.stdin.unwrap_or_default();
    let outcome = sandbox.run(request.language, &request.code, stdin.as_bytes(), &limits).await.map_err(api_error)?;
    let body = serde_json::to_vec(&outcome).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json(StatusCode::OK, body))
}

/// The HTTP face of a refusal.
pub fn api_error(error: SandboxError) -> ApiError {
    match error {
        SandboxError::Invalid(message) => ApiError::bad_request("invalid_request", message),
        SandboxError::TooLarge(message) => ApiError::new(413, "payload_too_large", message),
        SandboxError::Busy => ApiError::unavailable("sandbox_busy", error.to_string()).with_header("retry-after", "1"),
        SandboxError::Unavailable(message) => ApiError::unavailable("language_unavailable", message),
        SandboxError::Internal(e) => {
            tracing::error!("sandbox: {e:?}");
            ApiError::internal("the sandbox failed to start the execution")
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    let mut response =
        json(StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), error.body());
    for (name, value) in &error.headers {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value.as_str()))
        {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
