//! Upstream answers → values or classified failures ([`FailureKind`]): the one place a status
//! code, a body `code` or a failure message is read.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{FailureKind, Redactor, UpstreamError};

/// How much of a body that is not JSON is read for an error message (the message keeps 200
/// characters of it).
const MESSAGE_HEAD: usize = 4096;

/// Classifies an upstream answer: `Ok` when it is a success the adapter may read.
///
/// NOTE(upstream): the docs list HTTP error statuses but do not show error bodies, and describe a
/// `code` field inside every envelope. The two can disagree (HTTP 200 with `code: 402`), so the
/// body code wins when it is an error, and the HTTP status is used when the body has none.
///
/// A success is only checked here (valid JSON, its top-level `code`), not kept as a parsed value:
/// a `b64_json` answer carries megabytes of base64 that its adapter takes as slices of the body.
pub(super) fn classify(status: u16, body: &[u8], redactor: &Redactor) -> Result<(), UpstreamError> {
    if !(200..300).contains(&status) {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let message = message_of(json.as_ref(), body, redactor);
        // A 5xx that is not the platform's own JSON envelope (a proxy's HTML 502/504/524 page)
        // says nothing of whether the platform accepted the work.
        let kind = if status >= 500 && !json.as_ref().is_some_and(is_envelope) {
            FailureKind::Unknown
        } else {
            kind_for_code(i64::from(status), &message)
        };
        return Err(UpstreamError::new(kind, message));
    }
    let code = match body_code(body) {
        Ok(code) => code,
        // JSON, but a `b64_json` that is neither a string nor null: no images answer.
        Err(e) if e.is_data() => {
            let message = format!("answer is not an images answer: {e}");
            return Err(UpstreamError::new(
                FailureKind::Malformed,
                redactor.redact(&message),
            ));
        }
        Err(_) => {
            return Err(UpstreamError::new(
                FailureKind::Malformed,
                "response body is not JSON".to_owned(),
            ))
        }
    };
    match code {
        Some(code) if code != 200 && code != 0 => {
            // An error envelope: small, read whole for its message.
            let json: Option<Value> = serde_json::from_slice(body).ok();
            let message = message_of(json.as_ref(), body, redactor);
            Err(UpstreamError::new(kind_for_code(code, &message), message))
        }
        _ => Ok(()),
    }
}

/// The top-level `code` of a JSON document when it is an integer (the last one, as a parsed
/// object would keep); everything else is only checked to be JSON, without being kept.
fn body_code(body: &[u8]) -> Result<Option<i64>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let code = Check { top: true }.deserialize(&mut de)?;
    de.end()?;
    Ok(code)
}

/// Checks a JSON value without keeping it, and reads the platform's `code` when the value is
/// the document itself (`top`).
#[derive(Clone, Copy)]
struct Check {
    top: bool,
}

const NESTED: Check = Check { top: false };

impl<'de> DeserializeSeed<'de> for Check {
    type Value = Option<i64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<i64>, A::Error> {
        let mut code = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Code if self.top => code = map.next_value::<Value>()?.as_i64(),
                Key::LongText => {
                    map.next_value::<Option<LongText>>()?;
                }
                Key::Code | Key::Other => {
                    map.next_value_seed(NESTED)?;
                }
            }
        }
        Ok(code)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<i64>, A::Error> {
        while seq.next_element_seed(NESTED)?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<i64>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<i64>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<i64>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<i64>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<i64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<i64>, E> {
        Ok(None)
    }
}

/// A key of an object in an answer, as far as checking it goes.
enum Key {
    /// The platform's `code` (read at the top level only).
    Code,
    /// `b64_json`: megabytes of base64, only searched for its closing quote here, as its adapter
    /// reads it (its bytes are checked once, as the answer arrives: [`super::Body`]). serde's
    /// full check of a string runs at a third of that speed, and was the largest cost of a
    /// 2 MiB answer.
    LongText,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct K;
        impl Visitor<'_> for K {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "code" => Key::Code,
                    "b64_json" => Key::LongText,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(K)
    }
}

/// A [`Key::LongText`] string, found by its closing quote (`serde_json` reads a string asked for
/// as bytes without checking it); an array there is checked like any value.
struct LongText;

impl<'de> Deserialize<'de> for LongText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LongText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<LongText, E> {
                Ok(LongText)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LongText, A::Error> {
                NESTED.visit_seq(seq).map(|_| LongText)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// An error answer's message: the envelope's own (`msg`, `error.message`, `message`), else the
/// head of the body. Read only for errors: a success may carry megabytes of base64.
fn message_of(json: Option<&Value>, body: &[u8], redactor: &Redactor) -> String {
    json.and_then(|v| {
        v.get("msg")
            .or_else(|| v.pointer("/error/message"))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
    })
    .map(|m| redactor.redact(m))
    .unwrap_or_else(|| {
        // Redacted, then cut: cutting first could leave a key's prefix behind. Only the head is
        // read: a key that starts past it is cut away with the rest.
        let head = body.get(..MESSAGE_HEAD).unwrap_or(body);
        let text = redactor.redact(String::from_utf8_lossy(head).trim());
        text.chars().take(200).collect()
    })
}

/// The platform's error envelope: `{"code": <number>, "msg": "…"}` (or OpenAI's
/// `{"error": {"message": "…"}}` on gpt-image-2-all's OpenAI-shaped routes).
fn is_envelope(v: &Value) -> bool {
    let platform =
        v.get("code").is_some_and(Value::is_i64) && v.get("msg").is_some_and(Value::is_string);
    let openai = v.pointer("/error/message").is_some_and(Value::is_string);
    platform || openai
}

fn kind_for_code(code: i64, message: &str) -> FailureKind {
    match code {
        400 | 422 if is_policy_message(message) => FailureKind::PolicyRejected,
        401 | 403 => FailureKind::Unauthorized,
        402 => FailureKind::OutOfCredits,
        429 => FailureKind::RateLimited,
        404 | 408 | 500..=599 => FailureKind::ServerError,
        400..=499 => FailureKind::Rejected,
        _ => FailureKind::ServerError,
    }
}

/// NOTE(upstream): failed tasks only carry a free-text `failMsg` (the docs' example is
/// "Content policy violation"), so a policy refusal is recognised by its words, here and only here.
pub(super) fn is_policy_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "content policy",
        "policy violation",
        "safety",
        "moderation",
        "nsfw",
        "content_policy",
    ]
    .iter()
    .any(|w| m.contains(w))
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor(vec!["sk-up-secret".to_owned()])
    }

    #[test]
    fn a_long_error_page_gives_a_short_redacted_message_from_its_head() {
        // The key at the start is redacted; one past the head is never read (and would be cut).
        let mut page = b"<html>sk-up-secret said no ".to_vec();
        page.extend(std::iter::repeat_n(b'x', 10_000));
        page.extend_from_slice(b"sk-up-secret</html>");
        let e = classify(502, &page, &redactor()).unwrap_err();
        assert!(
            e.message.starts_with("<html>[redacted] said no"),
            "{}",
            e.message
        );
        assert_eq!(e.message.chars().count(), 200);
        assert!(!e.message.contains("sk-up"));
    }

    #[test]
    fn body_code_wins_over_http_200() {
        let e = classify(
            200,
            br#"{"code":402,"msg":"insufficient credits"}"#,
            &redactor(),
        )
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::OutOfCredits);
        let e = classify(200, br#"{"code":500,"msg":"x"}"#, &redactor()).unwrap_err();
        assert_eq!(e.kind, FailureKind::ServerError);
    }

    #[test]
    fn http_statuses_classify() {
        let kind = |s| {
            classify(s, br#"{"code":1,"msg":"m"}"#, &redactor())
                .unwrap_err()
                .kind
        };
        assert_eq!(kind(401), FailureKind::Unauthorized);
        assert_eq!(kind(402), FailureKind::OutOfCredits);
        assert_eq!(kind(429), FailureKind::RateLimited);
        assert_eq!(kind(500), FailureKind::ServerError);
        assert_eq!(kind(400), FailureKind::Rejected);
        let e = classify(
            400,
            br#"{"code":400,"msg":"Content policy violation"}"#,
            &redactor(),
        );
        assert_eq!(e.unwrap_err().kind, FailureKind::PolicyRejected);
    }

    #[test]
    fn a_5xx_that_is_not_the_platform_s_is_an_unknown_outcome() {
        let page = b"<html><body>502 Bad Gateway</body></html>";
        for status in [502, 504, 524] {
            let e = classify(status, page, &redactor()).unwrap_err();
            assert_eq!(e.kind, FailureKind::Unknown, "{status}");
        }
        let e = classify(503, br#"{"code":503,"msg":"busy"}"#, &redactor()).unwrap_err();
        assert_eq!(e.kind, FailureKind::ServerError);
        let e = classify(500, br#"{"error":{"message":"x"}}"#, &redactor()).unwrap_err();
        assert_eq!(e.kind, FailureKind::ServerError);
    }

    /// A success is only checked, the way a parsed value would be read: the last top-level
    /// `code` counts, and only when it is an integer.
    #[test]
    fn a_success_is_checked_without_being_kept() {
        let ok = |body: &str| classify(200, body.as_bytes(), &redactor()).is_ok();
        assert!(ok(r#"{"code":200,"data":{"taskId":"t"}}"#));
        assert!(ok(r#"{"code":0}"#));
        assert!(ok(r#"{"created":1,"data":[{"b64_json":"QUJD"}]}"#));
        assert!(ok(r#"{"code":"402","msg":"a string code is no code"}"#));
        assert!(ok(r#"{"code":402,"code":200}"#));
        assert!(ok(r#"[{"code":402}]"#));
        assert!(ok(r#"{"data":{"code":402}}"#));
        assert!(!ok(r#"{"code":200,"code":402,"msg":"x"}"#));
        assert!(!ok(r#"{"code":200} trailing"#));
        assert!(!ok(""));
    }

    /// A `b64_json` string is only searched for its end (its bytes are checked when written
    /// out); everything around it is checked in full, and a `b64_json` that is no string makes
    /// the answer malformed.
    #[test]
    fn a_long_text_is_found_by_its_end_and_the_rest_checked() {
        let ok = |body: &[u8]| classify(200, body, &redactor()).is_ok();
        assert!(ok(b"{\"data\":[{\"b64_json\":\"QU\x01\xffJD\"}]}"));
        assert!(ok(
            br#"{"data":[{"b64_json":null,"url":"u"},{"b64_json":"QUJD"}]}"#
        ));
        assert!(ok(br#"{"b64_json":"QUJD","code":200}"#));
        assert!(ok(br#"{"data":[{"b64_json":["an array is still JSON"]}]}"#));
        assert!(
            !ok(b"{\"data\":[{\"url\":\"\x01\"}]}"),
            "a control character elsewhere"
        );
        assert!(!ok(br#"{"data":[{"b64_json":"QUJD}]}"#));
        assert!(!ok(br#"{"data":[{"b64_json":"QUJD"}"#));
        let e = classify(200, br#"{"data":[{"b64_json":7}]}"#, &redactor()).unwrap_err();
        assert_eq!(e.kind, FailureKind::Malformed);
        assert!(
            e.message.starts_with("answer is not an images answer"),
            "{}",
            e.message
        );
        let e = classify(
            200,
            br#"{"code":402,"b64_json":"QUJD","msg":"x"}"#,
            &redactor(),
        );
        assert_eq!(e.unwrap_err().kind, FailureKind::OutOfCredits);
        // Nesting deeper than serde's limit is refused, not followed down the stack.
        let deep = format!("{}{}", r#"{"a":["#.repeat(5_000), "]}".repeat(5_000));
        assert!(!ok(deep.as_bytes()));
    }

    #[test]
    fn malformed_body_and_redaction() {
        let e = classify(200, b"{\"code\":200,\"da", &redactor()).unwrap_err();
        assert_eq!(e.kind, FailureKind::Malformed);
        let e = classify(401, br#"{"msg":"bad key sk-up-secret"}"#, &redactor()).unwrap_err();
        assert!(!e.message.contains("sk-up-secret"), "{}", e.message);
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any status and any bytes: a value or a classified failure, never a panic, and the
        /// key never in the message.
        #[test]
        fn any_answer_is_classified(status in 0u16..1000, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let redactor = Redactor(vec!["sk-up-secret".to_owned()]);
            let mut body = body;
            body.extend_from_slice(b"sk-up-secret");
            match classify(status, &body, &redactor) {
                Ok(_) => {}
                // Not even a prefix of the key survives the cut to 200 characters.
                Err(e) => prop_assert!(!e.message.contains("sk-up-se"), "{}", e.message),
            }
        }

        #[test]
        fn any_json_envelope_is_classified(status in 100u16..600, code in any::<i64>(), msg in ".{0,40}") {
            let body = serde_json::json!({"code": code, "msg": msg, "data": {"taskId": "t"}}).to_string();
            let _ = classify(status, body.as_bytes(), &Redactor(Vec::new()));
        }
    }
}
