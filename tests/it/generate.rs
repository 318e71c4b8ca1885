//! Generations on every model and both answer formats.

use serde_json::json;

use crate::support::{b64_image, is_png, on_path, start};

#[tokio::test]
async fn every_model_generates_a_png() {
    let env = start().await;
    for model in [
        "gpt-image-2-lite",
        "gpt-image-2-all",
        "gpt-image-2-beta",
        "sparkpix",
    ] {
        let a = env
            .generate(json!({"model": model, "prompt": "a red fox", "size": "1024x1024"}))
            .await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
        // SparkPix makes JPEG files: the gateway converts them to the default PNG.
        assert!(is_png(&b64_image(&a.body, 0)), "{model}");
        assert_eq!(a.body["output_format"], "png", "{model}");
        assert!(a.body["created"].as_u64().unwrap() > 0);
        assert_eq!(a.body["size"], "1024x1024", "{model}");
        assert!(a.headers.contains_key("x-request-id"));
    }
}

#[tokio::test]
async fn default_model_and_unprefixed_routes() {
    let env = start().await;
    let a = env
        .post(
            "/images/generations",
            json!({"prompt": "p", "size": "1024x1024"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let reqs = env.upstream_requests().await;
    assert_eq!(reqs[0]["model"], "gpt-image-2-all");
}

#[tokio::test]
async fn all_sync_passes_base64_through_without_downloading() {
    let env = start().await;
    let a = env.generate(json!({"model": "gpt-image-2-all", "prompt": "p", "size": "1536x1024", "quality": "low"})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["size"], "1536x1024");
    assert_eq!(a.body["quality"], "low");
    assert_eq!(env.upstream_stats().await["downloads"], 0);
    let reqs = env.upstream_requests().await;
    let sent = &on_path(&reqs, "/api/v1/images/generations")[0]["json"];
    assert_eq!(sent["size"], "1536x1024");
    assert_eq!(sent["quality"], "low");
}

#[tokio::test]
async fn url_format_returns_upstream_urls() {
    let env = start().await;
    for model in [
        "gpt-image-2-lite",
        "gpt-image-2-beta",
        "sparkpix",
        "gpt-image-2-all",
    ] {
        let a = env
            .generate(json!({"model": model, "prompt": "p", "response_format": "url", "size": "1024x1024"}))
            .await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
        let url = a.body["data"][0]["url"].as_str().unwrap();
        assert!(url.starts_with(&env.sim), "{model}: {url}");
        assert!(a.body["data"][0].get("b64_json").is_none());
    }
    assert_eq!(env.upstream_stats().await["downloads"], 0);
}

#[tokio::test]
async fn all_async_mode_with_aspect_ratio_polls_the_task() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "gpt-image-2-all", "prompt": "p", "aspect_ratio": "16:9", "resolution": "2K", "quality": "high"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(is_png(&b64_image(&a.body, 0)));
    let (w, h) = a.body["size"].as_str().unwrap().split_once('x').unwrap();
    assert_eq!(w.parse::<u32>().unwrap(), 2048, "{h}");
    let stats = env.upstream_stats().await;
    assert!(stats["polls"].as_u64().unwrap() >= 1, "{stats}");
    let reqs = env.upstream_requests().await;
    let sent = &on_path(&reqs, "/api/v1/images/generations")[0]["json"];
    assert_eq!(
        (sent["aspect_ratio"].as_str(), sent["resolution"].as_str()),
        (Some("16:9"), Some("2K"))
    );
    assert!(sent.get("size").is_none());
}

#[tokio::test]
async fn n_is_native_on_lite_and_fans_out_elsewhere() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "p", "n": 3}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(env.upstream_stats().await["creates"], 1);

    for (model, path) in [
        ("sparkpix", "/api/v1/images/generations-sync"),
        ("gpt-image-2-beta", "/api/v1/images/generations"),
    ] {
        let env = start().await;
        let a = env
            .generate(json!({"model": model, "prompt": "p", "n": 3}))
            .await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
        assert_eq!(a.body["data"].as_array().unwrap().len(), 3, "{model}");
        let reqs = env.upstream_requests().await;
        let creates: Vec<_> = on_path(&reqs, path)
            .into_iter()
            .filter(|r| r["method"] == "POST")
            .collect();
        assert_eq!(creates.len(), 3, "{model}");
    }
}

#[tokio::test]
async fn translations_per_model() {
    let env = start().await;
    // beta: size → nearest supported aspect ratio; vendor extras passed through.
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "p", "size": "1536x1024", "nsfw_checker": true}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // sparkpix: size → custom width/height; seed passed through.
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "size": "1440x816", "seed": 42}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // lite: jpeg output.
    let a = env
        .generate(json!({"model": "gpt-image-2-lite", "prompt": "p", "output_format": "jpeg"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(b64_image(&a.body, 0).starts_with(&[0xFF, 0xD8, 0xFF]));
    assert_eq!(a.body["output_format"], "jpeg");

    let reqs = env.upstream_requests().await;
    let beta = &reqs[0]["json"];
    assert_eq!(beta["aspect_ratio"], "3:2");
    assert_eq!(beta["nsfw_checker"], true);
    assert!(beta.get("size").is_none());
    let spark = &on_path(&reqs, "/api/v1/images/generations-sync")[0]["json"];
    assert_eq!(spark["aspect_ratio"], "custom");
    assert_eq!(
        (spark["width"].as_u64(), spark["height"].as_u64()),
        (Some(1440), Some(816))
    );
    assert_eq!(spark["seed"], 42);
    assert!(
        spark.get("model").is_none(),
        "the SparkPix path is the model"
    );
}

#[tokio::test]
async fn streaming_sends_completed_event_and_done() {
    let env = start().await;
    let res = env
        .post_raw("/v1/images/generations")
        .json(&json!({"model": "gpt-image-2-lite", "prompt": "p", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = res.text().await.unwrap();
    assert!(text.contains("event: image_generation.completed"), "{text}");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: ").filter(|d| d.starts_with('{')))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["type"], "image_generation.completed");
    assert!(event["b64_json"].as_str().unwrap().len() > 100);
    assert!(text.contains("data: [DONE]"));
}

#[tokio::test]
async fn vendor_extras_reach_the_models_that_understand_them() {
    let env = start().await;
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "prompt_upsampling": true, "lora_weights": "huggingface.co/acme/style", "lora_scale": 1.5}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "p", "image_urls": ["https://example.com/a.png", "https://example.com/b.png"], "aspect_ratio": "9:16"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "sparkpix", "prompt": "p", "turbo": false, "seed": 3, "images": [{"image_url": "https://example.com/a.png"}]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let reqs = env.upstream_requests().await;
    let spark = &reqs[0]["json"];
    assert_eq!(spark["prompt_upsampling"], true);
    assert_eq!(spark["lora_weights"], "huggingface.co/acme/style");
    assert_eq!(spark["lora_scale"], 1.5);
    let beta = &on_path(&reqs, "/api/v1/images/generations")[0]["json"];
    assert_eq!(
        beta["image_urls"],
        json!(["https://example.com/a.png", "https://example.com/b.png"])
    );
    assert_eq!(beta["aspect_ratio"], "9:16");
    let edit = &on_path(&reqs, "/api/v1/images/edit")[0]["json"];
    assert_eq!(
        (edit["turbo"].as_bool(), edit["seed"].as_i64()),
        (Some(false), Some(3))
    );
    // The upstream key is injected on every call; the client's key is never forwarded.
    assert!(reqs.iter().all(|r| r["auth_ok"] == true), "{reqs:?}");
}

#[tokio::test]
async fn streaming_keeps_alive_and_reports_upstream_errors_as_events() {
    let env = crate::support::start_with(|c| {
        c.server.keepalive_interval = std::time::Duration::from_millis(100)
    })
    .await;
    let stream = |prompt: &str| {
        env.post_raw("/v1/images/generations")
            .json(&json!({"model": "gpt-image-2-all", "prompt": prompt, "size": "1024x1024", "stream": true}))
            .send()
    };
    let text = stream("p [sim:slow=0.6]")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(": keepalive"), "{text}");
    assert!(text.contains("image_generation.completed"), "{text}");

    let text = stream("p [sim:policy]")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("moderation_blocked"), "{text}");

    // Bad input is refused with a status before any stream starts.
    let res = env
        .post_raw("/v1/images/generations")
        .json(&json!({"model": "gpt-image-2-all", "prompt": "p", "size": "7x7", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn output_format_is_honoured_by_converting_downloads() {
    let env = start().await;
    // beta makes PNG files; the client asked for JPEG.
    let a = env
        .generate(json!({"model": "gpt-image-2-beta", "prompt": "p", "output_format": "jpeg"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(b64_image(&a.body, 0).starts_with(&[0xFF, 0xD8, 0xFF]));
    assert_eq!(a.body["output_format"], "jpeg");
    // SparkPix makes JPEG: asked for JPEG, it is passed as made; `url` answers are never touched.
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "output_format": "jpeg"}))
        .await;
    assert!(b64_image(&a.body, 0).starts_with(&[0xFF, 0xD8, 0xFF]));
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "response_format": "url"}))
        .await;
    assert!(a.body["data"][0]["url"]
        .as_str()
        .unwrap()
        .contains("/files/"));
}
