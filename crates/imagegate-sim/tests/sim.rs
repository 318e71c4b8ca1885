//! Integration tests of the upstream simulator: every endpoint's shapes, validation, the task
//! lifecycle, result files, fault injection, callbacks and the control endpoints, driven over
//! HTTP against `imagegate_sim::serve` on an ephemeral port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use imagegate_sim::{serve, SimConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const KEY: &str = "sk-sim-test";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
const GEN: &str = "/api/v1/images/generations";
const SYNC: &str = "/api/v1/images/generations-sync";
const EDIT: &str = "/api/v1/images/edit";

struct Sim {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<std::io::Result<()>>,
}

async fn start(time_scale: f64) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let config = SimConfig {
        api_key: KEY.into(),
        public_base_url: None,
        time_scale,
    };
    let done = tokio::spawn(serve(config, listener, async move {
        let _ = rx.await;
    }));
    Sim {
        base,
        http: reqwest::Client::new(),
        stop: Some(tx),
        done,
    }
}

/// Status and body (JSON, or the raw text as a JSON string when it does not parse).
async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

impl Sim {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let req = self.http.post(format!("{}{path}", self.base));
        answer(req.bearer_auth(KEY).json(&body).send().await.unwrap()).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let req = self.http.get(format!("{}{path}", self.base));
        answer(req.bearer_auth(KEY).send().await.unwrap()).await
    }

    async fn poll(&self, id: &str) -> (u16, Value) {
        self.get(&format!("{GEN}?task_id={id}")).await
    }

    /// Polls until the task reaches `want`; returns the data and every state seen on the way.
    async fn wait_state(&self, id: &str, want: &str) -> (Value, Vec<String>) {
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..1000 {
            let (status, body) = self.poll(id).await;
            assert_eq!(status, 200, "{body}");
            let state = body["data"]["state"].as_str().unwrap().to_string();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if state == want {
                return (body["data"].clone(), seen);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} never reached {want}; saw {seen:?}");
    }

    async fn fetch(&self, url: &str) -> (u16, String, Bytes) {
        let resp = self.http.get(url).send().await.unwrap();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap());
        let (status, ct) = (resp.status().as_u16(), ct.unwrap_or_default().to_string());
        (status, ct, resp.bytes().await.unwrap())
    }

    /// Creates a task on the generations endpoint; returns its id.
    async fn task(&self, body: Value) -> String {
        let (status, v) = self.post(GEN, body).await;
        assert_eq!(status, 200, "{v}");
        s(&v, "/data/taskId")
    }

    /// Downloads a result and returns its pixel size (PNG or JPEG, by magic bytes).
    async fn dims(&self, url: &str) -> (u32, u32) {
        let (status, ct, b) = self.fetch(url).await;
        assert_eq!(status, 200);
        match ct.as_str() {
            "image/png" => png_dims(&b),
            "image/jpeg" => jpeg_dims(&b),
            other => panic!("unexpected content type {other}"),
        }
    }

    async fn control(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/_sim/{path}", self.base);
        let req = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        answer(req.send().await.unwrap()).await
    }

    async fn stats(&self) -> Value {
        self.control("stats", None).await.1
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = tokio::time::timeout(Duration::from_secs(10), self.done).await;
        done.unwrap().unwrap().unwrap();
    }
}

fn png_dims(b: &[u8]) -> (u32, u32) {
    assert!(b.starts_with(b"\x89PNG\r\n\x1a\n") && &b[12..16] == b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

fn jpeg_dims(b: &[u8]) -> (u32, u32) {
    assert!(b.starts_with(&[0xFF, 0xD8, 0xFF]));
    let mut i = 2;
    while i + 9 < b.len() {
        assert_eq!(b[i], 0xFF);
        let m = b[i + 1];
        if (0xC0..=0xCF).contains(&m) && ![0xC4, 0xC8, 0xCC].contains(&m) {
            let be = |j: usize| u32::from(u16::from_be_bytes([b[j], b[j + 1]]));
            return (be(i + 7), be(i + 5));
        }
        i += 2 + usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
    }
    panic!("no SOF marker");
}

/// The string at a JSON pointer.
fn s(v: &Value, ptr: &str) -> String {
    let found = v.pointer(ptr).and_then(Value::as_str);
    found.unwrap_or_else(|| panic!("no {ptr} in {v}")).into()
}

/// HTTP status, body `code` and `msg`.
fn scm(r: &(u16, Value)) -> (u16, i64, String) {
    (r.0, r.1["code"].as_i64().unwrap_or(-1), s(&r.1, "/msg"))
}

/// HTTP status and body `code`.
fn sc(r: &(u16, Value)) -> (u16, i64) {
    (r.0, r.1["code"].as_i64().unwrap_or(-1))
}

fn lite(prompt: &str) -> Value {
    json!({"model": "gpt-image-2-lite", "prompt": prompt})
}

#[tokio::test]
async fn lite_is_a_synchronous_task_envelope() {
    let sim = start(0.001).await;
    let body = json!({"model": "gpt-image-2-lite", "prompt": "an otter", "size": "1536x1024",
        "quality": "low", "output_format": "jpeg", "n": 2});
    let r = sim.post(GEN, body).await;
    assert_eq!(scm(&r), (200, 200, "success".into()));
    let data = &r.1["data"];
    assert_eq!(data["state"], "completed");
    assert!(data["createTime"].as_u64().unwrap() <= data["completeTime"].as_u64().unwrap());
    let urls = data["resultUrls"].as_array().unwrap();
    assert_eq!(urls.len(), 2);
    assert_eq!(sim.fetch(urls[0].as_str().unwrap()).await.1, "image/jpeg");
    assert_eq!(sim.dims(urls[1].as_str().unwrap()).await, (1536, 1024));
    let (status, polled) = sim.poll(&s(data, "/taskId")).await;
    assert_eq!(status, 200);
    let mut want = data.clone();
    want.as_object_mut().unwrap().retain(|k, _| k != "msg");
    assert_eq!(polled["data"], want);
    // Edit fields: one base64 reference, URLs, a PNG mask.
    let b64 = STANDARD.encode(PNG);
    let edit = json!({"model": "gpt-image-2-lite", "prompt": "winter", "image_base64": b64,
        "image_urls": ["https://example.com/a.jpg"], "mask_base64": b64});
    let (_, v) = sim.post(GEN, edit).await;
    assert_eq!(s(&v, "/data/state"), "completed");
    assert_eq!(sim.dims(&s(&v, "/data/resultUrls/0")).await, (1024, 1024));
    sim.stop().await;
}

#[tokio::test]
async fn auth_and_validation_errors() {
    let sim = start(0.001).await;
    let url = format!("{}{GEN}", sim.base);
    let body = lite("x");
    for req in [sim.http.post(&url), sim.http.post(&url).bearer_auth("nope")] {
        let r = answer(req.json(&body).send().await.unwrap()).await;
        assert_eq!(r, (401, json!({"code": 401, "msg": "Invalid API key"})));
    }
    let b64 = STANDARD.encode(PNG);
    let gif = STANDARD.encode(b"GIF89a...");
    let (all, lt, beta) = ("gpt-image-2-all", "gpt-image-2-lite", "gpt-image-2-beta");
    let bad = json!([
        [GEN, {"model": all, "prompt": "x", "size": "1000x1000"}],
        [GEN, {"model": all, "prompt": "x", "size": "4096x2304"}],
        [GEN, {"model": all, "prompt": "x", "size": "3840x1200"}],
        [GEN, {"model": all, "prompt": "x", "size": "512x512"}],
        [GEN, {"model": all, "prompt": "x", "size": "3840x3840"}],
        [GEN, {"model": lt, "prompt": "x", "size": "1024x100"}],
        [GEN, {"model": all, "prompt": "x"}],
        [GEN, {"model": all, "prompt": "x", "aspect_ratio": "4:1"}],
        [GEN, {"model": all, "prompt": "x", "aspect_ratio": "1:1", "resolution": "8K"}],
        [GEN, {"model": lt, "prompt": "x", "n": 11}],
        [GEN, {"model": lt, "prompt": "x", "image_base64": gif}],
        [GEN, {"model": lt, "prompt": "x", "mask_base64": b64}],
        [GEN, {"model": beta, "prompt": "x", "aspect_ratio": "5:4"}],
        [GEN, {"model": beta, "prompt": "x", "image_url": format!("data:image/png;base64,{b64}")}],
        [GEN, {"model": beta, "prompt": "x", "image_urls": vec!["https://e.com/a.png"; 17]}],
        [GEN, {"model": "dall-e-9", "prompt": "x"}],
        [GEN, {"prompt": "x"}],
        [GEN, {"model": lt, "prompt": "  "}],
        [SYNC, {"prompt": "x", "width": 1000}],
        [SYNC, {"prompt": "x", "height": 1600}],
        [SYNC, {"prompt": "x", "lora_weights": "https://civitai.com/x"}],
        [SYNC, {"prompt": "x", "lora_scale": 4}],
        [SYNC, {"prompt": "x", "aspect_ratio": "5:4"}],
        [EDIT, {"prompt": "x", "images": [b64]}],
        [EDIT, {"prompt": "x"}],
    ]);
    for case in bad.as_array().unwrap() {
        let r = sim.post(case[0].as_str().unwrap(), case[1].clone()).await;
        assert_eq!(sc(&r), (400, 400), "{case} -> {}", r.1);
        assert!(r.1["msg"].is_string());
    }
    let r = sim.poll("cl-nope").await;
    assert_eq!(r, (404, json!({"code": 404, "msg": "task not found"})));
    let ok = json!({"prompt": "x", "lora_weights": "https://huggingface.co/o/m/w.safetensors"});
    assert_eq!(sc(&sim.post(SYNC, ok).await), (200, 200));
    sim.stop().await;
}

#[tokio::test]
async fn all_sync_answers_openai_shape() {
    let sim = start(0.001).await;
    let body = json!({"model": "gpt-image-2-all", "prompt": "sneaker", "size": "1024x1536",
        "quality": "high", "n": 2, "response_format": "url"});
    let (status, v) = sim.post(GEN, body).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let items = v["data"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        let bytes = STANDARD.decode(s(item, "/b64_json")).unwrap();
        assert_eq!(png_dims(&bytes), (1024, 1536));
        let (status, ct, file) = sim.fetch(&s(item, "/url")).await;
        assert_eq!((status, ct), (200, "image/png".into()));
        assert_eq!(file, bytes);
    }
    sim.stop().await;
}

#[tokio::test]
async fn async_models_run_pending_processing_completed() {
    let sim = start(0.001).await;
    let body = json!({"model": "gpt-image-2-all", "prompt": "lighthouse [sim:slow=3]",
        "aspect_ratio": "16:9", "resolution": "2K"});
    let r = sim.post(GEN, body).await;
    assert_eq!(scm(&r), (200, 200, "success".into()));
    let v = r.1;
    assert!(v["data"].get("state").is_none(), "{v}");
    let (data, seen) = sim.wait_state(&s(&v, "/data/taskId"), "completed").await;
    assert_eq!(seen, ["pending", "processing", "completed"]);
    assert_eq!(sim.dims(&s(&data, "/resultUrls/0")).await, (2048, 1152));

    let body = json!({"model": "gpt-image-2-beta", "prompt": "poster", "aspect_ratio": "16:9",
        "image_urls": ["https://example.com/a.jpg"], "nsfw_checker": true});
    let (_, v) = sim.post(GEN, body).await;
    assert_eq!(s(&v, "/data/state"), "pending");
    let (data, _) = sim.wait_state(&s(&v, "/data/taskId"), "completed").await;
    assert_eq!(sim.dims(&s(&data, "/resultUrls/0")).await, (1536, 864));
    // gpt-image-2-all at 4K 1:1 stays inside the pixel limit.
    let body = json!({"model": "gpt-image-2-all", "prompt": "p", "aspect_ratio": "1:1",
        "resolution": "4K", "output_format": "jpeg"});
    let (data, _) = sim.wait_state(&sim.task(body).await, "completed").await;
    assert_eq!(sim.dims(&s(&data, "/resultUrls/0")).await, (2880, 2880));
    sim.stop().await;
}

#[tokio::test]
async fn edits_multipart() {
    use reqwest::multipart::{Form, Part};
    let sim = start(0.001).await;
    // A form from text parts and file parts (name, bytes).
    let form = |text: &[(&str, &str)], files: &[(&str, &[u8])]| {
        let f = text.iter().fold(Form::new(), |f, (k, v)| {
            f.text(k.to_string(), v.to_string())
        });
        let part = |b: &[u8]| Part::bytes(b.to_vec()).file_name("f.png");
        files
            .iter()
            .fold(f, |f, (k, b)| f.part(k.to_string(), part(b)))
    };
    let send = |form: Form| {
        let req = sim.http.post(format!("{}/api/v1/images/edits", sim.base));
        async move { answer(req.bearer_auth(KEY).multipart(form).send().await.unwrap()).await }
    };
    let text = [("model", "gpt-image-2-all"), ("prompt", "on a model")];
    let text = [
        &text[..],
        &[("size", "1536x1024"), ("quality", "low"), ("n", "2")],
    ]
    .concat();
    let files = [("image[]", PNG), ("image[]", PNG), ("mask", PNG)];
    let (status, v) = send(form(&text, &files)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let bytes = STANDARD.decode(s(&v, "/data/0/b64_json")).unwrap();
    assert_eq!(png_dims(&bytes), (1536, 1024));
    let text = [("prompt", "p"), ("response_format", "url")];
    let (status, v) = send(form(&text, &[("image", PNG)])).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["data"][0].get("b64_json").is_none() && v["data"][0]["url"].is_string());
    let p = ("prompt", "p");
    let bad = [
        form(&[p], &[("image", b"hello")]),
        form(&[p], &[]),
        form(&[p, ("size", "1000x1000")], &[("image", PNG)]),
        form(&[p, ("model", "dall-e-2")], &[("image", PNG)]),
        form(&[p], &[("image", PNG), ("mask", b"\xFF\xD8\xFF\xE0")]),
    ];
    for f in bad {
        assert_eq!(sc(&send(f).await), (400, 400));
    }
    let (_, log) = sim.control("requests", None).await;
    let parts = log[0]["multipart"].as_array().unwrap();
    let files = parts.iter().filter(|p| p["filename"].is_string());
    let kinds: Vec<&str> = files.map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["png", "png", "png"]);
    assert_eq!(log[0]["model"], "gpt-image-2-all");
    sim.stop().await;
}

#[tokio::test]
async fn sparkpix_url_is_string_or_array() {
    let sim = start(0.01).await;
    let body = json!({"prompt": "cat", "width": 512, "height": 768, "seed": 42});
    let r = sim.post(SYNC, body).await;
    assert_eq!(sc(&r), (200, 200), "{}", r.1);
    let data = &r.1["data"];
    assert_eq!(data["model"], "sparkpix-image");
    assert!(data["credits"].is_number() && data["duration"].is_number());
    assert_eq!(sim.fetch(&s(data, "/url")).await.1, "image/jpeg");
    assert_eq!(sim.dims(&s(data, "/url")).await, (512, 768));
    let body = json!({"prompt": "cat", "aspect_ratio": "16:9"});
    let (_, v) = sim.post(SYNC, body).await;
    assert_eq!(sim.dims(&s(&v, "/data/url")).await, (1360, 768));

    let one = json!({"prompt": "sunset", "images": ["https://example.com/p.jpg"]});
    let (_, v) = sim.post(EDIT, one).await;
    let data = &v["data"];
    assert_eq!(data["model"], "sparkpix-edit");
    assert!(data["url"].is_string() && data.get("resultUrls").is_none());
    let three = json!({"prompt": "image 1 in image 2", "aspect_ratio": "3:2",
        "images": ["https://e.com/1.jpg", "https://e.com/2.jpg", "https://e.com/3.jpg"]});
    let (_, v) = sim.post(EDIT, three).await;
    let (urls, data) = (v["data"]["url"].as_array().unwrap(), &v["data"]);
    assert_eq!((urls.len(), &data["resultUrls"]), (3, &data["url"]));
    assert_eq!(sim.dims(urls[2].as_str().unwrap()).await, (1248, 832));
    sim.stop().await;
}

#[tokio::test]
async fn outcome_directives() {
    let sim = start(0.001).await;
    let (status, v) = sim.post(GEN, lite("x [sim:policy]")).await;
    assert_eq!((status, s(&v, "/data/state")), (200, "failed".into()));
    assert_eq!(v["data"]["failMsg"], "Content policy violation");
    let all = json!({"model": "gpt-image-2-all", "prompt": "x [sim:policy]", "size": "1024x1024"});
    let r = sim.post(GEN, all).await;
    assert_eq!(sc(&r), (400, 400));
    assert!(s(&r.1, "/msg").starts_with("Content policy violation"));
    let r = sim.post(SYNC, json!({"prompt": "[sim:policy]"})).await;
    assert_eq!(sc(&r), (200, 400));
    assert!(s(&r.1, "/msg").to_lowercase().contains("content policy"));
    let policy = ("policy", "Content policy violation");
    for (d, msg) in [policy, ("fail", "Internal generation error")] {
        let body = json!({"model": "gpt-image-2-beta", "prompt": format!("x [sim:{d}]")});
        let (data, _) = sim.wait_state(&sim.task(body).await, "failed").await;
        assert_eq!(data["failMsg"], msg);
        let urls = data.get("resultUrls");
        assert!(urls.is_none_or(|u| u.is_null() || u == &json!([])));
    }
    let (status, v) = sim.post(GEN, lite("x [sim:fail]")).await;
    assert_eq!(status, 200);
    assert_eq!(s(&v, "/data/failMsg"), "Internal generation error");
    let http = [
        ("401", 401, 401),
        ("402", 402, 402),
        ("403", 403, 403),
        ("500", 500, 500),
    ];
    let code = [("code402", 200, 402), ("code500", 200, 500)];
    for (d, status, code) in [&http[..], &code[..]].concat() {
        for path in [GEN, SYNC, EDIT] {
            let r = sim.post(path, lite(&format!("[sim:{d}]"))).await;
            assert_eq!(sc(&r), (status, code), "{d} {path}");
        }
    }
    let r = sim.post(GEN, lite("[sim:code402]")).await;
    assert_eq!(r.1["msg"], "insufficient credits");
    let r = sim.post(GEN, lite("[sim:403]")).await;
    assert_eq!(r.1, json!({"code": 403, "msg": "forbidden"}));
    let (status, v) = sim.post(GEN, lite("[sim:malformed]")).await;
    assert!(status == 200 && v.is_string(), "{v}");
    // Stuck: an async task stays processing, a sync call never answers.
    let body = json!({"model": "gpt-image-2-beta", "prompt": "[sim:stuck]"});
    let id = sim.task(body).await;
    let (_, seen) = sim.wait_state(&id, "processing").await;
    assert!(seen.iter().all(|s| s == "pending" || s == "processing"));
    for _ in 0..5 {
        assert_eq!(s(&sim.poll(&id).await.1, "/data/state"), "processing");
    }
    let req = sim.http.post(format!("{}{GEN}", sim.base)).bearer_auth(KEY);
    let req = req.json(&lite("[sim:stuck]"));
    let req = req.timeout(Duration::from_millis(300));
    assert!(req.send().await.unwrap_err().is_timeout());
    sim.stop().await;
}

#[tokio::test]
async fn timing_and_file_directives() {
    let sim = start(0.001).await;
    let t = Instant::now();
    sim.post(GEN, lite("x [sim:slow=0.4]")).await;
    assert!(t.elapsed() >= Duration::from_millis(400));
    let v = sim.post(GEN, lite("x [sim:nofile]")).await.1;
    assert_eq!(v["data"]["state"], "completed");
    assert_eq!(sim.fetch(&s(&v, "/data/resultUrls/0")).await.0, 404);
    let v = sim.post(GEN, lite("x [sim:slowfile=0.4]")).await.1;
    let t = Instant::now();
    assert_eq!(sim.fetch(&s(&v, "/data/resultUrls/0")).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    let (_, v) = sim.post(GEN, lite("x [sim:pollfail=2]")).await;
    let id = s(&v, "/data/taskId");
    let mut polls = Vec::new();
    for _ in 0..3 {
        polls.push(sc(&sim.poll(&id).await));
    }
    assert_eq!(polls, [(500, 500), (500, 500), (200, 200)]);
    sim.stop().await;
}

#[tokio::test]
async fn fault_table_and_introspection() {
    let sim = start(0.001).await;
    let table = json!({"gpt-image-2-lite": {"rate": 1.0, "kind": "code402"},
        "*": {"rate": 1.0, "kind": "500"}});
    let r = sim.control("faults", Some(table.clone())).await;
    assert_eq!(r, (200, table.clone()));
    assert_eq!(sim.control("faults", None).await.1, table);
    let r = sim.post(GEN, lite("x")).await;
    assert_eq!(scm(&r), (200, 402, "insufficient credits".into()));
    let body = json!({"prompt": "x", "images": ["https://e.com/a"]});
    let r = sim.post(EDIT, body).await;
    assert_eq!(sc(&r), (500, 500));
    for t in [("x", 1.0, "fail"), ("*", 2.0, "fail"), ("*", 1.0, "boom")] {
        let t = json!({t.0: {"rate": t.1, "kind": t.2}});
        assert_eq!(sim.control("faults", Some(t)).await.0, 400);
    }
    let t = json!({"sparkpix-image": {"rate": 1.0, "kind": "nofile"}});
    sim.control("faults", Some(t)).await;
    let (_, v) = sim.post(SYNC, json!({"prompt": "x"})).await;
    assert_eq!(sim.fetch(&s(&v, "/data/url")).await.0, 404);
    assert_eq!(sim.control("reset", Some(json!({}))).await.0, 200);
    assert_eq!(sim.control("faults", None).await.1, json!({}));

    let big = STANDARD.encode([PNG, &[7u8; 600]].concat());
    let body = json!({"model": "gpt-image-2-lite", "prompt": "x", "image_base64": big});
    let id = sim.task(body).await;
    sim.poll(&id).await;
    sim.poll(&id).await;
    let unauth = sim.http.get(format!("{}{GEN}?task_id={id}", sim.base));
    assert_eq!(unauth.send().await.unwrap().status(), 401);
    let (_, log) = sim.control("requests", None).await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 4);
    let mut first = log[0].clone();
    let redacted = format!("<base64 {} bytes>", big.len());
    assert_eq!(first["json"]["image_base64"].take(), json!(redacted));
    let want = json!({"method": "POST", "path": GEN, "query": null, "model": "gpt-image-2-lite",
        "auth_ok": true, "multipart": null, "request_id": null,
        "json": {"model": "gpt-image-2-lite", "prompt": "x", "image_base64": null}});
    assert_eq!(first, want);
    assert_eq!(log[1]["query"], format!("task_id={id}"));
    let last = (&log[3]["auth_ok"], &log[3]["model"]);
    assert_eq!(last, (&json!(false), &first["model"]));
    let stats = sim.stats().await;
    let counts = ["requests", "creates", "polls"].map(|k| stats[k].as_u64().unwrap());
    assert_eq!(counts, [4, 1, 2]);
    assert_eq!(stats["polls_by_task"], json!({id.clone(): 2}));
    sim.stop().await;
}

type Got = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// A callback receiver answering 500 to its first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, Got) {
    use axum::http::StatusCode;
    let got: Got = Arc::default();
    let left = Arc::new(AtomicUsize::new(fail_first));
    let sink = got.clone();
    let hook = move |headers: HeaderMap, body: Bytes| async move {
        let v = serde_json::from_slice(&body).unwrap();
        sink.lock().unwrap().push((headers, v));
        let dec = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if dec.is_ok() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(hook));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// Retries `check` every 10 ms until it yields a value (at most 1,000 times).
async fn eventually<T>(mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never met");
}

async fn wait_for(got: &Got, n: usize) -> Vec<(HeaderMap, Value)> {
    eventually(async || Some(got.lock().unwrap().clone()).filter(|g| g.len() >= n)).await
}

#[tokio::test]
async fn callbacks_are_delivered_and_retried() {
    let sim = start(0.001).await;
    let (url, got) = receiver(2).await;
    let body = json!({"model": "gpt-image-2-beta", "prompt": "mug", "callback_url": url});
    let id = sim.task(body).await;
    let calls = wait_for(&got, 3).await;
    for (headers, body) in &calls {
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.keys().all(|k| !k.as_str().contains("signature")));
        assert_eq!(body, &calls[0].1);
    }
    let v = &calls[0].1;
    assert_eq!((&v["code"], s(v, "/msg")), (&json!(200), "success".into()));
    let d = &v["data"];
    let ids = ["/taskId", "/model", "/state"].map(|p| s(d, p));
    assert_eq!(ids, [&id, "openai/gpt-image-2-beta", "completed"]);
    let param: Value = serde_json::from_str(&s(d, "/param")).unwrap();
    assert_eq!(param["prompt"], "mug");
    let result: Value = serde_json::from_str(&s(d, "/resultJson")).unwrap();
    let (_, polled) = sim.poll(&id).await;
    assert_eq!(result["resultUrls"], polled["data"]["resultUrls"]);
    assert!(d["failCode"].is_null() && d["failMsg"].is_null());
    let [c, t, cost] = ["createTime", "completeTime", "costTime"].map(|k| d[k].as_u64().unwrap());
    assert_eq!(cost, t - c);
    let stats =
        eventually(async || Some(sim.stats().await).filter(|v| v["callbacks_delivered"] == 1));
    let stats = stats.await;
    let counts = ["callbacks_sent", "callbacks_delivered"].map(|k| stats[k].as_u64().unwrap());
    assert_eq!(counts, [3, 1]);

    // Failed tasks call back too; SparkPix spells the field callBackUrl; lite calls back as well.
    let (url, got) = receiver(0).await;
    // A WxH size with a callback_url is async mode (task envelope, not the OpenAI shape).
    let all = json!({"model": "gpt-image-2-all", "prompt": "[sim:fail]", "size": "1024x1024",
        "callback_url": url});
    sim.task(all).await;
    let spark = json!({"prompt": "cat", "callBackUrl": url});
    sim.post(SYNC, spark).await;
    let lite = json!({"model": "gpt-image-2-lite", "prompt": "cat", "callback_url": url});
    sim.post(GEN, lite).await;
    let calls = wait_for(&got, 3).await;
    let by_model = |m: &str| {
        let found = calls.iter().map(|c| &c.1["data"]).find(|d| d["model"] == m);
        found.unwrap().clone()
    };
    let failed = by_model("openai/gpt-image-2-all");
    let fields = ["/state", "/failMsg", "/failCode"].map(|p| s(&failed, p));
    assert_eq!(fields, ["failed", "Internal generation error", "500"]);
    assert!(failed["resultJson"].is_null() || failed["resultJson"] == "{\"resultUrls\":[]}");
    assert_eq!(by_model("sparkpix/sparkpix-image")["state"], "completed");
    assert_eq!(by_model("openai/gpt-image-2-lite")["state"], "completed");
    sim.stop().await;
}

#[tokio::test]
async fn shutdown_releases_held_requests() {
    let sim = start(1.0).await;
    let req = sim.http.post(format!("{}{GEN}", sim.base)).bearer_auth(KEY);
    let held = tokio::spawn(req.json(&lite("[sim:stuck]")).send());
    let (url, _got) = receiver(usize::MAX).await;
    let body = json!({"model": "gpt-image-2-beta", "prompt": "[sim:slow=0]", "callback_url": url});
    sim.post(GEN, body).await;
    eventually(async || Some(sim.stats().await).filter(|v| v["creates"] == 2)).await;
    sim.stop().await;
    let resp = tokio::time::timeout(Duration::from_secs(5), held).await;
    let resp = resp.unwrap().unwrap();
    assert!(resp.is_err() || resp.unwrap().status() == 503);
}
