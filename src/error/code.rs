//! The closed vocabulary of errors: every code a client can see ([`ErrorCode`]), and whose fault
//! each one was ([`Fault`], the `fault` label of `imagegate_errors_total`). A code's status, type,
//! fault and retry advice are one exhaustive `match` each, so a new code cannot be half-described.

use axum::http::StatusCode;

/// Which of the gateway's limits refused a request (the reason of a 429
/// `rate_limit_exceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// The key's or team's requests per minute.
    Requests,
    /// The key's or team's images per minute.
    Images,
    /// The key's or team's requests in flight.
    Concurrency,
    /// The operator's cap towards one upstream model (`[limits.models.<id>]`).
    ModelCap,
    /// Failed authentications from one client address (`server.auth_failures_per_minute`).
    AuthFailures,
}

/// Every error code an answer (or a ledger row) can carry: OpenAI's own where one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidValue,
    MissingRequiredParameter,
    InvalidBody,
    UnsupportedForModel,
    RequestTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    NoEligibleModel,
    InvalidApiKey,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    Conflict,
    RateLimitExceeded(RateLimit),
    InsufficientQuota,
    ModerationBlocked,
    UpstreamRejectedRequest,
    UpstreamAuthFailed,
    UpstreamInsufficientCredits,
    UpstreamRateLimited,
    UpstreamUnavailable,
    NoHealthyUpstream,
    UpstreamError,
    UpstreamTaskFailed,
    ResultDownloadFailed,
    UpstreamTimeout,
    /// The upstream may or may not have accepted (and billed) the work: never retried.
    UpstreamOutcomeUnknown,
    /// An `Idempotency-Key` reused with a different request (422).
    IdempotencyKeyReused,
    InternalError,
    /// A handler panicked: answered as `internal_error`, counted as `gateway_panic`.
    Panicked,
    /// The gateway is at its in-flight limit (`server.max_in_flight`): load shed before parsing.
    ServerOverloaded,
    /// The gateway is stopping; the job named in the answer goes on in the next process.
    ShuttingDown,
    /// The shared database (PostgreSQL) cannot be reached: refused before anything is sent
    /// upstream (503).
    DatabaseUnavailable,
    /// Redis (the replicas' shared rate limits) cannot be reached and
    /// `rate_limits_when_redis_down = "closed"` (503).
    SharedStateUnavailable,
    /// Ledger only: the client hung up while the upstream worked (status 499).
    ClientClosedRequest,
    /// `/v1/responses` or `/v1/chat/completions` without a `[passthrough]` section (404).
    PassthroughNotConfigured,
    /// A key or team with a budget asked for a text model that has no price (403).
    ModelNotPriced,
}

impl ErrorCode {
    /// Every code, for tests that check each mapping.
    pub const ALL: [ErrorCode; 41] = [
        Self::InvalidValue,
        Self::MissingRequiredParameter,
        Self::InvalidBody,
        Self::UnsupportedForModel,
        Self::RequestTooLarge,
        Self::UnsupportedMediaType,
        Self::MethodNotAllowed,
        Self::NoEligibleModel,
        Self::InvalidApiKey,
        Self::ModelNotAllowed,
        Self::ModelNotFound,
        Self::NotFound,
        Self::Conflict,
        Self::RateLimitExceeded(RateLimit::Requests),
        Self::RateLimitExceeded(RateLimit::Images),
        Self::RateLimitExceeded(RateLimit::Concurrency),
        Self::RateLimitExceeded(RateLimit::ModelCap),
        Self::RateLimitExceeded(RateLimit::AuthFailures),
        Self::InsufficientQuota,
        Self::ModerationBlocked,
        Self::UpstreamRejectedRequest,
        Self::UpstreamAuthFailed,
        Self::UpstreamInsufficientCredits,
        Self::UpstreamRateLimited,
        Self::UpstreamUnavailable,
        Self::NoHealthyUpstream,
        Self::UpstreamError,
        Self::UpstreamTaskFailed,
        Self::ResultDownloadFailed,
        Self::UpstreamTimeout,
        Self::UpstreamOutcomeUnknown,
        Self::IdempotencyKeyReused,
        Self::InternalError,
        Self::Panicked,
        Self::ServerOverloaded,
        Self::ShuttingDown,
        Self::DatabaseUnavailable,
        Self::SharedStateUnavailable,
        Self::ClientClosedRequest,
        Self::PassthroughNotConfigured,
        Self::ModelNotPriced,
    ];

    /// The code named `s` (as stored with a job); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The `code` of the OpenAI error envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidValue => "invalid_value",
            Self::MissingRequiredParameter => "missing_required_parameter",
            Self::InvalidBody => "invalid_body",
            Self::UnsupportedForModel => "unsupported_for_model",
            Self::RequestTooLarge => "request_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NoEligibleModel => "no_eligible_model",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::ModelNotFound => "model_not_found",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::RateLimitExceeded(_) => "rate_limit_exceeded",
            Self::InsufficientQuota => "insufficient_quota",
            Self::ModerationBlocked => "moderation_blocked",
            Self::UpstreamRejectedRequest => "upstream_rejected_request",
            Self::UpstreamAuthFailed => "upstream_auth_failed",
            Self::UpstreamInsufficientCredits => "upstream_insufficient_credits",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTaskFailed => "upstream_task_failed",
            Self::ResultDownloadFailed => "result_download_failed",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamOutcomeUnknown => "upstream_outcome_unknown",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InternalError | Self::Panicked => "internal_error",
            Self::ServerOverloaded => "server_overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::SharedStateUnavailable => "shared_state_unavailable",
            Self::ClientClosedRequest => "client_closed_request",
            Self::PassthroughNotConfigured => "passthrough_not_configured",
            Self::ModelNotPriced => "model_not_priced",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidValue
            | Self::MissingRequiredParameter
            | Self::InvalidBody
            | Self::UnsupportedForModel
            | Self::NoEligibleModel
            | Self::ModerationBlocked
            | Self::UpstreamRejectedRequest => StatusCode::BAD_REQUEST,
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::ModelNotAllowed | Self::ModelNotPriced => StatusCode::FORBIDDEN,
            Self::ModelNotFound | Self::NotFound | Self::PassthroughNotConfigured => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimitExceeded(_) | Self::InsufficientQuota => StatusCode::TOO_MANY_REQUESTS,
            Self::ClientClosedRequest => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::InternalError | Self::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UpstreamAuthFailed
            | Self::UpstreamInsufficientCredits
            | Self::UpstreamUnavailable
            | Self::UpstreamError
            | Self::UpstreamTaskFailed
            | Self::ResultDownloadFailed
            | Self::UpstreamOutcomeUnknown => StatusCode::BAD_GATEWAY,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UpstreamRateLimited
            | Self::NoHealthyUpstream
            | Self::ServerOverloaded
            | Self::ShuttingDown
            | Self::DatabaseUnavailable
            | Self::SharedStateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `type` of the OpenAI error envelope.
    pub fn kind(self) -> &'static str {
        match self {
            Self::InvalidValue
            | Self::MissingRequiredParameter
            | Self::InvalidBody
            | Self::UnsupportedForModel
            | Self::RequestTooLarge
            | Self::UnsupportedMediaType
            | Self::MethodNotAllowed
            | Self::NoEligibleModel
            | Self::InvalidApiKey
            | Self::ModelNotAllowed
            | Self::ModelNotFound
            | Self::NotFound
            | Self::Conflict
            | Self::UpstreamRejectedRequest
            | Self::IdempotencyKeyReused
            | Self::ClientClosedRequest
            | Self::PassthroughNotConfigured
            | Self::ModelNotPriced => "invalid_request_error",
            Self::RateLimitExceeded(_) => "requests",
            Self::InsufficientQuota => "insufficient_quota",
            Self::ModerationBlocked => "image_generation_user_error",
            Self::UpstreamAuthFailed
            | Self::UpstreamInsufficientCredits
            | Self::UpstreamRateLimited
            | Self::UpstreamUnavailable
            | Self::NoHealthyUpstream
            | Self::UpstreamError
            | Self::UpstreamTaskFailed
            | Self::ResultDownloadFailed
            | Self::UpstreamTimeout
            | Self::UpstreamOutcomeUnknown => "upstream_error",
            Self::InternalError
            | Self::Panicked
            | Self::ServerOverloaded
            | Self::ShuttingDown
            | Self::DatabaseUnavailable
            | Self::SharedStateUnavailable => "server_error",
        }
    }

    /// `false` where a retry cannot help and could cost money again: the answer carries
    /// `x-should-retry: false`.
    pub fn should_retry(self) -> bool {
        match self {
            Self::InsufficientQuota
            | Self::ModerationBlocked
            | Self::UpstreamAuthFailed
            | Self::UpstreamInsufficientCredits
            // The work may run on (and be billed): the job named in the answer holds it.
            | Self::UpstreamOutcomeUnknown
            | Self::UpstreamTimeout
            | Self::ResultDownloadFailed
            | Self::IdempotencyKeyReused => false,
            Self::InvalidValue
            | Self::MissingRequiredParameter
            | Self::InvalidBody
            | Self::UnsupportedForModel
            | Self::RequestTooLarge
            | Self::UnsupportedMediaType
            | Self::MethodNotAllowed
            | Self::NoEligibleModel
            | Self::InvalidApiKey
            | Self::ModelNotAllowed
            | Self::ModelNotFound
            | Self::NotFound
            | Self::Conflict
            | Self::RateLimitExceeded(_)
            | Self::UpstreamRejectedRequest
            | Self::UpstreamRateLimited
            | Self::UpstreamUnavailable
            | Self::NoHealthyUpstream
            | Self::UpstreamError
            | Self::UpstreamTaskFailed
            | Self::InternalError
            | Self::Panicked
            | Self::ServerOverloaded
            | Self::ShuttingDown
            | Self::DatabaseUnavailable
            | Self::SharedStateUnavailable
            | Self::ClientClosedRequest
            | Self::PassthroughNotConfigured
            | Self::ModelNotPriced => true,
        }
    }

    /// Whose fault an answer with this code was.
    pub fn fault(self) -> Fault {
        match self {
            Self::InvalidValue
            | Self::MissingRequiredParameter
            | Self::InvalidBody
            | Self::UnsupportedForModel
            | Self::UnsupportedMediaType
            | Self::MethodNotAllowed
            | Self::NoEligibleModel => Fault::CallerInvalidRequest,
            Self::ModelNotAllowed | Self::ModelNotPriced => Fault::CallerForbidden,
            Self::Conflict | Self::IdempotencyKeyReused => Fault::CallerConflict,
            Self::InvalidApiKey => Fault::CallerUnauthenticated,
            Self::ModelNotFound | Self::NotFound | Self::PassthroughNotConfigured => {
                Fault::CallerNotFound
            }
            Self::RequestTooLarge => Fault::CallerTooLarge,
            Self::UpstreamRejectedRequest => Fault::CallerUpstreamRejected,
            Self::ClientClosedRequest => Fault::CallerClosedRequest,
            Self::ModerationBlocked => Fault::PolicyModeration,
            Self::RateLimitExceeded(_) => Fault::PolicyRateLimited,
            Self::InsufficientQuota => Fault::PolicyBudgetExhausted,
            Self::UpstreamAuthFailed => Fault::UpstreamAuth,
            Self::UpstreamInsufficientCredits => Fault::UpstreamCredits,
            Self::UpstreamRateLimited => Fault::UpstreamRateLimited,
            Self::UpstreamUnavailable | Self::NoHealthyUpstream => Fault::UpstreamUnavailable,
            Self::UpstreamError => Fault::UpstreamServerError,
            Self::UpstreamTaskFailed => Fault::UpstreamTaskFailed,
            Self::ResultDownloadFailed => Fault::UpstreamDownload,
            Self::UpstreamTimeout => Fault::UpstreamTimeout,
            Self::UpstreamOutcomeUnknown => Fault::UpstreamOutcomeUnknown,
            Self::InternalError => Fault::GatewayInternal,
            Self::Panicked => Fault::GatewayPanic,
            Self::ServerOverloaded | Self::ShuttingDown => Fault::GatewayOverloaded,
            Self::DatabaseUnavailable | Self::SharedStateUnavailable => Fault::GatewayDatabase,
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
    /// The client hung up before the answer (ledger rows only).
    CallerClosedRequest,
    PolicyModeration,
    PolicyRateLimited,
    PolicyBudgetExhausted,
    UpstreamAuth,
    UpstreamCredits,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamServerError,
    UpstreamTaskFailed,
    UpstreamDownload,
    UpstreamTimeout,
    /// The upstream may have accepted the work; nothing proves either way.
    UpstreamOutcomeUnknown,
    GatewayInternal,
    /// Shed at the in-flight limit.
    GatewayOverloaded,
    GatewayPanic,
    /// The shared database could not be reached.
    GatewayDatabase,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerInvalidRequest => "caller_invalid_request",
            Self::CallerUnauthenticated => "caller_unauthenticated",
            Self::CallerNotFound => "caller_not_found",
            Self::CallerForbidden => "caller_forbidden",
            Self::CallerConflict => "caller_conflict",
            Self::CallerTooLarge => "caller_too_large",
            Self::CallerUpstreamRejected => "caller_upstream_rejected",
            Self::CallerClosedRequest => "caller_closed_request",
            Self::PolicyModeration => "policy_moderation",
            Self::PolicyRateLimited => "policy_rate_limited",
            Self::PolicyBudgetExhausted => "policy_budget_exhausted",
            Self::UpstreamAuth => "upstream_auth",
            Self::UpstreamCredits => "upstream_credits",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamServerError => "upstream_server_error",
            Self::UpstreamTaskFailed => "upstream_task_failed",
            Self::UpstreamDownload => "upstream_download",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamOutcomeUnknown => "upstream_outcome_unknown",
            Self::GatewayInternal => "gateway_internal",
            Self::GatewayOverloaded => "gateway_overloaded",
            Self::GatewayPanic => "gateway_panic",
            Self::GatewayDatabase => "gateway_database",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_described_consistently() {
        for code in ErrorCode::ALL {
            let status = code.status().as_u16();
            let fault = code.fault().as_str();
            // 4xx are the caller's or a policy's; 5xx the upstream's or the gateway's.
            let prefixes: &[&str] = match status {
                400..=499 => &["caller_", "policy_"],
                _ => &["upstream_", "gateway_"],
            };
            assert!(
                prefixes.iter().any(|p| fault.starts_with(p)),
                "{} ({status}) → {fault}",
                code.as_str()
            );
            assert!(!code.as_str().is_empty() && !code.kind().is_empty());
        }
        let no_retry: Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| !c.should_retry())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            no_retry,
            [
                "insufficient_quota",
                "moderation_blocked",
                "upstream_auth_failed",
                "upstream_insufficient_credits",
                "result_download_failed",
                "upstream_timeout",
                "upstream_outcome_unknown",
                "idempotency_key_reused",
            ]
        );
    }
}
