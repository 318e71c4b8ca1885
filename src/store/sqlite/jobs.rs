//! The job tables in SQLite: see [`crate::store::jobs`] for what a job is and how its state moves.

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension as _, Transaction, MAIN_DB};
use serde_json::Value;

use super::insert_row;
use crate::ledger::Row;
use crate::store::jobs::{
    now_ms, CallRecord, Created, Finish, IdemKey, JobRecord, JobState, NewJob, Webhook,
};
use crate::store::StoreError;

/// A job's first attempt, written with the job itself (see [`insert_submitting`]).
pub struct FirstAttempt<'a> {
    pub attempt: u32,
    pub model: &'a str,
    pub price_micros: u64,
    pub per_call: bool,
    pub reserved_micros: u64,
}

/// Writes `job` as [`insert`], [`attempt`] and [`submitting`] (create call `seq`) leave it, in
/// one insert of the job row and one of its call.
pub fn insert_submitting(
    tx: &Transaction<'_>,
    job: &NewJob,
    first: &FirstAttempt<'_>,
    seq: u32,
) -> Result<(), StoreError> {
    insert_job_row(tx, job, Some(first))?;
    insert_call(tx, &job.id, seq, first.attempt, first.model)
}

/// Writes `job` (state `queued`) in `tx`.
pub fn insert(tx: &Transaction<'_>, job: &NewJob) -> Result<(), StoreError> {
    insert_job_row(tx, job, None)
}

/// The job's row: `queued`, or `submitting` its first attempt.
fn insert_job_row(
    tx: &Transaction<'_>,
    job: &NewJob,
    first: Option<&FirstAttempt<'_>>,
) -> Result<(), StoreError> {
    let micros = |m: u64| i64::try_from(m).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT INTO jobs (id, key_id, team, digest, state, public_model, spec, request_id,
            created_ms, updated_ms, callback_url, attempt, model, price_micros, per_call,
            reserved_micros)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        job.id,
        job.key_id,
        job.team,
        job.digest,
        if first.is_some() {
            "submitting"
        } else {
            "queued"
        },
        job.public_model,
        job.spec,
        job.request_id,
        now_ms(),
        job.callback_url,
        first.map_or(0, |f| f.attempt),
        first.map(|f| f.model),
        first.map_or(0, |f| micros(f.price_micros)),
        first.is_some_and(|f| f.per_call),
        first.map_or(0, |f| micros(f.reserved_micros)),
    ])?;
    Ok(())
}

/// The job an `Idempotency-Key` names, with the digest of its request and when the key's record
/// expires (unix ms).
pub fn by_idempotency_key(
    c: &Connection,
    key_id: &str,
    idem: &str,
) -> Result<Option<(JobRecord, String, i64)>, StoreError> {
    let row: Option<(String, String, i64)> = c
        .prepare_cached(
            "SELECT job_id, digest, expires_ms FROM idempotency WHERE key_id = ?1 AND idem_key = ?2",
        )?
        .query_row([key_id, idem], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((job_id, digest, expires)) = row else {
        return Ok(None);
    };
    Ok(load(c, &job_id)?.map(|j| (j, digest, expires)))
}

/// Creates `job` (state `queued`). With an `Idempotency-Key`, the key's record decides, by its
/// primary key, not by a read before the write: the first request inserts it; a later one finds
/// it and joins that job, unless that job failed unbilled or the record expired — then the
/// record moves to the new job.
pub fn create(c: &mut Connection, job: &NewJob) -> Result<Created, StoreError> {
    let tx = c.transaction()?;
    let now = now_ms();
    if let Some(IdemKey {
        key: idem,
        expires_ms: expires,
        after_end_ms,
    }) = &job.idempotency
    {
        let inserted = tx.execute(
            "INSERT INTO idempotency (key_id, idem_key, digest, job_id, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![job.key_id, idem, job.digest, job.id, expires],
        )?;
        if inserted == 0 {
            let (old_job, old_digest, old_expires): (String, String, i64) = tx.query_row(
                "SELECT job_id, digest, expires_ms FROM idempotency WHERE key_id = ?1 AND idem_key = ?2",
                params![job.key_id, idem],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let old = load(&tx, &old_job)?;
            let live = old
                .as_ref()
                .is_some_and(|o| o.live_for_key(old_expires, *after_end_ms, now));
            if live {
                return Ok(Created::Existing {
                    job_id: old_job,
                    digest: old_digest,
                });
            }
            tx.execute(
                "UPDATE idempotency SET digest = ?3, job_id = ?4, expires_ms = ?5
                 WHERE key_id = ?1 AND idem_key = ?2",
                params![job.key_id, idem, job.digest, job.id, expires],
            )?;
        }
    }
    insert(&tx, job)?;
    tx.commit()?;
    Ok(Created::New)
}

const COLUMNS: &str = "id, key_id, team, digest, state, public_model, model, attempt, price_micros,
    per_call, reserved_micros, cost_micros, spec, images, status, error, request_id, created_ms,
    completed_ms";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(JobRecord {
        id: r.get(0)?,
        key_id: r.get(1)?,
        team: r.get(2)?,
        digest: r.get(3)?,
        state: JobState::parse(&r.get::<_, String>(4)?),
        public_model: r.get(5)?,
        model: r.get(6)?,
        attempt: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
        price_micros: u(r.get(8)?),
        per_call: r.get::<_, i64>(9)? != 0,
        reserved_micros: u(r.get(10)?),
        cost_micros: r.get::<_, Option<i64>>(11)?.map(u),
        spec: json(Some(r.get(12)?)).unwrap_or(Value::Null),
        // Text, or the blob [`finish`] writes in place.
        images: match r.get_ref(13)? {
            ValueRef::Text(t) | ValueRef::Blob(t) => serde_json::from_slice(t).ok(),
            _ => None,
        },
        status: r
            .get::<_, Option<i64>>(14)?
            .and_then(|s| u16::try_from(s).ok()),
        error: json(r.get(15)?),
        request_id: r.get(16)?,
        created_ms: r.get(17)?,
        completed_ms: r.get(18)?,
        calls: Vec::new(),
        epoch: None,
    })
}

fn calls(c: &Connection, job_id: &str) -> Result<Vec<CallRecord>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, attempt, model, state, task_id, upstream_key FROM job_calls
         WHERE job_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([job_id], |r| {
        Ok(CallRecord {
            seq: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            attempt: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            model: r.get(2)?,
            state: JobState::parse(&r.get::<_, String>(3)?),
            task_id: r.get(4)?,
            upstream_key: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One job with its calls.
pub fn load(c: &Connection, id: &str) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1");
    let Some(mut job) = c.query_row(&sql, [id], record).optional()? else {
        return Ok(None);
    };
    job.calls = calls(c, id)?;
    Ok(Some(job))
}

/// Jobs newest first: the caller's (or every key's), after the job `after` (a cursor).
pub fn list(
    c: &Connection,
    key_id: Option<&str>,
    limit: u32,
    after: Option<&str>,
) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs
         WHERE (?1 IS NULL OR key_id = ?1)
           AND (?2 IS NULL OR (created_ms, id) < (SELECT created_ms, id FROM jobs WHERE id = ?2))
         ORDER BY created_ms DESC, id DESC LIMIT ?3"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params![key_id, after, limit], record)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest joinable job of `key_id` for the same request since `since_ms`: what an SDK's
/// retry (same body, `x-stainless-retry-count` ≥ 1) joins.
pub fn find_retry(
    c: &Connection,
    key_id: &str,
    digest: &str,
    since_ms: i64,
) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE key_id = ?1 AND digest = ?2 AND created_ms >= ?3
         ORDER BY created_ms DESC LIMIT 5"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params![key_id, digest, since_ms], record)?;
    for job in rows {
        let job = job?;
        if job.joinable() {
            return Ok(Some(job));
        }
    }
    Ok(None)
}

/// Jobs that were not finished when the last process stopped. A scan (read once, at startup):
/// finished jobs are purged after `[jobs] result_ttl`, and an index on the state would cost a
/// write on every state change of every job.
pub fn unfinished(c: &Connection) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'submitting', 'in_progress')
         ORDER BY created_ms"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map([], record)?;
    let mut jobs: Vec<JobRecord> = rows.collect::<Result<_, _>>()?;
    for job in &mut jobs {
        job.calls = calls(c, &job.id)?;
    }
    Ok(jobs)
}

/// An attempt on `model` starts: its price (per image, or per successful call when `n` is fanned
/// out) and the amount reserved for it.
pub fn attempt(
    tx: &Transaction<'_>,
    job: &str,
    attempt: u32,
    model: &str,
    price_micros: u64,
    per_call: bool,
    reserved_micros: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE jobs SET attempt = ?2, model = ?3, price_micros = ?4, per_call = ?5,
            reserved_micros = ?6, updated_ms = ?7
         WHERE id = ?1",
    )?
    .execute(params![
        job,
        attempt,
        model,
        i64::try_from(price_micros).unwrap_or(i64::MAX),
        per_call,
        i64::try_from(reserved_micros).unwrap_or(i64::MAX),
        now_ms()
    ])?;
    Ok(())
}

/// A create call `seq` is about to be sent.
pub fn submitting(
    tx: &Transaction<'_>,
    job: &str,
    seq: u32,
    attempt: u32,
    model: &str,
) -> Result<(), StoreError> {
    insert_call(tx, job, seq, attempt, model)?;
    tx.prepare_cached(
        "UPDATE jobs SET state = 'submitting', updated_ms = ?2 WHERE id = ?1 AND state = 'queued'",
    )?
    .execute(params![job, now_ms()])?;
    Ok(())
}

/// Create call `seq` of `job`, about to be sent (a second record of the same call is ignored).
fn insert_call(
    tx: &Transaction<'_>,
    job: &str,
    seq: u32,
    attempt: u32,
    model: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO job_calls (job_id, seq, attempt, model, state) VALUES (?1, ?2, ?3, ?4, 'submitting')
         ON CONFLICT (job_id, seq) DO NOTHING",
    )?
    .execute(params![job, seq, attempt, model])?;
    Ok(())
}

/// Create call `seq` answered: `task_id` (when the model runs tasks) made with pool key `key`.
pub fn call_ended(
    tx: &Transaction<'_>,
    job: &str,
    seq: u32,
    state: JobState,
    task_id: Option<&str>,
    key: Option<&str>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE job_calls SET state = ?3, task_id = COALESCE(?4, task_id),
            upstream_key = COALESCE(?5, upstream_key)
         WHERE job_id = ?1 AND seq = ?2",
    )?
    .execute(params![job, seq, state.as_str(), task_id, key])?;
    if state == JobState::InProgress {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'in_progress', updated_ms = ?2
             WHERE id = ?1 AND state IN ('queued', 'submitting')",
        )?
        .execute(params![job, now_ms()])?;
    }
    Ok(())
}

/// Images' JSON text at least this long is written in place (see [`finish`]).
const IN_PLACE: usize = 64 * 1024;

/// The terminal state and the job's ledger row, together. A job already finished is left as it
/// is (and its second row refused by the unique index).
pub fn finish(tx: &Transaction<'_>, job: &str, f: &Finish) -> Result<(), StoreError> {
    let now = now_ms();
    // Large images' text is written in place, piece by piece, into a value of its length: the
    // base64 goes from the upstream answer's buffer into the database's pages without a copy of
    // the whole text first (a bound value is copied twice more by SQLite). Opening the value for
    // that costs more than copying a short text, which is bound as usual.
    let (text, in_place) = match &f.images {
        Some(t) if t.len() >= IN_PLACE => (None, Some(t)),
        Some(t) => (Some(t.to_text()), None),
        None => (None, None),
    };
    let len = in_place.map(|t| i64::try_from(t.len()).unwrap_or(i64::MAX));
    // The open states are spelled as `=` terms: SQLite runs an `IN` list of three or more
    // constants through a temporary table it builds again on every execution.
    let changed = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?2, status = ?3, cost_micros = ?4,
                images = CASE WHEN ?8 IS NULL THEN ?5 ELSE zeroblob(?8) END, error = ?6,
                updated_ms = ?7, completed_ms = ?7
             WHERE id = ?1
               AND (state = 'queued' OR state = 'submitting' OR state = 'in_progress')",
        )?
        .execute(params![
            job,
            f.state.as_str(),
            f.status,
            i64::try_from(f.cost_micros).unwrap_or(i64::MAX),
            text,
            f.error.as_ref().map(Value::to_string),
            now,
            len
        ])?;
    if let (1, Some(text)) = (changed, in_place) {
        let rowid: i64 =
            tx.query_row("SELECT rowid FROM jobs WHERE id = ?1", params![job], |r| {
                r.get(0)
            })?;
        let mut blob = tx.blob_open(MAIN_DB, c"jobs", c"images", rowid, false)?;
        let mut at = 0;
        for part in text.parts() {
            blob.write_at(part, at)?;
            at += part.len();
        }
    }
    if changed == 0 {
        return Err(StoreError::Refused(format!(
            "job {job} is already finished"
        )));
    }
    // The webhook of the job's end goes into the outbox with it: delivered at least once.
    tx.prepare_cached(
        "INSERT INTO webhooks (id, job_id, key_id, url, next_ms, created_ms)
         SELECT 'msg_' || lower(hex(randomblob(16))), id, key_id, callback_url, ?2, ?2
         FROM jobs WHERE id = ?1 AND callback_url IS NOT NULL",
    )?
    .execute(params![job, now])?;
    insert_row(tx, &f.row)
}

const WEBHOOK_COLUMNS: &str =
    "id, job_id, key_id, url, state, attempts, last_status, last_error, created_ms, delivered_ms";

fn webhook(r: &rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: r.get(0)?,
        job_id: r.get(1)?,
        key_id: r.get(2)?,
        url: r.get(3)?,
        state: r.get(4)?,
        attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        last_status: r
            .get::<_, Option<i64>>(6)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: r.get(7)?,
        created_ms: r.get(8)?,
        delivered_ms: r.get(9)?,
    })
}

/// Deliveries due now (pending, their next attempt time passed), oldest first.
pub fn due_webhooks(c: &Connection, now: i64, limit: u32) -> Result<Vec<Webhook>, StoreError> {
    let sql = format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE state = 'pending' AND next_ms <= ?1
         ORDER BY next_ms LIMIT ?2"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params![now, limit], webhook)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A job's deliveries.
pub fn webhooks_of(c: &Connection, job_id: &str) -> Result<Vec<Webhook>, StoreError> {
    let sql =
        format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE job_id = ?1 ORDER BY created_ms");
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map([job_id], webhook)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records one delivery attempt: delivered, or tried again at `next_ms` (`None`: given up).
pub fn webhook_attempted(
    tx: &Transaction<'_>,
    id: &str,
    status: Option<u16>,
    error: Option<&str>,
    delivered: bool,
    next_ms: Option<i64>,
) -> Result<(), StoreError> {
    let state = match (delivered, next_ms) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    tx.execute(
        "UPDATE webhooks SET attempts = attempts + 1, state = ?2, last_status = ?3,
            last_error = ?4, next_ms = COALESCE(?5, next_ms),
            delivered_ms = CASE WHEN ?2 = 'delivered' THEN ?6 ELSE delivered_ms END
         WHERE id = ?1",
        params![id, state, status, error, next_ms, now_ms()],
    )?;
    Ok(())
}

/// An operator settled an `unknown` job, which becomes `failed` (no image was delivered):
/// billed keeps its cost (its row stays as it is); not billed writes the compensating row
/// (`adjusts`) and sets its cost to zero.
pub fn resolve(
    tx: &Transaction<'_>,
    job: &str,
    compensation: Option<&Row>,
) -> Result<(), StoreError> {
    let cost: Option<i64> = compensation.map(|_| 0);
    let changed = tx.execute(
        "UPDATE jobs SET state = 'failed', cost_micros = COALESCE(?2, cost_micros), updated_ms = ?3
         WHERE id = ?1 AND state = 'unknown'",
        params![job, cost, now_ms()],
    )?;
    if changed == 0 {
        return Err(StoreError::Refused(format!(
            "job {job} is not in state unknown"
        )));
    }
    if let Some(row) = compensation {
        insert_row(tx, row)?;
    }
    Ok(())
}

/// Forgets finished jobs (and their calls, webhooks and expired idempotency records) that ended
/// before `before_ms`. Jobs in state `unknown` are kept until an operator resolves them, and
/// their ledger rows are never touched.
pub fn purge(c: &mut Connection, before_ms: i64) -> Result<usize, StoreError> {
    let tx = c.transaction()?;
    tx.execute(
        "DELETE FROM idempotency WHERE expires_ms < ?1
           AND job_id NOT IN (SELECT id FROM jobs WHERE state IN ('queued', 'submitting', 'in_progress'))",
        [now_ms()],
    )?;
    // A job whose webhook is still being delivered is kept until it is delivered or given up.
    let old = "SELECT id FROM jobs WHERE completed_ms < ?1 AND state IN ('completed', 'failed')
        AND id NOT IN (SELECT job_id FROM webhooks WHERE state = 'pending')";
    tx.execute(
        &format!("DELETE FROM job_calls WHERE job_id IN ({old})"),
        [before_ms],
    )?;
    tx.execute(
        &format!("DELETE FROM webhooks WHERE job_id IN ({old})"),
        [before_ms],
    )?;
    let n = tx.execute(
        &format!("DELETE FROM jobs WHERE id IN ({old})"),
        [before_ms],
    )?;
    tx.commit()?;
    Ok(n)
}
