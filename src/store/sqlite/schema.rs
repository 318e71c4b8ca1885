//! The SQLite schema: migrations, applied in order at startup (`PRAGMA user_version` counts
//! those applied).

use rusqlite::Connection;

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

pub(super) fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
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
