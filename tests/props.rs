//! Property tests: any request body the gateway parses, and any request it plans, ends in a
//! value or an OpenAI-shaped refusal — never a panic. Fixed seed count, so a run is bounded.

#![allow(
    clippy::unwrap_used,
    reason = "a property test's own setup fails loudly"
)]

use imagegate::catalog;
use imagegate::config::ModelsConfig;
use imagegate::model::{ImageFormat, ModelId, Size};
use imagegate::request::{Head, ImageRef, ImageRequest, Operation, VENDOR_EXTRAS};
use imagegate::upstream;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// OpenAI's field names the parser reads, plus noise; the vendor extras come from the parser.
const OPENAI_KEYS: [&str; 15] = [
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "response_format",
    "output_format",
    "background",
    "output_compression",
    "moderation",
    "stream",
    "user",
    "partial_images",
    "style",
    "x",
];

fn keys() -> Vec<&'static str> {
    OPENAI_KEYS
        .iter()
        .chain(VENDOR_EXTRAS.iter())
        .copied()
        .collect()
}

/// Values of every JSON kind, with edge cases the parser must survive.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("1024x1024".to_owned()),
            Just("4294967295x4294967295".to_owned()),
            Just("0x0".to_owned()),
            Just("3840x1280".to_owned()),
            Just("auto".to_owned()),
            Just("webp".to_owned()),
            Just("url".to_owned()),
            Just("1e20".to_owned()),
            Just("https://example.com/a.png".to_owned()),
            Just("data:image/png;base64,iVBORw0KGgo=".to_owned()),
            ".{0,40}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((".{0,6}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Up to ten fields; a prompt is added when none was drawn, so most cases get past the head.
fn fields() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((proptest::sample::select(keys()), value()), 0..10).prop_map(|kv| {
        let mut m: Map<String, Value> = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        m.entry("prompt")
            .or_insert_with(|| Value::String("a lighthouse".to_owned()));
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_and_planning_never_panic(fields in fields(), edit in any::<bool>(), refs in 0usize..20) {
        let op = if edit { Operation::Edit } else { Operation::Generate };
        let images: Vec<ImageRef> = (0..refs)
            .map(|i| ImageRef::Url(format!("https://example.com/{i}.png")))
            .collect();
        let Ok(head) = Head::from_fields(&fields) else { return Ok(()) };
        let Ok(req) = ImageRequest::from_fields(op, head, &fields, images, None) else {
            return Ok(());
        };
        let models = ModelsConfig::default();
        for model in ModelId::ALL {
            let caps = catalog::capabilities(model);
            let _ = caps.check(&req);
            let _ = caps.check_output_format(&req);
            let _ = imagegate::pricing::price(&models, model, &req).total();
            if let Err(e) = upstream::plan(model, &req) {
                // A refusal is OpenAI-shaped: a 4xx with a message.
                prop_assert!(e.status().is_client_error(), "{}", e.message);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    /// Any bytes behind a PNG, JPEG or WEBP signature (or none): the size is read or not,
    /// never a panic.
    #[test]
    fn image_headers_are_read_or_not(kind in 0usize..5, tail in proptest::collection::vec(any::<u8>(), 0..80)) {
        let magic: &[u8] = match kind {
            0 => b"\x89PNG\r\n\x1a\n",
            1 => &[0xFF, 0xD8, 0xFF],
            2 => b"RIFF\0\0\0\0WEBPVP8X",
            3 => b"RIFF\0\0\0\0WEBPVP8L",
            _ => b"",
        };
        let bytes = [magic, &tail].concat();
        let _ = ImageFormat::sniff(&bytes);
        let _ = imagegate::model::image_dimensions(&bytes);
    }

    /// A PNG header gives back the size it declares, whatever it is.
    #[test]
    fn a_png_header_gives_its_size(w in any::<u32>(), h in any::<u32>()) {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&w.to_be_bytes());
        png.extend_from_slice(&h.to_be_bytes());
        let size = imagegate::model::image_dimensions(&png).unwrap();
        prop_assert_eq!((size.width, size.height), (w, h));
    }

    #[test]
    fn sizes_parse_or_are_refused(text in ".{0,24}", w in any::<u32>(), h in any::<u32>()) {
        let _ = Size::parse(&text);
        if let Some(size) = Size::parse(&format!("{w}x{h}")) {
            prop_assert_eq!((size.width, size.height), (w, h));
            let _ = size.pixels();
            let _ = size.nearest_ratio(&["1:1", "16:9"]);
        }
    }
}
