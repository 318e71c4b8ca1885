//! gpt-image-2-beta: async tasks only. `size` becomes the nearest supported `aspect_ratio`;
//! references are URLs only; `n` fans out into parallel tasks (the model makes one image a task).

use serde_json::{json, Map, Value};

use super::{fan_out, task, with_callback, CallCtx, Output, Upstream, UpstreamError};
use crate::error::ApiError;
use crate::model::ModelId;
use crate::request::{as_bool, ImageRequest};

/// NOTE(upstream): the page shows 1:1, 16:9, 4:3 and 3:4 "e.g."; the portrait/landscape pairs
/// of those and 3:2/2:3 are accepted by the same channel elsewhere, so they are offered too.
pub const ASPECT_RATIOS: [&str; 7] = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"];

#[derive(Debug)]
pub struct Plan {
    body: Value,
    n: u8,
}

pub fn plan(req: &ImageRequest) -> Result<Plan, ApiError> {
    super::refuse_url_only(ModelId::Beta, req)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(ModelId::Beta.as_str()));
    body.insert("prompt".into(), json!(req.prompt));
    let aspect = match (req.extra_str("aspect_ratio")?, req.size) {
        (Some(a), _) if ASPECT_RATIOS.contains(&a) => Some(a),
        (Some(a), _) => {
            return Err(ApiError::invalid(
                "aspect_ratio",
                format!(
                    "gpt-image-2-beta supports aspect ratios {}; got `{a}`.",
                    ASPECT_RATIOS.join(", ")
                ),
            ))
        }
        (None, Some(size)) => size.nearest_ratio(&ASPECT_RATIOS),
        (None, None) => None,
    };
    if let Some(a) = aspect {
        body.insert("aspect_ratio".into(), json!(a));
    }
    super::envelope_refs(ModelId::Beta, req, &mut body, "", false)?;
    // NOTE(upstream): the page says both "on by default" and "default is off"; it is sent only
    // when the client asked, so the client's choice is explicit.
    if let Some(v) = req.extras.get("nsfw_checker") {
        let b = as_bool(v)
            .ok_or_else(|| ApiError::invalid("nsfw_checker", "nsfw_checker must be a boolean."))?;
        body.insert("nsfw_checker".into(), json!(b));
    }
    Ok(Plan {
        body: Value::Object(body),
        n: req.n,
    })
}

pub async fn execute(up: &Upstream, plan: Plan, ctx: &CallCtx) -> Result<Output, UpstreamError> {
    let model = up.model_config(ModelId::Beta);
    let body = with_callback(up, plan.body);
    fan_out(plan.n, || async {
        let created = up
            .post_json("/api/v1/images/generations", &body, ctx)
            .await?;
        task::run_envelope(up, model, created, ctx).await
    })
    .await
}
