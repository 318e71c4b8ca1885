//! The simulator's benchmark knobs over HTTP: `[sim:filebytes=N]` sizes the result files of the
//! OpenAI-shaped sync answer and of async tasks, and `[sim:slow=SECS]` with `--time-scale 0`
//! keeps answers immediate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test that cannot set itself up should fail loudly"
)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use imagegate_sim::{serve, SimConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const KEY: &str = "sk-sim-bench";
const GEN: &str = "/api/v1/images/generations";

async fn start() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = SimConfig {
        api_key: KEY.into(),
        public_base_url: None,
        time_scale: 0.0,
    };
    tokio::spawn(serve(config, listener, std::future::pending()));
    base
}

async fn post(base: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{base}{GEN}"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn png_dims(b: &[u8]) -> (u32, u32) {
    assert!(b.starts_with(b"\x89PNG\r\n\x1a\n"));
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test]
async fn filebytes_sizes_sync_answers() {
    let base = start().await;
    for (n, size) in [(768usize, "1024x1024"), (1_572_864, "2048x2048")] {
        let answer = post(
            &base,
            json!({"model": "gpt-image-2-all", "size": size,
                   "prompt": format!("bench [sim:filebytes={n}]")}),
        )
        .await;
        let item = &answer["data"][0];
        let b64 = item["b64_json"].as_str().unwrap();
        assert_eq!(b64.len(), n.div_ceil(3) * 4);
        let bytes = STANDARD.decode(b64).unwrap();
        assert_eq!(bytes.len(), n);
        let (w, h) = size.split_once('x').unwrap();
        assert_eq!(png_dims(&bytes), (w.parse().unwrap(), h.parse().unwrap()));
        // The result URL serves the same file.
        let file = reqwest::get(item["url"].as_str().unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(file, bytes);
    }
}

#[tokio::test]
async fn filebytes_sizes_async_task_results() {
    let base = start().await;
    let created = post(
        &base,
        json!({"model": "gpt-image-2-beta", "prompt": "bench [sim:slow=0] [sim:filebytes=40000]"}),
    )
    .await;
    let id = created["data"]["taskId"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let mut data = Value::Null;
    for _ in 0..200 {
        data = client
            .get(format!("{base}{GEN}?task_id={id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["data"]
            .take();
        if data["state"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(data["state"], "completed", "{data}");
    let url = data["resultUrls"][0].as_str().unwrap();
    let file = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(file.len(), 40_000);
    assert!(file.ends_with(b"IEND\xaeB`\x82"));
}
