//! Writes that must land (a task id, a job's end, ledger rows): one task applies what has queued
//! up in one transaction. When the database is away the writes wait, in order, and are retried
//! with backoff until it is back; only a write the database refuses for what it says (a
//! constraint, a lost claim) is given up, and its waiter told.

use std::time::Duration;

use sqlx_postgres::PgPool;
use tokio::sync::mpsc::Receiver;

use super::jobs::apply;
use super::Claimant;
use crate::store::{Op, StoreError};

pub(super) enum Msg {
    Write {
        ops: Vec<Op>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    },
    /// Answered once every write sent before it is committed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Most writes waiting; past it, a sender waits for room.
pub(super) const QUEUE: usize = 4096;
/// Most writes grouped into one transaction.
const GROUP: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Done = Option<tokio::sync::oneshot::Sender<Result<(), String>>>;

pub(super) async fn run(pool: PgPool, me: Claimant, mut rx: Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut writes: Vec<(Vec<Op>, Done)> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write { ops, done } => writes.push((ops, done)),
                Msg::Flush(done) => flushes.push(done),
            }
            if writes.len() < GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            write_group(&pool, &me, writes).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn commit(pool: &PgPool, me: &Claimant, groups: &[&[Op]]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for ops in groups {
        for op in *ops {
            apply(&mut tx, op, me).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn write_group(pool: &PgPool, me: &Claimant, writes: Vec<(Vec<Op>, Done)>) {
    let all: Vec<&[Op]> = writes.iter().map(|(ops, _)| ops.as_slice()).collect();
    if writes.len() > 1 && commit(pool, me, &all).await.is_ok() {
        for (_, done) in writes {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        return;
    }
    for (ops, done) in writes {
        let result = write_one(pool, me, &ops).await;
        match done {
            Some(done) => {
                let _ = done.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "a write was refused by the database");
                }
            }
        }
    }
}

/// One write in its own transaction: refused on a constraint, retried on anything else.
async fn write_one(pool: &PgPool, me: &Claimant, ops: &[Op]) -> Result<(), String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match commit(pool, me, &[ops]).await {
            Ok(()) => return Ok(()),
            Err(e) if super::is_refusal(&e) => return Err(e.to_string()),
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "could not write to the database; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
