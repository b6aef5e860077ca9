//! Request signing between the code-execution function and the sandbox service: HMAC-SHA256 over
//! `"<unix seconds>.<nonce>.<body>"` with a shared secret, carried in three headers. The
//! timestamp bounds how long a signature is worth anything; the nonce lets the verifier refuse a
//! signature it has seen before (a captured request replayed), while two honest requests with the
//! same body in the same second still differ. The constant-time comparison is `hmac`'s
//! `verify_slice`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header with the signing time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-chatedge-timestamp";
/// Header with a random value, 16 to 64 characters of `[A-Za-z0-9_-]`, never used twice.
pub const NONCE_HEADER: &str = "x-chatedge-nonce";
/// Header with the lowercase hex HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-chatedge-signature";
/// How far a signature's timestamp may lie from the verifier's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a signed request was refused (each is a 401 at the sandbox).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A header is missing, or not in the expected form.
    #[error("request is not signed")]
    Missing,
    /// The timestamp is further than `MAX_SKEW_SECS` from now.
    #[error("signature timestamp is stale")]
    Stale,
    /// The signature does not match the body, nonce and timestamp.
    #[error("signature does not match")]
    Mismatch,
    /// This nonce was seen already: a replay.
    #[error("signature was already used")]
    Replayed,
}

fn mac(secret: &[u8], timestamp: i64, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(nonce.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The hex signature for `body` signed at `timestamp` (unix seconds) with `nonce`.
pub fn sign(secret: &[u8], timestamp: i64, nonce: &str, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, nonce, body).finalize().into_bytes();
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signing headers a request carries, parsed and checked for form and freshness before its
/// body is read: a request that fails here costs the verifier nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// Unix seconds.
    pub timestamp: i64,
    /// The nonce, as sent.
    pub nonce: String,
    tag: Vec<u8>,
}

impl SignedHeaders {
    /// Parses the three header values and checks the timestamp against `now`.
    pub fn parse(
        now: i64,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
    ) -> Result<Self, SignatureError> {
        let (Some(timestamp), Some(nonce), Some(signature)) = (timestamp, nonce, signature) else {
            return Err(SignatureError::Missing);
        };
        let timestamp: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Missing)?;
        let nonce = nonce.trim();
        if !(16..=64).contains(&nonce.len())
            || !nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SignatureError::Missing);
        }
        let tag = decode_hex(signature.trim()).ok_or(SignatureError::Missing)?;
        if now.abs_diff(timestamp) > MAX_SKEW_SECS as u64 {
            return Err(SignatureError::Stale);
        }
        Ok(SignedHeaders { timestamp, nonce: nonce.to_owned(), tag })
    }

    /// Checks the signature against `body`.
    pub fn verify(&self, secret: &[u8], body: &[u8]) -> Result<(), SignatureError> {
        mac(secret, self.timestamp, &self.nonce, body).verify_slice(&self.tag).map_err(|_| SignatureError::Mismatch)
    }
}

/// Checks the three header values against `body` at time `now` (unix seconds). Replays are the
/// caller's to refuse ([`SeenNonces`]).
pub fn verify(
    secret: &[u8],
    now: i64,
    timestamp: Option<&str>,
    nonce: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<SignedHeaders, SignatureError> {
    let headers = SignedHeaders::parse(now, timestamp, nonce, signature)?;
    headers.verify(secret, body)?;
    Ok(headers)
}

/// Nonces of verified requests still inside the freshness window: a second request with one
/// of them is a replay. Bounded: entries expire with the window, and past `capacity` live
/// entries new requests are refused until some expire (only requests with a valid signature
/// are ever recorded, so only the secret's holder can fill it).
#[derive(Debug)]
pub struct SeenNonces {
    expiry_by_nonce: std::collections::HashMap<String, i64>,
    capacity: usize,
}

impl SeenNonces {
    /// Room for `capacity` nonces at once.
    pub fn new(capacity: usize) -> Self {
        SeenNonces { expiry_by_nonce: std::collections::HashMap::new(), capacity }
    }

    /// Records a verified request's nonce; a nonce already recorded is a replay.
    pub fn record(&mut self, now: i64, headers: &SignedHeaders) -> Result<(), SignatureError> {
        if self.expiry_by_nonce.len() >= self.capacity {
            self.expiry_by_nonce.retain(|_, expiry| *expiry >= now);
        }
        if self.expiry_by_nonce.contains_key(&headers.nonce) || self.expiry_by_nonce.len() >= self.capacity {
            return Err(SignatureError::Replayed);
        }
        // Valid until its timestamp leaves the window.
        self.expiry_by_nonce.insert(headers.nonce.clone(), headers.timestamp.saturating_add(MAX_SKEW_SECS));
        Ok(())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef0123";

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_nonce_and_time() {
        let body = b"{\"code\":\"print(1)\"}";
        let sig = sign(b"secret", 1_000, NONCE, body);
        assert!(verify(b"secret", 1_010, Some("1000"), Some(NONCE), Some(&sig), body).is_ok());
        let check = |secret: &[u8], ts: &str, nonce: &str, body: &[u8]| {
            verify(secret, 1_010, Some(ts), Some(nonce), Some(&sig), body).map(|_| ())
        };
        assert_eq!(check(b"secret", "1000", NONCE, b"{\"code\":\"print(2)\"}"), Err(SignatureError::Mismatch));
        assert_eq!(check(b"other", "1000", NONCE, body), Err(SignatureError::Mismatch));
        assert_eq!(check(b"secret", "1001", NONCE, body), Err(SignatureError::Mismatch));
        assert_eq!(check(b"secret", "1000", "0123456789abcdef0124", body), Err(SignatureError::Mismatch));
    }

    #[test]
    fn stale_and_unsigned_requests_are_refused_before_the_body_is_read() {
        let sig = sign(b"k", 0, NONCE, b"x");
        let parse = |now, ts, nonce, sig| SignedHeaders::parse(now, ts, nonce, sig).map(|_| ());
        assert_eq!(parse(301, Some("0"), Some(NONCE), Some(sig.as_str())), Err(SignatureError::Stale));
        assert_eq!(parse(-301, Some("0"), Some(NONCE), Some(sig.as_str())), Err(SignatureError::Stale));
        assert_eq!(parse(0, None, Some(NONCE), Some(sig.as_str())), Err(SignatureError::Missing));
        assert_eq!(parse(0, Some("0"), None, Some(sig.as_str())), Err(SignatureError::Missing));
        assert_eq!(parse(0, Some("0"), Some(NONCE), None), Err(SignatureError::Missing));
        assert_eq!(parse(0, Some("zero"), Some(NONCE), Some(sig.as_str())), Err(SignatureError::Missing));
        assert_eq!(parse(0, Some("0"), Some(NONCE), Some("abc")), Err(SignatureError::Missing));
        assert_eq!(parse(0, Some("0"), Some("short"), Some(sig.as_str())), Err(SignatureError::Missing));
        assert_eq!(
            parse(0, Some("0"), Some("0123456789abcdef 0123"), Some(sig.as_str())),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            parse(i64::MIN, Some("9223372036854775807"), Some(NONCE), Some(sig.as_str())),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn a_nonce_is_accepted_once_and_forgotten_after_the_window() {
        let sig = sign(b"k", 100, NONCE, b"x");
        let headers = verify(b"k", 100, Some("100"), Some(NONCE), Some(&sig), b"x").expect("valid");
        let mut seen = SeenNonces::new(2);
        assert_eq!(seen.record(100, &headers), Ok(()));
        assert_eq!(seen.record(150, &headers), Err(SignatureError::Replayed));
        let other = |n: &str| SignedHeaders { timestamp: 100, nonce: n.to_owned(), tag: Vec::new() };
        assert_eq!(seen.record(150, &other("bbbbbbbbbbbbbbbbbbbb")), Ok(()));
        assert_eq!(seen.record(150, &other("cccccccccccccccccccc")), Err(SignatureError::Replayed), "full");
        // Once the window has passed the old entries make room (their requests would be stale).
        assert_eq!(seen.record(100 + MAX_SKEW_SECS + 1, &other("dddddddddddddddddddd")), Ok(()));
    }
}
