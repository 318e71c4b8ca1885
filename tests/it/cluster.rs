//! Replicas of the real binary sharing one real PostgreSQL (`[data] url`): keys, jobs,
//! `Idempotency-Key`s and the ledger are shared; a replica killed (SIGKILL) or stalled
//! (SIGSTOP) while it follows a paid task loses the job to another after its lease, which
//! finishes it once — one upstream create, one ledger row — and the stalled one, woken up,
//! writes nothing more; a database that cannot be reached gives clean 503s.
//!
//! The server comes from `scripts/services.sh run -- …` (the test command runs the suite under
//! it): `IMAGEGATE_TEST_DATABASE_URL` names it, and each test creates a database of its own.
//! Tests that stop the server take an exclusive lock that the others share.

use std::fs::File;
use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx_core::query::query;
use sqlx_core::row::Row as _;
use sqlx_postgres::PgPool;
use tokio_util::sync::CancellationToken;

use imagegate::demo::DEMO_WEBHOOK_SECRET;

use crate::crash::{job_until, sim, stats, terminal, Proc};
use crate::support::{b64_image, is_png, Env, ADMIN_KEY, KEY};
use crate::webhooks::{receiver_slow, verify};

/// A key whose monthly budget fits exactly 10 SparkPix images ($0.01 each).
pub(crate) const TEN: &str = "sk-test-budget-of-ten";
/// A key allowed 2 requests in flight.
pub(crate) const TWO: &str = "sk-test-two-at-a-time";
/// A key allowed 12 requests a minute.
pub(crate) const TWELVE: &str = "sk-test-twelve-a-minute";

pub(crate) fn server_url() -> String {
    std::env::var("IMAGEGATE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("IMAGEGATE_TEST_DATABASE_URL is not set: run the tests under `scripts/services.sh run -- cargo test`")
    })
}

/// The server held for this test: shared by tests that keep it up, exclusive for one that
/// stops it.
pub(crate) fn hold_server(exclusive: bool) -> File {
    let dir = std::env::var("IMAGEGATE_TEST_SERVICES_DIR").unwrap_or_else(|_| "/tmp".to_owned());
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{dir}/imagegate-pg.lock"))
        .unwrap();
    if exclusive {
        f.lock().unwrap();
    } else {
        f.lock_shared().unwrap();
    }
    f
}

/// What every replica test runs against: a simulator (stopped with `stop`) and a fresh database.
pub(crate) struct Servers {
    pub stop: CancellationToken,
    pub sim: String,
    pub db: String,
}

impl Servers {
    pub(crate) async fn new() -> Self {
        let stop = CancellationToken::new();
        let sim = sim(&stop).await;
        Self {
            stop,
            sim,
            db: fresh_db().await,
        }
    }
}

/// `N` replicas of the real binary on one config.
pub(crate) fn replicas<const N: usize>(cfg: &tempfile::NamedTempFile) -> [Proc; N] {
    std::array::from_fn(|_| Proc::start(cfg.path(), None))
}

/// Stops replicas with SIGTERM (each must exit cleanly).
pub(crate) fn terminate(procs: impl IntoIterator<Item = Proc>) {
    for p in procs {
        p.term();
    }
}

/// A new, empty database on the test server; its URL.
pub(crate) async fn fresh_db() -> String {
    let url = server_url();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(&url).await.unwrap();
    query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A replica's config: the simulator upstream, the shared database, a short lease.
pub(crate) fn config(sim: &str, db: &str, lease: &str) -> tempfile::NamedTempFile {
    config_with(sim, db, lease, "")
}

/// [`config`] plus the test server's Redis (a namespace per test), failing `redis_down`.
pub(crate) fn config_redis(sim: &str, db: &str, redis_down: &str) -> tempfile::NamedTempFile {
    let redis = std::env::var("IMAGEGATE_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("IMAGEGATE_TEST_REDIS_URL is not set: run the tests under `scripts/services.sh run -- cargo test`")
    });
    let namespace = uuid::Uuid::new_v4().simple().to_string();
    config_with(
        sim,
        db,
        "30s",
        &format!("redis_url = \"{redis}\"\nnamespace = \"{namespace}\"\nrate_limits_when_redis_down = \"{redis_down}\"\n"),
    )
}

pub(crate) fn config_with(
    sim: &str,
    db: &str,
    lease: &str,
    cluster: &str,
) -> tempfile::NamedTempFile {
    let data = tempfile::tempdir().unwrap().keep();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://{sim}\"\napi_key = \"${{TEST_UPSTREAM_KEY}}\"\n\
         [results]\nallowed_hosts = [\"{sim}\"]\n[urls]\nallow_http = true\nallow_loopback = true\n\
         [data]\ndir = \"{}\"\nurl = \"{db}\"\n[data.pool]\nacquire_timeout = \"1s\"\n[cluster]\nlease = \"{lease}\"\n{cluster}\
         [admin]\nkey = \"{ADMIN_KEY}\"\n\
         [[keys]]\nid = \"t\"\nkey = \"{KEY}\"\nwebhook_secret = \"{DEMO_WEBHOOK_SECRET}\"\n\
         [[keys]]\nid = \"ten\"\nkey = \"{TEN}\"\nmonthly_budget_usd = 0.1\n\
         [[keys]]\nid = \"twelve\"\nkey = \"{TWELVE}\"\nrequests_per_minute = 12\n\
         [[keys]]\nid = \"two\"\nkey = \"{TWO}\"\nmax_concurrent = 2\n\
         [models.gpt-image-2-beta]\nfirst_poll_delay = \"10ms\"\npoll_interval = \"1s\"\n",
        data.display()
    )
    .unwrap();
    f
}

/// The ledger rows of `job` in the shared database: (status, cost in micro-dollars).
pub(crate) async fn ledger_rows(db: &str, job: &str) -> Vec<(i32, i64)> {
    let pool = PgPool::connect(db).await.unwrap();
    let rows = query("SELECT status, cost_micros FROM ledger WHERE job_id = $1")
        .bind(job)
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
        .collect()
}

pub(crate) async fn post(
    http: &reqwest::Client,
    p: &Proc,
    key: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> crate::support::Answer {
    let mut rb = http
        .post(p.url("/v1/images/generations"))
        .bearer_auth(key)
        .json(&body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    Env::read(rb.send().await.unwrap()).await
}

#[tokio::test]
async fn replicas_share_keys_jobs_idempotency_keys_and_the_ledger() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config(&sim, &db, "30s");
    let [a, b] = replicas(&cfg);
    let http = reqwest::Client::new();

    // A key made through replica A works on replica B.
    let created = http
        .post(a.url("/admin/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"id": "bob"}))
        .send()
        .await
        .unwrap();
    let created = Env::read(created).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let on_b = post(
        &http,
        &b,
        &secret,
        json!({"model": "sparkpix", "prompt": "a fox"}),
        &[],
    )
    .await;
    assert_eq!(on_b.status, 200, "{}", on_b.body);

    // The same Idempotency-Key sent to both replicas at once: one upstream create, one image.
    let before = stats(&http, &sim).await["creates"].as_u64().unwrap();
    let body = json!({"model": "gpt-image-2-beta", "prompt": "a lighthouse [sim:slow=1]"});
    let headers = [("idempotency-key", "same-click")];
    let (x, y) = tokio::join!(
        post(&http, &a, KEY, body.clone(), &headers),
        post(&http, &b, KEY, body.clone(), &headers)
    );
    assert_eq!((x.status, y.status), (200, 200), "{} / {}", x.body, y.body);
    assert_eq!(b64_image(&x.body, 0), b64_image(&y.body, 0));
    assert_eq!(
        stats(&http, &sim).await["creates"].as_u64().unwrap(),
        before + 1
    );

    // An SDK's retry of a request A served, landing on B, joins A's job: no second create.
    let before = stats(&http, &sim).await["creates"].as_u64().unwrap();
    let body = json!({"model": "gpt-image-2-beta", "prompt": "a pier"});
    let first = post(&http, &a, KEY, body.clone(), &[]).await;
    let retry = post(&http, &b, KEY, body, &[("x-stainless-retry-count", "1")]).await;
    assert_eq!((first.status, retry.status), (200, 200), "{}", retry.body);
    assert_eq!(b64_image(&first.body, 0), b64_image(&retry.body, 0));
    assert_eq!(
        stats(&http, &sim).await["creates"].as_u64().unwrap(),
        before + 1
    );

    // A job made on A is read on B.
    let res = http
        .post(a.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .header("prefer", "respond-async")
        .json(&json!({"model": "sparkpix", "prompt": "a kite"}))
        .send()
        .await
        .unwrap();
    let accepted = Env::read(res).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    let done = job_until(&http, &b, &id, terminal).await;
    assert_eq!(done["status"], "completed", "{done}");

    // Both replicas' rows are in one ledger: 1 (bob) + 1 (the shared Idempotency-Key) + 1 (the
    // joined retry) + 1 (the async job).
    let usage = http
        .get(b.url("/admin/usage"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let usage = Env::read(usage).await;
    let requests: u64 = usage.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 4, "{}", usage.body);
    a.term();
    b.term();
    stop.cancel();
}

/// Starts an async `gpt-image-2-beta` job (3 s of upstream work) on `p`; returns its id once its
/// task id is committed (the platform has the paid work).
pub(crate) async fn slow_job_in_progress(http: &reqwest::Client, p: &Proc) -> String {
    let res = http
        .post(p.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .header("prefer", "respond-async")
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "a lighthouse [sim:slow=3]"}))
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    job_until(http, p, &id, |v| v["status"] == "in_progress").await;
    id
}

#[tokio::test]
async fn a_killed_replicas_job_is_taken_over_after_its_lease_and_finished_once() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config(&sim, &db, "2s");
    let [a, b, c] = replicas(&cfg);
    let http = reqwest::Client::new();
    let id = slow_job_in_progress(&http, &a).await;
    a.kill9();

    // Another replica claims the job once A's lease lapses and follows the same task.
    let done = job_until(&http, &c, &id, terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    let res = http
        .get(c.url(&format!("/v1/images/jobs/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let job = Env::read(res).await;
    assert!(is_png(&b64_image(&job.body["result"], 0)), "{}", job.body);
    let logs = format!("{}{}", b.term(), c.term());
    assert!(logs.contains("taking over a job"), "{logs}");
    assert_eq!(stats(&http, &sim).await["creates"], 1);
    assert_eq!(ledger_rows(&db, &id).await, [(200, 30_000)]);
    stop.cancel();
}

pub(crate) fn signal(p: &Proc, sig: &str) {
    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test]
async fn a_stalled_replica_that_wakes_up_after_losing_its_lease_writes_no_second_result() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config(&sim, &db, "2s");
    let [a, b] = replicas(&cfg);
    let http = reqwest::Client::new();
    let id = slow_job_in_progress(&http, &a).await;
    signal(&a, "-STOP");
    let done = job_until(&http, &b, &id, terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    signal(&a, "-CONT");
    // A follows its task to the end too, and its write is refused: the claim moved on.
    for _ in 0..1000 {
        if a.logs.lock().unwrap().contains("already finished") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = a.term();
    assert!(logs.contains("already finished"), "{logs}");
    assert_eq!(stats(&http, &sim).await["creates"], 1);
    assert_eq!(ledger_rows(&db, &id).await, [(200, 30_000)]);
    b.term();
    stop.cancel();
}

pub(crate) fn services(action: &str) {
    let script = std::env::var("IMAGEGATE_TEST_SERVICES").unwrap();
    let status = Command::new(script).arg(action).status().unwrap();
    assert!(status.success(), "services.sh {action}");
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_gives_503s_and_loses_no_row() {
    let _held = hold_server(true);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config(&sim, &db, "30s");
    let a = Proc::start(cfg.path(), None);
    let http = reqwest::Client::new();
    let body = json!({"model": "sparkpix", "prompt": "a fox"});
    assert_eq!(post(&http, &a, KEY, body.clone(), &[]).await.status, 200);
    // A paid task in progress when the database goes away: it ends while it is away.
    let id = slow_job_in_progress(&http, &a).await;

    services("pg-stop");
    let creates = stats(&http, &sim).await["creates"].as_u64().unwrap();
    // Under load for 5 s (8 clients back to back): every request is refused cleanly, none hangs.
    let down_since = std::time::Instant::now();
    let mut answers = Vec::new();
    while down_since.elapsed() < Duration::from_secs(5) {
        let burst = (0..8).map(|_| post(&http, &a, KEY, body.clone(), &[]));
        answers.extend(futures_util::future::join_all(burst).await);
    }
    assert!(answers.len() >= 8);
    for down in &answers {
        assert_eq!(down.status, 503, "{}", down.body);
        assert_eq!(down.code(), "database_unavailable", "{}", down.body);
        // Nothing was sent: a retry is safe (never `x-should-retry: false`).
        assert!(down
            .headers
            .get("x-should-retry")
            .is_none_or(|v| v != "false"));
    }
    // Refused before anything was sent upstream.
    assert_eq!(
        stats(&http, &sim).await["creates"].as_u64().unwrap(),
        creates
    );
    let ready = http.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"]["up"], false, "{ready}");
    let metrics = http.get(a.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("imagegate_database_up 0"), "{metrics}");
    services("pg-start");

    let mut up = post(&http, &a, KEY, body.clone(), &[]).await;
    for _ in 0..50 {
        if up.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        up = post(&http, &a, KEY, body.clone(), &[]).await;
    }
    assert_eq!(up.status, 200, "{}", up.body);
    // The task that ended while the database was away is booked once it is back.
    let done = job_until(&http, &a, &id, terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(ledger_rows(&db, &id).await, [(200, 30_000)]);
    let logs = a.term();
    assert!(!logs.contains("panicked"), "{logs}");
    let pool = PgPool::connect(&db).await.unwrap();
    let n: i64 = query("SELECT COUNT(*) FROM ledger WHERE status = 200")
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(n, 3);
    stop.cancel();
}

#[tokio::test]
async fn a_budget_is_exact_across_three_replicas() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config(&sim, &db, "30s");
    let replicas = replicas::<3>(&cfg);
    let http = reqwest::Client::new();
    let body = json!({"model": "sparkpix", "prompt": "a fox"});
    let answers = futures_util::future::join_all(
        (0..60).map(|i| post(&http, &replicas[i % 3], TEN, body.clone(), &[])),
    )
    .await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(served, 10);
    assert_eq!(refused.len(), 50);
    assert!(refused.iter().all(|a| a.code() == "insufficient_quota"));
    let pool = PgPool::connect(&db).await.unwrap();
    let spent: i64 =
        query("SELECT COALESCE(SUM(cost_micros), 0)::BIGINT FROM ledger WHERE key_id = 'ten'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
    assert_eq!(spent, 100_000);
    let (month_spent, holds): (i64, i64) = {
        let r = query(
            "SELECT month_spent, (SELECT COUNT(*) FROM holds) FROM spend WHERE payer = 'key:ten'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (r.try_get(0).unwrap(), r.try_get(1).unwrap())
    };
    assert_eq!((month_spent, holds), (100_000, 0));
    // Every replica shows the same spend.
    let me = http
        .get(replicas[2].url("/v1/me"))
        .bearer_auth(TEN)
        .send()
        .await
        .unwrap();
    let me = Env::read(me).await;
    assert_eq!(me.body["spend"]["month_spent_usd"], "0.1", "{}", me.body);
    terminate(replicas);
    stop.cancel();
}

#[tokio::test]
async fn each_webhook_is_sent_by_one_replica() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    // A slow endpoint: every replica polls the outbox while each delivery is on its way.
    let hook = receiver_slow(0, Duration::from_millis(800)).await;
    let cfg = config(&sim, &db, "30s");
    let replicas = replicas::<3>(&cfg);
    let http = reqwest::Client::new();
    let body = json!({"model": "sparkpix", "prompt": "a wren", "callback_url": hook.url});
    let answers = futures_util::future::join_all(
        (0..12).map(|i| post(&http, &replicas[i % 3], KEY, body.clone(), &[])),
    )
    .await;
    assert!(answers.iter().all(|a| a.status == 200));
    let ids: Vec<String> = answers
        .iter()
        .map(|a| a.headers["x-imagegate-job-id"].to_str().unwrap().to_owned())
        .collect();
    hook.until(12).await;
    // Every delivery recorded: no replica holds one it is still sending.
    for id in &ids {
        let delivered = |v: &Value| {
            v["webhooks"]
                .as_array()
                .is_some_and(|w| !w.is_empty() && w.iter().all(|d| d["state"] == "delivered"))
        };
        job_until(&http, &replicas[0], id, delivered).await;
    }
    let got = hook.got.lock().unwrap().clone();
    let mut unique: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        (got.len(), unique.len()),
        (12, 12),
        "deliveries: {:?}",
        got.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|r| verify(DEMO_WEBHOOK_SECRET, r)));
    terminate(replicas);
    stop.cancel();
}

#[tokio::test]
async fn a_held_sync_call_cut_by_a_replicas_death_is_an_unknown_outcome_booked_once() {
    let _held = hold_server(false);
    let Servers { stop, sim, db } = Servers::new().await;
    let cfg = config(&sim, &db, "2s");
    let [a, b] = replicas(&cfg);
    let http = reqwest::Client::new();
    // A synchronous gpt-image-2-all call: the platform holds the HTTP call while it works.
    let url = a.url("/v1/images/generations");
    let held = tokio::spawn(
        http.post(url)
            .bearer_auth(KEY)
            .json(&json!({"model": "gpt-image-2-all", "prompt": "a heron [sim:slow=5]"}))
            .send(),
    );
    for _ in 0..500 {
        if stats(&http, &sim).await["creates"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats(&http, &sim).await["creates"], 1);
    a.kill9();
    assert!(
        held.await.unwrap().is_err(),
        "the caller's connection was cut"
    );

    // B claims the job after A's lease: the platform may have made (and billed) the image.
    let list = http
        .get(b.url("/v1/images/jobs"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let list = Env::read(list).await;
    let id = list.body["data"][0]["id"].as_str().unwrap().to_owned();
    let done = job_until(&http, &b, &id, terminal).await;
    assert_eq!(done["status"], "unknown", "{done}");
    let rows = ledger_rows(&db, &id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].1 > 0, "booked at its reservation: {rows:?}");
    assert_eq!(stats(&http, &sim).await["creates"], 1);
    b.term();
    stop.cancel();
}
