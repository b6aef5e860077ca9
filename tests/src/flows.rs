//! End-to-end checks of every route, written once and run on both runtimes: the bundled host
//! (`chatedge up`) and the real Spin (`spin up`), each against a real Postgres, the S3 protocol
//! server, the sandbox service and the fake providers. What a function gets wrong only on one
//! of them (a parameter of the wrong type, a query that returns no rows) shows up here.

use crate::fake_llm::{self, FakeProvider};
use crate::{TestApp, TestDb};
use anyhow::{ensure, Context, Result};
use serde_json::json;

const CONVERSATIONS: &str = "/functions/v1/conversations";
const CHAT: &str = "/functions/v1/chat-completion";

/// The variables that point OpenAI at `fake` and give the tests room under the limits.
pub fn chat_env(fake: &FakeProvider) -> Vec<(String, String)> {
    vec![
        ("SPIN_VARIABLE_OPENAI_BASE_URL".into(), format!("{}/v1", fake.origin)),
        ("SPIN_VARIABLE_OPENAI_ALLOWED_HOST".into(), fake.origin.clone()),
        ("SPIN_VARIABLE_OPENAI_API_KEY".into(), "sk-test-openai".into()),
        ("SPIN_VARIABLE_RATELIMIT_CHAT".into(), "1000/min:1000".into()),
        ("SPIN_VARIABLE_RATELIMIT_CODE".into(), "1000/min:1000".into()),
        ("SPIN_VARIABLE_RATELIMIT_UPLOAD".into(), "1000/min:1000".into()),
        ("SPIN_VARIABLE_PROVIDER_RETRY_BASE_MS".into(), "20".into()),
    ]
}

/// Borrowed pairs for `TestApp::spawn*`.
pub fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Conversations: create, get, rename, archive, list with pagination and filters, messages, and
/// every miss (missing, foreign, malformed) a prompt 404 with nothing left in a transaction.
pub async fn conversations(host: &TestApp, db: &TestDb) -> Result<()> {
    let (me, other) = (db.user().await?, db.user().await?);
    // Empty lists are `[]`.
    let empty = host.get(CONVERSATIONS, &me.token).await?;
    ensure!(empty.status == 200, "empty list: {} {}", empty.status, String::from_utf8_lossy(&empty.body));
    ensure!(empty.json()["data"] == json!([]) && empty.json()["has_more"] == json!(false), "{}", empty.json());
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = host
            .json(
                "POST",
                CONVERSATIONS,
                &me.token,
                json!({"title": format!("c{i}"), "temperature": 0.5, "max_tokens": 64}),
            )
            .await?;
        ensure!(r.status == 201, "create: {} {}", r.status, String::from_utf8_lossy(&r.body));
        ids.push(r.json()["id"].as_str().context("id")?.to_owned());
    }
    // Keyset pages of two, newest first, to the end.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{CONVERSATIONS}?limit=2&cursor={c}"),
            None => format!("{CONVERSATIONS}?limit=2"),
        };
        let page = host.get(&path, &me.token).await?.json();
        for c in page["data"].as_array().context("data")? {
            seen.push(c["id"].as_str().context("id")?.to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    ensure!(seen == newest_first, "pages {seen:?} != {newest_first:?}");
    let first = &ids[0];
    let got = host.get(&format!("{CONVERSATIONS}/{first}"), &me.token).await?;
    ensure!(got.status == 200 && got.json()["title"] == "c0", "get: {}", got.json());
    let renamed = host
        .json("PATCH", &format!("{CONVERSATIONS}/{first}"), &me.token, json!({"title": "renamed", "archived": true}))
        .await?;
    ensure!(renamed.status == 200 && renamed.json()["archived"] == json!(true), "patch: {}", renamed.json());
    let archived = host.get(&format!("{CONVERSATIONS}?archived=true"), &me.token).await?.json();
    ensure!(archived["data"].as_array().map(Vec::len) == Some(1), "archived: {archived}");
    // Messages of a conversation without any: `[]`.
    let messages = host.get(&format!("{CONVERSATIONS}/{first}/messages"), &me.token).await?;
    ensure!(messages.status == 200 && messages.json()["data"] == json!([]), "messages: {}", messages.json());
    // Misses: another user's, a missing one, a malformed id: 404 each, promptly.
    let missing = uuid::Uuid::new_v4().to_string();
    for (token, id) in [(&other.token, first.as_str()), (&me.token, missing.as_str()), (&me.token, "not-a-uuid")] {
        for (method, path) in [
            ("GET", format!("{CONVERSATIONS}/{id}")),
            ("GET", format!("{CONVERSATIONS}/{id}/messages")),
            ("DELETE", format!("{CONVERSATIONS}/{id}")),
        ] {
            let r = host.send(method, &path, Some(token), None, &[]).await?;
            ensure!(r.status == 404, "{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
        let r = host.json("PATCH", &format!("{CONVERSATIONS}/{id}"), token, json!({"title": "x"})).await?;
        ensure!(r.status == 404, "PATCH {id}: {}", r.status);
    }
    let deleted = host.send("DELETE", &format!("{CONVERSATIONS}/{first}"), Some(&me.token), None, &[]).await?;
    ensure!(deleted.status == 204, "delete: {}", deleted.status);
    ensure!(idle_in_transaction(db).await? == 0, "a connection was left idle in transaction");
    Ok(())
}

/// Connections of the functions' role left inside a transaction.
pub async fn idle_in_transaction(db: &TestDb) -> Result<i64> {
    Ok(db
        .admin()
        .await?
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'authenticator' and datname = current_database() and state like 'idle in transaction%'",
            &[],
        )
        .await?
        .get(0))
}

/// Chat: native streaming and not, continuing a conversation, the OpenAI surface; every
/// exchange ends with its assistant row settled (never `pending`) and one usage row per call.
pub async fn chat(host: &TestApp, db: &TestDb, fake: &FakeProvider) -> Result<()> {
    let user = db.user().await?;
    let stream = host.json("POST", CHAT, &user.token, json!({"message": "hello"})).await?;
    ensure!(stream.status == 200, "stream: {} {}", stream.status, String::from_utf8_lossy(&stream.body));
    let chunks = crate::sse_json(&stream.body);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    ensure!(text == "Hello there", "streamed {text:?}");
    let conversation =
        chunks.last().and_then(|c| c["chatedge"]["conversation_id"].as_str()).context("conversation id")?.to_owned();
    let whole = host
        .json("POST", CHAT, &user.token, json!({"message": "again", "conversation_id": conversation, "stream": false}))
        .await?;
    ensure!(whole.status == 200, "whole: {} {}", whole.status, String::from_utf8_lossy(&whole.body));
    ensure!(whole.json()["choices"][0]["message"]["content"] == "Hello there", "{}", whole.json());
    // The second call carried the first exchange as context.
    let sent = fake.received();
    let context = &sent.last().context("a request")?.body["messages"];
    ensure!(context.as_array().map(Vec::len) == Some(3), "context {context}");
    let openai = host
        .json(
            "POST",
            "/v1/chat/completions",
            &user.token,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await?;
    ensure!(openai.status == 200 && openai.json()["object"] == "chat.completion", "{}", openai.json());
    let models = host.get("/v1/models", &user.token).await?;
    ensure!(models.status == 200 && models.json()["object"] == "list", "{}", models.json());
    let admin = db.admin().await?;
    let statuses: Vec<String> = admin
        .query("select status from messages where user_id = $1 and role = 'assistant' order by created_at", &[&user.id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(statuses == ["complete", "complete"], "assistant rows {statuses:?}");
    let usage: i64 = admin.query_one("select count(*) from api_usage where user_id = $1", &[&user.id]).await?.get(0);
    ensure!(usage == 3, "{usage} usage rows for 3 calls");
    let cost: Option<String> =
        admin.query_one("select max(cost_usd)::text from api_usage where user_id = $1", &[&user.id]).await?.get(0);
    ensure!(cost.as_deref().is_some_and(|c| c != "0.00000000"), "priced usage: {cost:?}");
    ensure!(idle_in_transaction(db).await? == 0, "a connection was left idle in transaction");
    Ok(())
}

/// The other front doors over the same path: the Responses API streamed, continued by id and
/// read back, and Anthropic's Messages API with the key in `x-api-key` — on either runtime.
pub async fn api_surfaces(host: &TestApp, db: &TestDb) -> Result<()> {
    let user = db.user().await?;
    let body = json!({"model": "gpt-4o-mini", "input": "hello", "stream": true});
    let first = host.json("POST", "/v1/responses", &user.token, body).await?;
    ensure!(first.status == 200, "responses: {} {}", first.status, String::from_utf8_lossy(&first.body));
    let events = crate::sse_json(&first.body);
    let done = events.last().context("no events")?;
    ensure!(done["type"] == "response.completed", "last event {done}");
    let text: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    ensure!(text == "Hello there", "streamed {text:?}");
    let id = done["response"]["id"].as_str().context("response id")?.to_owned();
    let body = json!({"model": "gpt-4o-mini", "input": "again", "previous_response_id": id});
    let second = host.json("POST", "/v1/responses", &user.token, body).await?;
    ensure!(second.status == 200, "continued: {} {}", second.status, String::from_utf8_lossy(&second.body));
    let second_id = second.json()["id"].as_str().context("second id")?.to_owned();
    let read = host.get(&format!("/v1/responses/{second_id}"), &user.token).await?;
    ensure!(read.status == 200 && read.json()["previous_response_id"] == id.as_str(), "read back {}", read.json());
    let other = db.user().await?;
    ensure!(host.get(&format!("/v1/responses/{second_id}"), &other.token).await?.status == 404, "another user read it");

    let body = json!({"model": "gpt-4o-mini", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    let messages = host
        .send("POST", "/v1/messages", None, Some(body.to_string().into_bytes()), &[("x-api-key", user.token.as_str())])
        .await?;
    ensure!(messages.status == 200, "messages: {} {}", messages.status, String::from_utf8_lossy(&messages.body));
    let events = crate::sse_json(&messages.body);
    let text: String = events.iter().filter_map(|e| e["delta"]["text"].as_str()).collect();
    ensure!(text == "Hello there" && events.last().is_some_and(|e| e["type"] == "message_stop"), "messages {events:?}");
    ensure!(idle_in_transaction(db).await? == 0, "a connection was left idle in transaction");
    Ok(())
}

/// A fake that answers every chat with the same short stream or completion, and embeddings by
/// content.
pub async fn fake_provider() -> Result<FakeProvider> {
    let stream = fake_llm::openai_stream("gpt-4o-mini", &["Hello", " there"], 9, 2);
    let completion = fake_llm::openai_completion("gpt-4o-mini", "Hello there", 9, 2);
    let fake = FakeProvider::start_by_kind(stream, completion).await?;
    fake.embed_by_content();
    Ok(fake)
}

/// Limits: the caller's state (one statement), and a 429 with its headers once spent.
pub async fn limits(host: &TestApp, db: &TestDb) -> Result<()> {
    let user = db.user().await?;
    let r = host.get("/functions/v1/rate-limit", &user.token).await?;
    ensure!(r.status == 200, "rate-limit: {} {}", r.status, String::from_utf8_lossy(&r.body));
    ensure!(r.json()["limits"].as_array().is_some_and(|l| l.len() == 6), "{}", r.json());
    ensure!(r.header("ratelimit-policy").is_some(), "limit headers");
    Ok(())
}

/// Uploads: raw and multipart, listed, downloaded through the presigned URL, deleted; another
/// user's file is a 404.
pub async fn uploads(host: &TestApp, db: &TestDb) -> Result<()> {
    let (me, other) = (db.user().await?, db.user().await?);
    let empty = host.get("/functions/v1/file-upload", &me.token).await?;
    ensure!(
        empty.status == 200 && empty.json()["data"] == json!([]),
        "empty: {} {}",
        empty.status,
        String::from_utf8_lossy(&empty.body)
    );
    let raw = host
        .send(
            "POST",
            "/functions/v1/file-upload",
            Some(&me.token),
            Some(b"a,b\n1,2\n".to_vec()),
            &[("content-type", "text/csv"), ("x-file-name", "data.csv")],
        )
        .await?;
    ensure!(raw.status == 201, "raw: {} {}", raw.status, String::from_utf8_lossy(&raw.body));
    let id = raw.json()["files"][0]["id"].as_str().context("id")?.to_owned();
    let boundary = "chatedgeboundary";
    let body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"note.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n");
    let multipart = host
        .send(
            "POST",
            "/functions/v1/file-upload",
            Some(&me.token),
            Some(body.into_bytes()),
            &[("content-type", &format!("multipart/form-data; boundary={boundary}"))],
        )
        .await?;
    ensure!(multipart.status == 201, "multipart: {} {}", multipart.status, String::from_utf8_lossy(&multipart.body));
    let list = host.get("/functions/v1/file-upload", &me.token).await?.json();
    ensure!(list["data"].as_array().map(Vec::len) == Some(2), "list {list}");
    let one = host.get(&format!("/functions/v1/file-upload/{id}"), &me.token).await?;
    ensure!(one.status == 200, "get: {}", one.status);
    let url = one.json()["download_url"].as_str().context("download url")?.to_owned();
    let (status, bytes) = crate::fetch(&url).await?;
    ensure!(status == 200 && bytes == b"a,b\n1,2\n", "download {status}");
    let foreign = host.get(&format!("/functions/v1/file-upload/{id}"), &other.token).await?;
    ensure!(foreign.status == 404, "foreign: {}", foreign.status);
    let missing = host.get(&format!("/functions/v1/file-upload/{}", uuid::Uuid::new_v4()), &me.token).await?;
    ensure!(missing.status == 404, "missing: {}", missing.status);
    let deleted = host.send("DELETE", &format!("/functions/v1/file-upload/{id}"), Some(&me.token), None, &[]).await?;
    ensure!(deleted.status == 204, "delete: {}", deleted.status);
    ensure!(idle_in_transaction(db).await? == 0, "a connection was left idle in transaction");
    Ok(())
}

/// Code execution in each language, recorded through RLS; a missing conversation is a 404; an
/// upload read under `/data` and the chart it draws kept as a downloadable visualization.
pub async fn code(host: &TestApp, db: &TestDb) -> Result<()> {
    let user = db.user().await?;
    for (language, code, stdout) in [
        ("python", "import numpy as np\nprint(int(np.arange(4).sum()))", "6\n"),
        ("javascript", "console.log([1, 2].map(x => x * 2).join(','))", "2,4\n"),
        ("typescript", "const n: number = 7; console.log(n * 6)", "42\n"),
    ] {
        let r = host
            .json("POST", "/functions/v1/code-execution", &user.token, json!({"language": language, "code": code}))
            .await?;
        ensure!(r.status == 200, "{language}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        ensure!(r.json()["stdout"] == stdout, "{language}: {}", r.json());
    }
    let foreign = host
        .json(
            "POST",
            "/functions/v1/code-execution",
            &user.token,
            json!({"language": "python", "code": "print(1)", "conversation_id": uuid::Uuid::new_v4()}),
        )
        .await?;
    ensure!(foreign.status == 404, "foreign conversation: {}", foreign.status);
    // An upload read under /data, the chart kept and downloadable.
    let up = host
        .send(
            "POST",
            "/functions/v1/file-upload",
            Some(&user.token),
            Some(b"x,y\n1,2\n2,4\n3,8\n".to_vec()),
            &[("content-type", "text/csv"), ("x-file-name", "points.csv")],
        )
        .await?;
    ensure!(up.status == 201, "upload: {} {}", up.status, String::from_utf8_lossy(&up.body));
    let file = up.json()["files"][0]["id"].clone();
    let code = "import pandas as pd, matplotlib.pyplot as plt\ndf = pd.read_csv('/data/points.csv')\n\
                print(int(df.y.sum()))\nplt.plot(df.x, df.y, label='y')\nplt.title('Growth')\nplt.show()";
    let r = host
        .json(
            "POST",
            "/functions/v1/code-execution",
            &user.token,
            json!({"language": "python", "code": code, "file_ids": [file]}),
        )
        .await?;
    ensure!(
        r.status == 200 && r.json()["stdout"] == "14\n",
        "files in: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let shown = &r.json()["visualizations"][0];
    ensure!(shown["chart"]["title"] == "Growth", "chart data: {shown}");
    let (status, png) = crate::fetch(shown["url"].as_str().unwrap_or_default()).await?;
    ensure!(status == 200 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "chart download {status}");
    let rows: i64 = db
        .admin()
        .await?
        .query_one("select count(*) from code_executions where user_id = $1", &[&user.id])
        .await?
        .get(0);
    ensure!(rows == 4, "{rows} executions recorded");
    Ok(())
}

/// Documents: a Markdown upload chunked, embedded by the processing route, retrieved into a
/// chat's context and cited, found by search — vectors through the runtime's Postgres driver.
pub async fn documents(host: &TestApp, db: &TestDb, fake: &FakeProvider) -> Result<()> {
    let user = db.user().await?;
    let notes = b"# Volcanoes\n\nMagma rises through the crust and erupts as lava.\n\n\
                  # Gardening\n\nTomatoes need sunlight and rich soil.\n";
    let up = host
        .send(
            "POST",
            "/functions/v1/file-upload",
            Some(&user.token),
            Some(notes.to_vec()),
            &[("content-type", "text/markdown"), ("x-file-name", "notes.md")],
        )
        .await?;
    ensure!(up.status == 201, "upload: {} {}", up.status, String::from_utf8_lossy(&up.body));
    let file = up.json()["files"][0].clone();
    ensure!(file["processing_status"] == "pending" && file["chunk_count"] == 2, "{file}");
    let id = file["id"].as_str().context("id")?.to_owned();
    let processed = host.json("POST", &format!("/functions/v1/documents/{id}/process"), &user.token, json!({})).await?;
    ensure!(processed.status == 200, "process: {} {}", processed.status, String::from_utf8_lossy(&processed.body));
    ensure!(
        processed.json()["processing_status"] == "completed" && processed.json()["embedded_chunks"] == 2,
        "{}",
        processed.json()
    );
    let body = json!({"message": "Where does magma erupt?", "file_ids": [id], "stream": false});
    let chat = host.json("POST", CHAT, &user.token, body).await?;
    ensure!(chat.status == 200, "chat: {} {}", chat.status, String::from_utf8_lossy(&chat.body));
    let sources = chat.json()["chatedge"]["sources"].clone();
    ensure!(sources.as_array().map(Vec::len) == Some(1) && sources[0]["file_id"] == id.as_str(), "sources {sources}");
    let sent = fake.received();
    let system = sent.iter().rev().find(|r| r.body["messages"].is_array()).map(|r| r.body["messages"][0].clone());
    let system = system.unwrap_or_default();
    ensure!(
        system["role"] == "system" && system["content"].as_str().is_some_and(|c| c.contains("Magma rises")),
        "context {system}"
    );
    let found = host.get("/functions/v1/search?q=magma%20lava&scope=documents", &user.token).await?;
    ensure!(found.status == 200, "search: {} {}", found.status, String::from_utf8_lossy(&found.body));
    let hits = found.json()["data"].clone();
    ensure!(hits[0]["file_id"] == id.as_str() && hits[0]["heading"] == "Volcanoes", "hits {hits}");
    ensure!(idle_in_transaction(db).await? == 0, "a connection was left idle in transaction");
    Ok(())
}

/// Every flow against one running runtime.
pub async fn all(host: &TestApp, db: &TestDb, fake: &FakeProvider) -> Result<()> {
    conversations(host, db).await.context("conversations")?;
    chat(host, db, fake).await.context("chat")?;
    api_surfaces(host, db).await.context("responses and messages")?;
    limits(host, db).await.context("limits")?;
    uploads(host, db).await.context("uploads")?;
    code(host, db).await.context("code")?;
    documents(host, db, fake).await.context("documents")?;
    let health = host.send("GET", "/functions/v1/health", None, None, &[]).await?;
    ensure!(health.status == 200 && health.json() == json!({"status": "ok"}), "health");
    // The contract and the playground are components like the others: the same on every runtime.
    let doc = host.send("GET", "/functions/v1/openapi.json", None, None, &[]).await?;
    ensure!(doc.status == 200 && doc.json() == api_docs::document(), "openapi.json: {}", doc.status);
    let page = host.send("GET", "/", None, None, &[]).await?;
    ensure!(
        page.status == 200 && String::from_utf8_lossy(&page.body).contains("/playground/app.js"),
        "playground page: {}",
        page.status
    );
    let script = host.send("GET", "/playground/app.js", None, None, &[]).await?;
    ensure!(script.header("content-type") == Some("text/javascript; charset=utf-8"), "playground script");
    ensure!(host.send("GET", "/playground/nope", None, None, &[]).await?.status == 404, "playground 404");
    Ok(())
}
