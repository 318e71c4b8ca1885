//! gpt-image-2-lite: the synchronous task envelope. `POST /api/v1/images/generations` already
//! answers `state: "completed"` with `resultUrls` (one per image, `n` native). Edits go to the
//! same endpoint with `image_base64` (one upload), `image_url`/`image_urls` and `mask_base64`.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::{task, CallCtx, Output, Upstream, UpstreamError};
use crate::error::ApiError;
use crate::model::{ModelId, Quality};
use crate::request::{ImageRef, ImageRequest};

#[derive(Debug)]
pub struct Plan {
    body: Value,
}

pub fn plan(req: &ImageRequest) -> Result<Plan, ApiError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(ModelId::Lite.as_str()));
    body.insert("prompt".into(), json!(req.prompt));
    if let Some(size) = req.size {
        super::all::check_size(ModelId::Lite, size)?;
        body.insert("size".into(), json!(size.to_string()));
    }
    if req.quality != Quality::Auto {
        body.insert("quality".into(), json!(req.quality.as_str()));
    }
    if let Some(f) = req.output_format {
        body.insert("output_format".into(), json!(f.as_str()));
    }
    if req.n > 1 {
        body.insert("n".into(), json!(req.n));
    }
    if req.transparent() {
        return Err(ApiError::unsupported(
            "background",
            "gpt-image-2-lite cannot make transparent backgrounds; use gpt-image-2-all.",
        ));
    }
    let uploads: Vec<_> = req.images.iter().filter(|r| r.is_bytes()).collect();
    if uploads.len() > 1 {
        return Err(ApiError::unsupported(
            "image",
            format!(
                "gpt-image-2-lite takes one uploaded image (plus image URLs); got {}. Use gpt-image-2-all for up to 16 uploads.",
                uploads.len()
            ),
        ));
    }
    if let Some(ImageRef::Bytes { data, .. }) = uploads.first() {
        body.insert("image_base64".into(), json!(b64(data)));
    }
    let urls = req.urls();
    match urls.as_slice() {
        [] => {}
        [one] if uploads.is_empty() => {
            body.insert("image_url".into(), json!(one));
        }
        many => {
            body.insert("image_urls".into(), json!(many));
        }
    }
    match &req.mask {
        None => {}
        Some(ImageRef::Bytes { data, .. }) => {
            body.insert("mask_base64".into(), json!(b64(data)));
        }
        Some(ImageRef::Url(_)) => {
            return Err(ApiError::unsupported(
                "mask",
                "gpt-image-2-lite takes the mask as an uploaded PNG, not a URL.",
            ))
        }
    }
    Ok(Plan {
        body: Value::Object(body),
    })
}

pub async fn execute(up: &Upstream, plan: Plan, ctx: &CallCtx) -> Result<Output, UpstreamError> {
    let created = up
        .post_json("/api/v1/images/generations", &plan.body, ctx)
        .await?;
    task::run_envelope(up, up.model_config(ModelId::Lite), &created, ctx).await
}

pub(super) fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
