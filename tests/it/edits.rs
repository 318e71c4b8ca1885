//! Edits: multipart (`image`, `image[]`, masks, chunked bodies) and the JSON variant.

use base64::Engine as _;
use reqwest::multipart::{Form, Part};
use serde_json::json;

use crate::support::{b64_image, is_png, on_path, png, png_part, start};

fn form(model: &str) -> Form {
    Form::new()
        .text("model", model.to_owned())
        .text("prompt", "put a hat on it")
}

#[tokio::test]
async fn single_image_edit_on_all_goes_multipart() {
    let env = start().await;
    let a = env
        .post_form(
            form("gpt-image-2-all")
                .part("image", png_part("a.png"))
                .text("size", "1024x1024"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(is_png(&b64_image(&a.body, 0)));
    let reqs = env.upstream_requests().await;
    let parts = on_path(&reqs, "/api/v1/images/edits")[0]["multipart"]
        .as_array()
        .unwrap()
        .clone();
    let images: Vec<_> = parts.iter().filter(|p| p["name"] == "image").collect();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["kind"], "png");
    assert!(parts.iter().all(|p| p["name"] != "Authorization"));
}

#[tokio::test]
async fn sixteen_images_and_a_mask() {
    let env = start().await;
    let mut f = form("gpt-image-2-all");
    for i in 0..16 {
        f = f.part("image[]", png_part(&format!("{i}.png")));
    }
    let a = env.post_form(f.part("mask", png_part("mask.png"))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let reqs = env.upstream_requests().await;
    let parts = on_path(&reqs, "/api/v1/images/edits")[0]["multipart"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parts.iter().filter(|p| p["name"] == "image[]").count(), 16);
    assert_eq!(parts.iter().filter(|p| p["name"] == "mask").count(), 1);

    let mut f = form("gpt-image-2-all");
    for i in 0..17 {
        f = f.part("image[]", png_part(&format!("{i}.png")));
    }
    let a = env.post_form(f).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.param(), "image");
}

#[tokio::test]
async fn lite_takes_one_upload_as_base64_with_mask() {
    let env = start().await;
    let a = env
        .post_form(
            form("gpt-image-2-lite")
                .part("image[]", png_part("a.png"))
                .part("mask", png_part("m.png")),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let reqs = env.upstream_requests().await;
    let sent = &reqs[0]["json"];
    assert!(sent["image_base64"].is_string(), "{sent}");
    assert!(sent["mask_base64"].is_string(), "{sent}");

    let a = env
        .post_form(
            form("gpt-image-2-lite")
                .part("image[]", png_part("a.png"))
                .part("image[]", png_part("b.png")),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.code(), "unsupported_for_model");
    assert_eq!(
        env.upstream_requests().await.len(),
        1,
        "refused before any upstream call"
    );
}

#[tokio::test]
async fn url_only_models_refuse_uploads_before_calling() {
    let env = start().await;
    for model in ["gpt-image-2-beta", "sparkpix"] {
        let a = env
            .post_form(form(model).part("image", png_part("a.png")))
            .await;
        assert_eq!(a.status, 400, "{model}: {}", a.body);
        assert_eq!(a.code(), "unsupported_for_model");
        assert!(
            a.body["error"]["message"].as_str().unwrap().contains("URL"),
            "{}",
            a.body
        );
    }
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "sparkpix", "prompt": "p", "images": [{"image_url": "https://example.com/a.png"}], "mask": {"image_url": "https://example.com/m.png"}}),
        )
        .await;
    assert_eq!((a.status, a.param()), (400, "mask"), "{}", a.body);
    assert!(env.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn json_edit_with_urls_and_data_urls() {
    let env = start().await;
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "sparkpix", "prompt": "p", "images": [{"image_url": "https://example.com/a.png"}, {"image_url": "https://example.com/b.png"}]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let reqs = env.upstream_requests().await;
    // SparkPix Image Edit answers `url` as an array for several inputs: every image is returned.
    assert_eq!(a.body["data"].as_array().unwrap().len(), 2, "{}", a.body);
    let sent = &on_path(&reqs, "/api/v1/images/edit")[0]["json"];
    assert_eq!(
        sent["images"],
        json!(["https://example.com/a.png", "https://example.com/b.png"])
    );

    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png(16, 16))
    );
    let a = env
        .post(
            "/v1/images/edits",
            json!({"model": "gpt-image-2-all", "prompt": "p", "images": [{"image_url": data_url}], "size": "auto", "background": "auto", "quality": "auto"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let reqs = env.upstream_requests().await;
    assert_eq!(on_path(&reqs, "/api/v1/images/edits").len(), 1);
}

#[tokio::test]
async fn chunked_multipart_without_content_length() {
    let env = start().await;
    let boundary = "imagegate-test-boundary";
    let mut body = Vec::new();
    for (name, value) in [
        ("model", "gpt-image-2-all"),
        ("prompt", "p"),
        ("n", "2"),
        ("stream", "false"),
    ] {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes());
    }
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image[]\"; filename=\"a\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend(png(8, 8));
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let res = env
        .post_raw("/v1/images/edits")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let a = crate::support::Env::read(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_edit_bodies() {
    let env = start().await;
    // No image at all.
    let a = env.post_form(form("gpt-image-2-all")).await;
    assert_eq!((a.status, a.param()), (400, "image"), "{}", a.body);
    // Not an image, whatever the part says.
    let fake = Part::bytes(b"GIF89a not really".to_vec())
        .file_name("a.png")
        .mime_str("image/png")
        .unwrap();
    let a = env
        .post_form(form("gpt-image-2-all").part("image", fake))
        .await;
    assert_eq!((a.status, a.param()), (400, "image"), "{}", a.body);
    // A JPEG mask.
    let jpeg = Part::bytes(vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 0]).file_name("m.jpg");
    let a = env
        .post_form(
            form("gpt-image-2-all")
                .part("image", png_part("a.png"))
                .part("mask", jpeg),
        )
        .await;
    assert_eq!((a.status, a.param()), (400, "mask"), "{}", a.body);
    // Broken multipart.
    let res = env
        .post_raw("/v1/images/edits")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    let a = crate::support::Env::read(res).await;
    assert_eq!((a.status, a.code()), (400, "invalid_body"), "{}", a.body);
    // Unsupported content type.
    let res = env
        .post_raw("/v1/images/edits")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert!(env.upstream_requests().await.is_empty());
}

/// An answer given before the body is read (401 on a 4 MB upload) still reaches the client: the
/// gateway reads the rest of the body instead of closing on unread bytes (which resets the
/// connection and loses the answer).
#[tokio::test]
async fn early_answers_survive_large_uploads() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let env = start().await;
    let addr = env.gateway.trim_start_matches("http://").to_owned();
    for auth in ["Bearer sk-wrong-key", "Bearer sk-imagegate-demo"] {
        let boundary = "b0undary";
        let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n").into_bytes();
        body.extend(png(8, 8));
        body.extend(vec![b'x'; 4 << 20]);
        body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
        let head = format!(
            "POST /v1/images/edits HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&body)
            .await
            .expect("the gateway read the whole body");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.windows(4).any(|w| w == b"\r\n\r\n") && raw.ends_with(b"}") {
                        break;
                    }
                }
                Err(e) => panic!("{auth}: connection reset after {} bytes: {e}", raw.len()),
            }
        }
        let text = String::from_utf8_lossy(&raw);
        // Wrong key → 401; right key → 400 (no prompt): both answered in full.
        assert!(
            text.starts_with("HTTP/1.1 401") || text.starts_with("HTTP/1.1 400"),
            "{text}"
        );
        assert!(text.contains("\"error\""), "{text}");
    }
}
