//! The closed label sets of the metrics: every label value a series can take comes from one of
//! these enums (or from a route template, a model id or a configured key/team id).

use crate::error::ApiError;
use crate::upstream::failure::{FailureKind, UpstreamError};

/// A step of an upstream job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The call that starts the work (a sync generation, an edit, a task creation).
    Create,
    /// One poll of an async task.
    Poll,
    /// A result file download.
    Download,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Poll => "poll",
            Self::Download => "download",
        }
    }
}

/// How an upstream call or task ended: `ok` or the failure's classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(FailureKind),
}

impl Outcome {
    pub fn of<T>(result: &Result<T, UpstreamError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(e) => Self::Failed(e.kind),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed(kind) => kind.as_str(),
        }
    }
}

/// Whose fault an error answer was: the closed vocabulary of `imagegate_errors_total{fault}`.
///
/// `caller_*`: the request was wrong. `policy_*`: a policy refused it (the upstream's content
/// policy, or the operator's limits). `upstream_*`: the platform failed or refused the gateway.
/// `gateway_*`: imagegate itself failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CallerInvalidRequest,
    CallerUnauthenticated,
    CallerNotFound,
    /// The key may not use the model it asked for.
    CallerForbidden,
    /// The request conflicts with the current state (admin API).
    CallerConflict,
    CallerTooLarge,
    /// The upstream refused the request for a reason other than policy (its own validation).
    CallerUpstreamRejected,
    PolicyModeration,
    PolicyRateLimited,
    PolicyBudgetExhausted,
    UpstreamAuth,
    UpstreamCredits,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamServerError,
    UpstreamBadResponse,
    UpstreamTaskFailed,
    UpstreamDownload,
    UpstreamTimeout,
    GatewayInternal,
    GatewayPanic,
    /// An error code this function does not know yet: a bug to fix here (a test checks every
    /// constructor in `error.rs`).
    GatewayUnclassified,
}

impl Fault {
    /// The one mapping from what the client was answered to whose fault it was.
    pub fn of(e: &ApiError) -> Self {
        match e.code {
            "invalid_value"
            | "missing_required_parameter"
            | "invalid_body"
            | "unsupported_for_model"
            | "unsupported_media_type"
            | "method_not_allowed"
            | "no_eligible_model" => Self::CallerInvalidRequest,
            "model_not_allowed" => Self::CallerForbidden,
            "conflict" => Self::CallerConflict,
            "invalid_api_key" => Self::CallerUnauthenticated,
            "model_not_found" | "not_found" => Self::CallerNotFound,
            "request_too_large" => Self::CallerTooLarge,
            "upstream_rejected_request" => Self::CallerUpstreamRejected,
            "moderation_blocked" => Self::PolicyModeration,
            "rate_limit_exceeded" => Self::PolicyRateLimited,
            "insufficient_quota" => Self::PolicyBudgetExhausted,
            "upstream_auth_failed" => Self::UpstreamAuth,
            "upstream_insufficient_credits" => Self::UpstreamCredits,
            "upstream_rate_limited" => Self::UpstreamRateLimited,
            "upstream_unavailable" | "no_healthy_upstream" => Self::UpstreamUnavailable,
            "upstream_error" => Self::UpstreamServerError,
            "upstream_bad_response" => Self::UpstreamBadResponse,
            "upstream_task_failed" => Self::UpstreamTaskFailed,
            "result_download_failed" => Self::UpstreamDownload,
            "upstream_timeout" => Self::UpstreamTimeout,
            "internal_error" => Self::GatewayInternal,
            _ => Self::GatewayUnclassified,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerInvalidRequest => "caller_invalid_request",
            Self::CallerUnauthenticated => "caller_unauthenticated",
            Self::CallerNotFound => "caller_not_found",
            Self::CallerForbidden => "caller_forbidden",
            Self::CallerConflict => "caller_conflict",
            Self::CallerTooLarge => "caller_too_large",
            Self::CallerUpstreamRejected => "caller_upstream_rejected",
            Self::PolicyModeration => "policy_moderation",
            Self::PolicyRateLimited => "policy_rate_limited",
            Self::PolicyBudgetExhausted => "policy_budget_exhausted",
            Self::UpstreamAuth => "upstream_auth",
            Self::UpstreamCredits => "upstream_credits",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamServerError => "upstream_server_error",
            Self::UpstreamBadResponse => "upstream_bad_response",
            Self::UpstreamTaskFailed => "upstream_task_failed",
            Self::UpstreamDownload => "upstream_download",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::GatewayInternal => "gateway_internal",
            Self::GatewayPanic => "gateway_panic",
            Self::GatewayUnclassified => "gateway_unclassified",
        }
    }
}

/// Why the gateway's own limits refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Requests per window.
    RequestRate,
    /// Images per window.
    ImageRate,
    /// Requests in flight at once.
    Concurrency,
    /// The spending budget is used up.
    Budget,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestRate => "request_rate",
            Self::ImageRate => "image_rate",
            Self::Concurrency => "concurrency",
            Self::Budget => "budget",
        }
    }
}

/// A circuit breaker's state; exported as a number so a dashboard can plot it and an alert can
/// compare it (`== 2` is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_constructor_has_a_fault() {
        let errors = [
            ApiError::invalid("size", "x"),
            ApiError::missing("prompt"),
            ApiError::bad_body("x"),
            ApiError::unsupported("mask", "x"),
            ApiError::too_large(1),
            ApiError::unsupported_media_type("text/plain"),
            ApiError::unauthorized("x"),
            ApiError::model_not_found("x"),
            ApiError::not_found("/x"),
            ApiError::method_not_allowed(),
            ApiError::internal("x"),
            ApiError::no_eligible_model("model", "x".to_owned()),
            ApiError::no_healthy_model("x".to_owned()),
            ApiError::model_not_allowed("x"),
            ApiError::rate_limited("x", Vec::new()),
            ApiError::insufficient_quota("x"),
            ApiError::conflict("x"),
        ];
        let kinds = [
            FailureKind::Connect,
            FailureKind::Timeout,
            FailureKind::ServerError,
            FailureKind::Unauthorized,
            FailureKind::OutOfCredits,
            FailureKind::RateLimited,
            FailureKind::Rejected,
            FailureKind::PolicyRejected,
            FailureKind::Malformed,
            FailureKind::TaskFailed,
            FailureKind::Download,
        ];
        let upstream =
            kinds.map(|k| ApiError::from_upstream(&UpstreamError::new(k, String::new())));
        for e in errors.iter().chain(upstream.iter()) {
            let fault = Fault::of(e);
            assert_ne!(fault, Fault::GatewayUnclassified, "{}", e.code);
            let prefix = match e.status.as_u16() {
                400..=499 => ["caller_", "policy_"],
                _ => ["upstream_", "gateway_"],
            };
            assert!(
                prefix.iter().any(|p| fault.as_str().starts_with(p)),
                "{} → {}",
                e.code,
                fault.as_str()
            );
        }
        assert_eq!(
            Fault::of(&ApiError::from_upstream(&UpstreamError::new(
                FailureKind::PolicyRejected,
                String::new()
            ))),
            Fault::PolicyModeration
        );
    }
}
