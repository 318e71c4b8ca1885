//! What an upstream model can do, as data: the catalog row of each model in
//! [`registry`](super::registry). The checks that read it against a request live in
//! `crate::catalog`.

use serde::Serialize;

use super::ImageFormat;

/// How a model takes a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSupport {
    None,
    /// An uploaded PNG only.
    Upload,
    /// An uploaded PNG, or a URL when no image is uploaded.
    UploadOrUrl,
}

/// Which output sizes a model makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeRule {
    /// gpt-image-2: sides multiples of 16, longest ≤ 3840, ratio ≤ 3:1, 655,360–8,294,400 px.
    GptImage2,
    /// Any `WxH`: the nearest supported aspect ratio is sent.
    NearestRatio,
    /// Each side from `min` to `max` in steps of 16.
    Sides { min: u32, max: u32 },
}

/// What a group may do with an explicit `WxH` size (`x-imagegate-size-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizePolicy {
    /// Only models that make exactly that size (the default).
    #[default]
    Exact,
    /// Models that make the nearest aspect ratio are eligible too.
    Nearest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Sync,
    Async,
    /// Sync for `WxH` sizes, async tasks for `aspect_ratio`/`resolution`.
    SyncOrAsync,
}

/// One upstream model's capabilities.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub generate: bool,
    pub edit: bool,
    /// Most uploaded (byte) reference images; 0: URLs only.
    pub max_uploads: usize,
    /// Whether reference URLs are accepted.
    pub urls: bool,
    /// Whether uploads and URLs can be mixed in one request.
    pub mix_uploads_and_urls: bool,
    /// Most reference images of any kind.
    pub max_references: usize,
    pub mask: MaskSupport,
    pub transparent_background: bool,
    pub sizes: SizeRule,
    /// Edits (and generations with reference images) get the nearest aspect ratio, not `WxH`.
    pub nearest_ratio_on_edit: bool,
    /// Formats the model itself makes (`output_format`); the gateway converts the others when it
    /// holds the bytes (`b64_json`), never a `url` answer.
    pub output_formats: &'static [ImageFormat],
    /// `n` in one call; otherwise `n` independent calls.
    pub native_n: bool,
    pub mode: Mode,
    /// Typical latency (seconds) by quality `[low, medium, high]`: the routing prior until real
    /// traffic has been observed.
    pub typical_latency_s: [f64; 3],
}
