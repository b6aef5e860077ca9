//! Retrieval over the user's documents, in pure form: which documents a chat asks for, the
//! embedding batches a document's chunks are sent in, vectors as pgvector literals, the
//! retrieved chunks as context and as citations, and the search route's query. The I/O around
//! it is `component::documents`; chunking is file-upload's (it has the bytes).

use serde_json::{json, Map, Value};
use shared::{ApiError, ErrorCode};

/// The width of the `embedding` columns (text-embedding-3-small's): narrower vectors are
/// zero-padded, which leaves cosine similarity unchanged.
pub const VECTOR_DIMENSIONS: usize = 1536;
/// The embedding model when `embedding_model` is unset.
pub const DEFAULT_EMBEDDING_MODEL: &str = "text-embedding-3-small";
/// Chunks put into a chat's context when `rag_top_k` is unset.
pub const DEFAULT_TOP_K: usize = 5;
/// Most chunks ever put into one context.
pub const MAX_TOP_K: usize = 20;
/// Least cosine similarity of a chunk put into a context when `rag_min_similarity` is unset.
pub const DEFAULT_MIN_SIMILARITY: f64 = 0.25;
/// Candidates an HNSW search keeps (pgvector's `hnsw.ef_search`; its default, 40, loses a
/// third of the true nearest ten on the bench's corpus).
pub const DEFAULT_EF_SEARCH: u32 = 100;
/// Most files one chat may name.
pub const MAX_FILE_IDS: usize = 20;
/// Most inputs in one embeddings request (OpenAI takes 2,048; smaller batches fail smaller).
pub const BATCH_INPUTS: usize = 64;
/// Most estimated tokens in one embeddings request (OpenAI's limit is 300,000).
pub const BATCH_TOKENS: usize = 32_000;
/// Most chunks one document is split into (file-upload's cap).
pub const MAX_CHUNKS: usize = 20_000;
/// Characters of a search hit's snippet.
pub const SNIPPET_CHARS: usize = 240;
/// Most characters of a chat's question embedded for retrieval.
pub const MAX_QUESTION_CHARS: usize = 8_000;
/// Longest search query, in characters.
pub const MAX_QUERY_CHARS: usize = 2_000;

/// How retrieval is set up (variables `embedding_provider`, `embedding_model`, `rag_top_k`,
/// `rag_min_similarity`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSettings {
    /// The provider that embeds documents and queries; `None`: the one owning the model, else
    /// the default provider.
    pub embedding_provider: Option<String>,
    /// The embedding model.
    pub embedding_model: String,
    /// An OpenAI-compatible `/v1` URL that embeds for retrieval instead of a chat provider
    /// (TEI, Ollama, the dev stack's local model).
    pub embedding_base_url: Option<String>,
    /// Its API key (empty: none).
    pub embedding_api_key: Option<String>,
    /// Chunks put into a chat's context.
    pub top_k: usize,
    /// Least similarity of a chunk put into a context.
    pub min_similarity: f64,
    /// Whether each stored exchange (user message and answer) is embedded for search, one
    /// embeddings call after the answer.
    pub embed_messages: bool,
    /// `hnsw.ef_search` for every search and retrieval: recall bought with latency.
    pub ef_search: u32,
}

impl RetrievalSettings {
    /// The variables read.
    pub const VARIABLES: &'static [&'static str] = &[
        "embedding_provider",
        "embedding_model",
        "embedding_base_url",
        "embedding_api_key",
        "rag_top_k",
        "rag_min_similarity",
        "embed_messages",
        "rag_ef_search",
    ];

    /// Reads them (`var` answers `None` for unset or empty).
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Self {
        RetrievalSettings {
            embedding_provider: var("embedding_provider"),
            embedding_model: var("embedding_model").unwrap_or_else(|| DEFAULT_EMBEDDING_MODEL.to_owned()),
            embedding_base_url: var("embedding_base_url"),
            embedding_api_key: var("embedding_api_key"),
            top_k: var("rag_top_k").and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_TOP_K).clamp(1, MAX_TOP_K),
            min_similarity: var("rag_min_similarity")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .unwrap_or(DEFAULT_MIN_SIMILARITY)
                .clamp(-1.0, 1.0),
            embed_messages: matches!(var("embed_messages").as_deref().map(str::trim), Some("true" | "1")),
            // pgvector's own bounds.
            ef_search: var("rag_ef_search")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_EF_SEARCH)
                .clamp(1, 1000),
        }
    }
}

/// Which documents a chat retrieves from.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// These files (lowercase UUIDs), the caller's own.
    Files(Vec<String>),
    /// All the caller's documents.
    All,
}

/// Reads `file_ids` and `use_documents` of a native chat body.
pub fn scope(body: &Map<String, Value>) -> Result<Option<Scope>, ApiError> {
    let invalid = |field: &str, m: &str| {
        ApiError::bad_request(ErrorCode::ValidationFailed, m.to_owned()).with_detail("field", field)
    };
    let files = match body.get("file_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            if list.len() > MAX_FILE_IDS {
                return Err(invalid("file_ids", &format!("at most {MAX_FILE_IDS} file_ids")));
            }
            let mut ids = Vec::with_capacity(list.len());
            for v in list {
                match v.as_str() {
                    Some(id) if shared::is_uuid(id) => {
                        let id = id.to_ascii_lowercase();
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                    _ => return Err(invalid("file_ids", "file_ids must be file ids (UUIDs)")),
                }
            }
            Some(ids)
        }
        Some(_) => return Err(invalid("file_ids", "file_ids must be an array")),
    };
    let all = match body.get("use_documents") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("use_documents", "use_documents must be a boolean")),
    };
    Ok(match (files, all) {
        (Some(ids), false) if !ids.is_empty() => Some(Scope::Files(ids)),
        (_, true) => Some(Scope::All),
        _ => None,
    })
}

/// `vector` as pgvector's text form, zero-padded to [`VECTOR_DIMENSIONS`].
pub fn vector_literal(vector: &[f32]) -> Result<String, String> {
    if vector.is_empty() || vector.len() > VECTOR_DIMENSIONS {
        return Err(format!(
            "the embedding has {} dimensions; the index holds at most {VECTOR_DIMENSIONS}",
            vector.len()
        ));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err("the embedding holds a number that is not finite".to_owned());
    }
    let mut out = String::with_capacity(VECTOR_DIMENSIONS * 4);
    out.push('[');
    for i in 0..VECTOR_DIMENSIONS {
        if i > 0 {
            out.push(',');
        }
        match vector.get(i) {
            Some(x) => out.push_str(&x.to_string()),
            None => out.push('0'),
        }
    }
    out.push(']');
    Ok(out)
}

/// Indices of `tokens` (each chunk's estimated tokens) in consecutive batches of at most
/// [`BATCH_INPUTS`] inputs and [`BATCH_TOKENS`] tokens (a chunk bigger alone is a batch alone).
pub fn batches(tokens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut sum = 0;
    for (i, &t) in tokens.iter().enumerate() {
        if i > start && (i - start >= BATCH_INPUTS || sum + t > BATCH_TOKENS) {
            out.push(start..i);
            start = i;
            sum = 0;
        }
        sum += t;
    }
    if start < tokens.len() {
        out.push(start..tokens.len());
    }
    out
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The file it is from.
    pub file_id: String,
    /// The file's name as uploaded.
    pub file_name: String,
    /// Its place in the file.
    pub chunk_index: i64,
    /// Its page, for paged formats.
    pub page_number: Option<i64>,
    /// Its section.
    pub heading: Option<String>,
    /// Its text.
    pub content: String,
    /// Cosine similarity to the query.
    pub similarity: f64,
}

impl Hit {
    /// From a row of the search statement (`row_to_json`).
    pub fn from_row(row: &Value) -> Option<Hit> {
        Some(Hit {
            file_id: row["file_id"].as_str()?.to_owned(),
            file_name: row["file_name"].as_str().unwrap_or_default().to_owned(),
            chunk_index: row["chunk_index"].as_i64()?,
            page_number: row["page_number"].as_i64(),
            heading: row["heading"].as_str().map(str::to_owned),
            content: row["content"].as_str()?.to_owned(),
            similarity: row["similarity"].as_f64().unwrap_or(0.0),
        })
    }

    /// The citation: what the client is told and the assistant row keeps.
    pub fn citation(&self) -> Value {
        json!({"file_id": self.file_id, "file_name": self.file_name, "chunk_index": self.chunk_index,
               "page_number": self.page_number, "heading": self.heading,
               "score": (self.similarity * 10_000.0).round() / 10_000.0})
    }
}

/// The retrieved chunks as the text put before the conversation, numbered as cited.
pub fn context_block(hits: &[Hit]) -> String {
    let mut out = String::from(
        "Excerpts from the user's documents that may help answer. Cite them by their number, \
         e.g. [1]; if they do not answer the question, say so.\n",
    );
    for (i, h) in hits.iter().enumerate() {
        let mut place = format!("{}, part {}", h.file_name, h.chunk_index + 1);
        if let Some(p) = h.page_number {
            place.push_str(&format!(", page {p}"));
        }
        if let Some(heading) = &h.heading {
            place.push_str(&format!(", section \"{heading}\""));
        }
        out.push_str(&format!("\n[{}] ({place})\n{}\n", i + 1, h.content.trim()));
    }
    out
}

/// `messages` with `block` added to the system message (one is added first when there is none),
/// so every provider's translation carries it.
pub fn with_context(mut messages: Vec<Value>, block: &str) -> Vec<Value> {
    match messages.first_mut() {
        Some(first) if first["role"] == "system" && first["content"].is_string() => {
            let existing = first["content"].as_str().unwrap_or_default().to_owned();
            first["content"] = json!(format!("{existing}\n\n{block}"));
        }
        _ => messages.insert(0, json!({"role": "system", "content": block})),
    }
    messages
}

/// Where the search route looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchScope {
    /// Document chunks.
    Documents,
    /// Stored messages.
    Messages,
    /// Both, merged by score.
    All,
}

/// `GET /functions/v1/search`'s query.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// The text searched for.
    pub q: String,
    /// Where.
    pub scope: SearchScope,
    /// Vector and full-text ranks fused (documents only).
    pub hybrid: bool,
    /// Most hits (1-50, default 10).
    pub limit: usize,
    /// Only in this conversation (messages).
    pub conversation_id: Option<String>,
}

/// Reads the search route's query parameters (`param` answers each by name).
pub fn search_query(param: impl Fn(&str) -> Option<String>) -> Result<SearchQuery, ApiError> {
    let invalid =
        |field: &str, m: String| ApiError::bad_request(ErrorCode::ValidationFailed, m).with_detail("field", field);
    let q = param("q").map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
    let q = q.ok_or_else(|| invalid("q", "q (the text to search for) is required".into()))?;
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(invalid("q", format!("q must be at most {MAX_QUERY_CHARS} characters")));
    }
    let scope = match param("scope").as_deref().unwrap_or("all") {
        "documents" => SearchScope::Documents,
        "messages" => SearchScope::Messages,
        "all" => SearchScope::All,
        other => return Err(invalid("scope", format!("scope must be documents, messages or all, not '{other}'"))),
    };
    let hybrid = match param("hybrid").as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(invalid("hybrid", "hybrid must be true or false".into())),
    };
    let limit = match param("limit") {
        None => 10,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=50).contains(&n) => n,
            _ => return Err(ApiError::bad_request(ErrorCode::InvalidLimit, "limit must be 1-50")),
        },
    };
    let conversation_id = match param("conversation_id") {
        None => None,
        Some(c) if shared::is_uuid(&c) => Some(c.to_ascii_lowercase()),
        Some(_) => return Err(invalid("conversation_id", "conversation_id must be a UUID".into())),
    };
    Ok(SearchQuery { q, scope, hybrid, limit, conversation_id })
}

/// About [`SNIPPET_CHARS`] characters of `content` around the first word of `query` it holds
/// (case-insensitive), else its start; `…` marks a cut.
pub fn snippet(content: &str, query: &str) -> String {
    let chars: Vec<char> = content.chars().collect();
    if chars.len() <= SNIPPET_CHARS {
        return content.trim().to_owned();
    }
    let lower: Vec<char> = chars.iter().map(|c| c.to_lowercase().next().unwrap_or(*c)).collect();
    let found = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .find_map(|w| {
            let w: Vec<char> = w.to_lowercase().chars().collect();
            lower.windows(w.len()).position(|win| win == w.as_slice())
        })
        .unwrap_or(0);
    let start = found.saturating_sub(SNIPPET_CHARS / 3).min(chars.len() - SNIPPET_CHARS);
    let end = start + SNIPPET_CHARS;
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(&chars[start..end]);
    if end < chars.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn scopes() {
        let id = "0b8a4a86-5f0e-4d6c-9a53-0c64d0a6e0b1";
        assert_eq!(scope(&body(json!({}))).unwrap(), None);
        assert_eq!(
            scope(&body(json!({"file_ids": [id, id.to_uppercase()]}))).unwrap(),
            Some(Scope::Files(vec![id.to_owned()]))
        );
        assert_eq!(scope(&body(json!({"use_documents": true}))).unwrap(), Some(Scope::All));
        assert_eq!(scope(&body(json!({"file_ids": []}))).unwrap(), None);
        for bad in [json!({"file_ids": ["x"]}), json!({"file_ids": "x"}), json!({"use_documents": "yes"})] {
            assert_eq!(scope(&body(bad)).unwrap_err().status, 400);
        }
        let many: Vec<String> = (0..21).map(|i| format!("0b8a4a86-5f0e-4d6c-9a53-0c64d0a6e{i:03}")).collect();
        assert_eq!(scope(&body(json!({"file_ids": many}))).unwrap_err().status, 400);
    }

    #[test]
    fn vectors_are_padded_and_checked() {
        let v = vector_literal(&[0.5, -1.0]).unwrap();
        assert!(v.starts_with("[0.5,-1,0,0"));
        assert_eq!(v.matches(',').count(), VECTOR_DIMENSIONS - 1);
        assert!(vector_literal(&[]).is_err());
        assert!(vector_literal(&vec![0.0; VECTOR_DIMENSIONS + 1]).is_err());
        assert!(vector_literal(&[f32::NAN]).is_err());
    }

    #[test]
    fn batches_respect_both_limits() {
        assert_eq!(batches(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(batches(&[10; 130]), vec![0..64, 64..128, 128..130]);
        assert_eq!(batches(&[20_000, 20_000, 5]), vec![0..1, 1..3]);
        assert_eq!(batches(&[50_000, 1]), vec![0..1, 1..2], "an oversized chunk goes alone");
    }

    #[test]
    fn context_and_citations() {
        let hit = Hit {
            file_id: "f".into(),
            file_name: "notes.md".into(),
            chunk_index: 2,
            page_number: Some(4),
            heading: Some("Setup".into()),
            content: " Install it. ".into(),
            similarity: 0.812_345,
        };
        let block = context_block(std::slice::from_ref(&hit));
        assert!(block.contains("[1] (notes.md, part 3, page 4, section \"Setup\")\nInstall it.\n"), "{block}");
        assert_eq!(hit.citation()["score"], json!(0.8123));
        let with = with_context(vec![json!({"role": "system", "content": "Be brief."}), json!({"role": "user"})], "X");
        assert_eq!(with[0]["content"], "Be brief.\n\nX");
        let without = with_context(vec![json!({"role": "user", "content": "q"})], "X");
        assert_eq!((without.len(), without[0]["role"].as_str()), (2, Some("system")));
    }

    #[test]
    fn search_queries() {
        let q = |pairs: &'static [(&'static str, &'static str)]| {
            search_query(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned()))
        };
        let ok = q(&[("q", " volcano "), ("scope", "documents"), ("hybrid", "true"), ("limit", "3")]).unwrap();
        assert_eq!((ok.q.as_str(), ok.scope, ok.hybrid, ok.limit), ("volcano", SearchScope::Documents, true, 3));
        assert_eq!(q(&[("q", "x")]).unwrap().scope, SearchScope::All);
        for bad in [&[][..], &[("q", "  ")], &[("q", "x"), ("scope", "web")], &[("q", "x"), ("limit", "0")]] {
            assert_eq!(q(bad).unwrap_err().status, 400);
        }
    }

    #[test]
    fn snippets_center_on_the_query() {
        assert_eq!(snippet(" short ", "x"), "short");
        let long = format!("{}Volcano eruptions{}", "a ".repeat(300), " b".repeat(300));
        let s = snippet(&long, "why do VOLCANOES erupt");
        assert!(s.contains("Volcano eruptions") || s.contains("eruptions"), "{s}");
        assert!(s.starts_with('…') && s.ends_with('…'));
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 2);
        assert!(snippet(&long, "zz").starts_with("a a"));
    }

    #[test]
    fn settings_defaults_and_bounds() {
        let s = RetrievalSettings::from_variables(|n| match n {
            "rag_top_k" => Some("500".into()),
            "rag_min_similarity" => Some("NaN".into()),
            _ => None,
        });
        assert_eq!(
            (s.top_k, s.min_similarity, s.embedding_model.as_str()),
            (MAX_TOP_K, DEFAULT_MIN_SIMILARITY, DEFAULT_EMBEDDING_MODEL)
        );
        assert_eq!(s.ef_search, DEFAULT_EF_SEARCH);
        let wide = RetrievalSettings::from_variables(|n| (n == "rag_ef_search").then(|| "5000".into()));
        assert_eq!(wide.ef_search, 1000, "pgvector refuses more than 1000");
    }
}
