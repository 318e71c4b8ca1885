//! The answer is what was asked: a group routes only to models that deliver the request as asked
//! (one test per row of the README's capability table), the answer's `size` and
//! `output_format` describe the bytes delivered, WEBP is delivered or refused before any spend,
//! and the upstream's `retry-after` reaches the client.

use imagegate::model::{image_dimensions, ImageFormat};
use serde_json::{json, Value};

use crate::support::{b64_image, png_part, start, start_with, Answer, Env};

fn served(a: &Answer) -> &str {
    a.headers
        .get("x-imagegate-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The size and format of `data[i]`'s bytes.
fn delivered(a: &Answer, i: usize) -> (String, ImageFormat) {
    let bytes = b64_image(&a.body, i);
    let size = image_dimensions(&bytes).expect("readable image size");
    let format = ImageFormat::sniff(&bytes).expect("an image");
    (size.to_string(), format)
}

async fn generate_with(env: &Env, headers: &[(&str, &str)], body: Value) -> Answer {
    let mut rb = env.post_raw("/v1/images/generations").json(&body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    Env::read(rb.send().await.unwrap()).await
}

// === One group-routing test per capability row ===

#[tokio::test]
async fn size_a_group_never_serves_an_explicit_size_with_the_nearest_ratio() {
    let env = start().await;
    // gpt-image-2 at 1280x720 high: beta ($0.03) is cheapest but makes the nearest aspect
    // ratio; lite ($0.04) makes the size asked.
    let body =
        json!({"model": "gpt-image-2", "prompt": "p", "size": "1280x720", "quality": "high"});
    let a = env.generate(body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "gpt-image-2-lite");
    assert_eq!(a.headers["x-imagegate-cost-usd"], "0.04");
    assert_eq!(delivered(&a, 0).0, "1280x720");
    assert_eq!(a.body["size"], "1280x720");

    // The same through an OpenAI alias of the group.
    let mut alias = body.clone();
    alias["model"] = json!("dall-e-3");
    assert_eq!(served(&env.generate(alias).await), "gpt-image-2-lite");

    // The caller may opt in to the nearest ratio: beta serves, and the answer says what it made.
    let a = generate_with(&env, &[("x-imagegate-size-policy", "nearest")], body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "gpt-image-2-beta");
    let (size, _) = delivered(&a, 0);
    assert_ne!(size, "1280x720");
    assert_eq!(a.body["size"], json!(size));

    // No size (or `auto`): beta stays eligible.
    let a = env
        .generate(json!({"model": "gpt-image-2", "prompt": "p", "size": "auto", "quality": "high"}))
        .await;
    assert_eq!(served(&a), "gpt-image-2-beta");

    // A bad policy value is refused before any upstream call.
    let before = env.creates().await;
    let a = generate_with(
        &env,
        &[("x-imagegate-size-policy", "roughly")],
        json!({"model": "gpt-image-2", "prompt": "p"}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.param(), "x-imagegate-size-policy");
    assert_eq!(env.creates().await, before);
}

#[tokio::test]
async fn size_a_pinned_beta_keeps_its_nearest_ratio_and_says_what_it_made() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "p", "size": "1280x720"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (size, format) = delivered(&a, 0);
    assert_ne!(size, "1280x720");
    assert_eq!(a.body["size"], json!(size));
    assert_eq!(a.body["output_format"], format.as_str());
}

#[tokio::test]
async fn size_sparkpix_edits_by_ratio_so_a_group_edit_with_a_size_skips_it() {
    let env = start().await;
    let reference = "https://example.com/ref.png";
    let body = |size: Value| {
        json!({"model": "auto", "prompt": "p", "size": size,
               "images": [{"image_url": reference}], "quality": "medium"})
    };
    // Without a size the cheapest URL edit is SparkPix ($0.013).
    let a = env.post("/v1/images/edits", body(Value::Null)).await;
    assert_eq!(served(&a), "sparkpix", "{}", a.body);
    // With 1024x1024 it would only get the nearest ratio: gpt-image-2-all medium 1K serves.
    let a = env.post("/v1/images/edits", body(json!("1024x1024"))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "gpt-image-2-all");
    assert_eq!(delivered(&a, 0).0, "1024x1024");
}

#[tokio::test]
async fn output_format_a_url_answer_goes_only_to_models_that_make_the_format() {
    let env = start().await;
    // `auto` at 1024x1024 medium: SparkPix ($0.01) is cheapest but makes JPEG only, beta PNG
    // only; a `url` answer cannot be converted, so gpt-image-2-all ($0.025) serves WEBP.
    let a = env
        .generate(json!({"model": "auto", "prompt": "p", "size": "1024x1024",
                          "response_format": "url", "output_format": "webp"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "gpt-image-2-all");
    let url = a.body["data"][0]["url"].as_str().unwrap();
    let file = env
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(ImageFormat::sniff(&file), Some(ImageFormat::Webp));

    // A `b64_json` answer is converted by the gateway: the cheapest model serves, in WEBP.
    let a = env
        .generate(
            json!({"model": "auto", "prompt": "p", "size": "1024x1024", "output_format": "webp"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "sparkpix");
    assert_eq!(
        delivered(&a, 0),
        ("1024x1024".to_owned(), ImageFormat::Webp)
    );
    assert_eq!(a.body["output_format"], "webp");
}

#[tokio::test]
async fn transparent_background_goes_only_to_the_model_that_makes_it() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "auto", "prompt": "p", "size": "1024x1024", "background": "transparent"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "gpt-image-2-all");
}

#[tokio::test]
async fn n_is_delivered_whole_by_a_fanned_out_model() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "auto", "prompt": "p", "size": "1024x1024", "n": 3}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(served(&a), "sparkpix");
    assert_eq!(a.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(env.creates().await, 3, "one SparkPix call per image");
    assert_eq!(a.headers["x-imagegate-cost-usd"], "0.03");
}

#[tokio::test]
async fn mask_goes_only_to_models_that_take_one() {
    let env = start().await;
    let form = reqwest::multipart::Form::new()
        .text("model", "auto")
        .text("prompt", "p")
        .text("quality", "low")
        .part("image", png_part("a.png"))
        .part("mask", png_part("mask.png"));
    let a = env.post_form(form).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        matches!(served(&a), "gpt-image-2-all" | "gpt-image-2-lite"),
        "{}",
        served(&a)
    );
}

#[tokio::test]
async fn uploads_go_only_to_models_that_take_bytes() {
    let env = start().await;
    let form = reqwest::multipart::Form::new()
        .text("model", "auto")
        .text("prompt", "p")
        .part("image", png_part("a.png"));
    let a = env.post_form(form).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        matches!(served(&a), "gpt-image-2-all" | "gpt-image-2-lite"),
        "{}",
        served(&a)
    );
    // The same reference as a URL: SparkPix's edit endpoint serves it for $0.013.
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "auto", "prompt": "p", "images": [{"image_url": "https://example.com/a.png"}]}),
        )
        .await;
    assert_eq!(served(&a), "sparkpix", "{}", a.body);
}

// === The answer describes the bytes delivered ===

#[tokio::test]
async fn a_url_answer_never_echoes_the_requested_size_or_format() {
    let env = start().await;
    for model in ["gpt-image-2-beta", "sparkpix"] {
        let a = env
            .generate(json!({"model": model, "prompt": "p", "size": "1024x1024", "response_format": "url"}))
            .await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
        assert!(a.body.get("size").is_none(), "{model}: {}", a.body);
        assert!(a.body.get("output_format").is_none(), "{model}: {}", a.body);
    }
    assert_eq!(env.upstream_stats().await["downloads"], 0);
}

#[tokio::test]
async fn a_jpeg_answer_carries_its_size() {
    let env = start().await;
    for model in ["sparkpix", "gpt-image-2-all", "gpt-image-2-lite"] {
        let a = env
            .generate(
                json!({"model": model, "prompt": "p", "size": "1024x768", "output_format": "jpeg"}),
            )
            .await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
        let (size, format) = delivered(&a, 0);
        assert_eq!(format, ImageFormat::Jpeg, "{model}");
        assert_eq!(a.body["size"], json!(size), "{model}");
        assert_eq!(a.body["output_format"], "jpeg", "{model}");
    }
}

// === WEBP ===

#[tokio::test]
async fn webp_is_delivered_by_every_model() {
    let env = start().await;
    for model in [
        "gpt-image-2-lite",
        "gpt-image-2-all",
        "gpt-image-2-beta",
        "sparkpix",
    ] {
        let a = env
            .generate(json!({"model": model, "prompt": "p", "size": "1024x1024", "output_format": "webp"}))
            .await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
        let (size, format) = delivered(&a, 0);
        assert_eq!(format, ImageFormat::Webp, "{model}");
        assert_eq!(a.body["output_format"], "webp", "{model}");
        assert_eq!(a.body["size"], json!(size), "{model}");
    }
}

#[tokio::test]
async fn a_url_answer_in_a_format_the_pinned_model_cannot_make_is_refused_before_any_call() {
    let env = start().await;
    for (model, format) in [
        ("sparkpix", "webp"),
        ("sparkpix", "png"),
        ("gpt-image-2-beta", "webp"),
    ] {
        let a = env
            .generate(json!({"model": model, "prompt": "p", "response_format": "url", "output_format": format}))
            .await;
        assert_eq!(a.status, 400, "{model} {format}: {}", a.body);
        assert_eq!(a.code(), "unsupported_for_model");
        assert_eq!(a.param(), "output_format");
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("b64_json"),
            "{}",
            a.body
        );
    }
    assert_eq!(env.creates().await, 0);
}

// === The upstream's retry-after ===

#[tokio::test]
async fn the_upstreams_retry_after_is_passed_through_capped_at_60_seconds() {
    let env = start().await;
    for (directive, want) in [("[sim:429]", "7"), ("[sim:429=120]", "60")] {
        let a = env
            .generate(json!({"model": "sparkpix", "prompt": format!("p {directive}")}))
            .await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.code(), "upstream_rate_limited");
        assert_eq!(a.headers["retry-after"], want, "{directive}");
    }
}

// === Readiness and upstream reachability ===

#[tokio::test]
async fn readyz_reports_upstream_reachability_without_failing_on_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = start_with(|c| c.upstream.base_url = format!("http://{closed}")).await;
    let ready = env.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["upstream"]["reachable"], false, "{}", ready.body);
    let metrics = env.get("/metrics").await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("imagegate_upstream_reachable 0"), "{text}");

    let env = start().await;
    let ready = env.get("/readyz").await;
    assert_eq!(ready.body["upstream"]["reachable"], true, "{}", ready.body);
    let text = env.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(text.contains("imagegate_upstream_reachable 1"), "{text}");
}
