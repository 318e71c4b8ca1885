//! The gateway's database: dynamic client keys, dynamic teams, the spend ledger, jobs (with their
//! upstream calls and `Idempotency-Key` records) and the webhook outbox.
//!
//! Two backends behind one interface:
//! - **SQLite** ([`sqlite`], the default): `data.dir/imagegate.sqlite3`, for one process on one
//!   machine (`data.dir` is locked by the process that holds it).
//! - **PostgreSQL** ([`pg`], `[data] url = "postgres://…"`): shared by several replicas.
//!
//! Every write the gateway makes is an [`Op`]; a list of them commits in one transaction.
//! [`Store::write`] is for writes made before anything is sent upstream: on PostgreSQL it is
//! tried once, and a database that cannot be reached refuses the request (503) before any
//! spend. [`Store::write_durable`] and [`Store::record`] are for what happened already (a task
//! id, a job's end, a ledger row): they are queued, grouped, and retried until the database
//! takes them, never dropped. [`Store::flush`] waits until every write queued before it is
//! committed (usage reports, shutdown).

use std::path::Path;
use std::time::Duration;

use crate::config::{DataConfig, KeySpec, TeamSpec};
use crate::error::{ApiError, ErrorCode};
use crate::ledger::{Row, UsageQuery, UsageRow};
pub use jobs::{CallRecord, Created, Finish, IdemKey, JobRecord, JobState, NewJob, Webhook};
pub use lock::DataLock;
pub use ops::{Epoch, Op};

pub mod jobs;
mod lock;
mod ops;
pub mod pg;
pub mod sqlite;

/// The database file inside `data.dir`.
pub const DB_FILE: &str = "imagegate.sqlite3";

/// A database failure. Clients see a generic 500 (503 when the database cannot be reached);
/// the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: {0}")]
    Postgres(#[from] sqlx_core::Error),
    #[error("database: stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database: the blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("database: lock poisoned")]
    Poisoned,
    #[error("database: {0}")]
    Refused(String),
}

impl StoreError {
    /// The database could not be reached or did not answer in time (as opposed to refusing
    /// what was asked): the request may be tried again later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => pg::is_unavailable(e),
            _ => false,
        }
    }
}

/// A dynamic key as stored: its settings, digest (hex) and creation time (unix seconds).
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub spec: KeySpec,
    pub digest: String,
    pub created_at: i64,
}

/// Spend per key or team: this month's and all-time, in micro-dollars.
#[derive(Debug, Clone, Default)]
pub struct Spent {
    pub month: u64,
    pub total: u64,
}

/// Spend per key or team id.
pub type SpendBy = Vec<(String, Spent)>;

/// The database, whichever backend holds it. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::Lite),
    Postgres(pg::Pg),
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Store::Sqlite($b) => $e,
            Store::Postgres($b) => $e,
        }
    };
}

/// [`each!`] for a call that returns a future. PostgreSQL's futures (sqlx's) are several
/// kilobytes: boxed, they no longer size every future that awaits the store, and every job
/// waiting on the upstream holds such a future. SQLite's are awaited in place.
macro_rules! each_await {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Store::Sqlite($b) => $e.await,
            Store::Postgres($b) => Box::pin($e).await,
        }
    };
}

impl Store {
    /// An SQLite store in `dir` (in memory without one).
    pub fn open(dir: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Store::Sqlite(sqlite::Lite::open(dir)?))
    }

    /// The store `[data]` names: PostgreSQL when it has a `url`, else SQLite in `dir` (in memory
    /// with `in_memory`). Migrations are applied before it returns.
    pub async fn connect(data: &DataConfig, lease: Duration) -> anyhow::Result<Self> {
        match &data.url {
            Some(url) => Ok(Store::Postgres(
                pg::Pg::connect(url, &data.pool, lease).await?,
            )),
            None => Self::open(data.dir.as_deref().filter(|_| !data.in_memory)),
        }
    }

    /// Whether several processes share this store (replicas on PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The claim a job this process creates is written under: replicas sharing a store fence
    /// every job write on it (see [`Epoch`]); one process alone needs none.
    pub fn first_epoch(&self) -> Epoch {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(_) => Some(pg::jobs::FIRST_EPOCH),
        }
    }

    /// The ids of jobs that end from now on on any replica (PostgreSQL's `NOTIFY`); `None` for
    /// one process, which knows its own jobs' ends.
    pub fn job_ends(&self) -> Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(pg) => Some(pg.ended()),
        }
    }

    /// Whether the database answers now (for `/readyz`): a round trip on PostgreSQL.
    pub async fn ping(&self, within: Duration) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(pg) => pg.ping(within).await,
        }
    }

    // === writes ===

    /// Commits `ops` in one transaction before anything is sent upstream (see the module docs).
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        each_await!(self, b => b.write_ops(ops))
    }

    /// Commits `ops` in one transaction, waiting as long as the database is away: what it
    /// records happened already. An error means the database refused it (a constraint).
    pub async fn write_durable(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        each_await!(self, b => b.write_durable(ops))
    }

    /// Queues `ops` (one transaction) without waiting for their commit, from code that cannot
    /// wait (a guard's `drop`): they are ahead of any later [`flush`](Self::flush), and never
    /// dropped.
    pub fn write_later(&self, ops: Vec<Op>) {
        each!(self, b => b.write_later(ops))
    }

    /// Queues one ledger row without waiting for it (waits only for room in the queue).
    pub async fn record(&self, row: Row) {
        each_await!(self, b => b.record(row))
    }

    /// Waits until every write queued before this call is committed.
    pub async fn flush(&self) {
        each_await!(self, b => b.flush())
    }

    // === keys and teams ===

    /// A new dynamic key with its digest and the secret that signs its webhooks.
    pub async fn insert_key(
        &self,
        spec: KeySpec,
        digest: String,
        webhook_secret: String,
    ) -> Result<(), StoreError> {
        each_await!(self, b => b.insert_key(spec, digest, webhook_secret))
    }

    /// The secret that signs a dynamic key's webhooks.
    pub async fn webhook_secret(&self, id: String) -> Result<Option<String>, StoreError> {
        each_await!(self, b => b.webhook_secret(id))
    }

    /// Replaces a dynamic key's webhook secret; false when there is no such key.
    pub async fn set_webhook_secret(&self, id: String, secret: String) -> Result<bool, StoreError> {
        each_await!(self, b => b.set_webhook_secret(id, secret))
    }

    /// Replaces a key's settings; false when there is no such key.
    pub async fn update_key(&self, spec: KeySpec) -> Result<bool, StoreError> {
        each_await!(self, b => b.update_key(spec))
    }

    pub async fn delete_key(&self, id: String) -> Result<bool, StoreError> {
        each_await!(self, b => b.delete_key(id))
    }

    pub async fn key(&self, id: String) -> Result<Option<StoredKey>, StoreError> {
        each_await!(self, b => b.key(id))
    }

    pub async fn key_by_digest(&self, digest: String) -> Result<Option<StoredKey>, StoreError> {
        each_await!(self, b => b.key_by_digest(digest))
    }

    pub async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        each_await!(self, b => b.keys())
    }

    /// Inserts or replaces a team.
    pub async fn put_team(&self, spec: TeamSpec) -> Result<(), StoreError> {
        each_await!(self, b => b.put_team(spec))
    }

    pub async fn delete_team(&self, id: String) -> Result<bool, StoreError> {
        each_await!(self, b => b.delete_team(id))
    }

    pub async fn teams(&self) -> Result<Vec<TeamSpec>, StoreError> {
        each_await!(self, b => b.teams())
    }

    // === ledger ===

    /// Spend by key and by team, for `month` (`YYYY-MM`) and all-time.
    pub async fn spent(&self, month: &str) -> Result<(SpendBy, SpendBy), StoreError> {
        each_await!(self, b => b.spent(month))
    }

    /// Aggregates the ledger by the query's grouping columns.
    pub async fn usage(&self, q: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        each_await!(self, b => b.usage(q))
    }

    // === jobs ===

    /// Creates `job` (state `queued`), or finds the job its `Idempotency-Key` already names
    /// (see [`Created`]).
    pub async fn create_job(&self, job: NewJob) -> Result<Created, StoreError> {
        each_await!(self, b => b.create_job(job))
    }

    /// One job with its calls.
    pub async fn job(&self, id: String) -> Result<Option<JobRecord>, StoreError> {
        each_await!(self, b => b.job(id))
    }

    /// The job an `Idempotency-Key` names, with the digest of its request and when the key's
    /// record expires (unix ms).
    pub async fn job_by_idempotency_key(
        &self,
        key_id: String,
        idem: String,
    ) -> Result<Option<(JobRecord, String, i64)>, StoreError> {
        each_await!(self, b => b.job_by_idempotency_key(key_id, idem))
    }

    /// The newest joinable job of `key_id` for the same request since `since_ms`.
    pub async fn find_retry(
        &self,
        key_id: String,
        digest: String,
        since_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        each_await!(self, b => b.find_retry(key_id, digest, since_ms))
    }

    /// Jobs newest first: the caller's (or every key's), after the job `after` (a cursor).
    pub async fn jobs(
        &self,
        key_id: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        each_await!(self, b => b.jobs(key_id, limit, after))
    }

    /// Jobs not finished (SQLite: left by the last process, read at startup).
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        each_await!(self, b => b.unfinished_jobs())
    }

    /// Webhook deliveries due now, oldest first.
    pub async fn due_webhooks(&self, now_ms: i64, limit: u32) -> Result<Vec<Webhook>, StoreError> {
        each_await!(self, b => b.due_webhooks(now_ms, limit))
    }

    /// A job's webhook deliveries.
    pub async fn webhooks_of(&self, job_id: String) -> Result<Vec<Webhook>, StoreError> {
        each_await!(self, b => b.webhooks_of(job_id))
    }

    /// Forgets finished jobs that ended before `before_ms` (see `purge` of each backend).
    pub async fn purge(&self, before_ms: i64) -> Result<usize, StoreError> {
        each_await!(self, b => b.purge(before_ms))
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The client sees a generic 500, or a 503 while the database cannot be reached (nothing was
/// sent upstream). The database error itself is logged here, once, because the access log only
/// sees the client-facing message.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "database call failed");
        if e.is_unavailable() {
            return ApiError::new(
                ErrorCode::DatabaseUnavailable,
                "The gateway's database cannot be reached; nothing was sent upstream. Try again shortly.",
            );
        }
        ApiError::internal("The gateway could not read or write its database.")
    }
}
