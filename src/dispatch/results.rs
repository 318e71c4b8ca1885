//! The answer's body from what the upstream made: OpenAI's `ImagesResponse`.
//!
//! `b64_json` is taken as the upstream sent it when it sent one in the wanted format; result URLs
//! are downloaded concurrently otherwise, and converted when the model made another format.
//! `url` answers the upstream URL as is. The answer's `size` and `output_format` describe the
//! bytes delivered, read from the image itself; a `url` answer, whose bytes the gateway never
//! holds, leaves them out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::UpstreamWait;
use crate::model::{ImageFormat, JsonText, JsonWriter, ModelId, Quality, Text};
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

/// OpenAI's `ImagesResponse`: `created` and the answer's other scalar fields, and `data[]`. The
/// base64 of each image is the buffer it arrived in (see [`JsonText`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ImagesBody {
    /// `created`, `size`, `quality`, `output_format`, `background`.
    pub head: Map<String, Value>,
    pub data: Vec<Item>,
}

/// One image of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Base64 text.
    B64(Text),
    Url(String),
}

impl ImagesBody {
    /// The JSON text, with each image's base64 as its own piece.
    pub fn into_json(self) -> JsonText {
        let mut w = JsonWriter::new();
        w.raw("{");
        for (k, v) in &self.head {
            w.value(k).raw(":").value(v).raw(",");
        }
        w.raw("\"data\":[");
        for (i, item) in self.data.into_iter().enumerate() {
            if i > 0 {
                w.raw(",");
            }
            match item {
                Item::B64(b64) => w.raw("{\"b64_json\":").text(&b64).raw("}"),
                Item::Url(url) => w.raw("{\"url\":").value(&url).raw("}"),
            };
        }
        w.raw("]}");
        w.finish()
    }

    /// The answer as a JSON value (copies the base64: for the job object, streams and tests).
    pub fn to_value(&self) -> Value {
        let mut o = self.head.clone();
        let data = self
            .data
            .iter()
            .map(|item| match item {
                Item::B64(b64) => json!({ "b64_json": String::from_utf8_lossy(b64) }),
                Item::Url(url) => json!({ "url": url }),
            })
            .collect();
        o.insert("data".into(), Value::Array(data));
        Value::Object(o)
    }
}

/// Builds the `ImagesResponse` body for `images` made for `req`.
pub async fn body(
    fetch: Fetch<'_>,
    req: &ImageRequest,
    images: Vec<Image>,
) -> Result<ImagesBody, ApiError> {
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
                        Item::Url(url)
                    }
                    (None, Some(b64)) => Item::B64(b64),
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
                data.push(Item::B64(enc.b64));
            }
        }
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut head = Map::new();
    head.insert("created".into(), json!(created));
    if let Some(size) = learned_size {
        head.insert("size".into(), json!(size.to_string()));
    }
    if req.quality != Quality::Auto {
        head.insert("quality".into(), json!(req.quality.as_str()));
    }
    if let Some(f) = learned_format {
        head.insert("output_format".into(), json!(f.as_str()));
    }
    if let Some(bg @ ("transparent" | "opaque")) = req.background.as_deref() {
        head.insert("background".into(), json!(bg));
    }
    Ok(ImagesBody { head, data })
}
