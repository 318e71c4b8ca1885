//! The edge holds: load shedding past the in-flight limit, authorization before health,
//! multipart and content-type limits, the admin key.

use serde_json::json;

use crate::support::{png_part, start_with, with_admin, Env, ADMIN_KEY};

#[tokio::test]
async fn past_the_in_flight_limit_requests_are_shed_and_service_recovers() {
    let env = start_with(|c| c.server.max_in_flight = 2).await;
    let slow = |i: usize| {
        let rb = env.post_raw("/v1/images/generations").json(
            &json!({"model": "sparkpix", "prompt": format!("hold {i} [sim:slow=3]"), "response_format": "url"}),
        );
        async move { Env::read(rb.send().await.unwrap()).await }
    };
    let held = tokio::spawn(futures_util::future::join_all([slow(1), slow(2)]));
    env.until_upstream_has(2).await;

    let shed = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert_eq!(shed.code(), "server_overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(
        env.upstream_requests().await.len(),
        2,
        "shed before any upstream call"
    );
    // The probes still answer.
    assert_eq!(env.get("/healthz").await.status, 200);
    assert_eq!(env.get("/metrics").await.status, 200);

    for a in held.await.unwrap() {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let again = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let metrics = env.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("imagegate_errors_total{fault=\"gateway_overloaded\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_that_may_not_use_a_model_is_refused_before_its_health_is_told() {
    // The model is disabled by health (its circuit opens on the first failure); the key may not
    // use it at all: it must hear 403, not the model's health.
    let env = start_with(|c| {
        c.routing.circuit.enabled = true;
        c.routing.circuit.consecutive_failures = 1;
        c.keys[0].models = Some(vec!["sparkpix".to_owned()]);
        c.keys.push(imagegate::config::KeySpec {
            id: "open".to_owned(),
            key: Some("sk-open-key-12345".to_owned()),
            ..Default::default()
        });
    })
    .await;
    let a = env
        .generate_as(
            "sk-open-key-12345",
            json!({"model": "gpt-image-2-lite", "prompt": "x [sim:500]"}),
        )
        .await;
    assert_eq!(a.status, 502, "{}", a.body);
    let open = env
        .generate_as(
            "sk-open-key-12345",
            json!({"model": "gpt-image-2-lite", "prompt": "x"}),
        )
        .await;
    assert_eq!(open.status, 503, "the circuit is open: {}", open.code());
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "x"}))
        .await;
    assert_eq!((a.status, a.code()), (403, "model_not_allowed"));
}

#[tokio::test]
async fn generations_take_json_only() {
    let env = start_with(|_| {}).await;
    let res = env
        .post_raw("/v1/images/generations")
        .header("content-type", "text/plain")
        .body(r#"{"prompt": "p", "model": "sparkpix"}"#)
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 415, "{}", a.body);
    assert_eq!(a.code(), "unsupported_media_type");
    assert!(env.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn multipart_text_must_be_utf8_and_parts_are_capped() {
    let env = start_with(|_| {}).await;
    let bad = reqwest::multipart::Form::new()
        .text("model", "gpt-image-2-all")
        .part(
            "prompt",
            reqwest::multipart::Part::bytes(vec![0x66, 0xff, 0xfe, 0x6f]),
        )
        .part("image", png_part("a.png"));
    let a = env.post_form(bad).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.param(), "prompt");

    let mut many = reqwest::multipart::Form::new()
        .text("model", "gpt-image-2-all")
        .text("prompt", "p")
        .part("image", png_part("a.png"));
    for i in 0..5000 {
        many = many.text(format!("x{i}"), "1");
    }
    let a = env.post_form(many).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parts"),
        "{}",
        a.body
    );

    // A field the gateway does not use is still not read past the cap.
    let long = reqwest::multipart::Form::new()
        .text("model", "gpt-image-2-all")
        .text("prompt", "p")
        .text("user", "u".repeat(300_000))
        .part("image", png_part("a.png"));
    let a = env.post_form(long).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.param(), "user");
    assert!(env.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn the_admin_key_is_checked_in_full() {
    let env = start_with(with_admin).await;
    let status = |key: String| {
        let rb = env
            .http
            .get(format!("{}/admin/keys", env.gateway))
            .bearer_auth(key);
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(ADMIN_KEY.to_owned()).await, 200);
    let mut near = ADMIN_KEY.to_owned();
    near.pop();
    assert_eq!(status(near.clone()).await, 401);
    near.push('x');
    assert_eq!(status(near).await, 401);
}

#[tokio::test]
async fn reference_urls_to_internal_addresses_are_refused_before_any_call() {
    let env = start_with(|c| c.urls.allow_loopback = false).await;
    for (url, param) in [
        ("http://169.254.169.254/latest/meta-data/iam", "image"),
        ("https://10.0.0.7/a.png", "image"),
        ("https://localhost/a.png", "image"),
        ("https://[::1]/a.png", "image"),
        ("file:///etc/passwd", "images[0]"),
    ] {
        let a = env
            .post(
                "/v1/images/edits",
                json!({"model": "sparkpix", "prompt": "p", "images": [{"image_url": url}]}),
            )
            .await;
        assert_eq!((a.status, a.param()), (400, param), "{url}: {}", a.body);
    }
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "gpt-image-2-all", "prompt": "p",
                   "images": [{"image_url": "https://example.com/a.png"}],
                   "mask": {"image_url": "http://192.168.0.1/m.png"}}),
        )
        .await;
    assert_eq!((a.status, a.param()), (400, "mask"), "{}", a.body);
    assert!(env.upstream_requests().await.is_empty());
    // An ordinary public URL passes on to the platform (whose result file, on this machine's
    // loopback, is then refused: that is the next test).
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "sparkpix", "prompt": "p", "images": [{"image_url": "https://example.com/a.png"}]}),
        )
        .await;
    assert_ne!(a.status, 400, "{}", a.body);
    assert_eq!(env.upstream_requests().await.len(), 1);
}

#[tokio::test]
async fn result_files_on_loopback_are_neither_fetched_nor_handed_out_unless_allowed() {
    // The simulator's files are on 127.0.0.1: allowed as a host, refused as an address.
    let env = start_with(|c| c.urls.allow_loopback = false).await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{}",
        a.body
    );
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    assert_eq!(env.upstream_stats().await["downloads"], 0);

    // Plain http is refused unless allowed, even for an allowed host and address.
    let env = start_with(|c| c.urls.allow_http = false).await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn guessing_keys_is_slowed_per_address_while_valid_keys_pass() {
    let env = start_with(|c| {
        c.server.auth_failures_per_minute = std::num::NonZeroU32::new(3).unwrap();
    })
    .await;
    for i in 0..3 {
        let a = env
            .generate_as(&format!("sk-ig-guess-{i}"), json!({"prompt": "p"}))
            .await;
        assert_eq!(a.status, 401);
    }
    let slowed = env
        .generate_as("sk-ig-guess-3", json!({"prompt": "p"}))
        .await;
    assert_eq!((slowed.status, slowed.code()), (429, "rate_limit_exceeded"));
    let wait: u64 = slowed.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // The valid key from the same address is not held back.
    let ok = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test]
async fn an_upstream_answer_longer_than_the_cap_is_not_read_and_not_failed_over() {
    // gpt-image-2-all answers its sync calls with the image inline: far more than 4 KiB.
    let env = start_with(|c| c.upstream.max_response_bytes = 4096).await;
    let a = env
        .generate(json!({"model": "gpt-image-2-all", "prompt": "p", "size": "1024x1024"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_response_bytes"),
        "{}",
        a.body
    );
    // The platform made (and billed) that image: a group never pays a second model for it.
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "p", "quality": "low"}))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (502, "result_download_failed"),
        "{}",
        a.body
    );
    assert_eq!(
        env.creates().await,
        2,
        "one create per request, no failover"
    );
    // A small answer (SparkPix's JSON with a URL) is read as ever.
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn behind_a_trusted_proxy_failures_count_per_forwarded_address() {
    let env = start_with(|c| {
        c.server.auth_failures_per_minute = std::num::NonZeroU32::new(2).unwrap();
        c.server.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await;
    let guess = |from: &'static str| {
        env.http
            .post(format!("{}/v1/images/generations", env.gateway))
            .bearer_auth("sk-ig-guess")
            .header("x-forwarded-for", from)
            .json(&json!({"prompt": "p"}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(guess("203.0.113.9").await.unwrap().status(), 401);
    }
    assert_eq!(guess("203.0.113.9").await.unwrap().status(), 429);
    // Another client behind the same proxy has its own allowance.
    assert_eq!(guess("198.51.100.4").await.unwrap().status(), 401);
}
