//! `POST /v1/embeddings` end to end: the real host and component, a real Postgres under RLS,
//! and fake OpenAI, Mistral and compatible servers speaking their embeddings wire format.

use super::chat::{start, usage};
use base64::Engine as _;
use chatedge_tests::fake_llm::{self, FakeProvider};
use chatedge_tests::TestDb;
use serde_json::{json, Value};

const EMBEDDINGS: &str = "/v1/embeddings";

fn vectors_of(answer: &Value) -> Vec<Vec<f32>> {
    answer["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|d| match &d["embedding"] {
                    Value::String(b64) => {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                    }
                    v => serde_json::from_value(v.clone()).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn openai_embeddings_in_float_and_base64_with_usage_rows() -> anyhow::Result<()> {
    let two = fake_llm::test_vectors(2, 3);
    let fake = FakeProvider::start(
        vec![
            fake_llm::ok_json(fake_llm::openai_embeddings("text-embedding-3-small", &two, 8, true)),
            fake_llm::ok_json(fake_llm::openai_embeddings("text-embedding-3-small", &two[..1], 3, true)),
        ],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[]).await?;
    let user = db.user().await?;

    let body = json!({"model": "text-embedding-3-small", "input": ["first", "second"], "dimensions": 3, "user": "u-1"});
    let r = host.json("POST", EMBEDDINGS, &user.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!((answer["object"].as_str(), answer["model"].as_str()), (Some("list"), Some("text-embedding-3-small")));
    assert_eq!(answer["data"][1]["object"], "embedding");
    assert_eq!(answer["data"][1]["index"], 1);
    assert!(answer["data"][0]["embedding"].is_array(), "float is the default encoding");
    assert_eq!(vectors_of(&answer), two);
    assert_eq!(answer["usage"], json!({"prompt_tokens": 8, "total_tokens": 8}));
    assert_eq!(answer["chatedge"]["provider"], "openai");

    // OpenAI is asked for base64 (a quarter of the bytes) whatever the client asked.
    let asked = fake.received();
    assert_eq!(asked[0].path, "/v1/embeddings");
    assert_eq!(asked[0].header("authorization"), Some("Bearer sk-test-openai"));
    assert_eq!(
        asked[0].body,
        json!({"model": "text-embedding-3-small", "input": ["first", "second"], "encoding_format": "base64",
               "dimensions": 3, "user": "u-1"})
    );

    let body = json!({"model": "text-embedding-3-small", "input": "first", "encoding_format": "base64"});
    let r = host.json("POST", EMBEDDINGS, &user.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["data"][0]["embedding"].is_string());
    assert_eq!(vectors_of(&r.json()), two[..1].to_vec());

    // One api_usage row per call, priced at $0.02 per 1M input tokens; nothing else is stored.
    assert_eq!(
        usage(&db, &user).await?,
        vec![
            ("openai".into(), "text-embedding-3-small".into(), 8, 0, "0.00000016".into(), "complete".into()),
            ("openai".into(), "text-embedding-3-small".into(), 3, 0, "0.00000006".into(), "complete".into()),
        ]
    );
    let admin = db.admin().await?;
    let stored: i64 = admin.query_one("select count(*) from messages", &[]).await?.get(0);
    assert_eq!(stored, 0);
    Ok(())
}

#[tokio::test]
async fn mistral_and_compatible_servers_embed_and_anthropic_is_refused_up_front() -> anyhow::Result<()> {
    let mistral = FakeProvider::start(
        vec![fake_llm::ok_json(fake_llm::mistral_embeddings("codestral-embed", &fake_llm::test_vectors(1, 4), 5))],
        None,
    )
    .await?;
    // A compatible server (Ollama, vLLM, llama.cpp) that reports no usage.
    let silent = json!({"object": "list", "model": "nomic-embed-text",
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]});
    let compatible = FakeProvider::start(vec![fake_llm::ok_json(silent.to_string())], None).await?;
    let anthropic = FakeProvider::start(Vec::new(), None).await?;
    let db = TestDb::start().await?;
    let host = start(
        &db,
        &[("mistral", &mistral), ("openai_compatible", &compatible), ("anthropic", &anthropic)],
        &[("SPIN_VARIABLE_COMPATIBLE_DEFAULT_MODEL", "llama3.2")],
    )
    .await?;
    let user = db.user().await?;

    let body = json!({"model": "codestral-embed", "input": ["fn main() {}"], "dimensions": 4});
    let r = host.json("POST", EMBEDDINGS, &user.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(vectors_of(&r.json()), fake_llm::test_vectors(1, 4));
    // Mistral names the output size `output_dimension` and answers floats.
    assert_eq!(
        mistral.received()[0].body,
        json!({"model": "codestral-embed", "input": ["fn main() {}"], "output_dimension": 4})
    );

    let body = json!({"model": "nomic-embed-text", "input": "hello", "provider": "openai_compatible"});
    let r = host.json("POST", EMBEDDINGS, &user.token, body).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(vectors_of(&r.json()), vec![vec![0.5, 0.25]]);
    // No usage reported: charged the input's bound (5 bytes), and said to be estimated.
    assert_eq!(r.json()["usage"]["prompt_tokens"], 5);
    assert_eq!(r.json()["chatedge"]["usage_estimated"], true, "{}", r.json());
    assert_eq!(compatible.received()[0].body["encoding_format"], "float");
    assert!(compatible.received()[0].header("authorization").is_some());

    let body = json!({"model": "claude-sonnet-4-5", "input": "hello"});
    let r = host.json("POST", EMBEDDINGS, &user.token, body).await?;
    assert_eq!((r.status, r.error_code()), (400, "not_supported".to_owned()));
    assert_eq!(r.json()["error"]["provider"], "anthropic", "{}", r.json());
    assert!(anthropic.received().is_empty(), "a refused call reaches no provider");

    let rows = usage(&db, &user).await?;
    assert_eq!(
        rows.iter().map(|r| (r.0.as_str(), r.1.as_str(), r.2, r.5.as_str())).collect::<Vec<_>>(),
        vec![("mistral", "codestral-embed", 5, "complete"), ("openai_compatible", "nomic-embed-text", 5, "complete")]
    );
    Ok(())
}

#[tokio::test]
async fn budgets_bad_input_and_unusable_replies() -> anyhow::Result<()> {
    let vector = fake_llm::test_vectors(1, 2);
    let fake = FakeProvider::start(
        vec![
            fake_llm::ok_json(fake_llm::openai_embeddings("text-embedding-3-small", &vector, 2, false)),
            fake_llm::ok_json(fake_llm::openai_embeddings("text-embedding-3-small", &vector, 3, false)),
            // One vector for two inputs: never a shifted answer.
            fake_llm::ok_json(fake_llm::openai_embeddings("text-embedding-3-small", &vector, 4, false)),
        ],
        None,
    )
    .await?;
    let db = TestDb::start().await?;
    let host = start(&db, &[("openai", &fake)], &[("SPIN_VARIABLE_BUDGET_DAILY_TOKENS", "10")]).await?;
    let user = db.user().await?;
    let embed = |input: Value| json!({"model": "text-embedding-3-small", "input": input});

    // 20 bytes can be 20 tokens: over a 10-token day, refused before any provider call.
    let r = host.json("POST", EMBEDDINGS, &user.token, embed(json!("x".repeat(20)))).await?;
    assert_eq!((r.status, r.error_code()), (429, "budget_exceeded".to_owned()));
    assert!(fake.received().is_empty());
    // 5 bytes reserve 5 and settle at the 2 reported, so 8 more bytes still fit (2 + 8 = 10).
    let r = host.json("POST", EMBEDDINGS, &user.token, embed(json!("hello"))).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = host.json("POST", EMBEDDINGS, &user.token, embed(json!("12345678"))).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // 2 + 3 spent: 6 more bytes do not fit.
    let r = host.json("POST", EMBEDDINGS, &user.token, embed(json!("123456"))).await?;
    assert_eq!((r.status, r.error_code()), (429, "budget_exceeded".to_owned()));
    assert_eq!(fake.received().len(), 2);

    // A reply with the wrong count is a 502, and its reported usage is still recorded.
    let other = db.user().await?;
    let r = host.json("POST", EMBEDDINGS, &other.token, embed(json!(["a", "b"]))).await?;
    assert_eq!((r.status, r.error_code()), (502, "provider_error".to_owned()), "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"]["message"].as_str().unwrap_or("").contains("1 embeddings for 2 inputs"), "{}", r.json());
    let rows = usage(&db, &other).await?;
    assert_eq!(rows.iter().map(|r| (r.2, r.5.as_str())).collect::<Vec<_>>(), vec![(4, "error")]);

    // Bad bodies are 400s naming the field; other methods 405; no token 401.
    for (body, field) in [
        (json!({"model": "text-embedding-3-small", "input": []}), Some("input")),
        (json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 100000}), Some("dimensions")),
        (json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"}), None),
        (json!({"input": "x"}), None),
    ] {
        let r = host.json("POST", EMBEDDINGS, &other.token, body.clone()).await?;
        assert_eq!((r.status, r.error_code()), (400, "validation_failed".to_owned()), "{body}");
        assert_eq!(r.json()["error"]["field"].as_str(), field, "{}", r.json());
    }
    let r = host.send("POST", EMBEDDINGS, Some(&other.token), Some(b"{".to_vec()), &[]).await?;
    assert_eq!((r.status, r.error_code()), (400, "invalid_json".to_owned()));
    let r = host.get(EMBEDDINGS, &other.token).await?;
    assert_eq!(r.status, 405);
    let r = host.send("POST", EMBEDDINGS, None, Some(embed(json!("x")).to_string().into_bytes()), &[]).await?;
    assert_eq!(r.status, 401);
    assert_eq!(fake.received().len(), 3, "none of these reached the provider");

    // The models list names the embedding models of each configured provider.
    let ids: Vec<String> = host.get("/v1/models", &other.token).await?.json()["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert!(ids.iter().any(|m| m == "text-embedding-3-small"), "{ids:?}");
    Ok(())
}
