//! The HTTP front: routes each request to a fresh instance of its component, sets Spin's request
//! headers and an `x-request-id`, logs one line per request, turns a trapping guest into a JSON
//! 500 and drains in-flight requests on shutdown.
//!
//! What one client can hold is bounded: connections, header time and size (`netserve`), request
//! bodies ([`ServerLimits::max_body_bytes`], and silence between body frames), and the life of
//! the guest instance serving a request ([`ServerLimits::max_request`]).

use crate::router::{Route, Router};
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use shared::ErrorCode;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// Limits of the HTTP front, from `CHATEDGE_*` environment variables.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connection-level limits (`CHATEDGE_MAX_CONNECTIONS`, `CHATEDGE_HEADER_TIMEOUT_MS`, ...).
    pub net: netserve::Limits,
    /// Largest request body any route may send (`CHATEDGE_MAX_BODY_BYTES`, 32 MiB); functions
    /// apply their own, smaller caps on top.
    pub max_body_bytes: u64,
    /// Longest life of one request's guest instance (`CHATEDGE_MAX_REQUEST_SECS`, 360 s: above
    /// the chat path's 300 s stream deadline).
    pub max_request: Duration,
    /// How long in-flight requests may finish after a shutdown signal (`CHATEDGE_DRAIN_SECS`,
    /// 360 s, so a chat stream at its deadline still ends with its rows written).
    pub drain: Duration,
}

impl ServerLimits {
    /// Defaults with the environment's overrides.
    pub fn from_env() -> Self {
        let num = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|n| *n > 0).unwrap_or(default)
        };
        ServerLimits {
            net: netserve::Limits::from_env("CHATEDGE"),
            max_body_bytes: num("CHATEDGE_MAX_BODY_BYTES", 32 << 20),
            max_request: Duration::from_secs(num("CHATEDGE_MAX_REQUEST_SECS", 360)),
            drain: Duration::from_secs(num("CHATEDGE_DRAIN_SECS", 360)),
        }
    }

    /// Makes sure the drain and instance limits outlast a stream of `stream_deadline`.
    pub fn cover(&mut self, stream_deadline: Duration) {
        let needed = stream_deadline + Duration::from_secs(30);
        if self.max_request < needed {
            tracing::warn!(
                "raising the request limit to {}s to cover streams of {}s",
                needed.as_secs(),
                stream_deadline.as_secs()
            );
            self.max_request = needed;
        }
        if self.drain < needed {
            self.drain = needed;
        }
    }
}

/// The app being served.
pub struct App {
    /// Loaded components.
    pub runtime: Runtime,
    /// Routes from the manifest.
    pub router: Router,
    /// Limits of the HTTP front.
    pub limits: ServerLimits,
}

impl App {
    /// Builds the route table from the manifest's HTTP triggers.
    pub fn new(manifest: &crate::manifest::LoadedManifest, runtime: Runtime, limits: ServerLimits) -> Result<Self> {
        let base = manifest.base();
        let routes = manifest
            .manifest
            .trigger
            .http
            .iter()
            .filter_map(|t| match &t.route {
                crate::manifest::RouteSpec::Path(p) => Some(Route::new(&base, p, &t.component)),
                crate::manifest::RouteSpec::Private { .. } => None,
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(App { runtime, router: Router::new(routes)?, limits })
    }

    /// The lines `spin up` prints: each component's URL, `(wildcard)` for `/...` routes.
    pub fn route_lines(&self, base_url: &str) -> Vec<String> {
        self.router
            .routes()
            .iter()
            .map(|r| {
                let (path, wild) = match r.raw.strip_suffix("/...") {
                    Some(p) => (p, " (wildcard)"),
                    None => (r.raw.as_str(), ""),
                };
                format!("  {}: {base_url}{path}{wild}", r.component)
            })
            .collect()
    }
}

fn full(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// A host-generated JSON error with CORS headers, in the functions' envelope (with the request
/// id, as the functions' own errors carry it).
pub fn json_error(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    origin: Option<&str>,
    request_id: &str,
) -> Response<HyperOutgoingBody> {
    let body = shared::ApiError::new(status.as_u16(), code, message).with_detail("request_id", request_id).body();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in shared::cors::headers(origin) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    response
}

fn set<B>(req: &mut Request<B>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        req.headers_mut().insert(name, v);
    }
}

/// The request's id: the client's `x-request-id` when it is a sane token, else a fresh one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

async fn handle(
    app: Arc<App>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    local: SocketAddr,
) -> Response<HyperOutgoingBody> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let id = request_id(&req);
    let span = crate::telemetry::RequestSpan::start(&method, &path, req.headers(), &id);
    let declared_length = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (component_id, route, mut response) = match app.router.route(&path) {
        None => (
            "-".to_owned(),
            "-".to_owned(),
            json_error(
                StatusCode::NOT_FOUND,
                ErrorCode::RouteNotFound,
                &format!("no route matches {path}"),
                origin.as_deref(),
                &id,
            ),
        ),
        Some(_) if declared_length.is_some_and(|n| n > app.limits.max_body_bytes) => {
            let error =
                shared::ApiError::payload_too_large(app.limits.max_body_bytes as usize).with_detail("request_id", &id);
            ("-".to_owned(), "-".to_owned(), error_response(&error, origin.as_deref()))
        }
        Some(m) => {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| local.to_string());
            let path_and_query =
                req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| path.clone());
            // Spin's request headers. A client cannot supply any `spin-*` header of its own
            // (a forged `spin-client-addr` would fool rate limits keyed on it).
            let forged: Vec<http::HeaderName> = req
                .headers()
                .keys()
                .filter(|k| k.as_str().starts_with("spin-") || k.as_str().starts_with("spin_"))
                .cloned()
                .collect();
            for name in forged {
                req.headers_mut().remove(name);
            }
            set(&mut req, "spin-full-url", &format!("http://{host}{path_and_query}"));
            set(&mut req, "spin-path-info", &m.path_info);
            set(&mut req, "spin-matched-route", m.raw);
            set(&mut req, "spin-raw-component-route", m.raw);
            set(&mut req, "spin-component-route", &m.component_route);
            set(&mut req, "spin-base-path", "/");
            set(&mut req, "spin-client-addr", &client.to_string());
            set(&mut req, "x-request-id", &id);
            for (name, value) in &m.params {
                if let Ok(n) = http::HeaderName::from_bytes(
                    format!("spin-path-match-{}", name.to_ascii_lowercase().replace('_', "-")).as_bytes(),
                ) {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        req.headers_mut().insert(n, v);
                    }
                }
            }
            let component_id = m.component.to_owned();
            let route = m.raw.to_owned();
            let response = match app.runtime.components.get(&component_id) {
                Some(component) => invoke(&app, component.clone(), req, origin.as_deref(), &id, span.context()).await,
                None => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::InternalError,
                    "component missing",
                    origin.as_deref(),
                    &id,
                ),
            };
            (component_id, route, response)
        }
    };
    // The id goes to the guest (and into its error envelopes and log lines) and into this log
    // line; a response carries only the headers its component set, as under Spin (the
    // conformance suite holds hosts to that), plus the id on the host's own errors.
    if component_id == "-" {
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", v);
        }
    }
    tracing::info!(
        "{method} {path} {component_id} {} {:.2}ms request_id={id}",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    crate::metrics::metrics().request(&component_id, &route, &method, response.status().as_u16());
    span.routed(&method, &component_id, &route, response.status().as_u16());
    response.map(move |body| {
        MeasuredBody {
            inner: body,
            on_end: Some(Box::new(move || {
                crate::metrics::metrics().request_ended(&component_id, &route, start.elapsed());
                // The request's span ends with its body (a stream's last byte).
                drop(span);
            })),
        }
        .boxed_unsync()
    })
}

/// A response body that reports when it ends: at its last frame, or when it is dropped early (the
/// client left, the instance was stopped), whichever comes first.
struct MeasuredBody {
    inner: HyperOutgoingBody,
    on_end: Option<Box<dyn FnOnce() + Send>>,
}

impl MeasuredBody {
    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl hyper::body::Body for MeasuredBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_)))) {
            self.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeasuredBody {
    fn drop(&mut self) {
        self.end();
    }
}

/// A host-made error response in the envelope, with the error's own headers and CORS.
fn error_response(e: &shared::ApiError, origin: Option<&str>) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(full(e.body()));
    *response.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in e.headers.iter().map(|(n, v)| (n.as_str(), v.clone())).chain(shared::cors::headers(origin)) {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            headers.insert(n, v);
        }
    }
    response
}

async fn invoke(
    app: &Arc<App>,
    component: Arc<crate::runtime::ComponentRuntime>,
    req: Request<Incoming>,
    origin: Option<&str>,
    request_id: &str,
    trace: Option<opentelemetry::Context>,
) -> Response<HyperOutgoingBody> {
    let mut store = app.runtime.new_store(&component, trace);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    // The body the guest reads: capped, and failing if the client goes silent mid-body.
    let limits = &app.limits;
    let req = req.map(|body| {
        netserve::TimeoutBody::new(body, limits.max_body_bytes, limits.net.body_idle_timeout).map_err(|e| match e {
            netserve::BodyError::Hyper(e) => wasmtime_wasi_http::Error::from(e),
            netserve::BodyError::Limit(netserve::BodyLimit::TooLarge(n)) => {
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(n))
            }
            netserve::BodyError::Limit(netserve::BodyLimit::Idle(_)) => {
                wasmtime_wasi_http::Error::ConnectionReadTimeout
            }
        })
    });
    let setup = (|| -> wasmtime::Result<_> {
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        Ok((req, out))
    })();
    let (wasi_req, out) = match setup {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("request {request_id}: unacceptable request: {e}");
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "the request could not be read",
                origin,
                request_id,
            );
        }
    };
    let id = component.id.clone();
    let max_request = limits.max_request;
    // The instance lives for the request, and never past `max_request`: then it is dropped,
    // whatever it was doing, and its response (or the rest of its body) ends.
    let task = tokio::task::spawn(async move {
        // Counted while the instance lives, whatever ends it.
        struct InUse(String);
        impl Drop for InUse {
            fn drop(&mut self) {
                crate::metrics::metrics().instance(&self.0, -1);
            }
        }
        crate::metrics::metrics().instance(&component.id, 1);
        let _in_use = InUse(component.id.clone());
        let run = async {
            let proxy = Runtime::pre(&component).instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, wasi_req, out).await
        };
        match tokio::time::timeout(max_request, run).await {
            Ok(r) => r.map(|()| false),
            Err(_) => Ok(true),
        }
    });
    let failed = || {
        json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "the function failed",
            origin,
            request_id,
        )
    };
    match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => {
            tracing::error!("request {request_id}: component '{id}' answered with an error: {code:?}");
            failed()
        }
        Err(_) => match task.await {
            Ok(Ok(true)) => {
                tracing::error!(
                    "request {request_id}: component '{id}' ran past {}s and was stopped",
                    max_request.as_secs()
                );
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::RequestTimeout,
                    "the function ran out of time",
                    origin,
                    request_id,
                )
            }
            other => {
                match other {
                    Ok(Ok(_)) => {
                        tracing::error!("request {request_id}: component '{id}' returned without setting a response")
                    }
                    Ok(Err(e)) => tracing::error!("request {request_id}: component '{id}' trapped: {e:?}"),
                    Err(e) => tracing::error!("request {request_id}: component '{id}' task failed: {e}"),
                }
                failed()
            }
        },
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests (up to
/// the app's drain limit).
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let local = listener.local_addr().context("listener address")?;
    let builder = Arc::new(app.limits.net.builder());
    // Every connection holds a receiver; the drain is over when the last one is dropped.
    let (drain, draining) = tokio::sync::watch::channel(false);
    let handle = {
        let app = app.clone();
        move |accepted: netserve::Accepted| {
            let (app, builder, mut draining) = (app.clone(), builder.clone(), draining.clone());
            let _ = &mut draining;
            async move {
                let netserve::Accepted { io, peer, permit } = accepted;
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, req, peer, local).await) }
                });
                let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
                tokio::pin!(conn);
                let drain = async move {
                    let _ = draining.wait_for(|d| *d).await;
                };
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = drain => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("connection from {peer}: {e}");
                }
                drop(permit);
            }
        }
    };
    netserve::serve(listener, app.limits.net.clone(), handle, shutdown).await;
    let _ = drain.send(true);
    tracing::debug!("draining in-flight requests (up to {}s)", app.limits.drain.as_secs());
    if tokio::time::timeout(app.limits.drain, drain.closed()).await.is_err() {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

/// The server threads of a running app.
pub struct Running {
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

/// Serves `app` on `threads` threads, each with its own single-threaded runtime accepting from
/// the one listening socket, so a request's connection, guest instance and response body never
/// hop between threads (each hop is a futex wake-up). The socket is bound once, for this process
/// alone: a second server on the same port fails with "already in use".
pub fn start(listen: SocketAddr, app: Arc<App>, threads: usize) -> Result<Running> {
    let listener = netserve::bind(listen)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (shutdown, _) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let socket = listener.try_clone()?;
        let app = app.clone();
        let mut stop = shutdown.subscribe();
        let handle = std::thread::Builder::new().name(format!("chatedge-http-{i}")).spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let listener = TcpListener::from_std(socket)?;
                serve(listener, app, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            })
        })?;
        handles.push(handle);
    }
    Ok(Running { local_addr, shutdown, threads: handles })
}

impl Running {
    /// Stops accepting, drains in-flight requests on every thread, and waits for them.
    pub fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            match t.join() {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("a server thread panicked"),
            }
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
