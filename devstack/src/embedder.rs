//! The dev stack's local embedding model, so document search works under `chatedge up` with no
//! provider key: WordLlama's static token embeddings (MIT; the `l2_supercat_256` weights and
//! tokenizer shipped in the PyPI wheel `wordllama==0.4.0.post1`, unpacked by `./dev`) run the way
//! WordLlama runs them (tokenize without special tokens, look up each token's row, mean-pool,
//! L2-normalise), served as an OpenAI-compatible `POST /v1/embeddings` under `netserve`'s limits.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The model name the server answers with and the rows record.
pub const MODEL_NAME: &str = "wordllama-l2-supercat-256";
/// The weights file inside the unpacked wheel.
pub const WEIGHTS: &str = "wordllama/weights/l2_supercat_256.safetensors";
/// The tokenizer inside the unpacked wheel.
pub const TOKENIZER: &str = "wordllama/tokenizers/l2_supercat_tokenizer_config.json";
/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;
/// Largest request body.
const MAX_BODY: usize = 8 << 20;

/// Where `./dev` unpacks the model: `CHATEDGE_WORDLLAMA_DIR`, if set.
pub fn model_dir() -> Option<PathBuf> {
    std::env::var_os("CHATEDGE_WORDLLAMA_DIR").map(PathBuf::from).filter(|d| d.join(WEIGHTS).is_file())
}

/// WordLlama's embedding table and tokenizer, loaded.
pub struct WordLlama {
    tokenizer: tokenizers::Tokenizer,
    /// `rows × dims`, row-major, f32.
    table: Vec<f32>,
    rows: usize,
    dims: usize,
}

impl WordLlama {
    /// Loads the weights (one F16 tensor `embedding.weight`) and the tokenizer from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(dir.join(WEIGHTS)).with_context(|| format!("reading {}", dir.join(WEIGHTS).display()))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).context("parsing the WordLlama weights")?;
        let view = tensors.tensor("embedding.weight").context("the weights have no embedding.weight")?;
        let shape = view.shape();
        if view.dtype() != safetensors::Dtype::F16 || shape.len() != 2 {
            bail!("embedding.weight is {:?} {:?}, not a 2-D F16 table", view.dtype(), shape);
        }
        let (rows, dims) = (shape[0], shape[1]);
        let table: Vec<f32> =
            view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        if table.len() != rows * dims {
            bail!("embedding.weight holds {} values for {rows}x{dims}", table.len());
        }
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join(TOKENIZER))
            .map_err(|e| anyhow::anyhow!("loading the WordLlama tokenizer: {e}"))?;
        Ok(WordLlama { tokenizer, table, rows, dims })
    }

    /// Width of the vectors.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The unit vector of `text` and its token count.
    pub fn embed(&self, text: &str) -> Result<(Vec<f32>, usize)> {
        let encoding =
            self.tokenizer.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing for WordLlama: {e}"))?;
        let ids = encoding.get_ids();
        Ok((self.embed_ids(ids), ids.len()))
    }

    /// The unit vector of a token sequence (the bench draws token ids directly).
    pub fn embed_ids(&self, ids: &[u32]) -> Vec<f32> {
        let mut sum = vec![0f32; self.dims];
        for &id in ids {
            let row = (id as usize).min(self.rows - 1);
            for (s, w) in sum.iter_mut().zip(&self.table[row * self.dims..(row + 1) * self.dims]) {
                *s += w;
            }
        }
        let count = ids.len().max(1) as f32;
        sum.iter_mut().for_each(|s| *s /= count);
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            sum.iter_mut().for_each(|s| *s /= norm);
        }
        sum
    }

    /// Rows in the embedding table (the tokenizer's vocabulary).
    pub fn vocabulary(&self) -> usize {
        self.rows
    }

    /// Answers an OpenAI `POST /v1/embeddings` body: `(status, body)`.
    pub fn answer(&self, body: &[u8]) -> (u16, Value) {
        let error = |status: u16, message: &str| {
            (
                status,
                json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
            )
        };
        let Ok(request) = serde_json::from_slice::<Value>(body) else { return error(400, "the body is not JSON") };
        let inputs: Vec<&str> = match &request["input"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).collect()
            }
            _ => return error(400, "input must be a string or an array of strings"),
        };
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return error(400, "input must hold 1 to 2048 strings");
        }
        let base64 = request["encoding_format"] == "base64";
        let mut data = Vec::with_capacity(inputs.len());
        let mut tokens = 0;
        for (index, text) in inputs.iter().enumerate() {
            let (vector, n) = match self.embed(text) {
                Ok(v) => v,
                Err(e) => return error(400, &e.to_string()),
            };
            tokens += n;
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
        }
        (
            200,
            json!({"object": "list", "data": data, "model": MODEL_NAME,
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        )
    }
}

/// A running local embeddings server.
pub struct EmbedServer {
    /// `http://127.0.0.1:<port>`; the API is under `/v1`.
    pub origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmbedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The model, loaded by the first request that needs it (a host that never embeds never pays
/// for the load), or why it could not be.
type LazyModel = Arc<(PathBuf, std::sync::OnceLock<Result<WordLlama, String>>)>;

/// Serves the model unpacked under `dir` on `listen` (`127.0.0.1:0` for a free port).
pub async fn serve(dir: PathBuf, listen: &str) -> Result<EmbedServer> {
    let model: LazyModel = Arc::new((dir, std::sync::OnceLock::new()));
    let addr: SocketAddr = listen.parse().with_context(|| format!("embedder listen address {listen}"))?;
    let listener = netserve::bind(addr).with_context(|| format!("binding {listen}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let limits = netserve::Limits::from_env("CHATEDGE_EMBEDDER");
    let builder = Arc::new(limits.builder());
    let task = tokio::spawn(netserve::serve(
        listener,
        limits,
        move |accepted: netserve::Accepted| {
            let (builder, model) = (builder.clone(), model.clone());
            async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let model = model.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&model, req).await) }
                });
                let _ = builder.serve_connection(accepted.io, service).await;
                drop(accepted.permit);
            }
        },
        std::future::pending(),
    ));
    Ok(EmbedServer { origin: format!("http://{addr}"), task })
}

async fn handle(model: &LazyModel, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, v: Value| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    if req.method() != http::Method::POST || req.uri().path().trim_end_matches('/') != "/v1/embeddings" {
        return reply(
            404,
            json!({"error": {"message": "this local server only embeds: POST /v1/embeddings", "type": "invalid_request_error"}}),
        );
    }
    let Some(body) = netserve::read_body(req.into_body(), MAX_BODY, Duration::from_secs(30)).await else {
        return reply(
            413,
            json!({"error": {"message": "the body is over 8 MiB or too slow", "type": "invalid_request_error"}}),
        );
    };
    let model = model.clone();
    // Loading and embedding are CPU work: off the reactor.
    let work = move || match model.1.get_or_init(|| WordLlama::load(&model.0).map_err(|e| format!("{e:#}"))) {
        Ok(m) => m.answer(&body),
        Err(why) => {
            (500, json!({"error": {"message": format!("the local model did not load: {why}"), "type": "server_error"}}))
        }
    };
    match tokio::task::spawn_blocking(work).await {
        Ok((status, v)) => reply(status, v),
        Err(_) => reply(500, json!({"error": {"message": "the embedder failed", "type": "server_error"}})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> WordLlama {
        let dir = model_dir().expect("CHATEDGE_WORDLLAMA_DIR names the unpacked wordllama wheel (./dev sets it)");
        WordLlama::load(&dir).expect("the WordLlama model loads")
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn related_texts_are_nearer_than_unrelated_ones() {
        let m = model();
        assert_eq!(m.dims(), 256);
        let (volcano, n) = m.embed("How do volcanoes erupt?").unwrap();
        assert!(n > 3);
        assert!((cosine(&volcano, &volcano) - 1.0).abs() < 1e-4, "unit vectors");
        let (lava, _) = m.embed("Magma rises through the crust and erupts as lava.").unwrap();
        let (tomato, _) = m.embed("Tomatoes need sunlight, water and rich soil.").unwrap();
        assert!(
            cosine(&volcano, &lava) > cosine(&volcano, &tomato),
            "{} vs {}",
            cosine(&volcano, &lava),
            cosine(&volcano, &tomato)
        );
        assert_eq!(m.embed("same text").unwrap().0, m.embed("same text").unwrap().0);
    }

    #[test]
    fn answers_openai_shaped_replies_and_refuses_bad_bodies() {
        let m = model();
        let (status, v) = m.answer(br#"{"model":"x","input":["a b","c"],"encoding_format":"base64"}"#);
        assert_eq!(status, 200);
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
        assert!(v["data"][1]["embedding"].is_string());
        assert!(v["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n >= 2));
        assert_eq!(m.answer(br#"{"input":[1,2]}"#).0, 400);
        assert_eq!(m.answer(b"nope").0, 400);
        assert_eq!(m.answer(br#"{"input":[]}"#).0, 400);
        // Empty text and control characters are embedded, not a crash.
        assert_eq!(m.answer(b"{\"input\":[\"\", \"\\u0000\\u0001\"]}").0, 200);
    }
}
