//! Request signing between the code-execution function and the sandbox service: HMAC-SHA256 over
//! `"<unix seconds>.<body>"` with a shared secret, carried in two headers. The timestamp bounds
//! replay; the constant-time comparison comes from `hmac`'s `verify_slice`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header with the signing time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-chatedge-timestamp";
/// Header with the lowercase hex HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-chatedge-signature";
/// How far a signature's timestamp may lie from the verifier's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a signed request was refused (each is a 401 at the sandbox).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// No timestamp or signature header, or not in the expected form.
    #[error("request is not signed")]
    Missing,
    /// The timestamp is further than `MAX_SKEW_SECS` from now.
    #[error("signature timestamp is stale")]
    Stale,
    /// The signature does not match the body and timestamp.
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The hex signature for `body` signed at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the two header values against `body` at time `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    now: i64,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Missing)?;
    let tag = decode_hex(signature.trim()).ok_or(SignatureError::Missing)?;
    if (now - timestamp).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    mac(secret, timestamp, body).verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
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

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let sig = sign(b"secret", 1_000, b"{\"code\":\"print(1)\"}");
        let ok = verify(b"secret", 1_010, Some("1000"), Some(&sig), b"{\"code\":\"print(1)\"}");
        assert_eq!(ok, Ok(()));
        let other_body = verify(b"secret", 1_010, Some("1000"), Some(&sig), b"{\"code\":\"print(2)\"}");
        assert_eq!(other_body, Err(SignatureError::Mismatch));
        let other_secret = verify(b"other", 1_010, Some("1000"), Some(&sig), b"{\"code\":\"print(1)\"}");
        assert_eq!(other_secret, Err(SignatureError::Mismatch));
        let moved_time = verify(b"secret", 1_010, Some("1001"), Some(&sig), b"{\"code\":\"print(1)\"}");
        assert_eq!(moved_time, Err(SignatureError::Mismatch));
    }

    #[test]
    fn stale_and_unsigned_requests_are_refused() {
        let sig = sign(b"k", 0, b"x");
        assert_eq!(verify(b"k", 301, Some("0"), Some(&sig), b"x"), Err(SignatureError::Stale));
        assert_eq!(verify(b"k", -301, Some("0"), Some(&sig), b"x"), Err(SignatureError::Stale));
        assert_eq!(verify(b"k", 0, None, Some(&sig), b"x"), Err(SignatureError::Missing));
        assert_eq!(verify(b"k", 0, Some("0"), None, b"x"), Err(SignatureError::Missing));
        assert_eq!(verify(b"k", 0, Some("zero"), Some(&sig), b"x"), Err(SignatureError::Missing));
        assert_eq!(verify(b"k", 0, Some("0"), Some("abc"), b"x"), Err(SignatureError::Missing));
    }
}
