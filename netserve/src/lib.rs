//! Serving HTTP on the open internet: every listener of chatedge (the host, the sandbox service,
//! the dev S3 server) accepts through [`serve`], which bounds what one client can hold.
//!
//! - a connection cap: past [`Limits::max_connections`] open connections, accepting pauses (the
//!   kernel's backlog queues the rest) instead of piling up tasks and file descriptors;
//! - a first-bytes deadline: a connection that sends nothing (or trickles the HTTP/2 preface)
//!   for [`Limits::header_timeout`] is closed, as is an HTTP/1 request whose header has not
//!   arrived whole by then (hyper's header-read timeout, which also ends idle keep-alive);
//! - a header budget: at most [`Limits::max_headers`] headers and [`Limits::max_header_bytes`]
//!   of buffered head per request;
//! - stalled writes: a response write that makes no progress for [`Limits::write_timeout`]
//!   (a client that stopped reading) ends the connection;
//! - [`TimeoutBody`]: a request body that goes silent for [`Limits::body_idle_timeout`] or
//!   passes a size cap errors, for the servers that stream bodies on (the host).
//!
//! [`bind`] refuses an address another process holds (no `SO_REUSEPORT`), so a second server on
//! the same port fails at start instead of silently taking half of the first one's traffic.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What one server allows each client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; accepting waits past it.
    pub max_connections: usize,
    /// Until a connection's first bytes, and until each HTTP/1 request head is complete
    /// (idle keep-alive included).
    pub header_timeout: Duration,
    /// Headers per request.
    pub max_headers: usize,
    /// Bytes of request head (request line and headers) buffered per connection.
    pub max_header_bytes: usize,
    /// Longest silence inside a request body ([`TimeoutBody`]).
    pub body_idle_timeout: Duration,
    /// Longest a response write may wait on a client that does not read.
    pub write_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 << 10,
            body_idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_streams: 100,
        }
    }
}

impl Limits {
    /// The defaults, each overridable from the environment with `<prefix>_<NAME>`:
    /// `MAX_CONNECTIONS`, `HEADER_TIMEOUT_MS`, `MAX_HEADERS`, `MAX_HEADER_BYTES`,
    /// `BODY_IDLE_TIMEOUT_MS`, `WRITE_TIMEOUT_MS` (e.g. `CHATEDGE_HEADER_TIMEOUT_MS`).
    pub fn from_env(prefix: &str) -> Self {
        let num = |name: &str| -> Option<u64> {
            std::env::var(format!("{prefix}_{name}")).ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0)
        };
        let d = Limits::default();
        let ms = |name: &str, default: Duration| num(name).map(Duration::from_millis).unwrap_or(default);
        Limits {
            max_connections: num("MAX_CONNECTIONS").map(|n| n as usize).unwrap_or(d.max_connections),
            header_timeout: ms("HEADER_TIMEOUT_MS", d.header_timeout),
            max_headers: num("MAX_HEADERS").map(|n| n as usize).unwrap_or(d.max_headers),
            max_header_bytes: num("MAX_HEADER_BYTES").map(|n| n as usize).unwrap_or(d.max_header_bytes).max(8192),
            body_idle_timeout: ms("BODY_IDLE_TIMEOUT_MS", d.body_idle_timeout),
            write_timeout: ms("WRITE_TIMEOUT_MS", d.write_timeout),
            max_streams: d.max_streams,
        }
    }

    /// A hyper connection builder that applies the per-request limits.
    pub fn builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_headers(self.max_headers)
            .max_buf_size(self.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }
}

/// Binds `addr` for this process alone (`SO_REUSEADDR`, never `SO_REUSEPORT`): another process
/// on the same port is an error naming it, as Spin reports it.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(e.kind(), format!("{addr} is already in use"))
        } else {
            e
        }
    })?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

/// A connection accepted under the cap; the permit goes with it.
pub struct Accepted {
    /// The client's stream, with stalled writes bounded.
    pub io: TokioIo<StallGuard<TcpStream>>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection's place under the cap; released when dropped.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Accepts connections from `listener` under `limits` and hands each one that has sent its
/// first bytes to `handle`, on its own task, until `shutdown` resolves. `handle` returns the
/// connection's future (serve it with [`Limits::builder`]).
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, handle: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Accepted) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = &mut shutdown => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let (header_timeout, write_timeout) = (limits.header_timeout, limits.write_timeout);
        let handle = handle.clone();
        tokio::spawn(async move {
            // A client that connects and sends nothing (or trickles the HTTP/2 preface, which
            // hyper's version detection would wait on forever) is dropped here.
            if !matches!(tokio::time::timeout(header_timeout, first_bytes(&stream)).await, Ok(Ok(true))) {
                return;
            }
            let io = TokioIo::new(StallGuard::new(stream, write_timeout));
            handle(Accepted { io, peer, permit }).await;
        });
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from HTTP/2: a byte that does not
/// continue the HTTP/2 preface, or the whole preface. `false` when it closed first.
async fn first_bytes(stream: &TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if n >= PREFACE.len() || buf[..n] != PREFACE[..n] {
            return Ok(true);
        }
        // Part of the preface: peeking again returns at once, so wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A stream whose writes may not stall: a write that stays pending (the client stopped
/// reading, its window full) for longer than the timeout fails the connection.
pub struct StallGuard<T> {
    inner: T,
    timeout: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Guards `inner`'s writes with `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        StallGuard { inner, timeout, stalled_since: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> StallGuard<T> {
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.guard(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.guard(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.guard(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a [`TimeoutBody`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// More than this many bytes arrived.
    TooLarge(u64),
    /// Nothing arrived for this long.
    Idle(Duration),
}

impl std::fmt::Display for BodyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyLimit::TooLarge(n) => write!(f, "request body larger than {n} bytes"),
            BodyLimit::Idle(d) => write!(f, "request body silent for {} ms", d.as_millis()),
        }
    }
}

/// A request-body error: hyper's own, or a limit.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed.
    Hyper(hyper::Error),
    /// A limit was reached.
    Limit(BodyLimit),
}

pin_project_lite::pin_project! {
    /// A request body with a size cap and a between-frames idle timeout.
    pub struct TimeoutBody {
        #[pin]
        inner: Incoming,
        max_bytes: u64,
        seen: u64,
        idle: Duration,
        #[pin]
        timer: Option<tokio::time::Sleep>,
    }
}

impl TimeoutBody {
    /// Wraps `inner`, allowing `max_bytes` in all and `idle` between frames.
    pub fn new(inner: Incoming, max_bytes: u64, idle: Duration) -> Self {
        TimeoutBody { inner, max_bytes, seen: 0, idle, timer: None }
    }
}

impl Body for TimeoutBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.set(None);
                if let Some(data) = frame.data_ref() {
                    *this.seen = this.seen.saturating_add(data.len() as u64);
                    if *this.seen > *this.max_bytes {
                        return Poll::Ready(Some(Err(BodyError::Limit(BodyLimit::TooLarge(*this.max_bytes)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep(*this.idle)));
                }
                match this.timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(BodyError::Limit(BodyLimit::Idle(*this.idle))))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole (small) request body under a size cap and a total deadline, for servers that
/// need the body before acting on it (the sandbox). `None` past either.
pub async fn read_body(body: Incoming, max_bytes: usize, within: Duration) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(body, max_bytes);
    match tokio::time::timeout(within, limited.collect()).await {
        Ok(Ok(collected)) => Some(collected.to_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_bound_port_is_refused_to_a_second_binder() {
        let first = bind("127.0.0.1:0".parse().unwrap()).expect("first bind");
        let addr = first.local_addr().unwrap();
        let second = bind(addr).expect_err("the port is taken");
        assert!(second.to_string().contains("already in use"), "{second}");
    }

    #[tokio::test]
    async fn silent_and_trickling_clients_are_dropped_and_others_served() -> anyhow::Result<()> {
        let listener = bind("127.0.0.1:0".parse()?)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let limits = Limits { header_timeout: Duration::from_millis(300), max_connections: 64, ..Limits::default() };
        let builder = Arc::new(limits.builder());
        tokio::spawn(serve(
            listener,
            limits,
            move |accepted: Accepted| {
                let builder = builder.clone();
                async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"hi"),
                        )))
                    });
                    let _ = builder.serve_connection(accepted.io, service).await;
                }
            },
            std::future::pending(),
        ));
        let mut silent = TcpStream::connect(addr).await?;
        let mut preface = TcpStream::connect(addr).await?;
        preface.write_all(b"PRI * HTTP/2.0\r\n").await?; // part of the HTTP/2 preface, then nothing
        let mut trickle = TcpStream::connect(addr).await?;
        trickle.write_all(b"GET / HTTP/1.1\r\nx-slow: a").await?;
        // An ordinary request is answered meanwhile.
        let mut normal = TcpStream::connect(addr).await?;
        normal.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
        let mut answer = String::new();
        normal.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hi"), "{answer}");
        // Each slow one is closed by the deadline (the read ends); without one they would hang,
        // and the outer bound is only a safety net.
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            let mut buf = [0u8; 256];
            for s in [&mut silent, &mut preface, &mut trickle] {
                // Closed with unread bytes, the server's end resets: that is dropped too.
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            std::io::Result::Ok(())
        })
        .await;
        assert!(matches!(closed, Ok(Ok(()))), "slow clients were not dropped: {closed:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_write_to_a_client_that_never_reads_fails() -> anyhow::Result<()> {
        let (client, server) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(server, Duration::from_millis(100));
        let chunk = vec![0u8; 4096];
        let result = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                guarded.write_all(&chunk).await?;
            }
            #[allow(unreachable_code)]
            std::io::Result::Ok(())
        })
        .await;
        let error = result.expect("the guard, not the test's bound, ends it").expect_err("a stalled write fails");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
        Ok(())
    }
}
