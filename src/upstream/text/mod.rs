//! The text upstream of `[passthrough]`: an OpenAI-compatible API that serves
//! `/responses` and `/chat/completions` (Codex's and Cursor's model turns).
//!
//! The gateway does not interpret a text call: it forwards the body, injects the upstream key,
//! relays the answer as it arrives ([`relay`]) and reads only the final `usage` to book it.
//! Request headers pass by an allow-list ([`FORWARDED`]): a client's own key, Codex's internal
//! headers and `accept-encoding` (the relay reads the bytes it forwards) never reach the upstream.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

pub mod relay;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::config::PassthroughConfig;
use crate::error::{ApiError, ErrorCode};
use crate::ledger::Tokens;
use crate::model::TextRoute;

/// The output tokens a request may produce: its own cap, else `default`.
pub fn output_cap(route: TextRoute, body: &serde_json::Map<String, Value>, default: u64) -> u64 {
    route
        .output_cap_fields()
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64))
        .unwrap_or(default)
}

/// Request headers passed to the text upstream; every other header stays here.
pub const FORWARDED: &[&str] = &[
    "content-type",
    "accept",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "user-agent",
    "x-request-id",
];

/// The text upstream's client, its key and its cached model list.
pub struct TextUpstream {
    http: reqwest::Client,
    config: PassthroughConfig,
    models: Mutex<Option<(Instant, Vec<Value>)>>,
}

impl TextUpstream {
    pub fn new(config: &PassthroughConfig, connect_timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            config: config.clone(),
            models: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &PassthroughConfig {
        &self.config
    }

    /// Sends `body` to `route` with the allowed headers of `headers` and the upstream key. The
    /// answer comes back whatever its status (the client sees the upstream's own errors); only
    /// a call that got no answer is an error here.
    pub async fn send(
        &self,
        route: TextRoute,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, ApiError> {
        let mut req = self
            .http
            .post(self.config.url(route.path()))
            .bearer_auth(&self.config.api_key)
            .body(body);
        for name in FORWARDED {
            for v in headers.get_all(*name) {
                req = req.header(*name, v);
            }
        }
        req.send().await.map_err(failure)
    }

    /// The upstream's models (`GET {base_url}/models`, OpenAI's list shape), kept for
    /// `models_ttl`. Empty when the upstream cannot list them (logged).
    pub async fn models(&self) -> Vec<Value> {
        if let Some((at, list)) = &*self.lock_models() {
            if at.elapsed() < self.config.models_ttl {
                return list.clone();
            }
        }
        let got = async {
            let res = self
                .http
                .get(self.config.url("models"))
                .bearer_auth(&self.config.api_key)
                .timeout(Duration::from_secs(10))
                .send()
                .await?
                .error_for_status()?;
            res.json::<Value>().await
        }
        .await;
        let list = match got {
            Ok(v) => v
                .get("data")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|m| m.get("id").and_then(Value::as_str).is_some())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "could not list the text upstream's models");
                return Vec::new();
            }
        };
        *self.lock_models() = Some((Instant::now(), list));
        self.lock_models()
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    fn lock_models(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Vec<Value>)>> {
        self.models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A call that got no answer: no connection (nothing was sent: 502, worth a retry), a timeout
/// (504) or a connection lost after sending (502 `upstream_outcome_unknown`) — the upstream may
/// be working on those, so they are not retried.
fn failure(e: reqwest::Error) -> ApiError {
    let e = e.without_url();
    if e.is_connect() {
        ApiError::new(
            ErrorCode::UpstreamUnavailable,
            format!("The text upstream could not be reached: {e}."),
        )
    } else if e.is_timeout() {
        ApiError::new(
            ErrorCode::UpstreamTimeout,
            "The text upstream did not answer in time; it may have worked on the call, which is booked at its reservation.",
        )
    } else {
        ApiError::new(
            ErrorCode::UpstreamOutcomeUnknown,
            format!("The connection to the text upstream broke after the call was sent ({e}); it may have worked on it, which is booked at its reservation."),
        )
    }
}

/// The usage in one answer object: a Responses object (`usage.input_tokens`), a Responses
/// event (`response.usage`), or a chat completion or chunk (`usage.prompt_tokens`).
pub fn usage_of(v: &Value) -> Option<Tokens> {
    let usage = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.get("response").and_then(|r| r.get("usage")))?;
    let n = |a: &str, b: &str| {
        usage
            .get(a)
            .or_else(|| usage.get(b))
            .and_then(Value::as_u64)
    };
    let input = n("input_tokens", "prompt_tokens");
    let output = n("output_tokens", "completion_tokens");
    (input.is_some() || output.is_some()).then(|| Tokens {
        input: input.unwrap_or(0),
        output: output.unwrap_or(0),
    })
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn usage_is_read_from_each_shape() {
        let responses = json!({"object":"response","usage":{"input_tokens":10,"output_tokens":3}});
        let event = json!({"type":"response.completed","response":{"usage":{"input_tokens":7,"output_tokens":2,"total_tokens":9}}});
        let chat = json!({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}});
        let none = json!({"choices":[{"delta":{"content":"x"}}],"usage":null});
        assert_eq!(
            usage_of(&responses),
            Some(Tokens {
                input: 10,
                output: 3
            })
        );
        assert_eq!(
            usage_of(&event),
            Some(Tokens {
                input: 7,
                output: 2
            })
        );
        assert_eq!(
            usage_of(&chat),
            Some(Tokens {
                input: 5,
                output: 1
            })
        );
        assert_eq!(usage_of(&none), None);
    }

    #[test]
    fn output_caps_follow_each_route() {
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        let r = TextRoute::Responses;
        assert_eq!(
            output_cap(r, &body(json!({"max_output_tokens": 50})), 9),
            50
        );
        assert_eq!(output_cap(r, &body(json!({"max_tokens": 50})), 9), 9);
        let c = TextRoute::ChatCompletions;
        assert_eq!(output_cap(c, &body(json!({"max_tokens": 40})), 9), 40);
        assert_eq!(
            output_cap(
                c,
                &body(json!({"max_completion_tokens": 30, "max_tokens": 40})),
                9
            ),
            30
        );
    }
}
