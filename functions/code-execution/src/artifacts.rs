//! What goes into an execution and what is kept of it, in pure form: the `/data` names of the
//! uploads a program reads, the object keys of the charts it drew, and the chart data the
//! sandbox's matplotlib hook writes into each PNG (a `tEXt` chunk), read back without decoding
//! the image.

use serde_json::Value;

/// The `tEXt` keyword the sandbox's `plt.show` hook stores a figure's description under.
pub const CHART_KEYWORD: &str = "chatedge:chart";
/// Largest chart description read from a PNG.
pub const MAX_CHART_BYTES: usize = 256 << 10;

/// The `/data` names for uploads, in order: each upload's own safe name (the last component of
/// its checked storage key), and for a name already taken, the same name prefixed with the
/// first eight characters of its file id, then with the whole id.
pub fn input_names<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (file_id, key_name) in files {
        let short = format!("{}-{key_name}", &file_id[..file_id.len().min(8)]);
        let long = format!("{file_id}-{key_name}");
        let name = [key_name.to_owned(), short, long]
            .into_iter()
            .find(|n| !names.contains(n) && wire::is_safe_file_name(n))
            .unwrap_or_else(|| format!("{file_id}.bin"));
        names.push(name);
    }
    names
}

/// The file extension kept for an image artifact's media type; other artifacts are not stored.
pub fn image_extension(mime_type: &str) -> Option<&'static str> {
    match mime_type {
        "image/png" => Some("png"),
        "image/jpeg" => Some("jpg"),
        "image/svg+xml" => Some("svg"),
        _ => None,
    }
}

/// Where the `index`th image of an execution is stored: under the user's own prefix, named by
/// the execution and position only (the guest chose the artifact's name; it never reaches a key).
pub fn visualization_key(user_id: &str, execution_id: &str, index: usize, extension: &str) -> String {
    format!("{user_id}/visualizations/{execution_id}/{index}.{extension}")
}

/// Whether `key` is a visualization key of this user's, as [`visualization_key`] makes them.
/// Keys are read back from rows the user can write by other paths (PostgREST), so a key is
/// presigned only after this check.
pub fn is_visualization_key(key: &str, user_id: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    let [owner, "visualizations", execution, file] = parts[..] else { return false };
    let Some((index, extension)) = file.split_once('.') else { return false };
    owner == user_id
        && shared::is_uuid(owner)
        && shared::is_uuid(execution)
        && !index.is_empty()
        && index.len() <= 3
        && index.bytes().all(|b| b.is_ascii_digit())
        && ["png", "jpg", "svg"].contains(&extension)
}

/// The chart description in a PNG's `tEXt` chunk [`CHART_KEYWORD`], when present and JSON.
/// Walks the chunk list only (bounded by the data), never inflates anything.
pub fn chart_data(png: &[u8]) -> Option<Value> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let mut rest = png.strip_prefix(SIGNATURE)?;
    while rest.len() >= 12 {
        let length = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let kind = &rest[4..8];
        let body = rest.get(8..8usize.checked_add(length)?)?;
        if kind == b"tEXt" {
            if let Some(split) = body.iter().position(|b| *b == 0) {
                let (keyword, text) = (&body[..split], &body[split + 1..]);
                if keyword == CHART_KEYWORD.as_bytes() && text.len() <= MAX_CHART_BYTES {
                    return serde_json::from_slice(text).ok().filter(Value::is_object);
                }
            }
        }
        if kind == b"IDAT" || kind == b"IEND" {
            // matplotlib writes its text chunks before the image data.
            return None;
        }
        rest = rest.get(8 + length + 4..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "6f1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11";
    const EXEC: &str = "0b7c1d2e-3f40-4a51-8b62-7c83d94e05f6";

    fn chunk(kind: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&[0, 0, 0, 0]); // the CRC is not checked
        out
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(chunk(b"IHDR", &[0; 13]));
        for c in chunks {
            out.extend_from_slice(c);
        }
        out.extend(chunk(b"IEND", b""));
        out
    }

    #[test]
    fn input_names_keep_the_upload_name_and_never_collide() {
        let a = "aaaaaaaa-3a55-4f0e-9a59-0d7b7d7f2a11";
        let b = "bbbbbbbb-3a55-4f0e-9a59-0d7b7d7f2a11";
        let c = "cccccccc-3a55-4f0e-9a59-0d7b7d7f2a11";
        let names = input_names([(a, "sales.csv"), (b, "sales.csv"), (c, "notes.txt")]);
        assert_eq!(names, ["sales.csv", "bbbbbbbb-sales.csv", "notes.txt"]);
        assert!(names.iter().all(|n| wire::is_safe_file_name(n)));
        let odd = input_names([(a, ".x"), (b, "x/y")]);
        assert!(odd.iter().all(|n| wire::is_safe_file_name(n)), "{odd:?}");
    }

    #[test]
    fn visualization_keys_are_made_and_checked_by_shape() {
        let key = visualization_key(USER, EXEC, 2, "png");
        assert_eq!(key, format!("{USER}/visualizations/{EXEC}/2.png"));
        assert!(is_visualization_key(&key, USER));
        let other = "1a1c2a8e-3a55-4f0e-9a59-0d7b7d7f2a11";
        for bad in [
            format!("{other}/visualizations/{EXEC}/2.png"),
            format!("{USER}/visualizations/{EXEC}/../../{other}/x/y.png"),
            format!("{USER}/{EXEC}/report.pdf"),
            format!("{USER}/visualizations/{EXEC}/2.exe"),
            format!("{USER}/visualizations/{EXEC}/.png"),
            format!("{USER}/visualizations/nope/2.png"),
        ] {
            assert!(!is_visualization_key(&bad, USER), "{bad}");
        }
        assert_eq!(image_extension("image/png"), Some("png"));
        assert_eq!(image_extension("text/plain"), None);
    }

    #[test]
    fn chart_data_is_read_from_its_text_chunk_only() {
        let mut text = CHART_KEYWORD.as_bytes().to_vec();
        text.push(0);
        text.extend_from_slice(br#"{"title":"Sales"}"#);
        let with = png(&[chunk(b"tEXt", b"Software\0matplotlib"), chunk(b"tEXt", &text), chunk(b"IDAT", b"x")]);
        assert_eq!(chart_data(&with).unwrap()["title"], "Sales");
        assert_eq!(chart_data(&png(&[chunk(b"tEXt", b"Software\0matplotlib")])), None);
        assert_eq!(chart_data(b"GIF89a"), None);
        // Truncated or lying lengths end the walk.
        let mut cut = with.clone();
        cut.truncate(40);
        assert_eq!(chart_data(&cut), None);
        let mut lying = png(&[]);
        lying[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(chart_data(&lying), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_after_the_signature_never_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
            data.extend(tail);
            let _ = chart_data(&data);
        }
    }
}
