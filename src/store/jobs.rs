//! Jobs as stored: one row per image request that passed admission, one `job_calls` row per
//! upstream create (a fanned-out request has several), and the `Idempotency-Key` records.
//!
//! A job's state only moves forward: `queued` → `submitting` (committed before a create is sent)
//! → `in_progress` (the task ids committed as soon as the create answers) → `completed` |
//! `failed` | `unknown`. The terminal state and the job's one ledger row are written in one
//! transaction ([`Finish`]), and the ledger's unique index on `job_id` refuses a second row.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ledger::Row;
use crate::model::JsonText;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted; no upstream call sent yet.
    Queued,
    /// A create call is about to be sent, or was sent and has not answered.
    Submitting,
    /// The upstream accepted the work (task ids known); polling.
    InProgress,
    Completed,
    Failed,
    /// The upstream may or may not have accepted (and billed) the work.
    Unknown,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitting => "submitting",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "submitting" => Self::Submitting,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Unknown)
    }
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub key_id: String,
    pub team: Option<String>,
    pub digest: String,
    pub public_model: String,
    /// The request as the job keeps it (`JobSpec`), JSON text.
    pub spec: String,
    pub request_id: String,
    /// The `Idempotency-Key`'s record, if the request has one.
    pub idempotency: Option<IdemKey>,
    /// Where the job's end is posted (a signed webhook), if anywhere.
    pub callback_url: Option<String>,
}

/// An `Idempotency-Key` (explicit, or a Codex call's implicit one) as a new job records it.
#[derive(Debug, Clone)]
pub struct IdemKey {
    pub key: String,
    /// When the record expires (unix ms).
    pub expires_ms: i64,
    /// When set, the job is joined by this key only this long (ms) after it ended: a Codex
    /// call's retries come within seconds; the same call later is a new request.
    pub after_end_ms: Option<i64>,
}

/// What creating a job decided.
#[derive(Debug)]
pub enum Created {
    New,
    /// The `Idempotency-Key` already names a job that may be joined or replayed.
    Existing {
        job_id: String,
        digest: String,
    },
}

/// One upstream create of a job.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub seq: u32,
    pub attempt: u32,
    pub model: String,
    pub state: JobState,
    pub task_id: Option<String>,
    pub upstream_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub key_id: String,
    pub team: Option<String>,
    pub digest: String,
    pub state: JobState,
    pub public_model: String,
    pub model: Option<String>,
    pub attempt: u32,
    pub price_micros: u64,
    pub per_call: bool,
    pub reserved_micros: u64,
    pub cost_micros: Option<u64>,
    pub spec: Value,
    pub images: Option<Value>,
    pub status: Option<u16>,
    pub error: Option<Value>,
    pub request_id: String,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    pub calls: Vec<CallRecord>,
    /// The claim under which this process works on the job (a shared store's lease), if any.
    pub epoch: Option<i64>,
}

impl JobRecord {
    /// Whether a retry joins (or replays) this job rather than running the request again: not
    /// when it failed with nothing billed.
    pub fn joinable(&self) -> bool {
        !(self.state == JobState::Failed && self.cost_micros.unwrap_or(0) == 0)
    }

    /// Whether a request naming this job by its idempotency record (expiring at `expires_ms`;
    /// see [`IdemKey::after_end_ms`]) joins it at `now`: while it runs, and after it ended until
    /// the record expires, unless it failed unbilled.
    pub fn live_for_key(&self, expires_ms: i64, after_end_ms: Option<i64>, now: i64) -> bool {
        let expires = match (after_end_ms, self.completed_ms) {
            (Some(window), Some(done)) => expires_ms.min(done.saturating_add(window)),
            _ => expires_ms,
        };
        !self.state.is_terminal() || (expires > now && self.joinable())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// How a job ended: written with its ledger row in one transaction.
#[derive(Debug, Clone)]
pub struct Finish {
    pub state: JobState,
    pub status: u16,
    pub cost_micros: u64,
    /// The images' JSON text, in pieces (the base64 of an inline image is the upstream answer's
    /// own buffer: written from it, not copied first).
    pub images: Option<JsonText>,
    pub error: Option<Value>,
    pub row: Row,
}

/// One webhook delivery of the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: String,
    pub job_id: String,
    pub key_id: String,
    pub url: String,
    pub state: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub delivered_ms: Option<i64>,
}
