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

use std::sync::atomic::{AtomicBool, Ordering};
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
///
/// Often, so that each checkpoint has little to sync: SQLite syncs the log before it copies
/// it, and while that sync writes the log out, a commit's write to the log can wait on the disk
/// (the writer's kernel stack: `ext4_block_write_begin`, waiting on a buffer). The wait grows
/// with what the sync has to write. Measured on the benchmark machine, one connection: every
/// 500 ms, stalls up to 65–100 ms and a p99 of 41–75 ms; every 100 ms, up to 18–20 ms and
/// 5–10 ms, at the same CPU per request. 50 ms did no better than 100.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// When the WAL is restarted from its beginning and how big its file may stay.
pub(super) struct Wal {
    pub restart_frames: i64,
    pub size_limit: i64,
}

impl Default for Wal {
    fn default() -> Self {
        Self {
            restart_frames: RESTART_FRAMES,
            size_limit: WAL_SIZE_LIMIT,
        }
    }
}

/// Shared by the checkpointer (which asks for a restart) and the writer (which does it).
pub(super) struct Restart {
    frames: i64,
    due: AtomicBool,
    /// Restarts done, for the tests.
    pub done: std::sync::atomic::AtomicU64,
}

impl Restart {
    pub fn new(frames: i64) -> Self {
        Self {
            frames,
            due: AtomicBool::new(false),
            done: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// WAL frames past which the log is restarted (about 256 MiB of 4 KiB pages). A restart holds
/// the writer for the frames written since the last passive checkpoint and two syncs of what
/// the checkpointer has already synced (3–7 ms at 1,000 requests a second on the benchmark
/// machine; 30–90 ms when the restart did the syncs itself): rarer is better, up to the disk
/// it may take.
pub(super) const RESTART_FRAMES: i64 = 65_536;

/// The size the WAL file is cut back to when the log restarts (`journal_size_limit`).
pub(super) const WAL_SIZE_LIMIT: i64 = 256 << 20;

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`], until the store is gone.
///
/// A passive checkpoint blocks no writer and keeps its fsync out of every commit. But under
/// steady writes it never catches up with the last frame, and the log only starts again from
/// its beginning once every frame is copied: the WAL would grow without end (a gigabyte in
/// seconds under load, each new page zeroed by the file system). So once the log holds more
/// than [`RESTART_FRAMES`] (see [`Wal`]), this thread syncs the database file and the log
/// (the slow part, here, while the writer goes on), a restart is due, and the writer thread,
/// between two groups, runs a `RESTART` checkpoint on its own connection: with no other writer
/// to wait for, it copies what is left (the frames of the last few milliseconds) and the next
/// commit writes from the start of the file again.
pub(super) fn checkpoints(
    conn: &Connection,
    db: &std::path::Path,
    alive: &std::sync::Weak<Mutex<Connection>>,
    restart: &Restart,
) {
    loop {
        #[allow(
            clippy::disallowed_methods,
            reason = "the checkpointer is a thread of its own, not a runtime worker"
        )]
        std::thread::sleep(CHECKPOINT_EVERY);
        if alive.strong_count() == 0 {
            return;
        }
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        match frames {
            Ok(frames) if frames > restart.frames => {
                // The restart's slow part, done here first, off the writer (see above).
                sync_file(db);
                sync_file(&wal_path(db));
                restart.due.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; trying again later"),
        }
    }
}

/// The write-ahead log's path next to the database file's.
fn wal_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// fdatasync of a file by its path, as SQLite syncs (`.cargo/config.toml`: an fsync would also
/// write the log's inode, under the lock the writer's commits take). A failure only costs the
/// restart its head start.
fn sync_file(path: &std::path::Path) {
    if let Err(e) = std::fs::File::open(path).and_then(|f| f.sync_data()) {
        tracing::debug!(error = %e, path = %path.display(), "could not sync a database file ahead of a WAL restart");
    }
}

/// Restarts the WAL from its beginning (see [`checkpoints`]).
fn restart_log(conn: &Mutex<Connection>) -> bool {
    let started = std::time::Instant::now();
    let done = with_conn(conn, |c| {
        c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        Ok(())
    });
    match done {
        Ok(()) => {
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "WAL restarted from its beginning"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL restart failed; trying again later");
            false
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
pub(super) fn run(conn: Arc<Mutex<Connection>>, mut rx: Receiver<Msg>, restart: &Restart) {
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
        if restart.due.swap(false, Ordering::Relaxed) && restart_log(&conn) {
            restart.done.fetch_add(1, Ordering::Relaxed);
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
        StoreError::Sqlite(_) | StoreError::Postgres(_) => false,
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
