//! `gpt-image-2-all` on `POST /api/v1/images/generations` (seed 001), and the OpenAI-shaped
//! synchronous answer it shares with `POST /api/v1/images/edits`.
//!
//! Mode choice: **sync** when `size` is a `WxH` string and there is no `callback_url`; the call
//! waits the quality latency and answers `{"created","data":[{"b64_json","url"}…]}`.
//! `response_format` is ignored here (the seed documents `url` only for `/images/edits`), so
//! both fields are always present. **Async** otherwise: `aspect_ratio` is required and
//! `resolution` defaults to `1K`, except that a `WxH` size sent together with a `callback_url`
//! is used as the output size directly (no ratio needed). Async creates answer
//! `{"code":200,"msg":"success","data":{"taskId"}}` (no state, as the seed shows).
//!
//! Failures in sync mode: a policy rejection is HTTP 400 `{"code":400,"msg":"Content policy
//! violation: …"}`, other generation failures HTTP 500 `{"code":500,"msg":"Internal generation
//! error"}`.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::api::{ApiError, ApiResult};
use super::control::redact;
use super::faults::Directives;
use super::generations::check_reference_count;
use super::jobs::{self, envelope, Job, JobResult, Model};
use super::params::{
    count, output_format, require_image_base64, require_png_base64, require_url,
    require_url_or_image, Fields, Quality,
};
use super::sizes::{check_gpt_size, parse_ratio, parse_wxh, size_for_ratio, tier_side};
use super::state::{now_ms, AppState};

/// Parses and checks a gpt-image-2 `WxH` size (400 otherwise).
pub(crate) fn gpt_size(s: &str) -> Result<(u32, u32), ApiError> {
    let (w, h) = parse_wxh(s).ok_or_else(|| {
        ApiError::bad_request(format!("invalid size {s:?}: expected WxH, e.g. 1024x1024"))
    })?;
    check_gpt_size(w, h).map_err(ApiError::bad_request)?;
    Ok((w, h))
}

/// `background`: `transparent`, `opaque` or `auto`.
pub(crate) fn check_background(v: Option<&str>) -> Result<(), ApiError> {
    match v.map(str::trim) {
        None | Some("transparent" | "opaque" | "auto") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid background {other:?}: expected transparent, opaque or auto"
        ))),
    }
}

/// Checks the JSON reference fields; returns how many references there are.
///
/// `image` and `images[]` take a URL or base64; `image_base64` base64 only; `image_url`,
/// `image_urls[]` and `mask_url` URLs only; `mask_base64` a base64 PNG. A mask needs a reference.
fn check_references(f: &Fields) -> Result<usize, ApiError> {
    let mut refs = 0;
    if let Some(s) = f.str("image")? {
        require_url_or_image("image", s)?;
        refs += 1;
    }
    if let Some(s) = f.str("image_base64")? {
        require_image_base64("image_base64", s)?;
        refs += 1;
    }
    if let Some(s) = f.str("image_url")? {
        require_url("image_url", s)?;
        refs += 1;
    }
    if let Some(list) = f.str_list("image_urls")? {
        for s in &list {
            require_url("image_urls[]", s)?;
        }
        refs += list.len();
    }
    if let Some(list) = f.str_list("images")? {
        for s in &list {
            require_url_or_image("images[]", s)?;
        }
        refs += list.len();
    }
    check_reference_count(refs)?;
    let mut mask = false;
    if let Some(s) = f.str("mask_url")? {
        require_url("mask_url", s)?;
        mask = true;
    }
    if let Some(s) = f.str("mask_base64")? {
        require_png_base64("mask_base64", s)?;
        mask = true;
    }
    if mask && refs == 0 {
        return Err(ApiError::bad_request("a mask requires a reference image"));
    }
    Ok(refs)
}

/// gpt-image-2-all on the JSON endpoint.
pub(crate) async fn generate(state: &AppState, f: Fields, d: Directives) -> ApiResult {
    let prompt = f.prompt()?;
    let size = f.str("size")?.map(str::trim);
    let callback_url = f.callback("callback_url")?;
    let quality = Quality::parse(f.str("quality")?)?;
    let format = output_format(f.str("output_format")?)?;
    let n = count(f.int("n")?, 10)?;
    check_background(f.str("background")?)?;
    check_references(&f)?;
    let wxh = size.filter(|s| parse_wxh(s).is_some());
    let (width, height) = match wxh {
        Some(s) => gpt_size(s)?,
        None => ratio_size(&f)?,
    };
    let sync = wxh.is_some() && callback_url.is_none();
    let inline_only = d.inline_only;
    let job = Job {
        model: Model::All,
        prompt,
        width,
        height,
        format,
        count: n,
        quality: Some(quality),
        latency: d.latency(state.scaled(quality.all_latency_secs())),
        queued: !sync,
        callback_url,
        directives: d,
        param: redact(f.to_value()),
    };
    let started = jobs::start(state, job);
    if !sync {
        return Ok(envelope(json!({"taskId": started.task_id})));
    }
    let (_, result) = jobs::finished(started).await?;
    openai_answer(result, false, inline_only)
}

/// The async-mode size from `aspect_ratio` + `resolution`.
fn ratio_size(f: &Fields) -> Result<(u32, u32), ApiError> {
    let Some(text) = f.str("aspect_ratio")? else {
        return Err(ApiError::bad_request(
            "aspect_ratio is required when size is not WxH (async mode)",
        ));
    };
    let ratio = parse_ratio(text)
        .filter(|&(w, h)| u64::from(w.max(h)) <= 3 * u64::from(w.min(h)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid aspect_ratio {text:?}: expected W:H with a ratio of at most 3:1"
            ))
        })?;
    let res = f.str("resolution")?.unwrap_or("1K");
    let side = tier_side(res).ok_or_else(|| {
        ApiError::bad_request(format!("invalid resolution {res:?}: expected 1K, 2K or 4K"))
    })?;
    Ok(size_for_ratio(ratio, side))
}

/// The OpenAI images answer for a finished sync job; `url_only` drops `b64_json`, `b64_only`
/// drops `url`.
pub(crate) fn openai_answer(result: JobResult, url_only: bool, b64_only: bool) -> ApiResult {
    match result {
        JobResult::Completed { urls, images } => {
            let data: Vec<Value> = urls
                .iter()
                .zip(&images)
                .map(|(url, bytes)| {
                    if url_only {
                        json!({"url": url})
                    } else if b64_only {
                        json!({"b64_json": STANDARD.encode(bytes)})
                    } else {
                        json!({"b64_json": STANDARD.encode(bytes), "url": url})
                    }
                })
                .collect();
            let created = now_ms() / 1000;
            Ok(Json(json!({"created": created, "data": data})).into_response())
        }
        JobResult::Failed(f) if f.is_policy() => Err(ApiError::bad_request(
            "Content policy violation: the request was rejected by the safety system",
        )),
        JobResult::Failed(f) => Err(ApiError::with(
            StatusCode::INTERNAL_SERVER_ERROR,
            500,
            f.msg,
        )),
    }
}
