//! The error policy, in one place.
//!
//! - `anyhow` only in `main` and at startup.
//! - Adapters return [`UpstreamError`](crate::upstream::UpstreamError): a classified failure
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

/// A client-facing error.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
    /// `x-should-retry: false` for errors a retry cannot fix (and that could cost money again).
    pub no_retry: bool,
    /// Extra response headers: `retry-after` and `x-ratelimit-*` on 429s.
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message,
            no_retry: false,
            headers: Vec::new(),
        }
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
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            message.into(),
        )
        .with_param(param)
    }

    /// 400: a required field is missing.
    pub fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
        )
        .with_param(param)
    }

    /// 400: the body is not valid JSON / multipart.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body",
            message.into(),
        )
    }

    /// 400: the chosen model cannot serve this request.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unsupported_for_model",
            message.into(),
        )
        .with_param(param)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
    }

    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!(
                "Unsupported Content-Type `{got}`: send multipart/form-data or application/json."
            ),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message.into(),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    }

    /// 400: no model of the requested group can serve this request as asked (capabilities,
    /// the caller's cost ceiling).
    pub fn no_eligible_model(param: &str, message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "no_eligible_model",
            message,
        )
        .with_param(param)
    }

    /// 503: every model that could serve the request is out of rotation (circuit open) or too
    /// slow for the caller's latency budget right now.
    pub fn no_healthy_model(message: String) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "no_healthy_upstream",
            message,
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("Unknown route: {path}"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "Method not allowed for this route.".to_owned(),
        )
    }

    /// 403: the key may not use this model.
    pub fn model_not_allowed(model: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "model_not_allowed",
            format!("This API key does not have access to the model `{model}`."),
        )
        .with_param("model")
    }

    /// 429: a rate or concurrency limit. `headers` carry `retry-after` and `x-ratelimit-*`
    /// (see [`limits`](crate::limits)); the SDKs retry after the pause.
    pub fn rate_limited(message: impl Into<String>, headers: Vec<(&'static str, String)>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            message.into(),
        )
        .with_headers(headers)
    }

    /// 429 `insufficient_quota`, as OpenAI answers an exhausted quota; retrying cannot help.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            message.into(),
        );
        err.no_retry = true;
        err
    }

    /// 400 on the admin API.
    pub fn admin_invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            message.into(),
        )
    }

    /// 404 on the admin API.
    pub fn admin_not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("No {what} with id `{id}`."),
        )
    }

    /// 409 on the admin API: the id exists, or the entry is defined in the config file.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            message.into(),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
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
        let bad_gateway = |code, msg: String| {
            Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                code,
                format!("{msg}{task}"),
            )
        };
        match e.kind {
            FailureKind::PolicyRejected => {
                let mut err = Self::new(
                    StatusCode::BAD_REQUEST,
                    "image_generation_user_error",
                    "moderation_blocked",
                    format!("Your request was rejected by the safety system{detail}"),
                );
                err.no_retry = true;
                err
            }
            FailureKind::Rejected => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "upstream_rejected_request",
                format!("The upstream rejected the request{detail}"),
            ),
            FailureKind::Unauthorized => {
                let mut err = bad_gateway(
                    "upstream_auth_failed",
                    "The gateway's upstream credentials were rejected; contact the operator"
                        .to_owned(),
                );
                err.no_retry = true;
                err
            }
            FailureKind::OutOfCredits => {
                let mut err = bad_gateway(
                    "upstream_insufficient_credits",
                    "The upstream account is out of credits; contact the operator".to_owned(),
                );
                err.no_retry = true;
                err
            }
            FailureKind::RateLimited => {
                let err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_error",
                    "upstream_rate_limited",
                    format!("The upstream is rate limiting the gateway{detail}{task}"),
                );
                // The upstream's own pause, in whole seconds as the SDKs read it (at most 60 s,
                // the longest the SDKs wait); 5 s when it gave none.
                match e.retry_after {
                    Some(after) => {
                        let secs = after.as_secs_f64().ceil().clamp(1.0, 60.0) as u64;
                        err.with_headers(vec![("retry-after", secs.to_string())])
                    }
                    None => err,
                }
            }
            FailureKind::Connect => bad_gateway(
                "upstream_unavailable",
                format!("The upstream could not be reached{detail}"),
            ),
            FailureKind::ServerError => {
                bad_gateway("upstream_error", format!("The upstream failed{detail}"))
            }
            FailureKind::Malformed => bad_gateway(
                "upstream_bad_response",
                format!("The upstream sent a response the gateway could not read{detail}"),
            ),
            FailureKind::TaskFailed => bad_gateway(
                "upstream_task_failed",
                format!("The image generation failed{detail}"),
            ),
            FailureKind::Download => bad_gateway(
                "result_download_failed",
                format!("The generated image could not be fetched{detail}"),
            ),
            FailureKind::Timeout => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
                format!("The upstream did not finish within the model's deadline{detail}{task}"),
            ),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
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
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if self.no_retry {
            res.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
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
                .status
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
