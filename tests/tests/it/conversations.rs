//! Conversations end to end: the real host, the real component, a real Postgres under RLS.

use chatedge_tests::{TestApp, TestDb};
use serde_json::json;

const BASE: &str = "/functions/v1/conversations";

#[tokio::test]
async fn create_get_list_rename_archive_delete() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let alice = db.user().await?;

    let created = host
        .json("POST", BASE, &alice.token, json!({"title": "  Trip plans ", "model": "gpt-4o-mini", "temperature": 0.3, "max_tokens": 512, "system_prompt": "Be brief"}))
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let conv = created.json();
    let id: uuid::Uuid = conv["id"].as_str().unwrap().parse()?;
    assert_eq!(conv["title"], "Trip plans");
    assert_eq!(conv["model"], "gpt-4o-mini");
    assert_eq!(conv["max_tokens"], 512);
    assert_eq!(conv["archived"], false);
    assert_eq!(created.header("location"), Some(format!("{BASE}/{id}").as_str()));
    assert_eq!(created.header("access-control-allow-origin"), Some("*"));

    // The row really is Alice's, written through RLS.
    let admin = db.admin().await?;
    let owner: uuid::Uuid = admin.query_one("select user_id from conversations where id = $1", &[&id]).await?.get(0);
    assert_eq!(owner, alice.id);

    let got = host.get(&format!("{BASE}/{id}"), &alice.token).await?;
    assert_eq!((got.status, got.json()["system_prompt"].clone()), (200, json!("Be brief")));

    let empty_body = host.send("POST", BASE, Some(&alice.token), None, &[]).await?;
    assert_eq!(empty_body.status, 201);
    assert_eq!(empty_body.json()["title"], "New conversation");

    let renamed = host.json("PATCH", &format!("{BASE}/{id}"), &alice.token, json!({"title": "Lisbon"})).await?;
    assert_eq!((renamed.status, renamed.json()["title"].clone()), (200, json!("Lisbon")));

    let archived = host.json("PATCH", &format!("{BASE}/{id}"), &alice.token, json!({"archived": true})).await?;
    assert_eq!(archived.json()["archived"], true);
    let active = host.get(BASE, &alice.token).await?.json();
    assert!(
        active["data"].as_array().unwrap().iter().all(|c| c["id"] != id.to_string()),
        "archived shows in the default list"
    );
    let only_archived = host.get(&format!("{BASE}?archived=true"), &alice.token).await?.json();
    assert_eq!(only_archived["data"][0]["id"], id.to_string());
    let all = host.get(&format!("{BASE}?archived=all"), &alice.token).await?.json();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let unarchived = host.json("PATCH", &format!("{BASE}/{id}"), &alice.token, json!({"archived": false})).await?;
    assert_eq!(unarchived.json()["archived_at"], json!(null));

    // Messages go with the conversation.
    admin
        .execute(
            "insert into messages (conversation_id, user_id, role, content) values ($1, $2, 'user', 'hi'), ($1, $2, 'assistant', 'hello')",
            &[&id, &alice.id],
        )
        .await?;
    let deleted = host.send("DELETE", &format!("{BASE}/{id}"), Some(&alice.token), None, &[]).await?;
    assert_eq!(deleted.status, 204);
    assert_eq!(host.get(&format!("{BASE}/{id}"), &alice.token).await?.status, 404);
    let left: i64 = admin.query_one("select count(*) from messages where conversation_id = $1", &[&id]).await?.get(0);
    assert_eq!(left, 0);
    let again = host.send("DELETE", &format!("{BASE}/{id}"), Some(&alice.token), None, &[]).await?;
    assert_eq!((again.status, again.error_code()), (404, "not_found".to_owned()));
    Ok(())
}

#[tokio::test]
async fn another_users_conversation_does_not_exist_for_you() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let (alice, bob) = (db.user().await?, db.user().await?);
    let id: uuid::Uuid = host.json("POST", BASE, &alice.token, json!({"title": "private"})).await?.json()["id"]
        .as_str()
        .unwrap()
        .parse()?;
    let admin = db.admin().await?;
    admin
        .execute(
            "insert into messages (conversation_id, user_id, role, content) values ($1, $2, 'user', 'secret')",
            &[&id, &alice.id],
        )
        .await?;

    let missing = format!("{BASE}/{}", uuid::Uuid::new_v4());
    for path in [format!("{BASE}/{id}"), format!("{BASE}/{id}/messages")] {
        let theirs = host.get(&path, &bob.token).await?;
        let absent = host.get(&missing, &bob.token).await?;
        assert_eq!(theirs.status, 404, "{path}");
        // Same answer as for an id that does not exist: no existence leak (the request ids,
        // which name each request, aside).
        let without_id = |mut v: serde_json::Value| {
            assert!(v["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
            v["error"].as_object_mut().map(|e| e.remove("request_id"));
            v
        };
        assert_eq!(without_id(theirs.json()), without_id(absent.json()));
    }
    let rename = host.json("PATCH", &format!("{BASE}/{id}"), &bob.token, json!({"title": "pwned"})).await?;
    assert_eq!(rename.status, 404);
    let delete = host.send("DELETE", &format!("{BASE}/{id}"), Some(&bob.token), None, &[]).await?;
    assert_eq!(delete.status, 404);
    let list = host.get(BASE, &bob.token).await?.json();
    assert_eq!(list["data"], json!([]));

    let row = admin.query_one("select title from conversations where id = $1", &[&id]).await?;
    assert_eq!(row.get::<_, String>(0), "private", "bob changed alice's row");
    let messages: i64 =
        admin.query_one("select count(*) from messages where conversation_id = $1", &[&id]).await?.get(0);
    assert_eq!(messages, 1);
    Ok(())
}

#[tokio::test]
async fn cursor_pagination_is_complete_and_ordered() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let alice = db.user().await?;
    let mut created = Vec::new();
    for i in 0..5 {
        let r = host.json("POST", BASE, &alice.token, json!({"title": format!("c{i}")})).await?;
        created.push(r.json()["id"].as_str().unwrap().parse::<uuid::Uuid>()?);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("{BASE}?limit=2&cursor={c}"),
            None => format!("{BASE}?limit=2"),
        };
        let page = host.get(&path, &alice.token).await?.json();
        pages += 1;
        for c in page["data"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().parse::<uuid::Uuid>()?);
        }
        assert_eq!(page["has_more"], !page["next_cursor"].is_null());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each exactly once");

    // Messages: oldest first by default, newest first with order=desc.
    let conv = &created[0];
    let admin = db.admin().await?;
    for i in 0..3 {
        admin
            .execute(
                "insert into messages (conversation_id, user_id, role, content, created_at) values ($1, $2, 'user', $3, now() + make_interval(secs => $4))",
                &[conv, &alice.id, &format!("m{i}"), &(i as f64)],
            )
            .await?;
    }
    let first = host.get(&format!("{BASE}/{conv}/messages?limit=2"), &alice.token).await?.json();
    let contents: Vec<_> = first["data"].as_array().unwrap().iter().map(|m| m["content"].clone()).collect();
    assert_eq!(contents, [json!("m0"), json!("m1")]);
    let next = first["next_cursor"].as_str().unwrap();
    let second = host.get(&format!("{BASE}/{conv}/messages?limit=2&cursor={next}"), &alice.token).await?.json();
    assert_eq!(second["data"][0]["content"], "m2");
    assert_eq!(second["has_more"], false);
    let desc = host.get(&format!("{BASE}/{conv}/messages?order=desc&limit=1"), &alice.token).await?.json();
    assert_eq!(desc["data"][0]["content"], "m2");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_a_400_envelope_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let host = TestApp::spawn(&db, &[]).await?;
    let alice = db.user().await?;
    let t = alice.token.as_str();

    let malformed = host.send("POST", BASE, Some(t), Some(b"{\"title\": ".to_vec()), &[]).await?;
    assert_eq!((malformed.status, malformed.error_code()), (400, "invalid_json".to_owned()));
    let long = host.json("POST", BASE, t, json!({"title": "x".repeat(201)})).await?;
    assert_eq!((long.status, long.error_code()), (400, "validation_failed".to_owned()));
    assert_eq!(long.json()["error"]["field"], "title");
    let typo = host.json("POST", BASE, t, json!({"titel": "x"})).await?;
    assert_eq!(typo.status, 400);
    let temp = host.json("POST", BASE, t, json!({"temperature": 9})).await?;
    assert_eq!(temp.json()["error"]["field"], "temperature");
    let wrong_type = host.json("POST", BASE, t, json!({"title": 5})).await?;
    assert_eq!((wrong_type.status, wrong_type.error_code()), (400, "validation_failed".to_owned()));
    let huge = host.send("POST", BASE, Some(t), Some(vec![b' '; 70 * 1024]), &[]).await?;
    assert_eq!((huge.status, huge.error_code()), (413, "payload_too_large".to_owned()));

    let cursor = host.get(&format!("{BASE}?cursor=not-a-cursor"), t).await?;
    assert_eq!((cursor.status, cursor.error_code()), (400, "invalid_cursor".to_owned()));
    let limit = host.get(&format!("{BASE}?limit=1000"), t).await?;
    assert_eq!((limit.status, limit.error_code()), (400, "invalid_limit".to_owned()));
    let empty_patch = host.json("PATCH", &format!("{BASE}/{}", uuid::Uuid::new_v4()), t, json!({})).await?;
    assert_eq!(empty_patch.status, 400);
    let not_uuid = host.get(&format!("{BASE}/not-a-uuid"), t).await?;
    assert_eq!(not_uuid.status, 404);
    let method = host.send("PUT", BASE, Some(t), None, &[]).await?;
    assert_eq!((method.status, method.header("allow")), (405, Some("GET, POST, OPTIONS")));

    let rows: i64 = db.admin().await?.query_one("select count(*) from conversations", &[]).await?.get(0);
    assert_eq!(rows, 0, "a rejected request wrote a row");
    Ok(())
}
