//! Token verification through the real host: every failure is a 401 envelope.

use chatedge_tests::{repo_root, token_with, TestApp, TestDb};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const PATH: &str = "/functions/v1/conversations";

fn now() -> i64 {
    chatedge_devstack::tokens::now()
}

fn claims(user: &uuid::Uuid) -> Value {
    json!({"sub": user.to_string(), "role": "authenticated", "aud": "authenticated", "exp": now() + 600, "iat": now()})
}

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("shared/testdata").join(name)).expect("testdata")
}

fn b64(v: &[u8]) -> String {
    use std::fmt::Write;
    // base64url without padding, written out to keep this crate's dependencies small.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in v.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn es256(claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("test-ec".into());
    encode(&h, claims, &EncodingKey::from_ec_pem(&testdata("ec_private.pem")).unwrap()).unwrap()
}

#[tokio::test]
async fn every_bad_token_is_a_401_envelope() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let jwks = String::from_utf8(testdata("jwks.json"))?;
    let host = TestApp::spawn(&db, &[("SPIN_VARIABLE_SUPABASE_JWKS", &jwks)]).await?;
    let user = db.user().await?;

    // Positive controls: the same user with a good HS256 and a good ES256 token.
    assert_eq!(host.get(PATH, &user.token).await?.status, 200);
    assert_eq!(host.get(PATH, &es256(&claims(&user.id))).await?.status, 200);

    let mut expired = claims(&user.id);
    expired["exp"] = json!(now() - 120);
    let mut wrong_aud = claims(&user.id);
    wrong_aud["aud"] = json!("some-other-api");
    let mut not_yet = claims(&user.id);
    not_yet["nbf"] = json!(now() + 3600);
    let bad_signature =
        encode(&Header::new(Algorithm::HS256), &claims(&user.id), &EncodingKey::from_secret(b"not-the-secret"))?;
    let alg_none =
        format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims(&user.id).to_string().as_bytes()));
    let forged_with_public_key = encode(
        &Header::new(Algorithm::HS256),
        &claims(&user.id),
        &EncodingKey::from_secret(&testdata("ec_public.pem")),
    )?;
    let anon_key = token_with(json!({"role": "anon", "iss": "supabase", "exp": now() + 600}));
    let mut tampered = user.token.clone();
    tampered.insert(tampered.find('.').unwrap() + 3, 'x');

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("bad signature", Some(bad_signature)),
        ("expired", Some(token_with(expired))),
        ("wrong audience", Some(token_with(wrong_aud))),
        ("not yet valid", Some(token_with(not_yet))),
        ("alg none", Some(alg_none)),
        ("HS256 forged with the public key", Some(forged_with_public_key)),
        ("anon key is not a user", Some(anon_key)),
        ("tampered payload", Some(tampered)),
        ("garbage", Some("not.a.jwt".into())),
    ];
    for (name, token) in cases {
        let r = host.send("GET", PATH, token.as_deref(), None, &[]).await?;
        assert_eq!(r.status, 401, "{name}: {:?}", r.json());
        assert_eq!(r.error_code(), "unauthorized", "{name}");
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{name}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{name}: CORS on errors too");
    }
    let basic = host.send("GET", PATH, None, None, &[("authorization", "Basic dXNlcjpwYXNz")]).await?;
    assert_eq!(basic.status, 401);
    Ok(())
}

/// A JWKS served over HTTP: fetched through the host's outbound HTTP, only from allowed hosts.
#[tokio::test]
async fn jwks_url_is_fetched_only_from_an_allowed_host() -> anyhow::Result<()> {
    use http_body_util::Full;
    let jwks = bytes::Bytes::from(testdata("jwks.json"));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let (addr, _server) = chatedge_tests::serve_http(move |_req| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let jwks = jwks.clone();
        async move { hyper::Response::new(Full::new(jwks)) }
    })
    .await?;
    let port = addr.port();
    let db = TestDb::start().await?;
    let user = db.user().await?;
    let url = format!("http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json");
    let token = es256(&claims(&user.id));

    // Default policy allows only https://*.supabase.co: the fetch is denied.
    let denied = TestApp::spawn(&db, &[("SPIN_VARIABLE_SUPABASE_JWKS_URL", &url)]).await?;
    let r = denied.get(PATH, &token).await?;
    assert_eq!((r.status, r.error_code()), (503, "auth_keys_unavailable".to_owned()));
    assert!(denied.log().contains("denied"), "no log line for the denied request:\n{}", denied.log());

    let allowed_host = format!("http://127.0.0.1:{port}");
    let allowed = TestApp::spawn(
        &db,
        &[("SPIN_VARIABLE_SUPABASE_JWKS_URL", &url), ("SPIN_VARIABLE_JWKS_ALLOWED_HOST", &allowed_host)],
    )
    .await?;
    assert_eq!(allowed.get(PATH, &token).await?.status, 200);
    Ok(())
}
