//! Protocol-faithful fake LLM providers for the chat tests: a real HTTP server on a free port
//! speaking OpenAI's, Anthropic's and Mistral's wire formats byte for byte (SSE framing, the
//! usage chunk, error bodies, 429 + retry-after, mid-stream errors, stalls), scripted per test,
//! recording every request and noticing when the client hangs up mid-stream.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How a scripted stream ends after its events.
#[derive(Clone, Debug)]
pub enum End {
    /// The body ends normally.
    Finish,
    /// The server goes silent with the connection open (until the client gives up).
    Stall,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A complete body with a status.
    Json {
        /// HTTP status.
        status: u16,
        /// Extra headers (retry-after, ...).
        headers: Vec<(String, String)>,
        /// Body text.
        body: String,
    },
    /// `200 text/event-stream`, events written one by one with `delay` between them.
    Stream {
        /// Raw SSE frames, each written as one chunk.
        events: Vec<String>,
        /// Pause before each event.
        delay: Duration,
        /// What happens after the last event.
        end: End,
    },
    /// Accept the request, then never answer (first-byte stall).
    Hang,
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// JSON body.
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    fallback: Option<Answer>,
    /// Answers by the request's `stream` flag: (streaming, whole), used when the script is out.
    by_kind: Option<(Answer, Answer)>,
    received: Vec<Received>,
    hung_up: usize,
    finished: usize,
    /// Answers `/embeddings` itself, outside the script (see [`FakeProvider::embed_by_content`]).
    embedder: Option<Embedder>,
    /// Time spent making embeddings replies (the provider's share of an ingest).
    embedding_time: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Embedder {
    Up,
    Down,
}

/// A running fake provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:<port>`.
    pub origin: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type Reply = http::Response<http_body_util::Either<Full<Bytes>, ChannelBody>>;

impl FakeProvider {
    /// Starts a fake answering from `script` in order, then `fallback` for every later request.
    pub async fn start(script: Vec<Answer>, fallback: Option<Answer>) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State { script: script.into(), fallback, ..Default::default() }));
        let shared = state.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (addr, task) = crate::serve_http_counting(move |req| answer(shared.clone(), req), accepted.clone()).await?;
        Ok(FakeProvider { origin: format!("http://{addr}"), state, task, accepted })
    }

    /// A fake that answers every request by its `stream` flag: `stream` as SSE, the others with
    /// `completion` (a JSON body).
    pub async fn start_by_kind(stream: Vec<String>, completion: String) -> anyhow::Result<Self> {
        let fake = FakeProvider::start(Vec::new(), None).await?;
        if let Ok(mut s) = fake.state.lock() {
            s.by_kind = Some((
                Answer::Stream { events: stream, delay: Duration::ZERO, end: End::Finish },
                Answer::Json { status: 200, headers: Vec::new(), body: completion },
            ));
        }
        Ok(fake)
    }

    /// From now on answers every `POST …/embeddings` itself (the script is kept for chats) with
    /// OpenAI's reply carrying [`content_vector`]s: the same text gets the same vector, texts
    /// sharing words are near.
    pub fn embed_by_content(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.embedder = Some(Embedder::Up);
        }
    }

    /// Makes the embeddings endpoint answer `503` with OpenAI's error body (`down`), or work again.
    pub fn set_embeddings_down(&self, down: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.embedder = Some(if down { Embedder::Down } else { Embedder::Up });
        }
    }

    /// Time the fake spent making embeddings replies so far.
    pub fn embedding_time(&self) -> Duration {
        self.state.lock().map(|s| s.embedding_time).unwrap_or_default()
    }

    /// The embeddings requests received so far.
    pub fn embedding_requests(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path.ends_with("/embeddings")).collect()
    }

    /// The chat requests received so far (everything but embeddings).
    pub fn chat_requests(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| !r.path.ends_with("/embeddings")).collect()
    }

    /// TCP connections accepted so far (a client keeping connections alive opens few).
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().map(|s| s.received.clone()).unwrap_or_default()
    }

    /// Streams the client abandoned before their end (it closed the connection).
    pub fn hung_up(&self) -> usize {
        self.state.lock().map(|s| s.hung_up).unwrap_or(0)
    }

    /// Streams written to their end.
    pub fn finished(&self) -> usize {
        self.state.lock().map(|s| s.finished).unwrap_or(0)
    }

    /// Waits (up to `within`) until `hung_up() >= n`.
    pub async fn wait_hung_up(&self, n: usize, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.hung_up() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.hung_up() >= n
    }
}

async fn answer(state: Arc<Mutex<State>>, req: hyper::Request<hyper::body::Incoming>) -> Reply {
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers = req.headers().clone();
    // As strict as the servers that read only Content-Length (Python's http.server, several
    // proxies): a chunked request body is refused.
    if req.method() == http::Method::POST && !headers.contains_key(http::header::CONTENT_LENGTH) {
        return plain(411, "Length Required");
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let next = {
        let Ok(mut s) = state.lock() else { return plain(500, "poisoned") };
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let streaming = body["stream"] == Value::Bool(true);
        if let Some(embedder) = s.embedder.filter(|_| path.ends_with("/embeddings")) {
            let started = Instant::now();
            let reply = embeddings_by_content(embedder, &body);
            s.embedding_time += started.elapsed();
            s.received.push(Received { path, headers, body, at: Instant::now() });
            return reply;
        }
        s.received.push(Received { path, headers, body, at: Instant::now() });
        let by_kind = s.by_kind.as_ref().map(|(stream, whole)| if streaming { stream.clone() } else { whole.clone() });
        s.script.pop_front().or_else(|| s.fallback.clone()).or(by_kind)
    };
    match next {
        None => plain(500, "fake provider: no scripted answer left"),
        Some(Answer::Json { status, headers, body }) => {
            let mut b = http::Response::builder().status(status).header("content-type", "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(http_body_util::Either::Left(Full::new(Bytes::from(body))))
                .unwrap_or_else(|_| plain(500, "bad response"))
        }
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            plain(500, "hung")
        }
        Some(Answer::Stream { events, delay, end }) => {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                for event in events {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if tx.send(Bytes::from(event)).await.is_err() {
                        if let Ok(mut s) = state.lock() {
                            s.hung_up += 1;
                        }
                        return;
                    }
                }
                match end {
                    End::Finish => {
                        if let Ok(mut s) = state.lock() {
                            s.finished += 1;
                        }
                    }
                    End::Stall => {
                        tx.closed().await;
                        if let Ok(mut s) = state.lock() {
                            s.hung_up += 1;
                        }
                    }
                }
            });
            http::Response::builder()
                .status(200)
                .header("content-type", "text/event-stream; charset=utf-8")
                .header("cache-control", "no-cache")
                .body(http_body_util::Either::Right(ChannelBody(rx)))
                .unwrap_or_else(|_| plain(500, "bad response"))
        }
    }
}

fn plain(status: u16, text: &str) -> Reply {
    let mut r = http::Response::new(http_body_util::Either::Left(Full::new(Bytes::from(text.to_owned()))));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// One SSE `data:` frame, as OpenAI and Mistral write them.
pub fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// One SSE frame with an event name, as Anthropic writes them.
pub fn named(event: &str, v: &Value) -> String {
    format!("event: {event}\ndata: {v}\n\n")
}

/// The terminator of OpenAI and Mistral streams.
pub const DONE: &str = "data: [DONE]\n\n";

/// OpenAI's streamed chunk with `stream_options.include_usage` (every chunk carries `usage: null`).
pub fn openai_chunk(id: &str, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_731_000_000, "model": model,
        "service_tier": "default", "system_fingerprint": "fp_f85bea6784",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        "usage": null,
    })
}

/// A whole OpenAI stream: role chunk, one chunk per piece, finish chunk, usage chunk, `[DONE]`.
pub fn openai_stream(model: &str, pieces: &[&str], prompt: u64, completion: u64) -> Vec<String> {
    let id = "chatcmpl-AbC123fake";
    let mut out =
        vec![data(&openai_chunk(id, model, json!({"role": "assistant", "content": "", "refusal": null}), None))];
    for p in pieces {
        out.push(data(&openai_chunk(id, model, json!({"content": p}), None)));
    }
    out.push(data(&openai_chunk(id, model, json!({}), Some("stop"))));
    out.push(data(&json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_731_000_000, "model": model,
        "service_tier": "default", "system_fingerprint": "fp_f85bea6784", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    })));
    out.push(DONE.to_owned());
    out
}

/// An OpenAI stream of a turn that says `text` and then calls one function, its arguments
/// arriving in `argument_pieces` as OpenAI splits them; finish `tool_calls`, usage, `[DONE]`.
pub fn openai_tool_stream(
    model: &str,
    text: &str,
    call_id: &str,
    name: &str,
    argument_pieces: &[&str],
    prompt: u64,
    completion: u64,
) -> Vec<String> {
    let id = "chatcmpl-ToolFake";
    let mut out =
        vec![data(&openai_chunk(id, model, json!({"role": "assistant", "content": "", "refusal": null}), None))];
    out.push(data(&openai_chunk(id, model, json!({"content": text}), None)));
    out.push(data(&openai_chunk(
        id,
        model,
        json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        None,
    )));
    for piece in argument_pieces {
        out.push(data(&openai_chunk(
            id,
            model,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        )));
    }
    out.push(data(&openai_chunk(id, model, json!({}), Some("tool_calls"))));
    out.push(data(&json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_731_000_000, "model": model,
        "service_tier": "default", "system_fingerprint": "fp_f85bea6784", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    })));
    out.push(DONE.to_owned());
    out
}

/// OpenAI's non-streaming `chat.completion`.
pub fn openai_completion(model: &str, text: &str, prompt: u64, completion: u64) -> String {
    json!({
        "id": "chatcmpl-AbC123fake", "object": "chat.completion", "created": 1_731_000_000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_f85bea6784",
    })
    .to_string()
}

/// OpenAI's error body.
pub fn openai_error(message: &str, kind: &str, code: Option<&str>) -> String {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

/// Anthropic's Messages stream: message_start, a text block with one delta per piece (and a
/// ping), message_delta with the cumulative output tokens, message_stop.
pub fn anthropic_stream(model: &str, pieces: &[&str], input: u64, output: u64) -> Vec<String> {
    let mut out = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                          "output_tokens": 1, "service_tier": "standard"}}}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        named("ping", &json!({"type": "ping"})),
    ];
    for p in pieces {
        out.push(named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out.push(named("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    out.push(named(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": output}}),
    ));
    out.push(named("message_stop", &json!({"type": "message_stop"})));
    out
}

/// Anthropic's non-streaming message.
pub fn anthropic_message(model: &str, text: &str, input: u64, output: u64) -> String {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": output, "service_tier": "standard"},
    })
    .to_string()
}

/// Anthropic's error body (`overloaded_error`, `rate_limit_error`, ...).
pub fn anthropic_error(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

/// Mistral's stream: OpenAI-shaped chunks without `usage: null`, usage on the last content
/// chunk (the one with the finish reason), then `[DONE]`.
pub fn mistral_stream(model: &str, pieces: &[&str], prompt: u64, completion: u64) -> Vec<String> {
    let id = "cmpl-e5cc70bb28c444948073e77776eb30ef";
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_731_000_000, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut out = vec![data(&chunk(json!({"role": "assistant", "content": ""}), None))];
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut c = chunk(json!({"content": p}), if last { Some("stop") } else { None });
        if last {
            c["usage"] =
                json!({"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion});
        }
        out.push(data(&c));
    }
    out.push(DONE.to_owned());
    out
}

/// Mistral's non-streaming completion.
pub fn mistral_completion(model: &str, text: &str, prompt: u64, completion: u64) -> String {
    json!({
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef", "object": "chat.completion", "model": model,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "created": 1_731_000_000,
        "choices": [{"index": 0, "message": {"content": text, "tool_calls": null, "prefix": false, "role": "assistant"},
                     "finish_reason": "stop"}],
    })
    .to_string()
}

/// A `200` JSON answer.
pub fn ok_json(body: String) -> Answer {
    Answer::Json { status: 200, headers: Vec::new(), body }
}

/// A stream answer with no pauses.
fn embeddings_by_content(embedder: Embedder, body: &Value) -> Reply {
    if embedder == Embedder::Down {
        let error = openai_error("The server is overloaded or not ready yet.", "server_error", None);
        return http::Response::builder()
            .status(503)
            .header("content-type", "application/json")
            .body(http_body_util::Either::Left(Full::new(Bytes::from(error))))
            .unwrap_or_else(|_| plain(500, "bad response"));
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect(),
        _ => Vec::new(),
    };
    let dims = body["dimensions"].as_u64().unwrap_or(256) as usize;
    let vectors: Vec<Vec<f32>> = inputs.iter().map(|t| content_vector(t, dims)).collect();
    let tokens: u64 = inputs.iter().map(|t| t.split_whitespace().count() as u64).sum();
    let base64 = body["encoding_format"] == "base64";
    let model = body["model"].as_str().unwrap_or("text-embedding-3-small");
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(http_body_util::Either::Left(Full::new(Bytes::from(openai_embeddings(
            model,
            &vectors,
            tokens.max(1),
            base64,
        )))))
        .unwrap_or_else(|_| plain(500, "bad response"))
}

/// A deterministic bag-of-words vector: each word (lowercased, its first five letters, so
/// "volcano" and "volcanoes" agree) adds 1 to a dimension chosen by its FNV-1a hash; L2-normalised.
pub fn content_vector(text: &str, dims: usize) -> Vec<f32> {
    let dims = dims.max(1);
    let mut v = vec![0f32; dims];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| w.chars().count() >= 3) {
        let stem: String = word.to_lowercase().chars().take(5).collect();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stem.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        v[(hash % dims as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v[0] = 1.0;
    }
    v
}

pub fn stream(events: Vec<String>) -> Answer {
    Answer::Stream { events, delay: Duration::ZERO, end: End::Finish }
}

/// Deterministic test vectors: input `i` gets `dims` values `(i + 1) * 0.25 + j * 0.125`
/// (exact in f32, so float and base64 answers compare exactly).
pub fn test_vectors(inputs: usize, dims: usize) -> Vec<Vec<f32>> {
    (0..inputs).map(|i| (0..dims).map(|j| (i + 1) as f32 * 0.25 + j as f32 * 0.125).collect()).collect()
}

/// OpenAI's `POST /v1/embeddings` reply as its API writes it: pretty-printed JSON, `data[]` in
/// input order, the vectors as numbers or (`base64`) little-endian f32 bytes.
pub fn openai_embeddings(model: &str, vectors: &[Vec<f32>], prompt: u64, base64: bool) -> String {
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({"object": "list", "data": data, "model": model,
                      "usage": {"prompt_tokens": prompt, "total_tokens": prompt}});
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

/// Mistral's `POST /v1/embeddings` reply: compact, with an `id`, floats only, and a usage with
/// `completion_tokens: 0`.
pub fn mistral_embeddings(model: &str, vectors: &[Vec<f32>], prompt: u64) -> String {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| json!({"object": "embedding", "embedding": v, "index": index}))
        .collect();
    json!({
        "id": "2f0c7b8e6d8b4f6fa7c3f1c7d3f3a6b1", "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0, "request_count": null},
    })
    .to_string()
}
