//! Outbound HTTP/1 connections kept alive per origin (scheme, host, port): the wasi:http sender
//! of `outbound.rs`. wasmtime's default sender opens a new TCP (and TLS) connection for every
//! request, which a chat pays for before its first token; this one keeps each connection whose
//! response was read to its end and hands it to the next request to the same origin.
//!
//! What is never reused: a connection whose response ended in an error, a timeout, or was
//! dropped before its end (a client that went away); one the server closed or asked to close;
//! one idle longer than [`IDLE_FOR`]. A request that a reused connection hands back unsent (the
//! server closed it as we wrote) goes once more on a new connection. The request options'
//! connect, first-byte and between-bytes timeouts hold as in wasmtime's own sender.
//!
//! Idle connections live per worker thread (the host runs one single-threaded runtime per
//! core, and a connection's driver task lives on the runtime that opened it).

use bytes::Bytes;
use http::uri::Scheme;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Most idle connections kept per origin and thread.
pub const MAX_IDLE_PER_ORIGIN: usize = 32;
/// How long an idle connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);
/// A timeout the request options leave unset (wasmtime's default).
const UNSET_TIMEOUT: Duration = Duration::from_secs(600);

type Sender = SendRequest<WasiBody>;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Origin {
    tls: bool,
    /// `host:port`.
    authority: String,
}

struct IdleConnection {
    sender: Sender,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Origin, Vec<IdleConnection>>> = RefCell::new(HashMap::new());
    static OPENED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Connections this thread has opened so far (for tests and the bench).
pub fn connections_opened() -> u64 {
    OPENED.with(|o| o.get())
}

fn take_idle(origin: &Origin) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(origin)?;
        // Newest first: the one most likely still open on the server's side.
        while let Some(c) = list.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < IDLE_FOR {
                return Some(c.sender);
            }
        }
        None
    })
}

fn give_back(origin: Origin, sender: Sender) {
    if sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(origin).or_default();
        list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE_FOR);
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push(IdleConnection { sender, since: Instant::now() });
        }
    });
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config =
                match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
                    Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
                    // The ring provider supports the default versions; this branch cannot be taken.
                    Err(_) => rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                };
            Arc::new(config)
        })
        .clone()
}

fn server_name(authority: &str) -> Result<rustls::pki_types::ServerName<'static>, Error> {
    if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
        return Ok(rustls::pki_types::ServerName::from(addr.ip()));
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Ok(rustls::pki_types::ServerName::try_from(host.to_owned())?)
}

/// Opens a connection to `origin` and starts its driver task.
async fn connect(origin: &Origin, timeout: Duration) -> Result<Sender, Error> {
    let open = async {
        let tcp = tokio::net::TcpStream::connect(&origin.authority).await.map_err(Error::Connect)?;
        let _ = tcp.set_nodelay(true);
        if origin.tls {
            let connector = tokio_rustls::TlsConnector::from(tls_config());
            let stream = connector.connect(server_name(&origin.authority)?, tcp).await.map_err(Error::Tls)?;
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, WasiBody>(hyper_util::rt::TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<Sender, Error>(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, WasiBody>(hyper_util::rt::TokioIo::new(tcp))
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<Sender, Error>(sender)
        }
    };
    let sender = tokio::time::timeout(timeout, open).await.map_err(|_| Error::ConnectionTimeout)??;
    OPENED.with(|o| o.set(o.get() + 1));
    Ok(sender)
}

/// Sends `request` on a kept connection to its origin, or a new one, honouring `options`.
pub async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<PooledBody>, Error> {
    let uri = request.uri();
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let tls = uri.scheme() == Some(&Scheme::HTTPS);
    let authority = match authority.port() {
        Some(_) => authority.to_string(),
        None => format!("{authority}:{}", if tls { 443 } else { 80 }),
    };
    let origin = Origin { tls, authority };
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(UNSET_TIMEOUT);
    let first_byte_timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(UNSET_TIMEOUT);
    let between_bytes =
        options.and_then(|o| o.between_bytes_timeout).unwrap_or(UNSET_TIMEOUT).max(Duration::from_nanos(1));
    // Origin-form on the wire: the scheme and authority are only for a proxy.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

    let mut request = Some(request);
    let mut retried = false;
    loop {
        let (mut sender, reused) = match take_idle(&origin) {
            Some(s) => (s, true),
            None => (connect(&origin, connect_timeout).await?, false),
        };
        if reused && tokio::time::timeout(connect_timeout, sender.ready()).await.map_or(true, |r| r.is_err()) {
            continue;
        }
        let Some(req) = request.take() else { return Err(Error::InternalError(Some("request lost".into()))) };
        match tokio::time::timeout(first_byte_timeout, sender.try_send_request(req)).await {
            Err(_) => return Err(Error::ConnectionReadTimeout),
            Ok(Ok(response)) => {
                let mut timeout = tokio::time::interval(between_bytes);
                timeout.reset();
                return Ok(response.map(|incoming| PooledBody { incoming, timeout, back: Some((origin, sender)) }));
            }
            Ok(Err(mut failed)) => match failed.take_message() {
                // Not written: the kept connection was closed under us; once more, on a new one.
                Some(unsent) if reused && !retried => {
                    retried = true;
                    request = Some(unsent);
                }
                _ => return Err(Error::from(failed.into_error())),
            },
        }
    }
}

/// A response body that gives its connection back once read to its end (and only then), with
/// the between-bytes timeout.
pub struct PooledBody {
    incoming: Incoming,
    timeout: tokio::time::Interval,
    back: Option<(Origin, Sender)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((origin, sender)) = self.back.take() {
                    give_back(origin, sender);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.back = None;
                Poll::Ready(Some(Err(if e.is_timeout() { Error::HttpResponseTimeout } else { Error::from(e) })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                // A reader that stops at `is_end_stream` never polls for the end: give the
                // connection back with the last frame.
                if self.incoming.is_end_stream() {
                    if let Some((origin, sender)) = self.back.take() {
                        give_back(origin, sender);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                self.back = None;
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
