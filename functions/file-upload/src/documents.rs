//! Documents for retrieval: an uploaded document's text, split into chunks on its structure
//! (Markdown headings, paragraphs, CSV rows) under a token budget with an overlap, ready to be
//! embedded (chat-completion does that, it owns the model calls). Pure: tested natively.
//!
//! Tokens are estimated as one per four characters (OpenAI's rule of thumb for English): the
//! budget only has to keep a chunk well inside any embedding model's input limit, and the
//! provider reports the real count when it embeds.

/// How chunks are cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkPlan {
    /// Most tokens in one chunk (its overlap included).
    pub max_tokens: usize,
    /// Tokens of the previous chunk's end repeated at the start of the next, within a section.
    pub overlap_tokens: usize,
    /// Most chunks one file may make (more is refused as too large to index).
    pub max_chunks: usize,
}

impl Default for ChunkPlan {
    fn default() -> Self {
        // ~1,600 characters with 200 of overlap: between LibreChat's 1,500/100 and chatbot-ui's
        // 4,000/200, small enough that a retrieved chunk is on one topic.
        ChunkPlan { max_tokens: 400, overlap_tokens: 50, max_chunks: 20_000 }
    }
}

/// One piece of a document as stored in `document_chunks`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Chunk {
    /// The text embedded and shown as the source.
    pub content: String,
    /// The section it is in (Markdown headings joined with " > "), if any.
    pub heading: Option<String>,
    /// The page it is on (1-based), for paged formats.
    pub page_number: Option<u32>,
    /// Estimated tokens.
    pub token_count: u32,
}

/// A document's text and its chunks.
#[derive(Debug)]
pub struct Extracted {
    /// All the text, as stored in `file_uploads.extracted_text`.
    pub text: String,
    /// Its chunks, in order.
    pub chunks: Vec<Chunk>,
}

/// Why a document could not be indexed (stored as the file's `processing_error`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DocumentError {
    /// The bytes are not text of the declared kind.
    #[error("the file is not valid UTF-8 text")]
    NotText,
    /// A PDF without a readable text layer (or not a PDF at all).
    #[error("no text could be read from the PDF: {0}")]
    Pdf(String),
    /// More chunks than one file may make.
    #[error("the document is too large to index (more than {0} chunks)")]
    TooManyChunks(usize),
}

/// The kinds of upload that are indexed for retrieval.
pub fn is_document(mime: &str) -> bool {
    matches!(mime, "text/plain" | "text/markdown" | "text/csv" | "application/json" | "application/pdf")
}

/// Estimated tokens in `text`.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Extracts `bytes` (of type `mime`, one [`is_document`] accepts) and chunks it under `plan`.
pub fn extract(mime: &str, bytes: &[u8], plan: ChunkPlan) -> Result<Extracted, DocumentError> {
    let (text, chunks) = match mime {
        "application/pdf" => {
            let pages = crate::pdf::page_texts(bytes).map_err(DocumentError::Pdf)?;
            let mut chunks = Vec::new();
            for (n, page) in pages.iter().enumerate() {
                let page_number = Some(n as u32 + 1);
                for mut c in chunk_blocks(&paragraphs(page), None, plan) {
                    c.page_number = page_number;
                    chunks.push(c);
                }
            }
            (pages.join("\n\n"), chunks)
        }
        _ => {
            let text = std::str::from_utf8(bytes).map_err(|_| DocumentError::NotText)?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(text).replace("\r\n", "\n");
            let chunks = match mime {
                "text/markdown" => chunk_markdown(&text, plan),
                "text/csv" => chunk_csv(&text, plan),
                _ => chunk_blocks(&paragraphs(&text), None, plan),
            };
            (text, chunks)
        }
    };
    if chunks.len() > plan.max_chunks {
        return Err(DocumentError::TooManyChunks(plan.max_chunks));
    }
    // Postgres text cannot hold NUL.
    let chunks = chunks
        .into_iter()
        .filter(|c| !c.content.trim().is_empty())
        .map(|mut c| {
            if c.content.contains('\0') {
                c.content = c.content.replace('\0', "");
            }
            c
        })
        .collect();
    Ok(Extracted { text: text.replace('\0', ""), chunks })
}

/// Blocks separated by blank lines, each trimmed.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                out.push(current.trim().to_owned());
            }
            current.clear();
        } else {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(line);
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// Markdown by section: each heading starts a section (its path of headings is the chunk's
/// `heading`); a heading-looking line inside a fenced code block is code, not a heading.
fn chunk_markdown(text: &str, plan: ChunkPlan) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut section = String::new();
    let mut in_fence = false;
    let flush = |section: &mut String, path: &[(usize, String)], chunks: &mut Vec<Chunk>| {
        let heading = (!path.is_empty()).then(|| path.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>().join(" > "));
        chunks.extend(chunk_blocks(&paragraphs(section), heading, plan));
        section.clear();
    };
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        let level = trimmed.bytes().take_while(|b| *b == b'#').count();
        let is_heading = !in_fence && (1..=6).contains(&level) && trimmed[level..].starts_with(' ');
        if is_heading {
            flush(&mut section, &path, &mut chunks);
            let title = trimmed[level..].trim().trim_end_matches('#').trim().to_owned();
            path.retain(|(l, _)| *l < level);
            path.push((level, title));
            // The heading is part of its section's text too (what it is about).
            section.push_str(trimmed);
            section.push_str("\n\n");
        } else {
            section.push_str(line);
            section.push('\n');
        }
    }
    flush(&mut section, &path, &mut chunks);
    chunks
}

/// CSV by rows: every chunk starts with the header row so each can be read alone.
fn chunk_csv(text: &str, plan: ChunkPlan) -> Vec<Chunk> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else { return Vec::new() };
    let budget = plan.max_tokens.saturating_sub(estimate_tokens(header)).max(plan.max_tokens / 2);
    let mut chunks = Vec::new();
    let mut rows = String::new();
    for row in lines {
        let row: String = if estimate_tokens(row) > budget { cut_chars(row, budget * 4) } else { row.to_owned() };
        if !rows.is_empty() && estimate_tokens(&rows) + estimate_tokens(&row) + 1 > budget {
            chunks.push(csv_chunk(header, &rows));
            rows.clear();
        }
        if !rows.is_empty() {
            rows.push('\n');
        }
        rows.push_str(&row);
    }
    if !rows.is_empty() || chunks.is_empty() {
        chunks.push(csv_chunk(header, &rows));
    }
    chunks
}

fn csv_chunk(header: &str, rows: &str) -> Chunk {
    let content = if rows.is_empty() { header.to_owned() } else { format!("{header}\n{rows}") };
    Chunk { token_count: estimate_tokens(&content) as u32, content, heading: None, page_number: None }
}

/// Packs blocks into chunks of at most `plan.max_tokens`; a block too big alone is split at
/// sentence ends, then at spaces, then anywhere. Each chunk after the first starts with the end
/// of the one before (`plan.overlap_tokens`), cut at a word boundary.
fn chunk_blocks(blocks: &[String], heading: Option<String>, plan: ChunkPlan) -> Vec<Chunk> {
    let overlap = plan.overlap_tokens.min(plan.max_tokens / 4);
    let room = plan.max_tokens.saturating_sub(overlap).max(1);
    let mut pieces: Vec<String> = Vec::new();
    for block in blocks {
        if estimate_tokens(block) <= room {
            pieces.push(block.clone());
        } else {
            pieces.extend(split_long(block, room));
        }
    }
    let mut bodies: Vec<String> = Vec::new();
    let mut current = String::new();
    for piece in pieces {
        if !current.is_empty() && estimate_tokens(&current) + estimate_tokens(&piece) + 1 > room {
            bodies.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(&piece);
    }
    if !current.is_empty() {
        bodies.push(current);
    }
    let mut chunks = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let content = match i.checked_sub(1).map(|p| tail_words(&bodies[p], overlap)) {
            Some(tail) if !tail.is_empty() => format!("{tail}\n\n{body}"),
            _ => body.clone(),
        };
        chunks.push(Chunk {
            token_count: estimate_tokens(&content) as u32,
            content,
            heading: heading.clone(),
            page_number: None,
        });
    }
    chunks
}

/// A block longer than `room` tokens in pieces of at most `room`.
fn split_long(block: &str, room: usize) -> Vec<String> {
    let max_chars = room * 4;
    let mut out = Vec::new();
    let mut current = String::new();
    // Sentences (kept with their end mark), else words.
    let units: Vec<&str> = block.split_inclusive(['.', '!', '?', '\n']).collect();
    for unit in units {
        let words: Vec<String> = if unit.chars().count() > max_chars {
            unit.split_inclusive(' ').flat_map(|w| hard_split(w, max_chars)).collect()
        } else {
            vec![unit.to_owned()]
        };
        for w in words {
            if !current.is_empty() && current.chars().count() + w.chars().count() > max_chars {
                out.push(current.trim().to_owned());
                current.clear();
            }
            current.push_str(&w);
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// A word longer than `max_chars` cut into pieces of `max_chars` characters.
fn hard_split(word: &str, max_chars: usize) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    chars.chunks(max_chars.max(1)).map(|c| c.iter().collect()).collect()
}

fn cut_chars(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The last words of `text` that fit in `tokens`.
fn tail_words(text: &str, tokens: usize) -> String {
    if tokens == 0 {
        return String::new();
    }
    let max_chars = tokens * 4;
    let mut taken: Vec<&str> = Vec::new();
    let mut chars = 0;
    for word in text.split_whitespace().rev() {
        let n = word.chars().count() + 1;
        if chars + n > max_chars {
            break;
        }
        chars += n;
        taken.push(word);
    }
    taken.reverse();
    taken.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(max: usize, overlap: usize) -> ChunkPlan {
        ChunkPlan { max_tokens: max, overlap_tokens: overlap, max_chunks: 1000 }
    }

    #[test]
    fn markdown_is_cut_at_headings_and_keeps_the_heading_path() {
        let md = "# Guide\n\nIntro text.\n\n## Install\n\nRun the installer.\n\n```sh\n# not a heading\nmake\n```\n\n## Use\n\nCall it.\n";
        let out = extract("text/markdown", md.as_bytes(), plan(400, 0)).unwrap();
        let headings: Vec<_> = out.chunks.iter().map(|c| c.heading.clone().unwrap_or_default()).collect();
        assert_eq!(headings, ["Guide", "Guide > Install", "Guide > Use"]);
        assert!(out.chunks[1].content.contains("# not a heading\nmake"), "{:?}", out.chunks[1]);
        assert!(out.chunks[2].content.starts_with("## Use"));
        assert_eq!(out.text, md);
    }

    #[test]
    fn chunks_stay_under_the_budget_and_overlap() {
        let sentence = "The quick brown fox jumps over the lazy dog. ";
        let text = sentence.repeat(400); // ~18,000 chars, one paragraph
        let out = extract("text/plain", text.as_bytes(), plan(100, 20)).unwrap();
        assert!(out.chunks.len() > 40, "{}", out.chunks.len());
        for c in &out.chunks {
            assert!(c.token_count <= 100, "{} tokens", c.token_count);
            assert_eq!(c.token_count as usize, estimate_tokens(&c.content));
        }
        // The second chunk starts with the end of the first.
        let tail = tail_words(&out.chunks[0].content, 20);
        assert!(!tail.is_empty());
        assert!(out.chunks[1].content.starts_with(&tail));
        // No text is lost: every sentence of the source is in some chunk.
        let all: String = out.chunks.iter().map(|c| c.content.as_str()).collect();
        assert!(all.matches("lazy dog").count() >= 400);
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut_anyway() {
        let text = "x".repeat(10_000);
        let out = extract("text/plain", text.as_bytes(), plan(50, 0)).unwrap();
        assert_eq!(out.chunks.iter().map(|c| c.content.len()).sum::<usize>(), 10_000);
        assert!(out.chunks.iter().all(|c| c.token_count <= 50));
    }

    #[test]
    fn csv_chunks_repeat_the_header() {
        let mut csv = String::from("city,country,population\n");
        for i in 0..200 {
            csv.push_str(&format!("city{i},country{i},{i}000\n"));
        }
        let out = extract("text/csv", csv.as_bytes(), plan(60, 10)).unwrap();
        assert!(out.chunks.len() > 5);
        assert!(out.chunks.iter().all(|c| c.content.starts_with("city,country,population\n")));
        let rows: usize = out.chunks.iter().map(|c| c.content.lines().count() - 1).sum();
        assert_eq!(rows, 200, "every row in exactly one chunk");
    }

    #[test]
    fn refusals() {
        assert_eq!(extract("text/plain", &[0xff, 0xfe, 0x00], plan(10, 0)).unwrap_err(), DocumentError::NotText);
        let tiny = ChunkPlan { max_tokens: 10, overlap_tokens: 0, max_chunks: 3 };
        assert_eq!(
            extract("text/plain", "word ".repeat(1000).as_bytes(), tiny).unwrap_err(),
            DocumentError::TooManyChunks(3)
        );
        assert!(extract("text/plain", b"  \n\n ", plan(10, 0)).unwrap().chunks.is_empty());
        assert!(is_document("text/markdown") && !is_document("image/png"));
    }

    proptest::proptest! {
        #[test]
        fn any_text_chunks_within_budget(text in "\\PC{0,3000}", max in 8usize..200, overlap in 0usize..50) {
            let out = extract("text/markdown", text.as_bytes(), plan(max, overlap)).unwrap();
            for c in &out.chunks {
                proptest::prop_assert!(c.token_count as usize <= max + 1, "{} > {}", c.token_count, max);
            }
        }
    }
}
