//! Validation of conversation create / update bodies.

use serde::Deserialize;
use shared::ApiError;
use shared::ErrorCode;

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest system prompt, in characters.
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 32_000;
/// Title given when the client sends none.
pub const DEFAULT_TITLE: &str = "New conversation";

/// `POST /conversations` body as clients send it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    pub title: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    pub system_prompt: Option<String>,
}

/// A create body after validation.
#[derive(Debug, PartialEq)]
pub struct NewConversation {
    pub title: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i32>,
    pub system_prompt: Option<String>,
}

/// `PATCH /conversations/:id` body: rename and/or archive.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    pub title: Option<String>,
    pub archived: Option<bool>,
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::bad_request(ErrorCode::ValidationFailed, message).with_detail("field", field)
}

/// Trims and bounds a title; empty after trimming or containing control characters is refused.
pub fn validate_title(raw: &str) -> Result<String, ApiError> {
    let title = raw.trim();
    if title.is_empty() {
        return Err(invalid("title", "title must not be empty".into()));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(invalid("title", format!("title must be at most {MAX_TITLE_CHARS} characters")));
    }
    if title.chars().any(char::is_control) {
        return Err(invalid("title", "title must not contain control characters".into()));
    }
    Ok(title.to_owned())
}

fn short_token(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => {
            let ok = !v.is_empty()
                && v.len() <= max
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
            if ok {
                Ok(Some(v))
            } else {
                Err(invalid(field, format!("{field} must be 1-{max} characters of [A-Za-z0-9-_.:/@]")))
            }
        }
    }
}

impl CreateConversation {
    /// Checks every field; the first problem becomes a 400 naming the field.
    pub fn validate(self) -> Result<NewConversation, ApiError> {
        let title = match self.title {
            Some(t) => validate_title(&t)?,
            None => DEFAULT_TITLE.to_owned(),
        };
        let provider = short_token("provider", self.provider, 64)?;
        let model = short_token("model", self.model, 128)?;
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(invalid("temperature", "temperature must be between 0 and 2".into()));
            }
        }
        let max_tokens = match self.max_tokens {
            None => None,
            Some(n) if (1..=1_000_000).contains(&n) => Some(n as i32),
            Some(_) => return Err(invalid("max_tokens", "max_tokens must be between 1 and 1000000".into())),
        };
        if let Some(p) = &self.system_prompt {
            if p.chars().count() > MAX_SYSTEM_PROMPT_CHARS {
                return Err(invalid(
                    "system_prompt",
                    format!("system_prompt must be at most {MAX_SYSTEM_PROMPT_CHARS} characters"),
                ));
            }
        }
        Ok(NewConversation {
            title,
            provider,
            model,
            temperature: self.temperature,
            max_tokens,
            system_prompt: self.system_prompt,
        })
    }
}

impl UpdateConversation {
    /// Returns the validated new title (if any) and archive flag; an empty patch is a 400.
    pub fn validate(self) -> Result<(Option<String>, Option<bool>), ApiError> {
        if self.title.is_none() && self.archived.is_none() {
            return Err(ApiError::bad_request(ErrorCode::ValidationFailed, "send at least one of: title, archived"));
        }
        let title = self.title.as_deref().map(validate_title).transpose()?;
        Ok((title, self.archived))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_trimming() {
        let c = CreateConversation::default().validate().unwrap();
        assert_eq!(c.title, DEFAULT_TITLE);
        let c = CreateConversation { title: Some("  Hi  ".into()), ..Default::default() }.validate().unwrap();
        assert_eq!(c.title, "Hi");
    }

    #[test]
    fn title_bounds_count_characters_not_bytes() {
        assert!(validate_title(&"é".repeat(MAX_TITLE_CHARS)).is_ok());
        let err = validate_title(&"a".repeat(MAX_TITLE_CHARS + 1)).unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "title");
        assert!(validate_title("   ").is_err());
        assert!(validate_title("a\u{0}b").is_err());
    }

    #[test]
    fn numeric_ranges() {
        let bad_t = CreateConversation { temperature: Some(2.5), ..Default::default() };
        assert!(bad_t.validate().is_err());
        let bad_m = CreateConversation { max_tokens: Some(0), ..Default::default() };
        assert!(bad_m.validate().is_err());
        let ok = CreateConversation {
            temperature: Some(0.7),
            max_tokens: Some(1024),
            model: Some("gpt-4o-mini".into()),
            ..Default::default()
        };
        assert_eq!(ok.validate().unwrap().max_tokens, Some(1024));
    }

    #[test]
    fn provider_and_model_are_tokens() {
        let bad = CreateConversation { model: Some("gpt 4; drop".into()), ..Default::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn empty_patch_is_refused() {
        assert!(UpdateConversation::default().validate().is_err());
        assert_eq!(UpdateConversation { archived: Some(true), title: None }.validate().unwrap(), (None, Some(true)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<CreateConversation>(r#"{"titel":"x"}"#).is_err());
    }
}
