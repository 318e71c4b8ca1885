//! One image request, whatever the wire form it came in (JSON generation, multipart edit, JSON
//! edit): [`ImageRequest`], built by [`ImageRequest::from_fields`] from a map of fields.
//!
//! Field rules follow the OpenAI SDKs (see the contract in the README): `null` means absent,
//! numbers may arrive as strings (multipart), unknown fields are ignored, and the vendor extras in
//! [`VENDOR_EXTRAS`] are kept for the adapters that understand them. Model-specific checks live
//! in each adapter's `plan`.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::{ImageFormat, Quality, Size};

/// Longest prompt OpenAI accepts.
const MAX_PROMPT_CHARS: usize = 32_000;
/// Most reference images any model takes.
pub const MAX_IMAGES: usize = 16;

/// Fields outside OpenAI's schema that some upstream model understands; passed through to it.
pub const VENDOR_EXTRAS: [&str; 9] = [
    "seed",
    "aspect_ratio",
    "resolution",
    "lora_weights",
    "lora_scale",
    "prompt_upsampling",
    "nsfw_checker",
    "turbo",
    "image_urls",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Generate,
    Edit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    B64Json,
    Url,
}

/// A reference image: uploaded bytes (multipart or a data URL) or a URL the upstream fetches.
#[derive(Debug, Clone)]
pub enum ImageRef {
    Bytes { data: Bytes, format: ImageFormat },
    Url(String),
}

impl ImageRef {
    pub fn is_bytes(&self) -> bool {
        matches!(self, Self::Bytes { .. })
    }
}

/// A request, normalised and checked against OpenAI's rules.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub op: Operation,
    pub prompt: String,
    pub n: u8,
    /// `None`: `auto` or absent.
    pub size: Option<Size>,
    pub quality: Quality,
    pub response_format: ResponseFormat,
    pub output_format: Option<ImageFormat>,
    /// `transparent`, `opaque` or `auto`.
    pub background: Option<String>,
    pub images: Vec<ImageRef>,
    pub mask: Option<ImageRef>,
    /// Vendor extras from [`VENDOR_EXTRAS`], minus `image_urls` (folded into `images`).
    pub extras: Map<String, Value>,
    pub stream: bool,
}

/// What a request names before anything else is read: the prompt and the public model name.
/// Checked first, so a missing prompt or an unknown model is the error a client sees before any
/// other field's; the caller resolves `model` to a route between this and [`ImageRequest`].
#[derive(Debug, Clone)]
pub struct Head {
    pub prompt: String,
    /// `None`: absent or `null` (the server's default model).
    pub model: Option<String>,
}

impl Head {
    pub fn from_fields(fields: &Map<String, Value>) -> Result<Self, ApiError> {
        let get = |k: &str| fields.get(k).filter(|v| !v.is_null());
        let prompt = match get("prompt") {
            None => return Err(ApiError::missing("prompt")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(ApiError::invalid("prompt", "The prompt must not be empty."));
            }
            Some(Value::String(s)) if s.chars().count() > MAX_PROMPT_CHARS => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("The prompt is longer than {MAX_PROMPT_CHARS} characters."),
                ));
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::invalid("prompt", "The prompt must be a string.")),
        };
        let model = match get("model") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::invalid("model", "The model must be a string.")),
        };
        Ok(Self { prompt, model })
    }
}

impl ImageRequest {
    /// Normalises the rest of `fields` (JSON values; multipart text arrives as strings) after
    /// their [`Head`]. `images` and `mask` were already extracted by the caller from files or
    /// `images[]`. The request is immutable from here on: the model that serves it travels
    /// beside it, never inside it.
    pub fn from_fields(
        op: Operation,
        head: Head,
        fields: &Map<String, Value>,
        mut images: Vec<ImageRef>,
        mask: Option<ImageRef>,
    ) -> Result<Self, ApiError> {
        let get = |k: &str| fields.get(k).filter(|v| !v.is_null());
        let prompt = head.prompt;

        let n = match get("n") {
            None => 1,
            Some(v) => match as_int(v) {
                Some(n @ 1..=10) => n as u8,
                _ => {
                    return Err(ApiError::invalid(
                        "n",
                        format!("Invalid value for n: {v}. It must be an integer from 1 to 10."),
                    ))
                }
            },
        };

        let size = match str_field(fields, "size")? {
            None | Some("auto") => None,
            Some(s) => Some(Size::parse(s).ok_or_else(|| {
                ApiError::invalid(
                    "size",
                    format!("Invalid size `{s}`: use `auto` or `WIDTHxHEIGHT`, e.g. `1024x1024`."),
                )
            })?),
        };

        // NOTE: legacy DALL·E qualities map to their gpt-image equivalents so old clients work.
        let quality = match str_field(fields, "quality")? {
            None | Some("auto") => Quality::Auto,
            Some("low") => Quality::Low,
            Some("medium" | "standard") => Quality::Medium,
            Some("high" | "hd") => Quality::High,
            Some(q @ ("xhigh" | "max")) => {
                return Err(ApiError::invalid(
                    "quality",
                    format!("Quality `{q}` is not available on gpt-image-2 models: use low, medium, high or auto."),
                ))
            }
            Some(q) => {
                return Err(ApiError::invalid(
                    "quality",
                    format!("Invalid quality `{q}`: use low, medium, high or auto."),
                ))
            }
        };

        let response_format = match str_field(fields, "response_format")? {
            None | Some("b64_json") => ResponseFormat::B64Json,
            Some("url") => ResponseFormat::Url,
            Some(f) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("Invalid response_format `{f}`: use b64_json or url."),
                ))
            }
        };

        let output_format = match str_field(fields, "output_format")? {
            None => None,
            Some(f) => Some(ImageFormat::parse(f).ok_or_else(|| {
                let why = if f.eq_ignore_ascii_case("gif") {
                    "GIF (animated or not) is not offered by any upstream model"
                } else {
                    "it is not supported"
                };
                ApiError::invalid(
                    "output_format",
                    format!("Output format `{f}`: {why}. Use png, jpeg or webp."),
                )
            })?),
        };

        let background = match str_field(fields, "background")? {
            None => None,
            Some(b @ ("transparent" | "opaque" | "auto")) => Some(b.to_owned()),
            Some(b) => {
                return Err(ApiError::invalid(
                    "background",
                    format!("Invalid background `{b}`: use transparent, opaque or auto."),
                ))
            }
        };
        if background.as_deref() == Some("transparent") && output_format == Some(ImageFormat::Jpeg)
        {
            return Err(ApiError::invalid(
                "background",
                "A transparent background needs output_format png or webp.",
            ));
        }

        if let Some(v) = get("output_compression") {
            if !as_int(v).is_some_and(|c| (0..=100).contains(&c)) {
                return Err(ApiError::invalid(
                    "output_compression",
                    "output_compression must be an integer from 0 to 100.",
                ));
            }
        }
        if let Some(m) = str_field(fields, "moderation")? {
            if !matches!(m, "low" | "auto") {
                return Err(ApiError::invalid(
                    "moderation",
                    "moderation must be low or auto.",
                ));
            }
        }

        let stream = match get("stream") {
            None => false,
            Some(v) => as_bool(v)
                .ok_or_else(|| ApiError::invalid("stream", "stream must be true or false."))?,
        };

        let mut extras = Map::new();
        for key in VENDOR_EXTRAS {
            if let Some(v) = get(key) {
                extras.insert(key.to_owned(), v.clone());
            }
        }
        if let Some(urls) = extras.remove("image_urls") {
            let list = match urls {
                Value::Array(items) => items,
                one @ Value::String(_) => vec![one],
                _ => {
                    return Err(ApiError::invalid(
                        "image_urls",
                        "image_urls must be an array of URLs.",
                    ))
                }
            };
            for u in list {
                match u.as_str() {
                    Some(u) if is_http_url(u) => images.push(ImageRef::Url(u.to_owned())),
                    _ => {
                        return Err(ApiError::invalid(
                            "image_urls",
                            "image_urls must contain http(s) URLs.",
                        ))
                    }
                }
            }
        }

        if op == Operation::Edit && images.is_empty() {
            return Err(ApiError::missing("image")
                .with_param("image")
                .tap_message("An edit needs at least one image: send `image` or `image[]`."));
        }
        if images.len() > MAX_IMAGES {
            return Err(ApiError::invalid(
                "image",
                format!(
                    "At most {MAX_IMAGES} images can be given; got {}.",
                    images.len()
                ),
            ));
        }
        if mask.is_some() && images.is_empty() {
            return Err(ApiError::invalid(
                "mask",
                "A mask needs an image to apply to.",
            ));
        }
        if let Some(ImageRef::Bytes { format, .. }) = &mask {
            if *format != ImageFormat::Png {
                return Err(ApiError::invalid("mask", "The mask must be a PNG image."));
            }
        }

        Ok(Self {
            op,
            prompt,
            n,
            size,
            quality,
            response_format,
            output_format,
            background,
            images,
            mask,
            extras,
            stream,
        })
    }

    pub fn has_bytes(&self) -> bool {
        self.images.iter().any(ImageRef::is_bytes)
    }

    pub fn urls(&self) -> Vec<&str> {
        self.images
            .iter()
            .filter_map(|r| match r {
                ImageRef::Url(u) => Some(u.as_str()),
                ImageRef::Bytes { .. } => None,
            })
            .collect()
    }

    pub fn transparent(&self) -> bool {
        self.background.as_deref() == Some("transparent")
    }

    pub fn extra_str(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.extras.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::invalid(key, format!("{key} must be a string."))),
        }
    }
}

impl ApiError {
    fn tap_message(mut self, message: &str) -> Self {
        message.clone_into(&mut self.message);
        self
    }
}

/// A string field; multipart and JSON both give strings here.
fn str_field<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a string."))),
    }
}

/// An integer given as a JSON number or a numeric string (multipart).
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean given as JSON or as `"true"`/`"false"` (multipart).
pub fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A number given as JSON or as a numeric string.
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses as a handler does: the head, the model name resolved, then the rest.
    fn build(v: Value) -> Result<ImageRequest, ApiError> {
        let map = v.as_object().cloned().unwrap_or_default();
        let head = Head::from_fields(&map)?;
        let name = head.model.as_deref().unwrap_or("gpt-image-2-all");
        let _: crate::model::ModelId = name.parse().map_err(|_| ApiError::model_not_found(name))?;
        ImageRequest::from_fields(Operation::Generate, head, &map, vec![], None)
    }

    #[test]
    fn null_means_absent_and_strings_are_numbers() {
        let r = build(json!({"prompt":"p","n":null,"size":null,"quality":null})).unwrap();
        assert_eq!((r.n, r.size, r.quality), (1, None, Quality::Auto));
        assert_eq!(build(json!({"prompt":"p","n":"3"})).unwrap().n, 3);
    }

    #[test]
    fn rejects_bad_fields_naming_the_param() {
        let param = |v| build(v).unwrap_err().param.unwrap_or_default();
        assert_eq!(param(json!({})), "prompt");
        assert_eq!(param(json!({"prompt":"p","n":11})), "n");
        assert_eq!(param(json!({"prompt":"p","n":0})), "n");
        assert_eq!(param(json!({"prompt":"p","size":"big"})), "size");
        assert_eq!(param(json!({"prompt":"p","quality":"ultra"})), "quality");
        assert_eq!(param(json!({"prompt":"p","quality":"xhigh"})), "quality");
        assert_eq!(
            param(json!({"prompt":"p","response_format":"gif"})),
            "response_format"
        );
        assert_eq!(
            param(json!({"prompt":"p","output_format":"svg"})),
            "output_format"
        );
        assert_eq!(param(json!({"prompt":"p","model":"nope"})), "model");
        assert_eq!(
            param(json!({"prompt":"p","background":"transparent","output_format":"jpeg"})),
            "background"
        );
    }

    #[test]
    fn keeps_vendor_extras_and_folds_image_urls() {
        let r =
            build(json!({"prompt":"p","seed":7,"unknown":1,"image_urls":["https://x.test/a.png"]}))
                .unwrap();
        assert_eq!(r.extras.get("seed"), Some(&json!(7)));
        assert!(!r.extras.contains_key("unknown"));
        assert_eq!(r.urls(), ["https://x.test/a.png"]);
    }

    #[test]
    fn legacy_qualities_map() {
        assert_eq!(
            build(json!({"prompt":"p","quality":"hd"})).unwrap().quality,
            Quality::High
        );
        assert_eq!(
            build(json!({"prompt":"p","quality":"standard"}))
                .unwrap()
                .quality,
            Quality::Medium
        );
    }
}
