//! The embedded database (SQLite), the single-machine default: dynamic client keys, dynamic
//! teams, the spend ledger and the jobs.
//!
//! It lives in `data.dir/imagegate.sqlite3`, created and migrated at startup (`PRAGMA
//! user_version` counts the migrations applied). Without `data.dir` it is an in-memory database,
//! so the ledger and the admin API still work, but nothing survives a restart.
//!
//! Every call runs on the blocking pool ([`Lite::call`]) behind one connection. Ledger rows take
//! another way: [`Lite::record`] queues the row and returns at once, and a writer thread inserts
//! what has queued up in one transaction, so no request waits on the database.
//! [`Lite::flush`] waits until every row queued before it is written (usage reports, shutdown).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension as _, Transaction};

use super::jobs::{Created, JobRecord, NewJob, Webhook};
use super::{now_secs, DataLock, Op, SpendBy, Spent, StoreError, StoredKey};
use crate::config::{KeySpec, TeamSpec};
use crate::ledger::{Row, UsageQuery, UsageRow};
pub use writer::WriteFn;

pub mod jobs;
mod schema;
mod writer;

/// The database file inside `data.dir`.
pub const DB_FILE: &str = "imagegate.sqlite3";

#[derive(Clone)]
pub struct Lite {
    conn: Arc<Mutex<Connection>>,
    writes: tokio::sync::mpsc::Sender<writer::Msg>,
    /// Whether the write queue was last seen full (its warning is logged once).
    behind: Arc<AtomicBool>,
    /// When the WAL starts again from its beginning (see `writer::checkpoints`).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by the tests: how often the WAL restarted")
    )]
    restart: Arc<writer::Restart>,
    /// Holds `data.dir` for this process (see [`DataLock`]).
    _lock: Option<Arc<DataLock>>,
}

pub(crate) fn insert_row(tx: &Transaction<'_>, row: &Row) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO ledger (ts_ms, month, day, request_id, key_id, team, model,
            served_model, n, size, quality, cost_micros, status, error_code, latency_ms,
            task_ids, job_id, adjusts, input_tokens, output_tokens, call_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21)",
    )?;
    stmt.execute(params![
        row.ts_ms,
        row.day.get(..7).unwrap_or_default(),
        row.day,
        row.request_id,
        row.key_id,
        row.team,
        row.model,
        row.served_model,
        row.n,
        row.size,
        row.quality,
        row.cost_micros(),
        row.status,
        row.error_code,
        row.latency_ms,
        row.task_ids,
        row.job_id,
        row.adjusts,
        row.tokens
            .map(|t| i64::try_from(t.input).unwrap_or(i64::MAX)),
        row.tokens
            .map(|t| i64::try_from(t.output).unwrap_or(i64::MAX)),
        row.call_id,
    ])?;
    Ok(())
}

/// Completes a text call's row (written before the call, see [`Row::call_id`]) with its end:
/// status, error, cost, latency and tokens.
pub(crate) fn complete_text_row(tx: &Transaction<'_>, row: &Row) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "UPDATE ledger SET status = ?2, error_code = ?3, cost_micros = ?4, latency_ms = ?5,
            input_tokens = ?6, output_tokens = ?7
         WHERE call_id = ?1",
    )?;
    stmt.execute(params![
        row.call_id,
        row.status,
        row.error_code,
        row.cost_micros(),
        row.latency_ms,
        row.tokens
            .map(|t| i64::try_from(t.input).unwrap_or(i64::MAX)),
        row.tokens
            .map(|t| i64::try_from(t.output).unwrap_or(i64::MAX)),
    ])?;
    Ok(())
}

/// Applies a list of writes in `tx`, in order. A new job followed by its first attempt and its
/// first create (what a request writes before its first upstream call) is one `INSERT` of the
/// job as it is after them, not an insert and two updates of the same row.
pub(crate) fn apply_all(tx: &Transaction<'_>, ops: &[Op]) -> Result<(), StoreError> {
    let mut rest = ops;
    loop {
        rest = match rest {
            [Op::InsertJob(new), Op::Attempt {
                job,
                attempt,
                model,
                price_micros,
                per_call,
                reserved_micros,
                ..
            }, Op::Submitting {
                job: called,
                seq,
                attempt: called_attempt,
                model: called_model,
                ..
            }, after @ ..]
                if *job == new.id
                    && called == job
                    && called_attempt == attempt
                    && called_model == model =>
            {
                let first = jobs::FirstAttempt {
                    attempt: *attempt,
                    model,
                    price_micros: *price_micros,
                    per_call: *per_call,
                    reserved_micros: *reserved_micros,
                };
                jobs::insert_submitting(tx, new, &first, *seq)?;
                after
            }
            [op, after @ ..] => {
                apply(tx, op)?;
                after
            }
            [] => return Ok(()),
        };
    }
}

/// Applies one write in `tx`.
pub(crate) fn apply(tx: &Transaction<'_>, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::InsertJob(job) => jobs::insert(tx, job),
        Op::Attempt {
            job,
            attempt,
            model,
            price_micros,
            per_call,
            reserved_micros,
            ..
        } => jobs::attempt(
            tx,
            job,
            *attempt,
            model,
            *price_micros,
            *per_call,
            *reserved_micros,
        ),
        Op::Submitting {
            job,
            seq,
            attempt,
            model,
            ..
        } => jobs::submitting(tx, job, *seq, *attempt, model),
        Op::CallEnded {
            job,
            seq,
            state,
            task_id,
            key,
            ..
        } => jobs::call_ended(tx, job, *seq, *state, task_id.as_deref(), key.as_deref()),
        Op::Finish { job, finish, .. } => jobs::finish(tx, job, finish),
        Op::Ledger(row) => insert_row(tx, row),
        // Budgets of one process are in memory: no hold is stored.
        Op::ReleaseHold(_) => Ok(()),
        Op::CompleteText(row) => complete_text_row(tx, row),
        Op::WebhookAttempted {
            id,
            status,
            error,
            delivered,
            next_ms,
        } => jobs::webhook_attempted(tx, id, *status, error.as_deref(), *delivered, *next_ms),
        Op::Resolve { job, compensation } => jobs::resolve(tx, job, compensation.as_deref()),
    }
}

impl Lite {
    /// Opens (creating the directory and file) and migrates the database.
    pub fn open(dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::open_with(dir, writer::Wal::default())
    }

    /// [`Lite::open`] with the WAL's restart point and size limit given (tests make them small).
    fn open_with(dir: Option<&Path>, wal: writer::Wal) -> anyhow::Result<Self> {
        let mut lock = None;
        let mut checkpoints = None;
        let mut conn = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("data.dir: cannot create {}: {e}", dir.display())
                })?;
                lock = Some(Arc::new(DataLock::acquire(dir)?));
                let conn = Connection::open(dir.join(DB_FILE))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                // Checkpoints (and their fsync) run on a thread of their own, not in a commit.
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                // When the log starts again from its beginning, the file is cut back to this.
                conn.pragma_update(None, "journal_size_limit", wal.size_limit)?;
                checkpoints = Some(dir.join(DB_FILE));
                conn
            }
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        let (writes, rx) = tokio::sync::mpsc::channel(writer::QUEUE);
        let writer = conn.clone();
        // Set by the checkpointer when the WAL should start again from its beginning.
        let restart = Arc::new(writer::Restart::new(wal.restart_frames));
        let restart_due = restart.clone();
        std::thread::Builder::new()
            .name("imagegate-writer".to_owned())
            .spawn(move || writer::run(writer, rx, &restart_due))?;
        if let Some(path) = checkpoints {
            let alive = Arc::downgrade(&conn);
            let checkpointer = Connection::open(&path)?;
            let asks = restart.clone();
            std::thread::Builder::new()
                .name("imagegate-checkpoint".to_owned())
                .spawn(move || writer::checkpoints(&checkpointer, &path, &alive, &asks))?;
        }
        Ok(Self {
            conn,
            writes,
            behind: Arc::default(),
            restart,
            _lock: lock,
        })
    }

    /// Queues `op` for the writer thread (grouped with other requests' writes into one
    /// transaction) and waits until it is committed. An error means the database refused it.
    pub async fn write(&self, op: WriteFn) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let msg = writer::Msg::Write {
            op,
            done: Some(done),
        };
        if self.queue(msg).await.is_err() {
            return Err(StoreError::Refused("the writer has stopped".to_owned()));
        }
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Refused(e)),
            Err(_) => Err(StoreError::Refused("the writer has stopped".to_owned())),
        }
    }

    /// Queues `op` without waiting for its commit (it is still never dropped: see `writer`);
    /// waits only for room in the queue.
    pub async fn write_detached(&self, op: WriteFn) {
        if self
            .queue(writer::Msg::Write { op, done: None })
            .await
            .is_err()
        {
            tracing::error!("the database writer has stopped; a write was not queued");
        }
    }

    /// Sends `msg` to the writer, waiting for room when the queue is full.
    async fn queue(&self, msg: writer::Msg) -> Result<(), ()> {
        match self.writes.try_send(msg) {
            Ok(()) => {
                self.behind.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(msg)) => {
                // Said once each time the writer falls behind, not once per waiting request.
                if !self.behind.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queued = writer::QUEUE,
                        "the database writer is behind; requests wait to queue their writes"
                    );
                }
                self.writes.send(msg).await.map_err(|_| ())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }

    /// Runs `f` on the connection, on the blocking pool.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Poisoned)?;
            f(&mut guard)
        })
        .await?
    }

    /// Runs `f` on the connection on this thread (startup only).
    pub fn blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut guard)
    }

    // === keys ===

    /// A new dynamic key with its digest and the secret that signs its webhooks.
    pub async fn insert_key(
        &self,
        spec: KeySpec,
        digest: String,
        webhook_secret: String,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO keys (id, digest, spec, created_at, webhook_secret)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    spec.id,
                    digest,
                    serde_json::to_string(&spec)?,
                    now_secs(),
                    webhook_secret
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The secret that signs a dynamic key's webhooks.
    pub async fn webhook_secret(&self, id: String) -> Result<Option<String>, StoreError> {
        self.call(move |c| {
            let sql = "SELECT webhook_secret FROM keys WHERE id = ?1";
            Ok(c.query_row(sql, [id], |r| r.get::<_, Option<String>>(0))
                .optional()?
                .flatten())
        })
        .await
    }

    /// Replaces a dynamic key's webhook secret; false when there is no such key.
    pub async fn set_webhook_secret(&self, id: String, secret: String) -> Result<bool, StoreError> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE keys SET webhook_secret = ?2 WHERE id = ?1",
                params![id, secret],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Replaces a key's settings; false when there is no such key.
    pub async fn update_key(&self, spec: KeySpec) -> Result<bool, StoreError> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE keys SET spec = ?2 WHERE id = ?1",
                params![spec.id, serde_json::to_string(&spec)?],
            )?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn delete_key(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |c| Ok(c.execute("DELETE FROM keys WHERE id = ?1", [id])? > 0))
            .await
    }

    pub async fn key(&self, id: String) -> Result<Option<StoredKey>, StoreError> {
        self.call(move |c| {
            let sql = "SELECT spec, digest, created_at FROM keys WHERE id = ?1";
            c.query_row(sql, [id], stored_key).optional()?.transpose()
        })
        .await
    }

    pub async fn key_by_digest(&self, digest: String) -> Result<Option<StoredKey>, StoreError> {
        self.call(move |c| {
            let sql = "SELECT spec, digest, created_at FROM keys WHERE digest = ?1";
            c.query_row(sql, [digest], stored_key)
                .optional()?
                .transpose()
        })
        .await
    }

    pub async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT spec, digest, created_at FROM keys ORDER BY id")?;
            let rows = stmt.query_map([], stored_key)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    // === teams ===

    /// Inserts or replaces a team.
    pub async fn put_team(&self, spec: TeamSpec) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO teams (id, spec, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec",
                params![spec.id, serde_json::to_string(&spec)?, now_secs()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn delete_team(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |c| Ok(c.execute("DELETE FROM teams WHERE id = ?1", [id])? > 0))
            .await
    }

    // === ledger ===

    /// Queues one ledger row; the writer thread inserts it (see the module docs).
    pub async fn record(&self, row: Row) {
        self.write_detached(Box::new(move |tx| insert_row(tx, &row)))
            .await;
    }

    /// Queues a write now, from code that cannot wait (a guard's `drop`): it is ahead of any
    /// later [`flush`](Self::flush). Only when the queue is full does a task wait for room.
    pub fn write_now(&self, op: WriteFn) {
        let msg = writer::Msg::Write { op, done: None };
        match self.writes.try_send(msg) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(msg)) => {
                let writes = self.writes.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            if writes.send(msg).await.is_err() {
                                tracing::error!(
                                    "the database writer has stopped; a write was not queued"
                                );
                            }
                        });
                    }
                    Err(_) => tracing::error!("a write could not be queued: no runtime"),
                }
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the database writer has stopped; a write was not queued");
            }
        }
    }

    /// Waits until every write queued before this call is committed.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.queue(writer::Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    // === the façade's typed calls (see `Store`) ===

    pub async fn write_ops(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.write(Box::new(move |tx| apply_all(tx, &ops))).await
    }

    /// The writer retries until the disk takes a write: the same as [`Lite::write_ops`].
    pub async fn write_durable(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.write_ops(ops).await
    }

    pub fn write_later(&self, ops: Vec<Op>) {
        self.write_now(Box::new(move |tx| apply_all(tx, &ops)));
    }

    pub async fn teams(&self) -> Result<Vec<TeamSpec>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT spec FROM teams ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| Ok(serde_json::from_str(&r?)?)).collect()
        })
        .await
    }

    pub async fn spent(&self, month: &str) -> Result<(SpendBy, SpendBy), StoreError> {
        let month = month.to_owned();
        self.call(move |c| spent(c, &month)).await
    }

    pub async fn create_job(&self, job: NewJob) -> Result<Created, StoreError> {
        self.call(move |c| jobs::create(c, &job)).await
    }

    pub async fn job(&self, id: String) -> Result<Option<JobRecord>, StoreError> {
        self.call(move |c| jobs::load(c, &id)).await
    }

    pub async fn job_by_idempotency_key(
        &self,
        key_id: String,
        idem: String,
    ) -> Result<Option<(JobRecord, String, i64)>, StoreError> {
        self.call(move |c| jobs::by_idempotency_key(c, &key_id, &idem))
            .await
    }

    pub async fn find_retry(
        &self,
        key_id: String,
        digest: String,
        since_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.call(move |c| jobs::find_retry(c, &key_id, &digest, since_ms))
            .await
    }

    pub async fn jobs(
        &self,
        key_id: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.call(move |c| jobs::list(c, key_id.as_deref(), limit, after.as_deref()))
            .await
    }

    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.call(|c| jobs::unfinished(c)).await
    }

    pub async fn due_webhooks(&self, now_ms: i64, limit: u32) -> Result<Vec<Webhook>, StoreError> {
        self.call(move |c| jobs::due_webhooks(c, now_ms, limit))
            .await
    }

    pub async fn webhooks_of(&self, job_id: String) -> Result<Vec<Webhook>, StoreError> {
        self.call(move |c| jobs::webhooks_of(c, &job_id)).await
    }

    pub async fn purge(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.call(move |c| jobs::purge(c, before_ms)).await
    }

    /// Aggregates the ledger by the query's grouping columns.
    pub async fn usage(&self, q: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.flush().await;
        self.call(move |c| {
            let cols: Vec<&str> = q.group_by.iter().map(|g| g.column()).collect();
            let select = if cols.is_empty() {
                String::new()
            } else {
                format!("{}, ", cols.join(", "))
            };
            let group = if cols.is_empty() {
                String::new()
            } else {
                format!("GROUP BY {0} ORDER BY {0}", cols.join(", "))
            };
            let sql = format!(
                "SELECT {select} COUNT(*), SUM(status < 400), SUM(CASE WHEN status < 400 THEN n ELSE 0 END),
                        COALESCE(SUM(cost_micros), 0), COALESCE(SUM(input_tokens), 0),
                        COALESCE(SUM(output_tokens), 0)
                 FROM ledger
                 WHERE (?1 IS NULL OR day >= ?1) AND (?2 IS NULL OR day <= ?2)
                   AND (?3 IS NULL OR key_id = ?3) AND (?4 IS NULL OR team = ?4)
                   AND (?5 IS NULL OR model = ?5)
                 {group}"
            );
            let mut stmt = c.prepare(&sql)?;
            let k = cols.len();
            let rows = stmt.query_map(params![q.from, q.to, q.key, q.team, q.model], |r| {
                let mut groups = Vec::with_capacity(k);
                for i in 0..k {
                    groups.push(r.get::<_, Option<String>>(i)?.unwrap_or_default());
                }
                Ok(UsageRow {
                    groups,
                    requests: r.get::<_, i64>(k)?.max(0) as u64,
                    succeeded: r.get::<_, Option<i64>>(k + 1)?.unwrap_or(0).max(0) as u64,
                    images: r.get::<_, Option<i64>>(k + 2)?.unwrap_or(0).max(0) as u64,
                    cost_micros: r.get::<_, i64>(k + 3)?.max(0) as u64,
                    input_tokens: r.get::<_, i64>(k + 4)?.max(0) as u64,
                    output_tokens: r.get::<_, i64>(k + 5)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// Spend by key and by team, for `month` (`YYYY-MM`) and all-time.
fn spent(c: &Connection, month: &str) -> Result<(SpendBy, SpendBy), StoreError> {
    let by = |column: &str| -> Result<SpendBy, StoreError> {
        let sql = format!(
            "SELECT {column}, SUM(CASE WHEN month = ?1 THEN cost_micros ELSE 0 END),
                    SUM(cost_micros)
             FROM ledger WHERE {column} IS NOT NULL GROUP BY {column}"
        );
        let mut stmt = c.prepare(&sql)?;
        let rows = stmt.query_map([month], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Spent {
                    month: r.get::<_, i64>(1)?.max(0) as u64,
                    total: r.get::<_, i64>(2)?.max(0) as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    Ok((by("key_id")?, by("team")?))
}

fn stored_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredKey, StoreError>> {
    let spec: String = r.get(0)?;
    let digest: String = r.get(1)?;
    let created_at: i64 = r.get(2)?;
    Ok(serde_json::from_str(&spec)
        .map(|spec| StoredKey {
            spec,
            digest,
            created_at,
        })
        .map_err(StoreError::from))
}

#[cfg(test)]
mod tests;
