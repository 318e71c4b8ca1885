//! The shared database (PostgreSQL, `[data] url`): what several replicas of the gateway share —
//! dynamic keys, teams, the ledger, jobs, `Idempotency-Key` records and the webhook outbox.
//!
//! - **Pool**: at most `[data.pool] max_connections` per replica; a connection is waited for at
//!   most `acquire_timeout`, a statement runs at most `statement_timeout`. A database that cannot
//!   be reached makes requests fail with 503 `database_unavailable` ([`is_unavailable`]) before
//!   anything is sent upstream, never a hang.
//! - **Migrations**: versioned ([`MIGRATIONS`]), applied at startup by `sqlx`'s migrator under
//!   its advisory lock, so replicas starting together apply each one once.
//! - **Writes**: [`Pg::write_ops`] runs one transaction at once (before an upstream call: one
//!   try); what must land whatever happens goes through [`writer`], which groups queued writes
//!   into one transaction and retries them until the database takes them.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx_core::migrate::Migrator;
use sqlx_core::query::query;
use sqlx_core::row::Row as _;
use sqlx_postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};

use super::jobs::{Created, JobRecord, NewJob, Webhook};
use super::{now_secs, Op, SpendBy, Spent, StoreError, StoredKey};
use crate::config::{KeySpec, PoolConfig, TeamSpec};
use crate::ledger::{Row, UsageQuery, UsageRow};

pub mod jobs;
pub mod money;
mod schema;
mod writer;

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct Pg {
    pool: PgPool,
    writes: tokio::sync::mpsc::Sender<writer::Msg>,
    me: Claimant,
    /// Jobs ended by any replica, as the database notifies them (see [`Pg::ended`]).
    ended: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("owner", &self.me.owner).finish()
    }
}

/// This replica, as the owner of the jobs it claims.
#[derive(Debug, Clone)]
pub struct Claimant {
    /// Unique per process: host name, pid and a random part.
    pub owner: String,
    pub lease_ms: i64,
}

/// Whether `e` means the database could not be reached or did not answer in time.
pub fn is_unavailable(e: &sqlx_core::Error) -> bool {
    use sqlx_core::Error as E;
    match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
        // 08: connection exception; 57P0x: the server is shutting down or starting; 53300: too
        // many connections; 57014: the statement timed out.
        E::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "57014"
        }),
        _ => false,
    }
}

/// Whether the database refused what was asked (a constraint): trying again cannot help.
pub(crate) fn is_refusal(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(sqlx_core::Error::Database(db)) => {
            db.code().is_some_and(|c| c.starts_with("23"))
        }
        StoreError::Json(_) | StoreError::Refused(_) => true,
        _ => false,
    }
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Pg {
    /// Connects (lazily: a database that is not up yet is waited for, up to a minute, while the
    /// migrations are applied) and migrates.
    pub async fn connect(url: &str, pool: &PoolConfig, lease: Duration) -> anyhow::Result<Self> {
        let statement_ms = pool.statement_timeout.as_millis().to_string();
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("data.url: {e}"))?
            .application_name("imagegate")
            .options([("statement_timeout", statement_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections.max(2))
            .acquire_timeout(pool.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(options);
        let started = std::time::Instant::now();
        let mut migrator = Migrator::new(schema::Embedded)
            .await
            .map_err(anyhow::Error::msg)?;
        migrator.set_locking(true);
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(sqlx_core::migrate::MigrateError::Execute(e))
                    if is_unavailable(&e) && started.elapsed() < Duration::from_secs(60) =>
                {
                    tracing::warn!(error = %e, "PostgreSQL is not reachable yet; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => anyhow::bail!("data.url: migrating the database failed: {e}"),
            }
        }
        let (writes, rx) = tokio::sync::mpsc::channel(writer::QUEUE);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let me = Claimant {
            owner: format!(
                "{host}:{}:{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "the writer lives as long as the store: it ends when every sender is gone"
        )]
        tokio::spawn(writer::run(pool.clone(), me.clone(), rx));
        let (ended, _) = tokio::sync::broadcast::channel(1024);
        #[allow(
            clippy::disallowed_methods,
            reason = "the listener lives as long as the process: nothing waits on it"
        )]
        tokio::spawn(listen_ended(pool.clone(), ended.clone()));
        Ok(Self {
            pool,
            writes,
            me,
            ended,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The ids of jobs that end from now on, on any replica. Notifications can be lost (a
    /// connection that breaks): a waiter also reads the job again now and then.
    pub fn ended(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.ended.subscribe()
    }

    /// This replica's name as the owner of jobs.
    pub fn owner(&self) -> &str {
        &self.me.owner
    }

    /// Renews this replica's claims on jobs and its budget holds (see [`jobs::renew`],
    /// [`money::renew`]).
    pub async fn renew(&self) -> Result<u64, StoreError> {
        let holds = money::renew(&self.pool, &self.me).await?;
        Ok(jobs::renew(&self.pool, &self.me).await? + holds)
    }

    /// This replica as the owner of jobs and holds.
    pub fn claimant(&self) -> &Claimant {
        &self.me
    }

    /// Claims jobs whose claim lapsed (see [`jobs::claim_lapsed`]).
    pub async fn claim_lapsed(&self, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        jobs::claim_lapsed(&self.pool, &self.me, limit).await
    }

    pub async fn ping(&self, within: Duration) -> Result<(), StoreError> {
        let ping = query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(within, ping).await {
            Ok(done) => done.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Postgres(sqlx_core::Error::PoolTimedOut)),
        }
    }

    // === writes ===

    /// One transaction, tried once.
    pub async fn write_ops(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for op in &ops {
            jobs::apply(&mut tx, op, &self.me).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn write_durable(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let msg = writer::Msg::Write {
            ops,
            done: Some(done),
        };
        if self.writes.send(msg).await.is_err() {
            return Err(StoreError::Refused("the writer has stopped".to_owned()));
        }
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Refused(e)),
            Err(_) => Err(StoreError::Refused("the writer has stopped".to_owned())),
        }
    }

    pub fn write_later(&self, ops: Vec<Op>) {
        let msg = writer::Msg::Write { ops, done: None };
        if let Err(e) = self.writes.try_send(msg) {
            let msg = match e {
                tokio::sync::mpsc::error::TrySendError::Full(m) => m,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    tracing::error!("the database writer has stopped; a write was not queued");
                    return;
                }
            };
            let writes = self.writes.clone();
            #[allow(
                clippy::disallowed_methods,
                reason = "called from a guard's drop, which cannot wait: the task only waits for room in the queue"
            )]
            tokio::spawn(async move {
                if writes.send(msg).await.is_err() {
                    tracing::error!("the database writer has stopped; a write was not queued");
                }
            });
        }
    }

    pub async fn record(&self, row: Row) {
        let msg = writer::Msg::Write {
            ops: vec![Op::Ledger(Box::new(row))],
            done: None,
        };
        if self.writes.send(msg).await.is_err() {
            tracing::error!("the database writer has stopped; a ledger row was not queued");
        }
    }

    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.writes.send(writer::Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    // === keys and teams ===

    pub async fn insert_key(
        &self,
        spec: KeySpec,
        digest: String,
        webhook_secret: String,
    ) -> Result<(), StoreError> {
        query(
            "INSERT INTO keys (id, digest, spec, created_at, webhook_secret)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&spec.id)
        .bind(digest)
        .bind(serde_json::to_string(&spec)?)
        .bind(now_secs())
        .bind(webhook_secret)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn webhook_secret(&self, id: String) -> Result<Option<String>, StoreError> {
        let row = query("SELECT webhook_secret FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<String>, _>(0)?,
            None => None,
        })
    }

    pub async fn set_webhook_secret(&self, id: String, secret: String) -> Result<bool, StoreError> {
        let done = query("UPDATE keys SET webhook_secret = $2 WHERE id = $1")
            .bind(id)
            .bind(secret)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn update_key(&self, spec: KeySpec) -> Result<bool, StoreError> {
        let done = query("UPDATE keys SET spec = $2 WHERE id = $1")
            .bind(&spec.id)
            .bind(serde_json::to_string(&spec)?)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete_key(&self, id: String) -> Result<bool, StoreError> {
        let done = query("DELETE FROM keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn key(&self, id: String) -> Result<Option<StoredKey>, StoreError> {
        query("SELECT spec, digest, created_at FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| stored_key(&r))
            .transpose()
    }

    pub async fn key_by_digest(&self, digest: String) -> Result<Option<StoredKey>, StoreError> {
        query("SELECT spec, digest, created_at FROM keys WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| stored_key(&r))
            .transpose()
    }

    pub async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        query("SELECT spec, digest, created_at FROM keys ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(stored_key)
            .collect()
    }

    pub async fn put_team(&self, spec: TeamSpec) -> Result<(), StoreError> {
        query(
            "INSERT INTO teams (id, spec, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec",
        )
        .bind(&spec.id)
        .bind(serde_json::to_string(&spec)?)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_team(&self, id: String) -> Result<bool, StoreError> {
        let done = query("DELETE FROM teams WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn teams(&self) -> Result<Vec<TeamSpec>, StoreError> {
        query("SELECT spec FROM teams ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>(0)?)?))
            .collect()
    }

    // === ledger ===

    pub async fn spent(&self, month: &str) -> Result<(SpendBy, SpendBy), StoreError> {
        let mut out = Vec::with_capacity(2);
        for column in ["key_id", "team"] {
            let sql = format!(
                "SELECT {column}, SUM(CASE WHEN month = $1 THEN cost_micros ELSE 0 END)::BIGINT,
                        SUM(cost_micros)::BIGINT
                 FROM ledger WHERE {column} IS NOT NULL GROUP BY {column}"
            );
            let rows = query(&sql).bind(month).fetch_all(&self.pool).await?;
            let by: SpendBy = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>(0)?,
                        Spent {
                            month: u(r.try_get::<Option<i64>, _>(1)?.unwrap_or(0)),
                            total: u(r.try_get::<Option<i64>, _>(2)?.unwrap_or(0)),
                        },
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
            out.push(by);
        }
        let by_team = out.pop().unwrap_or_default();
        let by_key = out.pop().unwrap_or_default();
        Ok((by_key, by_team))
    }

    pub async fn usage(&self, q: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.flush().await;
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
            "SELECT {select} COUNT(*), COUNT(*) FILTER (WHERE status < 400),
                    COALESCE(SUM(CASE WHEN status < 400 THEN n ELSE 0 END), 0)::BIGINT,
                    COALESCE(SUM(cost_micros), 0)::BIGINT, COALESCE(SUM(input_tokens), 0)::BIGINT,
                    COALESCE(SUM(output_tokens), 0)::BIGINT
             FROM ledger
             WHERE ($1::TEXT IS NULL OR day >= $1) AND ($2::TEXT IS NULL OR day <= $2)
               AND ($3::TEXT IS NULL OR key_id = $3) AND ($4::TEXT IS NULL OR team = $4)
               AND ($5::TEXT IS NULL OR model = $5)
             {group}"
        );
        let rows = query(&sql)
            .bind(q.from)
            .bind(q.to)
            .bind(q.key)
            .bind(q.team)
            .bind(q.model)
            .fetch_all(&self.pool)
            .await?;
        let k = cols.len();
        rows.iter()
            .map(|r| {
                let mut groups = Vec::with_capacity(k);
                for i in 0..k {
                    groups.push(r.try_get::<Option<String>, _>(i)?.unwrap_or_default());
                }
                Ok(UsageRow {
                    groups,
                    requests: u(r.try_get(k)?),
                    succeeded: u(r.try_get(k + 1)?),
                    images: u(r.try_get(k + 2)?),
                    cost_micros: u(r.try_get(k + 3)?),
                    input_tokens: u(r.try_get(k + 4)?),
                    output_tokens: u(r.try_get(k + 5)?),
                })
            })
            .collect()
    }

    // === jobs ===

    pub async fn create_job(&self, job: NewJob) -> Result<Created, StoreError> {
        jobs::create(&self.pool, &job, &self.me).await
    }

    pub async fn job(&self, id: String) -> Result<Option<JobRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        jobs::load(&mut c, &id).await
    }

    pub async fn job_by_idempotency_key(
        &self,
        key_id: String,
        idem: String,
    ) -> Result<Option<(JobRecord, String, i64)>, StoreError> {
        let mut c = self.pool.acquire().await?;
        jobs::by_idempotency_key(&mut c, &key_id, &idem).await
    }

    pub async fn find_retry(
        &self,
        key_id: String,
        digest: String,
        since_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        jobs::find_retry(&self.pool, &key_id, &digest, since_ms).await
    }

    pub async fn jobs(
        &self,
        key_id: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        jobs::list(&self.pool, key_id, limit, after).await
    }

    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        jobs::unfinished(&mut c).await
    }

    pub async fn due_webhooks(&self, now_ms: i64, limit: u32) -> Result<Vec<Webhook>, StoreError> {
        jobs::due_webhooks(&self.pool, now_ms, limit).await
    }

    pub async fn webhooks_of(&self, job_id: String) -> Result<Vec<Webhook>, StoreError> {
        jobs::webhooks_of(&self.pool, &job_id).await
    }

    pub async fn purge(&self, before_ms: i64) -> Result<usize, StoreError> {
        jobs::purge(&self.pool, before_ms).await
    }
}

/// `LISTEN`s for job ends and passes them on, reconnecting when the connection breaks.
async fn listen_ended(pool: PgPool, ended: tokio::sync::broadcast::Sender<std::sync::Arc<str>>) {
    loop {
        if let Ok(mut listener) = sqlx_postgres::PgListener::connect_with(&pool).await {
            if listener.listen(jobs::ENDED_CHANNEL).await.is_ok() {
                while let Ok(n) = listener.recv().await {
                    let _ = ended.send(n.payload().into());
                }
            }
        }
        if ended.receiver_count() == 0 && pool.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn stored_key(r: &PgRow) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        spec: serde_json::from_str(&r.try_get::<String, _>(0)?)?,
        digest: r.try_get(1)?,
        created_at: r.try_get(2)?,
    })
}

/// A ledger row inserted on `c`.
pub(crate) async fn insert_row(c: &mut PgConnection, row: &Row) -> Result<(), StoreError> {
    query(
        "INSERT INTO ledger (ts_ms, month, day, request_id, key_id, team, model,
            served_model, n, size, quality, cost_micros, status, error_code, latency_ms,
            task_ids, job_id, adjusts, input_tokens, output_tokens, call_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21)",
    )
    .bind(row.ts_ms)
    .bind(row.day.get(..7).unwrap_or_default())
    .bind(&row.day)
    .bind(&row.request_id)
    .bind(&row.key_id)
    .bind(&row.team)
    .bind(&row.model)
    .bind(&row.served_model)
    .bind(i32::from(row.n))
    .bind(&row.size)
    .bind(&row.quality)
    .bind(row.cost_micros())
    .bind(i32::from(row.status))
    .bind(&row.error_code)
    .bind(row.latency_ms)
    .bind(&row.task_ids)
    .bind(&row.job_id)
    .bind(&row.adjusts)
    .bind(row.tokens.map(|t| i(t.input)))
    .bind(row.tokens.map(|t| i(t.output)))
    .bind(&row.call_id)
    .execute(&mut *c)
    .await?;
    money::book(c, row).await
}

/// Completes a text call's row (written before the call) with its end.
pub(crate) async fn complete_text_row(c: &mut PgConnection, row: &Row) -> Result<(), StoreError> {
    let booked: Option<i64> = query("SELECT cost_micros FROM ledger WHERE call_id = $1 FOR UPDATE")
        .bind(&row.call_id)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    query(
        "UPDATE ledger SET status = $2, error_code = $3, cost_micros = $4, latency_ms = $5,
            input_tokens = $6, output_tokens = $7
         WHERE call_id = $1",
    )
    .bind(&row.call_id)
    .bind(i32::from(row.status))
    .bind(&row.error_code)
    .bind(row.cost_micros())
    .bind(row.latency_ms)
    .bind(row.tokens.map(|t| i(t.input)))
    .bind(row.tokens.map(|t| i(t.output)))
    .execute(&mut *c)
    .await?;
    // The row was booked at its reservation when it was written: the spend moves by the change.
    if let Some(booked) = booked {
        money::add_spend(c, row, row.cost_micros() - booked).await?;
    }
    Ok(())
}
