//! The answer's body from what the upstream made: OpenAI's `ImagesResponse`.
//!
//! `b64_json` is taken as the upstream sent it when it sent one in the wanted format; result URLs
//! are downloaded concurrently otherwise, and converted when the model made another format.
//! `url` answers the upstream URL as is. The answer's `size` and `output_format` describe the
//! bytes delivered, read from the image itself; a `url` answer, whose bytes the gateway never
//! holds, leaves them out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::UpstreamWait;
use crate::model::{ImageFormat, ModelId, Quality};
use crate::request::{ImageRequest, ResponseFormat};
use crate::upstream::failure::{FailureKind, UpstreamError};
use crate::upstream::{results, CallCtx, Image, Upstreams};

/// Where and how long result files may be fetched for one request.
#[derive(Clone, Copy)]
pub struct Fetch<'a> {
    pub upstream: &'a dyn Upstreams,
    pub timeout: Duration,
    pub request_id: &'a str,
    pub model: ModelId,
    pub wait: &'a UpstreamWait,
}

/// Builds the `ImagesResponse` body for `images` made for `req`.
pub async fn body(
    fetch: Fetch<'_>,
    req: &ImageRequest,
    images: Vec<Image>,
) -> Result<Value, ApiError> {
    // A stream always carries base64 images.
    let format = if req.stream {
        ResponseFormat::B64Json
    } else {
        req.response_format
    };
    let mut data = Vec::with_capacity(images.len());
    let mut learned_format = None;
    let mut learned_size = None;
    match format {
        ResponseFormat::Url => {
            for img in images {
                // NOTE: an answer with no URL at all (inline base64 only) is returned as b64_json.
                data.push(match (img.url, img.b64) {
                    (Some(url), _) => {
                        // A client is handed only URLs the gateway itself would fetch.
                        fetch.upstream.check_result_url(&url).map_err(|why| {
                            ApiError::from_upstream(&UpstreamError::new(FailureKind::Download, why))
                        })?;
                        json!({ "url": url })
                    }
                    (None, Some(b64)) => json!({ "b64_json": b64 }),
                    (None, None) => continue,
                });
            }
        }
        ResponseFormat::B64Json => {
            let to_fetch: Vec<String> = images
                .iter()
                .filter(|i| i.b64.is_none())
                .filter_map(|i| i.url.clone())
                .collect();
            let ctx = CallCtx {
                deadline: Instant::now() + fetch.timeout,
                call_deadline: Instant::now() + fetch.timeout,
                journal: None,
                request_id: fetch.request_id.to_owned(),
                model: fetch.model,
                wait: fetch.wait.clone(),
            };
            // OpenAI's default output format is PNG.
            let wanted = req.output_format.unwrap_or(ImageFormat::Png);
            let mut fetched = fetch
                .upstream
                .fetch_b64(to_fetch, wanted, &ctx)
                .await?
                .into_iter();
            for img in images {
                let enc = match img.b64 {
                    Some(b64) => results::inline(b64, wanted).await,
                    None => match fetched.next() {
                        Some(enc) => enc,
                        None => continue,
                    },
                };
                learned_format = learned_format.or(enc.format);
                learned_size = learned_size.or(enc.size);
                data.push(json!({ "b64_json": enc.b64 }));
            }
        }
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut body = json!({ "created": created, "data": data });
    if let Some(size) = learned_size {
        body["size"] = json!(size.to_string());
    }
    if req.quality != Quality::Auto {
        body["quality"] = json!(req.quality.as_str());
    }
    if let Some(f) = learned_format {
        body["output_format"] = json!(f.as_str());
    }
    if let Some(bg @ ("transparent" | "opaque")) = req.background.as_deref() {
        body["background"] = json!(bg);
    }
    Ok(body)
}
