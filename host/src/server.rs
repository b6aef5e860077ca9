//! The HTTP front: routes each request to a fresh instance of its component, sets Spin's request
//! headers, logs one line per request, turns a trapping guest into a JSON 500 and drains in-flight
//! requests on shutdown.

use crate::router::{Route, Router};
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// How long in-flight requests may run after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The app being served.
pub struct App {
    /// Loaded components.
    pub runtime: Runtime,
    /// Routes from the manifest.
    pub router: Router,
}

impl App {
    /// Builds the route table from the manifest's HTTP triggers.
    pub fn new(manifest: &crate::manifest::LoadedManifest, runtime: Runtime) -> Result<Self> {
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
        Ok(App { runtime, router: Router::new(routes)? })
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

/// A host-generated JSON error with CORS headers, in the functions' envelope.
pub fn json_error(
    status: StatusCode,
    code: &'static str,
    message: &str,
    origin: Option<&str>,
) -> Response<HyperOutgoingBody> {
    let body = shared::ApiError::new(status.as_u16(), code, message).body();
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

fn set(req: &mut Request<Incoming>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        req.headers_mut().insert(name, v);
    }
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
    let (component_id, response) = match app.router.route(&path) {
        None => (
            "-".to_owned(),
            json_error(
                StatusCode::NOT_FOUND,
                "route_not_found",
                &format!("no route matches {path}"),
                origin.as_deref(),
            ),
        ),
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
            for (name, value) in &m.params {
                if let Ok(n) = http::HeaderName::from_bytes(
                    format!("spin-path-match-{}", name.to_ascii_lowercase().replace('_', "-")).as_bytes(),
                ) {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        req.headers_mut().insert(n, v);
                    }
                }
            }
            let id = m.component.to_owned();
            let response = match app.runtime.components.get(&id) {
                Some(component) => invoke(&app, component.clone(), req, origin.as_deref()).await,
                None => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "component missing",
                    origin.as_deref(),
                ),
            };
            (id, response)
        }
    };
    tracing::info!(
        "{method} {path} {component_id} {} {:.2}ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    response
}

async fn invoke(
    app: &Arc<App>,
    component: Arc<crate::runtime::ComponentRuntime>,
    req: Request<Incoming>,
    origin: Option<&str>,
) -> Response<HyperOutgoingBody> {
    let mut store = app.runtime.new_store(&component);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let setup = (|| -> wasmtime::Result<_> {
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        Ok((req, out))
    })();
    let (wasi_req, out) = match setup {
        Ok(v) => v,
        Err(e) => {
            return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("unacceptable request: {e}"), origin)
        }
    };
    let id = component.id.clone();
    let task = tokio::task::spawn(async move {
        let t0 = std::time::Instant::now();
        let proxy = Runtime::pre(&component).instantiate_async(&mut store).await?;
        let t1 = std::time::Instant::now();
        let r = proxy.wasi_http_incoming_handler().call_handle(&mut store, wasi_req, out).await;
        tracing::debug!("component {} instantiated in {:?}, handler ran {:?}", component.id, t1 - t0, t1.elapsed());
        r
    });
    match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => {
            tracing::error!("component '{id}' answered with an error: {code:?}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the function failed", origin)
        }
        Err(_) => {
            match task.await {
                Ok(Ok(())) => tracing::error!("component '{id}' returned without setting a response"),
                Ok(Err(e)) => tracing::error!("component '{id}' trapped: {e:?}"),
                Err(e) => tracing::error!("component '{id}' task failed: {e}"),
            }
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the function failed", origin)
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let local = listener.local_addr().context("listener address")?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, req, client, local).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {client}: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::debug!("draining in-flight requests (up to {}s)", DRAIN_TIMEOUT.as_secs());
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
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

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `app` thread-per-core: each of `threads` threads runs its own single-threaded runtime
/// and its own `SO_REUSEPORT` listener on the same address, so a request's connection, guest
/// instance and response body never hop between threads (each hop is a futex wake-up).
pub fn start(listen: SocketAddr, app: Arc<App>, threads: usize) -> Result<Running> {
    let (shutdown, _) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    let mut addr = listen;
    for i in 0..threads.max(1) {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let app = app.clone();
        let mut stop = shutdown.subscribe();
        let handle = std::thread::Builder::new().name(format!("chatedge-http-{i}")).spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let listener = match bind_reuseport(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("binding {addr}: {e}")));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(listener.local_addr().map_err(anyhow::Error::from));
                serve(listener, app, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            })
        })?;
        addr = ready_rx.recv().context("server thread died")??;
        handles.push(handle);
    }
    Ok(Running { local_addr: addr, shutdown, threads: handles })
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
