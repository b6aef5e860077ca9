//! The admin listener (`chatedge up --admin-listen`, loopback by default): `GET /metrics` in
//! Prometheus' OpenMetrics text, on its own socket so the public port never exposes it.
//!
//! Gauges that are cheaper to read than to track (the Postgres pools, the sandbox's queue) are
//! read at scrape time.

use crate::server::App;
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Content type of the OpenMetrics text exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits on the sandbox's health answer.
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(1);

/// A running admin listener.
pub struct AdminServer {
    /// The address bound (port 0 resolved).
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a scrape reads besides the registry.
struct Sources {
    app: Arc<App>,
    /// `<sandbox_url>/health`, when the app has a plain-HTTP sandbox.
    sandbox_health: Option<String>,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

/// Serves the admin endpoints on `addr` (for the app's lifetime: dropping the server stops it).
/// `sandbox_url` is the app's `sandbox_url` variable, for the queue depth.
pub fn start(addr: SocketAddr, app: Arc<App>, sandbox_url: Option<&str>) -> Result<AdminServer> {
    let std_listener = netserve::bind(addr).with_context(|| format!("admin listener on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let local_addr = listener.local_addr()?;
    let sources = Arc::new(Sources {
        app,
        sandbox_health: sandbox_url
            .filter(|u| u.starts_with("http://"))
            .map(|u| format!("{}/health", u.trim_end_matches('/'))),
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
    });
    // A handful of scrapers, not the public: a small connection cap.
    let limits = netserve::Limits { max_connections: 16, ..netserve::Limits::default() };
    let builder = Arc::new(limits.builder());
    let handle = move |accepted: netserve::Accepted| {
        let (sources, builder) = (sources.clone(), builder.clone());
        async move {
            let netserve::Accepted { io, permit, .. } = accepted;
            let service = hyper::service::service_fn(move |req| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(answer(&sources, req).await) }
            });
            let _ = builder.serve_connection(io, service).await;
            drop(permit);
        }
    };
    let task = tokio::spawn(netserve::serve(listener, limits, handle, std::future::pending()));
    Ok(AdminServer { local_addr, task })
}

async fn answer(sources: &Sources, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        r
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            refresh(sources).await;
            reply(StatusCode::OK, OPENMETRICS, crate::metrics::metrics().encode())
        }
        (_, "/metrics") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "the admin listener serves /metrics\n".into()),
    }
}

/// Reads the scrape-time gauges.
async fn refresh(sources: &Sources) {
    let metrics = crate::metrics::metrics();
    let (in_use, idle, max) = sources.app.runtime.postgres_status();
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    metrics.set_postgres(gauge(in_use), gauge(idle), gauge(max));
    if let Some(url) = &sources.sandbox_health {
        match sandbox_queued(&sources.client, url).await {
            Some(q) => metrics.set_sandbox_queue(q),
            None => tracing::debug!("metrics: the sandbox's health ({url}) did not answer"),
        }
    }
}

/// The sandbox's `queued` count from its health answer.
async fn sandbox_queued(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Option<i64> {
    let req = Request::get(url).body(Empty::new()).ok()?;
    let res = tokio::time::timeout(SANDBOX_TIMEOUT, client.request(req)).await.ok()?.ok()?;
    if !res.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(SANDBOX_TIMEOUT, http_body_util::Limited::new(res.into_body(), 64 << 10).collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    serde_json::from_slice::<serde_json::Value>(&body).ok()?["queued"].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-answer-fits-all HTTP server: `status` and `body` for every request.
    async fn canned(status: &'static str, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let head =
                        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                    let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn the_queue_depth_is_read_from_the_sandboxs_health() {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let healthy = canned("200 OK", r#"{"status":"ok","languages":["python"],"queued":3}"#).await;
        assert_eq!(sandbox_queued(&client, &healthy).await, Some(3));
        let failing = canned("503 Service Unavailable", r#"{"queued":9}"#).await;
        assert_eq!(sandbox_queued(&client, &failing).await, None);
        let garbled = canned("200 OK", "queued: 4").await;
        assert_eq!(sandbox_queued(&client, &garbled).await, None);
    }
}
