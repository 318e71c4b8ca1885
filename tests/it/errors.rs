//! Bad input and auth: OpenAI-shaped errors with the right status, before any upstream call.

use serde_json::{json, Value};

use crate::support::{start, start_with, Answer, Env};

async fn assert_refused(env: &Env, body: Value, status: u16, param: &str) -> Answer {
    let a = env.generate(body.clone()).await;
    assert_eq!(a.status, status, "{body} → {}", a.body);
    assert_eq!(a.param(), param, "{body} → {}", a.body);
    let e = &a.body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty())
            && e["type"].is_string()
            && e["code"].is_string()
    );
    a
}

#[tokio::test]
async fn bad_generation_input_is_refused_before_any_upstream_call() {
    let env = start().await;
    let cases = [
        (json!({"model": "gpt-image-2-all"}), 400, "prompt"),
        (
            json!({"model": "gpt-image-2-all", "prompt": ""}),
            400,
            "prompt",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": 5}),
            400,
            "prompt",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "n": 11}),
            400,
            "n",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "n": 0}),
            400,
            "n",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "quality": "ultra"}),
            400,
            "quality",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "size": "huge"}),
            400,
            "size",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "size": "1000x1000"}),
            400,
            "size",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "size": "4096x4096"}),
            400,
            "size",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "size": "3072x768"}),
            400,
            "size",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "size": "512x512"}),
            400,
            "size",
        ),
        (
            json!({"model": "gpt-image-2-lite", "prompt": "p", "size": "1000x1000"}),
            400,
            "size",
        ),
        (
            json!({"model": "sparkpix", "prompt": "p", "size": "3840x2160"}),
            400,
            "size",
        ),
        (
            json!({"model": "sparkpix", "prompt": "p", "size": "1000x1000"}),
            400,
            "size",
        ),
        (
            json!({"model": "sparkpix", "prompt": "p", "lora_scale": 9}),
            400,
            "lora_scale",
        ),
        (
            json!({"model": "gpt-image-2-beta", "prompt": "p", "aspect_ratio": "5:1"}),
            400,
            "aspect_ratio",
        ),
        (
            json!({"model": "gpt-image-2-beta", "prompt": "p", "background": "transparent"}),
            400,
            "background",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "aspect_ratio": "1:1", "resolution": "8K"}),
            400,
            "resolution",
        ),
        (
            json!({"model": "gpt-image-2-all", "prompt": "p", "response_format": "gif"}),
            400,
            "response_format",
        ),
        (json!({"model": "dall-e-9", "prompt": "p"}), 404, "model"),
    ];
    for (body, status, param) in cases {
        assert_refused(&env, body, status, param).await;
    }
    assert!(
        env.upstream_requests().await.is_empty(),
        "no upstream call for bad input"
    );
}

#[tokio::test]
async fn broken_json_and_oversize_bodies() {
    let env = start_with(|c| c.server.max_body_bytes = 4096).await;
    let res = env
        .post_raw("/v1/images/generations")
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!((a.status, a.code()), (400, "invalid_body"), "{}", a.body);

    let a = env.generate(json!({"prompt": "x".repeat(10_000)})).await;
    assert_eq!(
        (a.status, a.code()),
        (413, "request_too_large"),
        "{}",
        a.body
    );

    let form = reqwest::multipart::Form::new().text("prompt", "p").part(
        "image",
        reqwest::multipart::Part::bytes(big_file()).file_name("a.png"),
    );
    let a = env.post_form(form).await;
    assert_eq!(
        (a.status, a.code()),
        (413, "request_too_large"),
        "{}",
        a.body
    );
    assert!(env.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn auth_is_required_everywhere() {
    let env = start().await;
    for (method, path) in [
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/images/edits"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt-image-2-all"),
        ("GET", "/models"),
        ("GET", "/v1/nothing-here"),
    ] {
        for auth in [None, Some("Bearer sk-wrong-key"), Some("Basic abc")] {
            let mut rb = env
                .http
                .request(method.parse().unwrap(), format!("{}{path}", env.gateway));
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let a = Env::read(rb.send().await.unwrap()).await;
            assert_eq!(a.status, 401, "{method} {path} {auth:?}");
            assert_eq!(a.code(), "invalid_api_key");
            assert!(a.headers.contains_key("x-request-id"));
        }
    }
    let res = env
        .http
        .get(format!("{}/healthz", env.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(env.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn hashed_client_keys_work() {
    let digest = hex::encode(imagegate::auth::digest("sk-hashed-client-key"));
    let env = start_with(|c| {
        c.keys.push(imagegate::config::KeySpec {
            id: "h".to_owned(),
            key_sha256: Some(digest),
            ..Default::default()
        });
    })
    .await;
    let res = env
        .http
        .get(format!("{}/v1/models", env.gateway))
        .bearer_auth("sk-hashed-client-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn request_id_is_kept_and_forwarded() {
    let env = start().await;
    let res = env
        .post_raw("/v1/images/generations")
        .header("x-request-id", "req-from-caller-1")
        .json(&json!({"model": "sparkpix", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-from-caller-1");
    let a = env.generate(json!({"model": "sparkpix"})).await;
    assert!(
        !a.headers["x-request-id"].is_empty(),
        "generated when absent, errors included"
    );
}

/// A PNG header followed by 10 KB of incompressible-looking bytes.
fn big_file() -> Vec<u8> {
    let mut v = crate::support::png(8, 8);
    v.extend((0..10_000u32).map(|i| (i.wrapping_mul(7919) % 251) as u8));
    v
}

/// An id in a route that is not UTF-8 once decoded is a 400 in the OpenAI shape, naming `id`.
#[tokio::test]
async fn an_unreadable_path_id_is_an_openai_shaped_400() {
    let env = start().await;
    for path in ["/v1/images/jobs/%E5", "/v1/models/%FF%FE"] {
        let a = env.get(path).await;
        assert_eq!((a.status, a.param()), (400, "id"), "{path}: {}", a.body);
        assert_eq!(
            a.body["error"]["type"], "invalid_request_error",
            "{}",
            a.body
        );
    }
}
