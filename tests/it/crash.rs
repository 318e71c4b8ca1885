//! Crashes of the real binary: SIGKILL while a paid task runs, and (with the `failpoints`
//! feature) an abort at each point of a job's life. After a restart on the same data directory
//! every job ends in its documented state, the platform saw one create, and the ledger holds at
//! most one row per job.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use imagegate::demo::DEMO_WEBHOOK_SECRET;

use crate::passthrough::{text_upstream, TEXT_KEY};
use crate::support::{b64_image, is_png, Env, ADMIN_KEY, KEY, UPSTREAM_KEY};
use crate::webhooks::{receiver, verify};

const BIN: &str = env!("CARGO_BIN_EXE_imagegate");

/// `imagegate serve` on a data directory, its stderr kept.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) logs: Arc<Mutex<String>>,
    addr: String,
}

impl Proc {
    pub(crate) fn start(config: &Path, failpoint: Option<&str>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        match failpoint {
            Some(p) => cmd.env("IMAGEGATE_FAILPOINT", p),
            None => cmd.env_remove("IMAGEGATE_FAILPOINT"),
        };
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("imagegate listening") {
                    let addr: String = line
                        .split("addr=")
                        .nth(1)
                        .unwrap_or_default()
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no address: {}", logs.lock().unwrap()));
        Self { child, logs, addr }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A real SIGKILL.
    pub(crate) fn kill9(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success());
    }

    /// Waits for the process to die of its failpoint, off the test's runtime: a receiver or a
    /// simulator in this test may still owe the process an answer before it gets there.
    #[cfg(feature = "failpoints")]
    async fn wait_dead(mut self) {
        let (status, logs) = tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            let logs = self.logs.lock().unwrap().clone();
            (status, logs)
        })
        .await
        .unwrap();
        assert!(!status.success(), "{logs}");
    }

    pub(crate) fn term(mut self) -> String {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let logs = self.logs.lock().unwrap().clone();
        assert!(status.success(), "{status}: {logs}");
        logs
    }
}

/// A simulator in this process (time scale 0.002; `[sim:slow=N]` is unscaled).
pub(crate) async fn sim(stop: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(imagegate_sim::serve(
        imagegate_sim::SimConfig {
            api_key: UPSTREAM_KEY.to_owned(),
            public_base_url: None,
            time_scale: 0.002,
        },
        listener,
        stop.clone().cancelled_owned(),
    ));
    addr.to_string()
}

fn config(sim: &str, data: &Path) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://{sim}\"\napi_key = \"${{TEST_UPSTREAM_KEY}}\"\n\
         [results]\nallowed_hosts = [\"{sim}\"]\n[urls]\nallow_http = true\nallow_loopback = true\n\
         [data]\ndir = \"{}\"\n[admin]\nkey = \"{ADMIN_KEY}\"\n[jobs]\nwebhook_retry_base = \"100ms\"\n\
         [[keys]]\nid = \"t\"\nkey = \"{KEY}\"\nwebhook_secret = \"{DEMO_WEBHOOK_SECRET}\"\n\
         [models.gpt-image-2-beta]\nfirst_poll_delay = \"10ms\"\npoll_interval = \"1s\"\n",
        data.display()
    )
    .unwrap();
    f
}

pub(crate) async fn stats(http: &reqwest::Client, sim: &str) -> Value {
    http.get(format!("http://{sim}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The job's object, waiting (on its state) until `done` says it is where the test wants it.
pub(crate) async fn job_until(
    http: &reqwest::Client,
    p: &Proc,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..1500 {
        let res = http
            .get(p.url(&format!("/admin/jobs/{id}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never got there");
}

pub(crate) fn terminal(v: &Value) -> bool {
    ["completed", "failed", "unknown"].contains(&v["status"].as_str().unwrap_or(""))
}

/// [`config`] with a text upstream at `text` and a price for `gpt-5.5`.
fn config_with_text(sim: &str, data: &Path, text: &str) -> tempfile::NamedTempFile {
    let mut f = config(sim, data);
    write!(
        f,
        "[passthrough]\nbase_url = \"{text}\"\napi_key = \"{TEXT_KEY}\"\n\
         [passthrough.prices.\"gpt-5.5\"]\ninput_usd_per_1m = 1.25\noutput_usd_per_1m = 10.0\n"
    )
    .unwrap();
    f
}

/// The ledger rows of `job`: (status, cost in micro-dollars).
fn ledger_rows(data: &Path, job: &str) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open(data.join("imagegate.sqlite3")).unwrap();
    let mut stmt = conn
        .prepare("SELECT status, cost_micros FROM ledger WHERE job_id = ?1")
        .unwrap();
    stmt.query_map([job], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn sigkill_during_an_async_task_then_restart_completes_the_job_once() {
    let stop = CancellationToken::new();
    let sim = sim(&stop).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&sim, data.path());
    let http = reqwest::Client::new();

    let first = Proc::start(cfg.path(), None);
    let res = http
        .post(first.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .header("prefer", "respond-async")
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "a lighthouse [sim:slow=3]"}))
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    // The task id is committed: the platform has the work.
    job_until(&http, &first, &id, |v| v["status"] == "in_progress").await;
    first.kill9();

    // A second process on the same directory takes the job back and finishes it.
    let second = Proc::start(cfg.path(), None);
    let done = job_until(&http, &second, &id, terminal).await;
    assert_eq!(done["status"], "completed", "{done}");
    let res = http
        .get(second.url(&format!("/v1/images/jobs/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let job = Env::read(res).await;
    assert!(is_png(&b64_image(&job.body["result"], 0)), "{}", job.body);
    let logs = second.term();
    assert!(logs.contains("resuming a job"), "{logs}");
    assert_eq!(stats(&http, &sim).await["creates"], 1);
    assert_eq!(ledger_rows(data.path(), &id), [(200, 30_000)]);
    stop.cancel();
}

/// A large inline image that has no URL upstream (`[sim:inline]`: the job keeps the base64
/// itself, written into its row in place) outlives a SIGKILL: the retry with the same
/// `Idempotency-Key` on the next process gets the same bytes, replayed, and the platform saw one
/// create.
#[tokio::test]
async fn a_large_inline_image_is_replayed_after_a_sigkill() {
    let stop = CancellationToken::new();
    let sim = sim(&stop).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&sim, data.path());
    let http = reqwest::Client::new();
    let ask = |p: &Proc| {
        http.post(p.url("/v1/images/generations"))
            .bearer_auth(KEY)
            .header("idempotency-key", "big-1")
            .json(&json!({"model": "gpt-image-2-all", "size": "1024x1024", "prompt": "a harbour [sim:filebytes=150000] [sim:inline]"}))
            .send()
    };

    let first = Proc::start(cfg.path(), None);
    let a = Env::read(ask(&first).await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let made = a.body["data"][0]["b64_json"].as_str().unwrap().to_owned();
    assert!(made.len() > 128 * 1024, "{}", made.len());
    assert!(is_png(&b64_image(&a.body, 0)));
    first.kill9();

    let second = Proc::start(cfg.path(), None);
    let b = Env::read(ask(&second).await.unwrap()).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.headers["idempotent-replayed"], "true");
    assert_eq!(b.body["data"][0]["b64_json"].as_str().unwrap(), made);
    second.term();
    assert_eq!(stats(&http, &sim).await["creates"], 1);
    stop.cancel();
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let stop = CancellationToken::new();
    let sim = sim(&stop).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&sim, data.path());
    let first = Proc::start(cfg.path(), None);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg.path())
        .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = format!("pid {}", first.child.id());
    assert!(
        err.contains("in use by another imagegate process") && err.contains(&pid),
        "{err}"
    );
    first.term();
    stop.cancel();
}

/// Each crash point, one process per point: the request dies with the process, and the restart
/// ends the job in its documented state with one create and at most one ledger row.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn every_crash_point_ends_in_its_documented_state() {
    // (point, the job's state after the restart, its ledger row: (status, cost))
    let points = [
        // The create answered; nothing of the answer was recorded: unknown, booked.
        ("after_create_sent", "unknown", Some((502, 30_000))),
        // The task id was committed: followed to its end and booked at its price.
        ("after_task_id", "completed", Some((200, 30_000))),
        // Settled before the answer went out: nothing left to do.
        ("after_settle", "completed", Some((200, 30_000))),
    ];
    for (point, state, row) in points {
        let stop = CancellationToken::new();
        let sim = sim(&stop).await;
        let data = tempfile::tempdir().unwrap();
        let cfg = config(&sim, data.path());
        let http = reqwest::Client::new();
        let crashing = Proc::start(cfg.path(), Some(point));
        let sent = http
            .post(crashing.url("/v1/images/generations"))
            .bearer_auth(KEY)
            .json(&json!({"model": "gpt-image-2-beta", "prompt": "a fox [sim:slow=0.5]"}))
            .send()
            .await;
        assert!(sent.is_err(), "{point}: the process died mid-request");
        crashing.wait_dead().await;

        let again = Proc::start(cfg.path(), None);
        let list: Value = http
            .get(again.url("/admin/jobs"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = list["data"][0]["id"].as_str().unwrap().to_owned();
        let done = job_until(&http, &again, &id, terminal).await;
        assert_eq!(done["status"], state, "{point}: {done}");
        again.term();
        assert_eq!(stats(&http, &sim).await["creates"], 1, "{point}");
        let rows = ledger_rows(data.path(), &id);
        assert_eq!(rows, row.into_iter().collect::<Vec<_>>(), "{point}");
        stop.cancel();
    }
}

#[tokio::test]
async fn a_webhook_survives_a_restart_between_its_failed_attempts() {
    let stop = CancellationToken::new();
    let sim = sim(&stop).await;
    let hook = receiver(2).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&sim, data.path());
    let http = reqwest::Client::new();
    let first = Proc::start(cfg.path(), None);
    let res = http
        .post(first.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .json(&json!({"model": "sparkpix", "prompt": "a wren", "callback_url": hook.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    hook.until(1).await;
    first.kill9();
    // The outbox is in the store: the next process goes on with the same webhook.
    let second = Proc::start(cfg.path(), None);
    let got = hook.until(3).await;
    assert!(got.iter().all(|r| r.id == got[0].id), "{got:?}");
    assert!(got.iter().all(|r| verify(DEMO_WEBHOOK_SECRET, r)));
    second.term();
    stop.cancel();
}

/// At least once: a crash right after the receiver's 2xx (before it is recorded) sends the same
/// webhook again from the next process.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_crash_after_a_delivered_webhook_sends_it_again_with_the_same_id() {
    let stop = CancellationToken::new();
    let sim = sim(&stop).await;
    let hook = receiver(0).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&sim, data.path());
    let http = reqwest::Client::new();
    let crashing = Proc::start(cfg.path(), Some("after_webhook_delivered"));
    let _ = http
        .post(crashing.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .json(&json!({"model": "sparkpix", "prompt": "a wren", "callback_url": hook.url}))
        .send()
        .await;
    hook.until(1).await;
    crashing.wait_dead().await;
    let again = Proc::start(cfg.path(), None);
    let got = hook.until(2).await;
    assert_eq!(got[0].id, got[1].id);
    again.term();
    stop.cancel();
}

#[tokio::test]
async fn sigkill_during_a_text_stream_leaves_the_call_booked_at_its_reservation() {
    let stop = CancellationToken::new();
    let sim = sim(&stop).await;
    let (up, text) = text_upstream().await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config_with_text(&sim, data.path(), &text);
    let http = reqwest::Client::new();

    let first = Proc::start(cfg.path(), None);
    let res = http
        .post(first.url("/v1/responses"))
        .bearer_auth(KEY)
        .json(
            &json!({"model": "gpt-5.5", "stream": true, "input": "hi", "max_output_tokens": 1000}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    // The upstream is at work (its first event arrived): the gateway dies.
    futures_util::StreamExt::next(&mut body)
        .await
        .unwrap()
        .unwrap();
    let closed = up.closed.notified();
    first.kill9();
    closed.await;

    // Written before the call was sent: booked at the reservation (1,000 output tokens at $10/M
    // and the body's bytes / 4 at $1.25/M), outcome unknown.
    let conn = rusqlite::Connection::open(data.path().join("imagegate.sqlite3")).unwrap();
    let rows: Vec<(i64, String, i64)> = conn
        .prepare("SELECT status, error_code, cost_micros FROM ledger WHERE model = 'gpt-5.5'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (status, code, cost) = rows[0].clone();
    assert_eq!((status, code.as_str()), (502, "upstream_outcome_unknown"));
    assert!((10_000..10_100).contains(&cost), "{cost}");
    drop(conn);

    // The next process counts it against the key's spend.
    let second = Proc::start(cfg.path(), None);
    let spend: Value = http
        .get(second.url("/admin/spend"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = spend["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "t")
        .cloned()
        .unwrap();
    assert_eq!(
        key["spend"]["total_spent_usd"],
        imagegate::model::Usd(cost as u64).to_string(),
        "{key}"
    );
    second.term();
    stop.cancel();
}
