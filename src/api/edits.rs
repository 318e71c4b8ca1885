//! The two wire forms of `POST /v1/images/edits`, turned into fields + reference images:
//! multipart (what the SDKs send: `image` or repeated `image[]`, `mask`, text fields as strings,
//! chunked bodies without Content-Length) and JSON (`images: [{image_url}]`, data URLs included —
//! what Codex sends). Image bytes are recognised by magic bytes, never by the part's Content-Type.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::ImageFormat;
use crate::request::{is_http_url, ImageRef, MAX_IMAGES};

/// Fields, reference images and the mask of one edit request.
pub struct EditParts {
    pub fields: Map<String, Value>,
    pub images: Vec<ImageRef>,
    pub mask: Option<ImageRef>,
}

/// Reads the whole multipart form before anything is validated (field order varies by SDK).
pub async fn from_multipart(mut form: Multipart, limit: usize) -> Result<EditParts, ApiError> {
    let mut parts = EditParts {
        fields: Map::new(),
        images: Vec::new(),
        mask: None,
    };
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        if is_image_part(&name) {
            if parts.images.len() == MAX_IMAGES {
                return Err(ApiError::invalid(
                    "image",
                    format!("At most {MAX_IMAGES} images can be uploaded."),
                ));
            }
            let data = file_bytes(field, "image", limit).await?;
            parts.images.push(image_ref(data, "image")?);
        } else if name == "mask" {
            let data = file_bytes(field, "mask", limit).await?;
            parts.mask = Some(image_ref(data, "mask")?);
        } else if name == "markup" {
            return Err(ApiError::unsupported(
                "markup",
                "markup overlays are not supported; use a mask.",
            ));
        } else {
            if parts.fields.len() == MAX_TEXT_PARTS {
                return Err(ApiError::bad_body(format!(
                    "At most {MAX_TEXT_PARTS} text parts are read in a multipart body."
                )));
            }
            let text = text_part(field, &name, limit).await?;
            parts.fields.insert(name, Value::String(text));
        }
    }
    Ok(parts)
}

/// Most text parts a multipart edit may carry (the SDKs send about a dozen).
const MAX_TEXT_PARTS: usize = 64;
/// Longest text part: a 32,000-character prompt of 4-byte characters fits.
const MAX_TEXT_BYTES: usize = 128 * 1024;

/// A text part, read up to [`MAX_TEXT_BYTES`] and required to be UTF-8 (never decoded lossily).
async fn text_part(mut field: Field<'_>, name: &str, limit: usize) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        if bytes.len().saturating_add(chunk.len()) > MAX_TEXT_BYTES {
            return Err(ApiError::invalid(
                name,
                format!("The `{name}` part is longer than {MAX_TEXT_BYTES} bytes."),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::invalid(name, format!("The `{name}` part is not valid UTF-8.")))
}

/// `image`, `image[]` and, defensively, `image[0]`…`image[15]`.
fn is_image_part(name: &str) -> bool {
    name == "image"
        || name == "image[]"
        || name
            .strip_prefix("image[")
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|i| i.parse::<usize>().is_ok())
}

async fn file_bytes(field: Field<'_>, param: &str, limit: usize) -> Result<Bytes, ApiError> {
    let data = field
        .bytes()
        .await
        .map_err(|e| multipart_error(&e, limit))?;
    if data.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("The `{param}` file is empty."),
        ));
    }
    Ok(data)
}

fn image_ref(data: Bytes, param: &str) -> Result<ImageRef, ApiError> {
    match ImageFormat::sniff(&data) {
        Some(format) => Ok(ImageRef::Bytes { data, format }),
        None => Err(ApiError::invalid(
            param,
            format!("The `{param}` file is not a PNG, JPEG or WEBP image."),
        )),
    }
}

fn multipart_error(e: &MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_body(format!("Invalid multipart body: {}", e.body_text()))
    }
}

/// The JSON edit: `{"images":[{"image_url": url | data URL}], "mask": {"image_url"}, …}`.
pub fn from_json(mut fields: Map<String, Value>) -> Result<EditParts, ApiError> {
    let images = match fields.remove("images") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_IMAGES {
                return Err(ApiError::invalid(
                    "images",
                    format!(
                        "At most {MAX_IMAGES} images can be given; got {}.",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| reference(item, &format!("images[{i}]")))
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "images",
                "images must be an array of {\"image_url\": …}.",
            ))
        }
    };
    let mask = match fields.remove("mask") {
        None | Some(Value::Null) => None,
        Some(m) => Some(reference(&m, "mask")?),
    };
    if let Some(ImageRef::Bytes { format, .. }) = &mask {
        if *format != ImageFormat::Png {
            return Err(ApiError::invalid("mask", "The mask must be a PNG image."));
        }
    }
    Ok(EditParts {
        fields,
        images,
        mask,
    })
}

fn reference(item: &Value, param: &str) -> Result<ImageRef, ApiError> {
    if item.get("file_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::unsupported(
            param,
            "file_id references are not supported; use image_url with a URL or a data URL.",
        ));
    }
    let url = item
        .get("image_url")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(param, format!("{param} needs an `image_url`.")))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (_, b64) = rest.split_once(";base64,").ok_or_else(|| {
            ApiError::invalid(param, format!("{param} is a data URL without base64 data."))
        })?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ApiError::invalid(param, format!("{param} has invalid base64 data.")))?;
        return image_ref(Bytes::from(data), param);
    }
    if is_http_url(url) {
        Ok(ImageRef::Url(url.to_owned()))
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param}.image_url must be an http(s) URL or a data URL."),
        ))
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use super::*;
    use axum::extract::FromRequest as _;
    use proptest::prelude::*;
    use serde_json::json;

    /// A multipart stream: parts with names the edit route knows (and some it does not), as
    /// files or text, with any bytes; then any tail (a cut, a garbled boundary, junk) and the
    /// closing boundary or not.
    fn multipart_stream() -> impl Strategy<Value = Vec<u8>> {
        let names = prop::sample::select(vec![
            "image", "image[]", "image[2]", "mask", "prompt", "n", "size", "model", "markup", "",
            "x\"y",
        ]);
        let part = (
            names,
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..48),
        );
        (
            prop::collection::vec(part, 0..6),
            prop::collection::vec(any::<u8>(), 0..32),
            any::<bool>(),
        )
            .prop_map(|(parts, tail, close)| {
                let mut b = Vec::new();
                for (name, file, data) in parts {
                    b.extend_from_slice(b"--B\r\nContent-Disposition: form-data; name=\"");
                    b.extend_from_slice(name.as_bytes());
                    b.extend_from_slice(if file {
                        b"\"; filename=\"f.png\"\r\n\r\n".as_slice()
                    } else {
                        b"\"\r\n\r\n"
                    });
                    b.extend_from_slice(&data);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(&tail);
                if close {
                    b.extend_from_slice(b"--B--\r\n");
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Any multipart stream is read into an edit or refused with a 4xx: never a panic, never
        /// a server error.
        #[test]
        fn any_multipart_stream_is_read_or_refused(body in multipart_stream()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let result = rt.block_on(async {
                let req = axum::http::Request::post("/v1/images/edits")
                    .header("content-type", "multipart/form-data; boundary=B")
                    .body(axum::body::Body::from(body))
                    .unwrap();
                let form = Multipart::from_request(req, &()).await.unwrap();
                from_multipart(form, 1 << 20).await
            });
            if let Err(e) = result {
                prop_assert!(e.status().is_client_error(), "{} {}", e.status(), e.message);
            }
        }
    }

    #[test]
    fn image_part_names() {
        assert!(is_image_part("image"));
        assert!(is_image_part("image[]"));
        assert!(is_image_part("image[3]"));
        assert!(!is_image_part("images"));
        assert!(!is_image_part("image[x]"));
    }

    #[test]
    fn json_edit_reads_data_urls_and_urls() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\n0000");
        let body = json!({"prompt":"p","images":[{"image_url":format!("data:image/png;base64,{png}")},{"image_url":"https://x.test/a.jpg"}]});
        let parts = from_json(body.as_object().cloned().unwrap()).unwrap();
        assert!(matches!(
            parts.images[0],
            ImageRef::Bytes {
                format: ImageFormat::Png,
                ..
            }
        ));
        assert!(matches!(parts.images[1], ImageRef::Url(_)));
        let bad = json!({"images":[{"file_id":"file-1"}]});
        assert_eq!(
            from_json(bad.as_object().cloned().unwrap())
                .err()
                .unwrap()
                .param
                .as_deref(),
            Some("images[0]")
        );
    }
}
