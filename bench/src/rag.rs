//! `./dev bench rag`: document ingest through the real host (upload: extract and chunk;
//! process: embed and store), the fake provider's own time shown apart; and search over 100k
//! chunks in the pgvector Postgres, HNSW against an exact scan side by side, with HNSW's
//! recall@10 against the exact answer.

use crate::{host_under_bench, ms, percentile, storage_vars};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chatedge_devstack::embedder::WordLlama;
use chatedge_tests::fake_llm::FakeProvider;
use futures::SinkExt;
use http_body_util::{BodyExt, Full};
use std::path::PathBuf;
use std::time::Instant;

/// Chunks in the search corpus.
const CORPUS: usize = 100_000;
/// Queries timed per search path (the exact scan reads every row, so it gets fewer).
const HNSW_QUERIES: usize = 300;
const EXACT_QUERIES: usize = 100;
/// Topics the synthetic corpus is drawn from (real corpora cluster; uniform noise does not).
const TOPICS: usize = 1_000;

/// A tiny xorshift generator: the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "volcano", "river", "engine", "protocol", "garden", "market", "theory", "signal", "harbor", "circuit", "glacier",
    "budget", "vaccine", "orbit", "contract", "forest", "kernel", "battery", "poetry", "canyon", "invoice", "turbine",
    "enzyme", "comet", "ledger", "meadow", "compiler", "pension", "tundra", "sonnet",
];

fn paragraph(rng: &mut Rng, words: usize) -> String {
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
        if rng.below(9) == 0 {
            out.push_str(" and the");
        }
    }
    out.push('.');
    out
}

/// About `bytes` of Markdown: sections with headings, paragraphs of words.
fn markdown(bytes: usize) -> String {
    let mut rng = Rng(0x5eed_1234_9876_abcd);
    let mut out = String::with_capacity(bytes + 2_000);
    let mut section = 0;
    while out.len() < bytes {
        section += 1;
        out.push_str(&format!("## Section {section}\n\n"));
        for _ in 0..4 {
            out.push_str(&paragraph(&mut rng, 60));
            out.push_str("\n\n");
        }
    }
    out
}

pub async fn bench() -> Result<()> {
    println!("## Documents (RAG): ingest through chatedge up (fake embeddings provider on loopback)");
    ingest().await?;
    println!();
    println!(
        "## Document search over {CORPUS} chunks (pgvector 0.8 in PostgreSQL 18, WordLlama vectors padded to 1536)"
    );
    search().await?;
    Ok(())
}

async fn ingest() -> Result<()> {
    let root = PathBuf::from("/var/tmp/chatedge/bench-rag-s3");
    let _ = std::fs::remove_dir_all(&root);
    let s3 = chatedge_devstack::s3::start(&root, "uploads", "127.0.0.1:0", "bench", "bench-secret").await?;
    let fake = FakeProvider::start(Vec::new(), None).await?;
    fake.embed_by_content();
    let db = chatedge_tests::TestDb::start().await?;
    let base = format!("{}/v1", fake.origin);
    let mut vars = storage_vars(&s3.endpoint);
    vars.extend([
        ("SPIN_VARIABLE_RATELIMIT_CHAT", "100000/min:100000".to_owned()),
        ("SPIN_VARIABLE_OPENAI_BASE_URL", base),
        ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST", fake.origin.clone()),
        ("SPIN_VARIABLE_OPENAI_API_KEY", "sk-bench".to_owned()),
    ]);
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = host_under_bench(&db, &refs).await?;
    let user = db.user().await?;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut rng = Rng(0xfeed_beef_0042_1337);
    let pages: Vec<String> = (0..50).map(|_| paragraph(&mut rng, 300)).collect();
    let page_refs: Vec<&str> = pages.iter().map(String::as_str).collect();
    let notes = markdown(1_000_000).into_bytes();
    // The last row again without the HNSW index: what pgvector's graph inserts cost, apart.
    let documents = [
        ("1 MB Markdown", "notes.md", "text/markdown", notes.clone(), false),
        ("50-page PDF", "manual.pdf", "application/pdf", chatedge_tests::documents::pdf(&page_refs), false),
        ("1 MB MD, no HNSW", "notes-again.md", "text/markdown", notes, true),
    ];
    println!(
        "{:<16} {:>8} {:>7} {:>11} {:>11} {:>12} {:>18}",
        "document", "bytes", "chunks", "upload ms", "process ms", "provider ms", "chunks/s excl. p."
    );
    for (label, name, mime, bytes, without_index) in documents {
        if without_index {
            db.admin().await?.batch_execute("drop index document_chunks_embedding_idx").await?;
        }
        let size = bytes.len();
        let provider_before = fake.embedding_time();
        let t = Instant::now();
        let req = http::Request::post(format!("{}/functions/v1/file-upload", host.base_url))
            .header("authorization", format!("Bearer {}", user.token))
            .header("content-type", mime)
            .header("x-file-name", name)
            .body(Full::new(Bytes::from(bytes)))?;
        let res = client.request(req).await?;
        let status = res.status();
        let body: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
        if status != 201 {
            bail!("upload {name}: {status} {body}\n{}", host.log());
        }
        let upload = t.elapsed();
        let file = &body["files"][0];
        let chunks = file["chunk_count"].as_u64().context("chunk_count")?;
        let id = file["id"].as_str().context("file id")?;
        let t = Instant::now();
        let req = http::Request::post(format!("{}/functions/v1/documents/{id}/process", host.base_url))
            .header("authorization", format!("Bearer {}", user.token))
            .body(Full::new(Bytes::new()))?;
        let res = client.request(req).await?;
        let status = res.status();
        let answer = res.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("process {name}: {status} {answer:?}\n{}", host.log());
        }
        let process = t.elapsed();
        let provider = fake.embedding_time().saturating_sub(provider_before);
        let ours = (upload + process).saturating_sub(provider);
        println!(
            "{label:<16} {size:>8} {chunks:>7} {:>11} {:>11} {:>12} {:>18.0}",
            ms(upload),
            ms(process),
            ms(provider),
            chunks as f64 / ours.as_secs_f64()
        );
    }
    println!("goal: >= 1,000 chunks/s excluding the provider (its reply-making time, measured inside the fake);");
    println!("the last row is the first again with the HNSW index dropped: the gap is pgvector's graph inserts");
    Ok(())
}

/// A synthetic chunk: half its tokens from its topic's 40, half from anywhere.
fn tokens(rng: &mut Rng, vocabulary: usize, len: usize) -> Vec<u32> {
    let topic = rng.below(TOPICS);
    (0..len)
        .map(|_| {
            if rng.below(2) == 0 {
                let mut t = Rng((topic as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ rng.below(40) as u64);
                (1_000 + t.next() as usize % (vocabulary - 1_000)) as u32
            } else {
                (1_000 + rng.below(vocabulary - 1_000)) as u32
            }
        })
        .collect()
}

fn literal(v: &[f32]) -> String {
    let mut out = String::with_capacity(1536 * 3);
    out.push('[');
    for i in 0..1536 {
        if i > 0 {
            out.push(',');
        }
        match v.get(i) {
            Some(x) => out.push_str(&format!("{x:.6}")),
            None => out.push('0'),
        }
    }
    out.push(']');
    out
}

async fn search() -> Result<()> {
    let dir = chatedge_devstack::embedder::model_dir().context("CHATEDGE_WORDLLAMA_DIR (./dev bench sets it)")?;
    let model = WordLlama::load(&dir)?;
    let vocabulary = model.vocabulary();
    let db = chatedge_tests::TestDb::start().await?;
    let user = db.user().await?;
    let admin = db.admin().await?;
    let file = uuid::Uuid::new_v4();
    admin
        .execute(
            "insert into file_uploads (id, user_id, original_name, storage_key, mime_type, size_bytes, sha256, processing_status)
             values ($1, $2, 'corpus.md', $3, 'text/markdown', 1, repeat('0', 64), 'completed')",
            &[&file, &user.id, &format!("{}/{file}/corpus.md", user.id)],
        )
        .await?;
    // Bulk load without the index, then build it (as one would for a corpus this size).
    admin.batch_execute("drop index document_chunks_embedding_idx").await?;
    let t = Instant::now();
    let mut rng = Rng(0x0bad_cafe_dead_f00d);
    let sink = admin
        .copy_in(
            "copy document_chunks (file_id, user_id, content, chunk_index, token_count, embedding, embedding_model) from stdin",
        )
        .await?;
    futures::pin_mut!(sink);
    let mut buffer = String::new();
    for i in 0..CORPUS {
        let ids = tokens(&mut rng, vocabulary, 60);
        let vector = model.embed_ids(&ids);
        buffer.push_str(&format!("{file}\t{}\tchunk {i}\t{i}\t60\t{}\tbench\n", user.id, literal(&vector)));
        if buffer.len() > 4 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buffer))).await?;
        }
    }
    sink.send(Bytes::from(buffer)).await?;
    sink.finish().await?;
    let loaded = t.elapsed();
    let t = Instant::now();
    admin
        .batch_execute(
            "set maintenance_work_mem = '2GB'; set max_parallel_maintenance_workers = 1;
             create index document_chunks_embedding_idx on document_chunks using hnsw (embedding vector_cosine_ops);
             analyze document_chunks",
        )
        .await?;
    println!(
        "corpus: {CORPUS} chunks loaded (COPY) in {:.1} s, HNSW index (m 16, ef_construction 64) built in {:.1} s",
        loaded.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let queries: Vec<String> =
        (0..HNSW_QUERIES).map(|_| literal(&model.embed_ids(&tokens(&mut rng, vocabulary, 12)))).collect();
    // As the search route runs it: the security-invoker function, as the caller under RLS.
    let as_user = db.as_user(&user).await?;
    let statement = as_user
        .prepare("select id from public.search_similar_chunks($1::text::vector, $2, 0.0, 10, null, 'bench')")
        .await?;
    let run = |label: &'static str, setup: &'static str, n: usize| {
        let (as_user, statement, queries, user_id) = (&as_user, &statement, &queries, user.id);
        async move {
            as_user.batch_execute(setup).await?;
            let mut times = Vec::with_capacity(n);
            let mut answers = Vec::with_capacity(n);
            for (i, q) in queries.iter().take(n + 10).enumerate() {
                let t = Instant::now();
                let rows = as_user.query(statement, &[q, &user_id]).await?;
                let elapsed = t.elapsed();
                // The first ten warm the caches and are not counted.
                if i >= 10 {
                    times.push(elapsed);
                    answers.push(rows.iter().map(|r| r.get::<_, uuid::Uuid>(0)).collect::<Vec<_>>());
                }
            }
            times.sort();
            Ok::<_, anyhow::Error>((label, times, answers))
        }
    };
    let exact =
        run("exact scan (baseline)", "set enable_indexscan = off; set enable_bitmapscan = off", EXACT_QUERIES).await?;
    // As the route sets it (rag_ef_search, iterative scan), at pgvector's default, ours, and wider.
    let hnsw40 = run(
        "HNSW ef_search 40",
        "reset enable_indexscan; reset enable_bitmapscan; set hnsw.iterative_scan = relaxed_order;
         set hnsw.ef_search = 40",
        HNSW_QUERIES - 10,
    )
    .await?;
    let hnsw100 = run("HNSW ef_search 100 (ours)", "set hnsw.ef_search = 100", HNSW_QUERIES - 10).await?;
    let hnsw200 = run("HNSW ef_search 200", "set hnsw.ef_search = 200", HNSW_QUERIES - 10).await?;
    let hnsw400 = run("HNSW ef_search 400", "set hnsw.ef_search = 400", HNSW_QUERIES - 10).await?;
    println!("{:<26} {:>8} {:>8} {:>6} {:>11}", "path", "p50 ms", "p99 ms", "n", "recall@10");
    for (label, times, answers) in [&exact, &hnsw40, &hnsw100, &hnsw200, &hnsw400] {
        let mut found = 0usize;
        let mut wanted = 0usize;
        for (got, truth) in answers.iter().zip(&exact.2) {
            wanted += truth.len();
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        let recall = if wanted == 0 { 0.0 } else { found as f64 / wanted as f64 };
        println!(
            "{label:<26} {:>8} {:>8} {:>6} {:>11.3}",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            times.len(),
            recall
        );
    }
    println!("goals: HNSW p50 <= 5 ms at {CORPUS} chunks on 2 cores, recall@10 >= 0.95 (recall over the first {EXACT_QUERIES} queries)");
    Ok(())
}
