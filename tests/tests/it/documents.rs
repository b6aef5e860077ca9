//! Documents end to end (issue 16): uploads through file-upload into the embedded S3 server,
//! chunks in a real Postgres with pgvector, embeddings from the fake provider's
//! content-derived vectors, retrieval into a chat's context, citations, search, isolation
//! between users, failures and reprocessing, and a database without pgvector.

use super::chat::provider_env;
use super::uploads::{post_raw, stack, Stack};
use chatedge_tests::documents::pdf;
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::{Reply, TestApp, TestDb, User};
use serde_json::{json, Value};

const CHAT: &str = "/functions/v1/chat-completion";

const MARKDOWN: &str = "# Volcanoes\n\nMagma rises through the crust and erupts as lava from volcanoes.\n\n\
                        # Gardening\n\nTomatoes need sunlight, water and rich soil.\n";

/// The app with an OpenAI fake that embeds by content and streams `reply` for every chat.
async fn documents_stack(extra: &[(&str, &str)]) -> anyhow::Result<(Stack, FakeProvider)> {
    let events = fake_llm::openai_stream("gpt-4o-mini", &["From ", "your notes."], 40, 3);
    let whole = fake_llm::openai_completion("gpt-4o-mini", "From your notes.", 40, 3);
    let fake = FakeProvider::start_by_kind(events, whole).await?;
    fake.embed_by_content();
    let mut env: Vec<(String, String)> = provider_env("openai", &fake);
    env.push(("SPIN_VARIABLE_DEFAULT_PROVIDER".into(), "openai".into()));
    env.push(("SPIN_VARIABLE_RATELIMIT_CHAT".into(), "1000/min:1000".into()));
    env.push(("SPIN_VARIABLE_PROVIDER_RETRY_BASE_MS".into(), "20".into()));
    for (k, v) in extra {
        env.push(((*k).into(), (*v).into()));
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok((stack(&refs).await?, fake))
}

async fn upload(host: &TestApp, user: &User, name: &str, ct: &str, body: &[u8]) -> anyhow::Result<Value> {
    let r = post_raw(host, user, name, ct, body).await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let file = r.json()["files"][0].clone();
    assert!(file["id"].is_string(), "{file}");
    Ok(file)
}

async fn process(host: &TestApp, user: &User, id: &str) -> anyhow::Result<Reply> {
    host.json("POST", &format!("/functions/v1/documents/{id}/process"), &user.token, json!({})).await
}

async fn search(host: &TestApp, user: &User, query: &str) -> anyhow::Result<Value> {
    let r = host.get(&format!("/functions/v1/search?{query}"), &user.token).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    Ok(r.json())
}

/// The system message the provider received last.
fn last_context(fake: &FakeProvider) -> String {
    let chats = fake.chat_requests();
    let last = chats.last().map(|r| r.body.clone()).unwrap_or_default();
    last["messages"][0]["content"]
        .as_str()
        .map(str::to_owned)
        .filter(|_| last["messages"][0]["role"] == "system")
        .unwrap_or_default()
}

async fn status(db: &TestDb, id: &str) -> anyhow::Result<(Option<String>, Option<String>, i32, i64)> {
    let id: uuid::Uuid = id.parse()?;
    let row = db
        .admin()
        .await?
        .query_one(
            "select processing_status, processing_error, chunk_count,
                    (select count(*) from document_chunks c where c.file_id = f.id and c.embedding is not null)
               from file_uploads f where id = $1",
            &[&id],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

#[tokio::test]
async fn uploaded_documents_are_embedded_retrieved_into_chat_and_cited() -> anyhow::Result<()> {
    let (stack, fake) = documents_stack(&[]).await?;
    let (host, db) = (&stack.host, &stack.db);
    let alice = db.user().await?;

    // The upload answers at once: chunked, not yet embedded.
    let notes = upload(host, &alice, "notes.md", "text/markdown", MARKDOWN.as_bytes()).await?;
    assert_eq!(notes["processing_status"], "pending", "{notes}");
    assert_eq!(notes["chunk_count"], 2, "one chunk per section: {notes}");
    let manual_pdf =
        pdf(&["Bicycle chains need oil every month.", "Brake pads wear out after two thousand kilometres."]);
    let manual = upload(host, &alice, "manual.pdf", "application/pdf", &manual_pdf).await?;
    assert_eq!((manual["processing_status"].as_str(), manual["chunk_count"].as_i64()), (Some("pending"), Some(2)));
    let (notes_id, manual_id) = (notes["id"].as_str().unwrap_or_default(), manual["id"].as_str().unwrap_or_default());
    assert!(fake.embedding_requests().is_empty(), "nothing is embedded at upload");

    // Processing one file embeds its chunks, in one batch, at the column's width.
    let r = process(host, &alice, notes_id).await?;
    assert_eq!(r.status, 200, "{}\n{}", String::from_utf8_lossy(&r.body), host.log());
    assert_eq!(
        (r.json()["processing_status"].as_str(), r.json()["embedded_chunks"].as_i64()),
        (Some("completed"), Some(2))
    );
    let asked = fake.embedding_requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].body["input"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        (asked[0].body["dimensions"].as_u64(), asked[0].body["encoding_format"].as_str()),
        (Some(1536), Some("base64"))
    );

    // A chat naming the PDF (still pending) embeds it first, then retrieves page 1 only.
    let body = json!({"message": "How often do bicycle chains need oil?", "file_ids": [manual_id]});
    let r = host.json("POST", CHAT, &alice.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let context = last_context(&fake);
    assert!(context.contains("Bicycle chains need oil every month."), "{context}");
    assert!(context.contains("(manual.pdf, part 1, page 1)"), "{context}");
    assert!(!context.contains("Brake pads"), "an unrelated page is left out: {context}");
    assert!(!context.contains("Magma"), "a file not named is left out: {context}");
    let chunks = chatedge_tests::sse_json(&r.body);
    let last = chunks.last().cloned().unwrap_or_default();
    let sources = last["chatedge"]["sources"].clone();
    assert_eq!(sources.as_array().map(Vec::len), Some(1), "{last}");
    assert_eq!(
        (sources[0]["file_id"].as_str(), sources[0]["chunk_index"].as_i64(), sources[0]["page_number"].as_i64()),
        (Some(manual_id), Some(0), Some(1))
    );
    assert_eq!(sources[0]["file_name"], "manual.pdf");
    assert!(sources[0]["score"].as_f64().is_some_and(|s| s > 0.5 && s <= 1.0), "{sources}");
    assert_eq!(status(db, manual_id).await?, (Some("completed".into()), None, 2, 2));
    // The assistant row keeps what was cited.
    let conversation: uuid::Uuid = last["chatedge"]["conversation_id"].as_str().unwrap_or_default().parse()?;
    let metadata: Value = db
        .admin()
        .await?
        .query_one("select metadata from messages where conversation_id = $1 and role = 'assistant'", &[&conversation])
        .await?
        .get(0);
    assert_eq!(metadata["sources"], sources);

    // use_documents: every document of the caller's; the volcano section answers a volcano question.
    let body = json!({"message": "Why do volcanoes erupt lava?", "use_documents": true, "stream": false});
    let r = host.json("POST", CHAT, &alice.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let context = last_context(&fake);
    assert!(context.contains("erupts as lava"), "{context}");
    assert!(!context.contains("Tomatoes") && !context.contains("Bicycle"), "{context}");
    assert_eq!(r.json()["chatedge"]["sources"][0]["file_id"], notes_id);

    // Search: semantic and hybrid, with the file and a snippet.
    let found = search(host, &alice, "q=lava%20volcanoes&scope=documents").await?;
    assert_eq!(found["data"][0]["file_id"], notes_id, "{found}");
    assert_eq!(found["data"][0]["file_name"], "notes.md");
    assert!(found["data"][0]["snippet"].as_str().is_some_and(|s| s.contains("lava")), "{found}");
    let hybrid = search(host, &alice, "q=brake%20pads&scope=documents&hybrid=true&limit=2").await?;
    assert_eq!(
        (hybrid["data"][0]["file_id"].as_str(), hybrid["data"][0]["page_number"].as_i64()),
        (Some(manual_id), Some(2))
    );
    assert!(hybrid["data"].as_array().is_some_and(|d| d.len() <= 2));

    // Every embedding call is an api_usage row with its cost.
    let rows: i64 = db
        .admin()
        .await?
        .query_one(
            "select count(*) from api_usage where user_id = $1 and model = 'text-embedding-3-small' and cost_usd > 0",
            &[&alice.id],
        )
        .await?
        .get(0);
    // notes, manual, two chat questions, two searches.
    assert_eq!(rows, 6);
    Ok(())
}

#[tokio::test]
async fn one_users_documents_and_messages_never_reach_another() -> anyhow::Result<()> {
    let (stack, fake) = documents_stack(&[("SPIN_VARIABLE_EMBED_MESSAGES", "true")]).await?;
    let (host, db) = (&stack.host, &stack.db);
    let (alice, bob) = (db.user().await?, db.user().await?);
    let secret =
        upload(host, &bob, "secret.md", "text/markdown", b"# Plans\n\nThe volcano lair opens at midnight.\n").await?;
    let secret_id = secret["id"].as_str().unwrap_or_default();
    assert_eq!(process(host, &bob, secret_id).await?.status, 200);
    let own = upload(host, &alice, "own.md", "text/markdown", MARKDOWN.as_bytes()).await?;
    let own_id = own["id"].as_str().unwrap_or_default();

    // Bob's file is not Alice's to process, name in a chat, or find.
    assert_eq!(process(host, &alice, secret_id).await?.status, 404);
    let r = host.json("POST", CHAT, &alice.token, json!({"message": "volcano lair", "file_ids": [secret_id]})).await?;
    assert_eq!((r.status, r.error_code()), (404, "not_found".to_owned()), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(process(host, &alice, own_id).await?.status, 200);
    let found = search(host, &alice, "q=volcano%20lair%20midnight").await?;
    let hits = found["data"].to_string();
    assert!(!hits.contains("midnight") && !hits.contains(secret_id), "{found}");
    assert_eq!(found["data"][0]["file_id"], own_id, "her own volcano section is found: {found}");
    let r = host
        .json("POST", CHAT, &alice.token, json!({"message": "When does the volcano lair open?", "use_documents": true}))
        .await?;
    assert_eq!(r.status, 200);
    assert!(!last_context(&fake).contains("midnight"), "{}", last_context(&fake));
    assert!(last_context(&fake).contains("volcanoes"), "her own volcano section: {}", last_context(&fake));
    // Through PostgREST-style RLS too: Alice's role sees her chunks only.
    let alice_db = db.as_user(&alice).await?;
    let visible: Vec<uuid::Uuid> =
        alice_db.query("select distinct file_id from document_chunks", &[]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(visible, vec![own_id.parse::<uuid::Uuid>()?]);
    let refused = alice_db.execute("update document_chunks set content = 'x'", &[]).await;
    assert!(refused.is_err(), "users cannot write chunks");

    // Stored exchanges are embedded after the answer and found by their owner only.
    let r = host
        .json("POST", CHAT, &bob.token, json!({"message": "Remember the submarine password", "stream": false}))
        .await?;
    assert_eq!(r.status, 200);
    let conversation = r.json()["chatedge"]["conversation_id"].as_str().unwrap_or_default().to_owned();
    // The exchange is embedded after the client has its answer (by design): wait for it, up to
    // a bound far past any machine's pace, rather than racing it.
    let admin = db.admin().await?;
    let mut embedded: i64 = 0;
    for _ in 0..600 {
        embedded = admin
            .query_one("select count(*) from messages where user_id = $1 and embedding is not null", &[&bob.id])
            .await?
            .get(0);
        if embedded == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(embedded, 2, "the question and the answer");
    let found = search(host, &bob, "q=submarine%20password&scope=messages").await?;
    assert_eq!((found["data"][0]["kind"].as_str(), found["data"][0]["role"].as_str()), (Some("message"), Some("user")));
    assert_eq!(found["data"][0]["conversation_id"], conversation.as_str());
    let found = search(host, &bob, &format!("q=submarine&scope=all&conversation_id={conversation}")).await?;
    assert!(found["data"].as_array().is_some_and(|d| d.iter().any(|h| h["kind"] == "message")), "{found}");
    let found = search(host, &alice, "q=submarine%20password&scope=messages").await?;
    assert_eq!(found["data"], json!([]), "{found}");
    Ok(())
}

#[tokio::test]
async fn failures_end_in_failed_with_the_reason_and_reprocessing_recovers() -> anyhow::Result<()> {
    let (stack, fake) = documents_stack(&[("SPIN_VARIABLE_PROVIDER_MAX_ATTEMPTS", "1")]).await?;
    let (host, db) = (&stack.host, &stack.db);
    let user = db.user().await?;

    // A corrupt PDF is stored, and failed at once with why; processing it cannot help.
    let mut broken = pdf(&["Half a document."]);
    broken.truncate(broken.len() / 2);
    let bad = upload(host, &user, "broken.pdf", "application/pdf", &broken).await?;
    assert_eq!(bad["processing_status"], "failed", "{bad}");
    assert!(bad["processing_error"].as_str().is_some_and(|e| e.contains("PDF")), "{bad}");
    let bad_id = bad["id"].as_str().unwrap_or_default();
    let r = process(host, &user, bad_id).await?;
    assert_eq!((r.status, r.error_code()), (422, "document_unreadable".to_owned()));
    let r = host.json("POST", CHAT, &user.token, json!({"message": "hi", "file_ids": [bad_id]})).await?;
    assert_eq!(r.status, 422);

    // The embedding provider down: the file is failed with the provider's reason, the chat
    // that needed it gets the provider's error, and nothing is half-embedded.
    let doc = upload(host, &user, "notes.md", "text/markdown", MARKDOWN.as_bytes()).await?;
    let doc_id = doc["id"].as_str().unwrap_or_default();
    fake.set_embeddings_down(true);
    let r = process(host, &user, doc_id).await?;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let (state, reason, chunks, embedded) = status(db, doc_id).await?;
    assert_eq!((state.as_deref(), chunks, embedded), (Some("failed"), 2, 0));
    assert!(reason.as_deref().is_some_and(|r| r.contains("openai")), "{reason:?}");
    let chats_before = fake.chat_requests().len();
    let r = host.json("POST", CHAT, &user.token, json!({"message": "lava?", "file_ids": [doc_id]})).await?;
    assert_eq!(r.status, 502);
    assert_eq!(fake.chat_requests().len(), chats_before, "no chat is sent without its documents");

    // Back up: reprocessing completes it and chat retrieves from it.
    fake.set_embeddings_down(false);
    let r = process(host, &user, doc_id).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(status(db, doc_id).await?, (Some("completed".into()), None, 2, 2));
    let r = host
        .json("POST", CHAT, &user.token, json!({"message": "What do tomatoes need?", "file_ids": [doc_id]}))
        .await?;
    assert_eq!(r.status, 200);
    assert!(last_context(&fake).contains("Tomatoes need sunlight"), "{}", last_context(&fake));

    // Not a document, and not a file at all.
    let png = upload(host, &user, "x.png", "image/png", super::uploads::PNG).await?;
    let r = process(host, &user, png["id"].as_str().unwrap_or_default()).await?;
    assert_eq!((r.status, r.error_code()), (400, "validation_failed".to_owned()));
    assert_eq!(process(host, &user, "not-a-uuid").await?.status, 404);
    let r = host.get("/functions/v1/search?scope=documents", &user.token).await?;
    assert_eq!((r.status, r.error_code()), (400, "validation_failed".to_owned()));
    Ok(())
}

#[tokio::test]
async fn without_pgvector_migrations_apply_and_the_routes_answer_503() -> anyhow::Result<()> {
    let db = TestDb::without_vector().await?;
    let fake = FakeProvider::start(Vec::new(), None).await?;
    fake.embed_by_content();
    let host = super::chat::start(&db, &[("openai", &fake)], &[]).await?;
    let user = db.user().await?;
    let r = host.get("/functions/v1/search?q=anything", &user.token).await?;
    assert_eq!(
        (r.status, r.error_code()),
        (503, "feature_unavailable".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = uuid::Uuid::new_v4().to_string();
    let r = host.json("POST", CHAT, &user.token, json!({"message": "hi", "use_documents": true})).await?;
    assert_eq!((r.status, r.error_code()), (503, "feature_unavailable".to_owned()));
    let r = host.json("POST", &format!("/functions/v1/documents/{id}/process"), &user.token, json!({})).await?;
    assert_eq!(r.status, 503);
    assert!(fake.received().is_empty(), "nothing was sent to the provider");
    // The tables are there, without the vector columns.
    let columns: i64 = db
        .admin()
        .await?
        .query_one("select count(*) from information_schema.columns where table_name = 'document_chunks' and column_name = 'embedding'", &[])
        .await?
        .get(0);
    assert_eq!(columns, 0);
    Ok(())
}

#[tokio::test]
async fn with_no_provider_key_the_dev_stack_embeds_with_its_local_model() -> anyhow::Result<()> {
    // No OpenAI key, no embedding server: `chatedge up` serves WordLlama (./dev unpacks it).
    anyhow::ensure!(
        std::env::var_os("CHATEDGE_WORDLLAMA_DIR").is_some(),
        "CHATEDGE_WORDLLAMA_DIR is unset: run the tests with ./dev test, which unpacks the model"
    );
    let stack = stack(&[]).await?;
    let (host, db) = (&stack.host, &stack.db);
    let user = db.user().await?;
    let notes = upload(host, &user, "notes.md", "text/markdown", MARKDOWN.as_bytes()).await?;
    let id = notes["id"].as_str().unwrap_or_default();
    let r = process(host, &user, id).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["embedded_chunks"], 2);
    let models: Vec<String> = db
        .admin()
        .await?
        .query("select distinct embedding_model from document_chunks", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(models, ["wordllama-l2-supercat-256"]);
    // A real (if small) model: the volcano question finds the volcano section first.
    let found = search(host, &user, "q=How%20do%20volcanoes%20erupt%3F&scope=documents").await?;
    let first = found["data"][0]["content"].as_str().unwrap_or_default();
    assert!(first.contains("lava"), "{found}");
    let found = search(host, &user, "q=growing%20vegetables%20in%20the%20garden&scope=documents").await?;
    assert!(found["data"][0]["content"].as_str().unwrap_or_default().contains("Tomatoes"), "{found}");
    Ok(())
}
