//! Opaque keyset cursors: `(created_at, id)` of the last row a page showed.
//!
//! Keyset (not offset) pagination stays correct while rows are inserted and costs one index
//! range scan per page.

use crate::error::ApiError;
use crate::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: u32 = 20;
/// The largest page a client may ask for.
pub const MAX_LIMIT: u32 = 100;

/// Position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` as microseconds since the Unix epoch (Postgres' own precision).
    pub created_at_micros: i64,
    /// Tie-breaker for rows created in the same microsecond.
    pub id: uuid::Uuid,
}

impl Cursor {
    /// The opaque string handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at_micros, self.id))
    }

    /// Parses a client-supplied cursor; anything we did not produce is a 400.
    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request(ErrorCode::InvalidCursor, "cursor is not one this API returned");
        if raw.len() > 128 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
        let (micros, id) = text.split_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            created_at_micros: micros.parse().map_err(|_| bad())?,
            id: uuid::Uuid::parse_str(id).map_err(|_| bad())?,
        })
    }
}

/// A keyset page from a JSON array of `[row, created_at micros, id]` triples fetched with
/// `limit + 1` entries: `{"data": [rows...], "next_cursor": ... | null, "has_more": bool}`.
pub fn page(rows_json: &str, limit: u32) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::internal(format!("unexpected page from the database: {why}"));
    let rows: Vec<(serde_json::Value, i64, uuid::Uuid)> =
        serde_json::from_str(rows_json).map_err(|e| bad(&e.to_string()))?;
    let has_more = rows.len() > limit as usize;
    let shown = &rows[..rows.len().min(limit as usize)];
    let next_cursor = match (has_more, shown.last()) {
        (true, Some((_, micros, id))) => {
            serde_json::Value::String(Cursor { created_at_micros: *micros, id: *id }.encode())
        }
        _ => serde_json::Value::Null,
    };
    let data: Vec<&serde_json::Value> = shown.iter().map(|(row, _, _)| row).collect();
    serde_json::to_string(&serde_json::json!({"data": data, "next_cursor": next_cursor, "has_more": has_more}))
        .map_err(|e| bad(&e.to_string()))
}

/// Parses `limit` from a query string value: default when absent, 400 when out of range or
/// empty (`limit=` is not a number; the OpenAPI document says integer).
pub fn parse_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                ErrorCode::InvalidLimit,
                format!("limit must be an integer from 1 to {MAX_LIMIT}"),
            )
            .with_detail("field", "limit")),
        },
    }
}

/// Decodes `application/x-www-form-urlencoded` query pairs (percent and `+` decoding).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The first value of `name` in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query_pairs(query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

// Hand-written: four lines do not justify a dependency, and this decodes only query strings.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor { created_at_micros: 1_763_780_000_123_456, id: uuid::Uuid::new_v4() };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn garbage_cursors_are_400() {
        for raw in ["", "!!!", "bm90LWEtY3Vyc29y", &"A".repeat(200), &URL_SAFE_NO_PAD.encode("12:not-a-uuid")] {
            let err = Cursor::decode(raw).unwrap_err();
            assert_eq!((err.status, err.code.as_str()), (400, "invalid_cursor"), "{raw}");
        }
    }

    #[test]
    fn pages_from_aggregated_rows() {
        let id = uuid::Uuid::new_v4();
        let rows = format!(r#"[[{{"id":"a"}},10,"{id}"],[{{"id":"b"}},9,"{id}"],[{{"id":"c"}},8,"{id}"]]"#);
        let p: serde_json::Value = serde_json::from_str(&page(&rows, 2).unwrap()).unwrap();
        assert_eq!(p["data"], serde_json::json!([{"id": "a"}, {"id": "b"}]));
        assert_eq!(p["has_more"], true);
        assert_eq!(Cursor::decode(p["next_cursor"].as_str().unwrap()).unwrap(), Cursor { created_at_micros: 9, id });
        let last: serde_json::Value = serde_json::from_str(&page(&rows, 3).unwrap()).unwrap();
        assert_eq!(
            (last["has_more"].clone(), last["next_cursor"].clone()),
            (serde_json::json!(false), serde_json::Value::Null)
        );
        let empty: serde_json::Value = serde_json::from_str(&page("[]", 20).unwrap()).unwrap();
        assert_eq!(empty["data"], serde_json::json!([]));
        assert!(page("{", 1).is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("5")).unwrap(), 5);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("101")).is_err());
        assert!(parse_limit(Some("x")).is_err());
        assert!(parse_limit(Some("")).is_err());
    }

    #[test]
    fn query_decoding() {
        assert_eq!(query_param("a=1&cursor=x%3Dy+z&b", "cursor").as_deref(), Some("x=y z"));
        assert_eq!(query_param("?limit=3", "limit").as_deref(), Some("3"));
        assert_eq!(query_param("a=%zz%", "a").as_deref(), Some("%zz%"));
        assert_eq!(query_param("a=1", "b"), None);
    }
}
