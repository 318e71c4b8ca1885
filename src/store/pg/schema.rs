//! The PostgreSQL schema: versioned migrations, applied at startup by `sqlx`'s migrator.

use futures_util::future::BoxFuture;
use sqlx_core::error::BoxDynError;
use sqlx_core::migrate::{Migration, MigrationSource, MigrationType};

use super::money;

/// Migrations, applied in order (version = index + 1).
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "keys, teams, ledger, jobs, idempotency, webhooks",
        r"
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    webhook_secret TEXT
);
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE ledger (
    seq BIGSERIAL PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
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
    cost_micros BIGINT NOT NULL,
    status INTEGER NOT NULL,
    error_code TEXT,
    latency_ms BIGINT NOT NULL,
    task_ids TEXT NOT NULL,
    job_id TEXT,
    adjusts TEXT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    call_id TEXT
);
CREATE INDEX ledger_key ON ledger (key_id, month);
CREATE INDEX ledger_team ON ledger (team, month);
CREATE INDEX ledger_day ON ledger (day);
CREATE UNIQUE INDEX ledger_job ON ledger (job_id) WHERE job_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_call ON ledger (call_id) WHERE call_id IS NOT NULL;
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    team TEXT,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    public_model TEXT NOT NULL,
    model TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    price_micros BIGINT NOT NULL DEFAULT 0,
    per_call BOOLEAN NOT NULL DEFAULT FALSE,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT,
    spec TEXT NOT NULL,
    images TEXT,
    status INTEGER,
    error TEXT,
    request_id TEXT NOT NULL,
    callback_url TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    completed_ms BIGINT,
    owner TEXT,
    lease_epoch BIGINT NOT NULL DEFAULT 0,
    lease_until TIMESTAMPTZ
);
CREATE INDEX jobs_owner ON jobs (key_id, created_ms);
CREATE INDEX jobs_digest ON jobs (key_id, digest, created_ms);
CREATE INDEX jobs_unfinished ON jobs (lease_until) WHERE state IN ('queued', 'submitting', 'in_progress');
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
    next_ms BIGINT NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_ms BIGINT NOT NULL,
    delivered_ms BIGINT
);
CREATE INDEX webhooks_due ON webhooks (next_ms) WHERE state = 'pending';
CREATE INDEX webhooks_job ON webhooks (job_id);
CREATE TABLE idempotency (
    key_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    job_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
",
    ),
    (
        "spend and holds: budgets shared by replicas",
        money::MIGRATION,
    ),
];

/// [`MIGRATIONS`] as `sqlx`'s migrator reads them.
#[derive(Debug)]
pub(super) struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .zip(1..)
                .map(|((name, sql), version)| {
                    Migration::new(
                        version,
                        (*name).into(),
                        MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}
