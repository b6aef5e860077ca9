//! `POST /v1/embeddings`, in pure form: OpenAI's request parsed and checked, the provider's reply
//! read into vectors whatever encoding it chose, and OpenAI's answer written in the encoding the
//! client asked for (`float`, or `base64`: little-endian f32, which the official SDKs ask for by
//! default). The provider-specific request shapes live with each provider
//! ([`crate::providers::ProviderApi::embeddings_request`]).

use crate::providers::{Provider, Usage};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::{ApiError, ErrorCode};

/// Most inputs one request may embed (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;
/// Most dimensions a vector may have (text-embedding-3-large has 3072).
pub const MAX_DIMENSIONS: u64 = 8192;
/// Largest provider reply read: 2048 vectors of 3072 floats as JSON text is about 120 MB, more
/// than one instance should hold, so a request that large is refused by the cap rather than
/// buffered; 64 MiB covers 2048 x 1536.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// How the client wants the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// JSON arrays of numbers.
    #[default]
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// What to embed: text, or token ids (OpenAI accepts both).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// One string.
    Text(String),
    /// Several strings.
    Texts(Vec<String>),
    /// One list of token ids.
    Tokens(Vec<u32>),
    /// Several lists of token ids.
    TokenLists(Vec<Vec<u32>>),
}

impl Input {
    /// How many vectors it asks for.
    pub fn count(&self) -> usize {
        match self {
            Input::Text(_) | Input::Tokens(_) => 1,
            Input::Texts(t) => t.len(),
            Input::TokenLists(t) => t.len(),
        }
    }

    /// An upper bound on its tokens: no tokenizer makes more tokens than bytes of text, and a
    /// token id is one token.
    pub fn token_bound(&self) -> u64 {
        let n = match self {
            Input::Text(t) => t.len(),
            Input::Texts(t) => t.iter().map(String::len).sum(),
            Input::Tokens(t) => t.len(),
            Input::TokenLists(t) => t.iter().map(Vec::len).sum(),
        };
        n as u64
    }

    fn has_empty(&self) -> bool {
        match self {
            Input::Text(t) => t.is_empty(),
            Input::Texts(t) => t.iter().any(String::is_empty),
            Input::Tokens(t) => t.is_empty(),
            Input::TokenLists(t) => t.iter().any(Vec::is_empty),
        }
    }

    /// As JSON, for the upstream body.
    pub fn to_json(&self) -> Value {
        match self {
            Input::Text(t) => json!(t),
            Input::Texts(t) => json!(t),
            Input::Tokens(t) => json!(t),
            Input::TokenLists(t) => json!(t),
        }
    }
}

/// The request body (OpenAI's, plus chatedge's optional `provider`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// The embedding model.
    pub model: String,
    /// What to embed.
    pub input: Input,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: Encoding,
    /// Output dimensions, for models that can shorten their vectors.
    #[serde(default)]
    pub dimensions: Option<u64>,
    /// An end-user id, passed on.
    #[serde(default)]
    pub user: Option<String>,
    /// Which provider serves the model, when its name does not say.
    #[serde(default)]
    pub provider: Option<String>,
}

/// Parses and checks a body: 400 naming the field, or `invalid_json`.
pub fn parse(body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let request: EmbeddingsRequest = serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(&e))?;
    let invalid = |field: &str, message: String| {
        ApiError::bad_request(ErrorCode::ValidationFailed, message).with_detail("field", field)
    };
    // The same bound as a chat's model: the name is sent on and kept in the usage rows.
    if request.model.trim().is_empty() || request.model.len() > 128 {
        return Err(invalid("model", "model must name an embedding model in at most 128 characters".into()));
    }
    let count = request.input.count();
    if count == 0 || count > MAX_INPUTS {
        return Err(invalid("input", format!("input must hold between 1 and {MAX_INPUTS} items")));
    }
    if request.input.has_empty() {
        return Err(invalid("input", "input must not contain an empty string or token list".into()));
    }
    if let Some(d) = request.dimensions {
        if d == 0 || d > MAX_DIMENSIONS {
            return Err(invalid("dimensions", format!("dimensions must be between 1 and {MAX_DIMENSIONS}")));
        }
    }
    if let Some(name) = &request.provider {
        if Provider::parse(name).is_none() {
            return Err(invalid("provider", format!("unknown provider '{name}'")));
        }
    }
    Ok(request)
}

/// The provider's vectors in input order, and its usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens, when the provider reported them.
    pub usage: Option<Usage>,
    /// The model as the provider named it.
    pub model: Option<String>,
}

/// Reads an OpenAI-shaped embeddings reply (OpenAI, Mistral, compatible servers): `data[]` with
/// `index` and `embedding` as numbers or base64, `usage.prompt_tokens`. `expected` is the
/// number of inputs: a reply with another count, a missing index or a repeated one is the
/// provider's error, never a silently shifted answer.
pub fn read_reply(body: &Value, expected: usize) -> Result<Embedded, String> {
    let data = body["data"].as_array().ok_or("the reply has no data array")?;
    if data.len() != expected {
        return Err(format!("the reply has {} embeddings for {expected} inputs", data.len()));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let slot = vectors.get_mut(index).ok_or_else(|| format!("embedding index {index} is out of range"))?;
        if slot.is_some() {
            return Err(format!("embedding index {index} appears twice"));
        }
        *slot = Some(vector_of(&item["embedding"])?);
    }
    let vectors = vectors.into_iter().collect::<Option<Vec<_>>>().ok_or("an embedding is missing")?;
    Ok(Embedded { vectors, usage: reported_usage(body), model: body["model"].as_str().map(str::to_owned) })
}

/// The input tokens a reply reports (`usage.prompt_tokens`, else `total_tokens`); `None` when it
/// reports none (some compatible servers), since every input has at least one token.
pub fn reported_usage(body: &Value) -> Option<Usage> {
    let usage = &body["usage"];
    let prompt_tokens = usage["prompt_tokens"].as_u64().filter(|&n| n > 0).or(usage["total_tokens"].as_u64())?;
    (prompt_tokens > 0).then_some(Usage {
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
    })
}

fn vector_of(v: &Value) -> Result<Vec<f32>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| "an embedding holds a non-number".to_owned()))
            .collect(),
        Value::String(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "an embedding is not valid base64".to_owned())?;
            if bytes.len() % 4 != 0 {
                return Err("a base64 embedding is not a whole number of f32s".into());
            }
            Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        _ => Err("an embedding is neither numbers nor base64".into()),
    }
}

/// One vector as the client asked for it.
pub fn encode(vector: &[f32], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Float => json!(vector),
        Encoding::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

/// OpenAI's answer: `{"object":"list","data":[{"object":"embedding","index","embedding"}],
/// "model","usage"}`, plus chatedge's `cost_usd` and `provider` under `chatedge`.
pub fn answer(embedded: &Embedded, model: &str, encoding: Encoding, extension: Value) -> Value {
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| json!({"object": "embedding", "index": index, "embedding": encode(v, encoding)}))
        .collect();
    let tokens = embedded.usage.map_or(0, |u| u.prompt_tokens);
    json!({
        "object": "list",
        "data": data,
        "model": embedded.model.as_deref().unwrap_or(model),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "chatedge": extension,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_of_every_shape_parse_and_bad_ones_name_their_field() {
        let one = parse(br#"{"model":"text-embedding-3-small","input":"hello"}"#).unwrap();
        assert_eq!((one.input.count(), one.input.token_bound(), one.encoding_format), (1, 5, Encoding::Float));
        let many = parse(br#"{"model":"m","input":["a","bc"],"encoding_format":"base64","dimensions":256}"#).unwrap();
        assert_eq!((many.input.count(), many.encoding_format, many.dimensions), (2, Encoding::Base64, Some(256)));
        assert_eq!(parse(br#"{"model":"m","input":[1,2,3]}"#).unwrap().input, Input::Tokens(vec![1, 2, 3]));
        assert_eq!(parse(br#"{"model":"m","input":[[1],[2,3]]}"#).unwrap().input.token_bound(), 3);
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (b"{", "invalid_json", None),
            (br#"{"input":"x"}"#, "validation_failed", None),
            (br#"{"model":" ","input":"x"}"#, "validation_failed", Some("model")),
            (br#"{"model":"m","input":[]}"#, "validation_failed", Some("input")),
            (br#"{"model":"m","input":["a",""]}"#, "validation_failed", Some("input")),
            (br#"{"model":"m","input":{"text":"x"}}"#, "validation_failed", None),
            (br#"{"model":"m","input":"x","dimensions":0}"#, "validation_failed", Some("dimensions")),
            (br#"{"model":"m","input":"x","encoding_format":"int8"}"#, "validation_failed", None),
            (br#"{"model":"m","input":"x","provider":"nope"}"#, "validation_failed", Some("provider")),
            (br#"{"model":"m","input":"x","temperature":1}"#, "validation_failed", None),
        ];
        for (body, code, field) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, *code), "{}", String::from_utf8_lossy(body));
            let named = e.details.as_ref().and_then(|d| d.get("field")).and_then(Value::as_str);
            assert_eq!(named, *field, "{}", String::from_utf8_lossy(body));
        }
        let too_many = format!(r#"{{"model":"m","input":[{}]}}"#, vec!["\"a\""; MAX_INPUTS + 1].join(","));
        assert_eq!(parse(too_many.as_bytes()).unwrap_err().code, ErrorCode::ValidationFailed);
        let long_model = format!(r#"{{"model":"{}","input":"x"}}"#, "m".repeat(129));
        assert_eq!(parse(long_model.as_bytes()).unwrap_err().details.unwrap()["field"], "model");
    }

    #[test]
    fn replies_in_floats_or_base64_come_back_in_input_order() {
        let floats = json!({
            "object": "list",
            "data": [
                {"object": "embedding", "index": 1, "embedding": [0.5, -1.0]},
                {"object": "embedding", "index": 0, "embedding": [0.25, 2.0]}
            ],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 4, "total_tokens": 4}
        });
        let got = read_reply(&floats, 2).unwrap();
        assert_eq!(got.vectors, vec![vec![0.25, 2.0], vec![0.5, -1.0]]);
        assert_eq!(
            (got.usage.map(|u| u.prompt_tokens), got.model.as_deref()),
            (Some(4), Some("text-embedding-3-small"))
        );
        let b64 = json!({"data": [{"index": 0, "embedding": encode(&[0.25, 2.0], Encoding::Base64)}], "usage": {"total_tokens": 2}});
        let got = read_reply(&b64, 1).unwrap();
        assert_eq!((got.vectors[0].clone(), got.usage.map(|u| u.prompt_tokens)), (vec![0.25, 2.0], Some(2)));
        let silent =
            json!({"data": [{"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 0, "total_tokens": 0}});
        assert_eq!(read_reply(&silent, 1).unwrap().usage, None, "a server reporting no tokens is estimated");
    }

    #[test]
    fn a_reply_that_does_not_match_the_inputs_is_refused() {
        let item = |i: u64| json!({"index": i, "embedding": [1.0]});
        assert!(read_reply(&json!({"data": [item(0)]}), 2).unwrap_err().contains("1 embeddings for 2"));
        assert!(read_reply(&json!({"data": [item(0), item(0)]}), 2).unwrap_err().contains("twice"));
        assert!(read_reply(&json!({"data": [item(0), item(7)]}), 2).unwrap_err().contains("out of range"));
        assert!(read_reply(&json!({"data": [{"index": 0, "embedding": ["x"]}]}), 1).is_err());
        assert!(read_reply(&json!({"data": [{"index": 0, "embedding": "AAA"}]}), 1).is_err());
        assert!(read_reply(&json!({"error": {"message": "no"}}), 1).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32_as_the_sdks_decode_it() {
        // 1.0f32 is 0x3f800000: bytes 00 00 80 3f.
        assert_eq!(encode(&[1.0], Encoding::Base64), json!("AACAPw=="));
        assert_eq!(encode(&[1.0, -0.5], Encoding::Float), json!([1.0, -0.5]));
        let embedded = Embedded {
            vectors: vec![vec![1.0]],
            usage: Some(Usage { prompt_tokens: 3, ..Usage::default() }),
            model: None,
        };
        let out = answer(&embedded, "text-embedding-3-small", Encoding::Base64, json!({"cost_usd": 0.0}));
        assert_eq!(out["data"][0], json!({"object": "embedding", "index": 0, "embedding": "AACAPw=="}));
        assert_eq!(
            (out["model"].as_str(), out["usage"]["total_tokens"].as_u64()),
            (Some("text-embedding-3-small"), Some(3))
        );
    }
}
