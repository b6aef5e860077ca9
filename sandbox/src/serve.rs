//! The sandbox over HTTP: `POST /v1/execute` (HMAC-signed, see `shared::signing`) and
//! `GET /health`. Errors use the platform's JSON envelope; a busy sandbox answers 503 with
//! `Retry-After`.
//!
//! A request is judged before its body is read: the signing headers must be present, well
//! formed and fresh, and the declared `Content-Length` within the largest body a valid request
//! can have. Only then is the body read (bounded by that length and a deadline), the signature
//! checked over it, and the nonce recorded, so a captured request cannot be replayed.
//! Connections are served under `netserve`'s slow-client limits.

use shared::ErrorCode;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;
use shared::signing::{self, SeenNonces, SignedHeaders};
use shared::ApiError;
use tokio::net::TcpListener;

use crate::{Config, ExecuteRequest, LimitsRequest, Sandbox, SandboxError};

/// A response body: whole, or a stream of NDJSON lines.
type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

/// Lines a streamed answer may have waiting for a slow client before the execution's output
/// waits too (the output itself is bounded by its caps).
const STREAM_BUFFER: usize = 64;

/// How long after a failed load the next request may try again.
const RELOAD_AFTER: Duration = Duration::from_secs(5);

/// A sandbox to serve: loaded already, or loaded on first use (or at once in the background,
/// with [`Loader::warm`]), so a host that embeds it pays nothing until code runs. A load that
/// fails is not kept: a later request (at most one per [`RELOAD_AFTER`]) tries again, so a
/// runtime that appears after start-up (a snapshot finished elsewhere, a file restored) is
/// picked up without a restart.
#[derive(Clone)]
pub struct Loader {
    config: Arc<Config>,
    loaded: Arc<tokio::sync::Mutex<Option<Sandbox>>>,
    failed: Arc<Mutex<Option<(Instant, String)>>>,
    retry_after: Duration,
}

impl Loader {
    /// A loader for `config`; nothing happens until [`Loader::get`] or [`Loader::warm`].
    pub fn new(config: Config) -> Self {
        Loader {
            config: Arc::new(config),
            loaded: Arc::new(tokio::sync::Mutex::new(None)),
            failed: Arc::new(Mutex::new(None)),
            retry_after: RELOAD_AFTER,
        }
    }

    /// How long after a failed load a request may try again (default [`RELOAD_AFTER`]).
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// A loader around an already loaded sandbox.
    pub fn ready(sandbox: Sandbox, config: Config) -> Self {
        let loader = Loader::new(config);
        loader.loaded.try_lock().map(|mut slot| *slot = Some(sandbox)).ok();
        loader
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

    /// The sandbox, loading it (on a blocking thread) if needed; concurrent callers wait for
    /// the same load.
    pub async fn get(&self) -> Result<Sandbox, String> {
        let mut slot = self.loaded.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            return Ok(sandbox.clone());
        }
        if let Some((at, message)) = self.failed.lock().ok().and_then(|f| f.clone()) {
            if at.elapsed() < self.retry_after {
                return Err(message);
            }
        }
        let config = self.config.clone();
        let loaded = match tokio::task::spawn_blocking(move || Sandbox::load(&config)).await {
            Ok(Ok(sandbox)) => Ok(sandbox),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("the loader panicked: {e}")),
        };
        match loaded {
            Ok(sandbox) => {
                *slot = Some(sandbox.clone());
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = None;
                }
                Ok(sandbox)
            }
            Err(message) => {
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = Some((Instant::now(), message.clone()));
                }
                Err(message)
            }
        }
    }
}

/// The signing secret and the nonces already used with it.
struct Signer {
    secret: Vec<u8>,
    seen: Mutex<SeenNonces>,
}

/// Most nonces remembered at once (five minutes of signed requests at ~300 per second).
const MAX_NONCES: usize = 100_000;
/// How long reading a request body may take once its head has been accepted.
const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// Serves the sandbox on `listener` under `limits`, requiring requests signed with `secret`,
/// until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sandbox: Loader,
    secret: Vec<u8>,
    limits: netserve::Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let builder = Arc::new(limits.builder());
    let signer = Arc::new(Signer { secret, seen: Mutex::new(SeenNonces::new(MAX_NONCES)) });
    let handle = move |accepted: netserve::Accepted| {
        let (builder, sandbox, signer) = (builder.clone(), sandbox.clone(), signer.clone());
        async move {
            let netserve::Accepted { io, permit, .. } = accepted;
            let service = hyper::service::service_fn(move |req| {
                let (sandbox, signer) = (sandbox.clone(), signer.clone());
                async move { Ok::<_, Infallible>(handle(&sandbox, &signer, req).await) }
            });
            if let Err(e) = builder.serve_connection(io, service).await {
                tracing::debug!("sandbox connection: {e}");
            }
            drop(permit);
        }
    };
    netserve::serve(listener, limits, handle, shutdown).await;
    Ok(())
}

async fn handle(loader: &Loader, signer: &Signer, req: Request<Incoming>) -> Response<Body> {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => match loader.get().await {
            Ok(sandbox) => {
                let body = serde_json::json!({"status": "ok", "languages": sandbox.languages(), "queued": sandbox.queued(),
                                       "sessions": sandbox.sessions()});
                Ok(json(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()))
            }
            Err(e) => Err(load_failed(&e)),
        },
        (&Method::POST, "/v1/execute") => execute(loader, signer, req, request_id.as_deref()).await,
        (&Method::POST, "/v1/sessions/end") => end_session(loader, signer, req).await,
        (_, "/v1/sessions/end") => Err(ApiError::method_not_allowed("POST")),
        (_, "/health") => Err(ApiError::method_not_allowed("GET")),
        (_, "/v1/execute") => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found("route")),
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            let error = match &request_id {
                Some(id) => error.with_detail("request_id", id),
                None => error,
            };
            error_response(&error)
        }
    }
}

fn load_failed(reason: &str) -> ApiError {
    tracing::error!("sandbox unavailable: {reason}");
    ApiError::unavailable(ErrorCode::SandboxUnavailable, "the sandbox failed to load its runtimes")
        .with_header("retry-after", "5")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A signed request's body, once its head, length, signature and nonce all hold; with the
/// loaded sandbox.
async fn signed_body(loader: &Loader, signer: &Signer, req: Request<Incoming>) -> Result<(Sandbox, Bytes), ApiError> {
    // The head first: unsigned, stale or oversized requests cost no body read, no load.
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let signed = SignedHeaders::parse(
        now_secs(),
        header(signing::TIMESTAMP_HEADER),
        header(signing::NONCE_HEADER),
        header(signing::SIGNATURE_HEADER),
    )
    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let sandbox = loader.get().await.map_err(|e| load_failed(&e))?;
    let policy = sandbox.policy();
    let body_limit = policy.max_request_bytes();
    let declared = header(http::header::CONTENT_LENGTH.as_str()).and_then(|v| v.trim().parse::<usize>().ok());
    let Some(length) = declared else {
        return Err(ApiError::new(411, ErrorCode::LengthRequired, "a signed request declares its Content-Length"));
    };
    if length > body_limit {
        return Err(ApiError::payload_too_large(body_limit));
    }
    let body = netserve::read_body(req.into_body(), length, BODY_DEADLINE).await.ok_or_else(|| {
        ApiError::bad_request(ErrorCode::BodyReadFailed, "the request body could not be read in time")
    })?;
    signed.verify(&signer.secret, &body).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    signer
        .seen
        .lock()
        .map_err(|_| ApiError::internal("the nonce registry is unusable"))?
        .record(now_secs(), &signed)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    Ok((sandbox, body))
}

async fn end_session(loader: &Loader, signer: &Signer, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (sandbox, body) = signed_body(loader, signer, req).await?;
    let request: crate::EndSession = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidRequest, format!("invalid end-session request: {e}")))?;
    if sandbox.end_session(&request.owner, &request.id) {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    } else {
        Err(ApiError::not_found("session"))
    }
}

async fn execute(
    loader: &Loader,
    signer: &Signer,
    req: Request<Incoming>,
    request_id: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (sandbox, body) = signed_body(loader, signer, req).await?;
    let request: ExecuteRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidRequest, format!("invalid execute request: {e}")))?;
    let limits = LimitsRequest {
        timeout_ms: request.timeout_ms,
        fuel: request.fuel,
        memory_bytes: request.memory_bytes,
        output_bytes: request.output_bytes,
    };
    let stdin = request.stdin.unwrap_or_default();
    if request.stream {
        if request.session.is_some() && !stdin.is_empty() {
            return Err(ApiError::bad_request(ErrorCode::InvalidRequest, "stdin is not available in a session"));
        }
        let run = Run { language: request.language, code: request.code, stdin, files: request.files, limits };
        return Ok(stream(sandbox, run, request.session));
    }
    let started = Instant::now();
    let outcome = match &request.session {
        Some(_) if !stdin.is_empty() => {
            return Err(ApiError::bad_request(ErrorCode::InvalidRequest, "stdin is not available in a session"));
        }
        Some(session) => sandbox
            .run_session(
                request.language,
                &session.owner,
                session.id.as_deref(),
                &request.code,
                &request.files,
                &limits,
            )
            .await
            .map_err(api_error)?,
        None => sandbox
            .run_with_files(request.language, &request.code, stdin.as_bytes(), &request.files, &limits)
            .await
            .map_err(api_error)?,
    };
    tracing::info!(
        "execute {:?} {:?} {:.1}ms request_id={}",
        request.language,
        outcome.status,
        started.elapsed().as_secs_f64() * 1000.0,
        request_id.unwrap_or("-")
    );
    let body = serde_json::to_vec(&outcome).map_err(|e| {
        tracing::error!("serializing an outcome: {e}");
        ApiError::internal("the sandbox could not encode its answer")
    })?;
    Ok(json(StatusCode::OK, body))
}

/// A streamed execution: `200 application/x-ndjson` at once, then one [`StreamEvent`] per line
/// as the program writes, the outcome (or the refusal) last. The execution runs in a task of
/// its own; a client that goes away drops the stream's receiver and the execution with it.
fn stream(sandbox: Sandbox, run: Run, session: Option<wire::SessionRequest>) -> Response<Body> {
    let (lines, receiver) = tokio::sync::mpsc::channel::<Bytes>(STREAM_BUFFER);
    tokio::spawn(async move {
        let (tap, mut chunks) = tokio::sync::mpsc::unbounded_channel();
        let Run { language, code, stdin, files, limits } = &run;
        type Running<'a> = std::pin::Pin<Box<dyn Future<Output = Result<wire::Outcome, SandboxError>> + Send + 'a>>;
        let run: Running<'_> = match &session {
            Some(s) => Box::pin(sandbox.run_session_streaming(
                *language,
                &s.owner,
                s.id.as_deref(),
                code,
                files,
                limits,
                Some(&tap),
            )),
            None => Box::pin(sandbox.run_streaming(*language, code, stdin.as_bytes(), files, limits, Some(&tap))),
        };
        tokio::pin!(run);
        let mut pending = Utf8Carry::default();
        let result = loop {
            tokio::select! {
                Some((channel, bytes)) = chunks.recv() => {
                    if let Some(event) = pending.event(channel, &bytes) {
                        if lines.send(line(&event)).await.is_err() {
                            return; // the client left: the execution is dropped with this task
                        }
                    }
                }
                result = &mut run => break result,
            }
        };
        // Output written just before the end, then the end.
        while let Ok((channel, bytes)) = chunks.try_recv() {
            if let Some(event) = pending.event(channel, &bytes) {
                let _ = lines.send(line(&event)).await;
            }
        }
        for event in pending.rest() {
            let _ = lines.send(line(&event)).await;
        }
        let last = match result {
            Ok(outcome) => wire::StreamEvent::Outcome { outcome: Box::new(outcome) },
            Err(e) => {
                let e = api_error(e);
                let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap_or_default();
                wire::StreamEvent::Error { status: e.status, error: body["error"].clone() }
            }
        };
        let _ = lines.send(line(&last)).await;
    });
    let body = StreamBody::new(futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (Ok::<_, Infallible>(hyper::body::Frame::data(bytes)), receiver))
    }));
    let mut response = Response::new(body.boxed_unsync());
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    response
}

/// What a streamed execution runs.
struct Run {
    language: wire::Language,
    code: String,
    stdin: String,
    files: Vec<wire::InputFile>,
    limits: LimitsRequest,
}

fn line(event: &wire::StreamEvent) -> Bytes {
    let mut text = serde_json::to_vec(event).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// Each stream's incomplete UTF-8 tail, kept for its next chunk so no character is split.
#[derive(Default)]
struct Utf8Carry {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Utf8Carry {
    fn event(&mut self, channel: crate::Channel, bytes: &[u8]) -> Option<wire::StreamEvent> {
        let carry = match channel {
            crate::Channel::Stdout => &mut self.stdout,
            crate::Channel::Stderr => &mut self.stderr,
        };
        carry.extend_from_slice(bytes);
        // Up to 3 bytes of a character may wait; anything else invalid is replaced now.
        let complete = match std::str::from_utf8(carry) {
            Ok(_) => carry.len(),
            Err(e) if e.error_len().is_none() && carry.len() - e.valid_up_to() <= 3 => e.valid_up_to(),
            Err(_) => carry.len(),
        };
        if complete == 0 {
            return None;
        }
        let data = String::from_utf8_lossy(&carry[..complete]).into_owned();
        carry.drain(..complete);
        Some(match channel {
            crate::Channel::Stdout => wire::StreamEvent::Stdout { data },
            crate::Channel::Stderr => wire::StreamEvent::Stderr { data },
        })
    }

    fn rest(&mut self) -> Vec<wire::StreamEvent> {
        let mut out = Vec::new();
        for (channel, carry) in [(crate::Channel::Stdout, &mut self.stdout), (crate::Channel::Stderr, &mut self.stderr)]
        {
            if !carry.is_empty() {
                let data = String::from_utf8_lossy(carry).into_owned();
                carry.clear();
                out.push(match channel {
                    crate::Channel::Stdout => wire::StreamEvent::Stdout { data },
                    crate::Channel::Stderr => wire::StreamEvent::Stderr { data },
                });
            }
        }
        out
    }
}

/// The HTTP face of a refusal.
pub fn api_error(error: SandboxError) -> ApiError {
    match error {
        SandboxError::Invalid(message) => ApiError::bad_request(ErrorCode::InvalidRequest, message),
        SandboxError::TooLarge(message) => ApiError::new(413, ErrorCode::PayloadTooLarge, message),
        SandboxError::Busy => ApiError::unavailable(ErrorCode::SandboxBusy, error.to_string()),
        SandboxError::Unavailable(message) => ApiError::unavailable(ErrorCode::LanguageUnavailable, message),
        SandboxError::SessionNotFound(message) => ApiError::new(404, ErrorCode::NotFound, message),
        SandboxError::TooManySessions(message) => ApiError::new(409, ErrorCode::Conflict, message),
        SandboxError::Internal(e) => {
            tracing::error!("sandbox: {e:?}");
            ApiError::internal("the sandbox failed to start the execution")
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
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
