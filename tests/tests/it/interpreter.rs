//! The code interpreter's files and charts end to end: an upload read by pandas under `/data`,
//! a matplotlib chart kept as a stored visualization with its chart data and a link that
//! downloads the PNG, and another user kept out of the file and the chart. The real host and
//! components, Postgres under RLS, the embedded S3 server and the real sandbox.

use super::uploads::{objects, post_raw, stack};
use chatedge_tests::{fetch, Reply, TestApp, User};
use serde_json::{json, Value};

const CODE: &str = "/functions/v1/code-execution";

async fn upload(host: &TestApp, user: &User, name: &str, body: &[u8]) -> anyhow::Result<String> {
    let r = post_raw(host, user, name, "text/csv", body).await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    Ok(r.json()["files"][0]["id"].as_str().unwrap_or_default().to_owned())
}

async fn run(host: &TestApp, user: &User, body: Value) -> anyhow::Result<Reply> {
    host.json("POST", CODE, &user.token, body).await
}

const CHART: &str = "import pandas as pd, matplotlib.pyplot as plt
df = pd.read_csv('/data/sales.csv')
totals = df.groupby('region')['amount'].sum()
print(totals.to_dict())
fig, ax = plt.subplots()
ax.bar(totals.index, totals.values, label='amount')
ax.set_title('Sales by region')
ax.set_xlabel('region')
ax.set_ylabel('total')
plt.show()";

#[tokio::test]
async fn a_program_reads_an_upload_and_its_chart_is_kept() -> anyhow::Result<()> {
    let s = stack(&[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let (user, other) = (s.db.user().await?, s.db.user().await?);
    let file = upload(&s.host, &user, "sales.csv", b"region,amount\nnorth,3\nsouth,4\nnorth,5\n").await?;

    let reply = run(&s.host, &user, json!({"language": "python", "code": CHART, "file_ids": [file]})).await?;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let out = reply.json();
    assert_eq!(
        (out["status"].as_str(), out["stdout"].as_str()),
        (Some("ok"), Some("{'north': 8, 'south': 4}\n")),
        "{out}"
    );
    let execution = out["id"].as_str().unwrap_or_default().to_owned();
    let shown = &out["visualizations"][0];
    assert_eq!(shown["kind"], "matplotlib", "{out}");
    assert_eq!(shown["mime_type"], "image/png");
    let chart = &shown["chart"];
    assert_eq!(chart["title"], "Sales by region", "{chart}");
    let axes = &chart["axes"][0];
    assert_eq!((axes["x_label"].as_str(), axes["y_label"].as_str()), (Some("region"), Some("total")));
    assert_eq!(axes["x_ticks"], json!(["north", "south"]));
    assert_eq!(axes["series"][0]["type"], "bar");
    assert_eq!(axes["series"][0]["label"], "amount");
    assert_eq!(axes["series"][0]["y"], json!([8.0, 4.0]));
    // The link downloads the same PNG the program drew.
    let (status, png) = fetch(shown["url"].as_str().unwrap_or_default()).await?;
    assert_eq!(status, 200);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert_eq!(png.len() as u64, shown["size_bytes"].as_u64().unwrap_or(0));
    let inline = out["artifacts"][0]["data"].as_str().unwrap_or_default();
    assert_eq!(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, inline)?, png);

    // The row: beside its execution, under the user's prefix, in the bucket.
    let admin = s.db.admin().await?;
    let id: uuid::Uuid = shown["id"].as_str().unwrap_or_default().parse()?;
    let row = admin
        .query_one(
            "select user_id, execution_id, storage_key, size_bytes, spec from visualizations where id = $1",
            &[&id],
        )
        .await?;
    assert_eq!(row.get::<_, uuid::Uuid>(0), user.id);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(1).map(|e| e.to_string()), Some(execution.clone()));
    let key: String = row.get(2);
    assert!(key.starts_with(&format!("{}/visualizations/{execution}/", user.id)), "{key}");
    assert_eq!(row.get::<_, i64>(3), png.len() as i64);
    assert_eq!(row.get::<_, Value>(4)["chart"]["title"], "Sales by region");
    assert!(objects(&s.root).iter().any(|p| p.ends_with(&key)), "the object is stored at its key");

    // A fresh link later, for the owner only.
    let again = s.host.get(&format!("{CODE}/visualizations/{id}"), &user.token).await?;
    assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(again.json()["execution_id"], execution.as_str());
    assert!(again.json().get("storage_key").is_none());
    assert_eq!(fetch(again.json()["url"].as_str().unwrap_or_default()).await?, (200, png.clone()));
    let foreign = s.host.get(&format!("{CODE}/visualizations/{id}"), &other.token).await?;
    assert_eq!((foreign.status, foreign.error_code()), (404, "not_found".to_owned()));

    // Another user cannot read the file: a 404 before anything runs, nothing recorded.
    let stolen = run(&s.host, &other, json!({"language": "python", "code": "print(1)", "file_ids": [file]})).await?;
    assert_eq!(
        (stolen.status, stolen.error_code()),
        (404, "not_found".to_owned()),
        "{}",
        String::from_utf8_lossy(&stolen.body)
    );
    let missing = uuid::Uuid::new_v4().to_string();
    let gone = run(&s.host, &user, json!({"language": "python", "code": "print(1)", "file_ids": [missing]})).await?;
    assert_eq!(gone.status, 404);
    let js = run(&s.host, &user, json!({"language": "javascript", "code": "1", "file_ids": [file]})).await?;
    assert_eq!((js.status, js.error_code()), (400, "validation_failed".to_owned()));
    let others: i64 =
        admin.query_one("select count(*) from code_executions where user_id = $1", &[&other.id]).await?.get(0);
    assert_eq!(others, 0);
    // A user's row pointing at another user's object is never presigned.
    let victims = key.replace("/0.png", "/9.png");
    let planted: uuid::Uuid = admin
        .query_one(
            "insert into visualizations (user_id, kind, spec, storage_key) values ($1, 'image', '{}', $2) returning id",
            &[&other.id, &victims],
        )
        .await?
        .get(0);
    let refused = s.host.get(&format!("{CODE}/visualizations/{planted}"), &other.token).await?;
    assert_eq!(refused.status, 404, "{}", String::from_utf8_lossy(&refused.body));
    Ok(())
}

#[tokio::test]
async fn uploads_past_the_input_cap_are_refused_before_running() -> anyhow::Result<()> {
    let s = stack(&[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000"), ("SPIN_VARIABLE_CODE_MAX_INPUT_BYTES", "10")])
        .await?;
    let user = s.db.user().await?;
    let file = upload(&s.host, &user, "big.csv", b"a,b\n1,2\n3,4\n5,6\n").await?;
    let refused = run(&s.host, &user, json!({"language": "python", "code": "print(1)", "file_ids": [file]})).await?;
    assert_eq!((refused.status, refused.error_code()), (413, "payload_too_large".to_owned()));
    let recorded: i64 = s.db.admin().await?.query_one("select count(*) from code_executions", &[]).await?.get(0);
    assert_eq!(recorded, 0);
    Ok(())
}

#[tokio::test]
async fn a_session_keeps_state_across_calls_for_its_owner_only() -> anyhow::Result<()> {
    let s = stack(&[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let (user, other) = (s.db.user().await?, s.db.user().await?);
    let file = upload(&s.host, &user, "sales.csv", b"region,amount\nnorth,3\nsouth,4\nnorth,5\n").await?;
    let first = run(
        &s.host,
        &user,
        json!({"language": "python", "session": true, "file_ids": [file],
               "code": "import pandas as pd\ndf = pd.read_csv('/data/sales.csv')\nprint(len(df))"}),
    )
    .await?;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["stdout"], "3\n");
    let session = first.json()["session_id"].as_str().unwrap_or_default().to_owned();
    assert!(!session.is_empty(), "{}", first.json());
    let second = run(&s.host, &user, json!({"language": "python", "session_id": session, "code": "df['double'] = df.amount * 2\nprint(int(df.double.sum()))"})).await?;
    assert_eq!(second.json()["stdout"], "24\n", "{}", second.json());
    let third =
        run(&s.host, &user, json!({"language": "python", "session_id": session, "code": "print(list(df.columns))"}))
            .await?;
    assert_eq!(third.json()["stdout"], "['region', 'amount', 'double']\n", "{}", third.json());
    // Each call is its own row, naming the session.
    let named: i64 = s
        .db
        .admin()
        .await?
        .query_one("select count(*) from code_executions where user_id = $1 and session_id = $2", &[&user.id, &session])
        .await?
        .get(0);
    assert_eq!(named, 3);
    // Another user cannot use or end it.
    let stolen =
        run(&s.host, &other, json!({"language": "python", "session_id": session, "code": "print(df)"})).await?;
    assert_eq!((stolen.status, stolen.error_code()), (404, "not_found".to_owned()));
    let path = format!("{CODE}/sessions/{session}");
    let refused = s.host.send("DELETE", &path, Some(&other.token), None, &[]).await?;
    assert_eq!(refused.status, 404);
    // Its owner ends it; after that it is a clear 404.
    let ended = s.host.send("DELETE", &path, Some(&user.token), None, &[]).await?;
    assert_eq!(ended.status, 204, "{}", String::from_utf8_lossy(&ended.body));
    let after = run(&s.host, &user, json!({"language": "python", "session_id": session, "code": "print(df)"})).await?;
    assert_eq!((after.status, after.error_code()), (404, "not_found".to_owned()));
    assert!(after.json()["error"]["message"].as_str().is_some_and(|m| m.contains("session")), "{}", after.json());
    // A call without a session is as fresh as ever.
    let fresh = run(&s.host, &user, json!({"language": "python", "code": "print('df' in globals())"})).await?;
    assert_eq!(fresh.json()["stdout"], "False\n");
    Ok(())
}

/// The SSE events of a whole streamed answer: (event, data).
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let field = |name: &str| {
                frame.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned()
            };
            (field("event:"), serde_json::from_str(&field("data:")).unwrap_or(Value::Null))
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_execution_sends_output_before_it_ends() -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let s = stack(&[("SPIN_VARIABLE_RATELIMIT_CODE", "1000/min:1000")]).await?;
    let user = s.db.user().await?;
    let rows = async || -> anyhow::Result<i64> {
        Ok(s.db.admin().await?.query_one("select count(*) from code_executions", &[]).await?.get(0))
    };
    // The program prints, then sleeps far past anything the test waits for.
    let slow = json!({"language": "python", "stream": true, "timeout_ms": 20000,
                      "code": "import time\nprint('first')\ntime.sleep(60)"});
    let response = s.host.open(CODE, &user.token, &slow).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = body.frame().await.expect("an event before the end")?;
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert_eq!(events(&text)[0], ("stdout".to_owned(), json!({"data": "first\n"})));
    // The program is still running: nothing is recorded until it ends.
    assert_eq!(rows().await?, 0);
    drop(body); // the client leaves mid-stream; the host keeps serving

    let whole = s
        .host
        .json(
            "POST",
            CODE,
            &user.token,
            json!({"language": "python", "stream": true,
                   "code": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.title('t')\nplt.show()"}),
        )
        .await?;
    assert_eq!(whole.status, 200, "{}", String::from_utf8_lossy(&whole.body));
    let got = events(&String::from_utf8_lossy(&whole.body));
    let kinds: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
    assert!(kinds.contains(&"stdout") && kinds.contains(&"stderr"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"outcome"), "{kinds:?}");
    let streamed: String = got.iter().filter(|(e, _)| e == "stdout").filter_map(|(_, d)| d["data"].as_str()).collect();
    assert_eq!(streamed, "out\n");
    let outcome = &got[got.len() - 1].1;
    assert_eq!((outcome["status"].as_str(), outcome["stdout"].as_str()), (Some("ok"), Some("out\n")));
    assert_eq!(outcome["visualizations"][0]["chart"]["title"], "t");
    let id: uuid::Uuid = outcome["id"].as_str().unwrap_or_default().parse()?;
    let status: String =
        s.db.admin().await?.query_one("select status from code_executions where id = $1", &[&id]).await?.get(0);
    assert_eq!(status, "ok");
    // In a session too: the state is there and the stream says which session.
    let started = run(&s.host, &user, json!({"language": "python", "session": true, "code": "n = 41"})).await?;
    let session = started.json()["session_id"].clone();
    let streamed = s
        .host
        .json(
            "POST",
            CODE,
            &user.token,
            json!({"language": "python", "stream": true, "session_id": session, "code": "print(n + 1)"}),
        )
        .await?;
    let got = events(&String::from_utf8_lossy(&streamed.body));
    assert_eq!(got[0], ("stdout".to_owned(), json!({"data": "42\n"})), "{got:?}");
    let last = &got[got.len() - 1];
    assert_eq!((last.0.as_str(), &last.1["session_id"]), ("outcome", &session));
    // Refusals before anything runs are plain JSON errors.
    let bad =
        run(&s.host, &user, json!({"language": "javascript", "stream": true, "session": true, "code": "1"})).await?;
    assert_eq!((bad.status, bad.error_code()), (400, "validation_failed".to_owned()));
    Ok(())
}
