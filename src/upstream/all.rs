//! gpt-image-2-all: two shapes behind one model.
//!
//! - **Sync** (a `WxH` size): OpenAI-shaped `POST /api/v1/images/generations` (JSON) answering
//!   `{"created","data":[{"b64_json","url"}]}`, or multipart `POST /api/v1/images/edits` for
//!   uploads, masks and several images.
//! - **Async** (the client sent `aspect_ratio`/`resolution` instead of a size): the task envelope,
//!   polled by the task engine.
//!
//! Size rules are checked here before any call: multiples of 16, longest side ≤ 3840, ratio ≤ 3:1,
//! 655,360–8,294,400 pixels.

use std::borrow::Cow;

use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{task, Body, CallCtx, FailureKind, Image, Output, Upstream, UpstreamError};
use crate::error::ApiError;
use crate::model::{ModelId, Quality, Size, Text};
use crate::request::{ImageRef, ImageRequest, ResponseFormat};

/// Used when the client leaves the size to us and did not ask for the async aspect-ratio mode.
const DEFAULT_SIZE: Size = Size {
    width: 1024,
    height: 1024,
};
const RESOLUTIONS: [&str; 3] = ["1K", "2K", "4K"];

#[derive(Debug)]
pub enum Plan {
    SyncJson(Value),
    SyncEdit(EditForm),
    Async(Value),
}

/// The multipart edit, kept as parts so the form is built (and the bytes shared, not copied) at
/// send time.
#[derive(Debug, Clone)]
pub struct EditForm {
    text: Vec<(&'static str, String)>,
    images: Vec<(bytes::Bytes, &'static str)>,
    mask: Option<bytes::Bytes>,
}

/// The gpt-image-2 size rules (shared by lite, which is the same model family).
pub fn check_size(model: ModelId, s: Size) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::invalid(
            "size",
            format!("Size {s} is not valid for {model}: {why}."),
        ))
    };
    if !s.width.is_multiple_of(16) || !s.height.is_multiple_of(16) {
        return bad("both sides must be multiples of 16");
    }
    if s.longest() > 3840 {
        return bad("the longest side must be at most 3840");
    }
    let (long, short) = (s.longest(), s.width.min(s.height));
    if long > short.saturating_mul(3) {
        return bad("the aspect ratio must be at most 3:1");
    }
    if !(655_360..=8_294_400).contains(&s.pixels()) {
        return bad("the total pixel count must be between 655,360 and 8,294,400");
    }
    Ok(())
}

pub fn plan(req: &ImageRequest) -> Result<Plan, ApiError> {
    let aspect = req.extra_str("aspect_ratio")?;
    let resolution = req.extra_str("resolution")?;
    let asynchronous = req.size.is_none() && (aspect.is_some() || resolution.is_some());

    let mut body = Map::new();
    body.insert("model".into(), json!(ModelId::All.as_str()));
    body.insert("prompt".into(), json!(req.prompt));
    if req.quality != Quality::Auto {
        body.insert("quality".into(), json!(req.quality.as_str()));
    }
    if req.n > 1 {
        body.insert("n".into(), json!(req.n));
    }
    if let Some(bg) = &req.background {
        body.insert("background".into(), json!(bg));
    }
    if let Some(f) = req.output_format {
        body.insert("output_format".into(), json!(f.as_str()));
    }

    if asynchronous {
        let aspect = aspect.unwrap_or("1:1");
        check_aspect(aspect)?;
        let resolution = resolution.unwrap_or("1K");
        if !RESOLUTIONS.contains(&resolution) {
            return Err(ApiError::invalid(
                "resolution",
                format!("Invalid resolution `{resolution}`: use 1K, 2K or 4K."),
            ));
        }
        body.insert("aspect_ratio".into(), json!(aspect));
        body.insert("resolution".into(), json!(resolution));
        add_json_refs(req, &mut body)?;
        return Ok(Plan::Async(Value::Object(body)));
    }

    let size = req.size.unwrap_or(DEFAULT_SIZE);
    check_size(ModelId::All, size)?;
    body.insert("size".into(), json!(size.to_string()));

    if !req.has_bytes() && !matches!(req.mask, Some(ImageRef::Bytes { .. })) {
        add_json_refs(req, &mut body)?;
        return Ok(Plan::SyncJson(Value::Object(body)));
    }

    // Uploads go through the OpenAI-shaped multipart edit endpoint.
    if !req.urls().is_empty() {
        return Err(ApiError::unsupported(
            "image",
            "gpt-image-2-all cannot mix uploaded images with image URLs in one edit.",
        ));
    }
    if matches!(req.mask, Some(ImageRef::Url(_))) {
        return Err(ApiError::unsupported(
            "mask",
            "gpt-image-2-all takes a mask URL only with image URLs; upload the mask with uploaded images.",
        ));
    }
    let mut text: Vec<(&'static str, String)> = vec![
        ("model", ModelId::All.as_str().to_owned()),
        ("prompt", req.prompt.clone()),
        ("size", size.to_string()),
    ];
    for key in ["quality", "n", "background", "output_format"] {
        if let Some(v) = body.get(key) {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push((key, s));
        }
    }
    if req.response_format == ResponseFormat::Url {
        text.push(("response_format", "url".to_owned()));
    }
    let images = req
        .images
        .iter()
        .filter_map(|r| match r {
            ImageRef::Bytes { data, format } => Some((data.clone(), format.mime())),
            ImageRef::Url(_) => None,
        })
        .collect();
    let mask = match &req.mask {
        Some(ImageRef::Bytes { data, .. }) => Some(data.clone()),
        _ => None,
    };
    Ok(Plan::SyncEdit(EditForm { text, images, mask }))
}

/// References for the JSON shapes (sync generation and async task).
fn add_json_refs(req: &ImageRequest, body: &mut Map<String, Value>) -> Result<(), ApiError> {
    super::envelope_refs(
        ModelId::All,
        req,
        body,
        "gpt-image-2-all's aspect_ratio mode takes one uploaded image; give a WxH size to send up to 16.",
        true,
    )
}

fn check_aspect(aspect: &str) -> Result<(), ApiError> {
    let ok = aspect.split_once(':').is_some_and(|(w, h)| {
        matches!((w.parse::<u32>(), h.parse::<u32>()), (Ok(w), Ok(h)) if w > 0 && h > 0 && w <= h * 3 && h <= w * 3)
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "aspect_ratio",
            format!(
                "Invalid aspect_ratio `{aspect}`: use W:H with a ratio of at most 3:1, e.g. 16:9."
            ),
        ))
    }
}

pub async fn execute(up: &Upstream, plan: Plan, ctx: &CallCtx) -> Result<Output, UpstreamError> {
    match plan {
        Plan::SyncJson(body) => {
            let answer = up
                .post_json("/api/v1/images/generations", &body, ctx)
                .await?;
            openai_images(&answer.body)
        }
        Plan::SyncEdit(form) => {
            let answer = up
                .post_form("/api/v1/images/edits", &|| form.clone().into_form(), ctx)
                .await?;
            openai_images(&answer.body)
        }
        Plan::Async(body) => {
            // Only the async shape: a callback on a sync request would switch it to async.
            let body = super::with_callback(up, body);
            let created = up
                .post_json("/api/v1/images/generations", &body, ctx)
                .await?;
            task::run_envelope(up, up.model_config(ModelId::All), created, ctx).await
        }
    }
}

impl EditForm {
    fn into_form(self) -> Form {
        let mut form = Form::new();
        for (k, v) in self.text {
            form = form.text(k, v);
        }
        let name = if self.images.len() == 1 {
            "image"
        } else {
            "image[]"
        };
        for (i, (data, mime)) in self.images.into_iter().enumerate() {
            let ext = mime.trim_start_matches("image/");
            let part = Part::stream(data)
                .file_name(format!("image-{i}.{ext}"))
                .mime_str(mime)
                .unwrap_or_else(|_| Part::bytes(Vec::new()));
            form = form.part(name, part);
        }
        if let Some(mask) = self.mask {
            let part = Part::stream(mask)
                .file_name("mask.png")
                .mime_str("image/png")
                .unwrap_or_else(|_| Part::bytes(Vec::new()));
            form = form.part("mask", part);
        }
        form
    }
}

/// Reads an OpenAI-shaped answer: `data[]` with `b64_json` and/or `url`. The base64 text is kept
/// as it came, never decoded and re-encoded, and not even copied: each image's `b64_json` is a
/// slice of the answer's own buffer (a string with JSON escapes in it, which base64 never has,
/// is unescaped into its own buffer). In a body of printable ASCII ([`Body`]), a `b64_json`
/// taken as it stood is plain JSON text without a check of its own.
fn openai_images(body: &Body) -> Result<Output, UpstreamError> {
    let raw = &body.bytes;
    let answer: OpenAiAnswer<'_> = serde_json::from_slice(raw).map_err(|e| {
        UpstreamError::new(
            FailureKind::Malformed,
            format!("answer is not an images answer: {e}"),
        )
    })?;
    let Some(items) = answer.data else {
        return Err(UpstreamError::new(
            FailureKind::Malformed,
            "answer has no `data` array".to_owned(),
        ));
    };
    let images: Vec<Image> = items
        .into_iter()
        .map(|item| Image {
            b64: item.b64_json.map(|s| match s.0 {
                // Between its quotes, without escapes (see `RawStr`).
                Cow::Borrowed(s) if body.printable => Text::of_printable(raw.slice_ref(s)),
                Cow::Borrowed(s) => Text::new(raw.slice_ref(s)),
                Cow::Owned(s) => Text::new(Bytes::from(s)),
            }),
            url: item
                .url
                .map(|u| String::from_utf8_lossy(&u.0).into_owned()),
        })
        .filter(|i| i.b64.is_some() || i.url.is_some())
        .collect();
    if images.is_empty() {
        return Err(UpstreamError::new(
            FailureKind::Malformed,
            "answer has no images".to_owned(),
        ));
    }
    Ok(Output {
        images,
        ..Output::default()
    })
}

/// The part of an OpenAI-shaped answer the gateway reads, borrowed from the answer's buffer.
#[derive(Deserialize)]
struct OpenAiAnswer<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<OpenAiItem<'a>>>,
}

#[derive(Deserialize)]
struct OpenAiItem<'a> {
    #[serde(borrow, default)]
    b64_json: Option<RawStr<'a>>,
    #[serde(borrow, default)]
    url: Option<RawStr<'a>>,
}

/// A string's bytes as they stand between its quotes (unescaped only if it has escapes, which
/// base64 never has). Read by a byte scan for the closing quote, neither checked as UTF-8 nor
/// for control characters: a base64 text is checked once, when it is written out
/// ([`crate::model::JsonWriter::string`]); a URL is made UTF-8 here and checked against the URL
/// policy before it is used.
struct RawStr<'a>(Cow<'a, [u8]>);

impl<'de: 'a, 'a> Deserialize<'de> for RawStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_borrowed_bytes<E>(self, b: &'de [u8]) -> Result<RawStr<'de>, E> {
                Ok(RawStr(Cow::Borrowed(b)))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<RawStr<'de>, E> {
                Ok(RawStr(Cow::Owned(b.to_vec())))
            }
            fn visit_byte_buf<E>(self, b: Vec<u8>) -> Result<RawStr<'de>, E> {
                Ok(RawStr(Cow::Owned(b)))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: Bytes, printable: bool) -> Body {
        Body { bytes, printable }
    }

    /// The base64 of an answer is a slice of the answer's buffer, not a copy; an escaped URL is
    /// unescaped; an item with no image is skipped; no `data`, or a `b64_json` that is not a
    /// string, is malformed.
    #[test]
    fn answer_images_are_slices_of_the_answer() {
        let b64 = "iVBORw0KGgo".repeat(3000);
        let raw = Bytes::from(
            serde_json::json!({"created": 1, "data": [
                {"b64_json": b64, "revised_prompt": "p"},
                {"url": "https://files.example/a\\/b.png", "b64_json": null},
                {"revised_prompt": "an item with no image"},
            ]})
            .to_string(),
        );
        let out = openai_images(&body(raw.clone(), false)).unwrap();
        assert_eq!(out.images.len(), 2);
        let first = out.images[0].b64.as_ref().unwrap();
        assert_eq!(&**first, b64.as_bytes());
        let inside = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
        assert!(inside.contains(&(first.as_ptr() as usize)), "not a copy");
        assert_eq!(out.images[1].url.as_deref(), Some("https://files.example/a\\/b.png"));
        assert!(out.images[1].b64.is_none());
        for bad in [r#"{"created":1}"#, r#"{"data":[{"b64_json":7}]}"#, "[1]", "{\"data\": ["] {
            let e = openai_images(&body(Bytes::from(bad), false)).unwrap_err();
            assert_eq!(e.kind, FailureKind::Malformed, "{bad}");
        }
    }

    /// In an answer of printable ASCII, a `b64_json` without escapes is plain JSON text as it
    /// stood (written out as a piece shared with the answer); one with escapes is unescaped and
    /// checked, and so escaped again when written.
    #[test]
    fn a_printable_answer_s_base64_is_plain_as_it_stood() {
        use crate::model::json_text::{printable_ascii, OWN_PIECE};
        let b64 = "QUJD".repeat(OWN_PIECE);
        let raw = Bytes::from(format!(
            r#"{{"data":[{{"b64_json":"{b64}"}},{{"b64_json":"QU\nJD"}}]}}"#
        ));
        assert!(printable_ascii(&raw));
        let out = openai_images(&body(raw, true)).unwrap();
        let (first, second) = (
            out.images[0].b64.as_ref().unwrap(),
            out.images[1].b64.as_ref().unwrap(),
        );
        let mut w = crate::model::JsonWriter::new();
        w.raw("[").text(first).raw(",").text(second).raw("]");
        let text = w.finish();
        assert!(text.parts().iter().any(|p| p.as_ptr() == first.as_ptr()));
        let back: Vec<String> = serde_json::from_str(&text.to_text()).unwrap();
        assert_eq!(back, [b64, "QU\nJD".to_owned()]);
    }

    #[test]
    fn size_rules() {
        let ok = |s| check_size(ModelId::All, Size::parse(s).unwrap()).is_ok();
        assert!(ok("1024x1024"));
        assert!(ok("3840x2160"));
        assert!(ok("2048x1152"));
        assert!(!ok("1000x1000"), "multiple of 16");
        assert!(!ok("4096x2304"), "longest side");
        assert!(!ok("2400x768"), "ratio above 3:1");
        assert!(!ok("512x512"), "too few pixels");
        assert!(ok("1024x640"), "exactly 655,360 pixels");
    }

    #[test]
    fn aspect_rules() {
        assert!(check_aspect("16:9").is_ok());
        assert!(check_aspect("4:1").is_err());
        assert!(check_aspect("wide").is_err());
    }
}
