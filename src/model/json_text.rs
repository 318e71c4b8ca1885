//! JSON text in pieces: the long strings of an image answer (`b64_json`, often 2–20 MB) stay in
//! the buffers that already hold them — the upstream's answer — and the text around them is
//! written as small pieces. A response body is the pieces in order; the job store writes them
//! one after the other into the row. Nothing concatenates them unless a caller asks for one
//! `String` ([`JsonText::to_text`]).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use bytes::Bytes;
use serde::Serialize;

/// Strings at least this long are kept as their own piece when they need no escaping.
pub const OWN_PIECE: usize = 16 * 1024;

/// A JSON document as consecutive pieces of UTF-8 text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonText {
    parts: Vec<Bytes>,
}

impl JsonText {
    /// The pieces, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        self.parts
            .iter()
            .map(Bytes::len)
            .fold(0, usize::saturating_add)
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// The whole text as one string (a copy: for stores that take one value, and for tests).
    pub fn to_text(&self) -> String {
        let mut s = Vec::with_capacity(self.len());
        for part in &self.parts {
            s.extend_from_slice(part);
        }
        // Every piece is UTF-8 and pieces split only between characters; never lossy.
        String::from_utf8(s).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Text for a JSON string, checked once (a full pass over megabytes of base64) for whether it
/// goes in as it is: an answer's base64 is written twice (to the job store and to the client),
/// and neither write checks it again. Shares its bytes when cloned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    bytes: Bytes,
    plain: bool,
}

impl Text {
    pub fn new(bytes: Bytes) -> Self {
        let plain = plain_ascii(&bytes);
        Self { bytes, plain }
    }

    /// A string of a body whose bytes are all printable ASCII ([`printable_ascii`]), as it stood
    /// between its quotes with no escapes in it: plain by construction (not checked again).
    pub fn of_printable(bytes: Bytes) -> Self {
        debug_assert!(plain_ascii(&bytes));
        Self { bytes, plain: true }
    }

    /// The output of a base64 encoder, plain by construction (not checked again).
    pub fn base64(encoded: String) -> Self {
        debug_assert!(plain_ascii(encoded.as_bytes()));
        Self {
            bytes: encoded.into(),
            plain: true,
        }
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::Deref for Text {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Writes a [`JsonText`]: structure and short values into the current piece, long plain
/// strings as pieces of their own.
#[derive(Debug, Default)]
pub struct JsonWriter {
    parts: Vec<Bytes>,
    cur: Vec<u8>,
}

impl JsonWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// JSON punctuation or a literal key, written as is (`{"data":[`).
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.cur.extend_from_slice(text.as_bytes());
        self
    }

    /// Any serializable value, by `serde_json`.
    pub fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> &mut Self {
        // Serializing into a `Vec` fails only for maps with non-string keys, which the gateway
        // never writes; the writer is left as it was then.
        let _ = serde_json::to_writer(&mut self.cur, v);
        self
    }

    /// A JSON string with the text `s`: a long one of plain ASCII (base64 is) becomes its own
    /// piece, shared with whoever else holds it; anything else is escaped into the current piece
    /// (bytes that are not UTF-8 replaced), so the text is always valid JSON.
    pub fn string(&mut self, s: Bytes) -> &mut Self {
        self.text(&Text::new(s))
    }

    /// [`Self::string`] for text already checked.
    pub fn text(&mut self, s: &Text) -> &mut Self {
        if !s.plain {
            return self.value(&*String::from_utf8_lossy(&s.bytes));
        }
        self.cur.push(b'"');
        if s.bytes.len() >= OWN_PIECE {
            self.flush();
            self.parts.push(s.bytes.clone());
        } else {
            // Short plain text is copied as it is: nothing to escape.
            self.cur.extend_from_slice(&s.bytes);
        }
        self.cur.push(b'"');
        self
    }

    pub fn finish(mut self) -> JsonText {
        self.flush();
        JsonText { parts: self.parts }
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.parts.push(Bytes::from(std::mem::take(&mut self.cur)));
        }
    }
}

/// Whether every byte is printable ASCII other than `"` and `\`: text that is valid UTF-8 and
/// goes into a JSON string as it is.
pub fn plain_ascii(s: &[u8]) -> bool {
    printable_ascii(s) && memchr::memchr2(b'"', b'\\', s).is_none()
}

/// Whether every byte is printable ASCII (`"` and `\` included). Written as the smallest and
/// the largest byte, which the compiler turns into vector instructions (three times faster than
/// a test of each byte against the range).
pub fn printable_ascii(s: &[u8]) -> bool {
    let (lo, hi) = s
        .iter()
        .fold((u8::MAX, u8::MIN), |(lo, hi), &b| (lo.min(b), hi.max(b)));
    lo >= 0x20 && hi < 0x7f
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    /// The pieces are exactly `serde_json`'s text for the same value, long strings shared.
    #[test]
    fn pieces_are_serde_json_s_text() {
        let long: Bytes = "QUJD".repeat(OWN_PIECE).into();
        let escaped: Bytes = format!("{}\"\n", "x".repeat(OWN_PIECE)).into();
        let mut w = JsonWriter::new();
        w.raw("{\"a\":")
            .string(long.clone())
            .raw(",\"b\":")
            .string(escaped.clone())
            .raw(",\"c\":")
            .string(Bytes::from_static("é short".as_bytes()))
            .raw(",\"d\":")
            .string(Bytes::from_static(b"QUJD+/= short"))
            .raw(",\"n\":")
            .value(&7)
            .raw("}");
        let text = w.finish();
        let want = serde_json::json!({
            "a": std::str::from_utf8(&long).unwrap(),
            "b": std::str::from_utf8(&escaped).unwrap(),
            "c": "é short",
            "d": "QUJD+/= short",
            "n": 7,
        });
        let got: serde_json::Value = serde_json::from_str(&text.to_text()).unwrap();
        assert_eq!(got, want);
        assert_eq!(text.len(), text.to_text().len());
        // The long plain string is the caller's buffer, not a copy.
        assert!(text.parts().iter().any(|p| p.as_ptr() == long.as_ptr()));
        assert!(!text.parts().iter().any(|p| p.as_ptr() == escaped.as_ptr()));
    }

    /// Long text that is not plain ASCII is escaped (and made valid UTF-8), never shared as is.
    #[test]
    fn long_text_that_is_not_plain_ascii_is_escaped() {
        for bad in [&b"\xff\xfe"[..], "é".as_bytes(), b"\x01", b"\x7f"] {
            let mut raw = b"QUJD".repeat(OWN_PIECE);
            raw.extend_from_slice(bad);
            let raw = Bytes::from(raw);
            // Checked once, written twice (the store's text and the client's): escaped both times.
            let checked = Text::new(raw.clone());
            for _ in 0..2 {
                let mut w = JsonWriter::new();
                w.text(&checked);
                let text = w.finish();
                assert!(!text.parts().iter().any(|p| p.as_ptr() == raw.as_ptr()));
                let back: String = serde_json::from_str(&text.to_text()).unwrap();
                assert!(back.starts_with("QUJD"));
            }
        }
        assert!(plain_ascii(b"QUJD+/=~ !"));
    }

    /// Every byte that JSON escapes (or that is not plain ASCII) is found, wherever it is.
    #[test]
    fn finds_every_byte_that_needs_an_escape() {
        assert!(plain_ascii("plain text +/=".repeat(100).as_bytes()));
        for bad in [b'"', b'\\', b'\n', 0x00, 0x1f, 0x7f, 0xc3, 0xff] {
            for at in [0, 1, 15, 16, 31, 32, 63, 64, 130, 199] {
                let mut s = vec![b'a'; 200];
                s[at] = bad;
                assert!(!plain_ascii(&s), "{bad:#x} at {at}");
                let printable = (0x20..0x7f).contains(&bad);
                assert_eq!(printable_ascii(&s), printable, "{bad:#x} at {at}");
            }
        }
        assert!(plain_ascii(b"") && printable_ascii(b""));
        assert!(printable_ascii(br#"{"a":"\"~ "}"#));
    }
}
