//! Result images: what an adapter hands back ([`Image`]) and how a result URL becomes bytes for a
//! `b64_json` answer — concurrently, from allowed hosts only, with a size cap and a timeout, and
//! without the upstream key.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use tokio::time::Instant;

use super::{CallCtx, FailureKind, Upstream, UpstreamError};
use crate::metrics::{CallOutcome, Phase};
use crate::model::{image_dimensions, ImageFormat, Size, Text};

/// One produced image: inline base64 (from an OpenAI-shaped sync answer), a URL, or both. The
/// base64 text is a slice of the upstream's answer, checked once for JSON: cloned by reference,
/// never copied.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub b64: Option<Text>,
    pub url: Option<String>,
}

impl Image {
    pub fn url(url: String) -> Self {
        Self {
            b64: None,
            url: Some(url),
        }
    }
}

/// An image ready for the client: base64 text plus what the gateway learned from its bytes.
#[derive(Debug)]
pub struct Encoded {
    /// Base64 text.
    pub b64: Text,
    pub format: Option<ImageFormat>,
    pub size: Option<Size>,
}

/// A downloaded result file made ready for a `b64_json` answer: converted between PNG, JPEG and
/// WEBP first when it is not in the `wanted` format (kept as made when it cannot be read), then
/// base64-encoded.
pub fn encode(bytes: Bytes, wanted: ImageFormat) -> Encoded {
    match ImageFormat::sniff(&bytes) {
        Some(have) if have != wanted => match super::transcode::convert(&bytes, wanted) {
            Some(converted) => encode_as_is(&converted),
            None => encode_as_is(&bytes),
        },
        _ => encode_as_is(&bytes),
    }
}

/// An inline base64 image (gpt-image-2-all's sync answer) in the `wanted` format: passed through
/// untouched when it already is (the common case, no decoding), else decoded, converted and
/// encoded again. Runs on the blocking pool when a conversion is needed.
pub async fn inline(b64: Text, wanted: ImageFormat) -> Encoded {
    let head = peek_b64(&b64, 32);
    let have = ImageFormat::sniff(&head);
    if have.is_none() || have == Some(wanted) {
        let size = image_dimensions(&head).or_else(|| image_dimensions(&peek_b64(&b64, PEEK)));
        return Encoded {
            b64,
            format: have,
            size,
        };
    }
    let as_made = |b64: Text| Encoded {
        size: image_dimensions(&peek_b64(&b64, PEEK)),
        b64,
        format: have,
    };
    let original = b64.clone();
    let convert = move || match base64::engine::general_purpose::STANDARD.decode(&b64) {
        Ok(bytes) => Some(encode(Bytes::from(bytes), wanted)),
        Err(_) => None,
    };
    match tokio::task::spawn_blocking(convert).await {
        Ok(Some(encoded)) => encoded,
        _ => as_made(original),
    }
}

/// How much of an inline image is decoded to find a JPEG's or WEBP's size: the SOF marker comes
/// after the metadata segments.
const PEEK: usize = 64 * 1024;

/// Decodes the first `bytes` bytes (about) of a base64 image.
fn peek_b64(b64: &[u8], bytes: usize) -> Vec<u8> {
    // Whole groups of four characters only.
    let whole = b64.len() & !3;
    let chars = bytes.div_ceil(3).saturating_mul(4).min(whole);
    base64::engine::general_purpose::STANDARD
        .decode(b64.get(..chars).unwrap_or_default())
        .unwrap_or_default()
}

fn encode_as_is(bytes: &[u8]) -> Encoded {
    Encoded {
        b64: Text::base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        format: ImageFormat::sniff(bytes),
        size: image_dimensions(bytes),
    }
}

impl Upstream {
    /// Downloads every URL concurrently and base64-encodes each, converting it first when the
    /// file is not in the `wanted` format. All must succeed.
    pub async fn fetch_b64(
        &self,
        urls: &[&str],
        wanted: ImageFormat,
        ctx: &CallCtx,
    ) -> Result<Vec<Encoded>, UpstreamError> {
        let fetches = urls.iter().map(|url| async move {
            let bytes = self.fetch(url, ctx).await?;
            if ImageFormat::sniff(&bytes) == Some(wanted) {
                return Ok(encode(bytes, wanted));
            }
            // Decoding and encoding an image is CPU work: keep it off the I/O threads.
            let fallback = bytes.clone();
            Ok::<_, UpstreamError>(
                tokio::task::spawn_blocking(move || encode(bytes, wanted))
                    .await
                    .unwrap_or_else(|_| encode_as_is(&fallback)),
            )
        });
        futures_util::future::try_join_all(fetches).await
    }

    /// Downloads one result file, timed into the request's upstream clock and counted as a
    /// `download` call of the context's model.
    async fn fetch(&self, url: &str, ctx: &CallCtx) -> Result<Bytes, UpstreamError> {
        let _waiting = ctx.wait.enter();
        let started = Instant::now();
        let result = self.download(url, ctx).await;
        let outcome = CallOutcome::of(&result);
        self.metrics
            .upstream_call(ctx.model, Phase::Download, outcome, started.elapsed());
        if let Ok(bytes) = &result {
            self.metrics.downloaded(ctx.model, bytes.len());
        }
        result
    }

    /// Whether `url` may be fetched or handed to a client: the URL policy (scheme, literal
    /// address) and `results.allowed_hosts`. Resolved addresses are checked when a download
    /// connects.
    pub fn check_result_url(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "invalid result URL".to_owned())?;
        self.urls
            .check(&parsed)
            .map_err(|why| format!("result URL refused: {why}"))?;
        if !self.host_allowed(&parsed) {
            return Err(format!(
                "result host `{}` is not in results.allowed_hosts",
                parsed.host_str().unwrap_or("")
            ));
        }
        Ok(())
    }

    async fn download(&self, url: &str, ctx: &CallCtx) -> Result<Bytes, UpstreamError> {
        let err = |msg: String| UpstreamError::new(FailureKind::Download, msg);
        self.check_result_url(url)
            .map_err(|why| err(why).lasting())?;
        let parsed = reqwest::Url::parse(url).map_err(|_| err("invalid result URL".to_owned()))?;
        let limit = self.results.timeout.min(ctx.remaining());
        let max = self.results.max_bytes;
        let download = async {
            let res = self
                .files
                .get(parsed)
                .header("x-request-id", &ctx.request_id)
                .send()
                .await
                .map_err(|e| err(e.without_url_string()))?;
            if !res.status().is_success() {
                return Err(err(format!(
                    "result file answered HTTP {}",
                    res.status().as_u16()
                )));
            }
            if res.content_length().is_some_and(|len| len > max as u64) {
                return Err(err(format!("result file is larger than {max} bytes")).lasting());
            }
            let mut buf = BytesMut::with_capacity(res.content_length().unwrap_or(0) as usize);
            let mut stream = res.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| err(e.without_url_string()))?;
                if buf.len().saturating_add(chunk.len()) > max {
                    return Err(err(format!("result file is larger than {max} bytes")).lasting());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        };
        let bytes = match tokio::time::timeout(limit, download).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(UpstreamError::new(
                    FailureKind::Timeout,
                    "result download timed out".to_owned(),
                ))
            }
        };
        if ImageFormat::sniff(&bytes).is_none() {
            return Err(err("result file is not a PNG, JPEG or WEBP image".to_owned()).lasting());
        }
        Ok(bytes)
    }

    fn host_allowed(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let with_port = url.port().map(|p| format!("{host}:{p}"));
        self.results.allowed_hosts.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(host)
                || with_port
                    .as_deref()
                    .is_some_and(|hp| allowed.eq_ignore_ascii_case(hp))
        })
    }
}

use super::WithoutUrl as _;
