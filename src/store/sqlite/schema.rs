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
    // Fewer b-trees written per request: each one a request touches is one more page in the
    // log at every commit. `ledger_day` served no query (the usage report's optional filters
    // scan the ledger); `ledger_team` holds only rows that have a team (what the team spend
    // query reads); a job's calls are keyed by (job, seq) alone, with no rowid beside the key.
    r"
DROP INDEX ledger_day;
DROP INDEX ledger_team;
CREATE INDEX ledger_team ON ledger (team, month) WHERE team IS NOT NULL;
CREATE TABLE job_calls_keyed (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    upstream_key TEXT,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
INSERT INTO job_calls_keyed (job_id, seq, attempt, model, state, task_id, upstream_key)
    SELECT job_id, seq, attempt, model, state, task_id, upstream_key FROM job_calls;
DROP TABLE job_calls;
ALTER TABLE job_calls_keyed RENAME TO job_calls;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at the previous version keeps its calls and ledger through the migration,
    /// and the team spend query still reads the team index.
    #[test]
    fn the_calls_and_ledger_survive_the_last_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        let before = MIGRATIONS.len() - 1;
        for (i, sql) in MIGRATIONS.iter().enumerate().take(before) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i as i64 + 1)
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO job_calls (job_id, seq, attempt, model, state, task_id, upstream_key)
                 VALUES ('imgjob_a', 0, 1, 'gpt-image-2-all', 'answered', 't-1', 'k1'),
                        ('imgjob_a', 1, 2, 'gpt-image-2-beta', 'submitting', NULL, NULL);
             INSERT INTO ledger (ts_ms, month, day, request_id, key_id, team, model, n, size,
                 quality, cost_micros, status, latency_ms, task_ids)
                 VALUES (1, '2026-11', '2026-11-30', 'r1', 'k', 'blue', 'm', 1, 's', 'q', 5, 200, 1, ''),
                        (2, '2026-11', '2026-11-30', 'r2', 'k', NULL, 'm', 1, 's', 'q', 7, 200, 1, '');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let calls: Vec<(String, i64, String, Option<String>)> = conn
            .prepare("SELECT job_id, seq, state, task_id FROM job_calls ORDER BY job_id, seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            calls,
            [
                (
                    "imgjob_a".to_owned(),
                    0,
                    "answered".to_owned(),
                    Some("t-1".to_owned())
                ),
                ("imgjob_a".to_owned(), 1, "submitting".to_owned(), None),
            ]
        );
        // The primary key still refuses a second record of the same call.
        assert!(conn
            .execute(
                "INSERT INTO job_calls (job_id, seq, attempt, model, state) VALUES ('imgjob_a', 0, 1, 'm', 's')",
                [],
            )
            .is_err());
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT team, SUM(cost_micros) FROM ledger
                 WHERE team IS NOT NULL GROUP BY team",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("ledger_team"), "{plan}");
        let spent: i64 = conn
            .query_row(
                "SELECT SUM(cost_micros) FROM ledger WHERE team IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(spent, 5);
    }
}
