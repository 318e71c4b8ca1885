//! The ledger's rows, read back from the database file: one row per authenticated, parsed image
//! request with its status, error code, served model and cost — and none for a body that does
//! not parse or a caller without a key.
//!
//! `/admin/usage` sums rows but does not show a row's status or error code, so these tests read
//! `data.dir`'s SQLite file, after a usage call has flushed the ledger writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{png_part, start_with, with_admin, Env, KEY};

const LIMITED_KEY: &str = imagegate::demo::DEMO_LIMITED_KEY;
const BROKE_KEY: &str = "sk-broke-12345678";

/// One ledger row, as stored.
#[derive(Debug, Clone, PartialEq)]
struct LedgerRow {
    key_id: String,
    model: String,
    served_model: Option<String>,
    n: i64,
    cost_micros: i64,
    status: i64,
    error_code: Option<String>,
}

/// The rows with `request_id`, after every row queued so far was written.
async fn rows_for(env: &Env, db: &Path, request_id: &str) -> Vec<LedgerRow> {
    // A usage report flushes the ledger writer first.
    let usage = env.admin(Method::GET, "/admin/usage", None).await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT key_id, model, served_model, n, cost_micros, status, error_code
             FROM ledger WHERE request_id = ?1 ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([request_id], |r| {
        Ok(LedgerRow {
            key_id: r.get(0)?,
            model: r.get(1)?,
            served_model: r.get(2)?,
            n: r.get(3)?,
            cost_micros: r.get(4)?,
            status: r.get(5)?,
            error_code: r.get(6)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The only row of `request_id`.
async fn row_for(env: &Env, db: &Path, request_id: &str) -> LedgerRow {
    let rows = rows_for(env, db, request_id).await;
    assert_eq!(rows.len(), 1, "{request_id}: {rows:?}");
    rows.into_iter().next().unwrap()
}

async fn total_rows(env: &Env, db: &Path) -> i64 {
    env.admin(Method::GET, "/admin/usage", None).await;
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))
        .unwrap()
}

/// A generation with `key` and our own `x-request-id` (the gateway keeps it for the row).
async fn generate(env: &Env, key: &str, request_id: &str, body: Value) -> crate::support::Answer {
    let res = env
        .http
        .post(format!("{}/v1/images/generations", env.gateway))
        .bearer_auth(key)
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .unwrap();
    Env::read(res).await
}

fn sparkpix(prompt: &str) -> Value {
    json!({"model": "sparkpix", "prompt": prompt, "response_format": "url"})
}

/// A gateway with its ledger in a temporary `data.dir`; the demo key, the demo's limited key
/// (one request a minute) and a key whose budget fits no request.
async fn start_with_db() -> (Env, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = start_with(|c| {
        with_admin(c);
        c.data.dir = Some(data.clone());
        // `[sim:nofile]` is tried again until `results.timeout`: keep it short here.
        c.results.timeout = std::time::Duration::from_secs(2);
        c.keys.push(imagegate::config::KeySpec {
            id: "broke".into(),
            key: Some(BROKE_KEY.into()),
            total_budget_usd: Some(0.001),
            ..Default::default()
        });
    })
    .await;
    (env, data.join(imagegate::store::DB_FILE), dir)
}

#[tokio::test]
async fn every_outcome_writes_its_status_and_error_code() {
    let (env, db, _dir) = start_with_db().await;

    // 200: booked at the price, no error code.
    let a = generate(&env, KEY, "ledger-ok", sparkpix("a cat")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let row = row_for(&env, &db, "ledger-ok").await;
    assert_eq!(
        row,
        LedgerRow {
            key_id: "demo".into(),
            model: "sparkpix".into(),
            served_model: Some("sparkpix".into()),
            n: 1,
            cost_micros: 10_000,
            status: 200,
            error_code: None,
        }
    );

    // 400: the model cannot serve the request (an upload to a URL-only model); nothing billed.
    let res = env
        .post_raw("/v1/images/edits")
        .header("x-request-id", "ledger-unsupported")
        .multipart(
            reqwest::multipart::Form::new()
                .text("model", "sparkpix")
                .text("prompt", "a hat")
                .part("image", png_part("a.png")),
        )
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!((a.status, a.code()), (400, "unsupported_for_model"));
    let row = row_for(&env, &db, "ledger-unsupported").await;
    assert_eq!(
        (row.status, row.error_code.as_deref(), row.cost_micros),
        (400, Some("unsupported_for_model"), 0)
    );
    assert_eq!(row.served_model, None);

    // 429: the key's request rate (the limited key allows one request a minute).
    let a = generate(&env, LIMITED_KEY, "ledger-rate-1", sparkpix("x")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = generate(&env, LIMITED_KEY, "ledger-rate-2", sparkpix("x")).await;
    assert_eq!((a.status, a.code()), (429, "rate_limit_exceeded"));
    let row = row_for(&env, &db, "ledger-rate-2").await;
    assert_eq!(row.key_id, "demo-limited");
    assert_eq!(
        (row.status, row.error_code.as_deref(), row.cost_micros),
        (429, Some("rate_limit_exceeded"), 0)
    );
    assert_eq!(row.served_model, None);

    // 429: the budget ($0.001 fits no $0.01 generation).
    let a = generate(&env, BROKE_KEY, "ledger-budget", sparkpix("x")).await;
    assert_eq!((a.status, a.code()), (429, "insufficient_quota"));
    let row = row_for(&env, &db, "ledger-budget").await;
    assert_eq!(row.key_id, "broke");
    assert_eq!(
        (row.status, row.error_code.as_deref(), row.cost_micros),
        (429, Some("insufficient_quota"), 0)
    );
    assert_eq!(row.served_model, None);

    // 502: the upstream made (and billed) the image, but its file cannot be fetched.
    let a = generate(
        &env,
        KEY,
        "ledger-nofile",
        json!({"model": "sparkpix", "prompt": "x [sim:nofile]"}),
    )
    .await;
    assert_eq!((a.status, a.code()), (502, "result_download_failed"));
    let row = row_for(&env, &db, "ledger-nofile").await;
    assert_eq!(
        (row.status, row.error_code.as_deref(), row.cost_micros),
        (502, Some("result_download_failed"), 10_000)
    );
    assert_eq!(row.served_model.as_deref(), Some("sparkpix"));

    // An upstream failure that cost nothing: 502, cost 0, nothing served.
    let a = generate(&env, KEY, "ledger-500", sparkpix("x [sim:500]")).await;
    assert_eq!((a.status, a.code()), (502, "upstream_error"));
    let row = row_for(&env, &db, "ledger-500").await;
    assert_eq!(
        (row.status, row.error_code.as_deref(), row.cost_micros),
        (502, Some("upstream_error"), 0)
    );
    assert_eq!(row.served_model, None);

    // No row: a body that does not parse, and a call without a valid key.
    let before = total_rows(&env, &db).await;
    let res = env
        .post_raw("/v1/images/generations")
        .header("x-request-id", "ledger-garbage")
        .header("content-type", "application/json")
        .body("{\"model\": \"sparkpix\", \"prompt\": ")
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    let a = generate(&env, "sk-not-a-key-000000", "ledger-anon", sparkpix("x")).await;
    assert_eq!((a.status, a.code()), (401, "invalid_api_key"));
    let res = env
        .http
        .post(format!("{}/v1/images/generations", env.gateway))
        .header("x-request-id", "ledger-nokey")
        .json(&sparkpix("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    for id in ["ledger-garbage", "ledger-anon", "ledger-nokey"] {
        assert_eq!(rows_for(&env, &db, id).await, [], "{id}");
    }
    assert_eq!(total_rows(&env, &db).await, before);
}

#[tokio::test]
async fn a_client_hang_up_does_not_cut_the_job_which_is_booked_once_at_its_cost() {
    let (env, db, _dir) = start_with_db().await;
    // The simulator holds the call for 1 s (unscaled); the client leaves before that.
    let request = env
        .post_raw("/v1/images/generations")
        .header("x-request-id", "ledger-hangup")
        .json(&sparkpix("a cat [sim:slow=1]"));
    let in_flight = tokio::spawn(async move { request.send().await });
    env.until_upstream_called().await;
    // The client goes away while the upstream works: its connection closes.
    in_flight.abort();
    assert!(in_flight.await.unwrap_err().is_cancelled());

    let mut rows = Vec::new();
    for _ in 0..500 {
        rows = rows_for(&env, &db, "ledger-hangup").await;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The job ran to its end: one row, the image's real cost, a success.
    assert_eq!(
        rows,
        [LedgerRow {
            key_id: "demo".into(),
            model: "sparkpix".into(),
            served_model: Some("sparkpix".into()),
            n: 1,
            cost_micros: 10_000,
            status: 200,
            error_code: None,
        }]
    );
    assert_eq!(env.upstream_stats().await["creates"], 1);
}
