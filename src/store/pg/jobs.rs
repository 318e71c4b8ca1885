//! The job tables in PostgreSQL: the same rows and rules as SQLite's (see
//! [`crate::store::jobs`]), plus each job's claim — `owner`, `lease_epoch`, `lease_until` — so
//! several replicas can share them. A write made under a claim ([`Epoch`]) lands only while the
//! job's epoch is still that one.

use serde_json::Value;
use sqlx_core::query::query;
use sqlx_core::row::Row as _;
use sqlx_postgres::{PgConnection, PgPool, PgRow};

use super::{complete_text_row, i, insert_row, u, Claimant};
use crate::model::JsonText;
use crate::store::jobs::{
    now_ms, CallRecord, Created, Finish, IdemKey, JobRecord, JobState, NewJob, Webhook,
};
use crate::store::{Epoch, Op, StoreError};

/// Where a job's end is notified (`NOTIFY`, the job id as payload).
pub const ENDED_CHANNEL: &str = "imagegate_job_ended";

/// The epoch of a job's first claim, by the replica that created it.
pub const FIRST_EPOCH: i64 = 1;

/// Applies one write on `c` (inside the caller's transaction).
pub(crate) async fn apply(c: &mut PgConnection, op: &Op, me: &Claimant) -> Result<(), StoreError> {
    match op {
        Op::InsertJob(job) => insert(c, job, me).await,
        Op::Attempt {
            job,
            epoch,
            attempt,
            model,
            price_micros,
            per_call,
            reserved_micros,
        } => {
            let done = query(
                "UPDATE jobs SET attempt = $2, model = $3, price_micros = $4, per_call = $5,
                    reserved_micros = $6, updated_ms = $7
                 WHERE id = $1 AND ($8::BIGINT IS NULL OR lease_epoch = $8)",
            )
            .bind(job)
            .bind(i64::from(*attempt))
            .bind(model)
            .bind(i(*price_micros))
            .bind(per_call)
            .bind(i(*reserved_micros))
            .bind(now_ms())
            .bind(epoch)
            .execute(&mut *c)
            .await?;
            fenced(job, *epoch, done.rows_affected())
        }
        Op::Submitting {
            job,
            epoch,
            seq,
            attempt,
            model,
        } => {
            let done = query(
                "UPDATE jobs SET state = CASE WHEN state = 'queued' THEN 'submitting' ELSE state END,
                    updated_ms = $2
                 WHERE id = $1 AND ($3::BIGINT IS NULL OR lease_epoch = $3)",
            )
            .bind(job)
            .bind(now_ms())
            .bind(epoch)
            .execute(&mut *c)
            .await?;
            fenced(job, *epoch, done.rows_affected())?;
            query(
                "INSERT INTO job_calls (job_id, seq, attempt, model, state)
                 VALUES ($1, $2, $3, $4, 'submitting') ON CONFLICT (job_id, seq) DO NOTHING",
            )
            .bind(job)
            .bind(i64::from(*seq))
            .bind(i64::from(*attempt))
            .bind(model)
            .execute(&mut *c)
            .await?;
            Ok(())
        }
        Op::CallEnded {
            job,
            epoch,
            seq,
            state,
            task_id,
            key,
        } => {
            // The task id is what lets anyone follow (and settle) the work: it is written
            // whatever the claim, since it only adds what the upstream said.
            query(
                "UPDATE job_calls SET state = $3, task_id = COALESCE($4, task_id),
                    upstream_key = COALESCE($5, upstream_key)
                 WHERE job_id = $1 AND seq = $2",
            )
            .bind(job)
            .bind(i64::from(*seq))
            .bind(state.as_str())
            .bind(task_id)
            .bind(key)
            .execute(&mut *c)
            .await?;
            if *state == JobState::InProgress {
                query(
                    "UPDATE jobs SET state = 'in_progress', updated_ms = $2
                     WHERE id = $1 AND state IN ('queued', 'submitting')
                       AND ($3::BIGINT IS NULL OR lease_epoch = $3)",
                )
                .bind(job)
                .bind(now_ms())
                .bind(epoch)
                .execute(&mut *c)
                .await?;
            }
            Ok(())
        }
        Op::Finish { job, epoch, finish } => finish_job(c, job, *epoch, finish).await,
        Op::Ledger(row) => insert_row(c, row).await,
        Op::ReleaseHold(hold) => super::money::release(c, hold).await,
        Op::CompleteText(row) => complete_text_row(c, row).await,
        Op::WebhookAttempted {
            id,
            status,
            error,
            delivered,
            next_ms,
        } => {
            let state = match (delivered, next_ms) {
                (true, _) => "delivered",
                (false, Some(_)) => "pending",
                (false, None) => "failed",
            };
            query(
                "UPDATE webhooks SET attempts = attempts + 1, state = $2, last_status = $3,
                    last_error = $4, next_ms = COALESCE($5, next_ms),
                    delivered_ms = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_ms END
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(status.map(i32::from))
            .bind(error)
            .bind(next_ms)
            .bind(now_ms())
            .execute(&mut *c)
            .await?;
            Ok(())
        }
        Op::Resolve { job, compensation } => {
            let cost: Option<i64> = compensation.as_ref().map(|_| 0);
            let done = query(
                "UPDATE jobs SET state = 'failed', cost_micros = COALESCE($2, cost_micros),
                    updated_ms = $3
                 WHERE id = $1 AND state = 'unknown'",
            )
            .bind(job)
            .bind(cost)
            .bind(now_ms())
            .execute(&mut *c)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Refused(format!(
                    "job {job} is not in state unknown"
                )));
            }
            if let Some(row) = compensation {
                insert_row(c, row).await?;
            }
            Ok(())
        }
    }
}

/// A claimed write that changed nothing: the claim was lost (another replica took the job).
fn fenced(job: &str, epoch: Epoch, changed: u64) -> Result<(), StoreError> {
    match epoch {
        Some(e) if changed == 0 => Err(StoreError::Refused(format!(
            "job {job}: the claim of epoch {e} was lost to another replica"
        ))),
        _ => Ok(()),
    }
}

/// A new job, claimed by this replica at epoch [`FIRST_EPOCH`].
async fn insert(c: &mut PgConnection, job: &NewJob, me: &Claimant) -> Result<(), StoreError> {
    let now = now_ms();
    query(
        "INSERT INTO jobs (id, key_id, team, digest, state, public_model, spec, request_id,
            created_ms, updated_ms, callback_url, owner, lease_epoch, lease_until)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $8, $9, $10, $11,
            now() + $12 * interval '1 millisecond')",
    )
    .bind(&job.id)
    .bind(&job.key_id)
    .bind(&job.team)
    .bind(&job.digest)
    .bind(&job.public_model)
    .bind(&job.spec)
    .bind(&job.request_id)
    .bind(now)
    .bind(&job.callback_url)
    .bind(&me.owner)
    .bind(FIRST_EPOCH)
    .bind(me.lease_ms)
    .execute(c)
    .await?;
    Ok(())
}

/// The terminal state and the job's ledger row, together (see SQLite's `finish`).
async fn finish_job(
    c: &mut PgConnection,
    job: &str,
    epoch: Epoch,
    f: &Finish,
) -> Result<(), StoreError> {
    let now = now_ms();
    let done = query(
        "UPDATE jobs SET state = $2, status = $3, cost_micros = $4, images = $5, error = $6,
            updated_ms = $7, completed_ms = $7, lease_until = NULL
         WHERE id = $1 AND state IN ('queued', 'submitting', 'in_progress')
           AND ($8::BIGINT IS NULL OR lease_epoch = $8)",
    )
    .bind(job)
    .bind(f.state.as_str())
    .bind(i32::from(f.status))
    .bind(i(f.cost_micros))
    .bind(f.images.as_ref().map(JsonText::to_text))
    .bind(f.error.as_ref().map(Value::to_string))
    .bind(now)
    .bind(epoch)
    .execute(&mut *c)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Refused(format!(
            "job {job} is already finished (or its claim was lost)"
        )));
    }
    // Replicas waiting on the job hear of its end when this transaction commits.
    query("SELECT pg_notify($1, $2)")
        .bind(ENDED_CHANNEL)
        .bind(job)
        .execute(&mut *c)
        .await?;
    query(
        "INSERT INTO webhooks (id, job_id, key_id, url, next_ms, created_ms)
         SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), id, key_id, callback_url, $2, $2
         FROM jobs WHERE id = $1 AND callback_url IS NOT NULL",
    )
    .bind(job)
    .bind(now)
    .execute(&mut *c)
    .await?;
    insert_row(c, &f.row).await
}

/// Creates `job`, deciding by the `Idempotency-Key` record's primary key (see SQLite's
/// `create`): of two replicas inserting the same key at once, one wins and the other joins.
pub async fn create(pool: &PgPool, job: &NewJob, me: &Claimant) -> Result<Created, StoreError> {
    let mut tx = pool.begin().await?;
    let now = now_ms();
    if let Some(IdemKey {
        key: idem,
        expires_ms: expires,
        after_end_ms,
    }) = &job.idempotency
    {
        let inserted = query(
            "INSERT INTO idempotency (key_id, idem_key, digest, job_id, expires_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&job.key_id)
        .bind(idem)
        .bind(&job.digest)
        .bind(&job.id)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Locked: a concurrent request moving the record to a new job waits for this one.
            let r = query(
                "SELECT job_id, digest, expires_ms FROM idempotency
                 WHERE key_id = $1 AND idem_key = $2 FOR UPDATE",
            )
            .bind(&job.key_id)
            .bind(idem)
            .fetch_one(&mut *tx)
            .await?;
            let (old_job, old_digest, old_expires): (String, String, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let old = load(&mut tx, &old_job).await?;
            let live = old
                .as_ref()
                .is_some_and(|o| o.live_for_key(old_expires, *after_end_ms, now));
            if live {
                return Ok(Created::Existing {
                    job_id: old_job,
                    digest: old_digest,
                });
            }
            query(
                "UPDATE idempotency SET digest = $3, job_id = $4, expires_ms = $5
                 WHERE key_id = $1 AND idem_key = $2",
            )
            .bind(&job.key_id)
            .bind(idem)
            .bind(&job.digest)
            .bind(&job.id)
            .bind(expires)
            .execute(&mut *tx)
            .await?;
        }
    }
    insert(&mut tx, job, me).await?;
    tx.commit().await?;
    Ok(Created::New)
}

const COLUMNS: &str = "id, key_id, team, digest, state, public_model, model, attempt, price_micros,
    per_call, reserved_micros, cost_micros, spec, images, status, error, request_id, created_ms,
    completed_ms";

fn record(r: &PgRow) -> Result<JobRecord, StoreError> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    Ok(JobRecord {
        id: r.try_get(0)?,
        key_id: r.try_get(1)?,
        team: r.try_get(2)?,
        digest: r.try_get(3)?,
        state: JobState::parse(&r.try_get::<String, _>(4)?),
        public_model: r.try_get(5)?,
        model: r.try_get(6)?,
        attempt: u32::try_from(r.try_get::<i32, _>(7)?).unwrap_or(0),
        price_micros: u(r.try_get(8)?),
        per_call: r.try_get(9)?,
        reserved_micros: u(r.try_get(10)?),
        cost_micros: r.try_get::<Option<i64>, _>(11)?.map(u),
        spec: json(Some(r.try_get(12)?)).unwrap_or(Value::Null),
        images: json(r.try_get(13)?),
        status: r
            .try_get::<Option<i32>, _>(14)?
            .and_then(|s| u16::try_from(s).ok()),
        error: json(r.try_get(15)?),
        request_id: r.try_get(16)?,
        created_ms: r.try_get(17)?,
        completed_ms: r.try_get(18)?,
        calls: Vec::new(),
        epoch: None,
    })
}

async fn calls(c: &mut PgConnection, job_id: &str) -> Result<Vec<CallRecord>, StoreError> {
    let rows = query(
        "SELECT seq, attempt, model, state, task_id, upstream_key FROM job_calls
         WHERE job_id = $1 ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CallRecord {
                seq: u32::try_from(r.try_get::<i32, _>(0)?).unwrap_or(0),
                attempt: u32::try_from(r.try_get::<i32, _>(1)?).unwrap_or(0),
                model: r.try_get(2)?,
                state: JobState::parse(&r.try_get::<String, _>(3)?),
                task_id: r.try_get(4)?,
                upstream_key: r.try_get(5)?,
            })
        })
        .collect()
}

/// One job with its calls.
pub async fn load(c: &mut PgConnection, id: &str) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
    let Some(r) = query(&sql).bind(id).fetch_optional(&mut *c).await? else {
        return Ok(None);
    };
    let mut job = record(&r)?;
    job.calls = calls(c, id).await?;
    Ok(Some(job))
}

pub async fn by_idempotency_key(
    c: &mut PgConnection,
    key_id: &str,
    idem: &str,
) -> Result<Option<(JobRecord, String, i64)>, StoreError> {
    let row = query(
        "SELECT job_id, digest, expires_ms FROM idempotency WHERE key_id = $1 AND idem_key = $2",
    )
    .bind(key_id)
    .bind(idem)
    .fetch_optional(&mut *c)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let (job_id, digest, expires): (String, String, i64) =
        (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
    Ok(load(c, &job_id).await?.map(|j| (j, digest, expires)))
}

pub async fn list(
    pool: &PgPool,
    key_id: Option<String>,
    limit: u32,
    after: Option<String>,
) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs
         WHERE ($1::TEXT IS NULL OR key_id = $1)
           AND ($2::TEXT IS NULL OR (created_ms, id) < (SELECT created_ms, id FROM jobs WHERE id = $2))
         ORDER BY created_ms DESC, id DESC LIMIT $3"
    );
    let rows = query(&sql)
        .bind(key_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(record).collect()
}

pub async fn find_retry(
    pool: &PgPool,
    key_id: &str,
    digest: &str,
    since_ms: i64,
) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE key_id = $1 AND digest = $2 AND created_ms >= $3
         ORDER BY created_ms DESC LIMIT 5"
    );
    let rows = query(&sql)
        .bind(key_id)
        .bind(digest)
        .bind(since_ms)
        .fetch_all(pool)
        .await?;
    for r in &rows {
        let job = record(r)?;
        if job.joinable() {
            return Ok(Some(job));
        }
    }
    Ok(None)
}

/// Every unfinished job.
pub async fn unfinished(c: &mut PgConnection) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'submitting', 'in_progress')
         ORDER BY created_ms"
    );
    let rows = query(&sql).fetch_all(&mut *c).await?;
    let mut jobs: Vec<JobRecord> = rows.iter().map(record).collect::<Result<_, _>>()?;
    for job in &mut jobs {
        job.calls = calls(c, &job.id).await?;
    }
    Ok(jobs)
}

const WEBHOOK_COLUMNS: &str =
    "id, job_id, key_id, url, state, attempts, last_status, last_error, created_ms, delivered_ms";

fn webhook(r: &PgRow) -> Result<Webhook, StoreError> {
    Ok(Webhook {
        id: r.try_get(0)?,
        job_id: r.try_get(1)?,
        key_id: r.try_get(2)?,
        url: r.try_get(3)?,
        state: r.try_get(4)?,
        attempts: u32::try_from(r.try_get::<i32, _>(5)?).unwrap_or(0),
        last_status: r
            .try_get::<Option<i32>, _>(6)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: r.try_get(7)?,
        created_ms: r.try_get(8)?,
        delivered_ms: r.try_get(9)?,
    })
}

/// Deliveries due now, claimed for this replica: their next attempt moves [`DELIVERY_CLAIM_MS`]
/// ahead in the same statement (`FOR UPDATE SKIP LOCKED`), so two replicas polling the outbox
/// never send the same delivery at once; one that dies mid-delivery leaves it due again then.
pub async fn due_webhooks(pool: &PgPool, now: i64, limit: u32) -> Result<Vec<Webhook>, StoreError> {
    let sql = format!(
        "UPDATE webhooks SET next_ms = $1 + $3 WHERE id IN (
            SELECT id FROM webhooks WHERE state = 'pending' AND next_ms <= $1
            ORDER BY next_ms FOR UPDATE SKIP LOCKED LIMIT $2)
         RETURNING {WEBHOOK_COLUMNS}"
    );
    let rows = query(&sql)
        .bind(now)
        .bind(i64::from(limit))
        .bind(DELIVERY_CLAIM_MS)
        .fetch_all(pool)
        .await?;
    rows.iter().map(webhook).collect()
}

/// How long a replica holds a delivery it is sending (longer than a delivery's timeout).
pub const DELIVERY_CLAIM_MS: i64 = 120_000;

pub async fn webhooks_of(pool: &PgPool, job_id: &str) -> Result<Vec<Webhook>, StoreError> {
    let sql =
        format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE job_id = $1 ORDER BY created_ms");
    let rows = query(&sql).bind(job_id).fetch_all(pool).await?;
    rows.iter().map(webhook).collect()
}

/// Forgets finished jobs (see SQLite's `purge`).
pub async fn purge(pool: &PgPool, before_ms: i64) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await?;
    query(
        "DELETE FROM idempotency WHERE expires_ms < $1
           AND job_id NOT IN (SELECT id FROM jobs WHERE state IN ('queued', 'submitting', 'in_progress'))",
    )
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    let old = "SELECT id FROM jobs WHERE completed_ms < $1 AND state IN ('completed', 'failed')
        AND id NOT IN (SELECT job_id FROM webhooks WHERE state = 'pending')";
    for table in ["job_calls", "webhooks"] {
        query(&format!("DELETE FROM {table} WHERE job_id IN ({old})"))
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
    }
    let n = query(&format!("DELETE FROM jobs WHERE id IN ({old})"))
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(usize::try_from(n.rows_affected()).unwrap_or(usize::MAX))
}

/// Moves this replica's claims on the jobs it works on forward by a lease (from the database's
/// clock). A claim another replica took (after it lapsed) is not this replica's any more and is
/// left alone.
pub async fn renew(pool: &PgPool, me: &Claimant) -> Result<u64, StoreError> {
    let done = query(
        "UPDATE jobs SET lease_until = now() + $2 * interval '1 millisecond'
         WHERE owner = $1 AND state IN ('queued', 'submitting', 'in_progress')",
    )
    .bind(&me.owner)
    .bind(me.lease_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Claims up to `limit` unfinished jobs whose claim lapsed (their replica died or stalled): in
/// one short transaction, each gets this replica as its owner and its epoch moves on, so the old
/// owner's later writes are refused. No row lock is held after it returns.
pub async fn claim_lapsed(
    pool: &PgPool,
    me: &Claimant,
    limit: u32,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut tx = pool.begin().await?;
    let claimed = query(
        "UPDATE jobs SET owner = $1, lease_epoch = lease_epoch + 1,
            lease_until = now() + $2 * interval '1 millisecond'
         WHERE id IN (
            SELECT id FROM jobs
            WHERE state IN ('queued', 'submitting', 'in_progress')
              AND (lease_until IS NULL OR lease_until < now())
            ORDER BY created_ms
            FOR UPDATE SKIP LOCKED
            LIMIT $3)
         RETURNING id, lease_epoch",
    )
    .bind(&me.owner)
    .bind(me.lease_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut c = pool.acquire().await?;
    let mut jobs = Vec::with_capacity(claimed.len());
    for r in &claimed {
        let (id, epoch): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        if let Some(mut job) = load(&mut c, &id).await? {
            job.epoch = Some(epoch);
            jobs.push(job);
        }
    }
    Ok(jobs)
}
