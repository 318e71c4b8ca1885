//! How an upstream call failed, classified once at the adapter boundary: [`FailureKind`] and
//! [`UpstreamError`]. Routing, errors, metrics and health read these, never strings. A domain
//! type with no dependency: every layer may name it.

use std::time::Duration;

/// How an upstream call failed. Routing, errors and (later) health read this, never strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Could not connect / the connection broke.
    Connect,
    /// The model's deadline passed (a single call, or a task still running).
    Timeout,
    /// HTTP 5xx, or a body `code` ≥ 500 on an HTTP 200, or an unexpected 404.
    ServerError,
    /// The upstream refused our key (401/403).
    Unauthorized,
    /// The upstream account has no credits (402).
    OutOfCredits,
    /// The upstream is throttling us (429).
    RateLimited,
    /// The upstream refused the request itself (400 and other 4xx).
    Rejected,
    /// A content-policy refusal, synchronous or as a failed task.
    PolicyRejected,
    /// A body that is not the documented shape.
    Malformed,
    /// The task ended `failed` for another reason.
    TaskFailed,
    /// A result URL could not be fetched (host not allowed, too big, not an image, HTTP error).
    Download,
    /// Nothing proves the upstream did not accept the work: the connection broke after the
    /// request was sent, or the answer is not the platform's (a proxy's HTML 502/504 page).
    Unknown,
    /// The gateway could not record the job before the call (its database is away), so the
    /// call was not sent: nothing about the upstream.
    Unrecorded,
}

/// What a failure means for the money: whether the upstream may have billed the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// The upstream provably did not accept the work, or failed it (failed work is not billed).
    NotBilled,
    /// The work was done (a result download failed afterwards).
    Billed,
    /// It may have been accepted and billed: the reservation stays booked, nothing fails over.
    Unknown,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::ServerError => "server_error",
            Self::Unauthorized => "unauthorized",
            Self::OutOfCredits => "out_of_credits",
            Self::RateLimited => "rate_limited",
            Self::Rejected => "rejected",
            Self::PolicyRejected => "policy_rejected",
            Self::Malformed => "malformed",
            Self::TaskFailed => "task_failed",
            Self::Download => "download",
            Self::Unknown => "unknown",
            Self::Unrecorded => "unrecorded",
        }
    }

    /// Whether the upstream may have billed the work that failed this way.
    pub fn billing(self) -> Billing {
        match self {
            Self::Connect
            | Self::ServerError
            | Self::Unauthorized
            | Self::OutOfCredits
            | Self::RateLimited
            | Self::Rejected
            | Self::PolicyRejected
            | Self::TaskFailed
            | Self::Unrecorded => Billing::NotBilled,
            Self::Download => Billing::Billed,
            Self::Timeout | Self::Malformed | Self::Unknown => Billing::Unknown,
        }
    }

    /// Failures that provably cost nothing and say nothing about the request: another model may
    /// serve it. Never a content-policy refusal (the prompt, not the model), a request the
    /// upstream rejected, our own key refused (every model shares it), or anything whose outcome
    /// is unknown ([`Billing::Unknown`]: a deadline, a broken connection after the request was
    /// sent, an answer that is not the platform's) or billed (a result download).
    pub fn fails_over(self) -> bool {
        self.billing() == Billing::NotBilled
            && matches!(
                self,
                Self::Connect
                    | Self::ServerError
                    | Self::RateLimited
                    | Self::OutOfCredits
                    | Self::TaskFailed
            )
    }

    /// Failures worth another poll of the same task rather than giving up on it.
    pub(crate) fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Connect
                | Self::ServerError
                | Self::Malformed
                | Self::RateLimited
                | Self::Unknown
                | Self::Timeout
        )
    }
}

/// A classified upstream failure. `message` is the upstream's own text, already redacted.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub kind: FailureKind,
    pub message: String,
    pub task_id: Option<String>,
    /// The upstream's own `retry-after` on a 429, passed on to the client (capped at 60 s).
    pub retry_after: Option<Duration>,
    /// The same call would fail the same way (a result file too large, or not an image): not
    /// worth trying again.
    pub lasting: bool,
}

impl UpstreamError {
    pub fn new(kind: FailureKind, message: String) -> Self {
        Self {
            kind,
            message,
            task_id: None,
            retry_after: None,
            lasting: false,
        }
    }

    /// Marks a failure that trying again cannot mend.
    pub(crate) fn lasting(mut self) -> Self {
        self.lasting = true;
        self
    }

    pub(crate) fn with_task(mut self, task_id: &str) -> Self {
        self.task_id = Some(task_id.to_owned());
        self
    }
}
