//! The two SparkPix endpoints (seed 002): synchronous, sub-second, no `model` field.
//!
//! - `POST /api/v1/images/generations-sync` (SparkPix Image, text-to-image).
//! - `POST /api/v1/images/edit` (SparkPix Image Edit, URL references only).
//!
//! Answer: `{"code":200,"msg":"success","data":{"url","model","credits","duration"}}`. For the
//! edit model with more than one input image, `url` is an array (one result per input image, at
//! most 4) and `resultUrls` repeats it; otherwise `url` is a string. `model` is
//! `sparkpix-image` / `sparkpix-edit`; `credits` counts 1 credit per cent of the price (1 per
//! SparkPix Image, 1.3 per SparkPix Image Edit result); `duration` is the generation time in
//! seconds. Results are JPEG files.
//!
//! Sizes: SparkPix Image `custom` (the default) uses `width`/`height` (each 1024 when absent);
//! the fixed ratios give about one megapixel. SparkPix Image Edit `match_input_image` (the
//! default) gives 1024x1024, as the input images are not fetched.
//!
//! Failures are HTTP 200 with an error `code` in the body: a policy rejection is `code: 400`
//! with a message mentioning the content policy, other generation failures `code: 500`. Only
//! `callBackUrl` (this spelling) requests a callback.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::api::{ApiError, ApiResult};
use super::control::redact;
use super::faults::{directives, Directives};
use super::jobs::{self, envelope, Job, JobResult, Model};
use super::params::{require_url, Fields};
use super::render::Format;
use super::sizes::{parse_ratio, sparkpix_size, FIXED_RATIOS};
use super::state::AppState;

/// Most edit results per call.
const MAX_EDIT_OUTPUTS: usize = 4;
/// Most reference images of an edit.
const MAX_EDIT_IMAGES: usize = 16;

/// `POST /api/v1/images/generations-sync`.
pub(crate) async fn image(State(state): State<AppState>, body: Bytes) -> Response {
    endpoint(&state, &body, Model::SparkImage).await
}

/// `POST /api/v1/images/edit`.
pub(crate) async fn edit(State(state): State<AppState>, body: Bytes) -> Response {
    endpoint(&state, &body, Model::SparkEdit).await
}

async fn endpoint(state: &AppState, body: &[u8], model: Model) -> Response {
    let f = match Fields::parse(body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let d = directives(state, model, f.raw_prompt());
    if let Some(r) = d.http_fault() {
        return r;
    }
    let answer = if model == Model::SparkImage {
        text_to_image(state, f, d).await
    } else {
        image_edit(state, f, d).await
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// A `width`/`height` of the `custom` ratio: 256–1440, a multiple of 16.
fn custom_side(f: &Fields, key: &str) -> Result<u32, ApiError> {
    match f.int(key)? {
        None => Ok(1024),
        Some(v) if (256..=1440).contains(&v) && v % 16 == 0 => Ok(u32::try_from(v).unwrap_or(1024)),
        Some(v) => Err(ApiError::bad_request(format!(
            "invalid {key} {v}: must be 256-1440 and a multiple of 16"
        ))),
    }
}

/// A fixed ratio, or 400.
fn fixed_ratio(text: &str) -> Result<(u32, u32), ApiError> {
    match parse_ratio(text) {
        Some(r) if FIXED_RATIOS.contains(&text) => Ok(r),
        _ => Err(ApiError::bad_request(format!(
            "invalid aspect_ratio {text:?}"
        ))),
    }
}

/// `huggingface.co/<owner>/<model>[/<file.safetensors>]`, optionally behind `https://`.
fn valid_lora(s: &str) -> bool {
    let s = s.trim();
    let rest = s.strip_prefix("https://").unwrap_or(s);
    let Some(path) = rest.strip_prefix("huggingface.co/") else {
        return false;
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    let seg = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match path.split('/').collect::<Vec<_>>().as_slice() {
        [owner, model] => seg(owner) && seg(model),
        [owner, model, file] => {
            seg(owner)
                && seg(model)
                && seg(file)
                && file.len() > 12
                && file.ends_with(".safetensors")
        }
        _ => false,
    }
}

async fn text_to_image(state: &AppState, f: Fields, d: Directives) -> ApiResult {
    let prompt = f.prompt()?;
    let ratio = f.str("aspect_ratio")?.map_or("custom", str::trim);
    let (width, height) = if ratio == "custom" {
        (custom_side(&f, "width")?, custom_side(&f, "height")?)
    } else {
        sparkpix_size(fixed_ratio(ratio)?)
    };
    f.bool("prompt_upsampling")?;
    f.int("seed")?;
    if let Some(l) = f.str("lora_weights")? {
        if !valid_lora(l) {
            return Err(ApiError::bad_request(format!(
                "invalid lora_weights {l:?}: expected huggingface.co/<owner>/<model>[/<file.safetensors>]"
            )));
        }
    }
    if let Some(s) = f.num("lora_scale")? {
        if !(-1.0..=3.0).contains(&s) {
            return Err(ApiError::bad_request("lora_scale must be between -1 and 3"));
        }
    }
    run(state, Model::SparkImage, f, d, prompt, (width, height), 1).await
}

async fn image_edit(state: &AppState, f: Fields, d: Directives) -> ApiResult {
    let prompt = f.prompt()?;
    let images = f.str_list("images")?.unwrap_or_default();
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "images is required (at least one URL)",
        ));
    }
    if images.len() > MAX_EDIT_IMAGES {
        return Err(ApiError::bad_request(format!(
            "too many images ({}): at most {MAX_EDIT_IMAGES}",
            images.len()
        )));
    }
    for u in &images {
        require_url("images[]", u)?;
    }
    let ratio = f
        .str("aspect_ratio")?
        .map_or("match_input_image", str::trim);
    let size = if ratio == "match_input_image" {
        (1024, 1024)
    } else {
        sparkpix_size(fixed_ratio(ratio)?)
    };
    f.bool("turbo")?;
    f.int("seed")?;
    let outputs = if images.len() > 1 {
        images.len().min(MAX_EDIT_OUTPUTS)
    } else {
        1
    };
    run(state, Model::SparkEdit, f, d, prompt, size, outputs).await
}

async fn run(
    state: &AppState,
    model: Model,
    f: Fields,
    d: Directives,
    prompt: String,
    (width, height): (u32, u32),
    outputs: usize,
) -> ApiResult {
    let job = Job {
        model,
        prompt,
        width,
        height,
        format: Format::Jpeg,
        count: outputs,
        quality: None,
        latency: d.latency(state.scaled_between(0.5, 0.9)),
        queued: false,
        callback_url: f.callback("callBackUrl")?,
        directives: d,
        param: redact(f.to_value()),
    };
    let started_at = Instant::now();
    let (_, result) = jobs::finished(jobs::start(state, job)).await?;
    let duration = (started_at.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let urls = match result {
        JobResult::Completed { urls, .. } => urls,
        JobResult::Failed(f) if f.is_policy() => {
            return Err(ApiError::with(
                StatusCode::OK,
                400,
                "Prompt rejected: content policy violation",
            ))
        }
        JobResult::Failed(f) => return Err(ApiError::with(StatusCode::OK, 500, f.msg)),
    };
    let per_image = if model == Model::SparkEdit { 1.3 } else { 1.0 };
    let credits = (per_image * urls.len() as f64 * 1000.0).round() / 1000.0;
    let mut data = json!({
        "model": model.name(),
        "credits": credits,
        "duration": duration,
    });
    if urls.len() > 1 {
        data["url"] = json!(urls);
        data["resultUrls"] = json!(urls);
    } else {
        data["url"] = urls.into_iter().next().map_or(Value::Null, Value::String);
    }
    Ok(envelope(data))
}
