//! The embedded database (SQLite): dynamic client keys, dynamic teams and the spend ledger.
//!
//! It lives in `data.dir/imagegate.sqlite3`, created and migrated at startup (`PRAGMA
//! user_version` counts the migrations applied). Without `data.dir` it is an in-memory database,
//! so the ledger and the admin API still work, but nothing survives a restart.
//!
//! Every call runs on the blocking pool ([`Store::call`]) behind one connection. Ledger rows take
//! another way: [`Store::record`] queues the row and returns at once, and a writer thread inserts
//! what has queued up in one transaction, so no request waits on the database.
//! [`Store::flush`] waits until every row queued before it is written (usage reports, shutdown).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension as _, Transaction};

use crate::config::{KeySpec, TeamSpec};
use crate::error::ApiError;
use crate::ledger::{Row, UsageQuery, UsageRow};
pub use jobs::{CallRecord, Created, JobRecord, JobState, NewJob};
pub use lock::DataLock;
pub use writer::WriteFn;

pub mod jobs;
mod lock;
mod writer;

/// The database file inside `data.dir`.
pub const DB_FILE: &str = "imagegate.sqlite3";

/// Migrations, applied in order; the index + 1 is the `user_version` after it.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    month TEXT NOT NULL,
    day TEXT NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    team TEXT,
    model TEXT NOT NULL,
    served_model TEXT,
    n INTEGER NOT NULL,
    size TEXT,
    quality TEXT NOT NULL,
    cost_micros INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_code TEXT,
    latency_ms INTEGER NOT NULL,
    task_ids TEXT NOT NULL
);
CREATE INDEX ledger_key ON ledger (key_id, month);
CREATE INDEX ledger_team ON ledger (team, month);
CREATE INDEX ledger_day ON ledger (day);
",
    r"
ALTER TABLE ledger ADD COLUMN job_id TEXT;
ALTER TABLE ledger ADD COLUMN adjusts TEXT;
CREATE UNIQUE INDEX ledger_job ON ledger (job_id) WHERE job_id IS NOT NULL;
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    team TEXT,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    public_model TEXT NOT NULL,
    model TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    price_micros INTEGER NOT NULL DEFAULT 0,
    per_call INTEGER NOT NULL DEFAULT 0,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER,
    spec TEXT NOT NULL,
    images TEXT,
    status INTEGER,
    error TEXT,
    request_id TEXT NOT NULL,
    callback_url TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    completed_ms INTEGER
);
CREATE INDEX jobs_owner ON jobs (key_id, created_ms);
CREATE INDEX jobs_digest ON jobs (key_id, digest, created_ms);
CREATE TABLE job_calls (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    upstream_key TEXT,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER
);
CREATE INDEX webhooks_due ON webhooks (next_ms) WHERE state = 'pending';
CREATE INDEX webhooks_job ON webhooks (job_id);
ALTER TABLE keys ADD COLUMN webhook_secret TEXT;
CREATE TABLE idempotency (
    key_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    job_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
",
    r"
ALTER TABLE ledger ADD COLUMN input_tokens INTEGER;
ALTER TABLE ledger ADD COLUMN output_tokens INTEGER;
ALTER TABLE ledger ADD COLUMN call_id TEXT;
CREATE UNIQUE INDEX ledger_call ON ledger (call_id) WHERE call_id IS NOT NULL;
",
];

/// A database failure. Clients see a generic 500; the detail goes to the access log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database: the blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("database: lock poisoned")]
    Poisoned,
    #[error("database: {0}")]
    Refused(String),
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

#[derive(Clone)]
pub struct Store {
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

impl Store {
    /// Opens (creating the directory and file) and migrates the database.
    pub fn open(dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::open_with(dir, writer::Wal::default())
    }

    /// [`Store::open`] with the WAL's restart point and size limit given (tests make them small).
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
        migrate(&mut conn)?;
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
            let checkpointer = Connection::open(path)?;
            let asks = restart.clone();
            std::thread::Builder::new()
                .name("imagegate-checkpoint".to_owned())
                .spawn(move || writer::checkpoints(&checkpointer, &alive, &asks))?;
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

    pub fn teams_blocking(&self) -> Result<Vec<TeamSpec>, StoreError> {
        let c = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = c.prepare("SELECT spec FROM teams ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| Ok(serde_json::from_str(&r?)?)).collect()
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

    /// Spend by key and by team, for `month` (`YYYY-MM`) and all-time. Read at startup.
    pub fn spent_blocking(&self, month: &str) -> Result<(SpendBy, SpendBy), StoreError> {
        let c = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
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

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        anyhow::bail!(
            "the database schema (version {version}) is newer than this imagegate understands"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The client sees a generic 500. The database error itself is logged here, once, because the
/// access log only sees the client-facing message.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "database call failed");
        ApiError::internal("The gateway could not read or write its database.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::UsageQuery;
    use crate::model::Usd;

    pub(super) fn row(i: usize) -> Row {
        Row {
            ts_ms: 0,
            day: "2026-11-21".to_owned(),
            request_id: format!("r{i}"),
            key_id: "k".to_owned(),
            team: None,
            model: "auto".to_owned(),
            served_model: Some("sparkpix".to_owned()),
            n: 1,
            size: None,
            quality: "auto".to_owned(),
            cost: Usd(10_000),
            status: 200,
            error_code: None,
            latency_ms: 1,
            task_ids: String::new(),
            job_id: None,
            adjusts: None,
            tokens: None,
            call_id: None,
        }
    }

    #[tokio::test]
    async fn recorded_rows_are_written_in_batches_and_flush_waits_for_them() {
        let store = Store::open(None).unwrap();
        for i in 0..1_300 {
            store.record(row(i)).await;
        }
        store.flush().await;
        let rows = store.usage(UsageQuery::default()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].cost_micros), (1_300, 13_000_000));
    }

    /// Writes that never pause: a passive checkpoint never catches up with them, so the WAL
    /// is restarted by the writer once it passes its limit, and its file stays near that size
    /// instead of growing with every write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wal_under_steady_writes_is_restarted_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let wal = writer::Wal {
            restart_frames: 64,
            size_limit: 256 * 1024,
        };
        let store = Store::open_with(Some(dir.path()), wal).unwrap();
        let restarts = || {
            store
                .restart
                .done
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut i = 0;
        // Bounded: without restarts this would end by the count, and fail below.
        while restarts() < 3 && i < 2_000_000 {
            store.record(row(i)).await;
            i += 1;
        }
        assert!(restarts() >= 3, "no WAL restart after {i} rows");
        store.flush().await;
        let wal_file = dir.path().join(format!("{DB_FILE}-wal"));
        let len = std::fs::metadata(wal_file).unwrap().len();
        // The limit, plus what one checkpoint period of writes adds at most (generous).
        assert!(len < 64 << 20, "the WAL is {len} bytes after {i} rows");
    }

    /// The disk falls behind (here: the writer cannot get the connection): the queue fills, the
    /// writes past it wait instead of growing it, and once the writer is back nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_write_queue_makes_writers_wait_and_drops_nothing() {
        let store = Store::open(None).unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (holding, held) = std::sync::mpsc::channel::<()>();
        let conn = store.conn.clone();
        let holder = std::thread::spawn(move || {
            let _guard = conn.lock().unwrap();
            holding.send(()).unwrap();
            released.recv().unwrap();
        });
        held.recv().unwrap();
        let total = writer::QUEUE + 2_000;
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let (store, queued) = (store.clone(), queued.clone());
            tasks.spawn(async move {
                store.record(row(i)).await;
                queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        while store.writes.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        // Full: at most the queue and the group the writer holds are in; the rest wait.
        let in_queue = queued.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            in_queue <= writer::QUEUE + writer::GROUP,
            "{in_queue} of {total} queued"
        );
        release.send(()).unwrap();
        holder.join().unwrap();
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        store.flush().await;
        let rows = store.usage(UsageQuery::default()).await.unwrap();
        assert_eq!(rows[0].requests, total as u64);
    }
}

#[cfg(test)]
mod job_tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::jobs::{self, Finish, NewJob};
    use super::*;
    use crate::model::Usd;

    fn job(id: &str, callback: Option<&str>) -> NewJob {
        NewJob {
            id: id.to_owned(),
            key_id: "k".to_owned(),
            team: None,
            digest: "d".to_owned(),
            public_model: "auto".to_owned(),
            spec: serde_json::json!({}),
            request_id: "r".to_owned(),
            idempotency: None,
            callback_url: callback.map(str::to_owned),
        }
    }

    fn finish(id: &str, state: JobState) -> Finish {
        let mut row = super::tests::row(0);
        row.job_id = Some(id.to_owned());
        row.cost = Usd::ZERO;
        Finish {
            state,
            status: 200,
            cost_micros: 0,
            images: None,
            error: None,
            row,
        }
    }

    #[tokio::test]
    async fn a_write_that_fails_is_tried_again_and_a_refused_one_is_reported() {
        let store = Store::open(None).unwrap();
        let tries = Arc::new(AtomicU32::new(0));
        let seen = tries.clone();
        // Fails once as the disk would (not a constraint), then succeeds: never dropped.
        store
            .write(Box::new(move |tx| {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                        None,
                    )));
                }
                jobs::insert(tx, &job("j1", None))
            }))
            .await
            .unwrap();
        assert!(tries.load(Ordering::SeqCst) >= 2);
        // The same job again breaks the primary key: refused, and the caller is told.
        let again = store.write(Box::new(|tx| jobs::insert(tx, &job("j1", None))));
        assert!(again.await.is_err());
        // One ledger row per job: a second end is refused.
        let end = |tx: &Transaction<'_>| jobs::finish(tx, "j1", &finish("j1", JobState::Completed));
        store.write(Box::new(end)).await.unwrap();
        assert!(store.write(Box::new(end)).await.is_err());
    }

    #[tokio::test]
    async fn purge_forgets_old_finished_jobs_but_not_unknown_ones_or_pending_webhooks() {
        let store = Store::open(None).unwrap();
        for (id, callback, state) in [
            ("done", None, JobState::Completed),
            ("hooked", Some("https://example.com/h"), JobState::Completed),
            ("unknown", None, JobState::Unknown),
        ] {
            let new = job(id, callback);
            let end = finish(id, state);
            store
                .write(Box::new(move |tx| {
                    jobs::insert(tx, &new)?;
                    jobs::finish(tx, &new.id, &end)
                }))
                .await
                .unwrap();
        }
        let purged = store
            .call(|c| jobs::purge(c, jobs::now_ms() + 1))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        let left = store.call(|c| jobs::list(c, None, 10, None)).await.unwrap();
        let mut ids: Vec<String> = left.into_iter().map(|j| j.id).collect();
        ids.sort();
        assert_eq!(ids, ["hooked", "unknown"]);
    }
}
