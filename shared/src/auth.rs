//! Verification of Supabase access tokens.
//!
//! The accepted algorithm is decided by the key, never by the token's header: the project's HS256
//! secret verifies HS256 only, and each JWKS key verifies only the algorithm its own type implies.
//! That closes `alg: none` and the "HS256 signed with the public key" confusion.

use crate::error::ApiError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What a function needs to verify tokens, read from its variables.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// The project's JWT secret (HS256). Supabase's legacy and local-dev signing key.
    pub hs256_secret: Option<Vec<u8>>,
    /// Public keys from `/auth/v1/.well-known/jwks.json` (ES256 / RS256 / EdDSA).
    pub jwks: Option<JwkSet>,
    /// Accepted `aud` values for user tokens (Supabase: `authenticated`).
    pub audiences: Vec<String>,
    /// Required `iss` for user tokens, when set (Supabase: `https://<ref>.supabase.co/auth/v1`).
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` / `nbf`, seconds.
    pub leeway_secs: u64,
}

/// Who is calling, as proven by a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user id (`sub`), present for signed-in users (including anonymous sign-ins).
    pub user_id: Option<String>,
    /// Postgres role the token asks for: `authenticated`, `anon` or `service_role`.
    pub role: String,
    /// Supabase anonymous sign-in (`is_anonymous: true`).
    pub is_anonymous: bool,
    /// The verified claims, verbatim, for `request.jwt.claims`.
    pub claims: serde_json::Value,
}

#[derive(Deserialize)]
struct StandardClaims {
    sub: Option<String>,
    role: Option<String>,
    aud: Option<Audience>,
    iss: Option<String>,
    #[serde(default)]
    is_anonymous: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Audience::One(a) => accepted.iter().any(|x| x == a),
            Audience::Many(v) => v.iter().any(|a| accepted.iter().any(|x| x == a)),
        }
    }
}

/// Parses a JWKS document, keeping only public signing keys (a symmetric `oct` key from a URL is
/// never trusted).
pub fn parse_jwks(json: &[u8]) -> Result<JwkSet, serde_json::Error> {
    let mut set: JwkSet = serde_json::from_slice(json)?;
    set.keys.retain(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)));
    Ok(set)
}

/// The single algorithm a JWK may verify, derived from the key itself.
fn algorithm_for(jwk: &Jwk) -> Option<Algorithm> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(from_type),
        Some(declared) => {
            let declared = match declared {
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::PS384 => Algorithm::PS384,
                KeyAlgorithm::PS512 => Algorithm::PS512,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return None,
            };
            // A declared algorithm must belong to the key's own family.
            let same_family = matches!(
                (&jwk.algorithm, declared),
                (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
                    | (
                        AlgorithmParameters::RSA(_),
                        Algorithm::RS256
                            | Algorithm::RS384
                            | Algorithm::RS512
                            | Algorithm::PS256
                            | Algorithm::PS384
                            | Algorithm::PS512
                    )
                    | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
            );
            same_family.then_some(declared)
        }
    }
}

/// Extracts the token from `Authorization: Bearer <token>`.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, ApiError> {
    let value = authorization.ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let (scheme, token) =
        value.split_once(' ').ok_or_else(|| ApiError::unauthorized("Authorization header must be 'Bearer <token>'"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("Authorization header must be 'Bearer <token>'"));
    }
    Ok(token.trim())
}

impl AuthConfig {
    /// True when at least one key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks.as_ref().is_some_and(|s| !s.keys.is_empty())
    }

    /// Verifies a token and returns the caller. Every failure is a 401 envelope.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("malformed token or unsupported algorithm"))?;
        let (key, algorithm) = self.key_for(&header)?;
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false; // checked below, with the API-key exception
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ApiError::unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid",
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                _ => "invalid token",
            })
        })?;
        let claims = data.claims;
        let std: StandardClaims = serde_json::from_value(claims.clone())
            .map_err(|_| ApiError::unauthorized("token claims have the wrong types"))?;
        let role = std.role.clone().unwrap_or_else(|| "authenticated".to_owned());
        // Supabase's API keys (anon, service_role) carry no `aud`; user tokens must.
        let api_key = std.sub.is_none() && matches!(role.as_str(), "anon" | "service_role");
        if !self.audiences.is_empty() && !api_key {
            match &std.aud {
                Some(aud) if aud.contains_any(&self.audiences) => {}
                _ => return Err(ApiError::unauthorized("token audience not accepted")),
            }
        }
        if let Some(expected) = &self.issuer {
            let ok =
                std.iss.as_deref() == Some(expected.as_str()) || (api_key && std.iss.as_deref() == Some("supabase"));
            if !ok {
                return Err(ApiError::unauthorized("token issuer not accepted"));
            }
        }
        if !matches!(role.as_str(), "authenticated" | "anon" | "service_role") {
            return Err(ApiError::unauthorized("token role not accepted"));
        }
        let user_id = match std.sub {
            Some(sub) if uuid::Uuid::parse_str(&sub).is_ok() => Some(sub),
            Some(_) => return Err(ApiError::unauthorized("token subject is not a user id")),
            None => None,
        };
        if role == "authenticated" && user_id.is_none() {
            return Err(ApiError::unauthorized("token has no subject"));
        }
        Ok(Principal { user_id, role, is_anonymous: std.is_anonymous, claims })
    }

    /// Whether the bearer token names a signing key this configuration does not hold (a key id
    /// and algorithm no JWKS entry has): the one failure a refetched JWKS can cure, after the
    /// project rotated its keys. Any other token, or none, is `false`.
    pub fn lacks_key_for(&self, authorization: Option<&str>) -> bool {
        let Ok(token) = bearer_token(authorization) else { return false };
        let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
        header.alg != Algorithm::HS256 && self.key_for(&header).is_err()
    }

    /// Verifies `Authorization: Bearer` and requires a signed-in user (not just an API key).
    pub fn require_user(&self, authorization: Option<&str>) -> Result<(String, Principal), ApiError> {
        let principal = self.verify(bearer_token(authorization)?)?;
        match (&principal.user_id, principal.role.as_str()) {
            (Some(id), "authenticated") => Ok((id.clone(), principal)),
            _ => Err(ApiError::unauthorized("a signed-in user's access token is required")),
        }
    }

    fn key_for(&self, header: &jsonwebtoken::Header) -> Result<(DecodingKey, Algorithm), ApiError> {
        if header.alg == Algorithm::HS256 {
            let secret = self
                .hs256_secret
                .as_ref()
                .ok_or_else(|| ApiError::unauthorized("HS256 tokens are not accepted here"))?;
            return Ok((DecodingKey::from_secret(secret), Algorithm::HS256));
        }
        let set = self.jwks.as_ref().ok_or_else(|| ApiError::unauthorized("token algorithm not accepted"))?;
        let candidates: Vec<&Jwk> = match &header.kid {
            Some(kid) => set.keys.iter().filter(|k| k.common.key_id.as_deref() == Some(kid)).collect(),
            None => set.keys.iter().collect(),
        };
        for jwk in candidates {
            if algorithm_for(jwk) == Some(header.alg) {
                let key = DecodingKey::from_jwk(jwk).map_err(|_| ApiError::unauthorized("signing key unusable"))?;
                return Ok((key, header.alg));
            }
        }
        Err(ApiError::unauthorized("no key matches the token's key id and algorithm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"super-secret-jwt-token-with-at-least-32-characters-long";
    const USER: &str = "6f1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            jwks: Some(parse_jwks(include_bytes!("../testdata/jwks.json")).unwrap()),
            audiences: vec!["authenticated".into()],
            issuer: None,
            leeway_secs: 0,
        }
    }

    fn user_claims() -> serde_json::Value {
        json!({"sub": USER, "role": "authenticated", "aud": "authenticated", "exp": now() + 600, "iat": now()})
    }

    fn hs(claims: &serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn es(claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_ec_pem(include_bytes!("../testdata/ec_private.pem")).unwrap();
        encode(&h, claims, &key).unwrap()
    }

    fn b64(v: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn accepts_hs256_user_token() {
        let p = config().verify(&hs(&user_claims())).unwrap();
        assert_eq!(p.user_id.as_deref(), Some(USER));
        assert_eq!(p.role, "authenticated");
        assert_eq!(p.claims["aud"], "authenticated");
    }

    #[test]
    fn accepts_es256_and_rs256_from_jwks() {
        assert!(config().verify(&es(&user_claims(), Some("test-ec"))).is_ok());
        assert!(config().verify(&es(&user_claims(), None)).is_ok(), "no kid: try keys of the right type");
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("test-rsa".into());
        let key = EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa_private.pem")).unwrap();
        assert!(config().verify(&encode(&h, &user_claims(), &key).unwrap()).is_ok());
    }

    #[test]
    fn rejects_expired_wrong_audience_and_bad_signature() {
        let mut c = user_claims();
        c["exp"] = json!(now() - 10);
        assert_eq!(config().verify(&hs(&c)).unwrap_err().message, "token expired");
        let mut c = user_claims();
        c["aud"] = json!("someone-else");
        assert_eq!(config().verify(&hs(&c)).unwrap_err().message, "token audience not accepted");
        let forged =
            encode(&Header::new(Algorithm::HS256), &user_claims(), &EncodingKey::from_secret(b"other")).unwrap();
        assert_eq!(config().verify(&forged).unwrap_err().status, 401);
        let mut c = user_claims();
        c["nbf"] = json!(now() + 3600);
        assert_eq!(config().verify(&hs(&c)).unwrap_err().message, "token not yet valid");
    }

    #[test]
    fn rejects_alg_none() {
        let token = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(user_claims().to_string().as_bytes()));
        assert_eq!(config().verify(&token).unwrap_err().status, 401);
    }

    #[test]
    fn rejects_hs256_forged_with_the_public_key() {
        // The classic confusion: sign HS256 using the server's public key as the HMAC secret.
        for public in [&include_bytes!("../testdata/ec_public.pem")[..], include_bytes!("../testdata/jwks.json")] {
            let token =
                encode(&Header::new(Algorithm::HS256), &user_claims(), &EncodingKey::from_secret(public)).unwrap();
            assert_eq!(config().verify(&token).unwrap_err().message, "invalid token signature");
        }
        // And with only JWKS configured, HS256 is not accepted at all.
        let only_jwks = AuthConfig { hs256_secret: None, ..config() };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &user_claims(),
            &EncodingKey::from_secret(include_bytes!("../testdata/ec_public.pem")),
        )
        .unwrap();
        assert_eq!(only_jwks.verify(&token).unwrap_err().message, "HS256 tokens are not accepted here");
    }

    #[test]
    fn header_cannot_pick_another_algorithm_for_a_jwks_key() {
        // An RS256 header naming the EC key's kid finds no usable key.
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("test-ec".into());
        let key = EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa_private.pem")).unwrap();
        let token = encode(&h, &user_claims(), &key).unwrap();
        assert!(config().verify(&token).unwrap_err().message.contains("no key matches"));
        // That is the failure a JWKS refetch may cure; a known key's token, a bad signature or
        // garbage is not.
        assert!(config().lacks_key_for(Some(&format!("Bearer {token}"))));
        assert!(!config().lacks_key_for(Some(&format!("Bearer {}", es(&user_claims(), Some("test-ec"))))));
        assert!(!config().lacks_key_for(Some(&format!("Bearer {}", hs(&user_claims())))));
        assert!(!config().lacks_key_for(Some("Bearer not.a.jwt")));
        assert!(!config().lacks_key_for(None));
    }

    #[test]
    fn api_keys_need_no_audience_but_are_not_users() {
        let anon = json!({"role": "anon", "iss": "supabase", "exp": now() + 600});
        let p = config().verify(&hs(&anon)).unwrap();
        assert_eq!(p.role, "anon");
        let err = config().require_user(Some(&format!("Bearer {}", hs(&anon)))).unwrap_err();
        assert_eq!(err.status, 401);
    }

    #[test]
    fn issuer_is_enforced_when_configured() {
        let cfg = AuthConfig { issuer: Some("https://x.supabase.co/auth/v1".into()), ..config() };
        assert!(cfg.verify(&hs(&user_claims())).is_err());
        let mut c = user_claims();
        c["iss"] = json!("https://x.supabase.co/auth/v1");
        assert!(cfg.verify(&hs(&c)).is_ok());
    }

    #[test]
    fn bearer_parsing() {
        assert!(bearer_token(None).is_err());
        assert!(bearer_token(Some("Basic abc")).is_err());
        assert!(bearer_token(Some("Bearer ")).is_err());
        assert_eq!(bearer_token(Some("bearer abc")).unwrap(), "abc");
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]

        /// Fuzz: any bearer value is a 401 or a verified principal, never a panic; tokens built
        /// from arbitrary headers and claims (signed with the real secret, so they get past the
        /// signature) are judged by their claims. `./dev fuzz` runs this with many more cases.
        #[test]
        fn any_bearer_value_is_judged(raw in ".{0,300}") {
            let cfg = config();
            match cfg.require_user(Some(&format!("Bearer {raw}"))) {
                Ok((id, _)) => proptest::prop_assert!(uuid::Uuid::parse_str(&id).is_ok()),
                Err(e) => proptest::prop_assert_eq!(e.status, 401),
            }
        }

        #[test]
        fn any_signed_claims_are_judged(claims in proptest::collection::btree_map("[a-z_]{1,6}", proptest::prelude::any::<i64>().prop_map(serde_json::Value::from), 0..6),
                                        sub in proptest::option::of("[0-9a-f-]{0,40}"), role in proptest::option::of("[a-z_]{0,14}")) {
            let mut c = serde_json::Value::Object(claims.into_iter().collect());
            if let Some(sub) = sub { c["sub"] = json!(sub); }
            if let Some(role) = role { c["role"] = json!(role); }
            let token = hs(&c);
            match config().verify(&token) {
                Ok(p) => proptest::prop_assert!(matches!(p.role.as_str(), "authenticated" | "anon" | "service_role")),
                Err(e) => proptest::prop_assert_eq!(e.status, 401),
            }
        }
    }

    #[test]
    fn a_symmetric_key_in_a_jwks_is_ignored() {
        let set = parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"x"}]}"#).unwrap();
        assert!(set.keys.is_empty());
    }
}
