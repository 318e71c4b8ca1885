//! `POST /api/v1/images/generations`: dispatch on the body's `model`, and the two models whose
//! handling is short: `gpt-image-2-lite` (synchronous task envelope, seed 000) and
//! `gpt-image-2-beta` (asynchronous, URL references only, seed 003). `gpt-image-2-all` lives in
//! `gpt_all`.
//!
//! Order of checks for every model: JSON body, `model`, then HTTP-level faults (`[sim:401]`,
//! `[sim:code402]`, `[sim:malformed]`, … and the fault table), then field validation (400),
//! then the job.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::api::{ApiError, ApiResult};
use super::control::redact;
use super::faults::{directives, Directives};
use super::gpt_all::{self, gpt_size};
use super::jobs::{self, envelope, Job, Model};
use super::params::{
    count, output_format, require_image_base64, require_png_base64, require_url, Fields, Quality,
};
use super::render::Format;
use super::sizes::{beta_size, parse_ratio, FIXED_RATIOS};
use super::state::AppState;

/// Most reference images a request may carry (seed 001 and 003: up to 16).
pub(crate) const MAX_REFERENCES: usize = 16;

/// gpt-image-2-lite latency in seconds.
const LITE_LATENCY_SECS: f64 = 8.0;

/// `POST /api/v1/images/generations`.
pub(crate) async fn create(State(state): State<AppState>, body: Bytes) -> Response {
    match dispatch(&state, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn dispatch(state: &AppState, body: &[u8]) -> Result<Response, Response> {
    let fields = Fields::parse(body).map_err(IntoResponse::into_response)?;
    let model = match fields.str("model").map_err(IntoResponse::into_response)? {
        None => return Err(ApiError::bad_request("model is required").into_response()),
        Some(m) => match m.trim() {
            "gpt-image-2-lite" => Model::Lite,
            "gpt-image-2-all" => Model::All,
            "gpt-image-2-beta" => Model::Beta,
            other => {
                return Err(
                    ApiError::bad_request(format!("unsupported model: {other}")).into_response()
                )
            }
        },
    };
    let d = directives(state, model, fields.raw_prompt());
    if let Some(r) = d.http_fault() {
        return Ok(r);
    }
    let answer = match model {
        Model::Lite => lite(state, fields, d).await,
        Model::Beta => beta(state, fields, d),
        _ => gpt_all::generate(state, fields, d).await,
    };
    answer.map_err(IntoResponse::into_response)
}

/// gpt-image-2-lite: waits for the job, answers the task envelope (`completed` with
/// `resultUrls`, or `failed` with `failMsg`, always HTTP 200).
async fn lite(state: &AppState, f: Fields, d: Directives) -> ApiResult {
    let prompt = f.prompt()?;
    let (width, height) = match f.str("size")?.map(str::trim) {
        None | Some("auto") => (1024, 1024),
        Some(s) => gpt_size(s)?,
    };
    let quality = Quality::parse(f.str("quality")?)?;
    let format = output_format(f.str("output_format")?)?;
    let n = count(f.int("n")?, 10)?;
    let mut refs = url_refs(&f)?;
    if let Some(b) = f.str("image_base64")? {
        require_image_base64("image_base64", b)?;
        refs += 1;
    }
    check_reference_count(refs)?;
    if let Some(m) = f.str("mask_base64")? {
        require_png_base64("mask_base64", m)?;
        if refs == 0 {
            return Err(ApiError::bad_request(
                "mask_base64 requires a reference image (image_url, image_base64 or image_urls)",
            ));
        }
    }
    let job = Job {
        model: Model::Lite,
        prompt,
        width,
        height,
        format,
        count: n,
        quality: Some(quality),
        latency: d.latency(state.scaled(LITE_LATENCY_SECS)),
        queued: false,
        callback_url: f.callback("callback_url")?,
        directives: d,
        param: redact(f.to_value()),
    };
    let (id, _) = jobs::finished(jobs::start(state, job)).await?;
    let data = jobs::view_of(state, &id).ok_or_else(ApiError::shutting_down)?;
    Ok(envelope(data))
}

/// gpt-image-2-beta: asynchronous; answers `{"taskId","state":"pending"}` at once.
///
/// References are URLs only: `image_url` / `image_urls` holding base64 or data URLs, and the
/// byte-carrying fields other models take (`image`, `image_base64`, `images`, `mask_base64`),
/// are rejected with 400 rather than silently ignored.
fn beta(state: &AppState, f: Fields, d: Directives) -> ApiResult {
    let prompt = f.prompt()?;
    let ratio_text = f.str("aspect_ratio")?.map_or("1:1", str::trim);
    let ratio = match parse_ratio(ratio_text) {
        Some(r) if FIXED_RATIOS.contains(&ratio_text) => r,
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid aspect_ratio {ratio_text:?}: expected one of {}",
                FIXED_RATIOS.join(", ")
            )))
        }
    };
    for key in ["image", "image_base64", "images", "mask_base64", "mask_url"] {
        if f.has(key) {
            return Err(ApiError::bad_request(format!(
                "{key} is not supported by gpt-image-2-beta: pass reference images as URLs in image_url / image_urls"
            )));
        }
    }
    check_reference_count(url_refs(&f)?)?;
    f.bool("nsfw_checker")?;
    let (width, height) = beta_size(ratio);
    let job = Job {
        model: Model::Beta,
        prompt,
        width,
        height,
        format: Format::Png,
        count: 1,
        quality: None,
        latency: d.latency(state.scaled_between(15.0, 40.0)),
        queued: true,
        callback_url: f.callback("callback_url")?,
        directives: d,
        param: redact(f.to_value()),
    };
    let started = jobs::start(state, job);
    Ok(envelope(
        json!({"taskId": started.task_id, "state": "pending"}),
    ))
}

/// Checks `image_url` and `image_urls` (http(s) URLs only) and counts them.
fn url_refs(f: &Fields) -> Result<usize, ApiError> {
    let mut refs = 0;
    if let Some(u) = f.str("image_url")? {
        require_url("image_url", u)?;
        refs += 1;
    }
    if let Some(list) = f.str_list("image_urls")? {
        for u in &list {
            require_url("image_urls[]", u)?;
        }
        refs += list.len();
    }
    Ok(refs)
}

pub(crate) fn check_reference_count(refs: usize) -> Result<(), ApiError> {
    if refs > MAX_REFERENCES {
        return Err(ApiError::bad_request(format!(
            "too many reference images ({refs}): at most {MAX_REFERENCES}"
        )));
    }
    Ok(())
}
