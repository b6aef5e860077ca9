//! The pure part of uploads, native and tested natively: reading a multipart body under a cap
//! and validating each file (name, type by content, key). The component (`component.rs`, wasm
//! only) does the I/O.

use crate::upload;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sha2::Digest;
use shared::ApiError;
use shared::ErrorCode;

/// Most files in one request.
pub const MAX_FILES: usize = 10;

/// One received file, validated.
#[derive(Debug)]
pub struct Received {
    /// The name as the client gave it, for display (control characters removed).
    pub display_name: String,
    /// The name in the storage key.
    pub safe_name: String,
    /// The type decided by the content.
    pub mime: String,
    /// The content, unless it was streamed to storage already.
    pub bytes: Vec<u8>,
    /// Bytes in all.
    pub size: usize,
    /// Whether the object is in storage already (a streamed raw upload).
    pub stored: bool,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// The row's id, also the key's middle part.
    pub id: String,
    /// `<user>/<id>/<safe name>`.
    pub key: String,
}

/// A file's checks (not empty, a safe name, an allowed type by its bytes) and its key; the
/// hash is computed unless the caller already streamed it.
pub fn validate(
    user_id: &str,
    name: &str,
    declared: Option<&str>,
    bytes: Vec<u8>,
    sha256: Option<String>,
    allowed: &[String],
) -> Result<Received, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(ErrorCode::EmptyFile, format!("'{name}' is empty")));
    }
    let (safe_name, display_name) = upload::sanitize_name(name)?;
    let mime = upload::check_type(declared, &bytes, allowed)?;
    let sha256 = sha256.unwrap_or_else(|| hex(&sha2::Sha256::digest(&bytes)));
    let id = uuid::Uuid::new_v4().to_string();
    let key = upload::storage_key(user_id, &id, &safe_name);
    Ok(Received { display_name, safe_name, mime, size: bytes.len(), bytes, stored: false, sha256, id, key })
}

/// The error multer yields when our byte counter stops the stream.
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body too large")
    }
}

impl std::error::Error for TooLarge {}

pub async fn read_multipart<E>(
    stream: impl futures::Stream<Item = Result<Vec<u8>, E>>,
    content_type: &str,
    cap: usize,
    limit: usize,
    user_id: &str,
    allowed: &[String],
) -> Result<(Vec<Received>, Option<String>), ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::bad_request(ErrorCode::InvalidMultipart, "multipart/form-data needs a boundary"))?;
    // multer wants a Send stream and WASI streams are not: the body is pumped through a channel
    // (one chunk in flight), counted on the way, and the pump stops the moment it passes `limit`.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, TooLarge>>(1);
    let pump = async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = 0usize;
        while let Some(chunk) = stream.next().await {
            let item = match chunk {
                Ok(c) if seen + c.len() <= limit => {
                    seen += c.len();
                    Ok(Bytes::from(c))
                }
                _ => Err(TooLarge),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    };
    let parse = parse_parts(rx, boundary, cap, user_id, allowed);
    let ((), parsed) = futures::join!(pump, parse);
    parsed
}

async fn parse_parts(
    rx: futures::channel::mpsc::Receiver<Result<Bytes, TooLarge>>,
    boundary: String,
    cap: usize,
    user_id: &str,
    allowed: &[String],
) -> Result<(Vec<Received>, Option<String>), ApiError> {
    let mut parts = multer::Multipart::new(rx, boundary);
    let too_large = || ApiError::payload_too_large(cap);
    let malformed = |e: multer::Error| match e {
        multer::Error::StreamReadFailed(_) => too_large(),
        other => ApiError::bad_request(ErrorCode::InvalidMultipart, format!("malformed multipart body: {other}")),
    };
    let mut files = Vec::new();
    let mut conversation_id = None;
    while let Some(mut field) = parts.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let declared = field.content_type().map(|m| m.to_string());
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            if bytes.len() + chunk.len() > cap {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        match file_name {
            Some(file_name) => {
                if files.len() == MAX_FILES {
                    return Err(ApiError::bad_request(
                        ErrorCode::TooManyFiles,
                        format!("at most {MAX_FILES} files per request"),
                    ));
                }
                files.push(validate(user_id, &file_name, declared.as_deref(), bytes, None, allowed)?);
            }
            None if name == "conversation_id" => {
                let text = String::from_utf8(bytes).unwrap_or_default().trim().to_ascii_lowercase();
                if !shared::is_uuid(&text) {
                    return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "conversation_id must be a UUID"));
                }
                conversation_id = Some(text);
            }
            None => {} // other form fields are ignored
        }
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "no file in the form (a part with a filename)"));
    }
    Ok((files, conversation_id))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const USER: &str = "6f1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11";

    fn parse(body: &[u8], chunk: usize, cap: usize) -> Result<(Vec<Received>, Option<String>), ApiError> {
        let chunks: Vec<Result<Vec<u8>, ()>> = body.chunks(chunk.max(1)).map(|c| Ok(c.to_vec())).collect();
        let allowed = upload::allowed_types(None);
        futures::executor::block_on(read_multipart(
            futures::stream::iter(chunks),
            "multipart/form-data; boundary=XyZ",
            cap,
            cap + 4096,
            USER,
            &allowed,
        ))
    }

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: text/plain\r\n\r\n").as_bytes()),
                None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn files_and_the_conversation_come_out_validated() {
        let body = form(&[
            ("file", Some("../../notes.txt"), b"hello"),
            ("conversation_id", None, b"0B7C1D2E-3F40-4A51-8B62-7C83D94E05F6"),
        ]);
        let (files, conversation) = parse(&body, 7, 1 << 20).expect("valid");
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].safe_name.as_str(), files[0].mime.as_str(), files[0].size),
            ("notes.txt", "text/plain", 5)
        );
        assert!(files[0].key.starts_with(&format!("{USER}/")) && files[0].key.ends_with("/notes.txt"));
        assert_eq!(conversation.as_deref(), Some("0b7c1d2e-3f40-4a51-8b62-7c83d94e05f6"));
    }

    #[test]
    fn a_part_past_the_cap_is_413() {
        let big = vec![b'a'; 5000];
        let body = form(&[("file", Some("a.txt"), &big)]);
        assert_eq!(parse(&body, 512, 4096).unwrap_err().status, 413);
        let many: Vec<(&str, Option<&str>, &[u8])> =
            (0..=MAX_FILES).map(|_| ("file", Some("a.txt"), &b"x"[..])).collect();
        assert_eq!(parse(&form(&many), 64, 1 << 20).unwrap_err().code.as_str(), "too_many_files");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)))]

        /// Fuzz: any body, in any chunking, is parsed or refused with a 4xx; nothing panics and
        /// nothing past the cap is kept. `./dev fuzz` runs this with many more cases.
        #[test]
        fn any_body_any_chunking(noise in proptest::collection::vec(any::<u8>(), 0..1024), chunk in 1usize..300, keep in 0usize..3) {
            let base = form(&[("file", Some("f.csv"), b"a,b\n1,2\n"), ("other", None, b"x")]);
            // Splice noise into a valid form at a point that depends on `keep`, or use it alone.
            let body = match keep {
                0 => noise.clone(),
                1 => { let mut b = base[..base.len() / 2].to_vec(); b.extend(&noise); b }
                _ => { let mut b = noise.clone(); b.extend(&base); b }
            };
            match parse(&body, chunk, 2048) {
                Ok((files, _)) => prop_assert!(files.iter().all(|f| f.size <= 2048)),
                Err(e) => prop_assert!((400..500).contains(&e.status), "{e:?}"),
            }
        }
    }
}
