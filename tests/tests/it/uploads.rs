//! file-upload end to end: the real host and component, a real Postgres under RLS and the
//! embedded S3 protocol server (s3s, signatures verified) on a real socket.

use chatedge_devstack::s3::{self as s3dev, S3Dev};
use chatedge_tests::{Reply, TestApp, TestDb, User};
use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPLOAD: &str = "/functions/v1/file-upload";
pub(crate) const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\nIDATx\x9cc\0\x01\0\0\x05\0\x01\r\n-\xb4\0\0\0\0IEND\xaeB`\x82";
const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0\x01\0\0\0\x40\x10\x40\0\0\0\0\0";

pub(crate) struct Stack {
    pub(crate) db: TestDb,
    pub(crate) host: TestApp,
    pub(crate) root: PathBuf,
    _s3: S3Dev,
}

pub(crate) async fn stack(extra: &[(&str, &str)]) -> anyhow::Result<Stack> {
    let db = TestDb::start().await?;
    let root = PathBuf::from("/var/tmp/chatedge/test-s3").join(uuid::Uuid::new_v4().to_string());
    let s3 = s3dev::start(&root, "uploads", "127.0.0.1:0", "test-access", "test-secret-key").await?;
    let mut env: Vec<(&str, &str)> = vec![
        ("SPIN_VARIABLE_STORAGE_ENDPOINT", &s3.endpoint),
        ("SPIN_VARIABLE_STORAGE_ALLOWED_HOST", &s3.endpoint),
        ("SPIN_VARIABLE_STORAGE_ACCESS_KEY_ID", "test-access"),
        ("SPIN_VARIABLE_STORAGE_SECRET_ACCESS_KEY", "test-secret-key"),
        // These tests upload more than the default policy's burst.
        ("SPIN_VARIABLE_RATELIMIT_UPLOAD", "1000/min:1000"),
    ];
    env.extend_from_slice(extra);
    let host = TestApp::spawn(&db, &env).await?;
    Ok(Stack { db, host, root, _s3: s3 })
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Every object file under the bucket (s3s-fs keeps objects as files at their key).
pub(crate) fn objects(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".")) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("uploads"), &mut out);
    out
}

/// One form part: field name, file name (a file when present), content type, bytes.
type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

fn multipart(boundary: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, content_type, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file_name {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes()),
        }
        if let Some(ct) = content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

async fn post_multipart(host: &TestApp, user: &User, body: Vec<u8>, boundary: &str) -> anyhow::Result<Reply> {
    let ct = format!("multipart/form-data; boundary={boundary}");
    host.send("POST", UPLOAD, Some(&user.token), Some(body), &[("content-type", &ct)]).await
}

pub(crate) async fn post_raw(host: &TestApp, user: &User, name: &str, ct: &str, body: &[u8]) -> anyhow::Result<Reply> {
    host.send("POST", UPLOAD, Some(&user.token), Some(body.to_vec()), &[("content-type", ct), ("x-file-name", name)])
        .await
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

async fn fetch(url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let res = client.get(url.parse()?).await?;
    let status = res.status().as_u16();
    Ok((status, res.into_body().collect().await?.to_bytes().to_vec()))
}

async fn rows(db: &TestDb, user: &User) -> anyhow::Result<i64> {
    Ok(db.admin().await?.query_one("select count(*) from file_uploads where user_id = $1", &[&user.id]).await?.get(0))
}

#[tokio::test]
async fn multipart_and_raw_uploads_round_trip_byte_for_byte() -> anyhow::Result<()> {
    let s = stack(&[]).await?;
    let alice = s.db.user().await?;
    let conversation = s.host.json("POST", "/functions/v1/conversations", &alice.token, json!({})).await?.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let csv = b"city,temp\nLisbon,21\nOslo,4\n";
    let body = multipart(
        "XyZ123",
        &[
            ("conversation_id", None, None, conversation.as_bytes()),
            ("file", Some("chart.png"), Some("image/png"), PNG),
            ("file", Some("data.csv"), Some("text/csv"), csv),
        ],
    );
    let r = post_multipart(&s.host, &alice, body, "XyZ123").await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let files = r.json()["files"].as_array().cloned().unwrap_or_default();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["mime_type"], "image/png");
    assert_eq!(files[1]["mime_type"], "text/csv");
    assert_eq!(files[0]["conversation_id"], conversation.as_str());
    assert_eq!(files[0]["sha256"], sha256(PNG));
    assert_eq!(files[1]["size_bytes"], csv.len());
    let key = files[0]["storage_key"].as_str().unwrap();
    assert!(key.starts_with(&format!("{}/", alice.id)) && key.ends_with("/chart.png"), "{key}");

    let raw = post_raw(&s.host, &alice, "raw.png", "image/png", PNG).await?;
    assert_eq!(raw.status, 201, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(rows(&s.db, &alice).await?, 3);
    assert_eq!(objects(&s.root).len(), 3);

    // Download through the presigned URL: the same bytes.
    for (file, bytes) in [(&files[0], PNG as &[u8]), (&files[1], csv as &[u8])] {
        let got = s.host.get(&format!("{UPLOAD}/{}", file["id"].as_str().unwrap()), &alice.token).await?;
        assert_eq!(got.status, 200);
        let meta = got.json();
        assert_eq!(meta["expires_in"], 3600);
        let (status, downloaded) = fetch(meta["download_url"].as_str().unwrap()).await?;
        assert_eq!(status, 200);
        assert_eq!(sha256(&downloaded), sha256(bytes));
    }
    // A tampered signature is refused by the storage server.
    let meta = s.host.get(&format!("{UPLOAD}/{}", files[0]["id"].as_str().unwrap()), &alice.token).await?.json();
    let url = meta["download_url"].as_str().unwrap();
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    assert_eq!(fetch(&tampered).await?.0, 403, "a forged signature must be refused");

    let list = s.host.get(&format!("{UPLOAD}?limit=2"), &alice.token).await?.json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(list["has_more"], true);
    let next =
        s.host.get(&format!("{UPLOAD}?limit=2&cursor={}", list["next_cursor"].as_str().unwrap()), &alice.token).await?;
    assert_eq!(next.json()["data"].as_array().map(Vec::len), Some(1));

    // Delete: object and row go.
    let id = files[1]["id"].as_str().unwrap();
    let del = s.host.send("DELETE", &format!("{UPLOAD}/{id}"), Some(&alice.token), None, &[]).await?;
    assert_eq!(del.status, 204);
    assert_eq!(s.host.get(&format!("{UPLOAD}/{id}"), &alice.token).await?.status, 404);
    assert_eq!(objects(&s.root).len(), 2);
    assert_eq!(rows(&s.db, &alice).await?, 2);
    Ok(())
}

/// A chunked request written by hand: no Content-Length, so only the stream tells the size.
async fn post_chunked(host: &TestApp, user: &User, name: &str, total: usize) -> anyhow::Result<u16> {
    let addr = host.base_url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "POST {UPLOAD} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: text/plain\r\n\
         x-file-name: {name}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        user.token
    );
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b'a'; 1024];
    let mut sent = 0;
    while sent < total {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break; // the server stopped reading
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    Ok(text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
}

#[tokio::test]
async fn oversize_spoofed_empty_and_malformed_uploads_store_nothing() -> anyhow::Result<()> {
    let s = stack(&[("SPIN_VARIABLE_UPLOAD_MAX_BYTES", "4096")]).await?;
    let bob = s.db.user().await?;
    let big = vec![b'x'; 10_000];

    // By header: refused before the body is read.
    let r = post_raw(&s.host, &bob, "big.txt", "text/plain", &big).await?;
    assert_eq!((r.status, r.error_code()), (413, "payload_too_large".to_owned()));
    // By stream: chunked, no length; reading stops at the cap.
    assert_eq!(post_chunked(&s.host, &bob, "big.txt", 64 * 1024).await?, 413);
    // Inside multipart.
    let r =
        post_multipart(&s.host, &bob, multipart("b1", &[("file", Some("big.txt"), Some("text/plain"), &big)]), "b1")
            .await?;
    assert_eq!(r.status, 413);
    // An executable named .png, declared image/png.
    let r = post_raw(&s.host, &bob, "cat.png", "image/png", ELF).await?;
    assert_eq!((r.status, r.error_code()), (415, "unsupported_media_type".to_owned()));
    // PNG bytes declared as something else, and a second file that is bad fails the whole request.
    let r = post_raw(&s.host, &bob, "x.pdf", "application/pdf", PNG).await?;
    assert_eq!(r.status, 415);
    let r = post_multipart(
        &s.host,
        &bob,
        multipart(
            "b2",
            &[("file", Some("ok.png"), Some("image/png"), PNG), ("file", Some("evil.png"), Some("image/png"), ELF)],
        ),
        "b2",
    )
    .await?;
    assert_eq!(r.status, 415);
    // Empty.
    assert_eq!(post_raw(&s.host, &bob, "empty.txt", "text/plain", b"").await?.error_code(), "empty_file");
    // Malformed multipart: no boundary, truncated part, no file.
    let r = s
        .host
        .send("POST", UPLOAD, Some(&bob.token), Some(b"--x\r\n".to_vec()), &[("content-type", "multipart/form-data")])
        .await?;
    assert_eq!((r.status, r.error_code()), (400, "invalid_multipart".to_owned()));
    let truncated = b"--b3\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhello".to_vec();
    let r = post_multipart(&s.host, &bob, truncated, "b3").await?;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = post_multipart(&s.host, &bob, multipart("b4", &[("note", None, None, b"hi")]), "b4").await?;
    assert_eq!(r.status, 400);
    // A raw upload without a name.
    let r = s.host.send("POST", UPLOAD, Some(&bob.token), Some(PNG.to_vec()), &[("content-type", "image/png")]).await?;
    assert_eq!(r.status, 400);

    assert_eq!(rows(&s.db, &bob).await?, 0);
    assert!(objects(&s.root).is_empty(), "{:?}", objects(&s.root));
    Ok(())
}

#[tokio::test]
async fn odd_names_are_stored_safely_and_users_are_isolated() -> anyhow::Result<()> {
    let s = stack(&[]).await?;
    let (alice, mallory) = (s.db.user().await?, s.db.user().await?);
    // Raw names travel percent-encoded (header values are ASCII), as encodeURIComponent sends them.
    let names = [
        "../../etc/passwd.txt",
        "..\\..\\win.ini",
        "CON.txt",
        "notes%07%1B[31m.md",
        "r%C3%A9sum%C3%A9%20final%20(2).txt",
        "..%2F..%2F..%2Froot%2F.ssh%2Fauthorized_keys",
    ];
    let mut ids = Vec::new();
    for name in names {
        let r = post_raw(&s.host, &alice, name, "text/plain", b"hello").await?;
        assert_eq!(r.status, 201, "{name}: {}", String::from_utf8_lossy(&r.body));
        let f = &r.json()["files"][0];
        let key = f["storage_key"].as_str().unwrap().to_owned();
        let last = key.rsplit('/').next().unwrap();
        assert!(
            last.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) && !last.starts_with('.'),
            "{key}"
        );
        assert!(!f["original_name"].as_str().unwrap().chars().any(char::is_control));
        if name.starts_with("r%C3") {
            assert_eq!(f["original_name"], "résumé final (2).txt");
        }
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    // Every object is inside the bucket, under alice's prefix.
    let all = objects(&s.root);
    assert_eq!(all.len(), names.len());
    let prefix = s.root.join("uploads").join(alice.id.to_string());
    assert!(all.iter().all(|p| p.starts_with(&prefix)), "{all:?}");
    assert!(!s.root.join("etc").exists() && !s.root.join("uploads/etc").exists());

    // Mallory sees nothing of it.
    assert_eq!(s.host.get(UPLOAD, &mallory.token).await?.json()["data"], json!([]));
    for id in &ids {
        assert_eq!(s.host.get(&format!("{UPLOAD}/{id}"), &mallory.token).await?.status, 404);
        let del = s.host.send("DELETE", &format!("{UPLOAD}/{id}"), Some(&mallory.token), None, &[]).await?;
        assert_eq!(del.status, 404);
    }
    assert_eq!(objects(&s.root).len(), names.len());
    assert_eq!(rows(&s.db, &alice).await?, names.len() as i64);
    // Nor can she attach a file to Alice's conversation.
    let conv = s.host.json("POST", "/functions/v1/conversations", &alice.token, json!({})).await?.json()["id"].clone();
    let body = multipart(
        "m1",
        &[
            ("conversation_id", None, None, conv.as_str().unwrap().as_bytes()),
            ("file", Some("a.txt"), Some("text/plain"), b"x"),
        ],
    );
    let r = post_multipart(&s.host, &mallory, body, "m1").await?;
    assert_eq!(r.status, 404);
    assert_eq!(objects(&s.root).len(), names.len(), "the refused upload's object was removed");
    Ok(())
}

#[tokio::test]
async fn a_failure_after_the_object_is_stored_leaves_neither_object_nor_row() -> anyhow::Result<()> {
    let s = stack(&[]).await?;
    let carol = s.db.user().await?;
    // Injected fault: the metadata insert fails for this one name.
    s.db.admin()
        .await?
        .batch_execute(
            "create function public.fail_upload() returns trigger language plpgsql as $$
             begin if new.original_name = 'boom.txt' then raise exception 'injected failure'; end if; return new; end $$;
             create trigger fail_upload before insert on public.file_uploads for each row execute function public.fail_upload();",
        )
        .await?;
    let r = post_raw(&s.host, &carol, "boom.txt", "text/plain", b"doomed").await?;
    assert!(r.status >= 500, "{}: {}", r.status, String::from_utf8_lossy(&r.body));
    assert_eq!(rows(&s.db, &carol).await?, 0);
    assert!(objects(&s.root).is_empty(), "orphan object left: {:?}", objects(&s.root));
    // The same request with another name goes through.
    assert_eq!(post_raw(&s.host, &carol, "fine.txt", "text/plain", b"ok").await?.status, 201);
    assert_eq!(objects(&s.root).len(), 1);
    let v: Value = s.host.get(UPLOAD, &carol.token).await?.json();
    assert_eq!(v["data"][0]["original_name"], "fine.txt");
    Ok(())
}

#[tokio::test]
async fn storage_keys_are_never_taken_on_trust_from_a_row() -> anyhow::Result<()> {
    let s = stack(&[]).await?;
    let (me, victim) = (s.db.user().await?, s.db.user().await?);
    let theirs = post_raw(&s.host, &victim, "secret.txt", "text/plain", b"victim's data").await?;
    assert_eq!(theirs.status, 201);
    let their_key = theirs.json()["files"][0]["storage_key"].as_str().unwrap().to_owned();
    let mine = post_raw(&s.host, &me, "mine.txt", "text/plain", b"my data").await?;
    let mine = mine.json()["files"][0].clone();
    let my_id: uuid::Uuid = mine["id"].as_str().unwrap().parse()?;
    // Through PostgREST a user cannot point their own row at someone else's object, nor say
    // what a file is: those columns are the function's.
    let as_me = s.db.as_user(&me).await?;
    for column in ["storage_key", "user_id", "size_bytes", "sha256", "mime_type"] {
        let value = match column {
            "storage_key" => format!("'{}/../{}'", me.id, their_key),
            "user_id" => format!("'{}'", victim.id),
            "size_bytes" => "1".to_owned(),
            "sha256" => format!("'{}'", "0".repeat(64)),
            _ => "'image/png'".to_owned(),
        };
        let refused =
            as_me.execute(&format!("update public.file_uploads set {column} = {value} where id = $1"), &[&my_id]).await;
        assert!(refused.is_err(), "users may not write file_uploads.{column}");
    }
    let inserted = as_me
        .execute(
            "insert into public.file_uploads (user_id, original_name, storage_key, mime_type, size_bytes, sha256) \
             values ($1, 'x', $2, 'text/plain', 1, $3)",
            &[&me.id, &their_key, &"0".repeat(64)],
        )
        .await;
    assert!(inserted.is_err(), "users may not insert file_uploads rows");
    // A row that got a crafted key anyway (written before this rule, or by an operator's
    // mistake) is not presigned or deleted: the function sees no such file.
    // (The last is well formed but under the victim's prefix; their exact key is unique.)
    let in_their_prefix = format!("{}/{}/secret.txt", victim.id, uuid::Uuid::new_v4());
    for crafted in [format!("{}/../{}", me.id, their_key), format!("../uploads/{their_key}"), in_their_prefix] {
        s.db.admin()
            .await?
            .execute("update file_uploads set storage_key = $2 where id = $1", &[&my_id, &crafted])
            .await?;
        let got = s.host.get(&format!("{UPLOAD}/{my_id}"), &me.token).await?;
        assert_eq!(got.status, 404, "{crafted}: {}", String::from_utf8_lossy(&got.body));
        let deleted = s.host.send("DELETE", &format!("{UPLOAD}/{my_id}"), Some(&me.token), None, &[]).await?;
        assert_eq!(deleted.status, 404, "{crafted}");
    }
    assert!(s.root.join("uploads").join(&their_key).exists(), "the victim's object is untouched");
    Ok(())
}

#[tokio::test]
async fn policies_check_every_row_a_user_points_at() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let (me, other) = (db.user().await?, db.user().await?);
    let admin = db.admin().await?;
    let mine: uuid::Uuid =
        admin.query_one("insert into conversations (user_id) values ($1) returning id", &[&me.id]).await?.get(0);
    let theirs: uuid::Uuid =
        admin.query_one("insert into conversations (user_id) values ($1) returning id", &[&other.id]).await?.get(0);
    let message: uuid::Uuid = admin
        .query_one(
            "insert into messages (conversation_id, user_id, role, content) values ($1, $2, 'user', 'hi') returning id",
            &[&mine, &me.id],
        )
        .await?
        .get(0);
    let execution: uuid::Uuid = admin
        .query_one("insert into code_executions (user_id, language, code, status) values ($1, 'python', 'print(1)', 'ok') returning id", &[&me.id])
        .await?
        .get(0);
    let as_me = db.as_user(&me).await?;
    // A message cannot move into someone else's conversation.
    assert!(as_me
        .execute("update messages set conversation_id = $2 where id = $1", &[&message, &theirs])
        .await
        .is_err());
    // Nor can an upload, an execution or a visualization name it.
    assert!(as_me
        .execute("insert into code_executions (user_id, conversation_id, language, code, status) values ($1, $2, 'python', 'x', 'ok')", &[&me.id, &theirs])
        .await
        .is_err());
    assert!(as_me
        .execute(
            "insert into visualizations (user_id, conversation_id, kind, spec) values ($1, $2, 'chart', '{}')",
            &[&me.id, &theirs]
        )
        .await
        .is_err());
    let their_message: uuid::Uuid = admin
        .query_one(
            "insert into messages (conversation_id, user_id, role, content) values ($1, $2, 'user', 'x') returning id",
            &[&theirs, &other.id],
        )
        .await?
        .get(0);
    assert!(as_me
        .execute("insert into visualizations (user_id, conversation_id, message_id, kind, spec) values ($1, $2, $3, 'chart', '{}')", &[&me.id, &mine, &their_message])
        .await
        .is_err());
    // The audit trail is insert-only for its owner.
    assert!(as_me.execute("update code_executions set status = 'error' where id = $1", &[&execution]).await.is_err());
    let deleted = as_me.execute("delete from code_executions where id = $1", &[&execution]).await;
    assert!(deleted.is_err() || deleted.is_ok_and(|n| n == 0), "deleting an execution must not work");
    let still: i64 = admin.query_one("select count(*) from code_executions where id = $1", &[&execution]).await?.get(0);
    assert_eq!(still, 1);
    // Within bounds, owners still can: edit their message, file an execution in their own
    // conversation.
    assert_eq!(as_me.execute("update messages set content = 'edited' where id = $1", &[&message]).await?, 1);
    assert_eq!(
        as_me
            .execute("insert into code_executions (user_id, conversation_id, language, code, status) values ($1, $2, 'python', 'x', 'ok')", &[&me.id, &mine])
            .await?,
        1
    );
    // Sizes are bounded.
    let huge = "x".repeat(5 << 20);
    assert!(as_me
        .execute(
            "insert into messages (conversation_id, user_id, role, content) values ($1, $2, 'user', $3)",
            &[&mine, &me.id, &huge]
        )
        .await
        .is_err());
    Ok(())
}
