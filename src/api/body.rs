//! JSON answers that carry images: the long strings (`b64_json`, often 2–20 MB) are sent as the
//! buffers that already hold them instead of being copied into one serialized body.
//!
//! [`json`] writes the value's structure with `serde_json` and, for every string of at least
//! [`OWN_CHUNK`] bytes that JSON does not need to escape (base64 never does), moves the string
//! itself into the body as its own chunk. The bytes on the wire are exactly `serde_json::to_vec`'s;
//! the body has an exact length, so the answer keeps its `Content-Length`. [`json_text`] sends an
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

use crate::model::json_text::{needs_escape, JsonText, OWN_PIECE};

/// Strings at least this long are sent as their own chunk when they need no escaping.
pub const OWN_CHUNK: usize = OWN_PIECE;

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
    let mut w = Writer::default();
    w.value(value);
    w.flush();
    w.done.into()
}

#[derive(Default)]
struct Writer {
    done: Vec<Bytes>,
    cur: Vec<u8>,
}

impl Writer {
    fn value(&mut self, value: Value) {
        match value {
            Value::String(s) if s.len() >= OWN_CHUNK && !needs_escape(s.as_bytes()) => {
                self.cur.push(b'"');
                self.flush();
                self.done.push(Bytes::from(s));
                self.cur.push(b'"');
            }
            Value::Array(items) => {
                self.cur.push(b'[');
                for (i, item) in items.into_iter().enumerate() {
                    if i > 0 {
                        self.cur.push(b',');
                    }
                    self.value(item);
                }
                self.cur.push(b']');
            }
            Value::Object(map) => {
                self.cur.push(b'{');
                for (i, (key, item)) in map.into_iter().enumerate() {
                    if i > 0 {
                        self.cur.push(b',');
                    }
                    self.scalar(&key);
                    self.cur.push(b':');
                    self.value(item);
                }
                self.cur.push(b'}');
            }
            other => self.scalar(&other),
        }
    }

    fn scalar<T: serde::Serialize + ?Sized>(&mut self, v: &T) {
        // Serializing a `Value` or a `String` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut self.cur, v);
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.done.push(Bytes::from(std::mem::take(&mut self.cur)));
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
    use serde_json::json;

    #[test]
    fn same_bytes_as_serde_json_with_long_strings_moved() {
        let b64 = "QUJD+/=".repeat(OWN_CHUNK);
        let escaped = format!("{}\"\n\\", "x".repeat(OWN_CHUNK));
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

    #[test]
    fn finds_every_byte_that_needs_an_escape() {
        assert!(!needs_escape("plain ✓ text".repeat(100).as_bytes()));
        for bad in [b'"', b'\\', b'\n', 0x00, 0x1f] {
            let mut s = vec![b'a'; 200];
            s[130] = bad;
            assert!(needs_escape(&s), "{bad:#x}");
        }
    }
}
