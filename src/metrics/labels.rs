//! The closed label sets of the metrics: every label value a series can take comes from one of
//! these enums (or from a route template, a model id or a configured key/team id).

pub use crate::error::Fault;
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
pub enum CallOutcome {
    Ok,
    Failed(FailureKind),
}

impl CallOutcome {
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
pub enum CircuitGauge {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// How a webhook delivery attempt ended (`imagegate_webhook_deliveries_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    Delivered,
    /// Failed; tried again later.
    Retrying,
    /// Failed for the last time (`[jobs] webhook_give_up`).
    GaveUp,
}

impl WebhookResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::GaveUp => "gave_up",
        }
    }
}

/// What happened to a job (`imagegate_jobs_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    Created,
    Completed,
    Failed,
    /// The upstream may have billed it: booked until an operator resolves it.
    Unknown,
    /// Followed again after a restart.
    Resumed,
    JoinedIdempotencyKey,
    JoinedSdkRetry,
    /// A finished job's answer sent again.
    Replayed,
    /// Claimed from a replica whose claim lapsed (shared store).
    TakenOver,
}

impl JobEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Resumed => "resumed",
            Self::JoinedIdempotencyKey => "joined_idempotency_key",
            Self::JoinedSdkRetry => "joined_sdk_retry",
            Self::Replayed => "replayed",
            Self::TakenOver => "taken_over",
        }
    }
}
