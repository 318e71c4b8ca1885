//! gpt-image-2-lite: the synchronous task envelope. `POST /api/v1/images/generations` already
//! answers `state: "completed"` with `resultUrls` (one per image, `n` native). Edits go to the
//! same endpoint with `image_base64` (one upload), `image_url`/`image_urls` and `mask_base64`.

use serde_json::{json, Map, Value};

use super::{task, CallCtx, Output, Upstream, UpstreamError};
use crate::error::ApiError;
use crate::model::{ModelId, Quality};
use crate::request::ImageRequest;

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
    super::envelope_refs(
        ModelId::Lite,
        req,
        &mut body,
        "gpt-image-2-lite takes one uploaded image (plus image URLs); use gpt-image-2-all for up to 16 uploads.",
        false,
    )?;
    Ok(Plan {
        body: Value::Object(body),
    })
}

pub async fn execute(up: &Upstream, plan: Plan, ctx: &CallCtx) -> Result<Output, UpstreamError> {
    let created = up
        .post_json("/api/v1/images/generations", &plan.body, ctx)
        .await?;
    task::run_envelope(up, up.model_config(ModelId::Lite), created, ctx).await
}
