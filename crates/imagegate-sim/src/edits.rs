//! `POST /api/v1/images/edits`: `gpt-image-2-all` in the OpenAI `images.edit()` multipart shape,
//! always synchronous (seed 001).
//!
//! Parts: `image`, or repeated `image[]` / `image[N]` (1–16 files, each PNG, JPEG or WEBP by
//! magic bytes); optional `mask` (PNG); text parts `prompt` (required), `model` (absent or
//! `gpt-image-2-all`), `size` (`WxH` under the gpt-image-2 rules; absent or `auto` means
//! 1024x1024), `quality`, `n` (1–10), `response_format` (`b64_json` default, or `url` for URL-only
//! items), `output_format`, `background`. Other text parts are accepted and ignored.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::api::{ApiError, ApiResult};
use super::faults::{directives, Directives};
use super::generations::MAX_REFERENCES;
use super::gpt_all::{check_background, gpt_size, openai_answer};
use super::jobs::{self, Job, Model};
use super::params::{count, output_format, Fields, Quality};
use super::render::{sniff, Kind};
use super::state::AppState;

/// The multipart body, read whole.
struct Parts {
    /// Kinds of the `image` files, in order.
    images: Vec<Kind>,
    mask: Option<Kind>,
    text: Map<String, Value>,
}

/// `POST /api/v1/images/edits`.
pub(crate) async fn edit(
    State(state): State<AppState>,
    mp: Result<Multipart, MultipartRejection>,
) -> Response {
    let result = match mp {
        Ok(mp) => handle(&state, mp).await,
        Err(e) => Err(ApiError::bad_request(format!(
            "expected a multipart/form-data body: {e}"
        ))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn read_parts(mut mp: Multipart) -> Result<Parts, ApiError> {
    let mut parts = Parts {
        images: Vec::new(),
        mask: None,
        text: Map::new(),
    };
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("invalid multipart body: {e}"))
    };
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some();
        let data = field.bytes().await.map_err(bad)?;
        if name == "image" || name.starts_with("image[") {
            parts.images.push(sniff(&data));
        } else if name == "mask" {
            parts.mask = Some(sniff(&data));
        } else if !is_file {
            let text = String::from_utf8_lossy(&data).into_owned();
            parts.text.insert(name, Value::String(text));
        }
    }
    Ok(parts)
}

async fn handle(state: &AppState, mp: Multipart) -> ApiResult {
    let parts = read_parts(mp).await?;
    let f = Fields::from_map(parts.text);
    if let Some(m) = f.str("model")?.map(str::trim) {
        if m != Model::All.name() {
            return Err(ApiError::bad_request(format!(
                "unsupported model for /images/edits: {m} (only gpt-image-2-all)"
            )));
        }
    }
    let d = directives(state, Model::All, f.raw_prompt());
    if let Some(r) = d.http_fault() {
        return Ok(r);
    }
    run(state, &f, &parts.images, parts.mask, d).await
}

async fn run(
    state: &AppState,
    f: &Fields,
    images: &[Kind],
    mask: Option<Kind>,
    d: Directives,
) -> ApiResult {
    let prompt = f.prompt()?;
    if images.is_empty() {
        return Err(ApiError::bad_request("image is required"));
    }
    if images.len() > MAX_REFERENCES {
        return Err(ApiError::bad_request(format!(
            "too many images ({}): at most {MAX_REFERENCES}",
            images.len()
        )));
    }
    if images.contains(&Kind::Other) {
        return Err(ApiError::bad_request(
            "every image must be a PNG, JPEG or WEBP file",
        ));
    }
    if matches!(mask, Some(k) if k != Kind::Png) {
        return Err(ApiError::bad_request("mask must be a PNG file"));
    }
    let (width, height) = match f.str("size")?.map(str::trim) {
        None | Some("auto") => (1024, 1024),
        Some(s) => gpt_size(s)?,
    };
    let quality = Quality::parse(f.str("quality")?)?;
    let n = match f.str("n")?.map(str::trim) {
        None => 1,
        Some(s) => count(
            Some(
                s.parse()
                    .map_err(|_| ApiError::bad_request("n must be an integer"))?,
            ),
            10,
        )?,
    };
    let url_only = match f.str("response_format")?.map(str::trim) {
        None | Some("b64_json") => false,
        Some("url") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid response_format {other:?}: expected b64_json or url"
            )))
        }
    };
    let format = output_format(f.str("output_format")?)?;
    check_background(f.str("background")?)?;
    let mut param = f.to_value();
    param["image_count"] = Value::from(images.len());
    let job = Job {
        model: Model::All,
        prompt,
        width,
        height,
        format,
        count: n,
        quality: Some(quality),
        latency: d.latency(state.scaled(quality.all_latency_secs())),
        queued: false,
        callback_url: None,
        directives: d,
        param,
    };
    let (_, result) = jobs::finished(jobs::start(state, job)).await?;
    openai_answer(result, url_only, false)
}
