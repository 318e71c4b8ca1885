//! Request field parsing shared by the endpoints: typed access to JSON fields (wrong type →
//! 400), the common enumerations (quality, output format, `n`), URLs and base64 images.
//!
//! `null` counts as absent. Base64 images may carry a `data:<mime>;base64,` prefix and use the
//! standard or URL-safe alphabet, padded or not; they must decode to PNG, JPEG or WEBP bytes.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{Map, Value};

use super::api::ApiError;
use super::render::{sniff, Format, Kind};

/// The top-level fields of a JSON request body.
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    /// Parses a body that must be a JSON object.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
            Err(e) => Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
        }
    }

    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
    }

    /// The whole body, as sent.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::bad_request(format!("{key} must be a boolean"))),
        }
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("{key} must be an integer"))),
        }
    }

    pub fn num(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("{key} must be a number"))),
        }
    }

    pub fn str_list(&self, key: &str) -> Result<Option<Vec<&str>>, ApiError> {
        let bad = || ApiError::bad_request(format!("{key} must be an array of strings"));
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(bad()),
        }
    }

    /// The prompt as written, for directives (empty when absent or not a string).
    pub fn raw_prompt(&self) -> &str {
        self.get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The required, non-blank `prompt`.
    pub fn prompt(&self) -> Result<String, ApiError> {
        match self.str("prompt")? {
            Some(p) if !p.trim().is_empty() => Ok(p.to_string()),
            _ => Err(ApiError::bad_request("prompt is required")),
        }
    }

    /// An optional callback URL field, which must be http(s).
    pub fn callback(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.str(key)? {
            None => Ok(None),
            Some(u) if is_http_url(u) => Ok(Some(u.to_string())),
            Some(_) => Err(ApiError::bad_request(format!(
                "{key} must be an http(s) URL"
            ))),
        }
    }
}

/// gpt-image-2 quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quality {
    Low,
    Medium,
    High,
    Auto,
}

impl Quality {
    /// Parses the field (default `medium`).
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v.map(str::trim) {
            None | Some("medium") => Ok(Self::Medium),
            Some("low") => Ok(Self::Low),
            Some("high") => Ok(Self::High),
            Some("auto") => Ok(Self::Auto),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid quality {other:?}: expected low, medium, high or auto"
            ))),
        }
    }

    /// gpt-image-2-all latency in seconds (low ≈ 40 s, medium/auto ≈ 75 s, high ≈ 2 min).
    pub fn all_latency_secs(self) -> f64 {
        match self {
            Self::Low => 40.0,
            Self::Medium | Self::Auto => 75.0,
            Self::High => 120.0,
        }
    }
}

/// `output_format`: `png` (default), `jpeg` (`jpg` accepted) or `webp` (lossless).
pub(crate) fn output_format(v: Option<&str>) -> Result<Format, ApiError> {
    match v.map(str::trim) {
        None | Some("png") => Ok(Format::Png),
        Some("jpeg" | "jpg") => Ok(Format::Jpeg),
        Some("webp") => Ok(Format::Webp),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid output_format {other:?}: expected png, jpeg or webp"
        ))),
    }
}

/// `n`: 1 by default, within `1..=max`.
pub(crate) fn count(n: Option<i64>, max: i64) -> Result<usize, ApiError> {
    match n {
        None => Ok(1),
        Some(n) if (1..=max).contains(&n) => Ok(usize::try_from(n).unwrap_or(1)),
        Some(n) => Err(ApiError::bad_request(format!(
            "invalid n {n}: must be between 1 and {max}"
        ))),
    }
}

/// `http://` or `https://` followed by a host.
pub(crate) fn is_http_url(s: &str) -> bool {
    let lower = s.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
}

/// Checks that `s` is an http(s) URL.
pub(crate) fn require_url(field: &str, s: &str) -> Result<(), ApiError> {
    if is_http_url(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{field} must be an http(s) URL"
        )))
    }
}

/// Decodes base64 (optionally a data URL).
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let body = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(";base64,")?.1,
        None => s,
    };
    let clean: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(clean.as_bytes()).ok())
}

/// Checks that `s` is base64 of a PNG, JPEG or WEBP image.
pub(crate) fn require_image_base64(field: &str, s: &str) -> Result<Kind, ApiError> {
    let bytes = decode_base64(s)
        .ok_or_else(|| ApiError::bad_request(format!("{field} is not valid base64")))?;
    match sniff(&bytes) {
        Kind::Other => Err(ApiError::bad_request(format!(
            "{field} must be a PNG, JPEG or WEBP image"
        ))),
        kind => Ok(kind),
    }
}

/// Checks that `s` is base64 of a PNG image (masks).
pub(crate) fn require_png_base64(field: &str, s: &str) -> Result<(), ApiError> {
    match require_image_base64(field, s)? {
        Kind::Png => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "{field} must be a PNG image"
        ))),
    }
}

/// A reference that may be a URL or base64 image bytes.
pub(crate) fn require_url_or_image(field: &str, s: &str) -> Result<(), ApiError> {
    if is_http_url(s) {
        Ok(())
    } else {
        require_image_base64(field, s).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_base64() {
        assert!(is_http_url("https://example.com/a.png"));
        assert!(is_http_url("HTTP://x"));
        assert!(!is_http_url("data:image/png;base64,AAAA"));
        assert!(!is_http_url("https://"));
        let png = STANDARD.encode(b"\x89PNG\r\n\x1a\n0000");
        assert!(require_png_base64("m", &png).is_ok());
        assert!(require_png_base64("m", &format!("data:image/png;base64,{png}")).is_ok());
        assert!(require_image_base64("i", &STANDARD.encode(b"GIF89a....")).is_err());
        assert!(require_image_base64("i", "not base64 !!").is_err());
    }
}
