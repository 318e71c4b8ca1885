//! JSON answers that carry images: the long strings (`b64_json`, often 2–20 MB) are sent as the
//! buffers that already hold them instead of being copied into one serialized body.
//!
//! [`json`] writes the value with [`JsonWriter`]: every string of at least
//! [`OWN_PIECE`](crate::model::json_text::OWN_PIECE) bytes of plain ASCII (base64 is) is moved
//! into the body as its own chunk. The bytes on the wire are exactly `serde_json::to_vec`'s; the
//! body has an exact length, so the answer keeps its `Content-Length`. [`json_text`] sends an
//! answer already written in pieces (an images answer: [`JsonText`]).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use serde_json::Value;

use crate::model::json_text::{JsonText, JsonWriter};

/// An `application/json` response for `value`.
pub fn json(value: Value) -> Response {
    respond(chunks(value))
}

/// An `application/json` response made of `text`'s pieces (an images answer).
pub fn json_text(text: JsonText) -> Response {
    respond(text.into_parts().into())
}

fn respond(parts: VecDeque<Bytes>) -> Response {
    let body = Chunks::new(parts);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::new(body),
    )
        .into_response()
}

/// The serialized value as a list of buffers (long plain strings moved, not copied).
pub fn chunks(value: Value) -> VecDeque<Bytes> {
    let mut w = JsonWriter::new();
    write_value(&mut w, value);
    w.finish().into_parts().into()
}

fn write_value(w: &mut JsonWriter, value: Value) {
    match value {
        Value::String(s) => {
            w.string(Bytes::from(s));
        }
        Value::Array(items) => {
            w.raw("[");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    w.raw(",");
                }
                write_value(w, item);
            }
            w.raw("]");
        }
        Value::Object(map) => {
            w.raw("{");
            for (i, (key, item)) in map.into_iter().enumerate() {
                if i > 0 {
                    w.raw(",");
                }
                w.value(&key).raw(":");
                write_value(w, item);
            }
            w.raw("}");
        }
        other => {
            w.value(&other);
        }
    }
}

/// A body made of ready buffers, with an exact length.
struct Chunks {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(parts: VecDeque<Bytes>) -> Self {
        let remaining = parts.iter().map(|b| b.len() as u64).sum();
        Self { parts, remaining }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.parts.pop_front().map(|b| {
            this.remaining = this.remaining.saturating_sub(b.len() as u64);
            Ok(Frame::data(b))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use super::*;
    use crate::model::json_text::OWN_PIECE;
    use serde_json::json;

    #[test]
    fn same_bytes_as_serde_json_with_long_strings_moved() {
        let b64 = "QUJD+/=".repeat(OWN_PIECE);
        let escaped = format!("{}\"\n\\", "x".repeat(OWN_PIECE));
        let value = json!({
            "created": 1,
            "data": [{"b64_json": b64}, {"b64_json": escaped}, {"url": "https://x.test/a.png"}],
            "size": "1024x1024",
            "quality": null,
            "n": [1.5, true],
        });
        let expected = serde_json::to_vec(&value).unwrap();
        let parts = chunks(value);
        assert!(
            parts.iter().any(|p| p.len() == b64.len()),
            "moved as one chunk"
        );
        assert_eq!(
            parts.iter().flatten().copied().collect::<Vec<u8>>(),
            expected
        );
        let body = Chunks::new(parts);
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(expected.len() as u64)
        );
    }
}
