//! Outbound HTTP with per-attempt timeouts, streamed response bodies and timers, on
//! `wasi:http/outgoing-handler` directly.
//!
//! spin-sdk 5.2's `http::send` passes no `request-options`, so it cannot set connect, first-byte
//! or between-bytes timeouts, and it has no timer. This module speaks the WASI 0.2 interfaces
//! through the `wasi` crate version spin-sdk's executor itself uses, and parks on its pollables
//! with `spin_executor::push_waker`, so it composes with the spin-sdk async handler. Spin and
//! wasmtime's `default_send_request` both honour the three timeouts.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;
use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::InputStream;
/// The error of WASI streams, shared with spin-sdk's body sinks.
pub use wasi::io::streams::StreamError;

/// Monotonic time in nanoseconds.
pub fn now_ns() -> u64 {
    monotonic_clock::now()
}

/// A uniform random number in [0, 1) from the host's entropy.
pub fn random_unit() -> f64 {
    (wasi::random::random::get_random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 29 random alphanumeric characters, the shape of OpenAI's `chatcmpl-` ids.
pub fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    wasi::random::random::get_random_bytes(29).iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Waits until the monotonic clock reaches `deadline_ns`.
pub async fn sleep_until(deadline_ns: u64) {
    poll_fn(|cx| {
        if monotonic_clock::now() >= deadline_ns {
            Poll::Ready(())
        } else {
            spin_executor::push_waker(monotonic_clock::subscribe_instant(deadline_ns), cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Waits for `d`.
pub async fn sleep(d: Duration) {
    sleep_until(now_ns().saturating_add(d.as_nanos() as u64)).await
}

/// Timeouts of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP/TLS connect.
    pub connect: Duration,
    /// Until the response head.
    pub first_byte: Duration,
    /// Longest silence between body chunks.
    pub between_bytes: Duration,
}

/// Why a request produced no response.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Refused, DNS, TLS, reset before the head.
    Connect(String),
    /// Connect or first-byte timeout.
    Timeout(String),
    /// The host's `allowed_outbound_hosts` refused it.
    Denied(String),
    /// A malformed URL or anything else.
    Other(String),
}

fn classify(code: &ErrorCode) -> SendError {
    let text = format!("{code:?}");
    match code {
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            SendError::Timeout(text)
        }
        ErrorCode::HttpRequestDenied => SendError::Denied(text),
        ErrorCode::DnsTimeout | ErrorCode::DnsError(_) => SendError::Connect(text),
        ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::TlsProtocolError
        | ErrorCode::TlsCertificateError
        | ErrorCode::TlsAlertReceived(_) => SendError::Connect(text),
        // wasmtime reports a refused TCP connect as an internal error carrying the io error.
        ErrorCode::InternalError(Some(m)) if m.contains("onnect") || m.contains("refused") => SendError::Connect(text),
        _ => SendError::Other(text),
    }
}

/// The next piece (at most `max` bytes) of any WASI input stream, e.g. an incoming request's
/// body: `None` at its end. spin-sdk's own body stream reads 16 KiB at a time; large uploads
/// want fewer, bigger reads.
pub async fn read_chunk(stream: &InputStream, max: u64) -> Option<Result<Vec<u8>, String>> {
    poll_fn(|cx| match stream.read(max) {
        Ok(bytes) if bytes.is_empty() => {
            spin_executor::push_waker(stream.subscribe(), cx.waker().clone());
            Poll::Pending
        }
        Ok(bytes) => Poll::Ready(Some(Ok(bytes))),
        Err(StreamError::Closed) => Poll::Ready(None),
        Err(StreamError::LastOperationFailed(e)) => Poll::Ready(Some(Err(e.to_debug_string()))),
    })
    .await
}

/// A response whose body is read incrementally. Dropping it closes the upstream connection.
pub struct Response {
    /// HTTP status.
    pub status: u16,
    headers: Vec<(String, String)>,
    // Drop order matters: the stream before its body before the response (child resources).
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    response: Option<IncomingResponse>,
}

impl Drop for Response {
    fn drop(&mut self) {
        drop(self.stream.take());
        drop(self.body.take());
        drop(self.response.take());
    }
}

impl Response {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next piece of the body; `None` at its end, `Err` when the connection failed or went
    /// silent past the between-bytes timeout.
    pub async fn chunk(&mut self) -> Option<Result<Vec<u8>, String>> {
        read_chunk(self.stream.as_ref()?, 64 * 1024).await
    }

    /// The rest of the body, up to `limit` bytes (more is cut off).
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// Builds the request, hands it to the host and returns its response future and body.
fn prepare(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    t: Timeouts,
) -> Result<(wasi::http::types::FutureIncomingResponse, OutgoingBody), SendError> {
    let uri: http::Uri = url.parse().map_err(|e| SendError::Other(format!("bad URL {url}: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err(SendError::Other(format!("URL scheme must be http or https: {url}"))),
    };
    let authority = uri.authority().ok_or_else(|| SendError::Other(format!("URL has no host: {url}")))?;
    let entries: Vec<(String, Vec<u8>)> = headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())).collect();
    let fields = Fields::from_list(&entries).map_err(|e| SendError::Other(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let bad = |what: &str| SendError::Other(format!("could not set {what}"));
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    };
    request.set_method(&method).map_err(|()| bad("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    request.set_authority(Some(authority.as_str())).map_err(|()| bad("authority"))?;
    request.set_path_with_query(uri.path_and_query().map(|p| p.as_str())).map_err(|()| bad("path"))?;
    let outgoing_body = request.body().map_err(|()| bad("body"))?;
    let options = RequestOptions::new();
    let ns = |d: Duration| Some(d.as_nanos().min(u64::MAX as u128) as u64);
    // A host that does not support an option refuses to set it; the attempt still runs.
    let _ = options.set_connect_timeout(ns(t.connect));
    let _ = options.set_first_byte_timeout(ns(t.first_byte));
    let _ = options.set_between_bytes_timeout(ns(t.between_bytes));
    let future = outgoing_handler::handle(request, Some(options)).map_err(|e| classify(&e))?;
    Ok((future, outgoing_body))
}

/// A request on its way: sent, its response not yet awaited. Dropping it abandons the request
/// (the host closes the connection).
pub struct Pending {
    future: wasi::http::types::FutureIncomingResponse,
}

/// Sends a POST of `body` to `url` and waits for the response head.
pub async fn post(url: &str, headers: &[(String, String)], body: &[u8], t: Timeouts) -> Result<Response, SendError> {
    start(url, headers, body, t)?.response().await
}

/// Sends `method` (`GET`, `PUT`, `DELETE`, ...) with `body` and waits for the response head.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    t: Timeouts,
) -> Result<Response, SendError> {
    start_with(method, url, headers, body, t)?.response().await
}

/// Sends a POST of `body` to `url` without waiting: the host works on it while the guest does
/// other things (a database commit, say) until [`Pending::response`] is awaited.
pub fn start(url: &str, headers: &[(String, String)], body: &[u8], t: Timeouts) -> Result<Pending, SendError> {
    start_with("POST", url, headers, body, t)
}

/// [`start`] with any method.
pub fn start_with(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    t: Timeouts,
) -> Result<Pending, SendError> {
    // The whole body is known: say how long it is, so the request goes out with
    // `Content-Length` instead of chunked (servers that read only `Content-Length`, such as
    // Python's http.server and several proxies, break on a chunked body).
    let mut with_length;
    let headers = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        || (body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE"))
    {
        headers
    } else {
        with_length = headers.to_vec();
        with_length.push(("content-length".to_owned(), body.len().to_string()));
        &with_length[..]
    };
    let (future, outgoing_body) = prepare(method, url, headers, t)?;
    let bad = |what: &str| SendError::Other(format!("could not set {what}"));
    {
        // As much per write as the host will take, waiting on its pollable when it is full. A
        // server may answer (and stop reading) before the body is through: then the response
        // says why, so it is returned rather than the write error.
        let stream = outgoing_body.write().map_err(|()| bad("body stream"))?;
        let mut rest = body;
        let mut complete = true;
        while !rest.is_empty() {
            let permit = match stream.check_write() {
                Ok(p) => p,
                Err(_) => {
                    complete = false;
                    break;
                }
            };
            if permit == 0 {
                stream.subscribe().block();
                continue;
            }
            let n = rest.len().min(permit.min(1 << 20) as usize);
            if stream.write(&rest[..n]).is_err() {
                complete = false;
                break;
            }
            rest = &rest[n..];
        }
        // With a content-length the host closes the stream once it has every byte.
        if complete && matches!(stream.blocking_flush(), Err(StreamError::LastOperationFailed(_))) {
            complete = false;
        }
        if !complete {
            return Ok(Pending { future });
        }
    }
    OutgoingBody::finish(outgoing_body, None).map_err(|e| classify(&e))?;
    Ok(Pending { future })
}

/// The body of a request being streamed out; [`BodyWriter::finish`] completes it, dropping it
/// unfinished makes the request fail (an upload that must not land).
pub struct BodyWriter {
    stream: Option<wasi::io::streams::OutputStream>,
    body: Option<OutgoingBody>,
}

impl BodyWriter {
    /// Writes all of `data`, waiting (without blocking other futures) while the host is full.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), SendError> {
        let stream = self.stream.as_ref().ok_or_else(|| SendError::Other("body already finished".into()))?;
        let failed = |e: StreamError| SendError::Connect(format!("writing body: {e:?}"));
        while !data.is_empty() {
            let permit = poll_fn(|cx| match stream.check_write() {
                Ok(0) => {
                    spin_executor::push_waker(stream.subscribe(), cx.waker().clone());
                    Poll::Pending
                }
                other => Poll::Ready(other),
            })
            .await
            .map_err(failed)?;
            let n = data.len().min(permit.min(1 << 20) as usize);
            stream.write(&data[..n]).map_err(failed)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Flushes and completes the body.
    pub fn finish(mut self) -> Result<(), SendError> {
        if let Some(stream) = self.stream.take() {
            match stream.blocking_flush() {
                // With a content-length the host closes the stream once it has every byte.
                Ok(()) | Err(StreamError::Closed) => {}
                Err(e) => return Err(SendError::Connect(format!("flushing body: {e:?}"))),
            }
        }
        match self.body.take() {
            Some(body) => OutgoingBody::finish(body, None).map_err(|e| classify(&e)),
            None => Ok(()),
        }
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        drop(self.stream.take());
        drop(self.body.take()); // unfinished: the host abandons the request
    }
}

/// Starts `method` to `url` with a body written afterwards through the returned writer (for
/// bodies that should not sit in memory whole; give `content-length` in `headers`).
pub fn start_streaming(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    t: Timeouts,
) -> Result<(Pending, BodyWriter), SendError> {
    let (future, outgoing_body) = prepare(method, url, headers, t)?;
    let stream = outgoing_body.write().map_err(|()| SendError::Other("could not open the body".into()))?;
    Ok((Pending { future }, BodyWriter { stream: Some(stream), body: Some(outgoing_body) }))
}

impl Pending {
    /// Waits for the response head.
    pub async fn response(self) -> Result<Response, SendError> {
        let future = self.future;
        let response = poll_fn(|cx| match future.get() {
            Some(Ok(result)) => Poll::Ready(result.map_err(|e| classify(&e))),
            Some(Err(())) => Poll::Ready(Err(SendError::Other("response already taken".into()))),
            None => {
                spin_executor::push_waker(future.subscribe(), cx.waker().clone());
                Poll::Pending
            }
        })
        .await?;
        let bad = |what: &str| SendError::Other(format!("could not read {what}"));
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let body = response.consume().map_err(|()| bad("response body"))?;
        let stream = body.stream().map_err(|()| bad("response stream"))?;
        Ok(Response { status, headers, stream: Some(stream), body: Some(body), response: Some(response) })
    }
}
