//! Faults on an accepted create (`[sim:reset]`, `[sim:truncate]`, `[sim:stallcreate=SECS]`),
//! `[sim:nofile=N]`, and the billing the stats report, over HTTP against `imagegate_sim::serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use std::time::{Duration, Instant};

use imagegate_sim::{serve, SimConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const KEY: &str = "sk-sim-delivery";
const GEN: &str = "/api/v1/images/generations";
const SYNC: &str = "/api/v1/images/generations-sync";
const EDIT: &str = "/api/v1/images/edit";
const EDITS: &str = "/api/v1/images/edits";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";

struct Sim {
    addr: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let config = SimConfig {
        api_key: KEY.into(),
        public_base_url: None,
        time_scale: 0.001,
    };
    let done = tokio::spawn(serve(config, listener, async move {
        let _ = rx.await;
    }));
    Sim {
        addr,
        http: reqwest::Client::new(),
        stop: Some(tx),
        done,
    }
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn create(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(KEY).json(body)
    }

    /// A create that must answer 200; its JSON body.
    async fn ok(&self, path: &str, body: Value) -> Value {
        let resp = self.create(path, &body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let req = self.http.get(self.url(path)).bearer_auth(KEY);
        req.send().await.unwrap().json().await.unwrap()
    }

    async fn stats(&self) -> Value {
        self.get("/_sim/stats").await
    }

    /// Polls a task until it is `completed`; its data.
    async fn completed(&self, id: &str) -> Value {
        for _ in 0..500 {
            let v = self.get(&format!("{GEN}?task_id={id}")).await;
            assert_eq!(v["code"], 200, "{v}");
            if v["data"]["state"] == "completed" {
                return v["data"].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} never completed");
    }

    async fn download(&self, url: &str) -> u16 {
        self.http.get(url).send().await.unwrap().status().as_u16()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = tokio::time::timeout(Duration::from_secs(10), self.done).await;
        done.unwrap().unwrap().unwrap();
    }

    /// Sends `body` to `path` over a raw connection; everything received until the server
    /// closed it (or reset it: `Err`).
    async fn raw(&self, path: &str, body: &Value) -> Result<Vec<u8>, std::io::Error> {
        let mut conn = TcpStream::connect(&self.addr).await.unwrap();
        let body = body.to_string();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: sim\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(body.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got));
        read.await.unwrap().map(|_| got)
    }
}

/// The stats' `task_ids`.
fn task_ids(stats: &Value) -> Vec<String> {
    let ids = stats["task_ids"].as_array().unwrap();
    ids.iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The kind of the I/O error at the root of `err`, if any.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[tokio::test]
async fn reset_drops_the_connection_after_accepting_the_task() {
    let sim = start().await;
    // Async: the task exists, runs to completion and is billed; the client gets no answer.
    let beta = json!({"model": "gpt-image-2-beta", "prompt": "x [sim:reset] [sim:slow=0]"});
    let err = sim.create(GEN, &beta).send().await.unwrap_err();
    assert!(err.is_request() && err.status().is_none(), "{err:?}");
    assert_eq!(
        io_kind(&err),
        Some(std::io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    let stats = sim.stats().await;
    assert_eq!((u(&stats, "requests"), u(&stats, "creates")), (1, 1));
    let ids = task_ids(&stats);
    assert_eq!(ids.len(), 1);
    let data = sim.completed(&ids[0]).await;
    assert_eq!(data["resultUrls"].as_array().unwrap().len(), 1);
    // Sync: the generation is done (and billed) before the connection is dropped.
    let lite = json!({"model": "gpt-image-2-lite", "prompt": "x [sim:reset]"});
    assert!(sim.create(GEN, &lite).send().await.is_err());
    let spark = json!({"prompt": "x [sim:reset]"});
    assert!(sim.create(SYNC, &spark).send().await.is_err());
    let stats = sim.stats().await;
    assert_eq!(u(&stats, "creates"), 3);
    let ids = task_ids(&stats);
    assert_eq!(ids.len(), 3);
    assert_eq!(sim.completed(&ids[1]).await["state"], "completed");
    let billed = json!({"gpt-image-2-beta": 30_000, "gpt-image-2-lite": 40_000,
        "sparkpix-image": 10_000});
    assert_eq!(sim.stats().await["billed_by_model"], billed);
    // Not one byte of the answer: the raw connection is reset (or closed) with nothing read.
    match sim.raw(GEN, &lite).await {
        Ok(got) => assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The same client keeps working on a new connection.
    let plain = json!({"model": "gpt-image-2-lite", "prompt": "x"});
    assert_eq!(sim.ok(GEN, plain).await["data"]["state"], "completed");
    // The fault table takes it too; a rejected request creates no task and is answered.
    let table = json!({"sparkpix-image": {"rate": 1.0, "kind": "reset"}});
    let set = sim.http.post(sim.url("/_sim/faults")).json(&table);
    assert_eq!(set.send().await.unwrap().status(), 200);
    assert!(sim
        .create(SYNC, &json!({"prompt": "y"}))
        .send()
        .await
        .is_err());
    let bad = sim
        .create(SYNC, &json!({"prompt": "y", "seed": "x"}))
        .send();
    assert_eq!(bad.await.unwrap().status(), 400);
    sim.stop().await;
}

#[tokio::test]
async fn truncate_cuts_the_body_of_an_accepted_create() {
    let sim = start().await;
    let lite = json!({"model": "gpt-image-2-lite", "prompt": "x [sim:truncate]"});
    let resp = sim.create(GEN, &lite).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.content_length().unwrap() > 50);
    let err = resp.bytes().await.unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    // Async mode of gpt-image-2-all: the task exists and completes.
    let all = json!({"model": "gpt-image-2-all", "prompt": "x [sim:truncate]",
        "aspect_ratio": "1:1", "resolution": "4K", "quality": "high"});
    let resp = sim.create(GEN, &all).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.is_err());
    let ids = task_ids(&sim.stats().await);
    assert_eq!(ids.len(), 2);
    sim.completed(&ids[1]).await;
    // On the wire: a full head, a Content-Length larger than the half body sent, then the end.
    let got = sim.raw(GEN, &lite).await.unwrap_or_default();
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "));
    let len: usize = len.unwrap().parse().unwrap();
    assert_eq!(body.len(), len / 2, "{body}");
    assert!(body.starts_with("{\"code\":200"), "{body}");
    assert!(serde_json::from_str::<Value>(body).is_err());
    let stats = sim.stats().await;
    assert_eq!(u(&stats, "tasks_billed"), 3);
    assert_eq!(u(&stats, "billed_micros"), 2 * 40_000 + 230_000);
    sim.stop().await;
}

#[tokio::test]
async fn stallcreate_holds_the_answer_of_a_created_task() {
    let sim = start().await;
    let beta = json!({"model": "gpt-image-2-beta", "prompt": "x [sim:stallcreate=0.6]"});
    let t = Instant::now();
    let held = tokio::spawn(sim.create(GEN, &beta).send());
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids = task_ids(&sim.stats().await);
        if !ids.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ids.len(), 1);
    assert!(!held.is_finished());
    sim.completed(&ids[0]).await;
    let resp = held.await.unwrap().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(600));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"]["taskId"], ids[0].as_str());
    // Sync answers are held after the generation; reset then acts after the stall.
    let lite =
        json!({"model": "gpt-image-2-lite", "prompt": "x [sim:stallcreate=0.3] [sim:reset]"});
    let t = Instant::now();
    assert!(sim.create(GEN, &lite).send().await.is_err());
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Shutdown releases a long stall at once.
    let long = json!({"model": "gpt-image-2-lite", "prompt": "x [sim:stallcreate=600]"});
    let held = tokio::spawn(sim.create(GEN, &long).send());
    while task_ids(&sim.stats().await).len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    sim.stop().await;
    let resp = tokio::time::timeout(Duration::from_secs(5), held).await;
    let resp = resp.unwrap().unwrap();
    assert!(resp.is_err() || resp.unwrap().status() == 503);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn nofile_n_misses_the_first_downloads_only() {
    let sim = start().await;
    let lite = json!({"model": "gpt-image-2-lite", "prompt": "x [sim:nofile=2]", "n": 2});
    let v = sim.ok(GEN, lite).await;
    let urls = v["data"]["resultUrls"].as_array().unwrap();
    for url in urls {
        let url = url.as_str().unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(sim.download(url).await);
        }
        assert_eq!(got, [404, 404, 200, 200]);
    }
    let v = sim
        .ok(
            GEN,
            json!({"model": "gpt-image-2-lite", "prompt": "x [sim:nofile]"}),
        )
        .await;
    let url = v["data"]["resultUrls"][0].as_str().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(sim.download(&url).await, 404);
    }
    let stats = sim.stats().await;
    assert_eq!(
        (u(&stats, "tasks_billed"), u(&stats, "billed_micros")),
        (2, 120_000)
    );
    sim.stop().await;
}

#[tokio::test]
async fn stats_bill_successes_at_the_platform_prices() {
    let sim = start().await;
    let all = |extra: Value| {
        let mut body = json!({"model": "gpt-image-2-all", "prompt": "x"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // gpt-image-2-all sync: 2K high, two images.
    sim.ok(
        GEN,
        all(json!({"size": "2048x2048", "quality": "high", "n": 2})),
    )
    .await;
    // gpt-image-2-all async: 4K 1:1 is 2880x2880, low.
    let v = sim.ok(
        GEN,
        all(json!({"aspect_ratio": "1:1", "resolution": "4K", "quality": "low"})),
    );
    let id = v.await["data"]["taskId"].as_str().unwrap().to_string();
    sim.completed(&id).await;
    // gpt-image-2-all on /images/edits: 1K, auto billed as medium.
    let form = reqwest::multipart::Form::new()
        .text("prompt", "x")
        .text("quality", "auto")
        .part(
            "image",
            reqwest::multipart::Part::bytes(PNG).file_name("a.png"),
        );
    let edits = sim
        .http
        .post(sim.url(EDITS))
        .bearer_auth(KEY)
        .multipart(form);
    assert_eq!(edits.send().await.unwrap().status(), 200);
    // SparkPix Edit with two references makes two images.
    let refs = json!({"prompt": "x", "images": ["https://e.com/a", "https://e.com/b"]});
    sim.ok(EDIT, refs).await;
    // Failures and rejected requests are not billed.
    sim.ok(
        GEN,
        json!({"model": "gpt-image-2-lite", "prompt": "x [sim:policy]"}),
    )
    .await;
    let failed = json!({"model": "gpt-image-2-beta", "prompt": "x [sim:fail]"});
    let id = sim.ok(GEN, failed).await["data"]["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = sim.create(
        GEN,
        &json!({"model": "gpt-image-2-lite", "prompt": "[sim:500]"}),
    );
    assert_eq!(resp.send().await.unwrap().status(), 500);
    for _ in 0..500 {
        let v = sim.get(&format!("{GEN}?task_id={id}")).await;
        if v["data"]["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sim.stats().await;
    let by_model = json!({"gpt-image-2-all": 200_000 + 15_000 + 25_000, "sparkpix-edit": 26_000});
    assert_eq!(stats["billed_by_model"], by_model);
    assert_eq!(u(&stats, "billed_micros"), 266_000);
    assert_eq!(u(&stats, "tasks_billed"), 4);
    assert_eq!(task_ids(&stats).len(), 6);
    // The reset endpoint clears billing with the other counters.
    let reset = sim.http.post(sim.url("/_sim/reset")).json(&json!({}));
    assert_eq!(reset.send().await.unwrap().status(), 200);
    let stats = sim.stats().await;
    assert_eq!(
        (u(&stats, "billed_micros"), stats["task_ids"].clone()),
        (0, json!([]))
    );
    sim.stop().await;
}
