//! Supabase-shaped tokens for the dev stack and tests: the anon and service_role API keys and a
//! user's access token, HS256 with the project's JWT secret.

use anyhow::Result;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs arbitrary claims with HS256.
pub fn sign(secret: &[u8], claims: &Value) -> Result<String> {
    Ok(encode(&Header::new(jsonwebtoken::Algorithm::HS256), claims, &EncodingKey::from_secret(secret))?)
}

/// An API key as `supabase start` prints it (`role` anon or service_role), valid ten years.
pub fn api_key(secret: &[u8], role: &str) -> Result<String> {
    sign(secret, &json!({"iss": "supabase-demo", "role": role, "iat": now(), "exp": now() + 10 * 365 * 86400}))
}

/// A signed-in user's access token, as Supabase Auth issues it.
pub fn user_token(secret: &[u8], user_id: &str, email: &str, ttl_secs: i64) -> Result<String> {
    sign(
        secret,
        &json!({
            "sub": user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": email,
            "is_anonymous": false,
            "aal": "aal1",
            "session_id": uuid::Uuid::new_v4().to_string(),
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
            "iat": now(),
            "exp": now() + ttl_secs,
        }),
    )
}
