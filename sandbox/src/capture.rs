//! A guest output stream that keeps the first `cap` bytes and counts the rest: printing 100 MB
//! neither grows host memory past the cap nor fails the guest's write (wasmtime's own
//! `MemoryOutputPipe` traps past its capacity, which would end the program instead).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Captured {
    cap: usize,
    kept: BytesMut,
    written: u64,
    /// Where kept bytes are also sent as they are written, for a streamed execution.
    tap: Option<(Channel, Tap)>,
}

/// Which of the guest's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The receiving end's sender for a streamed execution's output. Unbounded on purpose: only
/// kept bytes are sent, so what it can hold is bounded by the two streams' output caps.
pub type Tap = tokio::sync::mpsc::UnboundedSender<(Channel, Vec<u8>)>;

/// A capped in-memory sink for one stream of one execution.
#[derive(Clone)]
pub(crate) struct Capture {
    state: Arc<Mutex<Captured>>,
}

impl Capture {
    pub(crate) fn new(cap: u64) -> Self {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        Capture { state: Arc::new(Mutex::new(Captured { cap, ..Captured::default() })) }
    }

    /// The same sink, also sending what it keeps to `tap` as `channel`.
    pub(crate) fn tapped(self, tap: Option<&Tap>, channel: Channel) -> Self {
        self.lock().tap = tap.map(|t| (channel, t.clone()));
        self
    }

    /// Empties the sink for the next execution of a session, with that execution's cap and tap.
    pub(crate) fn reset(&self, cap: u64, tap: Option<&Tap>, channel: Channel) {
        let mut state = self.lock();
        state.cap = usize::try_from(cap).unwrap_or(usize::MAX);
        state.tap = tap.map(|t| (channel, t.clone()));
        state.kept.clear();
        state.written = 0;
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A poisoned lock only means a writer panicked mid-append; the bytes are still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.lock();
        state.written += bytes.len() as u64;
        let room = state.cap.saturating_sub(state.kept.len());
        let take = room.min(bytes.len());
        state.kept.extend_from_slice(&bytes[..take]);
        if let (Some((channel, tap)), true) = (&state.tap, take > 0) {
            // A receiver gone (the client left) only means nobody watches the stream.
            let _ = tap.send((*channel, bytes[..take].to_vec()));
        }
    }

    /// (text kept, bytes written in all, whether some were cut).
    pub(crate) fn finish(&self) -> (String, u64, bool) {
        let state = self.lock();
        let text = String::from_utf8_lossy(&state.kept).into_owned();
        (text, state.written, state.written > state.kept.len() as u64)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(1 << 20)
    }
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let mut capture = Capture::new(5);
        capture.write(Bytes::from_static(b"hello world")).expect("never fails");
        capture.write(Bytes::from_static(b"!")).expect("never fails");
        assert_eq!(capture.finish(), ("hello".to_owned(), 12, true));
        let small = Capture::new(64);
        small.append(b"ok");
        assert_eq!(small.finish(), ("ok".to_owned(), 2, false));
    }
}
