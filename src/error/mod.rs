//! The error policy, in one place.
//!
//! - `anyhow` only in `main` and at startup.
//! - Adapters return `UpstreamError` (`upstream::failure`): a classified failure
//!   (`FailureKind`), never a string to match on.
//! - Everything a client sees is an [`ApiError`], rendered as OpenAI's
//!   `{"error":{"message","type","param","code"}}` with the right status. The one mapping from an
//!   upstream failure to a client error is [`ApiError::from_upstream`].
//! - Messages never contain the upstream key: upstream text is passed through
//!   [`redact`](crate::upstream::Redactor) at the adapter boundary before it reaches an error.
//! - Errors are logged once, by the access log in `app.rs`, not where they are built.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::upstream::failure::{FailureKind, UpstreamError};

mod code;
mod path;

pub use path::PathId;

pub use code::{ErrorCode, Fault, RateLimit};

/// A client-facing error: a closed [`ErrorCode`] (which fixes the status, the `type`, the fault
/// and the retry advice), the field it is about and a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub param: Option<String>,
    pub message: String,
    /// Extra response headers: `retry-after` and `x-ratelimit-*` on 429s.
    pub headers: Vec<(&'static str, String)>,
    /// An upstream failure that trying again cannot mend (see `UpstreamError::lasting`): the
    /// gateway does not retry it inside.
    pub lasting: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            param: None,
            message: message.into(),
            headers: Vec::new(),
            lasting: false,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: the request is malformed or asks for something impossible.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, message.into()).with_param(param)
    }

    /// 400: a required field is missing.
    pub fn missing(param: &str) -> Self {
        Self::new(
            ErrorCode::MissingRequiredParameter,
            format!("Missing required parameter: '{param}'."),
        )
        .with_param(param)
    }

    /// 400: the body is not valid JSON / multipart.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidBody, message.into())
    }

    /// 400: the chosen model cannot serve this request.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnsupportedForModel, message.into()).with_param(param)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::RequestTooLarge,
            format!("The request body exceeds the limit of {limit} bytes."),
        )
    }

    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Unsupported Content-Type `{got}`: send multipart/form-data or application/json."
            ),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidApiKey, message.into())
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorCode::ModelNotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    }

    /// 400: no model of the requested group can serve this request as asked (capabilities,
    /// the caller's cost ceiling).
    pub fn no_eligible_model(param: &str, message: String) -> Self {
        Self::new(ErrorCode::NoEligibleModel, message).with_param(param)
    }

    /// 503: every model that could serve the request is out of rotation (circuit open) or too
    /// slow for the caller's latency budget right now.
    pub fn no_healthy_model(message: String) -> Self {
        Self::new(ErrorCode::NoHealthyUpstream, message)
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("Unknown route: {path}"))
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            "Method not allowed for this route.".to_owned(),
        )
    }

    /// 403: the key may not use this model.
    pub fn model_not_allowed(model: &str) -> Self {
        Self::new(
            ErrorCode::ModelNotAllowed,
            format!("This API key does not have access to the model `{model}`."),
        )
        .with_param("model")
    }

    /// 429: one of the gateway's rate or concurrency limits. `headers` carry `retry-after` and
    /// `x-ratelimit-*` (see [`limits`](crate::limits)); the SDKs retry after the pause.
    pub fn rate_limited(
        limit: RateLimit,
        message: impl Into<String>,
        headers: Vec<(&'static str, String)>,
    ) -> Self {
        Self::new(ErrorCode::RateLimitExceeded(limit), message).with_headers(headers)
    }

    /// 429 `insufficient_quota`, as OpenAI answers an exhausted quota; retrying cannot help.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InsufficientQuota, message)
    }

    /// 503: the gateway is at `server.max_in_flight`; retry shortly.
    pub fn overloaded() -> Self {
        Self::new(
            ErrorCode::ServerOverloaded,
            "The gateway is at its limit of requests in flight; retry shortly.",
        )
        .with_headers(vec![("retry-after", "1".to_owned())])
    }

    /// 400 on the admin API.
    pub fn admin_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, message.into())
    }

    /// 404 on the admin API.
    pub fn admin_not_found(what: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("No {what} with id `{id}`."))
    }

    /// 409 on the admin API: the id exists, or the entry is defined in the config file.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message.into())
    }

    /// The one mapping from a classified upstream failure to what the client sees.
    pub fn from_upstream(e: &UpstreamError) -> Self {
        let task = e
            .task_id
            .as_deref()
            .map(|t| format!(" (upstream task {t})"))
            .unwrap_or_default();
        let detail = if e.message.is_empty() {
            String::new()
        } else {
            format!(": {}", e.message)
        };
        let (code, message) = match e.kind {
            FailureKind::PolicyRejected => (
                ErrorCode::ModerationBlocked,
                format!("Your request was rejected by the safety system{detail}"),
            ),
            FailureKind::Rejected => (
                ErrorCode::UpstreamRejectedRequest,
                format!("The upstream rejected the request{detail}"),
            ),
            FailureKind::Unauthorized => (
                ErrorCode::UpstreamAuthFailed,
                format!(
                    "The gateway's upstream credentials were rejected; contact the operator{task}"
                ),
            ),
            FailureKind::OutOfCredits => (
                ErrorCode::UpstreamInsufficientCredits,
                format!("The upstream account is out of credits; contact the operator{task}"),
            ),
            FailureKind::RateLimited => (
                ErrorCode::UpstreamRateLimited,
                format!("The upstream is rate limiting the gateway{detail}{task}"),
            ),
            FailureKind::Unrecorded => (
                ErrorCode::DatabaseUnavailable,
                "The gateway could not record the request in its database, so nothing was sent upstream; try again shortly.".to_owned(),
            ),
            FailureKind::Connect => (
                ErrorCode::UpstreamUnavailable,
                format!("The upstream could not be reached{detail}{task}"),
            ),
            FailureKind::ServerError => (
                ErrorCode::UpstreamError,
                format!("The upstream failed{detail}{task}"),
            ),
            // An answer the gateway could not read may still mean the work was accepted.
            FailureKind::Malformed => (
                ErrorCode::UpstreamOutcomeUnknown,
                format!("The upstream sent a response the gateway could not read, so whether it accepted (and billed) the work is unknown{detail}{task}"),
            ),
            FailureKind::TaskFailed => (
                ErrorCode::UpstreamTaskFailed,
                format!("The image generation failed{detail}{task}"),
            ),
            FailureKind::Download => (
                ErrorCode::ResultDownloadFailed,
                format!("The generated image could not be fetched{detail}{task}"),
            ),
            FailureKind::Timeout => (
                ErrorCode::UpstreamTimeout,
                format!("The upstream did not finish within the model's deadline{detail}{task}"),
            ),
            FailureKind::Unknown => (
                ErrorCode::UpstreamOutcomeUnknown,
                format!("The upstream may or may not have accepted the request{detail}{task}"),
            ),
        };
        let mut err = Self::new(code, message);
        err.lasting = e.lasting;
        // The upstream's own pause, in whole seconds as the SDKs read it (at most 60 s, the
        // longest the SDKs wait); 5 s (every 503's default) when it gave none.
        match (e.kind, e.retry_after) {
            (FailureKind::RateLimited, Some(after)) => {
                let secs = after.as_secs_f64().ceil().clamp(1.0, 60.0) as u64;
                err.with_headers(vec![("retry-after", secs.to_string())])
            }
            _ => err,
        }
    }

    /// An error as stored with a job ([`body`](Self::body)'s `error` object), read back.
    pub fn from_body(error: &serde_json::Value) -> Self {
        let text = |k: &str| error.get(k).and_then(serde_json::Value::as_str);
        let code = text("code")
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::InternalError);
        let mut e = Self::new(code, text("message").unwrap_or_default());
        e.param = text("param").map(str::to_owned);
        e
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.code.kind(),
            "param": self.param,
            "code": self.code.as_str(),
        }})
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        Self::from_upstream(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (status, axum::Json(self.body())).into_response();
        if !self.code.should_retry() {
            res.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from_static("5"));
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                res.headers_mut().insert(*name, v);
            }
        }
        // The access log reads the error from here: logged once, at the edge.
        res.extensions_mut().insert(self);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_envelope() {
        let e = ApiError::invalid("size", "bad size");
        assert_eq!(
            e.body(),
            json!({"error":{"message":"bad size","type":"invalid_request_error","param":"size","code":"invalid_value"}})
        );
    }

    #[test]
    fn upstream_mapping_statuses() {
        let status = |kind| {
            ApiError::from_upstream(&UpstreamError::new(kind, "m".to_owned()))
                .status()
                .as_u16()
        };
        assert_eq!(status(FailureKind::PolicyRejected), 400);
        assert_eq!(status(FailureKind::Rejected), 400);
        assert_eq!(status(FailureKind::Unauthorized), 502);
        assert_eq!(status(FailureKind::OutOfCredits), 502);
        assert_eq!(status(FailureKind::RateLimited), 503);
        assert_eq!(status(FailureKind::Connect), 502);
        assert_eq!(status(FailureKind::ServerError), 502);
        assert_eq!(status(FailureKind::Malformed), 502);
        assert_eq!(status(FailureKind::TaskFailed), 502);
        assert_eq!(status(FailureKind::Download), 502);
        assert_eq!(status(FailureKind::Timeout), 504);
    }
}
