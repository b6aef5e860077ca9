//! Upload validation in pure form: the content's real type from its magic bytes against an
//! allow-list, safe storage names, storage keys.

use shared::ApiError;
use shared::ErrorCode;

/// Largest file accepted unless `upload_max_bytes` says otherwise.
pub const DEFAULT_MAX_BYTES: usize = 10 * 1024 * 1024;

/// Types accepted unless `upload_allowed_types` says otherwise.
pub const DEFAULT_ALLOWED_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "text/markdown",
    "text/csv",
    "application/json",
];

/// Text types a UTF-8 body may be declared as (magic bytes cannot tell them apart).
const TEXT_TYPES: &[&str] = &["text/plain", "text/markdown", "text/csv", "application/json"];

/// Formats refused whatever the allow-list says: executables and scripts a browser or OS runs.
const NEVER: &[&str] = &[
    "application/x-executable",
    "application/x-elf",
    "application/x-msdownload",
    "application/vnd.microsoft.portable-executable",
    "application/x-mach-binary",
    "application/wasm",
    "application/x-sh",
    "text/html",
    "image/svg+xml",
];

fn essence(mime: &str) -> String {
    mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// What the bytes are: a known binary format by its signature, `text/plain` for UTF-8 text
/// without NULs, `None` for anything else.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if let Some(kind) = infer::get(bytes) {
        return Some(kind.mime_type());
    }
    let head = &bytes[..bytes.len().min(8192)];
    let text = !head.contains(&0)
        && match std::str::from_utf8(head) {
            Ok(_) => true,
            // A multi-byte character cut at the 8 KiB boundary is still text.
            Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
        };
    let lower = String::from_utf8_lossy(&head[..head.len().min(512)]).trim_start().to_ascii_lowercase();
    if text && (lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.starts_with("<svg")) {
        return Some("text/html");
    }
    text.then_some("text/plain")
}

/// The type the file is stored as. Refuses with 415 when the content is not an allowed type,
/// or is not what its declared type says (an executable named `.png` sent as `image/png`).
pub fn check_type(declared: Option<&str>, bytes: &[u8], allowed: &[String]) -> Result<String, ApiError> {
    let unsupported = |m: String| ApiError::new(415, ErrorCode::UnsupportedMediaType, m);
    let sniffed = sniff(bytes).ok_or_else(|| unsupported("the file's content is not a recognised type".into()))?;
    if NEVER.contains(&sniffed) {
        return Err(unsupported(format!("{sniffed} files are not accepted")));
    }
    let declared = declared.map(essence).filter(|d| !d.is_empty() && d != "application/octet-stream");
    let effective = if sniffed == "text/plain" {
        match declared {
            Some(d) if TEXT_TYPES.contains(&d.as_str()) => d,
            Some(d) if d.starts_with("text/") => "text/plain".to_owned(),
            Some(d) => return Err(unsupported(format!("declared {d} but the content is text"))),
            None => "text/plain".to_owned(),
        }
    } else {
        if let Some(d) = &declared {
            if d != sniffed {
                return Err(unsupported(format!("declared {d} but the content is {sniffed}")));
            }
        }
        sniffed.to_owned()
    };
    if !allowed.iter().any(|a| essence(a) == effective) {
        return Err(unsupported(format!("{effective} is not an accepted type")).with_detail("accepted", allowed));
    }
    Ok(effective)
}

const WINDOWS_RESERVED: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8", "com9", "lpt1", "lpt2",
    "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// A file name made safe for a storage key, and the original kept for display (control
/// characters removed, at most 255 characters). The safe name is the last path component in
/// `[A-Za-z0-9._-]`, no leading dots, no reserved device names, at most 100 characters with the
/// extension kept.
pub fn sanitize_name(raw: &str) -> Result<(String, String), ApiError> {
    let cleaned: String = raw.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned();
    if cleaned.is_empty() {
        return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "the file needs a name"));
    }
    let display: String = cleaned.chars().take(255).collect();
    let last = cleaned.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut safe: String =
        last.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    while safe.contains("__") {
        safe = safe.replace("__", "_");
    }
    let safe = safe.trim_start_matches('.').trim_end_matches(['.', ' ']).to_owned();
    let mut safe = if safe.is_empty() { "file".to_owned() } else { safe };
    let stem = safe.split('.').next().unwrap_or_default().to_ascii_lowercase();
    if WINDOWS_RESERVED.contains(&stem.as_str()) {
        safe = format!("_{safe}");
    }
    if safe.len() > 100 {
        let (stem, ext) = match safe.rsplit_once('.') {
            Some((s, e)) if e.len() <= 10 => (s.to_owned(), format!(".{e}")),
            _ => (safe.clone(), String::new()),
        };
        safe = format!("{}{ext}", &stem[..100 - ext.len()]);
    }
    Ok((safe, display))
}

/// The object key: `<user_id>/<uuid>/<safe name>`.
pub fn storage_key(user_id: &str, id: &str, safe_name: &str) -> String {
    format!("{user_id}/{id}/{safe_name}")
}

/// `key` if it has exactly the shape this function gives keys, `<user_id>/<file id>/<safe
/// name>`, for the caller and that row: keys are read back from rows a user can reach through
/// other paths (PostgREST), and the S3 signer resolves `..`, so a key that merely starts with
/// the right prefix (`me/../victim/x`, `../other-bucket/x`) would reach other users' objects.
pub fn checked_key<'k>(key: &'k str, user_id: &str, file_id: &str) -> Option<&'k str> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let shaped = shared::storage::is_upload_key(key, user_id, file_id)
        && sanitize_name(name).is_ok_and(|(safe, _)| safe == name);
    shaped.then_some(key)
}

/// The allow-list from `upload_allowed_types` (comma separated), or the defaults.
pub fn allowed_types(var: Option<&str>) -> Vec<String> {
    match var.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => v.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect(),
        None => DEFAULT_ALLOWED_TYPES.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0\x01\0\0\0";
    const PE: &[u8] = b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff\0\0";

    fn allowed() -> Vec<String> {
        allowed_types(None)
    }

    #[test]
    fn content_decides_not_the_label() {
        assert_eq!(check_type(Some("image/png"), PNG, &allowed()).unwrap(), "image/png");
        assert_eq!(check_type(None, PNG, &allowed()).unwrap(), "image/png");
        assert_eq!(check_type(Some("application/octet-stream"), PNG, &allowed()).unwrap(), "image/png");
        for (declared, bytes) in
            [(Some("image/png"), ELF), (Some("image/png"), PE), (None, ELF), (Some("text/plain"), PNG)]
        {
            assert_eq!(check_type(declared, bytes, &allowed()).unwrap_err().status, 415, "{declared:?}");
        }
        assert_eq!(check_type(Some("image/jpeg"), PNG, &allowed()).unwrap_err().status, 415);
        assert_eq!(
            check_type(Some("text/html"), b"<!DOCTYPE html><script>x</script>", &allowed()).unwrap_err().status,
            415
        );
        assert_eq!(check_type(None, &[0u8, 1, 2, 3, 0, 0, 7], &allowed()).unwrap_err().status, 415);
    }

    #[test]
    fn text_takes_its_declared_text_type() {
        assert_eq!(check_type(Some("text/csv; charset=utf-8"), b"a,b\n1,2\n", &allowed()).unwrap(), "text/csv");
        assert_eq!(check_type(Some("application/json"), b"{\"a\":1}", &allowed()).unwrap(), "application/json");
        assert_eq!(check_type(Some("text/x-python"), b"print(1)", &allowed()).unwrap(), "text/plain");
        assert_eq!(check_type(Some("image/png"), b"not a png", &allowed()).unwrap_err().status, 415);
        let only_png = vec!["image/png".to_owned()];
        assert_eq!(check_type(None, b"hello", &only_png).unwrap_err().status, 415);
    }

    #[test]
    fn names_are_made_safe_and_the_original_kept() {
        assert_eq!(sanitize_name("report.pdf").unwrap(), ("report.pdf".into(), "report.pdf".into()));
        assert_eq!(sanitize_name("../../etc/passwd").unwrap().0, "passwd");
        assert_eq!(sanitize_name("..\\..\\boot.ini").unwrap().0, "boot.ini");
        assert_eq!(sanitize_name("my photo (1).png").unwrap(), ("my_photo_1_.png".into(), "my photo (1).png".into()));
        assert_eq!(sanitize_name("CON.txt").unwrap().0, "_CON.txt");
        assert_eq!(sanitize_name(".htaccess").unwrap().0, "htaccess");
        assert_eq!(sanitize_name("a\u{0}b\nc.txt").unwrap().1, "abc.txt");
        assert_eq!(sanitize_name("日本語.txt").unwrap().0, "_.txt");
        assert_eq!(sanitize_name("....").unwrap().0, "file");
        let long = format!("{}.png", "x".repeat(300));
        let safe = sanitize_name(&long).unwrap().0;
        assert_eq!(safe.len(), 100);
        assert!(safe.ends_with(".png"));
        assert!(sanitize_name("  \u{7}").is_err());
    }

    #[test]
    fn only_keys_of_our_own_shape_are_used() {
        let (user, file) = ("6f1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11", "0b7c1d2e-3f40-4a51-8b62-7c83d94e05f6");
        let good = format!("{user}/{file}/report.pdf");
        assert_eq!(checked_key(&good, user, file), Some(good.as_str()));
        let other = "1a1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11";
        for bad in [
            format!("{user}/../{other}/{file}/x.pdf"),
            format!("{user}/{file}/../../other-bucket/x"),
            format!("../other-bucket/{user}/{file}/x"),
            format!("{other}/{file}/report.pdf"),
            format!("{user}/{other}/report.pdf"),
            format!("{user}/{file}/.."),
            format!("{user}/{file}/.hidden"),
            format!("{user}/{file}/a b.pdf"),
            format!("{user}/{file}/x/y.pdf"),
            format!("{user}/{file}/"),
            format!("{user}/{file}/%2e%2e"),
            "".to_owned(),
        ] {
            assert_eq!(checked_key(&bad, user, file), None, "{bad}");
        }
    }

    #[test]
    fn keys_and_allow_lists() {
        assert_eq!(storage_key("u", "i", "a.png"), "u/i/a.png");
        assert_eq!(allowed_types(Some("image/png, TEXT/PLAIN")), vec!["image/png", "text/plain"]);
        assert_eq!(allowed_types(Some(" ")).len(), DEFAULT_ALLOWED_TYPES.len());
    }
}
