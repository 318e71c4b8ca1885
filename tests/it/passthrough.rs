//! The text pass-through (`/v1/responses`, `/v1/chat/completions` → `[passthrough]`), the
//! Codex image tool's turn id, and `/mcp`, against a scripted text upstream in the test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use imagegate::config::{Config, PassthroughConfig, TextPrice};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use crate::support::{start_with, with_admin, Env, KEY};

pub(crate) const TEXT_KEY: &str = "sk-text-upstream-5e1d";
const EVENT_1: &str = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n";
const EVENT_2: &str = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1000,\"output_tokens\":200}}}\n\n";

/// What the scripted upstream saw and the test's hold on it.
#[derive(Default)]
pub(crate) struct Upstream {
    /// (path, headers, body) of every call.
    pub(crate) calls: Mutex<Vec<(String, HeaderMap, Value)>>,
    /// Released by the test: the stream's second event goes out.
    pub(crate) release: Notify,
    /// Told when the client side of a held stream went away.
    pub(crate) closed: Notify,
}

async fn responses(
    State(up): State<Arc<Upstream>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let stream = body["stream"] == true;
    up.calls
        .lock()
        .unwrap()
        .push(("/v1/responses".into(), headers, body));
    if !stream {
        return Json(
            json!({"object": "response", "usage": {"input_tokens": 10, "output_tokens": 5}}),
        )
        .into_response();
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from_static(EVENT_1.as_bytes()))).await;
        tokio::select! {
            () = up.release.notified() => {
                let _ = tx.send(Ok(Bytes::from_static(EVENT_2.as_bytes()))).await;
            }
            () = tx.closed() => up.closed.notify_one(),
        }
    });
    let body = Body::from_stream(tokio_stream(rx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

async fn chat(
    State(up): State<Arc<Upstream>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    up.calls
        .lock()
        .unwrap()
        .push(("/v1/chat/completions".into(), headers, body));
    let events = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":2}}\n\n\
                  data: [DONE]\n\n";
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(events))
        .unwrap()
}

fn tokio_stream(
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// The scripted upstream on an ephemeral port, and its base URL (`…/v1`).
pub(crate) async fn text_upstream() -> (Arc<Upstream>, String) {
    let up = Arc::new(Upstream::default());
    let app = Router::new()
        .route("/v1/responses", post(responses))
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": [{"id": "gpt-5.5", "object": "model", "created": 1, "owned_by": "openai"}]})) }),
        )
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (up, format!("http://{addr}/v1"))
}

fn passthrough(base_url: &str) -> PassthroughConfig {
    PassthroughConfig {
        base_url: base_url.to_owned(),
        api_key: TEXT_KEY.to_owned(),
        timeout: Duration::from_secs(60),
        keepalive: Duration::from_millis(50),
        max_output_tokens: 4096,
        models_ttl: Duration::from_secs(60),
        prices: BTreeMap::from([(
            "gpt-5.5".to_owned(),
            TextPrice {
                input_usd_per_1m: 1.25,
                output_usd_per_1m: 10.0,
            },
        )]),
    }
}

async fn start(up_url: &str, tweak: impl FnOnce(&mut Config)) -> Env {
    let p = passthrough(up_url);
    start_with(move |c| {
        with_admin(c);
        c.passthrough = Some(p);
        tweak(c);
    })
    .await
}

/// The key's text usage from the admin report: (requests, input tokens, output tokens, cost).
async fn text_usage(env: &Env) -> (u64, u64, u64, String) {
    let a = env
        .admin(
            Method::GET,
            "/admin/usage?group_by=model&model=gpt-5.5",
            None,
        )
        .await;
    let row = &a.body["rows"][0];
    (
        row["requests"].as_u64().unwrap_or(0),
        row["input_tokens"].as_u64().unwrap_or(0),
        row["output_tokens"].as_u64().unwrap_or(0),
        row["cost_usd"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn a_stream_is_relayed_as_it_comes_with_keepalives_only_between_events() {
    let (up, url) = text_upstream().await;
    let env = start(&url, |_| {}).await;
    let res = env
        .post_raw("/v1/responses")
        .header("x-openai-actor-authorization", "imagegate")
        .header("x-codex-turn-metadata", "{}")
        .header("accept-encoding", "gzip")
        .header("openai-beta", "responses=v1")
        .json(&json!({"model": "gpt-5.5", "stream": true, "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.bytes_stream();
    let mut seen = Vec::new();
    // The first event arrives while the upstream holds the second: nothing is buffered.
    while !seen.ends_with(b": keepalive\n\n") {
        seen.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    assert!(
        seen.starts_with(EVENT_1.as_bytes()),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    up.release.notify_one();
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(seen).unwrap();
    assert_eq!(
        text.replace(": keepalive\n\n", ""),
        format!("{EVENT_1}{EVENT_2}")
    );

    let calls = up.calls.lock().unwrap().clone();
    let headers = &calls[0].1;
    assert_eq!(headers["authorization"], format!("Bearer {TEXT_KEY}"));
    assert_eq!(headers["openai-beta"], "responses=v1");
    for never in [
        "x-openai-actor-authorization",
        "x-codex-turn-metadata",
        "accept-encoding",
    ] {
        assert!(!headers.contains_key(never), "{never} reached the upstream");
    }
    // 1,000 × $1.25/M + 200 × $10/M.
    assert_eq!(text_usage(&env).await, (1, 1000, 200, "0.00325".into()));
}

#[tokio::test]
async fn a_client_that_leaves_drops_the_upstream_call_and_pays_its_reservation() {
    let (up, url) = text_upstream().await;
    let env = start(&url, |_| {}).await;
    let res = env
        .post_raw("/v1/responses")
        .json(&json!({"model": "gpt-5.5", "stream": true, "input": "hi", "max_output_tokens": 100}))
        .send()
        .await
        .unwrap();
    let closed = up.closed.notified();
    let mut body = res.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    closed.await;
    // No usage came: booked at what was reserved (its body's bytes / 4 and 100 output tokens).
    let (requests, input, output, cost) = text_usage(&env).await;
    assert_eq!((requests, input, output), (1, 0, 0));
    assert!(cost.parse::<f64>().unwrap() >= 0.001, "{cost}");
}

#[tokio::test]
async fn a_budgeted_key_may_use_only_priced_text_models() {
    let (up, url) = text_upstream().await;
    let env = start(&url, |c| c.keys[0].monthly_budget_usd = Some(5.0)).await;
    let a = env
        .post("/v1/responses", json!({"model": "gpt-4.1", "input": "hi"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (403, "model_not_priced"),
        "{}",
        a.body
    );
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("[passthrough.prices]"));
    assert!(
        up.calls.lock().unwrap().is_empty(),
        "nothing was sent upstream"
    );
    let a = env
        .post("/v1/responses", json!({"model": "gpt-5.5", "input": "hi"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(text_usage(&env).await, (1, 10, 5, "0.000063".into()));
}

#[tokio::test]
async fn a_streamed_chat_completion_asks_for_its_usage_and_books_it() {
    let (up, url) = text_upstream().await;
    let env = start(&url, |_| {}).await;
    let res = env
        .post_raw("/v1/chat/completions")
        .json(&json!({"model": "gpt-5.5", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let body = up.calls.lock().unwrap()[0].2.clone();
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(text_usage(&env).await, (1, 40, 2, "0.00007".into()));
}

#[tokio::test]
async fn models_list_the_text_upstreams_models_and_keys_may_name_them() {
    let (_up, url) = text_upstream().await;
    let env = start(&url, |c| {
        c.keys[0].models = Some(vec!["gpt-5.5".into(), "sparkpix".into()])
    })
    .await;
    let a = env.get("/v1/models").await;
    let ids: Vec<&str> = a.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"gpt-5.5") && ids.contains(&"sparkpix"),
        "{ids:?}"
    );
    let a = env
        .post("/v1/responses", json!({"model": "gpt-4.1", "input": "hi"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (403, "model_not_allowed"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn without_a_passthrough_section_the_text_routes_say_what_is_missing() {
    let env = start_with(|_| {}).await;
    for path in ["/v1/responses", "/v1/chat/completions"] {
        let a = env.post(path, json!({"model": "gpt-5.5"})).await;
        assert_eq!(
            (a.status, a.code()),
            (404, "passthrough_not_configured"),
            "{}",
            a.body
        );
        assert!(a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[passthrough]"));
    }
}

#[tokio::test]
async fn codex_retries_with_the_same_turn_id_join_one_job() {
    let env = start_with(|c| c.jobs.codex_retry_window = Duration::from_millis(1500)).await;
    let body = json!({"prompt": "a red square", "background": "opaque", "model": "sparkpix", "quality": "auto", "size": "auto"});
    let send = |body: Value, turn: &'static str| {
        env.post_raw("/v1/images/generations")
            .header("x-codex-image-turn-id", turn)
            .json(&body)
            .send()
    };
    let first = Env::read(send(body.clone(), "turn-1").await.unwrap()).await;
    let again = Env::read(send(body.clone(), "turn-1").await.unwrap()).await;
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(
        first.body["data"][0]["b64_json"],
        again.body["data"][0]["b64_json"]
    );
    assert!(first.body["created"].is_u64(), "{}", first.body);
    assert_eq!(env.creates().await, 1, "the retry joined the first job");
    // Past the window after the job ended, the same call is a new image the model asked for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.creates().await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no new image past the window"
        );
        let a = Env::read(send(body.clone(), "turn-1").await.unwrap()).await;
        assert_eq!(a.status, 200);
    }
    // Another call of the same turn (another prompt) is its own image.
    let other = json!({"prompt": "a blue circle", "model": "sparkpix"});
    let b = Env::read(send(other, "turn-1").await.unwrap()).await;
    assert_eq!(b.status, 200);
    assert_eq!(env.creates().await, 3);
    let gif = env
        .generate(json!({"prompt": "p", "model": "sparkpix", "output_format": "gif"}))
        .await;
    assert_eq!((gif.status, gif.param()), (400, "output_format"));
    assert!(gif.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not offered by any upstream model"));
}

#[tokio::test]
async fn mcp_over_http_needs_a_key_and_serves_the_image_tools() {
    let env = start_with(|_| {}).await;
    let rpc = |key: &'static str, body: Value| {
        env.http
            .post(format!("{}/mcp", env.gateway))
            .bearer_auth(key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let refused = rpc("sk-wrong-key-0000000000", json!({})).await.unwrap();
    assert_eq!(refused.status(), 401);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let a = rpc(KEY, init).await.unwrap();
    assert_eq!(a.status(), 200);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "generate_image", "arguments": {"prompt": "a kite", "model": "sparkpix"}}});
    let v: Value = rpc(KEY, call).await.unwrap().json().await.unwrap();
    let content = v["result"]["content"].as_array().unwrap();
    assert_eq!(content[0]["type"], "image", "{v}");
    assert_eq!(content[0]["mimeType"], "image/png");
    assert_eq!(v["result"]["structuredContent"]["model"], "sparkpix");
    assert_eq!(v["result"]["structuredContent"]["cost_usd"], "0.01");
    // The call went through the gateway's own route: one image, booked.
    assert_eq!(env.creates().await, 1);
    let path = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "edit_image", "arguments": {"prompt": "p", "images": ["/etc/passwd"]}}});
    let v: Value = rpc(KEY, path).await.unwrap().json().await.unwrap();
    assert_eq!(v["result"]["isError"], true, "{v}");
}

#[tokio::test]
async fn a_large_body_is_not_read_when_the_limits_refuse_it_anyway() {
    let (up, url) = text_upstream().await;
    let env = start(&url, |c| c.keys[0].requests_per_minute = Some(1)).await;
    let a = env
        .post("/v1/responses", json!({"model": "gpt-5.5", "input": "hi"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .post("/v1/responses", json!({"model": "gpt-5.5", "input": "hi"}))
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    // Known to be refused now: a body of unknown length (chunked, here empty) is answered by the
    // limits before it is read — read, it would be a 400 for not being JSON.
    let empty = futures_util::stream::empty::<Result<Bytes, std::io::Error>>();
    let res = env
        .post_raw("/v1/responses")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(empty))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(up.calls.lock().unwrap().len(), 1);
}
