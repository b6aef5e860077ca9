//! The guest's stderr: written through to the host's, except whole `chatedge-metric` lines
//! ([`shared::metrics`]), which become series in [`crate::metrics`] instead of log noise.
//!
//! Only a line that is still a possible metric line is held back, and never more than
//! [`shared::metrics::MAX_LINE`] bytes of it: anything else passes straight through, so a guest
//! writing without newlines neither grows a buffer nor loses its output.

use bytes::Bytes;
use shared::metrics::{Event, MAX_LINE, PREFIX};
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The stderr every guest instance gets.
pub struct GuestStderr;

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineSplitter::default())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineSplitter::default())
    }
}

/// One stream's state: the start of a line that may be a metric line, or passing through.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    /// The current line is not a metric line: its bytes go through until its newline.
    passthrough: bool,
}

fn could_be_metric(line: &[u8]) -> bool {
    if line.len() < PREFIX.len() {
        PREFIX.as_bytes().starts_with(line)
    } else {
        line.starts_with(PREFIX.as_bytes()) && line.len() <= MAX_LINE
    }
}

impl LineSplitter {
    /// Handles `bytes`; what is not a metric goes to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut dyn Write, on_event: &mut dyn FnMut(Event)) -> std::io::Result<()> {
        for segment in bytes.split_inclusive(|b| *b == b'\n') {
            let complete = segment.last() == Some(&b'\n');
            if self.passthrough {
                out.write_all(segment)?;
                self.passthrough = !complete;
                continue;
            }
            self.pending.extend_from_slice(segment);
            let line = if complete { &self.pending[..self.pending.len() - 1] } else { &self.pending[..] };
            let possible = could_be_metric(line);
            if complete {
                match std::str::from_utf8(line).ok().filter(|_| possible).and_then(Event::parse) {
                    Some(event) => on_event(event),
                    None => out.write_all(&self.pending)?,
                }
                self.pending.clear();
            } else if !possible {
                out.write_all(&self.pending)?;
                self.pending.clear();
                self.passthrough = true;
            }
        }
        Ok(())
    }

    fn write_through(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let metrics = crate::metrics::metrics();
        self.feed(bytes, &mut std::io::stderr().lock(), &mut |e| metrics.event(&e))
    }
}

impl Drop for LineSplitter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let _ = std::io::stderr().write_all(&self.pending);
        }
    }
}

impl OutputStream for LineSplitter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_through(&bytes).map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        std::io::stderr().flush().map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineSplitter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineSplitter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_through(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(std::io::stderr().flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut s = LineSplitter::default();
        let (mut out, mut events) = (Vec::new(), Vec::new());
        for c in chunks {
            s.feed(c, &mut out, &mut |e| events.push(e)).unwrap();
        }
        out.extend_from_slice(&std::mem::take(&mut s.pending));
        (out, events)
    }

    #[test]
    fn metric_lines_are_taken_out_whatever_the_split() {
        let metric = Event::RateLimit { policy: "chat".into(), admitted: true }.line();
        let all = format!("log one\n{metric}log two\n");
        for split in 0..all.len() {
            let (a, b) = all.as_bytes().split_at(split);
            let (out, events) = run(&[a, b]);
            assert_eq!(String::from_utf8(out).unwrap(), "log one\nlog two\n", "split at {split}");
            assert_eq!(events.len(), 1);
        }
    }

    #[test]
    fn other_output_passes_through_unbuffered() {
        let (out, events) = run(&[b"chatedge-metric {bad json}\n", b"no newline at all ", b"and more"]);
        assert_eq!(out, b"chatedge-metric {bad json}\nno newline at all and more");
        assert!(events.is_empty());
        // A long would-be metric line stops being held once it passes the limit.
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let long = format!("{PREFIX}{}", "x".repeat(MAX_LINE * 4));
        s.feed(long.as_bytes(), &mut out, &mut |_| panic!("not a metric")).unwrap();
        assert!(s.pending.is_empty() && out.len() == long.len());
    }
}
