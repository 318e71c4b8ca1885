//! SparkPix: two sub-second sync endpoints with no `model` field (the path is the model).
//! Text-to-image → `POST /api/v1/images/generations-sync`; edits (or generations with reference
//! URLs) → `POST /api/v1/images/edit`. References are URLs only; no `n`, so `n > 1` fans out
//! into parallel calls.

use serde_json::{json, Map, Value};

use super::{fan_out, result_urls, CallCtx, FailureKind, Image, Output, Upstream, UpstreamError};
use crate::error::ApiError;
use crate::model::{ModelId, Size};
use crate::request::{as_bool, as_f64, as_int, ImageRequest, Operation};

const RATIOS: [&str; 7] = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"];
const MIN_SIDE: u32 = 256;
const MAX_SIDE: u32 = 1440;

#[derive(Debug)]
pub struct Plan {
    path: &'static str,
    body: Value,
    n: u8,
}

pub fn plan(req: &ImageRequest) -> Result<Plan, ApiError> {
    super::refuse_url_only(ModelId::SparkPix, req)?;
    if let Some(size) = req.size {
        check_size(size)?;
    }
    let edit = req.op == Operation::Edit || !req.images.is_empty();
    let mut body = Map::new();
    body.insert("prompt".into(), json!(req.prompt));
    if let Some(seed) = req.extras.get("seed") {
        let seed =
            as_int(seed).ok_or_else(|| ApiError::invalid("seed", "seed must be an integer."))?;
        body.insert("seed".into(), json!(seed));
    }
    let aspect = req.extra_str("aspect_ratio")?;
    if let Some(a) = aspect {
        let allowed = if edit { "match_input_image" } else { "custom" };
        if a != allowed && !RATIOS.contains(&a) {
            return Err(ApiError::invalid(
                "aspect_ratio",
                format!(
                    "sparkpix supports aspect ratios {allowed}, {}; got `{a}`.",
                    RATIOS.join(", ")
                ),
            ));
        }
    }
    let path = if edit {
        body.insert("images".into(), json!(req.urls()));
        if let Some(a) = aspect {
            body.insert("aspect_ratio".into(), json!(a));
        } else if let Some(size) = req.size {
            body.insert("aspect_ratio".into(), json!(size.nearest_ratio(&RATIOS)));
        }
        if let Some(v) = req.extras.get("turbo") {
            let b =
                as_bool(v).ok_or_else(|| ApiError::invalid("turbo", "turbo must be a boolean."))?;
            body.insert("turbo".into(), json!(b));
        }
        "/api/v1/images/edit"
    } else {
        match (req.size, aspect) {
            (Some(size), None | Some("custom")) => {
                body.insert("aspect_ratio".into(), json!("custom"));
                body.insert("width".into(), json!(size.width));
                body.insert("height".into(), json!(size.height));
            }
            (_, Some(a)) => {
                body.insert("aspect_ratio".into(), json!(a));
            }
            (None, None) => {}
        }
        if let Some(v) = req.extras.get("prompt_upsampling") {
            let b = as_bool(v).ok_or_else(|| {
                ApiError::invalid("prompt_upsampling", "prompt_upsampling must be a boolean.")
            })?;
            body.insert("prompt_upsampling".into(), json!(b));
        }
        if let Some(w) = req.extra_str("lora_weights")? {
            if !is_lora_url(w) {
                return Err(ApiError::invalid(
                    "lora_weights",
                    "lora_weights must look like huggingface.co/<owner>/<model>[/<file.safetensors>].",
                ));
            }
            body.insert("lora_weights".into(), json!(w));
        }
        if let Some(v) = req.extras.get("lora_scale") {
            match as_f64(v) {
                Some(s) if (-1.0..=3.0).contains(&s) => {
                    body.insert("lora_scale".into(), json!(s));
                }
                _ => {
                    return Err(ApiError::invalid(
                        "lora_scale",
                        "lora_scale must be a number from -1 to 3.",
                    ))
                }
            }
        }
        "/api/v1/images/generations-sync"
    };
    Ok(Plan {
        path,
        body: Value::Object(body),
        n: req.n,
    })
}

fn check_size(size: Size) -> Result<(), ApiError> {
    let in_range = |v: u32| (MIN_SIDE..=MAX_SIDE).contains(&v);
    if !in_range(size.width) || !in_range(size.height) {
        return Err(ApiError::unsupported(
            "size",
            format!(
                "sparkpix makes images from {MIN_SIDE} to {MAX_SIDE} px per side; {size} is out of range. Use gpt-image-2-all for 2K/4K."
            ),
        ));
    }
    if !size.width.is_multiple_of(16) || !size.height.is_multiple_of(16) {
        // The nearest sides that are multiples of 16, kept within the range.
        let step = |v: u32| ((v + 8) / 16 * 16).clamp(MIN_SIDE, MAX_SIDE);
        return Err(ApiError::unsupported(
            "size",
            format!(
                "sparkpix makes sides in steps of 16 px; {size} is not a multiple of 16 (nearest: {}x{}).",
                step(size.width),
                step(size.height)
            ),
        ));
    }
    Ok(())
}

fn is_lora_url(w: &str) -> bool {
    let rest = w
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .strip_prefix("huggingface.co/");
    rest.is_some_and(|r| {
        let parts: Vec<&str> = r.split('/').collect();
        (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty())
    })
}

pub async fn execute(up: &Upstream, plan: Plan, ctx: &CallCtx) -> Result<Output, UpstreamError> {
    fan_out(plan.n, || async {
        let answer = up.post_json(plan.path, &plan.body, ctx).await?.json()?;
        let data = answer.get("data").ok_or_else(|| {
            UpstreamError::new(FailureKind::Malformed, "answer has no `data`".to_owned())
        })?;
        let urls = result_urls(data);
        if urls.is_empty() {
            return Err(UpstreamError::new(
                FailureKind::Malformed,
                "answer has no image URL".to_owned(),
            ));
        }
        Ok(Output {
            images: urls.into_iter().map(Image::url).collect(),
            ..Output::default()
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_bounds() {
        assert!(check_size(Size {
            width: 1440,
            height: 256
        })
        .is_ok());
        assert!(check_size(Size {
            width: 1450,
            height: 256
        })
        .is_err());
        assert!(check_size(Size {
            width: 3840,
            height: 2160
        })
        .is_err());
        assert!(check_size(Size {
            width: 1000,
            height: 1008
        })
        .is_err());
    }

    #[test]
    fn an_off_step_size_is_blamed_on_the_step_not_the_range() {
        let e = check_size(Size {
            width: 650,
            height: 480,
        })
        .unwrap_err();
        assert!(e.message.contains("steps of 16"), "{}", e.message);
        assert!(e.message.contains("nearest: 656x480"), "{}", e.message);
        assert!(!e.message.contains("out of range"), "{}", e.message);
        assert!(!e.message.contains("gpt-image-2-all"), "{}", e.message);
        let e = check_size(Size {
            width: 1456,
            height: 480,
        })
        .unwrap_err();
        assert!(e.message.contains("out of range"), "{}", e.message);
    }

    #[test]
    fn lora_urls() {
        assert!(is_lora_url("huggingface.co/owner/model"));
        assert!(is_lora_url(
            "https://huggingface.co/owner/model/file.safetensors"
        ));
        assert!(!is_lora_url("https://example.com/owner/model"));
        assert!(!is_lora_url("huggingface.co/owner"));
    }
}
