//! Budgets of replicas sharing PostgreSQL: the database is the one source of truth for money.
//!
//! - `spend` holds, per payer (`key:<id>`, `team:<id>`), this month's and all-time spend. It
//!   moves only in the transaction that writes a ledger row ([`book`]), so spend and ledger
//!   never disagree.
//! - `holds` are the reservations of requests in flight, each naming what will book it (a job
//!   id, a text call id: its `reference`). [`reserve`] checks and inserts one in one
//!   transaction, holding the payers' `spend` rows locked (`FOR UPDATE`), so concurrent
//!   reservations on every replica are serialized per payer: 60 requests against a budget that
//!   fits 10 get 10 holds. The ledger row that books the request deletes its holds in its own
//!   transaction; a failure the upstream did not bill releases its hold at once.
//! - A hold lives as long as its replica renews it (`expires_at`, the job lease): a replica that
//!   dies stops holding money after the lease, by which time its jobs are taken over and their
//!   new owner holds them again.

use sqlx_core::query::query;
use sqlx_core::row::Row as _;
use sqlx_postgres::{PgConnection, PgPool};

use super::Claimant;
use crate::ledger::Row;
use crate::store::StoreError;

/// The tables (migration 2).
pub(super) const MIGRATION: &str = r"
CREATE TABLE spend (
    payer TEXT PRIMARY KEY,
    month TEXT NOT NULL,
    month_spent BIGINT NOT NULL DEFAULT 0,
    total_spent BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    key_id TEXT NOT NULL,
    team TEXT,
    amount BIGINT NOT NULL,
    owner TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX holds_key ON holds (key_id);
CREATE INDEX holds_team ON holds (team) WHERE team IS NOT NULL;
CREATE INDEX holds_reference ON holds (reference);
CREATE INDEX holds_owner ON holds (owner);
";

/// One payer's limits for a reservation: its `spend` row name and its monthly and total
/// budgets (micro-dollars), if any.
#[derive(Debug, Clone)]
pub struct Limit {
    pub payer: String,
    pub monthly: Option<u64>,
    pub total: Option<u64>,
}

/// Why a reservation does not fit: the payer, which budget, its limit, what is spent and held.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub payer: String,
    pub which: &'static str,
    pub limit: u64,
    pub spent: u64,
    pub held: u64,
}

/// A payer's current spend, as the admin API shows it.
#[derive(Debug, Clone, Default)]
pub struct Balance {
    pub month: String,
    pub month_spent: u64,
    pub total_spent: u64,
    pub held: u64,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reserves `amount` for `reference` against `limits` (the key's, then the team's), or says
/// which budget it would exceed. `month` is the current `YYYY-MM` (UTC).
#[allow(
    clippy::too_many_arguments,
    reason = "one reservation's parts, each a column of its hold"
)]
pub async fn reserve(
    pool: &PgPool,
    me: &Claimant,
    month: &str,
    key_id: &str,
    team: Option<&str>,
    limits: &[Limit],
    amount: u64,
    reference: &str,
) -> Result<Result<String, Refusal>, StoreError> {
    let mut tx = pool.begin().await?;
    let payers: Vec<String> = limits.iter().map(|l| l.payer.clone()).collect();
    query(
        "INSERT INTO spend (payer, month) SELECT p, $2 FROM unnest($1::TEXT[]) AS p
         ON CONFLICT (payer) DO NOTHING",
    )
    .bind(&payers)
    .bind(month)
    .execute(&mut *tx)
    .await?;
    // Locked in one order on every replica: two payers never deadlock.
    let rows = query(
        "SELECT payer, month, month_spent, total_spent FROM spend
         WHERE payer = ANY($1) ORDER BY payer FOR UPDATE",
    )
    .bind(&payers)
    .fetch_all(&mut *tx)
    .await?;
    let held = query(
        "SELECT COALESCE(SUM(amount) FILTER (WHERE key_id = $1), 0)::BIGINT,
                COALESCE(SUM(amount) FILTER (WHERE team = $2), 0)::BIGINT
         FROM holds WHERE (key_id = $1 OR team = $2) AND expires_at > now()",
    )
    .bind(key_id)
    .bind(team)
    .fetch_one(&mut *tx)
    .await?;
    let (key_held, team_held): (i64, i64) = (held.try_get(0)?, held.try_get(1)?);
    for limit in limits {
        let Some(r) = rows
            .iter()
            .find(|r| r.try_get::<String, _>(0).ok().as_deref() == Some(&limit.payer))
        else {
            continue;
        };
        let this_month = r.try_get::<String, _>(1)? == month;
        let month_spent = if this_month { u(r.try_get(2)?) } else { 0 };
        let total_spent = u(r.try_get(3)?);
        let held = u(if limit.payer.starts_with("team:") {
            team_held
        } else {
            key_held
        });
        for (which, cap, spent) in [
            ("monthly", limit.monthly, month_spent),
            ("total", limit.total, total_spent),
        ] {
            let Some(cap) = cap else { continue };
            if spent.saturating_add(held).saturating_add(amount) > cap {
                return Ok(Err(Refusal {
                    payer: limit.payer.clone(),
                    which,
                    limit: cap,
                    spent,
                    held,
                }));
            }
        }
    }
    let id = format!("hold_{}", uuid::Uuid::new_v4().simple());
    query(
        "INSERT INTO holds (id, reference, key_id, team, amount, owner, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 millisecond')",
    )
    .bind(&id)
    .bind(reference)
    .bind(key_id)
    .bind(team)
    .bind(i(amount))
    .bind(&me.owner)
    .bind(me.lease_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(id))
}

/// Books a ledger row's cost into its payers' spend and ends the holds of what it books (its
/// job or text call), in the caller's transaction.
pub(super) async fn book(c: &mut PgConnection, row: &Row) -> Result<(), StoreError> {
    let reference = row.job_id.as_deref().or(row.call_id.as_deref());
    if let Some(reference) = reference {
        query("DELETE FROM holds WHERE reference = $1")
            .bind(reference)
            .execute(&mut *c)
            .await?;
    }
    add_spend(c, row, row.cost_micros()).await
}

/// Adds `delta` (micro-dollars, negative for a refund) to the spend of `row`'s payers.
pub(super) async fn add_spend(
    c: &mut PgConnection,
    row: &Row,
    delta: i64,
) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let month = row.day.get(..7).unwrap_or_default();
    let mut payers = vec![format!("key:{}", row.key_id)];
    if let Some(team) = &row.team {
        payers.push(format!("team:{team}"));
    }
    // A late row of an earlier month adds to the total only.
    query(
        "INSERT INTO spend (payer, month, month_spent, total_spent)
         SELECT p, $2, $3, $3 FROM unnest($1::TEXT[]) AS p
         ON CONFLICT (payer) DO UPDATE SET
            month_spent = CASE
                WHEN spend.month = excluded.month THEN spend.month_spent + excluded.month_spent
                WHEN spend.month > excluded.month THEN spend.month_spent
                ELSE excluded.month_spent END,
            month = GREATEST(spend.month, excluded.month),
            total_spent = spend.total_spent + excluded.total_spent",
    )
    .bind(&payers)
    .bind(month)
    .bind(delta)
    .execute(c)
    .await?;
    Ok(())
}

/// Ends one hold (a failure the upstream did not bill).
pub(super) async fn release(c: &mut PgConnection, hold: &str) -> Result<(), StoreError> {
    query("DELETE FROM holds WHERE id = $1")
        .bind(hold)
        .execute(c)
        .await?;
    Ok(())
}

/// Keeps this replica's holds alive for another lease.
pub async fn renew(pool: &PgPool, me: &Claimant) -> Result<u64, StoreError> {
    let done = query(
        "UPDATE holds SET expires_at = now() + $2 * interval '1 millisecond' WHERE owner = $1",
    )
    .bind(&me.owner)
    .bind(me.lease_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The spend and live holds of `payers` (`key:<id>` / `team:<id>`) in `month`.
pub async fn balances(
    pool: &PgPool,
    month: &str,
    payers: &[String],
) -> Result<Vec<(String, Balance)>, StoreError> {
    let rows = query(
        "SELECT p, s.month, s.month_spent, s.total_spent,
            (SELECT COALESCE(SUM(h.amount), 0)::BIGINT FROM holds h WHERE h.expires_at > now()
               AND ((p LIKE 'key:%' AND h.key_id = substr(p, 5))
                 OR (p LIKE 'team:%' AND h.team = substr(p, 6))))
         FROM unnest($1::TEXT[]) AS p LEFT JOIN spend s ON s.payer = p",
    )
    .bind(payers)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let stored_month: Option<String> = r.try_get(1)?;
            let this_month = stored_month.as_deref() == Some(month);
            Ok((
                r.try_get(0)?,
                Balance {
                    month: month.to_owned(),
                    month_spent: if this_month {
                        u(r.try_get::<Option<i64>, _>(2)?.unwrap_or(0))
                    } else {
                        0
                    },
                    total_spent: u(r.try_get::<Option<i64>, _>(3)?.unwrap_or(0)),
                    held: u(r.try_get(4)?),
                },
            ))
        })
        .collect()
}

/// Every payer's spend and live holds in `month`.
pub async fn all_balances(
    pool: &PgPool,
    month: &str,
) -> Result<Vec<(String, Balance)>, StoreError> {
    let payers: Vec<String> = query("SELECT payer FROM spend")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    balances(pool, month, &payers).await
}
