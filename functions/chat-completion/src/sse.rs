//! Server-sent events: an incremental parser for provider streams and the encoder for ours.
//!
//! The parser follows the WHATWG event-stream rules (LF, CRLF or CR line ends; `data` lines
//! joined with LF; comments; `event` / `id` fields) and accepts input split anywhere, even inside
//! a UTF-8 sequence or between CR and LF, because network chunks fall where they fall.
//! Hand-written: the SSE crates on crates.io are tied to a client stack that does not build for
//! wasm32-wasip2, and the format is small.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `event:` field; `None` means the default `message`.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen.
    pub id: Option<String>,
}

/// Feeds bytes, yields events.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    /// A CR ended the last line; a following LF belongs to it.
    after_cr: bool,
    /// Bytes buffered without a line end, capped so a stream with no newline cannot grow forever.
    max_line: usize,
    /// An event's `data` grew past [`DEFAULT_MAX_EVENT`] (many `data:` lines, none blank).
    overflow: bool,
}

/// Most bytes one event's `data` lines may add up to.
pub const DEFAULT_MAX_EVENT: usize = 4 << 20;

/// A line longer than this (bytes) is a protocol error.
pub const DEFAULT_MAX_LINE: usize = 4 << 20;

/// Parser failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line exceeded the limit.
    #[error("event-stream line longer than {0} bytes")]
    LineTooLong(usize),
    /// One event's data exceeded the limit.
    #[error("event-stream event larger than {0} bytes")]
    EventTooLarge(usize),
}

impl Parser {
    /// A parser with the default line limit.
    pub fn new() -> Self {
        Parser { max_line: DEFAULT_MAX_LINE, ..Default::default() }
    }

    /// Consumes a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    start = i;
                    continue;
                }
            }
            if b == b'\n' || b == b'\r' {
                self.buf.extend_from_slice(&chunk[start..i]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line, &mut events);
                self.after_cr = b == b'\r';
                i += 1;
                start = i;
                continue;
            }
            i += 1;
        }
        self.buf.extend_from_slice(&chunk[start..]);
        let limit = if self.max_line == 0 { DEFAULT_MAX_LINE } else { self.max_line };
        if self.buf.len() > limit {
            return Err(SseError::LineTooLong(limit));
        }
        if self.overflow {
            return Err(SseError::EventTooLarge(DEFAULT_MAX_EVENT));
        }
        Ok(events)
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<Event>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(Event { event: self.event.take(), data, id: self.id.clone() });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return; // comment, e.g. OpenRouter's ": OPENROUTER PROCESSING" keep-alives
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.find(':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) if d.len() + value.len() + 1 > DEFAULT_MAX_EVENT => self.overflow = true,
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields are ignored
        }
    }
}

/// One `data:` event as bytes on the wire (`data: <json>\n\n`).
pub fn data_event(json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 8);
    for line in json.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// OpenAI's end-of-stream sentinel.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new();
        chunks.iter().flat_map(|c| p.feed(c).unwrap()).collect()
    }

    #[test]
    fn openai_style_stream() {
        let ev = all(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[1].data, "[DONE]");
        assert_eq!(ev[0].event, None);
    }

    #[test]
    fn anthropic_style_named_events() {
        let ev = all(&[b"event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: ping\ndata: {}\n\n"]);
        assert_eq!(ev[0].event.as_deref(), Some("message_start"));
        assert_eq!(ev[1].event.as_deref(), Some("ping"));
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        let stream =
            "event: a\r\ndata: x\r\ndata: y\r\n\r\n: comment\ndata:no-space\rid: 7\r\r\ndata: é😀\n\n".as_bytes();
        let whole = all(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].data, "x\ny");
        assert_eq!(whole[1].data, "no-space");
        assert_eq!(whole[1].id.as_deref(), Some("7"));
        assert_eq!(whole[2].data, "é😀");
        for cut in 0..stream.len() {
            assert_eq!(all(&[&stream[..cut], &stream[cut..]]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&bytes), whole, "byte by byte");
    }

    #[test]
    fn no_event_without_blank_line_and_long_lines_fail() {
        assert!(all(&[b"data: partial\n"]).is_empty());
        let mut p = Parser { max_line: 8, ..Parser::new() };
        assert_eq!(p.feed(b"data: 0123456789"), Err(SseError::LineTooLong(8)));
    }

    #[test]
    fn an_event_of_endless_data_lines_fails() {
        let mut p = Parser::new();
        let line = format!("data: {}\n", "x".repeat(1 << 20));
        let mut failed = None;
        for _ in 0..8 {
            if let Err(e) = p.feed(line.as_bytes()) {
                failed = Some(e);
                break;
            }
        }
        assert_eq!(failed, Some(SseError::EventTooLarge(DEFAULT_MAX_EVENT)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]

        /// Fuzz: any bytes split anywhere parse without panicking, and the split never changes
        /// the events. `./dev fuzz` runs this with many more cases.
        #[test]
        fn any_bytes_any_split(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), cut in 0usize..2048) {
            let whole = Parser::new().feed(&bytes);
            let cut = cut.min(bytes.len());
            let mut p = Parser::new();
            let split = p.feed(&bytes[..cut]).and_then(|mut a| { a.extend(p.feed(&bytes[cut..])?); Ok(a) });
            proptest::prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn encoder_round_trips() {
        let mut p = Parser::new();
        let ev = p.feed(&data_event("{\"k\":\"v\"}")).unwrap();
        assert_eq!(ev[0].data, "{\"k\":\"v\"}");
        assert_eq!(p.feed(DONE).unwrap()[0].data, "[DONE]");
    }
}
