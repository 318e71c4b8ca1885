//! The writes the gateway makes, as one closed set: each backend applies an [`Op`] in its own SQL,
//! and a list of them commits in one transaction (a job's row with its first create's record, a
//! job's end with its ledger row).

use super::jobs::{Finish, JobState, NewJob};
use crate::ledger::Row;

/// Which claim on a job a write is made under (shared stores only, see `store::pg`): the write
/// lands only while the job's `lease_epoch` is still this one, so a replica that lost its
/// lease (paused, cut off) cannot write a second result over its successor's.
pub type Epoch = Option<i64>;

#[derive(Debug, Clone)]
pub enum Op {
    /// A new job, `queued`.
    InsertJob(std::sync::Arc<NewJob>),
    /// An attempt on `model` starts: its price per unit, whether a unit is a call (a fanned-out
    /// `n`), and what is reserved for it.
    Attempt {
        job: String,
        epoch: Epoch,
        attempt: u32,
        model: String,
        price_micros: u64,
        per_call: bool,
        reserved_micros: u64,
    },
    /// Create call `seq` is about to be sent.
    Submitting {
        job: String,
        epoch: Epoch,
        seq: u32,
        attempt: u32,
        model: String,
    },
    /// Create call `seq` answered: its task id (when the model runs tasks), made with pool key
    /// `key`.
    CallEnded {
        job: String,
        epoch: Epoch,
        seq: u32,
        state: JobState,
        task_id: Option<String>,
        key: Option<String>,
    },
    /// The job's terminal state and its one ledger row (refused when it is already finished).
    Finish {
        job: String,
        epoch: Epoch,
        finish: Box<Finish>,
    },
    /// A ledger row of a request that is no job.
    Ledger(Box<Row>),
    /// A budget hold (shared store) ends unbooked: the upstream provably did not bill it.
    ReleaseHold(String),
    /// A text call's row, written before the call, completed with its end (see `Row::call_id`).
    CompleteText(Box<Row>),
    /// One webhook delivery attempt: delivered, or tried again at `next_ms` (`None`: given up).
    WebhookAttempted {
        id: String,
        status: Option<u16>,
        error: Option<String>,
        delivered: bool,
        next_ms: Option<i64>,
    },
    /// An operator settled an `unknown` job (it becomes `failed`); not billed writes the
    /// compensating row and sets its cost to zero.
    Resolve {
        job: String,
        compensation: Option<Box<Row>>,
    },
}

impl Op {
    /// The job this write belongs to, if any.
    pub fn job(&self) -> Option<&str> {
        match self {
            Op::InsertJob(j) => Some(&j.id),
            Op::Attempt { job, .. }
            | Op::Submitting { job, .. }
            | Op::CallEnded { job, .. }
            | Op::Finish { job, .. }
            | Op::Resolve { job, .. } => Some(job),
            Op::Ledger(_)
            | Op::ReleaseHold(_)
            | Op::CompleteText(_)
            | Op::WebhookAttempted { .. } => None,
        }
    }
}
