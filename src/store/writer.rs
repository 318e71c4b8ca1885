//! The write path: one thread applies queued writes, grouping whatever has queued up into one
//! transaction. Nothing waits on a timer: while one group commits the next one gathers, so a busy
//! gateway commits many requests' writes at once and an idle one commits a single write at once.
//!
//! The queue is bounded ([`QUEUE`]): when the disk falls behind, a request waits to queue its
//! write (backpressure) instead of the queue growing without end.
//!
//! A write is never dropped. When a group fails, its writes are applied one by one; a write that
//! breaks a constraint (a duplicate ledger row for a job, say) is refused and its waiter told;
//! any other failure (disk full, I/O) is retried with backoff until it succeeds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction};
use tokio::sync::mpsc::Receiver;

use super::StoreError;

/// One write, run inside a transaction. It may be run more than once (a failed group is
/// retried write by write), so it must not consume what it writes.
pub type WriteFn = Box<dyn Fn(&Transaction<'_>) -> Result<(), StoreError> + Send>;

/// What the writer thread is sent.
pub(super) enum Msg {
    Write {
        op: WriteFn,
        /// Told once the write is committed (or refused); `None` for fire-and-forget rows.
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    },
    /// Answered once every write sent before it is committed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`] (a passive checkpoint:
/// writers are not blocked, and its fsync is not in any commit), until the store is gone.
pub(super) fn checkpoints(conn: &Connection, alive: &std::sync::Weak<Mutex<Connection>>) {
    loop {
        #[allow(
            clippy::disallowed_methods,
            reason = "the checkpointer is a thread of its own, not a runtime worker"
        )]
        std::thread::sleep(CHECKPOINT_EVERY);
        if alive.strong_count() == 0 {
            return;
        }
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            tracing::warn!(error = %e, "WAL checkpoint failed; trying again later");
        }
    }
}

/// Most writes waiting for the writer; past it, a writer's `send` waits for room.
pub(super) const QUEUE: usize = 4096;
/// Most writes grouped into one transaction.
pub(super) const GROUP: usize = 512;
/// Longest pause between two tries of a write that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Done = Option<tokio::sync::oneshot::Sender<Result<(), String>>>;

/// Applies writes until every sender is gone.
pub(super) fn run(conn: Arc<Mutex<Connection>>, mut rx: Receiver<Msg>) {
    while let Some(first) = rx.blocking_recv() {
        let mut writes: Vec<(WriteFn, Done)> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write { op, done } => writes.push((op, done)),
                Msg::Flush(done) => flushes.push(done),
            }
            if writes.len() < GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            apply(&conn, writes);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn apply(conn: &Mutex<Connection>, writes: Vec<(WriteFn, Done)>) {
    let grouped = with_conn(conn, |c| {
        let tx = c.transaction()?;
        for (op, _) in &writes {
            op(&tx)?;
        }
        tx.commit()?;
        Ok(())
    });
    match grouped {
        Ok(()) => {
            for (_, done) in writes {
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
        }
        Err(e) => {
            if writes.len() > 1 {
                tracing::warn!(error = %e, writes = writes.len(), "a group of writes failed; writing them one by one");
            }
            for (op, done) in writes {
                let result = apply_one(conn, &op);
                if let Some(done) = done {
                    let _ = done.send(result);
                } else if let Err(e) = result {
                    tracing::error!(error = %e, "a write was refused by the database");
                }
            }
        }
    }
}

/// One write in its own transaction: refused on a constraint, retried on anything else.
fn apply_one(conn: &Mutex<Connection>, op: &WriteFn) -> Result<(), String> {
    let mut backoff = Duration::from_millis(20);
    loop {
        let result = with_conn(conn, |c| {
            let tx = c.transaction()?;
            op(&tx)?;
            tx.commit()?;
            Ok(())
        });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if is_refusal(&e) => return Err(e.to_string()),
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "could not write to the database; retrying");
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the writer is a thread of its own, not a runtime worker"
                )]
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A write the database refuses for what it says (not for its state): retrying cannot help.
fn is_refusal(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        StoreError::Sqlite(_) => false,
        StoreError::Json(_) | StoreError::Refused(_) => true,
        StoreError::Join(_) | StoreError::Poisoned => false,
    }
}

fn with_conn(
    conn: &Mutex<Connection>,
    f: impl FnOnce(&mut Connection) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut c = conn.lock().map_err(|_| StoreError::Poisoned)?;
    f(&mut c)
}
